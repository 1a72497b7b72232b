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

use crate::error::StateError;
use crate::store::{decode, encode, RawRecord};

const MAGIC: &[u8; 8] = b"NINESSNP";
/// 2: user data as revision records (the multi-version store); a version 1
/// file holds the older layout and is refused.
const VERSION: u32 = 2;
const END_MARKER: u32 = u32::MAX;
/// A meta record is a few hundred bytes; anything huge is corruption.
const MAX_META_LEN: u32 = 16 * 1024 * 1024;

pub(crate) struct SnapshotWriter {
    out: BufWriter<File>,
    path: PathBuf,
    crc: u32,
    count: u64,
}

impl SnapshotWriter {
    pub fn create(path: &Path, meta: &SnapshotMeta) -> Result<Self, StateError> {
        let file = File::create(path).map_err(|e| StateError::io(path, e))?;
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(256 * 1024, file),
            path: path.to_path_buf(),
            crc: 0,
            count: 0,
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
        self.put(&klen.to_le_bytes())?;
        self.put(&len_u32(value.len(), &self.path)?.to_le_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs the file.
    pub fn finish(mut self) -> Result<u64, StateError> {
        let crc = self.crc;
        self.put(&END_MARKER.to_le_bytes())?;
        self.put(&self.count.to_le_bytes())?;
        self.put(&crc.to_le_bytes())?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| StateError::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| StateError::io(&self.path, e))?;
        Ok(self.count)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
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
