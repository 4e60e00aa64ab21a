//! Anti-entropy bench: `make bench-aae` (or `cargo bench --bench aae`).
//!
//! 1. **Convergence.** Two nodes, N = 2. Node 2 is stopped while `QKV_BENCH_AAE_KEYS`
//!    (100,000) keys of 100 bytes are written to node 1 alone (W = one, strict: no
//!    hints). Node 2 restarts and the bench times how long until both nodes report
//!    every range in sync (their trees' roots equal), with no client reading
//!    anything: once at the default pace (1,000 key states/s, 2 MiB/s per node) and
//!    once unpaced.
//! 2. **Steady-state CPU.** Three nodes holding the same keys, in sync and idle for
//!    `QKV_BENCH_AAE_IDLE_S` (20) seconds: CPU time of the node processes with
//!    anti-entropy on and off (exchanges every 2 s, the default).
//! 3. **Throughput cost.** Three nodes; 32 clients in closed loop, half quorum
//!    reads, half quorum writes over 10,000 keys, for 10 s while in sync. Then node 3
//!    is stopped while 100,000 *other* keys are written, restarted (20 s later, once
//!    nodes 1 and 2 have compacted them), and the same load
//!    runs for 10 s while anti-entropy copies those keys to it (the load's own keys
//!    stay in sync, so no read repair muddles the figure): at the default pace,
//!    unpaced, and with anti-entropy off (the cost of the restart alone).
//!
//! `QKV_BENCH_AAE_PARTS` picks parts (`converge,cpu,cost`). Exchanges run every 200 ms in parts 1 and 3 so the timing is not rounded up to
//! the 2 s default interval. Results go to stdout and `target/bench/aae.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use quorumkv::{Client, Level};
use serde_json::json;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Write `keys` keys through `client` at concurrency 32.
async fn load(client: &Client, keys: usize, w: Level, strict: bool) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut i = t;
            while i < keys {
                let mut put = client.put(format!("aae-{i:08}"), vec![b'v'; 100]).w(w);
                if strict {
                    put = put.strict();
                }
                put.await.expect("preload write");
                i += 32;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// True when every given node reports every range in sync.
async fn in_sync(c: &Cluster, client: &Client, nodes: &[usize]) -> bool {
    for &n in nodes {
        match client.status_of(c.addrs[n - 1]).await {
            Ok(s) if s.aae.ranges_out_of_sync == 0 && s.aae.pairs.iter().all(|p| p.in_sync) => {}
            _ => return false,
        }
    }
    true
}

async fn converge(keys: usize, pace: &str) -> anyhow::Result<f64> {
    let extra: &'static str = Box::leak(format!("anti_entropy.interval_ms = 200\n{pace}").into_boxed_str());
    let mut c = Cluster::start(Opts { nodes: 2, replication: 2, extra }).await;
    let client = c.client_for(&[1]);
    c.kill(2);
    c.wait_seen(2, false).await;
    let t = Instant::now();
    load(&client, keys, Level::One, true).await;
    println!("  {keys} keys written to node 1 alone in {:.1} s", t.elapsed().as_secs_f64());
    let start = Instant::now();
    c.restart(2).await;
    let all = c.client();
    while !in_sync(&c, &all, &[1, 2]).await {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "no convergence in 10 min");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let st = all.status_of(c.addrs[1]).await?;
    let st1 = all.status_of(c.addrs[0]).await?;
    println!(
        "  converged {secs:.2} s after the restart; keys repaired: node 1 {}, node 2 {}; exchanged {} keys / {:.1} MB",
        st1.aae.keys_repaired,
        st.aae.keys_repaired,
        st1.aae.keys_exchanged + st.aae.keys_exchanged,
        (st1.aae.bytes_exchanged + st.aae.bytes_exchanged) as f64 / 1e6
    );
    Ok(secs)
}

/// User + system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn idle_cpu(keys: usize, idle: u64, aae: bool) -> anyhow::Result<f64> {
    let extra = if aae { "" } else { "anti_entropy.enabled = false" };
    let c = Cluster::start(Opts { nodes: 3, replication: 3, extra }).await;
    load(&c.client(), keys, Level::All, false).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: f64 = (1..=3).map(|i| cpu_secs(c.pid(i))).sum();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let used: f64 = (1..=3).map(|i| cpu_secs(c.pid(i))).sum::<f64>() - before;
    let share = used / t.elapsed().as_secs_f64() / 3.0 * 100.0;
    if aae {
        let st = c.client().status_of(c.addrs[0]).await?;
        println!("  node 1 completed {} exchanges, ranges in sync {}", st.aae.exchanges, st.aae.ranges_in_sync);
    }
    Ok(share)
}

/// Ops per second of a 50/50 quorum read/write load over `keys` keys at concurrency 32 for `secs`.
///
/// Writes pass the last context seen for their key (from a read or a write), as a
/// real client would: blind writes would pile up siblings and slow every later run.
async fn throughput(client: &Client, keys: usize, secs: f64, contexts: &Contexts) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32u64 {
        let (client, contexts) = (client.clone(), contexts.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            while Instant::now() < end {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = x % keys as u64;
                let key = format!("load-{i:08}");
                let ctx = if x & 1 == 0 {
                    client.get(key).r(Level::Quorum).await.map(|g| g.context)
                } else {
                    let known = contexts.lock().expect("contexts").get(&i).cloned();
                    let mut put = client.put(key, vec![b'w'; 100]).w(Level::Quorum);
                    if let Some(c) = known {
                        put = put.context(c);
                    }
                    put.await.map(|p| p.context)
                };
                if let Ok(c) = ctx {
                    contexts.lock().expect("contexts").insert(i, c);
                    n += 1;
                }
            }
            n
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.unwrap_or(0);
    }
    total as f64 / secs
}

type Contexts = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, quorumkv::Context>>>;

/// (ops/s in sync, ops/s while node 3 takes `keys` divergent keys, seconds until in sync).
async fn cost(keys: usize, pace: &str) -> anyhow::Result<(f64, f64, Option<f64>)> {
    const LOAD_KEYS: usize = 10_000;
    let extra: &'static str = Box::leak(format!("anti_entropy.interval_ms = 200\n{pace}").into_boxed_str());
    let mut c = Cluster::start(Opts { nodes: 3, replication: 3, extra }).await;
    let client = c.client_for(&[1, 2]);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32 {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (t..LOAD_KEYS).step_by(32) {
                client.put(format!("load-{i:08}"), vec![b'w'; 100]).w(Level::All).await.expect("preload");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let contexts = Contexts::default();
    let before = throughput(&client, LOAD_KEYS, 10.0, &contexts).await;
    c.kill(3);
    c.wait_seen(3, false).await;
    load(&client, keys, Level::Quorum, true).await;
    // Let nodes 1 and 2 flush and compact what they just took, so the figure after the
    // restart is not their LSM catching up.
    tokio::time::sleep(Duration::from_secs(20)).await;
    c.restart(3).await;
    c.wait_seen(3, true).await;
    let start = Instant::now();
    let during = throughput(&client, LOAD_KEYS, 10.0, &contexts).await;
    if pace.contains("anti_entropy.enabled = false") {
        return Ok((before, during, None));
    }
    let all = c.client();
    while !in_sync(&c, &all, &[1, 2, 3]).await {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "no convergence in 10 min");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((before, during, Some(start.elapsed().as_secs_f64())))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keys: usize = env("QKV_BENCH_AAE_KEYS", 100_000);
    let idle: u64 = env("QKV_BENCH_AAE_IDLE_S", 20);
    let parts: String = env("QKV_BENCH_AAE_PARTS", "converge,cpu,cost".to_string());
    const UNPACED: &str = "anti_entropy.keys_per_s = 10000000\nanti_entropy.bytes_per_s = 1073741824";
    let mut j = json!({ "keys": keys });
    if parts.contains("converge") {
        println!("convergence of {keys} divergent keys between two replicas, default pace:");
        let paced = converge(keys, "").await?;
        println!("convergence, unpaced (anti_entropy.keys_per_s = 10000000, anti_entropy.bytes_per_s = 1 GiB):");
        let unpaced = converge(keys, UNPACED).await?;
        j["converge_s"] = json!({"default_pace": paced, "unpaced": unpaced});
    }
    if parts.contains("cpu") {
        println!("steady state, {keys} keys in sync, idle {idle} s:");
        let on = idle_cpu(keys, idle, true).await?;
        let off = idle_cpu(keys, idle, false).await?;
        println!("  CPU per node: {on:.3} % of a core with anti-entropy, {off:.3} % without");
        j["idle_cpu_percent_per_node"] = json!({"aae_on": on, "aae_off": off, "idle_s": idle});
    }
    if parts.contains("cost") {
        println!("throughput, 32 clients, quorum 50/50 reads and writes, while node 3 takes {keys} missed keys:");
        let mut costs = vec![];
        // QKV_BENCH_AAE_PACE, e.g. "anti_entropy.keys_per_s = 500", replaces the default pace here.
        let custom: String = env("QKV_BENCH_AAE_PACE", String::new());
        let first = if custom.is_empty() { "default pace" } else { custom.as_str() };
        for (name, pace) in
            [(first, custom.as_str()), ("unpaced", UNPACED), ("anti-entropy off", "anti_entropy.enabled = false")]
        {
            let (before, during, refill) = cost(keys, pace).await?;
            let refill_text = refill.map_or("never (off)".to_string(), |s| format!("{s:.1} s"));
            println!(
                "  {name}: {before:.0} ops/s in sync; {during:.0} ops/s after the restart ({:+.1} %); in sync after {refill_text}",
                (during / before - 1.0) * 100.0
            );
            costs.push(json!({"pace": name, "in_sync": before, "during_refill": during, "refill_s": refill}));
        }
        j["throughput_ops_s"] = json!(costs);
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("aae.json"), serde_json::to_string_pretty(&j)?)?;
    println!("results: target/bench/aae.json");
    Ok(())
}
