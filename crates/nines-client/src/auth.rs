//! User/password auth, as etcd's clientv3 does it: Authenticate once, send
//! the token in the `token` metadata of every call (unary and streams),
//! and when a member refuses it (expired, or the secret changed with an
//! auth disable/enable), Authenticate again and retry the call once.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::endpoints::Endpoints;
use crate::error::ClientError;
use crate::proto::{self as pb, auth_client::AuthClient};

/// etcd's metadata key for the token.
pub const TOKEN_METADATA: &str = "token";

/// A user name and password (etcdctl's `--user name:password`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // The password stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The token in use, shared by every channel's interceptor.
#[derive(Default)]
pub(crate) struct TokenCell {
    /// `None` before the first Authenticate, and when auth is off.
    token: RwLock<Option<Arc<str>>>,
}

impl TokenCell {
    fn get(&self) -> Option<Arc<str>> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, token: Option<Arc<str>>) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }
}

/// Adds the current token to every request on a channel.
#[derive(Clone)]
pub struct TokenInterceptor {
    cell: Option<Arc<TokenCell>>,
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let token = self.cell.as_ref().and_then(|c| c.get());
        if let Some(token) = token {
            // A token the server made is ASCII; anything else is not sent.
            if let Ok(value) = MetadataValue::try_from(&*token) {
                request.metadata_mut().insert(TOKEN_METADATA, value);
            }
        }
        Ok(request)
    }
}

/// A channel whose requests carry the client's token.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, TokenInterceptor>;

/// True when the server refused the call for its token: expired, forged,
/// or missing (auth was enabled after this client connected). etcd's
/// clientv3 retries these after a fresh Authenticate.
pub(crate) fn token_refused(status: &Status) -> bool {
    match status.code() {
        Code::Unauthenticated => status.message().contains("invalid auth token"),
        Code::InvalidArgument => status.message().contains("user name is empty"),
        _ => false,
    }
}

/// Authenticate answers that another member may not give.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// The client's credentials and token.
pub(crate) struct Auth {
    credentials: Option<Credentials>,
    cell: Arc<TokenCell>,
    /// One Authenticate at a time: callers that find the token refused
    /// together wait for the same new one.
    login: tokio::sync::Mutex<LoginState>,
}

#[derive(Default)]
struct LoginState {
    /// Bumped by every Authenticate, so a caller holding a token that was
    /// already replaced does not log in again.
    generation: u64,
    /// Authenticate ran, whatever it answered (auth off gives no token).
    done: bool,
}

impl Auth {
    pub(crate) fn new(credentials: Option<Credentials>) -> Auth {
        Auth {
            credentials,
            cell: Arc::new(TokenCell::default()),
            login: tokio::sync::Mutex::new(LoginState::default()),
        }
    }

    pub(crate) fn interceptor(&self) -> TokenInterceptor {
        TokenInterceptor {
            cell: self.credentials.as_ref().map(|_| self.cell.clone()),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.credentials.is_some()
    }

    /// The generation of the token in use, after the first Authenticate
    /// (a no-op without credentials). Pass it to `refresh` when that token
    /// is refused.
    pub(crate) async fn ready(
        &self,
        endpoints: &Endpoints,
        timeout: Duration,
        deadline: Duration,
    ) -> Result<u64, ClientError> {
        let Some(credentials) = &self.credentials else {
            return Ok(0);
        };
        let mut state = self.login.lock().await;
        if !state.done {
            self.login_now(&mut state, credentials, endpoints, timeout, deadline)
                .await?;
        }
        Ok(state.generation)
    }

    /// Authenticates again unless another caller already did since the
    /// token of `generation` was handed out.
    pub(crate) async fn refresh(
        &self,
        generation: u64,
        endpoints: &Endpoints,
        timeout: Duration,
        deadline: Duration,
    ) -> Result<(), ClientError> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let mut state = self.login.lock().await;
        if state.generation != generation && state.done {
            return Ok(());
        }
        self.login_now(&mut state, credentials, endpoints, timeout, deadline)
            .await
    }

    async fn login_now(
        &self,
        state: &mut LoginState,
        credentials: &Credentials,
        endpoints: &Endpoints,
        timeout: Duration,
        deadline: Duration,
    ) -> Result<(), ClientError> {
        let token = authenticate(credentials, endpoints, timeout, deadline).await?;
        self.cell.set(token.map(Arc::from));
        state.generation += 1;
        state.done = true;
        Ok(())
    }
}

/// Authenticate on the leader if known, else on each endpoint in turn
/// (any member forwards it). Auth being off is no error (etcd's clientv3
/// connects without a token then): `None`.
async fn authenticate(
    credentials: &Credentials,
    endpoints: &Endpoints,
    timeout: Duration,
    deadline: Duration,
) -> Result<Option<String>, ClientError> {
    let give_up = Instant::now() + deadline;
    let mut attempt = 0u32;
    loop {
        let endpoint = endpoints.get(endpoints.for_leader(attempt));
        let mut request = tonic::Request::new(pb::AuthenticateRequest {
            name: credentials.user.clone(),
            password: credentials.password.clone(),
        });
        request.set_timeout(timeout);
        // The raw channel: a stale token must not ride along.
        let status = match AuthClient::new(endpoint.raw.clone())
            .authenticate(request)
            .await
        {
            Ok(resp) => return Ok(Some(resp.into_inner().token)),
            Err(s) if s.code() == Code::FailedPrecondition && not_enabled(&s) => return Ok(None),
            Err(s) if transient(&s) => s,
            Err(s) => return Err(ClientError::Status(s)),
        };
        attempt += 1;
        if Instant::now() >= give_up {
            return Err(ClientError::Exhausted {
                attempts: attempt,
                last: status,
            });
        }
        tokio::time::sleep(Duration::from_millis((20u64 << attempt.min(4)).min(300))).await;
    }
}

fn not_enabled(status: &Status) -> bool {
    status.message().contains("authentication is not enabled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_token_refusals_trigger_a_new_login() {
        assert!(token_refused(&Status::unauthenticated(
            "etcdserver: invalid auth token"
        )));
        assert!(token_refused(&Status::invalid_argument(
            "etcdserver: user name is empty"
        )));
        assert!(!token_refused(&Status::permission_denied(
            "etcdserver: permission denied"
        )));
        assert!(!token_refused(&Status::invalid_argument(
            "etcdserver: key is not provided"
        )));
        assert!(!token_refused(&Status::unauthenticated("something else")));
    }

    #[test]
    fn the_interceptor_sends_the_token_only_when_there_is_one() {
        let auth = Auth::new(Some(Credentials {
            user: "u".into(),
            password: "p".into(),
        }));
        let mut interceptor = auth.interceptor();
        let request = interceptor.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get(TOKEN_METADATA).is_none());
        auth.cell.set(Some(Arc::from("u.123.sig")));
        let request = interceptor.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get(TOKEN_METADATA).unwrap(), "u.123.sig");
        // A token that is not a header value is dropped, not a panic.
        auth.cell.set(Some(Arc::from("bad\nvalue")));
        let request = interceptor.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get(TOKEN_METADATA).is_none());
        let debug = format!(
            "{:?}",
            Credentials {
                user: "u".into(),
                password: "secret".into()
            }
        );
        assert!(!debug.contains("secret"));
    }
}
