//! Watch workload, after Jepsen's etcd watch test. Writers (bound to nodes)
//! put unique values to a few keys `w/0..w/7` and sometimes delete one,
//! recording each acknowledged write's committed revision. Watchers, each
//! with its own client over every node, follow `w/` from revision 1 with
//! prev_kv through every fault (the client resumes on another member when
//! its stream breaks) and record every event.
//!
//! Draining: after healing and the final read, a sentinel put `w/end` is
//! made; a watcher that delivered it has delivered everything up to the
//! final read's revision (events are in revision order). Watchers that do
//! not get there within `DRAIN_TIMEOUT` are stopped and recorded as
//! stalled; the checker decides from the revision they reached.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nines_client::proto::mvccpb;
use nines_client::{Client, ReadBalance, WatchError, WatchOptions, WatchUpdate};
use rand::Rng;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use super::conn::{int_of, NodeConn, OpError};
use super::Ctx;
use crate::checker::watch::{Segment, WatchEvent, WatchLog};
use crate::checker::WATCH_PREFIX;
use crate::history::{History, Phase, Value, F};

/// Few keys, so prev_kv chains are long and deletes find something.
const KEYS: i64 = 8;
/// Share of writes that are deletes.
const DELETE_RATE: f64 = 0.15;
/// Watchers per run: enough to start on different members.
pub const WATCHERS: usize = 3;
/// How long watchers may take to reach the sentinel after healing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The sentinel key, outside `w/0..w/7`.
const SENTINEL: &str = "w/end";
/// Where the final read's header revision goes in its recorded value.
pub const REVISION_KEY: &str = "revision";

#[derive(Default)]
pub struct Shared {
    next: AtomicI64,
}

pub async fn run(ctx: Ctx, process: i64, mut conn: NodeConn, shared: Arc<Shared>) {
    while ctx.running() {
        let key = format!("{WATCH_PREFIX}{}", rand::thread_rng().gen_range(0..KEYS));
        let errored = if rand::thread_rng().gen_bool(DELETE_RATE) {
            let op = ctx.history.invoke(process, F::Delete, &key, Value::None);
            match conn.delete_at(&key).await {
                Ok((revision, deleted)) => {
                    let rev = Value::Rev {
                        revision,
                        changed: deleted > 0,
                    };
                    ctx.history.complete(&op, Phase::Ok, rev, None);
                    false
                }
                Err(e) => {
                    ctx.fail(&op, e);
                    true
                }
            }
        } else {
            let x = shared.next.fetch_add(1, Ordering::Relaxed);
            match put(&ctx.history, process, &mut conn, &key, x).await {
                Ok(_) => false,
                Err((op, e)) => {
                    ctx.fail(&op, e);
                    true
                }
            }
        };
        ctx.stagger(errored).await;
    }
}

/// One recorded put of `x`; the committed revision on success.
async fn put(
    history: &History,
    process: i64,
    conn: &mut NodeConn,
    key: &str,
    x: i64,
) -> Result<i64, (crate::history::Pending, OpError)> {
    let op = history.invoke(process, F::Write, key, Value::Int(x));
    match conn.put_at(key, x.to_string()).await {
        Ok(revision) => {
            let rev = Value::Rev {
                revision,
                changed: true,
            };
            history.complete(&op, Phase::Ok, rev, None);
            Ok(revision)
        }
        Err(e) => Err((op, e)),
    }
}

/// After healing: one linearizable Range over the prefix, recorded as
/// key -> [value] plus its header revision under `REVISION_KEY`.
pub async fn final_read(history: &History, process: i64, conn: &mut NodeConn) -> bool {
    let op = history.invoke(process, F::FinalRead, WATCH_PREFIX, Value::None);
    match conn.range_prefix_at(WATCH_PREFIX, false).await {
        Ok(resp) => {
            let mut seen = BTreeMap::new();
            for kv in &resp.kvs {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                seen.insert(key, Some(vec![int_of(kv).unwrap_or(i64::MIN)]));
            }
            let revision = resp.header.map_or(0, |h| h.revision);
            seen.insert(REVISION_KEY.to_string(), Some(vec![revision]));
            history.complete(&op, Phase::Ok, Value::Lists(seen), None);
            true
        }
        Err(e) => {
            history.complete(&op, Phase::Fail, Value::None, Some(e.message()));
            false
        }
    }
}

/// What the watchers are told after the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Keep following.
    Follow,
    /// Finish once this revision is delivered.
    Until(i64),
    /// Give up where you are.
    Stop,
}

/// The running watchers; `drain` ends them.
pub struct Watchers {
    tasks: Vec<JoinHandle<()>>,
    drain: signal::Sender<Drain>,
}

impl Watchers {
    /// Starts `WATCHERS` watchers numbered from `first`, each on its own
    /// client so they start on (and fail over between) different members.
    pub fn start(history: Arc<History>, addrs: &[String], first: i64) -> anyhow::Result<Watchers> {
        let (drain, rx) = signal::channel(Drain::Follow);
        let mut tasks = Vec::new();
        for i in 0..WATCHERS {
            // Round-robin starts at the first endpoint: each client's list
            // is rotated so each watcher starts on its own member.
            let mut rotated = addrs.to_vec();
            rotated.rotate_left(i % addrs.len());
            let mut config = crate::tls::client_config(rotated);
            config.read_balance = ReadBalance::RoundRobin;
            config.request_timeout = Duration::from_secs(2);
            config.connect_timeout = Duration::from_millis(500);
            let client = Client::new(config)?;
            let process = first + i as i64;
            let op = history.invoke(process, F::Watch, WATCH_PREFIX, Value::None);
            let watcher = Watcher {
                client,
                log: WatchLog::default(),
                rx: rx.clone(),
            };
            let history = history.clone();
            tasks.push(tokio::spawn(async move {
                let (log, stalled) = watcher.follow().await;
                let (phase, error) = match stalled {
                    None => (Phase::Ok, None),
                    Some(why) => (Phase::Info, Some(why)),
                };
                history.complete(&op, phase, Value::Watch(log), error);
            }));
        }
        Ok(Watchers { tasks, drain })
    }

    /// After the final read: makes the sentinel put (through any node, as
    /// `process`), waits for every watcher to deliver it, stops stragglers.
    pub async fn drain(self, history: &History, addrs: &[String], process: i64) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut sentinel = None;
        for attempt in 0.. {
            let mut conn = match NodeConn::new(&addrs[attempt % addrs.len()]) {
                Ok(c) => c,
                Err(_) => break,
            };
            // Negative: never a writer's value.
            let x = -1 - attempt as i64;
            match put(history, process, &mut conn, SENTINEL, x).await {
                Ok(revision) => {
                    sentinel = Some(revision);
                    break;
                }
                Err((op, e)) => {
                    let phase = match e {
                        OpError::Definite(_) => Phase::Fail,
                        OpError::Indeterminate(_) => Phase::Info,
                    };
                    history.complete(&op, phase, Value::None, Some(e.message()));
                }
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Without a sentinel the watchers cannot know they are done: they
        // follow until the timeout and the checker judges what they reached.
        let _ = self.drain.send(Drain::Until(sentinel.unwrap_or(i64::MAX)));
        let mut tasks = self.tasks;
        let all = futures_join(&mut tasks);
        if tokio::time::timeout_at(deadline.into(), all).await.is_err() {
            let _ = self.drain.send(Drain::Stop);
            futures_join(&mut tasks).await;
        }
    }
}

/// Awaits every task still running (a finished one is not polled again).
async fn futures_join(tasks: &mut Vec<JoinHandle<()>>) {
    while let Some(t) = tasks.last_mut() {
        let _ = t.await;
        tasks.pop();
    }
}

struct Watcher {
    client: Client,
    log: WatchLog,
    rx: signal::Receiver<Drain>,
}

impl Watcher {
    /// Follows the prefix until told to finish; returns the log and, when
    /// it did not reach its target, why.
    async fn follow(mut self) -> (WatchLog, Option<String>) {
        let mut start = 1;
        let mut opened = false;
        self.log.segments.push(Segment {
            start,
            reached: 0,
            events: Vec::new(),
        });
        loop {
            let opts = WatchOptions {
                range_end: nines_client::prefix_end(WATCH_PREFIX.as_bytes()),
                start_revision: start,
                prev_kv: true,
                progress_notify: true,
                ..Default::default()
            };
            let client = self.client.clone();
            let watch = tokio::select! {
                w = client.watch(WATCH_PREFIX, opts) => w,
                stop = self.stopped() => return (self.log, Some(stop)),
            };
            let mut watch = match watch {
                Ok(w) => w,
                Err(WatchError::Compacted { compact_revision }) => {
                    start = self.restart(compact_revision);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "watcher: cannot open, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // A watch opened again after one ended is a reconnect too.
            if opened {
                self.log.reconnects += 1;
            }
            opened = true;
            let outcome = self.follow_one(&mut watch, &mut start).await;
            self.log.reconnects += watch.reconnects();
            if let Some(done) = outcome {
                return (self.log, done);
            }
        }
    }

    /// Reads one watch until it ends (None: open another from `start`) or
    /// the watcher is done (Some: why, if it did not reach its target).
    async fn follow_one(
        &mut self,
        watch: &mut nines_client::Watch,
        start: &mut i64,
    ) -> Option<Option<String>> {
        loop {
            if let Some(done) = self.done() {
                return Some(done);
            }
            let update = tokio::select! {
                u = watch.next() => u,
                c = self.rx.changed() => {
                    if c.is_err() {
                        return Some(Some("drain signal dropped".into()));
                    }
                    continue;
                }
            };
            match update {
                Some(Ok(WatchUpdate::Events(events))) => self.record(events),
                Some(Ok(WatchUpdate::Progress { revision })) => {
                    let seg = self.segment();
                    seg.reached = seg.reached.max(revision);
                }
                Some(Err(WatchError::Compacted { compact_revision })) => {
                    *start = self.restart(compact_revision);
                    return None;
                }
                // Canceled by the server, or the stream ended:
                // resume where this segment is, like the client would.
                Some(Err(e)) => {
                    tracing::info!(error = %e, "watcher: watch ended, resuming");
                    *start = self.segment().reached + 1;
                    return None;
                }
                None => {
                    *start = self.segment().reached + 1;
                    return None;
                }
            }
        }
    }

    fn segment(&mut self) -> &mut Segment {
        self.log
            .segments
            .last_mut()
            .expect("a segment from the start")
    }

    /// Compaction: a new segment from the oldest revision still kept.
    fn restart(&mut self, compact_revision: i64) -> i64 {
        tracing::warn!(compact_revision, "watcher: compacted, restarting there");
        self.log.segments.push(Segment {
            start: compact_revision,
            reached: compact_revision - 1,
            events: Vec::new(),
        });
        compact_revision
    }

    fn record(&mut self, events: Vec<mvccpb::Event>) {
        let seg = self.segment();
        for e in events {
            let Some(kv) = e.kv else { continue };
            let value = |v: &[u8]| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(i64::MIN)
            };
            let delete = e.r#type == mvccpb::event::EventType::Delete as i32;
            seg.reached = seg.reached.max(kv.mod_revision);
            seg.events.push(WatchEvent {
                revision: kv.mod_revision,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value: (!delete).then(|| value(&kv.value)),
                prev: e.prev_kv.map(|p| (value(&p.value), p.mod_revision)),
            });
        }
    }

    /// `Some(None)`: reached the target; `Some(Some(why))`: told to stop
    /// short of it.
    fn done(&mut self) -> Option<Option<String>> {
        let reached = self.segment().reached;
        match *self.rx.borrow() {
            Drain::Follow => None,
            Drain::Until(target) if reached >= target => Some(None),
            Drain::Until(_) => None,
            Drain::Stop => Some(Some(format!("watch stalled at revision {reached}"))),
        }
    }

    /// Resolves once told to stop, with why.
    async fn stopped(&mut self) -> String {
        loop {
            if let Some(Some(why)) = self.done() {
                return why;
            }
            if self.rx.changed().await.is_err() {
                return "drain signal dropped".into();
            }
        }
    }
}
