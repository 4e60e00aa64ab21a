//! The quorumkv server: drives the sans-IO core with tokio, quinn and fjall.
//! The binary `qkv-node` wraps [`run`].
//!
//! # Layout
//! - [`config`]: the TOML config, `QKV_*` overrides, validation.
//! - [`storage`]: fjall keyspaces, persist policies, group commit.
//! - [`migrate`]: bringing a data dir of an earlier layout up to this build's.
//! - [`driver`]: the core thread that owns the sans-IO `qkv_core::Core`, its inboxes and
//!   the per-peer sender tasks.
//! - [`service`]: the request handler, and what the core thread shares with the tasks.
//! - [`status`]: the status reply, made from the core's report.
//! - [`metrics`]: the metrics registry; [`http`]: the Prometheus endpoint.

pub mod config;
pub mod driver;
pub mod http;
pub mod latency;
pub mod metrics;
pub mod migrate;
pub mod service;
pub mod status;
pub mod storage;

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::info;

pub use config::Config;
pub use service::Node;

/// Run a node until `shutdown` turns true, then close connections and flush storage.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let storage =
        std::sync::Arc::new(storage::Storage::open(&cfg.data_dir, cfg.id, cfg.persist, cfg.persist_period_ms)?);
    if storage.fresh() {
        tracing::info!(
            epoch = format_args!("{:08x}", storage.epoch()),
            "new data dir: this disk writes as a new actor; anti-entropy will fill it from the other replicas"
        );
    }
    let endpoint = qkv_transport::node_endpoint(cfg.listen, &cfg.tls_files()).context("starting the QUIC endpoint")?;
    let frame_bytes_max = cfg.frame_bytes_max();
    let pool = qkv_transport::Pool::new(endpoint.clone(), frame_bytes_max);
    let metrics_listener = http::bind(cfg.metrics_addr()?).await?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let node = Node::new(&cfg, storage, pool, metrics_addr)?;
    if let Some(l) = metrics_listener {
        info!(addr = ?metrics_addr, "serving Prometheus metrics at /metrics");
        let n = node.clone();
        tokio::spawn(http::serve(l, std::sync::Arc::new(move || n.prometheus()), shutdown.clone()));
    }
    info!(id = cfg.id, listen = %cfg.listen, persist = ?cfg.persist, n = cfg.replication, "node up");
    if cfg.joiner() {
        info!(
            "peers do not list node {}: they are seeds; until `qkv cluster join` has made it a member (see \
             `qkv cluster show`) it takes the cluster's layout from them and refuses reads and writes",
            cfg.id
        );
    }
    qkv_transport::serve(endpoint.clone(), std::sync::Arc::new(node.clone()), frame_bytes_max, shutdown).await;
    info!("shutting down: closing connections");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    node.stop().await;
    node.storage().flush()?;
    info!("storage flushed; bye");
    Ok(())
}
