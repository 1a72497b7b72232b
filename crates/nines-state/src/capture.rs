//! Copy-on-write undo capture: how a snapshot stays point-in-time while
//! applies continue (sled 0.34 has no snapshot iterator).
//!
//! While a build runs, every apply records, for each key it is about to
//! write, the key's value before its first change since the capture began.
//! The build scans the live tree, skips keys found in the undo map, and
//! finally writes the undo map's original values.
//!
//! Revision records are exempt: they are written once and never changed, so
//! the build takes those at or below the captured revision straight from
//! the scan, and applies need not record the (absent) value of every new one.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Instant;

use crate::engine::{Engine, Write};
use crate::error::StateError;
use crate::mvcc::REV_PREFIX;
use crate::store::{lock, read_meta, MetaState, Shared};
use crate::tiered::TieredEngine;

pub(crate) struct Capture {
    /// Raw tree key → value at the capture point (None: key did not exist).
    pub undo: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Last key the scan has checked. Keys `<=` it are already in the
    /// snapshot (or in `undo`), so applies need not record them: this keeps
    /// the map small and the snapshot free of duplicate records.
    pub cursor: Option<Vec<u8>>,
}

impl Capture {
    /// Called by apply, with the capture lock held, before writing `key`.
    pub fn remember<E: Engine>(&mut self, engine: &E, key: &[u8]) -> Result<bool, StateError> {
        if key.first() == Some(&REV_PREFIX)
            || self.cursor.as_deref().is_some_and(|c| key <= c)
            || self.undo.contains_key(key)
        {
            return Ok(false);
        }
        let before = engine.get(key)?.map(|v| v.as_ref().to_vec());
        self.undo.insert(key.to_vec(), before);
        Ok(true)
    }
}

/// Call before an apply writes `writes` to `engine`: records undo values if
/// a snapshot build is capturing. Hold the returned guard until the writes
/// are done: a scan that finds a key absent from `undo` then knows no write
/// to it has started or is in flight.
pub(crate) fn before_write<'a, E: Engine>(
    shared: &'a Shared,
    engine: &E,
    writes: &[Write],
) -> Result<MutexGuard<'a, Option<Capture>>, StateError> {
    let mut guard = lock(&shared.capture);
    let mut captured = 0u64;
    if let Some(capture) = guard.as_mut() {
        for (key, _) in writes {
            if capture.remember(engine, key)? {
                captured += 1;
            }
        }
    }
    if captured > 0 {
        shared
            .stats
            .undo_captured
            .fetch_add(captured, Ordering::Relaxed);
    }
    Ok(guard)
}

/// Starts a capture and returns the meta at the capture point. This is the
/// only moment a build blocks apply: one mutex hold plus three point reads.
pub(crate) fn begin(shared: &Shared, engine: &TieredEngine) -> Result<MetaState, StateError> {
    let started = Instant::now();
    let meta = {
        let mut guard = lock(&shared.capture);
        let meta = read_meta(engine)?;
        // No apply is writing (they hold this lock while they do): what
        // follows the captured revision goes to a file of its own.
        engine.rotate_tail()?;
        *guard = Some(Capture {
            undo: HashMap::new(),
            cursor: None,
        });
        meta
    };
    let blocked = started.elapsed();
    shared
        .stats
        .last_capture_nanos
        .store(blocked.as_nanos() as u64, Ordering::Relaxed);
    tracing::debug!(
        ?blocked,
        "snapshot capture started; apply was blocked for this long"
    );
    Ok(meta)
}

/// Ends the capture (also on error paths, via drop) and hands back the undo map.
pub(crate) struct CaptureGuard<'a> {
    pub shared: &'a Shared,
}

impl CaptureGuard<'_> {
    /// Marks `key` as checked by the scan; true if the scan must write it.
    pub fn check(&self, key: &[u8]) -> bool {
        let mut guard = lock(&self.shared.capture);
        match guard.as_mut() {
            Some(capture) => {
                let write = !capture.undo.contains_key(key);
                capture.cursor = Some(key.to_vec());
                write
            }
            None => true,
        }
    }

    pub fn finish(self) -> HashMap<Vec<u8>, Option<Vec<u8>>> {
        lock(&self.shared.capture)
            .take()
            .map(|c| c.undo)
            .unwrap_or_default()
    }
}

impl Drop for CaptureGuard<'_> {
    fn drop(&mut self) {
        // Without this an aborted build would leave applies recording forever.
        *lock(&self.shared.capture) = None;
    }
}
