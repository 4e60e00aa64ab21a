//! Invariants asserted where state leaves the core, and the bounds of its tables.
//! A failure is a bug in this node, never bad input (input is refused with an
//! error before it gets here): stop at the step that broke it.

use qkv_proto::DvvSet;

use super::{Core, LEASE_WAITERS_MAX, OPS_MAX, Store};

impl<S: Store> Core<S> {
    /// The tables' bounds (checked as the driver drains the outputs). Client and
    /// replica operations start only below [`OPS_MAX`]; each read that completes
    /// may leave up to N repairs behind it, and the node's own work adds a lag probe
    /// per tracked write and replica, and a ping, a handoff batch and an exchange
    /// per peer. A table past its bound is a leak: stop here, not when memory runs out.
    pub(super) fn check_bounds(&self) {
        let n = self.ring.n();
        // Per peer: a ping, a handoff batch, an exchange and a layout push; and a
        // layout fetch, a commit and the range fetches of a change.
        let peers = self.members.cluster.versions.iter().map(|l| l.members.len()).sum::<usize>();
        let ops_max =
            OPS_MAX * (n + 1) + crate::lag::TRACKED_MAX * n + 4 * peers + 2 + super::membership::FETCHES_IN_FLIGHT;
        assert!(self.ops.len() <= ops_max, "node {}: {} operations in flight", self.cfg.me, self.ops.len());
        assert!(
            self.rpcs.len() <= ops_max * peers.max(1),
            "node {}: {} requests in flight",
            self.cfg.me,
            self.rpcs.len()
        );
        assert!(self.lease_waiters.len() <= LEASE_WAITERS_MAX, "node {}: lease waiters past their bound", self.cfg.me);
    }

    /// Every state that leaves the node is a valid DVV set. Every intake checks
    /// what it takes (replica writes, hints, merges, replies, the store's decoder),
    /// so a failure here is this node's bug, not a peer's.
    pub(super) fn check_outgoing(&self, s: &DvvSet) {
        assert!(s.is_valid(), "node {} sends an invalid version vector set: {s:?}", self.cfg.me);
    }

    /// A dot this node mints is within its durable counter lease: a power loss could
    /// otherwise roll the lease back and the node mint it again for another value.
    pub(super) fn check_minted(&self, counter: u64) {
        assert!(
            counter <= self.lease_durable || self.cfg.bugs().lease_not_durable,
            "node {} mints counter {counter}, above its durable lease {}",
            self.cfg.me,
            self.lease_durable
        );
    }
}
