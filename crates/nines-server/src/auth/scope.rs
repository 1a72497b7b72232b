//! Carries a call's token to the calls it forwards: a tower layer runs
//! each request within a task-local holding its `token` metadata, and
//! `api::forward` copies it onto the forwarded call, so the leader checks
//! the same credentials (a forwarded mark alone proves nothing on a
//! client port).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;

tokio::task_local! {
    static TOKEN: Option<String>;
}

/// The token of the call being served, if it had one.
pub fn current_token() -> Option<String> {
    TOKEN.try_with(|t| t.clone()).ok().flatten()
}

/// Runs `task` (spawned by a call, so outside its scope) with the call's
/// token, for the calls it forwards.
pub fn with_token<F: Future>(token: Option<String>, task: F) -> impl Future<Output = F::Output> {
    TOKEN.scope(token, task)
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
        let call = self.inner.call(request);
        Box::pin(TOKEN.scope(token, call))
    }
}
