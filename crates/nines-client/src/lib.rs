//! The nines Rust client.
//!
//! - Any endpoint accepts any request (followers forward), but the client
//!   learns the leader from status calls and `UNAVAILABLE` hints and sends
//!   writes and linearizable reads there directly.
//! - Retries with backoff on unavailability and leader changes. Writes carry a
//!   `(client_id, seq)` session so a retried write is applied exactly once.
//! - Serializable reads are balanced across endpoints (round robin, least
//!   outstanding requests, or lowest observed latency).

mod client;
mod endpoints;
mod error;
mod session;
pub mod snapshot;

pub use client::{Client, ClientConfig, ReadBalance, MAX_RESPONSE_BYTES};
pub use error::ClientError;
pub use nines_proto as proto;
pub use snapshot::{save_snapshot, SavedSnapshot, SnapshotError};

/// The smallest key after every key that starts with `prefix` (etcd's
/// range_end for `--prefix`); `"\0"` (all keys) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_end() {
        assert_eq!(super::prefix_end(b"a"), b"b");
        assert_eq!(super::prefix_end(b"a\xff"), b"b");
        assert_eq!(super::prefix_end(b""), b"\0");
        assert_eq!(super::prefix_end(b"\xff"), b"\0");
    }
}
