//! What a node reports of itself, as plain data of the core's own types: the
//! driver turns it into its wire replies (`qkv status`, `qkv stats`, metrics).

use qkv_proto::NodeId;

use super::{Core, Stats, Store};
use crate::antientropy;
use crate::hints::{HintLimits, OwnerReport};
use crate::replica::Limits;

/// A node's view of itself and its peers.
#[derive(Clone, Debug)]
pub struct Report {
    /// This node.
    pub node: NodeId,
    /// The replication factor.
    pub n: usize,
    /// Virtual nodes per member.
    pub vnodes: u32,
    /// Every member, this node included.
    pub members: Vec<MemberReport>,
    /// The core's counters.
    pub stats: Stats,
    /// The hints this node holds.
    pub hints: HintsReport,
    /// Anti-entropy and tombstone GC.
    pub aae: antientropy::Report,
    /// The per-key limits.
    pub key_limits: Limits,
}

/// A member as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberReport {
    /// Its id.
    pub node: NodeId,
    /// Its address.
    pub addr: String,
    /// Whether this node sees it up.
    pub up: bool,
    /// Its share of the ring.
    pub ownership: f64,
}

/// The hints this node holds.
#[derive(Clone, Debug)]
pub struct HintsReport {
    /// Hints held.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Refused at a limit.
    pub refused: u64,
    /// Handed off to their owners.
    pub handed_off: u64,
    /// Handed to another home replica (the owner stayed down).
    pub redirected: u64,
    /// Dropped, older than the tombstone grace.
    pub expired: u64,
    /// The limits.
    pub limits: HintLimits,
    /// Per owner.
    pub owners: Vec<OwnerReport>,
}

impl<S: Store> Core<S> {
    /// What this node reports of itself at `now_ms` (ages are measured to it).
    pub fn report(&self, now_ms: u64) -> Report {
        let now = now_ms.max(self.now_ms);
        let wall = now + self.wall_offset_ms;
        let own = self.ring.ownership();
        let (count, bytes) = self.hints.totals();
        Report {
            node: self.cfg.me,
            n: self.ring.n(),
            vnodes: self.ring.vnodes(),
            // The members of the layouts in effect (the config's are only the first start's).
            members: self
                .members
                .cluster
                .members()
                .into_iter()
                .map(|id| MemberReport {
                    node: id,
                    addr: self.members.cluster.addr(id).unwrap_or_default().to_string(),
                    up: self.is_up(id),
                    ownership: own.get(&id).copied().unwrap_or(0.0),
                })
                .collect(),
            stats: self.stats,
            hints: HintsReport {
                count,
                bytes,
                refused: self.hints.refused,
                handed_off: self.hints.handed_off,
                redirected: self.hints.redirected,
                expired: self.hints.expired,
                limits: self.hints.limits(),
                owners: self.hints.report(now, wall, |o| self.is_up(o)),
            },
            aae: self.aae.report(now),
            key_limits: self.cfg.limits,
        }
    }

    /// The home replicas of `key`, in preference order, with their addresses.
    pub fn placement(&self, key: &[u8]) -> Result<Vec<(NodeId, String)>, qkv_proto::Error> {
        self.cfg.limits.check(key, None)?;
        let addr = |id: NodeId| self.members.cluster.addr(id).unwrap_or_default().to_string();
        Ok(self.ring.preference_list(key).iter().map(|&id| (id, addr(id))).collect())
    }
}
