//! Carries a call's identity to the code that checks it and to the calls
//! it forwards: a tower layer runs each request within a task-local
//! holding its `token` metadata and the CN of its client certificate, and
//! `api::forward` passes the identity on, so the leader checks the same
//! credentials (a forwarded mark alone proves nothing on a client port).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;

use crate::incoming::ConnInfo;

/// Who the client of the call being served says it is.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub token: Option<String>,
    /// The verified client certificate's subject CN: the user of a call
    /// without a token (etcd's rule with `--client-cert-auth`). Absent on
    /// a forwarded call: that connection's certificate is the forwarding
    /// member's, not the client's (the member passes the client's
    /// identity on as a token instead, see `api::forward`).
    pub cert_user: Option<Arc<str>>,
}

tokio::task_local! {
    static IDENTITY: Identity;
}

/// The identity of the call being served (empty outside one).
pub fn current_identity() -> Identity {
    IDENTITY.try_with(Identity::clone).unwrap_or_default()
}

/// Runs `task` (spawned by a call, so outside its scope) with the call's
/// identity, for the calls it forwards.
pub fn with_identity<F: Future>(identity: Identity, task: F) -> impl Future<Output = F::Output> {
    IDENTITY.scope(identity, task)
}

#[derive(Clone, Default)]
pub struct TokenScopeLayer;

impl<S> tower_layer::Layer<S> for TokenScopeLayer {
    type Service = TokenScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenScope { inner }
    }
}

#[derive(Clone)]
pub struct TokenScope<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for TokenScope<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let token = request
            .headers()
            .get(super::TOKEN_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|t| t.len() <= super::token::MAX_TOKEN_BYTES)
            .map(str::to_string);
        // A client that marks its own call forwarded only gives up its CN.
        let forwarded = request
            .headers()
            .contains_key(crate::api::forward::FORWARDED_HEADER);
        let cert_user = request
            .extensions()
            .get::<ConnInfo>()
            .and_then(|info| info.cert_cn.clone())
            .filter(|_| !forwarded);
        let call = self.inner.call(request);
        Box::pin(IDENTITY.scope(Identity { token, cert_user }, call))
    }
}
