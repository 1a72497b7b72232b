//! A value built from files and rebuilt when they change on disk.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::error::TlsError;

/// How often, at most, the files are checked for changes: a stat per file
/// per check, whatever the connection rate.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// What tells a changed file apart: a rename onto the path changes the
/// inode, an in-place rewrite the mtime or length.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

pub(crate) struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Build<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: Arc<T>,
    stamps: Vec<Option<Stamp>>,
    checked: Instant,
}

impl<T> Reloading<T> {
    /// Builds the value once: a failure here is a start-up error.
    pub fn new(what: &'static str, paths: Vec<PathBuf>, build: Build<T>) -> Result<Self, TlsError> {
        // Stamps first: a file changed while building is seen at the next check.
        let stamps = paths.iter().map(stamp).collect();
        let current = Arc::new(build()?);
        Ok(Reloading {
            what,
            paths,
            build,
            state: Mutex::new(State {
                current,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The current value, rebuilt first if a file changed since the last
    /// check. A rebuild that fails (a file half written, a key that does
    /// not match its certificate) keeps the last good value and is tried
    /// again at the next check.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() < RELOAD_CHECK {
            return state.current.clone();
        }
        state.checked = Instant::now();
        let stamps: Vec<Option<Stamp>> = self.paths.iter().map(stamp).collect();
        if stamps == state.stamps {
            return state.current.clone();
        }
        match (self.build)() {
            Ok(value) => {
                tracing::info!(what = self.what, "TLS files changed on disk: reloaded");
                state.current = Arc::new(value);
                state.stamps = stamps;
            }
            Err(e) => {
                tracing::warn!(
                    what = self.what,
                    "TLS files changed on disk but cannot be used ({e}); \
                     keeping the previous ones"
                );
            }
        }
        state.current.clone()
    }

    /// Makes the next `current` check the files at once (tests).
    #[cfg(test)]
    pub fn expire(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.checked = Instant::now() - RELOAD_CHECK;
    }
}
