//! The one bincode configuration of nines, for peer messages and disk
//! records alike.
//!
//! bincode trusts length prefixes: with `config::standard()` a 20-byte
//! message claiming a 2^50-byte string made the process abort on the
//! allocation. Every decode here runs with a byte limit, and the limit is
//! chosen from the input's own size: bincode claims a string's or byte
//! field's length against the limit *before* allocating it, so a message
//! can never make us allocate more than `LIMIT_FACTOR` times its own size
//! (at least the smallest tier, at most 128 MiB). Sequences (`Vec<Entry>` …) go through
//! serde's cautious size hint, which caps their pre-allocation at 1 MiB
//! whatever the wire says.
//!
//! bincode also claims every integer's full width, however short its
//! varint: a one-byte u64 counts 8. So a valid value claims up to 8 times
//! its encoding, and the limit is at least that; at 4 times, a 2.7 KB log
//! entry of keepalive clearings was written and then refused on every
//! read, and the leader that wrote it exited.
//!
//! Encoding uses the same standard configuration: a limit changes no byte
//! of the format, so logs and snapshots written before stay readable.

use bincode::config::{self, Configuration, Limit};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// No single input (a peer message, a log record, a snapshot record) may
/// be larger than this.
pub const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

/// Tiers of the decode limit: the smallest one at least `LIMIT_FACTOR`
/// times the input's size is used. bincode claims at most 8 bytes per
/// byte of a valid encoding (a u64 or usize in one varint byte); no type
/// nines encodes holds a u128, which would claim 16.
pub const LIMIT_FACTOR: usize = 8;

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(String),
    #[error("decode: {0}")]
    Decode(String),
    #[error("{used} bytes decoded of {len}: trailing bytes")]
    Trailing { used: usize, len: usize },
    #[error("input of {0} bytes is over the {MAX_DECODE_BYTES}-byte decode limit")]
    TooLarge(usize),
}

fn standard() -> Configuration {
    config::standard()
}

fn limited<const N: usize>() -> Configuration<config::LittleEndian, config::Varint, Limit<N>> {
    config::standard().with_limit::<N>()
}

/// Encodes `value` in the nines format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, standard()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// The length of `value`'s encoding, counted without building it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(size.bytes_written)
}

/// Appends `value`'s encoding to `buf`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, buf, standard())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The limits, smallest first. The last one holds any input of up to
/// 16 MiB at `LIMIT_FACTOR`, and a larger one at 2× its size: what nines
/// writes that large is one request of a few large values (byte fields
/// count 1×), while integer-dense values (checkpoints, batches of small
/// requests, txns of at most 10,000 ops) stay far below 16 MiB. 8× of
/// 64 MiB would let one hostile peer message allocate 512 MiB.
const TIERS: [usize; 5] = [16 * KIB, 256 * KIB, 4 * MIB, 32 * MIB, 128 * MIB];

/// The byte limit a decode of `len` bytes runs with: the most it may
/// allocate for what length prefixes claim. None over `MAX_DECODE_BYTES`.
pub fn decode_limit(len: usize) -> Option<usize> {
    if len > MAX_DECODE_BYTES {
        return None;
    }
    let need = len * LIMIT_FACTOR;
    Some(TIERS.into_iter().find(|&t| t >= need).unwrap_or(TIERS[4]))
}

/// Decodes a value from the front of `bytes`; returns it and the bytes used.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    fn run<T: DeserializeOwned, const N: usize>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
        bincode::serde::decode_from_slice(bytes, limited::<N>())
            .map_err(|e| CodecError::Decode(e.to_string()))
    }
    match decode_limit(bytes.len()) {
        Some(n) if n == TIERS[0] => run::<T, { TIERS[0] }>(bytes),
        Some(n) if n == TIERS[1] => run::<T, { TIERS[1] }>(bytes),
        Some(n) if n == TIERS[2] => run::<T, { TIERS[2] }>(bytes),
        Some(n) if n == TIERS[3] => run::<T, { TIERS[3] }>(bytes),
        Some(_) => run::<T, { TIERS[4] }>(bytes),
        None => Err(CodecError::TooLarge(bytes.len())),
    }
}

/// Decodes a value that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing {
            used,
            len: bytes.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Rec {
        name: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        items: Vec<u64>,
    }

    #[test]
    fn round_trips_and_matches_standard_bincode() {
        let rec = Rec {
            name: "k".repeat(100_000),
            data: vec![7; 3 * 1024 * 1024],
            items: (0..1000).collect(),
        };
        let bytes = encode(&rec).unwrap();
        let plain = bincode::serde::encode_to_vec(&rec, config::standard()).unwrap();
        assert_eq!(bytes, plain);
        assert_eq!(decode::<Rec>(&bytes).unwrap(), rec);
    }

    #[test]
    fn a_huge_claimed_length_is_refused_without_allocating() {
        // A string whose varint length prefix claims 2^50 bytes.
        let mut bytes = vec![0xfd];
        bytes.extend_from_slice(&(1u64 << 50).to_le_bytes());
        bytes.extend_from_slice(b"abc");
        let err = decode::<String>(&bytes).unwrap_err();
        assert!(err.to_string().contains("LimitExceeded"), "{err}");
        // A claim of 1 MiB inside a 12-byte input is refused too: the
        // limit follows the input's size, not the format's maximum.
        let mut bytes = vec![0xfc];
        bytes.extend_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }

    /// bincode counts a u64's full 8 bytes against the limit however few
    /// its varint takes: every valid value must decode, at every tier.
    #[test]
    fn values_of_small_integers_decode_at_every_size() {
        for n in (0..70_000)
            .step_by(997)
            .chain([2_046, 2_050, 4_094, 32_766, 32_770, 65_534])
        {
            let zeros = vec![0u64; n];
            let bytes = encode(&zeros).unwrap();
            assert_eq!(decode::<Vec<u64>>(&bytes).unwrap(), zeros, "{n} zeros");
            let units = vec![None::<u64>; n];
            assert_eq!(
                decode::<Vec<Option<u64>>>(&encode(&units).unwrap()).unwrap(),
                units
            );
        }
    }

    #[test]
    fn encoded_len_is_the_encoding_s_length() {
        for n in [0usize, 1, 250, 251, 70_000] {
            let rec = Rec {
                name: "x".repeat(n),
                data: vec![1; n],
                items: (0..n as u64).collect(),
            };
            assert_eq!(encoded_len(&rec).unwrap(), encode(&rec).unwrap().len());
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&5u64).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(CodecError::Trailing { .. })
        ));
        assert_eq!(decode_prefix::<u64>(&bytes).unwrap(), (5, 1));
    }
}
