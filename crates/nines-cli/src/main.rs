//! `nines`: command-line client for the nines KV store (etcdctl grammar).

mod bench;
mod commands;
mod error;
mod global;
mod keys;
mod output;
mod txn_spec;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{
    auth, compaction, elect, endpoint, kv, leader, lease, lock, member, role, snapshot, txn, user,
    watch,
};
use global::{Context, GlobalArgs};

// `nines bench` shares the machine with the servers it measures: glibc
// malloc's trimming and page faults were ~5% of a 256-client put profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "nines",
    version,
    about = "Command-line client for the nines KV store"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Declares the subcommand enum and its dispatch together, so a new command
/// (e.g. `Bench(bench::BenchArgs)`, whose args type has
/// `async fn run(self, ctx: &Context) -> anyhow::Result<()>`) is one line here.
macro_rules! commands {
    ($($(#[$meta:meta])* $name:ident($args:ty),)*) => {
        #[derive(Debug, Subcommand)]
        enum Command {
            $($(#[$meta])* $name($args),)*
        }

        impl Command {
            async fn run(self, ctx: &Context) -> anyhow::Result<()> {
                match self {
                    $(Command::$name(args) => args.run(ctx).await,)*
                }
            }
        }
    };
}

commands! {
    /// Put a key.
    Put(kv::PutArgs),
    /// Get a key or a range of keys.
    Get(kv::GetArgs),
    /// Delete a key or a range of keys.
    Del(kv::DelArgs),
    /// Run a transaction described by a JSON spec (file or stdin).
    Txn(txn::TxnArgs),
    /// Watch a key or range for changes (every member serves watches).
    Watch(watch::WatchArgs),
    /// Leases: grant, revoke, timetolive, list, keep-alive.
    Lease(lease::LeaseArgs),
    /// Drop history at or below a revision.
    Compaction(compaction::CompactionArgs),
    /// Cluster membership.
    Member(member::MemberArgs),
    /// Enable, disable or show authentication.
    Auth(auth::AuthArgs),
    /// Users: add, delete, get, list, passwd, grant-role, revoke-role.
    User(user::UserArgs),
    /// Roles: add, delete, get, list, grant-permission, revoke-permission.
    Role(role::RoleArgs),
    /// Per-endpoint status and health.
    Endpoint(endpoint::EndpointArgs),
    /// Snapshots.
    Snapshot(snapshot::SnapshotArgs),
    /// Leadership.
    Leader(leader::LeaderArgs),
    /// Take a named lock; hold it while a command runs, or until interrupted.
    Lock(lock::LockArgs),
    /// Campaign in a named election, or observe it with -l.
    Elect(elect::ElectArgs),
    /// Closed-loop load against nines (or etcd, built with `--features etcd`).
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match Context::new(&cli.global) {
        Ok(ctx) => cli.command.run(&ctx).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader such as `head` closing the pipe is not a failure of ours.
        Err(e) if error::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", error::describe(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod cli_tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    #[test]
    fn the_command_tree_is_consistent() {
        // Catches clashing ids, e.g. a global `--key` against `put`'s `key`.
        Cli::command().debug_assert();
    }

    #[test]
    fn tls_flags_go_with_every_command() {
        for argv in [
            &[
                "nines", "--cacert", "ca", "--cert", "c", "--key", "k", "put", "foo", "bar",
            ][..],
            &[
                "nines", "put", "foo", "bar", "--cacert", "ca", "--cert", "c", "--key", "k",
            ],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let tls = cli.global.tls().unwrap().expect("TLS on");
            assert_eq!(tls.ca.to_str(), Some("ca"));
            assert_eq!(tls.cert.as_deref().and_then(|p| p.to_str()), Some("c"));
            assert_eq!(tls.key.as_deref().and_then(|p| p.to_str()), Some("k"));
        }
        let cli = Cli::try_parse_from(["nines", "get", "foo"]).unwrap();
        assert!(cli.global.tls().unwrap().is_none());
        // `user add NAME` has a positional `user`: not the global --user.
        let cli =
            Cli::try_parse_from(["nines", "--user", "root:pw", "user", "add", "u:x"]).unwrap();
        assert_eq!(cli.global.user.as_deref(), Some("root:pw"));
        let cli = Cli::try_parse_from(["nines", "user", "grant-role", "u", "r"]).unwrap();
        assert_eq!(cli.global.user, None);
        // A certificate without its key, or without a CA to verify servers.
        assert!(Cli::try_parse_from(["nines", "--cert", "c", "get", "foo"]).is_err());
        let cli = Cli::try_parse_from(["nines", "--cert", "c", "--key", "k", "get", "x"]).unwrap();
        assert!(cli.global.tls().is_err());
    }
}
