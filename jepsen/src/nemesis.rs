//! Fault injection on a seeded schedule: one fault at a time, held for an
//! interval, then healed, then a quiet interval. Each fault is recorded in
//! the history as a nemesis op (invoked at injection, completed at heal), so
//! the report can measure how long clients were unable to write.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nines_client::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::{find_leader, Cluster};
use crate::history::{History, Phase, Value, F};
use crate::proxy::{Blocked, Proxy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    Kill,
    Pause,
    Partition,
    Member,
}

impl Fault {
    pub fn parse_list(s: &str) -> anyhow::Result<Vec<Fault>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "kill" => out.push(Fault::Kill),
                "pause" => out.push(Fault::Pause),
                "partition" => out.push(Fault::Partition),
                "member" => out.push(Fault::Member),
                "all" => out.extend([Fault::Kill, Fault::Pause, Fault::Partition, Fault::Member]),
                "none" => {}
                other => anyhow::bail!(
                    "unknown nemesis {other:?} (kill, pause, partition, member, all, none)"
                ),
            }
        }
        out.dedup();
        Ok(out)
    }
}

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    pub proxy: Arc<Proxy>,
    pub history: Arc<History>,
    /// Status queries (short timeouts).
    pub admin: Client,
    /// Membership changes (longer timeouts).
    pub member_admin: Client,
    pub rng: StdRng,
    pub faults: Vec<Fault>,
    pub interval: Duration,
}

/// What to undo when the fault's time is up.
enum Heal {
    Restart(u64),
    Resume(u64),
    Partition,
    Rejoin(u64),
    Nothing,
}

impl Nemesis {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs faults until `deadline`; always leaves the cluster healed.
    pub async fn run(mut self, deadline: Instant) {
        if self.faults.is_empty() {
            return;
        }
        loop {
            tokio::time::sleep(self.interval).await;
            if Instant::now() + self.interval > deadline {
                return;
            }
            let fault = *self.faults.choose(&mut self.rng).expect("non-empty");
            // Recorded before injecting, so the unavailability window starts
            // when the fault does (removing a member takes a while).
            let name = format!("{fault:?}").to_lowercase();
            let op = self
                .history
                .invoke(-1, F::Nemesis, name.clone(), Value::Text(name));
            let (desc, heal) = self.inject(fault).await;
            tracing::info!("nemesis: {desc}");
            tokio::time::sleep(self.interval).await;
            let healed = self.heal(heal).await;
            tracing::info!("nemesis: {healed}");
            let text = Value::Text(format!("{desc}; then {healed}"));
            self.history.complete(&op, Phase::Ok, text, None);
        }
    }

    async fn target(&mut self) -> u64 {
        let (running, candidates) = {
            let c = self.lock();
            let running: Vec<u64> = c.ids().into_iter().filter(|&id| c.is_running(id)).collect();
            let candidates: Vec<(u64, String)> = running
                .iter()
                .map(|&id| (id, c.node(id).client_addr.clone()))
                .collect();
            (running, candidates)
        };
        if self.rng.gen_bool(0.5) {
            if let Some(leader) = find_leader(&self.admin, &candidates).await {
                return leader;
            }
        }
        *running.choose(&mut self.rng).unwrap_or(&1)
    }

    async fn inject(&mut self, fault: Fault) -> (String, Heal) {
        match fault {
            Fault::Kill => {
                let id = self.target().await;
                self.lock().kill(id);
                (format!("kill -9 node {id}"), Heal::Restart(id))
            }
            Fault::Pause => {
                let id = self.target().await;
                self.lock().pause(id);
                (format!("SIGSTOP node {id}"), Heal::Resume(id))
            }
            Fault::Partition => {
                let (desc, blocked) = self.partition().await;
                self.proxy.set_blocked(blocked);
                (desc, Heal::Partition)
            }
            Fault::Member => match self.remove_member().await {
                Ok(id) => (format!("remove node {id}, wipe it"), Heal::Rejoin(id)),
                Err(e) => (format!("{REMOVE_FAILED}: {e}"), Heal::Nothing),
            },
        }
    }

    async fn partition(&mut self) -> (String, Blocked) {
        let mut ids = self.lock().ids();
        let n = ids.len();
        let choice = self.rng.gen_range(0..if n >= 4 { 3 } else { 2 });
        let (desc, groups): (String, Vec<Vec<u64>>) = match choice {
            1 => {
                let candidates: Vec<(u64, String)> = {
                    let c = self.lock();
                    ids.iter()
                        .map(|&id| (id, c.node(id).client_addr.clone()))
                        .collect()
                };
                let leader = find_leader(&self.admin, &candidates)
                    .await
                    .unwrap_or_else(|| *ids.choose(&mut self.rng).unwrap_or(&1));
                let rest: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
                (format!("{ISOLATE} {leader}"), vec![vec![leader], rest])
            }
            2 => {
                // Ring: each node talks only to its two neighbours.
                ids.shuffle(&mut self.rng);
                let blocked = ring(&ids);
                return (format!("{RING} {ids:?}"), blocked);
            }
            _ => {
                ids.shuffle(&mut self.rng);
                let minority = ids[..n / 2].to_vec();
                let majority = ids[n / 2..].to_vec();
                (
                    format!("{HALVES} {minority:?} | {majority:?}"),
                    vec![minority, majority],
                )
            }
        };
        (desc, between(&groups))
    }
}

// How descriptions start, so the report can group faults by kind.
const ISOLATE: &str = "isolate leader";
const RING: &str = "ring";
const HALVES: &str = "halves";
const REMOVE_FAILED: &str = "member remove failed";

/// The kind of a recorded fault, from its name (`kill`, `partition`...) and
/// its description: partitions and failed removals are told apart, since
/// each recovers in its own way.
pub fn fault_kind(name: &str, desc: &str) -> String {
    let kind = match name {
        "partition" if desc.starts_with(ISOLATE) => "partition-isolated-leader",
        "partition" if desc.starts_with(RING) => "partition-ring",
        "partition" if desc.starts_with(HALVES) => "partition-halves",
        "member" if desc.starts_with(REMOVE_FAILED) => "member-remove-failed",
        other => other,
    };
    kind.to_string()
}

/// Blocks every pair of nodes in different groups, both ways.
pub fn between(groups: &[Vec<u64>]) -> Blocked {
    let mut blocked = Blocked::new();
    for (gi, g) in groups.iter().enumerate() {
        for (hi, h) in groups.iter().enumerate() {
            if gi != hi {
                blocked.extend(g.iter().flat_map(|&a| h.iter().map(move |&b| (a, b))));
            }
        }
    }
    blocked
}

/// Blocks every pair that is not adjacent on the ring `ids`.
pub fn ring(ids: &[u64]) -> Blocked {
    let n = ids.len();
    let mut blocked = Blocked::new();
    for (i, &a) in ids.iter().enumerate() {
        for (j, &b) in ids.iter().enumerate() {
            let d = (i + n - j) % n;
            if a != b && d != 1 && d != n - 1 {
                blocked.insert((a, b));
            }
        }
    }
    blocked
}

impl Nemesis {
    /// Removes a random node from the membership, kills it and wipes its data.
    async fn remove_member(&mut self) -> anyhow::Result<u64> {
        let ids = self.lock().ids();
        let id = *ids.choose(&mut self.rng).unwrap_or(&1);
        if let Err(e) = self.member_admin.member_remove(id).await {
            // An error does not prove the member stayed (a timeout after the
            // removal applied): left running outside the membership, it would
            // shrink the cluster to two voters for the rest of the run.
            match self.member_admin.member_list().await {
                Ok(list) if !list.members.iter().any(|m| m.id == id) => {}
                _ => return Err(e.into()),
            }
        }
        let mut c = self.lock();
        c.kill(id);
        c.wipe(id)?;
        Ok(id)
    }

    async fn heal(&mut self, heal: Heal) -> String {
        match heal {
            Heal::Restart(id) => match self.lock().spawn(id) {
                Ok(()) => format!("restarted node {id}"),
                Err(e) => format!("restart of node {id} failed: {e}"),
            },
            Heal::Resume(id) => {
                self.lock().resume(id);
                format!("SIGCONT node {id}")
            }
            Heal::Partition => {
                self.proxy.heal();
                "network healed".into()
            }
            Heal::Rejoin(id) => match self.rejoin(id).await {
                Ok(url) => format!("node {id} re-added and promoted, peer URL {url}"),
                Err(e) => format!("re-adding node {id} failed: {e}"),
            },
            Heal::Nothing => "nothing to heal".into(),
        }
    }

    /// Starts the wiped node with no bootstrap flags (it waits), then adds it
    /// back under the same id and addresses, as a learner, then a voter.
    /// Returns the peer URL the membership shows for it: `https://` when
    /// the peer ports run TLS (the add is by `host:port`, and the leader
    /// probes the new member over the peer ports' transport before adding
    /// it), which is checked here so a TLS run proves it re-added members
    /// as TLS peers.
    async fn rejoin(&mut self, id: u64) -> anyhow::Result<String> {
        let peer_addr = {
            let mut c = self.lock();
            c.spawn(id)?;
            c.node(id).peer_addr.clone()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .member_admin
                .member_add_learner(id, &peer_addr, "")
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        let want = format!("{}://{peer_addr}", crate::tls::peer_scheme());
        loop {
            match self.member_admin.member_promote(id).await {
                Ok(list) => {
                    let member = list.members.iter().find(|m| m.id == id);
                    let urls = member.map(|m| m.peer_ur_ls.clone()).unwrap_or_default();
                    anyhow::ensure!(
                        urls == [want.clone()],
                        "node {id} promoted with peer URLs {urls:?}, expected [{want}]"
                    );
                    return Ok(want);
                }
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                // Promotion waits for the learner to catch up.
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_block_the_right_pairs() {
        let halves = between(&[vec![1], vec![2, 3]]);
        assert_eq!(halves, Blocked::from([(1, 2), (1, 3), (2, 1), (3, 1)]));
        // 1-2-3-4-5-1: node 1 keeps 2 and 5, loses 3 and 4.
        let r = ring(&[1, 2, 3, 4, 5]);
        assert_eq!(r.len(), 10);
        assert!(r.contains(&(1, 3)) && r.contains(&(4, 1)));
        assert!(!r.contains(&(1, 2)) && !r.contains(&(5, 1)));
    }

    #[test]
    fn fault_kinds_follow_the_descriptions() {
        let kind = |name, desc: String| fault_kind(name, &desc);
        assert_eq!(
            kind("kill", "kill -9 node 2; then restarted node 2".into()),
            "kill"
        );
        assert_eq!(
            kind("pause", "SIGSTOP node 1; then SIGCONT node 1".into()),
            "pause"
        );
        let isolate = format!("{ISOLATE} 2; then network healed");
        assert_eq!(kind("partition", isolate), "partition-isolated-leader");
        let ring = format!("{RING} [3, 1, 2]; then network healed");
        assert_eq!(kind("partition", ring), "partition-ring");
        let halves = format!("{HALVES} [1] | [2, 3]; then network healed");
        assert_eq!(kind("partition", halves), "partition-halves");
        let removed = "remove node 3, wipe it; then node 3 re-added and promoted, peer URL https://127.0.0.1:1";
        assert_eq!(kind("member", removed.into()), "member");
        let failed = format!("{REMOVE_FAILED}: timeout; then nothing to heal");
        assert_eq!(kind("member", failed), "member-remove-failed");
    }

    #[test]
    fn parses_nemesis_lists() {
        assert_eq!(Fault::parse_list("none").unwrap(), vec![]);
        assert_eq!(Fault::parse_list("all").unwrap().len(), 4);
        assert_eq!(
            Fault::parse_list("kill,pause").unwrap(),
            vec![Fault::Kill, Fault::Pause]
        );
        assert!(Fault::parse_list("flood").is_err());
    }
}
