//! etcdctl 3.4 against nines with client TLS, client certificate auth and
//! auth on: users by password (`--user`), and users by their certificate's
//! CN when they send no token (etcd's rule), on a follower so that the
//! forwarded calls carry the identity too.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nines_tests::etcdctl::etcdctl;
use nines_tests::pki::Pki;
use nines_tests::{Cluster, ClusterOptions};

const LONG: Duration = Duration::from_secs(60);

/// etcdctl over TLS with the certificate pair `pair`, against `endpoint`.
fn ctl(pki: &Pki, endpoint: &str, pair: &str, args: &[&str]) -> Output {
    ctl_for(pki, endpoint, pair, args, None)
}

/// Like `ctl`, killed after `limit` (for watches, which never end).
fn ctl_for(
    pki: &Pki,
    endpoint: &str,
    pair: &str,
    args: &[&str],
    limit: Option<Duration>,
) -> Output {
    let mut command = match limit {
        Some(limit) => {
            let mut c = Command::new("timeout");
            c.arg(format!("{}s", limit.as_secs())).arg(etcdctl());
            c
        }
        None => Command::new(etcdctl()),
    };
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{endpoint}"))
        .arg("--command-timeout=20s")
        .arg(format!("--cacert={}", pki.s("clients-ca.crt")))
        .arg(format!("--cert={}", pki.s(&format!("{pair}.crt"))))
        .arg(format!("--key={}", pki.s(&format!("{pair}.key"))))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// etcdctl's last stderr line for a call that must fail.
fn refused(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().last().unwrap_or("").to_string()
}

fn tls_cluster(pki: &Pki) -> Cluster {
    let args = [
        ("--cert-file", pki.s("server.crt")),
        ("--key-file", pki.s("server.key")),
        ("--trusted-ca-file", pki.s("clients-ca.crt")),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .chain(["--client-cert-auth".to_string()])
    .collect();
    let mut cluster = Cluster::prepare(ClusterOptions { nodes: 3, args });
    cluster.client_tls = Some(nines_client::TlsFiles {
        ca: pki.path("clients-ca.crt"),
        cert: Some(pki.path("anyone.crt")),
        key: Some(pki.path("anyone.key")),
    });
    cluster.spawn_all();
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_with_tls_and_auth_users_by_password_and_by_certificate() {
    // Members serve `server` (CN nines-member); clients come with these.
    let pki = Pki::new();
    // A client certificate whose CN is no user: its holder needs --user.
    pki.issue(&pki.clients, "etcdctl-client", "anyone");
    pki.issue(&pki.clients, "alice", "alice");
    pki.issue(&pki.clients, "root", "root");
    pki.issue(&pki.clients, "", "nocn");
    let cluster = tls_cluster(&pki);
    let leader = cluster.stable_leader(LONG).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let ep = follower.client_addr.as_str();
    let run = |pair: &str, args: &[&str]| ctl(&pki, ep, pair, args);

    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:apw"],
        &["user", "add", "bob:bpw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "--prefix=true",
            "readwrite",
            "app/",
        ],
        &["user", "grant-role", "alice", "app"],
        &["put", "other/x", "secret"],
        &["auth", "enable"],
    ] {
        ok(run("anyone", args), &format!("{args:?}"));
    }

    // By password: root anywhere, alice within app/.
    let root = ["--user", "root:rootpw"];
    let alice = ["--user", "alice:apw"];
    let with = |user: &[&str; 2], args: &[&str]| -> Vec<String> {
        user.iter().chain(args).map(|s| s.to_string()).collect()
    };
    let go = |pair: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(pair, &args)
    };
    ok(
        go("anyone", with(&root, &["put", "other/y", "r"])),
        "root put",
    );
    let got = ok(go("anyone", with(&root, &["get", "other/x"])), "root get");
    assert_eq!(got, "other/x\nsecret\n");
    ok(
        go("anyone", with(&alice, &["put", "app/k", "v"])),
        "alice put",
    );
    let got = ok(go("anyone", with(&alice, &["get", "app/k"])), "alice get");
    assert_eq!(got, "app/k\nv\n");
    let watch = [
        "--user",
        "alice:apw",
        "watch",
        "app/",
        "--prefix",
        "--rev=1",
    ];
    let events = ok_watch(ctl_for(
        &pki,
        ep,
        "anyone",
        &watch,
        Some(Duration::from_secs(4)),
    ));
    assert_eq!(events, "PUT\napp/k\nv\n");
    // etcd lets any user (and even no user) list the members.
    let members = ok(go("anyone", with(&alice, &["member", "list"])), "members");
    assert_eq!(members.lines().count(), 3, "{members}");
    let bob = ["--user", "bob:bpw"];
    ok(
        go("anyone", with(&bob, &["member", "list"])),
        "bob's members",
    );

    let denied = refused(go("anyone", with(&alice, &["put", "other/x", "v"])), "put");
    assert_eq!(denied, "Error: etcdserver: permission denied");
    let denied = refused(go("anyone", with(&alice, &["get", "other/x"])), "get");
    assert_eq!(denied, "Error: etcdserver: permission denied");
    let wrong = ["--user", "alice:nope"];
    let failed = refused(go("anyone", with(&wrong, &["get", "app/k"])), "bad login");
    assert_eq!(
        failed,
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
    // No token: the certificate's CN is the user, here one that does not
    // exist (etcd: permission denied); a certificate without a CN is nobody.
    let unknown = refused(run("anyone", &["get", "app/k"]), "unknown CN");
    assert_eq!(unknown, "Error: etcdserver: permission denied");
    let anonymous = refused(run("nocn", &["get", "app/k"]), "no CN");
    assert_eq!(anonymous, "Error: etcdserver: user name is empty");

    // By certificate: CN=alice and no --user is alice, on the follower
    // and on the calls it forwards (linearizable reads, writes).
    let got = ok(run("alice", &["get", "app/k"]), "alice by CN");
    assert_eq!(got, "app/k\nv\n");
    ok(run("alice", &["put", "app/cn", "w"]), "alice by CN puts");
    let got = ok(
        run("alice", &["get", "app/cn", "--consistency=s"]),
        "serializable",
    );
    assert_eq!(got, "app/cn\nw\n");
    let denied = refused(run("alice", &["get", "other/x"]), "CN alice get");
    assert_eq!(denied, "Error: etcdserver: permission denied");
    let denied = refused(run("alice", &["user", "list"]), "CN alice user list");
    assert_eq!(denied, "Error: etcdserver: permission denied");
    let events = ok_watch(ctl_for(
        &pki,
        ep,
        "alice",
        &["watch", "app/cn", "--rev=1"],
        Some(Duration::from_secs(4)),
    ));
    assert_eq!(events, "PUT\napp/cn\nw\n");
    // CN=root is root.
    let users = ok(run("root", &["user", "list"]), "root by CN");
    assert_eq!(users, "alice\nbob\nroot\n");
    // A token wins over the certificate: alice's certificate, bob's login.
    let denied = refused(
        go("alice", with(&bob, &["get", "app/k"])),
        "bob with alice's certificate",
    );
    assert_eq!(denied, "Error: etcdserver: permission denied");
}

/// A watch's output, after `timeout` ended it (exit 124).
fn ok_watch(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(124),
        "watch ended early: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
