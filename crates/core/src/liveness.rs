//! Failure detection: direct pings plus gossiped heartbeats, as a sans-IO state machine.
//!
//! The choice is a tuned timeout rather than phi-accrual: with pings every
//! `ping_interval_ms` (250) and a ping deadline of twice that, a killed peer is
//! judged down by the next failed ping, within about 0.75 s on loopback, and
//! by everyone within `down_after_ms` (1 s) once its heartbeat stops advancing.
//! Phi-accrual earns its keep on links with variable latency; on a LAN or
//! loopback a fixed deadline is simpler to reason about and to test.
//!
//! Each node bumps its own heartbeat `(incarnation, counter)` every ping round
//! and sends the freshest heartbeat it knows for every node with each ping and
//! pong, so all nodes converge on one view within a few rounds. A peer is up
//! when its heartbeat advanced within `down_after_ms` *and* this node's last
//! direct ping to it did not fail: a peer that others can reach but this node
//! cannot is down for this node's routing, as it must be.
//!
//! The incarnation is the node's boot count, persisted by the driver: after a
//! restart the counter starts again at 0, and the higher incarnation makes the
//! new heartbeats win over the old ones. A node that hears of itself with a
//! heartbeat newer than its own (a wiped disk lost the boot count, and the
//! wall-clock floor is behind the old one) refutes it, as SWIM does: it takes an
//! incarnation above the one gossiped, so its own heartbeats win again.

use std::collections::BTreeMap;

use qkv_proto::{Heartbeat, NodeId};

/// Default ping period.
pub const PING_INTERVAL_MS_DEFAULT: u64 = 250;
/// Default time without a fresh heartbeat after which a peer is down.
pub const DOWN_AFTER_MS_DEFAULT: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Peer {
    beat: (u64, u64),
    fresh_at_ms: u64,
    reachable: bool,
    up: bool,
    down_since_ms: Option<u64>,
}

/// What this node knows of its peers' liveness.
#[derive(Clone, Debug)]
pub struct Detector {
    me: NodeId,
    own: (u64, u64),
    down_after_ms: u64,
    peers: BTreeMap<NodeId, Peer>,
}

impl Detector {
    /// Every peer starts up as of `now_ms`: a fresh node does not refuse work before its first pings.
    pub fn new(
        me: NodeId,
        incarnation: u64,
        peers: impl IntoIterator<Item = NodeId>,
        down_after_ms: u64,
        now_ms: u64,
    ) -> Self {
        let peers = peers
            .into_iter()
            .filter(|&p| p != me)
            .map(|p| (p, Peer { beat: (0, 0), fresh_at_ms: now_ms, reachable: true, up: true, down_since_ms: None }))
            .collect();
        Detector { me, own: (incarnation, 0), down_after_ms, peers }
    }

    /// The peers changed (a new layout): new ones start up as of `now_ms`, as at
    /// start; those no longer members are forgotten.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = NodeId>, now_ms: u64) {
        let want: BTreeMap<NodeId, ()> = peers.into_iter().filter(|&p| p != self.me).map(|p| (p, ())).collect();
        self.peers.retain(|p, _| want.contains_key(p));
        for &p in want.keys() {
            self.peers.entry(p).or_insert(Peer {
                beat: (0, 0),
                fresh_at_ms: now_ms,
                reachable: true,
                up: true,
                down_since_ms: None,
            });
        }
    }

    /// Up as this node sees it (itself always; unknown ids never).
    pub fn is_up(&self, peer: NodeId) -> bool {
        peer == self.me || self.peers.get(&peer).is_some_and(|p| p.up)
    }

    /// How long `peer` has been down, if it is.
    pub fn down_for_ms(&self, peer: NodeId, now_ms: u64) -> Option<u64> {
        self.peers.get(&peer)?.down_since_ms.map(|t| now_ms.saturating_sub(t))
    }

    /// Start a ping round: bump this node's heartbeat.
    pub fn beat(&mut self) {
        self.own.1 += 1;
    }

    /// The gossip to send: the freshest heartbeat known for every node, this one included.
    pub fn gossip(&self) -> Vec<Heartbeat> {
        let own = Heartbeat { node: self.me, incarnation: self.own.0, counter: self.own.1 };
        let known = self.peers.iter().filter(|(_, p)| p.beat != (0, 0)).map(|(&node, p)| Heartbeat {
            node,
            incarnation: p.beat.0,
            counter: p.beat.1,
        });
        std::iter::once(own).chain(known).collect()
    }

    /// Merge gossip received from anyone.
    pub fn merge(&mut self, gossip: &[Heartbeat], now_ms: u64) {
        for h in gossip {
            if h.node == self.me {
                // Strictly newer: a pong echoing this node's own current heartbeat is not.
                if (h.incarnation, h.counter) > self.own {
                    self.own = (h.incarnation.saturating_add(1), 0);
                }
                continue;
            }
            if let Some(p) = self.peers.get_mut(&h.node)
                && (h.incarnation, h.counter) > p.beat
            {
                p.beat = (h.incarnation, h.counter);
                p.fresh_at_ms = p.fresh_at_ms.max(now_ms);
            }
        }
    }

    /// A direct ping to `peer` was answered.
    pub fn on_reachable(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.reachable = true;
        }
    }

    /// A direct ping to `peer` failed or went unanswered.
    pub fn on_unreachable(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.reachable = false;
        }
    }

    /// Re-judge every peer at `now_ms`; returns `(peer, up)` for each that changed.
    pub fn update(&mut self, now_ms: u64) -> Vec<(NodeId, bool)> {
        let mut changed = vec![];
        for (&id, p) in &mut self.peers {
            let up = p.reachable && now_ms.saturating_sub(p.fresh_at_ms) < self.down_after_ms;
            if up != p.up {
                p.up = up;
                p.down_since_ms = if up { None } else { Some(now_ms) };
                changed.push((id, up));
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(node: NodeId, incarnation: u64, counter: u64) -> Heartbeat {
        Heartbeat { node, incarnation, counter }
    }

    #[test]
    fn a_silent_peer_goes_down_and_a_fresh_heartbeat_brings_it_back() {
        let mut d = Detector::new(1, 1, [1, 2, 3], 1000, 0);
        assert!(d.is_up(1) && d.is_up(2) && d.is_up(3) && !d.is_up(9));
        d.merge(&[hb(2, 1, 5), hb(3, 1, 5)], 500);
        assert_eq!(d.update(1200), vec![]);
        d.merge(&[hb(3, 1, 6)], 1200);
        assert_eq!(d.update(1500), vec![(2, false)]);
        assert_eq!(d.down_for_ms(2, 1700), Some(200));
        // A stale heartbeat changes nothing; a fresh one does.
        d.merge(&[hb(2, 1, 5)], 1800);
        assert_eq!(d.update(1800), vec![]);
        d.merge(&[hb(2, 1, 6)], 1900);
        assert_eq!(d.update(1900), vec![(2, true)]);
    }

    #[test]
    fn a_restarted_peer_wins_with_its_new_incarnation() {
        let mut d = Detector::new(1, 1, [1, 2], 1000, 0);
        d.merge(&[hb(2, 1, 900)], 100);
        d.update(2000);
        assert!(!d.is_up(2));
        d.merge(&[hb(2, 2, 0)], 2100);
        d.update(2100);
        assert!(d.is_up(2));
    }

    #[test]
    fn an_unreachable_peer_is_down_here_even_if_others_still_hear_it() {
        let mut d = Detector::new(1, 1, [1, 2], 1000, 0);
        d.on_unreachable(2);
        d.merge(&[hb(2, 1, 1)], 10);
        assert_eq!(d.update(10), vec![(2, false)]);
        d.on_reachable(2);
        assert_eq!(d.update(20), vec![(2, true)]);
    }

    #[test]
    fn a_node_that_hears_a_newer_heartbeat_of_itself_refutes_it() {
        // Node 2 restarted on a wiped disk with a lower incarnation than its last run's.
        let mut peer = Detector::new(1, 1, [1, 2], 1000, 0);
        peer.merge(&[hb(2, 500, 40)], 100);
        let mut me = Detector::new(2, 300, [1, 2], 1000, 200);
        me.beat();
        assert!(peer.gossip().contains(&hb(2, 500, 40)));
        me.merge(&peer.gossip(), 300);
        me.beat();
        let own = me.gossip()[0];
        assert!((own.incarnation, own.counter) > (500, 40), "{own:?}");
        peer.merge(&me.gossip(), 2000);
        peer.update(2000);
        assert!(peer.is_up(2), "its heartbeats win again");
        // Its own older gossip changes nothing.
        let before = me.gossip()[0];
        me.merge(&[hb(2, 1, 1)], 2100);
        assert_eq!(me.gossip()[0], before);
    }

    #[test]
    fn gossip_carries_own_and_known_heartbeats() {
        let mut d = Detector::new(1, 7, [1, 2, 3], 1000, 0);
        d.beat();
        d.merge(&[hb(3, 2, 4)], 0);
        assert_eq!(d.gossip(), vec![hb(1, 7, 1), hb(3, 2, 4)]);
    }
}
