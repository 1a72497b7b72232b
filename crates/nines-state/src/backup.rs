//! Backups: what etcd's `Maintenance.Snapshot` streams, and what `nines
//! snapshot status` and `restore` read. A backup is a snapshot file in
//! nines' own format (`snapshot_file.rs`; not etcd's bbolt db), zero bytes
//! up to a multiple of [`BACKUP_ALIGN`], then the SHA-256 of all that, as
//! etcd appends one to its db. etcdctl accepts a download only if its size
//! is 32 more than a multiple of 512 (its test for "has a checksum"; bbolt
//! pages are multiples of 512), hence the padding.

use std::fs::File;
use std::io::{BufReader, Read, Take};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use nines_types::{LogId, SnapshotMeta, StoredMembership};
use sha2::{Digest, Sha256};

use crate::error::StateError;
use crate::install;
use crate::mvcc::Mvcc;
use crate::sled_engine::SledEngine;
use crate::snapshot_builder::capture_to;
use crate::snapshot_dir::SnapshotDir;
use crate::snapshot_file::{SnapshotReader, SnapshotWriter};
use crate::state_machine::StateMachine;
use crate::store::{Shared, StateOptions, SNAPSHOT_DIR};

/// Bytes of the SHA-256 that ends a backup.
pub const CHECKSUM_LEN: u64 = 32;
/// The data before the checksum is zero-padded to a multiple of this.
pub const BACKUP_ALIGN: u64 = 512;

/// A point-in-time snapshot written for a backup stream.
#[derive(Debug)]
pub struct Export {
    /// Open and already unlinked: nothing is left behind when the handle
    /// goes, however the stream ends.
    pub file: File,
    pub len: u64,
    /// The store revision the snapshot holds.
    pub revision: i64,
    pub applied: Option<LogId>,
}

/// Writes a snapshot of the current state for a backup. The caller holds
/// the build lock.
pub(crate) fn export(shared: &Shared) -> Result<Export, StateError> {
    let tmp = shared.snapshots.tmp_path("export");
    let captured = capture_to(shared, &tmp)?;
    let (meta, revision) = (captured.meta, captured.revision);
    let file = File::open(&tmp).map_err(|e| StateError::io(&tmp, e));
    let _ = std::fs::remove_file(&tmp);
    let file = file?;
    let len = file.metadata().map_err(|e| StateError::io(&tmp, e))?.len();
    Ok(Export {
        file,
        len,
        revision,
        applied: meta.last_log_id,
    })
}

/// Checks a backup's SHA-256 and every record's framing and CRC; returns
/// the meta of the cluster it was taken from.
pub fn verify_backup(path: &Path) -> Result<SnapshotMeta, StateError> {
    let (meta, mut reader) = open_backup(path)?;
    while reader.next_record()?.is_some() {}
    Ok(meta)
}

/// Opens a backup whose checksum verifies, positioned at its first record.
fn open_backup(path: &Path) -> Result<(SnapshotMeta, SnapshotReader<Take<File>>), StateError> {
    let data_len = check_sha256(path)?;
    let file = File::open(path).map_err(|e| StateError::io(path, e))?;
    let (meta, reader) = SnapshotReader::from_reader(file.take(data_len), path)?;
    Ok((meta, reader.allow_padding(BACKUP_ALIGN as usize - 1)))
}

/// Hashes all but the last [`CHECKSUM_LEN`] bytes and compares them with
/// those; returns the length of the data before the checksum.
fn check_sha256(path: &Path) -> Result<u64, StateError> {
    let file = File::open(path).map_err(|e| StateError::io(path, e))?;
    let len = file.metadata().map_err(|e| StateError::io(path, e))?.len();
    let Some(data_len) = len.checked_sub(CHECKSUM_LEN) else {
        return Err(StateError::corrupt(
            path,
            format!("{len} bytes: shorter than its sha256 checksum (is it a snapshot?)"),
        ));
    };
    let mut input = BufReader::with_capacity(256 * 1024, file);
    let mut hasher = Sha256::new();
    let copied = std::io::copy(&mut (&mut input).take(data_len), &mut hasher)
        .map_err(|e| StateError::io(path, e))?;
    let mut stored = [0u8; CHECKSUM_LEN as usize];
    if copied != data_len || input.read_exact(&mut stored).is_err() {
        return Err(StateError::corrupt(
            path,
            "the file changed while it was read",
        ));
    }
    let computed = hasher.finalize();
    if computed.as_slice() != stored {
        return Err(StateError::corrupt(
            path,
            format!(
                "sha256 checksum mismatch: the file is damaged or incomplete \
                 (data hashes to {}, the file ends with {})",
                hex(&computed),
                hex(&stored)
            ),
        ));
    }
    Ok(data_len)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `nines snapshot status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupStatus {
    /// What HashKV answers at `revision` on a member of the source cluster.
    pub hash: u32,
    pub revision: i64,
    pub compact_revision: i64,
    /// Keys that exist at `revision`.
    pub total_keys: u64,
    /// Bytes of the file, checksum included.
    pub total_size: u64,
    /// The Raft index the source member had applied.
    pub applied_index: u64,
}

/// Verifies a backup and computes its status. The records are loaded into
/// a scratch sled db under `scratch_parent` (removed afterwards), so memory
/// stays bounded by the key index, as on a member.
pub fn backup_status(path: &Path, scratch_parent: &Path) -> Result<BackupStatus, StateError> {
    let total_size = std::fs::metadata(path)
        .map_err(|e| StateError::io(path, e))?
        .len();
    let (meta, reader) = open_backup(path)?;
    let scratch = Scratch::new(scratch_parent)?;
    let db = sled::Config::new()
        .path(&scratch.0)
        .cache_capacity(64 * 1024 * 1024)
        .open()?;
    let tree = db.open_tree("status")?;
    let state = install::load(&tree, reader, path, &meta)?;
    let store = Mvcc::open(
        SledEngine::new(tree),
        state.revision,
        state.compacted,
        &AtomicU64::new(0),
    )?;
    let hash = store.hash_kv(state.revision.max(0))?;
    Ok(BackupStatus {
        hash: hash.hash,
        revision: state.revision,
        compact_revision: state.compacted,
        total_keys: store.live_keys(state.revision),
        total_size,
        applied_index: meta.last_log_id.map_or(0, |l| l.index),
    })
}

/// A scratch dir removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path) -> Result<Scratch, StateError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = parent.join(format!(".nines-status-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| StateError::io(&path, e))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes `state_dir` (absent or empty) the state of a NEW cluster from a
/// backup: the backup's records (history and revisions), with `applied`
/// as the last applied log id and `membership` in place of the source
/// cluster's. They are written as the dir's snapshot, then the state
/// machine is opened once, which loads it as after a crash mid-install:
/// the dir is checked before any node starts on it. Returns the revision.
pub async fn restore_state(
    backup: &Path,
    state_dir: &Path,
    applied: LogId,
    membership: StoredMembership,
) -> Result<i64, StateError> {
    let (backup_path, dir) = (backup.to_path_buf(), state_dir.to_path_buf());
    tokio::task::spawn_blocking(move || write_restored(&backup_path, &dir, applied, membership))
        .await??;
    let sm = StateMachine::open(state_dir, StateOptions::default()).await?;
    let reader = sm.reader();
    if reader.last_applied() != Some(applied) {
        return Err(StateError::Restore(format!(
            "the restored state opened at {:?}, not {applied:?}",
            reader.last_applied()
        )));
    }
    Ok(reader.revision())
}

fn write_restored(
    backup: &Path,
    state_dir: &Path,
    applied: LogId,
    membership: StoredMembership,
) -> Result<(), StateError> {
    if std::fs::read_dir(state_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(StateError::Restore(format!(
            "{} is not empty",
            state_dir.display()
        )));
    }
    let (_, mut reader) = open_backup(backup)?;
    let snapshots = SnapshotDir::new(state_dir.join(SNAPSHOT_DIR));
    snapshots.create()?;
    let meta = SnapshotMeta {
        last_log_id: Some(applied),
        last_membership: membership,
        snapshot_id: snapshots.new_id(Some(applied)),
    };
    let tmp = snapshots.tmp_path("restore");
    let copied = (|| {
        let mut writer = SnapshotWriter::create(&tmp, &meta)?;
        while let Some((key, value)) = reader.next_record()? {
            writer.record(&key, &value)?;
        }
        writer.finish().map(|(count, _)| count)
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    snapshots.publish(&tmp, &snapshots.file_for(&meta.snapshot_id))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A backup as a member streams it: snapshot bytes, zero padding,
    /// then their sha256.
    fn backup_of(snapshot: &Path, out: &Path) {
        let mut data = std::fs::read(snapshot).unwrap();
        data.resize(data.len().next_multiple_of(BACKUP_ALIGN as usize), 0);
        let mut f = File::create(out).unwrap();
        f.write_all(&data).unwrap();
        f.write_all(&Sha256::digest(&data)).unwrap();
    }

    fn snapshot_file(dir: &Path) -> PathBuf {
        let path = dir.join("s.snap");
        let mut w = SnapshotWriter::create(&path, &SnapshotMeta::default()).unwrap();
        w.record(b"mrevision", &crate::store::encode(&0i64).unwrap())
            .unwrap();
        w.finish().unwrap();
        path
    }

    #[test]
    fn a_damaged_or_cut_backup_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.db");
        backup_of(&snapshot_file(dir.path()), &good);
        verify_backup(&good).unwrap();

        let bytes = std::fs::read(&good).unwrap();
        let mut flipped = bytes.clone();
        flipped[20] ^= 0x01;
        let bad = dir.path().join("bad.db");
        std::fs::write(&bad, &flipped).unwrap();
        let err = verify_backup(&bad).unwrap_err().to_string();
        assert!(err.contains("sha256 checksum mismatch"), "{err}");

        std::fs::write(&bad, &bytes[..bytes.len() - 1]).unwrap();
        let err = verify_backup(&bad).unwrap_err().to_string();
        assert!(err.contains("sha256 checksum mismatch"), "{err}");

        std::fs::write(&bad, &bytes[..10]).unwrap();
        let err = verify_backup(&bad).unwrap_err().to_string();
        assert!(err.contains("shorter than its sha256"), "{err}");

        // A valid checksum over a bad snapshot: the inner CRC catches it.
        let mut inner = std::fs::read(snapshot_file(dir.path())).unwrap();
        let last = inner.len() - 1;
        inner[last] ^= 0xff;
        let raw = dir.path().join("raw");
        std::fs::write(&raw, &inner).unwrap();
        backup_of(&raw, &bad);
        let err = verify_backup(&bad).unwrap_err().to_string();
        assert!(err.contains("crc32c mismatch"), "{err}");

        // Padding must be zeros, and less than the alignment.
        let mut inner = std::fs::read(snapshot_file(dir.path())).unwrap();
        inner.push(1);
        std::fs::write(&raw, &inner).unwrap();
        backup_of(&raw, &bad);
        let err = verify_backup(&bad).unwrap_err().to_string();
        assert!(err.contains("trailing bytes"), "{err}");
        let mut inner = std::fs::read(snapshot_file(dir.path())).unwrap();
        inner.resize(inner.len() + BACKUP_ALIGN as usize, 0);
        std::fs::write(&raw, &inner).unwrap();
        backup_of(&raw, &bad);
        let err = verify_backup(&bad).unwrap_err().to_string();
        assert!(err.contains("trailing bytes"), "{err}");
    }
}
