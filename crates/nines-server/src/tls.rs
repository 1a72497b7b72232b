//! Transport security of both ports, from etcd's flags.
//!
//! - Client port: `--cert-file`/`--key-file` serve TLS; with
//!   `--client-cert-auth`, a client without a certificate from
//!   `--trusted-ca-file` fails the handshake.
//! - Peer port: `--peer-cert-file`/`--peer-key-file` serve TLS and are the
//!   certificate this member presents on every connection it opens to a
//!   peer (Raft, pre-vote, read index, probes), verified against
//!   `--peer-trusted-ca-file`; `--peer-client-cert-auth` (and
//!   `--peer-cert-allowed-cn`) refuse other peers at the handshake.
//! - Forwarding: a member sends a client call it cannot serve to the
//!   leader's client port (keeping that load off the Raft runtime, which
//!   serves the peer port). With client TLS on, it does so over TLS,
//!   verifying the leader against `--trusted-ca-file` and presenting its
//!   own `--cert-file` (etcd's convention: a member's client certificate
//!   is also its client identity), which is why `--cert-file` needs
//!   `--trusted-ca-file`. A leader without a client address is reached on
//!   its peer port, with the peer certificate.

use std::path::PathBuf;
use std::sync::Arc;

use nines_tls::{ClientFiles, ClientTls, Connector, ServerFiles, ServerTls};

use crate::error::ServerError;

/// etcd's TLS flags, part of `ServerArgs`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Client port TLS (etcd's flag): this certificate, with --key-file,
    /// serves clients over TLS only. Re-read when it changes on disk.
    #[arg(long, env = "NINES_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file.
    #[arg(long, env = "NINES_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA of client certificates (with --client-cert-auth) and of the
    /// members' client ports: a member forwarding a call to the leader's
    /// client port verifies it with this CA and presents --cert-file.
    /// Needed with --cert-file.
    #[arg(long, env = "NINES_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse the TLS handshake of a client without a certificate signed
    /// by --trusted-ca-file.
    #[arg(long, env = "NINES_CLIENT_CERT_AUTH")]
    pub client_cert_auth: bool,
    /// Peer port TLS: this certificate, with --peer-key-file, serves the
    /// peer port over TLS only and is presented on every connection this
    /// member opens to a peer. Re-read when it changes on disk.
    #[arg(long, env = "NINES_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file.
    #[arg(long, env = "NINES_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// The cluster CA: peers' certificates, server and client side, must
    /// chain to it. Needed with --peer-cert-file.
    #[arg(long, env = "NINES_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse the TLS handshake of a peer without a certificate signed by
    /// --peer-trusted-ca-file (mutual TLS between members).
    #[arg(long, env = "NINES_PEER_CLIENT_CERT_AUTH")]
    pub peer_client_cert_auth: bool,
    /// With --peer-client-cert-auth: a peer's certificate must also have
    /// this subject CN.
    #[arg(long, env = "NINES_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// Accept side of the client port.
    pub client: Option<Arc<ServerTls>>,
    /// Accept side of the peer port.
    pub peer: Option<Arc<ServerTls>>,
    /// Connections this member opens to peer ports.
    pub to_peers: Option<Arc<ClientTls>>,
    /// Connections this member opens to client ports (forwarding, --join).
    pub to_clients: Option<Arc<ClientTls>>,
}

fn needs(flag: &str, what: &str) -> ServerError {
    ServerError::Config(format!("{flag} needs {what}"))
}

impl Tls {
    /// Reads every file now: a missing or bad one is a start-up error.
    pub fn from_args(args: &TlsArgs) -> Result<Tls, ServerError> {
        let mut tls = Tls::default();
        match (&args.cert_file, &args.key_file) {
            (Some(cert), Some(key)) => {
                let Some(ca) = &args.trusted_ca_file else {
                    return Err(needs(
                        "--cert-file",
                        "--trusted-ca-file: members verify the leader's client port \
                         with it when they forward calls there",
                    ));
                };
                let files = ServerFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: Some(ca.clone()),
                    require_client_cert: args.client_cert_auth,
                    allowed_cn: None,
                };
                tls.client = Some(Arc::new(ServerTls::new("client port", files)?));
                let own = ClientFiles {
                    ca: ca.clone(),
                    cert: Some(cert.clone()),
                    key: Some(key.clone()),
                };
                tls.to_clients = Some(Arc::new(ClientTls::new("to client ports", own)?));
            }
            (None, None) => {
                if args.trusted_ca_file.is_some() || args.client_cert_auth {
                    return Err(needs(
                        "--trusted-ca-file or --client-cert-auth",
                        "--cert-file and --key-file",
                    ));
                }
            }
            (Some(_), None) => return Err(needs("--cert-file", "--key-file")),
            (None, Some(_)) => return Err(needs("--key-file", "--cert-file")),
        }
        match (&args.peer_cert_file, &args.peer_key_file) {
            (Some(cert), Some(key)) => {
                let Some(ca) = &args.peer_trusted_ca_file else {
                    return Err(needs(
                        "--peer-cert-file",
                        "--peer-trusted-ca-file: members verify each other with it",
                    ));
                };
                if args.peer_cert_allowed_cn.is_some() && !args.peer_client_cert_auth {
                    return Err(needs("--peer-cert-allowed-cn", "--peer-client-cert-auth"));
                }
                if !args.peer_client_cert_auth {
                    tracing::warn!(
                        "peer TLS without --peer-client-cert-auth: any host that reaches \
                         the peer port can open a connection to it"
                    );
                }
                let files = ServerFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: Some(ca.clone()),
                    require_client_cert: args.peer_client_cert_auth,
                    allowed_cn: args.peer_cert_allowed_cn.clone(),
                };
                tls.peer = Some(Arc::new(ServerTls::new("peer port", files)?));
                let own = ClientFiles {
                    ca: ca.clone(),
                    cert: Some(cert.clone()),
                    key: Some(key.clone()),
                };
                tls.to_peers = Some(Arc::new(ClientTls::new("to peer ports", own)?));
            }
            (None, None) => {
                if args.peer_trusted_ca_file.is_some()
                    || args.peer_client_cert_auth
                    || args.peer_cert_allowed_cn.is_some()
                {
                    return Err(needs(
                        "--peer-trusted-ca-file, --peer-client-cert-auth and \
                         --peer-cert-allowed-cn",
                        "--peer-cert-file and --peer-key-file",
                    ));
                }
            }
            (Some(_), None) => return Err(needs("--peer-cert-file", "--peer-key-file")),
            (None, Some(_)) => return Err(needs("--peer-key-file", "--peer-cert-file")),
        }
        Ok(tls)
    }

    /// Opens connections to peer ports.
    pub fn peer_connector(&self, source_ip: Option<std::net::IpAddr>) -> Connector {
        Connector::new(self.to_peers.clone(), source_ip)
    }

    /// Opens connections to client ports.
    pub fn client_connector(&self, source_ip: Option<std::net::IpAddr>) -> Connector {
        Connector::new(self.to_clients.clone(), source_ip)
    }

    /// The URL scheme of the client port, as etcd's member list shows it.
    pub fn client_scheme(&self) -> &'static str {
        scheme(self.client.is_some())
    }

    pub fn peer_scheme(&self) -> &'static str {
        scheme(self.peer.is_some())
    }
}

fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::{ServerArgs, ServerConfig};
    use crate::error::ServerError;

    #[test]
    fn tls_flags_need_their_partners() {
        let cases: [&[&str]; 9] = [
            &["--cert-file", "c"],
            &["--key-file", "k"],
            &["--client-cert-auth"],
            &["--trusted-ca-file", "ca"],
            &["--cert-file", "c", "--key-file", "k"],
            &["--peer-cert-file", "c"],
            &["--peer-client-cert-auth"],
            &["--peer-cert-allowed-cn", "x"],
            &["--peer-cert-file", "c", "--peer-key-file", "k"],
        ];
        for extra in cases {
            let argv = ["nines-server", "--id", "1"].iter().chain(extra);
            let args = ServerArgs::parse_from(argv);
            let result = ServerConfig::try_from(args);
            assert!(matches!(result, Err(ServerError::Config(_))), "{extra:?}");
        }
    }
}
