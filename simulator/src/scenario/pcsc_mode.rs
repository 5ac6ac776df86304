//! The `pcsc` run mode: the same scenario against a real pcscd (a private one, in its own
//! mount namespace, so `restart_pcscd` can kill and restart it), with each scenario key served
//! as a virtual YubiKey through vpcd, the real PC/SC backend and monitor on a thread, and the
//! in-process server reading that monitor's cell.
//!
//! Time is real here. pcscd polls vpcd readers every 400 ms, so steps run back to back and
//! the expectations of a device step (`plug`, `unplug`, `swap`, `contend`, `restart_pcscd`,
//! `advance`) are *eventual*: they must hold within [`SETTLE`]. HTTP expectations are checked
//! once (requests change state). Contention is a real second PC/SC client — a child process
//! named `kf-contender` — holding the card with an exclusive connection.
//!
//! libpcsclite reads `PCSCLITE_CSOCK_NAME` once per process, so the caller owns the private
//! pcscd: it starts one ([`start_private_pcscd`]) and points `PCSCLITE_CSOCK_NAME` at its socket
//! before the process's first PC/SC call (`keyfloat simulate run --mode pcsc` does), then runs
//! scenarios against it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyfloat_hal::backend::pcsc::PcscProvider;
use keyfloat_hal::backend::sim::SimKeySpec;
use keyfloat_hal::trust::VendorValidator;
use keyfloat_hal::{spawn_monitor, CellReader, HardwareIdCell, MonitorConfig, MonitorHandle};

use super::expect::{cell_mismatch, response_mismatch};
use super::format::{Action, Expect, Mode, ScenarioSpec, StepSpec};
use super::http::{HttpTarget, Response};
use super::keys::ScenarioKeys;
use super::server::InProcessServer;
use super::steps::RunReport;
use super::trace::{HttpOutcome, TraceLine};
use super::ScenarioError;
use crate::card::{CardServer, PrivatePcscd, VirtualCard, CSOCK_ENV};

/// How long a device step's expectations may take to hold.
pub const SETTLE: Duration = Duration::from_secs(8);
/// Shortest exclusive hold, so pcscd's 400 ms poll and the monitor's retries can see it.
const MIN_HOLD: Duration = Duration::from_secs(3);
/// Name of the contending process (≤ 15 bytes: `/proc/PID/comm` is truncated there).
pub const PCSC_CONTENDER: &str = "kf-contender";

const MONITOR: MonitorConfig = MonitorConfig {
    revalidate_every: Duration::from_millis(250),
    retry_initial: Duration::from_millis(50),
    retry_max: Duration::from_millis(500),
    ..MonitorConfig::DEFAULT
};

struct PcscRun<'p> {
    spec: ScenarioSpec,
    pcscd: &'p mut PrivatePcscd,
    cards: BTreeMap<String, (u8, SimKeySpec)>,
    servers: BTreeMap<String, CardServer>,
    keys: ScenarioKeys,
    reader: CellReader,
    _monitor: MonitorHandle,
    http: Option<InProcessServer>,
    holders: Vec<Child>,
    /// Stalled keys (by name) and when their stall ends.
    stalls: BTreeMap<String, Instant>,
    start: Instant,
    trace: Vec<TraceLine>,
    step: usize,
}

fn run_err(spec: &ScenarioSpec, step: usize, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Run {
        scenario: spec.name.clone(),
        step,
        message: message.into(),
    }
}

/// Starts the private pcscd scenarios run against (needs root, pcscd, vsmartcard-vpcd and
/// `unshare`). Point `PCSCLITE_CSOCK_NAME` ([`CSOCK_ENV`]) at its socket before the first PC/SC
/// call of the process.
pub fn start_private_pcscd() -> std::io::Result<PrivatePcscd> {
    PrivatePcscd::start(0xA000 + (std::process::id() % 2000) as u16 * 2)
}

/// Runs `spec` in pcsc mode against `pcscd`, which must be the pcscd this process's PC/SC
/// calls go to (see the module docs).
pub fn run_spec(spec: &ScenarioSpec, pcscd: &mut PrivatePcscd) -> Result<RunReport, ScenarioError> {
    if !spec.modes.contains(&Mode::Pcsc) {
        return Err(ScenarioError::UnsupportedMode(spec.name.clone(), Mode::Pcsc.as_str()));
    }
    if spec.keys.len() > 2 {
        return Err(run_err(
            spec,
            0,
            "pcsc mode serves at most two keys (the vpcd reader has two slots)",
        ));
    }
    let mut run = PcscRun::start(spec, pcscd)?;
    for (i, step) in spec.steps.iter().enumerate() {
        run.step = i;
        run.step_once(i, step)?;
    }
    Ok(RunReport {
        name: spec.name.clone(),
        mode: Mode::Pcsc,
        trace: std::mem::take(&mut run.trace),
    })
}

impl<'p> PcscRun<'p> {
    fn start(spec: &ScenarioSpec, pcscd: &'p mut PrivatePcscd) -> Result<Self, ScenarioError> {
        let keys = ScenarioKeys::provision(&spec.keys, spec.seed).map_err(|e| run_err(spec, 0, e))?;
        let cards = spec
            .keys
            .iter()
            .enumerate()
            .filter_map(|(slot, k)| {
                Some((
                    k.name.clone(),
                    (u8::try_from(slot).ok()?, keys.specs.get(&k.name)?.clone()),
                ))
            })
            .collect();
        let cell = HardwareIdCell::new(keys.machine_id.clone());
        let reader = cell.reader();
        let validator = Arc::new(
            VendorValidator::new(keys.vendor.public_key())
                .require_attestation(spec.server.require_attestation.then(|| keys.attestation_roots.clone())),
        );
        let config = MonitorConfig {
            grace: spec.server.key_grace.unwrap_or_default(),
            ..MONITOR
        };
        let monitor = spawn_monitor(cell, vec![Arc::new(PcscProvider::new())], validator, config)
            .map_err(|e| run_err(spec, 0, format!("cannot start the monitor: {e}")))?;
        let http = if !spec.licenses.is_empty() || spec.steps.iter().any(|s| s.http.is_some()) {
            Some(InProcessServer::start(spec, reader.clone()).map_err(|e| run_err(spec, 0, e))?)
        } else {
            None
        };
        Ok(Self {
            spec: spec.clone(),
            pcscd,
            cards,
            servers: BTreeMap::new(),
            keys,
            reader,
            _monitor: monitor,
            http,
            holders: Vec::new(),
            stalls: BTreeMap::new(),
            start: Instant::now(),
            trace: Vec::new(),
            step: 0,
        })
    }

    fn plug(&mut self, key: &str) -> Result<(), ScenarioError> {
        if let Some(server) = self.servers.get(key) {
            server.insert();
            return Ok(());
        }
        let (slot, spec) = self
            .cards
            .get(key)
            .cloned()
            .ok_or_else(|| run_err(&self.spec, self.step, format!("unknown key {key}")))?;
        let server = CardServer::connect(self.pcscd.vpcd_addr(slot), VirtualCard::new(&spec))
            .map_err(|e| run_err(&self.spec, self.step, format!("cannot serve card {key}: {e}")))?;
        // A stalled card powers up (pcscd sees it) but answers no command.
        server.set_hang(self.stalls.get(key).is_some_and(|t| *t > Instant::now()));
        self.servers.insert(key.to_string(), server);
        Ok(())
    }

    /// `key`'s card stops answering commands for `d` (power-up still works).
    fn stall(&mut self, key: &str, d: Duration) {
        self.stalls.insert(key.to_string(), Instant::now() + d);
        if let Some(server) = self.servers.get(key) {
            server.set_hang(true);
        }
    }

    /// Ends the stalls whose time is up.
    fn release_stalls(&mut self) {
        let now = Instant::now();
        let over: Vec<String> = self
            .stalls
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in over {
            self.stalls.remove(&k);
            if let Some(server) = self.servers.get(&k) {
                // pcscd's vpcd driver waits forever for the swallowed command's answer: as
                // with real hardware, the stall ends with the card re-seated.
                server.set_hang(false);
                if server.is_inserted() {
                    server.remove();
                    std::thread::sleep(Duration::from_millis(300));
                    server.insert();
                }
            }
        }
    }

    fn unplug(&mut self, key: &str) {
        if let Some(server) = self.servers.get(key) {
            server.remove();
        }
    }

    fn contend(&mut self, key: &str, hold: Duration) -> Result<(), ScenarioError> {
        let slot = self.cards.get(key).map(|(s, _)| *s).unwrap_or(0);
        let reader = self.pcscd.reader(slot);
        let exe = std::env::current_exe().map_err(|e| run_err(&self.spec, self.step, e.to_string()))?;
        // Exec through a link named like the contender, so /proc/PID/comm names it.
        let dir = std::env::temp_dir().join(format!("keyfloat-contender-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let link: PathBuf = dir.join(PCSC_CONTENDER);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).map_err(|e| run_err(&self.spec, self.step, e.to_string()))?;
        let mut child = Command::new(&link)
            .args(["simulate", "hold", "--reader", &reader, "--millis"])
            .arg(hold.max(MIN_HOLD).as_millis().to_string())
            .env(CSOCK_ENV, self.pcscd.socket())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| run_err(&self.spec, self.step, format!("cannot start the contender: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| run_err(&self.spec, self.step, "contender has no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.trim() == "HOLDING" => break,
                Some(Ok(_)) => {}
                other => {
                    let _ = child.kill();
                    return Err(run_err(
                        &self.spec,
                        self.step,
                        format!("the contender could not take the card: {other:?}"),
                    ));
                }
            }
        }
        self.holders.push(child);
        Ok(())
    }

    fn label(&self) -> String {
        self.keys.label(&self.reader.hardware_id())
    }

    fn record(&mut self, action: String, http: Option<HttpOutcome>) {
        let snap = self.reader.snapshot();
        let line = TraceLine::of(&snap, self.start.elapsed(), self.step, action, self.label(), http);
        self.trace.push(line);
    }

    /// The cell-level expectations that do not hold right now, if any.
    fn cell_mismatch(&self, expect: &Expect) -> Option<String> {
        cell_mismatch(expect, &self.reader.snapshot(), &self.label(), Some(PCSC_CONTENDER))
    }

    fn expectation(&self, i: usize, step: &StepSpec, message: String) -> ScenarioError {
        ScenarioError::Expectation {
            scenario: self.spec.name.clone(),
            step: i,
            action: format!("{:?}", step.action).to_lowercase(),
            at: format!("{:.0?} (pcsc mode)", self.start.elapsed()),
            message,
        }
    }

    fn settle(&mut self, i: usize, step: &StepSpec) -> Result<(), ScenarioError> {
        let Some(expect) = &step.expect else { return Ok(()) };
        let deadline = Instant::now() + SETTLE;
        loop {
            self.release_stalls();
            match self.cell_mismatch(expect) {
                None => return Ok(()),
                Some(m) if Instant::now() >= deadline => {
                    return Err(self.expectation(i, step, format!("{m} (waited {SETTLE:?})")));
                }
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn step_once(&mut self, i: usize, step: &StepSpec) -> Result<(), ScenarioError> {
        let key = step.key.clone().unwrap_or_default();
        self.release_stalls();
        match step.action {
            Action::Stall => self.stall(&key, step.duration.unwrap_or_default()),
            Action::Plug => self.plug(&key)?,
            Action::Unplug => self.unplug(&key),
            Action::Swap => {
                self.unplug(&key);
                self.plug(step.to.as_deref().unwrap_or_default())?;
            }
            Action::Contend => self.contend(&key, step.duration.unwrap_or_default())?,
            Action::RestartPcscd => {
                let before = self.reader.snapshot().generation;
                self.pcscd
                    .restart()
                    .map_err(|e| run_err(&self.spec, i, format!("pcscd restart failed: {e}")))?;
                // The expectations are about recovery: first see the monitor notice the outage.
                let deadline = Instant::now() + SETTLE;
                while self.reader.snapshot().generation == before {
                    if Instant::now() >= deadline {
                        return Err(self.expectation(i, step, "the monitor never noticed pcscd going away".into()));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Action::Advance => {
                let prev = i.checked_sub(1).map_or(Duration::ZERO, |p| self.spec.steps[p].at);
                std::thread::sleep(step.at.saturating_sub(prev).min(Duration::from_secs(10)));
                self.release_stalls();
            }
            Action::Http => {
                let h = step
                    .http
                    .clone()
                    .ok_or_else(|| run_err(&self.spec, i, "http step without request"))?;
                let body = h.body.as_ref().and_then(|b| serde_json::to_value(b).ok());
                let server = self.http.as_mut().ok_or_else(|| run_err(&self.spec, i, "no server"))?;
                let resp: Response = server.request(&h.method, &h.path, body.as_ref());
                self.record(
                    format!("{} {}", h.method, h.path),
                    Some(HttpOutcome {
                        status: resp.status,
                        code: resp.code(),
                    }),
                );
                if let Some(e) = &step.expect {
                    if let Some(m) = self.cell_mismatch(e).or_else(|| response_mismatch(e, Some(&resp))) {
                        return Err(self.expectation(i, step, m));
                    }
                }
                return Ok(());
            }
            Action::Flap | Action::IoError | Action::RestartServer => {
                return Err(ScenarioError::UnsupportedMode(
                    self.spec.name.clone(),
                    Mode::Pcsc.as_str(),
                ));
            }
        }
        let result = self.settle(i, step);
        self.record(format!("{:?} {key}", step.action).to_lowercase(), None);
        result
    }
}

impl Drop for PcscRun<'_> {
    fn drop(&mut self) {
        for mut h in self.holders.drain(..) {
            let _ = h.kill();
            let _ = h.wait();
        }
        self.servers.clear();
    }
}

/// Holds `reader` with an exclusive PC/SC connection for `hold`, printing `HOLDING` once it
/// has the card (what the contender process does).
pub fn hold_exclusively(reader: &str, hold: Duration) -> Result<(), String> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(|e| format!("pcsc: {e}"))?;
    let name = std::ffi::CString::new(reader).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let card = loop {
        match ctx.connect(&name, pcsc::ShareMode::Exclusive, pcsc::Protocols::ANY) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("waiting for the card: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("cannot connect exclusively to {reader}: {e}")),
        }
    };
    println!("HOLDING");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::thread::sleep(hold);
    drop(card);
    Ok(())
}
