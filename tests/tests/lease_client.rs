//! nines-client's lease API against real servers: the same checks against
//! a 3-member etcd (the reference) and a 3-node nines: grant (server- and
//! client-chosen ids), time-to-live with keys, the lease list, put with a
//! lease, revoke deleting the lease's keys, etcd's answers for unknown
//! leases, one-shot keepalives, and the keeper keeping a key alive past
//! its TTL until dropped, after which the key vanishes within the TTL plus
//! a bound. On nines, the keeper also survives the pause of the member its
//! stream is on.

use std::time::Duration;

use nines_client::{Client, ClientConfig, ClientError};
use nines_tests::etcd::EtcdCluster;
use nines_tests::{Cluster, ClusterOptions};
use tokio::time::Instant;

const LONG: Duration = Duration::from_secs(30);
/// Expiry may lag the TTL by the server's expiry tick and a Raft round;
/// generous for a loaded 2-core machine.
const EXPIRY_SLACK: Duration = Duration::from_secs(3);

fn client(endpoints: Vec<String>) -> Client {
    let mut config = ClientConfig::new(endpoints);
    config.retry_deadline = Duration::from_secs(20);
    Client::new(config).expect("client")
}

/// Polls until `key` is gone; the time from `from` to when it was seen gone.
async fn vanished(client: &Client, key: &str, from: Instant, limit: Duration) -> Duration {
    loop {
        if client.get(key).await.expect("get").is_none() {
            return from.elapsed();
        }
        assert!(from.elapsed() < limit, "{key} still there after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rpcs(client: &Client) {
    // Server-chosen id; the TTL granted is the server's (it may raise it).
    let grant = client.lease_grant(30, 0).await.expect("grant");
    assert!(grant.id > 0, "{grant:?}");
    assert!(grant.ttl >= 30, "{grant:?}");
    let id = grant.id;

    client.put_with_lease("l/a", "1", id).await.expect("put a");
    client.put_with_lease("l/b", "2", id).await.expect("put b");
    client.put("l/plain", "3").await.expect("put plain");
    let kv = client.get("l/a").await.unwrap().expect("l/a");
    assert_eq!(kv.lease, id);

    let ttl = client.lease_time_to_live(id, true).await.expect("ttl");
    assert_eq!((ttl.id, ttl.granted_ttl), (id, grant.ttl));
    // A new leader adds time to every countdown for clients to find it
    // (etcd: its election timeout; nines: 1 s), so remaining may exceed
    // the granted TTL early in a term.
    assert!(ttl.ttl > 0 && ttl.ttl <= grant.ttl + 2, "{ttl:?}");
    let mut keys = ttl.keys.clone();
    keys.sort();
    assert_eq!(keys, vec![b"l/a".to_vec(), b"l/b".to_vec()]);
    let without = client.lease_time_to_live(id, false).await.unwrap();
    assert!(without.keys.is_empty());

    // Client-chosen id.
    let chosen = 0x694d_77aa_9e38_260f;
    let grant2 = client.lease_grant(60, chosen).await.expect("grant 2");
    assert_eq!(grant2.id, chosen);
    let listed: Vec<i64> = client
        .lease_leases()
        .await
        .expect("leases")
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    assert!(
        listed.contains(&id) && listed.contains(&chosen),
        "{listed:?}"
    );
    let again = client.lease_grant(60, chosen).await;
    assert!(again.is_err(), "a second grant of one id is refused");

    assert!(client.lease_keep_alive_once(id).await.expect("once") > 0);

    // Revoking deletes every key of the lease, in one revision.
    let before = client.get("l/plain").await.unwrap().unwrap().mod_revision;
    let revoked = client.lease_revoke(id).await.expect("revoke");
    let revision = revoked.header.expect("header").revision;
    assert!(revision > before);
    assert!(client.get("l/a").await.unwrap().is_none());
    assert!(client.get("l/b").await.unwrap().is_none());
    assert!(client.get("l/plain").await.unwrap().is_some());

    // etcd's answers for a lease it does not know.
    let gone = client.lease_time_to_live(id, false).await.expect("ttl");
    assert_eq!(gone.ttl, -1, "{gone:?}");
    assert!(matches!(
        client.lease_revoke(id).await,
        Err(ClientError::LeaseNotFound { id: i }) if i == id
    ));
    assert!(matches!(
        client.put_with_lease("l/c", "x", id).await,
        Err(ClientError::LeaseNotFound { id: i }) if i == id
    ));
    assert!(matches!(
        client.lease_keep_alive_once(id).await,
        Err(ClientError::LeaseNotFound { id: i }) if i == id
    ));
    assert!(matches!(
        client.lease_keep_alive(id).await,
        Err(ClientError::LeaseNotFound { id: i }) if i == id
    ));
    client.lease_revoke(chosen).await.expect("revoke chosen");
}

/// Keeps a short lease alive for three TTLs, drops the keeper, and
/// returns how long after the last renewal's TTL the key vanished.
async fn keeper_then_abandon(client: &Client) -> Duration {
    let grant = client.lease_grant(2, 0).await.expect("grant");
    let ttl = Duration::from_secs(grant.ttl as u64);
    client
        .put_with_lease("k/kept", "v", grant.id)
        .await
        .expect("put");
    let keeper = client.lease_keep_alive(grant.id).await.expect("keeper");
    tokio::time::sleep(ttl * 3).await;
    let state = keeper.state();
    assert!(state.renewals >= 6, "every TTL/3: {state:?}");
    assert!(state.lapses.is_empty() && !state.expired, "{state:?}");
    assert!(client.get("k/kept").await.unwrap().is_some(), "kept alive");
    let until = state.alive_until().expect("renewed");
    drop(keeper);
    let after = vanished(client, "k/kept", until, ttl + EXPIRY_SLACK + ttl).await;
    let ttl_now = client.lease_time_to_live(grant.id, false).await.unwrap();
    assert_eq!(ttl_now.ttl, -1, "expired: {ttl_now:?}");
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_rpcs_and_keeper_against_etcd() {
    let etcd = EtcdCluster::start(3);
    let client = client(etcd.client_urls.clone());
    rpcs(&client).await;
    let late = keeper_then_abandon(&client).await;
    assert!(late < EXPIRY_SLACK, "etcd expired {late:?} after the TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_rpcs_and_keeper_against_nines() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let client = client(cluster.endpoints());
    rpcs(&client).await;
    let late = keeper_then_abandon(&client).await;
    assert!(late < EXPIRY_SLACK, "nines expired {late:?} after the TTL");
}

/// The member serving the keeper's stream is paused (SIGSTOP) for twice
/// the TTL; the keeper moves to another member and the key stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_survives_the_pause_of_its_member() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let client = client(cluster.endpoints());
    let grant = client.lease_grant(3, 0).await.expect("grant");
    client
        .put_with_lease("p/kept", "v", grant.id)
        .await
        .expect("put");
    // The keeper starts on the leader, the member a client knows best.
    client.discover_leader().await;
    let keeper = client.lease_keep_alive(grant.id).await.expect("keeper");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.signal(leader, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(grant.ttl as u64 * 2)).await;
    let state = keeper.state();
    cluster.signal(leader, libc::SIGCONT);
    assert!(state.reconnects >= 1, "{state:?}");
    assert!(state.lapses.is_empty(), "{state:?}");
    assert!(!state.expired, "{state:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        client.get("p/kept").await.unwrap().is_some(),
        "kept alive through the pause: {:?}",
        keeper.state()
    );
    assert!(!keeper.is_expired());
}
