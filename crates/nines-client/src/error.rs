use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}")]
    InvalidEndpoint(String),
    #[error("no endpoints configured")]
    NoEndpoints,
    #[error("TLS: {0}")]
    Tls(#[from] nines_tls::TlsError),
    /// The server answered with an error that retrying cannot fix.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// Retries ran out; the last error is attached. A write's outcome is unknown.
    #[error("gave up after {attempts} attempts: {}: {}", .last.code(), .last.message())]
    Exhausted { attempts: u32, last: tonic::Status },
    /// The lease does not exist: never granted, revoked, or expired
    /// (etcd's NOT_FOUND "requested lease not found", or a keepalive
    /// answered with TTL 0). `id` is 0 when the request named several.
    #[error("lease {id:016x} not found (etcdserver: requested lease not found)")]
    LeaseNotFound { id: i64 },
    /// The request ran, at `revision`, but a retry could not get its
    /// response back (too large to keep for retries). Do not send it again:
    /// a put or delete took effect; of a txn, which branch its compares
    /// chose is in the lost response, so read the keys to learn it.
    #[error("applied at revision {revision}; its response was too large to keep for the retry")]
    AppliedResponseLost { revision: i64 },
}

/// What a retried write's session refusal means to the caller. The server
/// answers FAILED_PRECONDITION for both cases, which reads as a definite
/// failure: a caller that sent such a write again applied it twice.
pub(crate) fn session_outcome(e: ClientError, attempts: u32) -> ClientError {
    let ClientError::Status(status) = &e else {
        return e;
    };
    if status.code() != Code::FailedPrecondition {
        return e;
    }
    let message = status.message();
    if let Some(rest) = message.split("already applied at revision ").nth(1) {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(revision) = digits.parse() {
            return ClientError::AppliedResponseLost { revision };
        }
    }
    // The server forgot the session; an earlier attempt may have been
    // applied before it did.
    if attempts > 1 && message.contains("session unknown") {
        let last = status.clone();
        return ClientError::Exhausted { attempts, last };
    }
    e
}

/// etcd's message for a lease it does not know (ErrGRPCLeaseNotFound).
pub(crate) const LEASE_NOT_FOUND: &str = "requested lease not found";

impl ClientError {
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status(s) => s.code(),
            ClientError::Exhausted { last, .. } => last.code(),
            ClientError::InvalidEndpoint(_) | ClientError::NoEndpoints | ClientError::Tls(_) => {
                Code::InvalidArgument
            }
            ClientError::LeaseNotFound { .. } => Code::NotFound,
            ClientError::AppliedResponseLost { .. } => Code::FailedPrecondition,
        }
    }

    /// This error as `LeaseNotFound { id }` when the server said the lease
    /// is unknown; otherwise unchanged.
    pub(crate) fn lease(self, id: i64) -> ClientError {
        match &self {
            ClientError::Status(s)
                if s.code() == Code::NotFound && s.message().contains(LEASE_NOT_FOUND) =>
            {
                ClientError::LeaseNotFound { id }
            }
            _ => self,
        }
    }

    /// True when a write may or may not have been applied.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ClientError::Exhausted { .. })
            || matches!(
                self.code(),
                Code::DeadlineExceeded | Code::Unavailable | Code::Unknown | Code::Cancelled
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_not_found_is_recognized_and_nothing_else() {
        let gone = tonic::Status::not_found("etcdserver: requested lease not found");
        let e = ClientError::Status(gone).lease(0x694d);
        assert!(matches!(e, ClientError::LeaseNotFound { id: 0x694d }));
        assert_eq!(e.code(), Code::NotFound);
        assert!(!e.is_indeterminate());
        assert_eq!(
            e.to_string(),
            "lease 000000000000694d not found (etcdserver: requested lease not found)"
        );
        let other = ClientError::Status(tonic::Status::not_found("member not found")).lease(1);
        assert!(matches!(other, ClientError::Status(_)));
        let busy = ClientError::Status(tonic::Status::unavailable(LEASE_NOT_FOUND)).lease(1);
        assert!(matches!(busy, ClientError::Status(_)));
    }

    /// The server's words for both refusals (`api/convert.rs`).
    #[test]
    fn session_refusals_of_a_retried_write_do_not_read_as_failures() {
        let refused = |m: &str| ClientError::Status(tonic::Status::failed_precondition(m));
        let kept = "client 1f sequence 4 was already applied at revision 812; \
                    its response was too large to keep for retries";
        let e = session_outcome(refused(kept), 2);
        assert!(matches!(
            e,
            ClientError::AppliedResponseLost { revision: 812 }
        ));
        assert!(!e.is_indeterminate());
        let forgot = "session unknown or expired: client 1f sequence 4 was not applied now; \
                      if it was sent before, it may have been applied then";
        assert!(session_outcome(refused(forgot), 3).is_indeterminate());
        // Sent once and refused: it was not applied.
        assert!(!session_outcome(refused(forgot), 1).is_indeterminate());
        let other = session_outcome(refused("etcdserver: key not found"), 3);
        assert!(matches!(other, ClientError::Status(_)));
    }
}
