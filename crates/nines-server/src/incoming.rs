//! Our accept loop for tonic. tonic's `TcpIncoming` hands accept errors to a
//! server loop that retries at once: with EMFILE the listener stays readable
//! and the loop spun at 80% of a core. Here, an accept error other than a
//! connection-level one backs off, logged once per burst, and each listener
//! has a connection limit: past it, new connections are accepted and closed
//! at once, so they neither use a descriptor for long nor wait in the backlog.
//! With TLS, each accepted connection's handshake runs in a task of its own
//! (bounded by `HANDSHAKE_TIMEOUT`, holding its slot), so a slow or hostile
//! client cannot hold up the accept loop; a refused handshake closes the
//! connection. Every connection, plaintext or TLS, is handed to tonic only
//! once it has sent the whole HTTP/2 preface, within the same bound:
//! sockets that never speak, or stop partway, held every slot for good.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nines_tls::{ServerTls, Stream as ConnStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::server::Connected;

/// Pause after an accept error that is not about one connection (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM): retrying at once would only spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "connection refused: limit reached" line per interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Connections handled in one poll before yielding to other tasks, so a
/// flood of refused connections cannot hold a worker.
const ACCEPTS_PER_POLL: usize = 64;
/// A connection that has not finished its TLS handshake (with TLS) and
/// sent the whole HTTP/2 preface by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one "TLS handshake refused" line per interval.
const HANDSHAKE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A stream of accepted connections with TCP_NODELAY set, each holding a slot
/// of its listener's connection limit until it closes.
pub struct Incoming {
    listener: TcpListener,
    name: &'static str,
    slots: Arc<Semaphore>,
    limit: usize,
    backoff: Option<Pin<Box<Sleep>>>,
    /// Accept errors in the current burst (0: none).
    errors: u64,
    refused: u64,
    last_refusal_log: Option<Instant>,
    tls: Option<Arc<ServerTls>>,
    handshakes: JoinSet<Result<Conn, io::Error>>,
    failed_handshakes: u64,
    last_handshake_log: Option<Instant>,
    handshake_timeout: Duration,
}

impl Incoming {
    /// `name` labels log lines ("client", "peer"); with `tls`, connections
    /// are handed out once their handshake is done.
    pub fn new(
        listener: TcpListener,
        name: &'static str,
        max_connections: usize,
        tls: Option<Arc<ServerTls>>,
    ) -> Incoming {
        let limit = max_connections.max(1);
        Incoming {
            listener,
            name,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            backoff: None,
            errors: 0,
            refused: 0,
            last_refusal_log: None,
            tls,
            handshakes: JoinSet::new(),
            failed_handshakes: 0,
            last_handshake_log: None,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// Hands out a plaintext connection once it has sent the whole HTTP/2
    /// preface; its slot is held until then (bounded) or until it closes.
    fn first_bytes(&mut self, stream: TcpStream, slot: OwnedSemaphorePermit) {
        let timeout = self.handshake_timeout;
        self.handshakes.spawn(async move {
            let mut stream = ConnStream::Plain(stream);
            match tokio::time::timeout(timeout, read_preface(&mut stream)).await {
                Ok(Ok(())) => Ok(Conn::new(stream, slot)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("sent no HTTP/2 preface within {timeout:?}"),
                )),
            }
        });
    }

    /// Starts the handshake of an accepted connection; its slot is held
    /// until the handshake fails or the connection closes. The connection
    /// is handed out once it has also sent the HTTP/2 preface, all within
    /// the one bound: a client that finished the handshake and went quiet
    /// held its slot for good.
    fn handshake(&mut self, tls: Arc<ServerTls>, stream: TcpStream, slot: OwnedSemaphorePermit) {
        let timeout = self.handshake_timeout;
        self.handshakes.spawn(async move {
            let start = async move {
                let mut stream = tls.accept(stream).await?;
                read_preface(&mut stream).await?;
                Ok::<_, io::Error>(stream)
            };
            let stream = tokio::time::timeout(timeout, start).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake and HTTP/2 preface within {timeout:?}"),
                )
            })??;
            Ok(Conn::new(stream, slot))
        });
    }

    /// A finished handshake, if any: refused ones are counted and logged
    /// (once per interval: a scanner can fail thousands).
    fn poll_handshakes(&mut self, cx: &mut Context<'_>) -> Option<Conn> {
        while let Poll::Ready(Some(done)) = self.handshakes.poll_join_next(cx) {
            match done {
                Ok(Ok(conn)) => return Some(conn),
                Ok(Err(e)) => {
                    self.failed_handshakes += 1;
                    let now = Instant::now();
                    if self
                        .last_handshake_log
                        .is_none_or(|t| now.duration_since(t) >= HANDSHAKE_LOG_INTERVAL)
                    {
                        tracing::warn!(
                            listener = self.name,
                            refused_total = self.failed_handshakes,
                            "connection dropped before HTTP/2 (TLS handshake refused, or no preface in time): {e}"
                        );
                        self.last_handshake_log = Some(now);
                    }
                }
                Err(e) => tracing::warn!(listener = self.name, "connection start task: {e}"),
            }
        }
        None
    }

    fn refuse(&mut self, stream: TcpStream) {
        drop(stream);
        self.refused += 1;
        let now = Instant::now();
        if self
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL)
        {
            tracing::warn!(
                listener = self.name,
                limit = self.limit,
                refused_total = self.refused,
                "connection limit reached; closing new connections"
            );
            self.last_refusal_log = Some(now);
        }
    }
}

/// What every HTTP/2 client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the HTTP/2 preface off `stream` (a `Conn` hands it on to hyper
/// first), refusing at the first byte that differs. Once handed to hyper,
/// a connection that sent part of it and went quiet held its slot for
/// good: hyper neither times the preface out nor pings before it has it.
/// (Peeking instead, on plaintext only, had to poll every 5 ms while part
/// of the preface waited unread.)
async fn read_preface(stream: &mut ConnStream) -> io::Result<()> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut have = 0;
    while have < buf.len() {
        let n = tokio::io::AsyncReadExt::read(stream, &mut buf[have..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before sending the HTTP/2 preface",
            ));
        }
        have += n;
        if buf[..have] != H2_PREFACE[..have] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an HTTP/2 connection",
            ));
        }
    }
    Ok(())
}

/// Errors that concern only the connection being accepted: the next accept
/// may succeed at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut accepts = 0;
        loop {
            if let Some(conn) = this.poll_handshakes(cx) {
                return Poll::Ready(Some(Ok(conn)));
            }
            if accepts == ACCEPTS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            accepts += 1;
            if let Some(sleep) = this.backoff.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.backoff = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, _))) => {
                    if this.errors > 0 {
                        tracing::info!(
                            listener = this.name,
                            errors = this.errors,
                            "accepting connections again"
                        );
                        this.errors = 0;
                    }
                    let Ok(permit) = this.slots.clone().try_acquire_owned() else {
                        this.refuse(stream);
                        continue;
                    };
                    // Without it small responses wait for the peer's delayed
                    // ACK (40 ms on Linux).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!("TCP_NODELAY: {e}");
                    }
                    match this.tls.clone() {
                        // Polled (and its waker registered) at the loop's top.
                        Some(tls) => this.handshake(tls, stream, permit),
                        None => this.first_bytes(stream, permit),
                    }
                }
                Poll::Ready(Err(e)) if is_connection_error(&e) => continue,
                Poll::Ready(Err(e)) => {
                    if this.errors == 0 {
                        tracing::warn!(
                            listener = this.name,
                            "accept failed: {e}; retrying every {ACCEPT_BACKOFF:?}"
                        );
                    }
                    this.errors += 1;
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        }
    }
}

/// An accepted connection; its slot frees when it is dropped.
pub struct Conn {
    stream: ConnStream,
    _slot: OwnedSemaphorePermit,
    /// How much of the HTTP/2 preface, read off the stream to check it
    /// (`read_preface`), is still to be handed to the reader (its last
    /// `replay` bytes).
    replay: usize,
    /// Written but not yet sent (see `poll_flush`).
    out: Vec<u8>,
    /// Flushes put off in a row, and how much was gathered at the last.
    deferred: u32,
    deferred_len: usize,
}

/// Bytes a connection gathers before it writes regardless.
const COALESCE_BYTES: usize = 64 << 10;
/// Scheduler rounds a flush may wait while more keeps coming.
const MAX_DEFERRALS: u32 = 8;

impl Conn {
    /// A connection whose preface `read_preface` has read.
    fn new(stream: ConnStream, slot: OwnedSemaphorePermit) -> Self {
        Conn {
            stream,
            _slot: slot,
            replay: H2_PREFACE.len(),
            out: Vec::new(),
            deferred: 0,
            deferred_len: 0,
        }
    }

    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        Poll::Ready(Ok(()))
    }

    /// Gathers `bufs` if they fit, else sends what is gathered first.
    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.out.len() + len > COALESCE_BYTES {
            std::task::ready!(self.poll_drain(cx))?;
            if len > COALESCE_BYTES {
                return Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            self.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }
}

/// What tonic attaches to every request of a connection (as a request
/// extension): the subject CN of the client's certificate, which the TLS
/// handshake verified against the CA.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// etcd takes it as the user of a call without a token (see `auth`).
    pub cert_cn: Option<Arc<str>>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        // Go's CommonName, which etcd reads, is the subject's last CN.
        let cert_cn = self
            .stream
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| nines_tls::cn::common_names(leaf).pop())
            .filter(|cn| !cn.is_empty())
            .map(Arc::from);
        ConnInfo { cert_cn }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replay > 0 {
            let from = H2_PREFACE.len() - this.replay;
            let n = this.replay.min(buf.remaining());
            buf.put_slice(&H2_PREFACE[from..from + n]);
            this.replay -= n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_gather(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_gather(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// A flush is put off while the gathered bytes keep growing: the
    /// connection's task goes round the scheduler's queue (it wakes itself
    /// and says not yet), so frames that other streams' tasks queue
    /// meanwhile go out in the same write; it writes once a round added
    /// nothing, or after [`MAX_DEFERRALS`] rounds or [`COALESCE_BYTES`].
    /// Why: h2 writes each DATA frame of 256 B or more with its own
    /// `writev`, and tokio runs the connection's task right after each
    /// stream's task that woke it, so 1,000 watchers cost about one syscall
    /// and loopback send per watcher per event (35-42% of the servers' CPU).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.out.is_empty() {
            let grew = this.out.len() > this.deferred_len;
            if grew && this.deferred < MAX_DEFERRALS && this.out.len() < COALESCE_BYTES / 2 {
                this.deferred += 1;
                this.deferred_len = this.out.len();
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            std::task::ready!(this.poll_drain(cx))?;
            this.deferred = 0;
            this.deferred_len = 0;
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::tokio_stream::StreamExt;

    async fn speaking(addr: std::net::SocketAddr) -> TcpStream {
        let mut c = TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut c, H2_PREFACE)
            .await
            .unwrap();
        c
    }

    #[tokio::test]
    async fn closes_connections_past_the_limit_and_frees_slots() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Incoming::new(listener, "test", 1, None);
        let _c1 = speaking(addr).await;
        let first = incoming.next().await.unwrap().unwrap();
        // The second is accepted and closed: its reader sees EOF.
        let mut c2 = TcpStream::connect(addr).await.unwrap();
        let _c3 = speaking(addr).await;
        let accept = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(
            accept.is_err(),
            "no connection past the limit is handed out"
        );
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut c2, &mut buf).await;
        assert!(matches!(n, Ok(0) | Err(_)), "refused connection is closed");
        // Closing the first frees its slot for the next connection.
        drop(first);
        let _c4 = speaking(addr).await;
        let next = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(next, Ok(Some(Ok(_)))));
    }

    /// Sockets that never send a byte held every slot of the peer port
    /// for as long as they stayed open.
    #[tokio::test]
    async fn a_silent_connection_gives_its_slot_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Incoming::new(listener, "test", 1, None);
        incoming.handshake_timeout = Duration::from_millis(300);
        let _silent = TcpStream::connect(addr).await.unwrap();
        // Let the loop take the silent one first.
        let first = tokio::time::timeout(Duration::from_millis(100), incoming.next()).await;
        assert!(first.is_err(), "a silent connection is not handed out");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let _talker = speaking(addr).await;
        let next = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(
            matches!(next, Ok(Some(Ok(_)))),
            "the silent connection's slot was not freed"
        );
    }

    /// hyper neither times out nor pings a connection that sent part of
    /// the preface: such connections held every slot for good.
    #[tokio::test]
    async fn a_partial_preface_or_another_protocol_gives_its_slot_back() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Incoming::new(listener, "test", 1, None);
        incoming.handshake_timeout = Duration::from_millis(300);
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(&H2_PREFACE[..10]).await.unwrap();
        let first = tokio::time::timeout(Duration::from_millis(100), incoming.next()).await;
        assert!(first.is_err(), "a partial preface is not handed out");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut http1 = TcpStream::connect(addr).await.unwrap();
        http1.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let refused = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(refused.is_err(), "HTTP/1 is not handed out");
        let _talker = speaking(addr).await;
        let next = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(
            matches!(next, Ok(Some(Ok(_)))),
            "the partial connection's slot was not freed"
        );
    }

    #[tokio::test]
    async fn a_flush_waits_a_round_while_writes_keep_coming_and_then_sends_everything() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Incoming::new(listener, "test", 1, None);
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A plain connection is handed over once it sent the preface.
        client.write_all(H2_PREFACE).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut flush = |conn: &mut Conn| Pin::new(conn).poll_flush(&mut cx).is_ready();
        conn.write_all(b"one ").await.unwrap();
        assert!(!flush(&mut conn), "the first flush is put off");
        conn.write_all(b"two ").await.unwrap();
        assert!(!flush(&mut conn), "more came: put off again");
        assert!(flush(&mut conn), "nothing more: sent");
        let mut got = vec![0u8; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two ");
        // Bounded: a steady trickle still goes out after MAX_DEFERRALS rounds.
        let mut rounds = 0;
        loop {
            conn.write_all(b"x").await.unwrap();
            if flush(&mut conn) {
                break;
            }
            rounds += 1;
            assert!(rounds <= MAX_DEFERRALS, "flush never sent");
        }
        // And what is gathered goes out on shutdown.
        conn.write_all(b"end").await.unwrap();
        std::future::poll_fn(|cx| Pin::new(&mut conn).poll_shutdown(cx))
            .await
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), rounds as usize + 1 + 3);
        assert!(rest.ends_with(b"end"));
    }
}

#[cfg(test)]
#[path = "incoming_tls_tests.rs"]
mod tls_tests;
