//! The fence shared by the lease task and the PostgreSQL store: this node's id and the
//! epoch of the lease it holds (0 = not leader). The store checks it inside every write
//! transaction against `kf_lease`; the lease task is its only writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// This node's claim to write: `epoch() == 0` means not leader. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fence {
    epoch: Arc<AtomicU64>,
    node_id: Arc<str>,
}

impl Fence {
    /// A fence of node `node_id`, not leader.
    pub fn new(node_id: &str) -> Self {
        Self {
            epoch: Arc::new(AtomicU64::new(0)),
            node_id: Arc::from(node_id),
        }
    }

    /// The epoch this node holds the lease under, 0 when it is not leader.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// This node's id (`kf_lease.holder`).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Records the epoch just granted, or 0 when the lease is lost or released (the lease
    /// task does this; tests of the store set it by hand).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    /// The lease was granted under `epoch`.
    pub(crate) fn grant(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    /// Stops writing under `epoch` (if it is still the one held): answers whether it was.
    pub(crate) fn revoke(&self, epoch: u64) -> bool {
        self.epoch
            .compare_exchange(epoch, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Stops writing, whatever the epoch.
    pub(crate) fn clear(&self) {
        self.epoch.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_only_clears_the_epoch_it_names() {
        let f = Fence::new("a");
        assert_eq!(f.epoch(), 0);
        f.grant(7);
        assert!(!f.revoke(6), "a stale deadline must not clear a newer grant");
        assert_eq!(f.clone().epoch(), 7, "clones share the cell");
        assert!(f.revoke(7));
        assert_eq!(f.epoch(), 0);
        f.grant(8);
        f.clear();
        assert_eq!(f.epoch(), 0);
        assert_eq!(f.node_id(), "a");
    }
}
