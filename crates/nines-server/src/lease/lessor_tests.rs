use std::time::{Duration, Instant};

use nines_state::LeaseInfo;

use super::lessor::{Lessor, Renewal};

fn info(id: i64, ttl: i64, remaining: i64) -> LeaseInfo {
    LeaseInfo { id, ttl, remaining }
}

const EXTEND: Duration = Duration::from_secs(1);

#[test]
fn a_new_leader_counts_down_from_the_checkpoint_plus_the_extension() {
    let lessor = Lessor::new(EXTEND);
    let t0 = Instant::now();
    lessor.promote(3, &[info(1, 60, 20), info(2, 10, 0)], t0);
    let left = |id| lessor.remaining(id, t0).unwrap().as_secs();
    assert_eq!(left(1), 21, "checkpointed 20 s + 1 s");
    assert_eq!(left(2), 11, "never checkpointed: its TTL + 1 s");
    // Nothing expires before its countdown; then the oldest goes first.
    assert!(lessor
        .take_expired(3, t0 + Duration::from_secs(10), 10)
        .is_empty());
    assert_eq!(
        lessor.take_expired(3, t0 + Duration::from_secs(30), 10),
        vec![2, 1]
    );
    // Handed out once; again only after a failed revoke.
    assert!(lessor
        .take_expired(3, t0 + Duration::from_secs(31), 10)
        .is_empty());
    lessor.revoke_failed(1);
    assert_eq!(
        lessor.take_expired(3, t0 + Duration::from_secs(31), 10),
        vec![1]
    );
}

#[test]
fn only_the_leading_term_counts_renews_or_expires() {
    let lessor = Lessor::new(EXTEND);
    let t0 = Instant::now();
    assert_eq!(lessor.renew(1, 7, 10, t0), Renewal::NotLeading);
    lessor.promote(4, &[info(7, 10, 0)], t0);
    assert_eq!(
        lessor.renew(3, 7, 10, t0),
        Renewal::NotLeading,
        "an old term"
    );
    assert!(lessor
        .take_expired(5, t0 + Duration::from_secs(99), 10)
        .is_empty());
    let later = t0 + Duration::from_secs(8);
    assert_eq!(lessor.renew(4, 7, 10, later), Renewal::Renewed);
    assert_eq!(lessor.remaining(7, later).unwrap().as_secs(), 10);
    // A renew keeps the lease past its first countdown.
    assert!(lessor
        .take_expired(4, t0 + Duration::from_secs(15), 10)
        .is_empty());
    lessor.demote();
    assert_eq!(lessor.remaining(7, later), None);
    assert!(lessor
        .take_expired(4, t0 + Duration::from_secs(99), 10)
        .is_empty());
}

#[test]
fn a_lease_being_revoked_is_not_renewed_and_sync_follows_the_table() {
    let lessor = Lessor::new(EXTEND);
    let t0 = Instant::now();
    lessor.promote(1, &[info(1, 5, 0)], t0);
    assert_eq!(
        lessor.take_expired(1, t0 + Duration::from_secs(7), 10),
        vec![1]
    );
    assert_eq!(
        lessor.renew(1, 1, 5, t0 + Duration::from_secs(7)),
        Renewal::Expiring
    );
    // Granted since: starts from its TTL, without the extension.
    lessor.sync(&[info(2, 30, 0)], t0);
    assert_eq!(lessor.remaining(1, t0), None, "revoked: forgotten");
    assert_eq!(lessor.remaining(2, t0).unwrap().as_secs(), 30);
}

#[test]
fn checkpoints_round_up_and_skip_short_leases() {
    let lessor = Lessor::new(Duration::ZERO);
    let t0 = Instant::now();
    lessor.promote(1, &[info(1, 60, 0), info(2, 3, 0)], t0);
    let at = t0 + Duration::from_millis(10_500);
    let list = lessor.checkpoints(at, Duration::from_secs(5));
    assert_eq!(list.len(), 1, "a 3 s lease is not worth a checkpoint");
    assert_eq!((list[0].id, list[0].remaining), (1, 50));
}

#[test]
fn a_new_leader_counts_only_after_applying_an_entry_of_its_term() {
    let lessor = Lessor::new(EXTEND);
    let t0 = Instant::now();
    // Applied so far: a checkpoint (20 s left) of term 2; the keepalive's
    // clearing of it, committed in term 2, is not applied here yet.
    let stale = || vec![info(1, 60, 20)];
    assert!(!lessor.promote_if_new(3, 2, stale, t0));
    assert_eq!(lessor.leading(), None, "no countdown from a stale table");
    assert!(lessor.checkpoints(t0, Duration::from_secs(5)).is_empty());
    // Its term's first entry applied: the table is current.
    let current = || vec![info(1, 60, 0)];
    assert!(lessor.promote_if_new(3, 3, current, t0));
    assert_eq!(lessor.remaining(1, t0).unwrap().as_secs(), 61);
    // Already counting: the table is not read again.
    assert!(lessor.promote_if_new(3, 3, || panic!("read again"), t0));
}

/// A lease revoked (here: expired) and granted again under its id before
/// the next sync kept the old countdown, marked as being revoked: the new
/// lease never expired on this leader and each keepalive answered TTL 0.
#[test]
fn a_lease_granted_again_under_its_id_counts_down_afresh() {
    let lessor = Lessor::new(EXTEND);
    let t0 = Instant::now();
    lessor.promote(1, &[info(42, 2, 0)], t0);
    let later = t0 + Duration::from_secs(5);
    assert_eq!(lessor.take_expired(1, later, 10), vec![42]);
    // The revoke applies, and a client grants 42 again, before a sync.
    lessor.revoked(42);
    lessor.granted(42, 60, later);
    lessor.sync(&[info(42, 60, 0)], later);
    assert!(matches!(lessor.renew(1, 42, 60, later), Renewal::Renewed));
    let left = lessor.remaining(42, later).unwrap().as_secs();
    assert_eq!(left, 60);
    assert!(lessor
        .take_expired(1, later + Duration::from_secs(30), 10)
        .is_empty());
    // And a revoke alone leaves nothing to count down.
    lessor.revoked(42);
    lessor.sync(&[], later);
    assert!(lessor.remaining(42, later).is_none());
}

/// A leader whose confirmation failed stops counting, and counts again
/// in the same term once confirmed. A keepalive it acknowledged just
/// before cleared the lease's recorded remaining TTL in a commit that may
/// not be applied yet: counting again from the table's record (3 s) would
/// revoke the lease 26 s before the TTL the keepalive promised.
#[test]
fn a_countdown_goes_on_when_the_same_term_counts_again() {
    let lessor = Lessor::new(EXTEND);
    let t0 = Instant::now();
    let table = [info(1, 30, 3)];
    lessor.promote(5, &table, t0);
    assert_eq!(lessor.renew(5, 1, 30, t0), Renewal::Renewed);
    // The confirmation fails: it stops counting...
    lessor.demote();
    assert_eq!(lessor.leading(), None);
    assert_eq!(lessor.renew(5, 1, 30, t0), Renewal::NotLeading);
    // ...and counts again in term 5, the table still showing 3 s.
    let t1 = t0 + Duration::from_secs(2);
    lessor.promote(5, &table, t1);
    let left = lessor.remaining(1, t1).unwrap().as_secs();
    assert_eq!(left, 28, "the keepalive at t0 promised 30 s");
    assert!(lessor
        .take_expired(5, t0 + Duration::from_secs(29), 10)
        .is_empty());
    // Another term starts from the table, as a new leader does.
    lessor.demote();
    lessor.promote(6, &table, t1);
    assert_eq!(lessor.remaining(1, t1).unwrap().as_secs(), 4);
}

/// Revoke marks do not survive into the countdowns taken up again: the
/// lease loop stops counting only before it proposes any revoke, and a
/// mark left on would keep the lease from ever expiring here.
#[test]
fn countdowns_taken_up_again_are_not_marked_as_being_revoked() {
    let lessor = Lessor::new(EXTEND);
    let t0 = Instant::now();
    lessor.promote(2, &[info(9, 2, 0)], t0);
    let later = t0 + Duration::from_secs(5);
    assert_eq!(lessor.take_expired(2, later, 10), vec![9]);
    lessor.demote();
    lessor.promote(2, &[info(9, 2, 0)], later);
    let again = later + EXTEND;
    assert_eq!(lessor.take_expired(2, again, 10), vec![9]);
}

#[test]
fn a_checkpoint_is_unsettled_until_it_or_a_later_command_of_its_term_applies() {
    let mut order = super::Order::default();
    assert!(!order.unsettled(3));
    let first = order.queued(3, true);
    let second = order.queued(3, true);
    assert!(order.unsettled(3));
    assert!(!order.unsettled(4), "another term's checkpoint never lands");
    order.applied(3, first);
    assert!(order.unsettled(3), "one of two applied");
    order.applied(4, second);
    assert!(order.unsettled(3), "another term's command settles nothing");
    // The second timed out (it may still land): a keepalive's clearing
    // queued after it settles it once applied, since it cannot land later.
    let clearing = order.queued(3, false);
    assert!(order.unsettled(3));
    order.applied(3, clearing);
    assert!(!order.unsettled(3));
    // A clearing applied before a later checkpoint settles nothing of it.
    let clearing = order.queued(3, false);
    order.queued(3, true);
    order.applied(3, clearing);
    assert!(order.unsettled(3));
    // A new term starts afresh: what the old one queued is ignored at apply.
    let next = order.queued(5, true);
    assert!(order.unsettled(5));
    // A late command of the old term changes nothing for the new one.
    assert_eq!(order.queued(3, true), 0);
    order.applied(5, next);
    assert!(!order.unsettled(5));
    assert!(!order.unsettled(3));
}
