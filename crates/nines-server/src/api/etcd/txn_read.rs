//! etcd's read-only txn (`isTxnReadonly`): a txn whose branches hold only
//! ranges is served like a range, after a read barrier, from this member's
//! published state, not proposed. Through the log, each such txn cost an
//! fsync and a replication round, and its ranges ran inside the apply on
//! every member (and again at every restart): 128 full-store ranges in one
//! small request were 128 copies of the store in one apply.

use nines_proto::etcd::etcdserverpb as epb;
use nines_state::{Read, TxnRead};
use nines_types::{Command, CommandResult, TxnOpResponse};
use tonic::{Response, Status};

use super::convert;
use super::kv::{kv, kv_bytes, EtcdKv};
use super::permits::Guarded;
use crate::api::forward::{self, is_forwarded};
use crate::core::Routed;
use crate::error::ApiError;
use crate::network::MAX_MESSAGE_BYTES;
use crate::read_limit;

fn result_bytes(read: &Read<TxnRead>) -> u64 {
    let op_bytes = |op: &TxnOpResponse| match op {
        TxnOpResponse::Get(range) => range.kvs.iter().map(kv_bytes).sum(),
        _ => 0,
    };
    read.data.1.iter().map(op_bytes).sum()
}

impl EtcdKv {
    pub(super) async fn txn_read(
        &self,
        request: tonic::Request<epb::TxnRequest>,
    ) -> Result<Response<epb::TxnResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = self.core.caller(request.metadata())?;
        request.get_ref().check(&self.core, &caller)?;
        let message = request.into_inner();
        let request = convert::txn_request(&message, None)?;
        // The limits a write of it would meet: a read is no way around them.
        self.core.check_limits(&request)?;
        let Command::Txn(txn) = request.command else {
            return Err(ApiError::Internal("a txn converted to another command".into()).into());
        };
        if !message.is_serializable() {
            if let Routed::Forward(leader) = self.core.linearize(forwarded).await? {
                let call = |ch, r| async move { kv(ch).txn(r).await };
                return forward::to_leader(&self.core, &leader, message, None, call).await;
            }
            // Again, on the state the barrier waited for: a revoke
            // acknowledged before this read may have reached this member
            // only now (etcd checks after its read barrier).
            message.check(&self.core, &caller)?;
        }
        let reader = self.core.reader.clone();
        let serve = move || {
            reader
                .txn_read(&txn, MAX_MESSAGE_BYTES)
                .map_err(ApiError::from)
        };
        let (served, held) = self.reads.run(serve, result_bytes).await?;
        let header = convert::header(self.core.header(served.revision));
        let (succeeded, responses) = served.data;
        let result = CommandResult::Txn {
            succeeded,
            responses,
        };
        let mut response = Response::new(convert::txn_response(header, result)?);
        read_limit::attach(&mut response, held);
        Ok(response)
    }
}
