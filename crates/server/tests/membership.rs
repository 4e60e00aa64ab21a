//! A live join with real `qkv-node` processes: three members take quorum writes, a
//! fourth node starts as a joiner (its peers are the members, not itself), the join
//! is staged and committed through the client API, and once the transition has
//! ended everywhere every acknowledged write reads back at R = quorum and the new
//! node is a home replica holding keys it fetched.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qkv_client::{Client, ClusterAdmin, ClusterChange, Level};
use qkv_core::membership::{ClusterInfo, Phase};

/// Real processes, killed when the test ends (also when it fails).
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
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

fn write_config(dir: &Path, id: u32, addr: SocketAddr, peers: &[(u32, SocketAddr)]) {
    let peers: String = peers.iter().map(|(i, a)| format!("{{ id = {i}, addr = \"{a}\" }},")).collect();
    let cfg = format!(
        "id = {id}\nlisten = \"{addr}\"\ndata_dir = \"data/node{id}\"\nreplication = 3\nworker_threads = 1\n\
         metrics_listen = \"off\"\npeers = [{peers}]\n[tls]\nca = \"certs/ca.pem\"\n\
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

fn client(dir: &Path, nodes: &[SocketAddr]) -> Client {
    let certs = dir.join("certs");
    Client::builder()
        .nodes(nodes.iter().copied())
        .tls(certs.join("ca.pem"), certs.join("client.pem"), certs.join("client.key"))
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
    qkv_transport::certs::generate(&dir.join("certs"), &[1, 2, 3, 4], &["client"]).unwrap();
    let addrs: Vec<SocketAddr> = (0..4).map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
    let members: Vec<(u32, SocketAddr)> = (1..=3).map(|i| (i, addrs[i as usize - 1])).collect();
    for &(id, a) in &members {
        write_config(dir, id, a, &members);
    }
    // The joiner: its peers are the members (seeds), not itself.
    write_config(dir, 4, addrs[3], &members);

    let mut nodes = Nodes((1..=3).map(|id| spawn(dir, id)).collect());
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

    nodes.0.push(spawn(dir, 4));
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
    let staged = all
        .cluster_admin(admin, ClusterAdmin::Stage(ClusterChange::Join { id, addr: joiner.to_string() }))
        .await
        .unwrap();
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
