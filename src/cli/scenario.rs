//! `keyfloat simulate run`: scripted scenarios from TOML files.

use std::path::PathBuf;
use std::process::ExitCode;

use keyfloat_simulator::scenario::{
    in_process_server, run_spec, Mode, RunReport, ScenarioError, ScenarioSpec, TraceLine,
};

/// Arguments of `keyfloat simulate run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario files (TOML).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Run mode: `virtual` (in-process, virtual clock) or `pcsc` (real pcscd + virtual card).
    #[arg(long, value_enum, default_value = "virtual")]
    mode: ModeArg,
    /// Also write every trace as JSON to this file.
    #[arg(long)]
    json_trace: Option<PathBuf>,
    /// Run each scenario twice and fail if the traces differ (virtual mode).
    #[arg(long)]
    check_determinism: bool,
    /// Print every trace line (by default long traces, e.g. a 1 kHz flap, are condensed to
    /// their first and last lines).
    #[arg(long)]
    full_trace: bool,
    /// Fail on a scenario that does not support the mode (by default it is skipped with a
    /// `SKIP` line).
    #[arg(long)]
    strict_modes: bool,
    /// Accepted for compatibility: skipping unsupported scenarios is the default now.
    #[arg(long, hide = true)]
    skip_unsupported: bool,
}

/// Arguments of `keyfloat simulate hold` (the contender of pcsc-mode scenarios).
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// Reader to hold exclusively.
    #[arg(long)]
    reader: String,
    /// How long to hold it.
    #[arg(long, default_value_t = 3000)]
    millis: u64,
}

/// Holds a reader exclusively (a real second PC/SC client), printing `HOLDING` once it has it.
pub fn hold(args: HoldArgs) -> anyhow::Result<ExitCode> {
    #[cfg(feature = "pcsc")]
    {
        keyfloat_simulator::scenario::pcsc_mode::hold_exclusively(
            &args.reader,
            std::time::Duration::from_millis(args.millis),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(ExitCode::SUCCESS)
    }
    #[cfg(not(feature = "pcsc"))]
    {
        anyhow::bail!(
            "`simulate hold {}` needs the pcsc feature ({} ms)",
            args.reader,
            args.millis
        )
    }
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// In-process, deterministic.
    Virtual,
    /// Against a real pcscd.
    Pcsc,
}

fn run_one(spec: &ScenarioSpec, mode: ModeArg) -> Result<RunReport, ScenarioError> {
    match mode {
        ModeArg::Virtual => run_spec(spec, in_process_server(spec)),
        #[cfg(feature = "pcsc")]
        ModeArg::Pcsc => keyfloat_simulator::scenario::pcsc_mode::run_spec(spec),
        #[cfg(not(feature = "pcsc"))]
        ModeArg::Pcsc => Err(ScenarioError::UnsupportedMode(
            spec.name.clone(),
            "pcsc (not compiled in)",
        )),
    }
}

/// Prints a trace; a flap step makes thousands of lines, so unless `full` only the first and
/// last lines of a long trace are shown.
fn print_trace(trace: &[TraceLine], full: bool) {
    const HEAD: usize = 30;
    const TAIL: usize = 20;
    let n = trace.len();
    if full || n <= HEAD + TAIL + 10 {
        trace.iter().for_each(|line| println!("{line}"));
        return;
    }
    trace[..HEAD].iter().for_each(|line| println!("{line}"));
    println!("   ... {} lines (--full-trace shows them) ...", n - HEAD - TAIL);
    trace[n - TAIL..].iter().for_each(|line| println!("{line}"));
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mode = match args.mode {
        ModeArg::Virtual => Mode::Virtual,
        ModeArg::Pcsc => Mode::Pcsc,
    };
    let mut reports = Vec::new();
    let mut failed = false;
    for path in &args.files {
        let spec = match ScenarioSpec::load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("FAIL {}: {e}", path.display());
                failed = true;
                continue;
            }
        };
        if !spec.modes.contains(&mode) && !args.strict_modes {
            let supported: Vec<&str> = spec.modes.iter().map(|m| m.as_str()).collect();
            println!(
                "SKIP {} (runs in {}, not {})",
                spec.name,
                supported.join(", "),
                mode.as_str()
            );
            continue;
        }
        println!("== {} ({})", spec.name, mode.as_str());
        let result = run_one(&spec, args.mode).and_then(|report| {
            if args.check_determinism && args.mode == ModeArg::Virtual {
                let again = run_one(&spec, args.mode)?;
                if let Some(i) = report.trace.iter().zip(&again.trace).position(|(a, b)| a != b) {
                    return Err(ScenarioError::NotDeterministic(spec.name.clone(), i));
                }
                if report.trace.len() != again.trace.len() {
                    return Err(ScenarioError::NotDeterministic(
                        spec.name.clone(),
                        report.trace.len().min(again.trace.len()),
                    ));
                }
            }
            Ok(report)
        });
        match result {
            Ok(report) => {
                print_trace(&report.trace, args.full_trace);
                println!("PASS {}", spec.name);
                reports.push(report);
            }
            Err(e) => {
                println!("FAIL {e}");
                failed = true;
            }
        }
    }
    if let Some(out) = &args.json_trace {
        let json: Vec<_> = reports
            .iter()
            .map(|r| serde_json::json!({"scenario": r.name, "mode": r.mode.as_str(), "trace": r.trace}))
            .collect();
        std::fs::write(out, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
