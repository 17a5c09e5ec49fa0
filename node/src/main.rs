//! The `crank-node` binary: parse flags, set up logging, run the command, map the result to
//! an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use crank_node::commands::{Cli, dispatch};

fn main() -> ExitCode {
    // The hidden model-runner mode: before flags, logging or threads, so that the runner
    // confines a process that has nothing else in it.
    if crank_inference::runner::is_runner_invocation() {
        return crank_inference::runner::serve();
    }
    // Engines in this process run untrusted models in children of this same binary.
    crank_inference::runner::use_this_binary();
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
