//! Test support: a local cluster of real `nines-server` processes on
//! loopback, each with its own data dir, that tests can kill -9, pause and
//! restart. The integration tests themselves live in `tests/`.

pub mod cluster;
pub mod etcd;
pub mod etcdctl;
pub mod http;
pub mod pki;
pub mod process;
pub mod raw;

pub use cluster::{Cluster, ClusterOptions};
