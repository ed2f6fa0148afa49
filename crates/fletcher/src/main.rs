//! `fletcher`: the command-line front end of the Fletcher text-embedding engine.
//!
//! `fletcher embed` turns a file of texts into a file of vectors; `fletcher bench`
//! measures the engine on a corpus. Logs go to stderr, filtered by `RUST_LOG`
//! (default `warn`).

mod cli;
mod commands;
mod io;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
