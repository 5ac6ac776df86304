//! Whom `keyfloat serve` trusts: the vendor key, the attestation roots and, with
//! `--key-backend sim`, the simulated key it provisions.

use std::sync::Arc;

use anyhow::Context;
use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::{SimAttestation, SimBus, SimKeySpec};
use keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa;
use keyfloat_hal::trust::{AttestationRoots, VendorPublicKey, VendorSigningKey, VendorValidator};
use keyfloat_hal::{HardwareKey, InvalidReason, KeyValidator, Validation};
use keyfloat_server::{KeyBackend, ServerConfig};

use super::SIM_KEY_NAME;
use crate::cli::common::SimKeyControl;

/// Used when no vendor public key is configured: keys are listed but never trusted, so
/// key-bound licenses can be neither added nor used (licenses without the flag work).
#[derive(Debug)]
struct NoVendorKey;

impl KeyValidator for NoVendorKey {
    fn validate(&self, key: &mut dyn HardwareKey) -> Validation {
        match key.read_serial() {
            Ok(serial) => Validation::Invalid {
                serial: Some(serial),
                reason: InvalidReason::WrongVendor,
            },
            Err(e) => Validation::Failed(e),
        }
    }
}

/// Whom the server trusts, and the simulated key when `--key-backend sim` asks for one.
pub(super) struct KeyTrust {
    pub(super) vendor: Option<VendorPublicKey>,
    pub(super) attestation_roots: Vec<String>,
    pub(super) sim: Option<SimKeyControl>,
}

/// The configured vendor key and attestation roots; with the sim backend, the simulated key
/// (plugged in) and, from `--sim-vendor-key`, the vendor and TEST attestation root it trusts.
pub(super) fn key_trust(config: &ServerConfig, sim_serial: u32) -> anyhow::Result<KeyTrust> {
    let mut trust = KeyTrust {
        vendor: match &config.vendor_public_key {
            Some(v) => Some(VendorPublicKey::from_path_or_inline(v).context("reading vendor_public_key")?),
            None => None,
        },
        attestation_roots: config.attestation_roots.clone(),
        sim: None,
    };
    if config.key_backend == KeyBackend::Sim {
        trust.sim = Some(simulated_key(config, sim_serial, &mut trust)?);
    }
    Ok(trust)
}

/// `--key-backend sim`: a bus with one simulated key, provisioned by `--sim-vendor-key` if
/// given (that vendor, and a TEST attestation root when attestation is required, are trusted).
fn simulated_key(config: &ServerConfig, sim_serial: u32, trust: &mut KeyTrust) -> anyhow::Result<SimKeyControl> {
    tracing::warn!("##########################################################################");
    tracing::warn!("## --key-backend sim: SIMULATED hardware key. DEMO / CI ONLY.            ##");
    tracing::warn!("## A simulated key can never satisfy a license signed by a real vendor.  ##");
    tracing::warn!("##########################################################################");
    let bus = SimBus::new();
    if let Some(path) = &config.sim_vendor_key {
        let sk = VendorSigningKey::read_pem_file(path)
            .with_context(|| format!("reading --sim-vendor-key {}", path.display()))?;
        if trust.vendor.is_none() {
            trust.vendor = Some(sk.public_key());
        }
        let mut spec = SimKeySpec::generate(SIM_KEY_NAME, sim_serial);
        if config.require_attestation {
            // The simulated key attests with a TEST CA made now, which this server trusts.
            let ca = SimAttestationCa::generate().context("creating the TEST attestation CA")?;
            let device = ca
                .issue_device(sim_serial)
                .context("issuing the simulated F9 certificate")?;
            spec = spec.with_attestation(Some(SimAttestation::Device(device)));
            trust.attestation_roots.push(ca.root_pem());
            tracing::warn!("--key-backend sim: trusting a TEST attestation root made now (not Yubico)");
        }
        bus.insert(provision_sim_key(spec, &sk));
    } else {
        tracing::warn!("no --sim-vendor-key: the simulated key is unprovisioned and will never be valid");
        bus.insert(SimKeySpec::generate(SIM_KEY_NAME, sim_serial));
    }
    bus.plug(SIM_KEY_NAME).context("plugging the simulated key")?;
    Ok(SimKeyControl {
        bus,
        key: SIM_KEY_NAME.into(),
    })
}

/// The validator of keys: the vendor's (with attestation when required), or one that
/// trusts no key when no vendor key is configured.
pub(super) fn key_validator(
    config: &ServerConfig,
    vendor: Option<VendorPublicKey>,
    attestation_roots: &[String],
) -> anyhow::Result<Arc<dyn KeyValidator>> {
    let attestation = if config.require_attestation {
        if attestation_roots.is_empty() {
            anyhow::bail!(
                "require_attestation is on but no attestation_roots are configured (Yubico's PIV root CA: {})",
                keyfloat_hal::trust::attestation::YUBICO_ROOTS_URL
            );
        }
        let roots = AttestationRoots::from_paths_or_inline(attestation_roots).context("reading attestation_roots")?;
        tracing::info!(roots = ?roots.fingerprints(), "attestation required at every key validation");
        Some(roots)
    } else {
        None
    };
    Ok(match vendor {
        Some(pk) => Arc::new(
            VendorValidator::new(pk)
                .allow_serial_only(config.allow_serial_only_keys)
                .require_attestation(attestation),
        ),
        None => {
            tracing::warn!("no vendor_public_key configured: no hardware key can be validated");
            Arc::new(NoVendorKey)
        }
    })
}
