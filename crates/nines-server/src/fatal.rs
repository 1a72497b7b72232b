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
/// is still false (a stop we asked for never resolves). `fault` gives the
/// state machine's storage error, if it returned one (see [`reason`]).
pub async fn raft_stopped(
    raft: Raft,
    stopping: watch::Receiver<bool>,
    fault: impl Fn() -> Option<String>,
) -> String {
    let metrics = raft.metrics();
    // Woken by the server metrics only (see `observe::watch_raft`): RaftCore
    // stops with its state Shutdown, or by returning, which drops every
    // metrics sender; the full metrics then still hold its last report.
    let mut server = raft.server_metrics();
    loop {
        let core = {
            // The role from the server metrics that woke us: RaftCore sends
            // the full metrics after them, so those may still be older.
            let shut_down = server.borrow_and_update().state == ServerState::Shutdown;
            let m = metrics.borrow();
            match &m.running_state {
                Err(e) => Some(format!("raft core stopped: {e}")),
                Ok(()) if shut_down || m.state == ServerState::Shutdown => {
                    Some("raft core shut down".into())
                }
                Ok(()) => None,
            }
        };
        // The metrics sender is dropped when RaftCore's task ends, panics
        // included.
        let core = match core {
            Some(r) => r,
            None if server.changed().await.is_err() => match &metrics.borrow().running_state {
                Err(e) => format!("raft core stopped: {e}"),
                Ok(()) => "raft core exited".to_string(),
            },
            None => continue,
        };
        if *stopping.borrow() {
            return std::future::pending().await;
        }
        return reason(&core, fault());
    }
}

/// One line naming the root cause first. When the state machine fails, its
/// openraft worker quits; RaftCore's next send to it can fail before RaftCore
/// reads the error, and RaftCore then reports only "channel closed".
pub fn reason(core: &str, state_machine_fault: Option<String>) -> String {
    match state_machine_fault {
        Some(fault) if !core.contains(&fault) => {
            one_line(&format!("state machine storage error: {fault} ({core})"))
        }
        _ => one_line(core),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_machine_fault_is_named_before_a_closed_channel() {
        let core = "raft core stopped: when Write Apply(..): channel closed";
        let fault =
            "when Write StateMachine: io error on /d/tail/7: No space left on device (os error 28)";
        let r = reason(core, Some(fault.to_string()));
        assert!(
            r.starts_with("state machine storage error: when Write"),
            "{r}"
        );
        assert!(
            r.contains("os error 28") && r.contains("channel closed"),
            "{r}"
        );
        assert_eq!(reason("raft core\nexited", None), "raft core exited");
        // RaftCore read the error itself: named once.
        let core = format!("raft core stopped: {fault}");
        assert_eq!(reason(&core, Some(fault.to_string())), core);
    }
}
