//! Segment file format: a header, then length-prefixed, checksummed records.
//!
//! ```text
//! header: [8-byte magic "NINESWAL"][u32 LE format version]
//! record: [u32 LE payload len][u32 LE crc32c(type ++ payload)][u8 type][payload]
//! ```
//!
//! Entry payloads are the bincode 2 (standard config) serde encoding of a
//! `nines_types::Entry`; Committed payloads encode an `Option<LogId>`.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nines_types::{codec, Entry, LogId};

use crate::error::LogError;

pub(crate) const MAGIC: [u8; 8] = *b"NINESWAL";
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: u64 = 12;
pub(crate) const RECORD_HEADER_LEN: usize = 9;

const SUFFIX: &str = ".wal";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordType {
    Entry = 1,
    Committed = 2,
}

impl RecordType {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordType::Entry),
            2 => Some(RecordType::Committed),
            _ => None,
        }
    }
}

/// File name of the segment whose first entry has index `first_index`;
/// zero padding makes lexical order equal numeric order.
pub(crate) fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}{SUFFIX}")
}

pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An open segment file. Handles stay open for the life of the segment so
/// reads are a single positional `read_at`.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Index of the first entry written to this segment (its file name).
    pub first_index: u64,
    pub path: PathBuf,
    pub file: File,
}

impl Segment {
    pub(crate) fn open(dir: &Path, first_index: u64) -> Result<Segment, LogError> {
        let path = dir.join(segment_file_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        Ok(Segment {
            first_index,
            path,
            file,
        })
    }

    /// Creates a segment holding the header and a Committed record, synced.
    /// Returns it with its length. The caller must fsync the directory.
    pub(crate) fn create(
        dir: &Path,
        first_index: u64,
        committed: Option<LogId>,
    ) -> Result<(Segment, u64), LogError> {
        let path = dir.join(segment_file_name(first_index));
        // create_new: a name collision means a bookkeeping bug, never overwrite data.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        let mut buf = header().to_vec();
        encode_committed(&mut buf, committed)?;
        file.write_all_at(&buf, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| LogError::io(&path, e))?;
        let seg = Segment {
            first_index,
            path,
            file,
        };
        Ok((seg, buf.len() as u64))
    }
}

pub(crate) fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Appends one framed record to `buf`; `body` writes the payload.
fn encode_record(
    buf: &mut Vec<u8>,
    kind: RecordType,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    buf[start + 8] = kind as u8;
    body(buf)?;
    let payload_len = buf.len() - start - RECORD_HEADER_LEN;
    if payload_len > codec::MAX_DECODE_BYTES {
        // Written, it would be refused on every read (and at every start).
        buf.truncate(start);
        return Err(LogError::Encode(format!(
            "record of {payload_len} bytes is over the {}-byte read limit",
            codec::MAX_DECODE_BYTES
        )));
    }
    let len = payload_len as u32;
    let crc = crc32c::crc32c(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

pub(crate) fn encode_entry(buf: &mut Vec<u8>, entry: &Entry) -> Result<(), LogError> {
    encode_record(buf, RecordType::Entry, |b| {
        codec::encode_into(entry, b).map_err(|e| LogError::Encode(e.to_string()))
    })
}

pub(crate) fn encode_committed(buf: &mut Vec<u8>, c: Option<LogId>) -> Result<(), LogError> {
    encode_record(buf, RecordType::Committed, |b| {
        codec::encode_into(&c, b).map_err(|e| LogError::Encode(e.to_string()))
    })
}

fn decode_exact<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    codec::decode(payload).map_err(|e| e.to_string())
}

pub(crate) fn decode_entry(payload: &[u8]) -> Result<Entry, String> {
    decode_exact(payload)
}

pub(crate) fn decode_committed(payload: &[u8]) -> Result<Option<LogId>, String> {
    decode_exact(payload)
}

/// Why a record could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadRecord {
    ShortHeader,
    PastEnd,
    Checksum,
    UnknownType(u8),
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadRecord::ShortHeader => write!(f, "short record header"),
            BadRecord::PastEnd => write!(f, "record extends past end of data"),
            BadRecord::Checksum => write!(f, "checksum mismatch"),
            BadRecord::UnknownType(t) => write!(f, "unknown record type {t}"),
        }
    }
}

/// Parses the record at the start of `data`: its type and payload range
/// (relative to `data`; the payload end is the record's total length).
pub(crate) fn parse_record(data: &[u8]) -> Result<(RecordType, Range<usize>), BadRecord> {
    if data.len() < RECORD_HEADER_LEN {
        return Err(BadRecord::ShortHeader);
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    let end = RECORD_HEADER_LEN + len;
    if end > data.len() {
        return Err(BadRecord::PastEnd);
    }
    if crc32c::crc32c(&data[8..end]) != crc {
        return Err(BadRecord::Checksum);
    }
    let kind = RecordType::from_u8(data[8]).ok_or(BadRecord::UnknownType(data[8]))?;
    Ok((kind, RECORD_HEADER_LEN..end))
}

#[derive(Debug)]
pub(crate) struct Record {
    /// Byte offset of the record's header in the file.
    pub offset: u64,
    /// Total bytes including the header.
    pub len: u32,
    pub kind: RecordType,
    /// Payload bytes within the scanned buffer.
    pub payload: Range<usize>,
}

#[derive(Debug)]
pub(crate) struct Scan {
    pub records: Vec<Record>,
    /// Bytes that hold a valid header and whole records.
    pub valid_len: u64,
    /// Set when a torn tail was found at `valid_len` (last segment only).
    pub torn: Option<String>,
}

/// Validates a whole segment's bytes.
///
/// Zeros after the last record end any segment: that space was zeroed ahead
/// of the writer. Only the last segment may end in a torn write (a record
/// or header cut short, or a record whose checksum fails because it was
/// half written: nothing but zeros after it, or a page of it still zero):
/// that is reported in `Scan::torn`. Any other damage is `LogError::Corrupt`
/// naming the file and byte offset.
pub(crate) fn scan(path: &Path, data: &[u8], is_last: bool) -> Result<Scan, LogError> {
    let mut records = Vec::new();
    let tail = |records: Vec<Record>, offset: u64, reason: &str| {
        if is_last {
            Ok(Scan {
                records,
                valid_len: offset,
                torn: Some(reason.to_string()),
            })
        } else {
            Err(LogError::corrupt(path, offset, reason))
        }
    };
    let hl = HEADER_LEN as usize;
    if data.len() < hl || all_zero(data) {
        return tail(records, 0, "incomplete segment header");
    }
    if data[..8] != MAGIC {
        return Err(LogError::corrupt(path, 0, "bad segment magic"));
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != VERSION {
        return Err(LogError::corrupt(
            path,
            8,
            format!("unsupported segment format version {version}"),
        ));
    }
    let mut off = hl;
    while off < data.len() {
        let rest = &data[off..];
        if all_zero(rest) {
            // Space zeroed ahead of the writer (`prealloc.rs`): the end.
            break;
        }
        match parse_record(rest) {
            Ok((kind, payload)) => {
                records.push(Record {
                    offset: off as u64,
                    len: payload.end as u32,
                    kind,
                    payload: off + payload.start..off + payload.end,
                });
                off += payload.end;
            }
            Err(bad) => {
                // A write cut short by a crash damages only the end of the file.
                let torn = match bad {
                    BadRecord::ShortHeader | BadRecord::PastEnd => true,
                    BadRecord::Checksum => {
                        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                        let end = RECORD_HEADER_LEN + len;
                        all_zero(&rest[end.min(rest.len())..])
                            || has_lost_page(data, off, off + end)
                    }
                    BadRecord::UnknownType(_) => false,
                };
                if torn {
                    return tail(records, off as u64, &bad.to_string());
                }
                return Err(LogError::corrupt(path, off as u64, bad.to_string()));
            }
        }
    }
    Ok(Scan {
        records,
        valid_len: off as u64,
        torn: None,
    })
}

/// The smallest unit a device writes whole: after a power loss, an
/// unsynced write into zeroed space can come back with sectors missing
/// (still zero). Pages (4 KiB) were the unit here before, but a device
/// may tear a page at its 512-byte sectors, and such a crash made the log
/// refuse to open for good.
const SECTOR: usize = 512;

/// Whether a sector overlapping the record at `[start, end)` reads as zero
/// from the record's start on: a write the crash cut short, not damage to
/// synced data (etcd's WAL applies the same rule to sectors). Everything
/// after such a record was never covered by a completed sync, so never
/// acked.
fn has_lost_page(data: &[u8], start: usize, end: usize) -> bool {
    let end = end.min(data.len());
    let mut sector = start - start % SECTOR;
    while sector < end {
        let lo = sector.max(start);
        let hi = (sector + SECTOR).min(data.len());
        if all_zero(&data[lo..hi]) {
            return true;
        }
        sector += SECTOR;
    }
    false
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}
