//! etcd's Range options (sort order and target, min/max revision filters)
//! as the store's `RangeOptions`: the store sorts and filters on its key
//! index before it fetches a value (see nines-state's `mvcc/sorted.rs`).

use nines_proto::etcd::etcdserverpb as epb;
use nines_types::RangeOptions;

use crate::error::ApiError;

pub fn options(req: &epb::RangeRequest) -> Result<RangeOptions, ApiError> {
    crate::api::convert::range_options_of(
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

#[cfg(test)]
mod tests {
    use super::*;
    use nines_types::{SortOrder, SortTarget};

    #[test]
    fn etcd_fields_map_to_the_store_options() {
        let req = epb::RangeRequest {
            sort_order: 2,
            sort_target: 3,
            min_mod_revision: 4,
            max_create_revision: 9,
            ..Default::default()
        };
        let o = options(&req).unwrap();
        assert_eq!(
            (o.sort_order, o.sort_target),
            (SortOrder::Descend, SortTarget::Mod)
        );
        assert_eq!((o.min_mod_revision, o.max_create_revision), (4, 9));
        // Ascending by key is the store's own order.
        let req = epb::RangeRequest {
            sort_order: 1,
            ..Default::default()
        };
        assert!(options(&req).unwrap().is_plain());
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
        ] {
            assert!(matches!(options(&req), Err(ApiError::InvalidRequest(_))));
        }
        // Negative bounds filter, as in etcd.
        let req = epb::RangeRequest {
            min_mod_revision: -5,
            max_create_revision: -1,
            ..Default::default()
        };
        let o = options(&req).unwrap();
        assert_eq!((o.min_mod_revision, o.max_create_revision), (-5, -1));
    }
}
