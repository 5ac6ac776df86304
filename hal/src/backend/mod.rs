//! The backends. `sim` is always compiled; `pcsc` and `hid` come with their features.

pub mod sim;

#[cfg(feature = "pcsc")]
pub mod pcsc;

#[cfg(feature = "hid")]
pub mod hid;

use std::sync::Arc;

use crate::key::{BackendKind, KeyProvider};

/// The hardware providers compiled into this build (never the simulator: tests and the
/// simulator inject it explicitly).
// Pushed one by one: each push exists only with its feature.
#[allow(clippy::vec_init_then_push)]
pub fn hardware_providers() -> Vec<Arc<dyn KeyProvider>> {
    #[allow(unused_mut)]
    let mut v: Vec<Arc<dyn KeyProvider>> = Vec::new();
    #[cfg(feature = "pcsc")]
    v.push(Arc::new(pcsc::PcscProvider::new()));
    #[cfg(feature = "hid")]
    v.push(Arc::new(hid::HidProvider::system()));
    v
}

/// Whether `kind` is compiled into this build.
pub fn is_compiled(kind: BackendKind) -> bool {
    match kind {
        BackendKind::Sim => true,
        BackendKind::Pcsc => cfg!(feature = "pcsc"),
        BackendKind::Hid => cfg!(feature = "hid"),
    }
}
