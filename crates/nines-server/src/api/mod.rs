//! Client-facing gRPC services: thin handlers that convert, call a domain
//! operation on `NodeCore`, and map errors to statuses.

mod cluster;
pub mod convert;
pub mod etcd;
mod kv;

pub use cluster::ClusterService;
pub use kv::KvService;
