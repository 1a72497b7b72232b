//! Auto-compaction, etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention`: the leader proposes a `Compact` so that
//! history, and the disk it takes, stays bounded without anyone's attention.
//!
//! - periodic, retention R: keep R of history. As etcd 3.3+: once the first
//!   window (R, at most an hour) has passed, compacts every tenth of it to
//!   the revision the store had R ago, so the history kept stays between R
//!   and 1.1 R and the disk levels off instead of growing for R between
//!   compactions.
//! - revision, retention N: every 5 minutes, compact to the current
//!   revision minus N.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nines_types::{Command, Request};
use tokio::sync::watch;

use crate::core::{NodeCore, Routed};

/// etcd's revision-mode check interval.
const REVISION_CHECK: Duration = Duration::from_secs(5 * 60);
/// etcd's upper bound on the periodic interval.
const MAX_PERIOD: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this much history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(u64),
}

impl AutoCompaction {
    /// From the two flags, as etcd reads them: periodic takes a duration
    /// (`90s`, `5m`, `1h`, or a bare number of hours), revision a count; a
    /// retention of 0 turns auto-compaction off.
    pub fn parse(mode: &str, retention: &str) -> Result<Self, String> {
        let retention = retention.trim();
        let parsed = match mode {
            "periodic" => parse_duration(retention).map(AutoCompaction::Periodic),
            "revision" => retention
                .parse::<u64>()
                .map(AutoCompaction::Revision)
                .map_err(|_| format!("revision retention {retention:?} is not a count")),
            other => Err(format!(
                "--auto-compaction-mode {other:?}: expected periodic or revision"
            )),
        }?;
        Ok(match parsed {
            AutoCompaction::Periodic(d) if d.is_zero() => AutoCompaction::Off,
            AutoCompaction::Revision(0) => AutoCompaction::Off,
            on => on,
        })
    }
}

/// `1h30m`, `5m`, `90s`, `500ms`, or a bare number of hours (etcd).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 5m or 1h");
    if let Ok(hours) = text.parse::<u64>() {
        return hours
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(bad);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let part = unit.checked_mul(u32::try_from(n).map_err(|_| bad())?);
        total = total.checked_add(part.ok_or_else(bad)?).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    if text.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// When to compact and to what; pure, so it is tested without a cluster.
pub struct Planner {
    policy: AutoCompaction,
    /// (when, store revision then), oldest first.
    samples: VecDeque<(Instant, i64)>,
    /// When this node's first window began (it began leading).
    window_start: Instant,
}

impl Planner {
    pub fn new(policy: AutoCompaction, now: Instant) -> Self {
        Self {
            policy,
            samples: VecDeque::new(),
            window_start: now,
        }
    }

    /// How often to call `tick`.
    pub fn tick_every(&self) -> Duration {
        match self.policy {
            AutoCompaction::Periodic(r) => (r.min(MAX_PERIOD) / 10).max(Duration::from_millis(10)),
            AutoCompaction::Revision(_) => REVISION_CHECK,
            AutoCompaction::Off => MAX_PERIOD,
        }
    }

    /// Forgets the samples, e.g. when this node stops leading: a new leader
    /// starts its own window (as etcd's compactor resumes on a leader).
    pub fn reset(&mut self, now: Instant) {
        self.samples.clear();
        self.window_start = now;
    }

    /// The revision to compact to now, if any.
    pub fn tick(&mut self, now: Instant, revision: i64, compacted: i64) -> Option<i64> {
        let target = match self.policy {
            AutoCompaction::Off => None,
            AutoCompaction::Revision(keep) => {
                let keep = i64::try_from(keep).unwrap_or(i64::MAX);
                Some(revision.saturating_sub(keep))
            }
            AutoCompaction::Periodic(retention) => {
                self.samples.push_back((now, revision));
                if now.duration_since(self.window_start) < retention.min(MAX_PERIOD) {
                    return None;
                }
                // The newest sample at least `retention` old; older ones
                // are no longer needed.
                let cutoff = now.checked_sub(retention)?;
                let old = self.samples.partition_point(|(at, _)| *at <= cutoff);
                let (_, target) = *self.samples.get(old.checked_sub(1)?)?;
                self.samples.drain(..old - 1);
                Some(target)
            }
        }?;
        (target > compacted).then_some(target)
    }
}

/// Runs on every node; only the leader proposes.
pub async fn run(core: Arc<NodeCore>, policy: AutoCompaction, mut stopped: watch::Receiver<bool>) {
    if policy == AutoCompaction::Off {
        return;
    }
    let mut planner = Planner::new(policy, Instant::now());
    let mut leading = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(planner.tick_every()) => {}
            _ = stopped.changed() => return,
        }
        let now = Instant::now();
        let leader = core.leader().is_some_and(|(id, _)| id == core.id);
        if leader != leading {
            leading = leader;
            planner.reset(now);
        }
        if !leader {
            continue;
        }
        let reader = &core.reader;
        let Some(target) = planner.tick(now, reader.revision(), reader.compacted_revision()) else {
            continue;
        };
        let compact = Request::new(Command::Compact {
            revision: target,
            physical: false,
        });
        match core.write(compact, true).await {
            Ok(Routed::Local(resp)) => {
                tracing::info!(revision = target, result = ?resp.result, "auto-compaction")
            }
            Ok(Routed::Forward(_)) => {}
            Err(e) => tracing::warn!(revision = target, error = %e, "auto-compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_like_etcd() {
        let p = |m, r| AutoCompaction::parse(m, r);
        assert_eq!(
            p("periodic", "5m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(300)))
        );
        assert_eq!(
            p("periodic", "1h30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            p("periodic", "2"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(7200)))
        );
        assert_eq!(
            p("periodic", "250ms"),
            Ok(AutoCompaction::Periodic(Duration::from_millis(250)))
        );
        assert_eq!(p("revision", "10000"), Ok(AutoCompaction::Revision(10_000)));
        assert_eq!(p("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(p("revision", "0"), Ok(AutoCompaction::Off));
        for (mode, bad) in [
            ("periodic", ""),
            ("periodic", "5x"),
            ("periodic", "m"),
            ("periodic", "99999999999999999999h"),
            ("periodic", "18446744073709551615"),
            ("revision", "-1"),
            ("revision", "5m"),
            ("hourly", "1"),
        ] {
            assert!(p(mode, bad).is_err(), "{mode} {bad}");
        }
    }

    #[test]
    fn periodic_compacts_to_the_revision_of_one_retention_ago() {
        let start = Instant::now();
        let retention = Duration::from_secs(10);
        let mut planner = Planner::new(AutoCompaction::Periodic(retention), start);
        assert_eq!(planner.tick_every(), Duration::from_secs(1));
        let mut got = Vec::new();
        // The store gains 100 revisions a second.
        for s in 1..=25u64 {
            let now = start + Duration::from_secs(s);
            if let Some(target) = planner.tick(now, s as i64 * 100, 0) {
                got.push((s, target));
            }
        }
        // After the first 10 s, every tick (a tenth of it), to the revision
        // of 10 s before. At 10 s there is no sample 10 s old yet.
        let want: Vec<(u64, i64)> = (11..=25).map(|s| (s, (s as i64 - 10) * 100)).collect();
        assert_eq!(got, want);
        // Nothing at or below the compacted revision is proposed.
        let mut planner = Planner::new(AutoCompaction::Periodic(retention), start);
        for s in 1..=20u64 {
            let now = start + Duration::from_secs(s);
            assert_eq!(planner.tick(now, 5, 5), None);
        }
    }

    #[test]
    fn long_retentions_compact_hourly_and_revision_mode_keeps_n() {
        let day = Duration::from_secs(24 * 3600);
        let planner = Planner::new(AutoCompaction::Periodic(day), Instant::now());
        assert_eq!(planner.tick_every(), Duration::from_secs(360));
        let now = Instant::now();
        let mut planner = Planner::new(AutoCompaction::Revision(1000), now);
        assert_eq!(planner.tick_every(), REVISION_CHECK);
        assert_eq!(planner.tick(now, 500, 0), None);
        assert_eq!(planner.tick(now, 5000, 0), Some(4000));
        assert_eq!(planner.tick(now, 5000, 4000), None);
    }
}
