//! `nines member list|add|promote|remove`.

use std::io::{self, Write};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use nines_client::proto as pb;

use crate::global::Context;
use crate::output::{
    client_addr, member_status, member_table, members_json, peer_addr, sorted_members, write_json,
    Format,
};

#[derive(Debug, Args)]
pub struct MemberArgs {
    #[command(subcommand)]
    command: MemberCommand,
}

#[derive(Debug, Subcommand)]
enum MemberCommand {
    /// List the members (asks the leader).
    List,
    /// Add a member as a learner; it catches up without voting.
    Add {
        id: u64,
        /// Address other members use for Raft traffic.
        #[arg(long)]
        peer_addr: String,
        /// Address clients use (gRPC API).
        #[arg(long, default_value = "")]
        client_addr: String,
        /// Promote to voter once added.
        #[arg(long)]
        promote: bool,
    },
    /// Promote a learner to voter.
    Promote { id: u64 },
    /// Remove a member.
    Remove { id: u64 },
}

impl MemberArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let client = &ctx.client;
        match self.command {
            MemberCommand::List => {
                let resp = client.member_list().await?;
                print_members(ctx.format, resp.header.as_ref(), &resp.members)?;
            }
            MemberCommand::Add {
                id,
                peer_addr,
                client_addr,
                promote,
            } => {
                let mut resp = client
                    .member_add_learner(id, &peer_addr, &client_addr)
                    .await
                    .with_context(|| format!("adding member {id}"))?;
                say(ctx, &format!("Member {id} added as learner"))?;
                if promote {
                    // Adding succeeded; say so, and how to finish, if promotion fails.
                    resp = client.member_promote(id).await.with_context(|| {
                        format!(
                            "member {id} was added as a learner but not promoted \
                             (retry with `nines member promote {id}`)"
                        )
                    })?;
                    say(ctx, &format!("Member {id} promoted to voter"))?;
                }
                print_change(ctx.format, &resp)?;
            }
            MemberCommand::Promote { id } => {
                let resp = client
                    .member_promote(id)
                    .await
                    .with_context(|| format!("promoting member {id}"))?;
                say(ctx, &format!("Member {id} promoted to voter"))?;
                print_change(ctx.format, &resp)?;
            }
            MemberCommand::Remove { id } => {
                let resp = client
                    .member_remove(id)
                    .await
                    .with_context(|| format!("removing member {id}"))?;
                say(ctx, &format!("Member {id} removed"))?;
                print_change(ctx.format, &resp)?;
            }
        }
        Ok(())
    }
}

/// Progress messages go to stdout in human formats, and are left out of JSON
/// so that it stays one parseable document.
fn say(ctx: &Context, message: &str) -> io::Result<()> {
    if ctx.format != Format::Json {
        writeln!(io::stdout().lock(), "{message}")?;
    }
    Ok(())
}

/// After a change, simple output stays a one-line confirmation.
fn print_change(format: Format, resp: &pb::MemberListResponse) -> io::Result<()> {
    match format {
        Format::Simple => Ok(()),
        _ => print_members(format, resp.header.as_ref(), &resp.members),
    }
}

fn print_members(
    format: Format,
    header: Option<&pb::ResponseHeader>,
    members: &[pb::Member],
) -> io::Result<()> {
    let out = &mut io::stdout().lock();
    match format {
        Format::Json => write_json(out, &members_json(header, members)),
        Format::Table => member_table(members).write(out),
        Format::Simple => {
            for m in sorted_members(members) {
                writeln!(
                    out,
                    "{}, {}, {}, {}",
                    m.id,
                    member_status(m),
                    peer_addr(m),
                    client_addr(m)
                )?;
            }
            Ok(())
        }
    }
}
