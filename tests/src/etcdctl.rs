//! Running Debian's etcdctl (3.4) against nines members, for tests.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// etcdctl on PATH, installed from Debian when missing (as the bench does).
pub fn etcdctl() -> &'static str {
    let found = |bin| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
    };
    if !found("etcdctl").is_ok_and(|o| o.status.success()) {
        let _ = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq etcd-client >/dev/null",
            ])
            .status();
        assert!(
            found("etcdctl").is_ok_and(|o| o.status.success()),
            "etcdctl is needed: apt-get install etcd-client"
        );
    }
    "etcdctl"
}

/// Runs etcdctl against one endpoint, with `stdin` as its input.
pub fn ctl(endpoint: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(etcdctl())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=20s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("etcdctl output")
}

/// etcdctl's stdout; fails the test with its stderr if it failed. A
/// member that knows no leader (an election under CI load) refused the
/// call before proposing anything, so it is safe to run it again.
pub fn ok(endpoint: &str, args: &[&str]) -> String {
    let mut out = ctl(endpoint, args, "");
    for _ in 0..50 {
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("no leader is known")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        out = ctl(endpoint, args, "");
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "etcdctl {args:?} on {endpoint}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}
