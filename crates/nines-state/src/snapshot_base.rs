//! A snapshot built from the previous one: its revision records are copied
//! from the previous snapshot file, and only the newer records and the
//! state's other keys (meta, leases, sessions, auth) are read from the
//! engine.
//!
//! Why: a revision record never changes once written, and only a compaction
//! removes any. So while no compaction came between two snapshots, the
//! newer one's records up to the older one's revision are exactly the older
//! one's. Copying them is a sequential file read; scanning them out of sled
//! decodes every page and pushes the pages readers need out of its cache.
//! At 1,000,000 keys of 256 B the full scan was what cost put-64 about 40%
//! of its throughput while all three members built their snapshots.
//!
//! The file keeps the order a full build writes (keys below the revision
//! records, the revision records by revision, keys above them, then the
//! undo map), and the capture is the same: applies record the capture-point
//! value of every non-revision key the scan has not reached.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nines_types::SnapshotMeta;

use crate::capture::CaptureGuard;
use crate::engine::Engine;
use crate::error::StateError;
use crate::mvcc::{rev_key, Rev, REV_PREFIX};
use crate::redo;
use crate::sled_engine::SledEngine;
use crate::snapshot_builder::History;
use crate::snapshot_file::{SnapshotReader, SnapshotWriter};
use crate::store::Shared;

/// The newest snapshot file this member built, and what it holds.
#[derive(Clone, Debug)]
pub(crate) struct Base {
    pub path: PathBuf,
    pub revision: i64,
    pub compacted: i64,
    /// The engine tree it was read from (an install replaces the tree).
    pub tree: Vec<u8>,
}

/// Writes the snapshot at `history` to `tmp`, its revision records up to
/// `base.revision` from `base`'s file. The caller checked that no
/// compaction came between (`base.compacted == history.compacted`) and
/// that the tree is the same. Any failure reading `base` fails the build;
/// the caller then builds in full with a new capture.
pub(crate) fn write(
    shared: &Shared,
    engine: &SledEngine,
    guard: CaptureGuard<'_>,
    meta: &SnapshotMeta,
    history: History,
    base: &Base,
    tmp: &std::path::Path,
) -> Result<(), StateError> {
    let delay = Duration::from_nanos(shared.stats.scan_delay_nanos.load(Ordering::Relaxed));
    let mut writer = SnapshotWriter::create(tmp, meta)?;
    let after_revisions = [REV_PREFIX + 1];
    // Keys below the revision records.
    meta_keys(engine, &guard, &mut writer, &[], Some(&[REV_PREFIX]), delay)?;
    // Revision records up to the base's revision, as the base holds them.
    let (_, mut reader) = SnapshotReader::open(&base.path)?;
    while let Some((key, value)) = reader.next_record()? {
        if key.first() == Some(&REV_PREFIX) {
            writer.record(&key, &value)?;
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
        }
    }
    // The newer ones, up to the captured revision, from the engine.
    let from = rev_key(Rev {
        main: base.revision.saturating_add(1),
        sub: 0,
    });
    let to = rev_key(Rev {
        main: history.revision.saturating_add(1),
        sub: 0,
    });
    for item in engine.scan(&from, Some(&to)) {
        let (key, value) = item?;
        writer.record(key.as_ref(), &value)?;
    }
    meta_keys(engine, &guard, &mut writer, &after_revisions, None, delay)?;
    for (key, value) in guard.finish() {
        if let Some(value) = value {
            writer.record(&key, &value)?;
        }
    }
    writer.finish()?;
    shared
        .stats
        .builds_from_base
        .fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The non-revision keys in `start..end` whose capture-point value is the
/// live one (the rest come from the undo map at the end).
fn meta_keys(
    engine: &SledEngine,
    guard: &CaptureGuard<'_>,
    writer: &mut SnapshotWriter,
    start: &[u8],
    end: Option<&[u8]>,
    delay: Duration,
) -> Result<(), StateError> {
    for item in engine.scan(start, end) {
        let (key, value) = item?;
        let key = key.as_ref();
        // An apply in flight: its writes reach the snapshot through the undo map.
        if key == redo::REDO_KEY {
            continue;
        }
        if guard.check(key) {
            writer.record(key, &value)?;
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
    Ok(())
}
