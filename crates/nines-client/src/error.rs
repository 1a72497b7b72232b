use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}")]
    InvalidEndpoint(String),
    #[error("no endpoints configured")]
    NoEndpoints,
    /// The server answered with an error that retrying cannot fix.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// Retries ran out; the last error is attached. A write's outcome is unknown.
    #[error("gave up after {attempts} attempts: {}: {}", .last.code(), .last.message())]
    Exhausted { attempts: u32, last: tonic::Status },
}

impl ClientError {
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status(s) => s.code(),
            ClientError::Exhausted { last, .. } => last.code(),
            ClientError::InvalidEndpoint(_) | ClientError::NoEndpoints => Code::InvalidArgument,
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
