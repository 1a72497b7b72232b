//! Group commit at the API level. openraft 0.9's core appends (and fsyncs)
//! each `client_write` separately, one after the other, so a write costs a
//! full fsync of the leader's log no matter how many clients wait. The
//! proposer instead gathers the writes that arrive while earlier proposals
//! are in flight and proposes them as one `Command::Batch` entry: one
//! append, one fsync, one replication round for all of them.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use nines_types::{
    Command, CommandResult, Node, NodeId, Raft, Request, Response, MAX_REQUEST_BYTES,
};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::metrics::Counters;
use crate::observe::{mono_ms, View};

/// Most requests in one entry, and the most bytes of them (encoded) unless
/// one request alone is larger: an entry stays under
/// `MAX_REQUEST_BYTES`, which the log and peers can always read back.
const MAX_BATCH_REQUESTS: usize = 512;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Proposals in flight at once. openraft 0.9's core handles one append at a
/// time anyway, so a second proposal in flight only splits the waiting
/// writes into smaller batches: measured with 64 clients on 3 local nodes,
/// 1 in flight gave 8.6k puts/s, 2 in flight 6.4k. (The in-flight gauges
/// in `Counters` assume one.)
const MAX_IN_FLIGHT: usize = 1;
/// A proposal in flight this long holds every write on the node: say so.
const STUCK_AFTER: Duration = Duration::from_secs(1);
/// And again this often while it lasts.
const STUCK_REPEAT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum ProposeError {
    ForwardToLeader(Option<NodeId>, Option<Node>),
    Membership(String),
    /// The proposal was given up after the request timeout; it may still
    /// commit later (outcome unknown).
    Timeout,
    ShuttingDown,
    /// The request encodes to this many bytes, over `MAX_REQUEST_BYTES`:
    /// not proposed.
    TooLarge(usize),
}

/// What the proposer proposes through: Raft, or a stand-in in tests.
pub trait Writer: Send + Sync + 'static {
    fn write(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Response, ProposeError>> + Send;
    /// This node's view, for log lines.
    fn view(&self) -> View;
}

impl Writer for Raft {
    fn write(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Response, ProposeError>> + Send {
        write(self, request)
    }

    fn view(&self) -> View {
        View::of_raft(self)
    }
}

type Reply = oneshot::Sender<Result<Response, ProposeError>>;

struct Pending {
    request: Request,
    /// The request's encoded length.
    bytes: usize,
    reply: Reply,
}

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
    counters: Arc<Counters>,
}

impl Proposer {
    /// `timeout` bounds each proposal: openraft 0.9's `client_write` can
    /// hang (a leader cut off from its quorum keeps its role), and every
    /// later write would wait behind it.
    pub fn start(raft: Raft, counters: Arc<Counters>, timeout: Duration) -> Proposer {
        Proposer::start_with(Arc::new(raft), counters, timeout)
    }

    pub fn start_with<W: Writer>(
        writer: Arc<W>,
        counters: Arc<Counters>,
        timeout: Duration,
    ) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(writer, rx, counters.clone(), timeout));
        Proposer { tx, counters }
    }

    pub async fn propose(&self, request: Request) -> Result<Response, ProposeError> {
        self.submit(request).await
    }

    /// Queues `request` now, before the returned future is polled: requests
    /// submitted one after another on a leader reach its log in that order
    /// within a term (what `lease::ops` relies on to order a checkpoint
    /// and a keepalive's clearing of it).
    pub fn submit(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Response, ProposeError>> + Send + 'static {
        // Counted exactly: a batch sized by an estimate (a compare's value
        // counted as 64 bytes) could pass what the log can read back.
        let len = nines_types::codec::encoded_len(&request).unwrap_or(usize::MAX);
        self.submit_sized(request, len)
    }

    /// [`Proposer::submit`] of a request whose encoded length the caller
    /// already has (`NodeCore` measures every write for
    /// `--max-request-bytes`): the walk is not done twice per write.
    pub fn submit_sized(
        &self,
        request: Request,
        len: usize,
    ) -> impl Future<Output = Result<Response, ProposeError>> + Send + 'static {
        debug_assert!(
            nines_types::codec::encoded_len(&request).map_or(len == usize::MAX, |n| n == len),
            "submit_sized given a length that is not the request's"
        );
        if len > MAX_REQUEST_BYTES {
            return Either::Left(std::future::ready(Err(ProposeError::TooLarge(len))));
        }
        let bytes = len;
        let (reply, rx) = oneshot::channel();
        // Counted before it can be received, so the gauge never underflows.
        self.counters
            .proposal_pending
            .fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.send(Pending {
            request,
            bytes,
            reply,
        });
        if sent.is_err() {
            self.counters
                .proposal_pending
                .fetch_sub(1, Ordering::Relaxed);
        }
        Either::Right(async move {
            match sent {
                Ok(()) => rx.await.unwrap_or(Err(ProposeError::ShuttingDown)),
                Err(_) => Err(ProposeError::ShuttingDown),
            }
        })
    }
}

async fn run<W: Writer>(
    writer: Arc<W>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    counters: Arc<Counters>,
    timeout: Duration,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A request that would have taken its batch past the bound: it opens
    // the next one, so the order of submission holds.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Waiting for a slot first is what lets a batch grow.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = 0;
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(pending) = next.take() {
            if !batch.is_empty() && bytes + pending.bytes > MAX_BATCH_BYTES {
                carried = Some(pending);
                break;
            }
            counters.proposal_pending.fetch_sub(1, Ordering::Relaxed);
            if pending.reply.is_closed() {
                // Its caller timed out waiting (behind a stuck proposal):
                // it was told the outcome is unknown, and not proposing it
                // keeps a stall from ending in a burst of stale writes.
                Counters::inc(&counters.requests_abandoned);
            } else {
                bytes += pending.bytes;
                batch.push(pending);
            }
            if batch.len() >= MAX_BATCH_REQUESTS || bytes >= MAX_BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        if batch.is_empty() {
            continue;
        }
        Counters::inc(&counters.proposals);
        counters
            .proposed_requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let writer = writer.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            propose(&*writer, batch, &counters, timeout).await;
            drop(permit);
        });
    }
}

async fn propose<W: Writer>(
    writer: &W,
    mut batch: Vec<Pending>,
    counters: &Counters,
    timeout: Duration,
) {
    let requests = batch.len();
    counters
        .proposal_requests
        .store(requests as u64, Ordering::Relaxed);
    counters
        .proposal_started_ms
        .store(mono_ms(), Ordering::Relaxed);
    let in_flight = Flight { counters };
    if requests == 1 {
        let Pending { request, reply, .. } = batch.pop().expect("one pending request");
        let result = bounded(writer, request, requests, counters, timeout).await;
        drop(in_flight);
        let _ = reply.send(result);
        return;
    }
    let (requests, replies): (Vec<Request>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let request = Request::new(Command::Batch(requests));
    let result = bounded(writer, request, replies.len(), counters, timeout).await;
    drop(in_flight);
    match result {
        Ok(Response {
            result: CommandResult::Batch(responses),
            ..
        }) if responses.len() == replies.len() => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Ok(other) => {
            // Cannot happen with a matching state machine; fail loudly, not silently.
            tracing::error!("batch proposal returned {other:?}");
            for reply in replies {
                let _ = reply.send(Err(ProposeError::ShuttingDown));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Clears the in-flight gauges however the proposal ends.
struct Flight<'a> {
    counters: &'a Counters,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.counters
            .proposal_started_ms
            .store(0, Ordering::Relaxed);
        self.counters.proposal_requests.store(0, Ordering::Relaxed);
    }
}

/// One proposal, given up after `timeout`, with a warning while it is
/// stuck: once after `STUCK_AFTER`, then every `STUCK_REPEAT`.
async fn bounded<W: Writer>(
    writer: &W,
    request: Request,
    requests: usize,
    counters: &Counters,
    timeout: Duration,
) -> Result<Response, ProposeError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut warn_at = started + STUCK_AFTER;
    let write = writer.write(request);
    tokio::pin!(write);
    loop {
        tokio::select! {
            result = &mut write => {
                let age = started.elapsed();
                if age >= STUCK_AFTER {
                    tracing::info!(
                        view = %writer.view(),
                        requests,
                        ok = result.is_ok(),
                        "proposal finished after {} ms",
                        age.as_millis()
                    );
                }
                if matches!(result, Err(ProposeError::Membership(_) | ProposeError::ShuttingDown)) {
                    Counters::inc(&counters.proposals_failed);
                }
                if result.is_ok() {
                    Counters::inc(&counters.proposals_committed);
                    counters.timings.proposal_commit.observe(age.as_secs_f64());
                }
                return result;
            }
            _ = tokio::time::sleep_until(warn_at.min(deadline)) => {
                let age = started.elapsed().as_millis();
                if Instant::now() >= deadline {
                    Counters::inc(&counters.proposals_timed_out);
                    tracing::warn!(
                        view = %writer.view(),
                        requests,
                        "proposal in flight for {age} ms: giving up on it; its writes fail with a timeout (outcome unknown)"
                    );
                    return Err(ProposeError::Timeout);
                }
                tracing::warn!(
                    view = %writer.view(),
                    requests,
                    "proposal in flight for {age} ms: every write on this node waits behind it"
                );
                warn_at += STUCK_REPEAT;
            }
        }
    }
}

async fn write(raft: &Raft, request: Request) -> Result<Response, ProposeError> {
    match raft.client_write(request).await {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ProposeError::ForwardToLeader(f.leader_id, f.leader_node))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(ProposeError::Membership(e.to_string()))
        }
        Err(RaftError::Fatal(_)) => Err(ProposeError::ShuttingDown),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Stands in for a leader whose first `client_write` never returns (cut
    /// off from its quorum); the writes after it are answered.
    #[derive(Default)]
    struct StuckFirst {
        proposed: Mutex<Vec<Request>>,
    }

    fn put(key: &str) -> Request {
        Request::new(Command::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: false,
        })
    }

    fn answer(request: &Request) -> Response {
        let result = match &request.command {
            Command::Batch(requests) => CommandResult::Batch(requests.iter().map(answer).collect()),
            _ => CommandResult::Put { prev_kv: None },
        };
        Response {
            revision: 1,
            result,
        }
    }

    impl Writer for StuckFirst {
        fn write(
            &self,
            request: Request,
        ) -> impl Future<Output = Result<Response, ProposeError>> + Send {
            let first = {
                let mut proposed = self.proposed.lock().unwrap();
                proposed.push(request.clone());
                proposed.len() == 1
            };
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                Ok(answer(&request))
            }
        }

        fn view(&self) -> View {
            View::default()
        }
    }

    const GENEROUS: Duration = Duration::from_secs(20);

    type Answer = Result<Response, ProposeError>;

    /// A proposer whose first proposal, "a", is stuck in flight (given up
    /// after 500 ms).
    async fn stuck_on_a() -> (
        Arc<Counters>,
        Arc<StuckFirst>,
        Proposer,
        tokio::task::JoinHandle<Answer>,
    ) {
        let counters = Arc::new(Counters::default());
        let writer = Arc::new(StuckFirst::default());
        let proposer =
            Proposer::start_with(writer.clone(), counters.clone(), Duration::from_millis(500));
        let stuck = tokio::spawn({
            let proposer = proposer.clone();
            async move { proposer.propose(put("a")).await }
        });
        while counters.proposal_started_ms.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (counters, writer, proposer, stuck)
    }

    #[tokio::test]
    async fn a_stuck_proposal_is_given_up_and_later_writes_proceed() {
        // "a" in flight; queue "b" behind it.
        let (counters, _writer, proposer, stuck) = stuck_on_a().await;
        assert_eq!(counters.proposal_requests.load(Ordering::Relaxed), 1);
        let behind = tokio::spawn({
            let proposer = proposer.clone();
            async move { proposer.propose(put("b")).await }
        });
        let stuck = tokio::time::timeout(GENEROUS, stuck)
            .await
            .expect("the stuck proposal must be given up")
            .unwrap();
        assert!(matches!(stuck, Err(ProposeError::Timeout)), "{stuck:?}");
        let behind = tokio::time::timeout(GENEROUS, behind)
            .await
            .expect("a write behind a stuck proposal must not wait forever")
            .unwrap();
        assert!(behind.is_ok(), "{behind:?}");
        assert_eq!(counters.proposals_timed_out.load(Ordering::Relaxed), 1);
        assert_eq!(counters.proposal_started_ms.load(Ordering::Relaxed), 0);
        assert_eq!(counters.proposal_pending.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn writes_whose_caller_gave_up_are_not_proposed() {
        let (counters, writer, proposer, stuck) = stuck_on_a().await;
        // Its caller times out while it waits behind "a".
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), proposer.propose(put("b"))).await;
        assert!(gave_up.is_err());
        assert_eq!(counters.proposal_pending.load(Ordering::Relaxed), 1);
        let _ = tokio::time::timeout(GENEROUS, stuck).await.unwrap();
        let later = tokio::time::timeout(GENEROUS, proposer.propose(put("c")))
            .await
            .expect("proposed");
        assert!(later.is_ok(), "{later:?}");
        let proposed = writer.proposed.lock().unwrap().clone();
        assert_eq!(proposed, vec![put("a"), put("c")]);
        assert_eq!(counters.requests_abandoned.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn requests_are_proposed_in_the_order_submitted_not_polled() {
        let (_counters, writer, proposer, stuck) = stuck_on_a().await;
        let x = proposer.submit(put("x"));
        let y = proposer.submit(put("y"));
        // "y" is waited on first: the order must still be "x", "y".
        let (y, x) = tokio::time::timeout(GENEROUS, futures::future::join(y, x))
            .await
            .expect("proposed");
        assert!(x.is_ok() && y.is_ok(), "{x:?} {y:?}");
        let _ = tokio::time::timeout(GENEROUS, stuck).await.unwrap();
        let proposed: Vec<Request> = writer.proposed.lock().unwrap()[1..]
            .iter()
            .flat_map(|r| match &r.command {
                Command::Batch(requests) => requests.clone(),
                _ => vec![r.clone()],
            })
            .collect();
        assert_eq!(proposed, vec![put("x"), put("y")]);
    }

    /// A txn of `compares` compares, each against a 1 MiB value: counted
    /// as 64 bytes apiece by the old estimate.
    fn big_txn(key: &str, compares: usize) -> Request {
        use nines_types::{Compare, CompareOp, CompareTarget, Txn};
        let compare = Compare {
            key: key.as_bytes().to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(vec![7; 1 << 20]),
        };
        Request::new(Command::Txn(Txn {
            compares: vec![compare; compares],
            success: Vec::new(),
            failure: Vec::new(),
        }))
    }

    #[tokio::test]
    async fn large_requests_are_never_batched_past_what_the_log_reads_back() {
        let (_counters, writer, proposer, stuck) = stuck_on_a().await;
        // Five 15 MiB txns queue behind "a", then a small put.
        let mut waits: Vec<_> = (0..5)
            .map(|i| proposer.submit(big_txn(&format!("t{i}"), 15)))
            .collect();
        waits.push(proposer.submit(put("z")));
        let answers = tokio::time::timeout(GENEROUS, futures::future::join_all(waits))
            .await
            .expect("proposed");
        assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
        let _ = tokio::time::timeout(GENEROUS, stuck).await.unwrap();
        let proposed = writer.proposed.lock().unwrap()[1..].to_vec();
        let sizes: Vec<usize> = proposed
            .iter()
            .map(|r| nines_types::codec::encoded_len(r).unwrap())
            .collect();
        assert!(
            sizes.iter().all(|&n| n <= MAX_REQUEST_BYTES),
            "entries of {sizes:?} bytes"
        );
        // In the order submitted, whatever the batches.
        let order: Vec<Vec<u8>> = proposed
            .iter()
            .flat_map(|r| match &r.command {
                Command::Batch(requests) => requests.clone(),
                _ => vec![r.clone()],
            })
            .map(|r| match r.command {
                Command::Txn(t) => t.compares[0].key.clone(),
                Command::Put { key, .. } => key,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(order, [&b"t0"[..], b"t1", b"t2", b"t3", b"t4", b"z"]);
    }

    #[tokio::test]
    async fn a_request_over_the_entry_bound_is_refused_not_proposed() {
        let (_counters, writer, proposer, _stuck) = stuck_on_a().await;
        let answer = proposer.submit(big_txn("huge", 33)).await;
        assert!(
            matches!(answer, Err(ProposeError::TooLarge(n)) if n > MAX_REQUEST_BYTES),
            "{answer:?}"
        );
        assert_eq!(
            writer.proposed.lock().unwrap().len(),
            1,
            "only 'a' proposed"
        );
    }
}
