//! Which replicas a request asks, as pure functions of the key's walk of the ring
//! and of who is up: the decisions `crates/core/testdata/*.txt` replays.
//!
//! A key's *walk* is every node in ring order from the key's token, each once:
//! the first N are its home replicas (its preference list), the rest stand-in
//! candidates in the order a sloppy request tries them.

use std::collections::{BTreeMap, VecDeque};

use qkv_proto::NodeId;

/// Replicas that can take a write now: up home replicas, plus (sloppy) as many
/// stand-ins as there are down home replicas and up nodes past the N to stand in.
pub fn write_alive(walk: &[NodeId], n: usize, strict: bool, up: impl Fn(NodeId) -> bool) -> usize {
    let n = n.min(walk.len());
    let home_up = walk[..n].iter().filter(|&&id| up(id)).count();
    if strict {
        return home_up;
    }
    let spare = walk[n..].iter().filter(|&&id| up(id)).count();
    home_up + spare.min(n - home_up)
}

/// Where a coordinator (`me`, a home replica) sends a write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteTargets {
    /// The nodes first written to, one per home slot, in the walk's order (a
    /// stand-in taking over later is in `owners`, not here).
    pub targets: Vec<NodeId>,
    /// Stand-ins among the targets, and the home replica each holds a hint for.
    pub owners: BTreeMap<NodeId, NodeId>,
    /// Up stand-in candidates not used yet, in order: a sloppy write takes the next
    /// when a target fails.
    pub spare: VecDeque<NodeId>,
}

/// The targets of a write: every home replica that is up (and the coordinator);
/// in a sloppy write, the next up stand-in for each home replica that is down
/// (the home replica itself when no stand-in is left); in a strict one, every
/// home replica, up or not.
pub fn write_targets(walk: &[NodeId], n: usize, me: NodeId, strict: bool, up: impl Fn(NodeId) -> bool) -> WriteTargets {
    let n = n.min(walk.len());
    let mut spare: VecDeque<NodeId> =
        if strict { VecDeque::new() } else { walk[n..].iter().copied().filter(|&id| up(id)).collect() };
    let mut targets = vec![];
    let mut owners = BTreeMap::new();
    for &h in &walk[..n] {
        if h == me || strict || up(h) {
            targets.push(h);
        } else if let Some(c) = spare.pop_front() {
            targets.push(c);
            owners.insert(c, h);
        } else {
            targets.push(h);
        }
    }
    WriteTargets { targets, owners, spare }
}

impl WriteTargets {
    /// Target `failed` of a sloppy write failed: the next spare node that is up takes
    /// over, for the same home replica. Returns (stand-in, the home replica it holds for).
    pub fn take_over(&mut self, failed: NodeId, up: impl Fn(NodeId) -> bool) -> Option<(NodeId, NodeId)> {
        let owner = self.owners.get(&failed).copied().unwrap_or(failed);
        while let Some(c) = self.spare.pop_front() {
            if c != failed && up(c) && !self.owners.contains_key(&c) {
                self.owners.insert(c, owner);
                return Some((c, owner));
            }
        }
        None
    }
}

/// The nodes a read asks, and how many of them are up: the home replicas (strict),
/// or the first N up nodes of the walk (sloppy: a stand-in answers from its hints).
pub fn read_targets(walk: &[NodeId], n: usize, strict: bool, up: impl Fn(NodeId) -> bool) -> (Vec<NodeId>, usize) {
    let n = n.min(walk.len());
    let targets: Vec<NodeId> =
        if strict { walk[..n].to_vec() } else { walk.iter().copied().filter(|&id| up(id)).take(n).collect() };
    let alive = targets.iter().filter(|&&id| up(id)).count();
    (targets, alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_take_over_keeps_the_owner_and_skips_used_and_down_nodes() {
        let up = |id: NodeId| id != 2 && id != 5;
        let mut w = write_targets(&[1, 2, 3, 4, 5, 6], 3, 1, false, up);
        assert_eq!(w.targets, vec![1, 4, 3]);
        assert_eq!(w.spare, VecDeque::from([6]));
        // Stand-in 4 fails: 6 takes over, still for home replica 2.
        assert_eq!(w.take_over(4, up), Some((6, 2)));
        assert_eq!(w.take_over(3, up), None, "no spare left");
    }
}
