//! High availability: nodes on one PostgreSQL database compete for a lease; the holder
//! (the leader) serves, the others (standbys) answer `503 not_leader` with the leader's URL.
//!
//! - `lease` — the SQL of the lease row (each grant increments the epoch), heartbeats,
//!   shared secrets.
//! - `fence` — the epoch this node may write under; the PostgreSQL store checks it inside
//!   every write transaction (the hard guarantee), the lease task only sets it.
//! - `node` — the lease task: compete, renew every lease/4, step down locally before the
//!   lease can expire, give up on key loss, release on shutdown.
//! - `guard` — `/api/v4/ready`, the standby middleware and the health fields.
//! - `hooks` — what the app does for the lease task: may this node lead (its key), and
//!   reload every in-memory view before serving as leader.

pub mod fence;
pub mod guard;
pub mod hooks;
pub mod lease;
pub mod node;

use std::future::Future;
use std::pin::Pin;

pub use fence::Fence;
pub use lease::Candidate;
pub use node::{Cluster, ClusterView};

/// A boxed future (the hooks stay object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// This node's part: `single` without HA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The only server (no HA).
    Single,
    /// Holds the lease and serves.
    Leader,
    /// Waits for the lease; answers `503 not_leader`.
    Standby,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Leader => "leader",
            Self::Standby => "standby",
        }
    }
}

/// What the lease task asks of the app.
pub trait LeaderHooks: Send + Sync + std::fmt::Debug {
    /// Whether this node may take or keep the lease now (its key in force is allowed by
    /// every key-bound license; any node may lead when there is none).
    fn may_lead(&self) -> BoxFuture<'_, bool>;
    /// Cheap check, polled by a leader between renewals: whether its key still allows it
    /// to lead (a leader whose key is pulled gives the lease up within ~50 ms, not at its
    /// next renewal).
    fn still_may_lead(&self) -> bool {
        true
    }
    /// Re-reads every in-memory view from the store; runs after a grant, before serving.
    fn reload(&self) -> BoxFuture<'_, Result<(), String>>;
}
