//! The auth state through the log: applied, refused with etcd's reasons,
//! and the same after a reopen and a snapshot install.

mod common;

use common::*;
use nines_types::{
    AuthCommand as A, AuthRejection, Command, CommandResult, PermKind, Permission, RejectReason,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

fn summary(
    sm: &nines_state::StateMachine,
) -> (bool, u64, Vec<String>, Vec<String>, Vec<Permission>, bool) {
    sm.reader().with_auth(|a| {
        (
            a.enabled(),
            a.revision(),
            a.users(),
            a.roles(),
            a.role_permissions("reader").unwrap_or_default(),
            a.permitted("alice", false, b"app/1", b""),
        )
    })
}

#[tokio::test]
async fn auth_changes_survive_a_reopen_and_a_snapshot_install() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    let auth = |c| Command::Auth(c);
    for c in [
        A::UserAdd {
            name: "root".into(),
            password_hash: Some("x".into()),
        },
        A::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        },
        A::UserAdd {
            name: "alice".into(),
            password_hash: Some("y".into()),
        },
        A::RoleAdd {
            name: "reader".into(),
        },
        A::RoleGrantPermission {
            role: "reader".into(),
            perm: Permission {
                kind: PermKind::Read,
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            },
        },
        A::UserGrantRole {
            user: "alice".into(),
            role: "reader".into(),
        },
        A::Enable {
            secret: vec![1; 32],
        },
    ] {
        let r = a.cmd(auth(c)).await;
        assert!(
            matches!(r.result, CommandResult::AuthChanged { .. }),
            "{r:?}"
        );
        assert_eq!(r.revision, 1, "auth changes do not move the store revision");
    }
    let refused = a
        .cmd(auth(A::RoleAdd {
            name: "reader".into(),
        }))
        .await;
    assert_eq!(
        refused.result,
        CommandResult::Rejected(RejectReason::Auth(AuthRejection::RoleExists))
    );
    let short = a.cmd(auth(A::Enable { secret: vec![1; 3] })).await;
    assert!(matches!(
        short.result,
        CommandResult::Rejected(RejectReason::InvalidInput(_))
    ));
    let expect = summary(&a.sm);
    assert_eq!(expect.1, 7);
    assert!(expect.0 && expect.5);
    drop(a);

    let mut sm = open(dir.path()).await;
    assert_eq!(summary(&sm), expect, "after a reopen");
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut b = open(other.path()).await;
    let mut receive = b.begin_receiving_snapshot().await.unwrap();
    *receive = *snap.snapshot;
    b.install_snapshot(&snap.meta, receive).await.unwrap();
    assert_eq!(summary(&b), expect, "after a snapshot install");
    assert_eq!(b.reader().with_auth(|s| s.secret().to_vec()), vec![1; 32]);
}
