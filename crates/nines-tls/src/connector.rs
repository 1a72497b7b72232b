//! Opens the connections of a tonic channel: TCP (from a source IP when
//! given), then the TLS handshake when configured. Used through
//! `Endpoint::connect_with_connector_lazy` with an `http://` URI: the
//! handshake is ours, so tonic sees a plain HTTP/2 connection, and every
//! new connection takes the certificate files as they are on disk now.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::Uri;

use crate::client::ClientTls;
use crate::stream::Stream;

#[derive(Clone, Debug, Default)]
pub struct Connector {
    tls: Option<Arc<ClientTls>>,
    source_ip: Option<IpAddr>,
}

impl Connector {
    pub fn new(tls: Option<Arc<ClientTls>>, source_ip: Option<IpAddr>) -> Connector {
        Connector { tls, source_ip }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A lazily connecting channel to `addr` (`host:port`, or a URL whose
    /// scheme is ignored: this connector's TLS setting decides).
    pub fn channel(
        &self,
        addr: &str,
        endpoint: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let url = format!("http://{}", crate::strip_scheme(addr));
        let base = tonic::transport::Endpoint::from_shared(url)?;
        Ok(endpoint(base).connect_with_connector_lazy(self.clone()))
    }

    /// Connects now (for one-off calls that must see a refused handshake).
    pub async fn connect(
        &self,
        addr: &str,
        endpoint: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let url = format!("http://{}", crate::strip_scheme(addr));
        let base = tonic::transport::Endpoint::from_shared(url)?;
        endpoint(base).connect_with_connector(self.clone()).await
    }

    /// One connection to `addr` (`host:port`), handshake done: to see what
    /// a server presents, or that it refuses.
    pub async fn stream(&self, addr: &str) -> io::Result<Stream> {
        let uri: Uri = format!("http://{}", crate::strip_scheme(addr))
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr:?}: {e}")))?;
        Ok(self.clone().open(uri).await?.into_inner())
    }

    async fn open(self, uri: Uri) -> io::Result<TokioIo<Stream>> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address without a host"))?
            .to_string();
        let port = uri
            .port_u16()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address without a port"))?;
        let tcp = self.tcp(&host, port).await?;
        // Without it small requests wait for the peer's delayed ACK.
        tcp.set_nodelay(true)?;
        let stream = match &self.tls {
            Some(tls) => tls.connect(&host, tcp).await?,
            None => Stream::Plain(tcp),
        };
        Ok(TokioIo::new(stream))
    }

    async fn tcp(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
        for addr in tokio::net::lookup_host((bare, port)).await? {
            match self.tcp_to(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn tcp_to(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // Only a source of the same family applies (as hyper's connector does).
        if let Some(ip) = self.source_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(addr).await
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        Box::pin(self.clone().open(uri))
    }
}
