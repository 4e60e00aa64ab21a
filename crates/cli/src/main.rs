//! `qkv`: the quorumkv command-line client, over the `qkv-client` library.
//!
//! # Layout
//! - this file: the commands (clap), their text and JSON output, and `qkv certs`.
//! - `cluster.rs`: `qkv cluster ...` (membership changes) and the membership part of `qkv status`.

mod cluster;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use qkv_client::{Client, ClientConfig, Context, Level};
use serde_json::json;

/// Talk to a quorumkv cluster.
///
/// Run from the repository root after `make cluster`, qkv finds the local cluster
/// through cluster/client.toml. Exit status: 0 on success, 1 when a get finds
/// nothing, 2 on any error (with a one-line message on stderr).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Client config file [default: cluster/client.toml].
    #[arg(long, global = true, env = "QKV_CLIENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Common {
    /// Only the key's home replicas count.
    #[arg(long)]
    strict: bool,
    /// Deadline in milliseconds [default: the config's timeout_ms].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write VALUE (`-` reads stdin) under KEY; prints the new context, which covers this
    /// write and what --context covered, never a concurrent write.
    Put {
        /// The key.
        key: String,
        /// The value, or `-` for stdin.
        value: String,
        /// Replicas that must acknowledge: one, two, three, quorum, all or a number.
        #[arg(long)]
        w: Option<Level>,
        /// Context from an earlier get (or put): replace the values it returned.
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Read KEY: each sibling value on its own line, then `context: TOKEN`.
    Get {
        /// The key.
        key: String,
        /// Replicas that must answer: one, two, three, quorum, all or a number.
        #[arg(long)]
        r: Option<Level>,
        /// Print only the context token, for a later write: `ctx=$(qkv get k --context-only)`.
        #[arg(long, conflicts_with = "json")]
        context_only: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Delete KEY (a tombstone); pass --context to delete exactly what a get returned.
    Delete {
        /// The key.
        key: String,
        /// Replicas that must acknowledge.
        #[arg(long)]
        w: Option<Level>,
        /// Context from an earlier get.
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Every node's view of the cluster: liveness as seen by each node, ownership, hint
    /// backlog, anti-entropy, and membership: layout epoch, phase of a change, staged
    /// changes, and the range transfers of a change (done, left, rate, ETA).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Each node's statistics: latency per operation and level, errors, read repairs,
    /// siblings per read, hints, and time to all replicas (replication lag).
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// How stale reads are, predicted: the probability that a read issued t ms after a
    /// write was acknowledged returns it (t-visibility), at t = 0, 1, 2, 5, 10 and 50 ms
    /// and the t at which it reaches 99.9 %, for the given R and W and for every pair.
    ///
    /// From the cluster's live measurements (each node's last 512 replica writes and
    /// replica reads to each peer, and how long its last 4096 replica writes waited
    /// before their apply), the ring's placement of keys, and this
    /// command's own round trips for the client's legs, with the WARS model of Bailis
    /// et al. (VLDB 2012, "Probabilistically Bounded Staleness") following this store's
    /// paths: the write's coordinator is the key's first home replica (applied there at
    /// once), a read asks its coordinator's own copy and R - 1 other replicas.
    /// R + W > N is always 100 %. Write and read some keys first: no round trips, no
    /// prediction. `make bench-staleness` sets it beside measured stale reads.
    Pbs {
        /// Replicas per key (default: the cluster's).
        #[arg(long)]
        n: Option<usize>,
        /// Replicas a read waits for.
        #[arg(long, default_value_t = 1)]
        r: usize,
        /// Replicas a write waits for.
        #[arg(long, default_value_t = 1)]
        w: usize,
        /// Monte Carlo trials per (R, W).
        #[arg(long, default_value_t = qkv_client::pbs::TRIALS_DEFAULT)]
        trials: usize,
        /// Seed of the draws (the same samples and seed give the same prediction).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The preference list (home replicas) of KEY.
    Ring {
        /// The key.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What each home replica holds for KEY: version vector and values, unmerged.
    Inspect {
        /// The key.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the cluster's members: stage join, leave or replace, look at the plan, commit.
    ///
    /// Changes are staged on one node and kept there until committed or aborted, so every
    /// cluster subcommand goes to the same node: the first of the client config's nodes,
    /// or --node ADDR. A commit is a vote among the members (two conflicting commits
    /// cannot both happen: the loser is told to re-plan); data then moves in the
    /// background while reads and writes go on. Errors exit with status 2.
    ///
    /// Typical use: start the new node (its config's peers list members, not itself),
    /// then `qkv cluster join ADDR`, `qkv cluster plan`, `qkv cluster commit`, and watch
    /// `qkv cluster show` until the phase is stable.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Create a cluster CA, node certificates and a client certificate (keeps existing files).
    Certs {
        /// Directory for the PEM files.
        #[arg(long, default_value = "cluster/certs")]
        out: PathBuf,
        /// Node ids to make certificates for, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u32>,
        /// Client certificate names (applications: reads and writes).
        #[arg(long, value_delimiter = ',', default_value = "client")]
        clients: Vec<String>,
        /// Operator certificate names: reads, writes and membership changes (`qkv cluster`).
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        admins: Vec<String>,
    },
}

fn main() -> ExitCode {
    // A closed pipe (`qkv pbs | head`) ends the command quietly, as it does any Unix
    // tool, instead of a panic in `println!` (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: first thing in main, before any other thread exists; it restores the
    // signal's default action and touches no memory.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other error: clap's own text, without its usage footer.
            let text = e.to_string();
            let msg: Vec<&str> =
                text.lines().map(str::trim).take_while(|l| !l.is_empty() && !l.starts_with("Usage:")).collect();
            let msg = msg.join(" ");
            eprintln!("qkv: {}", msg.strip_prefix("error: ").unwrap_or(&msg));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qkv: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qkv: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn show(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) => s.to_string(),
        Err(_) => format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(v)),
    }
}

fn client(config: &Option<PathBuf>, timeout_ms: Option<u64>) -> anyhow::Result<Client> {
    let path = config.clone().unwrap_or_else(|| PathBuf::from("cluster/client.toml"));
    let cfg = ClientConfig::load(&path, |k| std::env::var(k).ok())?;
    let mut b = cfg.builder();
    if let Some(t) = timeout_ms {
        if t == 0 || t > qkv_client::REQUEST_TIMEOUT_MS_MAX {
            bail!("--timeout-ms must be between 1 and {}", qkv_client::REQUEST_TIMEOUT_MS_MAX);
        }
        b = b.timeout(std::time::Duration::from_millis(t));
    }
    Ok(b.build()?)
}

fn context(token: &Option<String>) -> anyhow::Result<Context> {
    match token {
        Some(t) => Ok(Context::decode(t)?),
        None => Ok(Context::empty()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Put { key, value, w, context: ctx, common } => {
            let value = if value == "-" {
                let mut buf = vec![];
                std::io::stdin().read_to_end(&mut buf).context("reading the value from stdin")?;
                buf
            } else {
                value.into_bytes()
            };
            write(&cli.config, key, Some(value), w, ctx, common).await
        }
        Cmd::Delete { key, w, context: ctx, common } => write(&cli.config, key, None, w, ctx, common).await,
        Cmd::Get { key, r, context_only, common } => {
            let c = client(&cli.config, common.timeout_ms)?;
            let mut req = c.get(key.clone());
            if let Some(r) = r {
                req = req.r(r);
            }
            if common.strict {
                req = req.strict();
            }
            let got = req.await?;
            if context_only {
                println!("{}", got.context.encode());
            } else if common.json {
                let values: Vec<String> = got.values.iter().map(|v| show(v)).collect();
                println!(
                    "{}",
                    json!({"key": key, "found": got.found, "values": values, "context": got.context.encode()})
                );
            } else {
                for v in &got.values {
                    println!("{}", show(v));
                }
                if !got.found {
                    eprintln!("not found: {key}");
                }
                println!("context: {}", got.context.encode());
            }
            Ok(if got.found { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Status { json } => status(&client(&cli.config, None)?, json).await,
        Cmd::Stats { json } => stats(&client(&cli.config, None)?, json).await,
        Cmd::Pbs { n, r, w, trials, seed, json } => {
            pbs(&client(&cli.config, None)?, PbsArgs { n, r, w, trials, seed, json }).await
        }
        Cmd::Ring { key, json } => {
            let r = client(&cli.config, None)?.ring(key.clone()).await?;
            if json {
                let reps: Vec<_> = r.replicas.iter().map(|(id, a)| json!({"node": id, "addr": a})).collect();
                println!("{}", json!({"key": key, "replicas": reps}));
            } else {
                for (i, (id, addr)) in r.replicas.iter().enumerate() {
                    println!("{}  node {id}  {addr}", i + 1);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect { key, json } => {
            let r = client(&cli.config, None)?.inspect(key.clone()).await?;
            if json {
                let reps: Vec<_> = r
                    .replicas
                    .iter()
                    .map(|(id, st)| match st {
                        Ok(s) => {
                            let mut v = set_json(&s.clone().unwrap_or_default());
                            v["node"] = json!(id);
                            v
                        }
                        Err(e) => json!({"node": id, "error": e.to_string()}),
                    })
                    .collect();
                let hints: Vec<_> = r
                    .hints
                    .iter()
                    .map(|(node, owner, set, age)| {
                        let mut v = set_json(set);
                        v["node"] = json!(node);
                        v["for"] = json!(owner);
                        v["age_ms"] = json!(age);
                        v
                    })
                    .collect();
                println!("{}", json!({"key": key, "replicas": reps, "hints": hints}));
            } else {
                for (id, st) in &r.replicas {
                    match st {
                        Ok(None) => println!("node {id}: (nothing)"),
                        Ok(Some(s)) => println!("node {id}: {}", set_text(s)),
                        Err(e) => println!("node {id}: error: {e}"),
                    }
                }
                for (node, owner, set, age) in &r.hints {
                    println!(
                        "hint on node {node} for node {owner}: {} (age {:.1} s)",
                        set_text(set),
                        *age as f64 / 1000.0
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cluster { cmd } => cluster::run(&client(&cli.config, None)?, cmd).await,
        Cmd::Certs { out, nodes, clients, admins } => {
            if nodes.is_empty() || nodes.contains(&0) {
                bail!("--nodes takes positive node ids, e.g. --nodes 1,2,3");
            }
            let names: Vec<&str> = clients.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
            let admins: Vec<&str> = admins.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
            if let Some(n) =
                names.iter().chain(&admins).find(|n| n.starts_with("node-") || n.contains(['/', '\\']) || **n == "ca")
            {
                bail!("{n:?} cannot name a client or admin certificate (node-*, ca and paths are taken)");
            }
            if let Some(n) = names.iter().find(|n| admins.contains(n)) {
                bail!("{n:?} is in both --clients and --admins: a certificate has one role");
            }
            let g = qkv_transport::certs::generate(&out, &nodes, &names, &admins)?;
            for p in &g.written {
                println!("wrote {}", p.display());
            }
            if !g.kept.is_empty() {
                println!("kept {} existing files in {}", g.kept.len(), out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `qkv put` and `qkv delete`: a write (`value: None` deletes), printing the new context.
async fn write(
    config: &Option<PathBuf>,
    key: String,
    value: Option<Vec<u8>>,
    w: Option<Level>,
    ctx: Option<String>,
    common: Common,
) -> anyhow::Result<ExitCode> {
    let ctx = context(&ctx)?;
    let c = client(config, common.timeout_ms)?;
    let deleting = value.is_none();
    let mut req = match value {
        Some(v) => c.put(key.clone(), v),
        None => c.delete(key.clone()),
    }
    .context(ctx);
    if let Some(w) = w {
        req = req.w(w);
    }
    if common.strict {
        req = req.strict();
    }
    let r = req.await?;
    if common.json {
        let mut out = json!({
            "key": key,
            "context": r.context.encode(),
            "coordinator": r.coordinator,
            "acks": {"home": r.home_acks.len(), "standin": r.standin_acks.len()},
            "home_acks": r.home_acks,
            "standin_acks": r.standin_acks.iter().map(|(n, o)| json!({"node": n, "for": o})).collect::<Vec<_>>(),
        });
        if deleting {
            out["deleted"] = json!(true);
        }
        println!("{out}");
    } else {
        println!("{}", r.context.encode());
    }
    Ok(ExitCode::SUCCESS)
}

fn set_json(s: &qkv_client::DvvSet) -> serde_json::Value {
    json!({
        "clock": s.clock().0.iter().map(|(a, c)| (qkv_client::actor_name(*a), *c)).collect::<std::collections::BTreeMap<_, _>>(),
        "siblings": s.siblings().iter().map(|x| json!({
            "dot": [qkv_client::actor_name(x.dot.actor), x.dot.counter],
            "value": x.value.as_deref().map(show),
        })).collect::<Vec<_>>(),
    })
}

fn set_text(s: &qkv_client::DvvSet) -> String {
    let clock: Vec<String> = s.clock().0.iter().map(|(a, c)| format!("{}:{c}", qkv_client::actor_name(*a))).collect();
    let vals: Vec<String> =
        s.siblings().iter().map(|x| x.value.as_deref().map(show).unwrap_or_else(|| "<tombstone>".into())).collect();
    format!("clock [{}] values [{}]", clock.join(" "), vals.join(", "))
}

fn bytes_text(b: f64) -> String {
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

fn ms_text(ms: u64) -> String {
    match ms {
        ms if ms >= 3_600_000 => format!("{:.1} h", ms as f64 / 3.6e6),
        ms if ms >= 60_000 => format!("{:.1} min", ms as f64 / 6e4),
        ms => format!("{:.1} s", ms as f64 / 1e3),
    }
}

/// R = one reads `qkv pbs` times for the client's own round trips.
const CLIENT_PROBES: usize = 30;

struct PbsArgs {
    n: Option<usize>,
    r: usize,
    w: usize,
    trials: usize,
    seed: u64,
    json: bool,
}

async fn pbs(c: &Client, a: PbsArgs) -> anyhow::Result<ExitCode> {
    use qkv_client::pbs::{T_MS, TRIALS_MAX, predict};
    if a.trials == 0 || a.trials > TRIALS_MAX {
        bail!("--trials must be 1 to {TRIALS_MAX}");
    }
    let (mut samples, cluster_n) = c.latency_samples().await?;
    // This command's own round trips stand for the client's legs (t counts from the
    // client's receipt of the ack): R = one reads of a few keys nobody writes.
    for i in 0..CLIENT_PROBES {
        let probe = c.get(format!("qkv-pbs-probe-{i}")).r(qkv_client::Level::One);
        let sent = std::time::Instant::now();
        if probe.await.is_ok() {
            samples.client_us.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
    }
    let n = a.n.unwrap_or(cluster_n);
    let given = predict(&samples, n, a.r, a.w, a.trials, a.seed).map_err(|e| anyhow::anyhow!(e))?;
    let mut all = vec![];
    for r in 1..=n {
        for w in 1..=n {
            all.push(predict(&samples, n, r, w, a.trials, a.seed).map_err(|e| anyhow::anyhow!(e))?);
        }
    }
    let counts: usize = samples.pairs.values().map(|p| p.write_us.len() + p.read_us.len()).sum();
    let row = |p: &qkv_client::pbs::Prediction| {
        json!({
            "r": p.r, "w": p.w,
            "p": T_MS.iter().map(|&t| json!({"t_ms": t, "p": p.p_at(t)})).collect::<Vec<_>>(),
            "t_999_ms": p.t_for(0.999),
        })
    };
    if a.json {
        let out = json!({
            "n": n, "trials": a.trials, "seed": a.seed, "nodes": samples.nodes, "samples": counts,
            "placed_by_ring": samples.placed_by_ring(n),
            "given": row(&given), "all": all.iter().map(row).collect::<Vec<_>>(),
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "t-visibility: the chance a read issued t ms after a write's ack returns it (WARS model, {} trials, {counts} \
         round trips from {} nodes, {})",
        a.trials,
        samples.nodes.len(),
        if samples.placed_by_ring(n) {
            "keys placed as the ring places them"
        } else {
            "keys taken as spread evenly: no usable ring placement for this N"
        }
    );
    let pct = |p: f64| format!("{:.2}%", 100.0 * p);
    let line = |p: &qkv_client::pbs::Prediction| {
        let cols: Vec<String> = T_MS.iter().map(|&t| format!("{:>8}", pct(p.p_at(t)))).collect();
        format!("{:>2} {:>2}  {}  {:>10.2}", p.r, p.w, cols.join(" "), p.t_for(0.999))
    };
    let head: Vec<String> = T_MS.iter().map(|t| format!("{:>8}", format!("t={t}ms"))).collect();
    println!("\nN = {n}, R = {}, W = {}:", a.r, a.w);
    println!(" R  W  {}  99.9% at ms", head.join(" "));
    println!("{}", line(&given));
    println!("\nevery (R, W) with N = {n}:");
    println!(" R  W  {}  99.9% at ms", head.join(" "));
    for p in &all {
        println!("{}", line(p));
    }
    Ok(ExitCode::SUCCESS)
}

async fn stats(c: &Client, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut all = vec![];
    for &addr in c.nodes() {
        all.push((addr, c.stats_of(addr).await));
    }
    if all.iter().all(|(_, r)| r.is_err()) {
        bail!("no node answered");
    }
    if as_json {
        let nodes: Vec<_> = all
            .iter()
            .map(|(addr, r)| match r {
                Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                Err(e) => json!({"addr": addr.to_string(), "error": e.to_string()}),
            })
            .collect();
        println!("{}", json!({"nodes": nodes}));
        return Ok(ExitCode::SUCCESS);
    }
    for (addr, r) in &all {
        let s = match r {
            Ok(s) => s,
            Err(e) => {
                println!("{addr}: no answer ({e})\n");
                continue;
            }
        };
        let metrics = s.metrics_addr.as_ref().map(|a| format!(", metrics at http://{a}/metrics")).unwrap_or_default();
        println!("node {} ({addr}), up {}{metrics}", s.node, ms_text(s.uptime_ms));
        println!(
            "  {:<7}{:<8}{:<8}{:>9}{:>8}{:>10}{:>10}{:>10}{:>10}",
            "OP", "LEVEL", "MODE", "COUNT", "ERRORS", "P50 ms", "P99 ms", "P99.9 ms", "MAX ms"
        );
        for o in &s.ops {
            let l = &o.latency_us;
            println!(
                "  {:<7}{:<8}{:<8}{:>9}{:>8}{:>10.3}{:>10.3}{:>10.3}{:>10.3}",
                o.op,
                o.level,
                if o.strict { "strict" } else { "sloppy" },
                l.count,
                o.errors,
                l.p50 / 1e3,
                l.p99 / 1e3,
                l.p999 / 1e3,
                l.max / 1e3
            );
        }
        let errors: Vec<String> = s.errors.iter().map(|(k, v)| format!("{v} {k}")).collect();
        if !errors.is_empty() {
            println!("  errors: {}", errors.join(", "));
        }
        let sib = &s.siblings_per_read;
        println!(
            "  read repairs {}, siblings per read p50 {} p99 {} max {}, hints {} ({}), storage {}",
            s.read_repairs,
            sib.p50,
            sib.p99,
            sib.max,
            s.hints.0,
            bytes_text(s.hints.1 as f64),
            bytes_text(s.storage_bytes as f64)
        );
        let lag = &s.replication_lag_ms;
        println!(
            "  time to all replicas: {} writes, p50 {} ms, p99 {} ms, max {} ms; {} writes still missing a replica\n",
            lag.count, lag.p50, lag.p99, lag.max, s.replication_lag_pending
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(c: &Client, as_json: bool) -> anyhow::Result<ExitCode> {
    let views = c.status().await;
    let infos = cluster::infos(c).await;
    let answered: Vec<_> = views.iter().filter_map(|(_, v)| v.as_ref().ok()).collect();
    let Some(first) = answered.first() else {
        let why: Vec<String> =
            views.iter().filter_map(|(a, v)| v.as_ref().err().map(|e| format!("{a}: {e}"))).collect();
        bail!("no node answered ({})", why.join("; "));
    };
    if as_json {
        let nodes: Vec<_> = views
            .iter()
            .zip(&infos)
            .map(|((addr, v), info)| match v {
                Ok(s) => json!({
                    "cluster": info.as_ref().map(cluster::InfoDto::from),
                    "addr": addr.to_string(), "node": s.node, "n": s.n, "vnodes": s.vnodes,
                    "read_repairs": s.read_repairs,
                    "members": s.members.iter().map(|m| json!({
                        "node": m.node, "addr": m.addr, "up": m.up, "ownership": m.ownership,
                    })).collect::<Vec<_>>(),
                    "hints": serde_json::to_value(&s.hints).unwrap_or_default(),
                    "anti_entropy": serde_json::to_value(&s.aae).unwrap_or_default(),
                    "key_limits": serde_json::to_value(&s.key_limits).unwrap_or_default(),
                }),
                Err(e) => json!({"addr": addr.to_string(), "error": e.to_string()}),
            })
            .collect();
        println!("{}", json!({"nodes": nodes}));
        return Ok(ExitCode::SUCCESS);
    }
    println!("replication factor N={}, {} vnodes per node", first.n, first.vnodes);
    let mut header = format!("{:<6}{:<22}{:>8}", "NODE", "ADDRESS", "OWNS");
    for v in &answered {
        header += &format!("  {:<11}", format!("SEEN BY {}", v.node));
    }
    println!("{header}  REPAIRS  HINTS HELD");
    for m in &first.members {
        let mut line = format!("{:<6}{:<22}{:>7.1}%", m.node, m.addr, m.ownership * 100.0);
        for v in &answered {
            let up = v.members.iter().find(|x| x.node == m.node).map(|x| if x.up { "up" } else { "down" });
            line += &format!("  {:<11}", up.unwrap_or("?"));
        }
        match answered.iter().find(|v| v.node == m.node) {
            Some(v) => {
                println!("{line}  {:<7}  {} ({})", v.read_repairs, v.hints.count, bytes_text(v.hints.bytes as f64))
            }
            None => println!("{line}  -        -"),
        }
    }
    for (addr, v) in &views {
        if let Err(e) = v {
            println!("{addr}: no answer ({e})");
        }
    }
    let backlog: Vec<_> = answered.iter().flat_map(|v| v.hints.owners.iter().map(move |o| (v.node, o))).collect();
    if !backlog.is_empty() {
        println!();
        println!("hint backlog (the replication lag stand-ins owe home replicas):");
        println!(
            "{:<8}{:<10}{:>8}{:>11}{:>10}{:>10}{:>12}  DRAIN",
            "HELD BY", "FOR", "HINTS", "BYTES", "OLDEST", "HINTS/S", "RATE"
        );
        for (holder, o) in backlog {
            let owner = format!("{} ({})", o.owner, if o.owner_up { "up" } else { "down" });
            let drain = match (o.count, o.drain_eta_ms) {
                (0, _) => "done".to_string(),
                (_, Some(eta)) => ms_text(eta),
                (_, None) if !o.owner_up => "owner down".to_string(),
                (_, None) => "-".to_string(),
            };
            println!(
                "{:<8}{:<10}{:>8}{:>11}{:>10}{:>10.1}{:>12}  {}",
                holder,
                owner,
                o.count,
                bytes_text(o.bytes as f64),
                if o.count > 0 { ms_text(o.oldest_age_ms) } else { "-".into() },
                o.rate_hints_per_s,
                format!("{}/s", bytes_text(o.rate_bytes_per_s)),
                drain
            );
        }
    }
    for v in &answered {
        if v.hints.refused > 0 {
            println!("node {}: {} hints refused at a limit", v.node, v.hints.refused);
        }
        if v.hints.redirected + v.hints.expired > 0 {
            println!(
                "node {}: {} hints handed to another home replica (owner down past half the tombstone grace), \
                 {} dropped past the grace",
                v.node, v.hints.redirected, v.hints.expired
            );
        }
        let k = &v.key_limits;
        if k.writes_refused + k.merges_refused > 0 {
            println!(
                "node {}: {} writes and {} replica merges refused at the per-key limit ({} siblings, {})",
                v.node,
                k.writes_refused,
                k.merges_refused,
                k.siblings_max,
                bytes_text(k.bytes_max as f64)
            );
        }
    }
    println!();
    println!("anti-entropy:");
    for v in &answered {
        println!("node {}: {}", v.node, aae_line(&v.aae));
    }
    let infos: Vec<_> = infos.iter().flatten().collect();
    cluster::print_status(&infos);
    Ok(ExitCode::SUCCESS)
}

/// One line of anti-entropy progress.
fn aae_line(a: &qkv_client::AaeStatus) -> String {
    if !a.enabled {
        return format!("off; {} tombstones kept (never purged without anti-entropy)", a.tombstones_pending);
    }
    let oldest = a.pairs.iter().map(|p| p.last_exchange_ago_ms).max().flatten();
    let never = a.pairs.iter().filter(|p| p.last_exchange_ago_ms.is_none()).count();
    let last = match (never, oldest) {
        (0, Some(ms)) => format!("every range exchanged within {}", ms_text(ms)),
        (0, None) => "no range to exchange".to_string(),
        (n, _) => format!("{n} range/peer pairs never exchanged yet"),
    };
    format!(
        "{}/{} ranges in sync, {last}; {} keys repaired, {} keys / {} exchanged; {} tombstones pending GC, {} purged \
         ({} purge records held)",
        a.ranges_in_sync,
        a.ranges_in_sync + a.ranges_out_of_sync,
        a.keys_repaired,
        a.keys_exchanged,
        bytes_text(a.bytes_exchanged as f64),
        a.tombstones_pending,
        a.tombstones_purged,
        a.purge_records
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
