//! A budget on the message lengths that requests declare but have not yet
//! sent, over a whole gRPC port.
//!
//! tonic reserves a buffer of the length a message's 5-byte header claims
//! (up to the port's message limit: 64 MiB between members) as soon as it
//! reads the header, before any byte of the message arrives. A client that
//! opens many streams and sends only headers made the server reserve 64 MiB
//! per stream: 1,024 streams on each of 64 connections is 4 TiB, and one
//! mapping each, past the kernel's map count, where an allocation fails and
//! the process aborts. Here each message is charged to the port's budget
//! from its header until its last byte arrives (or its stream ends); a
//! header that does not fit fails its stream with RESOURCE_EXHAUSTED before
//! tonic sees it. Honest traffic is far below the budget: a member sends
//! one append at a time per follower.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::{http, Bytes};
use tonic::Status;

/// The bytes a port's requests may have declared and not yet delivered.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    fn charge(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes charged now (tests, diagnostics).
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// The tower layer: every request body on the port is metered.
#[derive(Clone)]
pub struct DeclaredLayer {
    budget: Arc<Budget>,
}

impl DeclaredLayer {
    pub fn new(budget: Arc<Budget>) -> Self {
        DeclaredLayer { budget }
    }
}

impl<S> tower_layer::Layer<S> for DeclaredLayer {
    type Service = Declared<S>;

    fn layer(&self, inner: S) -> Declared<S> {
        Declared {
            inner,
            budget: self.budget.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Declared<S> {
    inner: S,
    budget: Arc<Budget>,
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for Declared<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let budget = self.budget.clone();
        let request = request.map(|body| tonic::body::Body::new(Metered::new(body, budget)));
        Box::pin(self.inner.call(request))
    }
}

/// A request body whose gRPC message headers are read as they pass, each
/// message charged to the budget until it has arrived.
pub struct Metered<B> {
    inner: B,
    budget: Arc<Budget>,
    /// The header being read, and how much of it has come.
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    /// Charged for the current message.
    held: u64,
}

impl<B> Metered<B> {
    pub fn new(inner: B, budget: Arc<Budget>) -> Self {
        Metered {
            inner,
            budget,
            header: [0; 5],
            have: 0,
            remaining: 0,
            held: 0,
        }
    }

    /// Follows the message framing through `data`; false if a header
    /// declares more than the budget has left.
    fn follow(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = data.len().min(self.remaining as usize);
                self.remaining -= take as u64;
                data = &data[take..];
                if self.remaining == 0 {
                    self.budget.release(std::mem::take(&mut self.held));
                }
                continue;
            }
            let take = data.len().min(5 - self.have);
            self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have < 5 {
                continue;
            }
            self.have = 0;
            let len = u64::from(u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]));
            if len == 0 {
                continue;
            }
            if !self.budget.charge(len) {
                return Err(Status::resource_exhausted(format!(
                    "a message of {len} bytes does not fit in this port's {}-byte budget for messages still arriving",
                    self.budget.limit
                )));
            }
            self.held = len;
            self.remaining = len;
        }
        Ok(())
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                if let Err(status) = this.follow(data) {
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32) -> Vec<u8> {
        let mut h = vec![0u8];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    #[test]
    fn a_header_is_charged_until_its_message_arrives() {
        let budget = Budget::new(100);
        let mut a = Metered::new((), budget.clone());
        // A header split across frames.
        a.follow(&header(60)[..2]).unwrap();
        assert_eq!(budget.used(), 0);
        a.follow(&header(60)[2..]).unwrap();
        assert_eq!(budget.used(), 60);
        // Another stream's header past what is left is refused.
        let mut b = Metered::new((), budget.clone());
        let refused = b.follow(&header(41)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        b.follow(&header(40)).unwrap();
        assert_eq!(budget.used(), 100);
        // The first message arrives in two parts, then the next header.
        a.follow(&[7; 30]).unwrap();
        assert_eq!(budget.used(), 100);
        let mut rest = vec![7; 30];
        rest.extend(header(10));
        a.follow(&rest).unwrap();
        assert_eq!(budget.used(), 50);
        // A stream that ends early gives back what it held.
        drop(b);
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 0);
        // Empty messages cost nothing.
        let mut c = Metered::new((), budget.clone());
        c.follow(&[header(0), header(0)].concat()).unwrap();
        assert_eq!(budget.used(), 0);
    }
}
