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
    compaction, elect, endpoint, kv, leader, lease, lock, member, snapshot, txn, watch,
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
