//! The Rust client with etcd user/password auth: it logs in, sends the
//! token on every call and stream, and logs in again when the token
//! expires, so a client keeps working through many token lifetimes.

use std::time::{Duration, Instant};

use nines_client::proto::etcd::authpb;
use nines_client::proto::{self as pb};
use nines_client::{Client, WatchOptions, WatchUpdate};
use nines_tests::{Cluster, ClusterOptions};
use tonic::Code;

const LONG: Duration = Duration::from_secs(60);
/// The cluster's --auth-token-ttl, in seconds.
const TOKEN_TTL: u64 = 2;

/// root, and alice with readwrite on app/, then auth on (through the
/// client's Auth methods, without credentials while auth is off).
async fn set_up(admin: &Client) {
    for (name, password) in [("root", "rootpw"), ("alice", "apw")] {
        let add = pb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        };
        admin.user_add(add).await.expect("user add");
    }
    admin
        .role_add(pb::AuthRoleAddRequest { name: "app".into() })
        .await
        .unwrap();
    let perm = authpb::Permission {
        perm_type: authpb::permission::Type::Readwrite as i32,
        key: b"app/".to_vec(),
        range_end: b"app0".to_vec(),
    };
    let grant = pb::AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: Some(perm),
    };
    admin.role_grant_permission(grant).await.unwrap();
    for (user, role) in [("root", "root"), ("alice", "app")] {
        let grant = pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        admin.user_grant_role(grant).await.unwrap();
    }
    admin
        .auth_enable(pb::AuthEnableRequest {})
        .await
        .expect("auth enable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_credentials_outlives_its_tokens() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        args: vec!["--auth-token-ttl".into(), TOKEN_TTL.to_string()],
    });
    cluster.stable_leader(LONG).await;
    // Logged in before auth is on (no token then), it must log in once
    // auth is enabled: the first refusal is "user name is empty".
    let alice = cluster.client_as("alice", "apw");
    alice.put("app/before", "v").await.expect("auth still off");
    set_up(&cluster.client()).await;

    let prefix = WatchOptions {
        range_end: nines_client::prefix_end(b"app/"),
        ..Default::default()
    };
    let mut watch = alice.watch("app/", prefix.clone()).await.expect("watch");
    let lease = alice.lease_grant(TOKEN_TTL as i64, 0).await.expect("grant");
    let keeper = alice.lease_keep_alive(lease.id).await.expect("keeper");

    // Writes and reads for more than three token lifetimes: every one
    // must succeed, through each expiry.
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < Duration::from_secs(3 * TOKEN_TTL + 2) {
        let key = format!("app/{written}");
        alice.put(key.clone(), "v").await.expect("put as alice");
        let kv = alice.get(key).await.expect("get as alice");
        assert!(kv.is_some());
        written += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written > 10, "only {written} writes");

    // The watch opened with the first token still delivers every write.
    let mut seen = 0u64;
    while seen < written {
        let update = tokio::time::timeout(LONG, watch.next())
            .await
            .expect("watch stalled")
            .expect("watch ended")
            .expect("watch failed");
        if let WatchUpdate::Events(events) = update {
            seen += events.len() as u64;
        }
    }
    // A stream opened with an expired token logs in again.
    tokio::time::sleep(Duration::from_secs(TOKEN_TTL + 1)).await;
    let mut late = alice.watch("app/", prefix).await.expect("late watch");
    alice.put("app/late", "v").await.unwrap();
    let update = tokio::time::timeout(LONG, late.next()).await.unwrap();
    assert!(
        matches!(update, Some(Ok(WatchUpdate::Events(_)))),
        "{update:?}"
    );
    // The lease stayed alive, kept by a stream opened with the first token.
    let state = keeper.state();
    assert!(!state.expired && state.failed.is_none(), "{state:?}");
    let ttl = alice.lease_time_to_live(lease.id, false).await.unwrap();
    assert!(ttl.ttl > 0, "lease expired: {ttl:?}");

    // Logging in again does not widen what alice may do.
    let denied = alice.put("other/x", "v").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // A wrong password fails with etcd's error, and is not retried.
    let wrong = cluster.client_as("alice", "nope");
    let failed = wrong.get("app/0").await.unwrap_err();
    assert!(
        failed
            .to_string()
            .contains("authentication failed, invalid user ID or password"),
        "{failed}"
    );
    // Without credentials: etcd's "user name is empty".
    let anonymous = cluster.client().get("app/0").await.unwrap_err();
    assert_eq!(anonymous.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_a_cluster_with_auth_on_as_a_root_user() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    cluster.stable_leader(LONG).await;
    set_up(&cluster.client()).await;
    let root = cluster.client_as("root", "rootpw");
    root.put("before/join", "v").await.unwrap();

    let endpoints = cluster.endpoints().join(",");
    let peer = format!("127.0.0.1:{}", nines_tests::cluster::free_port());
    let join = vec![
        "--join".to_string(),
        endpoints,
        "--join-user".to_string(),
        "root:rootpw".to_string(),
    ];
    cluster.add_node_as(4, peer, join);
    // Added as a learner, then promoted once caught up: a voter of four.
    let deadline = Instant::now() + LONG;
    loop {
        let members = root.member_list().await.expect("member list").members;
        if members.iter().any(|m| m.id == 4 && !m.is_learner) {
            assert_eq!(members.len(), 4);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member 4 never became a voter: {members:?}\n{}",
            cluster.server_log(4)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
