//! Checks on every peer reply before openraft sees it (`guard.rs` checks
//! requests). openraft trusts replies as it trusts requests: a HigherVote
//! of term 2^64-1 is saved, and the next election's `term + 1` overflows
//! (a panic in a debug build; in release every later pre-vote is refused,
//! for good, since the vote is on disk); a Conflict answering an append
//! that had no `prev_log_id` panics the leader (an unwrap); a
//! PartialSuccess past what was sent counts entries only the leader holds
//! as replicated. A refused reply is a network error: openraft retries.

use nines_types::NodeId;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{LogId, Vote};

use nines_types::TypeConfig;

use super::guard::MAX_TERM_JUMP;

/// Why a reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer reply refused: {0}")]
pub struct BadReply(String);

/// A vote a peer answered with: a term no further past the one sent than
/// a request may go (`guard::MAX_TERM_JUMP`), and far below u64::MAX.
fn sane_vote(what: &str, got: &Vote<NodeId>, sent: &Vote<NodeId>) -> Result<(), BadReply> {
    let term = got.leader_id.term;
    let limit = sent.leader_id.term.saturating_add(MAX_TERM_JUMP);
    if term > limit || term > u64::MAX / 2 {
        return Err(BadReply(format!(
            "{what} term {term} is too far past the sent term {}",
            sent.leader_id.term
        )));
    }
    Ok(())
}

/// The last log id an append carried: its last entry's, else its
/// `prev_log_id`.
fn last_sent(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<LogId<NodeId>> {
    rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id)
}

pub fn check_append(
    rpc: &AppendEntriesRequest<TypeConfig>,
    reply: &AppendEntriesResponse<NodeId>,
) -> Result<(), BadReply> {
    match reply {
        AppendEntriesResponse::Success => Ok(()),
        AppendEntriesResponse::PartialSuccess(matched) => {
            if *matched < rpc.prev_log_id || *matched > last_sent(rpc) {
                return Err(BadReply(format!(
                    "partial success at {matched:?}, outside what was sent ({:?} ..= {:?})",
                    rpc.prev_log_id,
                    last_sent(rpc)
                )));
            }
            Ok(())
        }
        // An empty prefix matches on every node.
        AppendEntriesResponse::Conflict if rpc.prev_log_id.is_none() => {
            Err(BadReply("conflict on an append with no prev_log_id".into()))
        }
        AppendEntriesResponse::Conflict => Ok(()),
        AppendEntriesResponse::HigherVote(vote) => {
            if *vote <= rpc.vote {
                return Err(BadReply(format!(
                    "higher vote {vote} is not above the leader's {}",
                    rpc.vote
                )));
            }
            sane_vote("higher vote", vote, &rpc.vote)
        }
    }
}

/// The answer's vote is at least the candidate's (the voter saved it, or
/// had a higher one), and its last log id is of a term it has seen.
pub fn check_vote(rpc: &VoteRequest<NodeId>, reply: &VoteResponse<NodeId>) -> Result<(), BadReply> {
    if reply.vote < rpc.vote && reply.vote_granted {
        return Err(BadReply(format!(
            "vote granted with {} below the candidate's {}",
            reply.vote, rpc.vote
        )));
    }
    sane_vote("vote reply", &reply.vote, &rpc.vote)?;
    if let Some(last) = reply.last_log_id {
        if last.leader_id.term > reply.vote.leader_id.term.max(rpc.vote.leader_id.term) {
            return Err(BadReply(format!(
                "last log id {last} is of a term above the voter's vote {}",
                reply.vote
            )));
        }
    }
    Ok(())
}

pub fn check_snapshot(
    sent: &Vote<NodeId>,
    reply: &InstallSnapshotResponse<NodeId>,
) -> Result<(), BadReply> {
    sane_vote("snapshot reply", &reply.vote, sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn vote(term: u64, node: NodeId, committed: bool) -> Vote<NodeId> {
        match committed {
            true => Vote::new_committed(term, node),
            false => Vote::new(term, node),
        }
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn append(
        prev: Option<LogId<NodeId>>,
        entries: &[LogId<NodeId>],
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: vote(5, 1, true),
            prev_log_id: prev,
            leader_commit: None,
            entries: entries
                .iter()
                .map(|id| Entry {
                    log_id: *id,
                    payload: EntryPayload::Blank,
                })
                .collect(),
        }
    }

    #[test]
    fn append_replies_that_openraft_would_panic_or_wrap_on_are_refused() {
        let heartbeat = append(None, &[]);
        // openraft unwraps the prev_log_id of a conflict.
        assert!(check_append(&heartbeat, &AppendEntriesResponse::Conflict).is_err());
        let rpc = append(Some(log_id(5, 9)), &[log_id(5, 10), log_id(5, 11)]);
        assert!(check_append(&rpc, &AppendEntriesResponse::Conflict).is_ok());
        assert!(check_append(&rpc, &AppendEntriesResponse::Success).is_ok());
        // A term whose + 1 would overflow, and one a long way past ours.
        for term in [u64::MAX, u64::MAX / 2 + 1, 5 + MAX_TERM_JUMP + 1] {
            let higher = AppendEntriesResponse::HigherVote(vote(term, 2, false));
            assert!(check_append(&rpc, &higher).is_err(), "term {term}");
        }
        let honest = AppendEntriesResponse::HigherVote(vote(6, 2, false));
        assert!(check_append(&rpc, &honest).is_ok());
        // "Higher" must be higher (openraft asserts it).
        let lower = AppendEntriesResponse::HigherVote(vote(4, 2, true));
        assert!(check_append(&rpc, &lower).is_err());
    }

    #[test]
    fn partial_success_must_lie_within_what_was_sent() {
        let rpc = append(Some(log_id(5, 9)), &[log_id(5, 10), log_id(5, 11)]);
        for (matched, ok) in [
            (Some(log_id(5, 9)), true),
            (Some(log_id(5, 11)), true),
            (Some(log_id(5, 12)), false),
            (Some(log_id(4, 8)), false),
            (None, false),
        ] {
            let reply = AppendEntriesResponse::PartialSuccess(matched);
            assert_eq!(check_append(&rpc, &reply).is_ok(), ok, "{matched:?}");
        }
    }

    #[test]
    fn vote_and_snapshot_replies_need_sane_terms() {
        let rpc = VoteRequest {
            vote: vote(7, 1, false),
            last_log_id: Some(log_id(6, 20)),
        };
        let reply = |v: Vote<NodeId>, granted: bool, last: Option<LogId<NodeId>>| VoteResponse {
            vote: v,
            vote_granted: granted,
            last_log_id: last,
        };
        assert!(check_vote(&rpc, &reply(vote(7, 1, false), true, Some(log_id(6, 20)))).is_ok());
        assert!(check_vote(&rpc, &reply(vote(9, 3, false), false, None)).is_ok());
        assert!(check_vote(&rpc, &reply(vote(u64::MAX, 3, false), false, None)).is_err());
        assert!(check_vote(&rpc, &reply(vote(6, 3, true), true, None)).is_err());
        let future_log = reply(vote(7, 1, false), false, Some(log_id(u64::MAX, 1)));
        assert!(check_vote(&rpc, &future_log).is_err());
        let sent = vote(7, 1, true);
        let snap = |v| InstallSnapshotResponse { vote: v };
        assert!(check_snapshot(&sent, &snap(vote(7, 1, true))).is_ok());
        assert!(check_snapshot(&sent, &snap(vote(u64::MAX, 2, false))).is_err());
    }
}
