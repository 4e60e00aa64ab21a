//! What a node tells about itself: the status reply and a key's ring placement.
//! (The issue "A core a newcomer can read" moves building these wire replies to
//! the edge; until then they are made here, from the subsystems' reports.)

use qkv_proto::{Error, HintStatus, KeyLimitStatus, MemberStatus, NodeId, RingReply, StatusReply};

use super::{Core, Store};

impl<S: Store> Core<S> {
    /// This node's view of the cluster, hints included.
    pub fn status(&self) -> StatusReply {
        let own = self.ring.ownership();
        let (count, bytes) = self.hints.totals();
        let limits = self.hints.limits();
        StatusReply {
            node: self.cfg.me,
            n: self.ring.n() as u32,
            vnodes: self.ring.vnodes(),
            members: self
                .cfg
                .members
                .iter()
                .map(|(id, addr)| MemberStatus {
                    node: *id,
                    addr: addr.clone(),
                    up: self.is_up(*id),
                    ownership: own.get(id).copied().unwrap_or(0.0),
                })
                .collect(),
            read_repairs: self.stats.read_repairs,
            hints: HintStatus {
                count,
                bytes,
                refused: self.hints.refused,
                handed_off: self.hints.handed_off,
                redirected: self.hints.redirected,
                expired: self.hints.expired,
                bytes_max: limits.total_bytes_max,
                owner_bytes_max: limits.owner_bytes_max,
                owners: self.hints.report(self.now_ms, self.wall_ms(), |o| self.is_up(o)),
            },
            aae: self.aae.status(self.now_ms),
            key_limits: KeyLimitStatus {
                siblings_max: self.cfg.limits.key_siblings_max as u64,
                bytes_max: self.cfg.limits.key_state_bytes_max as u64,
                writes_refused: self.stats.key_writes_refused,
                merges_refused: self.stats.key_merges_refused,
            },
        }
    }

    pub(super) fn ring_reply(&self, key: &[u8]) -> Result<RingReply, Error> {
        self.cfg.limits.check(key, None)?;
        let addr = |id: NodeId| self.cfg.members.iter().find(|m| m.0 == id).map(|m| m.1.clone()).unwrap_or_default();
        Ok(RingReply { replicas: self.ring.preference_list(key).iter().map(|&id| (id, addr(id))).collect() })
    }
}
