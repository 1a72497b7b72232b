//! `nines snapshot save FILE`, `status FILE` and `restore FILE ...`
//! (etcdctl's and etcdutl's grammar). The file is nines' own snapshot
//! format followed by its SHA-256, as the server streams it; the work is
//! done by `nines_client::snapshot`, `nines_state` and
//! `nines_server::restore`, this module only parses and prints.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use nines_client::snapshot::{save_snapshot, Progress};
use serde_json::json;
use tokio::io::BufWriter;

use crate::global::Context;
use crate::output::{write_json, Format, Table};

/// The export is written on the member before the first byte arrives:
/// the wait for it gets at least this long, whatever `--timeout` says.
const MIN_FIRST_BYTE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Where to write the snapshot (via FILE.part, renamed when complete).
    file: PathBuf,
}

impl SaveArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let [endpoint] = ctx.endpoints.as_slice() else {
            bail!(
                "snapshot save needs exactly one endpoint (the member to copy), got {}",
                ctx.endpoints.len()
            );
        };
        let part = part_path(&self.file);
        let saved = save(
            endpoint,
            ctx.client.connector(),
            ctx.config.request_timeout,
            &part,
        )
        .await;
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        };
        std::fs::rename(&part, &self.file)
            .with_context(|| format!("renaming {} to {}", part.display(), self.file.display()))?;
        let out = &mut io::stdout().lock();
        match ctx.format {
            Format::Json => write_json(
                out,
                &json!({
                    "path": self.file.display().to_string(),
                    "revision": saved.revision,
                    "member_id": saved.member_id,
                    "total_size": saved.bytes,
                }),
            )?,
            _ => writeln!(out, "Snapshot saved at {}", self.file.display())?,
        }
        Ok(())
    }
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

async fn save(
    endpoint: &str,
    connector: &nines_client::Connector,
    timeout: Duration,
    part: &Path,
) -> Result<nines_client::SavedSnapshot> {
    let file = tokio::fs::File::create(part)
        .await
        .with_context(|| format!("creating {}", part.display()))?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut bar = ProgressLine::new();
    let wait = timeout.max(MIN_FIRST_BYTE_WAIT);
    let saved = save_snapshot(endpoint, connector, wait, &mut out, |p| bar.show(p)).await;
    bar.finish();
    let saved = saved?;
    out.into_inner()
        .sync_all()
        .await
        .with_context(|| format!("syncing {}", part.display()))?;
    Ok(saved)
}

/// The progress bar on stderr: redrawn in place on a terminal, a line per
/// 10% otherwise (logs of scripted backups stay short).
struct ProgressLine {
    tty: bool,
    last_draw: Option<Instant>,
    last_tenth: u64,
    drawn: bool,
}

impl ProgressLine {
    fn new() -> Self {
        ProgressLine {
            tty: io::stderr().is_terminal(),
            last_draw: None,
            last_tenth: 0,
            drawn: false,
        }
    }

    fn show(&mut self, p: Progress) {
        let total = p.received + p.remaining;
        let percent = (p.received * 100)
            .checked_div(total)
            .unwrap_or(100)
            .min(100);
        let done = p.remaining == 0;
        let err = &mut io::stderr().lock();
        if self.tty {
            let due = self
                .last_draw
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if due || done {
                let filled = (percent / 4) as usize;
                let _ = write!(
                    err,
                    "\r[{}{}] {percent:3}% {} of {}",
                    "#".repeat(filled),
                    " ".repeat(25 - filled),
                    mib(p.received),
                    mib(total)
                );
                self.last_draw = Some(Instant::now());
                self.drawn = true;
            }
        } else if percent / 10 > self.last_tenth || (done && !self.drawn) {
            self.last_tenth = percent / 10;
            self.drawn = true;
            let _ = writeln!(
                err,
                "snapshot: {percent}% ({} of {})",
                mib(p.received),
                mib(total)
            );
        }
    }

    fn finish(&self) {
        if self.tty && self.drawn {
            let _ = writeln!(io::stderr());
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A file written by `nines snapshot save` or `etcdctl snapshot save`.
    file: PathBuf,
}

impl StatusArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let file = self.file.clone();
        let status = tokio::task::spawn_blocking(move || {
            nines_state::backup_status(&file, &std::env::temp_dir())
        })
        .await??;
        let out = &mut io::stdout().lock();
        // etcdctl prints the hash in hex; its number is what HashKV
        // answers at `revision` on the member the snapshot came from.
        match ctx.format {
            Format::Json => write_json(
                out,
                &json!({
                    "hash": status.hash,
                    "revision": status.revision,
                    "totalKey": status.total_keys,
                    "totalSize": status.total_size,
                    "compactRevision": status.compact_revision,
                    "raftAppliedIndex": status.applied_index,
                }),
            )?,
            Format::Table => {
                let mut table = Table::new(&["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]);
                table.row(vec![
                    format!("{:x}", status.hash),
                    status.revision.to_string(),
                    status.total_keys.to_string(),
                    human_size(status.total_size),
                ]);
                table.write(out)?;
            }
            Format::Simple => writeln!(
                out,
                "{:x}, {}, {}, {}",
                status.hash,
                status.revision,
                status.total_keys,
                human_size(status.total_size)
            )?,
        }
        Ok(())
    }
}

/// Sizes as etcdctl prints them (decimal units).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file written by `nines snapshot save` or `etcdctl snapshot save`.
    file: PathBuf,
    /// The new member's data dir (must not exist, or be empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// The new member's id (nines-server --id).
    #[arg(long)]
    id: u64,
    /// The NEW cluster, `ID=PEER_ADDR[/CLIENT_ADDR],...`, the same for
    /// every member restored (nines-server --initial-cluster).
    #[arg(long)]
    initial_cluster: String,
    /// This member's peer address; checked against --initial-cluster.
    #[arg(long, alias = "initial-advertise-peer-urls")]
    advertise_peer: Option<String>,
    /// The new cluster's token, its cluster id derives from it: pass the
    /// same to nines-server, and pick one the source cluster does not use.
    #[arg(long, alias = "initial-cluster-token")]
    cluster_token: String,
}

impl RestoreArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let spec = nines_server::restore::RestoreSpec {
            backup: self.file,
            data_dir: self.data_dir,
            id: self.id,
            initial_cluster: self.initial_cluster,
            advertise_peer: self.advertise_peer,
            cluster_token: self.cluster_token,
        };
        let restored = nines_server::restore::restore(&spec).await?;
        let members: Vec<String> = restored.members.iter().map(u64::to_string).collect();
        let out = &mut io::stdout().lock();
        match ctx.format {
            Format::Json => write_json(
                out,
                &json!({
                    "data_dir": spec.data_dir.display().to_string(),
                    "id": spec.id,
                    "cluster_id": restored.cluster_id,
                    "members": restored.members,
                    "revision": restored.revision,
                    "raft_applied_index": restored.applied_index,
                }),
            )?,
            _ => writeln!(
                out,
                "Restored revision {} into {} as member {} of cluster {:x} (members {}); \
                 start every member with --cluster-token {}",
                restored.revision,
                spec.data_dir.display(),
                spec.id,
                restored.cluster_id,
                members.join(","),
                spec.cluster_token
            )?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_part_paths() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(2_100_000), "2.1 MB");
        assert_eq!(part_path(Path::new("/x/b.db")), Path::new("/x/b.db.part"));
    }
}
