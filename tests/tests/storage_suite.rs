//! openraft's storage conformance suite against nines-log + nines-state.

use nines_log::{LogOptions, LogStore};
use nines_state::{StateMachine, StateOptions};
use nines_types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};
use tempfile::TempDir;

struct Builder;

fn io_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write(AnyError::new(&e)).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().map_err(io_error)?;
        let log =
            LogStore::open(&dir.path().join("log"), LogOptions::default()).map_err(io_error)?;
        let sm = StateMachine::open(&dir.path().join("state"), StateOptions::default())
            .await
            .map_err(io_error)?;
        Ok((dir, log, sm))
    }
}

// A plain #[test]: the suite builds its own runtime.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
