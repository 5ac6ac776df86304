//! `keyfloat serve`.

use std::process::ExitCode;

/// Arguments of `keyfloat serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`keyfloat serve` is not available in this build yet")
}
