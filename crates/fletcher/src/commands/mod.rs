//! The subcommands of `fletcher`, one module each.

mod bench;
mod embed;

use crate::cli::{Cli, Command};

/// Runs the subcommand `cli` asks for.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Embed(args) => embed::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Serve(args) => fletcher_server::run(*args).map_err(anyhow::Error::from),
    }
}
