//! The set check: after healing, one linearizable read of every element.
//! Every acknowledged add must be present (else *lost*); nothing that was
//! never attempted may appear (else *unexpected*); adds with an unknown
//! outcome may go either way; definitely failed adds must be absent.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SetResult {
    pub attempted: usize,
    pub acknowledged: usize,
    /// Info adds that turned out to be present.
    pub recovered: usize,
    pub lost: Vec<i64>,
    pub unexpected: Vec<i64>,
    /// Adds that failed definitively yet are present.
    pub failed_but_present: Vec<i64>,
    pub duplicated: Vec<i64>,
    /// False when no final read succeeded: nothing could be checked.
    pub final_read: bool,
}

impl SetResult {
    pub fn valid(&self) -> bool {
        self.final_read
            && self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.failed_but_present.is_empty()
            && self.duplicated.is_empty()
    }
}

/// How an add ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    Ok,
    Fail,
    Info,
}

pub fn check(adds: &BTreeMap<i64, AddOutcome>, final_read: Option<&[i64]>) -> SetResult {
    let mut r = SetResult {
        attempted: adds.len(),
        acknowledged: adds.values().filter(|o| **o == AddOutcome::Ok).count(),
        ..SetResult::default()
    };
    let Some(read) = final_read else {
        return r;
    };
    r.final_read = true;
    let mut seen = BTreeSet::new();
    for &x in read {
        if !seen.insert(x) {
            r.duplicated.push(x);
        }
        match adds.get(&x) {
            None => r.unexpected.push(x),
            Some(AddOutcome::Fail) => r.failed_but_present.push(x),
            Some(AddOutcome::Info) => r.recovered += 1,
            Some(AddOutcome::Ok) => {}
        }
    }
    r.lost = adds
        .iter()
        .filter(|(x, o)| **o == AddOutcome::Ok && !seen.contains(x))
        .map(|(x, _)| *x)
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adds() -> BTreeMap<i64, AddOutcome> {
        BTreeMap::from([
            (1, AddOutcome::Ok),
            (2, AddOutcome::Ok),
            (3, AddOutcome::Info),
            (4, AddOutcome::Info),
            (5, AddOutcome::Fail),
        ])
    }

    #[test]
    fn info_adds_may_go_either_way() {
        let r = check(&adds(), Some(&[1, 2, 3]));
        assert!(r.valid(), "{r:?}");
        assert_eq!(r.recovered, 1);
    }

    #[test]
    fn detects_lost_unexpected_and_failed() {
        let r = check(&adds(), Some(&[1, 5, 9, 9]));
        assert_eq!(r.lost, vec![2]);
        assert_eq!(r.unexpected, vec![9, 9]);
        assert_eq!(r.duplicated, vec![9]);
        assert_eq!(r.failed_but_present, vec![5]);
        assert!(!r.valid());
    }

    #[test]
    fn no_final_read_is_not_valid() {
        assert!(!check(&adds(), None).valid());
    }
}
