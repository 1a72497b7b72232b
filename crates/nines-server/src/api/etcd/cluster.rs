//! etcd's `Cluster` service: member list, add, remove, update and promote,
//! on `NodeCore`'s membership operations (shared with `nines.v1.Admin`).
//! Changes run on the leader; a follower forwards them there.

use std::collections::BTreeSet;
use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use nines_types::{Node, NodeId};
use openraft::Membership;
use tonic::transport::Channel;
use tonic::{Response, Status};

use epb::cluster_client::ClusterClient;

use super::convert;
use crate::api::forward::{self, is_forwarded};
use crate::core::{NodeCore, Routed};
use crate::tls::Tls;

pub struct EtcdCluster {
    pub core: Arc<NodeCore>,
}

/// An address as etcd's URL; `https` where this member's port of that
/// kind has TLS (every member of a cluster runs the same transport).
fn url(scheme: &str, addr: &str) -> Vec<String> {
    if addr.is_empty() {
        Vec::new()
    } else {
        vec![format!("{scheme}://{addr}")]
    }
}

/// A member as etcd shows it. One added by peer URL that has not started
/// yet has no client address, and, as in etcd, no name: etcdctl lists it
/// as "unstarted".
fn member(id: NodeId, node: &Node, voters: &BTreeSet<NodeId>, tls: &Tls) -> epb::Member {
    let name = if node.api_addr.is_empty() {
        String::new()
    } else {
        format!("nines-{id}")
    };
    epb::Member {
        id,
        name,
        peer_ur_ls: url(tls.peer_scheme(), &node.raft_addr),
        client_ur_ls: url(tls.client_scheme(), &node.api_addr),
        is_learner: !voters.contains(&id),
    }
}

fn members_of(membership: &Membership<NodeId, Node>, tls: &Tls) -> Vec<epb::Member> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| member(*id, node, &voters, tls))
        .collect()
}

impl EtcdCluster {
    /// This member's header and its view of the members.
    fn members(&self) -> (epb::ResponseHeader, Vec<epb::Member>) {
        self.listed(&self.core.membership())
    }

    /// This member's header and `membership`'s members.
    fn listed(
        &self,
        membership: &Membership<NodeId, Node>,
    ) -> (epb::ResponseHeader, Vec<epb::Member>) {
        let members = members_of(membership, &self.core.config.tls);
        let header = convert::header(self.core.header(self.core.reader.revision()));
        (header, members)
    }

    /// Sends `message` to the leader through `call`, then waits (briefly)
    /// until this member sees the change too, and answers with its own
    /// header and list: etcdctl's `member add` checks that the member list
    /// it asks for next comes from the member that made the change.
    async fn at_leader<Req, Resp>(
        &self,
        leader: Node,
        message: Req,
        call: impl AsyncFnOnce(
            ClusterClient<Channel>,
            tonic::Request<Req>,
        ) -> Result<Response<Resp>, Status>,
        parts: impl Fn(&mut Resp) -> (&mut Option<epb::ResponseHeader>, &mut Vec<epb::Member>),
    ) -> Result<Response<Resp>, Status> {
        let call = |ch, r| call(ClusterClient::new(ch), r);
        let mut answer = forward::to_leader(&self.core, &leader, message, None, call).await?;
        let (header, members) = parts(answer.get_mut());
        if self.wait_seen(&ids_of(members)).await {
            (*header, *members) = {
                let (h, m) = self.members();
                (Some(h), m)
            };
        }
        Ok(answer)
    }

    /// Whether this member's view reached `want` within the request timeout.
    async fn wait_seen(&self, want: &[(NodeId, bool, Vec<String>)]) -> bool {
        let seen = |m: &openraft::RaftMetrics<NodeId, Node>| {
            ids_of(&members_of(
                m.membership_config.membership(),
                &Tls::default(),
            )) == want
        };
        let wait = self.core.raft.wait(Some(self.core.timeout()));
        wait.metrics(seen, "member change seen here").await.is_ok()
    }
}

/// Member ids with their peer URLs and learner flags: what a change alters.
fn ids_of(members: &[epb::Member]) -> Vec<(NodeId, bool, Vec<String>)> {
    let mut ids: Vec<_> = members
        .iter()
        .map(|m| (m.id, m.is_learner, m.peer_ur_ls.clone()))
        .collect();
    ids.sort();
    ids
}

#[tonic::async_trait]
impl epb::cluster_server::Cluster for EtcdCluster {
    async fn member_list(
        &self,
        request: tonic::Request<epb::MemberListRequest>,
    ) -> Result<Response<epb::MemberListResponse>, Status> {
        // Unchecked, as in etcd: health checks and tools read it.
        // etcd 3.5's `linearizable`: after a read barrier this member has
        // applied every change committed before the call, so its view is
        // current; without one, a member catching up (or restarted on old
        // data) would list members as they were.
        let (header, members) = if request.get_ref().linearizable {
            let forwarded = is_forwarded(&request);
            if let Routed::Forward(leader) = self.core.linearize(forwarded).await? {
                let call = |ch, r| async move { ClusterClient::new(ch).member_list(r).await };
                return forward::to_leader(&self.core, &leader, request.into_inner(), None, call)
                    .await;
            }
            self.listed(&self.core.applied_membership().await?)
        } else {
            self.members()
        };
        Ok(Response::new(epb::MemberListResponse {
            header: Some(header),
            members,
        }))
    }

    async fn member_add(
        &self,
        request: tonic::Request<epb::MemberAddRequest>,
    ) -> Result<Response<epb::MemberAddResponse>, Status> {
        self.core.admin(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let m = request.into_inner();
        let routed = self.core.add_member(&m.peer_ur_ls, m.is_learner, forwarded);
        match routed.await? {
            Routed::Local(id) => {
                let (header, members) = self.members();
                let member = members.iter().find(|m| m.id == id).cloned();
                Ok(Response::new(epb::MemberAddResponse {
                    header: Some(header),
                    member,
                    members,
                }))
            }
            Routed::Forward(leader) => {
                let call = async |mut c: ClusterClient<Channel>, r| c.member_add(r).await;
                self.at_leader(leader, m, call, |r| (&mut r.header, &mut r.members))
                    .await
            }
        }
    }

    async fn member_remove(
        &self,
        request: tonic::Request<epb::MemberRemoveRequest>,
    ) -> Result<Response<epb::MemberRemoveResponse>, Status> {
        self.core.admin(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let m = request.into_inner();
        match self.core.remove_member(m.id, forwarded).await? {
            Routed::Local(()) => {
                let (header, members) = self.members();
                let header = Some(header);
                Ok(Response::new(epb::MemberRemoveResponse { header, members }))
            }
            Routed::Forward(leader) => {
                let call = async |mut c: ClusterClient<Channel>, r| c.member_remove(r).await;
                self.at_leader(leader, m, call, |r| (&mut r.header, &mut r.members))
                    .await
            }
        }
    }

    async fn member_update(
        &self,
        request: tonic::Request<epb::MemberUpdateRequest>,
    ) -> Result<Response<epb::MemberUpdateResponse>, Status> {
        self.core.admin(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let m = request.into_inner();
        let routed = self.core.update_peer_addr(m.id, &m.peer_ur_ls, forwarded);
        match routed.await? {
            Routed::Local(()) => {
                let (header, members) = self.members();
                let header = Some(header);
                Ok(Response::new(epb::MemberUpdateResponse { header, members }))
            }
            Routed::Forward(leader) => {
                let call = async |mut c: ClusterClient<Channel>, r| c.member_update(r).await;
                self.at_leader(leader, m, call, |r| (&mut r.header, &mut r.members))
                    .await
            }
        }
    }

    async fn member_promote(
        &self,
        request: tonic::Request<epb::MemberPromoteRequest>,
    ) -> Result<Response<epb::MemberPromoteResponse>, Status> {
        self.core.admin(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let m = request.into_inner();
        match self.core.promote(m.id, forwarded).await? {
            Routed::Local(()) => {
                let (header, members) = self.members();
                let header = Some(header);
                Ok(Response::new(epb::MemberPromoteResponse {
                    header,
                    members,
                }))
            }
            Routed::Forward(leader) => {
                let call = async |mut c: ClusterClient<Channel>, r| c.member_promote(r).await;
                self.at_leader(leader, m, call, |r| (&mut r.header, &mut r.members))
                    .await
            }
        }
    }
}
