//! Sequential latency against a running cluster: `cargo bench --bench sequential`.
//!
//! Puts then gets `QKV_BENCH_OPS` keys (default 1000) one at a time through the
//! client crate at `QKV_BENCH_LEVEL` (default quorum) and prints percentiles.
//! Uses `cluster/client.toml` (or `QKV_CLIENT_CONFIG`): start a cluster first with
//! `make cluster`. The full bench suite (open loop, mixes, plots) is still to come.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quorumkv::{Client, ClientConfig, Level};

fn report(name: &str, h: &Histogram<u64>, elapsed: Duration) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    println!(
        "{name:<12} {:>6} ops {:>8.0} ops/s  p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        h.len(),
        h.len() as f64 / elapsed.as_secs_f64(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1e6,
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let path = std::env::var("QKV_CLIENT_CONFIG").unwrap_or_else(|_| "cluster/client.toml".into());
    let ops: usize = std::env::var("QKV_BENCH_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let level: Level = std::env::var("QKV_BENCH_LEVEL").ok().and_then(|s| s.parse().ok()).unwrap_or(Level::Quorum);
    let cfg = match ClientConfig::load(std::path::Path::new(&path), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            println!("bench: no cluster to measure ({e}); start one with `make cluster`");
            return Ok(());
        }
    };
    let client: Client = cfg.builder().build()?;
    if client.status_of(cfg.nodes[0]).await.is_err() {
        println!("bench: the cluster in {path} does not answer; start it with `make cluster`");
        return Ok(());
    }
    let value = vec![b'x'; 1024];
    for (name, is_put) in [("put", true), ("get", false)] {
        let mut h = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?;
        let start = Instant::now();
        for i in 0..ops {
            let key = format!("bench-seq-{i}");
            let t = Instant::now();
            if is_put {
                client.put(key, value.clone()).w(level).await?;
            } else {
                client.get(key).r(level).await?;
            }
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        report(&format!("{name} {level}"), &h, start.elapsed());
    }
    Ok(())
}
