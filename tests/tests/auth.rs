//! etcd's auth on real server processes: users, roles and key permissions
//! enforced on every member (forwarded calls included), root-only cluster
//! and maintenance calls, expiring tokens, the same auth state on a member
//! that caught up by snapshot, and etcdctl's user/role/auth commands.

use std::time::Duration;

use nines_client::proto::etcd::authpb;
use nines_client::proto::etcd::etcdserverpb as epb;
use nines_tests::etcdctl::{ctl, ok};
use nines_tests::{Cluster, ClusterOptions};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Code;

const LONG: Duration = Duration::from_secs(60);

fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("token", MetadataValue::try_from(token).unwrap());
    }
    request
}

struct Api {
    addr: String,
}

impl Api {
    fn auth(&self) -> epb::auth_client::AuthClient<Channel> {
        epb::auth_client::AuthClient::new(channel(&self.addr))
    }

    fn kv(&self) -> epb::kv_client::KvClient<Channel> {
        epb::kv_client::KvClient::new(channel(&self.addr))
    }

    async fn login(&self, name: &str, password: &str) -> String {
        let req = epb::AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        };
        self.auth()
            .authenticate(req)
            .await
            .expect("login")
            .into_inner()
            .token
    }

    async fn put(&self, token: Option<&str>, key: &str) -> Result<(), tonic::Status> {
        let req = epb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        self.kv().put(with_token(req, token)).await.map(|_| ())
    }

    async fn get(&self, token: Option<&str>, key: &str) -> Result<usize, tonic::Status> {
        let req = epb::RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let resp = self.kv().range(with_token(req, token)).await?;
        Ok(resp.into_inner().kvs.len())
    }
}

/// root (root role), `reader` (read app/), `writer` (readwrite app/), then auth on.
async fn set_up(api: &Api) {
    let mut auth = api.auth();
    for (name, password) in [("root", "rootpw"), ("reader", "rpw"), ("writer", "wpw")] {
        let add = epb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        };
        auth.user_add(add).await.expect("user add");
    }
    let grant = |user: &str, role: &str| epb::AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    };
    auth.user_grant_role(grant("root", "root")).await.unwrap();
    for (role, kind) in [
        ("ro", authpb::permission::Type::Read),
        ("rw", authpb::permission::Type::Readwrite),
    ] {
        auth.role_add(epb::AuthRoleAddRequest { name: role.into() })
            .await
            .unwrap();
        let perm = authpb::Permission {
            perm_type: kind as i32,
            key: b"app/".to_vec(),
            range_end: b"app0".to_vec(),
        };
        let req = epb::AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(perm),
        };
        auth.role_grant_permission(req).await.unwrap();
    }
    auth.user_grant_role(grant("reader", "ro")).await.unwrap();
    auth.user_grant_role(grant("writer", "rw")).await.unwrap();
    auth.auth_enable(epb::AuthEnableRequest {})
        .await
        .expect("enable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_are_enforced_on_every_member_and_tokens_expire() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        args: vec!["--auth-token-ttl".into(), "4".into()],
    });
    let leader = cluster.stable_leader(LONG).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let f = Api {
        addr: follower.client_addr.clone(),
    };
    let l = Api {
        addr: cluster.node(leader).client_addr.clone(),
    };
    set_up(&f).await;

    // Enabling needs root with the root role: done above; now no token, no call.
    let empty = f.put(None, "app/x").await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(empty.message(), "etcdserver: user name is empty");
    let bad = f
        .auth()
        .authenticate(epb::AuthenticateRequest {
            name: "reader".into(),
            password: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );

    let reader = f.login("reader", "rpw").await;
    let writer = f.login("writer", "wpw").await;
    let root = f.login("root", "rootpw").await;
    // A token from one member works on another (the follower forwards writes).
    f.put(Some(&writer), "app/x")
        .await
        .expect("writer writes app/");
    assert_eq!(l.get(Some(&reader), "app/x").await.unwrap(), 1);
    let denied = f.put(Some(&reader), "app/y").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "etcdserver: permission denied");
    let other = l.get(Some(&writer), "other/x").await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied, "limited to app/");
    f.put(Some(&root), "other/x")
        .await
        .expect("root writes anything");

    // Cluster and maintenance changes are root's.
    let remove = epb::MemberRemoveRequest { id: 3 };
    let refused = epb::cluster_client::ClusterClient::new(channel(&f.addr))
        .member_remove(with_token(remove, Some(&writer)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let snapshot = epb::maintenance_client::MaintenanceClient::new(channel(&f.addr))
        .snapshot(with_token(epb::SnapshotRequest {}, Some(&writer)))
        .await;
    assert_eq!(
        snapshot.err().map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    let users = f
        .auth()
        .user_list(with_token(epb::AuthUserListRequest {}, Some(&writer)))
        .await
        .unwrap_err();
    assert_eq!(users.code(), Code::PermissionDenied, "auth admin is root's");

    // A forged token is refused; a real one expires after --auth-token-ttl.
    // The tag's last hex digit changed (to '0' it is the same token one
    // time in 16).
    let last = if writer.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &writer[..writer.len() - 1]);
    let e = f.get(Some(&forged), "app/x").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let expired = f.get(Some(&reader), "app/x").await.unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert_eq!(expired.message(), "etcdserver: invalid auth token");

    // Disabling (root) opens everything again.
    let root = f.login("root", "rootpw").await;
    f.auth()
        .auth_disable(with_token(epb::AuthDisableRequest {}, Some(&root)))
        .await
        .unwrap();
    f.put(None, "other/y").await.unwrap();
}

/// etcd answers an auth change once the member that was called has
/// applied it. A follower forwards the change to the leader: before it
/// waited for its own copy, the caller's next request there was checked
/// against the old auth state (CI saw a put refused right after a disable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_changes_made_through_a_follower_hold_there_at_once() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        args: vec![],
    });
    let leader = cluster.stable_leader(LONG).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let f = Api {
        addr: follower.client_addr.clone(),
    };
    set_up(&f).await;
    for round in 0..20 {
        let refused = f.put(None, "other/y").await.unwrap_err();
        assert_eq!(
            refused.message(),
            "etcdserver: user name is empty",
            "round {round}: a call without a token right after enable"
        );
        let root = f.login("root", "rootpw").await;
        f.auth()
            .auth_disable(with_token(epb::AuthDisableRequest {}, Some(&root)))
            .await
            .unwrap();
        f.put(None, "other/y")
            .await
            .unwrap_or_else(|e| panic!("round {round}: a put right after disable: {e}"));
        f.auth()
            .auth_enable(epb::AuthEnableRequest {})
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_catches_up_by_snapshot_has_the_same_auth_state() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        args: vec![
            "--snapshot-entries".into(),
            "50".into(),
            "--snapshot-keep-entries".into(),
            "0".into(),
        ],
    });
    let leader = cluster.stable_leader(LONG).await;
    let down = cluster.nodes.iter().find(|n| n.id != leader).unwrap().id;
    let down_last = cluster.status_retrying(down).await.last_log_index;
    cluster.stop(down);
    let l = Api {
        addr: cluster.node(leader).client_addr.clone(),
    };
    set_up(&l).await;
    let root = l.login("root", "rootpw").await;
    // Enough writes that the log it missed is gone: it must install a snapshot.
    for i in 0..300 {
        l.put(Some(&root), &format!("fill/{i}")).await.unwrap();
    }
    // Purging follows the snapshot: write on until the log it missed is
    // gone on whichever member leads now (leadership may move under load).
    let deadline = std::time::Instant::now() + LONG;
    let mut more = 300;
    loop {
        let now_leader = cluster.wait_leader(LONG).await;
        let status = cluster.status(now_leader).await;
        if status.as_ref().map_or(0, |s| s.purged_index) > down_last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never purged past {down_last}: {status:?}"
        );
        let at = Api {
            addr: cluster.node(now_leader).client_addr.clone(),
        };
        for _ in 0..20 {
            let _ = at.put(Some(&root), &format!("more/{more}")).await;
            more += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.restart(down);
    let addr = cluster.node(down).client_addr.clone();
    let d = Api { addr };
    // Its own state, once caught up: a serializable read of the last write.
    let mut caught_up = false;
    for _ in 0..200 {
        let req = epb::RangeRequest {
            key: b"fill/299".to_vec(),
            serializable: true,
            ..Default::default()
        };
        if let Ok(r) = d.kv().range(with_token(req, Some(&root))).await {
            if r.into_inner().kvs.len() == 1 {
                caught_up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(caught_up, "the restarted member never caught up");
    let status = d
        .auth()
        .auth_status(epb::AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let leader_status = l
        .auth()
        .auth_status(epb::AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.enabled);
    assert_eq!(status.auth_revision, leader_status.auth_revision);
    // Its own token check and permissions: a reader token from the leader.
    let reader = l.login("reader", "rpw").await;
    let denied = d.put(Some(&reader), "app/z").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let roles = d
        .auth()
        .role_get(with_token(
            epb::AuthRoleGetRequest { role: "rw".into() },
            Some(&root),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(roles.perm.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_user_role_and_auth_commands_work_against_nines() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let ep = cluster.node(leader).client_addr.clone();
    let ep = ep.as_str();
    assert_eq!(
        ok(ep, &["user", "add", "root:rootpw"]).trim(),
        "User root created"
    );
    assert_eq!(
        ok(ep, &["user", "grant-role", "root", "root"]).trim(),
        "Role root is granted to user root"
    );
    assert_eq!(ok(ep, &["role", "add", "app"]).trim(), "Role app created");
    assert_eq!(
        ok(
            ep,
            &[
                "role",
                "grant-permission",
                "app",
                "--prefix=true",
                "readwrite",
                "app/"
            ]
        )
        .trim(),
        "Role app updated"
    );
    ok(ep, &["user", "add", "alice:apw"]);
    ok(ep, &["user", "grant-role", "alice", "app"]);
    assert_eq!(ok(ep, &["auth", "enable"]).trim(), "Authentication Enabled");

    let as_alice = ["--user", "alice:apw"];
    let put = |args: &[&str]| ctl(ep, args, "");
    let out = put(&[as_alice[0], as_alice[1], "put", "app/k", "v"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = put(&[as_alice[0], as_alice[1], "get", "app/k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "app/k\nv\n");
    let out = put(&[as_alice[0], as_alice[1], "put", "other/k", "v"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = put(&["put", "app/k", "v"]);
    assert!(!out.status.success(), "no credentials once auth is on");
    let out = put(&["--user", "alice:wrong", "get", "app/k"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
    let out = put(&[as_alice[0], as_alice[1], "member", "list"]);
    assert!(out.status.success(), "member list: any user");
    let out = put(&["--user", "root:rootpw", "role", "get", "app"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Role app") && text.contains("[app/, app0)"),
        "{text}"
    );
    let out = put(&["--user", "root:rootpw", "user", "list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\nroot\n");
    let out = put(&["--user", "root:rootpw", "auth", "disable"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Authentication Disabled"
    );
}

/// LeaseTimeToLive with keys lists key names only to a caller who may read
/// every one of them (etcd's fix for CVE-2023-32082); before, any user with
/// a token got the names of every key attached to any lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_key_names_need_read_permission() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        args: Vec::new(),
    });
    let leader = cluster.stable_leader(LONG).await;
    let l = Api {
        addr: cluster.node(leader).client_addr.clone(),
    };
    set_up(&l).await;
    let root = l.login("root", "rootpw").await;
    let writer = l.login("writer", "wpw").await;
    let leases = || epb::lease_client::LeaseClient::new(channel(&l.addr));
    let mut ids = Vec::new();
    for (id, key) in [(7001, "other/secret"), (7002, "app/mine")] {
        let grant = epb::LeaseGrantRequest { ttl: 600, id };
        leases()
            .lease_grant(with_token(grant, Some(&root)))
            .await
            .expect("grant");
        let put = epb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease: id,
            ..Default::default()
        };
        l.kv().put(with_token(put, Some(&root))).await.expect("put");
        ids.push(id);
    }
    let ttl = |id: i64, keys: bool| epb::LeaseTimeToLiveRequest { id, keys };
    let denied = leases()
        .lease_time_to_live(with_token(ttl(ids[0], true), Some(&writer)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // Without keys, and for a lease whose keys the user may read, it answers.
    let plain = leases()
        .lease_time_to_live(with_token(ttl(ids[0], false), Some(&writer)))
        .await
        .expect("ttl without keys");
    assert!(plain.into_inner().keys.is_empty());
    let mine = leases()
        .lease_time_to_live(with_token(ttl(ids[1], true), Some(&writer)))
        .await
        .expect("ttl of a lease on app/");
    assert_eq!(mine.into_inner().keys, vec![b"app/mine".to_vec()]);
    let all = leases()
        .lease_time_to_live(with_token(ttl(ids[0], true), Some(&root)))
        .await
        .expect("root sees everything");
    assert_eq!(all.into_inner().keys, vec![b"other/secret".to_vec()]);
}

/// Password hashing (PBKDF2, tens of ms each) runs off the async workers
/// and a few at a time: 128 concurrent UserAdds through a follower used to
/// hash on its two workers (and again on the leader's), and writes through
/// that follower stalled for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_user_adds_does_not_stall_writes() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        args: Vec::new(),
    });
    let leader = cluster.stable_leader(LONG).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let f = Api {
        addr: follower.client_addr.clone(),
    };
    f.put(None, "warm").await.expect("first put");
    let adds: Vec<_> = (0..128)
        .map(|i| {
            let mut auth = f.auth();
            tokio::spawn(async move {
                let add = epb::AuthUserAddRequest {
                    name: format!("flood{i}"),
                    password: "pw".into(),
                    ..Default::default()
                };
                auth.user_add(add).await
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let started = std::time::Instant::now();
    let mut n = 0;
    while adds.iter().any(|a| !a.is_finished()) && started.elapsed() < LONG {
        // A leader change on the loaded machine answers UNAVAILABLE; the
        // retry counts toward this put's time, so a stall still shows.
        let t = std::time::Instant::now();
        loop {
            match f.put(None, &format!("during/{n}")).await {
                Ok(()) => break,
                Err(e) if e.code() == Code::Unavailable && t.elapsed() < LONG => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("put during the flood: {e:?}"),
            }
        }
        slowest = slowest.max(t.elapsed());
        n += 1;
    }
    let mut added = 0;
    for a in adds {
        if a.await.unwrap().is_ok() {
            added += 1;
        }
    }
    assert!(added > 0, "no user was added");
    assert!(
        slowest < Duration::from_millis(2500),
        "a put waited {slowest:?} while passwords were hashed ({n} puts, {added} users added)"
    );
}

/// A Lock abandoned mid-wait through a follower withdraws its key with the
/// caller's credentials. The withdrawal runs in a task of its own and went
/// to the leader without a token, was refused, and the dead waiter's key
/// stayed: every later locker queued behind it until its lease ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lock_wait_under_auth_leaves_no_key() {
    use nines_client::proto::etcd::v3lockpb::{lock_client::LockClient, LockRequest};
    let cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        args: Vec::new(),
    });
    let leader = cluster.stable_leader(LONG).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let l = Api {
        addr: cluster.node(leader).client_addr.clone(),
    };
    set_up(&l).await;
    let root = l.login("root", "rootpw").await;
    for id in [8001, 8002] {
        let grant = epb::LeaseGrantRequest { ttl: 600, id };
        epb::lease_client::LeaseClient::new(channel(&l.addr))
            .lease_grant(with_token(grant, Some(&root)))
            .await
            .expect("grant");
    }
    let lock = |lease: i64| LockRequest {
        name: b"app/m".to_vec(),
        lease,
    };
    LockClient::new(channel(&l.addr))
        .lock(with_token(lock(8001), Some(&root)))
        .await
        .expect("the first lock is free");
    // The second waits behind it, through a follower, and gives up.
    let impatient = Channel::from_shared(format!("http://{}", follower.client_addr))
        .unwrap()
        .timeout(Duration::from_secs(2))
        .connect_lazy();
    let gave_up = LockClient::new(impatient)
        .lock(with_token(lock(8002), Some(&root)))
        .await
        .unwrap_err();
    assert!(
        matches!(gave_up.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{gave_up:?}"
    );
    let waiters = || async {
        let req = epb::RangeRequest {
            key: b"app/m/".to_vec(),
            range_end: b"app/m0".to_vec(),
            ..Default::default()
        };
        l.kv()
            .range(with_token(req, Some(&root)))
            .await
            .unwrap()
            .into_inner()
            .kvs
            .len()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while waiters().await > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned waiter's key is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// etcd refuses a granted permission that covers nothing (no key, or a
/// range that ends at or before its start) and a grant without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_that_covers_nothing_is_refused() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let api = Api {
        addr: cluster.node(leader).client_addr.clone(),
    };
    let mut auth = api.auth();
    auth.role_add(epb::AuthRoleAddRequest { name: "r".into() })
        .await
        .unwrap();
    let grant = |key: &[u8], range_end: &[u8]| epb::AuthRoleGrantPermissionRequest {
        name: "r".into(),
        perm: Some(authpb::Permission {
            perm_type: authpb::permission::Type::Read as i32,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        }),
    };
    for (key, end) in [
        (&b""[..], &b""[..]),
        (b"", b"a"),
        (b"b", b"a"),
        (b"a", b"a"),
    ] {
        let refused = auth
            .role_grant_permission(grant(key, end))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{key:?}..{end:?}");
        assert_eq!(refused.message(), "etcdserver: invalid auth management");
    }
    let none = epb::AuthRoleGrantPermissionRequest {
        name: "r".into(),
        perm: None,
    };
    let refused = auth.role_grant_permission(none).await.unwrap_err();
    assert_eq!(refused.message(), "etcdserver: permission not given");
    // What etcd accepts: one key, a range, every key from one on.
    for (key, end) in [
        (&b"a"[..], &b""[..]),
        (b"a", b"b"),
        (b"a", b"\0"),
        (b"\0", b"\0"),
    ] {
        auth.role_grant_permission(grant(key, end))
            .await
            .unwrap_or_else(|e| panic!("{key:?}..{end:?}: {e:?}"));
    }
    let role = auth
        .role_get(epb::AuthRoleGetRequest { role: "r".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role.perm.len(), 4, "{role:?}");
}
