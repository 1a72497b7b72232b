//! Concurrent reads while Raft owns the state machine.
//!
//! Every read is served at one revision, returned with the data: it sees
//! whole applies only (see `mvcc/mod.rs` for the publish rule) and never a
//! half-installed snapshot (installs build a new store and swap it in).
//! Serve them on the leader after a read barrier for linearizability.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use nines_types::{KeyValue, LogId, RangeOptions, RangeRequest, RangeResponse};

use crate::backup::Export;
use crate::engine::Engine;
use crate::error::StateError;
use crate::lease::LeaseInfo;
use crate::mvcc::{Changes, HashKv, Mvcc, Read};
use crate::store::{RawRecord, Shared};
use crate::tiered::TieredEngine;

#[derive(Clone)]
pub struct StateReader {
    pub(crate) shared: Arc<Shared>,
}

impl StateReader {
    /// A range at the current revision.
    pub fn range(&self, req: &RangeRequest) -> Result<Read<RangeResponse>, StateError> {
        self.range_at(req, 0)
    }

    /// A range at `revision`; 0 or less means the current one. A revision
    /// not reached yet is [`StateError::FutureRevision`].
    pub fn range_at(
        &self,
        req: &RangeRequest,
        revision: i64,
    ) -> Result<Read<RangeResponse>, StateError> {
        self.shared.opts.limits.check_read(req)?;
        self.on_current(|store| store.range(req, revision))
    }

    /// A range at `revision` with etcd's sort and revision filters.
    pub fn range_with(
        &self,
        req: &RangeRequest,
        opts: &RangeOptions,
        revision: i64,
    ) -> Result<Read<RangeResponse>, StateError> {
        self.shared.opts.limits.check_read(req)?;
        self.on_current(|store| store.range_with(req, opts, revision))
    }

    /// A txn of ranges only at the current revision, without the log
    /// (see `mvcc/txn_read.rs`); linearizable after a read barrier.
    pub fn txn_read(
        &self,
        txn: &nines_types::Txn,
        max_bytes: usize,
    ) -> Result<Read<crate::TxnRead>, StateError> {
        for op in txn.success.iter().chain(&txn.failure) {
            if let nines_types::TxnOp::Get(req) | nines_types::TxnOp::GetWith(req, _) = op {
                self.shared.opts.limits.check_read(req)?;
            }
        }
        // A compaction past the revision read may race it (nothing asked
        // for an old revision): read again at the new current one.
        let mut tries = 0;
        loop {
            match self.on_current(|store| store.txn_read(txn, max_bytes)) {
                Err(StateError::Compacted { .. }) if tries < 3 => tries += 1,
                result => return result,
            }
        }
    }

    /// One key at the current revision.
    pub fn get(&self, key: &[u8]) -> Result<Read<Option<KeyValue>>, StateError> {
        self.on_current(|store| store.get(key))
    }

    /// etcd's HashKV: a checksum of the history at `revision` (0 or less:
    /// the current one), equal on every member at the same revision.
    /// Compacted and future revisions fail as a range does.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, StateError> {
        self.on_current(|store| store.hash_kv(revision))
    }

    /// A point-in-time snapshot of the applied state in a temp file, for a
    /// backup stream (etcd's `Maintenance.Snapshot`). Waits for a running
    /// snapshot build or install; applies go on while it is written.
    pub async fn export(&self) -> Result<Export, StateError> {
        let _one_at_a_time = self.shared.build_lock.lock().await;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || crate::backup::export(&shared)).await?
    }

    /// The changes with main revisions in `from..=to`, stopping after the
    /// revision that takes them past `max_bytes` (see
    /// [`Changes::through`]); a window starting at or below the compacted
    /// revision is [`StateError::Compacted`]. Reads the engine: call off
    /// the async workers for large windows.
    pub fn changes(&self, from: i64, to: i64, max_bytes: usize) -> Result<Changes, StateError> {
        loop {
            let store = self.shared.current();
            let read = store.changes(from, to, max_bytes);
            // A snapshot install drops the old tree mid-scan: a scan that
            // raced one may have missed records, so it is done again on the
            // new store (whose own compacted revision then applies).
            if Arc::ptr_eq(&store, &self.shared.current()) {
                return read;
            }
        }
    }

    /// `key` just before main revision `before` (a watch's `prev_kv`).
    pub fn before(&self, key: &[u8], before: i64) -> Result<Option<KeyValue>, StateError> {
        self.on_current(|store| store.before(key, before))
    }

    /// Hands every apply's changes to `sink` from now on (see
    /// [`ChangeSink`]).
    pub fn set_change_sink(&self, sink: std::sync::Arc<dyn crate::store::ChangeSink>) {
        *self
            .shared
            .change_sink
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// The published revision, as it moves (after each apply that moved
    /// it, and after a snapshot install).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.revisions.subscribe()
    }

    /// The applied log index, as it moves (after each apply and snapshot
    /// install); the value is also in [`StateReader::last_applied`].
    pub fn subscribe_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied_index.subscribe()
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.shared.current().revision()
    }

    /// Reads below this revision fail with [`StateError::Compacted`]; 0 if
    /// the store was never compacted.
    pub fn compacted_revision(&self) -> i64 {
        self.shared.current().compacted()
    }

    /// Waits until the records a compaction at `revision` dropped are
    /// deleted from disk here (etcd's `physical`). Call once the compaction
    /// is applied locally; it is not bounded otherwise.
    pub async fn wait_swept(&self, revision: i64) {
        let mut swept = self.shared.compactor.swept();
        // Err only if the state machine is gone: nothing left to wait for.
        let _ = swept.wait_for(|s| *s >= revision).await;
    }

    /// Bytes of the revision records the store holds: every retained
    /// revision of every key (etcd's "db size in use"). Compaction and
    /// deletes followed by compaction lower it.
    pub fn data_bytes(&self) -> u64 {
        self.shared.current().record_bytes()
    }

    /// Bytes the applies wrote to the store since open, history and
    /// bookkeeping included: how much has changed since a snapshot.
    pub fn written_bytes(&self) -> u64 {
        self.shared.stats.written_bytes.load(Ordering::Relaxed)
    }

    /// Records the compaction sweep deleted since open.
    pub fn swept_records(&self) -> u64 {
        self.shared.compactor.deleted()
    }

    /// The storage error that stopped the state machine, if one did: the
    /// root cause when the Raft core reports only that a channel closed.
    pub fn fault(&self) -> Option<String> {
        self.shared.fault.get().cloned()
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.shared.cached_applied()
    }

    /// Test hook: every raw record of the current store (data, sessions,
    /// meta), the revision records the snapshot file serves included.
    #[doc(hidden)]
    pub fn dump_raw(&self) -> Result<Vec<RawRecord>, StateError> {
        let store = self.shared.current();
        store
            .engine
            .scan(&[], None)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    }

    /// Runs `read` on the current store. A snapshot install drops the old
    /// store's tree, so a read that was on it may find a record gone: it is
    /// served again on the new store.
    /// Runs `f` on the auth state as applied here.
    pub fn with_auth<T>(&self, f: impl FnOnce(&crate::auth::AuthState) -> T) -> T {
        f(&self.shared.current().auth())
    }

    /// Lease `id` as applied here, if it is granted.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.shared.current().leases().get(id)
    }

    /// Every granted lease, by id.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.shared.current().leases().list()
    }

    /// Number of granted leases.
    pub fn lease_count(&self) -> usize {
        self.shared.current().leases().len()
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.shared.current().leases().keys(id)
    }

    fn on_current<T>(
        &self,
        read: impl Fn(&Mvcc<TieredEngine>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let store = self.shared.current();
        match read(&store) {
            Err(StateError::MissingRecord { .. })
                if !Arc::ptr_eq(&store, &self.shared.current()) =>
            {
                read(&self.shared.current())
            }
            result => result,
        }
    }
}
