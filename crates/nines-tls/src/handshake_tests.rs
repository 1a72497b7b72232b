//! Handshakes between `ServerTls` and `Connector` over loopback, with
//! certificates made here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{cn, ClientFiles, ClientTls, Connector, ServerFiles, ServerTls, TlsError};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf for 127.0.0.1 with both usages, written as `dir/name.{crt,key}`.
fn leaf(ca: &Ca, cn: &str, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (crt, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (crt, k)
}

fn write_ca(ca: &Ca, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.crt"));
    std::fs::write(&path, ca.cert.pem()).unwrap();
    path
}

/// Serves one echo connection per accepted handshake; reports handshake
/// failures as errors on the channel.
async fn serve(
    tls: Arc<ServerTls>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<std::io::Result<Option<String>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            match tls.accept(tcp).await {
                Ok(mut stream) => {
                    let cn = stream
                        .peer_certificates()
                        .and_then(|c| cn::common_names(&c[0]).into_iter().next());
                    let _ = tx.send(Ok(cn));
                    let mut buf = [0u8; 4];
                    if stream.read_exact(&mut buf).await.is_ok() {
                        let _ = stream.write_all(&buf).await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
    });
    (addr, rx)
}

async fn echo(connector: &Connector, addr: std::net::SocketAddr) -> std::io::Result<Vec<u8>> {
    use tower_service::Service;
    let uri: tonic::transport::Uri = format!("http://{addr}").parse().unwrap();
    let io = connector.clone().call(uri).await?;
    let mut stream = io.into_inner();
    stream.write_all(b"ping").await?;
    let mut buf = vec![0u8; 4];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[tokio::test]
async fn mutual_tls_admits_only_certificates_of_the_ca_with_the_allowed_cn() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, other) = (ca("cluster"), ca("other"));
    let ca_file = write_ca(&cluster, dir.path(), "ca");
    let (cert, key) = leaf(&cluster, "member", dir.path(), "server");
    let server = ServerTls::new(
        "test",
        ServerFiles {
            cert,
            key,
            client_ca: Some(ca_file.clone()),
            require_client_cert: true,
            allowed_cn: Some("member".into()),
        },
    )
    .unwrap();
    let (addr, mut seen) = serve(Arc::new(server)).await;
    let client = |cert: Option<(PathBuf, PathBuf)>| {
        let (cert, key) = cert.unzip();
        let files = ClientFiles {
            ca: ca_file.clone(),
            cert,
            key,
        };
        Connector::new(Some(Arc::new(ClientTls::new("test", files).unwrap())), None)
    };

    let good = client(Some(leaf(&cluster, "member", dir.path(), "good")));
    assert_eq!(echo(&good, addr).await.unwrap(), b"ping");
    assert_eq!(
        seen.recv().await.unwrap().unwrap().as_deref(),
        Some("member")
    );

    for (what, connector) in [
        ("no certificate", client(None)),
        (
            "another CA",
            client(Some(leaf(&other, "member", dir.path(), "other"))),
        ),
        (
            "another CN",
            client(Some(leaf(&cluster, "intruder", dir.path(), "cn"))),
        ),
    ] {
        // TLS 1.3: the client may finish first; the server refuses, and
        // nothing passes either way.
        let result = echo(&connector, addr).await;
        assert!(result.is_err(), "{what}: {result:?}");
        assert!(
            seen.recv().await.unwrap().is_err(),
            "{what}: handshake accepted"
        );
    }

    // A client that trusts another CA refuses the server.
    let wrong_trust = ClientFiles {
        ca: write_ca(&other, dir.path(), "other-ca"),
        cert: None,
        key: None,
    };
    let wrong = Connector::new(
        Some(Arc::new(ClientTls::new("t", wrong_trust).unwrap())),
        None,
    );
    assert!(echo(&wrong, addr).await.is_err());
}

#[tokio::test]
async fn certificates_replaced_on_disk_serve_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ca("cluster");
    let ca_file = write_ca(&cluster, dir.path(), "ca");
    let (cert, key) = leaf(&cluster, "first", dir.path(), "server");
    let server = Arc::new(
        ServerTls::new(
            "test",
            ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
                require_client_cert: false,
                allowed_cn: None,
            },
        )
        .unwrap(),
    );
    let (addr, _seen) = serve(server.clone()).await;
    let files = ClientFiles {
        ca: ca_file,
        cert: None,
        key: None,
    };
    let connector = Connector::new(Some(Arc::new(ClientTls::new("t", files).unwrap())), None);
    let served_cn = || async {
        use tower_service::Service;
        let uri: tonic::transport::Uri = format!("http://{addr}").parse().unwrap();
        let io = connector.clone().call(uri).await.unwrap();
        let stream = io.into_inner();
        let crate::Stream::Tls(tls) = &stream else {
            panic!("not TLS")
        };
        let certs = tls.get_ref().1.peer_certificates().unwrap();
        cn::common_names(&certs[0])[0].clone()
    };
    assert_eq!(served_cn().await, "first");

    // A half-written key is not taken: the old pair keeps serving.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    server.expire();
    assert_eq!(served_cn().await, "first");

    let (new_cert, new_key) = leaf(&cluster, "second", dir.path(), "next");
    std::fs::rename(new_cert, &cert).unwrap();
    std::fs::rename(new_key, &key).unwrap();
    server.expire();
    assert_eq!(served_cn().await, "second");
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ca("cluster");
    let (cert, key) = leaf(&cluster, "a", dir.path(), "a");
    let (_, other_key) = leaf(&cluster, "b", dir.path(), "b");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not pem at all").unwrap();
    let files = |cert: &Path, key: &Path| ServerFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: None,
        require_client_cert: false,
        allowed_cn: None,
    };
    let err = |f| ServerTls::new("t", f).unwrap_err();
    assert!(matches!(
        err(files(&dir.path().join("missing"), &key)),
        TlsError::Read { .. }
    ));
    assert!(matches!(
        err(files(&empty, &key)),
        TlsError::NoCertificate { .. }
    ));
    assert!(matches!(err(files(&cert, &empty)), TlsError::NoKey { .. }));
    assert!(matches!(
        err(files(&key, &key)),
        TlsError::NoCertificate { .. }
    ));
    let mismatch = err(files(&cert, &other_key));
    assert!(matches!(mismatch, TlsError::Rustls { .. }), "{mismatch}");
    let mut no_ca = files(&cert, &key);
    no_ca.require_client_cert = true;
    assert!(matches!(err(no_ca), TlsError::Config(_)));
    let bad_ca = ClientFiles {
        ca: empty,
        cert: None,
        key: None,
    };
    assert!(ClientTls::new("t", bad_ca).is_err());
}
