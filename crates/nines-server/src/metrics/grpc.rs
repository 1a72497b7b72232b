//! Request durations of the client gRPC server by method and status code,
//! as a tower layer around every service on the port.
//!
//! The method label is the call's path when it names a method nines
//! serves (read from the descriptor sets nines-proto embeds, plus the
//! health service), "other" otherwise: a client cannot grow the label set
//! by sending made-up paths. The code is the `grpc-status` of the response
//! headers: a handler's error (tonic sends it in the headers) or OK (sent
//! in the trailers, after the body).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prost::Message;
use tonic::codegen::http;
use tonic::Code;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub code: &'static str,
}

type Requests = Family<RequestLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct RequestMetricsLayer {
    requests: Requests,
    methods: Arc<HashSet<&'static str>>,
}

impl RequestMetricsLayer {
    pub fn new(requests: Requests) -> Self {
        RequestMetricsLayer {
            requests,
            methods: Arc::new(known_methods()),
        }
    }
}

/// "/package.Service/Method" of every method nines serves. Leaked once per
/// server start (a few dozen short strings) so labels are `&'static str`
/// and a request allocates nothing for its label.
fn known_methods() -> HashSet<&'static str> {
    let mut paths = vec![
        "/grpc.health.v1.Health/Check".to_string(),
        "/grpc.health.v1.Health/Watch".to_string(),
    ];
    for set in [
        nines_proto::FILE_DESCRIPTOR_SET,
        nines_proto::ETCD_FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package().to_string();
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
    }
    paths
        .into_iter()
        .map(|p| &*Box::leak(p.into_boxed_str()))
        .collect()
}

impl<S> tower_layer::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    layer: RequestMetricsLayer,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for RequestMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self
            .layer
            .methods
            .get(request.uri().path())
            .copied()
            .unwrap_or("other");
        let requests = self.layer.requests.clone();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let code = match &answer {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                    .map_or("OK", |c| code_name(Code::from_i32(c))),
                // The transport failed the call: no status reached the client.
                Err(_) => "TRANSPORT",
            };
            requests
                .get_or_create(&RequestLabels { method, code })
                .observe(started.elapsed().as_secs_f64());
            answer
        })
    }
}

/// gRPC's canonical code names, as in its status-code documentation.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_known_and_made_up_ones_are_not() {
        let methods = known_methods();
        assert!(methods.contains("/etcdserverpb.KV/Put"), "{methods:?}");
        assert!(methods.contains("/etcdserverpb.Maintenance/Status"));
        assert!(methods.contains("/nines.v1.Admin/RaftStatus"));
        assert!(methods.contains("/grpc.health.v1.Health/Check"));
        assert!(!methods.contains("/etcdserverpb.KV/Nope"));
    }
}
