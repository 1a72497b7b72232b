//! The compaction model check on the sled-backed state machine, with its
//! background sweep: reads at every revision equal the model's, on the
//! machine itself, on a fresh machine installed from its snapshot, and
//! after a close and reopen.

use std::time::Duration;

use nines_types::{CommandResult, Entry, LogId, Request};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::mvcc::model::{check_reads, command_or_compact, Model};
use crate::{StateMachine, StateOptions, StateReader};

async fn open(dir: &std::path::Path) -> StateMachine {
    StateMachine::open(dir, StateOptions::default())
        .await
        .expect("open")
}

fn check(reader: &StateReader, model: &Model, rng: &mut StdRng, context: &str) {
    assert_eq!(reader.compacted_revision(), model.compacted, "{context}");
    check_reads(|req, at| reader.range_at(req, at), model, rng, context);
}

/// Waits for the sweep to finish `revision` (bounded, so a hang fails).
async fn swept(reader: &StateReader, revision: i64) {
    tokio::time::timeout(Duration::from_secs(10), reader.wait_swept(revision))
        .await
        .expect("the sweep finishes");
}

/// Revision records on disk.
fn records(reader: &StateReader) -> usize {
    let raw = reader.dump_raw().unwrap();
    raw.iter().filter(|(k, _)| k.first() == Some(&b'r')).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_model_holds_across_snapshot_install_and_reopen() {
    for seed in [3u64, 1009, 65537] {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path()).await;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = Model::starting_at(crate::EMPTY_STORE_REVISION);
        for index in 1..=250u64 {
            let command = command_or_compact(&mut rng, &model);
            let want = model.apply(&command);
            let entry = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Request::new(command)),
            };
            let got = sm.apply([entry]).await.unwrap().remove(0);
            assert_eq!(got, want, "seed {seed} entry {index}");
            if index % 50 == 0 {
                check(
                    &sm.reader(),
                    &model,
                    &mut rng,
                    &format!("seed {seed} at {index}"),
                );
            }
        }
        let reader = sm.reader();
        swept(&reader, model.compacted).await;
        check(&reader, &model, &mut rng, "swept");

        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // Dropped records leave the disk with the files that held them: the
        // snapshot left them out and took over the tail's.
        let on_disk = records(&reader);
        let other_dir = tempfile::tempdir().unwrap();
        let mut other = open(other_dir.path()).await;
        let mut receive = other.begin_receiving_snapshot().await.unwrap();
        *receive = *snap.snapshot;
        other.install_snapshot(&snap.meta, receive).await.unwrap();
        check(&other.reader(), &model, &mut rng, "installed");
        assert_eq!(
            records(&other.reader()),
            on_disk,
            "only the retained history"
        );
        drop(other);

        drop((sm, reader));
        let sm = open(dir.path()).await;
        check(&sm.reader(), &model, &mut rng, "reopened");
    }
}

/// A compaction of many records answers before its sweep is done, and the
/// sweep deletes exactly the dropped records; a snapshot built meanwhile
/// carries none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_runs_behind_the_apply_and_snapshots_skip_dropped_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path()).await;
    let mut index = 0;
    let mut next = |command| {
        index += 1;
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::new(command)),
        }
    };
    let entries: Vec<Entry> = (0..6_000)
        .map(|i| {
            next(nines_types::Command::Put {
                key: format!("k{}", i % 10).into_bytes(),
                value: vec![b'v'; 64],
                lease: 0,
                prev_kv: false,
            })
        })
        .collect();
    for chunk in entries.chunks(500) {
        sm.apply(chunk.to_vec()).await.unwrap();
    }
    // The last put's revision: each key's newest record survives.
    let last = crate::EMPTY_STORE_REVISION + 6_000;
    let compact = next(nines_types::Command::Compact {
        revision: last,
        physical: true,
    });
    let reader = sm.reader();
    let got = sm.apply([compact]).await.unwrap().remove(0);
    assert_eq!(got.result, CommandResult::Compacted { revision: last });
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    swept(&reader, last).await;
    assert_eq!(records(&reader), 10);
    // The snapshot took over the records up to its revision, removing
    // sled's copies itself: the sweep deleted the dropped ones it got to
    // first, and never more.
    assert!(
        reader.swept_records() <= 5_990,
        "{}",
        reader.swept_records()
    );
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = open(other_dir.path()).await;
    let mut receive = other.begin_receiving_snapshot().await.unwrap();
    *receive = *snap.snapshot;
    other.install_snapshot(&snap.meta, receive).await.unwrap();
    assert_eq!(records(&other.reader()), 10);
    assert_eq!(other.reader().compacted_revision(), last);
    assert!(matches!(
        other
            .reader()
            .range_at(&nines_types::RangeRequest::key("k1"), 5_999),
        Err(crate::StateError::Compacted {
            requested: 5_999,
            compacted
        }) if compacted == last
    ));
}

/// Records a sweep counted as freed are not found (and counted) again by
/// the next sweep, although they stay in their files until a snapshot: the
/// data size always equals the retained records' bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_size_counts_each_dropped_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path()).await;
    let reader = sm.reader();
    let mut index = 0;
    for round in 0..3 {
        let entries: Vec<Entry> = (0..2_000)
            .map(|i| {
                index += 1;
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(Request::new(nines_types::Command::Put {
                        key: format!("k{}", i % 10).into_bytes(),
                        value: vec![b'v'; 64],
                        lease: 0,
                        prev_kv: false,
                    })),
                }
            })
            .collect();
        sm.apply(entries).await.unwrap();
        index += 1;
        let at = reader.revision() - 5;
        let compact = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::new(nines_types::Command::Compact {
                revision: at,
                physical: true,
            })),
        };
        sm.apply([compact]).await.unwrap();
        swept(&reader, at).await;
        let held: u64 = reader
            .dump_raw()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.first() == Some(&b'r'))
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        assert_eq!(reader.data_bytes(), held, "after compaction {round}");
    }
}
