//! `fletcher`: the command-line front end of the Fletcher text-embedding engine.
//!
//! `fletcher embed` turns a file of texts into a file of vectors; `fletcher bench`
//! measures the engine on a corpus; `fletcher serve` answers HTTP (and Arrow
//! Flight) requests. Logs go to stderr, filtered by `RUST_LOG`
//! (default `warn`).

mod cli;
mod commands;
mod io;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // `serve` sets up its own logging (text or JSON, default level info).
    if !matches!(cli.command, cli::Command::Serve(_)) {
        init_logging();
    }
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
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
