//! etcd's Range options (sort order and target, min/max revision filters)
//! as the store's `RangeOptions`: the store sorts and filters on its key
//! index before it fetches a value (see nines-state's `mvcc/sorted.rs`).

use nines_proto::etcd::etcdserverpb as epb;
use nines_types::{RangeOptions, SortOrder, SortTarget};

use crate::error::ApiError;

pub fn options(req: &epb::RangeRequest) -> Result<RangeOptions, ApiError> {
    use epb::range_request::{SortOrder as O, SortTarget as T};
    let bad = |what: &str, v: i64| ApiError::InvalidRequest(format!("{what} {v} is not valid"));
    let sort_order = match O::try_from(req.sort_order) {
        Ok(O::None) => SortOrder::None,
        Ok(O::Ascend) => SortOrder::Ascend,
        Ok(O::Descend) => SortOrder::Descend,
        Err(_) => return Err(bad("sort_order", req.sort_order.into())),
    };
    let sort_target = match T::try_from(req.sort_target) {
        Ok(T::Key) => SortTarget::Key,
        Ok(T::Version) => SortTarget::Version,
        Ok(T::Create) => SortTarget::Create,
        Ok(T::Mod) => SortTarget::Mod,
        Ok(T::Value) => SortTarget::Value,
        Err(_) => return Err(bad("sort_target", req.sort_target.into())),
    };
    let bounds = [
        ("min_mod_revision", req.min_mod_revision),
        ("max_mod_revision", req.max_mod_revision),
        ("min_create_revision", req.min_create_revision),
        ("max_create_revision", req.max_create_revision),
    ];
    if let Some((what, v)) = bounds.into_iter().find(|(_, v)| *v < 0) {
        return Err(bad(what, v));
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
            epb::RangeRequest {
                min_mod_revision: -5,
                ..Default::default()
            },
        ] {
            assert!(matches!(options(&req), Err(ApiError::InvalidRequest(_))));
        }
    }
}
