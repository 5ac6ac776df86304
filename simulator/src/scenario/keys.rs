//! A scenario's keys, provisioned as the file says — the same for both run modes — and the
//! labels traces use for hardware IDs.

use std::collections::BTreeMap;
use std::time::Duration;

use keyfloat_hal::backend::sim::try_provision_sim_key;
use keyfloat_hal::backend::sim::{SimAttestation, SimKeySpec};
use keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa;
use keyfloat_hal::trust::{issue_key_certificate, AttestationRoots, VendorSigningKey};
use keyfloat_hal::{HardwareId, Serial};

use super::format::{KeySpec, Provisioning};

/// The vendor the scenario's server trusts, the key material of every scenario key, and the
/// machine ID of the scenario.
pub(crate) struct ScenarioKeys {
    /// The trusted vendor.
    pub vendor: VendorSigningKey,
    /// Key name → provisioned key material.
    pub specs: BTreeMap<String, SimKeySpec>,
    /// The machine's own hardware ID in this scenario.
    pub machine_id: HardwareId,
    /// The root of the scenario's TEST attestation CA (every key but `unattested` ones has
    /// an F9 attestation key it issued).
    pub attestation_roots: AttestationRoots,
    names_by_serial: BTreeMap<String, String>,
}

impl ScenarioKeys {
    /// Provisions `keys`. Vendor keys are fresh per run: traces name keys and states, never
    /// key material, so the seed still fixes the trace.
    pub(crate) fn provision(keys: &[KeySpec], seed: u64) -> Result<Self, String> {
        let vendor = VendorSigningKey::generate();
        let other_vendor = VendorSigningKey::generate();
        let mut specs = BTreeMap::new();
        let mut names_by_serial = BTreeMap::new();
        let ca = SimAttestationCa::from_seed(seed).map_err(|e| format!("cannot create the attestation CA: {e}"))?;
        for k in keys {
            // Keys are generated on their device (attestable) unless provisioned otherwise.
            let attester = match k.provisioning {
                Provisioning::Unattested => None,
                Provisioning::AttestedWrongSerial => Some(ca.issue_device_from_seed(k.serial, seed).map(|d| {
                    let wrong = k.serial.wrapping_add(1);
                    d.attesting_serial(wrong)
                })),
                _ => Some(ca.issue_device_from_seed(k.serial, seed)),
            }
            .transpose()
            .map_err(|e| format!("cannot issue the F9 certificate of key {:?}: {e}", k.name))?;
            let base =
                SimKeySpec::from_seed(&k.name, k.serial, seed).with_attestation(attester.map(SimAttestation::Device));
            let spec = match k.provisioning {
                Provisioning::Valid | Provisioning::Unattested | Provisioning::AttestedWrongSerial => {
                    try_provision_sim_key(base, &vendor)
                }
                Provisioning::WrongVendor => try_provision_sim_key(base, &other_vendor),
                Provisioning::Unprovisioned => Ok(base),
                // The genuine certificate, but another key signs: no proof ever verifies.
                Provisioning::CorruptSigner => try_provision_sim_key(base, &vendor).map(|mut s| {
                    s.signing_key = SimKeySpec::from_seed("impostor", k.serial, seed).signing_key;
                    s
                }),
                Provisioning::SerialMismatch => {
                    let public = p256::PublicKey::from(base.verifying_key());
                    let other = Serial::from(k.serial.wrapping_add(1));
                    issue_key_certificate(&vendor, &other, &public, Duration::from_secs(365 * 86400))
                        .map(|der| base.with_certificate(der))
                }
            }
            .map_err(|e| format!("cannot provision key {:?}: {e}", k.name))?;
            specs.insert(k.name.clone(), spec);
            names_by_serial.insert(k.serial.to_string(), k.name.clone());
        }
        Ok(Self {
            vendor,
            specs,
            machine_id: HardwareId::new(format!("machine-{seed:016x}")),
            attestation_roots: ca.roots().map_err(|e| format!("attestation root: {e}"))?,
            names_by_serial,
        })
    }

    /// `id` as a trace label: a key name, `machine`, or the raw ID.
    pub(crate) fn label(&self, id: &HardwareId) -> String {
        if *id == self.machine_id {
            "machine".into()
        } else {
            self.names_by_serial
                .get(id.as_str())
                .cloned()
                .unwrap_or_else(|| id.to_string())
        }
    }
}
