//! Opening a log directory: lock it, scan every segment in order, drop a
//! torn tail from the last one, rebuild the index, and finish any purge or
//! reset a crash interrupted.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use nines_types::LogId;

use crate::error::LogError;
use crate::meta;
use crate::pipeline::Pipeline;
use crate::prealloc::Prealloc;
use crate::segment::{self, RecordType, Segment, HEADER_LEN};
use crate::wal::{remove_segment_file, Index, Loc, Wal, Writer};
use crate::LogOptions;

/// The last surviving segment after the scan.
struct Tail {
    seg: Arc<Segment>,
    len: u64,
    /// The file's length: past `len` it holds zeros (preallocated).
    file_len: u64,
    has_entries: bool,
}

pub(crate) fn open(dir: &Path, opts: LogOptions) -> Result<Wal, LogError> {
    fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    let lock = meta::lock_dir(dir)?;
    meta::remove_stale_tmp(dir)?;
    let purged = meta::read_purged(dir)?;
    let purged_next = match purged {
        None => 0,
        Some(p) => p.index.checked_add(1).ok_or_else(|| {
            LogError::corrupt(
                dir.join("purged"),
                0,
                "purged index at the end of the index space",
            )
        })?,
    };
    let names = list_segments(dir)?;

    let mut segments = BTreeMap::new();
    let mut locs: VecDeque<Loc> = VecDeque::new();
    let mut committed: Option<LogId> = None;
    // Index the next entry must have, per the segments seen so far.
    let mut expected: Option<u64> = None;
    // Segments holding no live entry that precede the first live one.
    let mut stale: Vec<u64> = Vec::new();
    let mut tail: Option<Tail> = None;

    for (i, &name) in names.iter().enumerate() {
        let is_last = i + 1 == names.len();
        let seg = Segment::open(dir, name)?;
        let path = seg.path.clone();
        let data = fs::read(&path).map_err(|e| LogError::io(&path, e))?;
        let scan = segment::scan(&path, &data, is_last)?;
        if let Some(reason) = &scan.torn {
            tracing::warn!(
                path = %path.display(),
                offset = scan.valid_len,
                reason = %reason,
                "dropping torn tail of the last log segment"
            );
            if scan.valid_len < HEADER_LEN {
                // Created but never completed: it holds nothing.
                drop(seg);
                remove_segment_file(&path)?;
                meta::fsync_dir(dir)?;
                continue;
            }
            seg.file
                .set_len(scan.valid_len)
                .and_then(|()| seg.file.sync_all())
                .map_err(|e| LogError::io(&path, e))?;
        }
        if let Some(exp) = expected {
            // A jump is fine only where nothing live precedes it (a reset
            // after a purge past the end, or an empty log restarting), and
            // never past the purge point: segments before it that a crash
            // left behind mid-purge hid a lost segment after it.
            if exp != name && (!locs.is_empty() || purged.is_some() && name > purged_next) {
                return Err(LogError::corrupt(
                    &path,
                    0,
                    format!("segment starts at index {name} but the log continues at {exp} (missing segment?)"),
                ));
            }
        }
        let mut next = name;
        let mut has_entries = false;
        for rec in &scan.records {
            let payload = &data[rec.payload.clone()];
            match rec.kind {
                RecordType::Committed => {
                    committed = segment::decode_committed(payload)
                        .map_err(|e| LogError::corrupt(&path, rec.offset, e))?;
                }
                RecordType::Entry => {
                    let e = segment::decode_entry(payload)
                        .map_err(|e| LogError::corrupt(&path, rec.offset, e))?;
                    if e.log_id.index != next {
                        return Err(LogError::corrupt(
                            &path,
                            rec.offset,
                            format!("entry index {} where {next} was expected", e.log_id.index),
                        ));
                    }
                    next = next.checked_add(1).ok_or_else(|| {
                        LogError::corrupt(
                            &path,
                            rec.offset,
                            "entry index at the end of the index space",
                        )
                    })?;
                    has_entries = true;
                    if e.log_id.index >= purged_next {
                        locs.push_back(Loc {
                            seg: name,
                            off: rec.offset,
                            len: rec.len,
                            log_id: e.log_id,
                        });
                    }
                }
            }
        }
        expected = Some(next);
        if locs.is_empty() {
            stale.push(name);
        }
        let seg = Arc::new(seg);
        segments.insert(name, Arc::clone(&seg));
        tail = Some(Tail {
            seg,
            len: scan.valid_len,
            file_len: if scan.torn.is_some() {
                scan.valid_len
            } else {
                data.len() as u64
            },
            has_entries,
        });
    }

    let mut next_index = expected.unwrap_or(purged_next);
    let tail = match tail {
        // A purge past the end wrote `purged` but a crash stopped its reset.
        Some(t) if next_index >= purged_next => {
            remove_stale(dir, &mut segments, &stale, t.seg.first_index)?;
            t
        }
        // Otherwise a fresh directory, or a crash inside a reset: nothing
        // here is live, start over after the purge point.
        _ => {
            for s in segments.values().rev() {
                remove_segment_file(&s.path)?;
            }
            segments.clear();
            locs.clear();
            next_index = purged_next;
            let (seg, len) = Segment::create(dir, next_index, committed)?;
            meta::fsync_dir(dir)?;
            let seg = Arc::new(seg);
            segments.insert(next_index, Arc::clone(&seg));
            Tail {
                seg,
                len,
                file_len: len,
                has_entries: false,
            }
        }
    };
    let first = locs.front().map_or(next_index, |l| l.log_id.index);
    // What was read back may be only in the page cache (a crash before its
    // fdatasync): make it durable before calling it so, since openraft
    // reports it to the leader as stored.
    tail.seg
        .file
        .sync_data()
        .map_err(|e| LogError::io(&tail.seg.path, e))?;
    meta::fsync_dir(dir)?;
    let (durable, _) = nines_types::durable_index(next_index.saturating_sub(1));
    // A damaged vote file is reported by `read_vote`, where openraft reads
    // it; here it only means no pipelining until the next vote is saved.
    let pipeline = Pipeline::new(meta::read_vote(dir).ok().flatten(), durable);
    let prealloc = Prealloc::start(
        &tail.seg,
        tail.len,
        tail.file_len,
        opts.preallocate_bytes,
        opts.segment_bytes,
    )
    .map_err(|e| LogError::io(dir, e))?;
    Ok(Wal {
        pipeline,
        prealloc,
        dir: dir.to_path_buf(),
        opts,
        writer: Mutex::new(Writer {
            active: tail.seg,
            len: tail.len,
            has_entries: tail.has_entries,
            next_index,
            dirty: false,
        }),
        index: RwLock::new(Index {
            first,
            locs,
            segments,
            purged,
            committed,
        }),
        _lock: lock,
    })
}

/// Deletes segments before the first live entry (finishing an interrupted
/// purge or reset), never the active one.
fn remove_stale(
    dir: &Path,
    segments: &mut BTreeMap<u64, Arc<Segment>>,
    stale: &[u64],
    active: u64,
) -> Result<(), LogError> {
    let mut removed = false;
    for k in stale.iter().filter(|&&k| k != active) {
        if let Some(s) = segments.remove(k) {
            remove_segment_file(&s.path)?;
            removed = true;
        }
    }
    if removed {
        meta::fsync_dir(dir)?;
    }
    Ok(())
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut names = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let ent = ent.map_err(|e| LogError::io(dir, e))?;
        if let Some(first) = ent
            .file_name()
            .to_str()
            .and_then(segment::parse_segment_file_name)
        {
            names.push(first);
        }
    }
    names.sort_unstable();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use nines_types::LogId;
    use openraft::CommittedLeaderId;

    use crate::{LogError, LogOptions};

    /// `purged + 1` wrapped in release builds (every purged entry live
    /// again) and panicked in debug ones.
    #[test]
    fn a_purge_point_at_the_end_of_the_index_space_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let last = LogId::new(CommittedLeaderId::new(1, 1), u64::MAX);
        crate::meta::write_purged(dir.path(), &last).unwrap();
        let opened = super::open(dir.path(), LogOptions::default());
        assert!(
            matches!(opened, Err(LogError::Corrupt { .. })),
            "{:?}",
            opened.err()
        );
    }
}
