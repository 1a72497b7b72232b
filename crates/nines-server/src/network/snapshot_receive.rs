//! Receiving a leader's snapshot in chunks, in place of openraft's own
//! receiver: the whole snapshot is checked and loaded (staged, see
//! nines-state's `stage.rs`) before openraft is asked to install it.
//!
//! openraft's receiver hands a finished snapshot straight to the state
//! machine, and any error there stops this node for good: a garbage
//! snapshot (a leader's bug, a hostile peer) made it exit, and a leader
//! that resent it made a crash loop. Here a bad snapshot is refused to its
//! sender, which retries or sends a newer one.

use std::io::SeekFrom;

use nines_state::SnapshotStager;
use nines_types::{NodeId, Raft, Snapshot, TypeConfig};
use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::SnapshotSegmentId;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// What openraft's `Raft::install_snapshot` answers.
pub type Answer = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// The snapshot being received: one at a time, as in openraft.
pub struct SnapshotReceiver {
    stager: SnapshotStager,
    current: tokio::sync::Mutex<Option<Receiving>>,
}

struct Receiving {
    id: String,
    file: Box<tokio::fs::File>,
}

/// Why a snapshot chunk was not taken; the sender sees it as a failed call.
#[derive(Debug, thiserror::Error)]
pub enum NotTaken {
    #[error("snapshot {id} cannot be installed: {why}")]
    Bad { id: String, why: String },
    #[error("cannot write snapshot {id} here: {why}")]
    Local { id: String, why: String },
}

impl SnapshotReceiver {
    pub fn new(stager: SnapshotStager) -> Self {
        Self {
            stager,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Takes one chunk (already passed by the guard); on the last, stages
    /// the snapshot and has openraft install it.
    pub async fn receive(
        &self,
        raft: &Raft,
        req: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<Answer, NotTaken> {
        // As openraft: a chunk of an older leader is answered with our vote
        // and not stored (its install would check the vote again).
        let vote = raft.metrics().borrow().vote;
        if req.vote < vote {
            return Ok(Ok(InstallSnapshotResponse { vote }));
        }
        let id = req.meta.snapshot_id.clone();
        let local = |e: std::io::Error| NotTaken::Local {
            id: id.clone(),
            why: e.to_string(),
        };
        let mut current = self.current.lock().await;
        let mut receiving = match current.take() {
            Some(r) if r.id == id => r,
            other => {
                if req.offset != 0 {
                    *current = other;
                    return Ok(Err(mismatch(&id, req.offset)));
                }
                let file = match raft.begin_receiving_snapshot().await {
                    Ok(file) => file,
                    Err(RaftError::Fatal(f)) => return Ok(Err(RaftError::Fatal(f))),
                    Err(RaftError::APIError(never)) => match never {},
                };
                Receiving {
                    id: id.clone(),
                    file,
                }
            }
        };
        let written = async {
            receiving.file.seek(SeekFrom::Start(req.offset)).await?;
            receiving.file.write_all(&req.data).await?;
            receiving.file.flush().await
        }
        .await;
        written.map_err(local)?;
        if !req.done {
            *current = Some(receiving);
            return Ok(Ok(InstallSnapshotResponse { vote }));
        }
        let mut file = receiving.file.into_std().await;
        let stager = self.stager.clone();
        let meta = req.meta.clone();
        let staged = tokio::task::spawn_blocking(move || {
            let staged = stager.stage(&meta, &mut file);
            (staged, file)
        })
        .await;
        let file = match staged {
            Ok((Ok(()), file)) => file,
            Ok((Err(e), _)) => {
                return Err(NotTaken::Bad {
                    id,
                    why: e.to_string(),
                })
            }
            Err(e) => {
                return Err(NotTaken::Local {
                    id,
                    why: e.to_string(),
                })
            }
        };
        let snapshot = Snapshot {
            meta: req.meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        };
        let installed = raft.install_full_snapshot(req.vote, snapshot).await;
        // Still staged if openraft declined it (older than what it has).
        self.stager.discard(&id);
        Ok(installed
            .map(Into::into)
            .map_err(|f: Fatal<NodeId>| RaftError::Fatal(f)))
    }
}

/// openraft's answer to a chunk past the start of a stream it does not hold.
fn mismatch(id: &str, offset: u64) -> RaftError<NodeId, InstallSnapshotError> {
    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
        expect: SnapshotSegmentId {
            id: id.to_owned(),
            offset: 0,
        },
        got: SnapshotSegmentId {
            id: id.to_owned(),
            offset,
        },
    }))
}
