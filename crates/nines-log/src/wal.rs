//! The synchronous write-ahead log: segments, an in-memory index of entry
//! positions, recovery, append with one fdatasync per batch, truncate, purge.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use nines_types::{Entry, LogId, Vote};

use crate::error::{io_err, LogError};
use crate::meta;
use crate::segment::{self, KIND_COMMITTED, KIND_ENTRY};

#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is closed and a new one started once it grows past this.
    pub segment_bytes: u64,
    /// Recently appended entries kept decoded in memory for replication reads.
    pub cache_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            cache_bytes: 32 * 1024 * 1024,
        }
    }
}

struct Segment {
    path: PathBuf,
    file: File,
    len: u64,
}

#[derive(Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

pub struct Wal {
    dir: PathBuf,
    opts: LogOptions,
    /// Keyed by the first index the segment was opened for; the last is active.
    segments: BTreeMap<u64, Segment>,
    index: BTreeMap<u64, Loc>,
    cache: BTreeMap<u64, (Entry, usize)>,
    cache_bytes: usize,
    committed: Option<LogId>,
    purged: Option<LogId>,
    vote: Option<Vote>,
    _lock: File,
}

const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";

impl Wal {
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Wal, LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(LogError::Locked(dir.to_path_buf()));
        }
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            cache: BTreeMap::new(),
            cache_bytes: 0,
            committed: None,
            purged: meta::read(dir, PURGED_FILE)?,
            vote: meta::read(dir, VOTE_FILE)?,
            _lock: lock,
        };
        wal.recover()?;
        if wal.segments.is_empty() {
            let first = wal.next_index();
            wal.new_segment(first)?;
        }
        Ok(wal)
    }

    fn recover(&mut self) -> Result<(), LogError> {
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| segment::parse_name(&p).map(|i| (i, p)))
            .collect();
        names.sort();
        let purged_index = self.purged.map(|l| l.index);
        let mut last: Option<u64> = None;
        let count = names.len();
        for (n, (first, path)) in names.into_iter().enumerate() {
            let is_last = n + 1 == count;
            let scan = segment::scan(&path, is_last)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            if let Some(reason) = &scan.torn {
                tracing::warn!(file = %path.display(), "dropping torn log tail: {reason}");
                if scan.valid_len == 0 {
                    file.set_len(0).map_err(io_err(&path))?;
                    file.write_all_at(&segment::header(), 0)
                        .map_err(io_err(&path))?;
                } else {
                    file.set_len(scan.valid_len).map_err(io_err(&path))?;
                }
                file.sync_all().map_err(io_err(&path))?;
            }
            for record in scan.records {
                match record.kind {
                    KIND_ENTRY => {
                        let entry: Entry =
                            segment::decode(&record.payload).map_err(|e| LogError::Corrupt {
                                path: path.clone(),
                                offset: record.offset,
                                reason: format!("undecodable entry: {e}"),
                            })?;
                        let index = entry.log_id.index;
                        if let Some(prev) = last {
                            if index != prev + 1 {
                                return Err(LogError::Corrupt {
                                    path: path.clone(),
                                    offset: record.offset,
                                    reason: format!("entry {index} follows entry {prev}"),
                                });
                            }
                        }
                        last = Some(index);
                        if purged_index.is_some_and(|p| index <= p) {
                            continue;
                        }
                        self.index.insert(
                            index,
                            Loc {
                                segment: first,
                                offset: record.offset,
                                len: record.payload.len() as u32,
                                log_id: entry.log_id,
                            },
                        );
                    }
                    KIND_COMMITTED => {
                        self.committed = segment::decode(&record.payload)?;
                    }
                    other => {
                        return Err(LogError::Corrupt {
                            path: path.clone(),
                            offset: record.offset,
                            reason: format!("unknown record kind {other}"),
                        })
                    }
                }
            }
            let len = file.metadata().map_err(io_err(&path))?.len();
            self.segments.insert(first, Segment { path, file, len });
        }
        Ok(())
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.index
            .values()
            .next_back()
            .map(|l| l.log_id)
            .or(self.purged)
    }

    pub fn purged(&self) -> Option<LogId> {
        self.purged
    }

    pub fn vote(&self) -> Option<Vote> {
        self.vote
    }

    /// The committed id found or saved; never beyond what the log holds.
    pub fn committed(&self) -> Option<LogId> {
        let last = self.last_log_id();
        match (self.committed, last) {
            (Some(c), Some(l)) if c.index > l.index => Some(l),
            (c, _) => c,
        }
    }

    fn next_index(&self) -> u64 {
        self.last_log_id().map(|l| l.index + 1).unwrap_or(0)
    }

    fn new_segment(&mut self, first: u64) -> Result<(), LogError> {
        let path = self.dir.join(segment::file_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut buf = segment::header();
        // Each segment restates `committed`, so purging old segments never loses it.
        segment::frame(KIND_COMMITTED, &segment::encode(&self.committed)?, &mut buf);
        file.write_all_at(&buf, 0).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        meta::sync_dir(&self.dir)?;
        self.segments.insert(
            first,
            Segment {
                path,
                file,
                len: buf.len() as u64,
            },
        );
        Ok(())
    }

    fn active(&mut self) -> (u64, &mut Segment) {
        let (first, seg) = self
            .segments
            .iter_mut()
            .next_back()
            .expect("an active segment always exists");
        (*first, seg)
    }

    /// Writes a batch and makes it durable with a single fdatasync.
    pub fn append(&mut self, entries: Vec<Entry>) -> Result<(), LogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let first = entries[0].log_id.index;
        if self.active().1.len >= self.opts.segment_bytes && !self.segments.contains_key(&first) {
            self.new_segment(first)?;
        }
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for entry in &entries {
            let payload = segment::encode(entry)?;
            let at = segment::frame(KIND_ENTRY, &payload, &mut buf);
            placed.push((at as u64, payload.len() as u32, entry.log_id));
        }
        let (first, seg) = self.active();
        let base = seg.len;
        seg.file
            .write_all_at(&buf, base)
            .map_err(io_err(&seg.path))?;
        seg.file.sync_data().map_err(io_err(&seg.path))?;
        seg.len += buf.len() as u64;
        for ((offset, len, log_id), entry) in placed.into_iter().zip(entries) {
            self.index.insert(
                log_id.index,
                Loc {
                    segment: first,
                    offset: base + offset,
                    len,
                    log_id,
                },
            );
            self.cache_insert(entry, len as usize);
        }
        Ok(())
    }

    fn cache_insert(&mut self, entry: Entry, bytes: usize) {
        self.cache_bytes += bytes;
        self.cache.insert(entry.log_id.index, (entry, bytes));
        while self.cache_bytes > self.opts.cache_bytes {
            let Some((_, (_, b))) = self.cache.pop_first() else {
                break;
            };
            self.cache_bytes -= b;
        }
    }

    /// Records the committed id; durable with the next batch's fdatasync
    /// (a lagging committed id is safe: it only limits re-apply on start).
    pub fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), LogError> {
        self.committed = committed;
        let mut buf = Vec::new();
        segment::frame(KIND_COMMITTED, &segment::encode(&committed)?, &mut buf);
        let (_, seg) = self.active();
        seg.file
            .write_all_at(&buf, seg.len)
            .map_err(io_err(&seg.path))?;
        seg.len += buf.len() as u64;
        Ok(())
    }

    pub fn save_vote(&mut self, vote: &Vote) -> Result<(), LogError> {
        meta::write(&self.dir, VOTE_FILE, vote)?;
        self.vote = Some(*vote);
        Ok(())
    }

    pub fn read(&self, start: u64, end_inclusive: u64) -> Result<Vec<Entry>, LogError> {
        let mut out = Vec::new();
        for (&index, loc) in self.index.range(start..=end_inclusive) {
            if let Some((entry, _)) = self.cache.get(&index) {
                out.push(entry.clone());
                continue;
            }
            let seg = &self.segments[&loc.segment];
            let framed = segment::framed_len(loc.len as usize) as usize;
            let mut buf = vec![0u8; framed];
            seg.file
                .read_exact_at(&mut buf, loc.offset)
                .map_err(io_err(&seg.path))?;
            out.push(segment::decode(&buf[framed - loc.len as usize..])?);
        }
        Ok(out)
    }

    /// Removes every entry at or after `index` (a conflicting suffix).
    pub fn truncate(&mut self, index: u64) -> Result<(), LogError> {
        let Some(loc) = self.index.get(&index).copied() else {
            return Ok(());
        };
        // Later segments go first: a crash part-way leaves a contiguous log.
        let later: Vec<u64> = self
            .segments
            .range(loc.segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        for first in later.iter().rev() {
            let seg = self.segments.remove(first).expect("listed segment");
            std::fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
        if !later.is_empty() {
            meta::sync_dir(&self.dir)?;
        }
        let seg = self
            .segments
            .get_mut(&loc.segment)
            .expect("segment of an indexed entry");
        seg.file.set_len(loc.offset).map_err(io_err(&seg.path))?;
        seg.file.sync_all().map_err(io_err(&seg.path))?;
        seg.len = loc.offset;
        self.index.split_off(&index);
        self.cache.split_off(&index);
        self.cache_bytes = self.cache.values().map(|(_, b)| b).sum();
        Ok(())
    }

    /// Forgets entries up to and including `log_id` (they are in a snapshot).
    pub fn purge(&mut self, log_id: LogId) -> Result<(), LogError> {
        meta::write(&self.dir, PURGED_FILE, &Some(log_id))?;
        self.purged = Some(log_id);
        let keep = self.index.split_off(&(log_id.index + 1));
        self.index = keep;
        let keep = self.cache.split_off(&(log_id.index + 1));
        self.cache = keep;
        self.cache_bytes = self.cache.values().map(|(_, b)| b).sum();
        if self.index.is_empty() {
            // Purged past the end (snapshot install): start fresh after it.
            // Old files go first; a crash before the new one exists reopens
            // as an empty log after `purged`.
            for (_, seg) in std::mem::take(&mut self.segments) {
                std::fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            }
            return self.new_segment(log_id.index + 1);
        }
        // A segment is dead when the next one starts at or below purged + 1.
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed = false;
        for pair in firsts.windows(2) {
            if pair[1] <= log_id.index + 1 {
                let seg = self.segments.remove(&pair[0]).expect("listed segment");
                std::fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
                removed = true;
            }
        }
        if removed {
            meta::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}
