//! The client config file (`cluster/client.toml` for a `make cluster` cluster).
//!
//! ```toml
//! nodes = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
//! read = "quorum"        # default R
//! write = "quorum"       # default W
//! timeout_ms = 1000
//! [tls]
//! ca = "certs/ca.pem"    # relative paths are relative to this file
//! cert = "certs/client.pem"
//! key = "certs/client.key"
//! ```
//!
//! `QKV_NODES` (comma-separated), `QKV_READ`, `QKV_WRITE`, `QKV_TIMEOUT_MS`,
//! `QKV_TLS_CA`, `QKV_TLS_CERT` and `QKV_TLS_KEY` override the file.

use std::net::SocketAddr;
#[cfg(feature = "config-file")]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "config-file")]
use serde::Deserialize;

#[cfg(feature = "config-file")]
use crate::Error;
use crate::{ClientBuilder, Level};

#[cfg(feature = "config-file")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[cfg(feature = "config-file")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    nodes: Vec<String>,
    read: Option<String>,
    write: Option<String>,
    timeout_ms: Option<u64>,
    tls: TlsSection,
}

/// A parsed, validated client config.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Node addresses.
    pub nodes: Vec<SocketAddr>,
    /// Default R.
    pub read: Level,
    /// Default W.
    pub write: Level,
    /// Default deadline.
    pub timeout: Duration,
    /// CA certificate, client certificate, client key.
    pub tls: (PathBuf, PathBuf, PathBuf),
}

impl ClientConfig {
    /// Read `path` and apply overrides from `env` (feature `config-file`, on by default).
    #[cfg(feature = "config-file")]
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<ClientConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read {}: {e} (run `make cluster`, or pass --config)", path.display()))
        })?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")), env)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parse config text; relative paths are taken from `base` (feature `config-file`).
    #[cfg(feature = "config-file")]
    pub fn parse(text: &str, base: &Path, env: impl Fn(&str) -> Option<String>) -> Result<ClientConfig, String> {
        let f: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let nodes_text =
            env("QKV_NODES").map(|s| s.split(',').map(|x| x.trim().to_string()).collect()).unwrap_or(f.nodes);
        let nodes = nodes_text
            .iter()
            .map(|n| n.parse::<SocketAddr>().map_err(|_| format!("invalid node address `{n}` (want IP:PORT)")))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err("no nodes listed".into());
        }
        let level = |v: Option<String>| v.map(|s| s.parse::<Level>()).transpose().map(|l| l.unwrap_or(Level::Quorum));
        let read = level(env("QKV_READ").or(f.read))?;
        let write = level(env("QKV_WRITE").or(f.write))?;
        let timeout_ms = match env("QKV_TIMEOUT_MS") {
            Some(t) => Some(t.parse::<u64>().map_err(|_| format!("QKV_TIMEOUT_MS: `{t}` is not a number"))?),
            None => f.timeout_ms,
        }
        .unwrap_or(1000);
        if timeout_ms == 0 || timeout_ms > qkv_proto::REQUEST_TIMEOUT_MS_MAX {
            return Err(format!("timeout_ms must be between 1 and {}", qkv_proto::REQUEST_TIMEOUT_MS_MAX));
        }
        let path = |v: Option<String>, p: PathBuf| {
            let p = v.map(PathBuf::from).unwrap_or(p);
            if p.is_relative() { base.join(p) } else { p }
        };
        Ok(ClientConfig {
            nodes,
            read,
            write,
            timeout: Duration::from_millis(timeout_ms),
            tls: (
                path(env("QKV_TLS_CA"), f.tls.ca),
                path(env("QKV_TLS_CERT"), f.tls.cert),
                path(env("QKV_TLS_KEY"), f.tls.key),
            ),
        })
    }

    /// A builder set up from this config.
    pub fn builder(&self) -> ClientBuilder {
        ClientBuilder::default()
            .nodes(self.nodes.clone())
            .tls(self.tls.0.clone(), self.tls.1.clone(), self.tls.2.clone())
            .read_level(self.read)
            .write_level(self.write)
            .timeout(self.timeout)
    }
}

#[cfg(all(test, feature = "config-file"))]
mod tests {
    use super::*;

    const TEXT: &str = r#"
nodes = ["127.0.0.1:7001", "127.0.0.1:7002"]
write = "all"
[tls]
ca = "certs/ca.pem"
cert = "certs/client.pem"
key = "/abs/client.key"
"#;

    #[test]
    fn parses_with_defaults_and_overrides() {
        let c = ClientConfig::parse(TEXT, Path::new("/c"), |_| None).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!((c.read, c.write), (Level::Quorum, Level::All));
        assert_eq!(c.tls.0, Path::new("/c/certs/ca.pem"));
        assert_eq!(c.tls.2, Path::new("/abs/client.key"));
        let env = |k: &str| (k == "QKV_NODES").then(|| "127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3".to_string());
        assert_eq!(ClientConfig::parse(TEXT, Path::new("."), env).unwrap().nodes.len(), 3);
    }

    #[test]
    fn bad_input_says_why() {
        let env = |k: &str| (k == "QKV_NODES").then(|| "localhost".to_string());
        assert!(ClientConfig::parse(TEXT, Path::new("."), env).unwrap_err().contains("invalid node address"));
        assert!(ClientConfig::parse(&TEXT.replace("all", "most"), Path::new("."), |_| None).is_err());
        assert!(ClientConfig::parse("nodes = []", Path::new("."), |_| None).is_err());
    }
}
