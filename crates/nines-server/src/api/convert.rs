//! Conversions shared by the API services: key ranges, range options from
//! their wire values, and the state machine's verdict on a write.

use nines_proto::etcd::etcdserverpb as epb;
use nines_types::{
    CommandResult, KeyRange, RangeOptions, RejectReason, Response, SortOrder, SortTarget,
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

/// Sort and filter options from their wire values; unknown enum values are
/// INVALID_ARGUMENT. `bounds` are min/max mod
/// revision, then min/max create revision.
pub fn range_options_of(
    sort_order: i32,
    sort_target: i32,
    bounds: [i64; 4],
) -> Result<RangeOptions, ApiError> {
    use epb::range_request::{SortOrder as O, SortTarget as T};
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
    // Any bound but 0 filters, negative ones included, as in etcd: a
    // negative max matches nothing, a negative min everything.
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
        CommandResult::Rejected(RejectReason::KeyNotFound(_)) => Err(ApiError::InvalidRequest(
            crate::error::ETCD_KEY_NOT_FOUND.into(),
        )),
        CommandResult::Rejected(RejectReason::LeaseNotFound(_)) => Err(ApiError::LeaseNotFound),
        CommandResult::Rejected(RejectReason::LeaseExists(_)) => Err(ApiError::LeaseExists),
        CommandResult::Rejected(RejectReason::Auth(reason)) => Err(ApiError::Auth(reason)),
        result => Ok((resp.revision, result)),
    }
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
    fn range_options_are_checked() {
        let opts = range_options_of(2, 3, [0, 0, 4, 0]).unwrap();
        assert_eq!(
            (opts.sort_order, opts.sort_target, opts.min_create_revision),
            (SortOrder::Descend, SortTarget::Mod, 4)
        );
        assert!(!opts.is_plain());
        assert!(matches!(
            range_options_of(0, 99, [0; 4]),
            Err(ApiError::InvalidRequest(_))
        ));
        assert!(range_options_of(-1, 0, [0; 4]).is_err());
        // Negative bounds filter, as in etcd.
        assert!(!range_options_of(0, 0, [0, -5, 0, 0]).unwrap().is_plain());
        assert!(range_options_of(0, 0, [0; 4]).unwrap().is_plain());
    }
}
