//! Node configuration: a TOML file, overridden by `QKV_*` environment variables,
//! validated before anything starts.
//!
//! Relative paths are relative to the directory of the config file, so a config
//! works from any working directory.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use qkv_proto::NodeId;
use qkv_transport::TlsFiles;
use serde::Deserialize;

use crate::storage::Persist;

/// A member of the cluster.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its node id.
    pub id: NodeId,
    /// Its QUIC address.
    pub addr: SocketAddr,
}

/// Certificate paths.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// Cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's key.
    pub key: PathBuf,
    /// The cluster secret that authenticates causal contexts (made by `qkv certs`; the
    /// same file on every node, never on a client) [default: `cluster.secret` beside `ca`].
    #[serde(default)]
    pub secret: Option<PathBuf>,
}

fn default_replication() -> usize {
    3
}
fn default_vnodes() -> u32 {
    qkv_core::ring::VNODES_DEFAULT
}
fn default_request_timeout_ms() -> u64 {
    1000
}
fn default_transfer_bytes_per_s() -> u64 {
    qkv_core::router::TRANSFER_BYTES_PER_S_DEFAULT
}
fn default_period_ms() -> u64 {
    100
}
fn default_core_thread() -> bool {
    false
}
fn default_ping_ms() -> u64 {
    qkv_core::liveness::PING_INTERVAL_MS_DEFAULT
}
fn default_down_ms() -> u64 {
    qkv_core::liveness::DOWN_AFTER_MS_DEFAULT
}
fn default_metrics_listen() -> String {
    "auto".into()
}
/// A node's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id (a positive integer, unique in the cluster).
    pub id: NodeId,
    /// Address to listen on (UDP, QUIC).
    pub listen: SocketAddr,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Seeds for the node's first start. Listing this node too: the members of a new
    /// cluster (every node lists the same peers). Not listing it: this node joins an
    /// existing cluster, and the peers are members it learns the cluster's layout from
    /// (then `qkv cluster join` makes it a member). Once a change has been committed,
    /// the layout the node stored wins over this list.
    pub peers: Vec<Peer>,
    /// Replicas per key (N).
    #[serde(default = "default_replication")]
    pub replication: usize,
    /// Virtual nodes per node on the ring.
    #[serde(default = "default_vnodes")]
    pub vnodes: u32,
    /// `buffer`, `sync` or `periodic`.
    #[serde(default)]
    pub persist: Persist,
    /// Period of the `periodic` policy's fdatasync.
    #[serde(default = "default_period_ms")]
    pub persist_period_ms: u64,
    /// Default request deadline.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Pace of the range fetches of a membership change, bytes a second this node takes in.
    #[serde(default = "default_transfer_bytes_per_s")]
    pub transfer_bytes_per_s: u64,
    /// Key, value and per-key limits (`[limits]`: the core's own settings and defaults).
    #[serde(default)]
    pub limits: qkv_core::replica::Limits,
    /// How often peers are pinged.
    #[serde(default = "default_ping_ms")]
    pub ping_interval_ms: u64,
    /// Silence after which a peer counts as down.
    #[serde(default = "default_down_ms")]
    pub down_after_ms: u64,
    /// Hint limits and handoff pace (`[hints]`).
    #[serde(default)]
    pub hints: qkv_core::hints::HintLimits,
    /// Anti-entropy and tombstone GC (`[anti_entropy]`).
    #[serde(default)]
    pub anti_entropy: qkv_core::AaeConfig,
    /// Accept the test-only fault switch (`Request::Fault`). Never enable in production.
    #[serde(default)]
    pub fault_injection: bool,
    /// Where to serve Prometheus metrics over HTTP: an address, `auto` (127.0.0.1 and the
    /// QUIC port + 1000) or `off`.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
    /// Tokio worker threads; 0 means one per core.
    #[serde(default)]
    pub worker_threads: usize,
    /// Run the core (and its storage calls) on a thread of its own, fed through its
    /// inboxes, instead of as a task on the runtime's workers (the default: fewer
    /// wake-ups between threads; see README "Performance").
    #[serde(default = "default_core_thread")]
    pub core_thread: bool,
    /// Test-only: hold each replica write from a peer (`ReplicaPut`: replication and read
    /// repair; `ReplicaPutBatch`: handoff and anti-entropy; not hints) a random 0 to 2x
    /// this many ms (uniform to the µs, mean this, at most 60 s; on a blocking thread,
    /// 64 at once) before it reaches the core, so the node applies it late and
    /// staleness shows on loopback (the kernel here has no netem). 0 (the default): off.
    #[serde(default)]
    pub test_apply_delay_ms: u64,
    /// Certificates.
    pub tls: TlsPaths,
    /// Settings given under their names of before the sections (still read).
    #[serde(skip)]
    pub deprecated: Vec<String>,
}

/// Settings of earlier releases, top-level then, and where they live now.
const RENAMED: &[(&str, &[&str])] = &[
    ("key_bytes_max", &["limits", "key_bytes_max"]),
    ("value_bytes_max", &["limits", "value_bytes_max"]),
    ("key_siblings_max", &["limits", "key_siblings_max"]),
    ("key_state_bytes_max", &["limits", "key_state_bytes_max"]),
    ("hints_bytes_max", &["hints", "total_bytes_max"]),
    ("hints_owner_bytes_max", &["hints", "owner_bytes_max"]),
    ("hint_window_ms", &["hints", "window_ms"]),
    ("handoff_bytes_per_s", &["hints", "rate_bytes_per_s"]),
    ("anti_entropy", &["anti_entropy", "enabled"]),
    ("aae_interval_ms", &["anti_entropy", "interval_ms"]),
    ("aae_keys_per_s", &["anti_entropy", "keys_per_s"]),
    ("aae_bytes_per_s", &["anti_entropy", "bytes_per_s"]),
    ("tombstone_grace_ms", &["anti_entropy", "tombstone_grace_ms"]),
    ("purge_records_bytes_max", &["anti_entropy", "purge_records_bytes_max"]),
];

/// The table at `path` in `table`, made if absent.
fn table_at<'a>(table: &'a mut toml::Table, path: &[&str], what: &str) -> anyhow::Result<&'a mut toml::Table> {
    let mut t = table;
    for part in path {
        t = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| anyhow::anyhow!("{what}: `{part}` is not a table"))?;
    }
    Ok(t)
}

/// Names of the settings `QKV_<NAME>` may override, and their TOML paths (the
/// names are those of before the sections, so scripts keep working).
const ENV_KEYS: &[(&str, &[&str])] = &[
    ("ID", &["id"]),
    ("LISTEN", &["listen"]),
    ("DATA_DIR", &["data_dir"]),
    ("REPLICATION", &["replication"]),
    ("VNODES", &["vnodes"]),
    ("PERSIST", &["persist"]),
    ("PERSIST_PERIOD_MS", &["persist_period_ms"]),
    ("REQUEST_TIMEOUT_MS", &["request_timeout_ms"]),
    ("TRANSFER_BYTES_PER_S", &["transfer_bytes_per_s"]),
    ("KEY_BYTES_MAX", &["limits", "key_bytes_max"]),
    ("VALUE_BYTES_MAX", &["limits", "value_bytes_max"]),
    ("KEY_SIBLINGS_MAX", &["limits", "key_siblings_max"]),
    ("KEY_STATE_BYTES_MAX", &["limits", "key_state_bytes_max"]),
    ("PING_INTERVAL_MS", &["ping_interval_ms"]),
    ("DOWN_AFTER_MS", &["down_after_ms"]),
    ("WORKER_THREADS", &["worker_threads"]),
    ("CORE_THREAD", &["core_thread"]),
    ("HINTS_BYTES_MAX", &["hints", "total_bytes_max"]),
    ("HINTS_OWNER_BYTES_MAX", &["hints", "owner_bytes_max"]),
    ("HINT_WINDOW_MS", &["hints", "window_ms"]),
    ("HANDOFF_BYTES_PER_S", &["hints", "rate_bytes_per_s"]),
    ("METRICS_LISTEN", &["metrics_listen"]),
    ("ANTI_ENTROPY", &["anti_entropy", "enabled"]),
    ("AAE_INTERVAL_MS", &["anti_entropy", "interval_ms"]),
    ("AAE_KEYS_PER_S", &["anti_entropy", "keys_per_s"]),
    ("AAE_BYTES_PER_S", &["anti_entropy", "bytes_per_s"]),
    ("TOMBSTONE_GRACE_MS", &["anti_entropy", "tombstone_grace_ms"]),
    ("PURGE_RECORDS_BYTES_MAX", &["anti_entropy", "purge_records_bytes_max"]),
    ("GC_BATCH", &["anti_entropy", "gc_batch"]),
    ("HANDOFF_BATCH_BYTES_MAX", &["hints", "batch_bytes_max"]),
    ("FAULT_INJECTION", &["fault_injection"]),
    ("TEST_APPLY_DELAY_MS", &["test_apply_delay_ms"]),
    ("TLS_CA", &["tls", "ca"]),
    ("TLS_CERT", &["tls", "cert"]),
    ("TLS_KEY", &["tls", "key"]),
    ("TLS_SECRET", &["tls", "secret"]),
];

impl Config {
    /// Read `path`, apply the `QKV_*` overrides from `env`, and validate.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")), env)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parse config text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let mut table: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("invalid TOML: {e}"))?;
        let mut deprecated = vec![];
        for (old, path) in RENAMED {
            // `anti_entropy` is now a section: only its old boolean form moves.
            if table.get(*old).is_none_or(|v| v.is_table()) {
                continue;
            }
            let value = table.remove(*old).expect("present");
            let (leaf, parents) = path.split_last().expect("a path");
            let section = table_at(&mut table, parents, old)?;
            if section.contains_key(*leaf) {
                anyhow::bail!("`{old}` and `{}` are the same setting: give only `{}`", path.join("."), path.join("."));
            }
            section.insert(leaf.to_string(), value);
            deprecated.push(format!("`{old}` is now `{}` (the old name still works)", path.join(".")));
        }
        for (name, path) in ENV_KEYS {
            let var = format!("QKV_{name}");
            if let Some(raw) = env(&var) {
                // A number stays a number, true/false a boolean; anything else is a string.
                let value = raw.parse::<i64>().map(toml::Value::Integer).unwrap_or_else(|_| match raw.as_str() {
                    "true" => toml::Value::Boolean(true),
                    "false" => toml::Value::Boolean(false),
                    _ => toml::Value::String(raw.clone()),
                });
                table_at(&mut table, &path[..path.len() - 1], &var)?.insert(path[path.len() - 1].to_string(), value);
            }
        }
        let mut cfg: Config = table.try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))?;
        cfg.deprecated = deprecated;
        for p in [&mut cfg.data_dir, &mut cfg.tls.ca, &mut cfg.tls.cert, &mut cfg.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let secret = match cfg.tls.secret.take() {
            Some(p) if p.is_relative() => base.join(p),
            Some(p) => p,
            None => cfg.tls.ca.with_file_name(qkv_transport::certs::SECRET_FILE),
        };
        cfg.tls.secret = Some(secret);
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.id == 0 {
            bail!("id must be a positive integer");
        }
        let ids: BTreeSet<_> = self.peers.iter().map(|p| p.id).collect();
        if ids.len() != self.peers.len() {
            bail!("peers: a node id appears twice");
        }
        let addrs: BTreeSet<_> = self.peers.iter().map(|p| p.addr).collect();
        if addrs.len() != self.peers.len() {
            bail!("peers: an address appears twice");
        }
        match self.peers.iter().find(|p| p.id == self.id) {
            None if self.peers.is_empty() => bail!(
                "peers must list this node (id {}) and the other members of a new cluster, or members of the \
                 cluster this node joins",
                self.id
            ),
            None => {
                if let Some(p) = self.peers.iter().find(|p| p.addr == self.listen) {
                    bail!("peers lists node {} at {}, this node's listen address", p.id, p.addr);
                }
            }
            Some(me)
                if me.addr.port() != self.listen.port()
                    || (me.addr != self.listen && !self.listen.ip().is_unspecified()) =>
            {
                bail!("peers lists node {} at {}, but listen is {}", self.id, me.addr, self.listen)
            }
            Some(_) => {}
        }
        self.layout()?;
        if self.request_timeout_ms == 0 || self.request_timeout_ms > qkv_proto::REQUEST_TIMEOUT_MS_MAX {
            bail!("request_timeout_ms must be between 1 and {}", qkv_proto::REQUEST_TIMEOUT_MS_MAX);
        }
        if self.transfer_bytes_per_s == 0 {
            bail!("transfer_bytes_per_s must be positive");
        }
        if self.persist_period_ms == 0 {
            bail!("persist_period_ms must be positive");
        }
        if self.ping_interval_ms == 0 || self.down_after_ms < self.ping_interval_ms {
            bail!("ping_interval_ms must be positive and no more than down_after_ms");
        }
        let l = &self.limits;
        if l.key_bytes_max == 0 || l.key_bytes_max > 65_536 {
            bail!("limits.key_bytes_max must be between 1 and 65536 (the storage engine's limit)");
        }
        if l.value_bytes_max == 0 || l.value_bytes_max > 64 * 1024 * 1024 {
            bail!("limits.value_bytes_max must be between 1 and 67108864");
        }
        if l.key_siblings_max == 0 || l.key_siblings_max > 1000 {
            bail!("limits.key_siblings_max must be between 1 and 1000");
        }
        if l.key_state_bytes_max < l.value_bytes_max + 4096 || l.key_state_bytes_max > 128 * 1024 * 1024 {
            bail!(
                "limits.key_state_bytes_max must be at least limits.value_bytes_max + 4096 ({}), so a key can \
                 always be resolved to one value, and at most 134217728",
                l.value_bytes_max + 4096
            );
        }
        let h = &self.hints;
        if h.owner_bytes_max == 0 || h.owner_bytes_max > h.total_bytes_max {
            bail!("hints.owner_bytes_max must be positive and no more than hints.total_bytes_max");
        }
        if h.rate_bytes_per_s == 0 || h.batch_bytes_max == 0 {
            bail!("hints.rate_bytes_per_s and hints.batch_bytes_max must be positive");
        }
        // A batch (within batch_bytes_max, or one state alone, which the frame limit
        // covers twice) must fit in a frame, or no handoff ever lands.
        let batch_max = self.frame_bytes_max() / 2;
        if h.batch_bytes_max as usize > batch_max {
            bail!("hints.batch_bytes_max must be at most {batch_max} (half the frame limit these limits give)");
        }
        let a = &self.anti_entropy;
        if a.gc_batch > 1_000_000 {
            bail!("anti_entropy.gc_batch must be at most 1000000 (one GC round runs under the core's lock)");
        }
        if a.interval_ms == 0
            || a.keys_per_s == 0
            || a.bytes_per_s == 0
            || a.gc_batch == 0
            || a.purge_records_bytes_max == 0
        {
            bail!(
                "anti_entropy.interval_ms, keys_per_s, bytes_per_s, gc_batch and purge_records_bytes_max must be \
                 positive"
            );
        }
        if a.tombstone_grace_ms < h.window_ms {
            bail!(
                "anti_entropy.tombstone_grace_ms ({}) must be at least hints.window_ms ({}): a hint taken before a \
                 delete could otherwise outlive the tombstone and bring the value back",
                a.tombstone_grace_ms,
                h.window_ms
            );
        }
        self.metrics_addr()?;
        Ok(())
    }

    /// The metrics address, or `None` when metrics are off.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.metrics_listen.as_str() {
            "off" => Ok(None),
            "auto" => {
                let port = self.listen.port().checked_add(1000).ok_or_else(|| {
                    anyhow::anyhow!("metrics_listen = \"auto\" needs the QUIC port + 1000 to fit; give an address")
                })?;
                Ok(Some(SocketAddr::from(([127, 0, 0, 1], port))))
            }
            a => a.parse().map(Some).map_err(|_| {
                anyhow::anyhow!("metrics_listen must be an address like 127.0.0.1:9100, `auto` or `off`, got `{a}`")
            }),
        }
    }

    /// Hint limits and handoff pace; a batch is at most one second of the pace.
    pub fn hint_limits(&self) -> qkv_core::hints::HintLimits {
        let h = self.hints;
        qkv_core::hints::HintLimits { batch_bytes_max: h.batch_bytes_max.min(h.rate_bytes_per_s), ..h }
    }

    /// The cluster secret's file.
    pub fn secret_path(&self) -> PathBuf {
        self.tls.secret.clone().unwrap_or_else(|| self.tls.ca.with_file_name(qkv_transport::certs::SECRET_FILE))
    }

    /// The certificate files.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles { ca: self.tls.ca.clone(), cert: self.tls.cert.clone(), key: self.tls.key.clone() }
    }

    /// Whether this node joins an existing cluster: its `peers` do not list it.
    pub fn joiner(&self) -> bool {
        !self.peers.iter().any(|p| p.id == self.id)
    }

    /// The layout the node starts on, the first time: the peers' (placed as every release
    /// so far placed keys, `Layout::legacy`, epoch 1). A joiner's is a placeholder of its
    /// seeds at epoch 0, below every committed layout, so the first ping it exchanges
    /// with a seed makes it take the cluster's real layout; it is outside the cluster
    /// (refusing reads and writes) until its join is committed.
    pub fn layout(&self) -> Result<qkv_core::layout::Layout, qkv_core::layout::LayoutError> {
        let members: Vec<_> = self.peers.iter().map(|p| (p.id, p.addr.to_string())).collect();
        if self.joiner() {
            // A placeholder: fewer seeds than N are fine (N comes with the real layout).
            let n = self.replication.min(members.len()).max(1);
            let mut l = qkv_core::layout::Layout::legacy(&members, self.vnodes, n)?;
            l.epoch = 0;
            return Ok(l);
        }
        qkv_core::layout::Layout::legacy(&members, self.vnodes, self.replication)
    }

    /// Frame limit: the largest state a replica holds (twice the per-key limit, see
    /// `qkv_core::replica::Limits`) with its key and a margin for the message around it,
    /// and at least 8 MiB, room for anti-entropy's batches (at most 2 MiB of states).
    pub fn frame_bytes_max(&self) -> usize {
        (self.limits.key_state_bytes_max * 2 + self.limits.key_bytes_max + 256 * 1024).max(8 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
id = 1
listen = "127.0.0.1:7001"
data_dir = "data/node1"
peers = [
  { id = 1, addr = "127.0.0.1:7001" },
  { id = 2, addr = "127.0.0.1:7002" },
  { id = 3, addr = "127.0.0.1:7003" },
]
[tls]
ca = "certs/ca.pem"
cert = "certs/node-1.pem"
key = "certs/node-1.key"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = Config::parse(BASE, Path::new("/etc/qkv"), no_env).unwrap();
        assert_eq!(c.replication, 3);
        assert_eq!(c.vnodes, 64);
        assert_eq!(c.persist, Persist::Buffer);
        assert_eq!(c.data_dir, Path::new("/etc/qkv/data/node1"));
        assert_eq!(c.tls.key, Path::new("/etc/qkv/certs/node-1.key"));
    }

    #[test]
    fn env_overrides() {
        let env = |k: &str| match k {
            "QKV_PERSIST" => Some("sync".to_string()),
            "QKV_VNODES" => Some("128".to_string()),
            "QKV_TLS_CA" => Some("/x/ca.pem".to_string()),
            _ => None,
        };
        let c = Config::parse(BASE, Path::new("."), env).unwrap();
        assert_eq!(c.persist, Persist::Sync);
        assert_eq!(c.vnodes, 128);
        assert_eq!(c.tls.ca, Path::new("/x/ca.pem"));
        let off = |k: &str| (k == "QKV_ANTI_ENTROPY").then(|| "false".to_string());
        assert!(!Config::parse(BASE, Path::new("."), off).unwrap().anti_entropy.enabled);
        let window = |k: &str| (k == "QKV_HINT_WINDOW_MS").then(|| "5000".to_string());
        assert_eq!(Config::parse(BASE, Path::new("."), window).unwrap().hints.window_ms, 5000);
    }

    #[test]
    fn sections_take_the_core_defaults_and_old_names_still_work() {
        let c = Config::parse(BASE, Path::new("."), no_env).unwrap();
        assert_eq!(c.anti_entropy, qkv_core::AaeConfig::default());
        assert_eq!(c.limits.key_siblings_max, qkv_core::replica::KEY_SIBLINGS_MAX_DEFAULT);
        assert!(c.deprecated.is_empty());
        let nested = BASE.replace("[tls]", "[anti_entropy]\ninterval_ms = 200\n[hints]\nwindow_ms = 1000\n[tls]");
        let c = Config::parse(&nested, Path::new("."), no_env).unwrap();
        assert_eq!((c.anti_entropy.interval_ms, c.hints.window_ms), (200, 1000));
        assert_eq!(c.anti_entropy.keys_per_s, qkv_core::AaeConfig::default().keys_per_s, "the rest default");
        let old =
            BASE.replace("listen = ", "aae_interval_ms = 200\nanti_entropy = false\nhint_window_ms = 1000\nlisten = ");
        let c = Config::parse(&old, Path::new("."), no_env).unwrap();
        assert_eq!((c.anti_entropy.interval_ms, c.anti_entropy.enabled, c.hints.window_ms), (200, false, 1000));
        assert_eq!(c.deprecated.len(), 3, "{:?}", c.deprecated);
        let both = BASE
            .replace("listen = ", "aae_interval_ms = 200\nlisten = ")
            .replace("[tls]", "[anti_entropy]\ninterval_ms = 300\n[tls]");
        let e = Config::parse(&both, Path::new("."), no_env).unwrap_err().to_string();
        assert!(e.contains("are the same setting"), "{e}");
    }

    #[test]
    fn a_node_its_peers_do_not_list_is_a_joiner_on_a_placeholder_layout() {
        let member = Config::parse(BASE, Path::new("."), no_env).unwrap();
        assert!(!member.joiner());
        let l = member.layout().unwrap();
        assert_eq!((l.epoch, l.n, l.members.len()), (1, 3, 3));
        // Node 4 with the three members as seeds.
        let joiner = BASE.replace("id = 1\n", "id = 4\n").replace("127.0.0.1:7001\"\n", "127.0.0.1:7004\"\n");
        let c = Config::parse(&joiner, Path::new("."), no_env).unwrap();
        assert!(c.joiner());
        let l = c.layout().unwrap();
        assert_eq!(l.epoch, 0, "below every committed layout: the seeds' layout wins at once");
        assert!(!l.members.contains_key(&4));
        assert_eq!(l.members.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        // One seed is enough (N comes with the cluster's layout).
        let one = "id = 4\nlisten = \"0.0.0.0:7004\"\ndata_dir = \"d\"\npeers = [{ id = 1, addr = \"10.0.0.1:7001\" }]\n\
                   [tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let c = Config::parse(one, Path::new("."), no_env).unwrap();
        let l = c.layout().unwrap();
        assert!(c.joiner());
        assert_eq!((l.epoch, l.n, l.members.len()), (0, 1, 1));
        let none = one.replace("[{ id = 1, addr = \"10.0.0.1:7001\" }]", "[]");
        let e = Config::parse(&none, Path::new("."), no_env).unwrap_err().to_string();
        assert!(e.contains("or members of the cluster this node joins"), "{e}");
    }

    #[test]
    fn bad_configs_say_why() {
        let cases = [
            (BASE.replace("id = 1\n", "id = 9\n"), "this node's listen address"),
            (BASE.replace("listen = ", "replication = 5\nlisten = "), "replication factor 5 needs at least 5 nodes"),
            (BASE.replace("listen = ", "persist = \"fast\"\nlisten = "), "unknown variant"),
            (BASE.replace("listen = ", "colour = 1\nlisten = "), "unknown field"),
            (BASE.replace("7002", "7003"), "address appears twice"),
            (BASE.replace("listen = ", "vnodes = 0\nlisten = "), "vnodes must be"),
            (BASE.replace("listen = ", "metrics_listen = \"here\"\nlisten = "), "metrics_listen must be"),
            (BASE.replace("listen = ", "tombstone_grace_ms = 1000\nlisten = "), "must be at least hints.window_ms"),
            (BASE.replace("listen = ", "aae_keys_per_s = 0\nlisten = "), "must be positive"),
            (BASE.replace("[tls]", "[anti_entropy]\nspeed = 1\n[tls]"), "unknown field `speed`"),
            (BASE.replace("[tls]", "[limits]\nkey_siblings_max = 0\n[tls]"), "limits.key_siblings_max must be"),
            (BASE.replace("[tls]", "[hints]\nbatch_bytes_max = 1073741824\n[tls]"), "half the frame limit"),
            (BASE.replace("[tls]", "[anti_entropy]\ngc_batch = 0\n[tls]"), "must be positive"),
            (BASE.replace("listen = ", "request_timeout_ms = 60001\nlisten = "), "between 1 and 60000"),
            (BASE.replace("listen = ", "transfer_bytes_per_s = 0\nlisten = "), "transfer_bytes_per_s must be positive"),
            (BASE.replace("listen = \"127.0.0.1:7001\"", "listen = \"0.0.0.0:7009\""), "but listen is 0.0.0.0:7009"),
            (BASE.replace("listen = ", "anti_entropy = \"yes\"\nlisten = "), "invalid type"),
            (BASE.replace("listen = ", "anti_entropy = 3\nlisten = "), "invalid type"),
            ("id = ".to_string(), "invalid TOML"),
        ];
        for (text, want) in cases {
            let err = Config::parse(&text, Path::new("."), no_env).unwrap_err().to_string();
            assert!(err.contains(want), "expected `{want}` in `{err}`");
        }
        let env = |k: &str| (k == "QKV_REPLICATION").then(|| "zero".to_string());
        assert!(Config::parse(BASE, Path::new("."), env).is_err());
    }
}
