//! `keyfloat vendor`.

use std::process::ExitCode;

/// Subcommands of `keyfloat vendor`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {}
}
