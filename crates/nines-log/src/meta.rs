//! Small metadata files (`vote`, `purged`) replaced atomically, the
//! directory fsync helper and the directory lock.
//!
//! File format: `[u32 LE crc32c(payload)][u32 LE payload len][payload]`,
//! payload = bincode 2 (standard config) serde encoding.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use nines_types::{LogId, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::LogError;

pub(crate) const VOTE_FILE: &str = "vote";
pub(crate) const PURGED_FILE: &str = "purged";
pub(crate) const LOCK_FILE: &str = "LOCK";
const TMP_SUFFIX: &str = ".tmp";

/// Makes directory entry changes (create, rename, unlink) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

/// Takes an exclusive, non-blocking `flock` on `dir/LOCK`. The lock lives as
/// long as the returned handle, and the kernel drops it if the process dies.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LogError::io(&path, e))?;
    // SAFETY: flock on a valid, owned file descriptor has no memory effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == ErrorKind::WouldBlock {
            return Err(LogError::Locked { path });
        }
        return Err(LogError::io(&path, err));
    }
    Ok(file)
}

/// Removes temp files left by a crash in the middle of `write_atomic`.
pub(crate) fn remove_stale_tmp(dir: &Path) -> Result<(), LogError> {
    for name in [VOTE_FILE, PURGED_FILE] {
        let path = dir.join(format!("{name}{TMP_SUFFIX}"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io(&path, e)),
        }
    }
    Ok(())
}

/// Replaces `dir/name` so that after a crash it holds either the old or the
/// new content: write a temp file, fsync it, rename over, fsync the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, payload: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let len = u32::try_from(payload.len())
        .map_err(|_| LogError::Encode(format!("{name}: payload too large")))?;
    let mut buf = Vec::with_capacity(8 + payload.len());
    buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(payload);
    let mut f = File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    f.write_all(&buf)
        .and_then(|()| f.sync_all())
        .map_err(|e| LogError::io(&tmp, e))?;
    drop(f);
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
    fsync_dir(dir)
}

/// Reads a file written by `write_atomic`; `None` if it does not exist.
pub(crate) fn read(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, LogError> {
    let path = dir.join(name);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(&path, e)),
    };
    if data.len() < 8 {
        return Err(LogError::corrupt(&path, 0, "file shorter than its header"));
    }
    let crc = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let len = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
    let payload = &data[8..];
    if payload.len() != len {
        return Err(LogError::corrupt(
            &path,
            4,
            format!(
                "length {len} does not match {} payload bytes",
                payload.len()
            ),
        ));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(LogError::corrupt(&path, 0, "checksum mismatch"));
    }
    Ok(Some(payload.to_vec()))
}

fn write_value<T: Serialize>(dir: &Path, name: &str, v: &T) -> Result<(), LogError> {
    let payload = nines_types::codec::encode(v).map_err(|e| LogError::Encode(e.to_string()))?;
    write_atomic(dir, name, &payload)
}

fn read_value<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, LogError> {
    let Some(payload) = read(dir, name)? else {
        return Ok(None);
    };
    let v = nines_types::codec::decode(&payload)
        .map_err(|e| LogError::corrupt(dir.join(name), 8, e.to_string()))?;
    Ok(Some(v))
}

pub(crate) fn write_vote(dir: &Path, vote: &Vote) -> Result<(), LogError> {
    write_value(dir, VOTE_FILE, vote)
}

pub(crate) fn read_vote(dir: &Path) -> Result<Option<Vote>, LogError> {
    read_value(dir, VOTE_FILE)
}

pub(crate) fn write_purged(dir: &Path, purged: &LogId) -> Result<(), LogError> {
    write_value(dir, PURGED_FILE, purged)
}

pub(crate) fn read_purged(dir: &Path) -> Result<Option<LogId>, LogError> {
    read_value(dir, PURGED_FILE)
}
