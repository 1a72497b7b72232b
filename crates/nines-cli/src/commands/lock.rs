//! `nines lock NAME [-- CMD ARGS]`: etcdctl's lock command. Takes the lock
//! under a lease kept alive meanwhile; with a command, runs it holding the
//! lock (with `ETCD_LOCK_KEY`, `ETCD_LOCK_REV` and `NINES_LOCK_FENCE` in
//! its environment) and exits with its status; without one, prints the
//! lock key and holds the lock until interrupted. The lock is released and
//! the lease revoked either way.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use nines_client::{Client, LeaseKeeper, LockHeld};
use serde_json::json;

use crate::global::Context;
use crate::output::{render_bytes, write_json, Format};

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name: holders queue under NAME/.
    name: String,
    /// A command to run while holding the lock (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// TTL in seconds of the lease the lock hangs on (kept alive while
    /// held; a crashed holder loses the lock within it).
    #[arg(long, default_value_t = 60)]
    ttl: i64,
}

/// A lease granted for this command and kept alive until `end`.
pub struct Session {
    pub id: i64,
    keeper: LeaseKeeper,
}

impl Session {
    pub async fn start(client: &Client, ttl: i64) -> Result<Session> {
        if ttl <= 0 {
            bail!("--ttl must be positive");
        }
        let granted = client
            .lease_grant(ttl, 0)
            .await
            .context("granting a lease")?;
        let keeper = client
            .lease_keep_alive(granted.id)
            .await
            .context("keeping the lease alive")?;
        Ok(Session {
            id: granted.id,
            keeper,
        })
    }

    /// Resolves when the lease has expired (the lock or leadership is lost).
    pub async fn expired(&mut self) {
        // An error means the keeper ended: the lease is as good as gone.
        let _ = self.keeper.expired().await;
    }

    /// Stops the keepalives and revokes the lease (deleting its keys).
    pub async fn end(self, client: &Client) {
        drop(self.keeper);
        // Best effort: an unrevoked lease still expires within its TTL.
        let _ = tokio::time::timeout(Duration::from_secs(5), client.lease_revoke(self.id)).await;
    }
}

/// Resolves on Ctrl-C or SIGTERM (installed once, up front, so a signal
/// never kills the process before it releases the lock).
pub struct Interrupt {
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    pub fn install() -> Result<Interrupt> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        Ok(Interrupt { term })
    }

    pub async fn wait(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.term.recv() => {}
        }
    }
}

impl LockArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let mut interrupt = Interrupt::install()?;
        let client = &ctx.client;
        let mut session = Session::start(client, self.ttl).await?;
        let held = tokio::select! {
            held = client.lock(self.name.as_bytes(), session.id) => held,
            () = interrupt.wait() => {
                session.end(client).await;
                return Ok(());
            }
            () = session.expired() => bail!("lock: session expired before the lock was taken"),
        };
        let held = match held {
            Ok(held) => held,
            Err(e) => {
                session.end(client).await;
                return Err(e).context("taking the lock");
            }
        };
        if self.command.is_empty() {
            print_held(ctx.format, &held)?;
            let lost = tokio::select! {
                () = interrupt.wait() => false,
                () = session.expired() => true,
            };
            let unlocked = client.unlock(held.key.clone()).await;
            session.end(client).await;
            if lost {
                bail!("lock: session expired: the lock was lost");
            }
            unlocked.context("releasing the lock")?;
            return Ok(());
        }
        let status = run_holding(&self.command, &held, &mut interrupt).await;
        let unlocked = client.unlock(held.key.clone()).await;
        session.end(client).await;
        let status = status?;
        unlocked.context("releasing the lock")?;
        // The command's own status is this command's (as etcdctl's).
        match status.code() {
            Some(0) => Ok(()),
            Some(code) => std::process::exit(code),
            None => bail!("{} was killed by a signal", self.command[0]),
        }
    }
}

fn print_held(format: Format, held: &LockHeld) -> Result<()> {
    let mut out = io::stdout().lock();
    match format {
        Format::Json => write_json(
            &mut out,
            &json!({
                "key": render_bytes(&held.key),
                "revision": held.revision,
                "fence": held.fence,
            }),
        )?,
        // etcdctl prints the lock key and its (empty) value.
        Format::Simple | Format::Table => {
            out.write_all(&held.key)?;
            out.write_all(b"\n\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Runs `command` with the lock's key and revisions in its environment; a
/// signal reaches it through the terminal's process group, so this waits
/// for it to exit either way.
async fn run_holding(
    command: &[String],
    held: &LockHeld,
    interrupt: &mut Interrupt,
) -> Result<std::process::ExitStatus> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command given");
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("ETCD_LOCK_KEY", String::from_utf8_lossy(&held.key).as_ref())
        .env("ETCD_LOCK_REV", held.revision.to_string())
        .env("NINES_LOCK_FENCE", held.fence.to_string())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    loop {
        tokio::select! {
            status = child.wait() => return status.with_context(|| format!("waiting for {program}")),
            () = interrupt.wait() => {}
        }
    }
}
