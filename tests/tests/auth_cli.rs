//! `nines auth|user|role` and `--user` print what etcdctl 3.4 prints: one
//! scripted session (users, roles, permissions, auth on and off, logins
//! right and wrong) run by etcdctl and then by nines against the same
//! nines cluster, compared line by line. The script undoes itself, so
//! the second run starts from the same state as the first.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nines_tests::etcdctl::ctl;
use nines_tests::{Cluster, ClusterOptions};

const LONG: Duration = Duration::from_secs(60);

fn nines(endpoint: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(nines_tests::cluster::cli_binary())
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nines");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().expect("nines output")
}

const ROOT: &str = "--user=root:rootpw";

/// (arguments, stdin). Every step is run by both tools.
const SCRIPT: &[(&[&str], &str)] = &[
    (&["user", "add", "root:rootpw"], ""),
    (&["user", "add", "alice", "--new-user-password=apw"], ""),
    (&["user", "add", "bob", "--interactive=false"], "bpw\n"),
    (&["user", "add", "carl", "--no-password"], ""),
    (&["user", "add", "alice:again"], ""),
    (&["user", "grant-role", "root", "root"], ""),
    (&["role", "add", "app"], ""),
    (
        &[
            "role",
            "grant-permission",
            "app",
            "--prefix=true",
            "readwrite",
            "app/",
        ],
        "",
    ),
    (&["role", "grant-permission", "app", "read", "key1"], ""),
    (
        &["role", "grant-permission", "app", "write", "k2", "k5"],
        "",
    ),
    (
        &["role", "grant-permission", "app", "--from-key", "read", "z"],
        "",
    ),
    (&["role", "get", "app"], ""),
    (&["role", "add", "empty"], ""),
    (&["role", "list"], ""),
    (&["user", "get", "alice"], ""),
    (&["user", "grant-role", "alice", "app"], ""),
    (&["user", "grant-role", "alice", "empty"], ""),
    (&["user", "grant-role", "alice", "nosuchrole"], ""),
    (&["user", "get", "alice"], ""),
    (&["user", "get", "alice", "--detail"], ""),
    (&["user", "list"], ""),
    (&["auth", "enable"], ""),
    (&["user", "list"], ""),
    (&[ROOT, "user", "list"], ""),
    (&["--user=alice:apw", "put", "app/x", "1"], ""),
    (&["--user=alice:apw", "get", "app/x"], ""),
    (&["--user=alice:apw", "put", "other", "1"], ""),
    (&["--user=alice:wrong", "get", "app/x"], ""),
    (&["--user=alice", "--password=apw", "get", "app/x"], ""),
    (&["--user=alice:apw", "user", "list"], ""),
    (&[ROOT, "role", "revoke-permission", "app", "key1"], ""),
    (&[ROOT, "role", "revoke-permission", "app", "k2", "k5"], ""),
    (
        &[ROOT, "role", "revoke-permission", "app", "--prefix", "app/"],
        "",
    ),
    (
        &[ROOT, "role", "revoke-permission", "app", "--from-key", "z"],
        "",
    ),
    (&[ROOT, "role", "revoke-permission", "app", "nothere"], ""),
    (&[ROOT, "role", "get", "app"], ""),
    (&[ROOT, "user", "revoke-role", "alice", "app"], ""),
    (&[ROOT, "user", "revoke-role", "alice", "app"], ""),
    (
        &[ROOT, "user", "passwd", "alice", "--interactive=false"],
        "newpw\n",
    ),
    (&["--user=alice:newpw", "get", "app/x"], ""),
    (&["--user=alice:apw", "get", "app/x"], ""),
    (&[ROOT, "user", "get", "nobody"], ""),
    (&[ROOT, "user", "delete", "bob"], ""),
    (&[ROOT, "user", "delete", "bob"], ""),
    (&[ROOT, "role", "delete", "app"], ""),
    (&[ROOT, "role", "delete", "app"], ""),
    (&[ROOT, "del", "app/x"], ""),
    (&[ROOT, "auth", "disable"], ""),
    (&["user", "delete", "alice"], ""),
    (&["user", "delete", "carl"], ""),
    (&["user", "delete", "root"], ""),
    (&["role", "delete", "empty"], ""),
    (&["user", "list"], ""),
    (&["role", "list"], ""),
];

/// What a step did, comparable across the tools: success, stdout, and
/// for a failure the server's message (etcdctl prints `Error: MESSAGE`
/// after a log line; nines `Error: MESSAGE`, or `Error: CODE: MESSAGE`
/// for key commands).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    ok: bool,
    stdout: String,
    error: String,
}

fn outcome(out: &Output) -> Outcome {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Error: "))
        .map(|e| match e.find("etcdserver: ") {
            Some(at) => e[at..].to_string(),
            None => e.to_string(),
        })
        .unwrap_or_default();
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        error,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nines_user_role_and_auth_commands_print_what_etcdctl_prints() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    // A follower: every change is forwarded to the leader.
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let ep = follower.client_addr.as_str();

    let reference: Vec<Outcome> = SCRIPT
        .iter()
        .map(|(args, stdin)| outcome(&ctl(ep, args, stdin)))
        .collect();
    // Spot checks that the script does what it says (etcdctl's view).
    assert_eq!(reference[0].stdout, "User root created\n");
    assert!(reference.iter().filter(|o| !o.ok).count() >= 8);
    assert_eq!(
        reference[27].error,
        "etcdserver: authentication failed, invalid user ID or password"
    );
    assert_eq!(reference[26].error, "etcdserver: permission denied");
    assert_eq!(reference[22].error, "etcdserver: user name is empty");
    assert_eq!(reference.last().unwrap().stdout, "");

    for (i, ((args, stdin), expected)) in SCRIPT.iter().zip(&reference).enumerate() {
        let got = outcome(&nines(ep, args, stdin));
        assert_eq!(&got, expected, "step {i}: {args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nines_asks_for_a_missing_password_and_shows_auth_status() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        args: vec![],
    });
    cluster.stable_leader(LONG).await;
    let ep = cluster.node(1).client_addr.clone();
    let ok = |args: &[&str], stdin: &str| {
        let out = nines(&ep, args, stdin);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "nines {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let status = ok(&["auth", "status"], "");
    assert!(
        status.starts_with("Authentication Status: false\nAuthRevision: "),
        "{status}"
    );
    ok(&["user", "add", "root"], "rootpw\n");
    ok(&["user", "grant-role", "root", "root"], "");
    ok(&["auth", "enable"], "");
    // No password in --user and no terminal: one line of stdin.
    assert_eq!(
        ok(&["--user", "root", "user", "list"], "rootpw\n"),
        "root\n"
    );
    let status = ok(&["auth", "status"], "");
    assert!(
        status.starts_with("Authentication Status: true\n"),
        "{status}"
    );
    let out = nines(&ep, &["--user", "root", "user", "list"], "wrong\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
    let out = nines(
        &ep,
        &["--user", "root:x", "--password", "y", "user", "list"],
        "",
    );
    assert!(!out.status.success(), "a password twice is refused");
}
