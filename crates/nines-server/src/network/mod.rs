//! Raft traffic over tonic: the client side (`RaftNetworkFactory`) and the
//! server side (the internal `nines.v1.Raft` gRPC service).

mod client;
mod codec;
pub mod guard;
pub mod peers;
mod replies;
mod service;
mod snapshot_receive;

pub use client::{ChannelPool, NetworkFactory, MAX_MESSAGE_BYTES};
pub use peers::PeerLiveness;
pub use service::RaftService;
pub use snapshot_receive::SnapshotReceiver;
