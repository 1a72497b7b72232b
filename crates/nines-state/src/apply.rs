//! Command execution: pure logic over an overlay of not-yet-written changes.
//!
//! A batch of entries is executed against `Overlay` (sled tree + pending
//! writes); reads see earlier writes of the same batch. The caller then
//! writes the overlay, meta included, as one atomic sled batch.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

use nines_types::{
    Command, CommandResult, Compare, CompareOp, CompareTarget, Entry, KeyRange, KeyValue, LogId,
    RangeRequest, RangeResponse, RejectReason, Request, Response, StoredMembership, TxnOp,
    TxnOpResponse,
};
use openraft::EntryPayload;

use crate::error::StateError;
use crate::sessions::{self, Check, Sessions};
use crate::store::{
    data_key, decode, encode, StateOptions, StoredValue, DATA_PREFIX, META_APPLIED,
    META_MEMBERSHIP, META_REVISION,
};

/// The tree as it will be once `writes` are applied.
pub(crate) struct Overlay<'a> {
    tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    pub fn new(tree: &'a sled::Tree) -> Self {
        Self {
            tree,
            writes: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    pub fn into_writes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.writes
    }

    /// Visits live keys in `[start, end)` in order until `f` returns false.
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, StateError>,
    ) -> Result<(), StateError> {
        if start >= end {
            return Ok(());
        }
        let mut tree_iter = self.tree.range(start..end);
        let mut pending = self
            .writes
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        let mut t = tree_iter.next().transpose()?;
        let mut p = pending.next();
        loop {
            let order = match (&t, &p) {
                (None, None) => return Ok(()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((tk, _)), Some((pk, _))) => tk.as_ref().cmp(pk.as_slice()),
            };
            if order == Ordering::Less {
                if let Some((k, v)) = t.take() {
                    if !f(&k, &v)? {
                        return Ok(());
                    }
                }
                t = tree_iter.next().transpose()?;
                continue;
            }
            if order == Ordering::Equal {
                // The pending write shadows the tree's value.
                t = tree_iter.next().transpose()?;
            }
            if let Some((k, Some(v))) = p.take() {
                if !f(k, v)? {
                    return Ok(());
                }
            }
            p = pending.next();
        }
    }

    fn get_value(&self, key: &[u8]) -> Result<Option<StoredValue>, StateError> {
        self.get(&data_key(key))?.map(|v| decode(&v)).transpose()
    }

    /// Calls `f` for each user key in `range` with its stored value.
    fn scan_range(
        &self,
        range: &KeyRange,
        mut f: impl FnMut(&[u8], StoredValue) -> Result<bool, StateError>,
    ) -> Result<(), StateError> {
        self.scan_range_raw(range, |key, raw| f(key, decode(raw)?))
    }

    /// Like `scan_range`, with the value still encoded: counting keys past a
    /// range's limit need not decode them.
    fn scan_range_raw(
        &self,
        range: &KeyRange,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, StateError>,
    ) -> Result<(), StateError> {
        let (start, end) = match range {
            KeyRange::Single(key) => {
                if let Some(raw) = self.get(&data_key(key))? {
                    f(key, &raw)?;
                }
                return Ok(());
            }
            KeyRange::Between { start, end } => (data_key(start), data_key(end)),
            KeyRange::From(start) => (data_key(start), vec![DATA_PREFIX + 1]),
        };
        self.scan(&start, &end, |raw, v| f(&raw[1..], v))
    }

    /// etcd Range: `count` is every match; `limit` cuts `kvs` and sets `more`.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StateError> {
        let mut resp = RangeResponse::default();
        let limit = if req.limit == 0 { u64::MAX } else { req.limit };
        self.scan_range_raw(&req.range, |key, raw| {
            resp.count += 1;
            if !req.count_only && (resp.kvs.len() as u64) < limit {
                let v: StoredValue = decode(raw)?;
                resp.kvs.push(v.into_kv(key, req.keys_only));
            }
            Ok(true)
        })?;
        resp.more = !req.count_only && resp.count > resp.kvs.len() as u64;
        Ok(resp)
    }
}

/// Executes entries of one `apply` call against an overlay.
pub(crate) struct Executor<'a> {
    overlay: Overlay<'a>,
    opts: &'a StateOptions,
    revision: i64,
    revision_changed: bool,
    applied: Option<LogId>,
    membership: Option<StoredMembership>,
    sessions: Sessions,
}

impl<'a> Executor<'a> {
    pub fn new(tree: &'a sled::Tree, revision: i64, opts: &'a StateOptions) -> Self {
        Self {
            overlay: Overlay::new(tree),
            opts,
            revision,
            revision_changed: false,
            applied: None,
            membership: None,
            sessions: Sessions::default(),
        }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn applied(&self) -> Option<LogId> {
        self.applied
    }

    /// Applies one log entry and returns its response.
    pub fn apply_entry(&mut self, entry: &Entry) -> Result<Response, StateError> {
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

    /// All writes plus the changed meta records, ready for one sled batch.
    pub fn finish(mut self) -> Result<BTreeMap<Vec<u8>, Option<Vec<u8>>>, StateError> {
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
        self.sessions.finish(&mut self.overlay)?;
        Ok(self.overlay.into_writes())
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
        let before = self.revision;
        let response = self.execute(&request.command)?;
        // `execute` bumps the revision exactly when the store changed.
        let changed = self.revision != before;
        self.sessions.record(
            &mut self.overlay,
            self.opts,
            session,
            hash,
            index,
            previous,
            &response,
            changed,
        )?;
        Ok(response)
    }

    fn execute(&mut self, command: &Command) -> Result<Response, StateError> {
        if let Err(e) = self.opts.limits.check_command(command) {
            return Ok(Response {
                revision: self.revision,
                result: CommandResult::Rejected(RejectReason::InvalidInput(e.to_string())),
            });
        }
        // Every write of this command carries `rev`; it becomes the store
        // revision only if something actually changed.
        let rev = self.revision + 1;
        let mut changed = false;
        let result = match command {
            Command::Put {
                key,
                value,
                prev_kv,
                ..
            } => {
                changed = true;
                CommandResult::Put {
                    prev_kv: self.put(key, value, *prev_kv, rev)?,
                }
            }
            Command::Delete { key, prev_kv } => {
                let (deleted, prev_kvs) = self.delete(&KeyRange::Single(key.clone()), *prev_kv)?;
                changed = deleted > 0;
                CommandResult::Delete { deleted, prev_kvs }
            }
            Command::DeleteRange { range, prev_kv } => {
                let (deleted, prev_kvs) = self.delete(range, *prev_kv)?;
                changed = deleted > 0;
                CommandResult::Delete { deleted, prev_kvs }
            }
            Command::Txn(txn) => {
                let succeeded = txn
                    .compares
                    .iter()
                    .map(|c| self.compare(c))
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .all(|ok| ok);
                let ops = if succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
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
                                prev_kv: self.put(key, value, *prev_kv, rev)?,
                            }
                        }
                        TxnOp::Delete { range, prev_kv } => {
                            let (deleted, prev_kvs) = self.delete(range, *prev_kv)?;
                            changed |= deleted > 0;
                            TxnOpResponse::Delete { deleted, prev_kvs }
                        }
                        TxnOp::Get(req) => TxnOpResponse::Get(self.overlay.range(req)?),
                    });
                }
                CommandResult::Txn {
                    succeeded,
                    responses,
                }
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

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        want_prev: bool,
        rev: i64,
    ) -> Result<Option<KeyValue>, StateError> {
        let prev = self.overlay.get_value(key)?;
        let next = match &prev {
            Some(p) => StoredValue {
                value: value.to_vec(),
                create_revision: p.create_revision,
                mod_revision: rev,
                version: p.version + 1,
                lease: 0,
            },
            None => StoredValue {
                value: value.to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: 0,
            },
        };
        self.overlay.put(data_key(key), encode(&next)?);
        Ok(prev.filter(|_| want_prev).map(|p| p.into_kv(key, false)))
    }

    fn delete(
        &mut self,
        range: &KeyRange,
        want_prev: bool,
    ) -> Result<(u64, Vec<KeyValue>), StateError> {
        let mut found = Vec::new();
        self.overlay.scan_range(range, |key, v| {
            found.push((key.to_vec(), v));
            Ok(true)
        })?;
        let deleted = found.len() as u64;
        let mut prev_kvs = Vec::new();
        for (key, v) in found {
            self.overlay.remove(data_key(&key));
            if want_prev {
                prev_kvs.push(v.into_kv(&key, false));
            }
        }
        Ok((deleted, prev_kvs))
    }

    /// etcd compare: a missing key has version and revisions 0 and fails
    /// every value compare.
    fn compare(&self, compare: &Compare) -> Result<bool, StateError> {
        let current = self.overlay.get_value(&compare.key)?;
        let order = match (&compare.target, &current) {
            (CompareTarget::Value(_), None) => return Ok(false),
            (CompareTarget::Value(want), Some(v)) => v.value.as_slice().cmp(want.as_slice()),
            (CompareTarget::Version(want), _) => {
                current.as_ref().map_or(0, |v| v.version).cmp(want)
            }
            (CompareTarget::CreateRevision(want), _) => {
                current.as_ref().map_or(0, |v| v.create_revision).cmp(want)
            }
            (CompareTarget::ModRevision(want), _) => {
                current.as_ref().map_or(0, |v| v.mod_revision).cmp(want)
            }
        };
        Ok(match compare.op {
            CompareOp::Equal => order == Ordering::Equal,
            CompareOp::NotEqual => order != Ordering::Equal,
            CompareOp::Greater => order == Ordering::Greater,
            CompareOp::Less => order == Ordering::Less,
        })
    }
}
