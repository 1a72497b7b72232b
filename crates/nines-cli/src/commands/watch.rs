//! `nines watch`: etcdctl's watch command. Prints each event as it comes
//! (simple: `PUT`/`DELETE`, then the previous key and value with
//! `--prev-kv`, then key and value; json: one object per line), until
//! interrupted. The client resumes through another member if one dies.

use std::io::{self, Write};

use anyhow::{bail, Result};
use clap::Args;
use nines_client::proto::mvccpb;
use nines_client::{WatchError, WatchOptions, WatchUpdate};
use serde_json::json;

use crate::global::Context;
use crate::keys::{key_range, KeySelector};
use crate::output::{kv_json, Format};

#[derive(Debug, Args)]
pub struct WatchArgs {
    key: String,
    /// End of the range [KEY, RANGE_END).
    #[arg(conflicts_with = "prefix")]
    range_end: Option<String>,
    /// Watch every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Start at this revision (0: changes from now on).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Print each key's previous value too.
    #[arg(long)]
    prev_kv: bool,
    /// Print progress notifications (json only) when idle.
    #[arg(long)]
    progress_notify: bool,
}

impl WatchArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let (key, range_end) = key_range(&KeySelector {
            key: self.key.as_bytes(),
            range_end: self.range_end.as_deref().map(str::as_bytes),
            prefix: self.prefix,
            from_key: false,
        })?;
        let opts = WatchOptions {
            range_end,
            start_revision: self.rev,
            prev_kv: self.prev_kv,
            progress_notify: self.progress_notify,
            ..Default::default()
        };
        let mut watch = ctx.client.watch(key, opts).await?;
        while let Some(update) = watch.next().await {
            let mut out = io::stdout().lock();
            match update {
                Ok(WatchUpdate::Events(events)) => {
                    for event in &events {
                        print_event(&mut out, ctx.format, event)?;
                    }
                }
                Ok(WatchUpdate::Progress { revision }) => {
                    if ctx.format == Format::Json {
                        writeln!(out, "{}", json!({ "progress_revision": revision }))?;
                    }
                }
                Err(WatchError::Compacted { compact_revision }) => bail!(
                    "watch: required revision has been compacted; restart with --rev {compact_revision}"
                ),
                Err(e) => return Err(e.into()),
            }
            out.flush()?;
        }
        Ok(())
    }
}

fn event_type(event: &mvccpb::Event) -> &'static str {
    match mvccpb::event::EventType::try_from(event.r#type) {
        Ok(mvccpb::event::EventType::Delete) => "DELETE",
        _ => "PUT",
    }
}

/// One event, as etcdctl prints it.
fn print_event(out: &mut dyn Write, format: Format, event: &mvccpb::Event) -> io::Result<()> {
    let Some(kv) = &event.kv else {
        return Ok(());
    };
    match format {
        Format::Json => {
            let mut value = json!({ "type": event_type(event), "kv": kv_json(kv) });
            if let Some(prev) = &event.prev_kv {
                value["prev_kv"] = kv_json(prev);
            }
            writeln!(out, "{value}")
        }
        Format::Simple | Format::Table => {
            writeln!(out, "{}", event_type(event))?;
            if let Some(prev) = &event.prev_kv {
                out.write_all(&prev.key)?;
                writeln!(out)?;
                out.write_all(&prev.value)?;
                writeln!(out)?;
            }
            out.write_all(&kv.key)?;
            writeln!(out)?;
            out.write_all(&kv.value)?;
            writeln!(out)?;
            Ok(())
        }
    }
}
