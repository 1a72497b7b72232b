//! A range with etcd's sort and revision filters: every matching key is
//! resolved in the index first (no value visited), filtered and sorted by
//! what the index knows; values are fetched only to sort by value, and
//! otherwise only for the keys returned with theirs.

use std::cmp::Ordering;
use std::sync::RwLock;

use nines_types::{RangeOptions, RangeRequest, RangeResponse, SortOrder, SortTarget};

use super::index::{KeyAt, KeyIndex, Rev};
use super::read::{key_value, record_of, resolve, value_of};
use crate::error::StateError;

struct Found {
    key: Vec<u8>,
    at: KeyAt,
    value: Option<Vec<u8>>,
}

/// Like `read::range`, with `opts`. As etcd: `count` counts the keys of the
/// range before the revision filters; `more` says the limit cut the
/// filtered, sorted result short.
pub(crate) fn range<B: AsRef<[u8]>>(
    index: &RwLock<KeyIndex>,
    req: &RangeRequest,
    opts: &RangeOptions,
    at: i64,
    leases: bool,
    fetch: impl Fn(Rev) -> Result<Option<B>, StateError>,
) -> Result<RangeResponse, StateError> {
    let limit = if req.count_only { 0 } else { u64::MAX };
    let (count, resolved) = resolve(index, &req.range, at, limit);
    let mut found: Vec<Found> = resolved
        .into_iter()
        .filter(|(_, at)| passes(opts, at))
        .map(|(key, at)| Found {
            key,
            at,
            value: None,
        })
        .collect();
    let order = match (opts.sort_order, opts.sort_target) {
        // etcd: a target other than the key with no order sorts ascending.
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    if opts.sort_target == SortTarget::Value && order != SortOrder::None {
        for f in &mut found {
            f.value = Some(value_of(&f.key, f.at.rev, &fetch)?);
        }
    }
    // Stable: equal targets stay in key order.
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => found.sort_by(|a, b| compare(opts.sort_target, a, b)),
        SortOrder::Descend => found.sort_by(|a, b| compare(opts.sort_target, b, a)),
    }
    let more = req.limit > 0 && found.len() as u64 > req.limit;
    if more {
        found.truncate(req.limit as usize);
    }
    let mut kvs = Vec::with_capacity(found.len());
    for f in found {
        // The header is read even for keys_only or a value already read
        // if keys may have leases: it holds the key's lease.
        let fetch_value = f.value.is_none() && !req.keys_only;
        let (value, lease) = if !fetch_value && !leases {
            (Vec::new(), 0)
        } else {
            record_of(&f.key, f.at.rev, &fetch, fetch_value)?
        };
        let value = match (req.keys_only, f.value) {
            (true, _) => Vec::new(),
            (false, Some(read)) => read,
            (false, None) => value,
        };
        kvs.push(key_value(f.key, value, f.at, lease));
    }
    Ok(RangeResponse { kvs, count, more })
}

fn passes(opts: &RangeOptions, at: &KeyAt) -> bool {
    let within = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
    within(at.rev.main, opts.min_mod_revision, opts.max_mod_revision)
        && within(
            at.create_revision,
            opts.min_create_revision,
            opts.max_create_revision,
        )
}

fn compare(target: SortTarget, a: &Found, b: &Found) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.at.version.cmp(&b.at.version),
        SortTarget::Create => a.at.create_revision.cmp(&b.at.create_revision),
        SortTarget::Mod => a.at.rev.main.cmp(&b.at.rev.main),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}
