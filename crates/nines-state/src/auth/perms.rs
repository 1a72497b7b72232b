//! Whether granted key ranges cover a requested one: etcd merges a user's
//! permissions into intervals and checks the request lies inside them.

use nines_types::Permission;

/// A range's exclusive end: the key alone for an empty end, unbounded
/// (None) for `\0` (etcd's "from key").
fn end_of(key: &[u8], range_end: &[u8]) -> Option<Vec<u8>> {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            Some(end)
        }
        [0] => None,
        end => Some(end.to_vec()),
    }
}

/// Whether the union of `granted` covers `[key, end_of(key, range_end))`.
pub(super) fn covers<'a>(
    granted: impl Iterator<Item = &'a Permission>,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    let want_end = end_of(key, range_end);
    if want_end.as_deref().is_some_and(|e| e <= key) {
        // An empty range asks for nothing (etcd reads it as empty).
        return true;
    }
    let mut intervals: Vec<(Vec<u8>, Option<Vec<u8>>)> = granted
        .map(|p| (p.key.clone(), end_of(&p.key, &p.range_end)))
        .collect();
    intervals.sort();
    // Walk forward from the requested start through overlapping grants.
    let mut reached = key.to_vec();
    loop {
        let mut advanced = false;
        for (start, end) in &intervals {
            if start.as_slice() > reached.as_slice() {
                continue;
            }
            match end {
                None => return true,
                Some(end) if end.as_slice() > reached.as_slice() => {
                    reached = end.clone();
                    advanced = true;
                }
                Some(_) => {}
            }
        }
        match &want_end {
            Some(want) if reached.as_slice() >= want.as_slice() => return true,
            _ if !advanced => return false,
            _ => {}
        }
    }
}
