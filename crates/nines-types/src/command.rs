//! The command model: what a client proposes, what the state machine returns.
//!
//! These types are bincode-encoded into the Raft log, so their layout is part
//! of the on-disk format: only append new enum variants at the end.

use serde::{Deserialize, Serialize};

/// Identifies a client's write so a retry is applied exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    pub client_id: u64,
    pub seq: u64,
}

/// One entry's payload: a command and, optionally, its exactly-once session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub session: Option<Session>,
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Self {
            session: None,
            command,
        }
    }

    pub fn with_session(command: Command, client_id: u64, seq: u64) -> Self {
        Self {
            session: Some(Session { client_id, seq }),
            command,
        }
    }
}

/// A set of keys: one key, `[start, end)`, or every key `>= start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    Single(#[serde(with = "serde_bytes")] Vec<u8>),
    Between {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
    From(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl KeyRange {
    /// All keys that start with `prefix` (etcd's `--prefix`).
    pub fn prefix(prefix: &[u8]) -> Self {
        match prefix_end(prefix) {
            Some(end) => KeyRange::Between {
                start: prefix.to_vec(),
                end,
            },
            None => KeyRange::From(prefix.to_vec()),
        }
    }

    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Single(k) => k,
            KeyRange::Between { start, .. } => start,
            KeyRange::From(start) => start,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_slice() == key,
            KeyRange::Between { start, end } => start.as_slice() <= key && key < end.as_slice(),
            KeyRange::From(start) => start.as_slice() <= key,
        }
    }
}

/// The smallest key greater than every key with this prefix, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A read of a key or key range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// 0 means no limit.
    pub limit: u64,
    pub keys_only: bool,
    pub count_only: bool,
}

impl RangeRequest {
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self::range(KeyRange::Single(key.into()))
    }

    pub fn range(range: KeyRange) -> Self {
        Self {
            range,
            limit: 0,
            keys_only: false,
            count_only: false,
        }
    }
}

/// How a range orders its result (etcd's SortOrder).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order; with a target other than the key, ascending (etcd).
    #[default]
    None,
    Ascend,
    Descend,
}

/// What a range sorts by (etcd's SortTarget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// A range's options beyond its key selection (etcd's RangeRequest sort
/// and revision filters). Apart from `RangeRequest` because that one is
/// part of the log format (inside txns) and most ranges have none; a txn
/// range with some is `TxnOp::GetWith`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeOptions {
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Bounds on the returned keys' revisions, inclusive; 0 means none.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl RangeOptions {
    /// Whether the key-ordered, unfiltered fast path serves the range.
    pub fn is_plain(&self) -> bool {
        let key_order = matches!(
            (self.sort_order, self.sort_target),
            (SortOrder::None | SortOrder::Ascend, SortTarget::Key)
        );
        key_order
            && self.min_mod_revision == 0
            && self.max_mod_revision == 0
            && self.min_create_revision == 0
            && self.max_create_revision == 0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Number of writes since creation; 1 after the first put.
    pub version: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range, regardless of `limit`.
    pub count: u64,
    /// True when `limit` cut the result short.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// The lease to attach the key to (0: none); it must exist.
        lease: i64,
        prev_kv: bool,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        prev_kv: bool,
    },
    DeleteRange {
        range: KeyRange,
        prev_kv: bool,
    },
    Txn(Txn),
    /// Several client requests proposed as one log entry (group commit at the
    /// API level: one append and one fsync for many writes). Each request is
    /// applied as if it were its own entry: own revision, own session.
    Batch(Vec<Request>),
    /// Drops history at or below `revision` (etcd's Compact): reads below it
    /// fail from then on. Keeps, for each key, the newest put at or below it
    /// in a live generation. `physical` asks the proposer to answer only once
    /// the dropped records are deleted from disk; it does not change what is
    /// applied, so every replica applies the same.
    Compact {
        revision: i64,
        physical: bool,
    },
    /// etcd's Put with `ignore_value` or `ignore_lease`: the kept parts come
    /// from the key's current version, and a missing key refuses the write.
    PutKeeping {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
        keep: Keep,
    },
    /// etcd's LeaseGrant: a lease with `ttl` seconds, under `id` (chosen by
    /// the proposer: never 0). An id in use is refused.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// etcd's LeaseRevoke, and what the leader proposes when a lease
    /// expires: deletes the lease and every key attached to it, all at one
    /// revision.
    LeaseRevoke {
        id: i64,
    },
    /// The leader's remaining TTLs, so that a new leader counts down from
    /// them instead of from the full TTL (etcd's lease checkpoints). Ids
    /// no longer granted are skipped.
    LeaseCheckpoint(Vec<LeaseRemaining>),
    /// A change to users, roles, permissions or whether auth is on.
    Auth(crate::AuthCommand),
    /// A checkpoint (or a keepalive's clearing of one) by the leader of
    /// `term`, applied only from an entry of that term. One whose proposal
    /// outlived its term (queued on a leader that lost and won leadership
    /// again) would set remaining TTLs older than keepalives committed in
    /// between. Within its term, every keepalive that may postdate it is
    /// proposed after it (`nines-server`'s `lease::ops`), so it never lands
    /// after a newer clearing. `LeaseCheckpoint` is what older logs hold.
    LeaseCheckpointOf {
        term: u64,
        list: Vec<LeaseRemaining>,
    },
}

/// A lease's remaining time to live, in seconds, as the leader saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRemaining {
    pub id: i64,
    pub remaining: i64,
}

/// What an etcd Put takes from the key's current version instead of the
/// request (`ignore_value`, `ignore_lease`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    pub value: bool,
    pub lease: bool,
}

impl Command {
    /// Whether no branch of it can change anything (a txn of reads only):
    /// the one kind of request whose copy, run again after its answer was
    /// given, cannot change what that answer told.
    pub fn is_read_only(&self) -> bool {
        match self {
            Command::Txn(txn) => txn.is_read_only(),
            _ => false,
        }
    }

    /// Whether applying it can add data to the store: what a full store
    /// refuses (etcd's quota: puts, and txns holding a put in either branch).
    /// Deletes and compactions free space, so they always pass.
    pub fn adds_data(&self) -> bool {
        match self {
            Command::Put { .. } | Command::PutKeeping { .. } => true,
            Command::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .any(|op| op.put_key().is_some()),
            Command::Batch(requests) => requests.iter().any(|r| r.command.adds_data()),
            Command::Delete { .. }
            | Command::DeleteRange { .. }
            | Command::Compact { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseCheckpoint(_)
            | Command::LeaseCheckpointOf { .. } => false,
            // Small, and an operator must be able to fix auth on a full store.
            Command::Auth(_) => false,
            // A lease record is small, but a full store must not grow
            // without bound (etcd's quota refuses LeaseGrant too).
            Command::LeaseGrant { .. } => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// What a compare looks at, with the operand. A missing key has version,
/// create_revision and mod_revision 0, and fails every value compare (etcd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        prev_kv: bool,
    },
    Delete {
        range: KeyRange,
        prev_kv: bool,
    },
    Get(RangeRequest),
    /// A put with etcd's `ignore_value`/`ignore_lease` (see `Command::PutKeeping`):
    /// the whole txn is refused if the key is missing when the op would run.
    PutKeeping {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
        keep: Keep,
    },
    /// A put attaching the key to `lease` (nonzero; it must exist, or the
    /// whole txn is refused).
    PutLeased {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
    },
    /// A range with etcd's sort and revision filters (etcd's concurrency
    /// Mutex and Election read the first key by create revision this way).
    GetWith(RangeRequest, RangeOptions),
}

impl TxnOp {
    /// The key this op writes, if it is a put.
    pub fn put_key(&self) -> Option<&[u8]> {
        match self {
            TxnOp::Put { key, .. }
            | TxnOp::PutKeeping { key, .. }
            | TxnOp::PutLeased { key, .. } => Some(key),
            TxnOp::Delete { .. } | TxnOp::Get(_) | TxnOp::GetWith(..) => None,
        }
    }
}

/// If every compare holds, run `success`, else `failure`; atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// Whether no branch holds anything but ranges.
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(|op| matches!(op, TxnOp::Get(_) | TxnOp::GetWith(..)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResponse {
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Get(RangeResponse),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    Empty,
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        succeeded: bool,
        responses: Vec<TxnOpResponse>,
    },
    /// The command was not applied; state is unchanged.
    Rejected(RejectReason),
    /// One response per request of a `Command::Batch`, in order.
    Batch(Vec<Response>),
    /// History at or below `revision` is dropped.
    Compacted {
        revision: i64,
    },
    LeaseGranted {
        id: i64,
        ttl: i64,
    },
    /// The lease is gone with the keys attached to it.
    LeaseRevoked {
        deleted: u64,
    },
    /// An auth change applied; the auth revision after it.
    AuthChanged {
        auth_revision: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The client already moved past this sequence number; its response is gone.
    StaleSequence {
        client_id: u64,
        seq: u64,
        last_seq: u64,
    },
    /// The command broke an input limit (defence in depth: the API checks first).
    InvalidInput(String),
    /// The session's last sequence number was used for a different request
    /// (two clients sharing an id, or a client that restarted its sequence).
    SessionSeqReused {
        client_id: u64,
        seq: u64,
    },
    /// A retry of a request applied at `revision` whose response was too
    /// large to keep for retries; the write itself is done.
    ResponseNotRetained {
        client_id: u64,
        seq: u64,
        revision: i64,
    },
    /// A sequence number above 1 from a client id the session table does not
    /// know: it expired or was evicted, so a retry could not be told apart
    /// from a new write. The client must start a new id at sequence 1.
    SessionUnknown {
        client_id: u64,
        seq: u64,
    },
    /// A compaction to a revision at or below the current compacted one.
    Compacted {
        requested: i64,
        compacted: i64,
    },
    /// A compaction to a revision the store has not reached.
    FutureRevision {
        requested: i64,
        current: i64,
    },
    /// A put that keeps the value or lease of a key that does not exist.
    KeyNotFound(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A put or revoke naming a lease that is not granted (etcd: "requested
    /// lease not found").
    LeaseNotFound(i64),
    /// A grant of an id already in use (etcd: "lease already exists").
    LeaseExists(i64),
    Auth(crate::AuthRejection),
}

/// The state machine's answer for one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The store revision after applying this entry.
    pub revision: i64,
    pub result: CommandResult,
}

/// Who answered a request and at which point in history: what every API
/// response carries (etcd's ResponseHeader).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft_term: u64,
    /// Store revision after the request (writes) or the one a read was served at.
    pub revision: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    /// Log entries are bincode: a variant's tag is its position, so a new
    /// variant must come last or old entries decode as something else.
    #[test]
    fn compact_is_appended_and_old_tags_are_unchanged() {
        let tag = |c: &Command| encode(c).unwrap()[0];
        let delete = Command::Delete {
            key: b"k".to_vec(),
            prev_kv: false,
        };
        assert_eq!(tag(&delete), 1);
        assert_eq!(tag(&Command::Txn(Txn::default())), 3);
        assert_eq!(tag(&Command::Batch(Vec::new())), 4);
        let compact = Command::Compact {
            revision: 7,
            physical: true,
        };
        assert_eq!(tag(&compact), 5);
        assert_eq!(
            decode::<Command>(&encode(&compact).unwrap()).unwrap(),
            compact
        );
        let rejected = CommandResult::Rejected(RejectReason::Compacted {
            requested: 3,
            compacted: 5,
        });
        assert_eq!(
            decode::<CommandResult>(&encode(&rejected).unwrap()).unwrap(),
            rejected
        );
    }

    #[test]
    fn only_writes_that_can_add_data_count_against_the_quota() {
        let put = TxnOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        };
        let del = TxnOp::Delete {
            range: KeyRange::Single(b"k".to_vec()),
            prev_kv: false,
        };
        let txn = |success: Vec<TxnOp>, failure: Vec<TxnOp>| {
            Command::Txn(Txn {
                compares: Vec::new(),
                success,
                failure,
            })
        };
        assert!(txn(vec![del.clone()], vec![put.clone()]).adds_data());
        assert!(!txn(vec![del.clone()], vec![del.clone()]).adds_data());
        let delete = Command::Delete {
            key: b"k".to_vec(),
            prev_kv: false,
        };
        assert!(!delete.adds_data());
        assert!(!Command::Compact {
            revision: 1,
            physical: false
        }
        .adds_data());
        let put = Command::Put {
            key: b"k".to_vec(),
            value: Vec::new(),
            lease: 0,
            prev_kv: false,
        };
        assert!(put.adds_data());
        let batch = |c: Command| Command::Batch(vec![Request::new(c)]);
        assert!(batch(put).adds_data());
        assert!(!batch(delete).adds_data());
    }
}
