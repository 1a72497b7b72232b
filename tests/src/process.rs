//! One real `nines-server` process: how the integration tests and the
//! chaos harness find the binary, start it, signal it (kill -9, pause,
//! resume, SIGTERM) and notice that it ended. Both build their clusters on
//! this, so a fix to process handling lands in both.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// The server binary: `explicit` if given, else `NINES_SERVER_BIN`, else
/// the one built next to the running executable (tests run from
/// `target/<profile>/deps`, examples from `.../examples`, the chaos harness
/// from `target/<profile>`), else `target/{release,debug}` under the
/// current directory.
pub fn find_server_binary(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    if let Ok(path) = std::env::var("NINES_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(mut dir) = exe.parent().map(Path::to_path_buf) {
            if dir.ends_with("deps") || dir.ends_with("examples") {
                dir.pop();
            }
            candidates.push(dir.join("nines-server"));
            // A release harness may drive a debug server and the reverse.
            if let Some(target) = dir.parent() {
                candidates.push(target.join("release/nines-server"));
                candidates.push(target.join("debug/nines-server"));
            }
        }
    }
    candidates.push(PathBuf::from("target/release/nines-server"));
    candidates.push(PathBuf::from("target/debug/nines-server"));
    candidates.into_iter().find(|p| p.exists()).ok_or_else(|| {
        "nines-server not found: build it first (cargo build -p nines-server; \
         scripts/test.sh and scripts/chaos.sh do), or set NINES_SERVER_BIN"
            .to_string()
    })
}

/// How to start one server.
#[derive(Debug, Clone)]
pub struct Launch {
    pub bin: PathBuf,
    pub args: Vec<OsString>,
    /// The server's stdout and stderr are appended here.
    pub log: PathBuf,
    /// RLIMIT_NOFILE (soft and hard) set in the child before exec.
    pub nofile_limit: Option<u64>,
    /// The kernel kills the server when the spawning *thread* ends
    /// (PR_SET_PDEATHSIG): right for a harness whose spawning threads live
    /// as long as it does, wrong for one that spawns from short-lived
    /// threads (tokio's blocking pool ends idle threads after 10 s).
    pub die_with_spawner: bool,
}

/// A running server. Dropping it kills it (kill -9), so a panicking test
/// or harness leaves nothing behind (see also [`Launch::die_with_spawner`]).
pub struct ServerProcess {
    child: Child,
    paused: bool,
    /// Waited for: nothing is left to kill.
    reaped: bool,
}

impl ServerProcess {
    pub fn spawn(launch: &Launch) -> std::io::Result<ServerProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)?;
        let mut command = Command::new(&launch.bin);
        let (nofile_limit, die_with_spawner) = (launch.nofile_limit, launch.die_with_spawner);
        // SAFETY: prctl and setrlimit are async-signal-safe and touch no
        // parent state.
        unsafe {
            command.pre_exec(move || {
                if die_with_spawner {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                }
                if let Some(limit) = nofile_limit {
                    let lim = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .args(&launch.args)
            .env("NINES_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(ServerProcess {
            child,
            paused: false,
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Able to answer: not exited (a zombie until reaped) and not stopped
    /// (by `pause` or any SIGSTOP), from the process state in /proc.
    pub fn is_live(&self) -> bool {
        if self.reaped {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) else {
            return false;
        };
        // The state letter follows the command name's closing parenthesis.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        !matches!(state, None | Some('Z' | 'X' | 'x' | 'T' | 't'))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// kill -9 (no shutdown path runs) and reap.
    pub fn kill(mut self) {
        self.kill_and_reap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> Option<ExitStatus> {
        if self.paused {
            self.resume();
        }
        self.signal(libc::SIGTERM);
        self.reaped = true;
        self.child.wait().ok()
    }

    /// The exit status if the process ended by itself, without waiting.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        self.reaped |= status.is_some();
        status
    }

    fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        // A stopped process still dies of SIGKILL; SIGCONT first anyway,
        // so nothing is left stopped if the kill is refused.
        if self.paused {
            self.resume();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(bin: &str, args: &[&str], dir: &Path) -> Launch {
        Launch {
            bin: PathBuf::from(bin),
            args: args.iter().map(Into::into).collect(),
            log: dir.join("out.log"),
            nofile_limit: None,
            die_with_spawner: false,
        }
    }

    /// The state letter of /proc/<pid>/stat (R, S, T, Z, ...).
    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')').next()?.trim_start().chars().next()
    }

    #[test]
    fn pause_resume_and_drop_kill_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = ServerProcess::spawn(&launch("sleep", &["60"], dir.path())).unwrap();
        let pid = p.pid();
        p.pause();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while state(pid) != Some('T') {
            assert!(std::time::Instant::now() < deadline, "never stopped");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        p.resume();
        assert!(!p.is_paused());
        assert_eq!(p.try_exited(), None);
        drop(p);
        // Reaped: the pid no longer names our child.
        assert_eq!(state(pid), None);
    }

    #[test]
    fn an_exit_is_seen_and_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut p =
            ServerProcess::spawn(&launch("sh", &["-c", "echo hi; exit 3"], dir.path())).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = p.try_exited() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.log")).unwrap(),
            "hi\n"
        );
    }

    #[test]
    fn a_missing_binary_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            ServerProcess::spawn(&launch("/nonexistent/nines-server", &[], dir.path())).is_err()
        );
        assert_eq!(
            find_server_binary(Some(PathBuf::from("/x/y"))).unwrap(),
            PathBuf::from("/x/y")
        );
    }
}
