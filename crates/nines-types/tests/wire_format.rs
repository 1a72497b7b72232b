//! Byte fields are serialized with `serde_bytes` for speed. bincode must
//! write exactly what it wrote for the plain `Vec<u8>` sequence before,
//! or logs and snapshots written by older binaries would no longer decode.

use nines_types::{Command, KeyRange};
use serde::{Deserialize, Serialize};

/// `Command::Put` and `Command::DeleteRange` as they were declared before.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum OldCommand {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
    },
    Delete {
        key: Vec<u8>,
        prev_kv: bool,
    },
    DeleteRange {
        range: OldKeyRange,
        prev_kv: bool,
    },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum OldKeyRange {
    Single(Vec<u8>),
    Between { start: Vec<u8>, end: Vec<u8> },
    From(Vec<u8>),
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
}

#[test]
fn byte_fields_encode_as_before() {
    // 300 bytes: a length past one varint byte, and every byte value.
    let value: Vec<u8> = (0..300u32).map(|i| (i % 256) as u8).collect();
    let pairs = [
        (
            encode(&Command::Put {
                key: b"k".to_vec(),
                value: value.clone(),
                lease: 0,
                prev_kv: true,
            }),
            encode(&OldCommand::Put {
                key: b"k".to_vec(),
                value: value.clone(),
                lease: 0,
                prev_kv: true,
            }),
        ),
        (
            encode(&Command::DeleteRange {
                range: KeyRange::Between {
                    start: b"a".to_vec(),
                    end: value.clone(),
                },
                prev_kv: false,
            }),
            encode(&OldCommand::DeleteRange {
                range: OldKeyRange::Between {
                    start: b"a".to_vec(),
                    end: value.clone(),
                },
                prev_kv: false,
            }),
        ),
    ];
    for (new, old) in pairs {
        assert_eq!(new, old);
        let (decoded, _): (Command, usize) =
            bincode::serde::decode_from_slice(&old, bincode::config::standard()).unwrap();
        assert_eq!(encode(&decoded), old);
    }
}
