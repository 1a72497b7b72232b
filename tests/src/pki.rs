//! Certificates for TLS clusters, made in-process (rcgen): the TLS tests
//! and the chaos harness (`nines-jepsen --tls`) share this one
//! implementation.
//!
//! Files, all under one directory:
//! - `clients-ca.crt`: the CA of the client ports; it signs `server`
//!   (CN nines-member, every member's client-port certificate, also its
//!   client identity when it forwards a call to the leader) and `user`
//!   (CN root, the clients' certificate).
//! - `cluster-ca.crt`: the CA of the peer ports; it signs `peer` (CN
//!   nines-peer, the only CN `server_args` admits on the peer port).
//! - `outsider-ca.crt`: a CA nobody trusts, for refusals.
//!
//! Leaves are for 127.0.0.1 and localhost, with both TLS usages.

use std::path::{Path, PathBuf};

use nines_client::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// The CN every member's peer certificate has, and the only one admitted.
pub const PEER_CN: &str = "nines-peer";

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }
}

pub struct Pki {
    dir: PathBuf,
    /// Deletes `dir` on drop when the directory was made here.
    _temp: Option<tempfile::TempDir>,
    pub clients: Ca,
    pub cluster: Ca,
    pub outsider: Ca,
}

impl Pki {
    /// In a temporary directory, removed when the `Pki` is dropped.
    pub fn new() -> Pki {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut pki = Pki::create(temp.path()).expect("certificates");
        pki._temp = Some(temp);
        pki
    }

    /// In `dir` (created if missing), which stays after the `Pki` goes:
    /// for a run directory kept for inspection.
    pub fn create(dir: &Path) -> std::io::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            _temp: None,
            clients: Ca::new("nines clients CA"),
            cluster: Ca::new("nines cluster CA"),
            outsider: Ca::new("someone else's CA"),
        };
        for (ca, name) in [
            (&pki.clients, "clients-ca"),
            (&pki.cluster, "cluster-ca"),
            (&pki.outsider, "outsider-ca"),
        ] {
            std::fs::write(pki.path(&format!("{name}.crt")), ca.cert.pem())?;
        }
        pki.issue(&pki.clients, "nines-member", "server");
        pki.issue(&pki.clients, "root", "user");
        pki.issue(&pki.cluster, PEER_CN, "peer");
        Ok(pki)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A path as a flag value.
    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `name.crt` and `name.key`: a leaf for 127.0.0.1 and localhost, for
    /// server and client use (a member's certificate is both); no CN when
    /// `cn` is empty.
    pub fn issue(&self, ca: &Ca, cn: &str, name: &str) -> (PathBuf, PathBuf) {
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name = DistinguishedName::new();
        if !cn.is_empty() {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &ca.cert, &ca.key)
            .expect("leaf certificate");
        // Written aside, then renamed: a server re-reading the files never
        // sees a half-written one.
        let (crt, k) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        for (path, text) in [(&crt, cert.pem()), (&k, key.serialize_pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write certificate");
            std::fs::rename(&tmp, path).expect("rename certificate");
        }
        (crt, k)
    }

    /// Every TLS flag: client TLS with client certificate auth, peer
    /// mutual TLS with an allowed CN.
    pub fn server_args(&self) -> Vec<String> {
        [
            ("--cert-file", self.s("server.crt")),
            ("--key-file", self.s("server.key")),
            ("--trusted-ca-file", self.s("clients-ca.crt")),
            ("--peer-cert-file", self.s("peer.crt")),
            ("--peer-key-file", self.s("peer.key")),
            ("--peer-trusted-ca-file", self.s("cluster-ca.crt")),
            ("--peer-cert-allowed-cn", PEER_CN.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .chain([
            "--client-cert-auth".into(),
            "--peer-client-cert-auth".into(),
        ])
        .collect()
    }

    /// A client's TLS: the clients' CA and the `user` certificate.
    pub fn user_tls(&self) -> TlsFiles {
        TlsFiles {
            ca: self.path("clients-ca.crt"),
            cert: Some(self.path("user.crt")),
            key: Some(self.path("user.key")),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
