//! Staleness measured beside its prediction: `make bench-staleness` (or `cargo bench
//! --bench staleness`).
//!
//! A fresh 3-node cluster (N = 3) where node 3 applies replica writes late: the
//! test-only `test_apply_delay_ms` holds each a uniform 0 to 2 x `QKV_STALE_DELAY_MS`
//! (5) ms, so staleness shows on loopback (the kernel here has no netem). For each
//! (R, W) of `(1,1) (1,2) (2,1)` and each delay t of 0, 1, 2, 5, 10 and 50 ms, one
//! trial at a time: write a fresh key at W (the client routes it to its first home
//! replica), wait t after the ack (spinning the last stretch, for precision), then
//! read it at R through a home replica picked at random (a client pinned to that
//! node), and count the reads that miss it. Beside each measured fraction is the
//! prediction of `qkv_core::pbs` (what `qkv pbs` prints) from the cluster's round
//! trips of that same run (and this client's own, from its R = one reads), and whether the two agree within 10 % of the measured
//! value or 0.5 percentage points, whichever is larger.
//!
//! `QKV_STALE_TRIALS` (3000) trials per row up to 10 ms and a sixth of that at 50 ms
//! (about 5 minutes). Output: a table on stdout and in `target/bench/staleness.txt`,
//! JSON in `target/bench/staleness.json`, and `target/bench/staleness.svg` (predicted
//! lines, measured points). Last, what a session read costs through the late node
//! right after a write (replicas asked, latency), beside the same read without one.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use plotters::prelude::*;
use quorumkv::pbs::{T_MS, predict};
use quorumkv::{Client, Level};
use serde_json::json;

const PAIRS: [(usize, usize); 3] = [(1, 1), (1, 2), (2, 1)];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn level(n: usize) -> Level {
    match n {
        1 => Level::One,
        2 => Level::Two,
        _ => Level::All,
    }
}

/// Wait until `at`: sleep most of the way, spin the last 2 ms.
async fn until(at: Instant) {
    let now = Instant::now();
    if at > now + Duration::from_millis(2) {
        tokio::time::sleep(at - now - Duration::from_millis(2)).await;
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

/// A row: (R, W, t ms, trials, stale reads).
type Row = (usize, usize, f64, u64, u64);

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let delay = env("QKV_STALE_DELAY_MS", 5);
    let trials = env("QKV_STALE_TRIALS", 3000).max(6);
    let c = Cluster::start_with(Opts::default(), |id| {
        if id == 3 { format!("test_apply_delay_ms = {delay}") } else { String::new() }
    })
    .await;
    let writer = c.client();
    let readers: Vec<Client> = (1..=3).map(|id| c.client_for(&[id])).collect();
    // Warm the connections (and the round trips the prediction reads).
    for i in 0..300 {
        writer.put(format!("warm{i}"), "v").w(Level::All).await?;
        readers[i % 3].get(format!("warm{i}")).r(Level::Two).await?;
    }
    let mut rows: Vec<Row> = vec![];
    let mut predicted = vec![];
    let mut seq = 0u64;
    let mut pick = 0x9e37_79b9_7f4a_7c15u64;
    let mut client_us: Vec<u32> = vec![];
    for (r, w) in PAIRS {
        for &t in &T_MS {
            let count = if t <= 10.0 { trials } else { trials / 6 };
            let mut stale = 0;
            for _ in 0..count {
                seq += 1;
                let key = format!("stale-{r}-{w}-{seq}");
                writer.put(key.clone(), "v").w(level(w)).timeout(Duration::from_secs(2)).await?;
                let acked = Instant::now();
                until(acked + Duration::from_secs_f64(t / 1000.0)).await;
                pick ^= pick << 13;
                pick ^= pick >> 7;
                pick ^= pick << 17;
                let reader = &readers[(pick % 3) as usize];
                let sent = Instant::now();
                let got = reader.get(key).r(level(r)).timeout(Duration::from_secs(2)).await?;
                if r == 1 && client_us.len() < 20_000 {
                    // An R = one read is the client's round trip (and a lookup): its legs.
                    client_us.push(sent.elapsed().as_micros() as u32);
                }
                if !got.found {
                    stale += 1;
                }
            }
            rows.push((r, w, t, count, stale));
        }
        // The prediction from the round trips of this very run.
        let (mut samples, n) = writer.latency_samples().await?;
        samples.client_us = client_us.clone();
        if std::env::var("QKV_STALE_DEBUG").is_ok() {
            let med = |v: &[u32]| {
                let mut v = v.to_vec();
                v.sort_unstable();
                let at = |q: f64| v.get(((v.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
                format!("{}/{}/{}/{} (n {})", at(0.1), at(0.5), at(0.9), at(0.99), v.len())
            };
            for ((a, b), p) in &samples.pairs {
                println!("{a}->{b}: write {} read {} µs (p10/p50/p90/p99)", med(&p.write_us), med(&p.read_us));
            }
            for (node, v) in &samples.apply_wait_us {
                let over = |ms: u32| v.iter().filter(|&&x| x > ms * 1000).count() as f64 / v.len().max(1) as f64;
                println!(
                    "node {node}: replica write wait to apply {} µs; over 2/5/10 ms: {:.3} {:.3} {:.3}",
                    med(v),
                    over(2),
                    over(5),
                    over(10)
                );
            }
            println!("client round trips {} µs", med(&client_us));
        }
        let p = predict(&samples, n, r, w, 200_000, 1).map_err(|e| anyhow::anyhow!(e))?;
        predicted.push(((r, w), T_MS.map(|t| 1.0 - p.p_at(t)), p.t_for(0.999)));
    }
    report(&rows, &predicted, delay)?;
    session_cost(&writer, &readers[2], trials).await?;
    Ok(())
}

/// What a session read costs when the first replica it reads is stale: a W = one
/// write in a session, then at once a read at R = one in the same session (resumed from
/// its token) through node 3, the late one; beside it, the same read without a session.
async fn session_cost(writer: &Client, late: &Client, trials: u64) -> anyhow::Result<()> {
    let (mut past_r, mut asked, mut plain_us, mut fresh_us, mut behind_us) = (0u64, 0u64, vec![], vec![], vec![]);
    let mut stale_plain = 0;
    for i in 0..trials {
        let key = format!("session-{i}");
        let session = writer.session();
        session.put(key.clone(), "v").w(Level::One).await?;
        let there = late.resume_session(&session.token())?;
        let t0 = Instant::now();
        let got = there.get(key.clone()).r(Level::One).timeout(Duration::from_secs(2)).await?;
        let us = t0.elapsed().as_micros() as u64;
        anyhow::ensure!(got.found, "a session read missed its own write");
        asked += u64::from(got.replied);
        if got.replied > 1 {
            past_r += 1;
            behind_us.push(us);
        } else {
            fresh_us.push(us);
        }
        let key2 = format!("plain-{i}");
        writer.put(key2.clone(), "v").w(Level::One).await?;
        let t0 = Instant::now();
        let plain = late.get(key2).r(Level::One).await?;
        plain_us.push(t0.elapsed().as_micros() as u64);
        if !plain.found {
            stale_plain += 1;
        }
    }
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0
    };
    let text = format!(
        "\nsession reads through the late node right after a W = one write ({trials} each):\n\
         - without a session: {:.1}% missed the write; p50 {:.3} ms, p99 {:.3} ms\n\
         - in the session: none missed; {:.1}% found node 3 behind and asked past R = one \
         ({:.2} replicas per read on average): those took p50 {:.3} ms, p99 {:.3} ms; the rest p50 {:.3} ms, \
         p99 {:.3} ms\n",
        100.0 * stale_plain as f64 / trials as f64,
        pct(&mut plain_us, 0.5),
        pct(&mut plain_us, 0.99),
        100.0 * past_r as f64 / trials as f64,
        asked as f64 / trials as f64,
        pct(&mut behind_us, 0.5),
        pct(&mut behind_us, 0.99),
        pct(&mut fresh_us, 0.5),
        pct(&mut fresh_us, 0.99),
    );
    print!("{text}");
    let path = std::path::Path::new("target/bench/staleness.txt");
    let mut all = std::fs::read_to_string(path).unwrap_or_default();
    all.push_str(&text);
    std::fs::write(path, all)?;
    Ok(())
}

fn report(rows: &[Row], predicted: &[((usize, usize), [f64; 6], f64)], delay: u64) -> anyhow::Result<()> {
    let mut text = format!(
        "stale reads after a write's ack: measured vs predicted (PBS, WARS), 3 nodes, N = 3, node 3 applies \
         replica writes 0-{} ms late\n\n R  W   t ms   trials   measured  (95% interval)   predicted   agree\n",
        2 * delay
    );
    let mut json_rows = vec![];
    let mut agree_all = true;
    for &(r, w, t, count, stale) in rows {
        let m = stale as f64 / count as f64;
        let half = 1.96 * (m * (1.0 - m) / count as f64).sqrt();
        let i = T_MS.iter().position(|&x| x == t).unwrap_or(0);
        let pred = predicted.iter().find(|p| p.0 == (r, w)).map_or(f64::NAN, |p| p.1[i]);
        let tolerance = (0.1 * m).max(0.005);
        let agree = (pred - m).abs() <= tolerance;
        agree_all &= agree;
        text += &format!(
            "{r:>2} {w:>2} {t:>6} {count:>8}   {:>7.2}%  ({:>5.2}-{:>5.2}%)   {:>8.2}%   {}\n",
            100.0 * m,
            100.0 * (m - half).max(0.0),
            100.0 * (m + half).min(1.0),
            100.0 * pred,
            if agree { "yes" } else { "NO" }
        );
        json_rows.push(json!({"r": r, "w": w, "t_ms": t, "trials": count, "stale": stale,
            "measured": m, "predicted": pred, "agree": agree}));
    }
    for ((r, w), _, t999) in predicted {
        text += &format!("predicted: R = {r}, W = {w} sees the write with 99.9 % at t = {t999:.2} ms\n");
    }
    text += &format!("\n{}\n", if agree_all { "every row agrees" } else { "some rows do not agree (see NO)" });
    print!("{text}");
    let dir = std::path::Path::new("target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("staleness.txt"), &text)?;
    std::fs::write(dir.join("staleness.json"), serde_json::to_string_pretty(&json!({"rows": json_rows}))?)?;
    plot(&dir.join("staleness.svg"), rows, predicted, delay)?;
    println!("wrote target/bench/staleness.{{txt,json,svg}}");
    Ok(())
}

fn plot(
    path: &std::path::Path,
    rows: &[Row],
    predicted: &[((usize, usize), [f64; 6], f64)],
    delay: u64,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.iter().map(|r| r.4 as f64 / r.3 as f64).fold(0.05, f64::max) * 100.0 * 1.2;
    // x: t + 1 ms on a log scale, so t = 0 shows.
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "stale reads after the ack: predicted (lines) vs measured (points); node 3 late 0-{} ms",
                2 * delay
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0f64..60.0).log_scale(), 0.0f64..top)?;
    chart.configure_mesh().x_desc("t after the ack, ms (+1, log scale)").y_desc("stale reads, %").draw()?;
    for (i, ((r, w), pred, _)) in predicted.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = T_MS.iter().zip(pred).map(|(&t, &p)| (t + 1.0, 100.0 * p)).collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(format!("R = {r}, W = {w}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        let points = rows
            .iter()
            .filter(|row| (row.0, row.1) == (*r, *w))
            .map(|row| Circle::new((row.2 + 1.0, 100.0 * row.4 as f64 / row.3 as f64), 4, color.filled()));
        chart.draw_series(points)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
