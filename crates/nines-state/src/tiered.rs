//! The production [`Engine`]: revision records up to the newest snapshot's
//! revision come from that snapshot file (`base_file.rs`), newer ones from
//! the tail (`tail.rs`), everything else (meta, sessions, leases, auth) from
//! sled.
//!
//! The split is by revision alone: a record at or below the base's
//! revision is read from the base, one above it from the tail, so a read
//! never sees two versions of one record.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::base_file::BaseFile;
use crate::engine::{Engine, ScanIter, Write};
use crate::error::StateError;
use crate::mvcc::{parse_rev_key, rev_key, Rev, REV_PREFIX};
use crate::sled_engine::SledEngine;
use crate::store::read_lock;
use crate::tail::Tail;

pub(crate) struct TieredEngine {
    sled: SledEngine,
    tail: Tail,
    /// Every get and scan holds a clone of the view it started with until
    /// it is done, so a takeover can wait for the reads that may still
    /// look for records in the tail below the new cut (see `take_base`).
    view: RwLock<Arc<View>>,
}

#[derive(Default)]
struct View {
    base: Option<Arc<BaseFile>>,
}

impl View {
    /// The base file and the revision of record `key` if the base covers
    /// that revision; None: the tail holds it (or nothing does).
    fn base_for(&self, key: &[u8]) -> Result<Option<(&BaseFile, Rev)>, StateError> {
        let Some(base) = self.base.as_deref() else {
            return Ok(None);
        };
        let rev = parse_rev_key(key)?;
        Ok((rev.main <= base.revision).then_some((base, rev)))
    }
}

/// How long a takeover waits for reads that started before it.
const READERS_WAIT: Duration = Duration::from_secs(10);

impl TieredEngine {
    pub fn new(sled: SledEngine, tail: Tail, base: Option<Arc<BaseFile>>) -> Self {
        TieredEngine {
            sled,
            tail,
            view: RwLock::new(Arc::new(View { base })),
        }
    }

    fn view(&self) -> Arc<View> {
        read_lock(&self.view).clone()
    }

    pub fn tree(&self) -> &sled::Tree {
        self.sled.tree()
    }

    pub fn base(&self) -> Option<Arc<BaseFile>> {
        self.view().base.clone()
    }

    pub fn tail(&self) -> &Tail {
        &self.tail
    }

    /// Starts a new tail file: call at a snapshot capture (see `tail.rs`).
    pub fn rotate_tail(&self) -> Result<(), StateError> {
        self.tail.rotate()
    }

    /// Serves records up to `base.revision` from `base` from now on, then
    /// deletes the tail files it covers. Call only once the file is
    /// durable and published.
    pub fn take_base(&self, base: Arc<BaseFile>) -> Result<(), StateError> {
        let revision = base.revision;
        let new = Arc::new(View { base: Some(base) });
        let old = std::mem::replace(
            &mut *self.view.write().unwrap_or_else(|e| e.into_inner()),
            new,
        );
        // A read that began on the old view may still look for these
        // records in the tail. Left in place they are harmless (hidden
        // below the cut), so after a wait they are left for the next
        // takeover.
        let deadline = Instant::now() + READERS_WAIT;
        while Arc::strong_count(&old) > 1 {
            if Instant::now() > deadline {
                tracing::warn!(
                    "a read outlasted a snapshot takeover; the tail's files stay for now"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.tail.drop_upto(revision)
    }
}

/// A scan and the view it started on, which lives as long as it does.
struct Held<I> {
    inner: I,
    _view: Arc<View>,
}

impl<I: Iterator> Iterator for Held<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        self.inner.next()
    }
}

/// The first revision key the base does not cover.
fn cut_of(base: &BaseFile) -> [u8; 13] {
    rev_key(Rev {
        main: base.revision.saturating_add(1),
        sub: 0,
    })
}

fn max<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    if a >= b {
        a
    } else {
        b
    }
}

fn min_end<'a>(a: Option<&'a [u8]>, b: &'a [u8]) -> &'a [u8] {
    match a {
        Some(a) if a < b => a,
        _ => b,
    }
}

impl Engine for TieredEngine {
    type Bytes = sled::IVec;

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StateError> {
        if key.first() != Some(&REV_PREFIX) {
            return self.sled.get(key);
        }
        let view = self.view();
        let value = match view.base_for(key)? {
            Some((base, rev)) => base.get(rev)?,
            // `view` is held until the tail answered (see `View`).
            None => self.tail.get(key)?,
        };
        drop(view);
        Ok(value.map(sled::IVec::from))
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_, sled::IVec> {
        let view = self.view();
        let low: &[u8] = &[REV_PREFIX];
        let high: &[u8] = &[REV_PREFIX + 1];
        let cut = view
            .base
            .as_deref()
            .map_or_else(|| low.to_vec(), |b| cut_of(b).to_vec());
        let ivecs = |r: Result<(Vec<u8>, Vec<u8>), StateError>| {
            r.map(|(k, v)| (sled::IVec::from(k), sled::IVec::from(v)))
        };
        // Below the revision records, the base's part, the tail's, then
        // the keys above them.
        let before = self.sled.scan(start, Some(min_end(end, low)));
        let middle = view
            .base
            .clone()
            .map(|base| base.scan(max(start, low), min_end(end, &cut)).map(ivecs));
        let tail = self
            .tail
            .scan(max(start, &cut), min_end(end, high))
            .map(ivecs);
        let after = self.sled.scan(max(start, high), end);
        Box::new(Held {
            inner: before
                .chain(middle.into_iter().flatten())
                .chain(tail)
                .chain(after),
            _view: view,
        })
    }

    fn write_batch(&self, writes: &[Write]) -> Result<(), StateError> {
        // New records first, then the rest through sled's journal: a crash
        // in between leaves records above the store revision, which the
        // tail cuts off at open (`tail.rs`).
        let (records, rest): (Vec<&Write>, Vec<&Write>) = writes
            .iter()
            .partition(|(k, v)| k.first() == Some(&REV_PREFIX) && v.is_some());
        let mut records: Vec<(&[u8], &[u8])> = records
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k.as_slice(), v)))
            .collect();
        records.sort_unstable_by(|a, b| a.0.cmp(b.0));
        self.tail.append(&records)?;
        let rest: Vec<Write> = rest
            .into_iter()
            .filter(|(k, _)| k.first() != Some(&REV_PREFIX))
            .cloned()
            .collect();
        self.sled.write_batch(&rest)
    }

    fn remove_each(&self, keys: &[Vec<u8>]) -> Result<(), StateError> {
        // Revision records are hidden in their files (base or tail) and
        // leave the disk when a snapshot leaves them out; hidden, a later
        // sweep does not find (and count) them again.
        let view = self.view();
        let mut others = Vec::new();
        for key in keys {
            if key.first() != Some(&REV_PREFIX) {
                others.push(key.clone());
                continue;
            }
            match view.base_for(key)? {
                Some((base, rev)) => base.remove(rev),
                None => self.tail.remove(key),
            }
        }
        drop(view);
        self.sled.remove_each(&others)
    }

    fn flush(&self) -> Result<(), StateError> {
        self.sled.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot_file::SnapshotWriter;
    use nines_types::SnapshotMeta;

    fn rk(main: i64) -> Vec<u8> {
        rev_key(Rev { main, sub: 0 }).to_vec()
    }

    fn keys(engine: &TieredEngine, start: &[u8], end: Option<&[u8]>) -> Vec<Vec<u8>> {
        engine
            .scan(start, end)
            .map(|r| r.unwrap().0.to_vec())
            .collect()
    }

    fn put(main: i64) -> Write {
        (rk(main), Some(format!("v{main}").into_bytes()))
    }

    /// Meta and sessions in sled, records 2..=6 in the base (4 dropped by a
    /// compaction), 7..=9 in the tail.
    #[test]
    fn reads_split_by_revision_and_a_takeover_drops_tail_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let tail_dir = dir.path().join("tail");
        let engine = Arc::new(TieredEngine::new(
            SledEngine::new(tree.clone()),
            Tail::create(&tail_dir).unwrap(),
            None,
        ));
        let mut batch: Vec<Write> = (2..=6).map(put).collect();
        batch.push((b"mrevision".to_vec(), Some(b"m".to_vec())));
        batch.push((b"sclient".to_vec(), Some(b"s".to_vec())));
        engine.write_batch(&batch).unwrap();
        // sled holds no record.
        assert_eq!(tree.len(), 2);
        engine.rotate_tail().unwrap();
        engine
            .write_batch(&(7..=9).map(put).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(engine.get(&rk(4)).unwrap().unwrap().as_ref(), b"v4");

        let path = dir.path().join("snap");
        let mut w = SnapshotWriter::create(&path, &SnapshotMeta::default()).unwrap();
        for main in [2, 3, 5, 6] {
            w.record(&rk(main), format!("v{main}").as_bytes()).unwrap();
        }
        let slots = w.finish().unwrap().1;
        let base = BaseFile::written(&path, 6, 4, slots).unwrap();
        engine.take_base(Arc::new(base)).unwrap();
        assert_eq!(std::fs::read_dir(&tail_dir).unwrap().count(), 1);

        assert_eq!(engine.get(&rk(3)).unwrap().unwrap().as_ref(), b"v3");
        assert_eq!(engine.get(&rk(4)).unwrap(), None);
        assert_eq!(engine.get(&rk(8)).unwrap().unwrap().as_ref(), b"v8");
        assert_eq!(engine.get(b"sclient").unwrap().unwrap().as_ref(), b"s");
        let mut all = vec![b"mrevision".to_vec()];
        all.extend([rk(2), rk(3), rk(5), rk(6), rk(7), rk(8), rk(9)]);
        all.push(b"sclient".to_vec());
        assert_eq!(keys(&engine, &[], None), all);
        assert_eq!(
            keys(&engine, &rk(3), Some(&rk(8))),
            vec![rk(3), rk(5), rk(6), rk(7)]
        );
        assert_eq!(
            keys(&engine, &rk(7), None),
            vec![rk(7), rk(8), rk(9), b"sclient".to_vec()]
        );
        assert_eq!(
            keys(&engine, b"m", Some(&rk(3))),
            vec![b"mrevision".to_vec(), rk(2)]
        );
        assert_eq!(keys(&engine, &rk(9), Some(&rk(5))), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn a_takeover_waits_for_a_scan_that_began_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tail_dir = dir.path().join("tail");
        let engine = Arc::new(TieredEngine::new(
            SledEngine::new(db.open_tree("t").unwrap()),
            Tail::create(&tail_dir).unwrap(),
            None,
        ));
        engine
            .write_batch(&(2..=5).map(put).collect::<Vec<_>>())
            .unwrap();
        engine.rotate_tail().unwrap();
        let path = dir.path().join("snap");
        let mut w = SnapshotWriter::create(&path, &SnapshotMeta::default()).unwrap();
        for main in 2..=5 {
            w.record(&rk(main), format!("v{main}").as_bytes()).unwrap();
        }
        let slots = w.finish().unwrap().1;
        let mut scan = engine.scan(&[REV_PREFIX], None);
        assert_eq!(scan.next().unwrap().unwrap().0.as_ref(), rk(2).as_slice());
        let taker = {
            let engine = engine.clone();
            let base = BaseFile::written(&path, 5, 0, slots).unwrap();
            std::thread::spawn(move || engine.take_base(Arc::new(base)).unwrap())
        };
        std::thread::sleep(Duration::from_millis(200));
        let rest: Vec<_> = scan.by_ref().map(|r| r.unwrap().0.to_vec()).collect();
        assert_eq!(rest, vec![rk(3), rk(4), rk(5)]);
        assert!(!taker.is_finished(), "the takeover waits for the scan");
        assert_eq!(std::fs::read_dir(&tail_dir).unwrap().count(), 2);
        drop(scan);
        taker.join().unwrap();
        assert_eq!(std::fs::read_dir(&tail_dir).unwrap().count(), 1);
    }
}
