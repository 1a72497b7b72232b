//! etcd's `Watch` service: one bidirectional stream carries any number of
//! watchers (create, cancel, progress requests in; created, events,
//! progress and cancel responses out). Each stream's logic owns its
//! watchers and polls them from the member's own history (`crate::watch`),
//! so watch load spreads over every member; it runs inside the response
//! body (`outbox.rs`).
//!
//! Backpressure: responses go through a small bounded outbox; a client that
//! reads slowly stalls only its own stream (its watchers fall behind the
//! shared feed and later read from the store), never the apply loop or
//! other streams.

mod chunks;
mod gate;
mod outbox;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use self::chunks::chunks;
use self::outbox::{Driven, Outbox};
use super::convert;
use crate::api::convert::key_range;
use crate::core::NodeCore;
use crate::metrics::Counters;
use crate::watch::{Event, Hub, Polled, WatchSpec, Watcher};

/// Event bytes a watcher is handed per poll, and per response.
const POLL_BYTES: usize = 1 << 20;
/// Watchers one stream may hold: each costs its key range in memory.
pub const MAX_WATCHERS_PER_STREAM: usize = 100_000;
/// Bytes of watched keys and range ends per stream: 40,000 watchers of
/// 4 KiB keys and ends took 330 MB of one stream, within the count.
pub const MAX_WATCH_KEY_BYTES_PER_STREAM: usize = 16 << 20;
/// Requests a stream handles in a row before its watchers get a turn.
const REQUESTS_PER_POLL: u32 = 32;
/// A stream that finds the newest revision published longer ago than
/// [`LATE`] when it polls (the member is short of CPU: at 1,000 watchers
/// each revision woke every stream, one response each) waits [`LINGER`]
/// after sending before it polls again, so that its next response carries
/// every revision of that time. Measured with `nines bench --workload watch
/// --watchers 1000` (three members and the bench on two cores): 189,000
/// events/s, p99 8.2 ms without; 307,000, p99 9.9 ms with a 5 ms linger on
/// every stream; at 100 watchers, where no stream is late, it must not
/// apply (an unconditional linger took p50 from 0.1 ms to 3.5 ms).
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);
const LATE: std::time::Duration = std::time::Duration::from_millis(1);

/// etcd's `clientv3.InvalidWatchID`: a progress response for the stream.
const STREAM_WATCH_ID: i64 = -1;
/// etcd's metadata key for `WithRequireLeader`.
const REQUIRE_LEADER: &str = "hasleader";
/// How long a member must be out of contact with any leader before its
/// `hasleader` streams end.
const NO_LEADER_AFTER: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a stream that requires a leader checks for one.
const LEADER_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

pub struct EtcdWatch {
    pub core: Arc<NodeCore>,
}

type Out = Arc<Outbox<Result<epb::WatchResponse, Status>>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<epb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl epb::watch_server::Watch for EtcdWatch {
    async fn watch(
        &self,
        request: Request<Streaming<epb::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let outbox = Outbox::new(|r: &Result<epb::WatchResponse, Status>| {
            r.as_ref().map_or(0, prost::Message::encoded_len)
        });
        let require_leader = request
            .metadata()
            .get(REQUIRE_LEADER)
            .is_some_and(|v| v.as_bytes() == b"true");
        // Checked once per stream, as etcd does; each create is checked
        // against the caller's permissions then.
        let caller = self.core.caller(request.metadata())?;
        let stream = StreamTask {
            caller,
            require_leader,
            core: self.core.clone(),
            hub: self.core.watch.clone(),
            out: outbox.clone(),
            waiter: self.core.watch.feed.waiter(),
            watchers: BTreeMap::new(),
            next_id: 0,
            key_bytes: 0,
            progress_asked: false,
        };
        Counters::inc(&stream.hub.counters.watch_streams);
        let run = stream.run(request.into_inner());
        Ok(Response::new(Box::pin(Driven::new(run, outbox))))
    }
}

struct Entry {
    watcher: Watcher,
    progress_notify: bool,
    fragment: bool,
    /// Whether it was sent anything since the last progress tick.
    sent: bool,
    /// Its key and range end, counted against the stream's bound.
    key_bytes: usize,
}

struct StreamTask {
    /// Who opened the stream (auth).
    caller: crate::auth::Caller,
    /// End the stream while this member has no leader (etcd's
    /// `WithRequireLeader`), so the client moves to another member.
    require_leader: bool,
    core: Arc<NodeCore>,
    hub: Arc<Hub>,
    out: Out,
    /// Woken when the feed moves (`Feed::waiter`).
    waiter: Arc<futures::task::AtomicWaker>,
    watchers: BTreeMap<i64, Entry>,
    next_id: i64,
    /// Sum of the watchers' `key_bytes`.
    key_bytes: usize,
    /// A progress request waits for every watcher to be current (any
    /// number of them asked meanwhile get one answer, as in etcd).
    progress_asked: bool,
}

/// etcd's `clientv3.InvalidWatchID`: the id of a create it refused.
const REFUSED_WATCH_ID: i64 = -1;

/// The client is gone: end the stream.
struct Gone;

impl Drop for StreamTask {
    fn drop(&mut self) {
        // The slot stays in the feed's list until its next prune; the task
        // its waker would keep alive need not.
        drop(self.waiter.take());
        for (_, entry) in std::mem::take(&mut self.watchers) {
            self.hub.drop_watcher(entry.watcher);
        }
        self.hub
            .counters
            .watch_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamTask {
    /// Until the client goes away: dropped with the response body (`Drop`
    /// cleans up), or a failed read of its requests.
    async fn run(mut self, inbound: Streaming<epb::WatchRequest>) {
        let mut inbound = gate::Inbound::new(inbound);
        let feed = self.hub.feed.clone();
        // The fed revision the watchers were last polled at: the stream
        // waits for the feed to move past it.
        let mut seen = feed.fed();
        let every = self.core.config.watch_progress_interval;
        let now = tokio::time::Instant::now();
        let mut progress_at = now + every;
        // Only a stream that requires a leader checks, the first time at
        // once, as etcd refuses such a stream on a member without one.
        let mut check_at = self.require_leader.then_some(now);
        let due = |progress_at: tokio::time::Instant, check_at: Option<tokio::time::Instant>| {
            check_at.map_or(progress_at, |c| c.min(progress_at))
        };
        // One timer for both (each was a timer polled on every pass).
        let timer = tokio::time::sleep_until(due(progress_at, check_at));
        tokio::pin!(timer);
        // Some watcher may have events to read: poll before waiting.
        let mut behind = false;
        // Requests handled since the watchers were last polled.
        let mut streak = 0u32;
        // No poll before this (see `LINGER`).
        let mut linger_until: Option<tokio::time::Instant> = None;
        // The client ended its side (grpcurl does, after its requests):
        // as etcd, its watchers go on until it goes away.
        let mut half_closed = false;
        loop {
            let step = tokio::select! {
                // Requests first, so a cancel is not stuck behind events;
                // but a client that keeps requests coming (progress
                // requests back to back) must not starve its own watchers.
                biased;
                message = std::future::poll_fn(|cx| inbound.poll_message(cx)),
                    if !(half_closed || behind && streak >= REQUESTS_PER_POLL) =>
                {
                    streak += 1;
                    match message {
                        Ok(Some(request)) => {
                            behind = true;
                            self.handle(request).await
                        }
                        Ok(None) => {
                            half_closed = true;
                            Ok(())
                        }
                        Err(_) => Err(Gone),
                    }
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    let mut step = Ok(());
                    if now >= progress_at {
                        // Counted from now, as a missed tick is delayed.
                        progress_at = now + every;
                        step = self.progress_tick().await;
                    }
                    if check_at.is_some_and(|at| now >= at) {
                        check_at = Some(now + LEADER_CHECK);
                        if step.is_ok() {
                            step = self.check_leader().await;
                        }
                    }
                    timer.as_mut().reset(due(progress_at, check_at));
                    step
                }
                // Polls at once while behind, else once the feed moves: one
                // pass of the loop per wake, not one to notice and another
                // to poll.
                () = std::future::poll_fn(|cx| match behind {
                    true => std::task::Poll::Ready(()),
                    false => feed.poll_moved(&self.waiter, seen, cx),
                }) => {
                    streak = 0;
                    // No wakes from the feed while lingering or polling (the
                    // next pass compares revisions, so none is missed).
                    drop(self.waiter.take());
                    if let Some(until) = linger_until.take() {
                        tokio::time::sleep_until(until).await;
                    }
                    let late = feed.age() > LATE;
                    // Before the poll: a revision fed during it wakes the
                    // stream again.
                    seen = feed.fed();
                    match self.poll_all().await {
                        Ok((still, sent)) => {
                            if sent && late {
                                linger_until = Some(tokio::time::Instant::now() + LINGER);
                            }
                            behind = still;
                            self.answer_progress().await
                        }
                        Err(gone) => Err(gone),
                    }
                }
            };
            if step.is_err() {
                break;
            }
        }
    }

    /// etcd ends such streams when its member has no leader. Here: no
    /// leader in contact for `NO_LEADER_AFTER` (a follower cut off may keep
    /// a stale leader id, so contact, not the id, decides). A blip is not
    /// enough: a re-election or a follower going 600 ms without a
    /// heartbeat under load ended every etcd client's watch, and etcdctl
    /// gives up on a canceled watch.
    async fn check_leader(&self) -> Result<(), Gone> {
        let counters = &self.core.counters;
        let stretch = counters.leaderless_stretch.load(Ordering::Relaxed);
        if counters.has_leader.load(Ordering::Relaxed) == 1
            || stretch < NO_LEADER_AFTER.as_millis() as u64
        {
            return Ok(());
        }
        self.out
            .send(Err(Status::unavailable("etcdserver: no leader")))
            .await;
        Err(Gone)
    }

    /// Never fails: a client that is gone drops the body and with it this
    /// stream. `Result` keeps the callers' `?` for the ends that do.
    async fn send(&self, response: epb::WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(response)).await;
        Ok(())
    }

    fn header(&self, revision: i64) -> Option<epb::ResponseHeader> {
        Some(convert::header(self.core.header(revision)))
    }

    async fn handle(&mut self, request: epb::WatchRequest) -> Result<(), Gone> {
        use epb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                let Some(entry) = self.watchers.remove(&cancel.watch_id) else {
                    // etcd answers nothing for an unknown id.
                    return Ok(());
                };
                self.key_bytes -= entry.key_bytes;
                self.hub.drop_watcher(entry.watcher);
                let response = epb::WatchResponse {
                    header: self.header(self.hub.revision()),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..Default::default()
                };
                self.send(response).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Answered once every watcher on the stream is current, as
                // etcd does: clientv3 hands the answer to every watcher of
                // the stream, so the slowest one's position would tell a
                // watcher already past it that the revision went back.
                self.progress_asked = true;
                self.answer_progress().await
            }
            None => Ok(()),
        }
    }

    /// Answers a waiting progress request once every watcher is current:
    /// every event up to the fed revision has then been sent.
    async fn answer_progress(&mut self) -> Result<(), Gone> {
        // Checked after every poll of every stream: the flag first.
        if !self.progress_asked {
            return Ok(());
        }
        let fed = self.hub.feed.fed();
        if self.watchers.values().any(|e| e.watcher.next <= fed) {
            return Ok(());
        }
        self.progress_asked = false;
        let response = epb::WatchResponse {
            header: self.header(fed),
            watch_id: STREAM_WATCH_ID,
            ..Default::default()
        };
        self.send(response).await
    }

    async fn create(&mut self, create: epb::WatchCreateRequest) -> Result<(), Gone> {
        let revision = self.hub.revision();
        let id = match self.pick_id(create.watch_id) {
            Ok(id) => id,
            Err(reason) => return self.refuse(revision, reason).await,
        };
        let key_bytes = create.key.len() + create.range_end.len();
        if self.key_bytes + key_bytes > MAX_WATCH_KEY_BYTES_PER_STREAM {
            let reason = format!(
                "too many watched key bytes on one stream (at most \
                 {MAX_WATCH_KEY_BYTES_PER_STREAM}); open another stream"
            );
            return self.refuse(revision, reason).await;
        }
        let permitted = self
            .core
            .check_keys(&self.caller, false, &create.key, &create.range_end);
        if let Err(e) = permitted {
            return self.refuse(revision, e.to_string()).await;
        }
        let spec = match self.spec(&create, revision) {
            Ok(spec) => spec,
            Err(reason) => return self.refuse(revision, reason).await,
        };
        let created = epb::WatchResponse {
            header: self.header(revision),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.send(created).await?;
        let entry = Entry {
            watcher: self.hub.watcher(spec),
            progress_notify: create.progress_notify,
            fragment: create.fragment,
            sent: false,
            key_bytes,
        };
        self.key_bytes += key_bytes;
        self.watchers.insert(id, entry);
        if create.watch_id == 0 {
            // Past the id given out, as etcd does: a freed id is not
            // handed out again, so a late response to a canceled watcher
            // is never taken for a new one's.
            self.next_id = id.saturating_add(1);
        }
        Ok(())
    }

    /// etcd's answer to a create it cannot serve: created and canceled at
    /// once, with the invalid id whatever id was asked for.
    async fn refuse(&self, revision: i64, reason: String) -> Result<(), Gone> {
        let response = epb::WatchResponse {
            header: self.header(revision),
            watch_id: REFUSED_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        self.send(response).await
    }

    fn pick_id(&mut self, asked: i64) -> Result<i64, String> {
        if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            return Err(format!(
                "too many watchers on one stream (at most {MAX_WATCHERS_PER_STREAM})"
            ));
        }
        match asked {
            0 => {
                while self.watchers.contains_key(&self.next_id) {
                    self.next_id += 1;
                }
                Ok(self.next_id)
            }
            id if id < 0 => Err(format!("watch id {id} must not be negative")),
            id if self.watchers.contains_key(&id) => {
                Err("mvcc: duplicate watch ID provided on the WatchStream".into())
            }
            id => Ok(id),
        }
    }

    /// The watcher `create` asks for; "from now" is the revision after
    /// `revision`, the one the created response names.
    fn spec(&self, create: &epb::WatchCreateRequest, revision: i64) -> Result<WatchSpec, String> {
        if create.start_revision < 0 {
            return Err("start revision must not be negative".into());
        }
        // etcd: no key means from the smallest key, "\0".
        let key: &[u8] = if create.key.is_empty() {
            &[0]
        } else {
            &create.key
        };
        let range = key_range(key, &create.range_end);
        self.core
            .config
            .limits
            .check_range(&range)
            .map_err(|e| e.to_string())?;
        if let nines_types::KeyRange::Between { start, end } = &range {
            if end <= start {
                return Err("mvcc: watcher range is empty".into());
            }
        }
        let filter = |f| create.filters.contains(&(f as i32));
        use epb::watch_create_request::FilterType;
        Ok(WatchSpec {
            range,
            start_revision: match create.start_revision {
                0 => revision + 1,
                r => r,
            },
            prev_kv: create.prev_kv,
            no_put: filter(FilterType::Noput),
            no_delete: filter(FilterType::Nodelete),
        })
    }

    /// Polls every watcher once; says whether any still has events to
    /// read, and whether any events were sent.
    async fn poll_all(&mut self) -> Result<(bool, bool), Gone> {
        let mut behind = false;
        let mut sent = false;
        // In id order from a cursor (a watcher may be canceled on the way),
        // without collecting the ids on every poll.
        let mut from = Some(i64::MIN);
        while let Some(cursor) = from {
            let Some((&id, entry)) = self.watchers.range_mut(cursor..).next() else {
                break;
            };
            from = id.checked_add(1);
            let polled = self.hub.poll(&mut entry.watcher, POLL_BYTES).await;
            let fragment = entry.fragment;
            match polled {
                Ok(Polled::Idle) => {}
                Ok(Polled::Events { events, through }) => {
                    behind |= entry.watcher.next <= self.hub.feed.fed();
                    if !events.is_empty() {
                        entry.sent = true;
                        sent = true;
                        self.send_events(id, events, through, fragment).await?;
                    }
                }
                Ok(Polled::Compacted { compact_revision }) => {
                    let response = epb::WatchResponse {
                        header: self.header(self.hub.revision()),
                        watch_id: id,
                        canceled: true,
                        compact_revision,
                        cancel_reason: "mvcc: required revision has been compacted".into(),
                        ..Default::default()
                    };
                    self.cancel(id);
                    self.send(response).await?;
                }
                Err(e) => {
                    tracing::warn!(watch_id = id, error = %e, "watch canceled: reading history failed");
                    let response = epb::WatchResponse {
                        header: self.header(self.hub.revision()),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: e.to_string(),
                        ..Default::default()
                    };
                    self.cancel(id);
                    self.send(response).await?;
                }
            }
        }
        Ok((behind, sent))
    }

    fn cancel(&mut self, id: i64) {
        if let Some(entry) = self.watchers.remove(&id) {
            self.key_bytes -= entry.key_bytes;
            self.hub.drop_watcher(entry.watcher);
        }
    }

    /// Sends `events` (revisions up to `through`) in responses of whole
    /// revisions of about [`POLL_BYTES`]; a revision larger than that is
    /// split into fragments if the watcher allowed it, else sent whole.
    async fn send_events(
        &self,
        id: i64,
        events: Vec<Event>,
        through: i64,
        fragment: bool,
    ) -> Result<(), Gone> {
        let sent = events.len() as u64;
        let mut responses = 0;
        for (last, chunk) in chunks(events, fragment) {
            let revision = if last { through } else { chunk.last_revision };
            let response = epb::WatchResponse {
                header: self.header(revision),
                watch_id: id,
                fragment: chunk.fragment,
                events: chunk.events,
                ..Default::default()
            };
            self.send(response).await?;
            responses += 1;
        }
        let counters = &self.hub.counters;
        counters
            .watch_events_sent
            .fetch_add(sent, Ordering::Relaxed);
        counters
            .watch_event_responses_sent
            .fetch_add(responses, Ordering::Relaxed);
        Ok(())
    }

    /// etcd's progress notification: a watcher that asked for them, is
    /// current and was sent nothing since the last tick learns the revision
    /// it is current to.
    async fn progress_tick(&mut self) -> Result<(), Gone> {
        let fed = self.hub.feed.fed();
        let mut due = Vec::new();
        for (id, entry) in self.watchers.iter_mut() {
            let current = entry.watcher.next > fed;
            // The fed revision, not the watcher's own position: one whose
            // start is in the future is current, but only to `fed`.
            if entry.progress_notify && current && !entry.sent {
                due.push((*id, fed));
            }
            entry.sent = false;
        }
        for (id, revision) in due {
            let response = epb::WatchResponse {
                header: self.header(revision),
                watch_id: id,
                ..Default::default()
            };
            self.send(response).await?;
        }
        Ok(())
    }
}
