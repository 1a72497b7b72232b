//! etcd's `Maintenance.Snapshot`: a point-in-time snapshot of this
//! member's applied state (nines' own format, see `nines_state::backup`),
//! streamed as etcd streams its db: chunks that say how many bytes follow
//! them, then the SHA-256 of all of them as one last message with 0
//! remaining. The data is zero-padded to a multiple of 512 bytes first:
//! etcdctl refuses a download whose size is not 32 more than one. `etcdctl snapshot save` writes the whole stream to its file,
//! checksum included, and `nines snapshot status/restore` check it.

use std::io::Read;
use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use nines_state::BACKUP_ALIGN;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::Status;

use super::convert;
use super::maintenance::ETCD_API_VERSION;
use crate::core::NodeCore;

/// Bytes of snapshot data per message (etcd sends 32 KiB).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Messages read ahead of a slow receiver: bounds memory per stream.
const READ_AHEAD: usize = 4;
/// Snapshot streams a member serves at once. Each holds a blocking thread
/// and an unlinked copy of the state until its client reads it all: 30
/// streams that nobody read held 30 threads and 650 MB of disk for a 21 MB
/// store.
const MAX_STREAMS: usize = 2;
static STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_STREAMS);
/// A client that takes no message for this long loses its stream (and the
/// slot it holds).
const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Splits `len` bytes of `input`, zero-padded to a multiple of
/// [`BACKUP_ALIGN`], into etcd's snapshot messages.
pub struct Chunks<R> {
    input: R,
    /// Bytes of `input` not sent yet.
    unread: u64,
    /// Bytes still to send, padding included.
    remaining: u64,
    /// None once the checksum has been handed out.
    hasher: Option<Sha256>,
}

impl<R: Read> Chunks<R> {
    pub fn new(input: R, len: u64) -> Self {
        Chunks {
            input,
            unread: len,
            remaining: len.next_multiple_of(BACKUP_ALIGN),
            hasher: Some(Sha256::new()),
        }
    }

    /// The next message as (bytes still to come after it, blob); the
    /// checksum last, with 0 remaining; then None. An input shorter than
    /// `len` is an error, never a short stream.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        if self.remaining == 0 {
            return Ok(self
                .hasher
                .take()
                .map(|hasher| (0, hasher.finalize().to_vec())));
        }
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(None);
        };
        let n = self.remaining.min(CHUNK_BYTES as u64) as usize;
        let mut blob = vec![0u8; n];
        let data = self.unread.min(n as u64) as usize;
        self.input.read_exact(&mut blob[..data])?;
        hasher.update(&blob);
        self.unread -= data as u64;
        self.remaining -= n as u64;
        Ok(Some((self.remaining, blob)))
    }
}

/// Exports a snapshot and streams it from its (unlinked) temp file on a
/// blocking thread; the stream ends early if the client goes away.
pub async fn stream(core: &Arc<NodeCore>) -> Result<BoxStream<epb::SnapshotResponse>, Status> {
    let Ok(slot) = STREAMS.try_acquire() else {
        return Err(Status::resource_exhausted(format!(
            "etcdserver: too many snapshots in progress on this member (at most {MAX_STREAMS}); \
             retry when one has ended"
        )));
    };
    let export = core.export_snapshot().await?;
    let header = convert::header(core.header(export.revision));
    tracing::info!(
        revision = export.revision,
        bytes = export.len,
        "streaming a snapshot to a client"
    );
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut chunks = Chunks::new(std::io::BufReader::new(export.file), export.len);
        let mut first = true;
        loop {
            let message = match chunks.next_chunk() {
                Ok(Some((remaining_bytes, blob))) => Ok(epb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes,
                    blob,
                    // etcd 3.5 names its storage version in the first message.
                    version: if first {
                        ETCD_API_VERSION.to_string()
                    } else {
                        String::new()
                    },
                }),
                Ok(None) => return,
                Err(e) => Err(Status::internal(format!("reading the snapshot: {e}"))),
            };
            first = false;
            let failed = message.is_err();
            let sent = runtime.block_on(tokio::time::timeout(STALL, tx.send(message)));
            if !matches!(sent, Ok(Ok(()))) || failed {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(data: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut chunks = Chunks::new(data, data.len() as u64);
        let mut out = Vec::new();
        while let Some(c) = chunks.next_chunk().unwrap() {
            out.push(c);
        }
        out
    }

    #[test]
    fn chunks_count_down_and_end_with_the_sha256_of_the_padded_data() {
        let data: Vec<u8> = (0..CHUNK_BYTES * 2 + 10).map(|i| i as u8).collect();
        let out = all(&data);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].0, (CHUNK_BYTES + 512) as u64);
        assert_eq!(out[1].0, 512);
        assert_eq!((out[2].0, out[2].1.len()), (0, 512));
        let joined: Vec<u8> = out[..3].iter().flat_map(|c| c.1.clone()).collect();
        let mut padded = data.clone();
        padded.resize(CHUNK_BYTES * 2 + 512, 0);
        assert_eq!(joined, padded);
        assert_eq!(out[3], (0, Sha256::digest(&padded).to_vec()));
        // etcdctl's test that a download ends with a checksum.
        let streamed: usize = out.iter().map(|c| c.1.len()).sum();
        assert_eq!(streamed % 512, 32);
        // An exact multiple needs no padding and still ends with the checksum.
        let data = vec![7u8; CHUNK_BYTES];
        let out = all(&data);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], (0, Sha256::digest(&data).to_vec()));
        // Empty data: the checksum alone.
        assert_eq!(all(&[]), vec![(0, Sha256::digest(b"").to_vec())]);
    }

    #[test]
    fn an_input_shorter_than_its_length_fails() {
        let mut chunks = Chunks::new(&[1u8, 2, 3][..], 5);
        assert!(chunks.next_chunk().is_err());
    }
}
