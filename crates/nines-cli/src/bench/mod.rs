//! `nines bench`: closed-loop load against nines (or etcd, with the `etcd`
//! feature), measured by the same code so the figures compare.

mod backend;
mod fsync_probe;
mod lease;
mod report;
mod run;
mod watch;

pub use run::BenchArgs;
