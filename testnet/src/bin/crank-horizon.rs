//! `crank-horizon`: serves a local Horizon-compatible Stellar network for the testnet scripts.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use crank_testnet::{LocalHorizon, NetworkConfig, STANDALONE_PASSPHRASE};

/// A local, in-memory, Horizon-compatible Stellar network (accounts, payments, friendbot,
/// fault injection via POST /admin/faults).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CRANK_HORIZON_LISTEN", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Network passphrase transactions must be signed for.
    #[arg(long, env = "CRANK_HORIZON_PASSPHRASE", default_value = STANDALONE_PASSPHRASE)]
    passphrase: String,
    /// Minimum fee per operation, stroops.
    #[arg(long, default_value_t = 100)]
    base_fee: u32,
    /// Base reserve, stroops.
    #[arg(long, default_value_t = 5_000_000)]
    base_reserve: i64,
    /// What friendbot gives a new account, stroops.
    #[arg(long, default_value_t = 100_000_000_000)]
    friendbot_amount: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = NetworkConfig {
        passphrase: args.passphrase,
        base_fee: args.base_fee,
        base_reserve: args.base_reserve,
        friendbot_amount: args.friendbot_amount,
    };
    let passphrase = config.passphrase.clone();
    let server = LocalHorizon::start(config, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "crank-horizon serving {} (passphrase {passphrase:?}); friendbot at {}/friendbot",
        server.url(),
        server.url()
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for ctrl-c")?;
    server.stop().await;
    Ok(())
}
