//! etcd's v3 gRPC API (`etcdserverpb`) on the client port, so etcdctl and
//! etcd's client libraries work against nines. Services and methods that
//! land with later issues (Auth beyond its status, and
//! Maintenance's Hash and Downgrade) answer UNIMPLEMENTED through
//! the generated default stubs.

mod auth;
mod batch;
mod cluster;
pub mod convert;
mod election;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod permits;
mod range;
pub mod session;
mod snapshot;
mod txn_read;
mod watch;

use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use nines_proto::etcd::{v3electionpb, v3lockpb};
use nines_proto::v1 as pb;

pub use auth::EtcdAuth;
pub use batch::EtcdForward;
pub use cluster::EtcdCluster;
pub use election::EtcdElection;
pub use kv::EtcdKv;
pub use lease::EtcdLease;
pub use lock::EtcdLock;
pub use maintenance::{EtcdMaintenance, ETCD_API_VERSION};
pub use watch::EtcdWatch;

use crate::api::forward_batch::WriteBatcher;
use crate::core::NodeCore;
use crate::network::MAX_MESSAGE_BYTES;
use crate::read_limit::{HoldUntilSent, ReadLimiter};

/// etcd's services: KV, Cluster, Maintenance, Auth, Watch, Lease, Lock and
/// Election.
pub struct Services {
    /// Writes members forward, several per call (`api::forward_batch`).
    pub forward: pb::forward_server::ForwardServer<EtcdForward>,
    pub kv: HoldUntilSent<epb::kv_server::KvServer<EtcdKv>>,
    pub cluster: epb::cluster_server::ClusterServer<EtcdCluster>,
    pub maintenance: epb::maintenance_server::MaintenanceServer<EtcdMaintenance>,
    pub auth: epb::auth_server::AuthServer<EtcdAuth>,
    pub watch: epb::watch_server::WatchServer<EtcdWatch>,
    pub lease: epb::lease_server::LeaseServer<EtcdLease>,
    pub lock: v3lockpb::lock_server::LockServer<EtcdLock>,
    pub election: v3electionpb::election_server::ElectionServer<EtcdElection>,
}

/// etcd's KV served over `kv`.
fn kv_server(
    kv: &Arc<EtcdKv>,
    max_decode: usize,
) -> HoldUntilSent<epb::kv_server::KvServer<EtcdKv>> {
    HoldUntilSent {
        inner: epb::kv_server::KvServer::from_arc(kv.clone())
            .max_decoding_message_size(max_decode)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    }
}

pub fn services(core: &Arc<NodeCore>, reads: &Arc<ReadLimiter>, max_decode: usize) -> Services {
    let kv = Arc::new(EtcdKv {
        core: core.clone(),
        reads: reads.clone(),
        batcher: Arc::new(WriteBatcher::default()),
    });
    Services {
        // A batch is bounded by its count of writes, each small.
        forward: pb::forward_server::ForwardServer::new(EtcdForward { kv: kv.clone() })
            .max_decoding_message_size(max_decode)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        kv: kv_server(&kv, max_decode),
        cluster: epb::cluster_server::ClusterServer::new(EtcdCluster { core: core.clone() }),
        maintenance: epb::maintenance_server::MaintenanceServer::new(EtcdMaintenance {
            core: core.clone(),
        }),
        auth: epb::auth_server::AuthServer::new(EtcdAuth { core: core.clone() }),
        watch: epb::watch_server::WatchServer::new(EtcdWatch { core: core.clone() })
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        lease: epb::lease_server::LeaseServer::new(EtcdLease { core: core.clone() }),
        lock: v3lockpb::lock_server::LockServer::new(EtcdLock::new(core)),
        election: v3electionpb::election_server::ElectionServer::new(EtcdElection::new(core)),
    }
}
