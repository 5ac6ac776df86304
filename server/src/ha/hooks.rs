//! The app's answers to the lease task: may this node lead (its key), and the reload of
//! every in-memory view before it serves as leader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BoxFuture, LeaderHooks};
use crate::error::ApiError;
use crate::gate::Catalog;
use crate::state::AppState;

/// [`LeaderHooks`] of an [`AppState`].
#[derive(Debug)]
pub struct AppHooks {
    state: AppState,
    /// The last answer of `may_lead`, kept when the store cannot be read for a moment (a
    /// leader does not give the lease up over one failed read).
    last_may_lead: AtomicBool,
    /// The key-bound licenses as last read from the store (a standby polls often; the
    /// licenses change rarely, the key may change at any poll).
    licenses: Mutex<Option<(Instant, Arc<Catalog>)>>,
}

/// How long the licenses read for the leadership check are reused.
const LICENSES_FRESH: Duration = Duration::from_secs(1);

impl AppHooks {
    /// Hooks of `state`.
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            last_may_lead: AtomicBool::new(false),
            licenses: Mutex::new(None),
        }
    }

    /// Key-aware leadership: every key-bound license (read fresh from the store: another
    /// node may have added one) must accept the valid key in force, by its activation
    /// serial or one of its `allowed_serials`. A key in its grace period still counts.
    async fn key_allows_leading(&self) -> Result<bool, ApiError> {
        let cached = self.licenses.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let catalog = match cached {
            Some((at, catalog)) if at.elapsed() < LICENSES_FRESH => catalog,
            _ => {
                let licenses =
                    crate::store::read(self.state.store(), |tx| tx.licenses().map_err(ApiError::from)).await?;
                let catalog = Arc::new(Catalog::build(&licenses, self.state.keys()));
                *self.licenses.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), Arc::clone(&catalog)));
                catalog
            }
        };
        Ok(catalog.key_allows_all(self.state.keys().check()))
    }

    /// The read model (issue 12), the license catalog and the accounts, each read by a
    /// write job of the new epoch: it sits in the commit order after every batch of the
    /// previous leader, so nothing committed before the grant is missed.
    async fn reload_views(&self) -> Result<(), ApiError> {
        self.state.reload_model().await?;
        let licenses = crate::store::transact(self.state.store(), |tx| tx.licenses().map_err(ApiError::from)).await?;
        self.state.set_catalog(&licenses);
        self.state.reload_accounts().await
    }
}

impl LeaderHooks for AppHooks {
    fn may_lead(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match self.key_allows_leading().await {
                Ok(ok) => {
                    let was = self.last_may_lead.swap(ok, Ordering::AcqRel);
                    if was && !ok {
                        tracing::warn!("the key in force no longer satisfies the key-bound licenses");
                    }
                    ok
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the licenses; keeping the last leadership answer");
                    self.last_may_lead.load(Ordering::Acquire)
                }
            }
        })
    }

    /// The leader's catalog is current (every change goes through it): one atomic load of
    /// the key cell against it.
    fn still_may_lead(&self) -> bool {
        self.state.catalog().key_allows_all(self.state.keys().check())
    }

    fn reload(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.reload_views().await.map_err(|e| e.to_string()) })
    }
}
