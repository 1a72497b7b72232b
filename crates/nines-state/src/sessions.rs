//! Exactly-once sessions: the table that lets a client retry a write.
//!
//! A request may carry `(client_id, seq)`. The table keeps, per client id,
//! ONE record: the last seq, the log index of its last use, a hash of the
//! request and what a retry of that seq gets back. Rules, in order:
//!
//! - `seq` below the record's: `StaleSequence` (the response is gone).
//! - `seq` equal, different request hash: `SessionSeqReused` (two clients
//!   share an id, or one restarted its seq; applying or acknowledging it
//!   would silently drop a write).
//! - `seq` equal, same hash: the stored outcome (below).
//! - unknown client id with `seq > 1`: `SessionUnknown`. The id expired or
//!   was evicted, so a late retry cannot be told from a new write; refusing
//!   is the only choice that never applies a write twice. The client starts
//!   a new id at seq 1 (a retry of a forgotten seq 1 is the one case that is
//!   still re-applied: it would have to outlive the whole window).
//! - otherwise the request is executed and its outcome recorded.
//!
//! What is stored (the record holds what a retry needs, no more):
//! - a txn of reads only: `Rerun`, no response. Its retry runs it again;
//!   that is sound because a read that nobody saw can be dropped from the
//!   history, and a read cannot change anything. Read results are never
//!   stored for it.
//! - anything else, even when it changed nothing this time (a delete of
//!   nothing, a txn whose compare failed, a refused command): a late copy
//!   run again could change what its answer told (it deleted nothing, then
//!   deletes the key another client has since created), so it is kept as a
//!   write is:
//! - a write whose encoded response is at most `KEEP_RESPONSE_BYTES`: the
//!   whole response, returned as-is to a retry (same shape, incl. the reads
//!   of a mixed txn and prev_kv).
//! - a larger one (big prev_kvs or txn reads): only its revision; a retry
//!   gets `ResponseNotRetained` naming that revision, never a response with
//!   reads silently emptied.
//!
//! Bounds: a client id idle for `session_ttl_entries` (default 100,000) log
//! entries is swept, every `SWEEP_EVERY` entries; at most `max_sessions`
//! (default 65,536) ids are kept, a new one evicting the least recently
//! used. Both are deterministic (log indexes only), so replicas agree. Worst
//! case ~65,536 × (1 KiB + ~60 B) ≈ 70 MiB; typical records are < 100 B.
//!
//! Layout change: records written by older versions (whole responses, no
//! hash) do not decode; old data dirs are not readable (pre-1.0).

use std::borrow::Cow;
use std::cmp::Ordering;

use nines_types::{AuthCommand, Command, CommandResult, RejectReason, Response, Session};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::StateError;
use crate::overlay::Overlay;
use crate::store::{decode, encode, session_key, StateOptions, META_SESSIONS, SESSION_LRU_PREFIX};

pub(crate) const DEFAULT_TTL_ENTRIES: u64 = 100_000;
pub(crate) const DEFAULT_MAX_SESSIONS: u64 = 65_536;
/// Sessions are swept when the applied index is a multiple of this.
pub(crate) const SWEEP_EVERY: u64 = 4096;
/// Responses up to this size are kept whole for retries.
pub(crate) const KEEP_RESPONSE_BYTES: usize = 1024;

/// What an `s` key stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub seq: u64,
    pub last_index: u64,
    pub request_hash: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// A txn of reads only: a retry executes it again.
    Rerun,
    /// The response, returned as-is to a retry.
    Response(Response),
    /// Applied at `revision`; the response was too large to keep.
    NotRetained { revision: i64 },
}

/// What to do with a request that carries a session.
pub(crate) enum Check {
    /// Answer with this, execute nothing.
    Answer(Response),
    /// Execute; `previous` is the client's record, if any.
    Execute { previous: Option<SessionRecord> },
}

/// A stable 64-bit hash (FNV-1a) of the bincode encoding of a command's
/// identity: the same on every replica and across builds as long as the
/// layout is.
pub(crate) fn request_hash(command: &Command) -> Result<u64, StateError> {
    let bytes = encode(&identity(command))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(h)
}

/// What a retry must repeat: the command less the bytes its proposer
/// picks afresh on every attempt (the token secret of `auth enable`, a
/// password's salted hash). Without this an honest retry of `user add`
/// would be refused as a reused sequence.
fn identity(command: &Command) -> Cow<'_, Command> {
    let redacted = match command {
        Command::Auth(AuthCommand::Enable { .. }) => AuthCommand::Enable { secret: Vec::new() },
        Command::Auth(AuthCommand::UserAdd {
            name,
            password_hash,
        }) => AuthCommand::UserAdd {
            name: name.clone(),
            password_hash: password_hash.as_ref().map(|_| String::new()),
        },
        Command::Auth(AuthCommand::UserChangePassword { name, .. }) => {
            AuthCommand::UserChangePassword {
                name: name.clone(),
                password_hash: String::new(),
            }
        }
        _ => return Cow::Borrowed(command),
    };
    Cow::Owned(Command::Auth(redacted))
}

fn lru_key(last_index: u64, client_id: u64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(17);
    raw.push(SESSION_LRU_PREFIX);
    raw.extend_from_slice(&last_index.to_be_bytes());
    raw.extend_from_slice(&client_id.to_be_bytes());
    raw
}

fn client_of_lru_key(key: &[u8]) -> Result<u64, StateError> {
    key.get(9..17)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StateError::CorruptState(format!("bad session index key {key:?}")))
}

fn reject(revision: i64, reason: RejectReason) -> Response {
    Response {
        revision,
        result: CommandResult::Rejected(reason),
    }
}

/// The session table as seen by one apply batch.
#[derive(Default)]
pub(crate) struct Sessions {
    /// Number of records, loaded on first use.
    count: Option<u64>,
    count_changed: bool,
}

impl Sessions {
    pub fn check<E: Engine>(
        &self,
        overlay: &Overlay<'_, E>,
        session: Session,
        hash: u64,
        revision: i64,
    ) -> Result<Check, StateError> {
        let Session { client_id, seq } = session;
        let Some(raw) = overlay.get(&session_key(client_id))? else {
            if seq > 1 {
                return Ok(Check::Answer(reject(
                    revision,
                    RejectReason::SessionUnknown { client_id, seq },
                )));
            }
            return Ok(Check::Execute { previous: None });
        };
        let record: SessionRecord = decode(&raw)?;
        let answer = match seq.cmp(&record.seq) {
            Ordering::Less => reject(
                revision,
                RejectReason::StaleSequence {
                    client_id,
                    seq,
                    last_seq: record.seq,
                },
            ),
            Ordering::Equal if record.request_hash != hash => {
                reject(revision, RejectReason::SessionSeqReused { client_id, seq })
            }
            Ordering::Equal => match &record.outcome {
                Outcome::Response(response) => response.clone(),
                Outcome::NotRetained { revision: applied } => reject(
                    revision,
                    RejectReason::ResponseNotRetained {
                        client_id,
                        seq,
                        revision: *applied,
                    },
                ),
                Outcome::Rerun => {
                    return Ok(Check::Execute {
                        previous: Some(record),
                    })
                }
            },
            Ordering::Greater => {
                return Ok(Check::Execute {
                    previous: Some(record),
                })
            }
        };
        Ok(Check::Answer(answer))
    }

    /// Records the outcome of an executed request.
    #[allow(clippy::too_many_arguments)]
    pub fn record<E: Engine>(
        &mut self,
        overlay: &mut Overlay<'_, E>,
        opts: &StateOptions,
        session: Session,
        hash: u64,
        index: u64,
        previous: Option<SessionRecord>,
        response: &Response,
        rerun: bool,
    ) -> Result<(), StateError> {
        let outcome = if rerun {
            Outcome::Rerun
        } else {
            let kept = Outcome::Response(response.clone());
            if encode(&kept)?.len() <= KEEP_RESPONSE_BYTES {
                kept
            } else {
                Outcome::NotRetained {
                    revision: response.revision,
                }
            }
        };
        match previous {
            Some(prev) => overlay.remove(lru_key(prev.last_index, session.client_id)),
            None => {
                let count = self.count(overlay)?;
                if count >= opts.max_sessions.max(1) {
                    self.evict_oldest(overlay)?;
                }
                self.add(overlay, 1)?;
            }
        }
        let record = SessionRecord {
            seq: session.seq,
            last_index: index,
            request_hash: hash,
            outcome,
        };
        overlay.put(lru_key(index, session.client_id), Vec::new());
        overlay.put(session_key(session.client_id), encode(&record)?);
        Ok(())
    }

    /// Deterministic expiry: every replica sweeps at the same indexes.
    pub fn sweep<E: Engine>(
        &mut self,
        overlay: &mut Overlay<'_, E>,
        opts: &StateOptions,
        index: u64,
    ) -> Result<(), StateError> {
        let Some(cutoff) = index.checked_sub(opts.session_ttl_entries) else {
            return Ok(());
        };
        // Expired: last_index + ttl < index, i.e. last_index < cutoff.
        let start = [SESSION_LRU_PREFIX];
        let end = lru_key(cutoff, 0);
        let mut expired = Vec::new();
        overlay.scan(&start, &end, |key, _| {
            expired.push(key.to_vec());
            Ok(true)
        })?;
        for key in expired {
            self.forget(overlay, key)?;
        }
        Ok(())
    }

    /// Writes the changed count into the batch.
    pub fn finish<E: Engine>(&self, overlay: &mut Overlay<'_, E>) -> Result<(), StateError> {
        if let (true, Some(count)) = (self.count_changed, self.count) {
            overlay.put(META_SESSIONS.to_vec(), encode(&count)?);
        }
        Ok(())
    }

    fn evict_oldest<E: Engine>(&mut self, overlay: &mut Overlay<'_, E>) -> Result<(), StateError> {
        let mut oldest = None;
        overlay.scan(
            &[SESSION_LRU_PREFIX],
            &[SESSION_LRU_PREFIX + 1],
            |key, _| {
                oldest = Some(key.to_vec());
                Ok(false)
            },
        )?;
        match oldest {
            Some(key) => self.forget(overlay, key),
            None => Ok(()),
        }
    }

    fn forget<E: Engine>(
        &mut self,
        overlay: &mut Overlay<'_, E>,
        lru: Vec<u8>,
    ) -> Result<(), StateError> {
        let client_id = client_of_lru_key(&lru)?;
        overlay.remove(lru);
        overlay.remove(session_key(client_id));
        self.add(overlay, -1)
    }

    fn count<E: Engine>(&mut self, overlay: &Overlay<'_, E>) -> Result<u64, StateError> {
        if let Some(count) = self.count {
            return Ok(count);
        }
        let count = match overlay.get(META_SESSIONS)? {
            Some(raw) => decode(&raw)?,
            None => 0,
        };
        self.count = Some(count);
        Ok(count)
    }

    fn add<E: Engine>(&mut self, overlay: &Overlay<'_, E>, delta: i64) -> Result<(), StateError> {
        let count = self.count(overlay)?;
        self.count = Some(count.saturating_add_signed(delta));
        self.count_changed = true;
        Ok(())
    }
}
