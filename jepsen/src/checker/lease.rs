//! The lease checker. Each lease the workload held is one `LeaseLog`:
//! when its key was attached, until when the lease was certainly alive
//! (the grant's start + TTL, then each answered keepalive's send + TTL:
//! the server counts from when it received it), the keeper's lapses (no
//! renewal for longer than the TTL), whether the keeper heard TTL 0, and
//! when the workload abandoned it. Reads are linearizable ranges of one
//! process's prefix through rotating members, recording which keys exist.
//!
//! Anomalies:
//! - `kept-key-missing`: a read that started after the key's put was
//!   acknowledged and ended while the lease was certainly alive lacks it;
//! - `expired-while-kept`: the server said the lease is gone although the
//!   keeper never lapsed (a keeper that could not renew for longer than
//!   the TTL excuses the expiry, and only that);
//! - `reappeared`: a key seen gone is seen again;
//! - `never-vanished`: an abandoned lease's key still exists in the final
//!   read after healing.
//!
//! Measured: for each abandoned lease, how much later than abandon + TTL
//! its key went (negative when the last renewal was a while before the
//! abandon), bracketed by the start of the last read that saw the key and
//! the end of the first that did not.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Op, Phase, Value, F};

/// What the workload knew of one lease (times in ns since the run start).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct LeaseLog {
    pub lease: i64,
    /// Granted TTL, seconds.
    pub ttl: i64,
    /// The process's read prefix; the key is `prefix` + `n`.
    pub prefix: String,
    pub n: i64,
    /// When the put attaching the key was acknowledged (None: it was not).
    pub put_end: Option<u64>,
    /// The lease was certainly alive until here.
    pub alive_until: u64,
    /// When the workload stopped keeping it alive (None: kept to the end).
    pub abandoned_at: Option<u64>,
    /// When the keeper heard TTL 0.
    pub expired_at: Option<u64>,
    /// The keeper's stretches without a renewal for longer than the TTL.
    pub lapses: Vec<(u64, u64)>,
    pub renewals: u64,
    pub reconnects: u64,
    /// The keeper could not start or stopped on a refusal.
    pub keeper_error: Option<String>,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseAnomalyKind {
    KeptKeyMissing,
    ExpiredWhileKept,
    Reappeared,
    NeverVanished,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct LeaseAnomaly {
    pub kind: LeaseAnomalyKind,
    pub lease: i64,
    pub key: String,
    /// The read that shows it, if one does.
    pub op: Option<u64>,
    pub log: LeaseLog,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct LeaseResult {
    pub leases: usize,
    /// Leases whose put was not acknowledged (revoked, not checked).
    pub unattached: usize,
    pub kept_to_end: usize,
    pub abandoned: usize,
    pub reads_checked: usize,
    pub lapses: usize,
    /// Leases the server expired after their keeper lapsed (excused).
    pub expired_after_lapse: usize,
    pub reconnects: u64,
    /// Per abandoned lease whose key a periodic read saw go: ms from
    /// abandon + TTL to that read's end (an upper bound: it includes the
    /// read's latency and any time reads failed).
    pub late_ms: Vec<f64>,
    /// The same to the start of the last read that still saw the key (a
    /// lower bound); the key went in between.
    pub late_low_ms: Vec<f64>,
    /// Abandoned keys seen gone only by the final read (no figure).
    pub gone_by_final_read: usize,
    pub anomalies: Vec<LeaseAnomaly>,
}

impl LeaseResult {
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty() && self.leases > 0
    }

    /// (median, max) of `late_ms`.
    pub fn lateness(&self) -> Option<(f64, f64)> {
        median_max(&self.late_ms)
    }

    /// (median, max) of `late_low_ms`.
    pub fn lateness_low(&self) -> Option<(f64, f64)> {
        median_max(&self.late_low_ms)
    }
}

fn median_max(v: &[f64]) -> Option<(f64, f64)> {
    let mut v = v.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[v.len() - 1]))
}

/// A periodic read: when, and which key numbers it found.
struct Read<'a> {
    op: &'a Op,
    end: u64,
    present: BTreeSet<i64>,
}

pub fn check(prefix: &str, ops: &[Op]) -> LeaseResult {
    let mut reads: BTreeMap<&str, Vec<Read>> = BTreeMap::new();
    let mut logs = Vec::new();
    let mut final_keys: Option<BTreeSet<&str>> = None;
    for op in ops.iter().filter(|o| o.key.starts_with(prefix)) {
        match (op.f, op.phase, &op.output) {
            (F::Read, Phase::Ok, Value::Set(found)) => {
                reads.entry(op.key.as_str()).or_default().push(Read {
                    op,
                    end: op.end.unwrap_or(u64::MAX),
                    present: found.iter().copied().collect(),
                });
            }
            (F::Lease, _, Value::Lease(log)) => logs.push(log),
            (F::FinalRead, Phase::Ok, Value::Lists(found)) => {
                final_keys = Some(found.keys().map(String::as_str).collect());
            }
            _ => {}
        }
    }
    let mut r = LeaseResult {
        leases: logs.len(),
        ..Default::default()
    };
    let none = Vec::new();
    for log in logs {
        if log.put_end.is_none() {
            r.unattached += 1;
            continue;
        }
        r.lapses += log.lapses.len();
        r.reconnects += log.reconnects;
        match log.abandoned_at {
            Some(_) => r.abandoned += 1,
            None if log.expired_at.is_none() => r.kept_to_end += 1,
            None => {}
        }
        if log.expired_at.is_some() {
            if log.lapses.is_empty() {
                r.anomalies
                    .push(anomaly(LeaseAnomalyKind::ExpiredWhileKept, log, None));
            } else {
                r.expired_after_lapse += 1;
            }
        }
        let put_end = log.put_end.unwrap_or(0);
        let key = format!("{}{}", log.prefix, log.n);
        let after: Vec<&Read> = reads
            .get(log.prefix.as_str())
            .unwrap_or(&none)
            .iter()
            .filter(|rd| rd.op.start >= put_end)
            .collect();
        for rd in after.iter().filter(|rd| rd.end <= log.alive_until) {
            r.reads_checked += 1;
            if !rd.present.contains(&log.n) {
                let a = anomaly(LeaseAnomalyKind::KeptKeyMissing, log, Some(rd.op.id));
                r.anomalies.push(a);
                break;
            }
        }
        let gone = after.iter().position(|rd| !rd.present.contains(&log.n));
        if let Some(at) = gone {
            let seen_gone = after[at].end;
            let back = after[at + 1..]
                .iter()
                .find(|rd| rd.op.start > seen_gone && rd.present.contains(&log.n));
            if let Some(back) = back {
                let a = anomaly(LeaseAnomalyKind::Reappeared, log, Some(back.op.id));
                r.anomalies.push(a);
            }
        }
        let Some(abandoned) = log.abandoned_at else {
            continue;
        };
        match gone {
            Some(at) => {
                let due = abandoned + log.ttl.max(0) as u64 * 1_000_000_000;
                r.late_ms.push((after[at].end as f64 - due as f64) / 1e6);
                // Every read before the first that missed it saw it.
                let present_at = after[..at].last().map_or(put_end, |rd| rd.op.start);
                r.late_low_ms.push((present_at as f64 - due as f64) / 1e6);
            }
            None if final_keys
                .as_ref()
                .is_some_and(|f| !f.contains(key.as_str())) =>
            {
                r.gone_by_final_read += 1;
            }
            None => r
                .anomalies
                .push(anomaly(LeaseAnomalyKind::NeverVanished, log, None)),
        }
    }
    r
}

fn anomaly(kind: LeaseAnomalyKind, log: &LeaseLog, op: Option<u64>) -> LeaseAnomaly {
    LeaseAnomaly {
        kind,
        lease: log.lease,
        key: format!("{}{}", log.prefix, log.n),
        op,
        log: log.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, History};

    const S: u64 = 1_000_000_000;

    fn log(n: i64, put_end: u64, alive_until: u64) -> LeaseLog {
        LeaseLog {
            lease: 100 + n,
            ttl: 3,
            prefix: "l/0/".into(),
            n,
            put_end: Some(put_end),
            alive_until,
            ..Default::default()
        }
    }

    /// Ops from (kind, start, end, value) rows; times are set by hand.
    fn ops(rows: Vec<(F, u64, u64, Value)>) -> Vec<Op> {
        let h = History::new();
        let mut out = pair(&h.events());
        for (i, (f, start, end, value)) in rows.into_iter().enumerate() {
            out.push(Op {
                id: i as u64,
                process: 0,
                f,
                key: "l/0/".into(),
                input: Value::None,
                output: value,
                phase: Phase::Ok,
                start,
                end: Some(end),
                error: None,
            });
        }
        out
    }

    fn read(start: u64, keys: &[i64]) -> (F, u64, u64, Value) {
        (F::Read, start, start + S / 10, Value::Set(keys.to_vec()))
    }

    #[test]
    fn a_kept_key_must_be_there_while_the_lease_is_certainly_alive() {
        let mut l = log(1, S, 20 * S);
        l.abandoned_at = Some(17 * S);
        let rows = vec![
            (F::Lease, 0, 21 * S, Value::Lease(l.clone())),
            read(2 * S, &[1]),
            read(10 * S, &[1]),
            // Gone at 20.5 s: 0.5 s after abandon + TTL.
            read(20 * S + 4 * S / 10, &[]),
        ];
        let r = check("l/", &ops(rows));
        assert!(r.valid(), "{:?}", r.anomalies);
        assert_eq!(r.reads_checked, 2);
        assert_eq!(r.late_ms, vec![500.0]);
        assert_eq!(r.lateness(), Some((500.0, 500.0)));
        // The last read that saw it started at 10 s: 10 s before due.
        assert_eq!(r.lateness_low(), Some((-10_000.0, -10_000.0)));

        let rows = vec![
            (F::Lease, 0, 21 * S, Value::Lease(l.clone())),
            read(2 * S, &[1]),
            read(10 * S, &[]),
        ];
        let r = check("l/", &ops(rows));
        assert_eq!(r.anomalies.len(), 1);
        assert_eq!(r.anomalies[0].kind, LeaseAnomalyKind::KeptKeyMissing);
    }

    #[test]
    fn expiry_is_excused_only_after_a_lapse() {
        let mut l = log(2, S, 6 * S);
        l.expired_at = Some(9 * S);
        let rows = vec![
            (F::Lease, 0, 10 * S, Value::Lease(l.clone())),
            read(8 * S, &[]),
        ];
        let r = check("l/", &ops(rows));
        assert_eq!(r.anomalies[0].kind, LeaseAnomalyKind::ExpiredWhileKept);
        l.lapses = vec![(6 * S, 8 * S)];
        let rows = vec![(F::Lease, 0, 10 * S, Value::Lease(l)), read(8 * S, &[])];
        let r = check("l/", &ops(rows));
        assert!(r.valid(), "{:?}", r.anomalies);
        assert_eq!(r.expired_after_lapse, 1);
    }

    #[test]
    fn abandoned_keys_must_go_and_stay_gone() {
        let mut l = log(3, S, 5 * S);
        l.abandoned_at = Some(4 * S);
        let rows = vec![
            (F::Lease, 0, 9 * S, Value::Lease(l.clone())),
            read(8 * S, &[3]),
            (F::FinalRead, 30 * S, 31 * S, Value::Lists(BTreeMap::new())),
        ];
        let r = check("l/", &ops(rows));
        assert!(r.valid());
        assert_eq!(r.gone_by_final_read, 1);
        let mut present = BTreeMap::new();
        present.insert("l/0/3".to_string(), Some(vec![3]));
        let rows = vec![
            (F::Lease, 0, 9 * S, Value::Lease(l.clone())),
            (F::FinalRead, 30 * S, 31 * S, Value::Lists(present)),
        ];
        let r = check("l/", &ops(rows));
        assert_eq!(r.anomalies[0].kind, LeaseAnomalyKind::NeverVanished);
        let rows = vec![
            (F::Lease, 0, 9 * S, Value::Lease(l)),
            read(8 * S, &[]),
            read(9 * S, &[3]),
        ];
        let r = check("l/", &ops(rows));
        assert_eq!(r.anomalies[0].kind, LeaseAnomalyKind::Reappeared);

        // A key whose put was not acknowledged is not expected anywhere.
        let mut unattached = log(4, S, 5 * S);
        unattached.put_end = None;
        let rows = vec![
            (F::Lease, 0, 9 * S, Value::Lease(unattached)),
            read(2 * S, &[]),
        ];
        let r = check("l/", &ops(rows));
        assert!(r.valid(), "{:?}", r.anomalies);
        assert_eq!((r.unattached, r.kept_to_end, r.reads_checked), (1, 0, 0));
    }
}
