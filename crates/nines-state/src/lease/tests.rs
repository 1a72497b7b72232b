//! The lease table's records: what a load accepts and refuses.

use super::*;
use crate::engine::MemEngine;

fn commit(engine: &MemEngine, f: impl FnOnce(&mut LeaseTable, &mut Overlay<'_, MemEngine>)) {
    let mut table = LeaseTable::load(engine).unwrap();
    let mut overlay = Overlay::new(engine);
    f(&mut table, &mut overlay);
    engine.write_batch(&overlay.into_writes()).unwrap();
}

#[test]
fn a_load_rebuilds_what_was_written() {
    let engine = MemEngine::default();
    commit(&engine, |t, o| {
        assert!(t.grant(o, 1, 10).unwrap());
        assert!(t.grant(o, 2, 20).unwrap());
        t.attach(o, b"a", 1);
        t.attach(o, b"b", 1);
        t.attach(o, b"b", 2);
        t.checkpoint(o, 2, 15).unwrap();
    });
    let table = LeaseTable::load(&engine).unwrap();
    assert_eq!(table.keys(1), vec![b"a".to_vec()]);
    assert_eq!(table.keys(2), vec![b"b".to_vec()]);
    assert_eq!(table.lease_of(b"b"), 2);
    assert_eq!(table.get(2).unwrap().remaining, 15);
    commit(&engine, |t, o| {
        assert_eq!(t.revoke(o, 1), Some(vec![b"a".to_vec()]));
        t.detach(o, b"b");
    });
    let table = LeaseTable::load(&engine).unwrap();
    assert_eq!(table.list().len(), 1);
    assert!(table.keys(2).is_empty());
    assert_eq!(table.lease_of(b"a"), 0);
}

#[test]
fn a_load_refuses_an_attachment_to_no_lease_and_bad_ids() {
    let engine = MemEngine::default();
    engine
        .write_batch(&[(attach_key(5, b"k"), Some(Vec::new()))])
        .unwrap();
    assert!(matches!(
        LeaseTable::load(&engine),
        Err(StateError::CorruptState(_))
    ));
    let engine = MemEngine::default();
    let record = encode(&LeaseRecord {
        ttl: 1,
        remaining: 0,
    })
    .unwrap();
    engine
        .write_batch(&[(vec![LEASE_PREFIX, 0xff], Some(record.clone()))])
        .unwrap();
    assert!(LeaseTable::load(&engine).is_err(), "short key");
    let engine = MemEngine::default();
    engine
        .write_batch(&[(lease_key(0), Some(record.clone()))])
        .unwrap();
    assert!(LeaseTable::load(&engine).is_err(), "lease id 0");
    // Negative ids are leases like any other (etcd grants them).
    let engine = MemEngine::default();
    engine
        .write_batch(&[(lease_key(-1), Some(record))])
        .unwrap();
    assert!(LeaseTable::load(&engine).is_ok(), "negative id");
}

#[test]
fn a_corrupt_ttl_never_panics_a_checkpoint() {
    let engine = MemEngine::default();
    let record = encode(&LeaseRecord {
        ttl: 0,
        remaining: 0,
    })
    .unwrap();
    engine.write_batch(&[(lease_key(3), Some(record))]).unwrap();
    let mut table = LeaseTable::load(&engine).unwrap();
    let mut overlay = Overlay::new(&engine);
    table.checkpoint(&mut overlay, 3, 10).unwrap();
    assert_eq!(table.get(3).unwrap().remaining, 1);
    // A renewal clears it.
    table.checkpoint(&mut overlay, 3, 0).unwrap();
    assert_eq!(table.get(3).unwrap().remaining, 0);
}
