//! Revision records newer than the base snapshot, appended to files of our
//! own (`<state>/tail/<tree>/<seq>.tail`), never to sled.
//!
//! A record is written once and never changed, so an append-only file is
//! all it needs. sled held them before: every insert rewrote pages, and
//! sled 0.34 keeps about twice what is live (it cleans a segment only once
//! at most half of it is live), so at 1,000,000 keys of 256 B its file
//! stayed at 350 MiB after the snapshot took the records over. Here a
//! takeover deletes whole files.
//!
//! Not durable by itself, like sled: the Raft log is, and the state is
//! rebuilt from the newest snapshot plus the log. An apply appends its
//! records before it writes the store revision (in sled), so after a crash
//! records above that revision are cut off at open, and a tail that ends
//! below it, or does not start right after the base, is damage.
//!
//! Frame: `u32 klen | u32 vlen | u32 crc32c(key, value) | key | value`,
//! little-endian. Each snapshot capture starts a new file, so no file
//! straddles a snapshot's revision.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::base_file::Slot;
use crate::error::StateError;
use crate::mvcc::{parse_rev_key, REV_PREFIX};
use crate::store::read_lock;

const EXT: &str = "tail";
const FRAME_HEADER: usize = 12;
/// Records handed to a scan per lock hold.
const SCAN_BATCH: usize = 256;
/// Writeback of appended records is started every this many bytes. Left
/// to the kernel, 30 s of records (about 80 MB a member at 9,000 puts/s)
/// went to disk at once when they expired, and every member's WAL
/// `fdatasync` waited 0.2-0.4 s behind them (put p99.9 ~0.5 s, once a
/// bench ran 30 s). The snapshot file is paced the same way.
const WRITEBACK_BYTES: u64 = 1 << 20;

pub(crate) struct Tail {
    /// None: a store nothing is appended to (a placeholder at open).
    dir: Option<PathBuf>,
    state: RwLock<State>,
}

struct Segment {
    path: PathBuf,
    file: File,
}

#[derive(Default)]
struct State {
    /// Sequence number of `segments[0]`.
    first_seq: u64,
    /// Oldest first; the last one is appended to.
    segments: VecDeque<Arc<Segment>>,
    /// Every record, in revision order, with its segment's sequence number.
    slots: Vec<(Slot, u64)>,
    /// Where the next append goes in the last segment.
    end: u64,
    /// Offset in the last segment up to which writeback was started.
    written_back: u64,
}

impl State {
    fn segment(&self, seq: u64) -> Option<Arc<Segment>> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.segments.get(i).cloned()
    }

    /// Where record `key` is or would go.
    fn position(&self, key: &[u8]) -> usize {
        self.slots
            .partition_point(|(s, _)| s.key().as_slice() < key)
    }

    /// The index of record `key`, if the tail has it.
    fn find(&self, key: &[u8]) -> Option<usize> {
        let i = self.position(key);
        let found = self.slots.get(i)?.0.key();
        (found.as_slice() == key).then_some(i)
    }
}

fn seq_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{EXT}"))
}

fn create_segment(dir: &Path, seq: u64) -> Result<Arc<Segment>, StateError> {
    let path = seq_path(dir, seq);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| StateError::io(&path, e))?;
    Ok(Arc::new(Segment { path, file }))
}

impl Tail {
    /// A tail for a store nothing is appended to.
    pub fn detached() -> Self {
        Tail {
            dir: None,
            state: RwLock::new(State::default()),
        }
    }

    /// An empty tail in `dir`, removing whatever was there.
    pub fn create(dir: &Path) -> Result<Self, StateError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
        let state = State {
            segments: VecDeque::from([create_segment(dir, 0)?]),
            ..State::default()
        };
        Ok(Tail {
            dir: Some(dir.to_path_buf()),
            state: RwLock::new(state),
        })
    }

    /// Opens the tail in `dir` of a store at `revision` whose base holds
    /// the records up to `base`: drops older records' files, cuts off
    /// records above `revision` and torn frames, and checks that what is
    /// left runs from `base + 1` to `revision`.
    pub fn open(dir: &Path, base: i64, revision: i64) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
        let mut seqs: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| StateError::io(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(&format!(".{EXT}"))?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let mut state = State {
            first_seq: seqs.first().copied().unwrap_or(0),
            ..State::default()
        };
        let mut cut = false;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = seq_path(dir, seq);
            if cut || (i > 0 && seq != seqs[i - 1] + 1) {
                // After a cut, or a gap in the numbering: nothing after it
                // can be trusted to follow on.
                cut = true;
                std::fs::remove_file(&path).map_err(|e| StateError::io(&path, e))?;
                continue;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StateError::io(&path, e))?;
            let (end, torn) = read_segment(&file, &path, seq, base, revision, &mut state.slots)?;
            if torn {
                file.set_len(end).map_err(|e| StateError::io(&path, e))?;
                cut = true;
            }
            state.end = end;
            state.written_back = end;
            state.segments.push_back(Arc::new(Segment { path, file }));
        }
        if state.segments.is_empty() {
            state.first_seq = 0;
            state.segments.push_back(create_segment(dir, 0)?);
            state.end = 0;
            state.written_back = 0;
        }
        let first = state.slots.first().map(|(s, _)| s.main());
        let last = state.slots.last().map(|(s, _)| s.main());
        let expected = (revision > base).then(|| (base + 1, revision));
        if expected != first.zip(last) {
            return Err(StateError::CorruptState(format!(
                "the records after the snapshot's revision {base} run {first:?}..={last:?}, \
                 the store is at revision {revision} ({})",
                dir.display()
            )));
        }
        let tail = Tail {
            dir: Some(dir.to_path_buf()),
            state: RwLock::new(state),
        };
        // Segments wholly at or below the base were kept only so far.
        tail.drop_upto(base)?;
        Ok(tail)
    }

    /// Removes the tail's files (its store was replaced).
    pub fn remove_files(&self) {
        if let Some(dir) = &self.dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an old tail");
            }
        }
    }

    /// Appends `records` (revision keys and values, in revision order).
    pub fn append(&self, records: &[(&[u8], &[u8])]) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let (seg, seq) = match (&self.dir, st.segments.back()) {
            (Some(_), Some(seg)) => (seg.clone(), st.first_seq + st.segments.len() as u64 - 1),
            _ => return Err(StateError::Task("append to a detached tail".into())),
        };
        let mut buf = Vec::new();
        let mut slots = Vec::with_capacity(records.len());
        for (key, value) in records {
            let rev = parse_rev_key(key)?;
            if let Some((last, _)) = slots.last().or(st.slots.last()) {
                if last.key().as_slice() >= *key {
                    return Err(StateError::CorruptState(format!(
                        "record {rev:?} appended out of order"
                    )));
                }
            }
            let vlen = u32::try_from(value.len())
                .map_err(|_| StateError::Codec("record value too large".into()))?;
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(&vlen.to_le_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(key), value);
            buf.extend_from_slice(&crc.to_le_bytes());
            buf.extend_from_slice(key);
            let at = st.end + buf.len() as u64;
            buf.extend_from_slice(value);
            slots.push((Slot::new(rev, at, value), seq));
        }
        seg.file
            .write_all_at(&buf, st.end)
            .map_err(|e| StateError::io(&seg.path, e))?;
        st.end += buf.len() as u64;
        st.slots.extend(slots);
        let unsent = st.end.saturating_sub(st.written_back);
        if unsent >= WRITEBACK_BYTES {
            let from = st.written_back;
            st.written_back = st.end;
            drop(st);
            start_writeback(&seg.file, from, unsent);
        }
        Ok(())
    }

    /// Starts a new file, unless the current one is empty: call at a
    /// snapshot capture, with no apply writing.
    pub fn rotate(&self) -> Result<(), StateError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if st.end == 0 {
            return Ok(());
        }
        let seq = st.first_seq + st.segments.len() as u64;
        let seg = create_segment(dir, seq)?;
        st.segments.push_back(seg);
        st.end = 0;
        st.written_back = 0;
        Ok(())
    }

    /// Deletes the files whose records are all at or below `revision` (a
    /// base now serves them), never the one appended to.
    pub fn drop_upto(&self, revision: i64) -> Result<(), StateError> {
        let mut gone = Vec::new();
        {
            let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
            while st.segments.len() > 1 {
                let seq = st.first_seq;
                let n = st.slots.iter().take_while(|(_, s)| *s == seq).count();
                if st.slots[..n]
                    .last()
                    .is_some_and(|(s, _)| s.main() > revision)
                {
                    break;
                }
                st.slots.drain(..n);
                if let Some(seg) = st.segments.pop_front() {
                    gone.push(seg.path.clone());
                }
                st.first_seq += 1;
            }
        }
        for path in gone {
            std::fs::remove_file(&path).map_err(|e| StateError::io(&path, e))?;
        }
        Ok(())
    }

    /// Hides record `key` from reads and scans (see `BaseFile::remove`).
    pub fn remove(&self, key: &[u8]) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = st.find(key) {
            st.slots[i].0.removed = true;
        }
    }

    /// The value of record `key`, if the tail has it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let found = {
            let st = read_lock(&self.state);
            st.find(key)
                .map(|i| st.slots[i])
                .filter(|(slot, _)| !slot.removed)
                .and_then(|(slot, seq)| st.segment(seq).map(|seg| (slot, seg)))
        };
        found.map(|(slot, seg)| read_value(&slot, &seg)).transpose()
    }

    /// The records with `start <= key < end`, in order.
    pub fn scan<'a>(&'a self, start: &[u8], end: &[u8]) -> TailScan<'a> {
        TailScan {
            tail: self,
            from: start.to_vec(),
            end: end.to_vec(),
            batch: VecDeque::new(),
            done: false,
        }
    }
}

fn read_value(slot: &Slot, seg: &Segment) -> Result<Vec<u8>, StateError> {
    let mut value = vec![0u8; slot.len as usize];
    seg.file.read_exact_at(&mut value, slot.at).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StateError::corrupt(
                &seg.path,
                format!("a record at byte {} is past the end", slot.at),
            )
        } else {
            StateError::io(&seg.path, e)
        }
    })?;
    slot.check(&value, &seg.path)?;
    Ok(value)
}

/// Reads the frames of one file into `slots` (those above `base`, up to
/// `revision`). Returns where the good frames end and whether anything
/// after that was cut off: a torn or damaged frame, or records above
/// `revision` (an apply a crash interrupted).
fn read_segment(
    file: &File,
    path: &Path,
    seq: u64,
    base: i64,
    revision: i64,
    slots: &mut Vec<(Slot, u64)>,
) -> Result<(u64, bool), StateError> {
    let len = file.metadata().map_err(|e| StateError::io(path, e))?.len();
    let mut input = BufReader::with_capacity(256 * 1024, file);
    let mut pos = 0u64;
    let mut header = [0u8; FRAME_HEADER];
    while pos < len {
        if len - pos < FRAME_HEADER as u64 || input.read_exact(&mut header).is_err() {
            return Ok((pos, true));
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (klen, vlen, crc) = (u64::from(word(0)), u64::from(word(4)), word(8));
        let body = klen + vlen;
        if len - pos - (FRAME_HEADER as u64) < body || klen != 13 {
            return Ok((pos, true));
        }
        // Bounded by the file's length, checked above.
        let mut bytes = vec![0u8; body as usize];
        if input.read_exact(&mut bytes).is_err() {
            return Ok((pos, true));
        }
        let (key, value) = bytes.split_at(klen as usize);
        if crc32c::crc32c_append(crc32c::crc32c(key), value) != crc || key[0] != REV_PREFIX {
            return Ok((pos, true));
        }
        let Ok(rev) = parse_rev_key(key) else {
            return Ok((pos, true));
        };
        if rev.main > revision {
            return Ok((pos, true));
        }
        let at = pos + FRAME_HEADER as u64 + klen;
        if rev.main > base {
            if slots.last().is_some_and(|(s, _)| s.key().as_slice() >= key) {
                return Err(StateError::CorruptState(format!(
                    "{}: record {rev:?} out of order",
                    path.display()
                )));
            }
            slots.push((Slot::new(rev, at, value), seq));
        }
        pos = at + vlen;
    }
    Ok((pos, false))
}

/// A scan's cursor: takes records in batches, so the lock is held briefly
/// and a takeover or append can run between batches.
pub(crate) struct TailScan<'a> {
    tail: &'a Tail,
    /// The next key to look from.
    from: Vec<u8>,
    end: Vec<u8>,
    batch: VecDeque<(Slot, Arc<Segment>)>,
    done: bool,
}

impl Iterator for TailScan<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        // A batch may be all removed records: take the next one then.
        while self.batch.is_empty() && !self.done {
            let st = read_lock(&self.tail.state);
            let i = st.position(&self.from);
            let mut visited = 0;
            let mut last = None;
            for (slot, seq) in st.slots[i..].iter().take(SCAN_BATCH) {
                if slot.key().as_slice() >= self.end.as_slice() {
                    break;
                }
                visited += 1;
                last = Some(slot.key());
                if slot.removed {
                    continue;
                }
                match st.segment(*seq) {
                    Some(seg) => self.batch.push_back((*slot, seg)),
                    None => break,
                }
            }
            self.done = visited < SCAN_BATCH;
            if let Some(last) = last {
                // The smallest key after `last`.
                self.from = last.to_vec();
                self.from.push(0);
            }
        }
        let (slot, seg) = self.batch.pop_front()?;
        Some(read_value(&slot, &seg).map(|v| (slot.key().to_vec(), v)))
    }
}

/// Starts writing `len` bytes at `from` to disk without waiting for it: a
/// hint, not durability (the Raft log is), so a failure is ignored.
fn start_writeback(file: &File, from: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        // SAFETY: a plain syscall on a descriptor this tail owns.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{rev_key, Rev};

    fn rk(main: i64, sub: u32) -> Vec<u8> {
        rev_key(Rev { main, sub }).to_vec()
    }

    fn value(main: i64) -> Vec<u8> {
        vec![main as u8; 100 + main as usize]
    }

    /// Appends revisions `from..=to` (two records each) as one batch each.
    fn append(tail: &Tail, from: i64, to: i64) {
        for main in from..=to {
            let (a, b, v) = (rk(main, 0), rk(main, 1), value(main));
            tail.append(&[(&a, &v), (&b, &v)]).unwrap();
        }
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    fn mains(tail: &Tail) -> Vec<i64> {
        let mut got: Vec<i64> = tail
            .scan(&[REV_PREFIX], &[REV_PREFIX + 1])
            .map(|r| parse_rev_key(&r.unwrap().0).unwrap().main)
            .collect();
        got.dedup();
        got
    }

    /// Writeback is started every WRITEBACK_BYTES of records, so they do
    /// not pile up in the page cache until the kernel expires them.
    #[test]
    fn writeback_starts_every_megabyte_and_restarts_with_each_file() {
        let dir = tempfile::tempdir().unwrap();
        let tail = Tail::create(&dir.path().join("t")).unwrap();
        let sent = |tail: &Tail| {
            let st = tail.state.read().unwrap();
            (st.written_back, st.end)
        };
        let big = vec![7u8; 64 << 10];
        for main in 1..=40 {
            tail.append(&[(&rk(main, 0), &big)]).unwrap();
            let (written_back, end) = sent(&tail);
            assert!(
                end - written_back < WRITEBACK_BYTES,
                "{written_back} of {end}"
            );
        }
        let (written_back, end) = sent(&tail);
        assert!(written_back >= 2 * WRITEBACK_BYTES && end > written_back);
        tail.rotate().unwrap();
        assert_eq!(sent(&tail), (0, 0));
        assert_eq!(tail.get(&rk(40, 0)).unwrap(), Some(big));
    }

    #[test]
    fn records_read_back_across_files_and_a_takeover_deletes_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let tail = Tail::create(&path).unwrap();
        append(&tail, 2, 10);
        tail.rotate().unwrap();
        tail.rotate().unwrap(); // an empty file is not rotated again
        append(&tail, 11, 20);
        assert_eq!(files(&path), 2);
        assert_eq!(tail.get(&rk(7, 1)).unwrap(), Some(value(7)));
        assert_eq!(tail.get(&rk(15, 0)).unwrap(), Some(value(15)));
        assert_eq!(tail.get(&rk(15, 2)).unwrap(), None);
        let got: Vec<_> = tail
            .scan(&rk(9, 1), &rk(12, 0))
            .map(|r| r.unwrap())
            .collect();
        let want = vec![
            (rk(9, 1), value(9)),
            (rk(10, 0), value(10)),
            (rk(10, 1), value(10)),
            (rk(11, 0), value(11)),
            (rk(11, 1), value(11)),
        ];
        assert_eq!(got, want);
        // More than one batch of a scan.
        assert_eq!(mains(&tail), (2..=20).collect::<Vec<_>>());
        // Out of order is refused.
        let (k, v) = (rk(20, 0), value(1));
        assert!(tail.append(&[(&k, &v)]).is_err());

        // A base at 9 covers no whole file; one at 10 the first.
        tail.drop_upto(9).unwrap();
        assert_eq!(files(&path), 2);
        tail.drop_upto(10).unwrap();
        assert_eq!(files(&path), 1);
        assert_eq!(tail.get(&rk(7, 1)).unwrap(), None);
        assert_eq!(mains(&tail), (11..=20).collect::<Vec<_>>());
        // The file appended to stays even when wholly covered.
        tail.drop_upto(20).unwrap();
        assert_eq!(files(&path), 1);
        append(&tail, 21, 21);
        assert_eq!(tail.get(&rk(21, 0)).unwrap(), Some(value(21)));
    }

    #[test]
    fn an_open_cuts_off_torn_frames_and_records_above_the_store_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        {
            let tail = Tail::create(&path).unwrap();
            append(&tail, 2, 5);
            tail.rotate().unwrap();
            append(&tail, 6, 9);
        }
        // The store is at 8: 9 was an apply a crash cut off.
        let tail = Tail::open(&path, 1, 8).unwrap();
        assert_eq!(mains(&tail), (2..=8).collect::<Vec<_>>());
        append(&tail, 9, 9);
        drop(tail);
        // A torn last frame: the store never got past 8 either.
        let last = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let len = std::fs::metadata(&last).unwrap().len();
        let f = OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(len - 7).unwrap();
        let tail = Tail::open(&path, 1, 8).unwrap();
        assert_eq!(mains(&tail), (2..=8).collect::<Vec<_>>());
        drop(tail);
        // A base at 5 now serves 2..=5: that file goes at open.
        let tail = Tail::open(&path, 5, 8).unwrap();
        assert_eq!(mains(&tail), (6..=8).collect::<Vec<_>>());
        assert_eq!(files(&path), 1);
    }

    #[test]
    fn a_tail_that_does_not_reach_the_store_revision_or_the_base_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        {
            let tail = Tail::create(&path).unwrap();
            append(&tail, 2, 9);
        }
        // The store says 12: records were lost.
        assert!(matches!(
            Tail::open(&path, 1, 12),
            Err(StateError::CorruptState(_))
        ));
        // The base is at 0 (the newest snapshot was lost) but the tail
        // starts at 2... fine; a base below what the tail continues from:
        let tail = Tail::create(&path).unwrap();
        append(&tail, 6, 9);
        drop(tail);
        assert!(matches!(
            Tail::open(&path, 3, 9),
            Err(StateError::CorruptState(_))
        ));
        // A value damaged on disk is cut off as a torn frame at open.
        let file = std::fs::read_dir(&path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        assert!(matches!(
            Tail::open(&path, 5, 9),
            Err(StateError::CorruptState(_))
        ));
    }
}
