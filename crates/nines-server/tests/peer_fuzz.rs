//! Property test of the peer decoder and the Raft handlers: random bytes,
//! mutated valid messages and random structured messages must never panic,
//! never make the decoder allocate more than a small multiple of the input,
//! and never stop the Raft core.
//!
//! Cases: `NINES_FUZZ_CASES` (default 1,000,000 decode-and-guard cases) and
//! `NINES_FUZZ_HANDLER_CASES` (default 20,000 through a live Raft node), with
//! `NINES_FUZZ_SEED` to vary the seed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nines_log::{LogOptions, LogStore};
use nines_proto::raft_server::Raft as _;
use nines_proto::RaftRequest;
use nines_server::metrics::Counters;
use nines_server::network::guard::{self, GuardLimits, View};
use nines_server::network::RaftService;
use nines_state::{StateMachine, StateOptions};
use nines_types::{codec, Command, Entry, Node, NodeId, Request, StoredMembership, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, Vote};

mod common;
use common::NoNetwork;

// ---- allocation tracking: the largest single allocation while decoding ----

struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
}
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACK.with(|t| t.get()) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACK.with(|t| t.get()) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Decodes with allocation tracking on; returns the largest allocation.
fn tracked<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    TRACK.with(|t| t.set(true));
    let out = f();
    TRACK.with(|t| t.set(false));
    (out, LARGEST.load(Ordering::Relaxed))
}

// ---- a small deterministic generator (no dependency needed) ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max as u64 + 1) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
    /// Terms and indexes: small, near the edges, or anything.
    fn number(&mut self) -> u64 {
        match self.below(6) {
            0 => self.below(5),
            1 => self.below(200),
            2 => u64::MAX - self.below(3),
            3 => 1 << self.below(64),
            _ => self.next(),
        }
    }
    fn node(&mut self) -> NodeId {
        [0, 1, 2, 3, 4, 99, u64::MAX][self.below(7) as usize]
    }
}

fn log_id(rng: &mut Rng) -> Option<LogId<NodeId>> {
    rng.chance(80).then(|| {
        LogId::new(
            CommittedLeaderId::new(rng.number(), rng.node()),
            rng.number(),
        )
    })
}

fn membership(rng: &mut Rng) -> Membership<NodeId, Node> {
    let nodes: BTreeMap<NodeId, Node> = (0..rng.below(5))
        .map(|_| (rng.node(), Node::new("127.0.0.1:1", "")))
        .collect();
    let configs = (0..rng.below(3))
        .map(|_| {
            (0..rng.below(4))
                .map(|_| rng.node())
                .collect::<BTreeSet<_>>()
        })
        .collect::<Vec<_>>();
    // Membership::new panics on a voter without a node; build a valid one
    // and let the byte mutations produce the invalid shapes.
    let configs: Vec<BTreeSet<NodeId>> = configs
        .into_iter()
        .map(|c| c.into_iter().filter(|id| nodes.contains_key(id)).collect())
        .collect();
    Membership::new(configs, nodes)
}

fn entry(rng: &mut Rng, index: u64, term: u64) -> Entry {
    let payload = match rng.below(4) {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Membership(membership(rng)),
        _ => EntryPayload::Normal(Request::new(Command::Put {
            key: rng.bytes(16),
            value: rng.bytes(64),
            lease: 0,
            prev_kv: rng.chance(50),
        })),
    };
    openraft::Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload,
    }
}

fn vote(rng: &mut Rng) -> Vote<NodeId> {
    let mut v = Vote::new(rng.number(), rng.node());
    if rng.chance(60) {
        v.commit();
    }
    v
}

fn append(rng: &mut Rng) -> AppendEntriesRequest<TypeConfig> {
    let prev = log_id(rng);
    let mut index = prev.map(|l| l.index.wrapping_add(1)).unwrap_or(0);
    let term = rng.number();
    let entries = (0..rng.below(4))
        .map(|_| {
            let at = if rng.chance(80) { index } else { rng.number() };
            let e = entry(rng, at, term);
            index = index.wrapping_add(1);
            e
        })
        .collect();
    AppendEntriesRequest {
        vote: vote(rng),
        prev_log_id: prev,
        entries,
        leader_commit: log_id(rng),
    }
}

fn snapshot(rng: &mut Rng) -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote: vote(rng),
        meta: SnapshotMeta {
            last_log_id: log_id(rng),
            last_membership: StoredMembership::new(log_id(rng), membership(rng)),
            snapshot_id: format!("s{}", rng.below(3)),
        },
        offset: if rng.chance(50) {
            rng.below(4096)
        } else {
            rng.number()
        },
        data: rng.bytes(256),
        done: rng.chance(30),
    }
}

/// A vote a member could really send: a low term, from node 2 or 3.
fn plausible(rng: &mut Rng, committed: bool) -> Vote<NodeId> {
    let mut v = Vote::new(1 + rng.below(8), 2 + rng.below(2));
    if committed {
        v.commit();
    }
    v
}

/// A message as bytes: structured (half of them plausible enough to reach
/// openraft), mutated or random.
fn message(rng: &mut Rng) -> (u8, Vec<u8>) {
    let kind = rng.below(3) as u8;
    let real = rng.chance(50);
    let mut bytes = match kind {
        0 => {
            let mut rpc = append(rng);
            if real {
                rpc.vote = plausible(rng, true);
                let term = rpc.vote.leader_id.term;
                let prev = rng.below(6);
                rpc.prev_log_id = (prev > 0)
                    .then(|| LogId::new(CommittedLeaderId::new(rng.below(term + 1), 1), prev));
                rpc.entries = (0..rng.below(4))
                    .map(|i| entry(rng, prev + 1 + i, term))
                    .collect();
                rpc.leader_commit = rng
                    .chance(70)
                    .then(|| LogId::new(CommittedLeaderId::new(term, 1), rng.below(10)));
            }
            codec::encode(&rpc).unwrap()
        }
        1 => {
            let v = if real {
                plausible(rng, false)
            } else {
                vote(rng)
            };
            codec::encode(&VoteRequest::new(v, log_id(rng))).unwrap()
        }
        _ => {
            let mut rpc = snapshot(rng);
            if real {
                rpc.vote = plausible(rng, true);
                rpc.offset = rng.below(512);
            }
            codec::encode(&rpc).unwrap()
        }
    };
    if real && rng.chance(60) {
        return (kind, bytes);
    }
    match rng.below(5) {
        0 => {}
        1 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.next() as u8;
            }
        }
        2 => {
            // A large varint length prefix somewhere.
            let at = rng.below(bytes.len() as u64) as usize;
            let mut prefix = vec![[0xfb, 0xfc, 0xfd][rng.below(3) as usize]];
            prefix.extend_from_slice(&rng.next().to_le_bytes());
            bytes.splice(at..at, prefix);
        }
        3 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
        _ => bytes = rng.bytes(64),
    }
    (kind, bytes)
}

fn cases(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    cases("NINES_FUZZ_SEED", 0x4f1b_bcdc_bfa5_3e0b)
        .wrapping_mul(2)
        .wrapping_add(1)
}

fn three_voters() -> StoredMembership {
    let nodes: BTreeMap<NodeId, Node> = (1..=3)
        .map(|id| (id, Node::new(format!("127.0.0.1:{id}"), "")))
        .collect();
    StoredMembership::new(
        Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
        Membership::new(vec![(1..=3).collect()], nodes),
    )
}

#[test]
fn decode_and_guard_never_panic_nor_allocate_by_the_wire() {
    let mut rng = Rng(seed());
    let membership = three_voters();
    let vote = Vote::new_committed(5, 2);
    let view = View {
        me: 1,
        current_term: 5,
        membership: &membership,
        vote: &vote,
        leaderless_for: std::time::Duration::ZERO,
    };
    let limits = GuardLimits::default();
    let total = cases("NINES_FUZZ_CASES", 1_000_000);
    let (mut decoded, mut passed) = (0u64, 0u64);
    for _ in 0..total {
        let (kind, bytes) = message(&mut rng);
        // The decoder may allocate up to its limit tier (a bounded
        // multiple of the input, at least 16 KiB) and serde's cautious
        // 1 MiB hint for sequences; never what a length prefix claims.
        let bound = nines_types::codec::decode_limit(bytes.len()).unwrap() + (1 << 20);
        let ok = match kind {
            0 => {
                let (r, largest) =
                    tracked(|| codec::decode::<AppendEntriesRequest<TypeConfig>>(&bytes));
                assert!(
                    largest <= bound,
                    "{largest} bytes allocated for {} bytes",
                    bytes.len()
                );
                r.ok()
                    .map(|rpc| guard::check_append(&rpc, &view, &limits).is_ok())
            }
            1 => {
                let (r, largest) = tracked(|| codec::decode::<VoteRequest<NodeId>>(&bytes));
                assert!(
                    largest <= bound,
                    "{largest} bytes allocated for {} bytes",
                    bytes.len()
                );
                r.ok()
                    .map(|rpc| guard::check_vote(&rpc, &view, &limits).is_ok())
            }
            _ => {
                let (r, largest) =
                    tracked(|| codec::decode::<InstallSnapshotRequest<TypeConfig>>(&bytes));
                assert!(
                    largest <= bound,
                    "{largest} bytes allocated for {} bytes",
                    bytes.len()
                );
                r.ok()
                    .map(|rpc| guard::check_snapshot(&rpc, &view, &limits).is_ok())
            }
        };
        decoded += ok.is_some() as u64;
        passed += (ok == Some(true)) as u64;
    }
    eprintln!("{total} cases: {decoded} decoded, {passed} passed the guard");
    // The generator must reach both sides of the decoder and the guard.
    assert!(decoded > total / 10 && passed > 0 && passed < decoded);
}

// ---- the handlers, in front of a live Raft node ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_handlers_survive_hostile_messages() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogStore::open(&dir.path().join("log"), LogOptions::default()).unwrap();
    let state = StateMachine::open(&dir.path().join("state"), StateOptions::default())
        .await
        .unwrap();
    let raft = openraft::Raft::new(1, common::raft_config(), NoNetwork, log, state)
        .await
        .unwrap();
    let members: BTreeMap<NodeId, Node> = (1..=3)
        .map(|id| (id, Node::new(format!("127.0.0.1:{id}"), "")))
        .collect();
    raft.initialize(members).await.unwrap();
    let service = RaftService::new(1, 7, raft.clone(), Arc::new(Counters::default()));

    let mut rng = Rng(seed() ^ 0xdead_beef);
    let total = cases("NINES_FUZZ_HANDLER_CASES", 20_000);
    let mut answered = 0u64;
    for _ in 0..total {
        let (kind, data) = message(&mut rng);
        let request = || {
            tonic::Request::new(RaftRequest {
                target: 1,
                cluster_id: 7,
                data: data.clone(),
            })
        };
        let reply = match kind {
            0 => service.append_entries(request()).await,
            1 => service.vote(request()).await,
            _ => service.install_snapshot(request()).await,
        };
        answered += reply.is_ok() as u64;
        // A panicked core drops its metrics sender; a fatal error sets
        // running_state.
        let metrics = raft.metrics();
        assert!(
            metrics.has_changed().is_ok(),
            "the Raft core is gone (panicked)"
        );
        let running = metrics.borrow().running_state.clone();
        if let Err(e) = running {
            panic!("the Raft core stopped: {e}");
        }
    }
    eprintln!("{total} handler cases, {answered} reached openraft");
    assert!(answered > 0, "the generator never got past the guard");
    raft.shutdown().await.unwrap();
}
