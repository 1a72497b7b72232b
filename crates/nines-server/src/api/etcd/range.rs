//! etcd's Range options that the store does not apply: sorting and the
//! min/max revision filters. As etcd does, the store is then asked for every
//! key in the range, the filters drop keys (`count` still counts them), the
//! rest is sorted and only then cut to `limit`.

use std::cmp::Ordering;

use nines_proto::etcd::etcdserverpb as epb;
use nines_types::KeyValue;

use crate::error::ApiError;

use epb::range_request::{SortOrder, SortTarget};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// None: the store's key order is what the client wants.
    sort: Option<(SortTarget, SortOrder)>,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
    limit: u64,
}

impl RangeOptions {
    pub fn of(req: &epb::RangeRequest) -> Result<Self, ApiError> {
        let bad = |what: &str| ApiError::InvalidRequest(format!("unknown {what} in range"));
        let mut order = SortOrder::try_from(req.sort_order).map_err(|_| bad("sort_order"))?;
        let target = SortTarget::try_from(req.sort_target).map_err(|_| bad("sort_target"))?;
        // etcd's rules: a target without an order sorts ascending; ascending
        // by key is the store's own order.
        if order == SortOrder::None && target != SortTarget::Key {
            order = SortOrder::Ascend;
        }
        let sort = match (order, target) {
            (SortOrder::None, _) | (SortOrder::Ascend, SortTarget::Key) => None,
            (order, target) => Some((target, order)),
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
        Ok(Self {
            sort,
            min_mod: req.min_mod_revision,
            max_mod: req.max_mod_revision,
            min_create: req.min_create_revision,
            max_create: req.max_create_revision,
            limit: req.limit.max(0) as u64,
        })
    }

    /// No sorting and no filters: the store's answer is final.
    pub fn is_plain(&self) -> bool {
        self.sort.is_none()
            && self.min_mod == 0
            && self.max_mod == 0
            && self.min_create == 0
            && self.max_create == 0
    }

    /// The limit to ask the store for: all keys when they must be filtered
    /// or sorted before the limit applies.
    pub fn store_limit(&self, limit: u64) -> u64 {
        if self.is_plain() {
            limit
        } else {
            0
        }
    }

    /// Filters, sorts and limits the store's keys; returns them and `more`.
    pub fn apply(&self, mut kvs: Vec<KeyValue>, more: bool) -> (Vec<KeyValue>, bool) {
        if self.is_plain() {
            return (kvs, more);
        }
        kvs.retain(|kv| {
            (self.min_mod == 0 || kv.mod_revision >= self.min_mod)
                && (self.max_mod == 0 || kv.mod_revision <= self.max_mod)
                && (self.min_create == 0 || kv.create_revision >= self.min_create)
                && (self.max_create == 0 || kv.create_revision <= self.max_create)
        });
        if let Some((target, order)) = self.sort {
            // Stable: keys that tie stay in key order, as in etcd.
            kvs.sort_by(|a, b| {
                let o = by(target, a, b);
                if order == SortOrder::Descend {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        let cut = self.limit > 0 && kvs.len() as u64 > self.limit;
        if cut {
            kvs.truncate(self.limit as usize);
        }
        (kvs, cut)
    }
}

fn by(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: i64, modr: i64, version: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: format!("v{version}").into(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease: 0,
        }
    }

    fn keys(kvs: &[KeyValue]) -> Vec<&str> {
        kvs.iter()
            .map(|k| std::str::from_utf8(&k.key).unwrap())
            .collect()
    }

    fn store() -> Vec<KeyValue> {
        vec![kv("a", 2, 9, 3), kv("b", 5, 5, 1), kv("c", 1, 7, 2)]
    }

    #[test]
    fn plain_ranges_pass_through_with_the_store_limit() {
        let req = epb::RangeRequest {
            limit: 2,
            ..Default::default()
        };
        let o = RangeOptions::of(&req).unwrap();
        assert!(o.is_plain());
        assert_eq!(o.store_limit(2), 2);
        let (kvs, more) = o.apply(store(), true);
        assert_eq!((keys(&kvs), more), (vec!["a", "b", "c"], true));
    }

    #[test]
    fn ascending_by_key_is_the_store_order() {
        let req = epb::RangeRequest {
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Key as i32,
            ..Default::default()
        };
        assert!(RangeOptions::of(&req).unwrap().is_plain());
    }

    #[test]
    fn sorts_then_limits_and_reports_more() {
        let req = epb::RangeRequest {
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Mod as i32,
            limit: 2,
            ..Default::default()
        };
        let o = RangeOptions::of(&req).unwrap();
        assert_eq!(o.store_limit(2), 0, "all keys are needed to sort");
        let (kvs, more) = o.apply(store(), false);
        assert_eq!((keys(&kvs), more), (vec!["a", "c"], true));
        // A target alone sorts ascending.
        let req = epb::RangeRequest {
            sort_target: SortTarget::Create as i32,
            ..Default::default()
        };
        let (kvs, _) = RangeOptions::of(&req).unwrap().apply(store(), false);
        assert_eq!(keys(&kvs), vec!["c", "a", "b"]);
    }

    #[test]
    fn revision_filters_drop_keys() {
        let req = epb::RangeRequest {
            min_mod_revision: 6,
            max_create_revision: 4,
            ..Default::default()
        };
        let (kvs, more) = RangeOptions::of(&req).unwrap().apply(store(), false);
        assert_eq!((keys(&kvs), more), (vec!["a", "c"], false));
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
            assert!(matches!(
                RangeOptions::of(&req),
                Err(ApiError::InvalidRequest(_))
            ));
        }
    }
}
