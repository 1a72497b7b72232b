//! `nines user add|delete|get|list|passwd|grant-role|revoke-role`, with
//! etcdctl 3.4's grammar and simple output.

use std::io::{self, Write};

use anyhow::{bail, Result};
use clap::{ArgAction, Args, Subcommand};
use nines_client::proto::{self as pb, etcd::authpb};
use serde_json::json;

use crate::commands::role::{perms_json, write_role};
use crate::error::etcd_style;
use crate::global::{read_password, Context};
use crate::output::{header_json, write_json, Format};

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

/// etcdctl's `--interactive`: ask twice on a terminal (true) or read the
/// password from stdin (false); `--interactive=false` as etcdctl spells it.
#[derive(Debug, Args)]
struct Interactive {
    /// Ask for the password (twice) instead of reading it from stdin.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true")]
    interactive: bool,
}

impl Interactive {
    /// The password of `user`. etcdctl asks twice; without a terminal
    /// (tests, scripts) nines reads one line of stdin either way, and
    /// `--interactive=false` takes its first word, as etcdctl's Scanf.
    fn password(&self, user: &str) -> Result<String> {
        use std::io::IsTerminal;
        if !self.interactive || !io::stdin().is_terminal() {
            let line = read_password("")?;
            if self.interactive {
                return Ok(line);
            }
            return Ok(line.split_whitespace().next().unwrap_or("").to_string());
        }
        let first = read_password(&format!("Password of {user}: "))?;
        let again = read_password(&format!("Type password of {user} again for confirmation: "))?;
        if first != again {
            bail!("given passwords are different");
        }
        Ok(first)
    }
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Adds a new user: NAME or NAME:PASSWORD.
    Add {
        user: String,
        #[command(flatten)]
        interactive: Interactive,
        /// Supply the password as this flag.
        #[arg(long, default_value = "")]
        new_user_password: String,
        /// A user without a password (client certificate CN auth only).
        #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
              default_value = "false", default_missing_value = "true")]
        no_password: bool,
    },
    /// Deletes a user.
    Delete { name: String },
    /// Gets detailed information of a user.
    Get {
        name: String,
        /// Show the permissions of the user's roles too.
        #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
              default_value = "false", default_missing_value = "true")]
        detail: bool,
    },
    /// Lists all users.
    List,
    /// Changes the password of a user.
    Passwd {
        name: String,
        #[command(flatten)]
        interactive: Interactive,
    },
    /// Grants a role to a user.
    GrantRole { user: String, role: String },
    /// Revokes a role from a user.
    RevokeRole { user: String, role: String },
}

impl UserArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let client = &ctx.client;
        let out = &mut io::stdout().lock();
        let (header, text) = match self.command {
            UserCommand::Add {
                user,
                interactive,
                new_user_password,
                no_password,
            } => {
                let (name, password) = if no_password {
                    (user, String::new())
                } else if !new_user_password.is_empty() {
                    (user, new_user_password)
                } else if let Some((name, password)) = user.split_once(':') {
                    if name.is_empty() {
                        bail!("empty user name is not allowed");
                    }
                    (name.to_string(), password.to_string())
                } else {
                    let password = interactive.password(&user)?;
                    (user, password)
                };
                let req = pb::AuthUserAddRequest {
                    name: name.clone(),
                    password,
                    options: Some(authpb::UserAddOptions { no_password }),
                    hashed_password: String::new(),
                };
                let resp = client.user_add(req).await.map_err(etcd_style)?;
                (resp.header, format!("User {name} created"))
            }
            UserCommand::Delete { name } => {
                let req = pb::AuthUserDeleteRequest { name: name.clone() };
                let resp = client.user_delete(req).await.map_err(etcd_style)?;
                (resp.header, format!("User {name} deleted"))
            }
            UserCommand::Get { name, detail } => {
                let req = pb::AuthUserGetRequest { name: name.clone() };
                let resp = client.user_get(req).await.map_err(etcd_style)?;
                return get(ctx, out, &name, resp, detail).await;
            }
            UserCommand::List => {
                let resp = client
                    .user_list(pb::AuthUserListRequest {})
                    .await
                    .map_err(etcd_style)?;
                if ctx.format == Format::Json {
                    let value = json!({
                        "header": header_json(resp.header.as_ref()),
                        "users": resp.users,
                    });
                    return Ok(write_json(out, &value)?);
                }
                for user in &resp.users {
                    writeln!(out, "{user}")?;
                }
                return Ok(());
            }
            UserCommand::Passwd { name, interactive } => {
                let password = interactive.password(&name)?;
                let req = pb::AuthUserChangePasswordRequest {
                    name,
                    password,
                    hashed_password: String::new(),
                };
                let resp = client.user_change_password(req).await.map_err(etcd_style)?;
                (resp.header, "Password updated".to_string())
            }
            UserCommand::GrantRole { user, role } => {
                let text = format!("Role {role} is granted to user {user}");
                let req = pb::AuthUserGrantRoleRequest { user, role };
                let resp = client.user_grant_role(req).await.map_err(etcd_style)?;
                (resp.header, text)
            }
            UserCommand::RevokeRole { user, role } => {
                let text = format!("Role {role} is revoked from user {user}");
                let req = pb::AuthUserRevokeRoleRequest { name: user, role };
                let resp = client.user_revoke_role(req).await.map_err(etcd_style)?;
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

/// `user get`: the roles on one line, or with `--detail` each role as
/// `role get` prints it, after an empty line.
async fn get(
    ctx: &Context,
    out: &mut dyn Write,
    name: &str,
    resp: pb::AuthUserGetResponse,
    detail: bool,
) -> Result<()> {
    if ctx.format == Format::Json && !detail {
        let value = json!({
            "header": header_json(resp.header.as_ref()),
            "roles": resp.roles,
        });
        return Ok(write_json(out, &value)?);
    }
    if !detail {
        write!(out, "User: {name}\nRoles:")?;
        for role in &resp.roles {
            write!(out, " {role}")?;
        }
        writeln!(out)?;
        return Ok(());
    }
    let mut roles = Vec::new();
    for role in &resp.roles {
        let req = pb::AuthRoleGetRequest { role: role.clone() };
        let perms = ctx.client.role_get(req).await.map_err(etcd_style)?.perm;
        roles.push((role, perms));
    }
    if ctx.format == Format::Json {
        let roles: Vec<_> = roles
            .iter()
            .map(|(role, perms)| json!({ "role": role, "perm": perms_json(perms) }))
            .collect();
        let value = json!({ "header": header_json(resp.header.as_ref()), "roles": roles });
        return Ok(write_json(out, &value)?);
    }
    writeln!(out, "User: {name}")?;
    for (role, perms) in &roles {
        writeln!(out)?;
        write_role(out, role, perms)?;
    }
    Ok(())
}
