//! Command execution: one `apply` call runs its entries against the
//! multi-version store and an overlay of its not-yet-written records, then
//! commits every record, session and meta change as one atomic batch and
//! only then publishes the new revision to readers.

use std::borrow::Cow;

use nines_types::{
    Command, CommandResult, Compare, Entry, Keep, KeyRange, KeyValue, LeaseRemaining, LogId,
    RangeRequest, RejectReason, Request, Response, StoredMembership, TxnOp, TxnOpResponse,
};
use openraft::EntryPayload;

use crate::engine::{Engine, Write};
use crate::error::StateError;
use crate::mvcc::{
    compare_key, encode_record, key_value, record_of, rev_key, value_of, KeyAt, Mvcc, RecordHeader,
    Rev,
};
use crate::overlay::Overlay;
use crate::sessions::{self, Check, Sessions};
use crate::store::{
    encode, StateOptions, META_APPLIED, META_COMPACTED, META_MEMBERSHIP, META_REVISION,
};

/// What an `apply` call produced.
pub(crate) struct Applied {
    pub responses: Vec<Response>,
    /// The last entry's log id; None if there were no entries.
    pub applied: Option<LogId>,
    /// The new compacted revision, if a command compacted: its dropped
    /// records are still in the engine, for the sweep to delete.
    pub compacted: Option<i64>,
}

/// Executes `entries`, hands all their writes to `commit` (which must write
/// them atomically), then publishes the new revision. On any error the
/// index forgets this call's writes and nothing is published.
pub(crate) fn apply_entries<E: Engine>(
    mvcc: &Mvcc<E>,
    opts: &StateOptions,
    entries: &[Entry],
    commit: impl FnOnce(Vec<Write>) -> Result<(), StateError>,
) -> Result<Applied, StateError> {
    // Dropped unpublished on every early return, which undoes its index updates.
    let mut exec = Executor::new(mvcc, opts);
    let mut responses = Vec::with_capacity(entries.len());
    for entry in entries {
        responses.push(exec.apply_entry(entry)?);
    }
    let applied = exec.applied;
    if applied.is_some() {
        // No flush: the Raft log is durable and openraft re-applies
        // committed entries after a crash.
        let writes = exec.finish()?;
        let added = Mvcc::<E>::record_bytes_of(&writes);
        commit(writes)?;
        mvcc.add_record_bytes(added);
        mvcc.publish(exec.revision);
    }
    exec.published = true;
    // After publishing: the compacted revision may be one this call wrote.
    let compacted = exec.compact_to;
    if let Some(at) = compacted {
        mvcc.compact(at);
    }
    Ok(Applied {
        responses,
        applied,
        compacted,
    })
}

/// Executes entries of one `apply` call.
struct Executor<'a, E: Engine> {
    mvcc: &'a Mvcc<E>,
    overlay: Overlay<'a, E>,
    opts: &'a StateOptions,
    /// The published revision when this call began.
    base: i64,
    revision: i64,
    revision_changed: bool,
    applied: Option<LogId>,
    membership: Option<StoredMembership>,
    sessions: Sessions,
    /// Sub index of the current command's next write.
    sub: u32,
    /// Keys this call wrote to the index, to undo if it fails.
    touched: Vec<Vec<u8>>,
    published: bool,
    /// A compaction this call applied, done to the index once published.
    compact_to: Option<i64>,
}

impl<E: Engine> Drop for Executor<'_, E> {
    fn drop(&mut self) {
        if !self.published {
            self.mvcc
                .index_mut()
                .truncate_after(&self.touched, self.base);
        }
    }
}

impl<'a, E: Engine> Executor<'a, E> {
    fn new(mvcc: &'a Mvcc<E>, opts: &'a StateOptions) -> Self {
        let base = mvcc.revision();
        Self {
            mvcc,
            overlay: Overlay::new(&mvcc.engine),
            opts,
            base,
            revision: base,
            revision_changed: false,
            applied: None,
            membership: None,
            sessions: Sessions::default(),
            sub: 0,
            touched: Vec::new(),
            published: false,
            compact_to: None,
        }
    }

    /// Applies one log entry and returns its response.
    fn apply_entry(&mut self, entry: &Entry) -> Result<Response, StateError> {
        let index = entry.log_id.index;
        self.applied = Some(entry.log_id);
        let response = match &entry.payload {
            EntryPayload::Blank => self.empty(),
            EntryPayload::Membership(m) => {
                self.membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                self.empty()
            }
            EntryPayload::Normal(Request {
                command: Command::Batch(requests),
                ..
            }) => {
                let mut responses = Vec::with_capacity(requests.len());
                for request in requests {
                    responses.push(self.apply_request(request, index)?);
                }
                Response {
                    revision: self.revision,
                    result: CommandResult::Batch(responses),
                }
            }
            EntryPayload::Normal(request) => self.apply_request(request, index)?,
        };
        if index.is_multiple_of(sessions::SWEEP_EVERY) {
            self.sessions.sweep(&mut self.overlay, self.opts, index)?;
        }
        Ok(response)
    }

    /// All records plus the changed meta and sessions, for one batch.
    fn finish(&mut self) -> Result<Vec<Write>, StateError> {
        if let Some(applied) = self.applied {
            self.overlay
                .put(META_APPLIED.to_vec(), encode(&Some(applied))?);
        }
        if let Some(membership) = &self.membership {
            self.overlay
                .put(META_MEMBERSHIP.to_vec(), encode(membership)?);
        }
        if self.revision_changed {
            self.overlay
                .put(META_REVISION.to_vec(), encode(&self.revision)?);
        }
        if let Some(at) = self.compact_to {
            self.overlay.put(META_COMPACTED.to_vec(), encode(&at)?);
        }
        self.sessions.finish(&mut self.overlay)?;
        let mvcc = self.mvcc;
        let overlay = std::mem::replace(&mut self.overlay, Overlay::new(&mvcc.engine));
        Ok(overlay.into_writes())
    }

    fn empty(&self) -> Response {
        Response {
            revision: self.revision,
            result: CommandResult::Empty,
        }
    }

    fn apply_request(&mut self, request: &Request, index: u64) -> Result<Response, StateError> {
        let Some(session) = request.session else {
            return self.execute(&request.command);
        };
        let hash = sessions::request_hash(&request.command)?;
        let previous = match self
            .sessions
            .check(&self.overlay, session, hash, self.revision)?
        {
            Check::Answer(response) => return Ok(response),
            Check::Execute { previous } => previous,
        };
        let response = self.execute(&request.command)?;
        // Only a txn of reads may run again: a write that changed nothing
        // this time (a delete of nothing, a txn whose compare failed, a
        // refused put) can change something when a late copy of it runs
        // after its answer was given (another client created the key
        // meanwhile), so its answer is kept like any write's.
        let rerun = request.command.is_read_only();
        self.sessions.record(
            &mut self.overlay,
            self.opts,
            session,
            hash,
            index,
            previous,
            &response,
            rerun,
        )?;
        Ok(response)
    }

    fn execute(&mut self, command: &Command) -> Result<Response, StateError> {
        // Fixed bounds, never this member's flags: every member must apply
        // an entry alike (`Limits::APPLY`).
        if let Err(e) = nines_types::Limits::APPLY.check_command(command) {
            return Ok(Response {
                revision: self.revision,
                result: CommandResult::Rejected(RejectReason::InvalidInput(e.to_string())),
            });
        }
        // Every write of this command is stored at `rev` (sub 0, 1, ...); it
        // becomes the store revision only if something actually changed.
        let rev = self.revision + 1;
        self.sub = 0;
        let mut changed = false;
        let result = match command {
            Command::Put {
                key,
                value,
                lease,
                prev_kv,
            } => {
                if !self.lease_exists(*lease) {
                    return Ok(self.rejected(RejectReason::LeaseNotFound(*lease)));
                }
                changed = true;
                CommandResult::Put {
                    prev_kv: self.put(key, value, *lease, *prev_kv, rev)?,
                }
            }
            Command::Delete { key, prev_kv } => {
                let (deleted, prev_kvs) =
                    self.delete(&KeyRange::Single(key.clone()), *prev_kv, rev)?;
                changed = deleted > 0;
                CommandResult::Delete { deleted, prev_kvs }
            }
            Command::DeleteRange { range, prev_kv } => {
                let (deleted, prev_kvs) = self.delete(range, *prev_kv, rev)?;
                changed = deleted > 0;
                CommandResult::Delete { deleted, prev_kvs }
            }
            Command::PutKeeping {
                key,
                value,
                lease,
                prev_kv,
                keep,
            } => match self.kept_value(key, value, *keep)? {
                None => CommandResult::Rejected(RejectReason::KeyNotFound(key.clone())),
                Some(_) if !keep.lease && !self.lease_exists(*lease) => {
                    CommandResult::Rejected(RejectReason::LeaseNotFound(*lease))
                }
                Some(value) => {
                    changed = true;
                    let lease = self.kept_lease(key, *lease, *keep);
                    CommandResult::Put {
                        prev_kv: self.put(key, &value, lease, *prev_kv, rev)?,
                    }
                }
            },
            Command::Txn(txn) => {
                let mut succeeded = true;
                for compare in &txn.compares {
                    succeeded &= self.compare(compare)?;
                }
                let ops = if succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
                if let Some(key) = self.missing_kept_key(ops) {
                    // Refused before any op runs: nothing to undo.
                    return Ok(self.rejected(RejectReason::KeyNotFound(key)));
                }
                if let Some(lease) = self.missing_lease(ops) {
                    return Ok(self.rejected(RejectReason::LeaseNotFound(lease)));
                }
                let mut responses = Vec::with_capacity(ops.len());
                for op in ops {
                    responses.push(match op {
                        TxnOp::Put {
                            key,
                            value,
                            prev_kv,
                        } => {
                            changed = true;
                            TxnOpResponse::Put {
                                prev_kv: self.put(key, value, 0, *prev_kv, rev)?,
                            }
                        }
                        TxnOp::PutLeased {
                            key,
                            value,
                            lease,
                            prev_kv,
                        } => {
                            changed = true;
                            TxnOpResponse::Put {
                                prev_kv: self.put(key, value, *lease, *prev_kv, rev)?,
                            }
                        }
                        TxnOp::PutKeeping {
                            key,
                            value,
                            lease,
                            prev_kv,
                            keep,
                        } => {
                            let value = self.kept_value(key, value, *keep)?.ok_or_else(|| {
                                StateError::CorruptState(
                                    "a kept put's key vanished after its check".into(),
                                )
                            })?;
                            changed = true;
                            let lease = self.kept_lease(key, *lease, *keep);
                            TxnOpResponse::Put {
                                prev_kv: self.put(key, &value, lease, *prev_kv, rev)?,
                            }
                        }
                        TxnOp::Delete { range, prev_kv } => {
                            let (deleted, prev_kvs) = self.delete(range, *prev_kv, rev)?;
                            changed |= deleted > 0;
                            TxnOpResponse::Delete { deleted, prev_kvs }
                        }
                        TxnOp::GetWith(req, options) => {
                            TxnOpResponse::Get(self.mvcc.range_latest_with(req, options, |r| {
                                self.overlay.get(&rev_key(r))
                            })?)
                        }
                        TxnOp::Get(req) => TxnOpResponse::Get(
                            self.mvcc
                                .range_latest(req, |r| self.overlay.get(&rev_key(r)))?,
                        ),
                    });
                }
                CommandResult::Txn {
                    succeeded,
                    responses,
                }
            }
            Command::Compact { revision, .. } => self.compact(*revision),
            Command::LeaseGrant { id, ttl } => {
                let granted = self.mvcc.leases_mut().grant(&mut self.overlay, *id, *ttl)?;
                if granted {
                    CommandResult::LeaseGranted { id: *id, ttl: *ttl }
                } else {
                    CommandResult::Rejected(RejectReason::LeaseExists(*id))
                }
            }
            Command::LeaseRevoke { id } => {
                let keys = self.mvcc.leases_mut().revoke(&mut self.overlay, *id);
                match keys {
                    None => CommandResult::Rejected(RejectReason::LeaseNotFound(*id)),
                    Some(keys) => {
                        let mut deleted = 0;
                        for key in keys {
                            deleted += self.delete(&KeyRange::Single(key), false, rev)?.0;
                        }
                        changed = deleted > 0;
                        CommandResult::LeaseRevoked { deleted }
                    }
                }
            }
            Command::Auth(auth) => {
                let done = self.mvcc.auth_mut().apply(&mut self.overlay, auth)?;
                match done {
                    Ok(auth_revision) => CommandResult::AuthChanged { auth_revision },
                    Err(reason) => CommandResult::Rejected(RejectReason::Auth(reason)),
                }
            }
            Command::LeaseCheckpoint(list) => self.checkpoint(list)?,
            Command::LeaseCheckpointOf { term, list } => {
                // Only from an entry of the term that took it (see the
                // command's doc).
                let entry_term = self.applied.map(|l| l.leader_id.get_term());
                if entry_term == Some(*term) {
                    self.checkpoint(list)?;
                }
                CommandResult::Empty
            }
            // Batches are unpacked by apply_entry; one inside a batch is refused.
            Command::Batch(_) => CommandResult::Rejected(RejectReason::InvalidInput(
                nines_types::InputError::NestedBatch.to_string(),
            )),
        };
        if changed {
            self.revision = rev;
            self.revision_changed = true;
        }
        Ok(Response {
            revision: self.revision,
            result,
        })
    }

    /// Records the leader's remaining TTLs.
    fn checkpoint(&mut self, list: &[LeaseRemaining]) -> Result<CommandResult, StateError> {
        let mut leases = self.mvcc.leases_mut();
        for c in list {
            leases.checkpoint(&mut self.overlay, c.id, c.remaining)?;
        }
        Ok(CommandResult::Empty)
    }

    fn rejected(&self, reason: RejectReason) -> Response {
        Response {
            revision: self.revision,
            result: CommandResult::Rejected(reason),
        }
    }

    /// Whether a put may name `lease`: none (0), or one granted.
    fn lease_exists(&self, lease: i64) -> bool {
        lease == 0 || self.mvcc.leases().contains(lease)
    }

    /// The lease a put with `keep` attaches: the key's own with
    /// `ignore_lease`, else the request's.
    fn kept_lease(&self, key: &[u8], lease: i64, keep: Keep) -> i64 {
        if keep.lease {
            self.mvcc.leases().lease_of(key)
        } else {
            lease
        }
    }

    /// The first lease a txn branch puts with that is not granted.
    fn missing_lease(&self, ops: &[TxnOp]) -> Option<i64> {
        ops.iter().find_map(|op| match op {
            TxnOp::PutLeased { lease, .. }
            | TxnOp::PutKeeping {
                lease,
                keep: Keep { lease: false, .. },
                ..
            } if !self.lease_exists(*lease) => Some(*lease),
            _ => None,
        })
    }

    /// etcd's checks: a compaction must move forward and stay within the
    /// history written so far (this call's unpublished writes included;
    /// the index is compacted only after they are published).
    fn compact(&mut self, revision: i64) -> CommandResult {
        let compacted = self.compact_to.unwrap_or_else(|| self.mvcc.compacted());
        if revision == 0 && compacted == 0 {
            // etcd: compacting to 0 a store never compacted is accepted and
            // removes nothing (its compacted revision starts below 0).
            CommandResult::Compacted { revision: 0 }
        } else if revision <= compacted {
            CommandResult::Rejected(RejectReason::Compacted {
                requested: revision,
                compacted,
            })
        } else if revision > self.revision {
            CommandResult::Rejected(RejectReason::FutureRevision {
                requested: revision,
                current: self.revision,
            })
        } else {
            self.compact_to = Some(revision);
            CommandResult::Compacted { revision }
        }
    }

    /// The value a put with `keep` writes, or None if the key is missing
    /// (etcd: "key not found"); keeping the lease needs the key too.
    fn kept_value<'v>(
        &self,
        key: &[u8],
        value: &'v [u8],
        keep: Keep,
    ) -> Result<Option<Cow<'v, [u8]>>, StateError> {
        let Some(at) = self.mvcc.latest(key) else {
            return Ok(None);
        };
        if !keep.value {
            return Ok(Some(Cow::Borrowed(value)));
        }
        let current = value_of(key, at.rev, |r| self.overlay.get(&rev_key(r)))?;
        Ok(Some(Cow::Owned(current)))
    }

    /// The key of the first kept put in `ops` whose key will be missing when
    /// it runs, given the ops before it. etcd checks against the state before
    /// the txn and panics if an earlier op deleted the key; we refuse the txn.
    fn missing_kept_key(&self, ops: &[TxnOp]) -> Option<Vec<u8>> {
        ops.iter().enumerate().find_map(|(i, op)| {
            let TxnOp::PutKeeping { key, .. } = op else {
                return None;
            };
            let exists = ops[..i]
                .iter()
                .rev()
                .find_map(|earlier| match earlier {
                    TxnOp::Delete { range, .. } if range.contains(key) => Some(false),
                    op if op.put_key() == Some(key.as_slice()) => Some(true),
                    _ => None,
                })
                .unwrap_or_else(|| self.mvcc.latest(key).is_some());
            (!exists).then(|| key.clone())
        })
    }

    /// The key as it is now, with its value (unwritten records included).
    fn current_kv(&self, key: &[u8], at: KeyAt) -> Result<KeyValue, StateError> {
        let (value, lease) = record_of(key, at.rev, |r| self.overlay.get(&rev_key(r)), true)?;
        Ok(key_value(key.to_vec(), value, at, lease))
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        want_prev: bool,
        rev: i64,
    ) -> Result<Option<KeyValue>, StateError> {
        let prev = self.mvcc.latest(key);
        let prev_kv = match prev {
            Some(at) if want_prev => Some(self.current_kv(key, at)?),
            _ => None,
        };
        let (create_revision, version) = match prev {
            Some(p) => (p.create_revision, p.version.saturating_add(1)),
            None => (rev, 1),
        };
        let header = RecordHeader {
            key: key.to_vec(),
            tombstone: false,
            create_revision,
            version,
            lease,
        };
        if lease != 0 {
            // Before the record exists, so no reader misses its lease.
            self.mvcc.note_leased();
        }
        self.write(header, value, rev)?;
        self.mvcc.leases_mut().attach(&mut self.overlay, key, lease);
        Ok(prev_kv)
    }

    fn delete(
        &mut self,
        range: &KeyRange,
        want_prev: bool,
        rev: i64,
    ) -> Result<(u64, Vec<KeyValue>), StateError> {
        let live = RangeRequest {
            range: range.clone(),
            limit: 0,
            // The values are read only to be returned.
            keys_only: !want_prev,
            count_only: false,
        };
        let found = self
            .mvcc
            .range_latest(&live, |r| self.overlay.get(&rev_key(r)))?;
        for kv in &found.kvs {
            let header = RecordHeader {
                key: kv.key.clone(),
                tombstone: true,
                create_revision: 0,
                version: 0,
                lease: 0,
            };
            self.write(header, &[], rev)?;
            self.mvcc.leases_mut().detach(&mut self.overlay, &kv.key);
        }
        let prev_kvs = if want_prev { found.kvs } else { Vec::new() };
        Ok((found.count, prev_kvs))
    }

    /// Stores one write at `(rev, next sub)` and adds it to the index.
    fn write(&mut self, header: RecordHeader, value: &[u8], rev: i64) -> Result<(), StateError> {
        let at = Rev {
            main: rev,
            sub: self.sub,
        };
        self.sub = self.sub.checked_add(1).ok_or_else(|| {
            StateError::CorruptState("more than 2^32 writes in one command".into())
        })?;
        self.overlay
            .put(rev_key(at).to_vec(), encode_record(&header, value)?);
        self.touched.push(header.key.clone());
        let mut index = self.mvcc.index_mut();
        if header.tombstone {
            index.tombstone(&header.key, at)
        } else {
            index.put(&header.key, at)
        }
    }

    /// etcd's compare, on the newest state (this call's writes included).
    fn compare(&self, compare: &Compare) -> Result<bool, StateError> {
        let current = self.mvcc.latest(&compare.key);
        compare_key(compare, current, |rev| {
            value_of(&compare.key, rev, |r| self.overlay.get(&rev_key(r)))
        })
    }
}
