//! The auth store's rules (etcd's), what it writes, and key coverage.

use nines_types::{AuthCommand as A, AuthRejection as R, PermKind, Permission};

use super::*;
use crate::engine::MemEngine;

fn run(engine: &MemEngine, state: &mut AuthState, command: A) -> Result<u64, R> {
    let mut overlay = Overlay::new(engine);
    let done = state.apply(&mut overlay, &command).unwrap();
    engine.write_batch(&overlay.into_writes()).unwrap();
    done
}

fn perm(kind: PermKind, key: &str, end: &str) -> Permission {
    Permission {
        kind,
        key: key.into(),
        range_end: end.into(),
    }
}

fn user(name: &str) -> A {
    A::UserAdd {
        name: name.into(),
        password_hash: Some("h".into()),
    }
}

#[test]
fn enable_needs_root_with_the_root_role_and_root_is_then_protected() {
    let engine = MemEngine::default();
    let mut s = AuthState::default();
    let enable = || A::Enable {
        secret: vec![7; 32],
    };
    assert_eq!(run(&engine, &mut s, enable()), Err(R::RootUserNotExist));
    run(&engine, &mut s, user("root")).unwrap();
    assert_eq!(run(&engine, &mut s, enable()), Err(R::RootRoleNotGranted));
    let grant = A::UserGrantRole {
        user: "root".into(),
        role: "root".into(),
    };
    run(&engine, &mut s, grant).unwrap();
    let rev = run(&engine, &mut s, enable()).unwrap();
    assert!(s.enabled());
    assert_eq!(s.revision(), rev);
    assert_eq!(s.secret(), &[7; 32]);
    let revoke = A::UserRevokeRole {
        user: "root".into(),
        role: "root".into(),
    };
    assert_eq!(run(&engine, &mut s, revoke), Err(R::InvalidAuthManagement));
    let delete = A::UserDelete {
        name: "root".into(),
    };
    assert_eq!(run(&engine, &mut s, delete), Err(R::InvalidAuthManagement));
    // Everything survives a reload from the engine.
    let back = AuthState::load(&engine).unwrap();
    assert!(back.enabled() && back.is_root("root"));
    assert_eq!(back.revision(), s.revision());
}

#[test]
fn users_roles_and_permissions_follow_etcds_rules() {
    let engine = MemEngine::default();
    let mut s = AuthState::default();
    run(&engine, &mut s, user("app")).unwrap();
    assert_eq!(run(&engine, &mut s, user("app")), Err(R::UserExists));
    assert_eq!(run(&engine, &mut s, user("")), Err(R::UserEmpty));
    let grant = |role: &str| A::UserGrantRole {
        user: "app".into(),
        role: role.into(),
    };
    assert_eq!(run(&engine, &mut s, grant("rw")), Err(R::RoleNotFound));
    run(&engine, &mut s, A::RoleAdd { name: "rw".into() }).unwrap();
    run(&engine, &mut s, grant("rw")).unwrap();
    let give = |p| A::RoleGrantPermission {
        role: "rw".into(),
        perm: p,
    };
    run(&engine, &mut s, give(perm(PermKind::Read, "app/", "app0"))).unwrap();
    assert!(s.permitted("app", false, b"app/x", b""));
    assert!(!s.permitted("app", true, b"app/x", b""), "read only");
    assert!(!s.permitted("app", false, b"other/x", b""));
    // Granting the same range again changes its type.
    run(
        &engine,
        &mut s,
        give(perm(PermKind::ReadWrite, "app/", "app0")),
    )
    .unwrap();
    assert!(s.permitted("app", true, b"app/x", b""));
    assert_eq!(s.role_permissions("rw").unwrap().len(), 1);
    let revoke = |k: &str, e: &str| A::RoleRevokePermission {
        role: "rw".into(),
        key: k.into(),
        range_end: e.into(),
    };
    assert_eq!(
        run(&engine, &mut s, revoke("app/", "")),
        Err(R::PermissionNotGranted)
    );
    run(&engine, &mut s, revoke("app/", "app0")).unwrap();
    assert!(!s.permitted("app", false, b"app/x", b""));
    // Deleting a role takes it from its users.
    run(&engine, &mut s, A::RoleDelete { name: "rw".into() }).unwrap();
    assert_eq!(s.user_roles("app").unwrap(), Vec::<String>::new());
    let back = AuthState::load(&engine).unwrap();
    assert_eq!(back.user_roles("app").unwrap(), Vec::<String>::new());
    assert_eq!(back.roles(), Vec::<String>::new());
}

#[test]
fn ranges_must_lie_inside_the_union_of_grants() {
    let grants = [
        perm(PermKind::Read, "a", "c"),
        perm(PermKind::Read, "c", "e"),
        perm(PermKind::Read, "x", ""),
        perm(PermKind::Read, "z", "\0"),
    ];
    let covers = |k: &str, e: &str| perms::covers(grants.iter(), k.as_bytes(), e.as_bytes());
    assert!(covers("a", "e"), "two adjacent grants");
    assert!(covers("b", ""));
    assert!(!covers("a", "f"));
    assert!(covers("x", ""));
    assert!(!covers("x", "y"), "one key, not the range after it");
    assert!(covers("zz", "\0"), "from-key grant");
    assert!(!covers("y", "\0"));
    assert!(covers("b", "a"), "an empty range asks nothing");
}
