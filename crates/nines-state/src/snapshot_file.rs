//! The snapshot file format, streamed both ways (never whole in memory).
//!
//! ```text
//! header:  magic "NINESSNP" | u32 version | u32 meta_len | bincode(SnapshotMeta)
//! records: u32 klen | u32 vlen | key | value        (raw tree keys and values)
//! trailer: u32 0xFFFF_FFFF | u64 record count | u32 crc32c
//! ```
//! Integers are little-endian. The CRC covers the header and every record,
//! so a flipped bit anywhere before the trailer is detected.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use nines_types::SnapshotMeta;

use crate::base_file::Slot;
use crate::error::StateError;
use crate::mvcc::{parse_rev_key, REV_PREFIX};
use crate::store::{decode, encode, RawRecord};

const MAGIC: &[u8; 8] = b"NINESSNP";
/// 2: user data as revision records (the multi-version store); a version 1
/// file holds the older layout and is refused.
const VERSION: u32 = 2;
const END_MARKER: u32 = u32::MAX;
/// A meta record is a few hundred bytes; anything huge is corruption.
const MAX_META_LEN: u32 = 16 * 1024 * 1024;

/// Bytes written between writeback steps (see [`SnapshotWriter::pace`]).
const WRITEBACK_STEP: u64 = 8 << 20;

pub(crate) struct SnapshotWriter {
    out: BufWriter<File>,
    path: PathBuf,
    crc: u32,
    count: u64,
    /// Bytes handed to the writer so far.
    written: u64,
    /// Where the last writeback step started and ended.
    started_at: u64,
    ended_at: u64,
    /// Where each revision record's value went, in file order: what makes
    /// the finished file a store readers can fetch values from.
    slots: Vec<Slot>,
}

impl SnapshotWriter {
    pub fn create(path: &Path, meta: &SnapshotMeta) -> Result<Self, StateError> {
        let file = File::create(path).map_err(|e| StateError::io(path, e))?;
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(256 * 1024, file),
            path: path.to_path_buf(),
            crc: 0,
            count: 0,
            written: 0,
            started_at: 0,
            ended_at: 0,
            slots: Vec::new(),
        };
        let meta = encode(meta)?;
        w.put(MAGIC)?;
        w.put(&VERSION.to_le_bytes())?;
        w.put(&len_u32(meta.len(), path)?.to_le_bytes())?;
        w.put(&meta)?;
        Ok(w)
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let klen = len_u32(key.len(), &self.path)?;
        if klen == END_MARKER {
            return Err(StateError::Codec("snapshot key too large".into()));
        }
        let vlen = len_u32(value.len(), &self.path)?;
        self.put(&klen.to_le_bytes())?;
        self.put(&vlen.to_le_bytes())?;
        self.put(key)?;
        if let Some(rev) = key
            .first()
            .filter(|&&b| b == REV_PREFIX)
            .and_then(|_| parse_rev_key(key).ok())
        {
            self.slots.push(Slot::new(rev, self.written, value));
        }
        self.put(value)?;
        self.count += 1;
        if self.written - self.ended_at >= WRITEBACK_STEP {
            self.pace()?;
        }
        Ok(())
    }

    /// Starts writeback of what was written since the last step and waits
    /// for the step before it, so at most two steps of the file are dirty
    /// at a time and the final fsync has little left to do.
    ///
    /// Why: a snapshot of 1,000,000 keys is ~300 MB. Left to one fsync at
    /// the end, it reached the disk in one burst, and every log fsync of
    /// the writes going on meanwhile waited behind it (put-64 at 1M keys
    /// dropped by a third in the seconds all three members snapshotted).
    /// RocksDB's `bytes_per_sync` is the same idea.
    fn pace(&mut self) -> Result<(), StateError> {
        self.out
            .flush()
            .map_err(|e| StateError::io(&self.path, e))?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = self.out.get_ref().as_raw_fd();
            let range = |from: u64, to: u64| {
                (
                    i64::try_from(from).unwrap_or(i64::MAX),
                    i64::try_from(to - from).unwrap_or(i64::MAX),
                )
            };
            let (prev, prev_len) = range(self.started_at, self.ended_at);
            let (next, next_len) = range(self.ended_at, self.written);
            // SAFETY: plain syscalls on a file descriptor we own. Failure is
            // harmless (the final fsync still makes the file durable), so
            // the results are ignored.
            unsafe {
                libc::sync_file_range(fd, next, next_len, libc::SYNC_FILE_RANGE_WRITE);
                if prev_len > 0 {
                    libc::sync_file_range(
                        fd,
                        prev,
                        prev_len,
                        libc::SYNC_FILE_RANGE_WAIT_BEFORE
                            | libc::SYNC_FILE_RANGE_WRITE
                            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                    );
                }
            }
        }
        self.started_at = self.ended_at;
        self.ended_at = self.written;
        Ok(())
    }

    /// Writes the trailer and fsyncs the file; returns the record count and
    /// where the revision records' values are.
    pub fn finish(mut self) -> Result<(u64, Vec<Slot>), StateError> {
        let crc = self.crc;
        self.put(&END_MARKER.to_le_bytes())?;
        self.put(&self.count.to_le_bytes())?;
        self.put(&crc.to_le_bytes())?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| StateError::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| StateError::io(&self.path, e))?;
        Ok((self.count, self.slots))
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.written += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(|e| StateError::io(&self.path, e))
    }
}

fn len_u32(len: usize, path: &Path) -> Result<u32, StateError> {
    u32::try_from(len)
        .map_err(|_| StateError::Codec(format!("record of {len} bytes in {}", path.display())))
}

/// Streams records out of a snapshot file, verifying count and CRC at the
/// end. `R` is the file, or the part of a backup before its checksum.
pub(crate) struct SnapshotReader<R: Read = File> {
    input: BufReader<R>,
    path: PathBuf,
    crc: u32,
    count: u64,
    done: bool,
    /// Zero bytes allowed after the trailer (a backup's alignment padding).
    max_padding: usize,
    /// Bytes consumed so far: the offset of what is read next.
    pos: u64,
}

impl SnapshotReader {
    pub fn open(path: &Path) -> Result<(SnapshotMeta, SnapshotReader), StateError> {
        let file = File::open(path).map_err(|e| StateError::io(path, e))?;
        SnapshotReader::from_reader(file, path)
    }
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header from `input`; `path` names it in errors.
    pub fn from_reader(
        input: R,
        path: &Path,
    ) -> Result<(SnapshotMeta, SnapshotReader<R>), StateError> {
        let mut r = SnapshotReader {
            input: BufReader::with_capacity(256 * 1024, input),
            path: path.to_path_buf(),
            crc: 0,
            count: 0,
            done: false,
            max_padding: 0,
            pos: 0,
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic, "magic")?;
        if &magic != MAGIC {
            return Err(r.corrupt("bad magic"));
        }
        let version = r.u32("version")?;
        if version != VERSION {
            return Err(r.corrupt(format!("unsupported version {version}")));
        }
        let meta_len = r.u32("meta length")?;
        if meta_len > MAX_META_LEN {
            return Err(r.corrupt(format!("meta length {meta_len} too large")));
        }
        let meta_bytes = r.bytes(meta_len, "meta")?;
        let meta = decode(&meta_bytes).map_err(|e| r.corrupt(format!("meta: {e}")))?;
        Ok((meta, r))
    }

    /// Accepts up to `max` zero bytes after the trailer.
    pub fn allow_padding(mut self, max: usize) -> Self {
        self.max_padding = max;
        self
    }

    /// The next record and the file offset of its value, or None after a
    /// valid trailer.
    pub fn next_record_at(&mut self) -> Result<Option<(RawRecord, u64)>, StateError> {
        let record = self.next_record()?;
        Ok(record.map(|(key, value)| {
            let at = self.pos - value.len() as u64;
            ((key, value), at)
        }))
    }

    /// The next record, or None after a valid trailer.
    pub fn next_record(&mut self) -> Result<Option<RawRecord>, StateError> {
        if self.done {
            return Ok(None);
        }
        let crc_before = self.crc;
        let klen = self.u32("record header")?;
        if klen == END_MARKER {
            return self.trailer(crc_before).map(|()| None);
        }
        let vlen = self.u32("record header")?;
        let key = self.bytes(klen, "record key")?;
        let value = self.bytes(vlen, "record value")?;
        self.count += 1;
        Ok(Some((key, value)))
    }

    fn trailer(&mut self, crc: u32) -> Result<(), StateError> {
        let mut count = [0u8; 8];
        self.take(&mut count, "trailer")?;
        let count = u64::from_le_bytes(count);
        let stored_crc = self.u32("trailer")?;
        if count != self.count {
            return Err(self.corrupt(format!(
                "trailer says {count} records, file has {}",
                self.count
            )));
        }
        if stored_crc != crc {
            return Err(self.corrupt(format!(
                "crc32c mismatch: stored {stored_crc:#010x}, computed {crc:#010x}"
            )));
        }
        let mut extra = [0u8; 512];
        let mut padding = 0;
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => break,
                Ok(n) => {
                    padding += n;
                    if padding > self.max_padding || extra[..n].iter().any(|&b| b != 0) {
                        return Err(self.corrupt("trailing bytes after trailer"));
                    }
                }
                Err(e) => return Err(StateError::io(&self.path, e)),
            }
        }
        self.done = true;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, StateError> {
        let mut b = [0u8; 4];
        self.take(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn take(&mut self, buf: &mut [u8], what: &str) -> Result<(), StateError> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.corrupt(format!("truncated in {what}"))
            } else {
                StateError::io(&self.path, e)
            }
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads `len` bytes without trusting `len` for the allocation: a
    /// corrupted length hits EOF instead of allocating gigabytes.
    fn bytes(&mut self, len: u32, what: &str) -> Result<Vec<u8>, StateError> {
        let mut buf = Vec::with_capacity((len as usize).min(64 * 1024));
        let read = (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut buf)
            .map_err(|e| StateError::io(&self.path, e))?;
        if read != len as usize {
            return Err(self.corrupt(format!("truncated in {what}")));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf);
        self.pos += buf.len() as u64;
        Ok(buf)
    }

    fn corrupt(&self, reason: impl Into<String>) -> StateError {
        StateError::corrupt(&self.path, reason)
    }
}

/// Reads the whole file, checking its trailer; returns its meta.
pub(crate) fn validate(path: &Path) -> Result<SnapshotMeta, StateError> {
    let (meta, mut reader) = SnapshotReader::open(path)?;
    while reader.next_record()?.is_some() {}
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large snapshot is written back in steps as it goes, not in one
    /// burst at the final fsync; and what is read back is what was written.
    #[test]
    fn a_large_snapshot_is_written_back_in_steps_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let mut w = SnapshotWriter::create(&path, &SnapshotMeta::default()).unwrap();
        let value = vec![7u8; 64 * 1024];
        let records = 3 * WRITEBACK_STEP as usize / value.len() + 1;
        let mut steps = Vec::new();
        for i in 0..records {
            w.record(format!("k{i:06}").as_bytes(), &value).unwrap();
            if steps.last() != Some(&w.ended_at) {
                steps.push(w.ended_at);
            }
        }
        // Three full steps passed: writeback started at each, in order, and
        // the one before the newest was waited for.
        assert_eq!(steps.len(), 4, "{steps:?}");
        assert!(
            steps.windows(2).all(|p| p[1] - p[0] >= WRITEBACK_STEP),
            "{steps:?}"
        );
        assert_eq!(w.started_at, steps[2]);
        assert_eq!(w.finish().unwrap().0, records as u64);
        let (_, mut reader) = SnapshotReader::open(&path).unwrap();
        let mut n = 0;
        while let Some((key, got)) = reader.next_record().unwrap() {
            assert_eq!(key, format!("k{n:06}").into_bytes());
            assert_eq!(got, value);
            n += 1;
        }
        assert_eq!(n, records);
    }
}
