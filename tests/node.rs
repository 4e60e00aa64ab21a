//! Node-process behaviour: forwarding on a larger ring, client failover, clean shutdown, bad configs.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, wait_for};
use quorumkv::Level;

#[tokio::test]
async fn writes_sent_to_a_non_replica_are_coordinated_by_a_home_replica() {
    let c = Cluster::start(Opts { nodes: 5, replication: 3, extra: "" }).await;
    let client = c.client();
    for i in 0..20 {
        let key = format!("fwd-{i}");
        let home: Vec<u32> = client.ring(key.clone()).await.unwrap().replicas.iter().map(|r| r.0).collect();
        assert_eq!(home.len(), 3);
        let outsider = (1..=5).find(|n| !home.contains(&(*n as u32))).unwrap();
        let put = c.client_for(&[outsider]).put(key.clone(), "v").w(Level::All).await.unwrap();
        assert!(home.contains(&put.coordinator), "coordinator {} not in {home:?}", put.coordinator);
        let mut acks = put.home_acks.clone();
        acks.sort();
        let mut want = home.clone();
        want.sort();
        assert_eq!(acks, want);
        // Reads through the outsider work too, and no copy lands on a non-replica.
        let got = c.client_for(&[outsider]).get(key.clone()).r(Level::All).await.unwrap();
        assert_eq!(got.values, vec![b"v".to_vec()]);
        let ins = client.inspect(key).await.unwrap();
        assert_eq!(ins.replicas.iter().map(|r| r.0).collect::<Vec<_>>(), home);
    }
}

#[tokio::test]
async fn the_client_fails_over_to_another_node() {
    let mut c = Cluster::start(Opts::default()).await;
    c.kill(1);
    let client = c.client_for(&[1, 2]);
    for i in 0..5 {
        client.put(format!("k{i}"), "v").await.unwrap();
        assert!(client.get(format!("k{i}")).await.unwrap().found);
    }
}

#[tokio::test]
async fn sigterm_shuts_a_node_down_cleanly_and_it_restarts_with_its_data() {
    let mut c = Cluster::start(Opts::default()).await;
    c.client().put("kept", "yes").w(Level::All).await.unwrap();
    let pid = c.pid(2);
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let exited = c.wait_exit(2, Duration::from_secs(10));
    assert_eq!(exited, Some(0), "exit status after SIGTERM");
    assert!(c.log(2).contains("storage flushed"), "{}", c.log(2));
    c.restart(2).await;
    let ins = c.client_for(&[2]).inspect("kept").await.unwrap();
    let mine = ins.replicas.iter().find(|r| r.0 == 2).unwrap().1.clone().unwrap().unwrap();
    assert_eq!(mine.values().collect::<Vec<_>>(), vec![b"yes".as_slice()]);
    wait_for("node 2 seen up again", Duration::from_secs(10), || async {
        c.client().get("kept").r(Level::All).await.is_ok()
    })
    .await;
}

#[test]
fn a_bad_config_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("id = 1\nlisten = \"127.0.0.1:1\"\n", "missing field"),
        (
            "id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\nreplication = 3\npeers = [{ id = 1, addr = \"127.0.0.1:1\" }]\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
            "replication factor 3 needs at least 3 nodes",
        ),
        ("this is not toml", "invalid TOML"),
    ];
    for (text, want) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(common::bin("qkv-node")).arg("--config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "want `{want}` in: {err}");
        assert!(!dir.path().join("d").exists(), "nothing created for a refused config");
    }
}
