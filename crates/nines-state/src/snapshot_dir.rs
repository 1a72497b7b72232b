//! The snapshot directory: file naming, atomic publish, cleanup, discovery.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nines_types::{LogId, SnapshotMeta};

use crate::error::StateError;
use crate::snapshot_file::SnapshotReader;

const SNAP_EXT: &str = "snap";
const TMP_EXT: &str = "tmp";

pub(crate) struct SnapshotDir {
    path: PathBuf,
    counter: AtomicU64,
}

impl SnapshotDir {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            counter: AtomicU64::new(0),
        }
    }

    pub fn create(&self) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.path).map_err(|e| StateError::io(&self.path, e))
    }

    /// A snapshot id unique per build, even for equal log ids.
    pub fn new_id(&self, last: Option<LogId>) -> String {
        let (term, index) = last.map_or((0, 0), |l| (l.leader_id.term, l.index));
        format!("{term}-{index}-{}-{}", millis(), self.next())
    }

    /// Where the snapshot with this id lives. Ids arrive from peers, so
    /// anything that is not `[A-Za-z0-9_-]` is replaced to stay inside the dir.
    pub fn file_for(&self, snapshot_id: &str) -> PathBuf {
        let safe: String = snapshot_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.path.join(format!("{safe}.{SNAP_EXT}"))
    }

    pub fn tmp_path(&self, tag: &str) -> PathBuf {
        self.path.join(format!(
            "{tag}-{}-{}.{SNAP_EXT}.{TMP_EXT}",
            millis(),
            self.next()
        ))
    }

    /// Renames a complete, fsynced temp file into place and makes the rename durable.
    pub fn publish(&self, tmp: &Path, dest: &Path) -> Result<(), StateError> {
        std::fs::rename(tmp, dest).map_err(|e| StateError::io(dest, e))?;
        self.sync()
    }

    pub fn sync(&self) -> Result<(), StateError> {
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| StateError::io(&self.path, e))
    }

    /// Deletes every snapshot file but `keep`; failures only cost disk space.
    pub fn remove_others(&self, keep: &Path) {
        for path in self.list(SNAP_EXT) {
            if path != keep {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove old snapshot");
                }
            }
        }
    }

    /// Deletes temp files left by a crash mid-build or mid-receive.
    pub fn remove_tmp(&self) {
        for path in self.list(TMP_EXT) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove temp file");
            }
        }
    }

    /// The snapshots whose headers read, greatest last_log_id first (their
    /// bodies are checked by whoever reads them whole).
    pub fn newest_first(&self) -> Vec<(SnapshotMeta, PathBuf)> {
        let mut found = Vec::new();
        for path in self.list(SNAP_EXT) {
            match SnapshotReader::open(&path) {
                Ok((meta, _)) => found.push((meta, path)),
                Err(e) => tracing::warn!(error = %e, "ignoring unreadable snapshot"),
            }
        }
        found.sort_by_key(|(meta, _)| std::cmp::Reverse(meta.last_log_id));
        found
    }

    fn list(&self, ext: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect()
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }
}

fn millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
