//! Fatal conditions end the process, so a supervisor restarts it. Before,
//! a storage error (ENOSPC, EROFS, EMFILE) stopped openraft's RaftCore but
//! the process lived on, answering "node is shutting down" forever, and
//! `Restart=` never fired. etcd exits on a WAL fsync failure for the same
//! reason.
//!
//! Exit codes of `nines-server` (see deploy/systemd/nines.service):
//! - 1: bad configuration, or the node could not start;
//! - [`EXIT_PANIC`] (70, EX_SOFTWARE): a panic in any thread;
//! - [`EXIT_RAFT_STOPPED`] (74, EX_IOERR): the Raft core stopped on a
//!   storage error (or stopped without being asked to);
//! - 134 (SIGABRT): the Raft log's background fdatasync failed (nines-log
//!   aborts there, as no caller is left to return the error to).

use nines_types::Raft;
use openraft::ServerState;
use tokio::sync::watch;

pub const EXIT_PANIC: i32 = 70;
pub const EXIT_RAFT_STOPPED: i32 = 74;

/// Makes a panic in any thread log one line to stderr and exit with
/// [`EXIT_PANIC`]. Without it a panicking tokio task is only logged by its
/// JoinHandle, if anyone awaits it, and the node limps on. Only the binary
/// installs it: in-process tests keep the default unwinding behaviour.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-text panic payload)".to_string());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        eprintln!(
            "nines-server: fatal: panic in thread {}{location}: {}; exiting with code {EXIT_PANIC}",
            thread.name().unwrap_or("unnamed"),
            one_line(&payload),
        );
        std::process::exit(EXIT_PANIC);
    }));
}

/// Newlines would split the reason over several log records.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Resolves with the reason once the Raft core has stopped while `stopping`
/// is still false (a stop we asked for never resolves).
pub async fn raft_stopped(raft: Raft, stopping: watch::Receiver<bool>) -> String {
    let mut metrics = raft.metrics();
    loop {
        let reason = {
            let m = metrics.borrow_and_update();
            match &m.running_state {
                Err(e) => Some(format!("raft core stopped: {e}")),
                Ok(()) if m.state == ServerState::Shutdown => Some("raft core shut down".into()),
                Ok(()) => None,
            }
        };
        // The metrics sender is dropped when RaftCore's task ends, panics
        // included.
        let reason = match reason {
            Some(r) => r,
            None if metrics.changed().await.is_err() => "raft core exited".to_string(),
            None => continue,
        };
        if *stopping.borrow() {
            return std::future::pending().await;
        }
        return one_line(&reason);
    }
}
