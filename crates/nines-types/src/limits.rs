//! Input limits, checked in one place for every entry point.

use serde::{Deserialize, Serialize};

use crate::{Command, Keep, KeyRange, RangeRequest, TxnOp};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("key is empty")]
    EmptyKey,
    #[error("key is {len} bytes, the limit is {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, the limit is {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("txn has {ops} operations, the limit is {max}")]
    TooManyTxnOps { ops: usize, max: usize },
    #[error("lease ID {0} is not positive")]
    LeaseId(i64),
    #[error("lease TTL {ttl} is outside 1..={max} seconds")]
    LeaseTtl { ttl: i64, max: i64 },
    #[error("a lease checkpoint holds {len} leases, the limit is {max}")]
    CheckpointTooLarge { len: usize, max: usize },
    #[error("txn writes key {0:?} more than once in one branch")]
    DuplicateKeyInTxn(String),
    #[error("a batch may not contain another batch")]
    NestedBatch,
    #[error("compaction revision {0} is not positive")]
    CompactRevision(i64),
    #[error("value is provided with ignore_value")]
    ValueProvided,
    #[error("lease is provided with ignore_lease")]
    LeaseProvided,
}

/// etcd's largest lease TTL (9,000,000,000 s): larger grants are refused.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Leases per checkpoint command (etcd's batch size), so one entry stays small.
pub const MAX_CHECKPOINT_LEASES: usize = 1000;

/// Size limits; the defaults match etcd's spirit with a larger value bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            max_txn_ops: 128,
        }
    }
}

impl Limits {
    pub fn check_key(&self, key: &[u8]) -> Result<(), InputError> {
        if key.is_empty() {
            return Err(InputError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(InputError::KeyTooLarge {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    pub fn check_value(&self, value: &[u8]) -> Result<(), InputError> {
        if value.len() > self.max_value_bytes {
            return Err(InputError::ValueTooLarge {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    pub fn check_range(&self, range: &KeyRange) -> Result<(), InputError> {
        match range {
            KeyRange::Single(key) => self.check_key(key),
            KeyRange::From(start) => self.check_key(start),
            KeyRange::Between { start, end } => {
                self.check_key(start)?;
                if end.len() > self.max_key_bytes {
                    return Err(InputError::KeyTooLarge {
                        len: end.len(),
                        max: self.max_key_bytes,
                    });
                }
                // An end at or below the start is an empty interval: it
                // matches nothing, as in etcd (the store reads nothing).
                Ok(())
            }
        }
    }

    pub fn check_read(&self, read: &RangeRequest) -> Result<(), InputError> {
        self.check_range(&read.range)
    }

    pub fn check_command(&self, command: &Command) -> Result<(), InputError> {
        match command {
            Command::Put {
                key, value, lease, ..
            } => {
                self.check_key(key)?;
                self.check_value(value)?;
                check_lease(*lease)
            }
            Command::PutKeeping {
                key,
                value,
                lease,
                keep,
                ..
            } => self.check_put_keeping(key, value, *lease, *keep),
            Command::Delete { key, .. } => self.check_key(key),
            Command::DeleteRange { range, .. } => self.check_range(range),
            Command::Txn(txn) => {
                let ops = txn.compares.len() + txn.success.len() + txn.failure.len();
                if ops > self.max_txn_ops {
                    return Err(InputError::TooManyTxnOps {
                        ops,
                        max: self.max_txn_ops,
                    });
                }
                for compare in &txn.compares {
                    self.check_key(&compare.key)?;
                    if let crate::CompareTarget::Value(v) = &compare.target {
                        self.check_value(v)?;
                    }
                }
                self.check_branch(&txn.success)?;
                self.check_branch(&txn.failure)
            }
            Command::Compact { revision, .. } if *revision <= 0 => {
                Err(InputError::CompactRevision(*revision))
            }
            Command::Compact { .. } => Ok(()),
            Command::Batch(requests) => requests.iter().try_for_each(|r| match &r.command {
                Command::Batch(_) => Err(InputError::NestedBatch),
                command => self.check_command(command),
            }),
            Command::LeaseGrant { id, ttl } => {
                if *id <= 0 {
                    return Err(InputError::LeaseId(*id));
                }
                if !(1..=MAX_LEASE_TTL).contains(ttl) {
                    return Err(InputError::LeaseTtl {
                        ttl: *ttl,
                        max: MAX_LEASE_TTL,
                    });
                }
                Ok(())
            }
            Command::LeaseRevoke { id } if *id <= 0 => Err(InputError::LeaseId(*id)),
            Command::LeaseRevoke { .. } => Ok(()),
            Command::LeaseCheckpoint(list) if list.len() > MAX_CHECKPOINT_LEASES => {
                Err(InputError::CheckpointTooLarge {
                    len: list.len(),
                    max: MAX_CHECKPOINT_LEASES,
                })
            }
            Command::LeaseCheckpoint(_) => Ok(()),
        }
    }

    /// etcd's order: the value and lease checks, then "provided" when a
    /// kept part is also given.
    fn check_put_keeping(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        keep: Keep,
    ) -> Result<(), InputError> {
        self.check_key(key)?;
        self.check_value(value)?;
        if keep.value && !value.is_empty() {
            return Err(InputError::ValueProvided);
        }
        if keep.lease && lease != 0 {
            return Err(InputError::LeaseProvided);
        }
        check_lease(lease)
    }

    fn check_branch(&self, ops: &[TxnOp]) -> Result<(), InputError> {
        let mut put_keys: Vec<&[u8]> = Vec::new();
        for op in ops {
            match op {
                TxnOp::Put { key, value, .. } => {
                    self.check_key(key)?;
                    self.check_value(value)?;
                }
                TxnOp::PutKeeping {
                    key,
                    value,
                    lease,
                    keep,
                    ..
                } => self.check_put_keeping(key, value, *lease, *keep)?,
                TxnOp::PutLeased {
                    key, value, lease, ..
                } => {
                    self.check_key(key)?;
                    self.check_value(value)?;
                    check_lease(*lease)?;
                }
                TxnOp::Delete { range, .. } => self.check_range(range)?,
                TxnOp::Get(read) => self.check_read(read)?,
            }
            if let Some(key) = op.put_key() {
                // etcd rejects a txn that writes the same key twice: the result would
                // depend on op order in a way clients rarely mean.
                if put_keys.contains(&key) {
                    return Err(InputError::DuplicateKeyInTxn(
                        String::from_utf8_lossy(key).into_owned(),
                    ));
                }
                put_keys.push(key);
            }
        }
        Ok(())
    }
}

/// A put's lease: 0 for none, else a granted id (ids are positive).
fn check_lease(lease: i64) -> Result<(), InputError> {
    if lease < 0 {
        return Err(InputError::LeaseId(lease));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Txn;

    #[test]
    fn rejects_bad_keys_and_values() {
        let limits = Limits::default();
        assert_eq!(limits.check_key(b""), Err(InputError::EmptyKey));
        assert!(limits.check_key(&[b'a'; 4096]).is_ok());
        assert!(matches!(
            limits.check_key(&[b'a'; 4097]),
            Err(InputError::KeyTooLarge { len: 4097, .. })
        ));
        assert!(limits.check_value(&vec![0; 1024 * 1024]).is_ok());
        assert!(limits.check_value(&vec![0; 1024 * 1024 + 1]).is_err());
    }

    #[test]
    fn rejects_large_and_duplicate_txns() {
        let limits = Limits::default();
        let put = |k: &str| TxnOp::Put {
            key: k.as_bytes().to_vec(),
            value: vec![],
            prev_kv: false,
        };
        let big = Txn {
            success: (0..129).map(|i| put(&i.to_string())).collect(),
            ..Default::default()
        };
        assert!(matches!(
            limits.check_command(&Command::Txn(big)),
            Err(InputError::TooManyTxnOps { ops: 129, .. })
        ));
        let dup = Txn {
            success: vec![put("a"), put("a")],
            ..Default::default()
        };
        assert!(matches!(
            limits.check_command(&Command::Txn(dup)),
            Err(InputError::DuplicateKeyInTxn(_))
        ));
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(
            KeyRange::prefix(b"ab"),
            KeyRange::Between {
                start: b"ab".to_vec(),
                end: b"ac".to_vec()
            }
        );
        assert_eq!(KeyRange::prefix(&[0xff]), KeyRange::From(vec![0xff]));
        assert!(KeyRange::prefix(b"a\xff").contains(b"a\xff\x01"));
        assert!(!KeyRange::prefix(b"a").contains(b"b"));
    }
}
