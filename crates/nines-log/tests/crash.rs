//! Kill -9 tests. The parent test re-executes this test binary, running
//! only a child test function (selected with `--exact`) that works on the
//! directory named by an env var; the parent SIGKILLs it and checks what
//! survived. Without the env var the child functions return at once.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use nines_types::Vote;
use openraft::storage::RaftLogStorage;
use rand::{Rng, SeedableRng};

const CRASH_DIR: &str = "NINES_WAL_CRASH_DIR";
const CRASH_SEED: &str = "NINES_WAL_CRASH_SEED";
const VOTE_DIR: &str = "NINES_WAL_VOTE_DIR";

/// The vote the vote child saves.
fn child_vote() -> Vote {
    Vote::new_committed(42, 3)
}

/// Term of the entry at `index` in the crash workload (changes every 1000).
fn term_for(index: u64) -> u64 {
    1 + index / 1000
}

fn spawn_child(test_name: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Sends every complete stdout line of `child` to the returned channel.
/// The harness prints `test <name> ... ` without a newline before the test
/// runs, so the first line of the child's own output carries that prefix.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                // A line cut by the kill has no newline: not an acknowledgement.
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    if tx.send(line.trim_end().to_string()).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    rx
}

fn sigkill(child: &mut Child) {
    // SAFETY: signalling a child process we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill failed");
    child.wait().unwrap();
}

#[test]
fn child_append_loop() {
    let Ok(dir) = std::env::var(CRASH_DIR) else {
        return;
    };
    let seed: u64 = std::env::var(CRASH_SEED).unwrap().parse().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    rt().block_on(async {
        // Small segments so kills also land around segment rolls.
        let mut s = nines_log::LogStore::open(
            Path::new(&dir),
            nines_log::LogOptions::with_segment_bytes(64 * 1024),
        )
        .unwrap();
        let mut next = 1u64;
        let stdout = std::io::stdout();
        loop {
            let n = rng.gen_range(1..=64);
            let batch = (next..next + n)
                .map(|i| entry(term_for(i), i, &value_for(i)))
                .collect();
            append(&mut s, batch).await;
            next += n;
            // Commit lags a little, as in Raft.
            s.save_committed(Some(log_id(term_for(next - 2), next - 2)))
                .await
                .unwrap();
            let mut out = stdout.lock();
            writeln!(out, "acked {}", next - 1).unwrap();
            out.flush().unwrap();
        }
    });
}

fn crash_run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut child = spawn_child(
        "child_append_loop",
        &[
            (CRASH_DIR, dir.path().display().to_string()),
            (CRASH_SEED, seed.to_string()),
        ],
    );
    let lines = stdout_lines(&mut child);
    let ack_of = |l: &str| {
        l.split_once("acked ")
            .map(|(_, n)| n.parse::<u64>().unwrap())
    };
    // The kill must land among appends: wait for the first one. A child is
    // a fresh exec of this binary, and on a loaded machine (a clean CI
    // build) it once acknowledged nothing within the 200-800 ms below.
    let first = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .expect("the child ended, or acknowledged nothing in 120 s");
        if let Some(n) = ack_of(&line) {
            break n;
        }
    };
    std::thread::sleep(Duration::from_millis(rng.gen_range(200..=800)));
    sigkill(&mut child);
    let acked = lines
        .iter()
        .filter_map(|l| ack_of(&l))
        .fold(first, u64::max);

    rt().block_on(async {
        let mut s = open(dir.path());
        let all = read_all(&mut s).await;
        assert!(
            all.len() as u64 >= acked,
            "seed {seed}: {acked} acked, {} recovered",
            all.len()
        );
        for (i, e) in all.iter().enumerate() {
            let index = i as u64 + 1;
            assert_eq!(e.log_id, log_id(term_for(index), index), "seed {seed}");
            assert_eq!(value_of(e), value_for(index), "seed {seed} index {index}");
        }
        let committed = s.read_committed().await.unwrap();
        assert!(committed.is_some_and(|c| c.index <= all.len() as u64));
        // The recovered log takes appends again.
        let next = all.len() as u64 + 1;
        append(&mut s, vec![entry(9, next, b"after crash")]).await;
    });
    rt().block_on(async {
        let mut s = open(dir.path());
        let last = read_all(&mut s).await.pop().unwrap();
        assert_eq!(value_of(&last), b"after crash");
    });
    eprintln!("seed {seed}: {acked} entries acked before SIGKILL, all recovered");
}

#[test]
fn sigkill_during_appends_loses_no_acked_entry() {
    for seed in [11, 22, 33] {
        crash_run(seed);
    }
}

#[test]
fn child_save_vote() {
    let Ok(dir) = std::env::var(VOTE_DIR) else {
        return;
    };
    rt().block_on(async {
        let mut s = open(Path::new(&dir));
        s.save_vote(&child_vote()).await.unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "voted").unwrap();
        out.flush().unwrap();
        drop(out);
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[test]
fn vote_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(
        "child_save_vote",
        &[(VOTE_DIR, dir.path().display().to_string())],
    );
    let lines = stdout_lines(&mut child);
    let voted = lines.iter().any(|l| l.ends_with("voted"));
    // `any` stops at "voted"; the child is now sleeping with the vote saved.
    assert!(voted, "child exited without voting");
    sigkill(&mut child);
    rt().block_on(async {
        let mut s = open(dir.path());
        assert_eq!(s.read_vote().await.unwrap(), Some(child_vote()));
    });
}
