//! The peer's side of an exchange: answer `AaeRoots` and `AaeCompare` from this
//! node's trees and store. Both are pure functions of their inputs, but for the
//! pace, which a comparison's answer is charged to.

use std::collections::BTreeMap;

use qkv_proto::{AaeCompared, Error, KeyDigest, KeyState, NodeId, Response};

use super::{COMPARE_ENTRIES_MAX, COMPARE_LEAVES_MAX, THEIRS_BYTES_MAX, THEIRS_KEYS_MAX, leaf_digests, state_bytes};
use crate::merkle::{RangeId, Trees};
use crate::pace::Pace;
use crate::replica::Limits;
use crate::ring::Ring;
use crate::router::Store;

/// This node (`me`, on `ring`) and what it answers from.
pub struct Responder<'a, S> {
    pub me: NodeId,
    pub ring: &'a Ring,
    pub trees: &'a Trees,
    pub store: &'a S,
    pub limits: &'a Limits,
}

impl<S: Store> Responder<'_, S> {
    fn check_fingerprint(&self, fingerprint: u64) -> Result<(), Error> {
        if fingerprint != self.ring.fingerprint() {
            return Err(Error::BadRequest(format!(
                "node {} is on a different ring (members, vnodes or N differ): cannot compare trees",
                self.me
            )));
        }
        Ok(())
    }

    fn not_home(&self, range: RangeId) -> Error {
        Error::BadRequest(format!("node {} is not a home replica of range {range}", self.me))
    }

    /// Step 1: the leaves of every range whose root differs from the sender's.
    pub fn roots(&self, fingerprint: u64, ranges: &[(u32, u64)]) -> Result<Response, Error> {
        self.check_fingerprint(fingerprint)?;
        let mut out = vec![];
        for &(range, root) in ranges {
            match (self.trees.root(range), self.trees.leaves(range)) {
                (Some(mine), Some(leaves)) => {
                    if mine != root {
                        out.push((range, leaves.to_vec()));
                    }
                }
                _ => return Err(self.not_home(range)),
            }
        }
        Ok(Response::AaeLeaves(out))
    }

    /// Step 2: compare the sender's keys in `leaves` of `range` with this node's: its
    /// states of the keys that differ or the sender lacks, as many as `pace` allows
    /// now (charged to it), and the keys this node lacks.
    pub fn compare(
        &self,
        pace: &mut Pace,
        now: u64,
        fingerprint: u64,
        range: RangeId,
        leaves: &[u32],
        entries: Vec<KeyDigest>,
    ) -> Result<Response, Error> {
        self.check_fingerprint(fingerprint)?;
        let Some(all) = self.trees.leaves(range) else { return Err(self.not_home(range)) };
        if leaves.len() > COMPARE_LEAVES_MAX || entries.len() > COMPARE_ENTRIES_MAX {
            return Err(Error::BadRequest(format!(
                "a comparison holds at most {COMPARE_LEAVES_MAX} leaves and {COMPARE_ENTRIES_MAX} keys"
            )));
        }
        if let Some(l) = leaves.iter().find(|&&l| l as usize >= all.len()) {
            return Err(Error::BadRequest(format!("range {range} has no leaf {l}")));
        }
        for e in &entries {
            self.limits.check(&e.key, None)?;
        }
        let mut mine: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for &leaf in leaves {
            let left = COMPARE_ENTRIES_MAX.saturating_sub(mine.len());
            let keys = leaf_digests(self.trees, self.ring, self.store, range, leaf, left)?;
            mine.extend(keys.into_iter().map(|e| (e.key, e.digest)));
        }
        // What this node sends counts against its own pace too.
        pace.refill(now);
        let (keys_max, bytes_max) = pace.allowance(THEIRS_KEYS_MAX, THEIRS_BYTES_MAX as u64);
        let mut out = AaeCompared::default();
        let mut give = vec![];
        for e in entries {
            match mine.remove(&e.key) {
                None => out.missing.push(e.key),
                Some(d) if d != e.digest => give.push(e.key),
                Some(_) => {}
            }
        }
        give.extend(mine.into_keys());
        let mut bytes = 0u64;
        for key in give {
            if out.theirs.len() >= keys_max || (bytes >= bytes_max && !out.theirs.is_empty()) {
                out.more = true;
                break;
            }
            // Read again: only the states sent are ever held in memory.
            if let Some(set) = self.store.get(&key)? {
                bytes += state_bytes(&key, &set);
                out.theirs.push(KeyState { key, set });
            }
        }
        pace.charge(out.theirs.len() as u64, bytes);
        if out.more {
            // Held back for the pace: tell the asker when there is budget again, rather
            // than have it ask (and both sides scan) in a tight loop.
            out.wait_ms = pace.wait_ms();
        }
        Ok(Response::AaeCompared(out))
    }
}
