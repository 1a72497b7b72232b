//! A watch stream's inbound requests, polled only after h2 said there is
//! something to read. The stream's loop runs on every feed wake, and
//! polling the request stream each time took h2's connection-wide lock
//! (`poll_data`, `poll_reset`) once per stream per event, for requests
//! that almost never come.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use tonic::codegen::tokio_stream::Stream;
use tonic::Status;

/// The waker h2 holds: marks the requests readable, then wakes the task.
#[derive(Default)]
struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pub struct Inbound<S> {
    requests: S,
    gate: Arc<Gate>,
    waker: Waker,
}

impl<S, T> Inbound<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    pub fn new(requests: S) -> Self {
        let gate = Arc::new(Gate::default());
        // Read once before anything woke it: the client may have sent its
        // first request with the stream's headers.
        gate.woken.store(true, Ordering::Relaxed);
        Inbound {
            requests,
            waker: Waker::from(gate.clone()),
            gate,
        }
    }

    /// The next request (`Ok(None)`: the client ended its side), as
    /// `Streaming::message` gives it; Pending without touching h2 unless
    /// it woke the gate since the last Pending.
    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, Status>> {
        // Registered first: a wake after the check below still reaches the task.
        self.gate.task.register(cx.waker());
        if !self.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut inner = Context::from_waker(&self.waker);
        match Pin::new(&mut self.requests).poll_next(&mut inner) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(next) => {
                // More may be buffered behind this one: read again next time.
                self.gate.woken.store(true, Ordering::Release);
                Poll::Ready(next.transpose())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tonic::codegen::tokio_stream::wrappers::UnboundedReceiverStream;

    #[tokio::test]
    async fn every_request_arrives_in_order_and_a_wake_is_never_lost() {
        let (tx, rx) = mpsc::unbounded_channel::<Result<u32, Status>>();
        let mut inbound = Inbound::new(UnboundedReceiverStream::new(rx));
        // Nothing yet: pending (and h2's stand-in now holds the gate's waker).
        let none = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            std::future::poll_fn(|cx| inbound.poll_message(cx)),
        );
        assert!(none.await.is_err(), "nothing was sent");
        // Several at once, then one later: all of them, in order.
        for i in 0..3 {
            tx.send(Ok(i)).unwrap();
        }
        let later = tokio::spawn({
            let tx = tx.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                tx.send(Ok(3)).unwrap();
            }
        });
        let mut got = Vec::new();
        for _ in 0..4 {
            let next = std::future::poll_fn(|cx| inbound.poll_message(cx));
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), next)
                .await
                .expect("a wake was lost");
            got.push(next.unwrap().expect("a request"));
        }
        assert_eq!(got, vec![0, 1, 2, 3]);
        later.await.unwrap();
        drop(tx);
        let end = std::future::poll_fn(|cx| inbound.poll_message(cx)).await;
        assert!(matches!(end, Ok(None)), "the client's end of the stream");
    }

    #[tokio::test]
    async fn an_error_is_passed_on() {
        let (tx, rx) = mpsc::unbounded_channel::<Result<u32, Status>>();
        let mut inbound = Inbound::new(UnboundedReceiverStream::new(rx));
        tx.send(Err(Status::cancelled("gone"))).unwrap();
        let next = std::future::poll_fn(|cx| inbound.poll_message(cx)).await;
        assert_eq!(next.unwrap_err().code(), tonic::Code::Cancelled);
    }
}
