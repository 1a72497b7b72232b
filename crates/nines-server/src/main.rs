use anyhow::Context;
use clap::Parser;
use nines_server::{NinesNode, ServerArgs, ServerConfig};
use tracing_subscriber::EnvFilter;

// glibc malloc showed up at ~12% of a write-heavy profile (many small,
// short-lived buffers freed on other threads); mimalloc is built for that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("NINES_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = ServerArgs::parse();
    let config = ServerConfig::try_from(args).context("invalid configuration")?;
    let node = NinesNode::start(config)
        .await
        .context("cannot start node")?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
