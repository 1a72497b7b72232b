//! `--tls`: every member serves clients over TLS with client certificate
//! auth and talks to its peers over mutual TLS (a CN allow-list), and every
//! connection this harness opens (workloads, watchers, final reads, the
//! nemesis's status and membership calls) presents a client certificate.
//!
//! The certificates come from the test harness's `nines_tests::pki`, the
//! one the TLS integration tests use. The fault proxy forwards bytes, so
//! the members' handshakes pass through it and a cut connection is a cut
//! TLS session.
//!
//! The setting is process-wide, set once before the cluster starts: one
//! run has one cluster, and every client constructor reads it.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nines_client::{ClientConfig, Connector, TlsFiles};
use nines_tests::pki::Pki;
use nines_tls::ClientTls;
use tonic::transport::{Channel, Endpoint};

struct ClientSide {
    files: TlsFiles,
    connector: Connector,
}

static CLIENT_SIDE: OnceLock<ClientSide> = OnceLock::new();

/// Makes the certificates under `dir` and turns client TLS on for the
/// rest of the run. Returns the server flags.
pub fn enable(dir: &Path) -> anyhow::Result<Vec<String>> {
    let pki = Pki::create(dir)?;
    let files = pki.user_tls();
    let tls = ClientTls::new("nines-jepsen", files.clone())?;
    let side = ClientSide {
        files,
        connector: Connector::new(Some(Arc::new(tls)), None),
    };
    anyhow::ensure!(CLIENT_SIDE.set(side).is_ok(), "TLS enabled twice");
    Ok(pki.server_args())
}

pub fn enabled() -> bool {
    CLIENT_SIDE.get().is_some()
}

/// A client configuration for `addrs`, with TLS when it is on.
pub fn client_config(addrs: Vec<String>) -> ClientConfig {
    let mut config = ClientConfig::new(addrs);
    config.tls = CLIENT_SIDE.get().map(|side| side.files.clone());
    config
}

/// A lazily connecting channel to one client address, over TLS when it
/// is on; `connect_timeout` bounds the TCP connect (and with TLS the
/// handshake too).
pub fn channel(addr: &str, connect_timeout: Duration) -> anyhow::Result<Channel> {
    let endpoint = |e: Endpoint| e.connect_timeout(connect_timeout).tcp_nodelay(true);
    Ok(match CLIENT_SIDE.get() {
        Some(side) => side.connector.channel(addr, endpoint)?,
        None => endpoint(Endpoint::from_shared(format!("http://{addr}"))?).connect_lazy(),
    })
}

/// The scheme members show in their peer URLs.
pub fn peer_scheme() -> &'static str {
    if enabled() {
        "https"
    } else {
        "http"
    }
}
