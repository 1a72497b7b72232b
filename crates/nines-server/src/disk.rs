//! Sizes on disk, for `endpoint status` and metrics.

use std::path::Path;

/// Directory levels walked (the state dir has sled's blob dir and the
/// snapshot dir below it).
const MAX_DEPTH: usize = 4;

/// Bytes of the files under `dir`; unreadable entries count as 0 (a status
/// call must not fail because a snapshot was replaced mid-walk).
pub fn usage(dir: &Path) -> u64 {
    walk(dir, MAX_DEPTH)
}

fn walk(dir: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// The state machine's directory (sled and snapshots): etcd's "db".
pub fn state_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("state")
}

/// The Raft log's directory: etcd's WAL.
pub fn log_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_files_in_nested_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir_all(dir.path().join("x/y")).unwrap();
        std::fs::write(dir.path().join("x/y/b"), [0u8; 5]).unwrap();
        assert_eq!(usage(dir.path()), 15);
        assert_eq!(usage(&dir.path().join("missing")), 0);
    }
}
