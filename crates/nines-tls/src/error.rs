use std::path::PathBuf;

/// Why a TLS configuration could not be built: each names the file or flag
/// at fault, for a start-up error an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {max} bytes; not a PEM file", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: {why}", path.display())]
    Pem { path: PathBuf, why: String },
    #[error("{}: {why}", path.display())]
    BadCa { path: PathBuf, why: String },
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },
    #[error("{0}")]
    Config(String),
}
