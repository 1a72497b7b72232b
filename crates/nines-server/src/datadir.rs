//! The data directory: an exclusive lock, and an identity file that stops a
//! node from starting on another node's or another cluster's data.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use nines_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    cluster_id: u64,
    node_id: NodeId,
}

/// Holds the directory lock for as long as it lives.
pub struct DataDir {
    _lock: File,
}

impl DataDir {
    pub fn open(path: &Path, cluster_id: u64, node_id: NodeId) -> Result<DataDir, ServerError> {
        let io = |source| ServerError::DataDir {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("LOCK"))
            .map_err(io)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(ServerError::Locked(path.to_path_buf()));
        }
        let identity_path = path.join("identity.json");
        let want = Identity {
            cluster_id,
            node_id,
        };
        match std::fs::read(&identity_path) {
            Ok(bytes) => {
                let have: Identity =
                    serde_json::from_slice(&bytes).map_err(|e| ServerError::Mismatch {
                        path: path.to_path_buf(),
                        what: format!("an unreadable identity file ({e})"),
                    })?;
                if have.cluster_id != want.cluster_id {
                    return Err(ServerError::Mismatch {
                        path: path.to_path_buf(),
                        what: format!(
                            "cluster {:016x}, not {:016x} (check --cluster-token)",
                            have.cluster_id, want.cluster_id
                        ),
                    });
                }
                if have.node_id != want.node_id {
                    return Err(ServerError::Mismatch {
                        path: path.to_path_buf(),
                        what: format!("node {}, not node {}", have.node_id, want.node_id),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = serde_json::to_vec(&want).map_err(|e| io(std::io::Error::other(e)))?;
                write_durably(path, &identity_path, &bytes).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        Ok(DataDir { _lock: lock })
    }
}

pub(crate) fn write_durably(dir: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = target.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, target)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDir::open(dir.path(), 7, 1).unwrap();
        assert!(matches!(
            DataDir::open(dir.path(), 7, 1),
            Err(ServerError::Locked(_))
        ));
        drop(held);
        assert!(matches!(
            DataDir::open(dir.path(), 8, 1),
            Err(ServerError::Mismatch { .. })
        ));
        assert!(matches!(
            DataDir::open(dir.path(), 7, 2),
            Err(ServerError::Mismatch { .. })
        ));
        assert!(DataDir::open(dir.path(), 7, 1).is_ok());
    }
}
