//! The accept side of a port.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::TcpStream;

use crate::error::TlsError;
use crate::reload::Reloading;
use crate::stream::Stream;
use crate::{files, provider, ALPN_H2};

/// A port's TLS files and rules (etcd's `--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth`, and the peer flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Refuse the handshake of a client without a certificate from `client_ca`.
    pub require_client_cert: bool,
    /// A client certificate's subject CN must be this.
    pub allowed_cn: Option<String>,
}

pub struct ServerTls {
    config: Reloading<ServerConfig>,
}

impl ServerTls {
    /// Reads and checks the files now: any problem is a start-up error.
    pub fn new(what: &'static str, files: ServerFiles) -> Result<ServerTls, TlsError> {
        if files.require_client_cert && files.client_ca.is_none() {
            return Err(TlsError::Config(format!(
                "{what}: client certificate auth needs a trusted CA file"
            )));
        }
        if files.allowed_cn.is_some() && !files.require_client_cert {
            return Err(TlsError::Config(format!(
                "{what}: an allowed CN needs client certificate auth"
            )));
        }
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let config = Reloading::new(what, paths, Box::new(move || build(&files)))?;
        Ok(ServerTls { config })
    }

    /// Runs the server side of the handshake on an accepted connection,
    /// with the files as they are now.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Stream> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        let tls = acceptor.accept(tcp).await?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))))
    }

    #[cfg(test)]
    pub(crate) fn expire(&self) {
        self.config.expire();
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

fn build(files: &ServerFiles) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let chain = files::certs(&files.cert)?;
    let key = files::key(&files.key)?;
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|source| TlsError::Rustls {
            what: format!("{} with {}", files.cert.display(), files.key.display()),
            source,
        })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS versions".into(),
            source,
        })?;
    let builder = match (&files.client_ca, files.require_client_cert) {
        (Some(ca), true) => {
            let roots = Arc::new(files::roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsError::BadCa {
                    path: ca.clone(),
                    why: e.to_string(),
                })?;
            let verifier: Arc<dyn ClientCertVerifier> = match &files.allowed_cn {
                Some(cn) => Arc::new(AllowedCn {
                    inner: verifier,
                    cn: cn.clone(),
                }),
                None => verifier,
            };
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(OneCert(Arc::new(certified))));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The one certificate of a port, whatever name the client asks for.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The CA check, then the subject CN must equal `cn` (etcd's
/// `--peer-cert-allowed-cn`): a failure aborts the handshake.
#[derive(Debug)]
struct AllowedCn {
    inner: Arc<dyn ClientCertVerifier>,
    cn: String,
}

impl ClientCertVerifier for AllowedCn {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if crate::cn::common_names(end_entity).contains(&self.cn) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
