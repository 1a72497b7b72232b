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
/// Bytes queued per stream before its future waits for the client (one
/// response is always let in). With responses of up to 1 MiB, a count
/// alone let 40 streams that never read hold 667 MB.
pub const OUT_BYTES: usize = 1 << 20;

/// The responses the stream's future produced and the body has not taken.
/// Only ever touched from the one task that polls the body: the lock is
/// uncontended (it makes the future `Send`).
pub struct Outbox<T> {
    queue: Mutex<Queue<T>>,
    weigh: fn(&T) -> usize,
}

struct Queue<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
}

impl<T> Outbox<T> {
    /// `weigh` gives an item's size, for [`OUT_BYTES`].
    pub fn new(weigh: fn(&T) -> usize) -> Arc<Self> {
        Arc::new(Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::with_capacity(OUT_QUEUE),
                bytes: 0,
            }),
            weigh,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`, waiting while the outbox is full. The wait registers
    /// no waker on purpose: it only happens inside [`Driven::poll_next`],
    /// which then hands out a queued item and polls again on its next call.
    pub async fn send(&self, item: T) {
        let size = (self.weigh)(&item);
        let mut item = Some(item);
        std::future::poll_fn(|_| {
            let mut queue = self.lock();
            let full = queue.items.len() >= OUT_QUEUE || queue.bytes + size > OUT_BYTES;
            if full && !queue.items.is_empty() {
                return Poll::Pending;
            }
            if let Some(item) = item.take() {
                queue.items.push_back((item, size));
                queue.bytes += size;
            }
            Poll::Ready(())
        })
        .await
    }

    fn pop(&self) -> Option<T> {
        let mut queue = self.lock();
        let (item, size) = queue.items.pop_front()?;
        queue.bytes -= size;
        Some(item)
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
        let outbox = Outbox::new(|_| 1);
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

    /// Large responses: at most [`OUT_BYTES`] wait in the outbox (one is
    /// always let in), however many the count would allow.
    #[tokio::test]
    async fn the_outbox_is_bounded_by_bytes() {
        let outbox = Outbox::<usize>::new(|size| *size);
        let out = outbox.clone();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let q = queued.clone();
        let future = async move {
            for _ in 0..OUT_QUEUE {
                out.send(OUT_BYTES / 2 + 1).await;
                q.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        };
        let mut stream = Driven::new(future, outbox.clone());
        // The first poll hands out one and lets the future queue what fits.
        assert_eq!(stream.next().await, Some(OUT_BYTES / 2 + 1));
        assert!(outbox.lock().bytes <= OUT_BYTES, "{}", outbox.lock().bytes);
        assert!(queued.load(std::sync::atomic::Ordering::SeqCst) <= 3);
        let mut n = 1;
        while stream.next().await.is_some() {
            n += 1;
        }
        assert_eq!(n, OUT_QUEUE, "nothing lost");
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
        let outbox = Outbox::<u32>::new(|_| 1);
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
