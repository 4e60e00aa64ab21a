//! Hedged reads against a stalled replica: `make bench-hedge` (or `cargo bench --bench hedge`).
//!
//! A fresh 3-node cluster (N = 3) holds 10,000 keys of 1 KiB. Eight clients read at
//! R = one, closed loop, for `QKV_HEDGE_SECS` (12) seconds; a quarter of the way in,
//! node 2 is stopped with SIGSTOP (alive to the kernel, answering nothing, as a long
//! GC pause or a stuck disk would leave it), and it is continued at three quarters.
//! The run is made three times on the same cluster: without hedging, and with
//! `hedged_reads(20 ms, 10 %)` and `(20 ms, 100 %)`. It prints p50, p99, p99.9 and max
//! of each, the reads over 100 ms, and the hedges sent; JSON in `target/bench/hedge.json`.
//!
//! Every client task soon has a read on the stalled replica (a third of the reads go
//! to it first) until the client takes it for suspect (250 ms without an answer): each
//! such read needs a hedge, more than a 10 % budget allows.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use quorumkv::{Client, Level};
use serde_json::json;

const KEYS: u64 = 10_000;
const CLIENTS: usize = 8;

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// Read for `secs`, stalling node 2 from a quarter to three quarters of the run.
async fn run(c: &Cluster, client: Client, secs: f64) -> (Vec<u64>, u64) {
    let start = Instant::now();
    let stop_at = Duration::from_secs_f64(secs / 4.0);
    let cont_at = Duration::from_secs_f64(secs * 3.0 / 4.0);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for t in 0..CLIENTS {
        let (client, errors) = (client.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = vec![];
            let mut i = t as u64;
            while start.elapsed().as_secs_f64() < secs {
                let key = format!("k{:010}", i.wrapping_mul(2_654_435_761) % KEYS);
                let t0 = Instant::now();
                let got = client.get(key).r(Level::One).timeout(Duration::from_secs(2)).await;
                lat.push(t0.elapsed().as_nanos() as u64);
                if !matches!(got, Ok(g) if g.found) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += CLIENTS as u64;
            }
            lat
        }));
    }
    tokio::time::sleep(stop_at).await;
    c.pause(2, true);
    tokio::time::sleep(cont_at - stop_at).await;
    c.pause(2, false);
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    (all, errors.load(Ordering::Relaxed))
}

fn main() {
    let secs: f64 = std::env::var("QKV_HEDGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(12.0);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut results = serde_json::Map::new();
    rt.block_on(async {
        let c = Cluster::start(Opts::default()).await;
        let fill = c.client();
        let value = vec![b'v'; 1024];
        let mut puts = vec![];
        for t in 0..32u64 {
            let (fill, value) = (fill.clone(), value.clone());
            puts.push(tokio::spawn(async move {
                let mut k = t;
                while k < KEYS {
                    fill.put(format!("k{k:010}"), value.clone()).w(Level::All).await.expect("prefill");
                    k += 32;
                }
            }));
        }
        for p in puts {
            p.await.unwrap();
        }
        println!("R = one reads, {CLIENTS} clients, {secs} s; node 2 stopped (SIGSTOP) for the middle half");
        println!(
            "{:<24}{:>10}{:>9}{:>9}{:>10}{:>10}{:>11}{:>9}{:>8}",
            "client", "reads", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "> 100 ms", "hedges", "errors"
        );
        for budget in [None, Some(10), Some(100)] {
            let builder = c.client_config().builder();
            let builder = match budget {
                Some(b) => builder.hedged_reads(Duration::from_millis(20), b),
                None => builder,
            };
            let client = builder.build().unwrap();
            // Learn the ring first, so reads are routed to replicas from the start.
            let _ = client.get("k0000000000").await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while client.routing_epoch().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (lat, errors) = run(&c, client.clone(), secs).await;
            let name = match budget {
                Some(b) => format!("hedged (20 ms, {b} %)"),
                None => "no hedging".to_string(),
            };
            let (p50, p99, p999, max) = (pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999), pct(&lat, 1.0));
            let slow = lat.iter().filter(|&&ns| ns > 100_000_000).count();
            println!(
                "{name:<24}{:>10}{:>9.2}{:>9.2}{:>10.2}{:>10.2}{:>11}{:>9}{:>8}",
                lat.len(),
                p50 / 1000.0,
                p99 / 1000.0,
                p999 / 1000.0,
                max / 1000.0,
                slow,
                client.hedges_sent(),
                errors
            );
            results.insert(
                name.clone(),
                json!({"reads": lat.len(), "over_100ms": lat.iter().filter(|&&ns| ns > 100_000_000).count(), "p50_us": p50, "p99_us": p99, "p999_us": p999, "max_us": max,
                       "hedges": client.hedges_sent(), "errors": errors}),
            );
            // Let node 2 catch up and be seen up before the next run.
            c.wait_seen(2, true).await;
        }
    });
    let _ = std::fs::create_dir_all("target/bench");
    let _ = std::fs::write("target/bench/hedge.json", serde_json::to_string_pretty(&results).unwrap());
}
