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

/// A role's permissions and a user's roles are each one record, read whole
/// at every start: past a bound the next grant is refused, not written.
#[tokio::test]
async fn grants_stop_at_what_one_record_may_hold() {
    use nines_types::{Request, MAX_ROLE_PERMISSIONS, MAX_USER_ROLES};
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    let perm = |i: usize| A::RoleGrantPermission {
        role: "big".into(),
        perm: Permission {
            kind: PermKind::Read,
            key: format!("k{i:05}").into_bytes(),
            range_end: Vec::new(),
        },
    };
    let role = |i: usize| format!("r{i:05}");
    let batch = |commands: Vec<A>| {
        Command::Batch(
            commands
                .into_iter()
                .map(|c| Request::new(Command::Auth(c)))
                .collect(),
        )
    };
    let mut setup = vec![
        A::RoleAdd { name: "big".into() },
        A::UserAdd {
            name: "bob".into(),
            password_hash: None,
        },
    ];
    setup.extend((0..MAX_ROLE_PERMISSIONS).map(perm));
    setup.extend((0..MAX_USER_ROLES).map(|i| A::RoleAdd { name: role(i) }));
    setup.extend((0..MAX_USER_ROLES).map(|i| A::UserGrantRole {
        user: "bob".into(),
        role: role(i),
    }));
    let done = a.cmd(batch(setup)).await;
    let CommandResult::Batch(answers) = done.result else {
        panic!("{done:?}");
    };
    assert!(answers
        .iter()
        .all(|r| matches!(r.result, CommandResult::AuthChanged { .. })));
    let refused = |r: nines_types::Response, why: AuthRejection| {
        assert_eq!(r.result, CommandResult::Rejected(RejectReason::Auth(why)));
    };
    refused(
        a.cmd(Command::Auth(perm(MAX_ROLE_PERMISSIONS))).await,
        AuthRejection::TooManyPermissions,
    );
    a.cmd(Command::Auth(A::RoleAdd {
        name: "one-more".into(),
    }))
    .await;
    refused(
        a.cmd(Command::Auth(A::UserGrantRole {
            user: "bob".into(),
            role: "one-more".into(),
        }))
        .await,
        AuthRejection::TooManyRoles,
    );
    // What a record already holds may be granted again.
    let again = a.cmd(Command::Auth(perm(7))).await;
    assert!(
        matches!(again.result, CommandResult::AuthChanged { .. }),
        "{again:?}"
    );
    let regrant = a
        .cmd(Command::Auth(A::UserGrantRole {
            user: "bob".into(),
            role: role(7),
        }))
        .await;
    assert!(
        matches!(regrant.result, CommandResult::AuthChanged { .. }),
        "{regrant:?}"
    );
    let held =
        a.sm.reader()
            .with_auth(|s| s.role_permissions("big").unwrap().len());
    assert_eq!(held, MAX_ROLE_PERMISSIONS);
}
