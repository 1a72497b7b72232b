//! The nines state machine: an etcd-like KV on sled, applied from the Raft
//! log, with exactly-once sessions and point-in-time file snapshots built
//! while writes continue.

mod apply;
mod capture;
mod error;
mod install;
mod reader;
mod rebuild;
mod redo;
mod sessions;
mod snapshot_builder;
mod snapshot_dir;
mod snapshot_file;
mod state_machine;
mod store;

pub use error::StateError;
pub use reader::StateReader;
pub use snapshot_builder::SnapshotBuilder;
pub use state_machine::{SnapshotStats, StateMachine};
#[doc(hidden)]
pub use store::RawRecord;
pub use store::StateOptions;
