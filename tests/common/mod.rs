//! Test harness: real `qkv-node` processes on loopback, free ports, temporary dirs.
#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quorumkv::{Client, ClientConfig};

/// Cluster tests in one binary run one at a time: a 2-core machine and 1 s deadlines.
static SERIAL: Mutex<()> = Mutex::new(());

/// Where cargo put the workspace binaries (`make test` builds them first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first (make test does)", p.display());
    p
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Poll `cond` until it returns true or `within` passes.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A local cluster of real processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addrs: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
    _serial: MutexGuard<'static, ()>,
}

/// Extra `key = value` lines for every node config.
pub struct Opts {
    pub nodes: usize,
    pub replication: usize,
    pub extra: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { nodes: 3, replication: 3, extra: "" }
    }
}

impl Cluster {
    pub async fn start(opts: Opts) -> Cluster {
        Cluster::start_with(opts, |_| String::new()).await
    }

    /// [`Cluster::start`], with more config lines for node `id` from `node_extra(id)`.
    pub async fn start_with(opts: Opts, node_extra: impl Fn(usize) -> String) -> Cluster {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (1..=opts.nodes).map(|i| i.to_string()).collect();
        let out = Command::new(bin("qkv"))
            .args(["certs", "--out"])
            .arg(dir.path().join("certs"))
            .args(["--nodes", &ids.join(","), "--clients", "client", "--admins", "admin"])
            .output()
            .unwrap();
        assert!(out.status.success(), "qkv certs: {}", String::from_utf8_lossy(&out.stderr));
        let addrs: Vec<SocketAddr> =
            (0..opts.nodes).map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
        let peers: String =
            addrs.iter().enumerate().map(|(i, a)| format!("{{ id = {}, addr = \"{a}\" }},", i + 1)).collect();
        for (i, a) in addrs.iter().enumerate() {
            let id = i + 1;
            let cfg = format!(
                "id = {id}\nlisten = \"{a}\"\ndata_dir = \"data/node{id}\"\nreplication = {}\nworker_threads = 1\nmetrics_listen = \"127.0.0.1:0\"\n{}\n{}\npeers = [{peers}]\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n",
                opts.replication,
                opts.extra,
                node_extra(id)
            );
            std::fs::write(dir.path().join(format!("node{id}.toml")), cfg).unwrap();
        }
        let nodes: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        std::fs::write(
            dir.path().join("client.toml"),
            format!(
                "nodes = [{}]\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/client.pem\"\nkey = \"certs/client.key\"\n",
                nodes.join(", ")
            ),
        )
        .unwrap();
        let mut c = Cluster { dir, addrs, children: (0..opts.nodes).map(|_| None).collect(), _serial: serial };
        for id in 1..=opts.nodes {
            c.spawn(id);
        }
        for id in 1..=opts.nodes {
            c.wait_serving(id).await;
        }
        c
    }

    pub fn spawn(&mut self, id: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{id}.log")))
            .unwrap();
        let child = Command::new(bin("qkv-node"))
            .arg("--config")
            .arg(self.dir.path().join(format!("node{id}.toml")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[id - 1] = Some(child);
    }

    /// Start a node outside the cluster, seeded with the current members (not itself),
    /// with `extra` config lines; its id once it serves. It joins when a join is committed.
    pub async fn add_joiner(&mut self, extra: &str) -> usize {
        let id = self.addrs.len() + 1;
        let out = Command::new(bin("qkv"))
            .args(["certs", "--out"])
            .arg(self.dir.path().join("certs"))
            .args(["--nodes", &id.to_string(), "--clients", "client", "--admins", "admin"])
            .output()
            .unwrap();
        assert!(out.status.success(), "qkv certs: {}", String::from_utf8_lossy(&out.stderr));
        let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let peers: String =
            self.addrs.iter().enumerate().map(|(i, a)| format!("{{ id = {}, addr = \"{a}\" }},", i + 1)).collect();
        let cfg = format!(
            "id = {id}\nlisten = \"{a}\"\ndata_dir = \"data/node{id}\"\nworker_threads = 1\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\npeers = [{peers}]\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n"
        );
        std::fs::write(self.dir.path().join(format!("node{id}.toml")), cfg).unwrap();
        self.addrs.push(a);
        self.children.push(None);
        self.spawn(id);
        self.wait_serving(id).await;
        id
    }

    /// Wait until node `id` answers a status request.
    pub async fn wait_serving(&self, id: usize) {
        let c = self.client_for(&[id]);
        wait_for(&format!("node {id} serving"), Duration::from_secs(20), || {
            let c = c.clone();
            async move { c.status_of(self.addrs[id - 1]).await.is_ok() }
        })
        .await;
    }

    /// Wait until every running node sees node `id` as `up`.
    pub async fn wait_seen(&self, id: usize, up: bool) {
        let c = self.client();
        let running: Vec<usize> =
            (1..=self.addrs.len()).filter(|&i| i != id && self.children[i - 1].is_some()).collect();
        wait_for(&format!("node {id} seen {}", if up { "up" } else { "down" }), Duration::from_secs(20), || {
            let (c, running) = (c.clone(), running.clone());
            async move {
                for i in running {
                    match c.status_of(self.addrs[i - 1]).await {
                        Ok(s) if s.members.iter().any(|m| m.node == id as u32 && m.up == up) => {}
                        _ => return false,
                    }
                }
                true
            }
        })
        .await;
    }

    /// SIGKILL node `id`.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut ch) = self.children[id - 1].take() {
            ch.kill().unwrap();
            ch.wait().unwrap();
        }
    }

    /// The process id of node `id`.
    pub fn pid(&self, id: usize) -> u32 {
        self.children[id - 1].as_ref().expect("node running").id()
    }

    /// Wait up to `within` for node `id` to exit; its exit code.
    pub fn wait_exit(&mut self, id: usize, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let ch = self.children[id - 1].as_mut()?;
        loop {
            if let Some(st) = ch.try_wait().unwrap() {
                self.children[id - 1] = None;
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start node `id` again and wait until it serves.
    pub async fn restart(&mut self, id: usize) {
        self.spawn(id);
        self.wait_serving(id).await;
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::load(&self.dir.path().join("client.toml"), |_| None).unwrap()
    }

    /// A client of every node.
    pub fn client(&self) -> Client {
        Client::from_config(&self.client_config()).unwrap()
    }

    /// A client of every node with the operator's certificate: it may change membership.
    pub fn admin(&self) -> Client {
        let certs = self.dir.path().join("certs");
        self.client_config()
            .builder()
            .tls(certs.join("ca.pem"), certs.join("admin.pem"), certs.join("admin.key"))
            .build()
            .unwrap()
    }

    /// A client of just these nodes (it does not route by token: it would learn of the others).
    pub fn client_for(&self, ids: &[usize]) -> Client {
        let nodes = ids.iter().map(|&i| self.addrs[i - 1]);
        self.client_config().builder().nodes(nodes).route_by_token(false).build().unwrap()
    }

    /// Send SIGSTOP (`true`) or SIGCONT (`false`) to node `id`: a stalled process,
    /// alive to the kernel, answering nothing.
    pub fn pause(&self, id: usize, stop: bool) {
        let sig = if stop { "-STOP" } else { "-CONT" };
        let st = Command::new("kill").args([sig, &self.pid(id).to_string()]).status().unwrap();
        assert!(st.success(), "kill {sig} node {id}");
    }

    /// Run the `qkv` CLI against this cluster: (exit code, stdout, stderr).
    pub fn qkv(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
        use std::io::Write;
        let mut cmd = Command::new(bin("qkv"));
        cmd.arg("--config").arg(self.dir.path().join("client.toml")).args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut ch = cmd.spawn().unwrap();
        let mut input = ch.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s).unwrap();
        }
        drop(input);
        let out = ch.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for ch in self.children.iter_mut().flatten() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}
