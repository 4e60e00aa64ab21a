//! Probabilistically bounded staleness: how likely a read issued `t` ms after a write
//! was acknowledged is to return it, predicted from measured latencies with the WARS
//! model of Bailis et al., "Probabilistically Bounded Staleness for Practical Partial
//! Quorums" (VLDB 2012), by Monte Carlo.
//!
//! **WARS.** A write reaches replica i after `W_i` and its ack comes back after `A_i`;
//! a read reaches replica j after `R_j` and its answer comes back after `S_j`. The write
//! is acknowledged when the W-th ack is in, at `T`. A read issued at `T + t` sees the
//! write iff some replica it reads had applied it on the read's arrival:
//! `W_j <= T + t + R_j`. So each trial has a threshold
//! `t* = max(0, min_j (W_j - R_j) - T)` over the replicas the read asks, and
//! `P(consistent at t) = P(t* <= t)`: one sorted list of thresholds answers every t.
//!
//! **This store's paths and what is measured**, which the model follows:
//! - the write's coordinator is the key's first home replica (clients send writes to
//!   the first home replica up): each node as often as the ring makes it a key's first
//!   home ([`Samples::orders`]; a ring's vnodes rarely split the keys evenly), and the
//!   key's other homes follow in walk order. Its own copy is applied at 0 and acks at 0;
//! - a read's coordinator is any home replica (clients spread reads over them); it
//!   asks its own copy (at 0), then the first R - 1 others in the key's walk order,
//!   which starts at the write's coordinator (so with every replica up an R >= 2 read
//!   always asks it). [`predict_elsewhere`]: the write's coordinator is any replica and
//!   the read goes through another;
//! - a hop from node a to node b takes half of a's median round trip for a replica read
//!   (or digest) to b; each node keeps its last round trips to each peer. (The median:
//!   a round trip's tail is mostly the sender's own queues and background reads.) A
//!   cluster whose reads were all local so far uses its replica writes' round trips
//!   less the waits;
//! - a write reaches replica j one hop after it is sent, then waits there until the
//!   core applies it (`W_j` = hop + wait): each node measures that wait for the
//!   replica writes it takes (its inbox, a slow core, the test-only apply delay); a
//!   node without such samples is taken to wait as the others do. A read through j
//!   waits in j's inbox too (in another lane, so it may pass a queued write): that
//!   wait is in the client's round trip below;
//! - its ack is back one hop after the apply (`A_j`);
//! - `t` counts from the client's receipt of the ack: the ack's way to the client and
//!   the read's way back to a node are one round trip of the client's own (what the
//!   caller measured, else a replica read's round trip).
//!
//! Sans-IO: the samples come in, a seeded generator makes the draws, and the same
//! samples and seed give the same prediction.

use std::collections::BTreeMap;

use qkv_proto::{NodeId, PeerLatency};

/// Trials unless told otherwise.
pub const TRIALS_DEFAULT: usize = 100_000;
/// Most trials a prediction runs.
pub const TRIALS_MAX: usize = 1_000_000;
/// The t values (ms) predictions are usually shown at.
pub const T_MS: [f64; 6] = [0.0, 1.0, 2.0, 5.0, 10.0, 50.0];

/// One ordered pair's round trips, in µs: `from` asking `to`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairSamples {
    /// Replica writes (to the reply).
    pub write_us: Vec<u32>,
    /// Replica reads.
    pub read_us: Vec<u32>,
}

/// Round trips between the nodes of a cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// (from, to) → round trips.
    pub pairs: BTreeMap<(NodeId, NodeId), PairSamples>,
    /// Every node that may be a replica.
    pub nodes: Vec<NodeId>,
    /// Per node, how long replica writes waited there from arrival to apply, µs.
    pub apply_wait_us: BTreeMap<NodeId, Vec<u32>>,
    /// The client's own round trips to a node (an R = one read), µs: the ack's way to
    /// it and its read's way back. Empty: a replica read's round trip stands for it.
    pub client_us: Vec<u32>,
    /// The ring's preference lists with the share of keys on each
    /// ([`crate::Ring::preference_shares`]): how often each node is a key's first home
    /// (its writes' coordinator) and who follows it. Empty, or not of N distinct nodes
    /// the samples know: every order of the nodes equally likely.
    pub orders: Vec<(Vec<NodeId>, f64)>,
}

/// What one node reports: its round trips to each peer, and its replica-write service times.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeReport {
    /// The node.
    pub node: NodeId,
    /// Its round trips to each peer.
    pub peers: Vec<PeerLatency>,
    /// How long replica writes waited there from arrival to apply, µs.
    pub apply_wait_us: Vec<u32>,
}

impl Samples {
    /// The samples of a cluster, from each node's round trips to its peers (as the
    /// nodes report them in `StatsReply::latency`).
    pub fn from_nodes(nodes: &[NodeReport]) -> Samples {
        let mut s = Samples::default();
        for r in nodes {
            if !s.nodes.contains(&r.node) {
                s.nodes.push(r.node);
            }
            for p in &r.peers {
                let pair = PairSamples { write_us: p.write_us.clone(), read_us: p.read_us.clone() };
                s.add(r.node, p.peer, pair);
            }
            if !r.apply_wait_us.is_empty() {
                s.apply_wait_us.insert(r.node, r.apply_wait_us.clone());
            }
        }
        s.nodes.sort_unstable();
        s
    }

    /// Round trips from `from` to each of its peers.
    pub fn add(&mut self, from: NodeId, to: NodeId, s: PairSamples) {
        for n in [from, to] {
            if !self.nodes.contains(&n) {
                self.nodes.push(n);
            }
        }
        self.pairs.insert((from, to), s);
    }

    /// Whether a prediction for `n` replicas places keys by the ring's shares
    /// ([`Samples::orders`]), rather than taking every order as equally likely.
    pub fn placed_by_ring(&self, n: usize) -> bool {
        !self.orders_of(n).is_empty()
    }

    /// The ring's preference lists (their first `n` nodes) with cumulative shares: only
    /// when each names `n` distinct nodes the samples know (reported, or measured by
    /// another), with shares that are numbers, none negative, and some keys; else none
    /// (every order is then equally likely).
    fn orders_of(&self, n: usize) -> Vec<(&[NodeId], f64)> {
        let nodes: std::collections::BTreeSet<NodeId> = self.nodes.iter().copied().collect();
        let usable = |(list, share): &(Vec<NodeId>, f64)| {
            let homes = list.get(..n).unwrap_or_default();
            homes.len() == n
                && share.is_finite()
                && *share >= 0.0
                && homes.iter().enumerate().all(|(i, a)| nodes.contains(a) && !homes[..i].contains(a))
        };
        let mut total = 0.0;
        let mut orders = vec![];
        if self.orders.iter().all(usable) {
            for (list, share) in self.orders.iter().filter(|(_, share)| *share > 0.0) {
                total += share;
                orders.push((&list[..n], total));
            }
        }
        if !(total.is_finite() && total > 0.0) {
            orders.clear();
        }
        orders
    }

    fn pooled(&self, kind: fn(&PairSamples) -> &Vec<u32>) -> Vec<u32> {
        self.pairs.values().flat_map(|p| kind(p).iter().copied()).collect()
    }
}

/// The thresholds of one (N, R, W): see the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Replicas, reads and writes.
    pub n: usize,
    /// Replies a read waits for.
    pub r: usize,
    /// Acks a write waits for.
    pub w: usize,
    /// Per trial, the least delay (ms) after the ack at which the read sees the write; sorted.
    thresholds_ms: Vec<f64>,
}

impl Prediction {
    /// The probability that a read issued `t_ms` after the write's ack returns it.
    pub fn p_at(&self, t_ms: f64) -> f64 {
        let seen = self.thresholds_ms.partition_point(|&x| x <= t_ms);
        seen as f64 / self.thresholds_ms.len().max(1) as f64
    }

    /// The least delay (ms) at which the probability reaches `p` (0 to 1).
    pub fn t_for(&self, p: f64) -> f64 {
        if self.thresholds_ms.is_empty() {
            return 0.0;
        }
        let need = ((p.clamp(0.0, 1.0) * self.thresholds_ms.len() as f64).ceil() as usize).max(1);
        self.thresholds_ms[need.min(self.thresholds_ms.len()) - 1]
    }

    /// Trials run.
    pub fn trials(&self) -> usize {
        self.thresholds_ms.len()
    }
}

/// The median of `v` (0 when empty).
fn median(v: &[u32]) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |&x| f64::from(x))
}

/// A small seeded generator (splitmix64): the draws of a prediction.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick(&mut self, from: &[u32]) -> f64 {
        f64::from(from[self.below(from.len())])
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Predict t-visibility for `n` replicas, reads at `r`, writes at `w`, from `samples`,
/// in `trials` trials drawn from `seed`.
pub fn predict(
    samples: &Samples,
    n: usize,
    r: usize,
    w: usize,
    trials: usize,
    seed: u64,
) -> Result<Prediction, String> {
    predict_paths(samples, n, r, w, trials, seed, false)
}

/// [`predict`] for a read coordinated by another replica than the write (the friend
/// who clicks a link through another node than its creator's).
pub fn predict_elsewhere(
    samples: &Samples,
    n: usize,
    r: usize,
    w: usize,
    trials: usize,
    seed: u64,
) -> Result<Prediction, String> {
    if n < 2 {
        return Err("a read elsewhere needs N >= 2".into());
    }
    predict_paths(samples, n, r, w, trials, seed, true)
}

fn predict_paths(
    samples: &Samples,
    n: usize,
    r: usize,
    w: usize,
    trials: usize,
    seed: u64,
    elsewhere: bool,
) -> Result<Prediction, String> {
    if n == 0 || r == 0 || w == 0 || r > n || w > n {
        return Err(format!("need 1 <= R <= N and 1 <= W <= N (N = {n}, R = {r}, W = {w})"));
    }
    if samples.nodes.len() < n && n > 1 {
        return Err(format!(
            "N = {n} needs latency samples of {n} nodes; there are {} (write and read some keys first)",
            samples.nodes.len()
        ));
    }
    let trials = trials.clamp(1, TRIALS_MAX);
    // Hops come from replica reads (and digests); a cluster that has sent none yet (all
    // its reads local) falls back on its replica writes' round trips, less the waits.
    let reads = samples.pooled(|p| &p.read_us);
    let writes = samples.pooled(|p| &p.write_us);
    if n > 1 && reads.is_empty() && writes.is_empty() {
        return Err(
            "no latency samples yet (replica writes and replica reads between nodes): write and read some keys first"
                .into(),
        );
    }
    let waits: Vec<u32> = samples.apply_wait_us.values().flatten().copied().collect();
    let hops_from_writes: Vec<u32> = if reads.is_empty() {
        let median_wait = median(&waits) as u32;
        writes.iter().map(|&rtt| rtt.saturating_sub(median_wait)).collect()
    } else {
        vec![]
    };
    let pooled_hops: &[u32] = if reads.is_empty() { &hops_from_writes } else { &reads };
    let client_us: &[u32] = match (&samples.client_us, n) {
        (c, _) if !c.is_empty() => c,
        (_, 1) => &[0],
        _ => pooled_hops,
    };
    // A hop from `from` to `to`: half the median round trip of the pair's replica reads
    // (else every pair's). The median, not a draw: a round trip's tail is the sender's
    // own queues and the background reads (a checked read's digests, the lag probes),
    // which run long, not the path; drawn, it made every replica look late.
    let pooled_hop = median(pooled_hops) / 2.0;
    let hops: BTreeMap<(NodeId, NodeId), f64> = samples
        .pairs
        .iter()
        .filter(|(_, p)| !p.read_us.is_empty())
        .map(|(&pair, p)| (pair, median(&p.read_us) / 2.0))
        .collect();
    let hop = |from: NodeId, to: NodeId| -> f64 { hops.get(&(from, to)).copied().unwrap_or(pooled_hop) };
    // A replica's wait before its apply: its own samples, else every node's, else none.
    let wait = |d: &mut Draws, at: NodeId| -> f64 {
        match samples.apply_wait_us.get(&at).filter(|v| !v.is_empty()) {
            Some(v) => d.pick(v),
            None if !waits.is_empty() => d.pick(&waits),
            None => 0.0,
        }
    };
    let mut d = Draws(seed ^ 0x0005_eed0_f9b5);
    let mut nodes = samples.nodes.clone();
    if nodes.is_empty() {
        nodes.push(0);
    }
    let orders = samples.orders_of(n);
    let mut thresholds_ms = Vec::with_capacity(trials);
    let (mut apply_us, mut acks_us, mut sorted) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for _ in 0..trials {
        // N distinct replicas in walk order: a preference list of the ring, by its share
        // of the keys, else a random order. The write's coordinator is the first
        // (clients send writes to the first home replica up), or, `elsewhere`, any (the
        // caller pins it).
        let replicas: &[NodeId] = match orders.last() {
            Some(&(_, total)) => {
                let at = d.unit() * total;
                orders[orders.partition_point(|&(_, upto)| upto <= at).min(orders.len() - 1)].0
            }
            None => {
                for i in 0..n.min(nodes.len()) {
                    let j = i + d.below(nodes.len() - i);
                    nodes.swap(i, j);
                }
                &nodes[..n.min(nodes.len())]
            }
        };
        let writer = if elsewhere { d.below(replicas.len()) } else { 0 };
        for (i, &to) in replicas.iter().enumerate() {
            if i == writer {
                (apply_us[i], acks_us[i]) = (0.0, 0.0);
                continue;
            }
            let there = hop(replicas[writer], to) + wait(&mut d, to);
            (apply_us[i], acks_us[i]) = (there, there + hop(to, replicas[writer]));
        }
        sorted[..replicas.len()].copy_from_slice(&acks_us[..replicas.len()]);
        sorted[..replicas.len()].sort_by(f64::total_cmp);
        let acked = sorted[w.min(replicas.len()) - 1];
        // The read's coordinator, any replica (another than the writer, `elsewhere`): it
        // asks itself, then the first R - 1 others in walk order.
        let reader = if elsewhere {
            (writer + 1 + d.below(replicas.len() - 1)) % replicas.len()
        } else {
            d.below(replicas.len())
        };
        let mut earliest = apply_us[reader];
        for j in (0..replicas.len()).filter(|&j| j != reader).take(r - 1) {
            earliest = earliest.min(apply_us[j] - hop(replicas[reader], replicas[j]));
        }
        // The ack's way to the client and the read's way from it.
        let client = d.pick(client_us);
        thresholds_ms.push(((earliest - acked - client) / 1000.0).max(0.0));
    }
    thresholds_ms.sort_by(f64::total_cmp);
    Ok(Prediction { n, r, w, thresholds_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exponential draws with mean `mean_us`, from a fixed generator.
    fn exp(mean_us: f64, count: usize, seed: u64) -> Vec<u32> {
        let mut d = Draws(seed);
        (0..count)
            .map(|_| {
                let u = d.unit();
                (-mean_us * (1.0 - u).ln()).round() as u32
            })
            .collect()
    }

    #[test]
    fn strict_quorums_always_see_the_write() {
        let mut s = Samples::default();
        for (a, b) in [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)] {
            s.add(a, b, PairSamples { write_us: exp(600.0, 500, u64::from(a * 10 + b)), read_us: exp(300.0, 500, 9) });
        }
        s.apply_wait_us.insert(3, exp(5000.0, 500, 3));
        for (r, w) in [(2, 2), (1, 3), (3, 1)] {
            let p = predict(&s, 3, r, w, 20_000, 1).unwrap();
            assert_eq!(p.p_at(0.0), 1.0, "R = {r}, W = {w}");
            assert_eq!(p.t_for(0.999), 0.0);
        }
        let weak = predict(&s, 3, 1, 1, 20_000, 1).unwrap();
        assert!(weak.p_at(0.0) < 0.9 && weak.p_at(0.0) < weak.p_at(5.0) && weak.p_at(50.0) > 0.99);
        assert_eq!(weak, predict(&s, 3, 1, 1, 20_000, 1).unwrap(), "same samples and seed, same prediction");
    }

    /// Two replicas, R = W = 1, hops and the client's legs of 0: the write is applied
    /// at the other replica after a wait ~ Exp(mean 1/λ). The read's coordinator is
    /// the writer with probability 1/2 (it sees its own write); else its own copy has
    /// the write by time t with probability 1 - e^{-λt}: p(t) = 1/2 + 1/2 (1 - e^{-λt}).
    #[test]
    fn matches_the_closed_form_of_two_replicas() {
        let mean_ms = 2.0;
        let mut s = Samples { client_us: vec![0], ..Default::default() };
        for (a, b) in [(1, 2), (2, 1)] {
            s.add(a, b, PairSamples { write_us: vec![1], read_us: vec![0] });
            s.apply_wait_us.insert(b, exp(mean_ms * 1000.0, 200_000, u64::from(b)));
        }
        let p = predict(&s, 2, 1, 1, 400_000, 7).unwrap();
        for t in [0.0, 1.0, 2.0, 5.0, 10.0] {
            let want = 0.5 + 0.5 * (1.0 - (-t / mean_ms).exp());
            assert!((p.p_at(t) - want).abs() < 0.005, "t = {t}: predicted {} want {want}", p.p_at(t));
        }
        // Read through the other replica: p(t) = 1 - e^{-λt}.
        let elsewhere = predict_elsewhere(&s, 2, 1, 1, 400_000, 7).unwrap();
        assert!((elsewhere.p_at(2.0) - (1.0 - (-1.0f64).exp())).abs() < 0.005);
        // With R = 2 the read also asks the writer's copy, applied at 0: always seen.
        assert_eq!(predict(&s, 2, 2, 1, 10_000, 7).unwrap().p_at(0.0), 1.0);
        // The client's own round trip counts before the read: 1 ms of it is t + 1.
        s.client_us = vec![1000];
        let later = predict(&s, 2, 1, 1, 400_000, 7).unwrap();
        assert!((later.p_at(1.0) - (0.5 + 0.5 * (1.0 - (-2.0 / mean_ms).exp()))).abs() < 0.005);
    }

    /// The ring's preference lists weigh who coordinates the write: two replicas, node
    /// 1 applies replica writes after a wait ~ Exp(mean 1/λ), node 2 at once. A key on
    /// [1, 2] (share s) is written through node 1, whose write node 2 has at once: always
    /// seen. A key on [2, 1] is written through node 2: a read through node 1 (half of
    /// them) sees it by t with probability 1 - e^{-λt}.
    #[test]
    fn the_rings_shares_pick_the_writer() {
        let mean_ms = 2.0;
        let mut s = Samples { client_us: vec![0], ..Default::default() };
        for (a, b) in [(1, 2), (2, 1)] {
            s.add(a, b, PairSamples { write_us: vec![1], read_us: vec![0] });
        }
        s.apply_wait_us.insert(1, exp(mean_ms * 1000.0, 200_000, 1));
        s.apply_wait_us.insert(2, vec![0]);
        for share in [0.0, 0.25, 1.0] {
            s.orders = vec![(vec![1, 2], share), (vec![2, 1], 1.0 - share)];
            let p = predict(&s, 2, 1, 1, 400_000, 5).unwrap();
            for t in [0.0, 2.0, 5.0] {
                let want = share + (1.0 - share) * (0.5 + 0.5 * (1.0 - (-t / mean_ms).exp()));
                assert!((p.p_at(t) - want).abs() < 0.005, "share {share}, t = {t}: {} want {want}", p.p_at(t));
            }
        }
        // A list of no keys changes nothing.
        s.orders = vec![(vec![1, 2], 0.25), (vec![2, 1], 0.0), (vec![2, 1], 0.75)];
        let p = predict(&s, 2, 1, 1, 400_000, 5).unwrap();
        assert!((p.p_at(0.0) - 0.625).abs() < 0.005, "{}", p.p_at(0.0));
        // Lists that are no ring of N nodes with samples (too short, a node twice, a
        // node that reported nothing, a share that is no number), or no keys at all:
        // every order is then equally likely.
        for bad in [
            vec![(vec![1], 1.0)],
            vec![(vec![1, 1], 1.0)],
            vec![(vec![1, 9], 1.0)],
            vec![(vec![1, 2], f64::NAN)],
            vec![(vec![1, 2], f64::MAX), (vec![2, 1], f64::MAX)],
            vec![(vec![1, 2], 0.0)],
            vec![(vec![1, 2], -1.0)],
            vec![(vec![1, 2], 0.5), (vec![2, 1], -0.25)],
        ] {
            s.orders = bad.clone();
            let p = predict(&s, 2, 1, 1, 400_000, 5).unwrap();
            assert!((p.p_at(0.0) - 0.75).abs() < 0.005, "{bad:?}: {}", p.p_at(0.0));
        }
    }

    /// N = 3, W = 2, R = 1, hops of 0, i.i.d. waits at the other two: the ack comes
    /// with the faster of them, so a read through the slower (1 in 3) misses the write.
    #[test]
    fn the_ack_waits_for_the_w_th_apply() {
        let mut s = Samples { client_us: vec![0], ..Default::default() };
        for (a, b) in [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)] {
            s.add(a, b, PairSamples { write_us: vec![1], read_us: vec![0] });
        }
        for node in 1..=3 {
            s.apply_wait_us.insert(node, exp(3000.0, 100_000, u64::from(node)));
        }
        let p = predict(&s, 3, 1, 2, 300_000, 3).unwrap();
        assert!((1.0 - p.p_at(0.0) - 1.0 / 3.0).abs() < 0.005, "{}", p.p_at(0.0));
        // R = 2 asks the write's coordinator too (first in walk order): always seen.
        assert_eq!(predict(&s, 3, 2, 1, 10_000, 3).unwrap().p_at(0.0), 1.0);
    }

    #[test]
    fn bad_levels_and_missing_samples_are_errors() {
        let s = Samples::default();
        assert!(predict(&s, 3, 0, 1, 10, 1).unwrap_err().contains("1 <= R <= N"));
        assert!(predict(&s, 3, 4, 1, 10, 1).is_err());
        assert!(predict(&s, 3, 1, 1, 10, 1).unwrap_err().contains("samples"));
        // One replica needs no samples: it always sees its own write.
        assert_eq!(predict(&s, 1, 1, 1, 10, 1).unwrap().p_at(0.0), 1.0);
    }
}
