//! Node configuration: a TOML file, overridden by `QKV_*` environment variables,
//! validated before anything starts.
//!
//! Relative paths are relative to the directory of the config file, so a config
//! works from any working directory.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use qkv_core::Ring;
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
fn default_period_ms() -> u64 {
    100
}
fn default_key_max() -> usize {
    qkv_proto::KEY_BYTES_MAX_DEFAULT
}
fn default_value_max() -> usize {
    qkv_proto::VALUE_BYTES_MAX_DEFAULT
}
fn default_key_siblings_max() -> usize {
    qkv_core::replica::KEY_SIBLINGS_MAX_DEFAULT
}
fn default_key_state_bytes_max() -> usize {
    qkv_core::replica::KEY_STATE_BYTES_MAX_DEFAULT
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
fn hint_defaults() -> qkv_core::hints::HintLimits {
    qkv_core::hints::HintLimits::default()
}
fn default_hints_bytes_max() -> u64 {
    hint_defaults().total_bytes_max
}
fn default_hints_owner_bytes_max() -> u64 {
    hint_defaults().owner_bytes_max
}
fn default_hint_window_ms() -> u64 {
    hint_defaults().window_ms
}
fn default_handoff_bytes_per_s() -> u64 {
    hint_defaults().rate_bytes_per_s
}
fn aae_defaults() -> qkv_core::AaeConfig {
    qkv_core::AaeConfig::default()
}
fn default_true() -> bool {
    true
}
fn default_aae_interval_ms() -> u64 {
    aae_defaults().interval_ms
}
fn default_aae_keys_per_s() -> u64 {
    aae_defaults().keys_per_s
}
fn default_aae_bytes_per_s() -> u64 {
    aae_defaults().bytes_per_s
}
fn default_tombstone_grace_ms() -> u64 {
    aae_defaults().tombstone_grace_ms
}
fn default_purge_records_bytes_max() -> usize {
    aae_defaults().purge_records_bytes_max
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
    /// All members, this node included.
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
    /// Largest key accepted.
    #[serde(default = "default_key_max")]
    pub key_bytes_max: usize,
    /// Largest value accepted.
    #[serde(default = "default_value_max")]
    pub value_bytes_max: usize,
    /// Most siblings a write may leave in one key (Riak's `max_siblings`).
    #[serde(default = "default_key_siblings_max")]
    pub key_siblings_max: usize,
    /// Most bytes a write may leave in one key's state, all siblings together
    /// (Riak's `max_object_size`).
    #[serde(default = "default_key_state_bytes_max")]
    pub key_state_bytes_max: usize,
    /// How often peers are pinged.
    #[serde(default = "default_ping_ms")]
    pub ping_interval_ms: u64,
    /// Silence after which a peer counts as down.
    #[serde(default = "default_down_ms")]
    pub down_after_ms: u64,
    /// Limit on all hints this node holds for others, bytes.
    #[serde(default = "default_hints_bytes_max")]
    pub hints_bytes_max: u64,
    /// Limit on the hints held for one owner, bytes.
    #[serde(default = "default_hints_owner_bytes_max")]
    pub hints_owner_bytes_max: u64,
    /// No new hints for an owner down longer than this.
    #[serde(default = "default_hint_window_ms")]
    pub hint_window_ms: u64,
    /// Hinted handoff pace, bytes per second.
    #[serde(default = "default_handoff_bytes_per_s")]
    pub handoff_bytes_per_s: u64,
    /// Run anti-entropy exchanges (without them tombstones are never purged).
    #[serde(default = "default_true")]
    pub anti_entropy: bool,
    /// Pause between one anti-entropy exchange and the next.
    #[serde(default = "default_aae_interval_ms")]
    pub aae_interval_ms: u64,
    /// Key states anti-entropy may send (and this node's exchanges receive) per second.
    #[serde(default = "default_aae_keys_per_s")]
    pub aae_keys_per_s: u64,
    /// Bytes anti-entropy may send (and this node's exchanges receive) per second.
    #[serde(default = "default_aae_bytes_per_s")]
    pub aae_bytes_per_s: u64,
    /// How long a tombstone is kept once every home replica is known to hold it.
    /// At least `hint_window_ms`, so a hint taken before the delete cannot outlive it.
    #[serde(default = "default_tombstone_grace_ms")]
    pub tombstone_grace_ms: u64,
    /// Memory for purge records (what a purged tombstone had seen), at most; when
    /// full, tombstone GC waits for records to expire (two graces after their purge).
    #[serde(default = "default_purge_records_bytes_max")]
    pub purge_records_bytes_max: usize,
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
    /// Certificates.
    pub tls: TlsPaths,
}

/// Names of the settings `QKV_<NAME>` may override, and their TOML paths.
const ENV_KEYS: &[(&str, &[&str])] = &[
    ("ID", &["id"]),
    ("LISTEN", &["listen"]),
    ("DATA_DIR", &["data_dir"]),
    ("REPLICATION", &["replication"]),
    ("VNODES", &["vnodes"]),
    ("PERSIST", &["persist"]),
    ("PERSIST_PERIOD_MS", &["persist_period_ms"]),
    ("REQUEST_TIMEOUT_MS", &["request_timeout_ms"]),
    ("KEY_BYTES_MAX", &["key_bytes_max"]),
    ("VALUE_BYTES_MAX", &["value_bytes_max"]),
    ("PING_INTERVAL_MS", &["ping_interval_ms"]),
    ("DOWN_AFTER_MS", &["down_after_ms"]),
    ("WORKER_THREADS", &["worker_threads"]),
    ("HINTS_BYTES_MAX", &["hints_bytes_max"]),
    ("HINTS_OWNER_BYTES_MAX", &["hints_owner_bytes_max"]),
    ("HINT_WINDOW_MS", &["hint_window_ms"]),
    ("HANDOFF_BYTES_PER_S", &["handoff_bytes_per_s"]),
    ("METRICS_LISTEN", &["metrics_listen"]),
    ("ANTI_ENTROPY", &["anti_entropy"]),
    ("AAE_INTERVAL_MS", &["aae_interval_ms"]),
    ("AAE_KEYS_PER_S", &["aae_keys_per_s"]),
    ("AAE_BYTES_PER_S", &["aae_bytes_per_s"]),
    ("TOMBSTONE_GRACE_MS", &["tombstone_grace_ms"]),
    ("PURGE_RECORDS_BYTES_MAX", &["purge_records_bytes_max"]),
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
        for (name, path) in ENV_KEYS {
            let var = format!("QKV_{name}");
            if let Some(raw) = env(&var) {
                // A number stays a number, true/false a boolean; anything else is a string.
                let value = raw.parse::<i64>().map(toml::Value::Integer).unwrap_or_else(|_| match raw.as_str() {
                    "true" => toml::Value::Boolean(true),
                    "false" => toml::Value::Boolean(false),
                    _ => toml::Value::String(raw.clone()),
                });
                let mut t = &mut table;
                for part in &path[..path.len() - 1] {
                    t = t
                        .entry(part.to_string())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                        .as_table_mut()
                        .ok_or_else(|| anyhow::anyhow!("{var}: `{part}` is not a table"))?;
                }
                t.insert(path[path.len() - 1].to_string(), value);
            }
        }
        let mut cfg: Config = table.try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))?;
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
            None => bail!("peers must list this node (id {}) too", self.id),
            Some(me) if me.addr != self.listen && !self.listen.ip().is_unspecified() => {
                bail!("peers lists node {} at {}, but listen is {}", self.id, me.addr, self.listen)
            }
            Some(_) => {}
        }
        let ring_ids: Vec<_> = self.peers.iter().map(|p| p.id).collect();
        Ring::new(&ring_ids, self.vnodes, self.replication)?;
        if self.request_timeout_ms == 0 || self.request_timeout_ms > qkv_proto::REQUEST_TIMEOUT_MS_MAX {
            bail!("request_timeout_ms must be between 1 and {}", qkv_proto::REQUEST_TIMEOUT_MS_MAX);
        }
        if self.persist_period_ms == 0 {
            bail!("persist_period_ms must be positive");
        }
        if self.ping_interval_ms == 0 || self.down_after_ms < self.ping_interval_ms {
            bail!("ping_interval_ms must be positive and no more than down_after_ms");
        }
        if self.key_bytes_max == 0 || self.key_bytes_max > 65_536 {
            bail!("key_bytes_max must be between 1 and 65536 (the storage engine's limit)");
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > 64 * 1024 * 1024 {
            bail!("value_bytes_max must be between 1 and 67108864");
        }
        if self.key_siblings_max == 0 || self.key_siblings_max > 1000 {
            bail!("key_siblings_max must be between 1 and 1000");
        }
        if self.key_state_bytes_max < self.value_bytes_max + 4096 || self.key_state_bytes_max > 128 * 1024 * 1024 {
            bail!(
                "key_state_bytes_max must be at least value_bytes_max + 4096 ({}), so a key can always be \
                 resolved to one value, and at most 134217728",
                self.value_bytes_max + 4096
            );
        }
        if self.hints_owner_bytes_max == 0 || self.hints_owner_bytes_max > self.hints_bytes_max {
            bail!("hints_owner_bytes_max must be positive and no more than hints_bytes_max");
        }
        if self.handoff_bytes_per_s == 0 {
            bail!("handoff_bytes_per_s must be positive");
        }
        if self.aae_interval_ms == 0
            || self.aae_keys_per_s == 0
            || self.aae_bytes_per_s == 0
            || self.purge_records_bytes_max == 0
        {
            bail!("aae_interval_ms, aae_keys_per_s, aae_bytes_per_s and purge_records_bytes_max must be positive");
        }
        if self.tombstone_grace_ms < self.hint_window_ms {
            bail!(
                "tombstone_grace_ms ({}) must be at least hint_window_ms ({}): a hint taken before a delete \
                 could otherwise outlive the tombstone and bring the value back",
                self.tombstone_grace_ms,
                self.hint_window_ms
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

    /// Hint limits and handoff pace.
    pub fn hint_limits(&self) -> qkv_core::hints::HintLimits {
        qkv_core::hints::HintLimits {
            total_bytes_max: self.hints_bytes_max,
            owner_bytes_max: self.hints_owner_bytes_max,
            window_ms: self.hint_window_ms,
            rate_bytes_per_s: self.handoff_bytes_per_s,
            batch_bytes_max: hint_defaults().batch_bytes_max.min(self.handoff_bytes_per_s),
        }
    }

    /// Anti-entropy settings.
    pub fn aae(&self) -> qkv_core::AaeConfig {
        qkv_core::AaeConfig {
            enabled: self.anti_entropy,
            interval_ms: self.aae_interval_ms,
            keys_per_s: self.aae_keys_per_s,
            bytes_per_s: self.aae_bytes_per_s,
            tombstone_grace_ms: self.tombstone_grace_ms,
            purge_records_bytes_max: self.purge_records_bytes_max,
            ..aae_defaults()
        }
    }

    /// The cluster secret's file.
    pub fn secret_path(&self) -> PathBuf {
        self.tls.secret.clone().unwrap_or_else(|| self.tls.ca.with_file_name(qkv_transport::certs::SECRET_FILE))
    }

    /// The certificate files.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles { ca: self.tls.ca.clone(), cert: self.tls.cert.clone(), key: self.tls.key.clone() }
    }

    /// The key, value and per-key limits.
    pub fn limits(&self) -> qkv_core::replica::Limits {
        qkv_core::replica::Limits {
            key_bytes_max: self.key_bytes_max,
            value_bytes_max: self.value_bytes_max,
            key_siblings_max: self.key_siblings_max,
            key_state_bytes_max: self.key_state_bytes_max,
        }
    }

    /// Frame limit: the largest state a replica holds (twice the per-key limit, see
    /// `qkv_core::replica::Limits`) with its key and a margin for the message around it,
    /// and at least 8 MiB, room for anti-entropy's batches (at most 2 MiB of states).
    pub fn frame_bytes_max(&self) -> usize {
        (self.key_state_bytes_max * 2 + self.key_bytes_max + 256 * 1024).max(8 << 20)
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
        assert!(!Config::parse(BASE, Path::new("."), off).unwrap().aae().enabled);
    }

    #[test]
    fn bad_configs_say_why() {
        let cases = [
            (BASE.replace("id = 1\n", "id = 9\n"), "must list this node"),
            (BASE.replace("listen = ", "replication = 5\nlisten = "), "replication factor 5 needs at least 5 nodes"),
            (BASE.replace("listen = ", "persist = \"fast\"\nlisten = "), "unknown variant"),
            (BASE.replace("listen = ", "colour = 1\nlisten = "), "unknown field"),
            (BASE.replace("7002", "7003"), "address appears twice"),
            (BASE.replace("listen = ", "vnodes = 0\nlisten = "), "vnodes must be"),
            (BASE.replace("listen = ", "metrics_listen = \"here\"\nlisten = "), "metrics_listen must be"),
            (BASE.replace("listen = ", "tombstone_grace_ms = 1000\nlisten = "), "must be at least hint_window_ms"),
            (BASE.replace("listen = ", "aae_keys_per_s = 0\nlisten = "), "must be positive"),
            (BASE.replace("listen = ", "request_timeout_ms = 60001\nlisten = "), "between 1 and 60000"),
            (BASE.replace("listen = ", "anti_entropy = \"yes\"\nlisten = "), "invalid type"),
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
