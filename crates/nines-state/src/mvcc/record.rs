//! How a revision is stored: its key names the revision, its value the
//! write.
//!
//! - key: `r` + main revision (u64 BE) + sub index (u32 BE), so the engine
//!   keeps records in revision order and a range scan of `r` is history.
//! - value: bincode(`RecordHeader`) followed by the user value, raw: the
//!   index is rebuilt from headers alone, without copying values.
//!
//! Records are written once and never changed, so a reader may fetch one
//! by its revision without any lock.

use serde::{Deserialize, Serialize};

use super::index::Rev;
use crate::error::StateError;
use crate::store::encode;

pub(crate) const REV_PREFIX: u8 = b'r';
const REV_KEY_LEN: usize = 1 + 8 + 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordHeader {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// A delete: the key's life ended at this revision.
    pub tombstone: bool,
    /// Stored although the index can derive them: rebuilding the index
    /// checks the two agree.
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

pub(crate) fn rev_key(rev: Rev) -> [u8; REV_KEY_LEN] {
    let mut raw = [0u8; REV_KEY_LEN];
    raw[0] = REV_PREFIX;
    // Revisions are positive: as u64 they sort like the i64s they are.
    raw[1..9].copy_from_slice(&(rev.main.max(0) as u64).to_be_bytes());
    raw[9..].copy_from_slice(&rev.sub.to_be_bytes());
    raw
}

pub(crate) fn parse_rev_key(raw: &[u8]) -> Result<Rev, StateError> {
    let bad = || {
        StateError::CorruptState(format!(
            "bad revision key {raw:02x?} (expected {REV_KEY_LEN} bytes)"
        ))
    };
    if raw.len() != REV_KEY_LEN || raw[0] != REV_PREFIX {
        return Err(bad());
    }
    let main = u64::from_be_bytes(raw[1..9].try_into().map_err(|_| bad())?);
    let sub = u32::from_be_bytes(raw[9..].try_into().map_err(|_| bad())?);
    match i64::try_from(main) {
        Ok(main) if main > 0 => Ok(Rev { main, sub }),
        _ => Err(bad()),
    }
}

pub(crate) fn encode_record(header: &RecordHeader, value: &[u8]) -> Result<Vec<u8>, StateError> {
    let mut raw = encode(header)?;
    raw.extend_from_slice(value);
    Ok(raw)
}

/// The header and the value it is followed by.
pub(crate) fn decode_record(raw: &[u8]) -> Result<(RecordHeader, &[u8]), StateError> {
    let (header, used) = nines_types::codec::decode_prefix::<RecordHeader>(raw)
        .map_err(|e| StateError::CorruptState(format!("revision record: {e}")))?;
    let value = raw.get(used..).unwrap_or_default();
    Ok((header, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_revision_and_round_trip() {
        let revs = [
            Rev { main: 1, sub: 0 },
            Rev { main: 1, sub: 7 },
            Rev { main: 2, sub: 0 },
            Rev { main: 256, sub: 0 },
            Rev {
                main: i64::MAX,
                sub: u32::MAX,
            },
        ];
        let keys: Vec<_> = revs.iter().map(|r| rev_key(*r)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (rev, key) in revs.iter().zip(&keys) {
            assert_eq!(parse_rev_key(key).unwrap(), *rev);
        }
        assert!(parse_rev_key(b"r").is_err());
        assert!(parse_rev_key(&rev_key(Rev { main: 0, sub: 0 })).is_err());
        let mut negative = rev_key(Rev { main: 1, sub: 0 });
        negative[1] = 0x80;
        assert!(parse_rev_key(&negative).is_err());
    }

    #[test]
    fn records_keep_the_value_raw_after_the_header() {
        let header = RecordHeader {
            key: b"k".to_vec(),
            tombstone: false,
            create_revision: 3,
            version: 2,
            lease: 0,
        };
        let raw = encode_record(&header, b"value").unwrap();
        let (back, value) = decode_record(&raw).unwrap();
        assert_eq!((back, value), (header, &b"value"[..]));
        assert!(decode_record(&raw[..2]).is_err());
        assert!(decode_record(&[0xff; 3]).is_err());
    }
}
