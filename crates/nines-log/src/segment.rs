//! Segment file format.
//!
//! A segment is a header (`NINESWAL` + u32 version) followed by records:
//! `[u32 len][u32 crc32c][u8 kind][payload]`, little endian, where `len`
//! counts kind + payload and the CRC covers them too.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{io_err, LogError};

pub const MAGIC: &[u8; 8] = b"NINESWAL";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 12;
const RECORD_HEAD: usize = 8;
/// Larger than any entry the server accepts; a bigger length is garbage.
const MAX_RECORD: u32 = 256 * 1024 * 1024;

pub const KIND_ENTRY: u8 = 1;
pub const KIND_COMMITTED: u8 = 2;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, LogError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| LogError::Codec(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, LogError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| LogError::Codec(e.to_string()))
}

pub fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h
}

/// Appends one framed record to `out`; returns its offset within `out`.
pub fn frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) -> usize {
    let at = out.len();
    let len = (payload.len() + 1) as u32;
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    at
}

/// Bytes of a record with this payload, framing included.
pub fn framed_len(payload_len: usize) -> u64 {
    (RECORD_HEAD + 1 + payload_len) as u64
}

pub fn file_name(first_index: u64) -> String {
    format!("{first_index:020}.wal")
}

pub fn parse_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".wal")?.parse().ok()
}

pub struct Record {
    pub offset: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

pub struct Scan {
    pub records: Vec<Record>,
    /// Bytes of intact data; anything after it is a torn tail to cut off.
    pub valid_len: u64,
    pub torn: Option<String>,
}

/// Reads a whole segment. Damage at the very end of the last segment is a
/// torn write (reported in `torn`); damage anywhere else is corruption.
pub fn scan(path: &PathBuf, is_last: bool) -> Result<Scan, LogError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let corrupt = |offset: u64, reason: String| LogError::Corrupt {
        path: path.clone(),
        offset,
        reason,
    };
    if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
        if is_last
            && bytes.len() < HEADER_LEN as usize
            && MAGIC.starts_with(&bytes[..bytes.len().min(8)])
        {
            // Crashed while creating the segment.
            return Ok(Scan {
                records: Vec::new(),
                valid_len: 0,
                torn: Some("incomplete segment header".into()),
            });
        }
        return Err(corrupt(0, "bad segment header".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(corrupt(8, format!("unsupported segment version {version}")));
    }
    let mut records = Vec::new();
    let mut at = HEADER_LEN as usize;
    while at < bytes.len() {
        let rest = bytes.len() - at;
        let torn_or_corrupt = |reason: String, record_end: usize| {
            if is_last && record_end >= bytes.len() {
                Ok(Scan {
                    records: Vec::new(),
                    valid_len: at as u64,
                    torn: Some(format!("{reason} at offset {at}")),
                })
            } else {
                Err(corrupt(at as u64, reason))
            }
        };
        if rest < RECORD_HEAD + 1 {
            return torn_or_corrupt("short record header".into(), bytes.len())
                .map(|s| Scan { records, ..s });
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD {
            return torn_or_corrupt(format!("bad record length {len}"), bytes.len())
                .map(|s| Scan { records, ..s });
        }
        let end = at + RECORD_HEAD + len as usize;
        if end > bytes.len() {
            return torn_or_corrupt("record runs past end of file".into(), end)
                .map(|s| Scan { records, ..s });
        }
        let body = &bytes[at + RECORD_HEAD..end];
        if crc32c::crc32c(body) != crc {
            return torn_or_corrupt("checksum mismatch".into(), end).map(|s| Scan { records, ..s });
        }
        records.push(Record {
            offset: at as u64,
            kind: body[0],
            payload: body[1..].to_vec(),
        });
        at = end;
    }
    Ok(Scan {
        records,
        valid_len: bytes.len() as u64,
        torn: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_names() {
        let mut buf = header();
        frame(KIND_ENTRY, b"hello", &mut buf);
        frame(KIND_COMMITTED, b"", &mut buf);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(5));
        std::fs::write(&path, &buf).unwrap();
        let scan = scan(&path, true).unwrap();
        assert!(scan.torn.is_none());
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.records[0].payload, b"hello");
        assert_eq!(scan.records[1].kind, KIND_COMMITTED);
        assert_eq!(parse_name(&path), Some(5));
        assert_eq!(
            framed_len(5),
            (buf.len() - HEADER_LEN as usize - framed_len(0) as usize) as u64
        );
    }
}
