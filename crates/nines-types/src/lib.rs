//! Types shared by every nines crate: the openraft type configuration, the
//! command model the state machine applies, and input limits.

mod auth;
pub mod codec;
mod command;
mod durable;
mod limits;
mod node;

use std::io::Cursor;

pub use auth::{
    AuthCommand, AuthRejection, PermKind, Permission, MAX_ROLE_PERMISSIONS, MAX_USER_ROLES, ROOT,
};
pub use command::*;
pub use durable::{durable_index, DurableIndex, DurableIndexTx};
pub use limits::{InputError, Limits, MAX_CHECKPOINT_LEASES, MAX_LEASE_TTL, MAX_REQUEST_BYTES};
pub use node::Node;

/// Raft node ids are stable small integers chosen by the operator (`--id`).
pub type NodeId = u64;

// The macro names `Cursor` unqualified even when SnapshotData is overridden.
#[allow(unused_imports)]
use Cursor as _;

openraft::declare_raft_types!(
    /// The openraft type configuration of nines.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        // Snapshots stream through files so a large state is never held whole in memory.
        SnapshotData = tokio::fs::File,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;
