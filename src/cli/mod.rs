//! One module per subcommand; each has `Args`/`Command` and `run`.

pub mod audit;
pub mod common;
pub mod demo;
pub mod doctor;
pub mod ha;
pub mod keys;
pub mod license;
pub mod scenario;
pub mod serve;
pub mod simulate;
pub mod store;
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
        .with_writer(|| EscapingStderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// stderr for log lines, with control characters in a line escaped (only its final
/// newline is kept): a value carrying `\n` cannot forge a second log line. The formatter
/// writes one event per `write` call.
#[derive(Debug, Clone, Copy)]
struct EscapingStderr;

impl std::io::Write for EscapingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr()
            .lock()
            .write_all(&keyfloat_server::logs::escape_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
