//! Black-box tests: a real 3-node cluster (N = 3) on loopback, driven through the client crate.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, wait_for};
use quorumkv::{ClusterError, Error, Level};

fn values(mut v: Vec<Vec<u8>>) -> Vec<String> {
    v.sort();
    v.into_iter().map(|x| String::from_utf8(x).unwrap()).collect()
}

#[tokio::test]
async fn round_trips_at_every_level() {
    round_trips(Opts::default()).await;
}

/// `core_thread = true`: the core and its storage calls on a thread of their own.
#[tokio::test]
async fn round_trips_at_every_level_with_the_core_on_its_own_thread() {
    round_trips(Opts { extra: "core_thread = true", ..Opts::default() }).await;
}

async fn round_trips(opts: Opts) {
    let c = Cluster::start(opts).await;
    let client = c.client();
    let levels = [Level::One, Level::Two, Level::Three, Level::Quorum, Level::All, Level::Exactly(2)];
    for (i, w) in levels.iter().enumerate() {
        for (j, r) in levels.iter().enumerate() {
            let key = format!("k-{i}-{j}");
            let value = format!("v-{w}-{r}");
            let put = client.put(key.clone(), value.clone()).w(*w).await.unwrap();
            assert!(put.home_acks.len() >= w.required(3).unwrap(), "{w}: {put:?}");
            // R + W > N: the read must see the write; otherwise retry until replication lands.
            let strict = w.required(3).unwrap() + r.required(3).unwrap() > 3;
            let mut got = client.get(key.clone()).r(*r).strict().await.unwrap();
            if !strict {
                wait_for("replication", Duration::from_secs(5), || {
                    let (client, key) = (client.clone(), key.clone());
                    async move { client.get(key).r(Level::One).await.unwrap().found }
                })
                .await;
                got = client.get(key.clone()).r(*r).await.unwrap();
            }
            assert!(got.found, "w={w} r={r}");
            assert_eq!(values(got.values), vec![value], "w={w} r={r}");
        }
    }
    // Deletes are tombstones: not found, but a context comes back.
    let put = client.put("gone", "x").await.unwrap();
    client.delete("gone").context(put.context).w(Level::All).await.unwrap();
    let got = client.get("gone").r(Level::All).await.unwrap();
    assert!(!got.found && got.values.is_empty() && !got.context.is_empty());
    // A level above N is a clear error.
    let err = client.get("k").r(Level::Exactly(4)).await.unwrap_err();
    assert!(matches!(err, Error::Cluster(ClusterError::InvalidLevel { needed: 4, n: 3, .. })), "{err}");
}

#[tokio::test]
async fn any_node_accepts_requests_and_a_quorum_write_is_seen_by_a_quorum_read() {
    let c = Cluster::start(Opts::default()).await;
    for writer in 1..=3 {
        for reader in 1..=3 {
            let key = format!("key-{writer}-{reader}");
            c.client_for(&[writer]).put(key.clone(), "v").w(Level::Quorum).strict().await.unwrap();
            let got = c.client_for(&[reader]).get(key).r(Level::Quorum).strict().await.unwrap();
            assert_eq!(values(got.values), vec!["v"]);
        }
    }
}

#[tokio::test]
async fn one_node_killed_quorum_still_works_and_all_fails() {
    let mut c = Cluster::start(Opts::default()).await;
    let client = c.client();
    client.put("before", "1").w(Level::All).await.unwrap();
    c.kill(2);
    // Straight after the kill, before any detection: quorum still succeeds.
    client.put("during", "2").w(Level::Quorum).await.unwrap();
    assert_eq!(values(client.get("before").r(Level::Quorum).await.unwrap().values), vec!["1"]);
    let err = client.put("x", "y").w(Level::All).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Cluster(
                ClusterError::Unavailable { .. } | ClusterError::Timeout { .. } | ClusterError::Failed { .. }
            )
        ),
        "{err}"
    );
    assert!(err.to_string().contains("may still have landed") || err.to_string().contains("unavailable"), "{err}");
    c.wait_seen(2, false).await;
    let err = client.get("before").r(Level::All).await.unwrap_err();
    assert!(matches!(err, Error::Cluster(ClusterError::Unavailable { needed: 3, alive: 2, .. })), "{err}");
    assert_eq!(err.to_string(), "unavailable: all needs 3 replicas, 2 alive; nothing was sent");
    assert_eq!(values(client.get("during").r(Level::Quorum).await.unwrap().values), vec!["2"]);
}

#[tokio::test]
async fn a_killed_and_restarted_node_still_has_its_data() {
    let mut c = Cluster::start(Opts::default()).await;
    let client = c.client();
    for i in 0..50 {
        client.put(format!("k{i}"), format!("v{i}")).w(Level::All).await.unwrap();
    }
    c.kill(3);
    c.restart(3).await;
    let only3 = c.client_for(&[3]);
    for i in 0..50 {
        let ins = only3.inspect(format!("k{i}")).await.unwrap();
        let (_, state) = ins.replicas.iter().find(|(n, _)| *n == 3).unwrap();
        let state = state.as_ref().unwrap().as_ref().expect("node 3 kept the key");
        assert_eq!(state.values().collect::<Vec<_>>(), vec![format!("v{i}").as_bytes()]);
    }
}

#[tokio::test]
async fn concurrent_blind_writes_become_siblings_and_a_context_write_resolves_them() {
    let c = Cluster::start(Opts::default()).await;
    let (a, b) = (c.client_for(&[1]), c.client_for(&[2]));
    let (ra, rb) = tokio::join!(a.put("cart", "apple").w(Level::All), b.put("cart", "pear").w(Level::All));
    ra.unwrap();
    rb.unwrap();
    let got = c.client().get("cart").r(Level::All).await.unwrap();
    assert_eq!(values(got.values), vec!["apple", "pear"]);
    // Merge the siblings and write with the context: they are replaced.
    c.client().put("cart", "apple+pear").context(got.context).w(Level::All).await.unwrap();
    let got = c.client().get("cart").r(Level::All).await.unwrap();
    assert_eq!(values(got.values), vec!["apple+pear"]);
    // A write with an older (empty) context keeps the newer value as a sibling.
    c.client().put("cart", "late").w(Level::All).await.unwrap();
    let got = c.client().get("cart").r(Level::All).await.unwrap();
    assert_eq!(values(got.values), vec!["apple+pear", "late"]);
}

#[tokio::test]
async fn a_read_repairs_a_stale_replica() {
    // Without anti-entropy, which would otherwise repair node 3 before the read.
    let opts = Opts { extra: "anti_entropy.enabled = false\nfault_injection = true", ..Opts::default() };
    let c = Cluster::start(opts).await;
    let client = c.client_for(&[1, 2]);
    // Node 3 cut off (both ways, at once): it refuses the replica write, so it misses
    // it for sure. (A killed node that comes back while the write's send is still
    // dialling it would get it, in time or not, and the test would pass or fail by luck.)
    for (node, isolate) in [(3, vec![1, 2]), (1, vec![3]), (2, vec![3])] {
        client.inject_fault(c.addrs[node - 1], isolate).await.unwrap();
    }
    c.wait_seen(3, false).await;
    client.put("stale", "new").w(Level::Quorum).await.unwrap();
    for node in [3, 1, 2] {
        client.inject_fault(c.addrs[node - 1], vec![]).await.unwrap();
    }
    c.wait_seen(3, true).await;
    let held_by_3 = |c: &Cluster| {
        let client = c.client_for(&[1]);
        async move {
            let ins = client.inspect("stale").await.unwrap();
            ins.replicas.iter().find(|(n, _)| *n == 3).unwrap().1.clone().unwrap()
        }
    };
    assert_eq!(held_by_3(&c).await, None, "node 3 missed the write");
    let before = c.client().status_of(c.addrs[0]).await.unwrap().read_repairs
        + c.client().status_of(c.addrs[1]).await.unwrap().read_repairs;
    let got = client.get("stale").r(Level::All).await.unwrap();
    assert_eq!(values(got.values), vec!["new"]);
    wait_for("read repair of node 3", Duration::from_secs(5), || async { held_by_3(&c).await.is_some() }).await;
    let after = c.client().status_of(c.addrs[0]).await.unwrap().read_repairs
        + c.client().status_of(c.addrs[1]).await.unwrap().read_repairs;
    assert!(after > before, "repair counted: {before} -> {after}");
}

#[tokio::test]
async fn a_client_without_a_ca_signed_certificate_is_refused() {
    let c = Cluster::start(Opts::default()).await;
    let other = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin("qkv"))
        .args(["certs", "--nodes", "1", "--out"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    // Trusts the cluster's CA, but its own certificate is signed by a stranger.
    let stranger = c
        .client_config()
        .builder()
        .tls(c.dir.path().join("certs/ca.pem"), other.path().join("client.pem"), other.path().join("client.key"))
        .build()
        .unwrap();
    let err = stranger.get("k").await.unwrap_err();
    assert!(matches!(err, Error::NoNodeReachable { .. }), "{err}");
    // The cluster serves its own clients on.
    assert!(c.client().put("k", "v").await.is_ok());
}

#[tokio::test]
async fn oversized_input_gets_a_clear_error_and_the_node_keeps_serving() {
    let c = Cluster::start(Opts {
        extra: "limits.value_bytes_max = 65536\nlimits.key_bytes_max = 1024\nlimits.key_state_bytes_max = 1048576",
        ..Opts::default()
    })
    .await;
    let client = c.client_for(&[1]);
    let err = client.put("big", vec![7u8; 65_537]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Cluster(ClusterError::TooLarge { what, size: 65_537, max: 65_536 }) if what == "value"),
        "{err}"
    );
    let err = client.put(vec![b'k'; 1025], "v").await.unwrap_err();
    assert!(matches!(&err, Error::Cluster(ClusterError::TooLarge { what, .. }) if what == "key"), "{err}");
    // A frame over the node's frame limit is refused before it is read.
    let huge = c.client_config().builder().nodes([c.addrs[0]]).frame_bytes_max(64 << 20).build().unwrap();
    let err = huge.put("huge", vec![0u8; 9 << 20]).await.unwrap_err();
    assert!(matches!(&err, Error::Cluster(ClusterError::TooLarge { what, .. }) if what == "frame"), "{err}");
    // Nothing was stored, and the node keeps serving.
    assert!(!client.get("big").r(Level::All).await.unwrap().found);
    assert!(!client.get("huge").r(Level::All).await.unwrap().found);
    client.put("small", vec![1u8; 65_536]).await.unwrap();
    assert_eq!(client.get("small").await.unwrap().values, vec![vec![1u8; 65_536]]);
}

#[tokio::test]
async fn blind_writes_cannot_grow_a_key_past_its_limit_and_it_stays_readable_and_resolvable() {
    // The defaults: 4 MiB values, 8 MiB and 32 siblings per key. Eight blind 3 MiB
    // writes once left a 24 MiB key that no frame could carry.
    let c = Cluster::start(Opts::default()).await;
    let client = c.client();
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..8u8 {
        match client.put("fat", vec![i; 3 << 20]).w(Level::All).timeout(Duration::from_secs(20)).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    assert_eq!(accepted, 2, "two 3 MiB siblings fit in 8 MiB, a third does not");
    let err = refused.expect("writes past the limit are refused");
    assert!(matches!(&err, Error::Cluster(ClusterError::KeyFull { siblings: 2, siblings_after: 3, .. })), "{err}");
    assert!(err.to_string().contains("read the key and write with its context"), "{err}");
    // Still readable, at every level, and resolvable with the read's context.
    let got = client.get("fat").r(Level::All).timeout(Duration::from_secs(20)).await.unwrap();
    assert_eq!(got.values.len(), 2);
    client.put("fat", "merged").context(got.context).w(Level::All).await.unwrap();
    let got = client.get("fat").r(Level::All).await.unwrap();
    assert_eq!(values(got.values), vec!["merged"]);
    // Counted where an operator looks: status (and /metrics, from the same counters).
    let refusals: u64 =
        client.status().await.into_iter().filter_map(|(_, s)| s.ok()).map(|s| s.key_limits.writes_refused).sum();
    assert_eq!(refusals, 6);
}

#[tokio::test]
async fn the_client_routes_each_write_to_a_home_replica_that_coordinates_it() {
    // 4 nodes, N = 3: a quarter of the nodes are not home to a given key.
    let c = Cluster::start(Opts { nodes: 4, ..Opts::default() }).await;
    let client = c.client();
    // The first request starts the fetch of the layout; it is routed by it once it came.
    client.put("warm-up", "x").await.unwrap();
    wait_for("the client learnt the ring", Duration::from_secs(10), || async { client.routing_epoch().is_some() })
        .await;
    let plain = c.client_for(&[1, 2, 3, 4]);
    for i in 0..40 {
        let key = format!("routed-{i}");
        let put = client.put(key.as_str(), "v").w(Level::Quorum).await.unwrap();
        let homes = plain.ring(key.as_str()).await.unwrap().replicas;
        assert_eq!(put.coordinator, homes[0].0, "{key}: coordinated by its first home replica, not forwarded");
        let got = client.get(key.as_str()).r(Level::One).await.unwrap();
        assert_eq!(values(got.values), vec!["v"]);
    }
}

#[tokio::test]
async fn hedged_reads_answer_while_a_replica_is_stalled() {
    let c = Cluster::start(Opts::default()).await;
    let hedged = c.client_config().builder().hedged_reads(Duration::from_millis(20), 100).build().unwrap();
    for i in 0..20 {
        hedged.put(format!("h{i}"), "v").w(Level::All).await.unwrap();
    }
    wait_for("the client learnt the ring", Duration::from_secs(10), || async { hedged.routing_epoch().is_some() })
        .await;
    // Let the budget save up a few hedges.
    for i in 0..20 {
        hedged.get(format!("h{i}")).r(Level::One).await.unwrap();
    }
    c.pause(2, true);
    // Reads routed to node 2 first are hedged to another replica after 20 ms; the
    // cluster has not even taken node 2 for down yet.
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t = std::time::Instant::now();
        let got = hedged.get(format!("h{i}")).r(Level::One).timeout(Duration::from_secs(2)).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(values(got.unwrap().values), vec!["v"]);
    }
    c.pause(2, false);
    assert!(hedged.hedges_sent() > 0, "some reads went to node 2 first and were hedged");
    assert!(slowest < Duration::from_millis(900), "slowest read {slowest:?}, all in {:?}", started.elapsed());
}
