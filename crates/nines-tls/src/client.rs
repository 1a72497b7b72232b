//! The connect side: verify the server against a CA, present a
//! certificate when configured.

use std::path::PathBuf;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::TlsError;
use crate::reload::Reloading;
use crate::stream::Stream;
use crate::{files, provider, ALPN_H2};

/// etcdctl's `--cacert`, `--cert`, `--key`; a member's peer (or client)
/// CA, certificate and key for the connections it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    /// The CA the server's certificate must chain to.
    pub ca: PathBuf,
    /// Presented when the server asks for a client certificate.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

pub struct ClientTls {
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    /// Reads and checks the files now: any problem is a start-up error.
    pub fn new(what: &'static str, files: ClientFiles) -> Result<ClientTls, TlsError> {
        if files.cert.is_some() != files.key.is_some() {
            return Err(TlsError::Config(format!(
                "{what}: a client certificate needs its key, and a key its certificate"
            )));
        }
        let mut paths = vec![files.ca.clone()];
        paths.extend(files.cert.clone());
        paths.extend(files.key.clone());
        let config = Reloading::new(what, paths, Box::new(move || build(&files)))?;
        Ok(ClientTls { config })
    }

    /// The client side of the handshake with `host` (a DNS name or an IP
    /// address, which the server's certificate must name).
    pub async fn connect(&self, host: &str, tcp: TcpStream) -> std::io::Result<Stream> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{host:?} is not a TLS server name: {e}"),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.config.current());
        let tls = connector.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

fn build(files: &ClientFiles) -> Result<ClientConfig, TlsError> {
    let roots = files::roots(&files.ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS versions".into(),
            source,
        })?
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(files::certs(cert)?, files::key(key)?)
            .map_err(|source| TlsError::Rustls {
                what: format!("{} with {}", cert.display(), key.display()),
                source,
            })?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
