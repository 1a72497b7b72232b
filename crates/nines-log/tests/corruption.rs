//! Damage on disk: a torn last record is dropped, anything else refuses to open.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use common::*;
use nines_log::{LogError, LogOptions, LogStore};
use openraft::storage::RaftLogStorage;

fn open_err(dir: &std::path::Path, opts: LogOptions) -> LogError {
    match LogStore::open(dir, opts) {
        Ok(_) => panic!("open succeeded on a damaged log"),
        Err(e) => e,
    }
}

fn flip_byte(path: &std::path::Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn torn_last_record_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        for i in 1..=10 {
            append(&mut s, entries(1, i..i + 1)).await;
        }
    });
    let files = segment_files(dir.path());
    let seg = files.last().unwrap();
    let (off, _, len) = *record_offsets(seg).last().unwrap();
    // Cut the last record (entry 10) in the middle.
    let f = OpenOptions::new().write(true).open(seg).unwrap();
    f.set_len(off + len / 2).unwrap();
    drop(f);

    rt().block_on(async {
        let mut s = open(dir.path());
        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), (1..10).collect::<Vec<_>>());
        assert_eq!(value_of(&all[8]), value_for(9));
        let data = std::fs::read(seg).unwrap();
        assert!(
            data[off as usize..].iter().all(|&b| b == 0),
            "torn bytes not cut"
        );
        append(&mut s, vec![entry(2, 10, b"rewritten")]).await;
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        let all = read_all(&mut s).await;
        assert_eq!(indexes(&all), (1..11).collect::<Vec<_>>());
        assert_eq!(value_of(&all[9]), b"rewritten");
    });
}

#[test]
fn half_written_final_record_with_bad_checksum_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..6)).await;
    });
    let seg = segment_files(dir.path()).pop().unwrap();
    let (off, _, len) = *record_offsets(&seg).last().unwrap();
    flip_byte(&seg, off + len - 1);
    rt().block_on(async {
        let mut s = open(dir.path());
        assert_eq!(indexes(&read_all(&mut s).await), vec![1, 2, 3, 4]);
    });
}

#[test]
fn flipped_byte_mid_log_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..21)).await;
    });
    let seg = segment_files(dir.path()).pop().unwrap();
    let entry_recs: Vec<_> = record_offsets(&seg)
        .into_iter()
        .filter(|r| r.1 == 1)
        .collect();
    let (off, _, len) = entry_recs[9];
    flip_byte(&seg, off + len / 2);

    let err = open_err(dir.path(), LogOptions::default());
    assert!(
        matches!(err, LogError::Corrupt { offset, .. } if offset == off),
        "{err:?}"
    );
    let msg = err.to_string();
    let name = seg.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "{msg}");
    assert!(msg.contains(&format!("offset {off}")), "{msg}");
}

#[test]
fn damage_at_the_end_of_an_older_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_small(dir.path());
        append_batches(&mut s, 1..200, 4).await;
    });
    let files = segment_files(dir.path());
    assert!(files.len() > 2);
    // The final record of a sealed segment: a torn tail there is not a crash.
    let (off, _, len) = *record_offsets(&files[0]).last().unwrap();
    flip_byte(&files[0], off + len - 1);
    let err = open_err(dir.path(), LogOptions::with_segment_bytes(4096));
    let msg = err.to_string();
    assert!(matches!(err, LogError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains(files[0].file_name().unwrap().to_str().unwrap()),
        "{msg}"
    );
}

#[test]
fn missing_middle_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_small(dir.path());
        append_batches(&mut s, 1..200, 4).await;
    });
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[files.len() / 2]).unwrap();
    let err = open_err(dir.path(), LogOptions::with_segment_bytes(4096));
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("missing segment"), "{err}");
}

#[test]
fn bad_segment_header_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..3)).await;
    });
    let seg = segment_files(dir.path()).pop().unwrap();
    flip_byte(&seg, 2);
    let err = open_err(dir.path(), LogOptions::default());
    assert!(matches!(err, LogError::Corrupt { offset: 0, .. }), "{err}");
}

#[test]
fn corrupt_vote_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        use openraft::storage::RaftLogStorage;
        let mut s = open(dir.path());
        s.save_vote(&nines_types::Vote::new(3, 1)).await.unwrap();
        drop(s);
        flip_byte(&dir.path().join("vote"), 9);
        let mut s = open(dir.path());
        assert!(s.read_vote().await.is_err());
    });
}

/// A purge deletes whole segments before its point, oldest first; one that
/// a crash left behind hid a lost segment after the point: no live entry
/// preceded the jump, so the log opened with a hole after the purge point.
#[test]
fn a_lost_segment_behind_an_unfinished_purge_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_small(dir.path());
        append_batches(&mut s, 1..200, 4).await;
    });
    let files = segment_files(dir.path());
    assert!(files.len() > 4);
    // Save the first segment, purge past it and through the second, then
    // put the first back (the purge's crash) and lose the third.
    let first = std::fs::read(&files[0]).unwrap();
    let purge_to: u64 = files[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    rt().block_on(async {
        let mut s = open_small(dir.path());
        s.purge(log_id(1, purge_to)).await.unwrap();
    });
    std::fs::write(&files[0], first).unwrap();
    std::fs::remove_file(&files[2]).unwrap();
    let err = open_err(dir.path(), LogOptions::with_segment_bytes(4096));
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("missing segment"), "{err}");
}

/// A device may tear a page at its 512-byte sectors: after a power loss a
/// record of the last unsynced batch can come back with one sector still
/// zero while the next record reached the disk. That is a torn write, not
/// damage; with 4 KiB pages as the unit the log refused to open for good.
#[test]
fn a_record_torn_at_a_sector_is_dropped_with_the_rest_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        append(&mut s, entries(1, 1..4)).await;
        let big: Vec<_> = (4..7).map(|i| entry(1, i, &[b'x'; 8192])).collect();
        append(&mut s, big).await;
    });
    let seg = segment_files(dir.path()).pop().unwrap();
    let recs: Vec<_> = record_offsets(&seg)
        .into_iter()
        .filter(|r| r.1 == 1)
        .collect();
    let (off, _, len) = recs[4];
    // One sector inside entry 5: no 4 KiB page of it reads as zero.
    let sector = (off + 512).next_multiple_of(512);
    assert!(sector + 512 <= off + len);
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0u8; 512], sector).unwrap();
    rt().block_on(async {
        let mut s = open(dir.path());
        assert_eq!(indexes(&read_all(&mut s).await), vec![1, 2, 3, 4]);
    });
}
