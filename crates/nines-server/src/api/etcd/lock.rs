//! etcd's `Lock` service (`v3lockpb`): thin handlers over `coord::Lock`.
//! Also the coordinator's store (`CoreKv`), which the election service
//! shares: each write takes the KV handlers' write-or-forward path, so a
//! lock wait on a follower never holds a call open at the leader.

use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use nines_proto::etcd::mvccpb;
use nines_proto::etcd::v3lockpb as lpb;
use nines_types::{
    Command, CompareOp, CompareTarget, KeyRange, KeyValue, RangeResponse, Request, Txn, TxnOp,
    TxnOpResponse,
};
use tonic::{Response, Status};

use epb::kv_client::KvClient;

use super::convert;
use crate::api::forward;
use crate::coord::{self, Applied, Kv, Local};
use crate::core::{NodeCore, Routed};
use crate::error::ApiError;

/// The store as the coordinator uses it, through this member.
#[derive(Clone)]
pub struct CoreKv {
    pub core: Arc<NodeCore>,
}

impl CoreKv {
    pub fn local(&self) -> Local {
        Local {
            reader: self.core.reader.clone(),
            hub: self.core.watch.clone(),
            timeout: self.core.timeout(),
            counters: self.core.counters.clone(),
        }
    }
}

fn kv_client(channel: tonic::transport::Channel) -> KvClient<tonic::transport::Channel> {
    KvClient::new(channel).max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES)
}

impl Kv for CoreKv {
    async fn txn(&self, txn: Txn) -> Result<Applied, ApiError> {
        let message = txn_message(&txn);
        match self
            .core
            .write(Request::new(Command::Txn(txn)), false)
            .await?
        {
            Routed::Local(resp) => Applied::of(resp),
            Routed::Forward(leader) => {
                let call = |ch, r| async move { kv_client(ch).txn(r).await };
                let answer = forward::to_leader(&self.core, &leader, message, None, call).await;
                // A lock's wait then reads this member's store at the
                // revision the leader answered with.
                let answer = forward::caught_up(&self.core, answer)
                    .await
                    .map_err(ApiError::Forward)?;
                applied_of(answer.into_inner())
            }
        }
    }

    async fn read_barrier(&self) -> Result<i64, ApiError> {
        match self.core.linearize(false).await? {
            Routed::Local(()) => Ok(self.core.reader.revision()),
            Routed::Forward(leader) => {
                // The leader's revision after its own barrier: a
                // linearizable count of one key costs it nothing.
                let message = epb::RangeRequest {
                    key: vec![0],
                    count_only: true,
                    ..Default::default()
                };
                let call = |ch, r| async move { kv_client(ch).range(r).await };
                let answer = forward::to_leader(&self.core, &leader, message, None, call)
                    .await
                    .map_err(ApiError::Forward)?;
                Ok(answer.into_inner().header.map_or(0, |h| h.revision))
            }
        }
    }
}

/// `txn` as etcd's TxnRequest, to send to the leader.
fn txn_message(txn: &Txn) -> epb::TxnRequest {
    let ops = |ops: &[TxnOp]| ops.iter().map(op_message).collect();
    epb::TxnRequest {
        compare: txn.compares.iter().map(compare_message).collect(),
        success: ops(&txn.success),
        failure: ops(&txn.failure),
    }
}

fn compare_message(c: &nines_types::Compare) -> epb::Compare {
    use epb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match c.op {
        CompareOp::Equal => R::Equal,
        CompareOp::NotEqual => R::NotEqual,
        CompareOp::Greater => R::Greater,
        CompareOp::Less => R::Less,
    };
    let (target, union) = match &c.target {
        CompareTarget::Value(v) => (T::Value, U::Value(v.clone())),
        CompareTarget::Version(v) => (T::Version, U::Version(*v)),
        CompareTarget::CreateRevision(v) => (T::Create, U::CreateRevision(*v)),
        CompareTarget::ModRevision(v) => (T::Mod, U::ModRevision(*v)),
    };
    epb::Compare {
        result: result.into(),
        target: target.into(),
        key: c.key.clone(),
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

/// A key range as etcd's (key, range_end).
fn range_message(range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    match range {
        KeyRange::Single(key) => (key.clone(), Vec::new()),
        KeyRange::Between { start, end } => (start.clone(), end.clone()),
        KeyRange::From(start) => (start.clone(), vec![0]),
    }
}

fn op_message(op: &TxnOp) -> epb::RequestOp {
    use epb::request_op::Request as R;
    let put = |key: &[u8], value: &[u8], lease, prev_kv| epb::PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        prev_kv,
        ..Default::default()
    };
    let request = match op {
        TxnOp::Put {
            key,
            value,
            prev_kv,
        } => R::RequestPut(put(key, value, 0, *prev_kv)),
        TxnOp::PutLeased {
            key,
            value,
            lease,
            prev_kv,
        } => R::RequestPut(put(key, value, *lease, *prev_kv)),
        TxnOp::PutKeeping {
            key,
            value,
            lease,
            prev_kv,
            keep,
        } => R::RequestPut(epb::PutRequest {
            ignore_value: keep.value,
            ignore_lease: keep.lease,
            ..put(key, value, *lease, *prev_kv)
        }),
        TxnOp::Delete { range, prev_kv } => {
            let (key, range_end) = range_message(range);
            R::RequestDeleteRange(epb::DeleteRangeRequest {
                key,
                range_end,
                prev_kv: *prev_kv,
            })
        }
        TxnOp::GetWith(read, options) => {
            use nines_types::{SortOrder, SortTarget};
            let (key, range_end) = range_message(&read.range);
            R::RequestRange(epb::RangeRequest {
                key,
                range_end,
                limit: i64::try_from(read.limit).unwrap_or(i64::MAX),
                keys_only: read.keys_only,
                count_only: read.count_only,
                sort_order: match options.sort_order {
                    SortOrder::None => 0,
                    SortOrder::Ascend => 1,
                    SortOrder::Descend => 2,
                },
                sort_target: match options.sort_target {
                    SortTarget::Key => 0,
                    SortTarget::Version => 1,
                    SortTarget::Create => 2,
                    SortTarget::Mod => 3,
                    SortTarget::Value => 4,
                },
                min_mod_revision: options.min_mod_revision,
                max_mod_revision: options.max_mod_revision,
                min_create_revision: options.min_create_revision,
                max_create_revision: options.max_create_revision,
                ..Default::default()
            })
        }
        TxnOp::Get(read) => {
            let (key, range_end) = range_message(&read.range);
            R::RequestRange(epb::RangeRequest {
                key,
                range_end,
                // Limits fit: the store caps them far below i64::MAX.
                limit: i64::try_from(read.limit).unwrap_or(i64::MAX),
                keys_only: read.keys_only,
                count_only: read.count_only,
                ..Default::default()
            })
        }
    };
    epb::RequestOp {
        request: Some(request),
    }
}

/// The leader's TxnResponse as the state machine's answer.
fn applied_of(resp: epb::TxnResponse) -> Result<Applied, ApiError> {
    use epb::response_op::Response as R;
    let kvs = |kvs: Vec<mvccpb::KeyValue>| kvs.into_iter().map(kv_of).collect();
    let mut responses = Vec::with_capacity(resp.responses.len());
    for op in resp.responses {
        responses.push(match op.response {
            Some(R::ResponseRange(r)) => TxnOpResponse::Get(RangeResponse {
                kvs: kvs(r.kvs),
                count: u64::try_from(r.count).unwrap_or(0),
                more: r.more,
            }),
            Some(R::ResponsePut(p)) => TxnOpResponse::Put {
                prev_kv: p.prev_kv.map(kv_of),
            },
            Some(R::ResponseDeleteRange(d)) => TxnOpResponse::Delete {
                deleted: u64::try_from(d.deleted).unwrap_or(0),
                prev_kvs: kvs(d.prev_kvs),
            },
            Some(R::ResponseTxn(_)) | None => {
                return Err(ApiError::Internal(
                    "the leader answered a txn with an op it was not sent".into(),
                ))
            }
        });
    }
    Ok(Applied {
        revision: resp.header.map_or(0, |h| h.revision),
        succeeded: resp.succeeded,
        responses,
    })
}

fn kv_of(kv: mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

pub struct EtcdLock {
    pub core: Arc<NodeCore>,
    pub lock: coord::Lock<CoreKv>,
}

impl EtcdLock {
    pub fn new(core: &Arc<NodeCore>) -> Self {
        let kv = CoreKv { core: core.clone() };
        let local = kv.local();
        EtcdLock {
            core: core.clone(),
            lock: coord::Lock { kv, local },
        }
    }

    fn header(&self, revision: i64) -> Option<epb::ResponseHeader> {
        Some(convert::header(self.core.header(revision)))
    }
}

/// With auth on, a lock or election named `name` needs what etcd's
/// client-side recipes need through KV: reading (and, to queue, writing)
/// every key under `name/`.
pub(super) fn guard_prefix(
    core: &NodeCore,
    metadata: &tonic::metadata::MetadataMap,
    name: &[u8],
    write: bool,
) -> Result<(), ApiError> {
    let caller = core.caller(metadata)?;
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let end = nines_types::prefix_end(&prefix).unwrap_or_else(|| vec![0]);
    core.check_keys(&caller, false, &prefix, &end)?;
    if write {
        core.check_keys(&caller, true, &prefix, &end)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl lpb::lock_server::Lock for EtcdLock {
    async fn lock(
        &self,
        request: tonic::Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        guard_prefix(
            &self.core,
            request.metadata(),
            &request.get_ref().name,
            true,
        )?;
        let message = request.into_inner();
        let locked = self.lock.lock(&message.name, message.lease).await?;
        Ok(Response::new(lpb::LockResponse {
            header: self.header(locked.revision),
            key: locked.key,
        }))
    }

    async fn unlock(
        &self,
        request: tonic::Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let caller = self.core.caller(request.metadata())?;
        self.core
            .check_keys(&caller, true, &request.get_ref().key, &[])?;
        let revision = self.lock.unlock(&request.get_ref().key).await?;
        Ok(Response::new(lpb::UnlockResponse {
            header: self.header(revision),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_types::{Compare, Keep, RangeRequest};

    /// What is sent to the leader is what the leader reads back.
    #[test]
    fn a_txn_survives_the_trip_to_the_leader() {
        let txn = Txn {
            compares: vec![Compare {
                key: b"k".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![
                TxnOp::PutLeased {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    lease: 7,
                    prev_kv: false,
                },
                TxnOp::Delete {
                    range: KeyRange::From(b"a".to_vec()),
                    prev_kv: true,
                },
            ],
            failure: vec![
                TxnOp::Get(RangeRequest::key(b"k".to_vec())),
                TxnOp::PutKeeping {
                    key: b"k".to_vec(),
                    value: Vec::new(),
                    lease: 0,
                    prev_kv: false,
                    keep: Keep {
                        value: true,
                        lease: false,
                    },
                },
            ],
        };
        let back = convert::txn_request(&txn_message(&txn), None).unwrap();
        assert_eq!(back.command, Command::Txn(txn));
    }

    #[test]
    fn a_leader_answer_maps_back() {
        use epb::response_op::Response as R;
        let kv = mvccpb::KeyValue {
            key: b"k".to_vec(),
            create_revision: 4,
            mod_revision: 5,
            version: 2,
            value: b"v".to_vec(),
            lease: 9,
        };
        let resp = epb::TxnResponse {
            header: Some(epb::ResponseHeader {
                revision: 6,
                ..Default::default()
            }),
            succeeded: false,
            responses: vec![epb::ResponseOp {
                response: Some(R::ResponseRange(epb::RangeResponse {
                    kvs: vec![kv],
                    count: 1,
                    ..Default::default()
                })),
            }],
        };
        let applied = applied_of(resp).unwrap();
        assert_eq!((applied.revision, applied.succeeded), (6, false));
        let TxnOpResponse::Get(read) = &applied.responses[0] else {
            panic!("a read");
        };
        assert_eq!((read.kvs[0].create_revision, read.kvs[0].lease), (4, 9));
        let nested = epb::TxnResponse {
            responses: vec![epb::ResponseOp { response: None }],
            ..Default::default()
        };
        assert!(applied_of(nested).is_err());
    }
}
