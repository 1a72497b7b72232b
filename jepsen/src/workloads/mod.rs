//! Client workloads. Each logical process is bound to one node (process p
//! talks to node p mod N, like Jepsen's etcd tests) and runs ops back to
//! back until the deadline, recording each in the history.

pub mod append;
pub mod conn;
pub mod lease;
pub mod lock;
pub mod pairs;
pub mod register;
pub mod set;
pub mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::task::JoinHandle;

use crate::checker::{LOCK_PREFIX, UNFENCED_PREFIX};
use crate::history::{History, Pending, Phase, Value};
use conn::OpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Register,
    Set,
    Append,
    Pairs,
    Watch,
    Lease,
    /// Lock, read, fenced write of read + 1, unlock (`lock.rs`).
    Lock,
    /// The same with plain writes: what it finds is reported, not failed.
    LockUnfenced,
}

impl Workload {
    pub fn parse_list(s: &str) -> anyhow::Result<Vec<Workload>> {
        Ok(match s {
            "register" => vec![Workload::Register],
            "set" => vec![Workload::Set],
            "append" => vec![Workload::Append],
            "pairs" => vec![Workload::Pairs],
            "watch" => vec![Workload::Watch],
            "lease" => vec![Workload::Lease],
            "lock" => vec![Workload::Lock],
            "lock-unfenced" => vec![Workload::LockUnfenced],
            "locks" => vec![Workload::Lock, Workload::LockUnfenced],
            "all" => vec![
                Workload::Register,
                Workload::Set,
                Workload::Append,
                Workload::Pairs,
                Workload::Watch,
                Workload::Lease,
                // The fenced variant only: the unfenced one is a report.
                Workload::Lock,
            ],
            other => {
                anyhow::bail!(
                    "unknown workload {other:?} (register, set, append, pairs, watch, lease, \
                     lock, lock-unfenced, locks, all)"
                )
            }
        })
    }
}

#[derive(Clone)]
pub struct Ctx {
    pub history: Arc<History>,
    pub deadline: Instant,
}

impl Ctx {
    pub fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Records an error completion: definite errors are `fail`, the rest
    /// `info`. Returns the phase recorded.
    pub fn fail(&self, op: &Pending, err: OpError) -> Phase {
        let phase = match err {
            OpError::Definite(_) => Phase::Fail,
            OpError::Indeterminate(_) => Phase::Info,
        };
        self.history
            .complete(op, phase, Value::None, Some(err.message()));
        phase
    }

    /// A short random pause between ops, longer after an error so a down
    /// node is not hammered.
    pub async fn stagger(&self, errored: bool) {
        let ms = rand::thread_rng().gen_range(0..20) + if errored { 100 } else { 0 };
        let pause = Duration::from_millis(ms);
        tokio::time::sleep(pause).await;
    }
}

/// Starts `concurrency` processes of `workload`, numbered from `first`.
pub fn spawn(
    workload: Workload,
    ctx: &Ctx,
    addrs: &[String],
    first: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let shared_register = Arc::new(register::Shared::default());
    let shared_set = Arc::new(set::Shared::default());
    let shared_append = Arc::new(append::Shared::default());
    let shared_pairs = Arc::new(pairs::Shared::default());
    let shared_watch = Arc::new(watch::Shared::default());
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let process = first + i;
        let conn = conn::NodeConn::new(&addrs[process % addrs.len()])?;
        let ctx = ctx.clone();
        let p = process as i64;
        tasks.push(match workload {
            Workload::Register => {
                tokio::spawn(register::run(ctx, p, conn, shared_register.clone()))
            }
            Workload::Set => tokio::spawn(set::run(ctx, p, conn, shared_set.clone())),
            Workload::Append => tokio::spawn(append::run(ctx, p, conn, shared_append.clone())),
            Workload::Pairs => tokio::spawn(pairs::run(ctx, p, conn, shared_pairs.clone())),
            // The writers; the watchers run beside them (`watch::Watchers`).
            Workload::Watch => tokio::spawn(watch::run(ctx, p, conn, shared_watch.clone())),
            // Keepers over every member, reads rotating through them.
            Workload::Lease => tokio::spawn(lease::run(ctx, p, addrs.to_vec())),
            // Through the client over every member, as lock users call.
            Workload::Lock => {
                let client = lock::client(addrs)?;
                tokio::spawn(lock::run(ctx, p, client, LOCK_PREFIX, true))
            }
            Workload::LockUnfenced => {
                let client = lock::client(addrs)?;
                tokio::spawn(lock::run(ctx, p, client, UNFENCED_PREFIX, false))
            }
        });
    }
    Ok(tasks)
}

/// After healing: one linearizable read of the workload's whole key space,
/// tried on each node in turn until one answers.
pub async fn final_read(workload: Workload, history: &History, addrs: &[String], process: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    loop {
        let mut conn = match conn::NodeConn::new(&addrs[i % addrs.len()]) {
            Ok(c) => c,
            Err(_) => return,
        };
        let done = match workload {
            Workload::Register | Workload::Pairs => true,
            Workload::Set => set::final_read(history, process, &mut conn).await,
            Workload::Append => append::final_read(history, process, &mut conn).await,
            Workload::Watch => watch::final_read(history, process, &mut conn).await,
            Workload::Lease => lease::final_read(history, process, &mut conn).await,
            Workload::Lock => lock::final_read(history, process, addrs, LOCK_PREFIX).await,
            Workload::LockUnfenced => {
                lock::final_read(history, process, addrs, UNFENCED_PREFIX).await
            }
        };
        if done || Instant::now() > deadline {
            return;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
