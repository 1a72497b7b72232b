//! `nines endpoint status|health`: asks each endpoint directly (no retries,
//! no forwarding), so a sick member shows up as itself.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use futures::future::join_all;
use nines_client::NodeStatus;
use serde_json::{json, Value};

use crate::error::describe_client;
use crate::global::Context;
use crate::output::{header_json, write_json, Format, Table};

#[derive(Debug, Args)]
pub struct EndpointArgs {
    #[command(subcommand)]
    command: EndpointCommand,
}

#[derive(Debug, Subcommand)]
enum EndpointCommand {
    /// Raft and store status of each endpoint.
    Status,
    /// Whether each endpoint answers and knows a leader; exits 1 if any does not.
    Health,
}

struct Probe {
    endpoint: String,
    took: Duration,
    result: Result<NodeStatus, String>,
}

/// Queries every endpoint concurrently; results keep the endpoints' order.
async fn probe_all(ctx: &Context) -> Vec<Probe> {
    join_all(ctx.endpoints.iter().map(|endpoint| async move {
        let started = Instant::now();
        let result = ctx.client.status_of(endpoint).await;
        Probe {
            endpoint: endpoint.clone(),
            took: started.elapsed(),
            result: result.map_err(|e| describe_client(&e)),
        }
    }))
    .await
}

impl EndpointArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let probes = probe_all(ctx).await;
        match self.command {
            EndpointCommand::Status => {
                print_status(&mut io::stdout().lock(), ctx.format, &probes)?;
                if probes.iter().all(|p| p.result.is_err()) {
                    bail!("no endpoint answered");
                }
            }
            EndpointCommand::Health => {
                print_health(&mut io::stdout().lock(), ctx.format, &probes)?;
                let unhealthy = probes.iter().filter(|p| health(p).is_err()).count();
                if unhealthy > 0 {
                    bail!(
                        "unhealthy cluster ({unhealthy} of {} endpoints)",
                        probes.len()
                    );
                }
            }
        }
        Ok(())
    }
}

fn status_row(s: &NodeStatus) -> Vec<String> {
    let header = s.header.unwrap_or_default();
    vec![
        header.member_id.to_string(),
        s.leader_id.to_string(),
        s.state.clone(),
        header.raft_term.to_string(),
        s.last_log_index.to_string(),
        s.applied_index.to_string(),
        s.snapshot_index.to_string(),
        header.revision.to_string(),
        human_bytes(s.db_size),
        human_bytes(s.db_size_in_use),
        s.version.clone(),
        human_duration(s.uptime),
        s.leader_changes.to_string(),
        human_duration(s.leaderless),
    ]
}

/// "3d4h", "2h5m", "4m7s", "12.3s": the two largest units.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// etcdctl's size format: "25 kB", "1.2 MB" (SI units).
fn human_bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut i = 0;
    let mut v = n;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn status_json(s: &NodeStatus) -> Value {
    json!({
        "header": header_json(s.header.as_ref()),
        "leader_id": s.leader_id,
        "state": s.state,
        "last_log_index": s.last_log_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "version": s.version,
        "db_size": s.db_size,
        "db_size_in_use": s.db_size_in_use,
        "millis_since_quorum_ack": s.millis_since_quorum_ack,
        "is_learner": s.is_learner,
        "uptime_ms": s.uptime.as_millis() as u64,
        "leader_changes": s.leader_changes,
        "leaderless_ms": s.leaderless.as_millis() as u64,
    })
}

fn print_status(out: &mut dyn Write, format: Format, probes: &[Probe]) -> io::Result<()> {
    match format {
        Format::Json => {
            let items: Vec<Value> = probes
                .iter()
                .map(|p| match &p.result {
                    Ok(s) => json!({"endpoint": p.endpoint, "status": status_json(s)}),
                    Err(e) => json!({"endpoint": p.endpoint, "error": e}),
                })
                .collect();
            write_json(out, &Value::Array(items))
        }
        Format::Table => {
            let mut table = Table::new(&[
                "ENDPOINT",
                "ID",
                "LEADER",
                "STATE",
                "RAFT TERM",
                "LAST LOG INDEX",
                "APPLIED INDEX",
                "SNAPSHOT INDEX",
                "REVISION",
                "DB SIZE",
                "DB SIZE IN USE",
                "VERSION",
                "UPTIME",
                "LEADER CHANGES",
                "NO LEADER",
                "ERRORS",
            ]);
            for p in probes {
                let mut row = vec![p.endpoint.clone()];
                match &p.result {
                    Ok(s) => {
                        row.extend(status_row(s));
                        row.push(String::new());
                    }
                    Err(e) => {
                        row.extend(std::iter::repeat_n(String::new(), 14));
                        row.push(e.clone());
                    }
                }
                table.row(row);
            }
            table.write(out)
        }
        Format::Simple => {
            for p in probes {
                match &p.result {
                    Ok(s) => writeln!(out, "{}, {}", p.endpoint, status_row(s).join(", "))?,
                    Err(e) => writeln!(out, "{}, error: {e}", p.endpoint)?,
                }
            }
            Ok(())
        }
    }
}

/// Healthy: the endpoint answered and knows a leader (leader id 0 = none).
fn health(p: &Probe) -> Result<(), String> {
    match &p.result {
        Ok(s) if s.leader_id != 0 => Ok(()),
        Ok(s) => Err(format!("no leader known (state {})", s.state)),
        Err(e) => Err(e.clone()),
    }
}

fn took(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.3}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

fn print_health(out: &mut dyn Write, format: Format, probes: &[Probe]) -> io::Result<()> {
    match format {
        Format::Json => {
            let items: Vec<Value> = probes
                .iter()
                .map(|p| {
                    let h = health(p);
                    json!({"endpoint": p.endpoint, "health": h.is_ok(), "took": took(p.took),
                           "error": h.err()})
                })
                .collect();
            write_json(out, &Value::Array(items))
        }
        Format::Table => {
            let mut table = Table::new(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"]);
            for p in probes {
                let h = health(p);
                table.row(vec![
                    p.endpoint.clone(),
                    h.is_ok().to_string(),
                    took(p.took),
                    h.err().unwrap_or_default(),
                ]);
            }
            table.write(out)
        }
        Format::Simple => {
            for p in probes {
                match health(p) {
                    Ok(()) => writeln!(out, "{} is healthy: took = {}", p.endpoint, took(p.took))?,
                    Err(e) => writeln!(
                        out,
                        "{} is unhealthy: took = {}, error: {e}",
                        p.endpoint,
                        took(p.took)
                    )?,
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(result: Result<NodeStatus, String>) -> Probe {
        Probe {
            endpoint: "e:1".into(),
            took: Duration::from_micros(1500),
            result,
        }
    }

    #[test]
    fn health_needs_an_answer_and_a_leader() {
        let led = NodeStatus {
            leader_id: 2,
            ..Default::default()
        };
        assert!(health(&probe(Ok(led))).is_ok());
        let leaderless = NodeStatus {
            state: "candidate".into(),
            ..Default::default()
        };
        assert_eq!(
            health(&probe(Ok(leaderless))).unwrap_err(),
            "no leader known (state candidate)"
        );
        assert!(health(&probe(Err("Unavailable: down".into()))).is_err());
    }

    #[test]
    fn availability_figures_are_shown() {
        let s = NodeStatus {
            uptime: Duration::from_secs(2 * 3600 + 5 * 60 + 9),
            leader_changes: 3,
            leaderless: Duration::from_millis(1234),
            ..Default::default()
        };
        let row = status_row(&s);
        assert_eq!(row[row.len() - 3..], ["2h5m", "3", "1.2s"]);
        let json = status_json(&s);
        assert_eq!(json["uptime_ms"], 7_509_000);
        assert_eq!(json["leader_changes"], 3);
        assert_eq!(json["leaderless_ms"], 1234);
        assert_eq!(
            human_duration(Duration::from_secs(86_400 * 3 + 7200)),
            "3d2h"
        );
        assert_eq!(human_duration(Duration::from_secs(61)), "1m1s");
    }

    #[test]
    fn simple_health_lines() {
        let mut out = Vec::new();
        print_health(
            &mut out,
            Format::Simple,
            &[probe(Err("Unavailable: down".into()))],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "e:1 is unhealthy: took = 1.500ms, error: Unavailable: down\n"
        );
    }

    #[test]
    fn sizes_read_like_etcdctl() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(25_000), "25.0 kB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        assert_eq!(human_bytes(-1), "0 B");
    }
}
