//! Loading a snapshot file into a fresh tree, rebuilding the key index from
//! its records and swapping both in; used by `install_snapshot` and by
//! `open` after a crash mid-install.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use nines_types::SnapshotMeta;

use crate::base_file::BaseFile;
use crate::error::StateError;
use crate::mvcc::Mvcc;
use crate::sled_engine::SledEngine;
use crate::snapshot_file::SnapshotReader;
use crate::store::{
    encode, lock, read_meta, MetaState, Shared, LEGACY_DATA_PREFIX, META_APPLIED, META_MEMBERSHIP,
};
use crate::tail::Tail;
use crate::tiered::TieredEngine;

/// Records per sled batch while loading: bounds memory, keeps batches cheap.
const LOAD_CHUNK: usize = 10_000;

/// Installs a received snapshot: copy it into the snapshot dir, verify and
/// load it into a new tree, publish the file, then flip to the new tree.
pub(crate) fn install(
    shared: &Shared,
    meta: &SnapshotMeta,
    mut src: File,
) -> Result<(), StateError> {
    // The sweep deletes from the current store: not while it is replaced.
    let _no_sweep = lock(&shared.compactor.gate);
    // Received from a peer, it was staged (checked and loaded) already.
    let staged = crate::stage::take(shared, meta);
    let tmp = match &staged {
        Some(s) => s.tmp.clone(),
        None => shared.snapshots.tmp_path("install"),
    };
    let result = (|| {
        let (store, state) = match staged {
            Some(s) => (s.store, s.state),
            None => {
                copy_synced(&mut src, &tmp)?;
                fill_new_tree(shared, &tmp, meta)?
            }
        };
        let dest = shared.snapshots.file_for(&meta.snapshot_id);
        // Publish before flipping: if we crash in between, open() sees a
        // snapshot newer than the tree and reloads it.
        if let Err(e) = shared.snapshots.publish(&tmp, &dest) {
            let _ = shared.db.drop_tree(store.engine.tree().name());
            return Err(e);
        }
        if let Some(base) = store.engine.base() {
            base.moved_to(&dest);
        }
        activate(shared, store, state, meta.clone(), &dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Streams `src` from its start into `dest` and fsyncs it.
pub(crate) fn copy_synced(src: &mut File, dest: &Path) -> Result<(), StateError> {
    // openraft hands over the file it wrote into (or, in tests, another
    // node's snapshot handle): its position is arbitrary.
    src.seek(SeekFrom::Start(0))
        .map_err(|e| StateError::io(dest, e))?;
    let out = File::create(dest).map_err(|e| StateError::io(dest, e))?;
    let mut writer = BufWriter::with_capacity(256 * 1024, out);
    std::io::copy(&mut BufReader::with_capacity(256 * 1024, src), &mut writer)
        .map_err(|e| StateError::io(dest, e))?;
    writer.flush().map_err(|e| StateError::io(dest, e))?;
    let out = writer
        .into_inner()
        .map_err(|e| StateError::io(dest, e.into_error()))?;
    out.sync_all().map_err(|e| StateError::io(dest, e))
}

/// Verifies `path` while loading its state keys into a new tree; the file
/// becomes the new store's base (its revision records stay in it, see
/// `base_file.rs`). The tree is dropped again if the file turns out
/// corrupt, so a bad file never becomes current.
pub(crate) fn fill_new_tree(
    shared: &Shared,
    path: &Path,
    meta: &SnapshotMeta,
) -> Result<(Mvcc<TieredEngine>, MetaState), StateError> {
    let tree = shared.new_tree()?;
    let name = tree.name();
    let tail_dir = shared.tail_dir(&name);
    let filled = load_base(&tree, path, meta).and_then(|(state, base)| {
        let tail = Tail::create(&tail_dir)?;
        let engine = TieredEngine::new(SledEngine::new(tree), tail, Some(Arc::new(base)));
        let store = Mvcc::open(engine, state.revision, state.compacted, &AtomicU64::new(0))?;
        Ok((store, state))
    });
    if filled.is_err() {
        let _ = shared.db.drop_tree(name);
        let _ = std::fs::remove_dir_all(&tail_dir);
    }
    filled
}

/// Loads every record of the snapshot at `path` but the revision records
/// into `tree`, notes where those lie in the file, then writes `meta`'s
/// applied id and membership. Fails on a bad trailer.
fn load_base(
    tree: &sled::Tree,
    path: &Path,
    meta: &SnapshotMeta,
) -> Result<(MetaState, BaseFile), StateError> {
    let (file_meta, reader) = SnapshotReader::open(path)?;
    if file_meta.last_log_id != meta.last_log_id {
        return Err(StateError::corrupt(
            path,
            format!(
                "file is for {:?}, expected {:?}",
                file_meta.last_log_id, meta.last_log_id
            ),
        ));
    }
    let mut loader = Loader::new(tree, path);
    let base = BaseFile::read(path, reader, |key, value| loader.add(key, value))?;
    let state = loader.finish(meta)?;
    if (state.revision, state.compacted) != (base.revision, base.compacted) {
        return Err(StateError::corrupt(
            path,
            "its store revision records disagree with its records",
        ));
    }
    Ok((state, base))
}

fn legacy(path: &Path) -> StateError {
    StateError::corrupt(
        path,
        "written by a nines version before the multi-version store",
    )
}

/// Writes every record `reader` yields into `tree` (a backup's scratch
/// store, which has no base) (failing on a bad trailer), then `meta`'s
/// applied id and membership; returns the meta.
pub(crate) fn load<R: Read>(
    tree: &sled::Tree,
    mut reader: SnapshotReader<R>,
    path: &Path,
    meta: &SnapshotMeta,
) -> Result<MetaState, StateError> {
    let mut loader = Loader::new(tree, path);
    while let Some((key, value)) = reader.next_record()? {
        loader.add(key, value)?;
    }
    loader.finish(meta)
}

/// Writes a snapshot's records into a new tree in batches of
/// [`LOAD_CHUNK`].
struct Loader<'a> {
    tree: &'a sled::Tree,
    path: &'a Path,
    batch: sled::Batch,
    in_batch: usize,
}

impl<'a> Loader<'a> {
    fn new(tree: &'a sled::Tree, path: &'a Path) -> Self {
        Loader {
            tree,
            path,
            batch: sled::Batch::default(),
            in_batch: 0,
        }
    }

    fn add(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StateError> {
        if key.first() == Some(&LEGACY_DATA_PREFIX) {
            return Err(legacy(self.path));
        }
        self.batch.insert(key, value);
        self.in_batch += 1;
        if self.in_batch == LOAD_CHUNK {
            self.tree.apply_batch(std::mem::take(&mut self.batch))?;
            self.in_batch = 0;
        }
        Ok(())
    }

    /// Writes the rest, with `meta`'s applied id and membership (openraft's
    /// meta is authoritative for those), and reads the store's meta back.
    fn finish(mut self, meta: &SnapshotMeta) -> Result<MetaState, StateError> {
        self.batch.insert(META_APPLIED, encode(&meta.last_log_id)?);
        self.batch
            .insert(META_MEMBERSHIP, encode(&meta.last_membership)?);
        self.tree.apply_batch(self.batch)?;
        read_meta(&SledEngine::new(self.tree.clone()))
    }
}

/// Makes a filled store current and `meta` the current snapshot.
pub(crate) fn activate(
    shared: &Shared,
    store: Mvcc<TieredEngine>,
    state: MetaState,
    meta: SnapshotMeta,
    file: &Path,
) -> Result<(), StateError> {
    shared.flip(store)?;
    shared.compactor.opened(&shared.current());
    *lock(&shared.current_snapshot) = Some(meta);
    shared.snapshots.remove_others(file);
    shared.set_applied(state.applied);
    shared.announce_revision();
    Ok(())
}
