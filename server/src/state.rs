//! Shared state of the app: the store, the key cell reader, the in-memory license catalog
//! (its gate lives in `gate.rs`), the accounts, the security settings.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use keyfloat_hal::trust::VendorPublicKey;
use keyfloat_hal::CellReader;

use crate::auth::{Accounts, TokenKeys};
use crate::error::ApiError;
use crate::hashing::HashPool;
use crate::model::License;
use crate::ratelimit::{LoginLimiter, LoginLimits};
use crate::store::view::ReadModel;
use crate::store::{ModelStore, Store};

pub use crate::gate::{gated, Catalog, CommitCheck, Entry, KeyPolicy};

/// How often the writer sweeps lapsed seats of every license with one statement
/// (PostgreSQL).
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How often when the model names the lapsed seats (SQLite): with nothing lapsed that
/// sweep costs no job, and the lapsed seats every seat count steps over (one per seat
/// in the model's ordered ends) stay as few as lapse in this time.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Lapsed seats deleted per job of the sweep: a few ms of the writer at most.
const PURGE_CHUNK: usize = 256;
/// The model-guided sweep looks at every feature slot (they keep no order by end) on one
/// sweep in this many, about once a minute.
const SLOTS_EVERY_NTH_SWEEP: u32 = 12;

/// Plugs and unplugs the demo's simulated key (`/api/v4/sim/plug|unplug`). The server knows
/// no backend: whoever built the key source (the CLI, for `--key-backend sim`) injects this.
pub trait KeyControl: Send + Sync + fmt::Debug {
    /// Name of the key the endpoints plug and unplug.
    fn key(&self) -> &str;
    /// Plugs the key in.
    fn plug(&self) -> Result<(), String>;
    /// Pulls the key out.
    fn unplug(&self) -> Result<(), String>;
}

/// Shared by every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<ModelStore>,
    keys: CellReader,
    catalog: ArcSwap<Catalog>,
    tokens: TokenKeys,
    user_authentication: bool,
    key_policy: KeyPolicy,
    sim: Option<Arc<dyn KeyControl>>,
    backend: String,
    vendor_key: Option<VendorPublicKey>,
    admin_lock: tokio::sync::Mutex<()>,
    accounts: Accounts,
    hash_pool: HashPool,
    limiter: LoginLimiter,
    security: Security,
    metrics: crate::metrics::Metrics,
    cluster: std::sync::OnceLock<Arc<crate::ha::Cluster>>,
    renders: crate::render::RenderCache,
}

/// Who may read `/metrics` in authentication mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsAccess {
    /// Anyone (the pre-hardening behaviour); off by default.
    pub public: bool,
    /// A dedicated bearer token accepted besides account tokens.
    pub token: Option<String>,
    /// Leave out per-license series (ids, product codes, usage).
    pub hide_license_labels: bool,
}

/// Security settings of the app; [`Security::default`] is safe.
#[derive(Debug, Clone)]
pub struct Security {
    /// Password-hashing threads (at most the number of cores is sensible).
    pub hash_workers: usize,
    /// How long a login waits for a hashing thread before `429`.
    pub hash_wait: std::time::Duration,
    /// Login rate limits.
    pub login_limits: LoginLimits,
    /// `/metrics` access.
    pub metrics: MetricsAccess,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            hash_workers: crate::hashing::default_workers(),
            hash_wait: std::time::Duration::from_millis(500),
            login_limits: LoginLimits::default(),
            metrics: MetricsAccess::default(),
        }
    }
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.inner.store)
            .field("user_authentication", &self.inner.user_authentication)
            .field("key_policy", &self.inner.key_policy)
            .finish_non_exhaustive()
    }
}

/// Everything [`AppState::new`] needs.
#[derive(Debug)]
pub struct StateParts {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Reader of the monitor's cell.
    pub keys: CellReader,
    /// JWT keys.
    pub tokens: TokenKeys,
    /// Authentication mode.
    pub user_authentication: bool,
    /// Missing-key behaviour.
    pub key_policy: KeyPolicy,
    /// Plug/unplug of the simulated key (only with `--key-backend sim`).
    pub sim: Option<Arc<dyn KeyControl>>,
    /// `--key-backend` name, for health.
    pub backend: String,
    /// Verifies uploaded license files (uploads are refused without it).
    pub vendor_key: Option<VendorPublicKey>,
}

/// Licenses, accounts and token generations.
type StartViews = (
    Vec<License>,
    Vec<crate::model::Account>,
    std::collections::HashMap<String, u64>,
);

/// Loads the model, the licenses and the accounts at start. An HA standby may not write
/// (the store's fence refuses even these batches): it starts with the licenses only and
/// the lease task reloads everything when this node becomes leader.
async fn load_views(store: &Arc<ModelStore>) -> Result<StartViews, ApiError> {
    match store.reload().await {
        Ok(()) => {}
        Err(crate::store::StoreError::NotLeader) => {
            let licenses = crate::store::read(store.as_ref(), |tx| tx.licenses()).await?;
            return Ok((licenses, Vec::new(), Default::default()));
        }
        Err(e) => return Err(e.into()),
    }
    let licenses = crate::store::transact(store.as_ref(), |tx| tx.licenses()).await?;
    let (list, gens) = crate::auth::load_accounts(store.as_ref()).await?;
    Ok((licenses, list, gens))
}

impl AppState {
    /// Builds the state with the default [`Security`] and loads the license catalog and
    /// the accounts from the store.
    pub async fn new(parts: StateParts) -> Result<Self, ApiError> {
        Self::with_security(parts, Security::default()).await
    }

    /// [`AppState::new`] with explicit security settings.
    pub async fn with_security(parts: StateParts, security: Security) -> Result<Self, ApiError> {
        // Every write from here on goes through the model's recorder.
        let store = Arc::new(ModelStore::new(parts.store));
        let licenses = load_views(&store).await?;
        let catalog = Catalog::build(&licenses.0, &parts.keys);
        let accounts = Accounts::default();
        accounts.replace(&licenses.1, &licenses.2);
        let hash_pool = HashPool::new(security.hash_workers, security.hash_wait)
            .map_err(|e| ApiError::internal(format!("cannot start the hashing threads: {e}")))?;
        let state = Self {
            inner: Arc::new(Inner {
                store,
                keys: parts.keys,
                catalog: ArcSwap::from_pointee(catalog),
                tokens: parts.tokens,
                user_authentication: parts.user_authentication,
                key_policy: parts.key_policy,
                sim: parts.sim,
                backend: parts.backend,
                vendor_key: parts.vendor_key,
                admin_lock: tokio::sync::Mutex::new(()),
                accounts,
                hash_pool,
                limiter: LoginLimiter::new(security.login_limits),
                security,
                metrics: crate::metrics::Metrics::default(),
                cluster: std::sync::OnceLock::new(),
                renders: crate::render::RenderCache::default(),
            }),
        };
        state.spawn_purge();
        Ok(state)
    }

    /// Reads only skip lapsed seats; the writer drops them here, periodically (and on
    /// PostgreSQL on the new-seat path too), so the lapsed rows a read skips stay few.
    /// Stops with the state.
    fn spawn_purge(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = if self.inner.store.decides_seats() {
            SWEEP_EVERY
        } else {
            PURGE_EVERY
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            for sweep in 1u32.. {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                // Only the leader writes (a standby's batch would be refused anyway).
                if inner
                    .cluster
                    .get()
                    .is_some_and(|c| c.role() == crate::ha::Role::Standby)
                {
                    continue;
                }
                let now = crate::clock::now_micros();
                let store = Arc::clone(&inner.store);
                drop(inner);
                let slots = sweep % SLOTS_EVERY_NTH_SWEEP == 0;
                match store.sweep_lapsed(now, PURGE_CHUNK, slots).await {
                    Ok(n) if n > 0 => tracing::debug!(rows = n, "purged lapsed seats"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "periodic purge of lapsed seats failed"),
                }
            }
        });
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The key cell.
    pub fn keys(&self) -> &CellReader {
        &self.inner.keys
    }

    /// Current catalog.
    pub fn catalog(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.inner.catalog.load()
    }

    /// Replaces the catalog after an admin change.
    pub fn set_catalog(&self, licenses: &[License]) {
        self.inner
            .catalog
            .store(Arc::new(Catalog::build(licenses, &self.inner.keys)));
    }

    /// License objects rendered before, reused while unchanged.
    pub fn renders(&self) -> &crate::render::RenderCache {
        &self.inner.renders
    }

    /// The in-memory model of the committed licenses, seats and totals.
    pub fn model(&self) -> &ReadModel {
        self.inner.store.model()
    }

    /// Reads the model again from the store (e.g. when this node becomes the writer).
    pub async fn reload_model(&self) -> Result<(), ApiError> {
        Ok(self.inner.store.reload().await?)
    }

    /// Serialises admin changes so catalog updates apply in commit order.
    pub async fn admin_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.admin_lock.lock().await
    }

    /// JWT keys.
    pub fn tokens(&self) -> &TokenKeys {
        &self.inner.tokens
    }

    /// The in-memory copy of the accounts.
    pub fn accounts(&self) -> &Accounts {
        &self.inner.accounts
    }

    /// Re-reads the accounts from the store now (tests; the server also polls).
    pub async fn reload_accounts(&self) -> Result<(), ApiError> {
        let (list, gens) = crate::auth::load_accounts(self.store()).await?;
        self.inner.accounts.replace(&list, &gens);
        Ok(())
    }

    /// The password-hashing pool.
    pub fn hash_pool(&self) -> &HashPool {
        &self.inner.hash_pool
    }

    /// Login rate limits.
    pub fn login_limiter(&self) -> &LoginLimiter {
        &self.inner.limiter
    }

    /// Security settings.
    pub fn security(&self) -> &Security {
        &self.inner.security
    }

    /// This app's request and key-event counters (`/metrics`).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// Authentication mode on?
    pub fn user_authentication(&self) -> bool {
        self.inner.user_authentication
    }

    /// Plug/unplug of the simulated key, if any.
    pub fn sim(&self) -> Option<&dyn KeyControl> {
        self.inner.sim.as_deref()
    }

    /// The configured vendor public key.
    pub fn vendor_key(&self) -> Option<&VendorPublicKey> {
        self.inner.vendor_key.as_ref()
    }

    /// `--key-backend` name.
    pub fn backend(&self) -> &str {
        &self.inner.backend
    }

    /// The HA cluster cell (see `ha::guard`).
    pub(crate) fn cluster_cell(&self) -> &std::sync::OnceLock<Arc<crate::ha::Cluster>> {
        &self.inner.cluster
    }

    /// What a key-bound action without its key does.
    pub(crate) fn key_policy(&self) -> &KeyPolicy {
        &self.inner.key_policy
    }
}
