//! Membership changes with real `qkv-node` processes.
//!
//! - A live join: three members take quorum writes, a fourth node starts as a joiner
//!   (its peers are the members, not itself), the join is staged and committed through
//!   the client API, and once the transition has ended everywhere every acknowledged
//!   write reads back at R = quorum and the new node is a home replica holding keys it
//!   fetched.
//! - Under load: quorum writes run while the cluster goes 3 → 5 (two joins) → 4 (a
//!   leave) → 4 (a killed node replaced); at the end every acknowledged write is there
//!   and every home replica of every key holds it (no range left under-replicated).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qkv_client::{Client, ClusterAdmin, ClusterChange, Level};
use qkv_core::layout::Plan;
use qkv_core::membership::{ClusterInfo, Phase};

/// Real processes by node id, killed when the test ends (also when it fails).
#[derive(Default)]
struct Nodes(BTreeMap<u32, Child>);

impl Nodes {
    fn start(&mut self, dir: &Path, id: u32) {
        self.0.insert(id, spawn(dir, id));
    }

    fn kill(&mut self, id: u32) {
        if let Some(mut c) = self.0.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in self.0.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node's config. Anti-entropy is off: what the checks find, range transfers, hinted
/// handoff and the writes to both home sets put there, not a later repair.
fn write_config(dir: &Path, id: u32, addr: SocketAddr, peers: &[(u32, SocketAddr)]) {
    let peers: String = peers.iter().map(|(i, a)| format!("{{ id = {i}, addr = \"{a}\" }},")).collect();
    let cfg = format!(
        "id = {id}\nlisten = \"{addr}\"\ndata_dir = \"data/node{id}\"\nreplication = 3\nworker_threads = 1\n\
         metrics_listen = \"off\"\npeers = [{peers}]\n[anti_entropy]\nenabled = false\n[tls]\nca = \"certs/ca.pem\"\n\
         cert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n"
    );
    std::fs::write(dir.join(format!("node{id}.toml")), cfg).unwrap();
}

fn spawn(dir: &Path, id: u32) -> Child {
    let log = std::fs::File::create(dir.join(format!("node{id}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_qkv-node"))
        .arg("--config")
        .arg(dir.join(format!("node{id}.toml")))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A client with the operator's certificate (it may change membership).
fn client(dir: &Path, nodes: &[SocketAddr]) -> Client {
    client_as(dir, nodes, "admin")
}

fn client_as(dir: &Path, nodes: &[SocketAddr], cert: &str) -> Client {
    let certs = dir.join("certs");
    Client::builder()
        .nodes(nodes.iter().copied())
        .tls(certs.join("ca.pem"), certs.join(format!("{cert}.pem")), certs.join(format!("{cert}.key")))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn show(c: &Client, node: SocketAddr) -> Option<ClusterInfo> {
    let b = c.cluster_admin(node, ClusterAdmin::Show).await.ok()?;
    ClusterInfo::decode(&b).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_live_cluster_and_no_acknowledged_write_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qkv_transport::certs::generate(&dir.join("certs"), &[1, 2, 3, 4], &["client"], &["admin"]).unwrap();
    let addrs: Vec<SocketAddr> = (0..4).map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
    let members: Vec<(u32, SocketAddr)> = (1..=3).map(|i| (i, addrs[i as usize - 1])).collect();
    for &(id, a) in &members {
        write_config(dir, id, a, &members);
    }
    // The joiner: its peers are the members (seeds), not itself.
    write_config(dir, 4, addrs[3], &members);

    let mut nodes = Nodes::default();
    for id in 1..=3 {
        nodes.start(dir, id);
    }
    let all = client(dir, &addrs);
    for &a in &addrs[..3] {
        wait_for(&format!("{a} serving"), Duration::from_secs(20), || async { all.status_of(a).await.is_ok() }).await;
    }
    let c = client(dir, &addrs[..3]);
    // Every node sees every other up before the writes (W = quorum needs two of three).
    wait_for("the members see each other up", Duration::from_secs(20), || async {
        let mut ok = true;
        for &a in &addrs[..3] {
            ok &= all.status_of(a).await.is_ok_and(|s| s.members.iter().all(|m| m.up));
        }
        ok
    })
    .await;

    let mut acked = vec![];
    for i in 0..300 {
        let (k, v) = (format!("key-{i}"), format!("value-{i}"));
        if c.put(k.clone(), v.clone()).w(Level::Quorum).await.is_ok() {
            acked.push((k, v));
        }
    }
    assert!(acked.len() >= 290, "only {} of 300 writes were acknowledged", acked.len());

    nodes.start(dir, 4);
    let joiner = addrs[3];
    wait_for("the joiner serving", Duration::from_secs(20), || async { all.status_of(joiner).await.is_ok() }).await;
    // Outside the cluster it refuses reads, saying why.
    let solo = client(dir, &[joiner]);
    let e = solo.get("key-1").await.expect_err("a node outside the cluster serves no reads").to_string();
    assert!(e.contains("not a member"), "{e}");
    // It learns the cluster's layout from its seeds.
    wait_for("the joiner takes the cluster's layout", Duration::from_secs(20), || async {
        show(&all, joiner).await.is_some_and(|i| i.cluster.epoch() == 1)
    })
    .await;

    let admin = addrs[0];
    let id = all.status_of(joiner).await.unwrap().node;
    assert_eq!(id, 4);
    // An application's certificate may look at the layout, not change it.
    let app = client_as(dir, &addrs[..3], "client");
    assert!(show(&app, admin).await.is_some());
    let join = ClusterChange::Join { id, addr: joiner.to_string() };
    let e = app.cluster_admin(admin, ClusterAdmin::Stage(join.clone())).await.expect_err("a client cert stages");
    assert!(e.to_string().contains("admin certificate"), "{e}");
    assert!(show(&all, admin).await.unwrap().staged.is_empty(), "the refused change was staged");
    let staged = all.cluster_admin(admin, ClusterAdmin::Stage(join)).await.unwrap();
    let plan = ClusterInfo::decode(&staged).unwrap().plan.expect("a stage answers with its plan");
    assert!(plan.ownership[&4].1 > 0.5, "node 4 takes a share: {:?}", plan.ownership);
    let committed = ClusterInfo::decode(&all.cluster_admin(admin, ClusterAdmin::Commit).await.unwrap()).unwrap();
    assert_eq!(committed.cluster.epoch(), 2);

    // The transition ends on every node: epoch 2, one layout in effect.
    wait_for("the join's transition ends everywhere", Duration::from_secs(45), || async {
        let mut done = true;
        for &a in &addrs {
            done &= show(&all, a).await.is_some_and(|i| i.cluster.epoch() == 2 && i.phase == Phase::Stable);
        }
        done
    })
    .await;

    // Every acknowledged write reads back at R = quorum, through any node.
    let mut missing = vec![];
    for (k, v) in &acked {
        match all.get(k.clone()).r(Level::Quorum).await {
            Ok(g) if g.values.iter().any(|x| x == v.as_bytes()) => {}
            other => missing.push(format!("{k}: {other:?}")),
        }
    }
    assert!(missing.is_empty(), "{} acknowledged writes lost: {:?}", missing.len(), &missing[..missing.len().min(5)]);

    // Node 4 is a home replica of some keys, and holds them.
    let mut homed = 0;
    for (k, v) in acked.iter().take(60) {
        let ring = all.ring(k.clone()).await.unwrap();
        if !ring.replicas.iter().any(|(n, _)| *n == 4) {
            continue;
        }
        homed += 1;
        let inspect = all.inspect(k.clone()).await.unwrap();
        let held = inspect.replicas.iter().find(|(n, _)| *n == 4).map(|(_, s)| s.clone());
        match held {
            Some(Ok(Some(set))) => {
                assert!(
                    set.siblings().iter().any(|s| s.value.as_deref() == Some(v.as_bytes())),
                    "{k} on node 4: {set:?}"
                )
            }
            other => panic!("{k}: node 4 is a home replica but holds {other:?}"),
        }
    }
    assert!(homed > 0, "node 4 is a home replica of none of 60 keys");
}

/// Stage `changes` on `admin`, commit them, and return the new epoch and the plan.
async fn change(all: &Client, admin: SocketAddr, changes: Vec<ClusterChange>) -> (u64, Plan) {
    for ch in changes {
        all.cluster_admin(admin, ClusterAdmin::Stage(ch.clone())).await.unwrap_or_else(|e| panic!("stage {ch:?}: {e}"));
    }
    let plan = ClusterInfo::decode(&all.cluster_admin(admin, ClusterAdmin::Plan).await.unwrap()).unwrap().plan.unwrap();
    let committed = all.cluster_admin(admin, ClusterAdmin::Commit).await.unwrap_or_else(|e| panic!("commit: {e}"));
    (ClusterInfo::decode(&committed).unwrap().cluster.epoch(), plan)
}

/// Until every node of `addrs` holds `epoch` with no transition running.
async fn settle(all: &Client, addrs: &[SocketAddr], epoch: u64, what: &str) {
    wait_for(what, Duration::from_secs(90), || async {
        let mut done = true;
        for &a in addrs {
            done &= show(all, a).await.is_some_and(|i| i.cluster.epoch() == epoch && i.phase == Phase::Stable);
        }
        done
    })
    .await;
}

/// Each member's share after a plan, and the spread of the shares around their mean.
fn spread(plan: &Plan) -> String {
    let after: Vec<(u32, f64)> = plan.ownership.iter().filter(|(_, s)| s.1 > 0.0).map(|(n, s)| (*n, s.1)).collect();
    let mean = after.iter().map(|(_, s)| s).sum::<f64>() / after.len() as f64;
    let worst = after.iter().map(|(_, s)| (s / mean - 1.0).abs()).fold(0.0, f64::max);
    let shares: Vec<String> = after.iter().map(|(n, s)| format!("{n}: {s:.3}")).collect();
    format!(
        "[{}], widest {:.1} % from the mean, {:.3} copies moved",
        shares.join(", "),
        worst * 100.0,
        plan.moved_share
    )
}

const LOAD_EVERY: Duration = Duration::from_millis(20);

/// The writes the load had acknowledged, and how many it had tried.
#[derive(Default)]
struct Load {
    acked: Mutex<Vec<(String, String)>>,
    tried: AtomicU64,
    stop: AtomicBool,
}

impl Load {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// Until the load has `n` more writes acknowledged.
async fn progress(load: &Load, n: usize) {
    let start = load.acked();
    wait_for(&format!("{n} more acknowledged writes"), Duration::from_secs(60), || async { load.acked() >= start + n })
        .await;
}

/// Quorum writes of fresh keys from `writers` tasks, through whichever client `route` holds now,
/// each task at most one write per `LOAD_EVERY` (so checking them all at the end stays short).
fn run_load(
    load: &Arc<Load>,
    route: &tokio::sync::watch::Receiver<Client>,
    writers: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let (load, route) = (load.clone(), route.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                let mut pace = tokio::time::interval(LOAD_EVERY);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !load.stop.load(Ordering::Relaxed) && i < 50_000 {
                    pace.tick().await;
                    let c = route.borrow().clone();
                    let (k, v) = (format!("load-{w}-{i}"), format!("value-{w}-{i}"));
                    load.tried.fetch_add(1, Ordering::Relaxed);
                    if c.put(k.clone(), v.clone()).w(Level::Quorum).await.is_ok() {
                        load.acked.lock().unwrap().push((k, v));
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

/// Keys some home replica of which does not hold the acknowledged value (or could not say).
async fn under_replicated(c: &Client, keys: &[(String, String)]) -> Vec<String> {
    let mut short = vec![];
    for (k, v) in keys {
        let held = match c.inspect(k.clone()).await {
            Ok(i) => {
                i.replicas.len() == 3
                    && i.replicas.iter().all(|(_, s)| {
                        matches!(s, Ok(Some(set)) if set.siblings().iter().any(|s| s.value.as_deref() == Some(v.as_bytes())))
                    })
            }
            Err(_) => false,
        };
        if !held {
            short.push(k.clone());
        }
    }
    short
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_quorum_writes_the_cluster_grows_shrinks_and_replaces_a_killed_node_losing_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids: Vec<u32> = (1..=6).collect();
    qkv_transport::certs::generate(&dir.join("certs"), &ids, &["client"], &["admin"]).unwrap();
    let addr: BTreeMap<u32, SocketAddr> =
        ids.iter().map(|&i| (i, format!("127.0.0.1:{}", free_port()).parse().unwrap())).collect();
    let at = |ids: &[u32]| ids.iter().map(|i| addr[i]).collect::<Vec<_>>();
    let seeds = |ids: &[u32]| ids.iter().map(|&i| (i, addr[&i])).collect::<Vec<_>>();
    for id in 1..=3 {
        write_config(dir, id, addr[&id], &seeds(&[1, 2, 3]));
    }
    let all = client(dir, &at(&ids));
    let mut nodes = Nodes::default();
    for id in 1..=3 {
        nodes.start(dir, id);
    }
    wait_for("the members see each other up", Duration::from_secs(30), || async {
        let mut ok = true;
        for a in at(&[1, 2, 3]) {
            ok &= all.status_of(a).await.is_ok_and(|s| s.members.len() == 3 && s.members.iter().all(|m| m.up));
        }
        ok
    })
    .await;

    let (route_tx, route) = tokio::sync::watch::channel(client(dir, &at(&[1, 2, 3])));
    let load = Arc::new(Load::default());
    let writers = run_load(&load, &route, 4);
    let writes_before = |load: &Load| load.acked();
    progress(&load, 500).await;

    // 3 → 4 → 5: two joins, one after the other, each a joiner seeded with the members.
    let mut members = vec![1, 2, 3];
    let mut epoch = 1;
    for id in [4, 5] {
        write_config(dir, id, addr[&id], &seeds(&members));
        nodes.start(dir, id);
        wait_for("the joiner takes the layout", Duration::from_secs(30), || async {
            show(&all, addr[&id]).await.is_some_and(|i| i.cluster.epoch() == epoch)
        })
        .await;
        let before = writes_before(&load);
        let t = Instant::now();
        let (e, plan) =
            change(&all, addr[&members[0]], vec![ClusterChange::Join { id, addr: addr[&id].to_string() }]).await;
        assert_eq!(e, epoch + 1);
        epoch = e;
        members.push(id);
        route_tx.send_replace(client(dir, &at(&members)));
        settle(&all, &at(&members), epoch, &format!("the join of node {id} ends")).await;
        eprintln!(
            "join of {id}: {:.1} s, {} writes acknowledged meanwhile; ownership {}",
            t.elapsed().as_secs_f64(),
            writes_before(&load) - before,
            spread(&plan)
        );
        progress(&load, 200).await;
    }

    // 5 → 4: node 1 leaves; once its data moved it stops.
    let (e, plan) = change(&all, addr[&2], vec![ClusterChange::Leave { id: 1 }]).await;
    assert_eq!(e, epoch + 1);
    epoch = e;
    members.retain(|&m| m != 1);
    route_tx.send_replace(client(dir, &at(&members)));
    settle(&all, &at(&members), epoch, "the leave of node 1 ends").await;
    nodes.kill(1);
    eprintln!("leave of 1: ownership {}", spread(&plan));
    progress(&load, 200).await;

    // 4 → 4: node 2 is killed under load, then node 6 replaces it.
    nodes.kill(2);
    progress(&load, 200).await;
    let live: Vec<u32> = members.iter().copied().filter(|&m| m != 2).collect();
    write_config(dir, 6, addr[&6], &seeds(&live));
    nodes.start(dir, 6);
    wait_for("node 6 takes the layout", Duration::from_secs(30), || async {
        show(&all, addr[&6]).await.is_some_and(|i| i.cluster.epoch() == epoch)
    })
    .await;
    let (e, plan) =
        change(&all, addr[&live[0]], vec![ClusterChange::Replace { old: 2, new: 6, addr: addr[&6].to_string() }]).await;
    assert_eq!(e, epoch + 1);
    epoch = e;
    assert_eq!(plan.unsourced, 0, "{plan:?}");
    members = live.iter().copied().chain([6]).collect();
    route_tx.send_replace(client(dir, &at(&members)));
    settle(&all, &at(&members), epoch, "the replace of node 2 by node 6 ends").await;
    eprintln!("replace of 2 by 6: ownership {}", spread(&plan));
    progress(&load, 200).await;

    load.stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = load.acked.lock().unwrap().clone();
    let tried = load.tried.load(Ordering::Relaxed);
    eprintln!("{} of {tried} writes acknowledged", acked.len());
    assert!(acked.len() as u64 * 10 >= tried * 9, "only {} of {tried} writes were acknowledged", acked.len());

    let c = client(dir, &at(&members));
    tokio::time::timeout(Duration::from_secs(300), check_all(&c, &acked))
        .await
        .expect("the final checks did not end within 300 s");
}

/// Every home replica of every key holds what was acknowledged for it (hints given a
/// deadline to arrive), and reads at R = quorum return it.
async fn check_all(c: &Client, acked: &[(String, String)]) {
    let c = c.clone();
    // Every home replica of every key holds what was acknowledged for it. Writes taken while
    // node 2 was dead wait in hints for its replacement, so this is given a deadline.
    let mut short = under_replicated(&c, acked).await;
    let first = short.len();
    let by_key: BTreeMap<String, String> = acked.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !short.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} keys short of a home replica, e.g. {:?}",
            short.len(),
            &short[..short.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let keys: Vec<(String, String)> = short.iter().map(|k| (k.clone(), by_key[k].clone())).collect();
        short = under_replicated(&c, &keys).await;
    }
    eprintln!("{first} keys were short of a home replica when the last change ended");

    // And reads at R = quorum return them, through any member.
    let mut missing = vec![];
    for (k, v) in acked {
        match c.get(k.clone()).r(Level::Quorum).await {
            Ok(g) if g.values.iter().any(|x| x == v.as_bytes()) => {}
            other => missing.push(format!("{k}: {other:?}")),
        }
    }
    assert!(missing.is_empty(), "{} acknowledged writes lost: {:?}", missing.len(), &missing[..missing.len().min(5)]);
}
