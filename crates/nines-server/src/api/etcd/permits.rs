//! What each KV request needs once auth is on, as etcd checks it: a range
//! reads its keys, a put or delete writes them (and reads them with
//! `prev_kv`), a txn reads its compares'
//! keys and both branches' reads and writes (either may run), and a
//! compaction needs root.

use nines_proto::etcd::etcdserverpb as epb;

use crate::auth::Caller;
use crate::core::NodeCore;
use crate::error::ApiError;

pub trait Guarded {
    fn check(&self, core: &NodeCore, caller: &Caller) -> Result<(), ApiError>;
}

impl Guarded for epb::RangeRequest {
    fn check(&self, core: &NodeCore, caller: &Caller) -> Result<(), ApiError> {
        core.check_keys(caller, false, &self.key, &self.range_end)
    }
}

/// A put or delete with `prev_kv` also reads what it replaces: etcd
/// checks read permission on the same keys then, so a write-only user
/// cannot read values back through it.
impl Guarded for epb::PutRequest {
    fn check(&self, core: &NodeCore, caller: &Caller) -> Result<(), ApiError> {
        core.check_keys(caller, true, &self.key, &[])?;
        if self.prev_kv {
            core.check_keys(caller, false, &self.key, &[])?;
        }
        Ok(())
    }
}

impl Guarded for epb::DeleteRangeRequest {
    fn check(&self, core: &NodeCore, caller: &Caller) -> Result<(), ApiError> {
        core.check_keys(caller, true, &self.key, &self.range_end)?;
        if self.prev_kv {
            core.check_keys(caller, false, &self.key, &self.range_end)?;
        }
        Ok(())
    }
}

impl Guarded for epb::CompactionRequest {
    fn check(&self, core: &NodeCore, caller: &Caller) -> Result<(), ApiError> {
        core.check_admin(caller)
    }
}

impl Guarded for epb::TxnRequest {
    fn check(&self, core: &NodeCore, caller: &Caller) -> Result<(), ApiError> {
        if *caller == Caller::AuthOff {
            return Ok(());
        }
        for c in &self.compare {
            core.check_keys(caller, false, &c.key, &c.range_end)?;
        }
        for op in self.success.iter().chain(&self.failure) {
            use epb::request_op::Request as R;
            match &op.request {
                Some(R::RequestRange(r)) => r.check(core, caller)?,
                Some(R::RequestPut(p)) => p.check(core, caller)?,
                Some(R::RequestDeleteRange(d)) => d.check(core, caller)?,
                Some(R::RequestTxn(t)) => t.check(core, caller)?,
                None => {}
            }
        }
        Ok(())
    }
}
