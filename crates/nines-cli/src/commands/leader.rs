//! `nines leader transfer ID`.

use std::io::{self, Write};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::global::Context;
use crate::output::{header_json, write_json, Format};

#[derive(Debug, Args)]
pub struct LeaderArgs {
    #[command(subcommand)]
    command: LeaderCommand,
}

#[derive(Debug, Subcommand)]
enum LeaderCommand {
    /// Ask member ID to take over leadership (it wins if its log is current).
    Transfer { id: u64 },
}

impl LeaderArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let LeaderCommand::Transfer { id } = self.command;
        let resp = ctx
            .client
            .transfer_leader(id)
            .await
            .with_context(|| format!("transferring leadership to {id}"))?;
        // The move runs on its target, which answers once it leads.
        let leader_id = resp.header.map_or(0, |h| h.member_id);
        let out = &mut io::stdout().lock();
        match ctx.format {
            Format::Json => write_json(
                out,
                &json!({"header": header_json(resp.header.as_ref()), "leader_id": leader_id}),
            )?,
            _ if leader_id == id => writeln!(out, "Leadership transferred to {id}")?,
            // The server reports who leads now; a lagging target may lose the vote.
            _ => writeln!(
                out,
                "Leadership transfer to {id} requested; leader is now {}",
                leader_id
            )?,
        }
        Ok(())
    }
}
