//! Scripted hardware-key scenarios: a TOML format ([`ScenarioSpec`]), a Rust builder with the
//! same verbs ([`Scenario::builder`]), and runners for the `virtual` mode (in-process, sim
//! backend, virtual clock, deterministic) and the `pcsc` mode (real pcscd + virtual card).

mod expect;
mod format;
mod http;
mod keys;
#[cfg(all(feature = "pcsc", feature = "test-util", feature = "in-process-server"))]
pub mod pcsc_mode;
mod run;
#[cfg(feature = "in-process-server")]
mod server;
mod steps;
mod trace;

pub use format::{
    Action, Expect, HttpSpec, KeySpec, LicenseSpec, Mode, Provisioning, ScenarioSpec, ServerSpec, StepSpec,
};
pub use http::{HttpTarget, Response, ServerFactory};
pub use run::{Scenario, ScenarioBuilder};
#[cfg(feature = "in-process-server")]
pub use server::{in_process_server, InProcessServer};
pub use steps::{run_file, run_spec, RunReport};
pub use trace::{HttpOutcome, TraceLine};

/// Why a scenario could not run or did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file does not parse or is inconsistent.
    #[error("invalid scenario: {0}")]
    Parse(String),
    /// An expectation did not hold.
    #[error("scenario {scenario:?} step {step} ({action} at {at}): {message}")]
    Expectation {
        /// Scenario name.
        scenario: String,
        /// Step index (0-based, as in the file).
        step: usize,
        /// The step's verb.
        action: String,
        /// The step's time.
        at: String,
        /// What was expected and what was seen.
        message: String,
    },
    /// Running failed (a verb on an unknown key, the server failed to start...).
    #[error("scenario {scenario:?} step {step}: {message}")]
    Run {
        /// Scenario name.
        scenario: String,
        /// Step index.
        step: usize,
        /// What failed.
        message: String,
    },
    /// Same seed, different traces.
    #[error("scenario {0:?} is not deterministic: two runs with one seed gave different traces (first difference at line {1})")]
    NotDeterministic(String, usize),
    /// The mode is not supported by the scenario or this build.
    #[error("scenario {0:?} does not support mode {1}")]
    UnsupportedMode(String, &'static str),
}
