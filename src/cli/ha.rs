//! `keyfloat serve` in an HA cluster (`--node-id`, `--advertise-url`, `--lease-secs` with
//! `--store postgres://…`): the node's lease task, its shared JWT secret.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyfloat_server::auth::TokenKeys;
use keyfloat_server::ha::{hooks::AppHooks, Candidate, Cluster};
use keyfloat_server::store::StoreSpec;
use keyfloat_server::{AppState, ServerConfig};

/// The cluster this node joins, when `node_id` is set (HA needs a PostgreSQL store).
pub fn cluster(config: &ServerConfig, spec: &StoreSpec) -> anyhow::Result<Option<Arc<Cluster>>> {
    let Some(node_id) = config.node_id.clone().filter(|n| !n.trim().is_empty()) else {
        return Ok(None);
    };
    if !matches!(spec, StoreSpec::Postgres { .. }) {
        anyhow::bail!("--node-id (HA) needs a shared PostgreSQL store: --store postgres://…");
    }
    if config.lease_secs == 0 {
        anyhow::bail!("--lease-secs must be at least 1");
    }
    if config.advertise_url.is_none() {
        tracing::warn!("no --advertise-url: standbys cannot tell clients where this node is");
    }
    Ok(Some(Cluster::new(Candidate {
        node_id,
        advertise_url: config.advertise_url.clone(),
        lease: Duration::from_secs(config.lease_secs),
    })))
}

/// JWT keys: in HA the secret lives in the database (created once, shared by every node,
/// so a token issued by one node is accepted by the others); else `<data_dir>/jwt-secret`.
pub async fn token_keys(config: &ServerConfig, spec: &StoreSpec, ha: bool) -> anyhow::Result<TokenKeys> {
    match spec {
        StoreSpec::Postgres { url } if ha => {
            let secret = keyfloat_server::ha::lease::load_jwt_secret(url)
                .await
                .context("loading the shared JWT secret (kf_secrets)")?;
            Ok(TokenKeys::from_secret(&secret))
        }
        _ => TokenKeys::load_or_create(&config.data_dir).context("loading the JWT secret"),
    }
}

/// Joins `state` to the cluster and starts competing for the lease.
pub fn join(cluster: Arc<Cluster>, spec: &StoreSpec, state: &AppState) {
    let StoreSpec::Postgres { url } = spec else { return };
    state.set_cluster(Arc::clone(&cluster));
    cluster.start(url.clone(), Arc::new(AppHooks::new(state.clone())));
    tracing::info!(
        node_id = %cluster.candidate().node_id,
        lease_secs = cluster.candidate().lease.as_secs(),
        "HA: standby until this node holds the lease"
    );
}
