//! Lease workload. Each process holds one long lease, kept alive by
//! nines-client's `LeaseKeeper` through every fault until the run ends,
//! and cycles short ones: grant, keep alive 1-6 s, then abandon (drop the
//! keeper at a recorded time) and wait for the key to go. Every lease has
//! one key `l/<process>/<n>` put with it. TTLs are 3-5 s. About every
//! 150 ms the process reads its prefix, linearizably, through the next
//! member in turn, and records which keys exist.
//!
//! A lease's life is one `F::Lease` op completed with its `LeaseLog`
//! (checker: `checker::lease`). A lease whose keeper hears TTL 0 is done;
//! the process grants a new one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nines_client::{Client, LeaseKeeper, ReadBalance};
use rand::Rng;

use super::conn::NodeConn;
use super::Ctx;
use crate::checker::lease::LeaseLog;
use crate::checker::LEASE_PREFIX;
use crate::history::{History, Pending, Phase, Value, F};

const TTLS: std::ops::RangeInclusive<i64> = 3..=5;
/// How long a short lease is kept before it is abandoned.
const SHORT_LIFE_MS: std::ops::Range<u64> = 1_000..6_000;
/// How long after the run's end the process keeps reading for the keys
/// of abandoned leases to go (the final read after healing decides the
/// rest).
const DRAIN: Duration = Duration::from_secs(20);

/// A lease kept alive.
struct Held {
    op: Pending,
    log: LeaseLog,
    keeper: LeaseKeeper,
    /// When to abandon it (None: keep it to the end).
    abandon_at: Option<Instant>,
}

/// An abandoned lease whose key was not yet seen gone.
struct Abandoned {
    op: Pending,
    log: LeaseLog,
}

struct Process {
    ctx: Ctx,
    process: i64,
    client: Client,
    readers: Vec<NodeConn>,
    next_reader: usize,
    prefix: String,
    next_n: i64,
    long: Option<Held>,
    short: Option<Held>,
    abandoned: Vec<Abandoned>,
}

pub async fn run(ctx: Ctx, process: i64, addrs: Vec<String>) {
    let mut rotated = addrs.clone();
    rotated.rotate_left(process as usize % addrs.len().max(1));
    let mut config = crate::tls::client_config(rotated);
    config.read_balance = ReadBalance::RoundRobin;
    config.request_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_millis(500);
    config.retry_deadline = Duration::from_secs(4);
    let (Ok(client), Ok(readers)) = (
        Client::new(config),
        addrs.iter().map(|a| NodeConn::new(a)).collect(),
    ) else {
        tracing::error!(process, "lease: cannot build clients");
        return;
    };
    let mut p = Process {
        ctx,
        process,
        client,
        readers,
        next_reader: process as usize,
        prefix: format!("{LEASE_PREFIX}{process}/"),
        next_n: 0,
        long: None,
        short: None,
        abandoned: Vec::new(),
    };
    while p.ctx.running() {
        if p.long.is_none() {
            p.long = p.acquire(None).await;
        } else if p.short.is_none() {
            let life = rand::thread_rng().gen_range(SHORT_LIFE_MS);
            p.short = p.acquire(Some(Duration::from_millis(life))).await;
        }
        p.tend();
        p.read().await;
        let pause = rand::thread_rng().gen_range(100..200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    // The run is over: keepers stop, and what was abandoned gets DRAIN
    // to be seen gone.
    for held in [p.long.take(), p.short.take()].into_iter().flatten() {
        p.finish_held(held, false);
    }
    let until = Instant::now() + DRAIN;
    while !p.abandoned.is_empty() && Instant::now() < until {
        p.read().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for a in std::mem::take(&mut p.abandoned) {
        p.ctx
            .history
            .complete(&a.op, Phase::Ok, Value::Lease(a.log), None);
    }
}

impl Process {
    fn history(&self) -> &History {
        &self.ctx.history
    }

    /// Grants a lease, puts its key, starts its keeper. Records the
    /// lease's op (failed or done) itself when it cannot hold it.
    async fn acquire(&mut self, life: Option<Duration>) -> Option<Held> {
        let n = self.next_n;
        self.next_n += 1;
        let key = format!("{}{n}", self.prefix);
        let ttl = rand::thread_rng().gen_range(TTLS);
        // The server starts the countdown after this.
        let granting = self.history().now();
        let op = self
            .history()
            .invoke(self.process, F::Lease, &key, Value::Int(ttl));
        let grant = match self.client.lease_grant(ttl, 0).await {
            Ok(g) => g,
            Err(e) => {
                let phase = if e.is_indeterminate() {
                    Phase::Info
                } else {
                    Phase::Fail
                };
                self.history()
                    .complete(&op, phase, Value::None, Some(e.to_string()));
                self.ctx.stagger(true).await;
                return None;
            }
        };
        let mut log = LeaseLog {
            lease: grant.id,
            ttl: grant.ttl,
            prefix: self.prefix.clone(),
            n,
            alive_until: granting + secs(grant.ttl),
            ..Default::default()
        };
        let put = self
            .history()
            .invoke(self.process, F::Write, &key, Value::Int(n));
        match self
            .client
            .put_with_lease(key.clone(), n.to_string(), grant.id)
            .await
        {
            Ok(_) => {
                self.history().complete(&put, Phase::Ok, Value::None, None);
                log.put_end = Some(self.history().now());
            }
            Err(e) => {
                let phase = if e.is_indeterminate() {
                    Phase::Info
                } else {
                    Phase::Fail
                };
                self.history()
                    .complete(&put, phase, Value::None, Some(e.to_string()));
                // The key may exist: revoking removes it either way. The
                // lease is not checked (no acknowledged key).
                let _ = self.client.lease_revoke(grant.id).await;
                self.history()
                    .complete(&op, Phase::Info, Value::Lease(log), Some(e.to_string()));
                self.ctx.stagger(true).await;
                return None;
            }
        }
        match self.client.lease_keep_alive(grant.id).await {
            Ok(keeper) => Some(Held {
                op,
                log,
                keeper,
                abandon_at: life.map(|d| Instant::now() + d),
            }),
            Err(e) => {
                // Not kept alive at all: its key must go like an abandoned one's.
                log.keeper_error = Some(e.to_string());
                log.abandoned_at = Some(self.history().now());
                self.abandoned.push(Abandoned { op, log });
                None
            }
        }
    }

    /// Abandons a short lease that is due; ends leases whose keeper
    /// heard TTL 0 or stopped.
    fn tend(&mut self) {
        for slot in [0, 1] {
            let held = if slot == 0 {
                &mut self.long
            } else {
                &mut self.short
            };
            let Some(h) = held.as_ref() else { continue };
            let state = h.keeper.state();
            let due = h.abandon_at.is_some_and(|at| Instant::now() >= at);
            if state.expired || state.failed.is_some() || due {
                let h = held.take().expect("checked");
                self.finish_held(h, due && !state.expired);
            }
        }
    }

    /// Stops keeping `h` alive: records the keeper's figures; an
    /// abandoned lease waits to be seen gone, any other is done.
    fn finish_held(&mut self, h: Held, abandon: bool) {
        let state = h.keeper.state();
        let now = self.history().now();
        let mut log = h.log;
        let at = |t: tokio::time::Instant| self.history().at(t.into_std());
        if let Some(until) = state.alive_until() {
            log.alive_until = log.alive_until.max(at(until));
        }
        log.lapses = state
            .lapses
            .iter()
            .map(|l| (at(l.from), at(l.to)))
            .collect();
        log.renewals = state.renewals;
        log.reconnects = state.reconnects;
        log.keeper_error = state.failed.map(|(code, m)| format!("{code:?}: {m}"));
        if state.expired {
            log.expired_at = Some(now);
        }
        // Dropping the keeper ends its stream: no keepalive after this.
        drop(h.keeper);
        if abandon {
            log.abandoned_at = Some(self.history().now());
            self.abandoned.push(Abandoned { op: h.op, log });
        } else {
            self.history()
                .complete(&h.op, Phase::Ok, Value::Lease(log), None);
        }
    }

    /// One linearizable read of the prefix through the next member;
    /// abandoned leases whose key is gone are done.
    async fn read(&mut self) {
        let i = self.next_reader % self.readers.len();
        self.next_reader += 1;
        let op = self
            .history()
            .invoke(self.process, F::Read, &self.prefix, Value::None);
        let prefix = self.prefix.clone();
        match self.readers[i].range_prefix_at(&prefix, false).await {
            Ok(resp) => {
                let present: Vec<i64> = resp
                    .kvs
                    .iter()
                    .filter_map(|kv| {
                        std::str::from_utf8(&kv.key)
                            .ok()?
                            .strip_prefix(&prefix)?
                            .parse()
                            .ok()
                    })
                    .collect();
                self.history()
                    .complete(&op, Phase::Ok, Value::Set(present.clone()), None);
                let (gone, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.abandoned)
                    .into_iter()
                    .partition(|a| !present.contains(&a.log.n));
                self.abandoned = waiting;
                for a in gone {
                    self.history()
                        .complete(&a.op, Phase::Ok, Value::Lease(a.log), None);
                }
            }
            Err(e) => {
                self.ctx.fail(&op, e);
            }
        }
    }
}

fn secs(s: i64) -> u64 {
    s.max(0) as u64 * 1_000_000_000
}

/// After healing: one linearizable Range over `l/`, recorded as
/// key -> [value] (the checker asks which abandoned keys are left).
pub async fn final_read(history: &History, process: i64, conn: &mut NodeConn) -> bool {
    let op = history.invoke(process, F::FinalRead, LEASE_PREFIX, Value::None);
    match conn.range_prefix_at(LEASE_PREFIX, false).await {
        Ok(resp) => {
            let mut seen = BTreeMap::new();
            for kv in &resp.kvs {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                seen.insert(key, Some(vec![super::conn::int_of(kv).unwrap_or(i64::MIN)]));
            }
            history.complete(&op, Phase::Ok, Value::Lists(seen), None);
            true
        }
        Err(e) => {
            history.complete(&op, Phase::Fail, Value::None, Some(e.message()));
            false
        }
    }
}
