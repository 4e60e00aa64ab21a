//! Staleness measured beside its prediction: `make bench-staleness` (or `cargo bench
//! --bench staleness`).
//!
//! A fresh 3-node cluster (N = 3) where node 3 applies replica writes late: the
//! test-only `test_apply_delay_ms` holds each a uniform 0 to 2 x `QKV_STALE_DELAY_MS`
//! (5) ms, so staleness shows on loopback (the kernel here has no netem). For each
//! (R, W) of `(1,1) (1,2) (2,1)` and each delay t of 0, 1, 2, 5, 10 and 50 ms:
//! `QKV_STALE_PARALLEL` (4) writers at once, each one trial at a time on its own keys:
//! write a fresh key at W (the client routes it to its first home replica), wait t
//! after the ack (asleep on a blocking thread, spinning the last 300 µs), then read it
//! at R through a home replica picked at random (a client pinned to that node), and
//! count the reads that miss it. Beside each measured fraction is the prediction of
//! `qkv_core::pbs` (what `qkv pbs` prints) from the samples the nodes keep right after
//! that row (their latest round trips and replica-write waits: mostly the row's own;
//! a t = 50 ms row's are partly the row before), this client's round trips of the
//! row's R = one reads (an R = 2 row: of the last R = one row), and the ring's
//! key placement, taken at the delay each read was really sent (a read leaves a
//! little after its t) and averaged; and whether the two agree within 10 % of the
//! measured value or 0.5 percentage points, whichever is larger.
//!
//! `QKV_STALE_TRIALS` (10,000) trials per row up to 10 ms and a sixth of that at 50 ms
//! (about 7 minutes): fewer, and the measured fraction's own 95 % interval is wider
//! than the bound. Output: a table on stdout and in `target/bench/staleness.txt`, JSON
//! in `target/bench/staleness.json`, and `target/bench/staleness.svg` (predicted lines,
//! measured points). `QKV_STALE_DEBUG=1` also prints each row's samples and writes
//! them, with every trial, to `target/bench/staleness-debug.json`. Last, what a session
//! read costs through the late node right after a write (replicas asked, latency),
//! beside the same read without one (3000 each).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use plotters::prelude::*;
use quorumkv::pbs::{Prediction, T_MS, predict};
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

/// Wait until `at`: sleep most of the way on a blocking thread (the runtime's timers tick
/// in milliseconds), spin the last 300 µs there.
async fn until(at: Instant) {
    if at <= Instant::now() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        let lead = Duration::from_micros(300);
        let now = Instant::now();
        if at > now + lead {
            std::thread::sleep(at - now - lead);
        }
        while Instant::now() < at {
            std::hint::spin_loop();
        }
    })
    .await;
}

/// One trial: the delay from the ack to the read's send as it really was (ms), whether
/// the read missed the write, and which node it went through (0-based).
#[derive(Clone, Copy)]
struct Trial {
    t_ms: f64,
    stale: bool,
    reader: usize,
}

/// A row: (R, W, t ms, its trials, the prediction from the samples right after it).
type Row = (usize, usize, f64, Vec<Trial>, Prediction);

/// `count` trials of (R, W, t), one at a time; the writes go through `writer`, each read
/// through a home replica picked at random.
async fn trials(
    writer: Client,
    readers: Vec<Client>,
    (r, w, t): (usize, usize, f64),
    count: u64,
    tag: String,
    mut pick: u64,
) -> anyhow::Result<(Vec<Trial>, Vec<u32>)> {
    let (mut out, mut client_us) = (Vec::with_capacity(count as usize), vec![]);
    for i in 0..count {
        let key = format!("stale-{r}-{w}-{t}-{tag}-{i}");
        writer.put(key.clone(), "v").w(level(w)).timeout(Duration::from_secs(2)).await?;
        let acked = Instant::now();
        until(acked + Duration::from_secs_f64(t / 1000.0)).await;
        pick ^= pick << 13;
        pick ^= pick >> 7;
        pick ^= pick << 17;
        let reader = (pick % 3) as usize;
        let sent = Instant::now();
        let got = readers[reader].get(key).r(level(r)).timeout(Duration::from_secs(2)).await?;
        if r == 1 {
            // An R = one read is the client's round trip (and a lookup): its legs.
            client_us.push(sent.elapsed().as_micros() as u32);
        }
        out.push(Trial { t_ms: (sent - acked).as_secs_f64() * 1000.0, stale: !got.found, reader });
    }
    Ok((out, client_us))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let delay = env("QKV_STALE_DELAY_MS", 5);
    let trials_per_row = env("QKV_STALE_TRIALS", 10_000).max(6);
    let parallel = env("QKV_STALE_PARALLEL", 4).clamp(1, 32);
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
    let mut client_us: Vec<u32> = vec![];
    let mut dump = vec![];
    let debug_on = std::env::var("QKV_STALE_DEBUG").is_ok();
    for (r, w) in PAIRS {
        for &t in &T_MS {
            let count = if t <= 10.0 { trials_per_row } else { trials_per_row / 6 };
            // `parallel` writers at once, each one trial at a time, on their own keys.
            let mut tasks = vec![];
            for k in 0..parallel {
                let share = count / parallel + u64::from(k < count % parallel);
                let seed = 0x9e37_79b9_7f4a_7c15u64
                    ^ (k + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)
                    ^ t.to_bits()
                    ^ ((r * 16 + w) as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                let job = trials(writer.clone(), readers.clone(), (r, w, t), share, k.to_string(), seed | 1);
                tasks.push(tokio::spawn(job));
            }
            let (mut row, mut row_client_us) = (vec![], vec![]);
            for task in tasks {
                let (got, us) = task.await??;
                row.extend(got);
                row_client_us.extend(us);
            }
            // The prediction from the round trips of this very row (the latest samples
            // each node keeps), and this client's own, from the row's R = one reads.
            if !row_client_us.is_empty() {
                client_us = row_client_us;
            }
            let (mut samples, n) = writer.latency_samples().await?;
            samples.client_us = client_us.clone();
            if debug_on {
                println!("after R = {r}, W = {w}, t = {t}:");
                debug(&samples);
                dump.push(json!({"r": r, "w": w, "t": t,
                    "pairs": samples.pairs.iter().map(|((a, b), p)| json!({"from": a, "to": b,
                        "write_us": p.write_us, "read_us": p.read_us})).collect::<Vec<_>>(),
                    "apply_wait_us": samples.apply_wait_us.iter().map(|(k, v)| (k.to_string(), json!(v)))
                        .collect::<serde_json::Map<_, _>>(),
                    "client_us": samples.client_us, "orders": samples.orders}));
            }
            let p = predict(&samples, n, r, w, 200_000, 1).map_err(|e| anyhow::anyhow!(e))?;
            rows.push((r, w, t, row, p));
        }
    }
    if debug_on {
        let trials: Vec<_> = rows
            .iter()
            .flat_map(|(r, w, t, row, _)| row.iter().map(move |x| json!([r, w, t, x.t_ms, x.stale, x.reader + 1])))
            .collect();
        std::fs::create_dir_all("target/bench")?;
        std::fs::write(
            "target/bench/staleness-debug.json",
            serde_json::to_string(&json!({"samples": dump, "trials": trials}))?,
        )?;
    }
    report(&rows, delay)?;
    session_cost(&writer, &readers[2], trials_per_row.min(3000)).await?;
    Ok(())
}

fn debug(samples: &quorumkv::pbs::Samples) {
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
    println!("client round trips {} µs", med(&samples.client_us));
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

/// A row's measured and predicted stale fractions: the prediction at the delay each of
/// its reads was really sent, averaged (a read leaves a little after its nominal t).
fn fractions(row: &[Trial], p: &Prediction) -> (f64, f64) {
    let n = row.len().max(1) as f64;
    let measured = row.iter().filter(|x| x.stale).count() as f64 / n;
    let predicted = row.iter().map(|x| 1.0 - p.p_at(x.t_ms)).sum::<f64>() / n;
    (measured, predicted)
}

/// The mean delay (ms) a row's reads were sent at.
fn sent_at(row: &[Trial]) -> f64 {
    row.iter().map(|x| x.t_ms).sum::<f64>() / row.len().max(1) as f64
}

fn report(rows: &[Row], delay: u64) -> anyhow::Result<()> {
    let mut text = format!(
        "stale reads after a write's ack: measured vs predicted (PBS, WARS), 3 nodes, N = 3, node 3 applies \
         replica writes 0-{} ms late\n\n R  W   t ms  (sent at)   trials   measured  (95% interval)   predicted   agree\n",
        2 * delay
    );
    let mut json_rows = vec![];
    let mut agree_all = true;
    for (r, w, t, row, p) in rows {
        let count = row.len();
        let (m, pred) = fractions(row, p);
        let sent = sent_at(row);
        let half = 1.96 * (m * (1.0 - m) / count.max(1) as f64).sqrt();
        let tolerance = (0.1 * m).max(0.005);
        let agree = (pred - m).abs() <= tolerance;
        agree_all &= agree;
        text += &format!(
            "{r:>2} {w:>2} {t:>6} {sent:>9.3} {count:>8}   {:>7.2}%  ({:>5.2}-{:>5.2}%)   {:>8.2}%   {}\n",
            100.0 * m,
            100.0 * (m - half).max(0.0),
            100.0 * (m + half).min(1.0),
            100.0 * pred,
            if agree { "yes" } else { "NO" }
        );
        json_rows.push(json!({"r": r, "w": w, "t_ms": t, "sent_at_ms": sent, "trials": count,
            "stale": row.iter().filter(|x| x.stale).count(), "measured": m, "predicted": pred, "agree": agree}));
    }
    for (r, w, _, _, p) in rows.iter().filter(|row| row.2 == 10.0) {
        text += &format!(
            "predicted after the t = 10 ms row: R = {r}, W = {w} sees the write with 99.9 % at t = {:.2} ms\n",
            p.t_for(0.999)
        );
    }
    text += &format!("\n{}\n", if agree_all { "every row agrees" } else { "some rows do not agree (see NO)" });
    print!("{text}");
    let dir = std::path::Path::new("target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("staleness.txt"), &text)?;
    std::fs::write(dir.join("staleness.json"), serde_json::to_string_pretty(&json!({"rows": json_rows}))?)?;
    plot(&dir.join("staleness.svg"), rows, delay)?;
    println!("wrote target/bench/staleness.{{txt,json,svg}}");
    Ok(())
}

fn plot(path: &std::path::Path, rows: &[Row], delay: u64) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.iter().map(|r| fractions(&r.3, &r.4).0).fold(0.05, f64::max) * 100.0 * 1.2;
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
    for (i, (r, w)) in PAIRS.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let of_pair: Vec<&Row> = rows.iter().filter(|row| (row.0, row.1) == (*r, *w)).collect();
        let at = |row: &Row| sent_at(&row.3) + 1.0;
        let line: Vec<(f64, f64)> = of_pair.iter().map(|row| (at(row), 100.0 * fractions(&row.3, &row.4).1)).collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(format!("R = {r}, W = {w}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        let points =
            of_pair.iter().map(|row| Circle::new((at(row), 100.0 * fractions(&row.3, &row.4).0), 4, color.filled()));
        chart.draw_series(points)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
