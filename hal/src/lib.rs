#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod cell;
mod error;
mod key;
mod key_backend;
mod machine_id;
mod monitor;
mod procfs;
mod validate;

pub mod backend;
pub mod diagnose;
pub mod holders;
pub mod piv;
pub mod trust;

pub use cell::{
    BackendError, CellReader, Grace, GraceEnd, HardwareIdCell, KeyCheck, KeyState, KeyStatus, KeyToken, KeyView,
    Snapshot,
};
pub use error::{Error, ErrorKind, Holder, Result};
pub use key::{
    BackendKind, Firmware, HardwareId, HardwareKey, HotplugEvent, HotplugSource, KeyAttestation, KeyId, KeyInfo,
    KeyProvider, Proof, ProofCapability, Prover, Serial, SignatureScheme,
};
pub use key_backend::{KeyBackend, UnknownKeyBackend};
pub use machine_id::{hardware_id_from_file, hardware_id_from_machine_id, machine_hardware_id, MACHINE_ID_ENV};
pub use monitor::{
    spawn as spawn_monitor, Driver, Input, Monitor, MonitorConfig, MonitorHandle, Step, ValidationRequest,
};
pub use validate::{InvalidReason, KeyValidator, ProofStatus, SerialReadable, Validation};
