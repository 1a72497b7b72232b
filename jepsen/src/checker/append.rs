//! The list-append check. Each key holds a list of unique elements, extended
//! by read-compare-write transactions. Against the final (post-heal,
//! linearizable) value of every key it finds:
//! - lost appends: acknowledged, but missing from the final value;
//! - duplicates: an element twice in one read;
//! - non-prefix reads: a read that is not a prefix of the final value (lists
//!   only grow, so every earlier state is a prefix of the last one);
//! - failed-but-observed: an element whose append failed definitively
//!   shows up in some read;
//! - unexpected: an element that was never appended to that key.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::set::AddOutcome;

/// One read of one key (`None`: the key did not exist, i.e. the empty list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRead {
    pub op: u64,
    pub key: String,
    pub list: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Append {
    pub op: u64,
    pub key: String,
    pub element: i64,
    #[serde(skip)]
    pub outcome: AddOutcome,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppendResult {
    pub keys: usize,
    pub appends_ok: usize,
    pub reads_checked: usize,
    pub lost: Vec<Append>,
    pub duplicates: Vec<KeyRead>,
    pub non_prefix: Vec<KeyRead>,
    pub failed_but_observed: Vec<(i64, KeyRead)>,
    pub unexpected: Vec<(i64, KeyRead)>,
    pub final_read: bool,
}

impl AppendResult {
    pub fn valid(&self) -> bool {
        self.final_read
            && self.lost.is_empty()
            && self.duplicates.is_empty()
            && self.non_prefix.is_empty()
            && self.failed_but_observed.is_empty()
            && self.unexpected.is_empty()
    }
}

/// Keeps reports readable when a broken build produces thousands.
const MAX_EXAMPLES: usize = 20;

fn push<T>(v: &mut Vec<T>, x: T) {
    if v.len() < MAX_EXAMPLES {
        v.push(x);
    }
}

/// `reads` are every ok read; `final_lists` is the final value of each key,
/// `None` when the final read failed.
pub fn check(
    appends: &[Append],
    reads: &[KeyRead],
    final_lists: Option<&BTreeMap<String, Vec<i64>>>,
) -> AppendResult {
    let mut r = AppendResult {
        appends_ok: appends
            .iter()
            .filter(|a| a.outcome == AddOutcome::Ok)
            .count(),
        ..AppendResult::default()
    };
    let Some(finals) = final_lists else {
        return r;
    };
    r.final_read = true;
    let by_elem: HashMap<(&str, i64), &Append> = appends
        .iter()
        .map(|a| ((a.key.as_str(), a.element), a))
        .collect();
    let keys: BTreeSet<&str> = appends.iter().map(|a| a.key.as_str()).collect();
    r.keys = keys.len();
    let empty = Vec::new();
    for a in appends.iter().filter(|a| a.outcome == AddOutcome::Ok) {
        let list = finals.get(&a.key).unwrap_or(&empty);
        if !list.contains(&a.element) {
            push(&mut r.lost, a.clone());
        }
    }
    let final_reads = finals.iter().map(|(key, list)| KeyRead {
        op: u64::MAX,
        key: key.clone(),
        list: list.clone(),
    });
    for read in reads.iter().cloned().chain(final_reads) {
        r.reads_checked += 1;
        let last = finals.get(&read.key).unwrap_or(&empty);
        let mut seen = BTreeSet::new();
        if read.list.iter().any(|x| !seen.insert(*x)) {
            push(&mut r.duplicates, read.clone());
        }
        if !last.starts_with(&read.list) {
            push(&mut r.non_prefix, read.clone());
        }
        for &x in &read.list {
            match by_elem.get(&(read.key.as_str(), x)) {
                None => push(&mut r.unexpected, (x, read.clone())),
                Some(a) if a.outcome == AddOutcome::Fail => {
                    push(&mut r.failed_but_observed, (x, read.clone()))
                }
                Some(_) => {}
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(op: u64, key: &str, element: i64, outcome: AddOutcome) -> Append {
        Append {
            op,
            key: key.into(),
            element,
            outcome,
        }
    }

    fn read(op: u64, key: &str, list: &[i64]) -> KeyRead {
        KeyRead {
            op,
            key: key.into(),
            list: list.to_vec(),
        }
    }

    fn finals(lists: &[(&str, &[i64])]) -> BTreeMap<String, Vec<i64>> {
        lists
            .iter()
            .map(|(k, l)| (k.to_string(), l.to_vec()))
            .collect()
    }

    #[test]
    fn valid_history_passes() {
        let appends = [
            app(0, "a/0", 1, AddOutcome::Ok),
            app(1, "a/0", 2, AddOutcome::Info),
            app(2, "a/0", 3, AddOutcome::Ok),
            app(3, "a/1", 4, AddOutcome::Fail),
        ];
        let reads = [
            read(4, "a/0", &[1]),
            read(5, "a/0", &[1, 2]),
            read(6, "a/1", &[]),
        ];
        let f = finals(&[("a/0", &[1, 2, 3])]);
        let r = check(&appends, &reads, Some(&f));
        assert!(r.valid(), "{r:?}");
    }

    #[test]
    fn detects_each_anomaly() {
        let appends = [
            app(0, "a/0", 1, AddOutcome::Ok),
            app(1, "a/0", 2, AddOutcome::Ok),
            app(2, "a/0", 3, AddOutcome::Fail),
            app(3, "a/0", 4, AddOutcome::Ok),
        ];
        let reads = [
            read(10, "a/0", &[2]),
            read(11, "a/0", &[1, 1]),
            read(12, "a/0", &[1, 3]),
            read(13, "a/0", &[1, 9]),
        ];
        let f = finals(&[("a/0", &[1, 2])]);
        let r = check(&appends, &reads, Some(&f));
        assert_eq!(r.lost, vec![appends[3].clone()]);
        assert_eq!(r.duplicates.len(), 1);
        assert_eq!(r.non_prefix.len(), 4);
        assert_eq!(r.failed_but_observed, vec![(3, reads[2].clone())]);
        assert_eq!(r.unexpected, vec![(9, reads[3].clone())]);
        assert!(!r.valid());
    }
}
