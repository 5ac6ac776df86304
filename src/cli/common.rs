//! Options shared by several subcommands.

use std::sync::Arc;

use anyhow::bail;
use keyfloat_hal::backend::{self, sim::SimBus};
use keyfloat_hal::{BackendKind, KeyProvider};

/// `--key-backend`: which backends to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyBackendArg {
    /// Every hardware backend compiled in (pcsc, hid).
    Auto,
    /// Smart-card interface through pcscd.
    Pcsc,
    /// USB HID.
    Hid,
    /// Simulated keys (tests, demo); never accepted for licenses signed by a real vendor key.
    Sim,
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
pub fn providers(choice: KeyBackendArg, sim: Option<&SimBus>) -> anyhow::Result<Vec<Arc<dyn KeyProvider>>> {
    let wanted = match choice {
        KeyBackendArg::Auto => None,
        KeyBackendArg::Pcsc => Some(BackendKind::Pcsc),
        KeyBackendArg::Hid => Some(BackendKind::Hid),
        KeyBackendArg::Sim => {
            tracing::warn!(
                "--key-backend sim: SIMULATED keys only; they can never satisfy a license signed by a real vendor key"
            );
            let bus = sim.cloned().unwrap_or_default();
            return Ok(vec![Arc::new(bus.provider())]);
        }
    };
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
