//! What the server, nines' client and the chaos harness each need to know
//! of an etcd txn before sending or serving it: one definition for all.

use crate::etcd::etcdserverpb::{request_op::Request as Op, RequestOp, TxnRequest};

impl TxnRequest {
    fn ops(&self) -> impl Iterator<Item = &RequestOp> {
        self.success.iter().chain(&self.failure)
    }

    /// etcd's `isTxnReadonly`: no branch holds anything but ranges (a txn
    /// of compares alone is one). Served as a read, without the log.
    pub fn is_read_only(&self) -> bool {
        self.ops()
            .all(|op| matches!(op.request, Some(Op::RequestRange(_))))
    }

    /// Served without a read barrier, by any member: every op a range that
    /// asked to be serializable. Stricter than etcd, which also serves a
    /// txn of compares alone that way: a compare is a check, and a check
    /// that can be stale is no check.
    pub fn is_serializable(&self) -> bool {
        let mut ops = self.ops().peekable();
        ops.peek().is_some()
            && ops.all(|op| matches!(&op.request, Some(Op::RequestRange(r)) if r.serializable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::etcdserverpb::{PutRequest, RangeRequest};

    fn range(serializable: bool) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key: b"k".to_vec(),
                serializable,
                ..Default::default()
            })),
        }
    }

    fn put() -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            success,
            failure,
            ..Default::default()
        }
    }

    #[test]
    fn only_txns_of_ranges_are_reads() {
        assert!(txn(vec![range(false)], vec![range(true)]).is_read_only());
        assert!(txn(vec![], vec![]).is_read_only());
        assert!(!txn(vec![range(false)], vec![put()]).is_read_only());
        assert!(!txn(vec![put()], vec![]).is_read_only());
        let empty_op = RequestOp { request: None };
        assert!(!txn(vec![empty_op], vec![]).is_read_only());
    }

    #[test]
    fn a_txn_skips_the_barrier_only_if_every_op_asked_to() {
        assert!(txn(vec![range(true)], vec![range(true)]).is_serializable());
        assert!(!txn(vec![range(true)], vec![range(false)]).is_serializable());
        // Compares alone are a check: linearizable.
        assert!(!txn(vec![], vec![]).is_serializable());
    }
}
