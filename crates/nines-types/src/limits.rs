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
    #[error("a user or role name (or permission key) of {0} bytes is too long")]
    AuthNameTooLong(usize),
    #[error("an auth secret of {0} bytes (32 expected)")]
    AuthSecret(usize),
    #[error("a lease checkpoint holds {len} leases, the limit is {max}")]
    CheckpointTooLarge { len: usize, max: usize },
    #[error("txn writes key {0:?} more than once in one branch")]
    DuplicateKeyInTxn(String),
    #[error("a batch may not contain another batch")]
    NestedBatch,
    #[error("value is provided with ignore_value")]
    ValueProvided,
    #[error("lease is provided with ignore_lease")]
    LeaseProvided,
    #[error("request of {len} bytes encoded, the limit is {max}")]
    RequestTooLarge { len: usize, max: usize },
}

/// etcd's largest lease TTL (9,000,000,000 s): larger grants are refused.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// The most one request may take in the log (encoded). With the
/// proposer's batch bound added, an entry stays well under what the log
/// and a peer may decode (`codec::MAX_DECODE_BYTES`): an entry over it
/// would be written and then refused on every read.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
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
    /// The bounds every member applies the log within, whatever its flags.
    /// The flags (`--max-key-bytes` and the like) are checked where a
    /// request comes in, as etcd checks them; an apply that read them made
    /// a leader started with larger ones apply what its followers refused,
    /// and the replicas differed. No flag may exceed these.
    pub const APPLY: Limits = Limits {
        max_key_bytes: 64 * 1024,
        max_value_bytes: 32 * 1024 * 1024,
        max_txn_ops: 10_000,
    };

    /// Whether every bound is within [`Limits::APPLY`].
    pub fn within_apply(&self) -> bool {
        self.max_key_bytes <= Self::APPLY.max_key_bytes
            && self.max_value_bytes <= Self::APPLY.max_value_bytes
            && self.max_txn_ops <= Self::APPLY.max_txn_ops
    }

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
            // A lease may be any id (etcd grants negative ones); one not
            // granted is "not found" at apply.
            Command::Put { key, value, .. } => {
                self.check_key(key)?;
                self.check_value(value)
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
                // etcd's rule: the longest of the three lists, not their sum.
                let ops = txn
                    .compares
                    .len()
                    .max(txn.success.len())
                    .max(txn.failure.len());
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
            // Compaction bounds are the store's (etcd: at or below the
            // compacted revision is "compacted", past the current one "future").
            Command::Compact { .. } => Ok(()),
            Command::Batch(requests) => requests.iter().try_for_each(|r| match &r.command {
                Command::Batch(_) => Err(InputError::NestedBatch),
                command => self.check_command(command),
            }),
            Command::LeaseGrant { id, ttl } => {
                // Any id but 0, which asks the leader to pick one; etcd takes
                // negative ids too.
                if *id == 0 {
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
            // An id never granted is "not found" at apply, as in etcd.
            Command::LeaseRevoke { .. } => Ok(()),
            Command::LeaseCheckpoint(list) | Command::LeaseCheckpointOf { list, .. }
                if list.len() > MAX_CHECKPOINT_LEASES =>
            {
                Err(InputError::CheckpointTooLarge {
                    len: list.len(),
                    max: MAX_CHECKPOINT_LEASES,
                })
            }
            Command::LeaseCheckpoint(_) | Command::LeaseCheckpointOf { .. } => Ok(()),
            Command::Auth(auth) => check_auth(auth),
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
        Ok(())
    }

    fn check_branch(&self, ops: &[TxnOp]) -> Result<(), InputError> {
        let mut put_keys: std::collections::BTreeSet<&[u8]> = Default::default();
        for op in ops {
            match op {
                TxnOp::Put { key, value, .. } | TxnOp::PutLeased { key, value, .. } => {
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
                TxnOp::Delete { range, .. } => self.check_range(range)?,
                TxnOp::Get(read) | TxnOp::GetWith(read, _) => self.check_read(read)?,
            }
            if let Some(key) = op.put_key() {
                // etcd rejects a txn that writes the same key twice: the result would
                // depend on op order in a way clients rarely mean.
                if !put_keys.insert(key) {
                    return Err(InputError::DuplicateKeyInTxn(
                        String::from_utf8_lossy(key).into_owned(),
                    ));
                }
            }
        }
        // So is a put of a key the same branch deletes (two deletes are fine).
        for op in ops {
            if let TxnOp::Delete { range, .. } = op {
                if let Some(key) = first_put_in(&put_keys, range) {
                    return Err(InputError::DuplicateKeyInTxn(
                        String::from_utf8_lossy(key).into_owned(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The first of `puts` that `range` covers.
fn first_put_in<'a>(
    puts: &std::collections::BTreeSet<&'a [u8]>,
    range: &KeyRange,
) -> Option<&'a [u8]> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let found = match range {
        KeyRange::Single(key) => puts.get(key.as_slice()),
        KeyRange::From(start) => puts
            .range::<[u8], _>((Included(start.as_slice()), Unbounded))
            .next(),
        KeyRange::Between { start, end } if end > start => puts
            .range::<[u8], _>((Included(start.as_slice()), Excluded(end.as_slice())))
            .next(),
        KeyRange::Between { .. } => None,
    };
    found.copied()
}

/// Names and keys of an auth change: bounded, so one entry stays small.
fn check_auth(auth: &crate::AuthCommand) -> Result<(), InputError> {
    use crate::AuthCommand as A;
    let name = |n: &str| {
        if n.len() > MAX_AUTH_NAME {
            Err(InputError::AuthNameTooLong(n.len()))
        } else {
            Ok(())
        }
    };
    match auth {
        A::Enable { secret } if secret.len() != 32 => Err(InputError::AuthSecret(secret.len())),
        A::Enable { .. } | A::Disable => Ok(()),
        A::UserAdd { name: n, .. }
        | A::UserDelete { name: n }
        | A::UserChangePassword { name: n, .. }
        | A::RoleAdd { name: n }
        | A::RoleDelete { name: n } => name(n),
        A::UserGrantRole { user, role } | A::UserRevokeRole { user, role } => {
            name(user)?;
            name(role)
        }
        A::RoleGrantPermission { role, perm } => {
            name(role)?;
            if perm.key.len() > MAX_AUTH_NAME * 4 || perm.range_end.len() > MAX_AUTH_NAME * 4 {
                return Err(InputError::AuthNameTooLong(
                    perm.key.len().max(perm.range_end.len()),
                ));
            }
            Ok(())
        }
        A::RoleRevokePermission { role, .. } => name(role),
    }
}

/// Longest user or role name (etcd has none; a name is in every token).
pub const MAX_AUTH_NAME: usize = 1024;

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
        // etcd counts the longest list, not the sum: 128 in each passes.
        let full = Txn {
            compares: (0..128)
                .map(|i| crate::Compare {
                    key: i.to_string().into_bytes(),
                    op: crate::CompareOp::Equal,
                    target: crate::CompareTarget::Version(0),
                })
                .collect(),
            success: (0..128).map(|i| put(&i.to_string())).collect(),
            failure: (0..128).map(|i| put(&i.to_string())).collect(),
        };
        assert_eq!(limits.check_command(&Command::Txn(full)), Ok(()));
    }

    #[test]
    fn a_put_of_a_key_its_branch_deletes_is_a_duplicate() {
        let limits = Limits::default();
        let put = |k: &str| TxnOp::Put {
            key: k.as_bytes().to_vec(),
            value: vec![],
            prev_kv: false,
        };
        let del = |range: KeyRange| TxnOp::Delete {
            range,
            prev_kv: false,
        };
        let between = |a: &str, b: &str| KeyRange::Between {
            start: a.as_bytes().to_vec(),
            end: b.as_bytes().to_vec(),
        };
        let verdict = |success: Vec<TxnOp>, failure: Vec<TxnOp>| {
            limits.check_command(&Command::Txn(Txn {
                compares: vec![],
                success,
                failure,
            }))
        };
        let dup = |r: Result<(), InputError>| matches!(r, Err(InputError::DuplicateKeyInTxn(_)));
        assert!(dup(verdict(
            vec![put("a"), del(KeyRange::Single(b"a".to_vec()))],
            vec![]
        )));
        assert!(dup(verdict(vec![del(between("a", "c")), put("b")], vec![])));
        assert!(dup(verdict(
            vec![put("abc"), del(between("a", "b"))],
            vec![]
        )));
        assert!(dup(verdict(
            vec![put("z"), del(KeyRange::From(b"m".to_vec()))],
            vec![]
        )));
        // Not covered: the end is excluded; an empty interval covers nothing.
        assert_eq!(
            verdict(vec![put("c"), del(between("a", "c"))], vec![]),
            Ok(())
        );
        assert_eq!(
            verdict(vec![put("b"), del(between("c", "a"))], vec![]),
            Ok(())
        );
        // Deletes may overlap; the branches are checked apart.
        assert_eq!(
            verdict(vec![del(between("a", "c")), del(between("b", "d"))], vec![]),
            Ok(())
        );
        assert_eq!(
            verdict(vec![put("a")], vec![del(KeyRange::Single(b"a".to_vec()))]),
            Ok(())
        );
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
