//! Rebuilding a damaged state machine.
//!
//! The sled tree is derived data: the newest snapshot plus the committed
//! Raft log reproduce it (openraft re-applies committed entries after
//! `last_applied` at startup). So when sled fails to open, or its contents
//! cannot be read, the sled dir is moved aside (`sm.corrupt-<unix-ts>`,
//! never deleted: an operator may want it) and a fresh one is filled from
//! the newest valid snapshot. Only a damaged log is a hard stop, and a log
//! purged past what the snapshot covers (`check_rebuildable`).
//!
//! sled 0.34's recovery can also hang after a full disk. So the sled part of
//! an open runs on a thread of its own ([`run_watched`]); one that makes no
//! progress for `open_stall_timeout` counts as damage. That thread cannot be
//! stopped and may wake later, and sled reaches its files by path (blobs,
//! its snapshot file on drop): it is therefore handed a symlink to the sled
//! dir, which is removed before the dir is moved aside, so the rebuilt db at
//! the real path shares no path with it.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::StateError;
use crate::mvcc::REV_PREFIX;
use crate::store::LEGACY_DATA_PREFIX;

/// Why an open failed: damage we can rebuild from, or anything else.
pub(crate) enum OpenFailure {
    Damaged(String),
    Other(StateError),
}

/// Runs `open`, sorting its failures. sled 0.34 can panic on some damaged
/// files instead of returning an error, hence the catch.
pub(crate) fn classify<T>(open: impl FnOnce() -> Result<T, StateError>) -> Result<T, OpenFailure> {
    match catch_unwind(AssertUnwindSafe(open)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if is_damage(&e) => Err(OpenFailure::Damaged(e.to_string())),
        Ok(Err(e)) => Err(OpenFailure::Other(e)),
        Err(panic) => Err(OpenFailure::Damaged(format!(
            "sled panicked: {}",
            panic_message(&*panic)
        ))),
    }
}

/// Damage to the files, as opposed to an environment problem (lock held by
/// another process, permissions, disk full) that must not trigger a rebuild.
fn is_damage(e: &StateError) -> bool {
    use std::io::ErrorKind;
    match e {
        StateError::Sled(sled::Error::Io(io)) => {
            matches!(io.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData)
        }
        StateError::Sled(
            sled::Error::Corruption { .. }
            | sled::Error::ReportableBug(_)
            | sled::Error::Unsupported(_),
        ) => true,
        StateError::Codec(_) | StateError::CorruptState(_) => true,
        _ => false,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Renames `sled_dir` to `<name>.corrupt-<unix-ts>` next to it.
pub(crate) fn move_aside(sled_dir: &Path) -> Result<PathBuf, StateError> {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = sled_dir
        .file_name()
        .map_or_else(|| "sm".into(), |n| n.to_string_lossy().into_owned());
    let mut aside = sled_dir.with_file_name(format!("{name}.corrupt-{ts}"));
    let mut n = 1;
    while aside.exists() {
        aside = sled_dir.with_file_name(format!("{name}.corrupt-{ts}-{n}"));
        n += 1;
    }
    if sled_dir.exists() {
        std::fs::rename(sled_dir, &aside).map_err(|e| StateError::io(sled_dir, e))?;
    }
    Ok(aside)
}

/// Reads every record of `tree` but the revision records (indexing them
/// reads those): sled loads pages lazily, so damage in the middle of its
/// files only shows when the pages are read. Counts each record in
/// `progress`. A tree holding user data in the layout from before the
/// multi-version store is refused as damage, so it is rebuilt from the log.
pub(crate) fn verify(
    db: &sled::Db,
    tree: &sled::Tree,
    progress: &AtomicU64,
) -> Result<(), StateError> {
    for item in db.iter() {
        item?;
        progress.fetch_add(1, Ordering::Relaxed);
    }
    if tree.range([REV_PREFIX]..[REV_PREFIX + 1]).next().is_some() {
        // Revision records live in snapshot files and tails now.
        return Err(StateError::CorruptState(
            "the state keeps revision records in sled (a nines version before tails)".into(),
        ));
    }
    let before_revisions = tree.range(..[REV_PREFIX]);
    let after_revisions = tree.range([REV_PREFIX + 1]..);
    for item in before_revisions.chain(after_revisions) {
        let (key, _) = item?;
        progress.fetch_add(1, Ordering::Relaxed);
        if key.first() == Some(&LEGACY_DATA_PREFIX) {
            return Err(StateError::CorruptState(
                "the state was written by a nines version before the multi-version store".into(),
            ));
        }
    }
    Ok(())
}

/// Runs `open` on a thread of its own, waiting as long as `progress` moves.
/// Once it has not moved for `stall`, gives up with [`OpenFailure::Damaged`]
/// and leaves the thread behind (see the module doc for why that is safe).
pub(crate) fn run_watched<T: Send + 'static>(
    stall: Duration,
    progress: &AtomicU64,
    open: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, OpenFailure> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("nines-state-open".into())
        .spawn(move || {
            // The receiver is gone if we gave up: dropping the result then
            // closes sled.
            let _ = tx.send(classify(open));
        })
        .map_err(|e| OpenFailure::Other(StateError::Task(format!("cannot start a thread: {e}"))))?;
    let mut seen = progress.load(Ordering::Relaxed);
    loop {
        match rx.recv_timeout(stall) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = progress.load(Ordering::Relaxed);
                if now == seen {
                    return Err(OpenFailure::Damaged(format!(
                        "opening sled made no progress for {stall:?} (sled's recovery \
                         hung; it can after a full disk)"
                    )));
                }
                seen = now;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(OpenFailure::Other(StateError::Task(
                    "the state machine's open thread ended without a result".into(),
                )))
            }
        }
    }
}

/// Makes `link` a symlink to `target` (a name in the same dir), replacing
/// whatever link an earlier process left.
pub(crate) fn relink(link: &Path, target: &str) -> Result<(), StateError> {
    unlink(link)?;
    std::os::unix::fs::symlink(target, link).map_err(|e| StateError::io(link, e))
}

/// Removes the symlink `link` if it exists (never what it points to).
pub(crate) fn unlink(link: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::io(link, e)),
        _ => Ok(()),
    }
}
