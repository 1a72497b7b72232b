//! etcd proto <-> domain conversions. What the domain cannot express yet
//! (nested txns, lease compares, range compares) is refused
//! with INVALID_ARGUMENT and a message naming it, never silently dropped.

use nines_proto::etcd::etcdserverpb as epb;
use nines_proto::etcd::mvccpb;
use nines_types::{
    Command, CommandResult, Compare, CompareOp, CompareTarget, Keep, KeyValue, RangeOptions,
    RangeRequest, RangeResponse, Request, Session, Txn, TxnOp, TxnOpResponse,
};

use crate::api::convert::key_range;
use crate::error::ApiError;

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(msg.into())
}

pub fn header(h: nines_types::Header) -> epb::ResponseHeader {
    epb::ResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    }
}

pub fn kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// The domain read for `req` and its sort and filter options.
pub fn range_request(req: &epb::RangeRequest) -> Result<(RangeRequest, RangeOptions), ApiError> {
    let read = RangeRequest {
        range: key_range(&req.key, &req.range_end),
        // etcd: a limit at or below 0 is no limit.
        limit: req.limit.max(0) as u64,
        keys_only: req.keys_only,
        count_only: req.count_only,
    };
    Ok((read, super::range::options(req)?))
}

pub fn range_response(header: epb::ResponseHeader, r: RangeResponse) -> epb::RangeResponse {
    epb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count as i64,
    }
}

pub fn put_request(req: &epb::PutRequest, session: Option<Session>) -> Result<Request, ApiError> {
    let command = match keep(req) {
        // The plain variant keeps the common entry as small as before.
        None => Command::Put {
            key: req.key.clone(),
            value: req.value.clone(),
            lease: req.lease,
            prev_kv: req.prev_kv,
        },
        Some(keep) => Command::PutKeeping {
            key: req.key.clone(),
            value: req.value.clone(),
            lease: req.lease,
            prev_kv: req.prev_kv,
            keep,
        },
    };
    Ok(Request { session, command })
}

fn keep(req: &epb::PutRequest) -> Option<Keep> {
    (req.ignore_value || req.ignore_lease).then_some(Keep {
        value: req.ignore_value,
        lease: req.ignore_lease,
    })
}

pub fn delete_request(req: &epb::DeleteRangeRequest, session: Option<Session>) -> Request {
    Request {
        session,
        command: Command::DeleteRange {
            range: key_range(&req.key, &req.range_end),
            prev_kv: req.prev_kv,
        },
    }
}

pub fn txn_request(req: &epb::TxnRequest, session: Option<Session>) -> Result<Request, ApiError> {
    let compares = req.compare.iter().map(compare).collect::<Result<_, _>>()?;
    let success = req.success.iter().map(txn_op).collect::<Result<_, _>>()?;
    let failure = req.failure.iter().map(txn_op).collect::<Result<_, _>>()?;
    Ok(Request {
        session,
        command: Command::Txn(Txn {
            compares,
            success,
            failure,
        }),
    })
}

fn compare(c: &epb::Compare) -> Result<Compare, ApiError> {
    use epb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let bad = |why: &str| {
        invalid(format!(
            "compare on {:?}: {why}",
            String::from_utf8_lossy(&c.key)
        ))
    };
    if !c.range_end.is_empty() {
        return Err(bad("compares over a key range are not supported yet"));
    }
    let op = match R::try_from(c.result).map_err(|_| bad("unknown result operator"))? {
        R::Equal => CompareOp::Equal,
        R::Greater => CompareOp::Greater,
        R::Less => CompareOp::Less,
        R::NotEqual => CompareOp::NotEqual,
    };
    let target = T::try_from(c.target).map_err(|_| bad("unknown target"))?;
    let target = match (target, &c.target_union) {
        (T::Lease, _) => return Err(bad("lease compares are not supported yet")),
        (T::Version, Some(U::Version(v))) => CompareTarget::Version(*v),
        (T::Create, Some(U::CreateRevision(v))) => CompareTarget::CreateRevision(*v),
        (T::Mod, Some(U::ModRevision(v))) => CompareTarget::ModRevision(*v),
        (T::Value, Some(U::Value(v))) => CompareTarget::Value(v.clone()),
        // proto3 drops a zero operand on the wire: etcd reads it as 0.
        (T::Version, None) => CompareTarget::Version(0),
        (T::Create, None) => CompareTarget::CreateRevision(0),
        (T::Mod, None) => CompareTarget::ModRevision(0),
        (T::Value, None) => CompareTarget::Value(Vec::new()),
        _ => return Err(bad("operand does not match target")),
    };
    Ok(Compare {
        key: c.key.clone(),
        op,
        target,
    })
}

fn txn_op(op: &epb::RequestOp) -> Result<TxnOp, ApiError> {
    use epb::request_op::Request as R;
    match &op.request {
        Some(R::RequestRange(r)) => {
            // Silently reading the current state instead would lie.
            if r.revision > 0 {
                return Err(invalid(
                    "a range inside a txn cannot ask for a past revision",
                ));
            }
            let (read, options) = range_request(r)?;
            if options.is_plain() {
                Ok(TxnOp::Get(read))
            } else {
                Ok(TxnOp::GetWith(read, options))
            }
        }
        Some(R::RequestPut(p)) => match keep(p) {
            Some(keep) => Ok(TxnOp::PutKeeping {
                key: p.key.clone(),
                value: p.value.clone(),
                lease: p.lease,
                prev_kv: p.prev_kv,
                keep,
            }),
            None if p.lease != 0 => Ok(TxnOp::PutLeased {
                key: p.key.clone(),
                value: p.value.clone(),
                lease: p.lease,
                prev_kv: p.prev_kv,
            }),
            None => Ok(TxnOp::Put {
                key: p.key.clone(),
                value: p.value.clone(),
                prev_kv: p.prev_kv,
            }),
        },
        Some(R::RequestDeleteRange(d)) => Ok(TxnOp::Delete {
            range: key_range(&d.key, &d.range_end),
            prev_kv: d.prev_kv,
        }),
        // etcd 3.5's nested txns; 3.4 clients cannot send them.
        Some(R::RequestTxn(_)) => Err(invalid(
            "nested txns (etcd 3.5) are not supported: flatten the txn into one level",
        )),
        None => Err(invalid("txn op has no request")),
    }
}

pub fn compact_request(req: &epb::CompactionRequest, session: Option<Session>) -> Request {
    Request {
        session,
        command: Command::Compact {
            revision: req.revision,
            physical: req.physical,
        },
    }
}

/// The response and the compacted revision, for a `physical` wait.
pub fn compact_response(
    header: epb::ResponseHeader,
    result: CommandResult,
) -> Result<(epb::CompactionResponse, i64), ApiError> {
    match result {
        CommandResult::Compacted { revision } => Ok((
            epb::CompactionResponse {
                header: Some(header),
            },
            revision,
        )),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(result: &CommandResult) -> ApiError {
    ApiError::Internal(format!("unexpected state machine result {result:?}"))
}

pub fn put_response(
    header: epb::ResponseHeader,
    result: CommandResult,
) -> Result<epb::PutResponse, ApiError> {
    match result {
        CommandResult::Put { prev_kv } => Ok(epb::PutResponse {
            header: Some(header),
            prev_kv: prev_kv.map(kv),
        }),
        other => Err(unexpected(&other)),
    }
}

pub fn delete_response(
    header: epb::ResponseHeader,
    result: CommandResult,
) -> Result<epb::DeleteRangeResponse, ApiError> {
    match result {
        CommandResult::Delete { deleted, prev_kvs } => Ok(epb::DeleteRangeResponse {
            header: Some(header),
            deleted: deleted as i64,
            prev_kvs: prev_kvs.into_iter().map(kv).collect(),
        }),
        other => Err(unexpected(&other)),
    }
}

/// A txn's response. Each op's own header carries only a revision, as
/// etcd's: a read sees the revision the txn began at, or the txn's new one
/// once an earlier op of it changed something; a put is at the new one; a
/// delete too, unless it and every op before it changed nothing.
pub fn txn_response(
    header: epb::ResponseHeader,
    result: CommandResult,
) -> Result<epb::TxnResponse, ApiError> {
    use epb::response_op::Response as R;
    let CommandResult::Txn {
        succeeded,
        responses,
    } = result
    else {
        return Err(unexpected(&result));
    };
    let changes = |r: &TxnOpResponse| match r {
        TxnOpResponse::Put { .. } => true,
        TxnOpResponse::Delete { deleted, .. } => *deleted > 0,
        TxnOpResponse::Get(_) => false,
    };
    // The header has the revision after the txn: one above where it
    // began if it changed anything.
    let changed = responses.iter().any(changes);
    let begin = header.revision - i64::from(changed);
    let mut changed_yet = false;
    let op_header = |changed_yet: bool| epb::ResponseHeader {
        revision: begin + i64::from(changed_yet),
        ..Default::default()
    };
    let responses = responses
        .into_iter()
        .map(|r| {
            changed_yet |= changes(&r);
            let at = op_header(changed_yet);
            epb::ResponseOp {
                response: Some(match r {
                    TxnOpResponse::Put { prev_kv } => R::ResponsePut(epb::PutResponse {
                        header: Some(at),
                        prev_kv: prev_kv.map(kv),
                    }),
                    TxnOpResponse::Delete { deleted, prev_kvs } => {
                        R::ResponseDeleteRange(epb::DeleteRangeResponse {
                            header: Some(at),
                            deleted: deleted as i64,
                            prev_kvs: prev_kvs.into_iter().map(kv).collect(),
                        })
                    }
                    TxnOpResponse::Get(range) => R::ResponseRange(range_response(at, range)),
                }),
            }
        })
        .collect();
    Ok(epb::TxnResponse {
        header: Some(header),
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use epb::compare::{CompareResult, CompareTarget as T, TargetUnion};
    use epb::request_op::Request as R;

    fn txn(compare: Vec<epb::Compare>, success: Vec<epb::RequestOp>) -> epb::TxnRequest {
        epb::TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        }
    }

    #[test]
    fn txn_op_headers_carry_the_revision_each_op_saw() {
        use epb::response_op::Response as R;
        let header = epb::ResponseHeader {
            cluster_id: 7,
            member_id: 3,
            revision: 11,
            raft_term: 2,
        };
        let get = || TxnOpResponse::Get(RangeResponse::default());
        let result = CommandResult::Txn {
            succeeded: true,
            responses: vec![
                get(),
                TxnOpResponse::Delete {
                    deleted: 0,
                    prev_kvs: Vec::new(),
                },
                TxnOpResponse::Put { prev_kv: None },
                get(),
            ],
        };
        let resp = txn_response(header, result).unwrap();
        let revisions: Vec<epb::ResponseHeader> = resp
            .responses
            .iter()
            .map(|r| match r.response.as_ref().unwrap() {
                R::ResponseRange(r) => r.header.unwrap(),
                R::ResponsePut(r) => r.header.unwrap(),
                R::ResponseDeleteRange(r) => r.header.unwrap(),
                R::ResponseTxn(r) => r.header.unwrap(),
            })
            .collect();
        let only = |revision| epb::ResponseHeader {
            revision,
            ..Default::default()
        };
        assert_eq!(revisions, vec![only(10), only(10), only(11), only(11)]);
        assert_eq!(resp.header, Some(header));
        // A txn that changed nothing: every op at the current revision.
        let result = CommandResult::Txn {
            succeeded: false,
            responses: vec![get()],
        };
        let resp = txn_response(header, result).unwrap();
        let Some(R::ResponseRange(r)) = &resp.responses[0].response else {
            panic!("a range");
        };
        assert_eq!(r.header, Some(only(11)));
    }

    #[test]
    fn an_absent_operand_compares_with_zero_as_in_etcd() {
        // proto3 sends no field for a oneof left unset; etcd reads it as 0.
        let c = epb::Compare {
            result: CompareResult::Equal as i32,
            target: T::Version as i32,
            key: b"k".to_vec(),
            ..Default::default()
        };
        let Command::Txn(t) = txn_request(&txn(vec![c], vec![]), None).unwrap().command else {
            panic!("not a txn");
        };
        assert_eq!(t.compares[0].target, CompareTarget::Version(0));
    }

    #[test]
    fn what_the_domain_cannot_do_is_refused_by_name() {
        let lease = epb::Compare {
            target: T::Lease as i32,
            key: b"k".to_vec(),
            target_union: Some(TargetUnion::Lease(1)),
            ..Default::default()
        };
        let over_range = epb::Compare {
            target: T::Value as i32,
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            ..Default::default()
        };
        let nested = epb::RequestOp {
            request: Some(R::RequestTxn(Default::default())),
        };
        let sorted = epb::RequestOp {
            request: Some(R::RequestRange(epb::RangeRequest {
                key: b"a".to_vec(),
                sort_order: 2,
                ..Default::default()
            })),
        };
        // A sorted range inside a txn is served (etcd's Mutex needs it).
        let served = txn_request(&txn(vec![], vec![sorted]), None).unwrap();
        let Command::Txn(t) = served.command else {
            panic!("{served:?}")
        };
        assert!(
            matches!(t.success[0], TxnOp::GetWith(_, o) if o.sort_order == nines_types::SortOrder::Descend)
        );
        let cases = [
            (txn(vec![lease], vec![]), "lease"),
            (txn(vec![over_range], vec![]), "range"),
            (txn(vec![], vec![nested]), "nested"),
        ];
        for (req, word) in cases {
            match txn_request(&req, None) {
                Err(ApiError::InvalidRequest(msg)) => assert!(msg.contains(word), "{msg}"),
                other => panic!("{word}: {other:?}"),
            }
        }
        let put = epb::PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert!(matches!(
            put_request(&put, None),
            Ok(Request {
                command: Command::PutKeeping {
                    keep: Keep {
                        value: true,
                        lease: false
                    },
                    ..
                },
                ..
            })
        ));
    }
}
