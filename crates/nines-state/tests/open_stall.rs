//! An open that hangs inside sled (as sled 0.34's recovery can after a full
//! disk) is given up and handled like damage, and the open left behind
//! cannot touch the rebuilt state when it wakes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use nines_state::{StateMachine, StateOptions};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

static HOLD: AtomicBool = AtomicBool::new(true);
static HUNG: AtomicU32 = AtomicU32::new(0);

/// Stands in for a sled hang: blocks the open thread, with sled open, until
/// the test lets go.
fn hang_while_held() {
    HUNG.fetch_add(1, Ordering::SeqCst);
    while HOLD.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn keys(sm: &StateMachine, n: u32) -> usize {
    (0..n)
        .filter(|i| {
            sm.reader()
                .get(format!("k{i:04}").as_bytes())
                .unwrap()
                .data
                .is_some()
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sled_open_is_given_up_and_rebuilt_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snap_id;
    {
        let mut a = Applier::new(open(dir.path()).await);
        for i in 0..100 {
            a.cmd(put(&format!("k{i:04}"), &"v".repeat(300))).await;
        }
        snap_id =
            a.sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap()
                .meta
                .last_log_id;
        // After the snapshot: the Raft log re-applies these.
        for i in 100..120 {
            a.cmd(put(&format!("k{i:04}"), "late")).await;
        }
    }

    let opts = StateOptions {
        open_stall_timeout: Duration::from_secs(1),
        open_test_hook: Some(hang_while_held),
        ..Default::default()
    };
    // On a thread of its own, so that an open that never ends fails the
    // test instead of hanging it. Generous: the stall timeout is 1 s.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = tx.send(rt.block_on(StateMachine::open(&path, opts)));
    });
    let sm = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a hung sled open must be given up")
        .expect("open after giving up");
    assert_eq!(HUNG.load(Ordering::SeqCst), 1, "the hook ran once");
    let aside = sm.rebuilt_from().expect("the open rebuilt the state");
    assert!(aside.exists(), "the hung dir is kept: {}", aside.display());
    assert_eq!(sm.reader().last_applied(), snap_id);
    assert_eq!(keys(&sm, 120), 100, "exactly the snapshot's keys");

    // The left-behind open wakes, finishes against the removed link and
    // closes its sled; none of that may reach the rebuilt state.
    HOLD.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(keys(&sm, 120), 100);
    drop(sm);

    let sm = open(dir.path()).await;
    assert!(
        sm.rebuilt_from().is_none(),
        "a clean reopen does not rebuild"
    );
    assert_eq!(sm.reader().last_applied(), snap_id);
    assert_eq!(keys(&sm, 120), 100);
    let late = sm.reader().get(b"k0099").unwrap().data.unwrap();
    assert_eq!(late.value, "v".repeat(300).into_bytes());
}
