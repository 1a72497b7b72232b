//! The write-ahead log proper: segments, the in-memory index, and the
//! synchronous append/truncate/purge/read operations (callers run them on
//! blocking threads). Recovery lives in `recovery.rs`.
//!
//! Locking: `writer` serializes every mutation (openraft already serializes
//! log IO; the mutex makes clones safe too). `index` is what readers see:
//! an append publishes its entries there only after its fdatasync, and a
//! reader holds the read lock while it reads file bytes, so a truncate
//! (which takes the write lock before cutting files) never pulls bytes from
//! under a reader. Lock order: writer, then index.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use nines_types::{Entry, LogId, Vote};

use crate::error::LogError;
use crate::meta;
use crate::pipeline::Pipeline;
use crate::prealloc::Prealloc;
use crate::segment::{self, RecordType, Segment};
use crate::LogOptions;

/// Where one entry's record lives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loc {
    /// Segment key (its first index).
    pub seg: u64,
    /// Offset of the record header in the segment.
    pub off: u64,
    /// Record length including the header.
    pub len: u32,
    pub log_id: LogId,
}

pub(crate) struct Index {
    /// Index of `locs[0]`; the next index to append when `locs` is empty.
    pub first: u64,
    pub locs: VecDeque<Loc>,
    pub segments: BTreeMap<u64, Arc<Segment>>,
    pub purged: Option<LogId>,
    pub committed: Option<LogId>,
}

impl Index {
    fn last_entry(&self) -> Option<LogId> {
        self.locs.back().map(|l| l.log_id)
    }

    /// The last log id: the last entry's, else the last purged one.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.last_entry().or(self.purged)
    }
}

pub(crate) struct Writer {
    pub active: Arc<Segment>,
    /// Write position (length) of the active segment.
    pub len: u64,
    /// Whether the active segment holds any entry record.
    pub has_entries: bool,
    /// Index the next appended entry must have.
    pub next_index: u64,
    /// Bytes written since the last sync (Committed records).
    pub dirty: bool,
}

pub(crate) struct Wal {
    pub(crate) dir: PathBuf,
    pub(crate) opts: LogOptions,
    pub(crate) writer: Mutex<Writer>,
    pub(crate) index: RwLock<Index>,
    pub(crate) pipeline: Pipeline,
    pub(crate) prealloc: Arc<Prealloc>,
    /// Holds the directory's flock for the life of the log.
    pub(crate) _lock: fs::File,
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.pipeline.flush.stop();
        self.prealloc.stop();
        // A clean close leaves nothing unsynced behind.
        if let Ok(w) = self.writer.get_mut() {
            if w.dirty {
                if let Err(e) = w.active.file.sync_data() {
                    tracing::error!(path = %w.active.path.display(), "final log sync failed: {e}");
                }
            }
        }
    }
}

impl Wal {
    pub(crate) fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, LogError> {
        self.writer.lock().map_err(|_| LogError::Poisoned)
    }

    pub(crate) fn read_index(&self) -> Result<RwLockReadGuard<'_, Index>, LogError> {
        self.index.read().map_err(|_| LogError::Poisoned)
    }

    fn write_index(&self) -> Result<RwLockWriteGuard<'_, Index>, LogError> {
        self.index.write().map_err(|_| LogError::Poisoned)
    }

    /// Appends a batch with one write. With `sync`, one fdatasync follows
    /// (group commit) and the batch is durable on return; without, the
    /// background flusher syncs it (leader pipelining, see `pipeline.rs`).
    /// Either way the batch is readable on return.
    pub(crate) fn append(&self, entries: &[Entry], sync: bool) -> Result<(), LogError> {
        for pair in entries.windows(2) {
            if pair[1].log_id.index != pair[0].log_id.index + 1 {
                return Err(LogError::NonContiguous {
                    expected: pair[0].log_id.index + 1,
                    got: pair[1].log_id.index,
                });
            }
        }
        let mut w = self.lock_writer()?;
        // Entries at or below the purge point are already covered by the
        // state machine's snapshot: keeping them would only re-open a hole.
        let purged = self.read_index()?.purged;
        let skip = entries
            .iter()
            .take_while(|e| purged.is_some_and(|p| e.log_id.index <= p.index))
            .count();
        let entries = &entries[skip..];
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return Ok(());
        };
        // Encoded first: an entry refused here (too large to read back)
        // must leave the log as it was, not truncated for it.
        let mut buf = Vec::with_capacity(entries.len() * 128);
        let mut spans = Vec::with_capacity(entries.len());
        for e in entries {
            let start = buf.len();
            segment::encode_entry(&mut buf, e)?;
            spans.push((start as u64, (buf.len() - start) as u32, e.log_id));
        }
        if first != w.next_index {
            self.realign(&mut w, first)?;
        }
        // Bound segment size; a single oversized batch still stays in one segment.
        if w.has_entries && w.len + buf.len() as u64 > self.opts.segment_bytes {
            self.roll(&mut w, first)?;
        }

        let off = w.len;
        let file = &w.active.file;
        self.prealloc.reserve(off + buf.len() as u64);
        let written = file.write_all_at(&buf, off).and_then(|()| {
            if !sync {
                return Ok(());
            }
            let started = std::time::Instant::now();
            let synced = file.sync_data();
            self.pipeline.flush.observe_sync(started);
            synced
        });
        if let Err(e) = written {
            // Drop a partial write so the file never holds bytes the index
            // does not describe; openraft stops on the error anyway.
            let _ = file.set_len(off);
            return Err(LogError::io(&w.active.path, e));
        }
        w.len = off + buf.len() as u64;
        w.has_entries = true;
        w.dirty = !sync;
        w.next_index = first + entries.len() as u64;
        let last = w.next_index - 1;

        let seg = w.active.first_index;
        let mut idx = self.write_index()?;
        if idx.locs.is_empty() {
            idx.first = first;
        }
        idx.locs
            .extend(spans.into_iter().map(|(rel, len, log_id)| Loc {
                seg,
                off: off + rel,
                len,
                log_id,
            }));
        drop(idx);
        if sync {
            self.pipeline.flush.durable.advance(last);
        } else {
            self.pipeline.flush.request(last);
        }
        Ok(())
    }

    /// Makes `first` the next index for an append that does not continue
    /// the log. openraft truncates conflicting entries itself and never
    /// leaves holes, but the KV-map semantics its storage Suite assumes are
    /// kept: an overlapping append overwrites from `first`, and one past the
    /// end restarts the log there (nothing can read across a hole anyway).
    fn realign(&self, w: &mut Writer, first: u64) -> Result<(), LogError> {
        let live = self.read_index()?.locs.len();
        if first < w.next_index {
            self.truncate_locked(w, first)?;
        }
        if first != w.next_index {
            if live > 0 && first > w.next_index {
                tracing::warn!(
                    expected = w.next_index,
                    got = first,
                    "append leaves a hole in the log; discarding {live} earlier entries"
                );
            }
            self.reset(w, first)?;
        }
        Ok(())
    }

    /// Starts a new active segment at `first_index` after the current one.
    fn roll(&self, w: &mut Writer, first_index: u64) -> Result<(), LogError> {
        // The old segment stops being the last one, where torn tails are
        // tolerated: make its unsynced Committed records durable first.
        if w.dirty {
            w.active
                .file
                .sync_data()
                .map_err(|e| LogError::io(&w.active.path, e))?;
        }
        self.start_segment(w, first_index)
    }

    /// Deletes every segment and starts a new one at `first_index`. Used when
    /// the log holds no live entries and must continue elsewhere (purge past
    /// the last entry; first append to an empty log). A crash in between
    /// leaves no segment, which recovery turns into a fresh one.
    pub(crate) fn reset(&self, w: &mut Writer, first_index: u64) -> Result<(), LogError> {
        let old: Vec<Arc<Segment>> = {
            let mut idx = self.write_index()?;
            idx.locs.clear();
            idx.first = first_index;
            std::mem::take(&mut idx.segments).into_values().collect()
        };
        for s in old.iter().rev() {
            remove_segment_file(&s.path)?;
        }
        self.pipeline.flush.reset(first_index.saturating_sub(1));
        self.start_segment(w, first_index)
    }

    fn start_segment(&self, w: &mut Writer, first_index: u64) -> Result<(), LogError> {
        let committed = self.read_index()?.committed;
        let (seg, len) = Segment::create(&self.dir, first_index, committed)?;
        // The new directory entry must survive a crash before anything in it is acked.
        meta::fsync_dir(&self.dir)?;
        let seg = Arc::new(seg);
        self.prealloc.switch(&seg, len, || ());
        self.write_index()?
            .segments
            .insert(first_index, Arc::clone(&seg));
        *w = Writer {
            active: seg,
            len,
            has_entries: false,
            next_index: first_index,
            dirty: false,
        };
        Ok(())
    }

    /// Records the committed log id without an fsync of its own.
    ///
    /// It rides on the next append's fdatasync (or a roll's sync). Losing the
    /// newest value in a crash is safe: a lagging committed index only means
    /// openraft re-applies fewer entries at startup and learns the rest from
    /// the leader. The alternative, an fsynced file per commit, would put a
    /// second sync on every write's commit path.
    pub(crate) fn save_committed(&self, committed: Option<LogId>) -> Result<(), LogError> {
        let mut w = self.lock_writer()?;
        let mut buf = Vec::with_capacity(32);
        segment::encode_committed(&mut buf, committed)?;
        let off = w.len;
        self.prealloc.reserve(off + buf.len() as u64);
        if let Err(e) = w.active.file.write_all_at(&buf, off) {
            let _ = w.active.file.set_len(off);
            return Err(LogError::io(&w.active.path, e));
        }
        w.len = off + buf.len() as u64;
        w.dirty = true;
        self.write_index()?.committed = committed;
        Ok(())
    }

    /// The newest committed log id, never beyond the last log id.
    pub(crate) fn committed(&self) -> Result<Option<LogId>, LogError> {
        let idx = self.read_index()?;
        let last = idx.last_log_id();
        Ok(match (idx.committed, last) {
            (Some(c), Some(l)) if c.index > l.index => Some(l),
            (Some(_), None) => None,
            (c, _) => c,
        })
    }

    /// (last purged, last log id).
    pub(crate) fn log_state(&self) -> Result<(Option<LogId>, Option<LogId>), LogError> {
        let idx = self.read_index()?;
        Ok((idx.purged, idx.last_log_id()))
    }

    /// The highest index to purge so that the entries kept at or below
    /// `upto` number at most `max_entries` and take at most `max_bytes`;
    /// None when nothing below them is left to purge.
    pub(crate) fn purge_point(
        &self,
        upto: u64,
        max_entries: u64,
        max_bytes: u64,
    ) -> Result<Option<u64>, LogError> {
        let idx = self.read_index()?;
        let Some(last) = idx.last_entry() else {
            return Ok(None);
        };
        let upto = upto.min(last.index);
        if upto < idx.first {
            return Ok(None);
        }
        // The tail kept behind `upto`, walking back while both bounds hold.
        let behind = idx.locs.range(..=(upto - idx.first) as usize).rev();
        let oldest_kept = upto + 1 - fitting(behind, max_entries, max_bytes);
        Ok((oldest_kept > idx.first).then(|| oldest_kept - 1))
    }

    /// Removes entries with index >= `index`.
    pub(crate) fn truncate(&self, index: u64) -> Result<(), LogError> {
        let mut w = self.lock_writer()?;
        self.truncate_locked(&mut w, index)
    }

    fn truncate_locked(&self, w: &mut Writer, index: u64) -> Result<(), LogError> {
        let mut idx = self.write_index()?;
        let end = idx.first + idx.locs.len() as u64;
        let cut = index.max(idx.first);
        if cut >= end {
            return Ok(());
        }
        let keep = idx.locs.len() - (end - cut) as usize;
        let loc = idx.locs[keep];
        let Some(seg) = idx.segments.get(&loc.seg).cloned() else {
            return Err(LogError::corrupt(
                &self.dir,
                loc.off,
                "index names a missing segment",
            ));
        };
        let removed: Vec<Arc<Segment>> = idx
            .segments
            .split_off(&(loc.seg + 1))
            .into_values()
            .collect();
        idx.locs.truncate(keep);
        let has_entries = idx.locs.back().is_some_and(|l| l.seg == loc.seg);
        // Readers no longer see the removed entries; now cut the files.
        drop(idx);

        // Newest first, so a crash leaves an unbroken prefix of segments;
        // the removals are made durable before the cut: where a file's
        // fsync does not commit other directory changes, a crash could
        // otherwise leave the cut segment and the later ones behind it.
        for s in removed.iter().rev() {
            remove_segment_file(&s.path)?;
        }
        if !removed.is_empty() {
            meta::fsync_dir(&self.dir)?;
        }
        self.prealloc
            .switch(&seg, loc.off, || {
                seg.file.set_len(loc.off).and_then(|()| seg.file.sync_all())
            })
            .map_err(|e| LogError::io(&seg.path, e))?;
        self.pipeline.flush.rewind(cut.saturating_sub(1));
        *w = Writer {
            active: seg,
            len: loc.off,
            has_entries,
            next_index: cut,
            dirty: false,
        };
        Ok(())
    }

    /// Removes entries with index <= `log_id.index`, persisting the purge
    /// point first so a crash part-way never resurrects purged entries.
    pub(crate) fn purge(&self, log_id: LogId) -> Result<(), LogError> {
        let mut w = self.lock_writer()?;
        if self
            .read_index()?
            .purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        meta::write_purged(&self.dir, &log_id)?;
        let next = log_id.index + 1;

        if w.next_index < next {
            // Purged past the last entry (snapshot install): nothing survives.
            self.write_index()?.purged = Some(log_id);
            return self.reset(&mut w, next);
        }

        let doomed: Vec<Arc<Segment>> = {
            let mut idx = self.write_index()?;
            idx.purged = Some(log_id);
            while idx.locs.front().is_some_and(|l| l.log_id.index < next) {
                idx.locs.pop_front();
            }
            idx.first = idx.first.max(next);
            // A segment is fully purged when its successor starts at or below `next`.
            let keys: Vec<u64> = idx.segments.keys().copied().collect();
            let mut doomed = Vec::new();
            for pair in keys.windows(2) {
                if pair[1] <= next && pair[0] != w.active.first_index {
                    if let Some(s) = idx.segments.remove(&pair[0]) {
                        doomed.push(s);
                    }
                }
            }
            doomed
        };
        for s in &doomed {
            remove_segment_file(&s.path)?;
        }
        if !doomed.is_empty() {
            meta::fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The end of the longest run of entries from `start` (below `end`)
    /// whose records take at most `max_bytes`, never fewer than one entry;
    /// `end` itself when the log holds nothing from `start` (the read then
    /// finds what it finds).
    pub(crate) fn bounded_end(
        &self,
        start: u64,
        end: u64,
        max_bytes: u64,
    ) -> Result<u64, LogError> {
        let idx = self.read_index()?;
        let lo = start.max(idx.first);
        let hi = end.min(idx.first + idx.locs.len() as u64);
        if lo >= hi {
            return Ok(end);
        }
        let run = idx
            .locs
            .range((lo - idx.first) as usize..(hi - idx.first) as usize);
        Ok(lo + fitting(run, u64::MAX, max_bytes).max(1))
    }

    /// Entries with index in `[start, end)` that exist, in order.
    pub(crate) fn read(&self, start: u64, end: u64) -> Result<Vec<Entry>, LogError> {
        // Holding the read lock during IO keeps truncate from cutting these bytes.
        let idx = self.read_index()?;
        let lo = start.max(idx.first);
        let hi = end.min(idx.first + idx.locs.len() as u64);
        if lo >= hi {
            return Ok(Vec::new());
        }
        let locs = idx
            .locs
            .range((lo - idx.first) as usize..(hi - idx.first) as usize);
        let mut out = Vec::with_capacity((hi - lo) as usize);
        let mut run: Vec<Loc> = Vec::new();
        for loc in locs {
            // Adjacent records in one segment are read with a single read_at.
            let extends = run
                .last()
                .is_some_and(|p| p.seg == loc.seg && p.off + p.len as u64 == loc.off);
            if !extends && !run.is_empty() {
                read_run(&idx, &run, &mut out)?;
                run.clear();
            }
            run.push(*loc);
        }
        read_run(&idx, &run, &mut out)?;
        Ok(out)
    }

    pub(crate) fn save_vote(&self, vote: &Vote) -> Result<(), LogError> {
        // Serialized with log writes, as openraft requires.
        let _w = self.lock_writer()?;
        meta::write_vote(&self.dir, vote)?;
        *self.pipeline.vote.lock().map_err(|_| LogError::Poisoned)? = Some(*vote);
        Ok(())
    }

    /// The vote openraft starts from: see `Pipeline::startup_vote`.
    pub(crate) fn read_vote(&self) -> Result<Option<Vote>, LogError> {
        Ok(self.pipeline.startup_vote(meta::read_vote(&self.dir)?))
    }

    /// Whether reading from `start` on touches only recently written bytes,
    /// which the page cache still holds: cheap enough to read inline.
    pub(crate) fn is_recent(&self, start: u64) -> Result<bool, LogError> {
        const RECENT_ENTRIES: u64 = 4096;
        let idx = self.read_index()?;
        let end = idx.first + idx.locs.len() as u64;
        Ok(start.saturating_add(RECENT_ENTRIES) >= end)
    }
}

/// How many of `locs`, from the first, fit within `max_entries` records
/// and `max_bytes` of them.
fn fitting<'a>(locs: impl Iterator<Item = &'a Loc>, max_entries: u64, max_bytes: u64) -> u64 {
    let mut bytes = 0u64;
    locs.take_while(|loc| {
        bytes += u64::from(loc.len);
        bytes <= max_bytes
    })
    .take(usize::try_from(max_entries).unwrap_or(usize::MAX))
    .count() as u64
}

fn read_run(idx: &Index, run: &[Loc], out: &mut Vec<Entry>) -> Result<(), LogError> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Ok(());
    };
    let Some(seg) = idx.segments.get(&first.seg) else {
        return Err(LogError::corrupt(
            Path::new(&segment::segment_file_name(first.seg)),
            first.off,
            "index names a missing segment",
        ));
    };
    let span = (last.off + last.len as u64 - first.off) as usize;
    let mut buf = vec![0u8; span];
    seg.file
        .read_exact_at(&mut buf, first.off)
        .map_err(|e| LogError::io(&seg.path, e))?;
    for loc in run {
        let rel = (loc.off - first.off) as usize;
        let rec = &buf[rel..rel + loc.len as usize];
        let entry = match segment::parse_record(rec) {
            Ok((RecordType::Entry, payload)) => segment::decode_entry(&rec[payload])
                .map_err(|e| LogError::corrupt(&seg.path, loc.off, e))?,
            Ok((kind, _)) => {
                return Err(LogError::corrupt(
                    &seg.path,
                    loc.off,
                    format!("expected an entry record, found {kind:?}"),
                ))
            }
            Err(bad) => return Err(LogError::corrupt(&seg.path, loc.off, bad.to_string())),
        };
        if entry.log_id != loc.log_id {
            return Err(LogError::corrupt(
                &seg.path,
                loc.off,
                format!("entry {} where {} was indexed", entry.log_id, loc.log_id),
            ));
        }
        out.push(entry);
    }
    Ok(())
}

pub(crate) fn remove_segment_file(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io(path, e)),
    }
}
