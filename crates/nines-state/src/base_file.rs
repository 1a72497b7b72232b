//! The newest snapshot file as the store of the revision records it holds.
//!
//! sled is not durable on its own (its flush is `sync_file_range`), so
//! every member keeps its newest snapshot file anyway. Keeping the same
//! records in sled too made two full copies of the data, and sled 0.34
//! holds about twice what is live in it (it cleans a segment only once at
//! most half of it is live): at 1,000,000 keys of 256 B a member held 585
//! MiB of sled beside a 326 MiB snapshot. So once a snapshot file is
//! durable, its revision records are read from it (one `pread` per value,
//! through the page cache) and removed from sled, which keeps only what was
//! written since.
//!
//! The file's CRC is checked when it is opened; each value's own CRC32C is
//! kept in memory from then (or from writing it), and every read checks it,
//! so a value damaged on disk later is an error, never a wrong answer.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::StateError;
use crate::mvcc::{rev_key, Rev, REV_PREFIX};
use crate::snapshot_file::SnapshotReader;
use crate::store::{decode, META_COMPACTED, META_REVISION};

/// Where one revision record's value lies in the file and its checksum
/// (32 bytes each: 32 MB of memory per million records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    main: u64,
    sub: u32,
    pub len: u32,
    pub at: u64,
    crc: u32,
    /// Removed (a compaction dropped it): reads pass over it, as over a
    /// key sled deleted. Only the tail sets it; the base keeps its own.
    pub removed: bool,
}

impl Slot {
    /// `value` as written at byte `at`.
    pub fn new(rev: Rev, at: u64, value: &[u8]) -> Self {
        Slot {
            main: rev.main.max(0) as u64,
            sub: rev.sub,
            // Values are framed by a u32 length in the file.
            len: value.len() as u32,
            at,
            crc: crc32c::crc32c(value),
            removed: false,
        }
    }

    pub fn main(&self) -> i64 {
        i64::try_from(self.main).unwrap_or(i64::MAX)
    }

    fn rev(&self) -> Rev {
        Rev {
            main: i64::try_from(self.main).unwrap_or(i64::MAX),
            sub: self.sub,
        }
    }

    pub fn key(&self) -> [u8; 13] {
        rev_key(self.rev())
    }

    /// Where it sorts: as its key does.
    fn pos(&self) -> (u64, u32) {
        (self.main, self.sub)
    }

    /// Fails unless `value` is what was written (`path` names the file).
    pub fn check(&self, value: &[u8], path: &Path) -> Result<(), StateError> {
        if crc32c::crc32c(value) == self.crc {
            return Ok(());
        }
        Err(StateError::corrupt(
            path,
            format!(
                "the value of revision {}.{} at byte {} changed on disk",
                self.main, self.sub, self.at
            ),
        ))
    }
}

/// The index of the first slot at or after `at`. Records run about one
/// per revision, so a guess from the revision lands within a few slots of
/// it and the search widens from there: a binary search over a million
/// slots (32 MB) touched ~20 of them, each a cache miss, on every read.
fn lower_bound(slots: &[Slot], at: (u64, u32)) -> usize {
    let (Some(first), Some(last)) = (slots.first(), slots.last()) else {
        return 0;
    };
    if at <= first.pos() {
        return 0;
    }
    if at > last.pos() {
        return slots.len();
    }
    // From here first < at <= last, so there are two slots at least.
    let n = slots.len();
    let span = u128::from(last.main - first.main).max(1);
    let guess = u128::from(at.0 - first.main) * (n as u128 - 1) / span;
    let guess = usize::try_from(guess).unwrap_or(n - 1).min(n - 1);
    // Widen [lo, hi] around the guess until slots[lo] < at <= slots[hi].
    let (mut lo, mut hi) = (guess, guess);
    let mut step = 1;
    if slots[guess].pos() < at {
        loop {
            hi = (lo + step).min(n - 1);
            if slots[hi].pos() >= at {
                break;
            }
            lo = hi;
            step *= 2;
        }
    } else {
        loop {
            lo = hi.saturating_sub(step);
            if slots[lo].pos() < at {
                break;
            }
            hi = lo;
            step *= 2;
        }
    }
    lo + 1 + slots[lo + 1..hi].partition_point(|s| s.pos() < at)
}

/// A snapshot file serving its revision records.
#[derive(Debug)]
pub(crate) struct BaseFile {
    file: File,
    /// Where it is: an install renames it into place after loading it.
    path: std::sync::Mutex<PathBuf>,
    /// The store revision the file was captured at: it holds every retained
    /// record at or below it.
    pub revision: i64,
    /// The compacted revision at the capture.
    pub compacted: i64,
    /// In revision order, as in the file.
    slots: Vec<Slot>,
    /// Per slot: removed since (see `remove`).
    removed: Box<[std::sync::atomic::AtomicBool]>,
}

/// Bytes read at once by a scan: records lie back to back in the file.
const SCAN_CHUNK: usize = 256 * 1024;

impl BaseFile {
    /// A file just written with `slots` (from its writer), captured at
    /// `revision` with `compacted`.
    pub fn written(
        path: &Path,
        revision: i64,
        compacted: i64,
        slots: Vec<Slot>,
    ) -> Result<Self, StateError> {
        if !slots.windows(2).all(|w| w[0].key() < w[1].key()) {
            return Err(StateError::corrupt(path, "revision records out of order"));
        }
        let file = File::open(path).map_err(|e| StateError::io(path, e))?;
        let removed = slots.iter().map(|_| Default::default()).collect();
        Ok(BaseFile {
            removed,
            file,
            path: std::sync::Mutex::new(path.to_path_buf()),
            revision,
            compacted,
            slots,
        })
    }

    /// Reads the whole file (checking its trailer) to find its records.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let (_, reader) = SnapshotReader::open(path)?;
        Self::read(path, reader, |_, _| Ok(()))
    }

    /// Walks `reader` (the file at `path`) to its checked trailer: notes
    /// where each revision record lies and hands every other record to
    /// `other` (an install loads those into sled).
    pub fn read(
        path: &Path,
        mut reader: SnapshotReader<File>,
        mut other: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StateError>,
    ) -> Result<Self, StateError> {
        let mut slots = Vec::new();
        let mut revision = crate::store::EMPTY_STORE_REVISION;
        let mut compacted = 0;
        while let Some(((key, value), at)) = reader.next_record_at()? {
            if key.first() == Some(&REV_PREFIX) {
                let rev = crate::mvcc::parse_rev_key(&key)?;
                slots.push(Slot::new(rev, at, &value));
                continue;
            }
            if key == META_REVISION {
                revision = decode(&value)?;
            } else if key == META_COMPACTED {
                compacted = decode(&value)?;
            }
            other(key, value)?;
        }
        Self::written(path, revision, compacted, slots)
    }

    pub fn path(&self) -> PathBuf {
        crate::store::lock(&self.path).clone()
    }

    /// After the file was renamed into place (its descriptor stays valid).
    pub fn moved_to(&self, path: &Path) {
        *crate::store::lock(&self.path) = path.to_path_buf();
    }

    fn is_removed(&self, i: usize) -> bool {
        self.removed[i].load(std::sync::atomic::Ordering::Acquire)
    }

    /// Hides record `rev` from reads and scans, as sled's removal did: the
    /// compaction sweep removes what it counted as freed, and must not
    /// find it again. The bytes stay until the next snapshot leaves it out.
    pub fn remove(&self, rev: Rev) {
        if let Some(i) = self.find(rev) {
            self.removed[i].store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// The index of record `rev`, if the file has it.
    fn find(&self, rev: Rev) -> Option<usize> {
        let at = (rev.main as u64, rev.sub);
        let i = lower_bound(&self.slots, at);
        (self.slots.get(i)?.pos() == at).then_some(i)
    }

    /// The value of record `rev`, if the file has it.
    pub fn get(&self, rev: Rev) -> Result<Option<Vec<u8>>, StateError> {
        let Some(i) = self.find(rev).filter(|&i| !self.is_removed(i)) else {
            return Ok(None);
        };
        let slot = &self.slots[i];
        let mut value = vec![0u8; slot.len as usize];
        self.read_at(&mut value, slot.at)?;
        self.check(slot, &value)?;
        Ok(Some(value))
    }

    fn check(&self, slot: &Slot, value: &[u8]) -> Result<(), StateError> {
        slot.check(value, &self.path())
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<(), StateError> {
        self.file.read_exact_at(buf, at).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StateError::corrupt(
                    self.path(),
                    format!("a record at byte {at} is past the end"),
                )
            } else {
                StateError::io(self.path(), e)
            }
        })
    }

    /// The records with `start <= key < end`, in order.
    pub fn scan(self: std::sync::Arc<Self>, start: &[u8], end: &[u8]) -> BaseScan {
        let next = self.slots.partition_point(|s| s.key().as_slice() < start);
        let stop = self.slots.partition_point(|s| s.key().as_slice() < end);
        BaseScan {
            base: self,
            next,
            stop: stop.max(next),
            buf: Vec::new(),
            buf_at: 0,
        }
    }
}

/// A scan's cursor: reads the file in chunks, not one call per record.
pub(crate) struct BaseScan {
    base: std::sync::Arc<BaseFile>,
    next: usize,
    stop: usize,
    buf: Vec<u8>,
    buf_at: u64,
}

impl BaseScan {
    fn value(&mut self, slot: Slot) -> Result<Vec<u8>, StateError> {
        let (at, len) = (slot.at, slot.len as usize);
        let in_buf = at >= self.buf_at && at + len as u64 <= self.buf_at + self.buf.len() as u64;
        if !in_buf {
            if len >= SCAN_CHUNK {
                let mut value = vec![0u8; len];
                self.base.read_at(&mut value, at)?;
                self.base.check(&slot, &value)?;
                return Ok(value);
            }
            // Up to the last record this scan needs, at most one chunk.
            let last = self.base.slots[self.stop - 1];
            let want = (last.at + u64::from(last.len) - at).clamp(len as u64, SCAN_CHUNK as u64);
            self.buf.resize(want as usize, 0);
            let mut buf = std::mem::take(&mut self.buf);
            if let Err(e) = self.base.read_at(&mut buf, at) {
                self.buf.clear();
                return Err(e);
            }
            self.buf = buf;
            self.buf_at = at;
        }
        let from = (at - self.buf_at) as usize;
        let value = &self.buf[from..from + len];
        self.base.check(&slot, value)?;
        Ok(value.to_vec())
    }
}

impl Iterator for BaseScan {
    type Item = Result<(Vec<u8>, Vec<u8>), StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.stop && self.base.is_removed(self.next) {
            self.next += 1;
        }
        if self.next >= self.stop {
            return None;
        }
        let slot = self.base.slots[self.next];
        self.next += 1;
        Some(self.value(slot).map(|v| (slot.key().to_vec(), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot_file::SnapshotWriter;
    use crate::store::encode;
    use nines_types::SnapshotMeta;
    use std::sync::Arc;

    fn rk(main: i64, sub: u32) -> Vec<u8> {
        rev_key(rv(main, sub)).to_vec()
    }

    fn rv(main: i64, sub: u32) -> Rev {
        Rev { main, sub }
    }

    fn slot_rev(slot: &Slot) -> Rev {
        let (main, sub) = slot.pos();
        rv(main as i64, sub)
    }

    /// A file with meta keys around records at revisions 2..=40 (values of
    /// growing size), as a build writes one; and the slots its writer kept.
    fn write(path: &Path) -> Vec<Slot> {
        let mut w = SnapshotWriter::create(path, &SnapshotMeta::default()).unwrap();
        w.record(META_COMPACTED, &encode(&3i64).unwrap()).unwrap();
        w.record(META_REVISION, &encode(&40i64).unwrap()).unwrap();
        for main in 2..=40 {
            w.record(&rk(main, 0), &vec![main as u8; main as usize * 9000])
                .unwrap();
        }
        w.record(b"sclient", b"session").unwrap();
        w.finish().unwrap().1
    }

    #[test]
    fn the_guessed_search_finds_what_a_binary_search_finds() {
        // Gaps (compacted revisions), several subs, a dense run and a
        // revision far above the rest.
        let mut revs = Vec::new();
        for main in [
            3i64, 4, 9, 10, 11, 40, 41, 42, 43, 44, 45, 46, 47, 300, 301, 100_000,
        ] {
            for sub in 0..(main % 3 + 1) as u32 {
                revs.push(Rev { main, sub });
            }
        }
        let slots: Vec<Slot> = revs.iter().map(|&r| Slot::new(r, 0, b"v")).collect();
        for n in 0..=slots.len() {
            let slots = &slots[..n];
            for main in 0..=310u64 {
                for sub in 0..4 {
                    let want = slots.partition_point(|s| s.pos() < (main, sub));
                    assert_eq!(
                        lower_bound(slots, (main, sub)),
                        want,
                        "{n} slots, {main}.{sub}"
                    );
                }
            }
            for at in [
                (99_999, 0),
                (100_000, 0),
                (100_000, 2),
                (u64::MAX, u32::MAX),
            ] {
                let want = slots.partition_point(|s| s.pos() < at);
                assert_eq!(lower_bound(slots, at), want, "{n} slots, {at:?}");
            }
        }
    }

    #[test]
    fn a_written_file_and_a_reopened_one_serve_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let slots = write(&path);
        let written = Arc::new(BaseFile::written(&path, 40, 3, slots).unwrap());
        let opened = Arc::new(BaseFile::open(&path).unwrap());
        assert_eq!((opened.revision, opened.compacted), (40, 3));
        assert_eq!(opened.slots, written.slots);
        for base in [written, opened] {
            assert_eq!(base.get(rv(7, 0)).unwrap(), Some(vec![7u8; 63_000]));
            assert_eq!(base.get(rv(7, 1)).unwrap(), None);
            assert_eq!(base.get(rv(41, 0)).unwrap(), None);
            let got: Vec<_> = base
                .clone()
                .scan(&rk(5, 0), &rk(31, 0))
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(got.len(), 26);
            for (i, (key, value)) in got.iter().enumerate() {
                let main = 5 + i as i64;
                assert_eq!(key, &rk(main, 0));
                assert_eq!(value, &vec![main as u8; main as usize * 9000]);
            }
            assert_eq!(base.clone().scan(&rk(9, 0), &rk(3, 0)).count(), 0);
            assert_eq!(
                base.clone().scan(&[REV_PREFIX], &[REV_PREFIX + 1]).count(),
                39
            );
        }
    }

    #[test]
    fn a_value_damaged_on_disk_is_an_error_not_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let slots = write(&path);
        let base = Arc::new(BaseFile::written(&path, 40, 3, slots).unwrap());
        let slot = base.slots[10];
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[slot.at as usize + 100] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        let rev = slot_rev(&slot);
        assert!(matches!(
            base.get(rev),
            Err(StateError::CorruptSnapshot { .. })
        ));
        let scanned: Result<Vec<_>, _> = base
            .clone()
            .scan(&[REV_PREFIX], &[REV_PREFIX + 1])
            .collect();
        assert!(matches!(scanned, Err(StateError::CorruptSnapshot { .. })));
        // Its neighbours still read.
        assert!(base.get(slot_rev(&base.slots[9])).unwrap().is_some());
        // And a reopen refuses the file outright.
        assert!(BaseFile::open(&path).is_err());
    }
}
