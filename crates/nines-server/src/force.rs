//! `--force-new-cluster` (etcd's flag of that name): disaster recovery when
//! a majority of the members is lost for good. Run at startup, before
//! openraft sees the log, on a member with existing data: its membership
//! becomes itself alone, so it elects itself and serves, and members are
//! added back afterwards the usual way (etcd's MemberAdd, `--join`).
//!
//! How: one membership entry `{self}` is appended at the end of the log, at
//! a term above every term this node has seen, with the vote raised to that
//! term (uncommitted: the node campaigns like any other). openraft takes
//! the effective membership from the newest membership entry in the log at
//! startup (`StorageHelper::get_membership`), committed or not, so the node
//! is the only voter; once it wins its election its leader's blank entry
//! commits everything in its log. As in etcd, every entry the survivor
//! holds is kept and committed, including those past its commit index: an
//! acknowledged write that reached it stays readable.
//!
//! Left on across restarts: a marker file records that the flag was applied
//! and stays while every start keeps the flag. While the membership is
//! still this node alone the flag does nothing more; once members were
//! added back, a start that still carries it is refused (forcing again
//! would cut them off). A start without the flag removes the marker, so a
//! later disaster can be forced again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use nines_log::LogStore;
use nines_state::StateMachine;
use nines_types::{Entry, LogId, Node, NodeId, Vote};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, StorageHelper};
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use serde::{Deserialize, Serialize};

use crate::config::ServerConfig;
use crate::error::ServerError;

/// In the data dir while consecutive starts carry the flag.
pub const MARKER_FILE: &str = "force-new-cluster.json";

/// What a forced start wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The entry of the membership `{self}`.
    pub log_id: LogId,
}

/// What a start with the flag does, decided from the node's storage.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Save this vote, then append this entry.
    Force { vote: Vote, entry: Box<Entry> },
    /// The membership is this node alone already (a forced start that
    /// crashed before writing its marker, or the flag left on): nothing to
    /// write.
    AlreadyAlone,
}

/// Decides what `--force-new-cluster` does; an `Err` is the refusal.
pub fn plan(
    me: NodeId,
    node: &Node,
    vote: Option<Vote>,
    last_log_id: Option<LogId>,
    membership: &Membership<NodeId, Node>,
    marker: Option<Marker>,
) -> Result<Plan, String> {
    let Some(last) = last_log_id else {
        return Err(
            "this data dir holds no Raft log: a fresh member has nothing to \
                    recover. Start the member that survived with the flag, or restore \
                    a backup with `nines snapshot restore`"
                .into(),
        );
    };
    let nodes: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    if !nodes.contains(&me) {
        return Err(format!(
            "node {me} is not in the last membership it knows ({nodes:?}): it was removed \
             (or never added), so its data is not the cluster's; force a member that was in it"
        ));
    }
    let alone =
        membership.get_joint_config().as_slice() == [BTreeSet::from([me])] && nodes.len() == 1;
    if alone {
        return Ok(Plan::AlreadyAlone);
    }
    if let Some(marker) = marker {
        return Err(format!(
            "--force-new-cluster was already applied (membership {{{me}}} at log index {}) \
             and the membership has changed since to {nodes:?}: forcing again would cut \
             those members off. Remove the flag. To force again after a new disaster, \
             start once without the flag (or delete {MARKER_FILE} in the data dir)",
            marker.log_id.index
        ));
    }
    let term = vote
        .map_or(0, |v| v.leader_id.term)
        .max(last.leader_id.term)
        + 1;
    let log_id = LogId::new(CommittedLeaderId::new(term, me), last.index + 1);
    let alone = Membership::new(
        vec![BTreeSet::from([me])],
        BTreeMap::from([(me, node.clone())]),
    );
    Ok(Plan::Force {
        vote: Vote::new(term, me),
        entry: Box::new(Entry {
            log_id,
            payload: EntryPayload::Membership(alone),
        }),
    })
}

/// Runs before openraft starts. Without the flag it only clears the
/// marker; with it, it rewrites the membership (see the module doc).
pub async fn prepare(
    config: &ServerConfig,
    log: &LogStore,
    state: &mut StateMachine,
) -> Result<(), ServerError> {
    let marker_path = config.data_dir.join(MARKER_FILE);
    if !config.force_new_cluster {
        return remove_marker(&config.data_dir, &marker_path);
    }
    let refuse = |why: String| ServerError::Config(format!("--force-new-cluster: {why}"));
    let marker = read_marker(&marker_path)?;
    let mut log = log.clone();
    let raft = |e: openraft::StorageError<NodeId>| ServerError::Raft(e.to_string());
    let vote = log.read_vote().await.map_err(raft)?;
    let last_log_id = log.get_log_state().await.map_err(raft)?.last_log_id;
    let effective = StorageHelper::new(&mut log, state)
        .get_membership()
        .await
        .map_err(raft)?
        .effective()
        .clone();
    let membership = effective.membership().clone();
    let plan = plan(
        config.id,
        &config.node,
        vote,
        last_log_id,
        &membership,
        marker,
    )
    .map_err(refuse)?;
    let log_id = match plan {
        Plan::AlreadyAlone => {
            tracing::warn!(
                "--force-new-cluster: the membership is this node alone already; \
                 nothing to rewrite (remove the flag once members are added back)"
            );
            match (marker, effective.log_id()) {
                (Some(_), _) => return Ok(()),
                (None, log_id) => log_id.unwrap_or_default(),
            }
        }
        Plan::Force { vote, entry } => {
            if !membership.voter_ids().any(|v| v == config.id) {
                tracing::warn!(
                    "--force-new-cluster on a learner: it may lack entries the voters \
                     committed"
                );
            }
            let log_id = entry.log_id;
            // Vote first: an entry of a term the vote has not reached is
            // never on disk, even after a crash between the two.
            log.save_vote(&vote).await.map_err(raft)?;
            log.blocking_append([*entry]).await.map_err(raft)?;
            tracing::warn!(
                old_membership = %membership,
                last_log = ?last_log_id,
                forced = %log_id,
                "--force-new-cluster: this node is now the only member; every entry in its \
                 log will be committed. Add members back, and remove the flag"
            );
            log_id
        }
    };
    write_marker(&config.data_dir, &marker_path, &Marker { log_id })
}

fn read_marker(path: &Path) -> Result<Option<Marker>, ServerError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ServerError::Config(format!("{}: unreadable ({e})", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(dir_error(path, e)),
    }
}

fn write_marker(dir: &Path, path: &Path, marker: &Marker) -> Result<(), ServerError> {
    let bytes =
        serde_json::to_vec(marker).map_err(|e| dir_error(path, std::io::Error::other(e)))?;
    crate::datadir::write_durably(dir, path, &bytes).map_err(|e| dir_error(path, e))
}

fn remove_marker(dir: &Path, path: &Path) -> Result<(), ServerError> {
    match std::fs::remove_file(path) {
        Ok(()) => std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| dir_error(dir, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(dir_error(path, e)),
    }
}

fn dir_error(path: &Path, source: std::io::Error) -> ServerError {
    ServerError::DataDir {
        path: PathBuf::from(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId) -> Node {
        Node::new(format!("127.0.0.1:{}", 7100 + id), "")
    }

    fn members(voters: &[NodeId], learners: &[NodeId]) -> Membership<NodeId, Node> {
        let nodes: BTreeMap<NodeId, Node> = voters
            .iter()
            .chain(learners)
            .map(|id| (*id, node(*id)))
            .collect();
        Membership::new(vec![voters.iter().copied().collect()], nodes)
    }

    fn log_id(term: u64, leader: NodeId, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, leader), index)
    }

    #[test]
    fn forces_a_membership_of_itself_after_the_last_entry() {
        let vote = Vote::new_committed(4, 2);
        let plan = plan(
            1,
            &node(1),
            Some(vote),
            Some(log_id(3, 2, 500)),
            &members(&[1, 2, 3], &[]),
            None,
        )
        .unwrap();
        let Plan::Force { vote, entry } = plan else {
            panic!("{plan:?}")
        };
        // Above the vote's term and every entry's, as this node's own.
        assert_eq!(vote, Vote::new(5, 1));
        assert!(!vote.committed);
        assert_eq!(entry.log_id, log_id(5, 1, 501));
        let EntryPayload::Membership(m) = &entry.payload else {
            panic!("{entry:?}")
        };
        assert_eq!(m.get_joint_config(), &vec![BTreeSet::from([1])]);
        assert_eq!(m.nodes().count(), 1);

        // A log whose newest term is past the vote's (a follower that
        // accepted entries, then restarted).
        let Ok(Plan::Force { vote, .. }) = super::plan(
            1,
            &node(1),
            Some(Vote::new(2, 3)),
            Some(log_id(7, 2, 9)),
            &members(&[1, 2, 3], &[]),
            None,
        ) else {
            panic!()
        };
        assert_eq!(vote.leader_id.term, 8);
    }

    #[test]
    fn refusals_and_repeats() {
        let three = members(&[1, 2, 3], &[]);
        let err = plan(1, &node(1), None, None, &three, None).unwrap_err();
        assert!(err.contains("holds no Raft log"), "{err}");

        let err = plan(4, &node(4), None, Some(log_id(1, 1, 9)), &three, None).unwrap_err();
        assert!(
            err.contains("node 4 is not in the last membership"),
            "{err}"
        );

        // Alone already: nothing to write, with or without the marker.
        let alone = members(&[1], &[]);
        let last = Some(log_id(5, 1, 501));
        let marker = Some(Marker {
            log_id: log_id(5, 1, 501),
        });
        for m in [None, marker] {
            assert_eq!(
                plan(1, &node(1), None, last, &alone, m),
                Ok(Plan::AlreadyAlone)
            );
        }

        // Members added back since the forced start: left-on flag refused.
        for grown in [members(&[1], &[4]), members(&[1, 4, 5], &[])] {
            let err = plan(1, &node(1), None, last, &grown, marker).unwrap_err();
            assert!(err.contains("already applied"), "{err}");
            assert!(err.contains("Remove the flag"), "{err}");
            // Without the marker (a start without the flag came between),
            // it is a new disaster: forced again.
            assert!(matches!(
                plan(1, &node(1), None, last, &grown, None),
                Ok(Plan::Force { .. })
            ));
        }
    }

    #[test]
    fn a_learner_may_be_forced() {
        let plan = plan(
            3,
            &node(3),
            None,
            Some(log_id(2, 1, 40)),
            &members(&[1, 2], &[3]),
            None,
        );
        assert!(matches!(plan, Ok(Plan::Force { .. })), "{plan:?}");
    }
}
