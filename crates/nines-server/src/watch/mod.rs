//! Watch, the domain side (etcd's mvcc watchable store): a watcher follows
//! one key range from a start revision, and is handed every change in it,
//! in revision order, once, from this member's own applied history. The
//! gRPC stream that multiplexes watchers lives in `api/etcd/watch.rs`.
//!
//! Memory stays bounded whatever the clients do: the shared recent history
//! (`feed.rs`) has a byte cap, a watcher holds only its cursor, and each
//! poll hands out at most `max_bytes` of events; a watcher whose client
//! reads slowly simply polls later, from the ring or from the store.

mod feed;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use nines_state::{Change, StateError, StateReader};
use nines_types::{KeyRange, KeyValue};
use tokio::sync::watch;

use crate::metrics::Counters;
pub use feed::Feed;

/// What a watcher asked for (etcd's `WatchCreateRequest`, checked).
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub range: KeyRange,
    /// First revision to deliver; 0: from the next one.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// One change as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub deleted: bool,
    pub kv: KeyValue,
    /// The key before this change, when asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// A watcher's cursor.
#[derive(Debug)]
pub struct Watcher {
    pub spec: WatchSpec,
    /// The next revision whose changes it has not been handed.
    pub next: i64,
}

/// The outcome of a poll.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// Events with revisions up to `through` (now delivered; possibly none
    /// matched). The watcher has more to read if `through` is below the
    /// feed's revision.
    Events { events: Vec<Event>, through: i64 },
    /// Nothing new yet.
    Idle,
    /// History it needs is compacted: it must be canceled, telling the
    /// client the first revision it can watch from.
    Compacted { compact_revision: i64 },
}

pub struct Hub {
    pub reader: StateReader,
    pub feed: Arc<Feed>,
    pub counters: Arc<Counters>,
    /// The feed task holds the store: it ends with the hub.
    feed_task: tokio::task::JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.feed_task.abort();
    }
}

/// Bytes of shared recent history kept for watchers.
pub const FEED_BYTES: usize = 16 << 20;

impl Hub {
    /// A hub over `reader`; spawns the feed on the current runtime.
    pub fn start(reader: StateReader, counters: Arc<Counters>) -> Arc<Self> {
        let feed = Feed::new(reader.revision(), FEED_BYTES, counters.clone());
        reader.set_change_sink(feed.clone());
        let feed_task = tokio::spawn(feed.clone().run(reader.clone()));
        Arc::new(Hub {
            reader,
            feed,
            counters,
            feed_task,
        })
    }

    /// The revision watchers can be served up to.
    pub fn fed(&self) -> watch::Receiver<i64> {
        self.feed.subscribe()
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.reader.revision()
    }

    /// A watcher for `spec`, counted until [`Hub::drop_watcher`].
    pub fn watcher(&self, spec: WatchSpec) -> Watcher {
        let next = match spec.start_revision {
            r if r > 0 => r,
            // From now: what is published next. The feed may still be
            // behind the store; the watcher then waits for it.
            _ => self.reader.revision() + 1,
        };
        Counters::inc(&self.counters.watchers);
        Watcher { spec, next }
    }

    pub fn drop_watcher(&self, _watcher: Watcher) {
        self.counters.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Hands `watcher` its next events, at most about `max_bytes` of them
    /// (whole revisions), from the shared feed if it still holds them, else
    /// from the store.
    pub async fn poll(
        &self,
        watcher: &mut Watcher,
        max_bytes: usize,
    ) -> Result<Polled, StateError> {
        let fed = self.feed.fed();
        if watcher.next > fed {
            return Ok(Polled::Idle);
        }
        let spec = &watcher.spec;
        let from = watcher.next;
        let ring = self.feed.since(from, |batches| {
            from_ring(batches, from, max_bytes, spec.prev_kv, |c| wanted(spec, c))
        });
        let (through, changes) = match ring {
            Some(read) => read,
            None => {
                let reader = self.reader.clone();
                Counters::inc(&self.counters.watch_history_reads);
                let read =
                    tokio::task::spawn_blocking(move || reader.changes(from, fed, max_bytes))
                        .await
                        .map_err(|e| StateError::Codec(format!("history read task: {e}")))?;
                match read {
                    Ok(c) => {
                        let changes = c.changes.into_iter().filter(|c| wanted(spec, c));
                        (c.through, changes.map(|c| (c, None)).collect())
                    }
                    Err(StateError::Compacted { compacted, .. }) => {
                        return Ok(compacted_at(compacted))
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let mut events = Vec::with_capacity(changes.len());
        for (change, cell) in changes {
            let prev_kv = match spec.prev_kv {
                true => match self.prev(&change, cell.as_ref()) {
                    Ok(prev) => prev,
                    Err(StateError::Compacted { compacted, .. }) => {
                        return Ok(compacted_at(compacted))
                    }
                    Err(e) => return Err(e),
                },
                false => None,
            };
            events.push(Event {
                deleted: change.deleted,
                kv: change.kv,
                prev_kv,
            });
        }
        // Never backwards, even if a store swap made the window look short.
        watcher.next = watcher.next.max(through + 1);
        Ok(Polled::Events { events, through })
    }

    /// `change`'s previous key-value: from `cell` when another watcher
    /// already looked it up (history does not change, so it stays right),
    /// else from the store, kept in `cell` for the next if the ring has
    /// room (`Feed::keep_prev`).
    fn prev(
        &self,
        change: &Change,
        cell: Option<&feed::PrevCell>,
    ) -> Result<Option<KeyValue>, StateError> {
        if let Some(prev) = cell.and_then(|c| c.get()) {
            return Ok(prev.clone());
        }
        Counters::inc(&self.counters.watch_prev_reads);
        let prev = self.reader.before(&change.kv.key, change.kv.mod_revision)?;
        if let Some(cell) = cell {
            self.feed.keep_prev(cell, change.kv.mod_revision, &prev);
        }
        Ok(prev)
    }
}

/// Revisions up to and including a compaction's are not all there (its
/// deletes are dropped): a watch can start one above it.
fn compacted_at(compacted: i64) -> Polled {
    Polled::Compacted {
        compact_revision: compacted + 1,
    }
}

fn wanted(spec: &WatchSpec, change: &Change) -> bool {
    let filtered = match change.deleted {
        true => spec.no_delete,
        false => spec.no_put,
    };
    !filtered && spec.range.contains(&change.kv.key)
}

/// A change, and where its previous key-value is shared if it came from
/// the ring and the watcher asked for it.
type Wanted = (Change, Option<feed::PrevCell>);

/// The wanted changes from revision `from` in `batches`, cut after the
/// batch that takes them past `max_bytes`, and the revision they cover;
/// with `prev_kv`, each with its shared cell.
fn from_ring(
    batches: &mut dyn Iterator<Item = &feed::Batch>,
    from: i64,
    max_bytes: usize,
    prev_kv: bool,
    wanted: impl Fn(&Change) -> bool,
) -> (i64, Vec<Wanted>) {
    let mut out = Vec::new();
    let mut through = from - 1;
    let mut bytes = 0;
    for batch in batches {
        if batch.through < from {
            continue;
        }
        for (change, cell) in batch.changes.iter().zip(&batch.prevs) {
            if change.kv.mod_revision >= from && wanted(change) {
                bytes += change.size();
                out.push((change.clone(), prev_kv.then(|| cell.clone())));
            }
        }
        through = batch.through;
        if bytes > max_bytes {
            break;
        }
    }
    (through, out)
}
