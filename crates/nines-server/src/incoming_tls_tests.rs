//! TLS connections in the accept loop, with certificates made here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nines_tls::{ClientFiles, ClientTls, ServerFiles, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::tokio_stream::StreamExt;

use super::{Incoming, H2_PREFACE};

/// A CA and a server certificate for 127.0.0.1 signed by it, written to
/// `dir`; the server's TLS and a client's that trusts the CA.
fn tls_pair(dir: &Path) -> (Arc<ServerTls>, Arc<ClientTls>) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_path = write("ca.crt", ca.pem());
    let server = ServerTls::new(
        "test",
        ServerFiles {
            cert: write("server.crt", leaf.pem()),
            key: write("server.key", leaf_key.serialize_pem()),
            client_ca: None,
            require_client_cert: false,
            allowed_cn: None,
        },
    )
    .unwrap();
    let client = ClientTls::new(
        "test",
        ClientFiles {
            ca: ca_path,
            cert: None,
            key: None,
        },
    )
    .unwrap();
    (Arc::new(server), Arc::new(client))
}

/// A client that finished its TLS handshake and then sent nothing was
/// handed to hyper, which neither times out nor pings a connection before
/// its preface: it held its slot for good. The preface read off the TLS
/// stream to check it reaches the server all the same.
#[tokio::test]
async fn a_tls_client_that_never_sends_the_preface_gives_its_slot_back() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = tls_pair(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = Incoming::new(listener, "test", 1, Some(server));
    incoming.handshake_timeout = Duration::from_millis(500);
    let connect = move |client: Arc<ClientTls>| async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        client.connect("127.0.0.1", tcp).await.unwrap()
    };

    let quiet = tokio::spawn(connect(client.clone()));
    let first = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
    assert!(
        first.is_err(),
        "a connection without the preface is not handed out"
    );
    let _quiet = quiet.await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    let talker = tokio::spawn(async move {
        let mut stream = connect(client).await;
        stream.write_all(H2_PREFACE).await.unwrap();
        stream.write_all(b"after").await.unwrap();
        stream.flush().await.unwrap();
        stream
    });
    let next = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
    let Ok(Some(Ok(mut conn))) = next else {
        panic!("the quiet connection's slot was not freed");
    };
    let _talker = talker.await.unwrap();
    let mut got = [0u8; 29];
    conn.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..24], H2_PREFACE, "the preface is handed on");
    assert_eq!(&got[24..], b"after");
}
