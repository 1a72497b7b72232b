//! `nines auth enable|disable|status` (etcdctl's grammar and output;
//! `status` as etcdctl 3.5 prints it, 3.4 has none).

use std::io::{self, Write};

use anyhow::Result;
use clap::{Args, Subcommand};
use nines_client::proto as pb;
use serde_json::json;

use crate::error::etcd_style;
use crate::global::Context;
use crate::output::{header_json, write_json, Format};

#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Enables authentication (needs a root user with the root role).
    Enable,
    /// Disables authentication.
    Disable,
    /// Whether authentication is on, and the auth revision.
    Status,
}

impl AuthArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let client = &ctx.client;
        let out = &mut io::stdout().lock();
        let (header, text) = match self.command {
            AuthCommand::Enable => {
                let resp = client
                    .auth_enable(pb::AuthEnableRequest {})
                    .await
                    .map_err(etcd_style)?;
                (resp.header, "Authentication Enabled".to_string())
            }
            AuthCommand::Disable => {
                let resp = client
                    .auth_disable(pb::AuthDisableRequest {})
                    .await
                    .map_err(etcd_style)?;
                (resp.header, "Authentication Disabled".to_string())
            }
            AuthCommand::Status => {
                let resp = client
                    .auth_status(pb::AuthStatusRequest {})
                    .await
                    .map_err(etcd_style)?;
                if ctx.format == Format::Json {
                    let value = json!({
                        "header": header_json(resp.header.as_ref()),
                        "enabled": resp.enabled,
                        "auth_revision": resp.auth_revision,
                    });
                    return Ok(write_json(out, &value)?);
                }
                let text = format!(
                    "Authentication Status: {}\nAuthRevision: {}",
                    resp.enabled, resp.auth_revision
                );
                (resp.header, text)
            }
        };
        match ctx.format {
            Format::Json => write_json(out, &json!({ "header": header_json(header.as_ref()) }))?,
            Format::Simple | Format::Table => writeln!(out, "{text}")?,
        }
        Ok(())
    }
}
