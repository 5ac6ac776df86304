//! The virtual-mode runner and the builder API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keyfloat_hal::backend::sim::SimBus;
use keyfloat_hal::trust::VendorValidator;
use keyfloat_hal::{
    CellReader, Driver, ErrorKind, HardwareId, HardwareIdCell, Holder, HotplugSource, Input, KeyProvider,
    MonitorConfig, ValidationRequest,
};

use super::format::{KeySpec, Provisioning};
use super::http::{HttpTarget, Response};
use super::keys::ScenarioKeys;
use super::trace::{HttpOutcome, TraceLine};
use super::ScenarioError;

/// The process named as the holder while a key is contended.
pub(crate) const CONTENDER: &str = "keyfloat-contender";

/// Monitor timing in virtual time: fast enough that scenarios stay short.
const VIRTUAL_MONITOR: MonitorConfig = MonitorConfig {
    revalidate_every: Duration::from_millis(500),
    retry_initial: Duration::from_millis(5),
    retry_max: Duration::from_millis(50),
    ..MonitorConfig::DEFAULT
};

/// Builds a [`Scenario`] in Rust, with the same verbs as the file format.
///
/// ```
/// use std::time::Duration;
/// use keyfloat_simulator::scenario::{Provisioning, Scenario};
///
/// let mut sim = Scenario::builder("unplug-reverts").seed(7).key("alpha", 12345678, Provisioning::Valid).build().unwrap();
/// sim.plug("alpha").unwrap();
/// assert_eq!(sim.hardware_id_label(), "alpha");
/// sim.advance(Duration::from_millis(5));
/// sim.unplug("alpha").unwrap();
/// assert_eq!(sim.hardware_id_label(), "machine");
/// let trace = sim.finish();
/// assert_eq!(trace.len(), 3);
/// ```
#[derive(Debug)]
pub struct ScenarioBuilder {
    name: String,
    seed: u64,
    keys: Vec<KeySpec>,
    grace: Option<Duration>,
    require_attestation: bool,
}

impl ScenarioBuilder {
    /// The monitor's grace period (none by default).
    pub fn key_grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// Seed for key material (same seed, same trace).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Adds a key the scenario can plug.
    pub fn key(mut self, name: &str, serial: u32, provisioning: Provisioning) -> Self {
        self.keys.push(KeySpec {
            name: name.into(),
            serial,
            provisioning,
        });
        self
    }

    /// The validator demands a fresh attestation chaining to the scenario's test CA.
    pub fn require_attestation(mut self, on: bool) -> Self {
        self.require_attestation = on;
        self
    }

    /// Builds the scenario (no key plugged, time zero).
    pub fn build(self) -> Result<Scenario, ScenarioError> {
        Scenario::new(self.name, self.seed, &self.keys, self.grace, self.require_attestation)
    }
}

/// A running virtual scenario: a simulated bus, the real monitor and cell, a virtual clock,
/// optionally a server, and the trace so far.
pub struct Scenario {
    name: String,
    bus: SimBus,
    validator: Arc<VendorValidator>,
    driver: Driver,
    source: Box<dyn HotplugSource>,
    reader: CellReader,
    machine_id: HardwareId,
    now: Duration,
    releases: BTreeMap<Duration, Vec<String>>,
    /// Stalled keys (by name) and when their stall ends.
    stalls: BTreeMap<String, Duration>,
    /// Validations blocked by a stall, by the time they get their answer.
    deferred: BTreeMap<Duration, Vec<ValidationRequest>>,
    config: MonitorConfig,
    keys: ScenarioKeys,
    http: Option<Box<dyn HttpTarget>>,
    /// After a server restart the new monitor has not run yet: nothing is pumped until time moves.
    pump_suspended: bool,
    step: usize,
    trace: Vec<TraceLine>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

pub(super) fn run_err(scenario: &str, step: usize, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Run {
        scenario: scenario.into(),
        step,
        message: message.into(),
    }
}

impl Scenario {
    /// Starts a builder.
    pub fn builder(name: &str) -> ScenarioBuilder {
        ScenarioBuilder {
            name: name.into(),
            seed: 0,
            keys: Vec::new(),
            grace: None,
            require_attestation: false,
        }
    }

    pub(super) fn new(
        name: String,
        seed: u64,
        keys: &[KeySpec],
        grace: Option<Duration>,
        require_attestation: bool,
    ) -> Result<Self, ScenarioError> {
        let keys = ScenarioKeys::provision(keys, seed).map_err(|e| run_err(&name, 0, e))?;
        let bus = SimBus::new();
        for spec in keys.specs.values() {
            bus.insert(spec.clone());
        }
        let validator = Arc::new(
            VendorValidator::new(keys.vendor.public_key())
                .require_attestation(require_attestation.then(|| keys.attestation_roots.clone())),
        );
        let machine_id = keys.machine_id.clone();
        let config = MonitorConfig {
            grace: grace.unwrap_or_default(),
            ..VIRTUAL_MONITOR
        };
        let (driver, source, reader) = Self::monitor(&bus, &validator, &machine_id, config)?;
        Ok(Self {
            name,
            bus,
            validator,
            driver,
            source,
            reader,
            machine_id,
            now: Duration::ZERO,
            releases: BTreeMap::new(),
            stalls: BTreeMap::new(),
            deferred: BTreeMap::new(),
            config,
            keys,
            http: None,
            pump_suspended: false,
            step: 0,
            trace: Vec::new(),
        })
    }

    fn monitor(
        bus: &SimBus,
        validator: &Arc<VendorValidator>,
        machine_id: &HardwareId,
        config: MonitorConfig,
    ) -> Result<(Driver, Box<dyn HotplugSource>, CellReader), ScenarioError> {
        let cell = HardwareIdCell::new(machine_id.clone());
        let reader = cell.reader();
        let provider = bus.provider();
        let source = provider.watch().map_err(|e| run_err("", 0, e.to_string()))?;
        let validator: Arc<dyn keyfloat_hal::KeyValidator> = validator.clone();
        let driver = Driver::new(cell, vec![Arc::new(provider)], validator, config);
        Ok((driver, source, reader))
    }

    /// Connects a server; its requests see this scenario's cell.
    pub fn attach_server(&mut self, target: Box<dyn HttpTarget>) {
        self.http = Some(target);
    }

    /// The reader of the cell the monitor publishes to.
    pub fn reader(&self) -> &CellReader {
        &self.reader
    }

    /// The simulated bus.
    pub fn bus(&self) -> &SimBus {
        &self.bus
    }

    /// Virtual time now.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Sets the step index recorded in trace lines.
    pub fn set_step(&mut self, step: usize) {
        self.step = step;
    }

    /// The hardware ID in force as a trace label: a key name, `machine`, or the raw ID.
    pub fn hardware_id_label(&self) -> String {
        self.keys.label(&self.reader.hardware_id())
    }

    /// Feeds one input to the monitor and answers the validations it asks for, like the
    /// threaded monitor's workers do: at once, or, for a stalled key, when its stall ends
    /// (meanwhile the monitor goes on with everything else).
    fn feed(&mut self, input: Input) {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            for request in self.driver.apply(self.now, input) {
                let name = request.id.path();
                match self.stalls.get(name) {
                    Some(until) if *until > self.now => self.deferred.entry(*until).or_default().push(request),
                    _ => queue.push_back(self.driver.run_validation(&request)),
                }
            }
        }
    }

    fn pump(&mut self) {
        if self.pump_suspended {
            return;
        }
        loop {
            match self.source.next_event(Duration::ZERO) {
                Ok(Some(ev)) => {
                    self.feed(Input::Hotplug(ev));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("simulated bus: {e}");
                    break;
                }
            }
        }
        let now = self.now;
        let due: Vec<Duration> = self.deferred.range(..=now).map(|(t, _)| *t).collect();
        for t in due {
            for request in self.deferred.remove(&t).unwrap_or_default() {
                let answer = self.driver.run_validation(&request);
                self.feed(answer);
            }
        }
        self.feed(Input::Tick);
    }

    /// Lets virtual time pass until `t`, running every re-validation and contention release
    /// due on the way, in time order.
    pub fn advance_to(&mut self, t: Duration) {
        if t > self.now {
            self.pump_suspended = false;
        }
        loop {
            let next_release = self.releases.keys().next().copied().filter(|r| *r <= t);
            let next_deadline = self.driver.next_deadline().filter(|d| *d <= t && *d > self.now);
            let next_answer = self
                .deferred
                .keys()
                .next()
                .copied()
                .filter(|d| *d <= t && *d > self.now);
            let Some(next) = [next_release, next_deadline, next_answer].into_iter().flatten().min() else {
                break;
            };
            self.now = self.now.max(next);
            if let Some(names) = self.releases.remove(&next) {
                for n in names {
                    let _ = self.bus.make_busy(&n, None);
                }
            }
            self.pump();
        }
        self.now = self.now.max(t);
        self.pump();
    }

    /// Lets `d` of virtual time pass.
    pub fn advance(&mut self, d: Duration) -> &TraceLine {
        self.advance_to(self.now + d);
        self.record(format!("advance {}", humantime::format_duration(d)), None)
    }

    fn verb(&mut self, action: String, r: keyfloat_hal::Result<()>) -> Result<&TraceLine, ScenarioError> {
        r.map_err(|e| run_err(&self.name, self.step, e.to_string()))?;
        self.pump();
        Ok(self.record(action, None))
    }

    /// Plugs a key in.
    pub fn plug(&mut self, key: &str) -> Result<&TraceLine, ScenarioError> {
        let r = self.bus.plug(key);
        self.verb(format!("plug {key}"), r)
    }

    /// Pulls a key out.
    pub fn unplug(&mut self, key: &str) -> Result<&TraceLine, ScenarioError> {
        let r = self.bus.unplug(key);
        self.verb(format!("unplug {key}"), r)
    }

    /// Pulls `out`, plugs `into`.
    pub fn swap(&mut self, out: &str, into: &str) -> Result<&TraceLine, ScenarioError> {
        let r = self.bus.swap(out, into);
        self.verb(format!("swap {out}->{into}"), r)
    }

    /// Another process holds `key` exclusively for `d`; the monitor's next check finds it busy.
    pub fn contend(&mut self, key: &str, d: Duration) -> Result<&TraceLine, ScenarioError> {
        let holder = Holder {
            pid: 4242,
            command: CONTENDER.into(),
        };
        let r = self.bus.make_busy(key, Some(holder));
        self.releases.entry(self.now + d).or_default().push(key.to_string());
        self.feed(Input::RevalidateAll);
        self.verb(format!("contend {key} {}", humantime::format_duration(d)), r)
    }

    /// Every operation on `key` blocks for `d` of virtual time: validations that start
    /// meanwhile answer when the stall ends; the monitor goes on with everything else.
    pub fn stall(&mut self, key: &str, d: Duration) -> Result<&TraceLine, ScenarioError> {
        let r = if self.keys.specs.contains_key(key) {
            self.stalls.insert(key.to_string(), self.now + d);
            Ok(())
        } else {
            Err(keyfloat_hal::Error::new(
                ErrorKind::NotPresent,
                format!("no key named {key:?}"),
            ))
        };
        self.verb(format!("stall {key} {}", humantime::format_duration(d)), r)
    }

    /// The next I/O with `key` fails; the monitor notices at once and retries with backoff.
    pub fn io_error(&mut self, key: &str) -> Result<&TraceLine, ScenarioError> {
        let r = self.bus.fail_next(key, ErrorKind::Io);
        self.feed(Input::RevalidateAll);
        self.verb(format!("io_error {key}"), r)
    }

    /// Restarts the server and its monitor: a fresh cell that trusts no key until the new
    /// monitor re-proves it (which happens when time next moves).
    pub fn restart_server(&mut self) -> Result<&TraceLine, ScenarioError> {
        let (driver, source, reader) = Self::monitor(&self.bus, &self.validator, &self.machine_id, self.config)?;
        // Answers owed to the old monitor die with it.
        self.deferred.clear();
        self.driver = driver;
        self.source = source;
        self.reader = reader.clone();
        self.pump_suspended = true;
        if let Some(http) = self.http.as_mut() {
            http.restart(reader)
                .map_err(|e| run_err(&self.name, self.step, format!("server restart failed: {e}")))?;
        }
        Ok(self.record("restart_server".into(), None))
    }

    /// Sends a request to the attached server.
    pub fn http(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(Response, &TraceLine), ScenarioError> {
        let name = self.name.clone();
        let step = self.step;
        let http = self
            .http
            .as_mut()
            .ok_or_else(|| run_err(&name, step, "no server attached"))?;
        let resp = http.request(method, path, body);
        let outcome = HttpOutcome {
            status: resp.status,
            code: resp.code(),
        };
        let line = self.record(format!("{method} {path}"), Some(outcome));
        Ok((resp, line))
    }

    /// Whether the attached server has exited on purpose.
    pub fn server_exited(&self) -> bool {
        self.http.as_ref().is_some_and(|h| h.exited())
    }

    pub(super) fn record(&mut self, action: String, http: Option<HttpOutcome>) -> &TraceLine {
        let snap = self.reader.snapshot();
        let line = TraceLine::of(&snap, self.now, self.step, action, self.hardware_id_label(), http);
        self.trace.push(line);
        self.trace.last().expect("just pushed")
    }

    /// The trace so far.
    pub fn trace(&self) -> &[TraceLine] {
        &self.trace
    }

    /// Ends the scenario and returns its trace.
    pub fn finish(self) -> Vec<TraceLine> {
        self.trace
    }
}
