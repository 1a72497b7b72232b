//! After healing: every member holds the same history. Each member is
//! hashed (etcd's HashKV) at one revision, the highest any member has
//! applied; all must reach it and agree. A member that committed an entry
//! its successor leader replaced, or applied a different one, differs here
//! even when no client read happened to land on it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nines_client::Client;

/// How long a member may take to catch up to the revision compared.
const CATCH_UP: Duration = Duration::from_secs(30);
/// One hash of a member: it reads the whole retained history (a long run
/// keeps ~600,000 revisions).
const HASH_LIMIT: Duration = Duration::from_secs(120);

pub struct ReplicaCheck {
    pub revision: i64,
    /// Each member's (hash, compact revision) at `revision`.
    pub hashes: BTreeMap<u64, (u32, i64)>,
    /// Members that could not be hashed at `revision`, with the last error.
    pub missing: BTreeMap<u64, String>,
}

impl ReplicaCheck {
    pub fn identical(&self) -> bool {
        let mut values = self.hashes.values();
        let first = values.next();
        self.missing.is_empty() && first.is_some() && values.all(|v| Some(v) == first)
    }

    pub fn verdict(&self) -> String {
        let word = if self.identical() {
            "identical"
        } else {
            "DIFFERENT"
        };
        let hashes: Vec<String> = self
            .hashes
            .iter()
            .map(|(id, (h, c))| format!("node {id}: {h:08x} (compacted {c})"))
            .collect();
        let mut text = format!(
            "{word} at revision {}: {}",
            self.revision,
            hashes.join(", ")
        );
        for (id, why) in &self.missing {
            text.push_str(&format!("; node {id} not hashed: {why}"));
        }
        text
    }
}

pub async fn check(admin: &Client, members: &[(u64, String)]) -> ReplicaCheck {
    let deadline = Instant::now() + CATCH_UP;
    // Each member's current revision (HashKV at 0 answers it), all at once.
    let current =
        futures::future::join_all(members.iter().map(|(_, a)| hash(admin, a, 0, deadline))).await;
    let revision = current
        .iter()
        .filter_map(|r| r.as_ref().ok()?.header.as_ref().map(|h| h.revision))
        .max()
        .unwrap_or(0);
    let mut out = ReplicaCheck {
        revision,
        hashes: BTreeMap::new(),
        missing: BTreeMap::new(),
    };
    if revision == 0 {
        for ((id, _), r) in members.iter().zip(current) {
            out.missing
                .insert(*id, r.err().unwrap_or_else(|| "no revision".into()));
        }
        return out;
    }
    // Compaction is replicated but each member sweeps on its own: a hash
    // taken mid-sweep names another compact revision, so hash them all
    // again until the compact revisions agree or time runs out.
    loop {
        let hashed = futures::future::join_all(
            members
                .iter()
                .map(|(_, addr)| hash(admin, addr, revision, deadline)),
        )
        .await;
        out.hashes.clear();
        out.missing.clear();
        for ((id, _), r) in members.iter().zip(hashed) {
            match r {
                Ok(r) => {
                    out.hashes.insert(*id, (r.hash, r.compact_revision));
                }
                Err(e) => {
                    out.missing.insert(*id, e);
                }
            }
        }
        let mut compactions = out.hashes.values().map(|(_, c)| *c);
        let first = compactions.next();
        let agreed = compactions.all(|c| Some(c) == first);
        if agreed || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out
}

/// HashKV of one member at `revision`, retried until `deadline` (a member
/// still catching up answers that the revision is in its future).
async fn hash(
    admin: &Client,
    addr: &str,
    revision: i64,
    deadline: Instant,
) -> Result<nines_client::proto::HashKvResponse, String> {
    loop {
        match admin.hash_kv_of(addr, revision, HASH_LIMIT).await {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(hashes: &[(u64, u32)], missing: &[u64]) -> ReplicaCheck {
        ReplicaCheck {
            revision: 9,
            hashes: hashes.iter().map(|&(id, h)| (id, (h, 3))).collect(),
            missing: missing.iter().map(|&id| (id, "timeout".into())).collect(),
        }
    }

    #[test]
    fn one_hash_on_every_member_is_identical() {
        assert!(check(&[(1, 7), (2, 7), (3, 7)], &[]).identical());
        let differ = check(&[(1, 7), (2, 8), (3, 7)], &[]);
        assert!(!differ.identical());
        assert!(
            differ.verdict().starts_with("DIFFERENT"),
            "{}",
            differ.verdict()
        );
        assert!(
            !check(&[(1, 7), (2, 7)], &[3]).identical(),
            "a member never hashed"
        );
        assert!(!check(&[], &[]).identical());
    }
}
