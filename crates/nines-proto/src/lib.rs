//! Generated gRPC types and services for nines (package `nines.v1`).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("nines.v1");
}

/// Encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nines_descriptor.bin"));

pub use v1::*;
