//! etcd's `Lease` service. Grant and revoke are writes; keepalive and
//! time-to-live are answered by the leader (followers forward them), since
//! only it counts TTLs down (`crate::lease`).

use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use nines_proto::etcd::etcdserverpb as epb;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use epb::lease_client::LeaseClient;
use nines_proto::admin_client::AdminClient;

use super::{convert, session};
use crate::api::forward::{self, is_forwarded};
use crate::core::{NodeCore, Routed};
use crate::error::ApiError;
use crate::metrics::Counters;

/// Keepalives of one stream answered at once: they share leadership
/// checks, and one slow forward does not hold up the others.
const IN_FLIGHT_PER_STREAM: usize = 64;
/// Responses queued per stream before its task waits for the client.
const OUT_QUEUE: usize = 64;

pub struct EtcdLease {
    pub core: Arc<NodeCore>,
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<epb::LeaseKeepAliveResponse, Status>> + Send>>;

fn lease(channel: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(channel).max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES)
}

#[tonic::async_trait]
impl epb::lease_server::Lease for EtcdLease {
    async fn lease_grant(
        &self,
        request: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status> {
        self.core.caller(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let session = session::from_metadata(request.metadata())?;
        let message = request.into_inner();
        match self
            .core
            .lease_grant(message.id, message.ttl, session, forwarded)
            .await?
        {
            Routed::Local(resp) => {
                let (revision, result) = crate::api::convert::applied(resp)?;
                let nines_types::CommandResult::LeaseGranted { id, ttl } = result else {
                    return Err(ApiError::Internal(format!("grant answered {result:?}")).into());
                };
                Ok(Response::new(epb::LeaseGrantResponse {
                    header: Some(convert::header(self.core.header(revision))),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            Routed::Forward(leader) => {
                let call = |ch, r| async move { lease(ch).lease_grant(r).await };
                forward::to_leader(&self.core, &leader, message, session, call).await
            }
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = self.core.caller(request.metadata())?;
        let session = session::from_metadata(request.metadata())?;
        let message = request.into_inner();
        if message.id == 0 {
            return Err(ApiError::LeaseNotFound.into());
        }
        // etcd: revoking deletes the lease's keys, so it needs write on each.
        for key in self.core.reader.lease_keys(message.id) {
            self.core.check_keys(&caller, true, &key, &[])?;
        }
        match self
            .core
            .lease_revoke(message.id, session, forwarded)
            .await?
        {
            Routed::Local(resp) => {
                let (revision, _) = crate::api::convert::applied(resp)?;
                Ok(Response::new(epb::LeaseRevokeResponse {
                    header: Some(convert::header(self.core.header(revision))),
                }))
            }
            Routed::Forward(leader) => {
                let call = |ch, r| async move { lease(ch).lease_revoke(r).await };
                let answer = forward::to_leader(&self.core, &leader, message, session, call);
                forward::caught_up(&self.core, answer.await).await
            }
        }
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<epb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let forwarded = is_forwarded(&request);
        self.core.caller(request.metadata())?;
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        tokio::spawn(crate::auth::with_identity(
            crate::auth::current_identity(),
            keep_alive_stream(self.core.clone(), request.into_inner(), tx, forwarded),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<epb::LeaseTimeToLiveResponse>, Status> {
        let caller = self.core.caller(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let answer = self
            .core
            .lease_time_to_live(message.id, message.keys, forwarded)
            .await?;
        match answer {
            Routed::Local(ttl) => {
                let header = Some(convert::header(self.core.header(ttl.revision)));
                // etcd: an unknown lease is TTL -1, not an error.
                let (ttl, granted_ttl, keys) = match ttl.lease {
                    Some(l) => (l.remaining, l.granted_ttl, l.keys),
                    None => (-1, 0, Vec::new()),
                };
                // Key names are data: only a caller who may read every one
                // of them gets them (etcd's fix for CVE-2023-32082).
                for key in &keys {
                    self.core.check_keys(&caller, false, key, &[])?;
                }
                Ok(Response::new(epb::LeaseTimeToLiveResponse {
                    header,
                    id: message.id,
                    ttl,
                    granted_ttl,
                    keys,
                }))
            }
            Routed::Forward(leader) => {
                let call = |ch, r| async move { lease(ch).lease_time_to_live(r).await };
                forward::to_leader(&self.core, &leader, message, None, call).await
            }
        }
    }

    async fn lease_leases(
        &self,
        request: Request<epb::LeaseLeasesRequest>,
    ) -> Result<Response<epb::LeaseLeasesResponse>, Status> {
        self.core.caller(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        if let Routed::Forward(leader) = self.core.linearize(forwarded).await? {
            let call = |ch, r| async move { lease(ch).lease_leases(r).await };
            return forward::to_leader(&self.core, &leader, message, None, call).await;
        }
        let revision = self.core.reader.revision();
        let leases = self
            .core
            .reader
            .leases()
            .into_iter()
            .map(|l| epb::LeaseStatus { id: l.id })
            .collect();
        Ok(Response::new(epb::LeaseLeasesResponse {
            header: Some(convert::header(self.core.header(revision))),
            leases,
        }))
    }
}

/// Serves one keepalive stream until the client closes it or a keepalive
/// fails (the client then reconnects, as etcd's does).
async fn keep_alive_stream(
    core: Arc<NodeCore>,
    mut requests: Streaming<epb::LeaseKeepAliveRequest>,
    out: mpsc::Sender<Result<epb::LeaseKeepAliveResponse, Status>>,
    forwarded: bool,
) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            next = requests.message(), if open && running.len() < IN_FLIGHT_PER_STREAM => {
                match next {
                    Ok(Some(req)) => running.push(keep_alive(&core, req.id, forwarded)),
                    // Closed by the client, or broken: answer what is running.
                    Ok(None) | Err(_) => open = false,
                }
            }
            Some(answer) = running.next() => {
                let failed = answer.is_err();
                if out.send(answer).await.is_err() || failed {
                    return;
                }
            }
            _ = out.closed() => return,
            else => return,
        }
        if !open && running.is_empty() {
            return;
        }
    }
}

/// One keepalive: here on the leader, else forwarded to it.
async fn keep_alive(
    core: &NodeCore,
    id: i64,
    forwarded: bool,
) -> Result<epb::LeaseKeepAliveResponse, Status> {
    Counters::inc(&core.counters.lease_keepalives);
    match core.lease_renew(id, forwarded).await? {
        Routed::Local((revision, ttl)) => Ok(epb::LeaseKeepAliveResponse {
            header: Some(convert::header(core.header(revision))),
            id,
            ttl,
        }),
        Routed::Forward(leader) => {
            let message = nines_proto::LeaseRenewRequest { id };
            let call = |ch, r| async move { AdminClient::new(ch).lease_renew(r).await };
            let answer = forward::to_leader(core, &leader, message, None, call)
                .await?
                .into_inner();
            let header = answer.header.map(|h| epb::ResponseHeader {
                cluster_id: h.cluster_id,
                member_id: h.member_id,
                revision: h.revision,
                raft_term: h.raft_term,
            });
            Ok(epb::LeaseKeepAliveResponse {
                header,
                id,
                ttl: answer.ttl,
            })
        }
    }
}
