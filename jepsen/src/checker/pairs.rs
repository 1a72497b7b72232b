//! The atomic-read check for the pairs workload: in every ok read of a
//! pair, both keys hold the same value (or both are absent), and the
//! header revision is at or above each returned key's mod_revision.

use std::collections::BTreeMap;

use serde::Serialize;

/// One read of a pair: key -> [value, mod_revision], plus the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairRead {
    pub op: u64,
    pub pair: String,
    pub keys: BTreeMap<String, Vec<i64>>,
    pub header_revision: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairsResult {
    pub reads_checked: usize,
    pub writes_ok: usize,
    /// Reads that saw the two keys differ: half a transaction.
    pub torn: Vec<PairRead>,
    /// Reads whose header revision is below a returned mod_revision.
    pub header_behind: Vec<PairRead>,
    pub torn_count: usize,
    pub header_behind_count: usize,
}

impl PairsResult {
    /// A run that read nothing proves nothing.
    pub fn valid(&self) -> bool {
        self.reads_checked > 0 && self.torn_count == 0 && self.header_behind_count == 0
    }
}

const MAX_EXAMPLES: usize = 20;

pub fn check(reads: &[PairRead], writes_ok: usize) -> PairsResult {
    let mut r = PairsResult {
        reads_checked: reads.len(),
        writes_ok,
        ..PairsResult::default()
    };
    for read in reads {
        let a = read.keys.get(&format!("{}a", read.pair)).map(|v| v[0]);
        let b = read.keys.get(&format!("{}b", read.pair)).map(|v| v[0]);
        if a != b {
            r.torn_count += 1;
            if r.torn.len() < MAX_EXAMPLES {
                r.torn.push(read.clone());
            }
        }
        let newest = read.keys.values().filter_map(|v| v.get(1)).max().copied();
        if newest.is_some_and(|m| read.header_revision < m) {
            r.header_behind_count += 1;
            if r.header_behind.len() < MAX_EXAMPLES {
                r.header_behind.push(read.clone());
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(a: Option<(i64, i64)>, b: Option<(i64, i64)>, header: i64) -> PairRead {
        let mut keys = BTreeMap::new();
        if let Some((v, m)) = a {
            keys.insert("p/0/a".to_string(), vec![v, m]);
        }
        if let Some((v, m)) = b {
            keys.insert("p/0/b".to_string(), vec![v, m]);
        }
        PairRead {
            op: 1,
            pair: "p/0/".into(),
            keys,
            header_revision: header,
        }
    }

    #[test]
    fn whole_reads_pass_and_torn_or_early_headers_fail() {
        let good = [
            read(None, None, 3),
            read(Some((7, 10)), Some((7, 10)), 10),
            read(Some((7, 10)), Some((7, 10)), 12),
        ];
        assert!(check(&good, 1).valid());
        let torn = check(&[read(Some((8, 11)), Some((7, 10)), 11)], 2);
        assert_eq!((torn.torn_count, torn.header_behind_count), (1, 0));
        assert!(!torn.valid());
        let half = check(&[read(Some((1, 2)), None, 2)], 1);
        assert_eq!(half.torn_count, 1);
        let behind = check(&[read(Some((7, 10)), Some((7, 10)), 9)], 1);
        assert_eq!((behind.torn_count, behind.header_behind_count), (0, 1));
        assert!(!check(&[], 0).valid(), "nothing read proves nothing");
    }
}
