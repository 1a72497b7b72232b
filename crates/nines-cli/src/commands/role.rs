//! `nines role add|delete|get|list|grant-permission|revoke-permission`,
//! with etcdctl 3.4's grammar and simple output.

use std::io::{self, Write};

use anyhow::{bail, Result};
use clap::{ArgAction, Args, Subcommand};
use nines_client::proto::{self as pb, etcd::authpb};
use serde_json::{json, Value};

use crate::error::etcd_style;
use crate::global::Context;
use crate::keys::{key_range, KeySelector};
use crate::output::{header_json, render_bytes, write_json, Format};

#[derive(Debug, Args)]
pub struct RoleArgs {
    #[command(subcommand)]
    command: RoleCommand,
}

/// etcdctl's flags for a permission's keys; `--prefix=true` works too.
#[derive(Debug, Args)]
struct PermKeys {
    key: String,
    /// End of the range [KEY, END).
    end: Option<String>,
    /// The permission covers every key starting with KEY.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    prefix: bool,
    /// The permission covers every key >= KEY.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    from_key: bool,
}

impl PermKeys {
    /// (key, range_end) as etcdctl sends them: an empty key means every
    /// key ("\0"), open ended with --prefix or --from-key.
    fn range(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        if self.prefix && self.from_key {
            bail!("--from-key and --prefix flags are mutually exclusive");
        }
        if self.end.is_some() && self.prefix {
            bail!("unexpected endkey argument with --prefix");
        }
        if self.end.is_some() && self.from_key {
            bail!("unexpected endkey argument with --from-key");
        }
        if self.key.is_empty() {
            let end = if self.prefix || self.from_key {
                vec![0]
            } else {
                vec![]
            };
            return Ok((vec![0], end));
        }
        key_range(&KeySelector {
            key: self.key.as_bytes(),
            range_end: self.end.as_deref().map(str::as_bytes),
            prefix: self.prefix,
            from_key: self.from_key,
        })
    }
}

#[derive(Debug, Subcommand)]
enum RoleCommand {
    /// Adds a new role.
    Add { name: String },
    /// Deletes a role.
    Delete { name: String },
    /// Gets detailed information of a role.
    Get { name: String },
    /// Lists all roles.
    List,
    /// Grants a key (or range) to a role: PERM_TYPE is read, write or readwrite.
    GrantPermission {
        name: String,
        perm_type: String,
        #[command(flatten)]
        keys: PermKeys,
    },
    /// Revokes a key (or range) from a role.
    RevokePermission {
        name: String,
        #[command(flatten)]
        keys: PermKeys,
    },
}

fn perm_type(s: &str) -> Result<authpb::permission::Type> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "READ" => authpb::permission::Type::Read,
        "WRITE" => authpb::permission::Type::Write,
        "READWRITE" => authpb::permission::Type::Readwrite,
        _ => bail!("invalid permission type {s}"),
    })
}

impl RoleArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let client = &ctx.client;
        let out = &mut io::stdout().lock();
        let (header, text) = match self.command {
            RoleCommand::Add { name } => {
                let req = pb::AuthRoleAddRequest { name: name.clone() };
                let resp = client.role_add(req).await.map_err(etcd_style)?;
                (resp.header, format!("Role {name} created"))
            }
            RoleCommand::Delete { name } => {
                let req = pb::AuthRoleDeleteRequest { role: name.clone() };
                let resp = client.role_delete(req).await.map_err(etcd_style)?;
                (resp.header, format!("Role {name} deleted"))
            }
            RoleCommand::Get { name } => {
                let req = pb::AuthRoleGetRequest { role: name.clone() };
                let resp = client.role_get(req).await.map_err(etcd_style)?;
                if ctx.format == Format::Json {
                    let value = json!({
                        "header": header_json(resp.header.as_ref()),
                        "perm": perms_json(&resp.perm),
                    });
                    return Ok(write_json(out, &value)?);
                }
                write_role(out, &name, &resp.perm)?;
                return Ok(());
            }
            RoleCommand::List => {
                let resp = client
                    .role_list(pb::AuthRoleListRequest {})
                    .await
                    .map_err(etcd_style)?;
                if ctx.format == Format::Json {
                    let value = json!({
                        "header": header_json(resp.header.as_ref()),
                        "roles": resp.roles,
                    });
                    return Ok(write_json(out, &value)?);
                }
                for role in &resp.roles {
                    writeln!(out, "{role}")?;
                }
                return Ok(());
            }
            RoleCommand::GrantPermission {
                name,
                perm_type: kind,
                keys,
            } => {
                let kind = perm_type(&kind)?;
                let (key, range_end) = keys.range()?;
                let req = pb::AuthRoleGrantPermissionRequest {
                    name: name.clone(),
                    perm: Some(authpb::Permission {
                        perm_type: kind as i32,
                        key,
                        range_end,
                    }),
                };
                let resp = client
                    .role_grant_permission(req)
                    .await
                    .map_err(etcd_style)?;
                (resp.header, format!("Role {name} updated"))
            }
            RoleCommand::RevokePermission { name, keys } => {
                let (key, range_end) = keys.range()?;
                let text = revoked_text(&name, &key, &range_end);
                let req = pb::AuthRoleRevokePermissionRequest {
                    role: name,
                    key,
                    range_end,
                };
                let resp = client
                    .role_revoke_permission(req)
                    .await
                    .map_err(etcd_style)?;
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

fn revoked_text(role: &str, key: &[u8], range_end: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    match range_end {
        [] => format!("Permission of key {key} is revoked from role {role}"),
        [0] => format!("Permission of range [{key}, <open ended> is revoked from role {role}"),
        end => format!(
            "Permission of range [{key}, {}) is revoked from role {role}",
            String::from_utf8_lossy(end)
        ),
    }
}

/// etcdctl's `role get`: the read, then the write permissions (readwrite
/// in both), one a line, a tab in front.
pub fn write_role(out: &mut dyn Write, name: &str, perms: &[authpb::Permission]) -> Result<()> {
    use authpb::permission::Type;
    writeln!(out, "Role {name}")?;
    for (title, kinds) in [
        ("KV Read:", [Type::Read, Type::Readwrite]),
        ("KV Write:", [Type::Write, Type::Readwrite]),
    ] {
        writeln!(out, "{title}")?;
        for perm in perms
            .iter()
            .filter(|p| kinds.iter().any(|&k| p.perm_type == k as i32))
        {
            writeln!(out, "\t{}", perm_text(perm))?;
        }
    }
    Ok(())
}

fn perm_text(perm: &authpb::Permission) -> String {
    let key = String::from_utf8_lossy(&perm.key);
    if perm.range_end.is_empty() {
        return key.into_owned();
    }
    let mut text = if perm.range_end == [0] {
        format!("[{key}, <open ended>")
    } else {
        format!("[{key}, {})", String::from_utf8_lossy(&perm.range_end))
    };
    if nines_client::prefix_end(&perm.key) == perm.range_end {
        text.push_str(&format!(" (prefix {key})"));
    }
    text
}

pub fn perms_json(perms: &[authpb::Permission]) -> Value {
    let perms: Vec<Value> = perms
        .iter()
        .map(|p| {
            let kind = authpb::permission::Type::try_from(p.perm_type)
                .map_or("UNKNOWN", |t| t.as_str_name());
            json!({
                "permType": kind,
                "key": render_bytes(&p.key),
                "range_end": render_bytes(&p.range_end),
            })
        })
        .collect();
    Value::Array(perms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(kind: authpb::permission::Type, key: &[u8], end: &[u8]) -> authpb::Permission {
        authpb::Permission {
            perm_type: kind as i32,
            key: key.to_vec(),
            range_end: end.to_vec(),
        }
    }

    #[test]
    fn roles_print_as_etcdctl_does() {
        use authpb::permission::Type;
        let perms = [
            perm(Type::Readwrite, b"app/", b"app0"),
            perm(Type::Read, b"key1", b""),
            perm(Type::Write, b"k2", b"k5"),
            perm(Type::Read, b"z", b"\0"),
        ];
        let mut out = Vec::new();
        write_role(&mut out, "app", &perms).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Role app\nKV Read:\n\t[app/, app0) (prefix app/)\n\tkey1\n\t[z, <open ended>\n\
             KV Write:\n\t[app/, app0) (prefix app/)\n\t[k2, k5)\n"
        );
        assert_eq!(
            revoked_text("r", b"z", b"\0"),
            "Permission of range [z, <open ended> is revoked from role r"
        );
    }
}
