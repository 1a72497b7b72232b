//! etcd's `Cluster` service: `MemberList` (etcdctl member list, and client
//! endpoint discovery). Membership changes stay on `nines.v1.Cluster`
//! until the etcd API issue moves them here; they answer UNIMPLEMENTED.

use std::collections::BTreeSet;
use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use nines_types::{Node, NodeId};
use tonic::{Response, Status};

use super::convert;
use crate::core::NodeCore;

pub struct EtcdCluster {
    pub core: Arc<NodeCore>,
}

fn url(addr: &str) -> Vec<String> {
    if addr.is_empty() {
        Vec::new()
    } else {
        vec![format!("http://{addr}")]
    }
}

fn member(id: NodeId, node: &Node, voters: &BTreeSet<NodeId>) -> epb::Member {
    epb::Member {
        id,
        name: format!("nines-{id}"),
        peer_ur_ls: url(&node.raft_addr),
        client_ur_ls: url(&node.api_addr),
        is_learner: !voters.contains(&id),
    }
}

#[tonic::async_trait]
impl epb::cluster_server::Cluster for EtcdCluster {
    async fn member_list(
        &self,
        _request: tonic::Request<epb::MemberListRequest>,
    ) -> Result<Response<epb::MemberListResponse>, Status> {
        let m = self.core.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| member(*id, node, &voters))
            .collect();
        let header = convert::header(self.core.header(self.core.reader.revision()));
        Ok(Response::new(epb::MemberListResponse {
            header: Some(header),
            members,
        }))
    }
}
