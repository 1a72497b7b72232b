//! The recent history every watcher shares (etcd's synced watcher group):
//! each apply hands its changes here as it publishes them (`ChangeSink`),
//! a task reads from the store whatever applies did not hand over (no
//! watcher at the time, a snapshot install), and the newest changes stay
//! in a ring bounded in bytes. A watcher whose next revision is in the ring
//! takes its events from there without touching the store; one that fell
//! behind the ring reads history itself (see `Hub::poll`), so a slow
//! watcher never holds memory here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

use nines_state::{Change, StateError, StateReader};
use nines_types::KeyValue;
use tokio::sync::watch;

use crate::metrics::Counters;

/// A change's previous key-value (a watch's `prev_kv`), looked up by the
/// first watcher that asks and handed to every other: with 1,000 watchers
/// asking, one store read per change instead of 1,000. Kept only through
/// [`Feed::keep_prev`], which counts it against the ring's byte cap.
pub type PrevCell = Arc<OnceLock<Option<KeyValue>>>;

fn prev_bytes(prev: &Option<KeyValue>) -> usize {
    prev.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len()) + 64
}

/// One window read from the store: every change with a main revision in
/// `from..=through`, oldest first.
#[derive(Debug)]
pub struct Batch {
    pub from: i64,
    pub through: i64,
    pub changes: Vec<Change>,
    /// One per change, in the same order.
    pub prevs: Vec<PrevCell>,
}

impl Batch {
    pub fn new(from: i64, through: i64, changes: Vec<Change>) -> Batch {
        let prevs = changes.iter().map(|_| PrevCell::default()).collect();
        Batch {
            from,
            through,
            changes,
            prevs,
        }
    }

    fn bytes(&self) -> usize {
        self.changes.iter().map(|c| c.size() + 64).sum::<usize>() + 64
    }

    /// What the previous key-values kept in its cells take.
    fn prev_bytes(&self) -> usize {
        self.prevs
            .iter()
            .filter_map(|c| c.get())
            .map(prev_bytes)
            .sum()
    }
}

#[derive(Default)]
struct Ring {
    batches: VecDeque<Batch>,
    bytes: usize,
    /// Previous key-values kept in the batches' cells (set under the read
    /// lock, so atomic); counted with `bytes` against the cap.
    prev_bytes: AtomicUsize,
}

impl Ring {
    fn pop_front(&mut self) {
        if let Some(old) = self.batches.pop_front() {
            self.bytes = self.bytes.saturating_sub(old.bytes());
            let kept = old.prev_bytes();
            let prev = self.prev_bytes.get_mut();
            *prev = prev.saturating_sub(kept);
        }
    }

    fn total(&mut self) -> usize {
        self.bytes + *self.prev_bytes.get_mut()
    }
}

pub struct Feed {
    /// Read by every stream on every change: a read lock.
    ring: RwLock<Ring>,
    /// The revision the feed has read through: watchers deliver up to it.
    fed: watch::Sender<i64>,
    /// `watchers` there says whether anyone reads the feed (it reads
    /// nothing while no one does); `watch_history_reads` counts its reads.
    counters: Arc<Counters>,
    max_bytes: usize,
    /// `fed`'s value, read without its lock: every stream reads it on
    /// every pass.
    fed_now: std::sync::atomic::AtomicI64,
    /// The streams that wait for `fed` to move ([`Feed::waiter`]).
    waiters: Mutex<Vec<Arc<AtomicWaker>>>,
    /// When `fed` last moved, in nanoseconds since `born`.
    fed_at: AtomicU64,
    born: Instant,
}

/// Whether a waiter slot's stream still holds it (the list holds the other
/// reference).
fn held(waiter: &Arc<AtomicWaker>) -> bool {
    Arc::strong_count(waiter) > 1
}

/// Bytes read from the store per step of the feed.
const READ_BYTES: usize = 1 << 20;

impl Feed {
    pub fn new(start: i64, max_bytes: usize, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(Feed {
            ring: RwLock::new(Ring::default()),
            fed: watch::Sender::new(start),
            counters,
            max_bytes,
            fed_now: std::sync::atomic::AtomicI64::new(start),
            waiters: Mutex::new(Vec::new()),
            fed_at: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    fn watched(&self) -> bool {
        self.counters.watchers.load(Ordering::Relaxed) > 0
    }

    pub fn fed(&self) -> i64 {
        self.fed_now.load(Ordering::Acquire)
    }

    /// How long ago the newest revision was fed: a stream that finds it
    /// old when it polls was not run for that long.
    pub fn age(&self) -> Duration {
        let at = Duration::from_nanos(self.fed_at.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(at)
    }

    /// Moves `fed` (both its atomic and its channel) to `revision`, noting
    /// when; the caller holds the ring's write lock and wakes the waiters
    /// after releasing it.
    fn advance(&self, revision: i64) {
        let now = self.born.elapsed().as_nanos() as u64;
        self.fed_at.store(now, Ordering::Relaxed);
        self.fed_now.store(revision, Ordering::Release);
        self.fed.send_replace(revision);
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.fed.subscribe()
    }

    /// A stream's slot for its waker, woken whenever `fed` moves; the slot
    /// goes when the stream drops it. Why not `subscribe`: a watch
    /// receiver's `changed()` enters and leaves one list shared by every
    /// stream, under its lock, on each pass of a stream's loop; a slot is
    /// registered without a lock, and only a push walks the list.
    pub fn waiter(&self) -> Arc<AtomicWaker> {
        let waiter = Arc::new(AtomicWaker::new());
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Slots of ended streams leave at the next push; streams opened and
        // closed while nothing is written would pile up until then, so the
        // list is also pruned each time it reaches a power of two (at most
        // twice the live streams, a prune per doubling).
        if waiters.len() >= 64 && waiters.len().is_power_of_two() {
            waiters.retain(held);
        }
        waiters.push(waiter.clone());
        drop(waiters);
        waiter
    }

    /// Ready once `fed` is past `seen`, else registers `cx` in `waiter`.
    pub fn poll_moved(&self, waiter: &AtomicWaker, seen: i64, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the check: a push between the two still wakes.
        waiter.register(cx.waker());
        match self.fed() != seen {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }

    /// Wakes every waiting stream (after `fed` moved), forgetting the slots
    /// of streams that are gone.
    fn wake_waiters(&self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.retain(held);
        for waiter in waiters.iter() {
            waiter.wake();
        }
    }

    /// Runs `read` on the batches that cover `from..=fed`, under the read
    /// lock (no copy of the list); None if the ring no longer holds `from`.
    pub fn since<T>(
        &self,
        from: i64,
        read: impl FnOnce(&mut dyn Iterator<Item = &Batch>) -> T,
    ) -> Option<T> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let first = ring.batches.front()?;
        if from < first.from {
            return None;
        }
        let start = ring.batches.partition_point(|b| b.through < from);
        Some(read(&mut ring.batches.range(start..)))
    }

    /// Keeps `prev` in `cell`, the cell of a change at `revision`, for the
    /// change's other watchers, if the ring still holds that change and the
    /// values kept stay within half the cap. They count with the changes
    /// when the ring is trimmed, so they go with their batches; without a
    /// bound of their own, 1 MiB values overwritten by small ones would pin
    /// 1 MiB per change. Past the bound each watcher reads its own.
    pub fn keep_prev(&self, cell: &PrevCell, revision: i64, prev: &Option<KeyValue>) {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        // The ring is contiguous and only ever moves forward, so a change
        // at or past its first revision is one of its batches'.
        if ring.batches.front().is_none_or(|b| revision < b.from) {
            return;
        }
        let size = prev_bytes(prev);
        let kept = ring.prev_bytes.fetch_add(size, Ordering::Relaxed);
        if kept + size > self.max_bytes / 2 || cell.set(prev.clone()).is_err() {
            // No room, or another watcher kept it first.
            ring.prev_bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }

    /// Appends `batch` if it continues the feed exactly (applies hand
    /// theirs directly, and the feed task reads what they did not: whichever
    /// comes second finds its window taken and is dropped).
    fn push(&self, batch: Batch) {
        {
            let through = batch.through;
            let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
            if batch.from != *self.fed.borrow() + 1 {
                return;
            }
            ring.bytes += batch.bytes();
            ring.batches.push_back(batch);
            while ring.total() > self.max_bytes && ring.batches.len() > 1 {
                ring.pop_front();
            }
            // Under the ring lock: the contiguity check above reads it.
            self.advance(through);
        }
        // Outside the ring lock, which the woken streams read under.
        self.wake_waiters();
    }

    /// Forgets the ring and moves on to `revision` without reading: no one
    /// watches, or the window before it is gone (compacted, or replaced by
    /// a snapshot install); watchers that need it read history themselves.
    fn skip_to(&self, revision: i64) {
        {
            let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
            if revision <= *self.fed.borrow() {
                return;
            }
            ring.batches.clear();
            ring.bytes = 0;
            *ring.prev_bytes.get_mut() = 0;
            self.advance(revision);
        }
        self.wake_waiters();
    }

    /// Follows the store's published revision until the store is gone.
    pub async fn run(self: Arc<Self>, reader: StateReader) {
        let mut published = reader.subscribe();
        loop {
            let target = *published.borrow_and_update();
            self.catch_up(&reader, target).await;
            if published.changed().await.is_err() {
                return;
            }
        }
    }

    async fn catch_up(&self, reader: &StateReader, target: i64) {
        while self.fed() < target {
            let fed = self.fed();
            if !self.watched() {
                self.skip_to(target);
                return;
            }
            let read = {
                let reader = reader.clone();
                tokio::task::spawn_blocking(move || reader.changes(fed + 1, target, READ_BYTES))
                    .await
            };
            Counters::inc(&self.counters.watch_history_reads);
            if self.fed() != fed {
                // An apply fed this window meanwhile.
                continue;
            }
            match read {
                Ok(Ok(changes)) if changes.through > fed => {
                    self.push(Batch::new(fed + 1, changes.through, changes.changes))
                }
                // Empty only if the store went back (an install of an older
                // snapshot cannot happen, but must not spin) or a race with
                // an install: start over from the store's revision.
                Ok(Ok(_)) | Ok(Err(StateError::Compacted { .. })) => {
                    self.skip_to(reader.revision());
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "watch feed: reading history failed");
                    self.skip_to(reader.revision());
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch feed: history read task failed");
                    return;
                }
            }
        }
    }
}

impl nines_state::ChangeSink for Feed {
    fn wanted(&self) -> bool {
        self.watched()
    }

    fn applied(&self, from: i64, through: i64, changes: Vec<Change>) {
        self.push(Batch::new(from, through, changes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_push_wakes_every_waiting_stream_and_forgets_the_gone() {
        let feed = Feed::new(0, 1 << 20, Arc::new(Counters::default()));
        let waiters: Vec<_> = (0..3).map(|_| feed.waiter()).collect();
        let tasks: Vec<_> = waiters
            .iter()
            .cloned()
            .map(|waiter| {
                let feed = feed.clone();
                tokio::spawn(async move {
                    std::future::poll_fn(|cx| feed.poll_moved(&waiter, 0, cx)).await;
                    feed.fed()
                })
            })
            .collect();
        // Let them all reach Pending first: the wake must not be lost.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(tasks.iter().all(|t| !t.is_finished()), "nothing was fed");
        feed.push(Batch::new(1, 1, Vec::new()));
        for task in tasks {
            let fed = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("a waiting stream was not woken")
                .expect("task");
            assert_eq!(fed, 1);
        }
        // Moved past what a stream saw: ready without a wake.
        let waiter = &waiters[0];
        std::future::poll_fn(|cx| feed.poll_moved(waiter, 0, cx)).await;
        // Streams that are gone leave the list at the next push.
        drop(waiters);
        feed.push(Batch::new(2, 2, Vec::new()));
        assert!(feed.waiters.lock().unwrap().is_empty());
    }

    #[test]
    fn streams_that_come_and_go_without_a_write_leave_no_pile_of_slots() {
        let feed = Feed::new(0, 1 << 20, Arc::new(Counters::default()));
        let live: Vec<_> = (0..10).map(|_| feed.waiter()).collect();
        for _ in 0..100_000 {
            drop(feed.waiter());
        }
        let slots = feed.waiters.lock().unwrap().len();
        assert!(slots <= 256, "{slots} slots kept for 10 live streams");
        drop(live);
    }
}
