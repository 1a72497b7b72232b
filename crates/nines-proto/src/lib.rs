//! Generated gRPC types and services: etcd's v3 API (`etcd::*`), the public
//! API, and nines' own package `nines.v1` (re-exported at the crate root):
//! Raft traffic between members and the few calls etcd has no equivalent for.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("nines.v1");
}

/// etcd's v3 API, wire-compatible: the packages keep etcd's names so that
/// generated code refers to its siblings as etcd's does (`super::mvccpb`).
#[allow(clippy::all, missing_docs)]
pub mod etcd {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    /// etcd's lock service (`v3lockpb.Lock`).
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    /// etcd's election service (`v3electionpb.Election`).
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

mod txn;

/// Encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nines_descriptor.bin"));

/// The same for etcd's API.
pub const ETCD_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/etcd_descriptor.bin"));

pub use v1::*;
