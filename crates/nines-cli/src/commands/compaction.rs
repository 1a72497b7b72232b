//! `nines compaction <revision> [--physical]` (etcdctl's grammar).

use std::io::{self, Write};

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::global::Context;
use crate::output::{header_json, write_json, Format};

#[derive(Debug, Args)]
pub struct CompactionArgs {
    /// Drop history at or below this revision; reads below it then fail.
    #[arg(allow_negative_numbers = true)]
    revision: i64,
    /// Return only once the dropped records are deleted from disk.
    #[arg(long)]
    physical: bool,
}

impl CompactionArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let resp = ctx.client.compact(self.revision, self.physical).await?;
        let out = &mut io::stdout().lock();
        match ctx.format {
            Format::Json => write_json(
                out,
                &json!({
                    "header": header_json(resp.header.as_ref()),
                    "compacted_revision": self.revision,
                }),
            )?,
            Format::Simple | Format::Table => {
                writeln!(out, "compacted revision {}", self.revision)?
            }
        }
        Ok(())
    }
}
