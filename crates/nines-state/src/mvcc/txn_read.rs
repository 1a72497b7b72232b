//! A txn of reads only, served from the published state without the log,
//! as etcd serves one (its `isTxnReadonly` path): one revision for the
//! compares and every range, so the answer is what applying it there
//! would have given. Through the log, a txn of 128 full-store ranges was
//! 128 copies of the store inside one apply, on every member and again at
//! every restart.

use std::cmp::Ordering;

use nines_types::{Compare, CompareOp, CompareTarget, RangeOptions, Txn, TxnOp, TxnOpResponse};

use super::index::{KeyAt, Rev};
use super::{read, rev_key, Mvcc, Read};
use crate::engine::Engine;
use crate::error::StateError;
use crate::store::read_lock;

/// What a read-only txn answered: whether its compares held, and one
/// response per op of the branch taken.
pub type TxnRead = (bool, Vec<TxnOpResponse>);

/// etcd's compare of one key whose state is `current` (None: missing);
/// `value` reads the value written at a revision. A missing key has
/// version and revisions 0 and fails every value compare. Shared by apply
/// and the read-only path, so both decide alike.
pub(crate) fn compare_key(
    compare: &Compare,
    current: Option<KeyAt>,
    value: impl FnOnce(Rev) -> Result<Vec<u8>, StateError>,
) -> Result<bool, StateError> {
    let order = match (&compare.target, current) {
        (CompareTarget::Value(_), None) => return Ok(false),
        (CompareTarget::Value(want), Some(at)) => value(at.rev)?.as_slice().cmp(want.as_slice()),
        (CompareTarget::Version(want), _) => current.map_or(0, |c| c.version).cmp(want),
        (CompareTarget::CreateRevision(want), _) => {
            current.map_or(0, |c| c.create_revision).cmp(want)
        }
        (CompareTarget::ModRevision(want), _) => current.map_or(0, |c| c.rev.main).cmp(want),
    };
    Ok(match compare.op {
        CompareOp::Equal => order == Ordering::Equal,
        CompareOp::NotEqual => order != Ordering::Equal,
        CompareOp::Greater => order == Ordering::Greater,
        CompareOp::Less => order == Ordering::Less,
    })
}

impl<E: Engine> Mvcc<E> {
    /// `txn` at the published revision; [`StateError::NotReadOnly`] if a
    /// branch holds anything but ranges, [`StateError::ResultTooLarge`]
    /// once its ranges have returned more than `max_bytes` of keys and
    /// values (128 ranges of the whole store in one request otherwise).
    pub fn txn_read(&self, txn: &Txn, max_bytes: usize) -> Result<Read<TxnRead>, StateError> {
        if !txn.is_read_only() {
            return Err(StateError::NotReadOnly);
        }
        self.txn_read_at(txn, self.revision(), max_bytes)
    }

    fn txn_read_at(
        &self,
        txn: &Txn,
        revision: i64,
        max_bytes: usize,
    ) -> Result<Read<TxnRead>, StateError> {
        // Whole, then checked: a compaction past `revision` that began
        // meanwhile may have swept a record it read (a missing record is
        // then its doing, told as a compaction, not damage).
        let data = self.txn_at(txn, revision, max_bytes);
        let data = self.checked(revision, data)?;
        Ok(Read { revision, data })
    }

    fn txn_at(&self, txn: &Txn, revision: i64, max_bytes: usize) -> Result<TxnRead, StateError> {
        let fetch = |rev| self.engine.get(&rev_key(rev));
        let mut succeeded = true;
        for compare in &txn.compares {
            let current = read_lock(&self.index).get(&compare.key, revision);
            let value = |rev| read::value_of(&compare.key, rev, fetch);
            succeeded &= compare_key(compare, current, value)?;
        }
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(branch.len());
        let mut bytes = 0usize;
        for op in branch {
            let range = match op {
                TxnOp::Get(req) => self.range_unchecked(req, &RangeOptions::default(), revision),
                TxnOp::GetWith(req, opts) => self.range_unchecked(req, opts, revision),
                _ => return Err(StateError::NotReadOnly),
            }?;
            let kv_bytes = |kv: &nines_types::KeyValue| kv.key.len() + kv.value.len();
            bytes = bytes.saturating_add(range.kvs.iter().map(kv_bytes).sum());
            if bytes > max_bytes {
                return Err(StateError::ResultTooLarge { max: max_bytes });
            }
            responses.push(TxnOpResponse::Get(range));
        }
        Ok((succeeded, responses))
    }
}

#[cfg(test)]
mod tests {
    use nines_types::{Txn, TxnOp};

    use super::super::tests::{put, Store};
    use super::*;

    /// A read that found a key's old version in the index, then lost its
    /// record to a compaction and sweep that ran meanwhile, is told so as
    /// a compaction (the reader then reads again at the new revision), not
    /// as a missing record, which the client would see as INTERNAL.
    #[test]
    fn a_record_swept_under_a_read_is_a_compaction_not_damage() {
        let mut s = Store::new();
        s.apply(put("k", "a"));
        s.apply(put("k", "b"));
        let txn = Txn {
            compares: vec![],
            success: vec![TxnOp::Get(nines_types::RangeRequest::key("k"))],
            failure: vec![],
        };
        // As the race leaves it: the index still names the version of
        // revision 1, its record is swept, and the compaction is visible.
        let first = Rev { main: 1, sub: 0 };
        s.mvcc
            .engine
            .remove_each(&[rev_key(first).to_vec()])
            .unwrap();
        s.mvcc
            .compacted
            .fetch_max(2, std::sync::atomic::Ordering::AcqRel);
        let read = s.mvcc.txn_read_at(&txn, 1, usize::MAX);
        assert!(
            matches!(
                read,
                Err(StateError::Compacted {
                    requested: 1,
                    compacted: 2
                })
            ),
            "{read:?}"
        );
        // At the current revision it reads what is there.
        let read = s.mvcc.txn_read(&txn, usize::MAX).expect("current");
        assert_eq!(read.revision, 2);
    }
}
