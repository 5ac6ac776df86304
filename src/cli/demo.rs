//! `keyfloat demo`.

use std::process::ExitCode;

/// Arguments of `keyfloat demo`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`keyfloat demo` is not available in this build yet")
}
