//! WAL micro-benchmark.
//!
//! `cargo run --release -p nines-log --example wal_bench -- [dir]`
//!
//! Prints the disk's floor (4 KiB append + fdatasync) and, for 1, 16 and 256
//! entries per batch (256-byte values), throughput and batch latency. The
//! default directory sits under the workspace's `target/`, i.e. on the same
//! disk as builds; a given `dir` gets a scratch subdirectory that is removed.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nines_log::{LogOptions, LogStore};
use nines_types::{Command, Entry, LogId, Request};
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload};

const VALUE_BYTES: usize = 256;
const RUN_FOR: Duration = Duration::from_secs(2);
const MAX_BATCHES: usize = 20_000;

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_micros()
}

fn disk_floor(dir: &Path) -> (u128, u128) {
    let path = dir.join("floor.dat");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create floor file");
    let block = vec![0xabu8; 4096];
    let mut samples = Vec::with_capacity(500);
    for i in 0..500u64 {
        let t = Instant::now();
        f.write_all_at(&block, i * 4096).expect("write");
        f.sync_data().expect("fdatasync");
        samples.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    samples.sort();
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

fn entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request::new(Command::Put {
            key: format!("key-{index:012}").into_bytes(),
            value: vec![(index % 251) as u8; VALUE_BYTES],
            lease: 0,
            prev_kv: false,
        })),
    }
}

async fn batches(dir: &Path, per_batch: u64) {
    let mut store = LogStore::open(dir, LogOptions::default()).expect("open log");
    let mut next = 1u64;
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < RUN_FOR && lat.len() < MAX_BATCHES {
        let batch: Vec<Entry> = (next..next + per_batch).map(entry).collect();
        next += per_batch;
        let t = Instant::now();
        store.blocking_append(batch).await.expect("append");
        lat.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    let n = next - 1;
    lat.sort();
    println!(
        "batch {per_batch:>3}: {:>9.0} entries/s  {:>7.2} MB/s (values)  latency p50 {:>6} us  p99 {:>6} us  ({} batches)",
        n as f64 / secs,
        (n as f64 * VALUE_BYTES as f64) / secs / 1e6,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.len(),
    );
}

fn main() {
    let base: PathBuf = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    };
    let base = base.canonicalize().unwrap_or(base);
    let root = base.join(format!("wal_bench.{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("create bench dir");
    println!("dir: {}", root.display());

    let (p50, p99) = disk_floor(&root);
    println!("disk floor (4 KiB write + fdatasync, 500 samples): p50 {p50} us  p99 {p99} us");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for per_batch in [1u64, 16, 256] {
        let dir = root.join(format!("log-{per_batch}"));
        rt.block_on(batches(&dir, per_batch));
    }
    let _ = std::fs::remove_dir_all(&root);
}
