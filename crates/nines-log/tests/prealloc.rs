//! Zero-filled space ahead of the writer: it reads as the end of the log,
//! and a page still zero inside an unsynced tail reads as a torn write.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::*;
use nines_log::{LogError, LogOptions, LogStore};

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn zeroed_space_ahead_reads_as_the_end_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..51)).await;
        let seg = segment_files(dir.path()).pop().unwrap();
        let data_end = record_offsets(&seg)
            .last()
            .map(|&(off, _, len)| off + len)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while file_len(&seg) < data_end + 1024 * 1024 {
            assert!(Instant::now() < deadline, "no space was zeroed ahead");
            std::thread::sleep(Duration::from_millis(10));
        }
        append(&mut s, entries(1, 51..101)).await;
    });
    for round in 0..2u64 {
        rt().block_on(async {
            let mut s = open(dir.path());
            let all = read_all(&mut s).await;
            let last = 100 + round * 10;
            assert_eq!(indexes(&all), (1..=last).collect::<Vec<_>>());
            assert_eq!(value_of(&all[last as usize - 1]), value_for(last));
            append(&mut s, entries(1, last + 1..last + 11)).await;
        });
    }
}

#[test]
fn segments_roll_with_zeroed_tails() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_small(dir.path());
        append_batches(&mut s, 1..400, 4).await;
    });
    assert!(segment_files(dir.path()).len() > 5);
    rt().block_on(async {
        let mut s = open_small(dir.path());
        assert_eq!(
            indexes(&read_all(&mut s).await),
            (1..400).collect::<Vec<_>>()
        );
    });
}

/// After a power loss, pages of an unsynced append can stay zero while
/// later ones were written. Nothing after such a record was ever synced.
#[test]
fn a_zero_page_inside_the_unsynced_tail_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..11)).await;
        // One append spanning several pages: the "unsynced" tail.
        append(&mut s, entries(1, 11..81)).await;
    });
    let seg = segment_files(dir.path()).pop().unwrap();
    let recs: Vec<_> = record_offsets(&seg)
        .into_iter()
        .filter(|r| r.1 == 1)
        .collect();
    let tail_start = recs[10].0;
    let tail_end = recs.last().map(|&(off, _, len)| off + len).unwrap();
    let page = tail_start.div_ceil(4096) * 4096 + 4096;
    assert!(page + 4096 < tail_end, "test batch too small");
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0u8; 4096], page).unwrap();
    drop(f);
    // The first record overlapping the zero page, and everything after, go.
    let first_lost = recs
        .iter()
        .position(|&(off, _, len)| off + len > page)
        .unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), (1..=first_lost as u64).collect::<Vec<_>>());
        let next = first_lost as u64 + 1;
        append(&mut s, entries(2, next..next + 5)).await;
        assert_eq!(read_all(&mut s).await.len(), first_lost + 5);
    });
}

/// The same zero page in a sealed segment is damage, not a torn write.
#[test]
fn a_zero_page_in_a_sealed_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || LogOptions::with_segment_bytes(16 * 1024);
    rt().block_on(async {
        let mut s = LogStore::open(dir.path(), opts()).unwrap();
        append_batches(&mut s, 1..400, 20).await;
    });
    let files = segment_files(dir.path());
    assert!(files.len() > 2);
    let f = OpenOptions::new().write(true).open(&files[0]).unwrap();
    f.write_all_at(&[0u8; 4096], 4096).unwrap();
    drop(f);
    match LogStore::open(dir.path(), opts()) {
        Ok(_) => panic!("opened a log with a zeroed page in a sealed segment"),
        Err(e) => assert!(matches!(e, LogError::Corrupt { .. }), "{e}"),
    }
}
