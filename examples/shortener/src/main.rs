//! `qkv-shortener`: the URL shortener's HTTP service (see the library's docs).
//!
//! ```sh
//! qkv-shortener --config cluster/client.toml --listen 127.0.0.1:8080
//! qkv-shortener --node 127.0.0.1:7003 --listen 127.0.0.1:8083   # as a service next to node 3 only
//! ```
//!
//! Once listening it prints `qkv-shortener listening on http://ADDR` on stdout (one
//! line; with `--listen 127.0.0.1:0` that says which port it got); logs go to stderr
//! (`RUST_LOG`, default `info`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use qkv_client::{Client, ClientConfig, Level};
use qkv_shortener::Shortener;

#[derive(Parser)]
#[command(name = "qkv-shortener", about = "A URL shortener over quorumkv: POST / to create, GET /{code} to follow")]
struct Args {
    /// The client config (nodes, TLS files, default deadline); QKV_* variables override it.
    #[arg(long, env = "QKV_CLIENT_CONFIG", default_value = "cluster/client.toml")]
    config: PathBuf,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// R for redirects: one, two, three, quorum, all or a number (writes are quorum, strict).
    #[arg(long, default_value = "one", value_parser = parse_level)]
    read_level: Level,
    /// Talk to this node only (repeat for several), instead of the config's list, and
    /// without routing by token: a service that sits next to one replica.
    #[arg(long = "node", value_name = "ADDR")]
    nodes: Vec<SocketAddr>,
    /// Prefix of the short links (default: http:// and the request's Host).
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse()
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qkv-shortener: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qkv-shortener: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(b) = &args.base_url
        && !(b.starts_with("http://") || b.starts_with("https://"))
    {
        bail!("--base-url must start with http:// or https://");
    }
    let cfg = ClientConfig::load(&args.config, |k| std::env::var(k).ok())?;
    let mut builder = cfg.builder();
    if !args.nodes.is_empty() {
        builder = builder.nodes(args.nodes.clone()).route_by_token(false);
    }
    let client: Client = builder.build()?;
    let mut state = Shortener::new(client, args.read_level);
    state.base_url = args.base_url.clone();
    // A create is a read and a write (more when a code is taken), each within the client's deadline.
    state.deadline = cfg.timeout * 3 + Duration::from_secs(1);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let nodes = if args.nodes.is_empty() { &cfg.nodes } else { &args.nodes };
    tracing::info!(
        "serving http://{addr}, redirects at R = {}, nodes {nodes:?}{}",
        args.read_level,
        if args.nodes.is_empty() { "" } else { " (pinned: no routing by token)" }
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "qkv-shortener listening on http://{addr}")?;
        out.flush()?;
    }
    qkv_shortener::serve(listener, qkv_shortener::app(state), shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
