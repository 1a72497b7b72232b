//! The nines Rust client, over etcd's v3 API (plus `nines.v1.Admin` for the
//! few calls etcd lacks).
//!
//! - Any endpoint accepts any request (followers forward), but the client
//!   learns the leader from status calls and `UNAVAILABLE` hints and sends
//!   writes and linearizable reads there directly.
//! - Retries with backoff on unavailability and leader changes. Writes carry a
//!   `(client_id, seq)` session (metadata `x-nines-session`) so a retried
//!   write is applied exactly once.
//! - Leases: grant, revoke, time-to-live, list, `put_with_lease`, and a
//!   `LeaseKeeper` that keeps a lease alive through member failures.
//! - Locks and elections (etcd's Lock and Election services), and the
//!   fenced write: `fenced_txn` applies ops only while a lock is held.
//! - Serializable reads are balanced across endpoints (round robin, least
//!   outstanding requests, or lowest observed latency).
//! - etcd auth: with `ClientConfig::credentials`, logs in, sends the token
//!   with every call and stream, and logs in again when it expires; the
//!   Auth service (users, roles, permissions) as methods.

mod auth;
mod client;
mod cluster;
mod endpoints;
mod error;
mod keeper;
mod lease;
mod lock;
mod session;
pub mod snapshot;
mod users;
mod watch;

pub use auth::{AuthChannel, Credentials, TOKEN_METADATA};
pub use client::{Client, ClientConfig, GetRequest, GetResponse, ReadBalance, MAX_RESPONSE_BYTES};
pub use cluster::{NodeStatus, SnapshotBuilt};
pub use error::ClientError;
pub use keeper::{KeeperState, Lapse, LeaseKeeper};
pub use lease::KeepAliveStream;
pub use lock::{fence_compare, put_op, Fenced, LeaderKey, LockHeld, Observe};
/// TLS settings and the connector, from nines' TLS crate.
pub use nines_tls::{ClientFiles as TlsFiles, Connector, TlsError};
pub use session::{with_session, SESSION_HEADER};
pub use snapshot::{save_snapshot, SavedSnapshot, SnapshotError};
pub use watch::{Watch, WatchError, WatchOptions, WatchUpdate};

/// The messages and clients the API uses: etcd's `etcdserverpb` with
/// `mvccpb`'s KeyValue, and nines' own calls in `v1`.
pub mod proto {
    /// The same types under etcd's package names.
    pub use nines_proto::etcd;
    pub use nines_proto::etcd::etcdserverpb::*;
    pub use nines_proto::etcd::mvccpb::{self, KeyValue};
    pub use nines_proto::v1;
}

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
