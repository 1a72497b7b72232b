//! Bounds local reads: scans run on blocking threads, a few at a time
//! (one-key reads inline), and the bytes of their results are counted until the response has been
//! sent. Before, 500 concurrent 4 MiB reads ran on the async workers at once
//! and took a follower to 2 GB RSS.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Bytes, Service};
use tonic::server::NamedService;
use tonic::Status;

use crate::error::ApiError;
use crate::metrics::Counters;

/// Byte permits are KiB, so any sane limit fits the semaphore's u32 requests.
const UNIT: u64 = 1024;
/// Response data is handed to HTTP/2 in pieces of this size. hyper asks for
/// the next piece only when the stream has send capacity, so the result
/// stays counted until nearly all of it is on the wire; as one 4 MiB frame
/// it sat in h2's buffers after the body (and its count) was gone, and 500
/// such reads took the server to 1.1 GiB RSS.
const CHUNK: usize = 64 * 1024;

pub struct ReadLimiter {
    executions: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    capacity_units: u32,
    timeout: Duration,
    counters: Arc<Counters>,
}

/// Result bytes counted against the limit until dropped.
pub struct HeldBytes {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    counters: Arc<Counters>,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.counters
            .read_bytes_in_flight
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Undoes the executing gauge however the execution ends.
struct Executing<'a>(&'a Counters);

impl Drop for Executing<'_> {
    fn drop(&mut self) {
        self.0.reads_executing.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadLimiter {
    /// `timeout` bounds the wait for both limits.
    pub fn new(
        max_executions: usize,
        max_bytes: u64,
        timeout: Duration,
        counters: Arc<Counters>,
    ) -> ReadLimiter {
        let capacity_units = (max_bytes / UNIT).clamp(1, u32::MAX as u64) as u32;
        ReadLimiter {
            executions: Arc::new(Semaphore::new(max_executions.max(1))),
            bytes: Arc::new(Semaphore::new(capacity_units as usize)),
            capacity_units,
            timeout,
            counters,
        }
    }

    fn exhausted(&self, what: &str) -> Status {
        Counters::inc(&self.counters.reads_rejected);
        Status::resource_exhausted(format!(
            "read capacity exhausted: waited {:?} for {what}; retry later",
            self.timeout
        ))
    }

    /// Runs `read` on a blocking thread once an execution slot is free, then
    /// waits until its result (`size` bytes) fits the bytes in flight. The
    /// execution slot is held meanwhile, so waiting results stay bounded too.
    pub async fn run<T, F, E>(
        &self,
        read: F,
        size: impl FnOnce(&T) -> u64,
    ) -> Result<(T, HeldBytes), Status>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Into<Status> + Send + 'static,
    {
        let deadline = Instant::now() + self.timeout;
        let slot = tokio::time::timeout_at(deadline, self.executions.clone().acquire_owned())
            .await
            .map_err(|_| self.exhausted("a read slot"))?
            .map_err(|_| Status::from(ApiError::ShuttingDown))?;
        self.counters
            .reads_executing
            .fetch_add(1, Ordering::Relaxed);
        let executing = Executing(&self.counters);
        let result = tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| Status::from(ApiError::Internal(format!("read task: {e}"))))?
            .map_err(Into::<Status>::into)?;
        drop(executing);
        let held = self.hold(size(&result), deadline).await?;
        drop(slot);
        Ok((result, held))
    }

    /// Runs a one-key read on the calling task: an index lookup and one
    /// engine get, too short to be worth a blocking-thread handoff: with
    /// the handoff, `nines bench --workload get` (64 clients, 10,000 keys,
    /// 3 local nodes) made 9,284 ops/s; inline, 17,375. Its bytes are still
    /// counted until the response is sent.
    pub async fn run_point<T, E>(
        &self,
        read: impl FnOnce() -> Result<T, E>,
        size: impl FnOnce(&T) -> u64,
    ) -> Result<(T, HeldBytes), Status>
    where
        E: Into<Status>,
    {
        let deadline = Instant::now() + self.timeout;
        let result = read().map_err(Into::<Status>::into)?;
        let held = self.hold(size(&result), deadline).await?;
        Ok((result, held))
    }

    /// Waits until `bytes` of results fit the bytes in flight.
    async fn hold(&self, bytes: u64, deadline: Instant) -> Result<HeldBytes, Status> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.capacity_units as u64) as u32;
        let permit =
            tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(units))
                .await
                .map_err(|_| self.exhausted("bytes in flight"))?
                .map_err(|_| Status::from(ApiError::ShuttingDown))?;
        self.counters
            .read_bytes_in_flight
            .fetch_add(bytes, Ordering::Relaxed);
        Ok(HeldBytes {
            _permit: permit,
            bytes,
            counters: self.counters.clone(),
        })
    }
}

/// Carries `HeldBytes` from a handler, through the response extensions
/// (which must be `Clone`), to [`HoldUntilSent`].
#[derive(Clone)]
pub struct HeldExtension(Arc<Mutex<Option<HeldBytes>>>);

/// Attaches `held` to `response`, to be released once its body is sent.
pub fn attach<T>(response: &mut tonic::Response<T>, held: HeldBytes) {
    response
        .extensions_mut()
        .insert(HeldExtension(Arc::new(Mutex::new(Some(held)))));
}

/// Wraps a gRPC service so that bytes attached with [`attach`] stay counted
/// until the response body is sent or dropped, not only until the handler
/// returns: a slow reader otherwise holds its result unbounded.
#[derive(Clone)]
pub struct HoldUntilSent<S> {
    pub inner: S,
}

impl<S: NamedService> NamedService for HoldUntilSent<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for HoldUntilSent<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let held = response
                .extensions_mut()
                .remove::<HeldExtension>()
                .and_then(|h| h.0.lock().unwrap_or_else(|p| p.into_inner()).take());
            Ok(match held {
                Some(held) => response.map(|inner| {
                    Body::new(HoldingBody {
                        inner,
                        rest: Bytes::new(),
                        _held: held,
                    })
                }),
                None => response,
            })
        })
    }
}

struct HoldingBody {
    inner: Body,
    /// Data of the current frame not yet handed on.
    rest: Bytes,
    _held: HeldBytes,
}

impl http_body::Body for HoldingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            let n = CHUNK.min(this.rest.len());
            return Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() > CHUNK {
                        this.rest = data.split_off(CHUNK);
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(executions: usize, bytes: u64) -> ReadLimiter {
        ReadLimiter::new(
            executions,
            bytes,
            Duration::from_millis(200),
            Arc::new(Counters::default()),
        )
    }

    #[tokio::test]
    async fn bytes_stay_held_until_dropped() {
        let l = limiter(4, 8 * UNIT);
        let (_, held) = l
            .run(
                || Ok::<_, ApiError>(vec![0u8; 6 * 1024]),
                |v| v.len() as u64,
            )
            .await
            .unwrap();
        assert_eq!(
            l.counters.read_bytes_in_flight.load(Ordering::Relaxed),
            6 * 1024
        );
        // 6 of 8 KiB are held: a second 6 KiB result must wait, then give up.
        let second = l
            .run(
                || Ok::<_, ApiError>(vec![0u8; 6 * 1024]),
                |v| v.len() as u64,
            )
            .await;
        assert_eq!(second.err().unwrap().code(), tonic::Code::ResourceExhausted);
        assert_eq!(l.counters.reads_rejected.load(Ordering::Relaxed), 1);
        drop(held);
        assert_eq!(l.counters.read_bytes_in_flight.load(Ordering::Relaxed), 0);
        assert!(l
            .run(
                || Ok::<_, ApiError>(vec![0u8; 6 * 1024]),
                |v| v.len() as u64
            )
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn results_larger_than_the_limit_still_pass_alone() {
        let l = limiter(1, 4 * UNIT);
        let (v, _held) = l
            .run(
                || Ok::<_, ApiError>(vec![1u8; 64 * 1024]),
                |v| v.len() as u64,
            )
            .await
            .unwrap();
        assert_eq!(v.len(), 64 * 1024);
        assert_eq!(l.counters.reads_executing.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn read_errors_keep_their_status() {
        let l = limiter(1, 4 * UNIT);
        let e = l
            .run(
                || Err::<Vec<u8>, _>(ApiError::Internal("disk on fire".into())),
                |v| v.len() as u64,
            )
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert_eq!(l.counters.reads_executing.load(Ordering::Relaxed), 0);
    }

    /// One-key reads skip the execution slots but not the byte count: they
    /// run while every slot is taken, and wait for bytes like scans do.
    #[tokio::test]
    async fn point_reads_share_the_byte_limit_but_not_the_slots() {
        let l = limiter(1, 8 * UNIT);
        let _slot = l.executions.clone().acquire_owned().await.unwrap();
        let (_, held) = l
            .run_point(
                || Ok::<_, ApiError>(vec![0u8; 6 * 1024]),
                |v| v.len() as u64,
            )
            .await
            .unwrap();
        assert_eq!(
            l.counters.read_bytes_in_flight.load(Ordering::Relaxed),
            6 * 1024
        );
        let second = l
            .run_point(
                || Ok::<_, ApiError>(vec![0u8; 6 * 1024]),
                |v| v.len() as u64,
            )
            .await;
        assert_eq!(second.err().unwrap().code(), tonic::Code::ResourceExhausted);
        drop(held);
        assert_eq!(l.counters.read_bytes_in_flight.load(Ordering::Relaxed), 0);
    }
}
