//! etcd's own gRPC clients on one member, without nines' client in between:
//! what any etcd client sends, limits and routing left to the server.

use std::time::Duration;

use nines_client::proto::etcd::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

/// Messages these clients send and take: past the server's limits, so
/// tests of those limits meet the server's answer, not the client's.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// etcd's KV client on the member at `addr` (its client port), connected
/// lazily; each call is bounded by `timeout`.
pub fn etcd_kv(addr: &str, timeout: Duration) -> KvClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a client address")
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect_lazy();
    KvClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE)
        .max_decoding_message_size(MAX_MESSAGE)
}
