//! The multi-version store on the in-memory engine: history, sub-revisions,
//! the publish rule, and a randomized model check of reads at every
//! revision.

use std::sync::atomic::{AtomicU64, Ordering};

use nines_types::{
    Command, Entry, KeyRange, KeyValue, LogId, RangeRequest, RangeResponse, Request, Response, Txn,
    TxnOp,
};
use openraft::{CommittedLeaderId, EntryPayload};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::model::*;
use super::*;
use crate::apply::apply_entries;
use crate::engine::{Engine, MemEngine, ScanIter, Write};
use crate::store::{read_meta, StateOptions};

/// An engine that counts point reads, to show what a read fetches.
#[derive(Default)]
pub(super) struct Counting {
    inner: MemEngine,
    gets: AtomicU64,
}

impl Engine for Counting {
    type Bytes = Vec<u8>;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_, Vec<u8>> {
        self.inner.scan(start, end)
    }

    fn write_batch(&self, writes: &[Write]) -> Result<(), StateError> {
        self.inner.write_batch(writes)
    }

    fn remove_each(&self, keys: &[Vec<u8>]) -> Result<(), StateError> {
        self.inner.remove_each(keys)
    }

    fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }
}

pub(super) struct Store {
    pub mvcc: Mvcc<Counting>,
    pub opts: StateOptions,
    next_index: u64,
}

impl Store {
    pub fn new() -> Self {
        // The model starts at revision 0; so does this store, on disk too,
        // so that a reopen before the first change agrees with it.
        let engine = Counting::default();
        let zero = crate::store::encode(&0i64).unwrap();
        engine
            .write_batch(&[(crate::store::META_REVISION.to_vec(), Some(zero))])
            .unwrap();
        Self {
            mvcc: Mvcc::open(engine, 0, 0, &AtomicU64::new(0)).unwrap(),
            opts: StateOptions::default(),
            next_index: 1,
        }
    }

    pub fn entry(&mut self, command: Command) -> Entry {
        let index = self.next_index;
        self.next_index += 1;
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::new(command)),
        }
    }

    pub fn apply(&mut self, command: Command) -> Response {
        let entry = self.entry(command);
        let mvcc = &self.mvcc;
        let mut done = apply_entries(mvcc, &self.opts, &[entry], |writes| {
            mvcc.engine.write_batch(&writes)
        })
        .unwrap();
        done.responses.remove(0)
    }

    /// Drops the index and rebuilds it from the stored records.
    pub fn reopen(self) -> Self {
        let meta = read_meta(&self.mvcc.engine).unwrap();
        assert_eq!(meta.revision, self.mvcc.revision());
        let mvcc = Mvcc::open(
            self.mvcc.engine,
            meta.revision,
            meta.compacted,
            &AtomicU64::new(0),
        )
        .unwrap();
        Self { mvcc, ..self }
    }

    pub fn all_at(&self, revision: i64) -> Read<RangeResponse> {
        self.mvcc.range(&all(), revision).unwrap()
    }

    pub fn gets(&self) -> u64 {
        self.mvcc.engine.gets.load(Ordering::Relaxed)
    }
}

pub(super) fn all() -> RangeRequest {
    RangeRequest::range(KeyRange::From(vec![0]))
}

pub(super) fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
        lease: 0,
        prev_kv: false,
    }
}

pub(super) fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: 0,
    }
}

#[test]
fn every_past_revision_stays_readable() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    s.apply(put("b", "x"));
    s.apply(put("a", "2"));
    s.apply(Command::Delete {
        key: b"a".to_vec(),
        prev_kv: false,
    });
    s.apply(put("a", "3"));
    let at = |s: &Store, r| s.all_at(r).data.kvs;
    assert_eq!(at(&s, 1), vec![kv("a", "1", 1, 1, 1)]);
    assert_eq!(
        at(&s, 2),
        vec![kv("a", "1", 1, 1, 1), kv("b", "x", 2, 2, 1)]
    );
    assert_eq!(
        at(&s, 3),
        vec![kv("a", "2", 1, 3, 2), kv("b", "x", 2, 2, 1)]
    );
    assert_eq!(at(&s, 4), vec![kv("b", "x", 2, 2, 1)]);
    assert_eq!(
        at(&s, 5),
        vec![kv("a", "3", 5, 5, 1), kv("b", "x", 2, 2, 1)]
    );
    // 0 is the current revision; the response says which one it was.
    assert_eq!(s.all_at(0).revision, 5);
    assert_eq!(s.mvcc.get(b"a").unwrap().data, Some(kv("a", "3", 5, 5, 1)));
    assert!(matches!(
        s.mvcc.range(&all(), 6),
        Err(StateError::FutureRevision {
            requested: 6,
            current: 5
        })
    ));
}

#[test]
fn a_txn_shares_one_revision_with_sub_indexes() {
    let mut s = Store::new();
    s.apply(put("c", "old"));
    let txn = Command::Txn(Txn {
        compares: vec![],
        success: vec![
            TxnOp::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
                prev_kv: false,
            },
            TxnOp::Delete {
                range: KeyRange::Single(b"c".to_vec()),
                prev_kv: false,
            },
            TxnOp::Put {
                key: b"b".to_vec(),
                value: b"1".to_vec(),
                prev_kv: false,
            },
        ],
        failure: vec![],
    });
    assert_eq!(s.apply(txn).revision, 2);
    for (sub, key, tombstone) in [(0, "a", false), (1, "c", true), (2, "b", false)] {
        let raw = s.mvcc.engine.get(&rev_key(Rev { main: 2, sub })).unwrap();
        let (header, _) = decode_record(&raw.expect("record")).unwrap();
        assert_eq!(
            (header.key, header.tombstone),
            (key.as_bytes().to_vec(), tombstone)
        );
    }
    assert_eq!(
        s.all_at(2).data.kvs,
        vec![kv("a", "1", 2, 2, 1), kv("b", "1", 2, 2, 1)]
    );
    assert_eq!(s.all_at(1).data.kvs, vec![kv("c", "old", 1, 1, 1)]);
}

#[test]
fn nothing_is_visible_before_publish_and_a_failed_commit_is_undone() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    let entry = s.entry(put("a", "2"));
    let mvcc = &s.mvcc;
    let failed = apply_entries(mvcc, &s.opts, &[entry], |_| {
        // The index has the new write; a read does not see it.
        assert!(mvcc.latest(b"a").is_some_and(|at| at.rev.main == 2));
        assert_eq!(mvcc.range(&all(), 0).unwrap().data.kvs[0].value, b"1");
        Err(StateError::Task("disk full".into()))
    });
    assert!(failed.is_err());
    assert_eq!(s.mvcc.revision(), 1);
    assert_eq!(s.mvcc.latest(b"a").map(|at| at.rev.main), Some(1));
    // The same revision is written again by the retry.
    let r = s.apply(put("a", "2"));
    assert_eq!(r.revision, 2);
    assert_eq!(s.all_at(2).data.kvs, vec![kv("a", "2", 1, 2, 2)]);
}

#[test]
fn counts_limits_and_keys_only_fetch_no_value_they_do_not_return() {
    let mut s = Store::new();
    for i in 0..50 {
        s.apply(put(&format!("k{i:02}"), "v"));
    }
    let before = s.gets();
    let mut req = all();
    req.count_only = true;
    let count = s.mvcc.range(&req, 0).unwrap().data;
    assert_eq!((count.count, count.kvs.len(), count.more), (50, 0, false));
    req.count_only = false;
    req.keys_only = true;
    let keys = s.mvcc.range(&req, 0).unwrap().data;
    assert_eq!(keys.kvs.len(), 50);
    assert!(keys
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
    assert_eq!(s.gets(), before, "no record fetched");
    req.keys_only = false;
    req.limit = 3;
    let some = s.mvcc.range(&req, 0).unwrap().data;
    assert_eq!((some.count, some.kvs.len(), some.more), (50, 3, true));
    assert_eq!(s.gets(), before + 3, "only the returned values");
}

fn check_every_revision(s: &Store, states: &[State], rng: &mut StdRng, seed: u64) {
    for (revision, state) in states.iter().enumerate().skip(1) {
        let revision = revision as i64;
        let read = s.all_at(revision);
        assert_eq!(read.revision, revision);
        assert_eq!(
            read.data,
            model_range(state, &all()),
            "seed {seed} at {revision}"
        );
        let req = read_request(rng);
        assert_eq!(
            s.mvcc.range(&req, revision).unwrap().data,
            model_range(state, &req),
            "seed {seed} at {revision}: {req:?}"
        );
    }
}

#[test]
fn reads_at_every_revision_match_a_model() {
    for seed in [1, 2, 3, 42, 2026, 90210] {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = Store::new();
        let mut states = vec![State::new()];
        for step in 0..400 {
            let command = command(&mut rng);
            let expected = model_apply(&mut states, &command);
            let got = s.apply(command.clone());
            assert_eq!(got, expected, "seed {seed} step {step}: {command:?}");
        }
        assert_eq!(s.mvcc.revision(), states.len() as i64 - 1);
        check_every_revision(&s, &states, &mut rng, seed);
        // The index rebuilt from the records answers the same.
        let s = s.reopen();
        check_every_revision(&s, &states, &mut rng, seed);
    }
}

/// How long a read holds the index lock at a time (what an apply may wait
/// for): one chunk of `KEYS_PER_LOCK` keys. Printed, with a loose bound so
/// a busy machine does not fail it.
#[test]
fn a_large_count_holds_the_index_lock_briefly_per_chunk() {
    const KEYS: usize = 200_000;
    let mut index = KeyIndex::default();
    for i in 0..KEYS {
        let rev = Rev {
            main: i as i64 + 1,
            sub: 0,
        };
        index.put(format!("key/{i:08}").as_bytes(), rev).unwrap();
    }
    let index = std::sync::RwLock::new(index);
    let mut req = RangeRequest::range(KeyRange::prefix(b"key/"));
    req.count_only = true;
    let started = std::time::Instant::now();
    let resp = read::range(
        &index,
        &req,
        KEYS as i64,
        true,
        |_| -> Result<Option<Vec<u8>>, _> { panic!("a count fetches no record") },
    )
    .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(resp.count, KEYS as u64);
    let chunks = KEYS.div_ceil(read::KEYS_PER_LOCK) as u32;
    let per_chunk = elapsed / chunks;
    println!("count of {KEYS} keys: {elapsed:?}, {per_chunk:?} per lock hold");
    assert!(
        per_chunk < std::time::Duration::from_millis(20),
        "{per_chunk:?}"
    );
}
