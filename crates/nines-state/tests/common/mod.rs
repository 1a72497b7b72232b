//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use nines_state::{StateMachine, StateOptions};
use nines_types::{
    Command, Compare, CompareOp, CompareTarget, Entry, KeyRange, LogId, RangeRequest, Request,
    Response, Snapshot, Txn, TxnOp,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};

pub fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

pub fn entry(index: u64, request: Request) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(request),
    }
}

pub fn blank(index: u64) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Blank,
    }
}

pub async fn open(dir: &Path) -> StateMachine {
    StateMachine::open(dir, StateOptions::default())
        .await
        .expect("open state machine")
}

/// Applies requests one entry each, tracking the next log index.
pub struct Applier {
    pub sm: StateMachine,
    pub next_index: u64,
}

impl Applier {
    pub fn new(sm: StateMachine) -> Self {
        Self { sm, next_index: 1 }
    }

    pub async fn apply(&mut self, request: Request) -> Response {
        let index = self.next_index;
        self.next_index += 1;
        let mut out = self.sm.apply([entry(index, request)]).await.expect("apply");
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    pub async fn cmd(&mut self, command: Command) -> Response {
        self.apply(Request::new(command)).await
    }
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease: 0,
        prev_kv: false,
    }
}

pub fn put_prev(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease: 0,
        prev_kv: true,
    }
}

pub fn delete(key: &str, prev_kv: bool) -> Command {
    Command::Delete {
        key: key.as_bytes().to_vec(),
        prev_kv,
    }
}

pub fn between(start: &str, end: &str) -> KeyRange {
    KeyRange::Between {
        start: start.as_bytes().to_vec(),
        end: end.as_bytes().to_vec(),
    }
}

pub fn get_req(key: &str) -> RangeRequest {
    RangeRequest::key(key.as_bytes().to_vec())
}

pub fn txn(compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
    Command::Txn(Txn {
        compares,
        success,
        failure,
    })
}

pub fn cmp(key: &str, op: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        op,
        target,
    }
}

pub fn tput(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        prev_kv: false,
    }
}

pub fn tdel(key: &str) -> TxnOp {
    TxnOp::Delete {
        range: KeyRange::Single(key.as_bytes().to_vec()),
        prev_kv: false,
    }
}

pub fn tget(key: &str) -> TxnOp {
    TxnOp::Get(get_req(key))
}

/// Every user key with its value, revisions and version.
pub fn all_kvs(sm: &StateMachine) -> Vec<nines_types::KeyValue> {
    sm.reader()
        .range(&RangeRequest::range(KeyRange::From(vec![0])))
        .expect("range")
        .data
        .kvs
}

/// Raw session records (`s` prefix) of the current tree.
pub fn sessions(sm: &StateMachine) -> Vec<(Vec<u8>, Vec<u8>)> {
    sm.reader()
        .dump_raw()
        .expect("dump")
        .into_iter()
        .filter(|(k, _)| k.first() == Some(&b's'))
        .collect()
}

/// Builds a snapshot of `sm` now.
pub async fn build_snapshot(sm: &mut StateMachine) -> Snapshot {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot build")
}
