//! `qkv-sim`: run many seeded schedules of a simulated cluster and check every history.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use qkv_core::Bugs;
use qkv_sim::{SimConfig, Workload, checker, run_seed};

/// Simulate a quorumkv cluster from seeds and check every history.
///
/// Each seed is one schedule: clients at random consistency levels, crashes with
/// lost unflushed writes, power losses, disk wipes, partitions (symmetric, one-way,
/// flapping), message loss, duplication and reordering, clock jumps; then healing,
/// with no client read, until handoff and anti-entropy make every key's replicas
/// agree. A violation prints the seed, the key's trace and the command that replays
/// it. Exit status 1 when anything is violated.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run just this seed (replay) and print its whole history.
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes, 3 to 7.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(3..=7))]
    nodes: u16,
    /// Replication factor.
    #[arg(long, default_value_t = 3)]
    n: usize,
    /// Clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Operations per client.
    #[arg(long, default_value_t = 40)]
    ops: usize,
    /// mixed, set, register, or all (a different one per seed).
    #[arg(long, default_value = "all")]
    workload: String,
    /// No crashes, partitions or clock jumps.
    #[arg(long)]
    no_faults: bool,
    /// Message loss probability.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Message duplication probability.
    #[arg(long, default_value_t = 0.01)]
    dup: f64,
    /// Share of faults that are a power loss of every node at once.
    #[arg(long, default_value_t = 0.1)]
    power_loss: f64,
    /// Share of faults that wipe one node's disk (it restarts empty, under a new epoch).
    #[arg(long, default_value_t = 0.05)]
    wipe: f64,
    /// Longest crash or partition, ms (nodes purge a tombstone 300 ms after every replica holds it).
    #[arg(long, default_value_t = 3000)]
    outage_ms: u64,
    /// Share of nodes that persist with `buffer` (acked once in the OS buffer, lost by a power
    /// loss; the counter lease is still synced); the rest use `sync`.
    #[arg(long, default_value_t = 0.25)]
    buffer: f64,
    /// Probability that one store operation or flush fails with an I/O error (not while
    /// a node starts, nor after healing).
    #[arg(long, default_value_t = 0.002)]
    storage_errors: f64,
    /// Share of seeds in which an operator changes membership while clients work and faults
    /// strike: one to three joins, leaves (a member retires) and replaces (a member dies for
    /// good, its disk with it, and a new node takes its place), staged and committed with
    /// the admin requests of `qkv cluster`, half of them while another member is down or cut off.
    #[arg(long, default_value_t = 0.5)]
    membership: f64,
    /// Run a deliberately broken core: lww, ack-before-flush, strict-counts-standins, gc-unconfirmed or
    /// vv-context (a put's answer claims concurrent writes of its coordinator, as before dotted contexts)
    /// or lease-not-durable (a counter lease rides in the OS buffer, as before), early-read-switch (during
    /// a layout change, read the new home set before it fetched its ranges), no-joint-writes (during a
    /// layout change, write the new home set alone) or keep-actor (a node that gains ranges keeps writing as
    /// its old actor); the last three show with `--membership 1`. Needs a build with
    /// `--features bugs`: production cores have none of them.
    #[arg(long)]
    bug: Option<String>,
    /// Session clients (every other client) send no session floors: the checker still
    /// holds their reads to the session rules, and shows what a client without sessions sees.
    #[arg(long)]
    no_sessions: bool,
    /// Stop at the first violating seed.
    #[arg(long)]
    fail_fast: bool,
}

fn workload_for(name: &str, seed: u64) -> Result<Workload, String> {
    match name {
        "all" => Ok([Workload::Mixed, Workload::Set, Workload::Register][(seed % 3) as usize]),
        other => other.parse(),
    }
}

/// Parse `--bug`.
fn bugs(name: Option<&str>) -> Result<Bugs, String> {
    let mut b = Bugs::default();
    if name.is_some() && !cfg!(feature = "bugs") {
        return Err("this qkv-sim was built without the deliberate bugs: \
                    cargo run --release -p qkv-sim --features bugs -- --bug …"
            .into());
    }
    match name {
        None => {}
        Some("lww") => b.lww = true,
        Some("ack-before-flush") => b.ack_before_flush = true,
        Some("strict-counts-standins") => b.strict_counts_standins = true,
        Some("gc-unconfirmed") => b.gc_unconfirmed = true,
        Some("vv-context") => b.vv_context = true,
        Some("lease-not-durable") => b.lease_not_durable = true,
        Some("early-read-switch") => b.early_read_switch = true,
        Some("no-joint-writes") => b.no_joint_writes = true,
        Some("keep-actor") => b.keep_actor = true,
        Some(other) => {
            return Err(format!(
                "unknown bug `{other}`: lww, ack-before-flush, strict-counts-standins, gc-unconfirmed, vv-context, \
                 lease-not-durable, early-read-switch, no-joint-writes or keep-actor"
            ));
        }
    }
    Ok(b)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let fail = |msg: String| {
        eprintln!("qkv-sim: {msg}");
        ExitCode::from(2)
    };
    let bugs = match bugs(a.bug.as_deref()) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    if a.n == 0 || a.n > a.nodes as usize {
        return fail(format!("--n must be between 1 and --nodes ({})", a.nodes));
    }
    if !(0.0..=0.5).contains(&a.loss)
        || !(0.0..=0.5).contains(&a.dup)
        || !(0.0..=1.0).contains(&a.power_loss)
        || !(0.0..=1.0).contains(&a.wipe)
        || !(0.0..=1.0).contains(&a.buffer)
        || !(0.0..=0.5).contains(&a.storage_errors)
        || !(0.0..=1.0).contains(&a.membership)
    {
        return fail(
            "--loss, --dup and --storage-errors must be between 0 and 0.5, --power-loss, --wipe, --buffer and \
             --membership between 0 and 1"
                .into(),
        );
    }
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (a.first..a.first.saturating_add(a.seeds)).collect(),
    };
    let bar = ProgressBar::new(seeds.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds  {per_sec}  eta {eta}  {msg}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let (mut ops, mut msgs, mut lost, mut dups, mut cut) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut node_counts = [0u64; 6];
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut bad_seeds, mut violations, mut writes, mut reads) = (0u64, 0usize, 0usize, 0usize);
    let (mut converge_ms, mut unconverged) = (Vec::<u64>::new(), 0u64);
    for &seed in &seeds {
        let workload = match workload_for(&a.workload, seed) {
            Ok(w) => w,
            Err(e) => return fail(e),
        };
        let cfg = SimConfig {
            nodes: a.nodes as usize,
            n: a.n,
            clients: a.clients,
            ops_per_client: a.ops,
            workload,
            faults: !a.no_faults,
            loss: a.loss,
            dup: a.dup,
            power_loss: a.power_loss,
            wipe: a.wipe,
            outage_ms_max: a.outage_ms,
            buffer: a.buffer,
            storage_errors: a.storage_errors,
            keep_epoch: false,
            membership: a.membership,
            sessions: !a.no_sessions,
            bugs,
        };
        let (run, report) = run_seed(seed, &cfg);
        ops += run.counters.ops;
        msgs += run.counters.messages;
        lost += run.counters.lost;
        dups += run.counters.duplicated;
        cut += run.counters.partitioned;
        node_counts[0] += run.counters.hints_redirected;
        node_counts[1] += run.counters.hints_expired;
        node_counts[2] += run.counters.tombstones_purged;
        node_counts[3] += run.counters.key_full;
        node_counts[4] += run.counters.store_errors;
        node_counts[5] += run.counters.flush_errors;
        for (k, v) in &run.counters.faults {
            *faults.entry(k).or_default() += v;
        }
        match run.converged_after_ms {
            Some(ms) => converge_ms.push(ms),
            None => unconverged += 1,
        }
        writes += report.acked_writes;
        reads += report.reads;
        if a.seed.is_some() {
            bar.suspend(|| {
                for key in run.finals.keys() {
                    println!("key {}:\n{}", String::from_utf8_lossy(key), checker::trace(&run.history, key));
                }
                for (t, what) in &run.fault_log {
                    println!("  [{t:>7} ms] {what}");
                }
                println!("history fingerprint {:016x}, virtual time {} ms", run.history.fingerprint(), run.end_ms);
            });
        }
        if !report.violations.is_empty() {
            bad_seeds += 1;
            violations += report.violations.len();
            bar.suspend(|| {
                println!("\nseed {seed} ({workload:?}): {} violation(s)", report.violations.len());
                for v in report.violations.iter().take(3) {
                    println!("  {v}\n{}", checker::trace(&run.history, &v.key));
                }
                for v in report.violations.iter().skip(3) {
                    println!("  also: {v}");
                }
                let features = if a.bug.is_some() { " --features bugs" } else { "" };
                let mut replay = format!(
                    "cargo run --release -p qkv-sim{features} -- --seed {seed} --nodes {} --n {} --clients {} --ops {} \
                     --workload {}",
                    a.nodes,
                    a.n,
                    a.clients,
                    a.ops,
                    format!("{workload:?}").to_lowercase()
                );
                if a.no_faults {
                    replay += " --no-faults";
                }
                if let Some(b) = &a.bug {
                    replay += &format!(" --bug {b}");
                }
                println!(
                    "  replay: {replay} --loss {} --dup {} --power-loss {} --wipe {} --outage-ms {} --buffer {} \
                     --storage-errors {} --membership {}",
                    a.loss, a.dup, a.power_loss, a.wipe, a.outage_ms, a.buffer, a.storage_errors, a.membership
                );
            });
            if a.fail_fast {
                break;
            }
        }
        bar.set_message(format!("{bad_seeds} bad"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} schedules ({} nodes, N={}), {ops} operations ({writes} acknowledged writes and {reads} strict reads checked)",
        bar.position(),
        a.nodes,
        a.n
    );
    println!("messages: {msgs} sent, {lost} lost, {dups} duplicated, {cut} dropped by partitions");
    let [redirected, expired, purged, full, store_errors, flush_errors] = node_counts;
    println!(
        "nodes: {purged} tombstones purged, {redirected} hints handed to another home replica, {expired} hints \
         expired, {full} writes refused at the per-key limit; {store_errors} store and {flush_errors} flush errors \
         injected"
    );
    let f: Vec<String> = faults.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("faults: {}", if f.is_empty() { "none".into() } else { f.join(", ") });
    converge_ms.sort_unstable();
    let pct = |p: f64| converge_ms.get(((converge_ms.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    println!(
        "convergence after healing, no reads: p50 {} ms, p99 {} ms, max {} ms; {unconverged} schedules did not converge by the deadline (30 s, plus 30 s for each membership change not yet settled at healing, at least one)",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "violations: {violations} in {bad_seeds} schedules; {:.1} s ({:.1} s per 1000 seeds)",
        secs,
        secs * 1000.0 / bar.position().max(1) as f64
    );
    if violations > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
