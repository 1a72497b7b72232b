//! etcd's Range options (sort order and target, min/max mod and create
//! revision) as the store's `RangeOptions`: the store applies them from its
//! key index, so filters and sorts by anything but the value visit no value
//! they do not return (`nines-state`, `mvcc/sorted.rs`). As etcd: `count`
//! counts the range's keys before the filters, and the limit applies after
//! sorting and filtering.

use nines_proto::etcd::etcdserverpb as epb;
use nines_types::{RangeOptions, SortOrder, SortTarget};

use crate::error::ApiError;

use epb::range_request::{SortOrder as O, SortTarget as T};

/// The options of `req`; unknown enum values and negative bounds are
/// INVALID_ARGUMENT.
pub fn options(req: &epb::RangeRequest) -> Result<RangeOptions, ApiError> {
    let bad = |what: &str| ApiError::InvalidRequest(format!("unknown {what} in range"));
    let sort_order = match O::try_from(req.sort_order).map_err(|_| bad("sort_order"))? {
        O::None => SortOrder::None,
        O::Ascend => SortOrder::Ascend,
        O::Descend => SortOrder::Descend,
    };
    let sort_target = match T::try_from(req.sort_target).map_err(|_| bad("sort_target"))? {
        T::Key => SortTarget::Key,
        T::Version => SortTarget::Version,
        T::Create => SortTarget::Create,
        T::Mod => SortTarget::Mod,
        T::Value => SortTarget::Value,
    };
    for (name, v) in [
        ("min_mod_revision", req.min_mod_revision),
        ("max_mod_revision", req.max_mod_revision),
        ("min_create_revision", req.min_create_revision),
        ("max_create_revision", req.max_create_revision),
    ] {
        if v < 0 {
            return Err(ApiError::InvalidRequest(format!(
                "{name} must not be negative"
            )));
        }
    }
    Ok(RangeOptions {
        sort_order,
        sort_target,
        min_mod_revision: req.min_mod_revision,
        max_mod_revision: req.max_mod_revision,
        min_create_revision: req.min_create_revision,
        max_create_revision: req.max_create_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascending_by_key_is_the_store_order() {
        let req = epb::RangeRequest {
            sort_order: O::Ascend as i32,
            sort_target: T::Key as i32,
            limit: 2,
            ..Default::default()
        };
        assert!(options(&req).unwrap().is_plain());
        let req = epb::RangeRequest {
            sort_target: T::Create as i32,
            ..Default::default()
        };
        assert!(!options(&req).unwrap().is_plain(), "a target alone sorts");
    }

    #[test]
    fn sorts_and_filters_reach_the_store() {
        let req = epb::RangeRequest {
            sort_order: O::Descend as i32,
            sort_target: T::Mod as i32,
            min_mod_revision: 6,
            max_create_revision: 4,
            ..Default::default()
        };
        let o = options(&req).unwrap();
        assert_eq!(
            (o.sort_order, o.sort_target),
            (SortOrder::Descend, SortTarget::Mod)
        );
        assert_eq!((o.min_mod_revision, o.max_create_revision), (6, 4));
        assert_eq!((o.max_mod_revision, o.min_create_revision), (0, 0));
    }

    #[test]
    fn hostile_options_are_refused() {
        for req in [
            epb::RangeRequest {
                sort_order: 99,
                ..Default::default()
            },
            epb::RangeRequest {
                sort_target: -1,
                ..Default::default()
            },
            epb::RangeRequest {
                min_mod_revision: -5,
                ..Default::default()
            },
        ] {
            assert!(matches!(options(&req), Err(ApiError::InvalidRequest(_))));
        }
    }
}
