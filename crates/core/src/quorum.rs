//! Quorum decisions as pure functions over the replies so far (raft-rs's `vote_result` style).

use qkv_proto::NodeId;

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    /// Enough successes: answer now.
    Won,
    /// Too many failures: the level can no longer be reached.
    Lost,
    /// Still waiting.
    Pending,
}

/// Decide from `acked` successes and `failed` failures out of `total` asked, needing `needed`.
pub fn tally(needed: usize, acked: usize, failed: usize, total: usize) -> Tally {
    if acked >= needed {
        Tally::Won
    } else if total.saturating_sub(failed) < needed {
        Tally::Lost
    } else {
        Tally::Pending
    }
}

/// Decide a request that must reach `needed` of each of two replica sets, as a
/// read or write of a range does while it moves from its `old` home replicas to its
/// `new` ones: won when both have their quorum, lost as soon as either cannot. A node
/// in both sets counts for both. `acked` and `failed` are the nodes answered so far.
pub fn joint_tally(needed: usize, old: &[NodeId], new: &[NodeId], acked: &[NodeId], failed: &[NodeId]) -> Tally {
    let side = |set: &[NodeId]| {
        let a = set.iter().filter(|n| acked.contains(n)).count();
        let f = set.iter().filter(|n| failed.contains(n)).count();
        tally(needed, a, f, set.len())
    };
    match (side(old), side(new)) {
        (Tally::Lost, _) | (_, Tally::Lost) => Tally::Lost,
        (Tally::Won, Tally::Won) => Tally::Won,
        _ => Tally::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // (needed, acked, failed, total) -> result
        let cases = [
            ((2, 0, 0, 3), Tally::Pending),
            ((2, 1, 0, 3), Tally::Pending),
            ((2, 2, 0, 3), Tally::Won),
            ((2, 1, 1, 3), Tally::Pending),
            ((2, 1, 2, 3), Tally::Lost),
            ((2, 0, 2, 3), Tally::Lost),
            ((3, 2, 1, 3), Tally::Lost),
            ((1, 1, 2, 3), Tally::Won),
            ((3, 3, 0, 3), Tally::Won),
            ((1, 0, 0, 0), Tally::Lost),
        ];
        for ((n, a, f, t), want) in cases {
            assert_eq!(tally(n, a, f, t), want, "needed={n} acked={a} failed={f} total={t}");
        }
    }
}
