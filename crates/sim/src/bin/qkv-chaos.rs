//! `qkv-chaos`: real `qkv-node` processes in network namespaces, faults injected with
//! SIGKILL, SIGSTOP, partitions, packet loss and delay, concurrent clients through the
//! client crate, and the simulator's checker over the recorded history.
//!
//! One more node (unless `--no-join`) starts outside the cluster, on its own host
//! (namespace and address), and joins it over the network a third of the way in
//! through the `qkv` CLI (staged and committed between two faults; its data moves while
//! they go on); the checker runs once the join's transition has ended on every node,
//! with the joiner among the home replicas it inspects.
//!
//! Needs root (it creates namespaces `qkvch-*` with veth pairs on a private bridge in
//! 10.213.77.0/24). Without root it says so and exits 0. Everything it creates is
//! removed at the end, and stale namespaces of an earlier run at the start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use qkv_client::{Client, ClientConfig, Error as ClientError};
use qkv_proto::NodeId;
use qkv_sim::checker::{self, Facts, FinalKey};
use qkv_sim::history::{Entry, History, OpKind, Outcome};
use qkv_sim::workload::{ClientState, Workload};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const NS: &str = "qkvch";
const SUBNET: &str = "10.213.77";
const PORT: u16 = 7000;

/// Chaos on real processes: faults, concurrent clients, then the consistency checker.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Nodes (3 to 7), and one more that joins during the run (unless --no-join).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(3..=7))]
    nodes: u16,
    /// Seconds of faults and client traffic.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: u32,
    /// Seed of the fault schedule and the clients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Start every node as a member (no join during the run).
    #[arg(long)]
    no_join: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: run the clients and the checker (inside the client namespace).
    Drive {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        duration: u64,
        #[arg(long)]
        clients: u32,
        #[arg(long)]
        seed: u64,
    },
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn ns(i: usize) -> String {
    format!("{NS}-n{i}")
}

fn in_ns(n: &str, args: &[&str]) -> bool {
    let mut v = vec!["ip", "netns", "exec", n];
    v.extend_from_slice(args);
    sh(&v)
}

/// Namespaces `qkvch-sw` (a bridge), `qkvch-n1..N` (nodes) and `qkvch-cl` (clients).
struct Net {
    nodes: usize,
    netem: bool,
    nft: bool,
}

impl Net {
    fn names(nodes: usize) -> Vec<String> {
        let mut v = vec![format!("{NS}-sw"), format!("{NS}-cl")];
        v.extend((1..=nodes).map(ns));
        v
    }

    fn teardown_stale() {
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with(NS)) {
                    sh(&["ip", "netns", "del", name]);
                }
            }
        }
    }

    fn setup(nodes: usize) -> anyhow::Result<Net> {
        Self::teardown_stale();
        let sw = format!("{NS}-sw");
        must(&["ip", "netns", "add", &sw])?;
        must(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        must(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        let hosts: Vec<(String, String)> = (1..=nodes)
            .map(|i| (ns(i), format!("{SUBNET}.{i}")))
            .chain(std::iter::once((format!("{NS}-cl"), format!("{SUBNET}.100"))))
            .collect();
        for (k, (name, ip)) in hosts.iter().enumerate() {
            let host_end = format!("qkvch{k}");
            must(&["ip", "netns", "add", name])?;
            must(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", name])?;
            must(&["ip", "link", "set", &host_end, "netns", &sw])?;
            must(&["ip", "-n", &sw, "link", "set", &host_end, "master", "br0"])?;
            must(&["ip", "-n", &sw, "link", "set", &host_end, "up"])?;
            must(&["ip", "-n", name, "link", "set", "lo", "up"])?;
            must(&["ip", "-n", name, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            must(&["ip", "-n", name, "link", "set", "eth0", "up"])?;
        }
        let netem = in_ns(&ns(1), &["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "1ms"]);
        if netem {
            in_ns(&ns(1), &["tc", "qdisc", "del", "dev", "eth0", "root"]);
        }
        let nft = Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success());
        let net = Net { nodes, netem, nft };
        if nft {
            for i in 1..=nodes {
                in_ns(&ns(i), &["nft", "add", "table", "inet", "chaos"]);
                in_ns(
                    &ns(i),
                    &["nft", "add", "chain", "inet", "chaos", "out", "{ type filter hook output priority 0; }"],
                );
            }
        }
        Ok(net)
    }

    /// Node `i` drops what it sends to `to` (one direction).
    fn cut(&self, i: usize, to: usize) {
        let target = format!("{SUBNET}.{to}/32");
        if self.nft {
            in_ns(
                &ns(i),
                &["nft", "add", "rule", "inet", "chaos", "out", "ip", "daddr", &format!("{SUBNET}.{to}"), "drop"],
            );
        } else {
            in_ns(&ns(i), &["ip", "route", "add", "blackhole", &target]);
        }
    }

    /// Node `i` loses `pct` % of what it sends and delays it by about `delay_ms`.
    fn degrade(&self, i: usize, pct: u32, delay_ms: u32) {
        if self.netem {
            let (d, l) = (format!("{delay_ms}ms"), format!("{pct}%"));
            in_ns(&ns(i), &["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &d, &d, "loss", &l]);
            return;
        }
        if self.nft {
            let rule = format!("numgen random mod 100 < {pct} drop");
            let mut v = vec!["nft", "add", "rule", "inet", "chaos", "out"];
            v.extend(rule.split(' '));
            in_ns(&ns(i), &v);
        }
        // No netem in this kernel: queueing delay from a slow token bucket instead.
        in_ns(
            &ns(i),
            &[
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                "2mbit",
                "burst",
                "16kb",
                "latency",
                &format!("{}ms", delay_ms.max(10)),
            ],
        );
    }

    fn heal(&self) {
        for i in 1..=self.nodes {
            if self.nft {
                in_ns(&ns(i), &["nft", "flush", "chain", "inet", "chaos", "out"]);
            }
            in_ns(&ns(i), &["tc", "qdisc", "del", "dev", "eth0", "root"]);
            for j in 1..=self.nodes {
                in_ns(&ns(i), &["ip", "route", "del", "blackhole", &format!("{SUBNET}.{j}/32")]);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in Self::names(self.nodes) {
            sh(&["ip", "netns", "del", &n]);
        }
    }
}

struct Nodes {
    dir: PathBuf,
    bin: PathBuf,
    procs: BTreeMap<usize, Child>,
}

impl Nodes {
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("node{i}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns(i)])
            .arg(&self.bin)
            .arg("--config")
            .arg(self.dir.join(format!("node{i}.toml")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.procs.insert(i, child);
        Ok(())
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = self.procs.get(&i) {
            sh(&["kill", &format!("-{sig}"), &c.id().to_string()]);
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs.remove(&i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let ids: Vec<usize> = self.procs.keys().copied().collect();
        for i in ids {
            self.signal(i, "CONT");
            self.kill(i);
        }
    }
}

fn addr(i: usize) -> String {
    format!("{SUBNET}.{i}:{PORT}")
}

/// Configs of nodes `1..=nodes`: the first `members` form the cluster; the others have the
/// members as their seeds, so they start outside it and join it later.
fn write_configs(dir: &Path, nodes: usize, members: usize) -> anyhow::Result<()> {
    qkv_transport::certs::generate(
        &dir.join("certs"),
        &(1..=nodes as u32).collect::<Vec<_>>(),
        &["client"],
        &["admin"],
    )?;
    let peers: String = (1..=members).map(|i| format!("{{ id = {i}, addr = \"{}\" }},", addr(i))).collect();
    for i in 1..=nodes {
        std::fs::write(
            dir.join(format!("node{i}.toml")),
            format!(
                "id = {i}\nlisten = \"{SUBNET}.{i}:{PORT}\"\ndata_dir = \"data/node{i}\"\nworker_threads = 1\npeers = [{peers}]\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{i}.pem\"\nkey = \"certs/node-{i}.key\"\n"
            ),
        )?;
    }
    let list: Vec<String> = (1..=members).map(|i| format!("\"{}\"", addr(i))).collect();
    // The clients' certificate, and the operator's for `qkv cluster` (it may change membership).
    for (file, cert) in [("client.toml", "client"), ("admin.toml", "admin")] {
        std::fs::write(
            dir.join(file),
            format!(
                "nodes = [{}]\ntimeout_ms = 1000\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{cert}.pem\"\nkey = \"certs/{cert}.key\"\n",
                list.join(", ")
            ),
        )?;
    }
    Ok(())
}

/// The client driver's process, killed if the run ends early (an error).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The `qkv` CLI, run on the client host with the run's `admin.toml`.
struct Admin {
    dir: PathBuf,
    qkv: PathBuf,
}

impl Admin {
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{NS}-cl")])
            .arg(&self.qkv)
            .arg("--config")
            .arg(self.dir.join("admin.toml"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Node `node`'s layout epoch and phase, from `qkv cluster show --json`.
    fn show(&self, node: usize) -> Result<(u64, String), String> {
        self.show_json(node).and_then(|(v, out)| {
            let epoch = v["epoch"].as_u64().ok_or_else(|| format!("no epoch in {out}"))?;
            Ok((epoch, v["phase"].as_str().unwrap_or_default().to_string()))
        })
    }

    fn show_json(&self, node: usize) -> Result<(serde_json::Value, String), String> {
        let out = self.run(&["cluster", "show", "--json", "--node", &addr(node)])?;
        let v = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        Ok((v, out))
    }

    /// The epoch of node `node`'s newest layout if `id` is a member of it.
    fn member_in(&self, node: usize, id: usize) -> Option<u64> {
        let (v, _) = self.show_json(node).ok()?;
        let newest = v["layouts"].as_array()?.last()?;
        let member = newest["members"].as_array()?.iter().any(|m| m["node"].as_u64() == Some(id as u64));
        member.then(|| v["epoch"].as_u64()).flatten()
    }

    /// Join node `joiner` to the cluster of nodes `1..=members`: once it holds the
    /// cluster's layout (learned from its seeds), stage the join on a member and commit
    /// it, trying the members in turn (a fault may have just been undone). The new epoch.
    fn join(&self, joiner: usize, members: usize) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.show(joiner) {
                Ok((e, _)) if e >= 1 => break,
                Ok((e, _)) => last = format!("node {joiner} holds epoch {e}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut m = 0;
        loop {
            m = m % members + 1;
            anyhow::ensure!(Instant::now() < deadline, "node {joiner} did not join within 60 s: {last}");
            // A commit whose answer was lost may have taken.
            if let Some(epoch) = self.member_in(m, joiner) {
                return Ok(epoch);
            }
            let node = addr(m);
            if let Err(e) = self.run(&["cluster", "join", &addr(joiner), "--node", &node]) {
                last = format!("stage on node {m}: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            match self.run(&["cluster", "commit", "--json", "--node", &node]) {
                Ok(out) => {
                    let v: serde_json::Value = serde_json::from_str(&out)?;
                    return v["epoch"].as_u64().ok_or_else(|| anyhow::anyhow!("no epoch in {out}"));
                }
                Err(e) => {
                    last = format!("commit on node {m}: {e}");
                    let _ = self.run(&["cluster", "abort", "--node", &node]);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Until every node of `nodes` holds `epoch` with no transition running.
    fn wait_stable(&self, nodes: std::ops::RangeInclusive<usize>, epoch: u64, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        for i in nodes {
            loop {
                let now = self.show(i);
                if matches!(&now, Ok((e, p)) if *e >= epoch && p == "stable") {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node {i} did not reach a stable layout epoch {epoch} within {within:?}: {now:?}"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    }
}

fn ensure_tools() {
    let have =
        |c: &str| Command::new(c).arg("-V").output().is_ok() || Command::new(c).arg("--version").output().is_ok();
    if !have("ip") || !have("nft") {
        println!("chaos: installing iproute2 and nftables");
        sh(&["apt-get", "update", "-qq"]);
        sh(&["apt-get", "install", "-y", "-qq", "iproute2", "nftables"]);
    }
}

fn orchestrate(a: &Args) -> anyhow::Result<bool> {
    let members = a.nodes as usize;
    let nodes = if a.no_join { members } else { members + 1 };
    ensure_tools();
    let dir = std::env::temp_dir().join(format!("qkv-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    write_configs(&dir, nodes, members)?;
    let net = Net::setup(nodes)?;
    println!(
        "chaos: {members} nodes{} in namespaces {NS}-n1..{nodes} ({SUBNET}.0/24), {} clients, {} s; delay/loss via {}",
        if nodes > members { format!(" and node {nodes} joining") } else { String::new() },
        a.clients,
        a.duration,
        if net.netem {
            "tc netem"
        } else if net.nft {
            "nftables (random drop) + tbf (queueing delay); this kernel has no netem"
        } else {
            "tbf only"
        }
    );
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("qkv-node");
    anyhow::ensure!(bin.exists(), "{} is missing: build the workspace binaries first", bin.display());
    let admin = Admin { dir: dir.clone(), qkv: exe.with_file_name("qkv") };
    anyhow::ensure!(admin.qkv.exists(), "{} is missing: build the workspace binaries first", admin.qkv.display());
    let mut procs = Nodes { dir: dir.clone(), bin, procs: BTreeMap::new() };
    for i in 1..=members {
        procs.start(i)?;
    }
    // Nodes faults may hit: the members, and the joiner once it runs.
    let mut running = members;
    let mut joined: Option<(u64, Instant)> = None;
    std::thread::sleep(Duration::from_secs(2));
    println!("chaos: configs and node logs in {}", dir.display());
    let mut driver = Driver(
        Command::new("ip")
            .args(["netns", "exec", &format!("{NS}-cl")])
            .arg(&exe)
            .args(["drive", "--dir"])
            .arg(&dir)
            .args([
                "--duration",
                &a.duration.to_string(),
                "--clients",
                &a.clients.to_string(),
                "--seed",
                &a.seed.to_string(),
            ])
            .spawn()?,
    );

    let mut rng = StdRng::seed_from_u64(a.seed);
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(a.duration);
    let (mut killed, mut stopped): (BTreeSet<usize>, BTreeSet<usize>) = (BTreeSet::new(), BTreeSet::new());
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..4000)));
        // Undo the last fault before the next one: at most one at a time.
        for i in std::mem::take(&mut killed) {
            procs.start(i)?;
        }
        for i in std::mem::take(&mut stopped) {
            procs.signal(i, "CONT");
        }
        net.heal();
        if Instant::now() >= end {
            break;
        }
        if running < nodes && Instant::now() + Duration::from_secs(a.duration * 2 / 3) >= end {
            procs.start(nodes)?;
            running = nodes;
            let epoch = admin.join(nodes, members)?;
            println!(
                "chaos: node {nodes} ({}) joined through the qkv CLI: layout epoch {epoch} committed",
                addr(nodes)
            );
            joined = Some((epoch, Instant::now()));
        }
        let i = rng.random_range(1..=running);
        match rng.random_range(0..6) {
            0 => {
                procs.kill(i);
                killed.insert(i);
                *faults.entry("SIGKILL").or_default() += 1;
            }
            1 => {
                procs.signal(i, "STOP");
                stopped.insert(i);
                *faults.entry("SIGSTOP").or_default() += 1;
            }
            2 | 3 => {
                let side: Vec<usize> = (1..=running).filter(|_| rng.random_bool(0.5)).collect();
                let oneway = rng.random_bool(0.3);
                for &x in &side {
                    for y in (1..=running).filter(|y| !side.contains(y)) {
                        net.cut(x, y);
                        if !oneway {
                            net.cut(y, x);
                        }
                    }
                }
                *faults.entry(if oneway { "partition (one-way)" } else { "partition" }).or_default() += 1;
            }
            _ => {
                net.degrade(i, rng.random_range(5..30), rng.random_range(10..100));
                *faults.entry("loss and delay").or_default() += 1;
            }
        }
    }
    for i in killed {
        procs.start(i)?;
    }
    for i in stopped {
        procs.signal(i, "CONT");
    }
    net.heal();
    let f: Vec<String> = faults.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("chaos: faults injected: {}; healed", f.join(", "));
    if let Some((epoch, at)) = joined {
        // The checker inspects the new layout's home replicas: the transition ends first.
        admin.wait_stable(1..=nodes, epoch, Duration::from_secs(180))?;
        println!(
            "chaos: the join's transition ended on all {nodes} nodes {:.1} s after its commit",
            at.elapsed().as_secs_f64()
        );
    } else if running < nodes {
        anyhow::bail!("the run ended before node {nodes} joined: give it a longer --duration");
    }
    std::fs::write(dir.join("healed"), b"")?;
    println!("chaos: waiting for the checker");
    let deadline = Instant::now() + Duration::from_secs(240);
    let ok = loop {
        if let Some(st) = driver.0.try_wait()? {
            break st.success();
        }
        if Instant::now() > deadline {
            anyhow::bail!("the client driver did not finish within 240 s of healing");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(procs);
    drop(net);
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("chaos: node logs kept in {}", dir.display());
    }
    Ok(ok)
}

/// Run the clients until the deadline, wait for healing and for replicas to agree, check.
async fn drive(dir: PathBuf, duration: u64, clients: u32, seed: u64) -> anyhow::Result<bool> {
    let cfg = ClientConfig::load(&dir.join("client.toml"), |_| None)?;
    let n = 3;
    let client = cfg.builder().build()?;
    let start = Instant::now();
    let history = Arc::new(Mutex::new(History::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for id in 1..=clients {
        let (client, history) = (client.clone(), history.clone());
        tasks.spawn(async move {
            let workload = [Workload::Mixed, Workload::Set, Workload::Register][(id % 3) as usize];
            let mut rng = StdRng::seed_from_u64(seed * 1000 + u64::from(id));
            let mut state = ClientState::new(usize::MAX);
            let mut seq = 0;
            while start.elapsed() < Duration::from_secs(duration) {
                seq += 1;
                let (key, op, _) = state.next(id, seq, workload, n, &mut rng);
                let invoked_ms = start.elapsed().as_millis() as u64;
                let (outcome, write_id) = execute(&client, &key, &op).await;
                state.completed(workload, &key, &op, &outcome);
                let completed_ms = start.elapsed().as_millis() as u64;
                history.lock().expect("history").entries.push(Entry {
                    client: id,
                    key,
                    op,
                    invoked_ms,
                    completed_ms,
                    outcome,
                    // The client fails over between nodes, so any request may have been tried twice.
                    duplicated: true,
                    write_id,
                    session: false,
                    forged_floor: false,
                });
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let healed = dir.join("healed");
    // Healing includes the end of a join's transition (up to 180 s).
    let wait_until = Instant::now() + Duration::from_secs(240);
    while !healed.exists() && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No client reads from here on: handoff and anti-entropy alone must make every key's
    // home replicas agree. Inspect reads replicas without repairing them.
    let history = std::mem::take(&mut *history.lock().expect("history"));
    let keys: BTreeSet<Vec<u8>> = history.entries.iter().map(|e| e.key.clone()).collect();
    let settle = Instant::now();
    let (finals, unreadable) = loop {
        let mut finals = BTreeMap::new();
        let mut unreadable = 0;
        for key in &keys {
            match client.inspect(key.clone()).await {
                Ok(ins) if ins.replicas.iter().all(|r| r.1.is_ok()) => {
                    let replicas: Vec<(NodeId, Option<qkv_proto::DvvSet>)> =
                        ins.replicas.into_iter().map(|(id, r)| (id, r.ok().flatten())).collect();
                    finals.insert(key.clone(), FinalKey { replicas, purged: Default::default(), homes_ever: vec![] });
                }
                _ => unreadable += 1,
            }
        }
        if (unreadable == 0 && finals.values().all(FinalKey::agrees)) || settle.elapsed() > Duration::from_secs(90) {
            break (finals, unreadable);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("chaos: replicas agreed {:.1} s after healing, without reads", settle.elapsed().as_secs_f64());
    anyhow::ensure!(unreadable == 0, "{unreadable} keys could not be read from every home replica after healing");
    let destroyed = std::collections::BTreeSet::new();
    let facts =
        Facts { n, finals: &finals, set_workload: true, check_convergence: true, destroyed: &destroyed, wipes: &[] };
    let report = checker::check(&history, &facts);
    let acked = history.entries.iter().filter(|e| e.is_acked_put()).count();
    let unknown = history.entries.iter().filter(|e| matches!(e.outcome, Outcome::Unknown | Outcome::Failed(_))).count();
    println!(
        "chaos: {} operations ({acked} acknowledged writes, {} strict reads checked, {unknown} failed or unanswered) on {} keys",
        history.entries.len(),
        report.reads,
        keys.len()
    );
    for v in report.violations.iter().take(5) {
        println!("  {v}\n{}", checker::trace(&history, &v.key));
    }
    println!("chaos: {} violations", report.violations.len());
    Ok(report.violations.is_empty())
}

/// Run `op`: its outcome, and a put's write id (when it was answered).
async fn execute(client: &Client, key: &[u8], op: &OpKind) -> (Outcome, Option<u64>) {
    let mut write_id = None;
    let result = match op {
        OpKind::Get { r, strict } => {
            let mut g = client.get(key.to_vec()).r(*r);
            if *strict {
                g = g.strict();
            }
            g.await.map(|got| Outcome::Get { values: got.values, context: got.context })
        }
        OpKind::Put { value, context, w, strict } => {
            let req = match value {
                Some(v) => client.put(key.to_vec(), v.clone()),
                None => client.delete(key.to_vec()),
            };
            let mut p = req.context(context.clone()).w(*w);
            if *strict {
                p = p.strict();
            }
            p.await.map(|r| {
                write_id = Some(r.write_id);
                Outcome::Put { context: r.context, dot: r.dot }
            })
        }
    };
    let outcome = match result {
        Ok(o) => o,
        Err(ClientError::Cluster(e)) => Outcome::Failed(e.to_string()),
        Err(_) => Outcome::Unknown,
    };
    (outcome, write_id)
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Some(Cmd::Drive { dir, duration, clients, seed }) = a.cmd {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        return match rt.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(drive(dir, duration, clients, seed))) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("chaos driver: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.ok().as_deref() != Some("0") {
        println!("chaos: skipped: network namespaces need root (run `sudo make chaos`)");
        return ExitCode::SUCCESS;
    }
    match orchestrate(&a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            Net::teardown_stale();
            ExitCode::from(2)
        }
    }
}
