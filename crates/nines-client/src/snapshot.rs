//! Saving a backup: etcd's `Maintenance.Snapshot` stream from one member,
//! written as it arrives (never held whole) and checked against the
//! SHA-256 the stream ends with. The file gets the whole stream, checksum
//! included, as `etcdctl snapshot save` writes it, so either tool's file
//! works with `nines snapshot status` and `restore`.

use std::time::Duration;

use nines_proto::etcd::etcdserverpb as epb;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tonic::transport::Endpoint;

/// Bytes of the SHA-256 that ends the stream.
pub const CHECKSUM_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("invalid endpoint {0:?}")]
    InvalidEndpoint(String),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("writing the snapshot: {0}")]
    Io(#[from] std::io::Error),
    /// The data does not hash to the checksum that ends the stream.
    #[error(
        "snapshot checksum mismatch: the stream was damaged or cut short \
         (received {received} bytes, server announced {announced})"
    )]
    Checksum { received: u64, announced: u64 },
}

/// What a saved snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedSnapshot {
    /// Bytes written, checksum included.
    pub bytes: u64,
    /// The store revision the snapshot holds.
    pub revision: i64,
    /// The member that served it.
    pub member_id: u64,
    pub sha256: [u8; CHECKSUM_LEN],
}

/// Progress while saving: bytes received so far, and how many the server
/// said are still to come (the checksum excluded).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub received: u64,
    pub remaining: u64,
}

/// Streams a snapshot of `endpoint`'s applied state into `out` and checks
/// its checksum. `timeout` bounds the connection and the wait for the
/// first message; the transfer itself may take as long as it takes.
/// Connections go through `connector` (TLS as the client's, see
/// `Client::connector`).
pub async fn save_snapshot<W: AsyncWrite + Unpin>(
    endpoint: &str,
    connector: &nines_tls::Connector,
    timeout: Duration,
    out: &mut W,
    mut progress: impl FnMut(Progress),
) -> Result<SavedSnapshot, SnapshotError> {
    if endpoint.starts_with("https://") && !connector.is_tls() {
        return Err(SnapshotError::InvalidEndpoint(endpoint.to_string()));
    }
    Endpoint::from_shared(format!("http://{}", nines_tls::strip_scheme(endpoint)))
        .map_err(|_| SnapshotError::InvalidEndpoint(endpoint.to_string()))?;
    let channel = connector
        .connect(endpoint, |e| e.connect_timeout(timeout))
        .await
        .map_err(|source| SnapshotError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let mut client = epb::maintenance_client::MaintenanceClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024);
    let first = tokio::time::timeout(timeout, async {
        let mut stream = client
            .snapshot(epb::SnapshotRequest {})
            .await
            .map_err(SnapshotError::Status)?
            .into_inner();
        let first = stream.message().await.map_err(SnapshotError::Status)?;
        Ok::<_, SnapshotError>((stream, first))
    })
    .await
    .map_err(|_| {
        SnapshotError::Status(tonic::Status::deadline_exceeded(format!(
            "no snapshot data from {endpoint} within {timeout:?}"
        )))
    })?;
    let (mut stream, mut next) = first?;
    let mut check = ChecksumTail::default();
    let (mut revision, mut member_id, mut announced) = (0, 0, 0);
    while let Some(message) = next {
        if let Some(h) = &message.header {
            (revision, member_id) = (h.revision, h.member_id);
        }
        if check.received == 0 && announced == 0 {
            announced = message.remaining_bytes + message.blob.len() as u64;
        }
        check.feed(&message.blob);
        out.write_all(&message.blob).await?;
        progress(Progress {
            received: check.received,
            remaining: message.remaining_bytes,
        });
        next = stream.message().await.map_err(SnapshotError::Status)?;
    }
    out.flush().await?;
    let sha256 = check.verify().ok_or(SnapshotError::Checksum {
        received: check.data_len(),
        announced,
    })?;
    Ok(SavedSnapshot {
        bytes: check.received,
        revision,
        member_id,
        sha256,
    })
}

/// Hashes a stream while holding back its last [`CHECKSUM_LEN`] bytes,
/// which must turn out to be the SHA-256 of everything before them.
#[derive(Default)]
pub struct ChecksumTail {
    hasher: Sha256,
    tail: Vec<u8>,
    received: u64,
}

impl ChecksumTail {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.received += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > CHECKSUM_LEN {
            let cut = self.tail.len() - CHECKSUM_LEN;
            self.hasher.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    /// Bytes of data seen, the checksum excluded.
    pub fn data_len(&self) -> u64 {
        self.received.saturating_sub(CHECKSUM_LEN as u64)
    }

    /// The checksum, if the stream ended with the right one.
    pub fn verify(&self) -> Option<[u8; CHECKSUM_LEN]> {
        let stored: [u8; CHECKSUM_LEN] = self.tail.as_slice().try_into().ok()?;
        (self.hasher.clone().finalize().as_slice() == stored).then_some(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(data: &[u8]) -> Vec<u8> {
        let mut s = data.to_vec();
        s.extend_from_slice(&Sha256::digest(data));
        s
    }

    fn check_in_pieces(bytes: &[u8], piece: usize) -> Option<[u8; CHECKSUM_LEN]> {
        let mut check = ChecksumTail::default();
        for chunk in bytes.chunks(piece.max(1)) {
            check.feed(chunk);
        }
        check.verify()
    }

    #[test]
    fn a_stream_verifies_however_it_is_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let s = stream(&data);
        for piece in [1, 5, 31, 32, 33, 100, 2000] {
            assert!(check_in_pieces(&s, piece).is_some(), "pieces of {piece}");
        }
        assert!(check_in_pieces(&stream(&[]), 7).is_some());
    }

    #[test]
    fn damaged_cut_or_extended_streams_are_refused() {
        let data = vec![3u8; 500];
        let good = stream(&data);
        let mut flipped = good.clone();
        flipped[10] ^= 1;
        assert!(check_in_pieces(&flipped, 64).is_none());
        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert!(check_in_pieces(&bad_sum, 64).is_none());
        assert!(check_in_pieces(&good[..good.len() - 1], 64).is_none());
        assert!(check_in_pieces(&data, 64).is_none());
        assert!(check_in_pieces(&good[..20], 64).is_none());
        let mut longer = good.clone();
        longer.push(0);
        assert!(check_in_pieces(&longer, 64).is_none());
    }
}
