//! `fletcher serve` on its own, with the binary's command line:
//! `cargo run --release -p fletcher-server --example serve -- serve --model DIR`.

use clap::{Parser, Subcommand};
use fletcher_server::ServeArgs;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model over HTTP.
    Serve(ServeArgs),
}

fn main() -> std::process::ExitCode {
    let Command::Serve(args) = Cli::parse().command;
    match fletcher_server::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
