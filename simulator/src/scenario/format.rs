//! The scenario file format (TOML). One file = one scenario:
//!
//! ```toml
//! name = "unplug-reverts"
//! seed = 7                       # same seed => identical trace
//! modes = ["virtual", "pcsc"]    # where it can run
//!
//! [[keys]]
//! name = "alpha"
//! serial = 12345678
//! provisioning = "valid"         # valid | wrong_vendor | corrupt_signer | unprovisioned | serial_mismatch
//!                                # | unattested | attested_wrong_serial
//!
//! [[licenses]]                   # added through the admin API before the first step
//! product = "hwbased"
//! hardware_key_required = true
//! consumptions = 100
//!
//! [[steps]]
//! at = "0ms"
//! action = "plug"
//! key = "alpha"
//! expect = { hardware_id = "alpha", key_state = "valid" }
//!
//! [[steps]]
//! at = "10ms"
//! action = "http"
//! http = { method = "POST", path = "/api/v4/add_consumption", body = { product = "hwbased", consumptions = 1 } }
//! expect = { status = 400, code = "hardware_key_not_accessible" }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ScenarioError;

/// Where a scenario can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// In-process, sim backend, virtual clock, deterministic.
    Virtual,
    /// Against a real pcscd with the virtual YubiKey served through vpcd.
    Pcsc,
}

impl Mode {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Virtual => "virtual",
            Mode::Pcsc => "pcsc",
        }
    }
}

/// How a scenario key was provisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provisioning {
    /// Certificate from the scenario's vendor key, naming the key's serial.
    #[default]
    Valid,
    /// Certificate from another vendor key.
    WrongVendor,
    /// Valid certificate, but the key signs garbage.
    CorruptSigner,
    /// No certificate at all.
    Unprovisioned,
    /// Certificate from the right vendor, naming another serial.
    SerialMismatch,
    /// A good certificate for a key imported from software: no attestation is possible.
    Unattested,
    /// A good certificate, but the device's attestation names another serial.
    AttestedWrongSerial,
}

/// A key the scenario can plug.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Name used by steps.
    pub name: String,
    /// Serial the key reports.
    pub serial: u32,
    /// Provisioning.
    #[serde(default)]
    pub provisioning: Provisioning,
}

/// A license added (through the admin API) before the first step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseSpec {
    /// Product short code.
    pub product: String,
    /// Bound to the hardware key.
    #[serde(default)]
    pub hardware_key_required: bool,
    /// Floating seats.
    #[serde(default = "default_seats")]
    pub floating_users: u32,
    /// Max consumptions (makes it a consumption license).
    #[serde(default)]
    pub consumptions: Option<i64>,
    /// License key (Key Auth); generated from the product when absent.
    #[serde(default)]
    pub license_key: Option<String>,
}

fn default_seats() -> u32 {
    5
}

/// Server options for the scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// `crashIfNoHardwareKey`.
    #[serde(default)]
    pub crash_if_no_hardware_key: bool,
    /// The monitor's grace period (`key_grace = "2s"`); none by default.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub key_grace: Option<Duration>,
    /// `require_attestation`: every validation demands a fresh attestation chaining to the
    /// scenario's test attestation CA (valid keys are generated on their device and attest).
    #[serde(default)]
    pub require_attestation: bool,
}

/// The verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Plug `key` in.
    Plug,
    /// Pull `key` out.
    Unplug,
    /// Pull `key`, plug `to`.
    Swap,
    /// `cycles` unplug/plug cycles of `key` every `period`; `http` (if given) is sent after
    /// every half cycle.
    Flap,
    /// Another process holds `key` exclusively for `duration`.
    Contend,
    /// The next I/O with `key` fails.
    IoError,
    /// The server restarts (same data dir); the monitor has not re-validated yet.
    RestartServer,
    /// Only let (virtual) time pass until `at`.
    Advance,
    /// Send the request in `http`.
    Http,
    /// Restart pcscd (pcsc mode only).
    RestartPcscd,
    /// Every operation on `key` blocks for `duration` (virtual mode: on the virtual clock;
    /// pcsc mode: the virtual card stops answering APDUs).
    Stall,
}

/// An HTTP request step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Method, e.g. `POST`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Path, e.g. `/api/v4/add_consumption`.
    pub path: String,
    /// JSON body.
    #[serde(default)]
    pub body: Option<toml::Value>,
}

fn default_method() -> String {
    "GET".into()
}

/// What must hold after a step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Hardware ID in force: a key name, `machine`, or a literal ID.
    pub hardware_id: Option<String>,
    /// `valid`, `absent`, `validating`, `invalid`, `error`.
    pub key_state: Option<String>,
    /// Reason of the primary key: an invalid reason (`wrong_vendor`...) or an error code (`KEY_BUSY`).
    pub reason: Option<String>,
    /// A holder process name that must be listed for a busy key.
    pub holder: Option<String>,
    /// HTTP status of the step's request.
    pub status: Option<u16>,
    /// Error `code` of the step's response.
    pub code: Option<String>,
    /// For `flap`: every response is a success or `hardware_key_not_accessible`, and the
    /// server's consumption total equals the successes.
    #[serde(default)]
    pub flap_invariants: bool,
    /// The server exited (crashIfNoHardwareKey).
    pub server_exited: Option<bool>,
    /// Values in the response body, by JSON pointer: `json = { "/total_consumptions" = 3 }`.
    #[serde(default)]
    pub json: std::collections::BTreeMap<String, toml::Value>,
}

/// One timed step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// When, from the start (e.g. `"150ms"`). Steps are in time order.
    #[serde(with = "humantime_serde_compat")]
    pub at: Duration,
    /// The verb.
    pub action: Action,
    /// Key the verb applies to.
    pub key: Option<String>,
    /// Second key (`swap`).
    pub to: Option<String>,
    /// `flap` cycles.
    pub cycles: Option<u32>,
    /// `flap` period.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub period: Option<Duration>,
    /// `contend` duration.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub duration: Option<Duration>,
    /// Request for `http` (and `flap`).
    pub http: Option<HttpSpec>,
    /// Expectations.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// A whole scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Name (reported in failures).
    pub name: String,
    /// Seed: same seed, same trace.
    #[serde(default)]
    pub seed: u64,
    /// Modes the scenario supports.
    #[serde(default = "default_modes")]
    pub modes: Vec<Mode>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Server options.
    #[serde(default)]
    pub server: ServerSpec,
    /// Keys.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Licenses added before the first step.
    #[serde(default)]
    pub licenses: Vec<LicenseSpec>,
    /// Steps, in time order.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
}

fn default_modes() -> Vec<Mode> {
    vec![Mode::Virtual]
}

impl ScenarioSpec {
    /// Parses and checks a scenario file's text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let spec: ScenarioSpec = toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &std::path::Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::Parse(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| match e {
            ScenarioError::Parse(m) => ScenarioError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    fn check(&self) -> Result<(), ScenarioError> {
        let bad = |i: usize, m: String| ScenarioError::Parse(format!("scenario {:?} step {i}: {m}", self.name));
        let mut last = Duration::ZERO;
        for (i, s) in self.steps.iter().enumerate() {
            if s.at < last {
                return Err(bad(i, "steps must be in time order".into()));
            }
            last = s.at;
            let needs_key = matches!(
                s.action,
                Action::Plug
                    | Action::Unplug
                    | Action::Swap
                    | Action::Flap
                    | Action::Contend
                    | Action::IoError
                    | Action::Stall
            );
            if needs_key {
                let k = s
                    .key
                    .as_deref()
                    .ok_or_else(|| bad(i, format!("{:?} needs `key`", s.action)))?;
                if !self.keys.iter().any(|x| x.name == k) {
                    return Err(bad(i, format!("unknown key {k:?}")));
                }
            }
            if s.action == Action::Swap {
                let to = s.to.as_deref().ok_or_else(|| bad(i, "swap needs `to`".into()))?;
                if !self.keys.iter().any(|x| x.name == to) {
                    return Err(bad(i, format!("unknown key {to:?}")));
                }
            }
            if s.action == Action::Http && s.http.is_none() {
                return Err(bad(i, "http needs `http`".into()));
            }
            if s.action == Action::Flap && (s.cycles.is_none() || s.period.is_none()) {
                return Err(bad(i, "flap needs `cycles` and `period`".into()));
            }
            if matches!(s.action, Action::Contend | Action::Stall) && s.duration.is_none() {
                return Err(bad(i, format!("{:?} needs `duration`", s.action).to_lowercase()));
            }
        }
        Ok(())
    }
}

/// `"150ms"`-style durations through `humantime`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub(crate) mod option {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
