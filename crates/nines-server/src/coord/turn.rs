//! Waiting for one's turn in a queue, on this member's own history: a
//! waiter reads where it stands, and if a key created before its own is
//! still there, follows history until that key (its predecessor) or its
//! own key is deleted, then reads again. Waiting on the predecessor only,
//! as etcd's recipe does, means a release wakes the next waiter, not all.
//!
//! Reads here are local, not linearized on their own, and still give a
//! linearizable answer: the waiter first reaches the revision of its own
//! queuing write (applied after the call began), and every state it reads
//! afterwards is a committed one, read before it answers.

use std::sync::Arc;

use nines_state::StateReader;
use nines_types::{KeyRange, KeyValue, RangeOptions, RangeRequest, SortOrder, SortTarget};
use tokio::sync::watch;

use super::{Local, Queue};
use crate::error::ApiError;
use crate::watch::{Event, Hub, Polled, WatchSpec, Watcher};

/// Event bytes a waiter's watcher is handed per poll.
const POLL_BYTES: usize = 1 << 16;

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The key is the oldest in its queue as of this revision.
    Ours(i64),
    /// The key (that incarnation) no longer exists as of this revision.
    Gone(i64),
}

/// Where a key stands in its queue at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    First(i64),
    Gone(i64),
    /// Behind `pred`, the newest key created before it.
    Behind {
        pred: Vec<u8>,
        at: i64,
    },
}

/// Waits until `key`, created at `rev` by a write applied at `after`, is
/// the oldest key in `queue`, or is gone; UNAVAILABLE if this member loses
/// its leader meanwhile. `behind` runs once the key is seen behind another.
pub async fn wait(
    local: &Local,
    queue: &Queue,
    key: &[u8],
    rev: i64,
    after: i64,
    behind: impl FnMut() + Send,
) -> Result<Turn, ApiError> {
    tokio::select! {
        turn = wait_here(local, queue, key, rev, after, behind) => turn,
        () = local.leader_lost() => Err(ApiError::NoLeader),
    }
}

async fn wait_here(
    local: &Local,
    queue: &Queue,
    key: &[u8],
    rev: i64,
    after: i64,
    mut behind: impl FnMut() + Send,
) -> Result<Turn, ApiError> {
    local.reach(after).await?;
    loop {
        let (pred, at) = match standing(&local.reader, queue, key, rev)? {
            Standing::First(at) => return Ok(Turn::Ours(at)),
            Standing::Gone(at) => return Ok(Turn::Gone(at)),
            Standing::Behind { pred, at } => (pred, at),
        };
        behind();
        wait_deleted(&local.hub, [&pred, key], at + 1).await?;
    }
}

/// Where `key` (the incarnation created at `rev`) stands, read at one
/// revision.
fn standing(
    reader: &StateReader,
    queue: &Queue,
    key: &[u8],
    rev: i64,
) -> Result<Standing, ApiError> {
    // Bounds of 0 mean "none" to the store, so a key created at revision 1
    // (nothing can be older) skips the bounded read.
    let pred_read = match rev > 1 {
        true => Some(reader.range_with(
            &RangeRequest {
                range: queue.range(),
                limit: 1,
                keys_only: true,
                count_only: false,
            },
            &RangeOptions {
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Create,
                max_create_revision: rev - 1,
                ..RangeOptions::default()
            },
            0,
        )?),
        false => None,
    };
    let at = match &pred_read {
        Some(read) => read.revision,
        None => reader.revision(),
    };
    let mine = reader.range_at(&RangeRequest::key(key.to_vec()), at)?;
    let alive = mine
        .data
        .kvs
        .first()
        .is_some_and(|kv| kv.create_revision == rev);
    if !alive {
        return Ok(Standing::Gone(at));
    }
    let pred = pred_read.and_then(|r| r.data.kvs.into_iter().next());
    Ok(match pred {
        None => Standing::First(at),
        Some(kv) => Standing::Behind { pred: kv.key, at },
    })
}

/// Follows history from `from` until one of `keys` is deleted, or until
/// history from there is compacted (the caller reads the state again).
async fn wait_deleted(hub: &Arc<Hub>, keys: [&[u8]; 2], from: i64) -> Result<(), ApiError> {
    // One watcher over the key range spanning both; events on keys in
    // between are ignored.
    let (lo, hi) = match keys[0] <= keys[1] {
        true => (keys[0], keys[1]),
        false => (keys[1], keys[0]),
    };
    let mut end = hi.to_vec();
    end.push(0);
    let spec = WatchSpec {
        range: KeyRange::Between {
            start: lo.to_vec(),
            end,
        },
        start_revision: from,
        prev_kv: false,
        no_put: true,
        no_delete: false,
    };
    let mut follow = Follow::new(hub, spec);
    loop {
        match follow.next().await? {
            Some(events) if events.iter().any(|e| keys.contains(&e.kv.key.as_slice())) => {
                return Ok(())
            }
            Some(_) => {}
            None => return Ok(()),
        }
    }
}

/// A watcher on the hub, forgotten when dropped (a waiter's call may end
/// at any await: an error, or its client going away).
pub struct Follow {
    hub: Arc<Hub>,
    watcher: Option<Watcher>,
    fed: watch::Receiver<i64>,
}

impl Follow {
    pub fn new(hub: &Arc<Hub>, spec: WatchSpec) -> Follow {
        // Subscribed before the first poll, so no publish is missed.
        let fed = hub.fed();
        Follow {
            hub: hub.clone(),
            watcher: Some(hub.watcher(spec)),
            fed,
        }
    }

    /// The next non-empty batch of events, in revision order; None if the
    /// history it needs is compacted.
    pub async fn next(&mut self) -> Result<Option<Vec<Event>>, ApiError> {
        loop {
            let Some(watcher) = self.watcher.as_mut() else {
                return Ok(None);
            };
            match self.hub.poll(watcher, POLL_BYTES).await? {
                Polled::Events { events, .. } if !events.is_empty() => return Ok(Some(events)),
                Polled::Events { .. } => {}
                Polled::Idle => {
                    if self.fed.changed().await.is_err() {
                        return Err(ApiError::ShuttingDown);
                    }
                }
                Polled::Compacted { .. } => return Ok(None),
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            self.hub.drop_watcher(watcher);
        }
    }
}

/// The oldest key in `queue` at the current revision, and that revision.
pub fn first(reader: &StateReader, queue: &Queue) -> Result<(Option<KeyValue>, i64), ApiError> {
    let read = reader.range_with(
        &RangeRequest {
            range: queue.range(),
            limit: 1,
            keys_only: false,
            count_only: false,
        },
        &RangeOptions {
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Create,
            ..RangeOptions::default()
        },
        0,
    )?;
    Ok((read.data.kvs.into_iter().next(), read.revision))
}
