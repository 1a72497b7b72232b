//! Bench results: one row per run, as a table or JSON.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::fsync_probe::FsyncProbe;

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub target: String,
    pub workload: String,
    pub clients: usize,
    pub connections: usize,
    pub value_size: usize,
    pub duration_s: f64,
    pub ops: u64,
    pub errors: u64,
    pub throughput: f64,
    pub latency: Latency,
    pub fsync_floor: Option<FsyncProbe>,
}

pub fn print_table(r: &BenchReport) {
    println!(
        "{:<7} {:<18} {:>7} {:>5} {:>10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "target",
        "workload",
        "clients",
        "conns",
        "ops",
        "errors",
        "ops/s",
        "p50(us)",
        "p90(us)",
        "p99(us)",
        "p999(us)",
        "max(us)"
    );
    println!(
        "{:<7} {:<18} {:>7} {:>5} {:>10} {:>7} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9}",
        r.target,
        r.workload,
        r.clients,
        r.connections,
        r.ops,
        r.errors,
        r.throughput,
        r.latency.p50_us,
        r.latency.p90_us,
        r.latency.p99_us,
        r.latency.p999_us,
        r.latency.max_us
    );
    if let Some(f) = &r.fsync_floor {
        println!(
            "fsync floor (4 KiB write + fdatasync): p50 {:.0} us, p99 {:.0} us",
            f.p50_us, f.p99_us
        );
    }
}
