//! `nines snapshot trigger [--endpoint E]`, and the backup commands
//! `save`, `status` and `restore` (in `backup.rs`).

use std::io::{self, Write};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use futures::future::join_all;
use serde_json::{json, Value};

use super::backup;
use crate::error::describe_client;
use crate::global::Context;
use crate::output::{header_json, write_json, Format, Table};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Build a snapshot now (each member snapshots independently).
    Trigger {
        /// Only on this endpoint (default: every endpoint of --endpoints).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Stream a snapshot of one member's state into FILE (exactly one --endpoints).
    Save(backup::SaveArgs),
    /// Check a saved snapshot and show its hash (HashKV at its revision),
    /// revision, keys and size.
    Status(backup::StatusArgs),
    /// Create a member's data dir of a NEW cluster from a saved snapshot.
    Restore(backup::RestoreArgs),
}

impl SnapshotArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        match self.command {
            SnapshotCommand::Trigger { endpoint } => trigger(endpoint, ctx).await,
            SnapshotCommand::Save(args) => args.run(ctx).await,
            SnapshotCommand::Status(args) => args.run(ctx).await,
            SnapshotCommand::Restore(args) => args.run(ctx).await,
        }
    }
}

async fn trigger(endpoint: Option<String>, ctx: &Context) -> Result<()> {
    let targets = match endpoint {
        Some(e) => vec![e],
        None => ctx.endpoints.clone(),
    };
    let results = join_all(targets.iter().map(|e| ctx.client.snapshot_of(e))).await;
    let out = &mut io::stdout().lock();
    let mut failed = 0;
    match ctx.format {
        Format::Json => {
            let items: Vec<Value> = targets
                .iter()
                .zip(&results)
                .map(|(e, r)| match r {
                    Ok(s) => json!({"endpoint": e, "header": header_json(s.header.as_ref()),
                                    "snapshot_index": s.snapshot_index}),
                    Err(err) => json!({"endpoint": e, "error": describe_client(err)}),
                })
                .collect();
            write_json(out, &Value::Array(items))?;
            failed = results.iter().filter(|r| r.is_err()).count();
        }
        Format::Table => {
            let mut table = Table::new(&["ENDPOINT", "SNAPSHOT INDEX", "ERROR"]);
            for (e, r) in targets.iter().zip(&results) {
                let (index, error) = match r {
                    Ok(s) => (s.snapshot_index.to_string(), String::new()),
                    Err(err) => {
                        failed += 1;
                        (String::new(), describe_client(err))
                    }
                };
                table.row(vec![e.clone(), index, error]);
            }
            table.write(out)?;
        }
        Format::Simple => {
            for (e, r) in targets.iter().zip(&results) {
                match r {
                    Ok(s) => writeln!(out, "{e}: snapshot index {}", s.snapshot_index)?,
                    Err(err) => {
                        failed += 1;
                        writeln!(out, "{e}: error: {}", describe_client(err))?;
                    }
                }
            }
        }
    }
    if failed > 0 {
        bail!("snapshot failed on {failed} of {} endpoints", targets.len());
    }
    Ok(())
}
