//! Cost growth: `make bench-growth` (or `cargo bench --bench growth`).
//!
//! Three nodes, N = 3, values of 100 bytes. At `QKV_GROWTH_SMALL` (100,000) keys and
//! again at `QKV_GROWTH_KEYS` (3,000,000; the fast-path issue asks 10 M): the latency
//! of quorum reads of random stored keys and of quorum writes over them (blind), 4
//! clients in closed loop for `QKV_GROWTH_SECS` (10) s each, as p50 and p99; then the
//! bytes per key on disk (every node's data dir, over N copies) and in memory (every
//! node's resident set, over N copies); last, node 1's start: stopped (SIGKILL), then
//! started again, the time until it answers a status request and until an R = one
//! read through it of a stored key answers. Results also go to `target/bench/growth.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use hdrhistogram::Histogram;
use quorumkv::{Client, Level};
use serde_json::json;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const LOADERS: u64 = 32;
const CLIENTS: u64 = 4;

fn key(i: u64) -> String {
    format!("growth-{i:09}")
}

/// Write keys `from..to` at W = quorum, 32 at a time (retrying a missed deadline).
async fn preload(client: &Client, from: u64, to: u64) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(to - from);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "  preload {bar:40} {pos}/{len} keys, {per_sec}, eta {eta}",
    )?);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..LOADERS {
        let (client, bar) = (client.clone(), bar.clone());
        tasks.spawn(async move {
            let mut i = from + t;
            while i < to {
                let mut tries = 0;
                while let Err(e) = client.put(key(i), vec![b'v'; 100]).w(Level::Quorum).await {
                    tries += 1;
                    anyhow::ensure!(tries < 20, "preload write of key {i} failed {tries} times: {e}");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                bar.inc(1);
                i += LOADERS;
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    bar.finish_and_clear();
    Ok(())
}

/// p50 and p99 (ms) of quorum reads (or blind quorum writes) of random keys below
/// `keys`, 4 clients in closed loop for `secs`; and the operations that failed.
async fn latency(client: &Client, keys: u64, secs: u64, write: bool) -> anyhow::Result<(f64, f64, u64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CLIENTS {
        let (client, stop) = (client.clone(), stop.clone());
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let (mut failed, mut x) = (0u64, 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1));
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = key(x % keys);
                let t0 = Instant::now();
                let ok = if write {
                    client.put(k, vec![b'w'; 100]).w(Level::Quorum).await.is_ok()
                } else {
                    client.get(k).r(Level::Quorum).await.is_ok_and(|g| g.found)
                };
                if ok {
                    h.record(t0.elapsed().as_micros() as u64).expect("in range");
                } else {
                    failed += 1;
                }
            }
            (h, failed)
        });
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut failed) = (Histogram::<u64>::new(3)?, 0);
    while let Some(r) = tasks.join_next().await {
        let (h, f) = r?;
        all.add(h)?;
        failed += f;
    }
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok((ms(0.5), ms(0.99), all.len(), failed))
}

/// Bytes under `dir`.
fn du(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The resident set of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let small = env("QKV_GROWTH_SMALL", 100_000);
    let keys = env("QKV_GROWTH_KEYS", 3_000_000).max(small);
    let secs = env("QKV_GROWTH_SECS", 10).max(1);
    let mut c = Cluster::start(Opts::default()).await;
    let client = c.client();
    let mut out = vec![];
    let mut text = String::from("cost growth: 3 nodes, N = 3, 100-byte values, 4 clients at quorum\n\n");
    let mut loaded = 0;
    for size in [small, keys] {
        let t = Instant::now();
        preload(&client, loaded, size).await?;
        let load_s = t.elapsed().as_secs_f64();
        loaded = size;
        let get = latency(&client, size, secs, false).await?;
        let put = latency(&client, size, secs, true).await?;
        let disk: u64 = (1..=3).map(|id| du(&c.dir.path().join(format!("data/node{id}")))).sum();
        let ram: u64 = (1..=3).map(|id| rss(c.pid(id))).sum();
        let per_key = |b: u64| b as f64 / (3 * size) as f64;
        let line = format!(
            "{size:>10} keys (loaded in {load_s:.0} s): get p50 {:.3} ms p99 {:.3} ms ({} ops, {} failed); \
             put p50 {:.3} ms p99 {:.3} ms ({} ops, {} failed); {:.0} bytes per key-copy on disk, {:.0} in memory\n",
            get.0,
            get.1,
            get.2,
            get.3,
            put.0,
            put.1,
            put.2,
            put.3,
            per_key(disk),
            per_key(ram)
        );
        print!("{line}");
        text += &line;
        out.push(json!({"keys": size, "load_s": load_s, "get": {"p50_ms": get.0, "p99_ms": get.1, "ops": get.2,
            "failed": get.3}, "put": {"p50_ms": put.0, "p99_ms": put.1, "ops": put.2, "failed": put.3},
            "disk_bytes": disk, "rss_bytes": ram, "disk_per_key_copy": per_key(disk), "rss_per_key_copy": per_key(ram)}));
    }
    // Node 1's start with every key: SIGKILL, start again, time to serving and to a read.
    c.kill(1);
    let one = c.client_for(&[1]);
    let t = Instant::now();
    c.spawn(1);
    let deadline = Duration::from_secs(1800);
    let mut status_s = None;
    let read_s = loop {
        anyhow::ensure!(t.elapsed() < deadline, "node 1 did not serve within {deadline:?}");
        if status_s.is_none() && one.status_of(c.addrs[0]).await.is_ok() {
            status_s = Some(t.elapsed().as_secs_f64());
        }
        if status_s.is_some()
            && one.get(key(keys / 2)).r(Level::One).timeout(Duration::from_secs(1)).await.is_ok_and(|g| g.found)
        {
            break t.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status_s = status_s.unwrap_or(read_s);
    let line = format!(
        "\nnode 1 holding {keys} keys, killed and started again: answers a status after {status_s:.2} s, \
         an R = one read after {read_s:.2} s\n"
    );
    print!("{line}");
    text += &line;
    let (s, b) = (out.first().cloned().unwrap_or_default(), out.last().cloned().unwrap_or_default());
    let ratio = |op: &str| b[op]["p99_ms"].as_f64().unwrap_or(f64::NAN) / s[op]["p99_ms"].as_f64().unwrap_or(f64::NAN);
    let line = format!(
        "p99 at {keys} keys over p99 at {small}: get {:.2}x, put {:.2}x (the issue's bound: 1.5x)\n",
        ratio("get"),
        ratio("put")
    );
    print!("{line}");
    text += &line;
    let dir = std::path::Path::new("target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("growth.txt"), &text)?;
    std::fs::write(
        dir.join("growth.json"),
        serde_json::to_string_pretty(&json!({"sizes": out, "start": {"keys": keys, "status_s": status_s,
            "read_s": read_s}}))?,
    )?;
    println!("wrote target/bench/growth.{{txt,json}}");
    Ok(())
}
