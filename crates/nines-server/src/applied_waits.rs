//! Requests that wait for this member's state machine to reach a log index
//! (a linearizable read at its read index) or a revision (a forwarded
//! write, answered once applied here), each woken once, when it is
//! reached. Waiting on a watch channel instead woke every waiting request
//! on every apply (about 1,800 applies a second under load, each waking
//! the 20-40 requests a busy follower holds) to find most still had to
//! wait; here one task follows the applies and releases exactly the
//! requests they satisfy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use nines_state::StateReader;
use tokio::sync::oneshot;

/// Past this many registered waits, those whose request gave up are
/// dropped before the next is added (no apply may come for a while).
/// After a prune the bar is twice what stayed, so that many live waits
/// cost a scan per doubling, not one per wait.
const PRUNE_AT: usize = 4096;

pub struct AppliedWaits {
    reader: StateReader,
    waits: Mutex<Waits>,
}

#[derive(Default)]
struct Waits {
    index: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
    revision: BTreeMap<i64, Vec<oneshot::Sender<()>>>,
    count: usize,
    /// Prune once `count` reaches this (`PRUNE_AT` at least).
    prune_at: usize,
}

impl AppliedWaits {
    /// Starts the task that follows `reader`'s applies (it ends with the
    /// store's channels or when this is dropped).
    pub fn start(reader: StateReader) -> Arc<AppliedWaits> {
        let waits = Arc::new(AppliedWaits {
            reader: reader.clone(),
            waits: Mutex::new(Waits::default()),
        });
        tokio::spawn(follow(
            Arc::downgrade(&waits),
            reader.subscribe_applied(),
            reader.subscribe(),
        ));
        waits
    }

    fn applied_index(&self) -> u64 {
        self.reader.last_applied().map_or(0, |l| l.index)
    }

    /// Whether this member applied `index` within `timeout`.
    pub async fn index(&self, index: u64, timeout: Duration) -> bool {
        self.wait(
            |w| &mut w.index,
            index,
            || self.applied_index() >= index,
            timeout,
        )
        .await
    }

    /// Whether this member's store reached `revision` within `timeout`.
    pub async fn revision(&self, revision: i64, timeout: Duration) -> bool {
        let reached = || self.reader.revision() >= revision;
        self.wait(|w| &mut w.revision, revision, reached, timeout)
            .await
    }

    async fn wait<K: Ord>(
        &self,
        map: impl FnOnce(&mut Waits) -> &mut BTreeMap<K, Vec<oneshot::Sender<()>>>,
        key: K,
        reached: impl Fn() -> bool,
        timeout: Duration,
    ) -> bool {
        if reached() {
            return true;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut waits = self.lock();
            if waits.count >= waits.prune_at.max(PRUNE_AT) {
                waits.prune();
            }
            waits.count += 1;
            map(&mut waits).entry(key).or_default().push(tx);
        }
        // An apply published before the wait was added released nothing
        // for it: look again.
        if reached() {
            return true;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    fn lock(&self) -> MutexGuard<'_, Waits> {
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every wait for at most `index` or `revision`.
    fn release(&self, index: u64, revision: i64) {
        let (by_index, by_revision) = {
            let mut waits = self.lock();
            let by_index = take_through(&mut waits.index, index);
            let by_revision = take_through(&mut waits.revision, revision);
            waits.count = waits
                .count
                .saturating_sub(by_index.len() + by_revision.len());
            (by_index, by_revision)
        };
        for tx in by_index.into_iter().chain(by_revision) {
            let _ = tx.send(());
        }
    }
}

impl Waits {
    fn prune(&mut self) {
        prune(&mut self.index);
        prune(&mut self.revision);
        self.count = self
            .index
            .values()
            .chain(self.revision.values())
            .map(Vec::len)
            .sum();
        self.prune_at = self.count.saturating_mul(2);
    }
}

fn prune<K: Ord>(map: &mut BTreeMap<K, Vec<oneshot::Sender<()>>>) {
    map.retain(|_, waiting| {
        waiting.retain(|tx| !tx.is_closed());
        !waiting.is_empty()
    });
}

/// The waits of keys up to `through`, removed from `map`.
fn take_through<K: Ord + Copy>(
    map: &mut BTreeMap<K, Vec<oneshot::Sender<()>>>,
    through: K,
) -> Vec<oneshot::Sender<()>> {
    let mut taken = Vec::new();
    while let Some(entry) = map.first_entry() {
        if *entry.key() > through {
            break;
        }
        taken.extend(entry.remove());
    }
    taken
}

async fn follow(
    waits: Weak<AppliedWaits>,
    mut index: tokio::sync::watch::Receiver<u64>,
    mut revision: tokio::sync::watch::Receiver<i64>,
) {
    loop {
        tokio::select! {
            changed = index.changed() => if changed.is_err() { return },
            changed = revision.changed() => if changed.is_err() { return },
        }
        let Some(waits) = waits.upgrade() else { return };
        let at_index = *index.borrow_and_update();
        let at_revision = *revision.borrow_and_update();
        waits.release(at_index, at_revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn senders(n: usize) -> (Vec<oneshot::Sender<()>>, Vec<oneshot::Receiver<()>>) {
        (0..n).map(|_| oneshot::channel()).unzip()
    }

    #[test]
    fn take_through_takes_exactly_the_reached_keys() {
        let mut map = BTreeMap::new();
        let (a, _ra) = senders(2);
        let (b, _rb) = senders(1);
        let (c, _rc) = senders(3);
        map.insert(5u64, a);
        map.insert(7, b);
        map.insert(9, c);
        assert_eq!(take_through(&mut map, 4).len(), 0);
        assert_eq!(take_through(&mut map, 7).len(), 3);
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), vec![9]);
        assert_eq!(take_through(&mut map, u64::MAX).len(), 3);
        assert!(map.is_empty());
    }

    #[test]
    fn prune_drops_only_the_waits_whose_request_gave_up() {
        let mut waits = Waits::default();
        let (tx, rx) = senders(3);
        let mut rx = rx.into_iter();
        let kept = rx.next().unwrap();
        drop(rx);
        waits.index.insert(3, tx);
        let (tx, _keep) = senders(1);
        waits.revision.insert(2, tx);
        waits.count = 4;
        waits.prune();
        assert_eq!(waits.count, 2);
        assert_eq!(
            waits.prune_at, 4,
            "the next prune waits for twice what stayed"
        );
        assert_eq!(waits.index[&3].len(), 1);
        drop(kept);
    }
}
