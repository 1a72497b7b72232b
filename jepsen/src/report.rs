//! The run's report: op counts, per-workload verdicts with the evidence for
//! any anomaly, and availability measured from the history itself.
//!
//! Unavailability window: from a fault's injection to the completion of the
//! first ok write invoked at or after it (a write already in flight says
//! nothing about whether the cluster recovered). Availability is
//! uptime / (uptime + downtime) over the run, downtime being the union of
//! the windows. Recovery times are also summarised per kind of fault, so a
//! regression in one kind stands out from the others.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::checker::append::AppendResult;
use crate::checker::lease::LeaseResult;
use crate::checker::lock::LockResult;
use crate::checker::pairs::PairsResult;
use crate::checker::set::SetResult;
use crate::checker::watch::WatchResult;
use crate::checker::RegisterResult;
use crate::history::{Op, Phase, Value, F};
use crate::nemesis::fault_kind;

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub fault: String,
    /// `kill`, `pause`, `partition-halves`, `member`... (see `fault_kind`).
    pub kind: String,
    pub at_secs: f64,
    /// `None`: no write succeeded after the fault before the run ended.
    pub recovery_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_dir: String,
    pub seed: u64,
    pub nodes: u64,
    pub concurrency: usize,
    /// Client TLS with client certificates and peer mutual TLS (`--tls`).
    pub tls: bool,
    pub workloads: Vec<String>,
    pub nemeses: Vec<String>,
    pub duration_secs: f64,
    /// f -> outcome -> count.
    pub ops: BTreeMap<String, BTreeMap<String, usize>>,
    pub total_ops: usize,
    pub ok_rate: f64,
    pub verdicts: BTreeMap<String, String>,
    pub register: Option<RegisterResult>,
    pub set: Option<SetResult>,
    pub append: Option<AppendResult>,
    pub pairs: Option<PairsResult>,
    pub watch: Option<WatchResult>,
    pub lease: Option<LeaseResult>,
    pub lock: Option<LockResult>,
    /// The unfenced lock variant: reported, never failing the run.
    pub lock_unfenced: Option<LockResult>,
    pub windows: Vec<Window>,
    /// Fault kind -> its recovery times.
    pub recovery_by_fault: BTreeMap<String, FaultRecovery>,
    pub max_recovery_ms: Option<f64>,
    pub median_recovery_ms: Option<f64>,
    pub availability: f64,
    /// Server processes that exited on their own, and calls a server
    /// refused as unimplemented.
    pub crashes: Vec<String>,
    pub proxy: BTreeMap<String, u64>,
    pub valid: bool,
}

/// Recovery times of one kind of fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultRecovery {
    pub count: usize,
    /// Faults after which no write succeeded before the run ended.
    pub never: usize,
    /// Over the faults that did recover; `None` when none did.
    pub median_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

fn name<T: Serialize>(x: &T) -> String {
    serde_json::to_value(x)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn count_ops(ops: &[Op]) -> (BTreeMap<String, BTreeMap<String, usize>>, usize, f64) {
    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let (mut total, mut ok) = (0, 0);
    for op in ops
        .iter()
        .filter(|o| !matches!(o.f, F::Nemesis | F::FinalRead | F::Watch | F::Lease))
    {
        *counts
            .entry(name(&op.f))
            .or_default()
            .entry(name(&op.phase))
            .or_default() += 1;
        total += 1;
        ok += usize::from(op.phase == Phase::Ok);
    }
    let rate = if total == 0 {
        0.0
    } else {
        ok as f64 / total as f64
    };
    (counts, total, rate)
}

/// How tonic shows `Code::Unimplemented` in an error's text.
const UNIMPLEMENTED: &str = "Operation is not implemented or not supported";

/// Calls the server answered UNIMPLEMENTED, per kind of op: a server that
/// refuses a call it serves elsewhere (a forward to a port without the
/// service) is a defect no fault explains, and a workload that cannot run
/// proves nothing.
pub fn unimplemented(ops: &[Op]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for op in ops {
        if op
            .error
            .as_deref()
            .is_some_and(|e| e.contains(UNIMPLEMENTED))
        {
            *counts.entry(name(&op.f)).or_default() += 1;
        }
    }
    counts
}

/// Unavailability windows and availability over `duration_ns`.
pub fn windows(ops: &[Op], duration_ns: u64) -> (Vec<Window>, f64) {
    let mut writes: Vec<(u64, u64)> = ops
        .iter()
        .filter(|o| o.f.is_write() && o.phase == Phase::Ok)
        .filter_map(|o| o.end.map(|e| (o.start, e)))
        .collect();
    writes.sort_unstable();
    let mut out = Vec::new();
    let mut spans = Vec::new();
    for fault in ops.iter().filter(|o| o.f == F::Nemesis) {
        let at = fault.start;
        let first = writes
            .iter()
            .filter(|(s, _)| *s >= at)
            .map(|(_, e)| *e)
            .min();
        let end = first.unwrap_or(duration_ns);
        spans.push((at, end));
        // The completion says what was done; the invocation only names it.
        let desc = match (&fault.output, &fault.input) {
            (Value::Text(t), _) | (_, Value::Text(t)) => t.clone(),
            _ => fault.key.clone(),
        };
        out.push(Window {
            kind: fault_kind(&fault.key, &desc),
            fault: desc,
            at_secs: at as f64 / 1e9,
            recovery_ms: first.map(|e| (e - at) as f64 / 1e6),
        });
    }
    spans.sort_unstable();
    let mut down = 0u64;
    let mut cursor = 0u64;
    for (s, e) in spans {
        let s = s.max(cursor);
        if e > s {
            down += e - s;
            cursor = e;
        }
    }
    let availability = if duration_ns == 0 {
        1.0
    } else {
        1.0 - down.min(duration_ns) as f64 / duration_ns as f64
    };
    (out, availability)
}

pub fn recovery_stats(windows: &[Window]) -> (Option<f64>, Option<f64>) {
    let mut times: Vec<f64> = windows.iter().filter_map(|w| w.recovery_ms).collect();
    times.sort_by(f64::total_cmp);
    recovery_stats_sorted(&times)
}

/// (max, median) of sorted recovery times.
fn recovery_stats_sorted(times: &[f64]) -> (Option<f64>, Option<f64>) {
    let max = times.last().copied();
    let median = (!times.is_empty()).then(|| times[times.len() / 2]);
    (max, median)
}

/// The value at quantile `q` (nearest rank) of sorted `xs`.
fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    let rank = (q * xs.len() as f64).ceil() as usize;
    xs.get(rank.clamp(1, xs.len().max(1)) - 1).copied()
}

pub fn recovery_by_fault(windows: &[Window]) -> BTreeMap<String, FaultRecovery> {
    let mut by_kind: BTreeMap<String, Vec<&Window>> = BTreeMap::new();
    for w in windows {
        by_kind.entry(w.kind.clone()).or_default().push(w);
    }
    by_kind
        .into_iter()
        .map(|(kind, ws)| {
            let mut times: Vec<f64> = ws.iter().filter_map(|w| w.recovery_ms).collect();
            times.sort_by(f64::total_cmp);
            let (max, median) = recovery_stats_sorted(&times);
            let stats = FaultRecovery {
                count: ws.len(),
                never: ws.len() - times.len(),
                median_ms: median,
                p90_ms: quantile(&times, 0.9),
                max_ms: max,
            };
            (kind, stats)
        })
        .collect()
}

impl Report {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    pub fn print(&self) {
        println!("== nines-jepsen report ==");
        println!(
            "nodes {}  concurrency {}  seed {}  tls {}  workloads {:?}  nemeses {:?}  {:.1}s",
            self.nodes,
            self.concurrency,
            self.seed,
            if self.tls { "on" } else { "off" },
            self.workloads,
            self.nemeses,
            self.duration_secs
        );
        println!(
            "ops: {} total, ok rate {:.1}%",
            self.total_ops,
            self.ok_rate * 100.0
        );
        for (f, by) in &self.ops {
            println!("  {f:<11} {by:?}");
        }
        for (w, v) in &self.verdicts {
            println!("verdict {w}: {v}");
        }
        if let Some(r) = &self.register {
            for a in &r.anomalies {
                println!(
                    "  NOT LINEARIZABLE {}: op {} cannot follow a prefix of {} ops ending in state {:?}",
                    a.key, a.stuck_op, a.linearized_prefix, a.state_before
                );
                for op in &a.ops {
                    println!("    {}", serde_json::to_string(op).unwrap_or_default());
                }
            }
            if !r.unknown_keys.is_empty() {
                println!("  UNKNOWN (search budget exceeded): {:?}", r.unknown_keys);
            }
        }
        if let Some(s) = &self.set {
            if !s.valid() {
                println!(
                    "  set anomalies: {}",
                    serde_json::to_string(s).unwrap_or_default()
                );
            }
        }
        if let Some(a) = &self.append {
            if !a.valid() {
                println!(
                    "  append anomalies: {}",
                    serde_json::to_string(a).unwrap_or_default()
                );
            }
        }
        for l in [&self.lock, &self.lock_unfenced].into_iter().flatten() {
            let which = if l.fenced { "lock" } else { "lock-unfenced" };
            for p in l.lost_updates.iter().take(10) {
                println!("  {which} lost update: {p:?}");
            }
            for p in l.fences_out_of_order.iter().take(10) {
                println!("  {which} fences out of order: {p:?}");
            }
        }
        if let Some(w) = &self.watch {
            for a in &w.anomalies {
                println!(
                    "  watch {:?} (watcher {}, revision {}): {}",
                    a.kind, a.watcher, a.revision, a.detail
                );
            }
        }
        if let Some(l) = &self.lease {
            for a in &l.anomalies {
                println!(
                    "  lease {:?} {:016x} {} (read op {:?}): {}",
                    a.kind,
                    a.lease,
                    a.key,
                    a.op,
                    serde_json::to_string(&a.log).unwrap_or_default()
                );
            }
        }
        for w in &self.windows {
            let rec = w
                .recovery_ms
                .map_or("never".to_string(), |ms| format!("{ms:.0} ms"));
            println!(
                "  fault at {:>6.1}s  {:<40} recovered after {rec}",
                w.at_secs, w.fault
            );
        }
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |ms| format!("{ms:.0} ms"));
        println!(
            "recovery by fault:          {:>5} {:>5} {:>9} {:>9} {:>9}",
            "count", "never", "median", "p90", "max"
        );
        for (kind, r) in &self.recovery_by_fault {
            println!(
                "  {kind:<25} {:>5} {:>5} {:>9} {:>9} {:>9}",
                r.count,
                r.never,
                fmt(r.median_ms),
                fmt(r.p90_ms),
                fmt(r.max_ms)
            );
        }
        println!(
            "recovery: max {}  median {}  availability {:.3}%",
            fmt(self.max_recovery_ms),
            fmt(self.median_recovery_ms),
            self.availability * 100.0
        );
        if !self.crashes.is_empty() {
            println!("server defects: {:?}", self.crashes);
        }
        println!("proxy: {:?}", self.proxy);
        println!("run dir: {}", self.run_dir);
        println!("VALID: {}", self.valid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, f: F, phase: Phase, start: u64, end: Option<u64>) -> Op {
        Op {
            id,
            process: 0,
            f,
            key: "k".into(),
            input: Value::None,
            output: Value::None,
            phase,
            start,
            end,
            error: None,
        }
    }

    #[test]
    fn calls_answered_unimplemented_are_counted_per_kind() {
        let mut refused = op(1, F::Lease, Phase::Fail, 0, Some(1));
        refused.error = Some(format!("{}", tonic::Status::unimplemented("")));
        let mut other = op(2, F::Write, Phase::Fail, 0, Some(1));
        other.error = Some("status: Unavailable".into());
        let counts = unimplemented(&[refused, other, op(3, F::Read, Phase::Ok, 0, Some(1))]);
        assert_eq!(counts, BTreeMap::from([("lease".to_string(), 1)]));
    }

    #[test]
    fn windows_end_at_first_ok_write_invoked_after_the_fault() {
        let ops = vec![
            op(0, F::Nemesis, Phase::Ok, 100, Some(500)),
            // In flight before the fault: does not count.
            op(1, F::Write, Phase::Ok, 90, Some(110)),
            op(2, F::Write, Phase::Info, 120, None),
            op(3, F::Write, Phase::Ok, 200, Some(300)),
            op(4, F::Nemesis, Phase::Ok, 800, Some(900)),
        ];
        let (w, availability) = windows(&ops, 1_000);
        assert_eq!(w[0].recovery_ms, Some(200.0 / 1e6));
        assert_eq!(w[1].recovery_ms, None);
        // Down 100..300 and 800..1000.
        assert!((availability - 0.6).abs() < 1e-9);
        assert_eq!(recovery_stats(&w), (Some(200.0 / 1e6), Some(200.0 / 1e6)));
    }

    fn nemesis(id: u64, name: &str, desc: &str, at: u64) -> Op {
        let mut o = op(id, F::Nemesis, Phase::Ok, at, Some(at + 1));
        o.key = name.into();
        o.output = Value::Text(desc.into());
        o
    }

    #[test]
    fn recovery_is_summarised_per_kind_of_fault() {
        let ms = 1_000_000;
        let mut ops = Vec::new();
        // Ten kills recovering after 1..=10 ms, two ring partitions (one
        // never recovers), one isolated leader.
        for i in 0..10 {
            let at = i * 100 * ms;
            ops.push(nemesis(
                i,
                "kill",
                "kill -9 node 1; then restarted node 1",
                at,
            ));
            ops.push(op(
                100 + i,
                F::Write,
                Phase::Ok,
                at,
                Some(at + (i + 1) * ms),
            ));
        }
        let at = 2_000 * ms;
        ops.push(nemesis(
            20,
            "partition",
            "ring [1, 2, 3]; then network healed",
            at,
        ));
        ops.push(op(21, F::Write, Phase::Ok, at, Some(at + 500 * ms)));
        ops.push(nemesis(
            22,
            "partition",
            "isolate leader 1; then healed",
            2_600 * ms,
        ));
        ops.push(op(23, F::Write, Phase::Ok, 2_600 * ms, Some(2_650 * ms)));
        ops.push(nemesis(
            24,
            "partition",
            "ring [2, 1, 3]; then healed",
            3_000 * ms,
        ));
        let (w, _) = windows(&ops, 3_100 * ms);
        let by = recovery_by_fault(&w);
        let keys: Vec<&str> = by.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["kill", "partition-isolated-leader", "partition-ring"]
        );
        let kill = &by["kill"];
        assert_eq!((kill.count, kill.never), (10, 0));
        assert_eq!(kill.median_ms, Some(6.0));
        assert_eq!(kill.p90_ms, Some(9.0));
        assert_eq!(kill.max_ms, Some(10.0));
        let ring = &by["partition-ring"];
        assert_eq!((ring.count, ring.never), (2, 1));
        assert_eq!((ring.median_ms, ring.max_ms), (Some(500.0), Some(500.0)));
        assert_eq!(by["partition-isolated-leader"].p90_ms, Some(50.0));
    }
}
