//! Peer liveness from periodic pings, as a sans-IO state machine.
//!
//! The driver pings every peer every `ping_interval_ms` and reports each
//! outcome with [`Liveness::on_success`] / [`Liveness::on_failure`], and calls
//! [`Liveness::tick`] with the current time. A peer is down after a failed
//! ping, or when no ping succeeded for `down_after_ms`; it is up again at its
//! next successful ping. Peers start up: a fresh node does not refuse writes
//! before its first round of pings.

use std::collections::BTreeMap;

use qkv_proto::NodeId;

/// Default ping period.
pub const PING_INTERVAL_MS_DEFAULT: u64 = 250;
/// Default silence after which a peer counts as down.
pub const DOWN_AFTER_MS_DEFAULT: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Peer {
    last_ok_ms: u64,
    up: bool,
}

/// Liveness of this node's peers.
#[derive(Clone, Debug)]
pub struct Liveness {
    down_after_ms: u64,
    peers: BTreeMap<NodeId, Peer>,
}

impl Liveness {
    /// Every peer starts up as of `now_ms`.
    pub fn new(peers: impl IntoIterator<Item = NodeId>, down_after_ms: u64, now_ms: u64) -> Self {
        let peers = peers
            .into_iter()
            .map(|p| {
                (
                    p,
                    Peer {
                        last_ok_ms: now_ms,
                        up: true,
                    },
                )
            })
            .collect();
        Liveness {
            down_after_ms,
            peers,
        }
    }

    /// Up as far as this node knows (unknown ids are down).
    pub fn is_up(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.up)
    }

    /// A ping (or any request) to `peer` succeeded.
    pub fn on_success(&mut self, peer: NodeId, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_ok_ms = p.last_ok_ms.max(now_ms);
            p.up = true;
        }
    }

    /// A ping to `peer` failed or timed out.
    pub fn on_failure(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.up = false;
        }
    }

    /// Mark peers silent for too long as down; returns those that just went down.
    pub fn tick(&mut self, now_ms: u64) -> Vec<NodeId> {
        let mut went_down = vec![];
        for (id, p) in &mut self.peers {
            if p.up && now_ms.saturating_sub(p.last_ok_ms) >= self.down_after_ms {
                p.up = false;
                went_down.push(*id);
            }
        }
        went_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_go_down_on_failure_or_silence_and_come_back() {
        let mut l = Liveness::new([2, 3], 1000, 0);
        assert!(l.is_up(2) && l.is_up(3) && !l.is_up(9));
        l.on_failure(2);
        assert!(!l.is_up(2));
        l.on_success(3, 500);
        assert_eq!(l.tick(1200), vec![]);
        assert_eq!(l.tick(1500), vec![3]);
        l.on_success(2, 1600);
        l.on_success(3, 1600);
        assert!(l.is_up(2) && l.is_up(3));
    }
}
