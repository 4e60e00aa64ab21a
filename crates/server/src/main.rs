//! `qkv-node`: one quorumkv replica.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc: per-thread free lists, and no trimming and regrowing of the heap's top
/// under a steady load (glibc's malloc spent a tenth of a node's time there).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

/// Run one quorumkv node.
///
/// Settings come from the TOML file, overridden by QKV_* environment variables
/// (QKV_LISTEN, QKV_DATA_DIR, QKV_PERSIST, QKV_TLS_CERT, ...). Logs go to stderr;
/// set RUST_LOG (e.g. RUST_LOG=debug) for more. SIGTERM or Ctrl-C shuts down cleanly.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The node's config file.
    #[arg(long, env = "QKV_CONFIG")]
    config: PathBuf,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    // A panic is a broken invariant (input is refused with an error before it gets
    // that far): stop the node rather than run on with its core half-updated.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let cfg = match qkv_server::Config::load(&args.config, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qkv-node: invalid config: {e:#}");
            return ExitCode::from(2);
        }
    };
    for d in &cfg.deprecated {
        tracing::warn!("{}: {d}", args.config.display());
    }
    if args.check {
        for d in &cfg.deprecated {
            println!("{}: note: {d}", args.config.display());
        }
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.worker_threads > 0 {
        rt.worker_threads(cfg.worker_threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qkv-node: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            let _ = tx.send(true);
        });
        qkv_server::run(cfg, rx).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qkv-node: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
