//! Latency benches: `make bench` (or `cargo bench --bench latency`).
//!
//! For each persist policy (`buffer`, then `sync`) a fresh local cluster is started
//! (`QKV_BENCH_NODES`, default 3, N = 3), preloaded, and driven through the client
//! crate with 1 KiB values (`QKV_BENCH_VALUE`):
//! - reads and writes at `one`, `quorum` and `all`, strict and sloppy;
//! - YCSB-style mixes A (50 % read, 50 % update), B (95/5) and C (100 % read) over
//!   zipfian keys (theta 0.99, scrambled).
//!
//! Each runs closed loop at concurrency 1 and 32, and open loop at a fixed rate
//! (`QKV_BENCH_RATE`, default 2000/s) where latency is measured from each request's
//! intended start (coordinated-omission correction, as wrk2 does). Warm-up is
//! excluded. Then a failure bench on 5 nodes: sloppy W = all writes while one node is
//! killed and restarted. Results: a table per run on stdout, JSON and SVG plots under
//! `target/bench/`. `QKV_BENCH_QUICK=1` shrinks everything to finish in under a minute.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use quorumkv::{Client, Context, Level};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

struct Settings {
    quick: bool,
    nodes: usize,
    secs: f64,
    warmup: f64,
    rate: u64,
    keys: u64,
    value: usize,
}

/// YCSB's scrambled zipfian generator over `n` items.
struct Zipf {
    n: u64,
    theta: f64,
    zetan: f64,
    alpha: f64,
    eta: f64,
}

impl Zipf {
    fn new(n: u64) -> Zipf {
        let theta = 0.99;
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let (zetan, zeta2) = (zeta(n), zeta(2));
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipf { n, theta, zetan, alpha, eta }
    }

    fn next(&self, rng: &mut StdRng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        let rank = if uz < 1.0 {
            0
        } else if uz < 1.0 + 0.5f64.powf(self.theta) {
            1
        } else {
            ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
        };
        // Scramble so the hot keys spread over the ring (FNV-1a of the rank).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in rank.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        h % self.n
    }
}

#[derive(Clone, Copy)]
enum Work {
    Read(Level, bool),
    Write(Level, bool),
    Mix(&'static str, u32),
}

impl Work {
    fn name(&self) -> String {
        let mode = |s: bool| if s { "strict" } else { "sloppy" };
        match self {
            Work::Read(l, s) => format!("read {l} {}", mode(*s)),
            Work::Write(l, s) => format!("write {l} {}", mode(*s)),
            Work::Mix(n, _) => format!("ycsb-{n} quorum"),
        }
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Closed(usize),
    Open(u64),
}

impl Mode {
    fn name(&self) -> String {
        match self {
            Mode::Closed(c) => format!("closed c={c}"),
            Mode::Open(r) => format!("open {r}/s"),
        }
    }
}

/// The last context seen per key, shared by all workers: writes pass it, as a real
/// client would, so they replace what was there instead of piling up siblings.
type Contexts = Arc<std::sync::Mutex<std::collections::HashMap<u64, Context>>>;

/// One operation; `Err` counts as an error.
async fn op(
    client: &Client,
    work: Work,
    rng: &mut StdRng,
    zipf: &Zipf,
    value: &[u8],
    contexts: &Contexts,
) -> Result<(), quorumkv::Error> {
    let k = zipf.next(rng);
    let key = format!("bench-{k}");
    let read = match work {
        Work::Read(..) => true,
        Work::Write(..) => false,
        Work::Mix(_, read_pct) => rng.random_range(0..100) < read_pct,
    };
    let (level, strict) = match work {
        Work::Read(l, s) | Work::Write(l, s) => (l, s),
        Work::Mix(..) => (Level::Quorum, false),
    };
    if read {
        let g = client.get(key).r(level);
        let got = if strict { g.strict().await } else { g.await }?;
        contexts.lock().expect("contexts").insert(k, got.context);
    } else {
        let ctx = contexts.lock().expect("contexts").get(&k).cloned().unwrap_or_default();
        let p = client.put(key.clone(), value.to_vec()).w(level).context(ctx);
        let put = match if strict { p.strict().await } else { p.await } {
            // Concurrent writers on a hot key pile up siblings (each context covers only its
            // own writer's history) until the per-key limit: resolve them as a client would,
            // by reading and writing with the read's context.
            Err(quorumkv::Error::Cluster(quorumkv::ClusterError::KeyFull { .. })) => {
                let got = client.get(key.clone()).r(Level::All).await?;
                let p = client.put(key, value.to_vec()).w(level).context(got.context);
                if strict { p.strict().await } else { p.await }?
            }
            other => other?,
        };
        contexts.lock().expect("contexts").insert(k, put.context);
    }
    Ok(())
}

struct Outcome {
    hist: Histogram<u64>,
    errors: u64,
    secs: f64,
}

async fn run(client: &Client, work: Work, mode: Mode, s: &Settings, zipf: &Arc<Zipf>, contexts: &Contexts) -> Outcome {
    let value: Arc<Vec<u8>> = Arc::new(vec![b'v'; s.value]);
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let warm_until = start + Duration::from_secs_f64(s.warmup);
    let end = warm_until + Duration::from_secs_f64(s.secs);
    let record = {
        let (hist, errors) = (hist.clone(), errors.clone());
        move |began: Instant, ok: bool| {
            if began >= warm_until {
                let _ = hist.lock().expect("hist").record((began.elapsed().as_micros() as u64).max(1));
                if !ok {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    };
    match mode {
        Mode::Closed(c) => {
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..c {
                let (client, zipf, value, record) = (client.clone(), zipf.clone(), value.clone(), record.clone());
                let contexts = contexts.clone();
                tasks.spawn(async move {
                    let mut rng = StdRng::seed_from_u64(t as u64);
                    while Instant::now() < end {
                        let began = Instant::now();
                        let ok = op(&client, work, &mut rng, &zipf, &value, &contexts).await.is_ok();
                        record(began, ok);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
        Mode::Open(rate) => {
            // Requests start at their intended times, whatever the cluster does; latency
            // counts from the intended start, so a stall shows in every request it delays.
            let in_flight = Arc::new(tokio::sync::Semaphore::new(4096));
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0u64;
            loop {
                let intended = start + interval * i as u32;
                if intended >= end {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                let (client, zipf, value, record) = (client.clone(), zipf.clone(), value.clone(), record.clone());
                let contexts = contexts.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let mut rng = StdRng::seed_from_u64(i);
                    let ok = op(&client, work, &mut rng, &zipf, &value, &contexts).await.is_ok();
                    record(intended, ok);
                });
                i += 1;
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let hist = Arc::try_unwrap(hist)
        .map(|m| m.into_inner().expect("hist"))
        .unwrap_or_else(|h| h.lock().expect("hist").clone());
    Outcome { hist, errors: errors.load(std::sync::atomic::Ordering::Relaxed), secs: s.secs }
}

fn row(policy: &str, work: &str, mode: &str, o: &Outcome) -> Value {
    let ms = |q: f64| o.hist.value_at_quantile(q) as f64 / 1000.0;
    let percentiles: Vec<Value> = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99]
        .iter()
        .map(|p| json!([p, o.hist.value_at_percentile(*p) as f64 / 1000.0]))
        .collect();
    json!({
        "policy": policy, "workload": work, "mode": mode,
        "ops": o.hist.len(), "errors": o.errors,
        "throughput": o.hist.len() as f64 / o.secs,
        "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
        "max_ms": o.hist.max() as f64 / 1000.0,
        "percentiles": percentiles,
    })
}

fn print_row(r: &Value) {
    println!(
        "{:<7}{:<22}{:<14}{:>9.0}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>7}",
        r["policy"].as_str().unwrap_or(""),
        r["workload"].as_str().unwrap_or(""),
        r["mode"].as_str().unwrap_or(""),
        r["throughput"].as_f64().unwrap_or(0.0),
        r["p50_ms"].as_f64().unwrap_or(0.0),
        r["p90_ms"].as_f64().unwrap_or(0.0),
        r["p99_ms"].as_f64().unwrap_or(0.0),
        r["p999_ms"].as_f64().unwrap_or(0.0),
        r["max_ms"].as_f64().unwrap_or(0.0),
        r["errors"].as_u64().unwrap_or(0),
    );
}

fn header() {
    println!(
        "{:<7}{:<22}{:<14}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>7}",
        "POLICY", "WORKLOAD", "MODE", "OPS/S", "P50 ms", "P90 ms", "P99 ms", "P99.9", "MAX ms", "ERRS"
    );
}

/// Latency by percentile, one curve per workload of `rows`.
fn plot_percentiles(path: &std::path::Path, title: &str, rows: &[&Value]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = rows.iter().map(|r| r["max_ms"].as_f64().unwrap_or(1.0)).fold(0.1, f64::max);
    // x: the "nines", 1/(1-p) on a log scale, as HdrHistogram plots do.
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0f64..10_000.0).log_scale(), (0.01f64..max * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile (50 = 2, 90 = 10, 99 = 100, 99.9 = 1000, 99.99 = 10000)")
        .y_desc("latency, ms")
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = r["percentiles"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (1.0 / (1.0 - p[0].as_f64().unwrap_or(50.0) / 100.0), p[1].as_f64().unwrap_or(0.0).max(0.01)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(r["workload"].as_str().unwrap_or("").to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

async fn preload(client: &Client, s: &Settings) {
    let value = vec![b'v'; s.value];
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (client, value) = (client.clone(), value.clone());
        let keys = s.keys;
        tasks.spawn(async move {
            for k in (w..keys).step_by(16) {
                let _ = client.put(format!("bench-{k}"), value.clone()).w(Level::All).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The runs, and time to all replicas per policy and node.
async fn latency_benches(s: &Settings, out: &std::path::Path) -> anyhow::Result<(Vec<Value>, Value)> {
    let mut works = vec![];
    for strict in [false, true] {
        for level in [Level::One, Level::Quorum, Level::All] {
            works.push(Work::Read(level, strict));
            works.push(Work::Write(level, strict));
        }
    }
    works.extend([Work::Mix("a", 50), Work::Mix("b", 95), Work::Mix("c", 100)]);
    let modes = [Mode::Closed(1), Mode::Closed(32), Mode::Open(s.rate)];
    let zipf = Arc::new(Zipf::new(s.keys));
    let mut rows = vec![];
    let mut lags = serde_json::Map::new();
    for policy in ["buffer", "sync"] {
        let extra: &'static str = if policy == "sync" { "persist = \"sync\"" } else { "" };
        let cluster = Cluster::start(Opts { nodes: s.nodes, replication: 3, extra }).await;
        let client = cluster.client_config().builder().timeout(Duration::from_secs(2)).build()?;
        preload(&client, s).await;
        let contexts: Contexts = Default::default();
        let bar = ProgressBar::new((works.len() * modes.len()) as u64);
        bar.set_style(ProgressStyle::with_template("{msg:>40} {bar:30} {pos}/{len} eta {eta}").expect("template"));
        let mut mine = vec![];
        for &w in &works {
            for &m in &modes {
                bar.set_message(format!("{policy}: {} {}", w.name(), m.name()));
                let o = run(&client, w, m, s, &zipf, &contexts).await;
                mine.push(row(policy, &w.name(), &m.name(), &o));
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        println!("\n{} nodes, N=3, persist = {policy}, {} B values, {} keys", s.nodes, s.value, s.keys);
        header();
        for r in &mine {
            print_row(r);
        }
        // Time to all replicas, per node, over everything this cluster did.
        let mut lag = vec![];
        for &addr in &cluster.addrs {
            if let Ok(st) = client.stats_of(addr).await {
                let l = st.replication_lag_ms;
                println!(
                    "  node {}: time to all replicas over {} writes: p50 {} ms, p99 {} ms, max {} ms; {} still missing a replica",
                    st.node, l.count, l.p50, l.p99, l.max, st.replication_lag_pending
                );
                lag.push(json!({"node": st.node, "writes": l.count, "p50_ms": l.p50, "p99_ms": l.p99, "max_ms": l.max,
                    "pending": st.replication_lag_pending}));
            }
        }
        lags.insert(policy.to_string(), json!(lag));
        let c32: Vec<&Value> = mine.iter().filter(|r| r["mode"] == "closed c=32").collect();
        plot_percentiles(
            &out.join(format!("latency-{policy}.svg")),
            &format!("persist={policy}, closed loop c=32"),
            &c32,
        )?;
        rows.extend(mine);
    }
    Ok((rows, Value::Object(lags)))
}

/// Sloppy W = all writes on 5 nodes while node 2 is killed and restarted.
async fn failure_bench(s: &Settings, out: &std::path::Path) -> anyhow::Result<Value> {
    let total = if s.quick { 6.0 } else { 30.0 };
    let (kill_at, restart_at) = (total * 0.25, total * 0.5);
    let mut cluster = Cluster::start(Opts { nodes: 5, replication: 3, extra: "" }).await;
    let client = cluster.client_config().builder().build()?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(total);
    let events = Arc::new(std::sync::Mutex::new(Vec::<(f64, f64, bool, usize)>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let (client, events) = (client.clone(), events.clone());
        tasks.spawn(async move {
            let mut i = 0;
            while Instant::now() < end {
                i += 1;
                let began = Instant::now();
                let r = client.put(format!("fail-{t}-{i}"), vec![b'f'; 1024]).w(Level::All).await;
                let standins = r.as_ref().map_or(0, |p| p.standin_acks.len());
                let at = began.duration_since(start).as_secs_f64();
                events.lock().expect("events").push((at, began.elapsed().as_secs_f64() * 1e3, r.is_ok(), standins));
            }
        });
    }
    let status = client.clone();
    // The killed node holds no hints that matter here, and asking it would stall the sampling.
    let addrs: Vec<_> = cluster.addrs.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, a)| *a).collect();
    let backlog = tokio::spawn(async move {
        let mut samples = vec![];
        while Instant::now() < end + Duration::from_secs(30) {
            // All nodes at once, each with a short deadline: a dead node must not stall the sampling.
            let asks = addrs.iter().map(|&a| {
                let status = status.clone();
                async move { tokio::time::timeout(Duration::from_millis(500), status.status_of(a)).await }
            });
            let pending: u64 =
                futures_join(asks).await.into_iter().filter_map(|r| r.ok()?.ok()).map(|st| st.hints.count).sum();
            samples.push((start.elapsed().as_secs_f64(), pending));
            if Instant::now() > end && pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    });
    tokio::time::sleep_until(tokio::time::Instant::from_std(start + Duration::from_secs_f64(kill_at))).await;
    cluster.kill(2);
    tokio::time::sleep_until(tokio::time::Instant::from_std(start + Duration::from_secs_f64(restart_at))).await;
    cluster.restart(2).await;
    while tasks.join_next().await.is_some() {}
    let backlog = backlog.await?;
    let ev = events.lock().expect("events").clone();
    let first_standin =
        ev.iter().filter(|e| e.0 >= kill_at && e.2 && e.3 > 0).map(|e| e.0 + e.1 / 1e3).fold(f64::MAX, f64::min);
    let errors = ev.iter().filter(|e| !e.2).count();
    let drained = backlog.iter().filter(|b| b.0 > restart_at && b.1 == 0).map(|b| b.0).fold(f64::MAX, f64::min);
    let peak = backlog.iter().map(|b| b.1).max().unwrap_or(0);
    // Per 250 ms: p99 latency and errors.
    let buckets = (total / 0.25).ceil() as usize;
    let mut series = vec![];
    for b in 0..buckets {
        let (lo, hi) = (b as f64 * 0.25, (b + 1) as f64 * 0.25);
        let mut lat: Vec<f64> = ev.iter().filter(|e| e.0 >= lo && e.0 < hi).map(|e| e.1).collect();
        lat.sort_by(f64::total_cmp);
        let p99 = lat.get((lat.len() as f64 * 0.99) as usize).or(lat.last()).copied().unwrap_or(0.0);
        let errs = ev.iter().filter(|e| e.0 >= lo && e.0 < hi && !e.2).count();
        series.push(json!({"t": lo, "ops": lat.len(), "p99_ms": p99, "errors": errs}));
    }
    plot_failure(&out.join("failure.svg"), &series, &backlog, kill_at, restart_at)?;
    let fmt = |x: f64| if x == f64::MAX { "never".to_string() } else { format!("{:.2} s", x) };
    println!(
        "\nfailure bench: 5 nodes, 8 writers of sloppy W=all, node 2 killed at {kill_at:.1} s and restarted at {restart_at:.1} s"
    );
    println!(
        "  first write acked through a stand-in: {} after the kill; errors: {errors} of {}; hint backlog peak {peak}, drained {} after the restart",
        fmt(first_standin - kill_at),
        ev.len(),
        fmt(drained - restart_at)
    );
    Ok(json!({
        "kill_at_s": kill_at, "restart_at_s": restart_at,
        "first_standin_write_after_kill_s": (first_standin != f64::MAX).then_some(first_standin - kill_at),
        "drained_after_restart_s": (drained != f64::MAX).then_some(drained - restart_at),
        "errors": errors, "writes": ev.len(), "hint_backlog_peak": peak, "series": series,
        "backlog": backlog.iter().map(|b| json!([b.0, b.1])).collect::<Vec<_>>(),
    }))
}

/// Await every future, concurrently.
async fn futures_join<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = vec![];
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn plot_failure(
    path: &std::path::Path,
    series: &[Value],
    backlog: &[(f64, u64)],
    kill: f64,
    restart: f64,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let t_max = backlog.last().map_or(1.0, |b| b.0).max(series.len() as f64 * 0.25);
    let p99_max = series.iter().map(|s| s["p99_ms"].as_f64().unwrap_or(0.0)).fold(1.0, f64::max);
    let mut c = ChartBuilder::on(&top)
        .caption("sloppy W=all writes: p99 latency per 250 ms (node 2 killed, then restarted)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..p99_max * 1.2)?;
    c.configure_mesh().y_desc("p99 ms").draw()?;
    c.draw_series(LineSeries::new(
        series.iter().map(|s| (s["t"].as_f64().unwrap_or(0.0), s["p99_ms"].as_f64().unwrap_or(0.0))),
        BLUE.stroke_width(2),
    ))?;
    for (x, col) in [(kill, RED), (restart, GREEN)] {
        c.draw_series(LineSeries::new(vec![(x, 0.0), (x, p99_max * 1.2)], col.stroke_width(1)))?;
    }
    let peak = backlog.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let mut h = ChartBuilder::on(&bottom)
        .caption("hints pending on all nodes", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..peak * 1.2)?;
    h.configure_mesh().x_desc("seconds").y_desc("hints").draw()?;
    h.draw_series(LineSeries::new(backlog.iter().map(|b| (b.0, b.1 as f64)), MAGENTA.stroke_width(2)))?;
    root.present()?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let quick = env("QKV_BENCH_QUICK", 0u8) == 1;
    let s = Settings {
        quick,
        nodes: env("QKV_BENCH_NODES", 3usize).clamp(3, 7),
        secs: env("QKV_BENCH_SECS", if quick { 0.25 } else { 5.0 }),
        warmup: env("QKV_BENCH_WARMUP", if quick { 0.05 } else { 1.0 }),
        rate: env("QKV_BENCH_RATE", if quick { 1000 } else { 2000 }),
        keys: env("QKV_BENCH_KEYS", if quick { 1000 } else { 10_000 }),
        value: env("QKV_BENCH_VALUE", 1024usize),
    };
    let out = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench"));
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();
    let (rows, lags) = latency_benches(&s, &out).await?;
    let failure = failure_bench(&s, &out).await?;
    let results = json!({
        "nodes": s.nodes, "n": 3, "value_bytes": s.value, "keys": s.keys, "secs_per_run": s.secs,
        "warmup_secs": s.warmup, "open_loop_rate": s.rate, "quick": s.quick, "runs": rows,
        "time_to_all_replicas": lags, "failure": failure,
    });
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    println!(
        "\nwrote target/bench/results.json, latency-buffer.svg, latency-sync.svg, failure.svg ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
