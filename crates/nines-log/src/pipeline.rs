//! Leader pipelining: a leader's own appends are written at once and
//! reported to openraft before their fdatasync, which a background thread
//! runs (one sync covers every write that arrived meanwhile). openraft 0.9
//! awaits each append's callback before it starts replication, so without
//! this the leader's fsync and the followers' round trip run one after the
//! other instead of side by side (Raft thesis, section 10.2.1).
//!
//! What keeps this safe:
//! - Only appends the leader makes in its own term qualify: the saved vote
//!   is committed, names this node, and carries the entries' leader id. A
//!   follower's appends are synced before the callback, as before.
//! - The durable index (`nines_types::DurableIndex`) gates everything that
//!   reveals a commit: the state machine applies and followers learn a
//!   commit index only up to it (wired in nines-state and nines-server).
//! - A leader that crashes may lose entries it already sent out, so it must
//!   never lead that term again with a different log: on open, a committed
//!   vote for this node is reported as not committed, and openraft starts
//!   it as a follower that must win a new term instead of resuming.
//! - A failed background fdatasync aborts the process: openraft has already
//!   been told those entries are on disk.

use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};

use nines_types::{DurableIndexTx, Entry, NodeId, Vote};

use crate::wal::Wal;

pub(crate) struct Pipeline {
    /// Set once pipelining is enabled for this node.
    pub node_id: OnceLock<NodeId>,
    /// The last saved vote.
    pub vote: Mutex<Option<Vote>>,
    pub flush: Arc<FlushShared>,
}

pub(crate) struct FlushShared {
    state: Mutex<FlushState>,
    wake: Condvar,
    pub durable: DurableIndexTx,
    /// Told how long each fdatasync of an append took (metrics).
    pub sync_hook: OnceLock<crate::SyncHook>,
}

#[derive(Default)]
struct FlushState {
    /// Bumped by every truncate or reset: a sync that started before one
    /// must not publish its target.
    epoch: u64,
    /// Highest index written but maybe not yet synced.
    requested: u64,
    stop: bool,
}

impl Pipeline {
    pub(crate) fn new(vote: Option<Vote>, durable: DurableIndexTx) -> Pipeline {
        Pipeline {
            node_id: OnceLock::new(),
            vote: Mutex::new(vote),
            flush: Arc::new(FlushShared {
                state: Mutex::new(FlushState::default()),
                wake: Condvar::new(),
                durable,
                sync_hook: OnceLock::new(),
            }),
        }
    }

    /// Whether `entries` are this node's own leader appends (see the module doc).
    pub(crate) fn is_own_leader_append(&self, entries: &[Entry]) -> bool {
        let Some(me) = self.node_id.get() else {
            return false;
        };
        let Ok(vote) = self.vote.lock() else {
            return false;
        };
        match vote.as_ref() {
            Some(v) if v.committed && v.leader_id.node_id == *me => {
                entries.iter().all(|e| e.log_id.leader_id == v.leader_id)
            }
            _ => false,
        }
    }

    /// The vote openraft should start from (see the module doc).
    pub(crate) fn startup_vote(&self, vote: Option<Vote>) -> Option<Vote> {
        let me = self.node_id.get();
        vote.map(|mut v| {
            if v.committed && Some(&v.leader_id.node_id) == me {
                v.committed = false;
            }
            v
        })
    }
}

impl FlushShared {
    /// Reports an fdatasync that started at `started` to the hook, if any.
    pub(crate) fn observe_sync(&self, started: std::time::Instant) {
        if let Some(hook) = self.sync_hook.get() {
            hook(started.elapsed());
        }
    }

    /// Entries up to `index` are written and need a sync.
    pub(crate) fn request(&self, index: u64) {
        let mut st = lock(&self.state);
        if index > st.requested {
            st.requested = index;
            self.wake.notify_one();
        }
    }

    /// The log now ends at `last` (truncate or reset): nothing above it is durable.
    pub(crate) fn rewind(&self, last: u64) {
        let mut st = lock(&self.state);
        st.epoch += 1;
        st.requested = st.requested.min(last);
        self.durable.set(self.durable.get().min(last));
    }

    /// The log was emptied and restarts after `last` (a snapshot covers it).
    pub(crate) fn reset(&self, last: u64) {
        let mut st = lock(&self.state);
        st.epoch += 1;
        st.requested = last;
        self.durable.set(last);
    }

    pub(crate) fn stop(&self) {
        lock(&self.state).stop = true;
        self.wake.notify_one();
    }
}

/// Locks state that stays consistent even if a holder panicked (plain
/// integers and flags); shared with `prealloc.rs`.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the background sync thread (once).
pub(crate) fn start_flusher(wal: &Arc<Wal>) -> std::io::Result<()> {
    let weak = Arc::downgrade(wal);
    let shared = Arc::clone(&wal.pipeline.flush);
    std::thread::Builder::new()
        .name("nines-wal-sync".into())
        .spawn(move || run_flusher(weak, shared))
        .map(|_| ())
}

fn run_flusher(wal: Weak<Wal>, shared: Arc<FlushShared>) {
    loop {
        let (epoch, target) = {
            let mut st = lock(&shared.state);
            while !st.stop && st.requested <= shared.durable.get() {
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.stop {
                return;
            }
            (st.epoch, st.requested)
        };
        let Some(wal) = wal.upgrade() else {
            return;
        };
        // Older segments were synced when the log rolled past them.
        let segment = match wal.lock_writer() {
            Ok(w) => Arc::clone(&w.active),
            Err(_) => {
                tracing::error!("log writer lock poisoned; stopping");
                std::process::abort();
            }
        };
        drop(wal);
        let started = std::time::Instant::now();
        let synced = segment.file.sync_data();
        shared.observe_sync(started);
        if let Err(e) = synced {
            tracing::error!(path = %segment.path.display(), "fdatasync of the Raft log failed: {e}; aborting");
            std::process::abort();
        }
        let st = lock(&shared.state);
        if st.epoch == epoch {
            shared.durable.advance(target);
        }
    }
}
