use anyhow::Context;
use clap::Parser;
use nines_server::fatal::{self, EXIT_RAFT_STOPPED};
use nines_server::{NinesNode, ServerArgs, ServerConfig};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

// glibc malloc showed up at ~12% of a write-heavy profile (many small,
// short-lived buffers freed on other threads); mimalloc is built for that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Exit codes are listed in `nines_server::fatal` and deploy/systemd/nines.service.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // First, so a panic anywhere (a tokio task, sled's or Raft's threads)
    // ends the process instead of leaving a half-working node.
    fatal::install_panic_hook();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("NINES_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .finish()
        // openraft repeats some warnings once per RPC: once per 10 s each.
        .with(nines_server::log_repeats::RepeatLimit)
        .init();
    let args = ServerArgs::parse();
    let config = ServerConfig::try_from(args).context("invalid configuration")?;
    let node = NinesNode::start(config)
        .await
        .context("cannot start node")?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let reason = tokio::select! {
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
        reason = node.fatal() => Some(reason),
    };
    if let Some(reason) = reason {
        // No graceful shutdown: Raft is already stopped, and anything slow
        // here would only delay the supervisor's restart.
        tracing::error!("fatal: {reason}");
        eprintln!("nines-server: fatal: {reason}; exiting with code {EXIT_RAFT_STOPPED}");
        std::process::exit(EXIT_RAFT_STOPPED);
    }
    tracing::info!("signal received: shutting down");
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
