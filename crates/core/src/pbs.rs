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
//! **This store's paths**, which the model follows:
//! - the write's coordinator is a home replica (clients route writes to the first home
//!   replica up); its own copy is applied at 0 and acks at 0;
//! - a read's coordinator is any home replica (clients spread reads over them); it
//!   asks its own copy (at 0) and R - 1 others, picked at random;
//! - the client is as far from the nodes as they are from each other: the ack reaches
//!   it half a ping after `T`, and its read reaches the read's coordinator half a
//!   ping after it is issued (so `t` counts from the client's receipt of the ack);
//! - for each ordered pair of nodes (a, b) the samples are a's round trips to b:
//!   replica writes, replica reads, and pings. Pings are answered at once, so the way
//!   back (`A`, `S`) is half a ping, and the way there (`W`, `R`) is the rest of the
//!   round trip: a replica that applies late (a slow disk, a queue, a delayed apply)
//!   counts on the way there, before its apply, where it makes reads stale.
//!
//! Sans-IO: the samples come in, a seeded generator makes the draws, and the same
//! samples and seed give the same prediction.

use std::collections::BTreeMap;

use qkv_proto::{NodeId, PeerLatency};

/// Trials unless told otherwise.
pub const TRIALS_DEFAULT: usize = 100_000;
/// Most trials a prediction runs.
pub const TRIALS_MAX: usize = 10_000_000;
/// The t values (ms) predictions are usually shown at.
pub const T_MS: [f64; 6] = [0.0, 1.0, 2.0, 5.0, 10.0, 50.0];

/// One ordered pair's round trips, in µs: `from` asking `to`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairSamples {
    /// Replica writes (to the reply).
    pub write_us: Vec<u32>,
    /// Replica reads.
    pub read_us: Vec<u32>,
    /// Pings.
    pub ping_us: Vec<u32>,
}

/// Round trips between the nodes of a cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// (from, to) → round trips.
    pub pairs: BTreeMap<(NodeId, NodeId), PairSamples>,
    /// Every node that may be a replica.
    pub nodes: Vec<NodeId>,
}

impl Samples {
    /// The samples of a cluster, from each node's round trips to its peers (as the
    /// nodes report them in `StatsReply::latency`).
    pub fn from_nodes(nodes: &[(NodeId, Vec<PeerLatency>)]) -> Samples {
        let mut s = Samples::default();
        for (from, peers) in nodes {
            if !s.nodes.contains(from) {
                s.nodes.push(*from);
            }
            for p in peers {
                let pair = PairSamples {
                    write_us: p.write_us.clone(),
                    read_us: p.read_us.clone(),
                    ping_us: p.ping_us.clone(),
                };
                s.add(*from, p.peer, pair);
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
    let mut pooled = [samples.pooled(|p| &p.write_us), samples.pooled(|p| &p.read_us), samples.pooled(|p| &p.ping_us)];
    if n > 1 && pooled.iter().any(Vec::is_empty) {
        return Err(
            "no latency samples yet (replica writes, replica reads and pings between nodes): write and read some keys \
             first"
                .into(),
        );
    }
    if n == 1 {
        // (No peers: the client's legs do not matter either.)
        pooled[2] = vec![0];
    }
    // A pair's own samples when it has them, else every pair's.
    let of = |from: NodeId, to: NodeId, kind: usize| -> &[u32] {
        let own = samples.pairs.get(&(from, to)).map(|p| match kind {
            0 => &p.write_us,
            1 => &p.read_us,
            _ => &p.ping_us,
        });
        match own {
            Some(v) if !v.is_empty() => v,
            _ => &pooled[kind],
        }
    };
    let mut d = Draws(seed ^ 0x0005_eed0_f9b5);
    let mut nodes = samples.nodes.clone();
    if nodes.is_empty() {
        nodes.push(0);
    }
    let mut thresholds_ms = Vec::with_capacity(trials);
    let (mut apply_us, mut acks_us) = (vec![0.0; n], vec![0.0; n]);
    for _ in 0..trials {
        // N distinct replicas, at random: the first coordinates the write.
        for i in 0..n.min(nodes.len()) {
            let j = i + d.below(nodes.len() - i);
            nodes.swap(i, j);
        }
        let replicas = &nodes[..n.min(nodes.len())];
        let coordinator = replicas[0];
        for (i, &to) in replicas.iter().enumerate() {
            if i == 0 {
                (apply_us[i], acks_us[i]) = (0.0, 0.0);
                continue;
            }
            let back = d.pick(of(coordinator, to, 2)) / 2.0;
            let there = (d.pick(of(coordinator, to, 0)) - back).max(0.0);
            (apply_us[i], acks_us[i]) = (there, there + back);
        }
        let mut sorted = acks_us[..replicas.len()].to_vec();
        sorted.sort_by(f64::total_cmp);
        let acked = sorted[w.min(sorted.len()) - 1];
        // The read's coordinator, any replica; it asks itself and R - 1 others.
        let reader = d.below(replicas.len());
        let mut others: Vec<usize> = (0..replicas.len()).filter(|&i| i != reader).collect();
        let mut earliest = apply_us[reader];
        for k in 0..r - 1 {
            let pick = k + d.below(others.len() - k);
            others.swap(k, pick);
            let j = others[k];
            let (from, to) = (replicas[reader], replicas[j]);
            let back = d.pick(of(from, to, 2)) / 2.0;
            let there = (d.pick(of(from, to, 1)) - back).max(0.0);
            earliest = earliest.min(apply_us[j] - there);
        }
        // The ack's way to the client and the read's way from it.
        let client = d.pick(&pooled[2]);
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
                let u = (d.next() >> 11) as f64 / (1u64 << 53) as f64;
                (-mean_us * (1.0 - u).ln()).round() as u32
            })
            .collect()
    }

    #[test]
    fn strict_quorums_always_see_the_write() {
        let mut s = Samples::default();
        for (a, b) in [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)] {
            let p =
                PairSamples { write_us: exp(5000.0, 500, a * 10 + b), read_us: exp(300.0, 500, b), ping_us: vec![200] };
            s.add(a as NodeId, b as NodeId, p);
        }
        for (r, w) in [(2, 2), (1, 3), (3, 1)] {
            let p = predict(&s, 3, r, w, 20_000, 1).unwrap();
            assert_eq!(p.p_at(0.0), 1.0, "R = {r}, W = {w}");
            assert_eq!(p.t_for(0.999), 0.0);
        }
        let weak = predict(&s, 3, 1, 1, 20_000, 1).unwrap();
        assert!(weak.p_at(0.0) < 0.9 && weak.p_at(0.0) < weak.p_at(5.0) && weak.p_at(50.0) > 0.99);
        assert_eq!(weak, predict(&s, 3, 1, 1, 20_000, 1).unwrap(), "same samples and seed, same prediction");
    }

    /// Two replicas, R = W = 1, pings of 0: the write reaches the other replica after
    /// W ~ Exp(mean 1/λ) and a read of it after R ~ Exp(mean 1/μ). The read's
    /// coordinator is the writer with probability 1/2 (it sees its own write); else the
    /// read is its own copy, which had the write by time t with probability
    /// 1 - e^{-λt}: p(t) = 1/2 + 1/2 (1 - e^{-λt}).
    #[test]
    fn matches_the_closed_form_of_two_replicas() {
        let mean_w_ms = 2.0;
        let mut s = Samples::default();
        for (a, b) in [(1, 2), (2, 1)] {
            let p = PairSamples {
                write_us: exp(mean_w_ms * 1000.0, 200_000, a),
                read_us: exp(500.0, 1000, b),
                ping_us: vec![0],
            };
            s.add(a as NodeId, b as NodeId, p);
        }
        let p = predict(&s, 2, 1, 1, 400_000, 7).unwrap();
        for t in [0.0, 1.0, 2.0, 5.0, 10.0] {
            let want = 0.5 + 0.5 * (1.0 - (-t / mean_w_ms).exp());
            assert!((p.p_at(t) - want).abs() < 0.005, "t = {t}: predicted {} want {want}", p.p_at(t));
        }
        // With R = 2 the read also asks the writer's copy, applied at 0: always seen.
        assert_eq!(predict(&s, 2, 2, 1, 10_000, 7).unwrap().p_at(0.0), 1.0);
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
