//! Errors: `ServerError` for start-up, `ApiError` for requests, and the one
//! place where request errors become gRPC statuses.

use std::path::PathBuf;

use nines_types::{InputError, Node, NodeId};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {0} is locked by another nines-server process")]
    Locked(PathBuf),
    #[error("data dir {path} belongs to {what}; refusing to start")]
    Mismatch { path: PathBuf, what: String },
    #[error("raft log: {0}")]
    Log(#[from] nines_log::LogError),
    #[error("state machine: {0}")]
    State(#[from] nines_state::StateError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("join failed: {0}")]
    Join(String),
    #[error("TLS: {0}")]
    Tls(#[from] nines_tls::TlsError),
}

pub const ETCD_FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
pub const ETCD_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// etcd's message for the input errors it has too (its clients match them
/// exactly, as for the revision errors); nines' own wording otherwise.
fn etcd_input_message(e: &InputError) -> String {
    match e {
        InputError::EmptyKey => "etcdserver: key is not provided".into(),
        InputError::TooManyTxnOps { .. } => "etcdserver: too many operations in txn request".into(),
        InputError::DuplicateKeyInTxn(_) => "etcdserver: duplicate key given in txn request".into(),
        InputError::ValueProvided => "etcdserver: value is provided".into(),
        InputError::LeaseProvided => "etcdserver: lease is provided".into(),
        InputError::RequestTooLarge { .. } => "etcdserver: request is too large".into(),
        other => other.to_string(),
    }
}

/// etcd's ErrGRPCKeyNotFound: a put keeping the value or lease of a missing key.
pub const ETCD_KEY_NOT_FOUND: &str = "etcdserver: key not found";

pub const LEADER_ID_HEADER: &str = "x-nines-leader-id";
pub const LEADER_ADDR_HEADER: &str = "x-nines-leader-addr";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", etcd_input_message(.0))]
    InvalidInput(#[from] InputError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no leader is known; the cluster may be electing one")]
    NoLeader,
    /// Only returned for requests that were already forwarded once, so that a
    /// stale leader view cannot bounce a request around the cluster.
    #[error("node {me} is not the leader; leader is {leader_id}")]
    NotLeader {
        me: NodeId,
        leader_id: NodeId,
        leader: Node,
    },
    #[error("the leader has lost contact with a quorum")]
    QuorumLost,
    #[error("timed out after {0:?}; the outcome of a write is unknown")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Precondition(String),
    /// A read asked for a revision outside the store's history.
    #[error("{0}")]
    OutOfRange(String),
    #[error("node is shutting down")]
    ShuttingDown,
    /// The store holds more than --quota-backend-bytes: writes that add
    /// data wait for compaction or deletes to free some.
    #[error(
        "mvcc: database space exceeded: the store holds {used} bytes, over the quota of {quota} \
         (--quota-backend-bytes); reads, deletes and compactions still work, and writes \
         resume by themselves once compaction or deletes bring it under"
    )]
    NoSpace { used: u64, quota: u64 },
    /// A membership change the rules refuse.
    #[error("{0}")]
    Membership(#[from] crate::membership::MembershipError),
    /// The leader's answer to a forwarded call, or the transport's failure.
    #[error("forwarding to the leader failed: {0}")]
    Forward(Status),
    /// A forwarded call abandoned because another member became leader.
    #[error("the leader changed while the request was forwarded; retry")]
    LeaderChanged { leader: Option<(NodeId, Node)> },
    /// A client call on the peer port that no member forwarded.
    #[error("{0}")]
    NotForwarded(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// etcd's ErrGRPCLeaseNotFound.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// etcd's ErrGRPCLeaseExist.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// etcd's ErrGRPCUserEmpty: auth is on and the call carries no token.
    #[error("etcdserver: user name is empty")]
    AuthUserEmpty,
    /// etcd's ErrGRPCInvalidAuthToken: a token that is forged, expired, or
    /// names a user that is gone.
    #[error("etcdserver: invalid auth token")]
    AuthInvalidToken,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// An auth change refused by the rules (etcd's messages).
    #[error("{0}")]
    Auth(nines_types::AuthRejection),
    /// etcd's ErrGRPCLeaseTTLTooLarge.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A read whose answer would be more than a response may hold
    /// (etcd fails the same read when it sends it).
    #[error("{0}")]
    ResultTooLarge(String),
}

impl From<nines_state::StateError> for ApiError {
    /// What a read's failure tells the client.
    fn from(e: nines_state::StateError) -> ApiError {
        use nines_state::StateError as S;
        match e {
            // etcd's exact messages: its Go client turns a status into
            // ErrFutureRev or ErrCompacted only on an exact match, and
            // callers (Kubernetes' storage layer) test for those.
            S::FutureRevision { .. } => ApiError::OutOfRange(ETCD_FUTURE_REV.into()),
            S::Compacted { .. } => ApiError::OutOfRange(ETCD_COMPACTED.into()),
            S::InvalidInput(input) => ApiError::InvalidInput(input),
            e @ S::ResultTooLarge { .. } => ApiError::ResultTooLarge(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        let message = err.to_string();
        match err {
            ApiError::InvalidInput(_) | ApiError::InvalidRequest(_) => {
                Status::invalid_argument(message)
            }
            ApiError::Precondition(_) => Status::failed_precondition(message),
            ApiError::Membership(e) => {
                use crate::membership::MembershipError as M;
                match e {
                    M::InvalidRequest(_) => Status::invalid_argument(message),
                    // etcd's ErrGRPCMemberNotFound.
                    M::NotMember(_) => Status::not_found(message),
                    _ => Status::failed_precondition(message),
                }
            }
            ApiError::OutOfRange(_) => Status::out_of_range(message),
            ApiError::NoSpace { .. } | ApiError::ResultTooLarge(_) => {
                Status::resource_exhausted(message)
            }
            ApiError::Timeout(_) => Status::deadline_exceeded(message),
            // Statuses from the leader pass through unchanged; transport
            // failures become UNAVAILABLE so clients retry elsewhere.
            ApiError::Forward(status) => match status.code() {
                Code::Unknown | Code::Cancelled => {
                    Status::unavailable(status.message().to_string())
                }
                _ => status,
            },
            ApiError::LeaderChanged { leader } => {
                unavailable_with_leader(message, leader.as_ref().map(|(id, n)| (*id, n)))
            }
            ApiError::NotForwarded(_) => Status::permission_denied(message),
            ApiError::Internal(_) => Status::internal(message),
            ApiError::LeaseNotFound => Status::not_found(message),
            ApiError::LeaseExists => Status::failed_precondition(message),
            ApiError::LeaseTtlTooLarge => Status::out_of_range(message),
            ApiError::AuthUserEmpty | ApiError::AuthFailed => Status::invalid_argument(message),
            ApiError::AuthInvalidToken => Status::unauthenticated(message),
            ApiError::PermissionDenied => Status::permission_denied(message),
            ApiError::AuthNotEnabled => Status::failed_precondition(message),
            ApiError::Auth(reason) => {
                use nines_types::AuthRejection as R;
                match reason {
                    R::UserEmpty | R::RoleEmpty => Status::invalid_argument(message),
                    R::TooManyPermissions | R::TooManyRoles => Status::resource_exhausted(message),
                    _ => Status::failed_precondition(message),
                }
            }
            ApiError::NotLeader {
                leader_id, leader, ..
            } => unavailable_with_leader(message, Some((leader_id, &leader))),
            ApiError::NoLeader | ApiError::QuorumLost | ApiError::ShuttingDown => {
                unavailable_with_leader(message, None)
            }
        }
    }
}

/// UNAVAILABLE, with the leader in the metadata when known, so a client can
/// redirect without another round trip.
pub fn unavailable_with_leader(message: String, leader: Option<(NodeId, &Node)>) -> Status {
    let mut status = Status::new(Code::Unavailable, message);
    if let Some((id, node)) = leader {
        if let Ok(v) = MetadataValue::try_from(id.to_string()) {
            status.metadata_mut().insert(LEADER_ID_HEADER, v);
        }
        // Only a client address: the peer port serves members, not clients.
        if let Ok(v) = MetadataValue::try_from(node.api_addr.as_str()) {
            if !node.api_addr.is_empty() {
                status.metadata_mut().insert(LEADER_ADDR_HEADER, v);
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_codes() {
        let s: Status = ApiError::InvalidInput(InputError::EmptyKey).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let s: Status = ApiError::NotLeader {
            me: 1,
            leader_id: 2,
            leader: Node::new("p:1", "c:2"),
        }
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(LEADER_ADDR_HEADER).unwrap(), "c:2");
        let s: Status = ApiError::Timeout(std::time::Duration::from_secs(1)).into();
        assert_eq!(s.code(), Code::DeadlineExceeded);
        let s: Status = ApiError::Precondition("x".into()).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s: Status = ApiError::from(nines_state::StateError::FutureRevision {
            requested: 9,
            current: 3,
        })
        .into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        let s: Status = ApiError::from(nines_state::StateError::Compacted {
            requested: 3,
            compacted: 9,
        })
        .into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s: Status = ApiError::InvalidInput(InputError::EmptyKey).into();
        assert_eq!(s.message(), "etcdserver: key is not provided");
        use crate::membership::MembershipError as M;
        let s: Status = ApiError::from(M::NotMember(7)).into();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().starts_with("etcdserver: member not found"));
        let s: Status = ApiError::from(M::InvalidRequest("bad".into())).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let s: Status = ApiError::from(M::NotInSync {
            id: 4,
            matched: "nothing".into(),
            leader: 9,
        })
        .into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().starts_with(
            "etcdserver: can only promote a learner member which is in sync with leader"
        ));
        let s: Status = ApiError::NoSpace {
            used: 11,
            quota: 10,
        }
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().starts_with("mvcc: database space exceeded"));
    }

    #[test]
    fn forwarding_failures_map_in_one_place() {
        // A transport failure on the way to the leader: retry elsewhere.
        let s: Status = ApiError::Forward(Status::unknown("h2 reset")).into();
        assert_eq!(s.code(), Code::Unavailable);
        let s: Status = ApiError::Forward(Status::cancelled("gone")).into();
        assert_eq!(s.code(), Code::Unavailable);
        // The leader's own answer passes through.
        let s: Status = ApiError::Forward(Status::out_of_range("compacted")).into();
        assert_eq!((s.code(), s.message()), (Code::OutOfRange, "compacted"));
        let s: Status = ApiError::LeaderChanged {
            leader: Some((3, Node::new("p:3", "c:3"))),
        }
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(LEADER_ADDR_HEADER).unwrap(), "c:3");
        let s: Status = ApiError::LeaderChanged { leader: None }.into();
        assert!(s.metadata().get(LEADER_ADDR_HEADER).is_none());
        let s: Status = ApiError::NotForwarded("members only".into()).into();
        assert_eq!(s.code(), Code::PermissionDenied);
    }
}
