//! The background sweep that deletes what compactions dropped from the
//! engine (`Mvcc::sweep`), in bounded chunks on a thread of its own, so a
//! compaction of millions of records never stalls an apply.
//!
//! Resumable by construction: after a crash, `Mvcc::open` finds the dropped
//! records still on disk and the sweep is scheduled again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::StateError;
use crate::mvcc::{Mvcc, Rev};
use crate::store::{lock, Shared};
use crate::tiered::TieredEngine;

/// Records visited per chunk (etcd's compaction batch limit is 1,000).
const SWEEP_CHUNK: usize = 2_000;
/// Pause between chunks, leaving the disk to applies (etcd sleeps 10 ms).
const CHUNK_PAUSE: Duration = Duration::from_millis(2);
/// After a failed chunk (disk full, I/O error): try again this much later.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct Compactor {
    inner: Arc<Inner>,
    /// Held by each sweep chunk, and by a snapshot build and an install for
    /// their whole run: a build must still find every record its captured
    /// compaction keeps (a later compaction's sweep could delete some under
    /// its scan), and an install swaps the store the sweep deletes from.
    pub gate: Mutex<()>,
}

/// What the thread shares with `Shared` without keeping it alive.
struct Inner {
    state: Mutex<Sweep>,
    wake: Condvar,
    /// The highest compacted revision whose dropped records are all gone.
    swept: watch::Sender<i64>,
    deleted: AtomicU64,
}

#[derive(Default)]
struct Sweep {
    scheduled: i64,
    stop: bool,
}

impl Compactor {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(Sweep::default()),
                wake: Condvar::new(),
                swept: watch::Sender::new(0),
                deleted: AtomicU64::new(0),
            }),
            gate: Mutex::new(()),
        }
    }

    /// Starts the sweep thread of `shared`.
    pub fn start(shared: &Arc<Shared>) -> Result<(), StateError> {
        let inner = shared.compactor.inner.clone();
        let weak = Arc::downgrade(shared);
        shared.compactor.opened(&shared.current());
        std::thread::Builder::new()
            .name("nines-compact".into())
            .spawn(move || run(&inner, &weak))
            .map(|_| ())
            .map_err(|e| StateError::Task(format!("cannot start the compaction thread: {e}")))
    }

    /// Takes note of a store just opened or installed: sweeps what it still
    /// holds of its compaction, if anything.
    pub fn opened(&self, store: &Mvcc<TieredEngine>) {
        if store.dropped_at_open() > 0 {
            self.schedule(store.compacted());
        } else {
            self.inner.mark_swept(store.compacted());
        }
    }

    /// Asks for the records dropped by a compaction at `at` to be deleted.
    pub fn schedule(&self, at: i64) {
        let mut state = lock(&self.inner.state);
        state.scheduled = state.scheduled.max(at);
        self.inner.wake.notify_all();
    }

    /// Follows the swept revision (see `Inner::swept`).
    pub fn swept(&self) -> watch::Receiver<i64> {
        self.inner.swept.subscribe()
    }

    /// Records deleted since open.
    pub fn deleted(&self) -> u64 {
        self.inner.deleted.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        lock(&self.inner.state).stop = true;
        self.inner.wake.notify_all();
    }
}

impl Inner {
    fn mark_swept(&self, at: i64) {
        self.swept.send_if_modified(|swept| {
            let raise = at > *swept;
            if raise {
                *swept = at;
            }
            raise
        });
    }

    /// Waits for a compaction not swept yet; None once stopped.
    fn next_target(&self) -> Option<i64> {
        let mut state = lock(&self.state);
        loop {
            if state.stop {
                return None;
            }
            if state.scheduled > *self.swept.borrow() {
                return Some(state.scheduled);
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn stopped(&self) -> bool {
        lock(&self.state).stop
    }

    /// Sleeps `pause` unless stopped meanwhile; false if stopped.
    fn pause(&self, pause: Duration) -> bool {
        let state = lock(&self.state);
        let (state, _) = self
            .wake
            .wait_timeout_while(state, pause, |s| !s.stop)
            .unwrap_or_else(|e| e.into_inner());
        !state.stop
    }
}

fn run(inner: &Inner, shared: &Weak<Shared>) {
    while let Some(target) = inner.next_target() {
        match sweep_to(inner, shared, target) {
            Ok(true) => inner.mark_swept(target),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, target, "compaction sweep failed; retrying");
                if !inner.pause(RETRY_AFTER) {
                    return;
                }
            }
        }
    }
}

/// Sweeps the current store up to `target`; false if the state machine is
/// gone or stopping.
fn sweep_to(inner: &Inner, shared: &Weak<Shared>, target: i64) -> Result<bool, StateError> {
    let mut from: Option<Rev> = None;
    loop {
        if inner.stopped() {
            return Ok(false);
        }
        let Some(shared) = shared.upgrade() else {
            return Ok(false);
        };
        let (next, deleted) = {
            let _gate = lock(&shared.compactor.gate);
            shared.current().sweep(target, from, SWEEP_CHUNK)?
        };
        drop(shared);
        inner.deleted.fetch_add(deleted, Ordering::Relaxed);
        match next {
            Some(rev) => from = Some(rev),
            None => return Ok(true),
        }
        if !inner.pause(CHUNK_PAUSE) {
            return Ok(false);
        }
    }
}
