//! Key permissions where the key is not the obvious one: an election's
//! Proclaim and Resign write and delete the key the caller names (not only
//! under the election's prefix), and a put or delete with `prev_kv` reads
//! what it replaces. Each was allowed on the leader without the permission.

use std::time::Duration;

use nines_client::proto::etcd::authpb;
use nines_client::proto::{self as pb};
use nines_client::{Client, LeaderKey};
use nines_tests::{Cluster, ClusterOptions};
use tonic::Code;

const LONG: Duration = Duration::from_secs(60);

/// root; `w` with write-only on `app/` and readwrite on `e/`; auth on.
async fn set_up(admin: &Client) {
    for (name, password) in [("root", "rootpw"), ("w", "wpw")] {
        let add = pb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        };
        admin.user_add(add).await.expect("user add");
    }
    admin
        .role_add(pb::AuthRoleAddRequest { name: "w".into() })
        .await
        .unwrap();
    for (kind, key, end) in [
        (authpb::permission::Type::Write, "app/", "app0"),
        (authpb::permission::Type::Readwrite, "e/", "e0"),
    ] {
        let grant = pb::AuthRoleGrantPermissionRequest {
            name: "w".into(),
            perm: Some(authpb::Permission {
                perm_type: kind as i32,
                key: key.into(),
                range_end: end.into(),
            }),
        };
        admin.role_grant_permission(grant).await.unwrap();
    }
    for (user, role) in [("root", "root"), ("w", "w")] {
        let grant = pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        admin.user_grant_role(grant).await.unwrap();
    }
    admin.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
}

fn denied<T: std::fmt::Debug>(result: Result<T, nines_client::ClientError>, what: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_calls_need_write_on_the_key_they_name() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.stable_leader(LONG).await;
    set_up(&cluster.client()).await;
    let root = cluster.client_as("root", "rootpw");
    let w = cluster.client_as("w", "wpw");
    root.put("secret/y", "kept").await.unwrap();
    // Election "e" is w's to use; the keys below are not.
    let forged = |key: &str, rev: i64| LeaderKey {
        name: b"e".to_vec(),
        key: key.as_bytes().to_vec(),
        rev,
        lease: 0,
    };
    // rev 0: "created at 0" holds for an absent key, so this created it.
    denied(w.proclaim(&forged("secret/x", 0), "pwn").await, "proclaim");
    let y = root.get("secret/y").await.unwrap().expect("secret/y");
    denied(
        w.proclaim(&forged("secret/y", y.create_revision), "pwn")
            .await,
        "proclaim over an existing key",
    );
    denied(
        w.resign(&forged("secret/y", y.create_revision)).await,
        "resign",
    );
    assert!(root.get("secret/x").await.unwrap().is_none());
    let y = root.get("secret/y").await.unwrap().expect("secret/y kept");
    assert_eq!(y.value, b"kept");
    // The election's own keys still work for w.
    let lease = w.lease_grant(60, 0).await.unwrap().id;
    let (leader, _) = w.campaign("e/leader", lease, "v1").await.unwrap();
    w.proclaim(&leader, "v2").await.unwrap();
    w.resign(&leader).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_kv_needs_read_on_the_keys_it_returns() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.stable_leader(LONG).await;
    set_up(&cluster.client()).await;
    let root = cluster.client_as("root", "rootpw");
    let w = cluster.client_as("w", "wpw");
    root.put("app/k", "old").await.unwrap();
    let put = |prev_kv| pb::PutRequest {
        key: b"app/k".to_vec(),
        value: b"new".to_vec(),
        prev_kv,
        ..Default::default()
    };
    denied(w.put_request(put(true)).await, "put with prev_kv");
    let delete = |prev_kv| pb::DeleteRangeRequest {
        key: b"app/".to_vec(),
        range_end: b"app0".to_vec(),
        prev_kv,
    };
    denied(w.delete_range(delete(true)).await, "delete with prev_kv");
    let txn = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(delete(true))),
        }],
        ..Default::default()
    };
    denied(w.txn(txn).await, "txn delete with prev_kv");
    assert_eq!(root.get("app/k").await.unwrap().unwrap().value, b"old");
    // Without prev_kv, writing is what w may do.
    w.put_request(put(false)).await.unwrap();
    w.delete_range(delete(false)).await.unwrap();
    assert!(root.get("app/k").await.unwrap().is_none());
}

/// A txn of reads only is served without the log (`txn_read.rs` in
/// nines-server); it still needs read on every key it compares or ranges
/// over, at a follower (raw etcd calls with a token: nines' client would
/// send it to the leader) as at the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_txns_need_read_on_what_they_compare_and_range() {
    use nines_client::proto::auth_client::AuthClient;
    use nines_client::proto::kv_client::KvClient;
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.stable_leader(LONG).await;
    set_up(&cluster.client()).await;
    let root = cluster.client_as("root", "rootpw");
    root.put("app/k", "secret").await.unwrap();
    let range = |key: &str| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    let compare = pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Value as i32,
        key: b"app/k".to_vec(),
        target_union: Some(pb::compare::TargetUnion::Value(b"secret".to_vec())),
        ..Default::default()
    };
    let ranges = pb::TxnRequest {
        success: vec![range("app/k")],
        ..Default::default()
    };
    // The compare alone would tell the value.
    let checks = pb::TxnRequest {
        compare: vec![compare],
        success: vec![range("e/x")],
        failure: vec![range("e/x")],
    };
    let allowed = pb::TxnRequest {
        success: vec![range("e/x")],
        ..Default::default()
    };
    for node in &cluster.nodes {
        let addr = format!("http://{}", node.client_addr);
        let mut auth = AuthClient::connect(addr.clone()).await.expect("connect");
        let login = pb::AuthenticateRequest {
            name: "w".into(),
            password: "wpw".into(),
        };
        let token = auth
            .authenticate(login)
            .await
            .expect("login")
            .into_inner()
            .token;
        let mut kv = KvClient::connect(addr).await.expect("connect");
        let as_w = |txn: &pb::TxnRequest| {
            let mut request = tonic::Request::new(txn.clone());
            request
                .metadata_mut()
                .insert("token", token.parse().expect("token"));
            request
        };
        for (txn, what) in [
            (&ranges, "a range of app/k"),
            (&checks, "a compare on app/k"),
        ] {
            let refused = kv.txn(as_w(txn)).await.expect_err(what);
            assert_eq!(
                refused.code(),
                Code::PermissionDenied,
                "{what} at node {}: {refused:?}",
                node.id
            );
        }
        kv.txn(as_w(&allowed)).await.expect("a range w may read");
    }
}
