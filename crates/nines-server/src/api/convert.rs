//! proto <-> domain conversions. Structural problems (a compare without an
//! operand, an empty txn op) are INVALID_ARGUMENT here; size limits are
//! checked by `Limits` in one place.

use nines_proto as pb;
use nines_types::{
    Command, CommandResult, Compare, CompareOp, CompareTarget, KeyRange, KeyValue, RangeOptions,
    RangeRequest, RangeResponse, RejectReason, Request, Response, Session, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse,
};

use crate::error::ApiError;

pub fn key_range(key: &[u8], range_end: &[u8]) -> KeyRange {
    match range_end {
        [] => KeyRange::Single(key.to_vec()),
        [0] => KeyRange::From(key.to_vec()),
        end => KeyRange::Between {
            start: key.to_vec(),
            end: end.to_vec(),
        },
    }
}

pub fn session(s: &Option<pb::WriteSession>) -> Option<Session> {
    s.as_ref().filter(|s| s.client_id != 0).map(|s| Session {
        client_id: s.client_id,
        seq: s.seq,
    })
}

pub fn range_request(req: &pb::RangeRequest) -> Result<RangeRequest, ApiError> {
    if req.limit < 0 {
        return Err(ApiError::InvalidRequest(
            "limit must not be negative".into(),
        ));
    }
    Ok(RangeRequest {
        range: key_range(&req.key, &req.range_end),
        limit: req.limit as u64,
        keys_only: req.keys_only,
        count_only: req.count_only,
    })
}

/// The sort and revision filters of a range; unknown enum values and
/// negative bounds are INVALID_ARGUMENT.
pub fn range_options(req: &pb::RangeRequest) -> Result<RangeOptions, ApiError> {
    range_options_of(
        req.sort_order,
        req.sort_target,
        [
            req.min_mod_revision,
            req.max_mod_revision,
            req.min_create_revision,
            req.max_create_revision,
        ],
    )
}

/// Sort and filter options from their wire values, shared by both APIs
/// (nines.v1 numbers its sort enums as etcd does). `bounds` are min/max
/// mod revision, then min/max create revision.
pub fn range_options_of(
    sort_order: i32,
    sort_target: i32,
    bounds: [i64; 4],
) -> Result<RangeOptions, ApiError> {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    let bad = |what: &str, v: i64| ApiError::InvalidRequest(format!("{what} {v} is not valid"));
    let sort_order = match O::try_from(sort_order) {
        Ok(O::None) => SortOrder::None,
        Ok(O::Ascend) => SortOrder::Ascend,
        Ok(O::Descend) => SortOrder::Descend,
        Err(_) => return Err(bad("sort_order", sort_order.into())),
    };
    let sort_target = match T::try_from(sort_target) {
        Ok(T::Key) => SortTarget::Key,
        Ok(T::Version) => SortTarget::Version,
        Ok(T::Create) => SortTarget::Create,
        Ok(T::Mod) => SortTarget::Mod,
        Ok(T::Value) => SortTarget::Value,
        Err(_) => return Err(bad("sort_target", sort_target.into())),
    };
    let names = [
        "min_mod_revision",
        "max_mod_revision",
        "min_create_revision",
        "max_create_revision",
    ];
    if let Some((what, v)) = names.into_iter().zip(bounds).find(|(_, v)| *v < 0) {
        return Err(bad(what, v));
    }
    let [min_mod_revision, max_mod_revision, min_create_revision, max_create_revision] = bounds;
    Ok(RangeOptions {
        sort_order,
        sort_target,
        min_mod_revision,
        max_mod_revision,
        min_create_revision,
        max_create_revision,
    })
}

pub fn put_request(req: &pb::PutRequest) -> Request {
    Request {
        session: session(&req.session),
        command: Command::Put {
            key: req.key.clone(),
            value: req.value.clone(),
            lease: req.lease,
            prev_kv: req.prev_kv,
        },
    }
}

pub fn delete_request(req: &pb::DeleteRequest) -> Request {
    Request {
        session: session(&req.session),
        command: Command::Delete {
            key: req.key.clone(),
            prev_kv: req.prev_kv,
        },
    }
}

pub fn delete_range_request(req: &pb::DeleteRangeRequest) -> Request {
    Request {
        session: session(&req.session),
        command: Command::DeleteRange {
            range: key_range(&req.key, &req.range_end),
            prev_kv: req.prev_kv,
        },
    }
}

pub fn txn_request(req: &pb::TxnRequest) -> Result<Request, ApiError> {
    let compares = req.compare.iter().map(compare).collect::<Result<_, _>>()?;
    let success = req.success.iter().map(txn_op).collect::<Result<_, _>>()?;
    let failure = req.failure.iter().map(txn_op).collect::<Result<_, _>>()?;
    Ok(Request {
        session: session(&req.session),
        command: Command::Txn(Txn {
            compares,
            success,
            failure,
        }),
    })
}

fn compare(c: &pb::Compare) -> Result<Compare, ApiError> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let bad = |why: &str| {
        ApiError::InvalidRequest(format!(
            "compare on {:?}: {why}",
            String::from_utf8_lossy(&c.key)
        ))
    };
    let op = match R::try_from(c.result).map_err(|_| bad("unknown result operator"))? {
        R::Equal => CompareOp::Equal,
        R::Greater => CompareOp::Greater,
        R::Less => CompareOp::Less,
        R::NotEqual => CompareOp::NotEqual,
    };
    let target = T::try_from(c.target).map_err(|_| bad("unknown target"))?;
    let target = match (target, &c.target_union) {
        (T::Version, Some(U::Version(v))) => CompareTarget::Version(*v),
        (T::Create, Some(U::CreateRevision(v))) => CompareTarget::CreateRevision(*v),
        (T::Mod, Some(U::ModRevision(v))) => CompareTarget::ModRevision(*v),
        (T::Value, Some(U::Value(v))) => CompareTarget::Value(v.clone()),
        (_, None) => return Err(bad("missing operand")),
        _ => return Err(bad("operand does not match target")),
    };
    Ok(Compare {
        key: c.key.clone(),
        op,
        target,
    })
}

fn txn_op(op: &pb::RequestOp) -> Result<TxnOp, ApiError> {
    use pb::request_op::Request as R;
    match &op.request {
        Some(R::RequestRange(r)) => {
            // Silently reading the current state instead would lie.
            if r.revision > 0 {
                return Err(ApiError::InvalidRequest(
                    "a range inside a txn cannot ask for a past revision".into(),
                ));
            }
            if !range_options(r)?.is_plain() {
                return Err(ApiError::InvalidRequest(
                    "a range inside a txn cannot sort or filter by revision yet".into(),
                ));
            }
            Ok(TxnOp::Get(range_request(r)?))
        }
        Some(R::RequestPut(p)) => {
            if p.lease != 0 {
                return Err(ApiError::InvalidRequest(
                    "leases are not supported yet".into(),
                ));
            }
            Ok(TxnOp::Put {
                key: p.key.clone(),
                value: p.value.clone(),
                prev_kv: p.prev_kv,
            })
        }
        Some(R::RequestDeleteRange(d)) => Ok(TxnOp::Delete {
            range: key_range(&d.key, &d.range_end),
            prev_kv: d.prev_kv,
        }),
        None => Err(ApiError::InvalidRequest("txn op has no request".into())),
    }
}

pub fn kv(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

pub fn range_response(header: pb::ResponseHeader, r: RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count as i64,
    }
}

/// The state machine's verdict, or the reason it refused to apply.
pub fn applied(resp: Response) -> Result<(i64, CommandResult), ApiError> {
    match resp.result {
        CommandResult::Rejected(RejectReason::InvalidInput(msg)) => {
            Err(ApiError::InvalidRequest(msg))
        }
        CommandResult::Rejected(RejectReason::StaleSequence {
            client_id,
            seq,
            last_seq,
        }) => Err(ApiError::Precondition(format!(
            "client {client_id:x} sequence {seq} is older than its last write {last_seq}"
        ))),
        CommandResult::Rejected(RejectReason::SessionSeqReused { client_id, seq }) => {
            Err(ApiError::Precondition(format!(
                "session seq reused with a different request: client {client_id:x} \
                 sequence {seq} was already used; the new request was not applied"
            )))
        }
        CommandResult::Rejected(RejectReason::ResponseNotRetained {
            client_id,
            seq,
            revision,
        }) => Err(ApiError::Precondition(format!(
            "client {client_id:x} sequence {seq} was already applied at revision {revision}; \
             its response was too large to keep for retries"
        ))),
        CommandResult::Rejected(RejectReason::SessionUnknown { client_id, seq }) => {
            Err(ApiError::Precondition(format!(
                "session unknown or expired: client {client_id:x} sequence {seq} was not \
                 applied now; if it was sent before, it may have been applied then; \
                 start a new client id at sequence 1"
            )))
        }
        CommandResult::Rejected(RejectReason::Compacted {
            requested,
            compacted,
        }) => Err(ApiError::from(nines_state::StateError::Compacted {
            requested,
            compacted,
        })),
        CommandResult::Rejected(RejectReason::FutureRevision { requested, current }) => {
            Err(ApiError::from(nines_state::StateError::FutureRevision {
                requested,
                current,
            }))
        }
        result => Ok((resp.revision, result)),
    }
}

pub fn compact_request(req: &pb::CompactionRequest) -> Request {
    Request {
        session: session(&req.session),
        command: Command::Compact {
            revision: req.revision,
            physical: req.physical,
        },
    }
}

/// The compacted revision, for a `physical` wait.
pub fn compact_response(
    header: pb::ResponseHeader,
    result: CommandResult,
) -> Result<(pb::CompactionResponse, i64), ApiError> {
    match result {
        CommandResult::Compacted { revision } => Ok((
            pb::CompactionResponse {
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
    header: pb::ResponseHeader,
    result: CommandResult,
) -> Result<pb::PutResponse, ApiError> {
    match result {
        CommandResult::Put { prev_kv } => Ok(pb::PutResponse {
            header: Some(header),
            prev_kv: prev_kv.map(kv),
        }),
        other => Err(unexpected(&other)),
    }
}

pub fn delete_response(
    header: pb::ResponseHeader,
    result: CommandResult,
) -> Result<pb::DeleteRangeResponse, ApiError> {
    match result {
        CommandResult::Delete { deleted, prev_kvs } => Ok(pb::DeleteRangeResponse {
            header: Some(header),
            deleted: deleted as i64,
            prev_kvs: prev_kvs.into_iter().map(kv).collect(),
        }),
        other => Err(unexpected(&other)),
    }
}

pub fn txn_response(
    header: pb::ResponseHeader,
    result: CommandResult,
) -> Result<pb::TxnResponse, ApiError> {
    use pb::response_op::Response as R;
    let CommandResult::Txn {
        succeeded,
        responses,
    } = result
    else {
        return Err(unexpected(&result));
    };
    let responses = responses
        .into_iter()
        .map(|r| pb::ResponseOp {
            response: Some(match r {
                TxnOpResponse::Put { prev_kv } => R::ResponsePut(pb::PutResponse {
                    header: Some(header),
                    prev_kv: prev_kv.map(kv),
                }),
                TxnOpResponse::Delete { deleted, prev_kvs } => {
                    R::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: Some(header),
                        deleted: deleted as i64,
                        prev_kvs: prev_kvs.into_iter().map(kv).collect(),
                    })
                }
                TxnOpResponse::Get(range) => R::ResponseRange(range_response(header, range)),
            }),
        })
        .collect();
    Ok(pb::TxnResponse {
        header: Some(header),
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_range_end_convention() {
        assert_eq!(key_range(b"a", b""), KeyRange::Single(b"a".to_vec()));
        assert_eq!(key_range(b"a", b"\0"), KeyRange::From(b"a".to_vec()));
        assert_eq!(
            key_range(b"a", b"c"),
            KeyRange::Between {
                start: b"a".to_vec(),
                end: b"c".to_vec()
            }
        );
    }

    #[test]
    fn malformed_txn_is_invalid() {
        let req = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: b"k".to_vec(),
                target: pb::compare::CompareTarget::Value as i32,
                target_union: None,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            txn_request(&req),
            Err(ApiError::InvalidRequest(_))
        ));
        let req = pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert!(matches!(
            txn_request(&req),
            Err(ApiError::InvalidRequest(_))
        ));
    }

    #[test]
    fn range_options_are_checked() {
        let mut req = pb::RangeRequest {
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Mod as i32,
            min_create_revision: 4,
            ..Default::default()
        };
        let opts = range_options(&req).unwrap();
        assert_eq!(
            (opts.sort_order, opts.sort_target, opts.min_create_revision),
            (SortOrder::Descend, SortTarget::Mod, 4)
        );
        assert!(!opts.is_plain());
        req.sort_target = 99;
        assert!(matches!(
            range_options(&req),
            Err(ApiError::InvalidRequest(_))
        ));
        req.sort_target = 0;
        req.sort_order = -1;
        assert!(range_options(&req).is_err());
        req.sort_order = 0;
        req.max_mod_revision = -5;
        assert!(range_options(&req).is_err());
        // Inside a txn only the plain form is served.
        req.max_mod_revision = 0;
        let txn = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(req)),
            }],
            ..Default::default()
        };
        assert!(matches!(
            txn_request(&txn),
            Err(ApiError::InvalidRequest(_))
        ));
    }
}
