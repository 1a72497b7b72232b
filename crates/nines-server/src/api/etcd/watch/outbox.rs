//! The response stream of a watch stream, which also runs the stream's
//! logic: hyper polls the response body from the stream's own task, and
//! polling this stream polls the stream's future (requests in, watchers
//! polled, responses queued in its outbox), so no task of its own and no
//! channel sits between the watchers and the body.
//!
//! Why: with a task per stream and a channel to the body, every event woke
//! two tasks per watcher (the stream's, then the body's). At 1,000 watchers
//! (one per stream), 500 puts/s on 2 shared cores, the channel and the
//! extra wake were about a sixth of the servers' CPU per event.
//!
//! Backpressure is as before: the future waits while its outbox holds
//! [`OUT_QUEUE`] responses, and hyper polls the body only while the
//! client's flow-control window has room, so a slow client stalls only its
//! own stream.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::codegen::tokio_stream::Stream;

/// Responses queued per stream before its future waits for the client.
pub const OUT_QUEUE: usize = 16;

/// The responses the stream's future produced and the body has not taken.
/// Only ever touched from the one task that polls the body: the lock is
/// uncontended (it makes the future `Send`).
pub struct Outbox<T> {
    queue: Mutex<VecDeque<T>>,
}

impl<T> Outbox<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Outbox {
            queue: Mutex::new(VecDeque::with_capacity(OUT_QUEUE)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`, waiting while the outbox is full. The wait registers
    /// no waker on purpose: it only happens inside [`Driven::poll_next`],
    /// which then hands out a queued item and polls again on its next call.
    pub async fn send(&self, item: T) {
        let mut item = Some(item);
        std::future::poll_fn(|_| {
            let mut queue = self.lock();
            if queue.len() >= OUT_QUEUE {
                return Poll::Pending;
            }
            if let Some(item) = item.take() {
                queue.push_back(item);
            }
            Poll::Ready(())
        })
        .await
    }

    fn pop(&self) -> Option<T> {
        self.lock().pop_front()
    }
}

/// A stream of what `future` sends to `outbox`, ending when `future` ends
/// and its outbox is drained. Dropping it drops the future (the client is
/// gone): the future's state must clean up in `Drop`.
pub struct Driven<T> {
    future: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    outbox: Arc<Outbox<T>>,
}

impl<T> Driven<T> {
    pub fn new(future: impl Future<Output = ()> + Send + 'static, outbox: Arc<Outbox<T>>) -> Self {
        Driven {
            future: Some(Box::pin(future)),
            outbox,
        }
    }
}

impl<T> Stream for Driven<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // Queued items first: the future may be waiting for room.
        if let Some(item) = self.outbox.pop() {
            return Poll::Ready(Some(item));
        }
        if let Some(future) = self.future.as_mut() {
            if future.as_mut().poll(cx).is_ready() {
                self.future = None;
            }
        }
        match self.outbox.pop() {
            Some(item) => Poll::Ready(Some(item)),
            // Pending only after the future returned Pending with nothing
            // queued: it waits on something that registered `cx`'s waker
            // (never on a full outbox, which is not empty).
            None if self.future.is_some() => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_full_outbox_waits_for_the_body_and_nothing_is_lost_or_reordered() {
        let outbox = Outbox::new();
        let out = outbox.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let future = async move {
            // More than the outbox holds at once, then waits on a channel,
            // then more: the body must see all of them, in order.
            for i in 0..(OUT_QUEUE as u32 * 3) {
                out.send(i).await;
            }
            while let Some(i) = rx.recv().await {
                out.send(i).await;
            }
        };
        let mut stream = Driven::new(future, outbox);
        let mut got = Vec::new();
        for _ in 0..(OUT_QUEUE * 3) {
            got.push(stream.next().await.expect("item"));
        }
        // The future now waits on the channel: the stream is pending...
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), stream.next());
        assert!(pending.await.is_err(), "nothing should be ready");
        // ...and wakes when it gets something.
        tx.send(1000).await.expect("send");
        got.push(stream.next().await.expect("item"));
        drop(tx);
        assert_eq!(stream.next().await, None, "ends when the future ends");
        let mut want: Vec<u32> = (0..(OUT_QUEUE as u32 * 3)).collect();
        want.push(1000);
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn dropping_the_stream_drops_the_future() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let outbox = Outbox::<u32>::new();
        let future = async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        };
        let mut stream = Driven::new(future, outbox);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(10), stream.next());
        assert!(pending.await.is_err());
        drop(stream);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
