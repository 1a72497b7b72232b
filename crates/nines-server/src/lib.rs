//! nines-server: a node of the nines cluster. It wires the WAL Raft log and
//! the sled state machine into openraft, carries Raft traffic over tonic,
//! and serves the KV and Cluster gRPC APIs.

pub mod api;
mod applied_waits;
pub mod auth;
pub mod auto_compact;
pub mod config;
pub mod coord;
pub mod core;
mod datadir;
mod declared;
pub mod disk;
pub mod election;
pub mod error;
pub mod fatal;
pub mod force;
mod gather;
mod incoming;
mod join;
pub mod lease;
pub mod log_repeats;
pub mod members;
pub mod membership;
pub mod metrics;
pub mod network;
mod node;
pub mod observe;
mod peer_stream;
mod proposer;
mod read_barrier;
mod read_index;
pub mod read_limit;
pub mod restore;
mod runtime;
mod snapshot_policy;
pub mod tls;
mod vote_check;
pub mod watch;

/// The client port's connection handling (gathered writes, limits),
/// for the `watch_floor` example, which measures what the transport alone
/// costs watch delivery.
#[doc(hidden)]
pub mod transport {
    pub use crate::incoming::Incoming;
}

pub use config::{ServerArgs, ServerConfig};
pub use error::ServerError;
pub use node::NinesNode;
