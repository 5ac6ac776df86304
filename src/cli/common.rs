//! Options shared by several subcommands.

use std::sync::Arc;

use anyhow::bail;
use keyfloat_hal::backend::{self, sim::SimBus};
use keyfloat_hal::{BackendKind, KeyBackend, KeyProvider};

/// `--key-backend`: the HAL's [`KeyBackend`] names, each with its help line.
pub fn key_backend_parser() -> impl clap::builder::TypedValueParser<Value = KeyBackend> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = KeyBackend::ALL.map(|b| PossibleValue::new(b.as_str()).help(b.describe()));
    PossibleValuesParser::new(values).try_map(|name| name.parse::<KeyBackend>())
}

/// The demo's plug/unplug endpoints, on a simulated bus.
#[derive(Debug, Clone)]
pub struct SimKeyControl {
    /// The bus the monitor watches.
    pub bus: SimBus,
    /// The key the endpoints plug and unplug.
    pub key: String,
}

impl keyfloat_server::KeyControl for SimKeyControl {
    fn key(&self) -> &str {
        &self.key
    }
    fn plug(&self) -> Result<(), String> {
        self.bus.plug(&self.key).map_err(|e| e.to_string())
    }
    fn unplug(&self) -> Result<(), String> {
        self.bus.unplug(&self.key).map_err(|e| e.to_string())
    }
}

/// The providers for a `--key-backend` choice. `sim` uses the given bus.
pub fn providers(choice: KeyBackend, sim: Option<&SimBus>) -> anyhow::Result<Vec<Arc<dyn KeyProvider>>> {
    let wanted = choice.kind();
    if wanted == Some(BackendKind::Sim) {
        tracing::warn!(
            "--key-backend sim: SIMULATED keys only; they can never satisfy a license signed by a real vendor key"
        );
        let bus = sim.cloned().unwrap_or_default();
        return Ok(vec![Arc::new(bus.provider())]);
    }
    if let Some(kind) = wanted {
        if !backend::is_compiled(kind) {
            bail!("the {kind} backend is not compiled into this build (enable the `{kind}` feature)");
        }
    }
    Ok(backend::hardware_providers()
        .into_iter()
        .filter(|p| wanted.is_none_or(|k| p.kind() == k))
        .collect())
}
