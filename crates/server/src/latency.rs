//! Round trips to each peer, the input of staleness prediction ([`qkv_core::pbs`]):
//! the last [`SAMPLES_PER_KIND`] replica writes and replica reads that were answered,
//! per peer, in µs (digests count as reads), and how long the last [`HOLDS_KEPT`]
//! replica writes waited here before their apply. Failed requests are not samples (a write that failed
//! was not applied: the prediction is for writes that reach their replicas).

use std::collections::BTreeMap;
use std::sync::Mutex;

use qkv_proto::{NodeId, PeerLatency, Request};

/// Samples kept per peer and kind.
pub const SAMPLES_PER_KIND: usize = 512;
/// Replica writes' waits kept: more than round trips, as the prediction draws from
/// them (it takes only the median of a round trip) and a late replica's tail is thin.
pub const HOLDS_KEPT: usize = 4096;

/// The last `CAP` samples.
#[derive(Default)]
struct Ring<const CAP: usize> {
    v: Vec<u32>,
    next: usize,
}

impl<const CAP: usize> Ring<CAP> {
    fn push(&mut self, us: u32) {
        if self.v.len() < CAP {
            self.v.push(us);
        } else {
            self.v[self.next] = us;
        }
        self.next = (self.next + 1) % CAP;
    }
}

#[derive(Default)]
struct Peer {
    write: Ring<SAMPLES_PER_KIND>,
    read: Ring<SAMPLES_PER_KIND>,
}

/// The round trips of this node's peers (one entry per peer the node sends to: the
/// members, bounded by the cluster's size), and how long replica writes wait here
/// between their arrival and their apply.
#[derive(Default)]
pub struct RoundTrips(Mutex<BTreeMap<NodeId, Peer>>, Mutex<Ring<HOLDS_KEPT>>);

impl RoundTrips {
    /// `req` to `to` was answered after `us` µs.
    pub fn record(&self, to: NodeId, req: &Request, us: u64) {
        let write = match req {
            Request::ReplicaPut { .. } => true,
            // A digest is a read's round trip too (checked reads send them at R = one).
            Request::ReplicaGet { .. } | Request::ReplicaDigest { .. } => false,
            _ => return,
        };
        let us = us.min(u64::from(u32::MAX)) as u32;
        let mut peers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let peer = peers.entry(to).or_default();
        if write { peer.write.push(us) } else { peer.read.push(us) }
    }

    /// The core took a replica write `us` µs after it arrived (to apply it at once).
    pub fn waited_to_apply(&self, us: u64) {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).push(us.min(u64::from(u32::MAX)) as u32);
    }

    /// The latest waits of replica writes from arrival to apply, µs.
    pub fn apply_waits(&self) -> Vec<u32> {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).v.clone()
    }

    /// Forget peers that are no longer members.
    pub fn retain(&self, keep: impl Fn(NodeId) -> bool) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| keep(*id));
    }

    /// Every peer's samples.
    pub fn snapshot(&self) -> Vec<PeerLatency> {
        let peers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .map(|(&peer, p)| PeerLatency { peer, write_us: p.write.v.clone(), read_us: p.read.v.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_samples_of_each_kind_per_peer() {
        let rt = RoundTrips::default();
        for i in 0..(SAMPLES_PER_KIND as u64 + 10) {
            rt.record(2, &Request::ReplicaGet { key: b"k".to_vec() }, i);
        }
        rt.record(2, &Request::ReplicaPut { key: b"k".to_vec(), set: Default::default() }, 90);
        rt.record(3, &Request::Status, 5);
        let snap = rt.snapshot();
        assert_eq!(snap.len(), 1, "a status request is no sample");
        assert_eq!(snap[0].read_us.len(), SAMPLES_PER_KIND);
        assert!(snap[0].read_us.contains(&(SAMPLES_PER_KIND as u32 + 9)) && !snap[0].read_us.contains(&0));
        assert_eq!(snap[0].write_us, vec![90]);
        for i in 0..(HOLDS_KEPT as u64 + 7) {
            rt.waited_to_apply(i);
        }
        let holds = rt.apply_waits();
        assert_eq!(holds.len(), HOLDS_KEPT);
        assert!(holds.contains(&(HOLDS_KEPT as u32 + 6)) && !holds.contains(&6));
        rt.retain(|id| id != 2);
        assert!(rt.snapshot().is_empty());
    }
}
