//! The key gate: the in-memory license catalog, the check of a key-bound license against the
//! cell (one atomic load, in the handler and again at commit time), and the policy for a
//! missing key (refuse, or `crashIfNoHardwareKey`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use keyfloat_hal::{CellReader, KeyCheck, KeyToken, Serial};

use crate::error::ApiError;
use crate::model::License;
use crate::service::LicenseError;
use crate::state::AppState;
use crate::store::Tx;

/// What the catalog knows about one license: enough to resolve a request, gate it and
/// render its terms without touching the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// License id.
    pub id: u64,
    /// Product code.
    pub product: String,
    /// The key the license was activated with, when it requires one.
    pub key: Option<KeyToken>,
    /// The license's other allowed keys (`allowed_serials`, e.g. one per HA node): each
    /// satisfies the gate as the activation key does.
    pub other_keys: Vec<KeyToken>,
    /// The license with its parsed terms. Its totals are those of when the catalog was
    /// built: read the current ones from the store.
    pub license: License,
}

impl Entry {
    /// Whether the gate lets this license act with `check` (one atomic load's result).
    pub fn allows(&self, check: KeyCheck) -> bool {
        match self.key {
            None => true,
            Some(token) => check.is(token) || self.other_keys.iter().any(|t| check.is(*t)),
        }
    }
}

fn other_keys(l: &License, keys: &CellReader) -> Vec<KeyToken> {
    if !l.terms.hardware_key_required {
        return Vec::new();
    }
    l.terms
        .allowed_serials
        .iter()
        .filter(|s| **s != l.activation_hardware_id)
        .map(|s| keys.token(&Serial::new(s.clone())))
        .collect()
}

/// Licenses in the order they were added.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: Vec<Arc<Entry>>,
    by_id: HashMap<u64, usize>,
}

impl Catalog {
    /// Builds the catalog; key-bound licenses get the token of their activation serial.
    pub fn build(licenses: &[License], keys: &CellReader) -> Self {
        let entries: Vec<Arc<Entry>> = licenses
            .iter()
            .map(|l| {
                Arc::new(Entry {
                    id: l.id,
                    product: l.terms.product.clone(),
                    key: l
                        .terms
                        .hardware_key_required
                        .then(|| keys.token(&Serial::new(l.activation_hardware_id.clone()))),
                    other_keys: other_keys(l, keys),
                    license: l.clone(),
                })
            })
            .collect();
        let by_id = entries.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        Self { entries, by_id }
    }

    /// Whether every key-bound license accepts the valid key in force (true when none is
    /// key-bound): the condition for leading an HA cluster.
    pub fn key_allows_all(&self, check: KeyCheck) -> bool {
        self.entries.iter().all(|e| e.allows(check))
    }

    /// The license a request names: `license_id` if given (it must belong to `product`),
    /// else the most recently added license of `product`.
    pub fn resolve(&self, product: &str, license_id: Option<u64>) -> Result<&Arc<Entry>, LicenseError> {
        match license_id {
            Some(id) => match self.by_id.get(&id).map(|i| &self.entries[*i]) {
                Some(e) if e.product == product => Ok(e),
                _ => Err(LicenseError::LicenseNotFoundForProduct {
                    id,
                    product: product.to_owned(),
                }),
            },
            None => self
                .entries
                .iter()
                .rev()
                .find(|e| e.product == product)
                .ok_or_else(|| LicenseError::UnknownProduct(product.to_owned())),
        }
    }

    /// By id.
    pub fn get(&self, id: u64) -> Option<&Arc<Entry>> {
        self.by_id.get(&id).map(|i| &self.entries[*i])
    }

    /// All entries in add order.
    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }
}

/// What happens when a key-bound license is used without its key.
#[derive(Clone)]
pub enum KeyPolicy {
    /// Answer `400 hardware_key_not_accessible` (default).
    Refuse,
    /// `crashIfNoHardwareKey`: call the hook (which flushes the store and exits the process).
    Crash(Arc<dyn Fn(&str) + Send + Sync>),
}

impl fmt::Debug for KeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refuse => "Refuse",
            Self::Crash(_) => "Crash",
        })
    }
}

impl AppState {
    /// Resolves the license a request names and applies the key gate for `action`:
    /// one lock-free load of the cell compared with the license's bound key. No device
    /// I/O, no lock, no await.
    pub fn gate(&self, product: &str, license_id: Option<u64>, action: &str) -> Result<u64, ApiError> {
        let catalog = self.catalog();
        let entry = catalog.resolve(product, license_id)?;
        self.check_key(entry, action)?;
        Ok(entry.id)
    }

    /// [`AppState::gate`], answering the catalog entry (terms in memory) instead of its id.
    pub fn gate_entry(&self, product: &str, license_id: Option<u64>, action: &str) -> Result<Arc<Entry>, ApiError> {
        let catalog = self.catalog();
        let entry = catalog.resolve(product, license_id)?;
        self.check_key(entry, action)?;
        Ok(Arc::clone(entry))
    }

    /// [`AppState::gate`] for a license named by id alone (any product).
    pub fn gate_id(&self, id: u64, action: &str) -> Result<u64, ApiError> {
        let catalog = self.catalog();
        let entry = catalog.get(id).ok_or(LicenseError::LicenseNotFound(id))?;
        self.check_key(entry, action)?;
        Ok(id)
    }

    /// The key gate for one catalog entry.
    pub fn check_key(&self, entry: &Entry, action: &str) -> Result<(), ApiError> {
        if entry.allows(self.keys().check()) {
            Ok(())
        } else {
            Err(self.key_missing(entry, action))
        }
    }

    /// The gate again, for inside the store job: a key-bound write commits only if its key
    /// is still the valid key in force when the job's savepoint is about to be released
    /// (one atomic load there). Take it right after [`AppState::gate`] and run
    /// [`CommitCheck::verify`] as the last step of the job (see [`gated`]).
    pub fn commit_check(&self, id: u64, action: &'static str) -> CommitCheck {
        let entry = self.catalog().get(id).cloned();
        CommitCheck {
            state: entry.as_ref().and_then(|e| e.key).map(|_| self.clone()),
            entry,
            action,
        }
    }

    fn key_missing(&self, entry: &Entry, action: &str) -> ApiError {
        let err = ApiError::key_not_accessible(action);
        if let KeyPolicy::Crash(hook) = self.key_policy() {
            let snap = self.keys().snapshot();
            let reason = format!(
                "license {} ({}) requires its hardware key for {action}; key state: {}",
                entry.id,
                entry.product,
                snap.state().as_str()
            );
            hook(&reason);
        }
        err
    }
}

/// The key gate re-checked at commit time. See [`AppState::commit_check`].
#[derive(Debug, Clone)]
pub struct CommitCheck {
    /// `Some` only for a key-bound license (a plain license never pays for the check).
    state: Option<AppState>,
    entry: Option<Arc<Entry>>,
    action: &'static str,
}

impl CommitCheck {
    /// `Err(hardware_key_not_accessible)` when the license's key is no longer in force.
    /// Returning that error from a store job rolls the job's savepoint back.
    pub fn verify(&self) -> Result<(), ApiError> {
        match (&self.state, &self.entry) {
            (Some(st), Some(entry)) => st.check_key(entry, self.action),
            _ => Ok(()),
        }
    }

    /// Whether the license is key-bound (the check can refuse after the job's writes).
    pub fn is_keyed(&self) -> bool {
        self.state.is_some()
    }
}

/// Wraps a store job so that [`CommitCheck::verify`] runs after the job's work and
/// immediately before the store releases the job's savepoint: a job whose key left in
/// between is refused and leaves no trace.
pub fn gated<T, E, F>(check: CommitCheck, f: F) -> impl FnOnce(&mut dyn Tx) -> Result<T, ApiError> + Send + 'static
where
    E: Into<ApiError>,
    F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
{
    move |tx| {
        let out = f(tx).map_err(Into::into)?;
        check.verify()?;
        Ok(out)
    }
}
