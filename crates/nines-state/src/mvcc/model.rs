//! A simple model of the store for randomized tests: the whole state at
//! every revision, plus the compacted revision, and generators of random
//! commands over a few keys.

use std::collections::BTreeMap;

use nines_types::{
    Command, CommandResult, Compare, CompareOp, CompareTarget, Keep, KeyRange, KeyValue,
    RangeOptions, RangeRequest, RangeResponse, RejectReason, Response, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use rand::rngs::StdRng;
use rand::Rng;

use crate::error::StateError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelKv {
    value: Vec<u8>,
    create: i64,
    modified: i64,
    version: i64,
}

pub(crate) type State = BTreeMap<Vec<u8>, ModelKv>;

pub(crate) fn model_kv(key: &[u8], m: &ModelKv) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: m.value.clone(),
        create_revision: m.create,
        mod_revision: m.modified,
        version: m.version,
        lease: 0,
    }
}

pub(crate) fn model_range(state: &State, req: &RangeRequest) -> RangeResponse {
    let matching: Vec<KeyValue> = state
        .iter()
        .filter(|(k, _)| req.range.contains(k))
        .map(|(k, m)| model_kv(k, m))
        .collect();
    let limit = if req.limit == 0 {
        usize::MAX
    } else {
        req.limit as usize
    };
    let mut kvs: Vec<KeyValue> = if req.count_only {
        Vec::new()
    } else {
        matching.iter().take(limit).cloned().collect()
    };
    if req.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    RangeResponse {
        count: matching.len() as u64,
        more: !req.count_only && matching.len() > kvs.len(),
        kvs,
    }
}

pub(crate) fn model_put(state: &mut State, key: &[u8], value: &[u8], rev: i64) -> Option<KeyValue> {
    let prev = state.get(key).cloned();
    let next = match &prev {
        Some(p) => ModelKv {
            value: value.to_vec(),
            create: p.create,
            modified: rev,
            version: p.version + 1,
        },
        None => ModelKv {
            value: value.to_vec(),
            create: rev,
            modified: rev,
            version: 1,
        },
    };
    state.insert(key.to_vec(), next);
    prev.map(|p| model_kv(key, &p))
}

pub(crate) fn model_delete(state: &mut State, range: &KeyRange) -> Vec<KeyValue> {
    let gone: Vec<Vec<u8>> = state
        .keys()
        .filter(|k| range.contains(k))
        .cloned()
        .collect();
    gone.iter()
        .map(|k| model_kv(k, &state.remove(k).expect("listed")))
        .collect()
}

pub(crate) fn model_compare(state: &State, c: &Compare) -> bool {
    let current = state.get(&c.key);
    let order = match (&c.target, current) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(m)) => m.value.cmp(v),
        (CompareTarget::Version(v), _) => current.map_or(0, |m| m.version).cmp(v),
        (CompareTarget::CreateRevision(v), _) => current.map_or(0, |m| m.create).cmp(v),
        (CompareTarget::ModRevision(v), _) => current.map_or(0, |m| m.modified).cmp(v),
    };
    match c.op {
        CompareOp::Equal => order.is_eq(),
        CompareOp::NotEqual => order.is_ne(),
        CompareOp::Greater => order.is_gt(),
        CompareOp::Less => order.is_lt(),
    }
}

/// The expected response; pushes the new state if the command changed it.
pub(crate) fn model_apply(states: &mut Vec<State>, command: &Command) -> Response {
    let rev = (states.len()) as i64;
    let mut state = states.last().expect("initial state").clone();
    let mut changed = false;
    let deleted = |prev_kvs: Vec<KeyValue>, want: bool| {
        let n = prev_kvs.len() as u64;
        (n, if want { prev_kvs } else { Vec::new() })
    };
    let result = match command {
        Command::Put {
            key,
            value,
            prev_kv,
            ..
        } => {
            changed = true;
            let prev = model_put(&mut state, key, value, rev);
            CommandResult::Put {
                prev_kv: prev.filter(|_| *prev_kv),
            }
        }
        Command::Delete { key, prev_kv } => {
            let range = KeyRange::Single(key.clone());
            let (n, prev_kvs) = deleted(model_delete(&mut state, &range), *prev_kv);
            changed = n > 0;
            CommandResult::Delete {
                deleted: n,
                prev_kvs,
            }
        }
        Command::DeleteRange { range, prev_kv } => {
            let (n, prev_kvs) = deleted(model_delete(&mut state, range), *prev_kv);
            changed = n > 0;
            CommandResult::Delete {
                deleted: n,
                prev_kvs,
            }
        }
        Command::PutKeeping {
            key,
            value,
            prev_kv,
            keep,
            ..
        } => match state.get(key).map(|m| m.value.clone()) {
            None => CommandResult::Rejected(RejectReason::KeyNotFound(key.clone())),
            Some(current) => {
                changed = true;
                let value = if keep.value { &current } else { value };
                let prev = model_put(&mut state, key, value, rev);
                CommandResult::Put {
                    prev_kv: prev.filter(|_| *prev_kv),
                }
            }
        },
        Command::Txn(txn) => {
            let succeeded = txn.compares.iter().all(|c| model_compare(&state, c));
            let ops = if succeeded {
                &txn.success
            } else {
                &txn.failure
            };
            // Runs on a copy: a kept put of a missing key drops it all.
            let before = state.clone();
            let mut missing = None;
            let mut responses = Vec::new();
            for op in ops {
                responses.push(match op {
                    TxnOp::PutKeeping {
                        key,
                        value,
                        prev_kv,
                        keep,
                        ..
                    } => {
                        let Some(current) = state.get(key).map(|m| m.value.clone()) else {
                            missing = Some(key.clone());
                            break;
                        };
                        changed = true;
                        let value = if keep.value { &current } else { value };
                        let prev = model_put(&mut state, key, value, rev);
                        TxnOpResponse::Put {
                            prev_kv: prev.filter(|_| *prev_kv),
                        }
                    }
                    TxnOp::Put {
                        key,
                        value,
                        prev_kv,
                    } => {
                        changed = true;
                        let prev = model_put(&mut state, key, value, rev);
                        TxnOpResponse::Put {
                            prev_kv: prev.filter(|_| *prev_kv),
                        }
                    }
                    TxnOp::PutLeased { .. } => {
                        unreachable!("the model generates no leased puts (see lease tests)")
                    }
                    TxnOp::Delete { range, prev_kv } => {
                        let (n, prev_kvs) = deleted(model_delete(&mut state, range), *prev_kv);
                        changed |= n > 0;
                        TxnOpResponse::Delete {
                            deleted: n,
                            prev_kvs,
                        }
                    }
                    TxnOp::Get(req) => TxnOpResponse::Get(model_range(&state, req)),
                    TxnOp::GetWith(..) => {
                        unreachable!("the model generates no sorted txn reads (see txn tests)")
                    }
                });
            }
            match missing {
                Some(key) => {
                    state = before;
                    changed = false;
                    CommandResult::Rejected(RejectReason::KeyNotFound(key))
                }
                None => CommandResult::Txn {
                    succeeded,
                    responses,
                },
            }
        }
        other => panic!("the generator does not make {other:?}"),
    };
    if changed {
        states.push(state);
    }
    Response {
        revision: states.len() as i64 - 1,
        result,
    }
}

const MODEL_KEYS: u8 = 6;

pub(crate) fn key(rng: &mut StdRng) -> Vec<u8> {
    format!("k{}", rng.gen_range(0..MODEL_KEYS)).into_bytes()
}

pub(crate) fn key_range(rng: &mut StdRng) -> KeyRange {
    let (a, b) = (rng.gen_range(0..MODEL_KEYS), rng.gen_range(0..MODEL_KEYS));
    match rng.gen_range(0..3) {
        0 => KeyRange::Single(key(rng)),
        1 => KeyRange::From(format!("k{a}").into_bytes()),
        _ => KeyRange::Between {
            start: format!("k{}", a.min(b)).into_bytes(),
            end: format!("k{}", a.max(b) + 1).into_bytes(),
        },
    }
}

pub(crate) fn read_request(rng: &mut StdRng) -> RangeRequest {
    RangeRequest {
        range: key_range(rng),
        limit: rng.gen_range(0..4),
        keys_only: rng.gen_bool(0.2),
        count_only: rng.gen_bool(0.2),
    }
}

fn keep(rng: &mut StdRng) -> Keep {
    Keep {
        value: rng.gen(),
        lease: rng.gen(),
    }
}

fn value_unless_kept(rng: &mut StdRng, keep: Keep) -> Vec<u8> {
    if keep.value {
        Vec::new()
    } else {
        rng.gen::<u16>().to_string().into_bytes()
    }
}

/// A plain put, or one in four keeping the value or lease (etcd's ignore_*).
fn put_op(rng: &mut StdRng, key: Vec<u8>) -> TxnOp {
    if rng.gen_range(0..4) == 0 {
        let keep = keep(rng);
        TxnOp::PutKeeping {
            key,
            value: value_unless_kept(rng, keep),
            lease: 0,
            prev_kv: rng.gen(),
            keep,
        }
    } else {
        TxnOp::Put {
            key,
            value: rng.gen::<u16>().to_string().into_bytes(),
            prev_kv: rng.gen(),
        }
    }
}

pub(crate) fn txn_ops(rng: &mut StdRng) -> Vec<TxnOp> {
    let mut ops = Vec::new();
    let mut put_keys = Vec::new();
    for _ in 0..rng.gen_range(0..5) {
        let op = match rng.gen_range(0..4) {
            0 | 1 => {
                let key = key(rng);
                // Two puts of one key in a branch are refused (tested elsewhere).
                if put_keys.contains(&key) {
                    continue;
                }
                put_keys.push(key.clone());
                put_op(rng, key)
            }
            2 => TxnOp::Delete {
                range: key_range(rng),
                prev_kv: rng.gen(),
            },
            _ => TxnOp::Get(read_request(rng)),
        };
        ops.push(op);
    }
    // Nor may a branch delete a key it puts (etcd's rule, tested elsewhere).
    ops.retain(|op| match op {
        TxnOp::Delete { range, .. } => !put_keys.iter().any(|k| range.contains(k)),
        _ => true,
    });
    ops
}

pub(crate) fn command(rng: &mut StdRng) -> Command {
    match rng.gen_range(0..11) {
        10 => Command::Delete {
            key: key(rng),
            prev_kv: rng.gen(),
        },
        0..=2 => Command::Put {
            key: key(rng),
            value: rng.gen::<u16>().to_string().into_bytes(),
            lease: 0,
            prev_kv: rng.gen(),
        },
        3 => {
            let keep = keep(rng);
            Command::PutKeeping {
                key: key(rng),
                value: value_unless_kept(rng, keep),
                lease: 0,
                prev_kv: rng.gen(),
                keep,
            }
        }
        4 | 5 => Command::DeleteRange {
            range: key_range(rng),
            prev_kv: rng.gen(),
        },
        _ => {
            let op = [
                CompareOp::Equal,
                CompareOp::NotEqual,
                CompareOp::Greater,
                CompareOp::Less,
            ][rng.gen_range(0..4)];
            let target = match rng.gen_range(0..3) {
                0 => CompareTarget::Version(rng.gen_range(0..3)),
                1 => CompareTarget::ModRevision(rng.gen_range(0..40)),
                _ => CompareTarget::Value(rng.gen::<u16>().to_string().into_bytes()),
            };
            Command::Txn(Txn {
                compares: vec![Compare {
                    key: key(rng),
                    op,
                    target,
                }],
                success: txn_ops(rng),
                failure: txn_ops(rng),
            })
        }
    }
}

/// The whole history and its compaction.
pub(crate) struct Model {
    /// The state at every revision; index 0 is the empty store.
    pub states: Vec<State>,
    pub compacted: i64,
}

/// What a read at a revision should give.
#[derive(Debug, PartialEq)]
pub(crate) enum Expected {
    Data(RangeResponse),
    Compacted { compacted: i64 },
    Future,
}

impl Model {
    /// A model of a store opened at revision 0 (the index's own tests).
    pub fn new() -> Self {
        Self::starting_at(0)
    }

    /// A model of a store that is empty at `revision` (a state machine's
    /// is at `EMPTY_STORE_REVISION`): one empty state per revision up to it.
    pub fn starting_at(revision: i64) -> Self {
        Self {
            states: (0..=revision).map(|_| State::new()).collect(),
            compacted: 0,
        }
    }

    pub fn revision(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    /// The expected response; a compaction moves `compacted` (etcd's checks).
    pub fn apply(&mut self, command: &Command) -> Response {
        let Command::Compact { revision, .. } = command else {
            return model_apply(&mut self.states, command);
        };
        let current = self.revision();
        let result = if *revision == 0 && self.compacted == 0 {
            CommandResult::Compacted { revision: 0 }
        } else if *revision <= self.compacted {
            CommandResult::Rejected(RejectReason::Compacted {
                requested: *revision,
                compacted: self.compacted,
            })
        } else if *revision > current {
            CommandResult::Rejected(RejectReason::FutureRevision {
                requested: *revision,
                current,
            })
        } else {
            self.compacted = *revision;
            CommandResult::Compacted {
                revision: *revision,
            }
        };
        Response {
            revision: current,
            result,
        }
    }

    /// A range at `revision` (0: the current one).
    pub fn range(&self, req: &RangeRequest, revision: i64) -> Expected {
        let at = if revision <= 0 {
            self.revision()
        } else {
            revision
        };
        if at > self.revision() {
            Expected::Future
        } else if at < self.compacted {
            Expected::Compacted {
                compacted: self.compacted,
            }
        } else {
            Expected::Data(model_range(&self.states[at as usize], req))
        }
    }
}

/// A random command, now and then a compaction to a revision near the
/// compacted and current ones (so rejections happen too).
pub(crate) fn command_or_compact(rng: &mut StdRng, model: &Model) -> Command {
    if !rng.gen_bool(0.12) {
        return command(rng);
    }
    let revision = if rng.gen_bool(0.25) {
        model.compacted + rng.gen_range(-2..=1)
    } else {
        rng.gen_range(model.compacted..=model.revision() + 1)
    };
    Command::Compact {
        revision,
        physical: rng.gen(),
    }
}

fn every_key() -> RangeRequest {
    RangeRequest::range(KeyRange::From(vec![0]))
}

/// Checks `read` (a range at a revision) against the model at every
/// revision from 0 (the current one) to one past the newest: the whole key
/// space and a random request each, data or the expected error.
pub(crate) fn check_reads(
    read: impl Fn(&RangeRequest, i64) -> Result<super::Read<RangeResponse>, StateError>,
    model: &Model,
    rng: &mut StdRng,
    context: &str,
) {
    for revision in 0..=model.revision() + 1 {
        for req in [every_key(), read_request(rng)] {
            match (model.range(&req, revision), read(&req, revision)) {
                (Expected::Data(want), Ok(got)) => {
                    let served = if revision <= 0 {
                        model.revision()
                    } else {
                        revision
                    };
                    assert_eq!(got.revision, served, "{context} at {revision}");
                    assert_eq!(got.data, want, "{context} at {revision}: {req:?}");
                }
                (
                    Expected::Compacted { compacted },
                    Err(StateError::Compacted {
                        requested,
                        compacted: got,
                    }),
                ) => assert_eq!((requested, got), (revision, compacted), "{context}"),
                (Expected::Future, Err(StateError::FutureRevision { .. })) => {}
                (want, got) => {
                    panic!("{context} at {revision}, {req:?}: want {want:?}, got {got:?}")
                }
            }
        }
    }
}

/// etcd's Range with sort and revision filters, over the model's state.
pub(crate) fn model_range_with(
    state: &State,
    req: &RangeRequest,
    opts: &RangeOptions,
) -> RangeResponse {
    let matching: Vec<KeyValue> = state
        .iter()
        .filter(|(k, _)| req.range.contains(k))
        .map(|(k, m)| model_kv(k, m))
        .collect();
    let count = matching.len() as u64;
    if req.count_only {
        return RangeResponse {
            kvs: Vec::new(),
            count,
            more: false,
        };
    }
    let within = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
    let mut kvs: Vec<KeyValue> = matching
        .into_iter()
        .filter(|kv| {
            within(
                kv.mod_revision,
                opts.min_mod_revision,
                opts.max_mod_revision,
            )
        })
        .filter(|kv| {
            within(
                kv.create_revision,
                opts.min_create_revision,
                opts.max_create_revision,
            )
        })
        .collect();
    let target = |kv: &KeyValue| -> (i64, Vec<u8>) {
        match opts.sort_target {
            SortTarget::Key => (0, kv.key.clone()),
            SortTarget::Version => (kv.version, Vec::new()),
            SortTarget::Create => (kv.create_revision, Vec::new()),
            SortTarget::Mod => (kv.mod_revision, Vec::new()),
            SortTarget::Value => (0, kv.value.clone()),
        }
    };
    match (opts.sort_order, opts.sort_target) {
        (SortOrder::None, SortTarget::Key) => {}
        (SortOrder::Descend, _) => kvs.sort_by_key(|kv| std::cmp::Reverse(target(kv))),
        _ => kvs.sort_by_key(target),
    }
    let more = req.limit > 0 && kvs.len() as u64 > req.limit;
    if more {
        kvs.truncate(req.limit as usize);
    }
    if req.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    RangeResponse { kvs, count, more }
}

/// Random sort and filters; revisions up to `max_revision`.
pub(crate) fn range_options(rng: &mut StdRng, max_revision: i64) -> RangeOptions {
    let bound = |rng: &mut StdRng| {
        if rng.gen_bool(0.25) {
            rng.gen_range(1..=max_revision.max(1))
        } else {
            0
        }
    };
    RangeOptions {
        sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][rng.gen_range(0..3)],
        sort_target: [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ][rng.gen_range(0..5)],
        min_mod_revision: bound(rng),
        max_mod_revision: bound(rng),
        min_create_revision: bound(rng),
        max_create_revision: bound(rng),
    }
}
