//! Restoring a backup into the data dir of a member of a NEW cluster, what
//! `nines snapshot restore` runs (etcd's `etcdutl snapshot restore`). No
//! gRPC here: the state and the log are written by their own crates, this
//! module only lays out the data dir the way `NinesNode::start` reads it.
//!
//! What a restored member starts from (openraft's view):
//! - state machine: the backup's records (history and revisions), last
//!   applied = `L`, membership = the new `--initial-cluster`, all voters;
//!   the same as the dir's snapshot, so new members get it by snapshot;
//! - log: empty, purged up to `L`;
//! - vote: none.
//!
//! `L` keeps the source's applied index (exactly-once sessions expire by
//! index) with term 0 and node 0, the leader id openraft gives the entry
//! `initialize` writes: every term the new cluster elects is above it, and
//! every member restored with the same `--initial-cluster` starts from the
//! same `L` and membership, so no `initialize` is needed (none happens:
//! the dir holds state).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nines_log::LogStore;
use nines_types::{LogId, NodeId, StoredMembership};
use openraft::{CommittedLeaderId, Membership};

use crate::config::{cluster_id_of, parse_initial_cluster};
use crate::datadir::DataDir;
use crate::disk;
use crate::error::ServerError;

/// What to restore where.
#[derive(Debug, Clone)]
pub struct RestoreSpec {
    /// A file `Maintenance.Snapshot` streamed (`nines`/`etcdctl snapshot save`).
    pub backup: PathBuf,
    /// Must not exist yet, or be empty.
    pub data_dir: PathBuf,
    pub id: NodeId,
    /// The new cluster, `ID=PEER_ADDR[/CLIENT_ADDR],...`: the same for
    /// every member restored.
    pub initial_cluster: String,
    /// If given, must be this member's peer address in `initial_cluster`.
    pub advertise_peer: Option<String>,
    /// The new cluster's token (its cluster id derives from it).
    pub cluster_token: String,
}

/// What a restore made.
#[derive(Debug, Clone)]
pub struct Restored {
    pub revision: i64,
    /// The Raft index the new cluster continues after.
    pub applied_index: u64,
    pub cluster_id: u64,
    pub members: BTreeSet<NodeId>,
}

pub async fn restore(spec: &RestoreSpec) -> Result<Restored, ServerError> {
    let members = parse_initial_cluster(&spec.initial_cluster)?;
    let me = members.get(&spec.id).ok_or_else(|| {
        ServerError::Config(format!(
            "--initial-cluster does not list this member's id {}",
            spec.id
        ))
    })?;
    if let Some(peer) = &spec.advertise_peer {
        let peer = nines_tls::strip_scheme(peer);
        if peer != me.raft_addr {
            return Err(ServerError::Config(format!(
                "--advertise-peer {peer} is not member {}'s peer address in \
                 --initial-cluster ({})",
                spec.id, me.raft_addr
            )));
        }
    }
    if !is_empty_or_absent(&spec.data_dir) {
        return Err(ServerError::Config(format!(
            "--data-dir {} exists and is not empty: a restore makes a new member's data dir",
            spec.data_dir.display()
        )));
    }
    // Checked whole before anything is written.
    let backup = spec.backup.clone();
    let source = tokio::task::spawn_blocking(move || nines_state::verify_backup(&backup))
        .await
        .map_err(|e| ServerError::Config(format!("verifying the backup: {e}")))??;
    let applied = LogId::new(
        CommittedLeaderId::new(0, 0),
        source.last_log_id.map_or(0, |l| l.index),
    );
    let ids: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = StoredMembership::new(
        Some(applied),
        Membership::new(vec![ids.clone()], members.clone()),
    );

    // Built beside the target and renamed into place at the end: an
    // interrupted restore leaves no dir a node would start on.
    let staging = staging_path(&spec.data_dir)?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| dir_error(&staging, e))?;
    }
    let cluster_id = cluster_id_of(&spec.cluster_token);
    let revision = {
        let _lock = DataDir::open(&staging, cluster_id, spec.id)?;
        let revision = nines_state::restore_state(
            &spec.backup,
            &disk::state_dir(&staging),
            applied,
            membership,
        )
        .await?;
        let log_dir = disk::log_dir(&staging);
        tokio::task::spawn_blocking(move || LogStore::create_restored(&log_dir, applied))
            .await
            .map_err(|e| ServerError::Config(format!("creating the log: {e}")))??;
        revision
    };
    if spec.data_dir.exists() {
        // Empty (checked above): rename cannot replace a directory otherwise.
        std::fs::remove_dir(&spec.data_dir).map_err(|e| dir_error(&spec.data_dir, e))?;
    }
    std::fs::rename(&staging, &spec.data_dir).map_err(|e| dir_error(&spec.data_dir, e))?;
    if let Some(parent) = spec.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| dir_error(parent, e))?;
    }
    Ok(Restored {
        revision,
        applied_index: applied.index,
        cluster_id,
        members: ids,
    })
}

fn is_empty_or_absent(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

fn staging_path(data_dir: &Path) -> Result<PathBuf, ServerError> {
    let name = data_dir.file_name().ok_or_else(|| {
        ServerError::Config(format!(
            "--data-dir {} has no directory name",
            data_dir.display()
        ))
    })?;
    let mut staged = name.to_os_string();
    staged.push(".restoring");
    Ok(data_dir.with_file_name(staged))
}

fn dir_error(path: &Path, source: std::io::Error) -> ServerError {
    ServerError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> RestoreSpec {
        RestoreSpec {
            backup: dir.join("missing.db"),
            data_dir: dir.join("node1"),
            id: 1,
            initial_cluster: "1=127.0.0.1:7101/127.0.0.1:7001,2=127.0.0.1:7102".into(),
            advertise_peer: None,
            cluster_token: "restored".into(),
        }
    }

    #[tokio::test]
    async fn refuses_bad_specs_before_writing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.id = 3;
        let err = restore(&s).await.unwrap_err().to_string();
        assert!(err.contains("does not list this member's id 3"), "{err}");

        let mut s = spec(dir.path());
        s.advertise_peer = Some("http://127.0.0.1:9".into());
        let err = restore(&s).await.unwrap_err().to_string();
        assert!(err.contains("is not member 1's peer address"), "{err}");

        let s = spec(dir.path());
        std::fs::create_dir_all(s.data_dir.join("state")).unwrap();
        let err = restore(&s).await.unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");

        let s = spec(&dir.path().join("other"));
        let err = restore(&s).await.unwrap_err().to_string();
        assert!(err.contains("missing.db"), "{err}");
        assert!(!s.data_dir.exists());
        assert!(!staging_path(&s.data_dir).unwrap().exists());
    }
}
