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

/// What scenarios run against: nothing for virtual mode, the private pcscd of this process
/// for pcsc mode.
enum Rig {
    Virtual,
    #[cfg(feature = "pcsc")]
    Pcsc(keyfloat_simulator::card::PrivatePcscd),
}

impl Rig {
    fn start(mode: ModeArg) -> anyhow::Result<Self> {
        match mode {
            ModeArg::Virtual => Ok(Rig::Virtual),
            #[cfg(feature = "pcsc")]
            ModeArg::Pcsc => {
                use anyhow::Context as _;
                let pcscd = keyfloat_simulator::scenario::pcsc_mode::start_private_pcscd()
                    .context("starting a private pcscd (needs root, pcscd, vsmartcard-vpcd)")?;
                // libpcsclite reads the socket name once, at this process's first PC/SC call,
                // which comes after this line.
                std::env::set_var(keyfloat_simulator::card::CSOCK_ENV, pcscd.socket());
                Ok(Rig::Pcsc(pcscd))
            }
            #[cfg(not(feature = "pcsc"))]
            ModeArg::Pcsc => anyhow::bail!("--mode pcsc: this build has no pcsc feature"),
        }
    }

    fn run(&mut self, spec: &ScenarioSpec) -> Result<RunReport, ScenarioError> {
        match self {
            Rig::Virtual => run_spec(spec, in_process_server(spec)),
            #[cfg(feature = "pcsc")]
            Rig::Pcsc(pcscd) => keyfloat_simulator::scenario::pcsc_mode::run_spec(spec, pcscd),
        }
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
    let mut rig = Rig::start(args.mode)?;
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
        let result = rig.run(&spec).and_then(|report| {
            if args.check_determinism && args.mode == ModeArg::Virtual {
                let again = rig.run(&spec)?;
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
