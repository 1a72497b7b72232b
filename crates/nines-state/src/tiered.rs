//! The production [`Engine`]: revision records up to the newest snapshot's
//! revision come from that snapshot file (`base_file.rs`), everything else
//! (newer records, meta, sessions, leases, auth) from sled.
//!
//! The split is by revision alone: a record at or below the base's
//! revision is read from the base even while sled still holds a copy
//! (sled's copies are removed after the base took over, and a crash can
//! leave some), so a read never sees two versions of one record.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::base_file::BaseFile;
use crate::engine::{Engine, ScanIter, Write};
use crate::error::StateError;
use crate::mvcc::{parse_rev_key, rev_key, Rev, REV_PREFIX};
use crate::sled_engine::SledEngine;
use crate::store::read_lock;

/// Under the meta prefix: the revision of the base whose records were
/// removed from sled. An open needs a snapshot file at least that new.
pub(crate) const META_BASE: &[u8] = b"mbase";

pub(crate) struct TieredEngine {
    sled: SledEngine,
    /// Every get and scan holds a clone of the view it started with until
    /// it is done, so a takeover can wait for the reads that may still
    /// look for records in sled below the new cut (see `take_base`).
    view: RwLock<Arc<View>>,
}

#[derive(Default)]
struct View {
    base: Option<Arc<BaseFile>>,
}

/// How long a takeover waits for reads that started before it.
const READERS_WAIT: Duration = Duration::from_secs(10);

impl TieredEngine {
    pub fn new(sled: SledEngine, base: Option<Arc<BaseFile>>) -> Self {
        TieredEngine {
            sled,
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

    /// Serves records up to `base.revision` from `base` from now on, notes
    /// that in sled, then removes sled's copies of them. Call only once the
    /// file is durable and published.
    pub fn take_base(&self, base: Arc<BaseFile>) -> Result<u64, StateError> {
        let cut = cut_of(&base);
        let revision = base.revision;
        let new = Arc::new(View { base: Some(base) });
        let old = std::mem::replace(
            &mut *self.view.write().unwrap_or_else(|e| e.into_inner()),
            new,
        );
        // Before any removal: sled recovers a prefix of its writes, so a
        // state that lost a record to this removal also has this note.
        self.tree()
            .insert(META_BASE, crate::store::encode(&revision)?)?;
        // A read that began on the old view may still look for these
        // records in sled. Left in place they are harmless (hidden below
        // the cut), so after a wait they are left for the next takeover.
        let deadline = Instant::now() + READERS_WAIT;
        while Arc::strong_count(&old) > 1 {
            if Instant::now() > deadline {
                tracing::warn!("a read outlasted a snapshot takeover; sled's copies stay for now");
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut removed = 0;
        loop {
            let keys: Vec<Vec<u8>> = self
                .sled
                .scan(&[REV_PREFIX], Some(&cut))
                .take(10_000)
                .map(|r| r.map(|(k, _)| k.to_vec()))
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                return Ok(removed);
            }
            self.sled.remove_each(&keys)?;
            removed += keys.len() as u64;
        }
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
        let view = self.view();
        if key.first() == Some(&REV_PREFIX) {
            if let Some(base) = &view.base {
                if parse_rev_key(key)?.main <= base.revision {
                    return Ok(base.get(key)?.map(sled::IVec::from));
                }
            }
        }
        // `view` is held until sled answered (see `View`).
        let found = self.sled.get(key);
        drop(view);
        found
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_, sled::IVec> {
        let view = self.view();
        let Some(base) = view.base.clone() else {
            return Box::new(Held {
                inner: self.sled.scan(start, end),
                _view: view,
            });
        };
        let cut = cut_of(&base);
        let low: &[u8] = &[REV_PREFIX];
        // Below the revision records, the base's part, then from its cut on.
        let before = self.sled.scan(start, Some(min_end(end, low)));
        let from = max(start, low).to_vec();
        let to = min_end(end, &cut).to_vec();
        let middle = base
            .scan(&from, &to)
            .map(|r| r.map(|(k, v)| (sled::IVec::from(k), sled::IVec::from(v))));
        let after = self.sled.scan(max(start, &cut), end);
        Box::new(Held {
            inner: before.chain(middle).chain(after),
            _view: view,
        })
    }

    fn write_batch(&self, writes: &[Write]) -> Result<(), StateError> {
        self.sled.write_batch(writes)
    }

    fn remove_each(&self, keys: &[Vec<u8>]) -> Result<(), StateError> {
        // Records the base holds stay in its file until the next snapshot
        // leaves them out; the key index no longer points at them.
        self.sled.remove_each(keys)
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

    /// sled holding records 2..=9 and a key on each side of them; a
    /// snapshot file holding records 2..=6 (revision 6) but 4, which a
    /// compaction dropped.
    #[test]
    fn reads_split_at_the_base_revision_and_sled_copies_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for main in 2..=9 {
            tree.insert(rk(main), format!("sled{main}").as_bytes())
                .unwrap();
        }
        tree.insert(b"mrevision", b"m".as_slice()).unwrap();
        tree.insert(b"sclient", b"s".as_slice()).unwrap();
        let path = dir.path().join("snap");
        let mut w = SnapshotWriter::create(&path, &SnapshotMeta::default()).unwrap();
        for main in [2, 3, 5, 6] {
            w.record(&rk(main), format!("file{main}").as_bytes())
                .unwrap();
        }
        let slots = w.finish().unwrap().1;
        let engine = TieredEngine::new(SledEngine::new(tree.clone()), None);
        assert_eq!(engine.get(&rk(4)).unwrap().unwrap().as_ref(), b"sled4");

        let base = BaseFile::written(&path, 6, 4, slots).unwrap();
        assert_eq!(engine.take_base(Arc::new(base)).unwrap(), 5);
        // sled kept only what the file does not cover, and the note.
        let in_sled: Vec<_> = tree.iter().keys().map(|k| k.unwrap().to_vec()).collect();
        let mut want = vec![META_BASE.to_vec(), b"mrevision".to_vec()];
        want.extend([rk(7), rk(8), rk(9)]);
        want.push(b"sclient".to_vec());
        assert_eq!(in_sled, want);

        assert_eq!(engine.get(&rk(3)).unwrap().unwrap().as_ref(), b"file3");
        assert_eq!(engine.get(&rk(4)).unwrap(), None);
        assert_eq!(engine.get(&rk(8)).unwrap().unwrap().as_ref(), b"sled8");
        assert_eq!(engine.get(b"sclient").unwrap().unwrap().as_ref(), b"s");
        let mut all = vec![META_BASE.to_vec(), b"mrevision".to_vec()];
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
            vec![META_BASE.to_vec(), b"mrevision".to_vec(), rk(2)]
        );

        // A copy a crash left in sled below the cut is never read.
        tree.insert(rk(5), b"stale".as_slice()).unwrap();
        assert_eq!(engine.get(&rk(5)).unwrap().unwrap().as_ref(), b"file5");
        assert_eq!(keys(&engine, &rk(5), Some(&rk(6))), vec![rk(5)]);
    }

    #[test]
    fn a_takeover_waits_for_a_scan_that_began_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for main in 2..=5 {
            tree.insert(rk(main), b"v".as_slice()).unwrap();
        }
        let path = dir.path().join("snap");
        let mut w = SnapshotWriter::create(&path, &SnapshotMeta::default()).unwrap();
        for main in 2..=5 {
            w.record(&rk(main), b"v").unwrap();
        }
        let slots = w.finish().unwrap().1;
        let engine = Arc::new(TieredEngine::new(SledEngine::new(tree), None));
        let mut scan = engine.scan(&[REV_PREFIX], None);
        assert_eq!(scan.next().unwrap().unwrap().0.as_ref(), rk(2).as_slice());
        let taker = {
            let engine = engine.clone();
            let base = BaseFile::written(&path, 5, 0, slots).unwrap();
            std::thread::spawn(move || engine.take_base(Arc::new(base)).unwrap())
        };
        std::thread::sleep(Duration::from_millis(200));
        // The scan still finds every record in sled.
        let rest: Vec<_> = scan.by_ref().map(|r| r.unwrap().0.to_vec()).collect();
        assert_eq!(rest, vec![rk(3), rk(4), rk(5)]);
        assert!(!taker.is_finished(), "the takeover waits for the scan");
        drop(scan);
        assert_eq!(taker.join().unwrap(), 4);
    }
}
