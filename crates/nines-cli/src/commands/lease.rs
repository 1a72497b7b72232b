//! `nines lease grant|revoke|timetolive|list|keep-alive`: etcdctl's lease
//! commands, with its output: lease ids in hex (`%016x`), the same
//! sentences in simple form and etcdctl's JSON objects (header fields at
//! the top level, keys in base64) with `-w json`. `-w table` prints the
//! simple form (etcdctl has no table for leases).

use std::io::{self, Write};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use nines_client::proto as pb;
use nines_client::ClientError;
use serde_json::{json, Map, Value};

use crate::global::Context;
use crate::output::Format;

#[derive(Debug, Args)]
pub struct LeaseArgs {
    #[command(subcommand)]
    command: LeaseCommand,
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Grant a lease of TTL seconds.
    Grant {
        #[arg(value_parser = parse_ttl)]
        ttl: i64,
    },
    /// Revoke a lease, deleting its keys.
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// A lease's granted and remaining TTL.
    Timetolive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the keys attached to the lease.
        #[arg(long)]
        keys: bool,
    },
    /// Every live lease.
    List,
    /// Keep a lease alive until interrupted (or it expires).
    KeepAlive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// One keepalive, then exit.
        #[arg(long)]
        once: bool,
    },
}

/// etcdctl's lease ids: hexadecimal, as a signed 64-bit integer.
pub fn parse_lease_id(s: &str) -> Result<i64, String> {
    i64::from_str_radix(s, 16).map_err(|e| format!("bad lease ID ({e}), expecting ID in Hex"))
}

fn parse_ttl(s: &str) -> Result<i64, String> {
    s.parse().map_err(|e| format!("bad TTL ({e})"))
}

impl LeaseArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let client = &ctx.client;
        let json = ctx.format == Format::Json;
        let mut out = io::stdout().lock();
        match self.command {
            LeaseCommand::Grant { ttl } => {
                let resp = client.lease_grant(ttl, 0).await?;
                if json {
                    let mut obj = flat_header(resp.header.as_ref());
                    obj.insert("ID".into(), resp.id.into());
                    obj.insert("TTL".into(), resp.ttl.into());
                    obj.insert("Error".into(), resp.error.into());
                    writeln!(out, "{}", Value::Object(obj))?;
                } else {
                    writeln!(
                        out,
                        "lease {:016x} granted with TTL({}s)",
                        resp.id, resp.ttl
                    )?;
                }
            }
            LeaseCommand::Revoke { id } => {
                let resp = match client.lease_revoke(id).await {
                    Ok(resp) => resp,
                    Err(ClientError::LeaseNotFound { .. }) => {
                        bail!("failed to revoke lease (etcdserver: requested lease not found)")
                    }
                    Err(e) => return Err(e.into()),
                };
                if json {
                    let header = Value::Object(flat_header(resp.header.as_ref()));
                    writeln!(out, "{}", json!({ "header": header }))?;
                } else {
                    writeln!(out, "lease {id:016x} revoked")?;
                }
            }
            LeaseCommand::Timetolive { id, keys } => {
                let resp = client.lease_time_to_live(id, keys).await?;
                print_ttl(&mut out, json, id, keys, &resp)?;
            }
            LeaseCommand::List => {
                let resp = client.lease_leases().await?;
                print_list(&mut out, json, &resp)?;
            }
            LeaseCommand::KeepAlive { id, once: true } => {
                let ttl = client.lease_keep_alive_once(id).await?;
                print_keepalive(&mut out, json, id, ttl)?;
            }
            LeaseCommand::KeepAlive { id, once: false } => {
                drop(out);
                keep_alive(ctx, id, json).await?;
            }
        }
        Ok(())
    }
}

/// Prints each renewal until the lease is gone (exit 0, as etcdctl) or
/// the keeper fails.
async fn keep_alive(ctx: &Context, id: i64, json: bool) -> Result<()> {
    let mut keeper = match ctx.client.lease_keep_alive(id).await {
        Ok(keeper) => keeper,
        Err(ClientError::LeaseNotFound { .. }) => {
            println!("lease {id:016x} expired or revoked.");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let mut printed = 0;
    while let Some(state) = keeper.changed().await {
        let mut out = io::stdout().lock();
        if state.renewals > printed {
            printed = state.renewals;
            print_keepalive(&mut out, json, id, state.ttl)?;
        }
        if state.expired {
            writeln!(out, "lease {id:016x} expired or revoked.")?;
            return Ok(());
        }
        out.flush()?;
    }
    keeper.expired().await?;
    println!("lease {id:016x} expired or revoked.");
    Ok(())
}

/// etcdctl's JSON puts the response header's fields at the top level.
fn flat_header(header: Option<&pb::ResponseHeader>) -> Map<String, Value> {
    let h = header.cloned().unwrap_or_default();
    let mut obj = Map::new();
    obj.insert("cluster_id".into(), h.cluster_id.into());
    obj.insert("member_id".into(), h.member_id.into());
    obj.insert("revision".into(), h.revision.into());
    obj.insert("raft_term".into(), h.raft_term.into());
    obj
}

/// etcdctl's JSON of a keepalive also carries the response header; the
/// keeper reports the TTL only, so the JSON here has etcdctl's ID and TTL.
fn print_keepalive(out: &mut dyn Write, json: bool, id: i64, ttl: i64) -> io::Result<()> {
    if json {
        writeln!(out, "{}", json!({ "ID": id, "TTL": ttl }))
    } else {
        writeln!(out, "lease {id:016x} keepalived with TTL({ttl})")
    }
}

pub fn print_ttl(
    out: &mut dyn Write,
    json: bool,
    id: i64,
    with_keys: bool,
    resp: &pb::LeaseTimeToLiveResponse,
) -> io::Result<()> {
    if json {
        let mut obj = flat_header(resp.header.as_ref());
        obj.insert("id".into(), resp.id.into());
        obj.insert("ttl".into(), resp.ttl.into());
        obj.insert("granted-ttl".into(), resp.granted_ttl.into());
        // Go's JSON of an empty []byte list is null; each key base64.
        let keys = if resp.keys.is_empty() {
            Value::Null
        } else {
            resp.keys.iter().map(|k| Value::String(base64(k))).collect()
        };
        obj.insert("keys".into(), keys);
        return writeln!(out, "{}", Value::Object(obj));
    }
    if resp.ttl == -1 {
        return writeln!(out, "lease {id:016x} already expired");
    }
    write!(
        out,
        "lease {id:016x} granted with TTL({}s), remaining({}s)",
        resp.granted_ttl, resp.ttl
    )?;
    if with_keys {
        let keys: Vec<String> = resp
            .keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        write!(out, ", attached keys([{}])", keys.join(" "))?;
    }
    writeln!(out)
}

pub fn print_list(
    out: &mut dyn Write,
    json: bool,
    resp: &pb::LeaseLeasesResponse,
) -> io::Result<()> {
    if json {
        let mut obj = flat_header(resp.header.as_ref());
        let leases: Vec<Value> = resp.leases.iter().map(|l| json!({ "id": l.id })).collect();
        obj.insert("leases".into(), leases.into());
        return writeln!(out, "{}", Value::Object(obj));
    }
    writeln!(out, "found {} leases", resp.leases.len())?;
    for lease in &resp.leases {
        writeln!(out, "{:016x}", lease.id)?;
    }
    Ok(())
}

/// Standard base64 with padding (what Go's JSON makes of bytes).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_hex() {
        assert_eq!(parse_lease_id("694d77aa9e38260f"), Ok(0x694d77aa9e38260f));
        assert_eq!(parse_lease_id("1234"), Ok(0x1234));
        assert!(parse_lease_id("zz")
            .unwrap_err()
            .contains("expecting ID in Hex"));
        assert!(parse_ttl("abc").unwrap_err().starts_with("bad TTL"));
    }

    #[test]
    fn base64_as_go_encodes_bytes() {
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foo2"), "Zm9vMg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn time_to_live_reads_as_etcdctl_prints_it() {
        let mut resp = pb::LeaseTimeToLiveResponse {
            header: None,
            id: 0x694d,
            ttl: 99,
            granted_ttl: 100,
            keys: vec![b"foo".to_vec(), b"foo2".to_vec()],
        };
        let mut out = Vec::new();
        print_ttl(&mut out, false, 0x694d, true, &resp).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "lease 000000000000694d granted with TTL(100s), remaining(99s), attached keys([foo foo2])\n"
        );
        resp.ttl = -1;
        let mut out = Vec::new();
        print_ttl(&mut out, false, 0x694d, false, &resp).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "lease 000000000000694d already expired\n"
        );
    }
}
