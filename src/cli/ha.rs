//! `keyfloat serve` in an HA cluster (`--node-id`, `--advertise-url`, `--lease-secs` with
//! `--store postgres://…`): the node's lease task, its shared JWT secret.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyfloat_server::auth::TokenKeys;
use keyfloat_server::ha::{hooks::AppHooks, Candidate, Cluster};
use keyfloat_server::store::StoreSpec;
use keyfloat_server::{AppState, ServerConfig};

/// The HA flags of `keyfloat serve` (they override YAML `node_id`, `advertise_url`,
/// `lease_secs`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HaArgs {
    /// HA: this node's name; with --store postgres://… the node competes for leadership.
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,
    /// HA: the URL clients and peers reach this node at (standbys name the leader's).
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// HA: lease length in seconds, renewed every quarter of it [default: 5].
    #[arg(long, value_name = "SECS")]
    pub lease_secs: Option<u64>,
}

/// Applies the flags given over the configuration file's values.
pub fn apply(args: &HaArgs, config: &mut ServerConfig) {
    if let Some(v) = &args.node_id {
        config.node_id = Some(v.clone());
    }
    if let Some(v) = &args.advertise_url {
        config.advertise_url = Some(v.clone());
    }
    if let Some(v) = args.lease_secs {
        config.lease_secs = v;
    }
}

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_ha_needs_postgres() {
        let mut c = ServerConfig {
            node_id: Some("a".into()),
            advertise_url: Some("http://a:8080".into()),
            ..ServerConfig::default()
        };
        assert_eq!((c.node_id.as_deref(), c.lease_secs), (Some("a"), 5));
        let args = HaArgs {
            node_id: Some("b".into()),
            lease_secs: Some(2),
            ..HaArgs::default()
        };
        apply(&args, &mut c);
        assert_eq!(
            (c.node_id.as_deref(), c.advertise_url.as_deref(), c.lease_secs),
            (Some("b"), Some("http://a:8080"), 2)
        );
        let sqlite = c.store_spec().unwrap();
        assert!(cluster(&c, &sqlite).unwrap_err().to_string().contains("PostgreSQL"));
        let pg = StoreSpec::parse(Some("postgres://u@h/db"), &c.data_dir).unwrap();
        let node = cluster(&c, &pg).unwrap().unwrap();
        assert_eq!(node.candidate().lease, Duration::from_secs(2));
        c.node_id = None;
        assert!(cluster(&c, &sqlite).unwrap().is_none(), "no --node-id: a single server");
    }
}
