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

#[tokio::test]
async fn metrics_are_served_over_http_and_stats_over_quic() {
    let c = Cluster::start(Opts::default()).await;
    let client = c.client_for(&[1]);
    for i in 0..20 {
        client.put(format!("m{i}"), "v").w(Level::All).await.unwrap();
        client.get(format!("m{i}")).r(Level::Quorum).await.unwrap();
    }
    let _ = client.get("m0").r(Level::Exactly(4)).await;
    let stats = client.stats_of(c.addrs[0]).await.unwrap();
    let puts = stats.ops.iter().find(|o| o.op == "put" && o.level == "all").expect("puts at all");
    assert_eq!(puts.latency_us.count, 20);
    assert!(puts.latency_us.p50 > 0.0);
    wait_for("every write on every replica", Duration::from_secs(5), || async {
        client.stats_of(c.addrs[0]).await.unwrap().replication_lag_ms.count == 20
    })
    .await;

    let addr = stats.metrics_addr.expect("metrics served");
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for want in [
        "qkv_requests_total{node=\"1\",op=\"put\",level=\"all\",strict=\"false\"} 20",
        "qkv_request_duration_seconds_bucket{node=\"1\",le=\"+Inf\",op=\"get\",level=\"quorum\",strict=\"false\"} 20",
        "qkv_request_errors_total{node=\"1\",kind=\"invalid_level\"} 1",
        "qkv_replication_lag_seconds_count{node=\"1\"} 20",
        "qkv_peer_up{node=\"1\",peer=\"2\"} 1",
        "qkv_storage_bytes{node=\"1\"}",
        "qkv_aae_ranges{node=\"1\",state=\"in_sync\"}",
        "qkv_aae_exchanges_total{node=\"1\",outcome=\"completed\"}",
        "qkv_aae_keys_repaired_total{node=\"1\"}",
        "qkv_aae_bytes_exchanged_total{node=\"1\"}",
        "qkv_tombstones_pending_gc{node=\"1\"} 0",
    ] {
        assert!(text.contains(want), "missing `{want}`");
    }
    let (code, out, _) = c.qkv(&["stats"], None);
    assert_eq!(code, 0);
    assert!(out.contains("time to all replicas") && out.contains("metrics at http://"), "{out}");
}
