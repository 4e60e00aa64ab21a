//! quorumkv side by side with etcd and Redis, in one run: `make bench-peers`
//! (or `cargo bench --bench peers` once etcd and Redis are installed).
//!
//! It starts a 3-member etcd cluster (Raft, an fsync per write), a Redis primary with
//! two replicas, and a 3-node quorumkv cluster (N = 3), each on free loopback ports in
//! a temporary directory, one system at a time, and runs the same closed loops against
//! each: 1 KiB values over 10 000 keys, at concurrency 1 and 32, `REPS` times (3),
//! printing the median of each row and the ratios the fast-path targets are stated
//! in. Every loader is a task on one current-thread tokio runtime in this process, so
//! the three systems get the same client: Redis over RESP, etcd over its JSON gateway
//! (HTTP/1.1 keep-alive), quorumkv through its client crate (routing by token, the
//! multiplexed QUIC stream). A get reads a key written before; a quorumkv put writes
//! with the context of the task's own last write of the key (an update, no siblings).
//!
//! Rows: `etcd put|get` (linearizable), `redis set` (asynchronous replication),
//! `redis setwait` (SET, then WAIT 1: semi-synchronous), `redis get` (from a replica),
//! `qkv put quorum`, `qkv get one|quorum`, `qkv put quorum sync` (persist = sync:
//! fdatasync before the ack, group commit).
//!
//! Settings: `QKV_PEERS_REPS` (3), `QKV_PEERS_QUICK=1` (one rep, a fifth of the ops),
//! `QKV_PEERS_ONLY=etcd|redis|qkv` (one system; no ratios). Results: the table on
//! stdout and `target/bench/peers.json`.
//!
//! The shared comparison script (`run-peers.sh`, kept outside this repository) measures
//! the same rows with separate loader processes (etcd's with a thread per client);
//! figures from the two differ by their clients, and ratios hold within one run of
//! either.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, wait_for};
use quorumkv::{Context, Level};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

const VALUE_BYTES: usize = 1024;
const KEYS: u64 = 10_000;
const WARMUP_OPS: u64 = 200;
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// A row stops after this long even if its ops are not done.
const ROW_SECS_MAX: f64 = 120.0;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// One row's figures (µs).
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    ops_s: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    errors: u64,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// Run `ops` timed operations (after a warm-up) from `conc` tasks; `op(task, i)` runs one.
async fn closed_loop<F, Fut>(conc: usize, ops: u64, op: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = bool> + 'static,
{
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            for i in 0..WARMUP_OPS {
                op((i as usize) % conc, i).await;
            }
            let next = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let mut tasks = vec![];
            for t in 0..conc {
                let (op, next, errors) = (op.clone(), next.clone(), errors.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let mut lat = Vec::with_capacity((ops as usize / conc) + 16);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= ops || start.elapsed().as_secs_f64() > ROW_SECS_MAX {
                            break;
                        }
                        let t0 = Instant::now();
                        if !op(t, i).await {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        lat.push(t0.elapsed().as_nanos() as u64);
                    }
                    lat
                }));
            }
            let mut all = vec![];
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            let secs = start.elapsed().as_secs_f64();
            all.sort_unstable();
            Figures {
                ops_s: all.len() as f64 / secs,
                p50: pct(&all, 0.5),
                p90: pct(&all, 0.9),
                p99: pct(&all, 0.99),
                p999: pct(&all, 0.999),
                errors: errors.load(Ordering::Relaxed),
            }
        })
        .await
}

fn key_of(k: u64) -> String {
    format!("k{k:010}")
}

/// Key of the i-th op: spread over the keys (a multiplicative hash of i).
fn key_index(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % KEYS
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Child processes killed when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn need(cmd: &str) {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{cmd}` is not installed: run `make bench-peers`, which installs etcd and Redis from Debian's packages"
    );
}

// ---- Redis (RESP) ----

struct Resp(BufStream<TcpStream>);

#[derive(Debug, PartialEq)]
enum Reply {
    Ok(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Other,
}

impl Resp {
    async fn connect(addr: SocketAddr) -> std::io::Result<Resp> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Resp(BufStream::new(s)))
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend(b"\r\n");
        }
        self.0.write_all(&out).await?;
        self.0.flush().await?;
        self.reply().await
    }

    async fn reply(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        self.0.read_line(&mut line).await?;
        let bad = || std::io::Error::other(format!("bad reply {line:?}"));
        let body = line.get(1..line.len().saturating_sub(2)).ok_or_else(bad)?;
        match line.as_bytes().first() {
            Some(b'+') => Ok(Reply::Ok(body.to_string())),
            Some(b'-') => Err(std::io::Error::other(body.to_string())),
            Some(b':') => Ok(Reply::Int(body.parse().map_err(|_| bad())?)),
            Some(b'$') => {
                let n: i64 = body.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.0.read_exact(&mut buf).await?;
                buf.truncate(n as usize);
                Ok(Reply::Bulk(Some(buf)))
            }
            _ => Ok(Reply::Other),
        }
    }
}

async fn redis(reps: usize, quick: bool, rows: &mut Rows) {
    need("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut procs = Procs(vec![]);
    for (i, p) in ports.iter().enumerate() {
        let d = dir.path().join(format!("r{p}"));
        std::fs::create_dir_all(&d).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&d)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if i > 0 {
            cmd.args(["--replicaof", "127.0.0.1", &ports[0].to_string()]);
        }
        procs.0.push(cmd.spawn().expect("redis-server"));
    }
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    wait_for("redis replicas online", Duration::from_secs(30), || async {
        let Ok(mut c) = Resp::connect(addr(ports[0])).await else { return false };
        match c.cmd(&[b"INFO", b"replication"]).await {
            Ok(Reply::Bulk(Some(info))) => String::from_utf8_lossy(&info).matches("state=online").count() >= 2,
            _ => false,
        }
    })
    .await;
    let value: Arc<Vec<u8>> = Arc::new(vec![b'v'; VALUE_BYTES]);
    // Prefill on the primary; WAIT until both replicas have it.
    let mut p = Resp::connect(addr(ports[0])).await.unwrap();
    for k in 0..KEYS {
        p.cmd(&[b"SET", key_of(k).as_bytes(), &value]).await.unwrap();
    }
    assert_eq!(p.cmd(&[b"WAIT", b"2", b"10000"]).await.unwrap(), Reply::Int(2));
    let (ops1, ops32) = if quick { (4000, 40_000) } else { (20_000, 200_000) };
    for rep in 0..reps {
        for op in ["set", "setwait", "get"] {
            for conc in [1usize, 32] {
                let mut conns = vec![];
                for t in 0..conc {
                    let port = if op == "get" { ports[1 + t % 2] } else { ports[0] };
                    conns.push(Arc::new(tokio::sync::Mutex::new(Resp::connect(addr(port)).await.unwrap())));
                }
                let value = value.clone();
                let f = closed_loop(conc, if conc == 1 { ops1 } else { ops32 }, move |t, i| {
                    let (c, value) = (conns[t].clone(), value.clone());
                    async move {
                        let mut c = c.lock().await;
                        let key = key_of(key_index(i));
                        let r = tokio::time::timeout(OP_TIMEOUT, async {
                            match op {
                                "get" => matches!(c.cmd(&[b"GET", key.as_bytes()]).await, Ok(Reply::Bulk(Some(_)))),
                                _ => {
                                    let set = c.cmd(&[b"SET", key.as_bytes(), &value]).await.is_ok();
                                    set && (op == "set"
                                        || matches!(c.cmd(&[b"WAIT", b"1", b"1000"]).await, Ok(Reply::Int(n)) if n >= 1))
                                }
                            }
                        })
                        .await;
                        r.unwrap_or(false)
                    }
                })
                .await;
                rows.add(&format!("redis {op} c={conc}"), rep, f);
            }
        }
    }
}

// ---- etcd (v3 JSON gateway) ----

struct Http(BufStream<TcpStream>, String);

impl Http {
    async fn connect(addr: SocketAddr) -> std::io::Result<Http> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Http(BufStream::new(s), addr.to_string()))
    }

    /// POST `body` to `path`: (status, body).
    async fn post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.1,
            body.len()
        );
        self.0.write_all(req.as_bytes()).await?;
        self.0.flush().await?;
        let mut status = String::new();
        self.0.read_line(&mut status).await?;
        let code: u16 = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let (mut len, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            self.0.read_line(&mut h).await?;
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
        }
        let mut out = vec![];
        if chunked {
            loop {
                let mut size = String::new();
                self.0.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0u8; n + 2];
                self.0.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else {
            out.resize(len, 0);
            self.0.read_exact(&mut out).await?;
        }
        Ok((code, out))
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn etcd(reps: usize, quick: bool, rows: &mut Rows) {
    need("etcd");
    let dir = tempfile::tempdir().unwrap();
    let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peer: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cluster: Vec<String> = (0..3).map(|i| format!("n{i}=http://127.0.0.1:{}", peer[i])).collect();
    let mut procs = Procs(vec![]);
    for i in 0..3 {
        let log = std::fs::File::create(dir.path().join(format!("etcd{i}.log"))).unwrap();
        let c = format!("http://127.0.0.1:{}", client[i]);
        let p = format!("http://127.0.0.1:{}", peer[i]);
        let child = Command::new("etcd")
            .args(["--name", &format!("n{i}"), "--data-dir"])
            .arg(dir.path().join(format!("n{i}")))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "qkv-bench", "--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd");
        procs.0.push(child);
    }
    let addrs: Vec<SocketAddr> = client.iter().map(|p| format!("127.0.0.1:{p}").parse().unwrap()).collect();
    let value = b64(&vec![b'v'; VALUE_BYTES]);
    let put_body = |k: u64| format!("{{\"key\":\"{}\",\"value\":\"{value}\"}}", b64(key_of(k).as_bytes()));
    wait_for("etcd cluster serving", Duration::from_secs(60), || {
        let (addrs, body) = (addrs.clone(), put_body(0));
        async move {
            for a in addrs {
                let Ok(mut h) = Http::connect(a).await else { return false };
                if !matches!(h.post("/v3/kv/put", &body).await, Ok((200, _))) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let mut h = Http::connect(addrs[0]).await.unwrap();
    for k in 0..KEYS {
        assert_eq!(h.post("/v3/kv/put", &put_body(k)).await.unwrap().0, 200);
    }
    let (ops1, ops32) = if quick { (1000, 10_000) } else { (5000, 50_000) };
    for rep in 0..reps {
        for op in ["put", "get"] {
            for conc in [1usize, 32] {
                // Each task's j-th op goes to member (task + j) % 3: leader and followers alike.
                let mut conns = vec![];
                for _ in 0..conc {
                    let mut per = vec![];
                    for &a in &addrs {
                        per.push(Http::connect(a).await.unwrap());
                    }
                    conns.push(Arc::new(tokio::sync::Mutex::new(per)));
                }
                let value = value.clone();
                let f = closed_loop(conc, if conc == 1 { ops1 } else { ops32 }, move |t, i| {
                    let (c, value) = (conns[t].clone(), value.clone());
                    async move {
                        let mut c = c.lock().await;
                        let key = b64(key_of(key_index(i)).as_bytes());
                        let member = (t + i as usize) % c.len();
                        let (path, body) = match op {
                            "put" => ("/v3/kv/put", format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}")),
                            _ => ("/v3/kv/range", format!("{{\"key\":\"{key}\"}}")),
                        };
                        let r = tokio::time::timeout(OP_TIMEOUT, c[member].post(path, &body)).await;
                        matches!(r, Ok(Ok((200, _))))
                    }
                })
                .await;
                rows.add(&format!("etcd {op} c={conc}"), rep, f);
            }
        }
    }
}

// ---- quorumkv ----

async fn qkv(reps: usize, quick: bool, rows: &mut Rows) {
    let (ops1, ops32) = if quick { (1000, 10_000) } else { (5000, 50_000) };
    for persist in ["buffer", "sync"] {
        let extra = if persist == "sync" { "persist = \"sync\"" } else { "" };
        let c = Cluster::start(Opts { extra, ..Opts::default() }).await;
        let client = c.client();
        let value: Arc<Vec<u8>> = Arc::new(vec![b'v'; VALUE_BYTES]);
        // Prefill at W = all (untimed), keeping each key's context for the updates.
        let contexts: Arc<std::sync::Mutex<HashMap<u64, Context>>> = Default::default();
        let mut fill = vec![];
        for t in 0..32u64 {
            let (client, value, contexts) = (client.clone(), value.clone(), contexts.clone());
            fill.push(tokio::spawn(async move {
                let mut k = t;
                while k < KEYS {
                    let put = client.put(key_of(k), value.to_vec()).w(Level::All).await.expect("prefill");
                    contexts.lock().unwrap().insert(k, put.context);
                    k += 32;
                }
            }));
        }
        for f in fill {
            f.await.unwrap();
        }
        let rows_of: &[(&str, Level, &str)] = if persist == "sync" {
            &[("put", Level::Quorum, "qkv put quorum sync")]
        } else {
            &[
                ("put", Level::Quorum, "qkv put quorum"),
                ("get", Level::One, "qkv get one"),
                ("get", Level::Quorum, "qkv get quorum"),
            ]
        };
        for rep in 0..reps {
            for &(op, level, name) in rows_of {
                for conc in [1usize, 32] {
                    let (client, value, contexts) = (client.clone(), value.clone(), contexts.clone());
                    // A put task owns the keys k with k % conc == t, so each writes with
                    // the context of its own last write of the key.
                    let per_task: Arc<Vec<AtomicU64>> = Arc::new((0..conc).map(|_| AtomicU64::new(0)).collect());
                    let f = closed_loop(conc, if conc == 1 { ops1 } else { ops32 }, move |t, i| {
                        let (client, value, contexts, per_task) =
                            (client.clone(), value.clone(), contexts.clone(), per_task.clone());
                        async move {
                            if op == "get" {
                                let got = client.get(key_of(key_index(i))).r(level).await;
                                return matches!(got, Ok(g) if g.found && g.values.len() == 1);
                            }
                            let mine = (KEYS - t as u64).div_ceil(conc as u64).max(1);
                            let j = per_task[t].fetch_add(1, Ordering::Relaxed);
                            let k = t as u64 + conc as u64 * (j.wrapping_mul(2_654_435_761) % mine);
                            let ctx = contexts.lock().unwrap().get(&k).cloned().unwrap_or_else(Context::empty);
                            match client.put(key_of(k), value.to_vec()).w(level).context(ctx).await {
                                Ok(put) => {
                                    contexts.lock().unwrap().insert(k, put.context);
                                    true
                                }
                                Err(_) => false,
                            }
                        }
                    })
                    .await;
                    rows.add(&format!("{name} c={conc}"), rep, f);
                }
            }
        }
        drop(c);
    }
}

// ---- the table ----

#[derive(Default)]
struct Rows(BTreeMap<String, (usize, Vec<Figures>)>);

impl Rows {
    fn add(&mut self, name: &str, rep: usize, f: Figures) {
        eprintln!(
            "  {name:<26} rep {}: {:>9.0} ops/s  p50 {:>8.1}  p99 {:>8.1} us  errors {}",
            rep + 1,
            f.ops_s,
            f.p50,
            f.p99,
            f.errors
        );
        let order = self.0.len();
        self.0.entry(name.to_string()).or_insert((order, vec![])).1.push(f);
    }

    fn median(&self, name: &str) -> Option<Figures> {
        let runs = &self.0.get(name)?.1;
        let med = |g: &dyn Fn(&Figures) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(g).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Some(Figures {
            ops_s: med(&|f| f.ops_s),
            p50: med(&|f| f.p50),
            p90: med(&|f| f.p90),
            p99: med(&|f| f.p99),
            p999: med(&|f| f.p999),
            errors: runs.iter().map(|f| f.errors).sum(),
        })
    }
}

fn main() {
    let quick = env("QKV_PEERS_QUICK", 0u8) == 1;
    let reps = if quick { 1 } else { env("QKV_PEERS_REPS", 3usize).max(1) };
    let only: String = env("QKV_PEERS_ONLY", String::new());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut rows = Rows::default();
    rt.block_on(async {
        if only.is_empty() || only == "etcd" {
            eprintln!("etcd: 3 members");
            etcd(reps, quick, &mut rows).await;
        }
        if only.is_empty() || only == "redis" {
            eprintln!("redis: a primary and 2 replicas");
            redis(reps, quick, &mut rows).await;
        }
        if only.is_empty() || only == "qkv" {
            eprintln!("quorumkv: 3 nodes, N = 3");
            qkv(reps, quick, &mut rows).await;
        }
    });
    let mut names: Vec<(&String, &(usize, Vec<Figures>))> = rows.0.iter().collect();
    names.sort_by_key(|(_, (order, _))| *order);
    println!("\nmedians of {reps} run(s), 1 KiB values, {KEYS} keys");
    println!("{:<28}{:>10}{:>9}{:>9}{:>9}{:>10}{:>8}", "what", "ops/s", "p50us", "p90us", "p99us", "p99.9us", "errors");
    let mut out = serde_json::Map::new();
    for (name, _) in &names {
        let f = rows.median(name).unwrap();
        println!(
            "{:<28}{:>10.0}{:>9.0}{:>9.0}{:>9.0}{:>10.0}{:>8}",
            name, f.ops_s, f.p50, f.p90, f.p99, f.p999, f.errors
        );
        out.insert(
            name.to_string(),
            json!({"ops_s": f.ops_s, "p50_us": f.p50, "p90_us": f.p90, "p99_us": f.p99, "p999_us": f.p999, "errors": f.errors}),
        );
    }
    let targets = targets(&rows);
    if !targets.is_empty() {
        println!("\n{:<62}{:>9}{:>9}", "target", "ratio", "bound");
        for (what, ratio, bound, at_most) in &targets {
            let met = if *at_most { ratio <= bound } else { ratio >= bound };
            let op = if *at_most { "<=" } else { ">=" };
            println!("{what:<62}{ratio:>9.2}{:>9}  {}", format!("{op} {bound}"), if met { "met" } else { "MISSED" });
        }
    }
    let dir = Path::new("target/bench");
    let _ = std::fs::create_dir_all(dir);
    let json = json!({"reps": reps, "rows": out, "targets": targets.iter().map(|(w, r, b, m)| json!({"what": w, "ratio": r, "bound": b, "at_most": m})).collect::<Vec<_>>()});
    let _ = std::fs::write(dir.join("peers.json"), serde_json::to_string_pretty(&json).unwrap());
}

/// The fast-path targets as (what, ratio, bound, ratio must be at most the bound).
fn targets(rows: &Rows) -> Vec<(String, f64, f64, bool)> {
    let m = |n: &str| rows.median(n);
    let mut t = vec![];
    let mut add = |what: &str, r: Option<f64>, bound: f64, at_most: bool| {
        if let Some(r) = r {
            t.push((what.to_string(), r, bound, at_most));
        }
    };
    let ratio = |a: Option<Figures>, b: Option<Figures>, g: fn(&Figures) -> f64| Some(g(&a?) / g(&b?));
    let p50 = |f: &Figures| f.p50;
    let p99 = |f: &Figures| f.p99;
    let ops = |f: &Figures| f.ops_s;
    add(
        "put quorum c=1 p50 / redis setwait c=1 p50",
        ratio(m("qkv put quorum c=1"), m("redis setwait c=1"), p50),
        1.5,
        true,
    );
    add(
        "put quorum c=32 ops / redis setwait c=32 ops",
        ratio(m("qkv put quorum c=32"), m("redis setwait c=32"), ops),
        0.5,
        false,
    );
    add(
        "put quorum c=32 ops / etcd put c=32 ops",
        ratio(m("qkv put quorum c=32"), m("etcd put c=32"), ops),
        10.0,
        false,
    );
    add("get one c=1 p50 / redis get c=1 p50", ratio(m("qkv get one c=1"), m("redis get c=1"), p50), 2.0, true);
    add("get one c=32 ops / redis get c=32 ops", ratio(m("qkv get one c=32"), m("redis get c=32"), ops), 0.5, false);
    add(
        "get quorum c=32 ops / redis get c=32 ops",
        ratio(m("qkv get quorum c=32"), m("redis get c=32"), ops),
        0.35,
        false,
    );
    add(
        "put quorum sync c=32 ops / etcd put c=32 ops",
        ratio(m("qkv put quorum sync c=32"), m("etcd put c=32"), ops),
        5.0,
        false,
    );
    add(
        "put quorum sync c=32 p99 / etcd put c=32 p99",
        ratio(m("qkv put quorum sync c=32"), m("etcd put c=32"), p99),
        1.0,
        true,
    );
    for row in ["qkv put quorum", "qkv get one", "qkv get quorum", "qkv put quorum sync"] {
        let f = m(&format!("{row} c=1"));
        add(&format!("{row} c=1 p99 / its p50"), f.map(|f| f.p99 / f.p50), 3.0, true);
    }
    t
}
