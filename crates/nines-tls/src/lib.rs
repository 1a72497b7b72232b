//! TLS for nines' client and peer ports, on rustls with the ring provider.
//!
//! - `ServerTls`: the accept side of a port (`--cert-file` ...), with
//!   optional client certificate verification and an allowed CN.
//! - `ClientTls`: the connect side (a member reaching a peer or the
//!   leader's client port, or nines' client), verifying the server against
//!   a CA and presenting a certificate when given one.
//! - `Connector`: a tonic channel connector that opens TCP (optionally from
//!   a source IP) and, with a `ClientTls`, runs the handshake.
//!
//! Both sides re-read their files when they change on disk (checked at
//! most every `RELOAD_CHECK`), so certificates rotate without a restart:
//! new connections use the new files, open ones keep theirs.

mod client;
pub mod cn;
mod connector;
mod error;
mod files;
#[cfg(test)]
mod handshake_tests;
mod reload;
mod server;
mod stream;

pub use client::{ClientFiles, ClientTls};
pub use connector::Connector;
pub use error::TlsError;
pub use reload::RELOAD_CHECK;
pub use server::{ServerFiles, ServerTls};
pub use stream::Stream;

/// The ALPN protocol both sides offer: gRPC runs on HTTP/2 only, and
/// recent gRPC clients (etcd's Go client among them) require it.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of every config: ring, so no C toolchain beyond
/// `cc` is needed.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Strips an optional `http://` or `https://` (and a trailing `/`) from an
/// address given as a URL, as etcd's flags take URLs; `host:port` stays.
pub fn strip_scheme(addr: &str) -> &str {
    let addr = addr.trim();
    let addr = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr);
    addr.strip_suffix('/').unwrap_or(addr)
}

#[cfg(test)]
mod tests {
    #[test]
    fn strips_schemes() {
        assert_eq!(super::strip_scheme("https://h:1/"), "h:1");
        assert_eq!(super::strip_scheme(" http://h:1 "), "h:1");
        assert_eq!(super::strip_scheme("h:1"), "h:1");
        assert_eq!(super::strip_scheme("ftp://h:1"), "ftp://h:1");
    }
}
