//! `qkv cluster ...`: membership changes staged, planned and committed on one node,
//! and the membership part of `qkv status`.
//!
//! Every answer is a node's `qkv_core::membership::ClusterInfo`; `--json` prints it as
//! [`InfoDto`], a stable shape of its own (not the core's types, which may change).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use qkv_client::{Client, ClusterAdmin, ClusterChange, NodeId};
use qkv_core::layout::{Change, Layout, Plan};
use qkv_core::membership::{ClusterInfo, Transfer};
use serde::Serialize;

/// Ranges of a plan printed as text (`--json` has them all).
const MOVES_SHOWN: usize = 24;
/// Transfer rows printed as text, unfinished ones first (`--json` has them all).
const TRANSFERS_SHOWN: usize = 48;
/// How long a name given for a node's address may take to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Options every `qkv cluster` subcommand takes.
#[derive(Args, Clone)]
pub struct Opts {
    /// The node to stage on, plan, commit or show [default: the first of the config's nodes].
    #[arg(long)]
    node: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The `qkv cluster` subcommands.
#[derive(Subcommand)]
pub enum ClusterCmd {
    /// The node's layouts in effect (epoch, members, ownership), the step of a
    /// transition, the changes staged on it and its range transfers.
    Show {
        #[command(flatten)]
        opts: Opts,
    },
    /// Stage the join of the node listening at ADDR (host:port, the address the other
    /// nodes will dial it at); its id is asked of it. Start it first, with a config whose
    /// peers are members of this cluster (not itself).
    Join {
        /// The new node's address.
        addr: String,
        #[command(flatten)]
        opts: Opts,
    },
    /// Stage the leave of member NODE: its ranges go to the others, and it drops them
    /// once they hold them (stop it when `qkv cluster show` says stable).
    Leave {
        /// The member's id.
        #[arg(value_name = "NODE")]
        id: NodeId,
        #[command(flatten)]
        opts: Opts,
    },
    /// Stage the replacement of member OLD (a dead one: nothing is fetched from it) by
    /// the node listening at NEW_ADDR, which takes exactly OLD's ranges.
    Replace {
        /// The member replaced.
        old: NodeId,
        /// The new node's address (host:port); its id is asked of it.
        new_addr: String,
        #[command(flatten)]
        opts: Opts,
    },
    /// The plan of the staged changes: each node's ownership before and after, the
    /// ranges that move and from where, and warnings.
    Plan {
        #[command(flatten)]
        opts: Opts,
    },
    /// Commit the staged changes as the next layout epoch (a vote among the members);
    /// data then moves in the background: watch it with `qkv cluster show` or `qkv status`.
    Commit {
        #[command(flatten)]
        opts: Opts,
    },
    /// Drop the changes staged on the node.
    Abort {
        #[command(flatten)]
        opts: Opts,
    },
    /// Declare member NODE gone for good (its machine or disk is lost): a change in
    /// flight stops waiting for it, nothing is fetched from, handed to or routed to it,
    /// and what it alone held is lost. Then replace it (`qkv cluster replace NODE
    /// NEW_ADDR`) or, once any change in flight is done, retire it (`qkv cluster leave
    /// NODE`). Refused while the answering node sees NODE up. If a forgotten node comes
    /// back it serves nothing: wipe its data directory and add it as a new node.
    Forget {
        /// The member's id.
        #[arg(value_name = "NODE")]
        id: NodeId,
        #[command(flatten)]
        opts: Opts,
    },
}

/// Resolve `host:port` (or `ip:port`) to one address, within a deadline.
pub async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(addr))
        .await
        .map_err(|_| anyhow::anyhow!("looking up `{addr}` took over {} s", LOOKUP_TIMEOUT.as_secs()))?
        .with_context(|| format!("`{addr}` is not an address (host:port)"))?
        .next();
    found.ok_or_else(|| anyhow::anyhow!("`{addr}` resolves to no address"))
}

async fn node_id_at(c: &Client, addr: &str) -> anyhow::Result<NodeId> {
    let a = resolve(addr).await?;
    let s = c.status_of(a).await.with_context(|| format!("asking the node at {addr} for its id"))?;
    Ok(s.node)
}

/// Run one `qkv cluster` subcommand.
pub async fn run(c: &Client, cmd: ClusterCmd) -> anyhow::Result<ExitCode> {
    let (opts, admin) = match cmd {
        ClusterCmd::Show { opts } => (opts, ClusterAdmin::Show),
        ClusterCmd::Plan { opts } => (opts, ClusterAdmin::Plan),
        ClusterCmd::Commit { opts } => (opts, ClusterAdmin::Commit),
        ClusterCmd::Abort { opts } => (opts, ClusterAdmin::Abort),
        ClusterCmd::Forget { id, opts } => (opts, ClusterAdmin::Forget { id }),
        ClusterCmd::Leave { id, opts } => (opts, ClusterAdmin::Stage(ClusterChange::Leave { id })),
        ClusterCmd::Join { addr, opts } => {
            let id = node_id_at(c, &addr).await?;
            (opts, ClusterAdmin::Stage(ClusterChange::Join { id, addr }))
        }
        ClusterCmd::Replace { old, new_addr, opts } => {
            let new = node_id_at(c, &new_addr).await?;
            if new == old {
                bail!("the node at {new_addr} is node {old} itself: a replacement is a new node, with a new id");
            }
            (opts, ClusterAdmin::Stage(ClusterChange::Replace { old, new, addr: new_addr }))
        }
    };
    let node = match &opts.node {
        Some(n) => resolve(n).await?,
        None => *c.nodes().first().context("the client config lists no node")?,
    };
    let committing = matches!(admin, ClusterAdmin::Commit);
    let what = admin.clone();
    let bytes = match c.cluster_admin(node, admin).await {
        Ok(b) => b,
        Err(e) if committing => {
            let text = e.to_string();
            if text.contains("another change was committed") || text.contains("another commit is running") {
                bail!("layout changed meanwhile: re-plan ({text})");
            }
            bail!("node at {node}: {text}");
        }
        Err(e) => bail!("node at {node}: {e}"),
    };
    let info = ClusterInfo::decode(&bytes).map_err(|e| anyhow::anyhow!("node at {node}: {e}"))?;
    if opts.json {
        println!("{}", serde_json::to_string(&InfoDto::from(&info))?);
        return Ok(ExitCode::SUCCESS);
    }
    match what {
        ClusterAdmin::Stage(_) => {
            println!("staged on node {} ({node}):", info.node);
            for s in &info.staged {
                println!("  {}", change_text(s));
            }
            if let Some(p) = &info.plan {
                println!();
                print_plan(p);
            }
            println!();
            println!("commit with `qkv cluster commit`, or drop with `qkv cluster abort` (on this same node)");
        }
        ClusterAdmin::Plan => match &info.plan {
            Some(p) => {
                for s in &info.staged {
                    println!("staged: {}", change_text(s));
                }
                print_plan(p)
            }
            None => println!("node {}: nothing staged", info.node),
        },
        ClusterAdmin::Commit => {
            println!(
                "committed layout epoch {} (node {}); data now moves: phase {}",
                info.cluster.epoch(),
                info.node,
                info.phase.name()
            );
            println!("watch it with `qkv cluster show` or `qkv status`");
        }
        ClusterAdmin::Abort => println!("node {}: staged changes dropped", info.node),
        ClusterAdmin::Forget { id } => {
            println!(
                "node {}: node {id} is forgotten (layout epoch {}, phase {})",
                info.node,
                info.cluster.epoch(),
                info.phase.name()
            );
            if info.cluster.old().is_some() {
                println!(
                    "the change in flight goes on without it; then replace it with `qkv cluster replace {id} NEW_ADDR`"
                );
            } else {
                println!(
                    "replace it with `qkv cluster replace {id} NEW_ADDR`, or retire it with `qkv cluster leave {id}`"
                );
            }
        }
        ClusterAdmin::Show => print_show(&info),
    }
    Ok(ExitCode::SUCCESS)
}

fn change_text(c: &Change) -> String {
    match c {
        Change::Join { id, addr } => format!("join node {id} at {addr}"),
        Change::Leave { id } => format!("leave node {id}"),
        Change::Replace { old, new, addr } => format!("replace node {old} by node {new} at {addr}"),
    }
}

fn pct(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn ids(v: &[NodeId]) -> String {
    if v.is_empty() { "-".into() } else { v.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",") }
}

fn range_text(lo: u64, hi: u64) -> String {
    if lo == hi { "whole ring".into() } else { format!("{lo:016x}..{hi:016x}") }
}

fn print_plan(p: &Plan) {
    println!("plan: layout epoch {} -> {}", p.epochs.0, p.epochs.1);
    println!("{:<6}{:>9}{:>9}", "NODE", "BEFORE", "AFTER");
    for (id, (b, a)) in &p.ownership {
        println!("{id:<6}{:>9}{:>9}", pct(*b), pct(*a));
    }
    println!(
        "{} ranges move ({:.3} of one copy of the keys); new home replicas fetch them from the current ones:",
        p.moves.len(),
        p.moved_share
    );
    if !p.moves.is_empty() {
        println!("  {:<36}{:<12}{:<10}DROPPED BY", "RANGE", "FROM", "TO");
        for m in p.moves.iter().take(MOVES_SHOWN) {
            println!("  {:<36}{:<12}{:<10}{}", range_text(m.lo, m.hi), ids(&m.from), ids(&m.to), ids(&m.drop));
        }
        if p.moves.len() > MOVES_SHOWN {
            println!("  ... and {} more (--json lists them all)", p.moves.len() - MOVES_SHOWN);
        }
    }
    for w in &p.warnings {
        println!("warning: {w}");
    }
}

fn print_show(info: &ClusterInfo) {
    let c = &info.cluster;
    println!("node {}: layout epoch {}, phase {}", info.node, c.epoch(), info.phase.name());
    for l in &c.versions {
        let tag = if c.old().is_some_and(|o| o.epoch == l.epoch) { " (being left)" } else { "" };
        println!("epoch {}{tag}: N={}, {} members", l.epoch, l.n, l.members.len());
        let own = l.ownership();
        for (id, m) in &l.members {
            let lost = if c.is_lost(*id) { "  forgotten" } else { "" };
            println!("  node {id:<4}{:<24}{:>8}{lost}", m.addr, pct(own.get(id).copied().unwrap_or(0.0)));
        }
    }
    if c.old().is_some() {
        let e = c.epoch();
        println!("progress through epoch {e} (each step done by every node before the next):");
        println!("  {:<6}{:<7}{:<8}{:<13}DROPPED", "NODE", "ACKED", "SYNCED", "READING NEW");
        for id in c.participants() {
            let p = c.progress_of(id);
            let yes = |v: u64| if v >= e { "yes" } else { "no" };
            println!("  {id:<6}{:<7}{:<8}{:<13}{}", yes(p.acked), yes(p.synced), yes(p.reading), yes(p.dropped));
        }
    }
    if info.staged.is_empty() {
        println!("staged: nothing");
    } else {
        for s in &info.staged {
            println!("staged: {}", change_text(s));
        }
    }
    if !info.transfers.is_empty() {
        print_transfers(&[info]);
    }
    if info.dropped_keys > 0 {
        println!("dropped {} keys of ranges this node no longer holds", info.dropped_keys);
    }
}

/// Each configured node's membership view, in the order of `c.nodes()` (`None`: no answer).
pub async fn infos(c: &Client) -> Vec<Option<ClusterInfo>> {
    let mut out = vec![];
    for &n in c.nodes() {
        let got = c.cluster_admin(n, ClusterAdmin::Show).await.ok();
        out.push(got.and_then(|b| ClusterInfo::decode(&b).ok()));
    }
    out
}

/// The membership part of `qkv status`: each node's layout epoch, phase and staged
/// changes, and every node's range transfers.
pub fn print_status(infos: &[&ClusterInfo]) {
    if infos.is_empty() {
        return;
    }
    println!();
    println!("membership:");
    for i in infos {
        let staged: Vec<String> = i.staged.iter().map(change_text).collect();
        let moving = match i.cluster.old() {
            Some(o) => format!(" (moving data from epoch {})", o.epoch),
            None => String::new(),
        };
        println!(
            "node {}: layout epoch {}, phase {}{moving}; staged: {}{}",
            i.node,
            i.cluster.epoch(),
            i.phase.name(),
            if staged.is_empty() { "nothing".into() } else { staged.join(", ") },
            if i.dropped_keys > 0 {
                format!("; {} keys of lost ranges dropped", i.dropped_keys)
            } else {
                String::new()
            }
        );
    }
    if infos.iter().any(|i| !i.transfers.is_empty()) {
        println!();
        println!("transfers (ranges new home replicas fetch; left and ETA estimated from the share passed):");
        print_transfers(infos);
    }
}

/// The transfers table of one or more nodes (`qkv status`, `qkv cluster show`).
pub fn print_transfers(infos: &[&ClusterInfo]) {
    println!(
        "{:<36}{:>5}{:>5}{:>11}{:>11}{:>11}{:>11}{:>12}{:>9}",
        "RANGE", "FROM", "TO", "KEYS DONE", "KEYS LEFT", "BYTES DONE", "BYTES LEFT", "RATE", "ETA"
    );
    let mut rows: Vec<(&ClusterInfo, &Transfer, f64)> =
        infos.iter().flat_map(|i| i.transfers.iter().map(move |(t, r)| (*i, t, *r))).collect();
    // Unfinished first; the sort is stable, so each node's ranges stay in ring order.
    rows.sort_by_key(|(_, t, _)| t.done);
    let total = rows.len();
    let done = rows.iter().filter(|(_, t, _)| t.done).count();
    for (info, t, rate) in rows.into_iter().take(TRANSFERS_SHOWN) {
        let d = TransferDto::new(info.node, t, rate);
        let left = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("~{v}"));
        let eta = match (d.done, d.eta_s) {
            (true, _) => "done".to_string(),
            (false, Some(s)) => format!("{s:.0} s"),
            (false, None) if d.failures > 0 => "failing".to_string(),
            (false, None) => "-".to_string(),
        };
        println!(
            "{:<36}{:>5}{:>5}{:>11}{:>11}{:>11}{:>11}{:>12}{:>9}",
            range_text(t.lo, t.hi),
            t.from,
            info.node,
            t.keys,
            if d.done { "0".into() } else { left(d.keys_left) },
            crate::bytes_text(t.bytes as f64),
            if d.done { "0 B".into() } else { d.bytes_left.map_or("?".into(), |b| crate::bytes_text(b as f64)) },
            format!("{}/s", crate::bytes_text(rate)),
            eta
        );
        if let Some(e) = &t.last_error {
            println!("  last error ({} in a row): {e}", t.failures);
        }
    }
    if total > TRANSFERS_SHOWN {
        println!("... {} more rows; {done} of {total} transfers done (--json lists them all)", total - TRANSFERS_SHOWN);
    }
}

/// What `--json` prints of a node's [`ClusterInfo`].
#[derive(Serialize)]
pub struct InfoDto {
    /// The answering node.
    pub node: NodeId,
    /// The newest layout epoch.
    pub epoch: u64,
    /// `stable`, `acking`, `syncing`, `switching` or `dropping`.
    pub phase: &'static str,
    /// The layouts in effect, oldest first (two during a transition).
    pub layouts: Vec<LayoutDto>,
    /// Each participant's steps through the newest epoch (empty when stable).
    pub progress: Vec<ProgressDto>,
    /// Changes staged on the node.
    pub staged: Vec<ChangeDto>,
    /// The plan of the staged changes (stage and plan answers).
    pub plan: Option<PlanDto>,
    /// The node's range transfers.
    pub transfers: Vec<TransferDto>,
    /// Keys dropped since start from ranges the node no longer holds.
    pub dropped_keys: u64,
    /// Members forgotten (`qkv cluster forget`).
    pub forgotten: Vec<NodeId>,
}

/// A layout.
#[derive(Serialize)]
pub struct LayoutDto {
    /// Its epoch.
    pub epoch: u64,
    /// Replication factor.
    pub n: usize,
    /// Members with their address and share as a home replica (summing to N).
    pub members: Vec<MemberDto>,
    /// Nodes this epoch replaced.
    pub replaced: Vec<NodeId>,
}

/// A member of a layout.
#[derive(Serialize)]
pub struct MemberDto {
    /// Its id.
    pub node: NodeId,
    /// Its peer address.
    pub addr: String,
    /// Its share of the key space as a home replica.
    pub ownership: f64,
}

/// A participant's progress.
#[derive(Serialize)]
pub struct ProgressDto {
    /// Its id.
    pub node: NodeId,
    /// Writes to both home sets.
    pub acked: bool,
    /// Holds every range it gains.
    pub synced: bool,
    /// Reads from the new home set.
    pub reading: bool,
    /// Handed over and deleted the ranges it lost.
    pub dropped: bool,
}

/// A staged change.
#[derive(Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ChangeDto {
    /// A node joins.
    Join {
        /// Its id.
        node: NodeId,
        /// Its address.
        addr: String,
    },
    /// A member leaves.
    Leave {
        /// Its id.
        node: NodeId,
    },
    /// A new node replaces a member.
    Replace {
        /// The member.
        old: NodeId,
        /// The new node.
        new: NodeId,
        /// The new node's address.
        addr: String,
    },
}

/// A plan.
#[derive(Serialize)]
pub struct PlanDto {
    /// The epoch before.
    pub epoch_before: u64,
    /// The epoch after.
    pub epoch_after: u64,
    /// Each node's share before and after.
    pub ownership: Vec<OwnershipDto>,
    /// The ranges that move.
    pub moves: Vec<MoveDto>,
    /// The share of one copy of the keys that moves.
    pub moved_share: f64,
    /// Warnings, in words.
    pub warnings: Vec<String>,
}

/// A node's share before and after a plan.
#[derive(Serialize)]
pub struct OwnershipDto {
    /// Its id.
    pub node: NodeId,
    /// Share before (0: not a member).
    pub before: f64,
    /// Share after (0: not a member).
    pub after: f64,
}

/// A range that moves: tokens `lo + 1 ..= hi`, wrapping (`lo == hi`: the whole ring).
#[derive(Serialize)]
pub struct MoveDto {
    /// Start (exclusive).
    pub lo: u64,
    /// End (inclusive).
    pub hi: u64,
    /// Its home replicas now.
    pub from: Vec<NodeId>,
    /// Home replicas it gains.
    pub to: Vec<NodeId>,
    /// Home replicas that drop it.
    pub drop: Vec<NodeId>,
}

/// A range transfer.
#[derive(Serialize)]
pub struct TransferDto {
    /// Start of the range (exclusive).
    pub lo: u64,
    /// End (inclusive).
    pub hi: u64,
    /// The node it is fetched from.
    pub from: NodeId,
    /// The node fetching it.
    pub to: NodeId,
    /// Every page fetched and durable.
    pub done: bool,
    /// Keys fetched.
    pub keys_done: u64,
    /// Bytes fetched.
    pub bytes_done: u64,
    /// Share of the range's tokens passed.
    pub fraction_done: f64,
    /// Keys left, estimated from the share passed (`None` before the first page).
    pub keys_left: Option<u64>,
    /// Bytes left, estimated likewise.
    pub bytes_left: Option<u64>,
    /// Bytes per second since the transition started on this node.
    pub rate_bytes_per_s: f64,
    /// Seconds left at that rate.
    pub eta_s: Option<f64>,
    /// Failed pages in a row.
    pub failures: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

impl TransferDto {
    fn new(to: NodeId, t: &Transfer, rate: f64) -> TransferDto {
        let f = t.fraction_done();
        let left = |done: u64| t.left_of(done).map(|l| l.round() as u64);
        let bytes_left = left(t.bytes);
        let eta_s = match bytes_left {
            Some(0) => Some(0.0),
            Some(b) if rate > 0.0 => Some(b as f64 / rate),
            _ => None,
        };
        TransferDto {
            lo: t.lo,
            hi: t.hi,
            from: t.from,
            to,
            done: t.done,
            keys_done: t.keys,
            bytes_done: t.bytes,
            fraction_done: f,
            keys_left: left(t.keys),
            bytes_left,
            rate_bytes_per_s: rate,
            eta_s,
            failures: t.failures,
            last_error: t.last_error.clone(),
        }
    }
}

fn layout_dto(l: &Layout) -> LayoutDto {
    let own = l.ownership();
    LayoutDto {
        epoch: l.epoch,
        n: l.n,
        members: l
            .members
            .iter()
            .map(|(&node, m)| MemberDto {
                node,
                addr: m.addr.clone(),
                ownership: own.get(&node).copied().unwrap_or(0.0),
            })
            .collect(),
        replaced: l.replaced.clone(),
    }
}

impl From<&Change> for ChangeDto {
    fn from(c: &Change) -> ChangeDto {
        match c.clone() {
            Change::Join { id, addr } => ChangeDto::Join { node: id, addr },
            Change::Leave { id } => ChangeDto::Leave { node: id },
            Change::Replace { old, new, addr } => ChangeDto::Replace { old, new, addr },
        }
    }
}

impl From<&Plan> for PlanDto {
    fn from(p: &Plan) -> PlanDto {
        PlanDto {
            epoch_before: p.epochs.0,
            epoch_after: p.epochs.1,
            ownership: p
                .ownership
                .iter()
                .map(|(&node, &(before, after))| OwnershipDto { node, before, after })
                .collect(),
            moves: p
                .moves
                .iter()
                .map(|m| MoveDto { lo: m.lo, hi: m.hi, from: m.from.clone(), to: m.to.clone(), drop: m.drop.clone() })
                .collect(),
            moved_share: p.moved_share,
            warnings: p.warnings.clone(),
        }
    }
}

impl From<&ClusterInfo> for InfoDto {
    fn from(i: &ClusterInfo) -> InfoDto {
        let c = &i.cluster;
        let e = c.epoch();
        let progress = if c.old().is_some() {
            c.participants()
                .into_iter()
                .map(|node| {
                    let p = c.progress_of(node);
                    ProgressDto {
                        node,
                        acked: p.acked >= e,
                        synced: p.synced >= e,
                        reading: p.reading >= e,
                        dropped: p.dropped >= e,
                    }
                })
                .collect()
        } else {
            vec![]
        };
        InfoDto {
            node: i.node,
            epoch: e,
            phase: i.phase.name(),
            layouts: c.versions.iter().map(layout_dto).collect(),
            progress,
            staged: i.staged.iter().map(ChangeDto::from).collect(),
            plan: i.plan.as_ref().map(PlanDto::from),
            transfers: i.transfers.iter().map(|(t, r)| TransferDto::new(i.node, t, *r)).collect(),
            dropped_keys: i.dropped_keys,
            forgotten: c.lost.iter().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_core::membership::Phase;

    fn transfer(done: bool, cursor: Option<u64>, keys: u64, bytes: u64) -> Transfer {
        Transfer {
            lo: 0,
            hi: 1000,
            from: 2,
            cursor: cursor.map(|t| (t, vec![])),
            done,
            keys,
            bytes,
            failures: 0,
            last_error: None,
        }
    }

    #[test]
    fn transfers_estimate_what_is_left_from_the_share_passed() {
        let d = TransferDto::new(4, &transfer(false, Some(251), 100, 10_000), 1000.0);
        assert!((d.fraction_done - 0.25).abs() < 0.01, "{}", d.fraction_done);
        assert_eq!(d.keys_left, Some(300));
        assert_eq!(d.bytes_left, Some(30_000));
        assert!((d.eta_s.unwrap() - 30.0).abs() < 0.5);
        let start = TransferDto::new(4, &transfer(false, None, 0, 0), 0.0);
        assert_eq!((start.keys_left, start.eta_s), (None, None), "nothing to estimate from yet");
        let done = TransferDto::new(4, &transfer(true, None, 7, 70), 5.0);
        assert_eq!((done.keys_left, done.bytes_left, done.eta_s), (Some(0), Some(0), Some(0.0)));
    }

    #[test]
    fn json_of_a_cluster_info_is_stable() {
        let seeds: Vec<(NodeId, String)> = (1..=3).map(|i| (i, format!("127.0.0.1:700{i}"))).collect();
        let before = Layout::legacy(&seeds, 8, 3).unwrap();
        let change = Change::Join { id: 4, addr: "127.0.0.1:7004".into() };
        let after = before.apply(&change).unwrap();
        let plan = Plan::new(&before, &after).unwrap();
        let info = ClusterInfo {
            node: 1,
            cluster: qkv_core::membership::Cluster::new(before),
            phase: Phase::Stable,
            staged: vec![change],
            plan: Some(plan),
            transfers: vec![],
            dropped_keys: 0,
        };
        let v = serde_json::to_value(InfoDto::from(&info)).unwrap();
        assert_eq!(v["epoch"], 1);
        assert_eq!(v["phase"], "stable");
        assert_eq!(v["staged"][0], serde_json::json!({"change": "join", "node": 4, "addr": "127.0.0.1:7004"}));
        assert_eq!(v["plan"]["epoch_after"], 2);
        assert_eq!(v["plan"]["ownership"].as_array().unwrap().len(), 4);
        let moves = v["plan"]["moves"].as_array().unwrap();
        assert!(moves.iter().any(|m| m["to"].as_array().unwrap().contains(&serde_json::json!(4))), "{moves:?}");
        assert_eq!(v["layouts"][0]["members"].as_array().unwrap().len(), 3);
    }
}
