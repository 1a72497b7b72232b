//! Staging a snapshot received from a peer: it is checked and loaded into
//! a new tree before openraft is asked to install it.
//!
//! openraft stops for good on any error its state machine returns, so an
//! install must fail only on a real storage fault. A snapshot's bytes come
//! from the network: a bad one (a leader's bug, a hostile peer) found while
//! installing stopped the node, and a leader that resent it made a crash
//! loop. Staged first, a bad snapshot is refused to its sender instead, and
//! the install that follows reuses the loaded tree, so nothing is read twice.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use nines_types::{LogId, SnapshotMeta};

use crate::error::StateError;
use crate::install;
use crate::mvcc::Mvcc;
use crate::store::{lock, MetaState, Shared};
use crate::tiered::TieredEngine;

/// A received snapshot, checked and loaded, waiting for its install.
pub(crate) struct Staged {
    pub id: String,
    pub last_log_id: Option<LogId>,
    /// The synced copy the store's base reads from; published on install.
    pub tmp: PathBuf,
    pub store: Mvcc<TieredEngine>,
    pub state: MetaState,
}

/// Stages received snapshots for the state machine it came from.
#[derive(Clone)]
pub struct SnapshotStager {
    pub(crate) shared: Arc<Shared>,
}

impl SnapshotStager {
    /// Copies `file` (from its start) into the snapshot dir, verifies it
    /// against `meta` and loads it into a new tree, kept for the install of
    /// `meta`. Replaces any earlier staged snapshot. Blocking. An error
    /// means the snapshot cannot be installed: refuse it to its sender.
    pub fn stage(&self, meta: &SnapshotMeta, file: &mut File) -> Result<(), StateError> {
        self.discard_any();
        let tmp = self.shared.snapshots.tmp_path("staged");
        let loaded = install::copy_synced(file, &tmp)
            .and_then(|()| install::fill_new_tree(&self.shared, &tmp, meta));
        match loaded {
            Ok((store, state)) => {
                let staged = Staged {
                    id: meta.snapshot_id.clone(),
                    last_log_id: meta.last_log_id,
                    tmp,
                    store,
                    state,
                };
                if let Some(old) = lock(&self.shared.staged).replace(staged) {
                    drop_staged(&self.shared, old);
                }
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Drops the staged snapshot `id` if openraft did not install it (it
    /// declines one older than what it has applied).
    pub fn discard(&self, id: &str) {
        let staged = {
            let mut slot = lock(&self.shared.staged);
            match slot.as_ref() {
                Some(s) if s.id == id => slot.take(),
                _ => None,
            }
        };
        if let Some(s) = staged {
            drop_staged(&self.shared, s);
        }
    }

    fn discard_any(&self) {
        let staged = lock(&self.shared.staged).take();
        if let Some(s) = staged {
            drop_staged(&self.shared, s);
        }
    }
}

/// The staged snapshot for `meta`, taken for its install; any other one is
/// dropped.
pub(crate) fn take(shared: &Shared, meta: &SnapshotMeta) -> Option<Staged> {
    let staged = lock(&shared.staged).take()?;
    if staged.id == meta.snapshot_id && staged.last_log_id == meta.last_log_id {
        return Some(staged);
    }
    drop_staged(shared, staged);
    None
}

/// Frees what staging took: the tree, its tail dir and the copy. Failures
/// cost only space, which the next open reclaims (it drops stray trees and
/// temp files).
fn drop_staged(shared: &Shared, staged: Staged) {
    let name = staged.store.engine.tree().name();
    drop(staged.store);
    let _ = shared.db.drop_tree(&name);
    let _ = std::fs::remove_dir_all(shared.tail_dir(&name));
    let _ = std::fs::remove_file(&staged.tmp);
}
