//! The nines Raft log: a segmented, append-only write-ahead log.
//!
//! - Records are framed with length + CRC32C; segments are bounded in size.
//! - `append` writes a whole batch and issues one `fdatasync` before telling
//!   openraft the entries are durable (group commit).
//! - Recovery drops a torn tail of the last segment and refuses to start on
//!   damage anywhere else, naming the file and offset.
//! - The vote and the purge point live in small files written with
//!   temp + fsync + rename + directory fsync.

mod error;
mod log_reader;
mod log_store;
mod meta;
mod segment;
mod wal;

pub use error::LogError;
pub use log_store::LogStore;
pub use wal::LogOptions;
