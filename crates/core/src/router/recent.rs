//! Recent write ids: how a coordinator answers a retry of a write it took, even
//! after the write was overwritten.

use std::collections::{HashMap, VecDeque};

use qkv_proto::Dot;

/// Write ids this node minted a dot for, with a hash of the key and the dot; at most
/// [`RECENT_WRITES_MAX`], none older than [`RECENT_WRITES_MS`] (past any retry's
/// deadline). Kept in memory only: a retry that reaches a coordinator which restarted
/// since, after its write was overwritten, is written again (as a sibling: nothing is lost).
#[derive(Default)]
pub(super) struct RecentWrites {
    by_id: HashMap<u64, (u64, Dot)>,
    order: VecDeque<(u64, u64)>,
}

/// Most write ids remembered.
pub const RECENT_WRITES_MAX: usize = 65_536;
/// How long a write id is remembered, ms.
pub const RECENT_WRITES_MS: u64 = 10 * 60 * 1000;

impl RecentWrites {
    /// The write's key and value: a write id names one write of one value to one key.
    fn key_hash(key: &[u8], value: Option<&[u8]>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        value.hash(&mut h);
        h.finish()
    }

    pub(super) fn insert(&mut self, now_ms: u64, id: u64, key: &[u8], value: Option<&[u8]>, dot: Dot) {
        while self.order.len() >= RECENT_WRITES_MAX
            || self.order.front().is_some_and(|&(at, _)| at + RECENT_WRITES_MS < now_ms)
        {
            let Some((_, old)) = self.order.pop_front() else { break };
            self.by_id.remove(&old);
        }
        if self.by_id.insert(id, (Self::key_hash(key, value), dot)).is_none() {
            self.order.push_back((now_ms, id));
        }
    }

    pub(super) fn get(&self, id: u64, key: &[u8], value: Option<&[u8]>) -> Option<Dot> {
        self.by_id.get(&id).filter(|(k, _)| *k == Self::key_hash(key, value)).map(|(_, d)| *d)
    }
}
