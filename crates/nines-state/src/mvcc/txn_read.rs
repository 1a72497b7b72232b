//! A txn of reads only, served from the published state without the log,
//! as etcd serves one (its `isTxnReadonly` path): one revision for the
//! compares and every range, so the answer is what applying it there
//! would have given. Through the log, a txn of 128 full-store ranges was
//! 128 copies of the store inside one apply, on every member and again at
//! every restart.

use std::cmp::Ordering;

use nines_types::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnOpResponse};

use super::index::{KeyAt, Rev};
use super::{read, rev_key, sorted, Mvcc, Read};
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
    /// branch holds anything but ranges.
    pub fn txn_read(&self, txn: &Txn) -> Result<Read<TxnRead>, StateError> {
        let ops = txn.success.iter().chain(&txn.failure);
        if !ops
            .clone()
            .all(|op| matches!(op, TxnOp::Get(_) | TxnOp::GetWith(..)))
        {
            return Err(StateError::NotReadOnly);
        }
        let revision = self.revision();
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
        let leased = self.any_leased();
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let range = match op {
                TxnOp::Get(req) => read::range(&self.index, req, revision, leased, fetch),
                TxnOp::GetWith(req, opts) if opts.is_plain() => {
                    read::range(&self.index, req, revision, leased, fetch)
                }
                TxnOp::GetWith(req, opts) => {
                    sorted::range(&self.index, req, opts, revision, leased, fetch)
                }
                _ => return Err(StateError::NotReadOnly),
            };
            responses.push(TxnOpResponse::Get(range?));
        }
        // A compaction past `revision` that began meanwhile may have
        // dropped records it read: refused, not answered half.
        let data = self.checked(revision, Ok((succeeded, responses)))?;
        Ok(Read { revision, data })
    }
}
