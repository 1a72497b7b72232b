//! Helpers shared by the nines-log integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use nines_log::{LogOptions, LogStore};
use nines_types::{Command, Entry, LogId, Request};
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// A Put entry whose key and value identify it.
pub fn entry(term: u64, index: u64, value: &[u8]) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request::new(Command::Put {
            key: format!("k{index}").into_bytes(),
            value: value.to_vec(),
            lease: 0,
            prev_kv: false,
        })),
    }
}

/// The value of a Put entry built by [`entry`].
pub fn value_of(e: &Entry) -> Vec<u8> {
    match &e.payload {
        EntryPayload::Normal(Request {
            command: Command::Put { value, .. },
            ..
        }) => value.clone(),
        other => panic!("unexpected payload {other:?}"),
    }
}

/// A value unique to `index` whose size varies with it.
pub fn value_for(index: u64) -> Vec<u8> {
    let mut v = format!("value-{index}-").into_bytes();
    v.resize(
        v.len() + (index as usize * 37) % 300,
        b'a' + (index % 26) as u8,
    );
    v
}

pub fn entries(term: u64, range: std::ops::Range<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i, &value_for(i))).collect()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn open(dir: &Path) -> LogStore {
    open_with(dir, LogOptions::default())
}

pub fn open_small(dir: &Path) -> LogStore {
    open_with(dir, LogOptions::with_segment_bytes(4096))
}

/// Opens, waiting out the directory lock of a store the test just dropped:
/// the background flusher may hold the last reference (and with it the
/// lock) until its sync in progress ends.
fn open_with(dir: &Path, options: LogOptions) -> LogStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match LogStore::open(dir, options.clone()) {
            Err(nines_log::LogError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result.unwrap(),
        }
    }
}

pub async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    store.blocking_append(entries).await.unwrap();
}

/// Appends the entries of `range` (term 1) in batches of `batch`.
pub async fn append_batches(store: &mut LogStore, range: std::ops::Range<u64>, batch: u64) {
    for i in range.clone().step_by(batch as usize) {
        append(store, entries(1, i..(i + batch).min(range.end))).await;
    }
}

pub async fn read_all(store: &mut LogStore) -> Vec<Entry> {
    store.try_get_log_entries(..).await.unwrap()
}

pub fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

/// Segment files in `dir`, sorted.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// Offsets of the records in a segment file (format: 12-byte header, then
/// `[u32 len][u32 crc][u8 type][payload]`), with their type byte. Stops at
/// the zero-filled space preallocated past the last record.
pub fn record_offsets(path: &Path) -> Vec<(u64, u8, u64)> {
    let data = std::fs::read(path).unwrap();
    let mut off = 12usize;
    let mut out = Vec::new();
    while off + 9 <= data.len() && data[off..off + 9].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        out.push((off as u64, data[off + 8], (9 + len) as u64));
        off += 9 + len;
    }
    out
}
