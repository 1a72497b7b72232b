//! Client-facing gRPC services: etcd's v3 API (`etcd`) and the few calls
//! it lacks (`admin`). Handlers convert, call a domain operation on
//! `NodeCore`, forward through `forward` when it says the leader must
//! serve, and map errors through `ApiError`.

mod admin;
pub mod convert;
pub mod etcd;
pub mod forward;
pub mod forward_batch;

pub use admin::{publish, AdminService};
