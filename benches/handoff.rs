//! Failure detection time and hinted-handoff throughput, against `make cluster NODES=5`:
//! `cargo bench --bench handoff`.
//!
//! 1. SIGKILLs node `QKV_BENCH_NODE` (default 2) and times how long until every other
//!    node reports it down.
//! 2. Writes `QKV_BENCH_KEYS` (default 20000) sloppy W=one puts of `QKV_BENCH_VALUE_BYTES`
//!    (default 1024) with 32 in flight, so stand-ins take hints for the dead node.
//! 3. Restarts it and times the drain of the hint backlog on every node (hints/s, MB/s).
//!
//! The handoff pace is each node's `handoff_bytes_per_s` (16 MiB/s by default).

use std::process::Command;
use std::time::{Duration, Instant};

use quorumkv::{Client, ClientConfig, Level};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

async fn pending(client: &Client, cfg: &ClientConfig) -> (u64, u64) {
    let mut total = (0, 0);
    for &addr in &cfg.nodes {
        if let Ok(st) = client.status_of(addr).await {
            total.0 += st.hints.count;
            total.1 += st.hints.bytes;
        }
    }
    total
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cfg = match ClientConfig::load("cluster/client.toml".as_ref(), |k| std::env::var(k).ok()) {
        Ok(c) if c.nodes.len() >= 4 => c,
        _ => {
            println!("bench: needs a running cluster of at least 4 nodes: `make cluster NODES=5`");
            return Ok(());
        }
    };
    let victim: usize = env("QKV_BENCH_NODE", 2);
    let keys: usize = env("QKV_BENCH_KEYS", 20_000);
    let value = vec![b'h'; env("QKV_BENCH_VALUE_BYTES", 1024)];
    let client = cfg.builder().build()?;
    let others: Vec<_> = cfg.nodes.iter().enumerate().filter(|(i, _)| i + 1 != victim).map(|(_, a)| *a).collect();
    if client.status_of(cfg.nodes[victim - 1]).await.is_err() {
        println!("bench: node {victim} does not answer; start the cluster first");
        return Ok(());
    }

    let pid = std::fs::read_to_string(format!("cluster/pids/node{victim}.pid"))?;
    let status = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
    anyhow::ensure!(status.success(), "kill failed");
    let killed = Instant::now();
    loop {
        let mut all = true;
        for &a in &others {
            let st = client.status_of(a).await?;
            all &= st.members.iter().any(|m| m.node == victim as u32 && !m.up);
        }
        if all {
            break;
        }
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(30), "node {victim} never seen down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "detection: every node saw node {victim} down {:.0} ms after SIGKILL",
        killed.elapsed().as_secs_f64() * 1e3
    );

    // Fresh keys each run: blind writes to old keys would pile up as siblings.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..keys {
        let (client, value, permit) = (client.clone(), value.clone(), sem.clone().acquire_owned().await?);
        tasks.spawn(async move {
            let _permit = permit;
            client.put(format!("handoff-{run}-{i}"), value).w(Level::One).await.map(|_| ())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    // W = one answers before the stand-ins ack: let the last hints land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (count, bytes) = pending(&client, &cfg).await;
    println!(
        "wrote {keys} keys in {:.1} s; backlog: {count} hints, {:.1} MB",
        started.elapsed().as_secs_f64(),
        bytes as f64 / 1e6
    );

    let status = Command::new("make").args(["-s", "start-node", &format!("N={victim}")]).status()?;
    anyhow::ensure!(status.success(), "make start-node failed");
    let restarted = Instant::now();
    loop {
        let (left, _) = pending(&client, &cfg).await;
        if left == 0 {
            break;
        }
        anyhow::ensure!(restarted.elapsed() < Duration::from_secs(300), "backlog did not drain: {left} left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = restarted.elapsed().as_secs_f64();
    println!(
        "handoff: {count} hints ({:.1} MB) drained {secs:.2} s after restart: {:.0} hints/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        count as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
