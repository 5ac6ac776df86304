//! [`Driver`]: the monitor with its I/O — publishes to the cell, opens keys and runs the
//! validator when the state machine asks.

use std::sync::Arc;
use std::time::Duration;

use super::{Input, Monitor, MonitorConfig, ValidationRequest};
use crate::cell::{HardwareIdCell, KeyStatus, Snapshot};
use crate::error::{Error, ErrorKind};
use crate::key::{KeyId, KeyProvider};
use crate::validate::{KeyValidator, Validation};

/// Opens `id` with the provider of its backend and runs the validator on it.
pub(super) fn validate_key(providers: &[Arc<dyn KeyProvider>], validator: &dyn KeyValidator, id: &KeyId) -> Validation {
    let Some(provider) = providers.iter().find(|p| p.kind() == id.backend()) else {
        return Validation::Failed(Error::new(ErrorKind::Unsupported, format!("no provider for {id}")));
    };
    match provider.open(id) {
        Ok(mut key) => validator.validate(key.as_mut()),
        Err(e) => Validation::Failed(e),
    }
}

/// A monitor with its I/O: providers to open keys, a validator, and the cell to publish to.
#[derive(Debug)]
pub struct Driver {
    monitor: Monitor,
    cell: HardwareIdCell,
    providers: Vec<Arc<dyn KeyProvider>>,
    validator: Arc<dyn KeyValidator>,
}

impl Driver {
    /// Builds a driver; the cell's machine ID is taken from `cell`'s current snapshot.
    pub fn new(
        cell: HardwareIdCell,
        providers: Vec<Arc<dyn KeyProvider>>,
        validator: Arc<dyn KeyValidator>,
        config: MonitorConfig,
    ) -> Self {
        let machine_id = cell.snapshot().machine_id.clone();
        Self {
            monitor: Monitor::new(machine_id, config),
            cell,
            providers,
            validator,
        }
    }

    /// Feeds one input at `now` and publishes the resulting picture; returns the
    /// validations to start (run them with [`Driver::run_validation`], anywhere, any time,
    /// and feed the answer back). Never touches a device.
    pub fn apply(&mut self, now: Duration, input: Input) -> Vec<ValidationRequest> {
        let step = self.monitor.apply(now, input);
        if let Some(snapshot) = step.publish {
            self.cell.publish(snapshot);
            log_change(&self.cell.snapshot());
        }
        step.validate
    }

    /// Runs one requested validation (opens the key, asks the validator): blocking I/O.
    pub fn run_validation(&self, request: &ValidationRequest) -> Input {
        Input::Validated {
            id: request.id.clone(),
            ticket: request.ticket,
            validation: validate_key(&self.providers, self.validator.as_ref(), &request.id),
        }
    }

    /// Feeds one input at `now`, runs every validation it triggers (and those they trigger)
    /// inline and publishes the resulting picture. Returns the generation published, if any.
    /// For deterministic drivers (simulator, tests); [`super::spawn`] validates on workers instead.
    pub fn handle(&mut self, now: Duration, input: Input) -> Option<u64> {
        let before = self.cell.snapshot().generation;
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            for request in self.apply(now, input) {
                queue.push_back(self.run_validation(&request));
            }
        }
        let after = self.cell.snapshot().generation;
        (after != before).then_some(after)
    }

    /// The state machine, for inspection.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// When the next re-validation is due.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.monitor.next_deadline()
    }
}

pub(super) fn log_change(s: &Snapshot) {
    match &s.in_force {
        Some(k) => tracing::info!(
            target: "keyfloat::key",
            generation = s.generation,
            hardware_id = %s.hardware_id,
            key = %k.info.id,
            "valid key in force"
        ),
        None => {
            let reason = s.primary_key().map(|k| match &k.status {
                KeyStatus::Invalid { reason } => reason.code().to_string(),
                KeyStatus::Error { code, message, .. } => format!("{code}: {message}"),
                KeyStatus::Validating => "validating".into(),
                KeyStatus::Valid { .. } => "valid".into(),
            });
            tracing::warn!(
                target: "keyfloat::key",
                generation = s.generation,
                hardware_id = %s.hardware_id,
                state = s.state().as_str(),
                reason = reason.as_deref().unwrap_or("no key attached"),
                "no valid key in force"
            );
        }
    }
}
