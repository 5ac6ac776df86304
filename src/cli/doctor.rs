//! `keyfloat doctor`.

use std::process::ExitCode;

/// Arguments of `keyfloat doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`keyfloat doctor` is not available in this build yet")
}
