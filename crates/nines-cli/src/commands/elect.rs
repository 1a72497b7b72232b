//! `nines elect NAME PROPOSAL` and `nines elect -l NAME`: etcdctl's elect
//! command. Campaigning waits for leadership under a lease kept alive
//! meanwhile, prints the leader key and value, and leads until
//! interrupted (then resigns). Listening prints the leader's key and
//! value at every change of leader or value, until interrupted.

use std::io::{self, Write};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use nines_client::proto as pb;
use serde_json::json;

use super::lock::{Interrupt, Session};
use crate::global::Context;
use crate::output::{kv_json, write_kv_lines, Format};

#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name: candidates queue under NAME/.
    name: String,
    /// The value to proclaim on winning (campaign mode).
    proposal: Option<String>,
    /// Observe the election instead of campaigning.
    #[arg(short = 'l', long)]
    listen: bool,
    /// TTL in seconds of the lease the leadership hangs on.
    #[arg(long, default_value_t = 60)]
    ttl: i64,
}

impl ElectArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let mut interrupt = Interrupt::install()?;
        match (self.listen, &self.proposal) {
            (true, None) => self.listen(ctx, &mut interrupt).await,
            (false, Some(proposal)) => self.campaign(ctx, proposal, &mut interrupt).await,
            (true, Some(_)) => bail!("proposal given but -l is set"),
            (false, None) => bail!("no proposal argument but -l not set"),
        }
    }

    async fn listen(&self, ctx: &Context, interrupt: &mut Interrupt) -> Result<()> {
        let mut observe = ctx
            .client
            .observe(self.name.as_bytes())
            .await
            .context("observing the election")?;
        loop {
            let next = tokio::select! {
                next = observe.next() => next.context("elect: observer lost")?,
                () = interrupt.wait() => return Ok(()),
            };
            if let Some(kv) = &next.kv {
                print_kv(ctx.format, kv)?;
            }
        }
    }

    async fn campaign(
        &self,
        ctx: &Context,
        proposal: &str,
        interrupt: &mut Interrupt,
    ) -> Result<()> {
        let client = &ctx.client;
        let mut session = Session::start(client, self.ttl).await?;
        let won = tokio::select! {
            won = client.campaign(self.name.as_bytes(), session.id, proposal) => won,
            () = interrupt.wait() => {
                session.end(client).await;
                return Ok(());
            }
            () = session.expired() => bail!("elect: session expired"),
        };
        let (leader, _) = match won {
            Ok(won) => won,
            Err(e) => {
                session.end(client).await;
                return Err(e).context("campaigning");
            }
        };
        // As etcdctl: the leader key as it is now.
        if let Some(kv) = client.get(leader.key.clone()).await? {
            print_kv(ctx.format, &kv)?;
        }
        let lost = tokio::select! {
            () = interrupt.wait() => false,
            () = session.expired() => true,
        };
        let resigned = client.resign(&leader).await;
        session.end(client).await;
        if lost {
            bail!("elect: session expired");
        }
        resigned.context("resigning")?;
        Ok(())
    }
}

fn print_kv(format: Format, kv: &pb::KeyValue) -> Result<()> {
    let mut out = io::stdout().lock();
    match format {
        Format::Json => writeln!(out, "{}", json!({ "kv": kv_json(kv) }))?,
        Format::Simple | Format::Table => write_kv_lines(&mut out, kv, false)?,
    }
    out.flush()?;
    Ok(())
}
