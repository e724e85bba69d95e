use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use moltbot_gateway::{config, server, telemetry};

/// One tenant's Moltbot gateway.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The YAML config file.
    #[arg(long, env = "MOLTBOT_GATEWAY_CONFIG")]
    config: PathBuf,
    /// Listen address; overrides `listen` in the config.
    #[arg(long, env = "MOLTBOT_GATEWAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = config::load(&args.config).context("invalid configuration")?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.check {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    let log = telemetry::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(server::run(config, args.config, log))?;
    Ok(())
}
