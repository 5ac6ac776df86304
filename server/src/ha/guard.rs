//! The HTTP side of HA: `GET /api/v4/ready`, the standby middleware (every client and admin
//! call on a standby answers `503 not_leader`), and the cluster part of health.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{Cluster, Role};
use crate::state::AppState;

/// `503 {"code":"not_leader","leader":<url or null>}`: this node is a standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLeader {
    /// The leader's advertised URL, when one is known.
    pub leader: Option<String>,
}

impl NotLeader {
    /// The JSON body.
    pub fn body(&self) -> Value {
        let message = match &self.leader {
            Some(url) => format!("This node is a standby; the leader is {url}"),
            None => "This node is a standby; no leader right now, retry shortly".to_owned(),
        };
        json!({ "status": 503, "code": "not_leader", "message": message, "leader": self.leader })
    }
}

impl IntoResponse for NotLeader {
    fn into_response(self) -> Response {
        let mut res = (StatusCode::SERVICE_UNAVAILABLE, Json(self.body())).into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        res.extensions_mut().insert(crate::metrics::ErrorCode("not_leader"));
        res
    }
}

impl AppState {
    /// Joins this app to an HA cluster (once, before serving).
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        if self.cluster_cell().set(cluster).is_err() {
            tracing::warn!("set_cluster called twice; keeping the first cluster");
        }
    }

    /// The cluster this node belongs to, if HA is on.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster_cell().get()
    }

    /// `single` without HA, else this node's current role.
    pub fn role(&self) -> Role {
        self.cluster().map_or(Role::Single, |c| c.role())
    }

    /// `Err(503 not_leader)` on a standby.
    pub fn require_leader(&self) -> Result<(), NotLeader> {
        match self.cluster() {
            Some(c) if c.role() == Role::Standby => Err(NotLeader { leader: c.leader_url() }),
            _ => Ok(()),
        }
    }
}

/// `GET /api/v4/ready`: 200 on the leader and on a single server, else `503 not_leader`
/// (HAProxy health checks, Kubernetes readiness probes). No authentication: it says only
/// whether to send traffic here.
pub async fn ready_show(State(st): State<AppState>) -> Response {
    match st.require_leader() {
        Ok(()) => Json(json!({ "status": "ok", "role": st.role() })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Middleware: a standby answers every call it wraps with `503 not_leader`. A call that
/// raced a step-down (the store refused its batch) gets the same body, leader included.
pub async fn standby_guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(e) = st.require_leader() {
        return e.into_response();
    }
    let res = next.run(req).await;
    let refused = res
        .extensions()
        .get::<crate::metrics::ErrorCode>()
        .is_some_and(|c| c.0 == "not_leader");
    match st.cluster() {
        Some(c) if refused => NotLeader { leader: c.leader_url() }.into_response(),
        _ => res,
    }
}

/// The cluster part of health: typed, written straight into the answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterInfo<'a> {
    /// `leader`, `standby` or `single`.
    pub role: &'static str,
    /// This node's name (HA only).
    pub node_id: Option<&'a str>,
    /// This node's advertised URL (HA only; absent for a single server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<Option<&'a str>>,
    /// The epoch this node writes under (HA only).
    pub epoch: Option<u64>,
    /// The lease row's epoch (HA only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_epoch: Option<u64>,
    /// The leader's URL, when known.
    pub leader: Option<String>,
    /// The lease holder, while the lease is live (HA only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_node: Option<Option<String>>,
    /// Lease length in seconds (HA only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<f64>,
    /// Every node's heartbeat (empty for a single server).
    pub nodes: Vec<super::lease::NodeRow>,
}

/// The cluster part of health for `st` (role `single` without HA).
pub fn cluster_info(st: &AppState) -> ClusterInfo<'_> {
    let Some(c) = st.cluster() else {
        return ClusterInfo {
            role: Role::Single.as_str(),
            node_id: None,
            advertise_url: None,
            epoch: None,
            lease_epoch: None,
            leader: None,
            leader_node: None,
            lease_secs: None,
            nodes: Vec::new(),
        };
    };
    let view = c.view();
    ClusterInfo {
        role: c.role().as_str(),
        node_id: Some(&c.candidate().node_id),
        advertise_url: Some(c.candidate().advertise_url.as_deref()),
        epoch: Some(c.fence().epoch()),
        lease_epoch: Some(view.lease.epoch),
        leader: c.leader_url(),
        leader_node: Some(view.lease.live.then_some(view.lease.holder.clone()).flatten()),
        lease_secs: Some(c.candidate().lease.as_secs_f64()),
        nodes: view.nodes.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_body_names_the_leader_or_null() {
        let b = NotLeader {
            leader: Some("http://10.0.0.2:8080".into()),
        }
        .body();
        assert_eq!(b["code"], "not_leader");
        assert_eq!(b["status"], 503);
        assert_eq!(b["leader"], "http://10.0.0.2:8080");
        let b = NotLeader { leader: None }.body();
        assert!(b["leader"].is_null());
        let res = NotLeader { leader: None }.into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    }
}
