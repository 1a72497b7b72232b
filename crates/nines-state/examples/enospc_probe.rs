//! TEMPORARY probe: `write DIR START` applies 256 KiB puts until an error and
//! exits 74 at once (like nines-server); `open DIR` opens and prints state.
use std::path::PathBuf;
use std::time::Instant;

use nines_state::{StateMachine, StateOptions};
use nines_types::{Command, Entry, LogId, Request};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};

fn entry(index: u64, request: Request) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(request),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(&args[2]);
    let t = Instant::now();
    let mut sm = StateMachine::open(&dir, StateOptions::default())
        .await
        .expect("open");
    let (applied, _) = sm.applied_state().await.expect("applied");
    eprintln!(
        "opened in {:?}, applied {:?}, rebuilt {:?}",
        t.elapsed(),
        applied.map(|l| l.index),
        sm.rebuilt_from()
    );
    match args[1].as_str() {
        "write" => {
            let mut index = applied.map_or(1, |l| l.index + 1);
            loop {
                let value: Vec<u8> = (0..256 * 1024)
                    .map(|j| (index as usize * 31 + j) as u8)
                    .collect();
                let req = Request::new(Command::Put {
                    key: format!("k{index:05}").into_bytes(),
                    value,
                    lease: 0,
                    prev_kv: false,
                });
                if let Err(e) = sm.apply([entry(index, req)]).await {
                    eprintln!("apply {index} failed: {e}");
                    std::process::exit(74);
                }
                index += 1;
                let ms: u64 = std::env::var("DELAY_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if ms > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(
                        rand::random::<u64>() % ms,
                    ))
                    .await;
                }
            }
        }
        "open" => {
            let reader = sm.reader();
            let upto = applied.map_or(0, |l| l.index);
            for index in 1..=upto {
                let value: Vec<u8> = (0..256 * 1024)
                    .map(|j| (index as usize * 31 + j) as u8)
                    .collect();
                match reader.get(format!("k{index:05}").as_bytes()) {
                    Ok(Some(kv)) if kv.value == value => {}
                    other => {
                        eprintln!(
                            "HOLE: k{index:05} (applied {upto}): {:?}",
                            other.map(|o| o.map(|kv| kv.value.len()))
                        );
                        std::process::exit(3);
                    }
                }
            }
            eprintln!("all {upto} applied keys present");
        }
        _ => panic!("mode"),
    }
}
