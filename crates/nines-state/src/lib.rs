//! The nines state machine: an etcd-like multi-version KV, applied from the
//! Raft log onto an ordered engine (sled), with exactly-once sessions and
//! point-in-time file snapshots built while writes continue, and the
//! backups (etcd's snapshot stream) made from them.

mod apply;
mod auth;
mod backup;
mod base_file;
mod capture;
#[cfg(test)]
mod compaction_sm_tests;
mod compactor;
#[cfg(test)]
mod crash_tests;
mod engine;
mod error;
mod install;
mod lease;
mod mvcc;
mod overlay;
mod reader;
mod rebuild;
mod redo;
mod sessions;
mod sled_engine;
mod snapshot_base;
mod snapshot_builder;
mod snapshot_dir;
mod snapshot_file;
mod stage;
mod state_machine;
mod store;
mod tail;
mod tiered;

pub use auth::AuthState;
pub use backup::{
    backup_status, restore_state, verify_backup, BackupStatus, Export, BACKUP_ALIGN, CHECKSUM_LEN,
};
pub use error::StateError;
pub use lease::LeaseInfo;
pub use mvcc::{Change, Changes, HashKv, Read, TxnRead};
pub use reader::StateReader;
pub use snapshot_builder::SnapshotBuilder;
pub use stage::SnapshotStager;
pub use state_machine::{SnapshotStats, StateMachine};
#[doc(hidden)]
pub use store::RawRecord;
pub use store::EMPTY_STORE_REVISION;
pub use store::{ChangeSink, StateObserver, StateOptions};
