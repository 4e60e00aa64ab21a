//! The URL shortener's replication-lag scenario, measured: `make bench-shortener` (or
//! `cargo bench --bench shortener` after a release build of the binaries).
//!
//! A fresh 3-node cluster (N = 3) whose node 3 is late: it holds replica writes from
//! its peers a uniform 0 to 2 x `QKV_BENCH_APPLY_DELAY_MS` (5) ms before applying them
//! (`test_apply_delay_ms`; this kernel has no netem). One `qkv-shortener` per node,
//! pinned to it (`--node`), at R = one, and another three at R = quorum. For each of
//! `QKV_BENCH_LINKS` (1000) links per scenario, a creator posts the link to a random
//! instance and, the moment the 201 arrives, a click goes to a different random
//! instance:
//!
//! - (a) a friend (no cookie), R = one;
//! - (b) the creator (with their session cookie), R = one;
//! - (c) a friend, R = quorum.
//!
//! It reports each scenario's 404 rate with a 95 % interval (Wilson), the median
//! create and redirect latencies (each request on a kept-alive HTTP/1.1 connection,
//! over loopback), and writes the table to `target/bench/shortener.txt`. Scenarios
//! take turns link by link, so drift in the machine's load touches all three alike.
//! `QKV_BENCH_SEED` fixes the draws of instances.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/web/mod.rs"]
mod web;

use std::fmt::Write as _;
use std::time::Instant;

use common::{Cluster, Opts};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use web::{Conn, Instance, Jar, form_value};

const COOKIE: &str = "qkv_session";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    /// (a) a friend, without a session, at R = one.
    FriendOne,
    /// (b) the creator, with the session cookie, at R = one.
    CreatorOne,
    /// (c) a friend, without a session, at R = quorum.
    FriendQuorum,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::FriendOne, Scenario::CreatorOne, Scenario::FriendQuorum];

    fn name(self) -> &'static str {
        match self {
            Scenario::FriendOne => "(a) friend, R = one",
            Scenario::CreatorOne => "(b) creator + session, R = one",
            Scenario::FriendQuorum => "(c) friend, R = quorum",
        }
    }
}

// ---------------------------------------------------------------------------------------
// PBS PREDICTED: the column is filled by `pbs_predicted`, a placeholder for now. Plug the
// prediction in there (probabilistically bounded staleness of the click given N, R, W,
// the late replica's delay and the gap between the create's answer and the click; the
// cluster is still up, so its nodes' live round trips can be asked for); the bench
// prints `-` while it returns None.
// ---------------------------------------------------------------------------------------

/// What the bench knows of a scenario, for a prediction.
#[allow(dead_code)]
struct PbsInput {
    /// Replicas per key.
    n: u32,
    /// Replicas a click reads (R; strict).
    r: u32,
    /// Replicas a create waits for (W = quorum; strict).
    w: u32,
    /// Whether the click is in the creator's session (read-your-writes: predicted 0).
    session: bool,
    /// Nodes applying late, and how late: node 3 applies a peer's write after a uniform
    /// 0 to 2 x this many ms; the others as fast as loopback allows.
    late_nodes: u32,
    apply_delay_ms: u64,
    /// Median time from the create's answer reaching the bench to the click's request
    /// leaving it, ms (the click also crosses an HTTP hop on each side: see the latencies).
    click_gap_ms: f64,
    /// Median create latency (HTTP included), ms.
    create_p50_ms: f64,
    /// Median redirect latency of this scenario (HTTP included), ms.
    redirect_p50_ms: f64,
    /// Every redirect's latency, µs.
    redirect_us: Vec<u32>,
}

/// The probability that the click answers 404, predicted by `qkv_core::pbs` (what `qkv
/// pbs` prints) from the cluster's live round trips and the clicks' own: a click is a
/// read through another node than the create's, `click_gap_ms` after its answer, and
/// its way there and the answer's way back are one click (the redirect's round trip).
/// A session click is 0 by construction (read-your-writes).
async fn pbs_predicted(c: &Cluster, input: &PbsInput) -> Option<f64> {
    if input.session {
        return Some(0.0);
    }
    let (mut samples, n) = c.client().latency_samples().await.ok()?;
    samples.client_us = input.redirect_us.clone();
    let p = quorumkv::pbs::predict_elsewhere(&samples, n, input.r as usize, input.w as usize, 200_000, 1).ok()?;
    Some(1.0 - p.p_at(input.click_gap_ms))
}

// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    clicks: u64,
    not_found: u64,
    errors: u64,
    /// Clicks and 404s by the node the click's instance is pinned to.
    by_node: [(u64, u64); 3],
    redirect_us: Vec<u64>,
    gap_us: Vec<u64>,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median_ms(v: &mut [u64]) -> f64 {
    pct_ms(v, 0.5)
}

fn pct_ms(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1] as f64 / 1000.0
}

/// The Wilson score interval of `k` successes in `n` trials, at 95 %.
fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.96f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn main() {
    let links: u64 = env("QKV_BENCH_LINKS", 1000);
    let delay_ms: u64 = env("QKV_BENCH_APPLY_DELAY_MS", 5);
    let seed: u64 = env(
        "QKV_BENCH_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = rt.block_on(run(links, delay_ms, seed));
    print!("{report}");
    let _ = std::fs::create_dir_all("target/bench");
    match std::fs::write("target/bench/shortener.txt", &report) {
        Ok(()) => println!("(written to target/bench/shortener.txt)"),
        Err(e) => eprintln!("cannot write target/bench/shortener.txt: {e}"),
    }
}

async fn run(links: u64, delay_ms: u64, seed: u64) -> String {
    let c = Cluster::start_with(Opts::default(), |id| {
        if id == 3 { format!("test_apply_delay_ms = {delay_ms}") } else { String::new() }
    })
    .await;
    let bin = common::bin("qkv-shortener");
    let config = c.dir.path().join("client.toml").display().to_string();
    let start = |node: usize, level: &str| {
        let args = ["--config", &config, "--node", &c.addrs[node].to_string(), "--read-level", level];
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Instance::start(&bin, &args, &c.dir.path().join(format!("shortener-{level}-{}.log", node + 1)))
    };
    let one: Vec<Instance> = (0..3).map(|i| start(i, "one")).collect();
    let quorum: Vec<Instance> = (0..3).map(|i| start(i, "quorum")).collect();
    // A connection per instance for the creator, and one for the clicks.
    let conns =
        |is: &[Instance]| -> Vec<(Conn, Conn)> { is.iter().map(|i| (Conn::new(i.addr), Conn::new(i.addr))).collect() };
    let (mut one_c, mut quorum_c) = (conns(&one), conns(&quorum));
    let mut jar = Jar::default();

    // Warm up: every instance's QUIC connections and HTTP connections open.
    for conns in [&mut one_c, &mut quorum_c] {
        for (creator, clicks) in conns.iter_mut() {
            for _ in 0..5 {
                let r = creator.send("POST", "/", &[], b"url=https%3A%2F%2Fexample.com%2Fwarm").await;
                assert_eq!(r.status, 201, "warm-up create: {r:?}");
                let code = r.header("location").unwrap().rsplit('/').next().unwrap().to_string();
                let _ = clicks.get(&format!("/{code}"), &[]).await;
            }
        }
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let mut tallies: Vec<Tally> = Scenario::ALL.iter().map(|_| Tally::default()).collect();
    let (mut create_us, mut create_errors) = (vec![], 0u64);
    let started = Instant::now();
    for n in 0..links {
        for (s, scenario) in Scenario::ALL.into_iter().enumerate() {
            let conns = if scenario == Scenario::FriendQuorum { &mut quorum_c } else { &mut one_c };
            let from = rng.random_range(0..3usize);
            let to = (from + 1 + rng.random_range(0..2usize)) % 3;
            let url = format!("https://example.com/{n}/{s}");
            let body = format!("url={}", form_value(&url));
            let cookie = jar.header(COOKIE);
            let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
            if let Some(c) = &cookie {
                headers.push(("Cookie", c));
            }
            let t0 = Instant::now();
            let made = conns[from].0.send("POST", "/", &headers, body.as_bytes()).await;
            let created = Instant::now();
            create_us.push((created - t0).as_micros() as u64);
            if made.status != 201 {
                create_errors += 1;
                eprintln!("create failed: {} {}", made.status, made.body.trim());
                continue;
            }
            jar.update(&made, COOKIE);
            let code = made.header("location").unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
            // The click, at once.
            let cookie = (scenario == Scenario::CreatorOne).then(|| jar.header(COOKIE)).flatten();
            let headers: Vec<(&str, &str)> = cookie.as_deref().map(|c| ("Cookie", c)).into_iter().collect();
            let t1 = Instant::now();
            let got = conns[to].1.get(&format!("/{code}"), &headers).await;
            let t = &mut tallies[s];
            t.gap_us.push((t1 - created).as_micros() as u64);
            t.redirect_us.push(t1.elapsed().as_micros() as u64);
            t.clicks += 1;
            t.by_node[to].0 += 1;
            match got.status {
                302 if got.header("location") == Some(url.as_str()) => {}
                404 => {
                    t.not_found += 1;
                    t.by_node[to].1 += 1;
                }
                _ => {
                    t.errors += 1;
                    eprintln!("{}: click answered {} {}", scenario.name(), got.status, got.body.trim());
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let create_p50 = median_ms(&mut create_us);
    let create_p99 = pct_ms(&mut create_us, 0.99);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "URL shortener: create, then an immediate click on another instance ({links} links per scenario, {:.1} s)",
        secs
    );
    let _ = writeln!(
        out,
        "3 nodes, N = 3; node 3 applies peers' writes after uniform 0-{} ms; creates W = quorum strict; seed {seed}",
        2 * delay_ms
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<32}{:>7}{:>6}{:>10}{:>18}{:>8}{:>15}{:>13}{:>15}",
        "scenario",
        "clicks",
        "404s",
        "404 rate",
        "95% interval",
        "errors",
        "redirect p50",
        "click gap",
        "PBS predicted"
    );
    for (scenario, t) in Scenario::ALL.into_iter().zip(tallies.iter_mut()) {
        let rate = if t.clicks == 0 { f64::NAN } else { t.not_found as f64 / t.clicks as f64 };
        let (lo, hi) = wilson(t.not_found, t.clicks);
        let input = PbsInput {
            n: 3,
            r: if scenario == Scenario::FriendQuorum { 2 } else { 1 },
            w: 2,
            session: scenario == Scenario::CreatorOne,
            late_nodes: 1,
            apply_delay_ms: delay_ms,
            click_gap_ms: median_ms(&mut t.gap_us),
            create_p50_ms: create_p50,
            redirect_p50_ms: median_ms(&mut t.redirect_us),
            redirect_us: t.redirect_us.iter().map(|&us| us.min(u64::from(u32::MAX)) as u32).collect(),
        };
        let predicted = pbs_predicted(&c, &input).await;
        let _ = writeln!(
            out,
            "{:<32}{:>7}{:>6}{:>9.1}%{:>18}{:>8}{:>12.2} ms{:>10.3} ms{:>15}",
            scenario.name(),
            t.clicks,
            t.not_found,
            100.0 * rate,
            format!("[{:.1}, {:.1}] %", 100.0 * lo, 100.0 * hi),
            t.errors,
            median_ms(&mut t.redirect_us),
            median_ms(&mut t.gap_us),
            predicted.map_or("-".to_string(), |p| format!("{:.1}%", 100.0 * p)),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "create (POST: a quorum read for a free code, then the W = quorum strict write): p50 {create_p50:.2} ms, p99 {create_p99:.2} ms, {} failed",
        create_errors
    );
    let _ = writeln!(out, "404s by the node the click's instance reads from (clicks / 404s):");
    for (scenario, t) in Scenario::ALL.into_iter().zip(tallies.iter()) {
        let nodes: Vec<String> = t
            .by_node
            .iter()
            .enumerate()
            .map(|(i, (clicks, nf))| format!("node {}{}: {clicks} / {nf}", i + 1, if i == 2 { " (late)" } else { "" }))
            .collect();
        let _ = writeln!(out, "  {:<32}{}", scenario.name(), nodes.join(", "));
    }
    let _ = writeln!(out, "(click gap: from the create's answer to the click's request, at the bench; median)");
    drop((one, quorum));
    out
}
