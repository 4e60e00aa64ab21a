//! Join bench: `make bench-join` (or `cargo bench --bench join`).
//!
//! Three nodes, N = 3, hold `QKV_BENCH_JOIN_KEYS` (1,000,000) keys of 100-byte values.
//! 32 clients in closed loop write fresh keys at W = quorum for `QKV_BENCH_JOIN_BEFORE_S`
//! (10) seconds: the throughput before. A fourth node then joins (staged and committed
//! through the client API) while the same load runs, and the bench times the join from
//! the commit until every node holds the new layout with no transition running, and
//! reads the bytes and keys the joiner fetched from its transfer table. It prints the
//! time, the keys and bytes moved, the rate, the write throughput during the join as a
//! fraction of before, and each node's share of the key space after. Results also go
//! to `target/bench/join.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use qkv_core::membership::{ClusterInfo, Phase};
use quorumkv::{Client, ClusterAdmin, ClusterChange, Level};
use serde_json::json;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const CONCURRENCY: u64 = 32;

/// Write `keys` keys of 100 bytes at W = quorum, 32 at a time, with a progress bar
/// (shown on a terminal).
async fn preload(client: &Client, keys: u64) {
    let bar = indicatif::ProgressBar::new(keys);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  preload {bar:40} {pos}/{len} keys, {per_sec}, eta {eta}").unwrap(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CONCURRENCY {
        let (client, bar) = (client.clone(), bar.clone());
        tasks.spawn(async move {
            let mut i = t;
            while i < keys {
                // A node busy flushing or compacting may miss a deadline: retry, as a loader would.
                let mut tries = 0;
                while let Err(e) = client.put(format!("join-{i:08}"), vec![b'v'; 100]).w(Level::Quorum).await {
                    tries += 1;
                    assert!(tries < 20, "preload write of key {i} failed {tries} times: {e}");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                bar.inc(1);
                i += CONCURRENCY;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    bar.finish_and_clear();
}

/// A closed-loop load of quorum writes of fresh keys until `stop`; counts acknowledged writes.
fn load(
    client: &Client,
    stop: &Arc<AtomicBool>,
    acked: &Arc<AtomicU64>,
    tag: &'static str,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CONCURRENCY {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if client.put(format!("{tag}-{t}-{i}"), vec![b'w'; 100]).w(Level::Quorum).await.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
    }
    tasks
}

/// Acknowledged writes per second of the load over `secs`.
async fn rate(client: &Client, secs: f64, tag: &'static str) -> f64 {
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let mut tasks = load(client, &stop, &acked, tag);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = acked.load(Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    n as f64 / secs
}

/// A membership request, asked again (up to 10 times, a second apart) while the node
/// does not answer: under this load a node sometimes misses a deadline for a while.
async fn ask(c: &Client, node: std::net::SocketAddr, req: ClusterAdmin) -> anyhow::Result<Vec<u8>> {
    let mut tries = 0;
    loop {
        match c.cluster_admin(node, req.clone()).await {
            Ok(b) => return Ok(b),
            Err(e @ quorumkv::Error::Cluster(_)) => return Err(e.into()),
            Err(e) if tries < 10 => {
                tries += 1;
                println!("  ({req:?} to {node}: {e}; again)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn show(c: &Client, node: std::net::SocketAddr) -> Option<ClusterInfo> {
    ClusterInfo::decode(&c.cluster_admin(node, ClusterAdmin::Show).await.ok()?).ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut c = Cluster::start(Opts::default()).await;
    let result = run(&mut c).await;
    if result.is_err() {
        for i in 1..=c.addrs.len() {
            let log = c.log(i);
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- node {i}, last lines of its log:");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
    result
}

async fn run(c: &mut Cluster) -> anyhow::Result<()> {
    let keys: u64 = env("QKV_BENCH_JOIN_KEYS", 1_000_000);
    let before_s: f64 = env("QKV_BENCH_JOIN_BEFORE_S", 10.0);
    println!("join bench: 3 nodes, N = 3, {keys} keys of 100 bytes, then a fourth node joins under load");
    let client = c.admin();
    let t = Instant::now();
    preload(&client, keys).await;
    println!("  preloaded {keys} keys in {:.1} s", t.elapsed().as_secs_f64());
    let before = rate(&client, before_s, "before").await;
    println!("  write throughput before the join: {before:.0}/s (W = quorum, c = {CONCURRENCY})");

    let id = c.add_joiner("").await;
    let joiner = c.addrs[id - 1];
    let admin = c.addrs[0];
    let t = Instant::now();
    while show(&client, joiner).await.is_none_or(|i| i.cluster.epoch() < 1) {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "the joiner did not take the cluster's layout");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let mut tasks = load(&client, &stop, &acked, "during");
    let join = ClusterChange::Join { id: id as u32, addr: joiner.to_string() };
    ask(&client, admin, ClusterAdmin::Stage(join)).await?;
    let plan = ClusterInfo::decode(&ask(&client, admin, ClusterAdmin::Plan).await?).map_err(anyhow::Error::msg)?.plan;
    let start = Instant::now();
    let epoch = match ask(&client, admin, ClusterAdmin::Commit).await {
        Ok(b) => ClusterInfo::decode(&b).map_err(anyhow::Error::msg)?.cluster.epoch(),
        // The answer may be what was lost: the layout says whether the commit took.
        Err(e) => match show(&client, admin).await {
            Some(i) if i.cluster.epoch() >= 2 => i.cluster.epoch(),
            _ => return Err(e),
        },
    };
    // The joiner's transfers, summed, as last seen: (keys, bytes, ranges).
    let mut fetched = (0u64, 0u64, 0usize);
    loop {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(1800), "the join did not end in 30 min");
        if let Some(i) = show(&client, joiner).await
            && !i.transfers.is_empty()
        {
            let keys = i.transfers.iter().map(|(t, _)| t.keys).sum();
            let bytes = i.transfers.iter().map(|(t, _)| t.bytes).sum();
            fetched = (keys, bytes, i.transfers.len());
        }
        let mut done = true;
        for &a in &c.addrs {
            done &= show(&client, a).await.is_some_and(|i| i.cluster.epoch() == epoch && i.phase == Phase::Stable);
        }
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let join_s = start.elapsed().as_secs_f64();
    let during = acked.load(Ordering::Relaxed) as f64 / join_s;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}

    let shares: Vec<(u32, f64)> =
        plan.as_ref().map_or(vec![], |p| p.ownership.iter().map(|(n, s)| (*n, s.1)).collect());
    println!(
        "  join: {join_s:.1} s from commit to stable everywhere; node {id} fetched {} ranges, {} keys, {:.1} MB ({:.1} MB/s)",
        fetched.2,
        fetched.0,
        fetched.1 as f64 / 1e6,
        fetched.1 as f64 / 1e6 / join_s,
    );
    println!("  write throughput during the join: {during:.0}/s, {:.2} of before", during / before);
    let mean = shares.iter().map(|s| s.1).sum::<f64>() / shares.len().max(1) as f64;
    let widest = shares.iter().map(|s| (s.1 / mean - 1.0).abs()).fold(0.0, f64::max);
    let listed: Vec<String> = shares.iter().map(|(n, s)| format!("{n}: {s:.3}")).collect();
    println!(
        "  ownership after (share of the key space as a home replica, N = 3): {}; widest {:.1} % from the mean",
        listed.join(", "),
        widest * 100.0
    );
    let out = json!({
        "keys": keys, "join_s": join_s, "fetched_keys": fetched.0, "fetched_bytes": fetched.1,
        "fetched_ranges": fetched.2, "before_per_s": before, "during_per_s": during,
        "during_over_before": during / before, "ownership_after": shares,
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/join.json", serde_json::to_string_pretty(&out)?)?;
    Ok(())
}
