//! Functional tests: append/read, reopen, truncate, purge, segment rolls,
//! vote and committed round-trips, the directory lock.

mod common;

use common::*;
use nines_log::{LogError, LogOptions, LogStore};
use nines_types::Vote;
use openraft::storage::RaftLogStorage;
use openraft::RaftLogReader;

#[test]
fn append_and_read_back() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        append(&mut s, entries(1, 0..1)).await;
        append(&mut s, entries(1, 1..5)).await;
        append(&mut s, entries(2, 5..10)).await;

        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), (0..10).collect::<Vec<_>>());
        for e in &all {
            assert_eq!(value_of(e), value_for(e.log_id.index));
        }
        assert_eq!(all[7].log_id, log_id(2, 7));

        let part = s.try_get_log_entries(3..6).await.unwrap();
        assert_eq!(indexes(&part), vec![3, 4, 5]);
        let part = s.try_get_log_entries(8..=20).await.unwrap();
        assert_eq!(indexes(&part), vec![8, 9]);
        assert!(s.try_get_log_entries(10..).await.unwrap().is_empty());

        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(log_id(2, 9)));
        assert_eq!(st.last_purged_log_id, None);
    });
}

/// A batch of keepalive clearings is a few bytes per request, nearly all
/// small integers: bincode counts 8 bytes against the decode limit for
/// each one-byte u64. Such a 2.7 KB entry was written, then refused when
/// replication read it back ("decode: LimitExceeded"), and the leader
/// exited.
#[test]
fn an_entry_of_small_integers_reads_back_at_every_size() {
    use nines_types::{Command, LeaseRemaining, Request};
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let clearing = |id| {
            Request::new(Command::LeaseCheckpointOf {
                term: 2,
                list: vec![LeaseRemaining { id, remaining: 0 }],
            })
        };
        let sizes: Vec<u64> = (1..=64).chain((100..=4000).step_by(150)).collect();
        let batches = sizes.iter().enumerate().map(|(i, &n)| nines_types::Entry {
            log_id: log_id(1, i as u64),
            payload: openraft::EntryPayload::Normal(Request::new(Command::Batch(
                (0..n).map(|id| clearing(id as i64 % 50)).collect(),
            ))),
        });
        append(&mut s, batches.collect()).await;
        let all = read_all(&mut s).await;
        assert_eq!(all.len(), sizes.len());
    });
}

/// An entry the log could not read back is refused before any byte of it
/// is written: written, it would fail every read and every start.
#[test]
fn an_entry_over_the_read_limit_is_refused_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 0..5)).await;
        // At the end, and over entries 3 and 4 (which it would replace).
        for index in [5, 3] {
            let huge = entry(2, index, &vec![1; nines_types::codec::MAX_DECODE_BYTES]);
            let refused =
                openraft::storage::RaftLogStorageExt::blocking_append(&mut s, [huge]).await;
            assert!(
                refused.is_err(),
                "an unreadable entry was written at {index}"
            );
        }
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        assert_eq!(indexes(&read_all(&mut s).await), vec![0, 1, 2, 3, 4]);
        append(&mut s, entries(1, 5..7)).await;
        assert_eq!(indexes(&read_all(&mut s).await), (0..7).collect::<Vec<_>>());
    });
}

#[test]
fn empty_log_state() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let st = s.get_log_state().await.unwrap();
        assert_eq!((st.last_purged_log_id, st.last_log_id), (None, None));
        assert_eq!(s.read_vote().await.unwrap(), None);
        assert_eq!(s.read_committed().await.unwrap(), None);
        assert!(read_all(&mut s).await.is_empty());
    });
}

#[test]
fn reopen_keeps_entries() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..50)).await;
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), (1..50).collect::<Vec<_>>());
        assert_eq!(value_of(&all[20]), value_for(21));
        append(&mut s, entries(2, 50..60)).await;
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(log_id(2, 59)));
        assert_eq!(read_all(&mut s).await.len(), 59);
    });
}

#[test]
fn truncate_removes_suffix_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..21)).await;
        s.truncate(log_id(1, 11)).await.unwrap();
        assert_eq!(
            indexes(&read_all(&mut s).await),
            (1..11).collect::<Vec<_>>()
        );
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(log_id(1, 10)));
        // Truncating past the end changes nothing.
        s.truncate(log_id(1, 30)).await.unwrap();
        assert_eq!(read_all(&mut s).await.len(), 10);
        // A new leader's entries replace the removed ones.
        append(&mut s, entries(2, 11..16)).await;
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), (1..16).collect::<Vec<_>>());
        assert_eq!(all[9].log_id, log_id(1, 10));
        assert_eq!(all[10].log_id, log_id(2, 11));
        // Truncate everything.
        s.truncate(log_id(1, 1)).await.unwrap();
        assert!(read_all(&mut s).await.is_empty());
        assert_eq!(s.get_log_state().await.unwrap().last_log_id, None);
        append(&mut s, entries(3, 1..3)).await;
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), vec![1, 2]);
        assert_eq!(all[0].log_id, log_id(3, 1));
    });
}

#[test]
fn purge_removes_prefix_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..21)).await;
        s.purge(log_id(1, 5)).await.unwrap();
        assert_eq!(
            indexes(&read_all(&mut s).await),
            (6..21).collect::<Vec<_>>()
        );
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 5)));
        assert_eq!(st.last_log_id, Some(log_id(1, 20)));
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        assert_eq!(
            indexes(&read_all(&mut s).await),
            (6..21).collect::<Vec<_>>()
        );
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 5)));
    });
}

#[test]
fn purge_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_small(dir.path());
        append(&mut s, entries(1, 1..40)).await;
        // As after installing a snapshot that is ahead of the local log.
        s.purge(log_id(3, 100)).await.unwrap();
        assert!(read_all(&mut s).await.is_empty());
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(3, 100)));
        assert_eq!(st.last_log_id, Some(log_id(3, 100)));
        assert_eq!(segment_files(dir.path()).len(), 1);
    });
    rt().block_on(async {
        let mut s = open_small(dir.path());
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(log_id(3, 100)));
        assert!(read_all(&mut s).await.is_empty());
        append(&mut s, entries(3, 101..104)).await;
    });
    rt().block_on(async {
        let mut s = open_small(dir.path());
        assert_eq!(indexes(&read_all(&mut s).await), vec![101, 102, 103]);
        assert_eq!(
            s.get_log_state().await.unwrap().last_log_id,
            Some(log_id(3, 103))
        );
    });
}

#[test]
fn segments_roll_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_small(dir.path());
        for start in (0..400).step_by(5) {
            append(&mut s, entries(1, start..start + 5)).await;
        }
        let files = segment_files(dir.path());
        assert!(
            files.len() > 10,
            "expected many segments, got {}",
            files.len()
        );
        assert_eq!(s.segment_count(), files.len());
        for f in &files {
            // One batch of 5 entries (< 2 KiB) may overflow the bound, not more.
            assert!(
                std::fs::metadata(f).unwrap().len() < 4096 + 2048,
                "{f:?} too big"
            );
        }
        // Names are the first index in each file.
        assert!(files[0].ends_with(format!("{:020}.wal", 0)));
    });
    rt().block_on(async {
        let mut s = open_small(dir.path());
        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), (0..400).collect::<Vec<_>>());
        for e in &all {
            assert_eq!(value_of(e), value_for(e.log_id.index));
        }
        // Reads spanning segments.
        let part = s.try_get_log_entries(97..233).await.unwrap();
        assert_eq!(indexes(&part), (97..233).collect::<Vec<_>>());

        let before = segment_files(dir.path()).len();
        s.purge(log_id(1, 200)).await.unwrap();
        let after = segment_files(dir.path()).len();
        assert!(
            after < before,
            "purge deleted no segment ({before} -> {after})"
        );
        s.truncate(log_id(1, 300)).await.unwrap();
        assert!(segment_files(dir.path()).len() < after);
    });
    rt().block_on(async {
        let mut s = open_small(dir.path());
        assert_eq!(
            indexes(&read_all(&mut s).await),
            (201..300).collect::<Vec<_>>()
        );
        append(&mut s, entries(2, 300..310)).await;
        assert_eq!(read_all(&mut s).await.len(), 109);
    });
}

#[test]
fn vote_and_committed_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(5, 2);
    rt().block_on(async {
        let mut s = open(dir.path());
        s.save_vote(&Vote::new(4, 1)).await.unwrap();
        s.save_vote(&vote).await.unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(vote));

        append(&mut s, entries(1, 1..10)).await;
        s.save_committed(Some(log_id(1, 7))).await.unwrap();
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 7)));
        // Made durable by the next batch's fdatasync.
        append(&mut s, entries(1, 10..12)).await;
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        assert_eq!(s.read_vote().await.unwrap(), Some(vote));
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 7)));
        // Never reported beyond the last entry.
        s.truncate(log_id(1, 5)).await.unwrap();
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 4)));
    });
}

#[test]
fn committed_survives_purge_of_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_small(dir.path());
        append(&mut s, entries(1, 1..6)).await;
        s.save_committed(Some(log_id(1, 5))).await.unwrap();
        for start in (6..300).step_by(6) {
            append(&mut s, entries(1, start..start + 6)).await;
        }
        s.purge(log_id(1, 250)).await.unwrap();
    });
    rt().block_on(async {
        let mut s = open_small(dir.path());
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 5)));
    });
}

#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    match LogStore::open(dir.path(), LogOptions::default()) {
        Err(LogError::Locked { .. }) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    LogStore::open(dir.path(), LogOptions::default()).unwrap();
}

#[test]
fn non_contiguous_appends() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..10)).await;
        // Overlap: overwrites from the first new index.
        append(&mut s, entries(2, 5..7)).await;
        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), (1..7).collect::<Vec<_>>());
        assert_eq!(all[4].log_id, log_id(2, 5));
        assert_eq!(all[3].log_id, log_id(1, 4));
        // At or below the purge point: skipped; the rest overwrites.
        s.purge(log_id(1, 2)).await.unwrap();
        append(&mut s, entries(3, 1..5)).await;
        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), (3..5).collect::<Vec<_>>());
        assert_eq!(all[0].log_id, log_id(3, 3));
        // Entirely below the purge point: nothing changes.
        append(&mut s, entries(4, 0..3)).await;
        assert_eq!(read_all(&mut s).await.len(), 2);
        // Gaps inside one batch are refused.
        let bad = vec![entry(3, 5, b"x"), entry(3, 7, b"y")];
        let res = openraft::storage::RaftLogStorageExt::blocking_append(&mut s, bad).await;
        assert!(res.is_err());
        assert_eq!(indexes(&read_all(&mut s).await), (3..5).collect::<Vec<_>>());
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        assert_eq!(indexes(&read_all(&mut s).await), (3..5).collect::<Vec<_>>());
        // A hole: the log restarts at the new index.
        append(&mut s, entries(3, 20..22)).await;
        assert_eq!(indexes(&read_all(&mut s).await), vec![20, 21]);
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        assert_eq!(indexes(&read_all(&mut s).await), vec![20, 21]);
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(st.last_log_id, Some(log_id(3, 21)));
    });
}

#[test]
fn a_restored_log_starts_empty_after_the_restored_entry() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        LogStore::create_restored(dir.path(), log_id(0, 41)).unwrap();
        let mut s = open(dir.path());
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(0, 41)));
        assert_eq!(st.last_log_id, Some(log_id(0, 41)));
        assert_eq!(s.read_vote().await.unwrap(), None);
        // The next entry follows the purged one.
        append(&mut s, entries(1, 42..44)).await;
        assert_eq!(indexes(&read_all(&mut s).await), vec![42, 43]);
        drop(s);
        assert!(matches!(
            LogStore::create_restored(dir.path(), log_id(0, 41)),
            Err(LogError::NotEmpty(_))
        ));
    });
}

#[test]
fn purge_point_keeps_a_tail_bounded_by_entries_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        assert_eq!(s.purge_point(10, 5, u64::MAX).unwrap(), None);
        // Equal values: every record has the same length.
        let batch: Vec<_> = (1..101).map(|i| entry(1, i, b"0123456789")).collect();
        append(&mut s, batch).await;
        // By entries: keep 81..=90 below a snapshot at 90.
        assert_eq!(s.purge_point(90, 10, u64::MAX).unwrap(), Some(80));
        assert_eq!(s.purge_point(90, 0, u64::MAX).unwrap(), Some(90));
        // More kept than exist: nothing to purge.
        assert_eq!(s.purge_point(90, 1_000, u64::MAX).unwrap(), None);
        // A snapshot past the last entry counts from the last entry.
        assert_eq!(s.purge_point(500, 10, u64::MAX).unwrap(), Some(90));
        // By bytes: what one record takes, times three, keeps three.
        // One record's length: the smallest byte budget that keeps one.
        let one = (1..10_000u64)
            .find(|&b| s.purge_point(90, u64::MAX, b).unwrap() == Some(89))
            .unwrap();
        assert_eq!(s.purge_point(90, u64::MAX, one - 1).unwrap(), Some(90));
        assert_eq!(s.purge_point(90, u64::MAX, one * 3).unwrap(), Some(87));
        assert_eq!(s.purge_point(90, u64::MAX, one * 3 - 1).unwrap(), Some(88));
        assert_eq!(s.purge_point(90, 2, one * 3).unwrap(), Some(88));
        // After a purge, the bound counts from what is left.
        s.purge(log_id(1, 50)).await.unwrap();
        assert_eq!(s.purge_point(60, 20, u64::MAX).unwrap(), None);
        assert_eq!(s.purge_point(60, 5, u64::MAX).unwrap(), Some(55));
    });
}

#[test]
fn replication_reads_are_bounded_in_bytes_but_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        let big = vec![b'x'; 400_000];
        let mut batch: Vec<_> = (1..11).map(|i| entry(1, i, &big)).collect();
        batch.extend((11..21).map(|i| entry(1, i, b"small")));
        append(&mut s, batch).await;
        // 400 KB records: two fit in 1 MiB, a third does not.
        let got = s.limited_get_log_entries(1, 21).await.unwrap();
        assert_eq!(indexes(&got), vec![1, 2]);
        // One record larger than the bound still goes alone.
        let huge = vec![b'y'; 3 << 20];
        append(&mut s, vec![entry(1, 21, &huge), entry(1, 22, b"after")]).await;
        assert_eq!(
            indexes(&s.limited_get_log_entries(21, 23).await.unwrap()),
            vec![21]
        );
        // Small records: the whole range, as asked.
        let got = s.limited_get_log_entries(11, 21).await.unwrap();
        assert_eq!(indexes(&got), (11..21).collect::<Vec<_>>());
        // A purged start reads what is left, as try_get_log_entries does.
        s.purge(log_id(1, 12)).await.unwrap();
        assert_eq!(
            indexes(&s.limited_get_log_entries(5, 16).await.unwrap()),
            (13..16).collect::<Vec<_>>()
        );
    });
}
