//! One module per subcommand; each has `Args`/`Command` and `run`.

pub mod common;
pub mod demo;
pub mod doctor;
pub mod keys;
pub mod license;
pub mod scenario;
pub mod serve;
pub mod simulate;
pub mod user;
pub mod vendor;

/// Readable logs on stderr by default, JSON lines with `--log-json`; `RUST_LOG` filters.
///
/// `default_level` applies when `RUST_LOG` is not set.
pub fn init_logging(json: bool, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal as _;
    // Colour only for a person at a terminal, never in log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
