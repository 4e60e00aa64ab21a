//! Anti-entropy, actor epochs and tombstone GC with real processes. No test here
//! reads a key through the normal path before checking convergence: `inspect`
//! reads each home replica's raw state and repairs nothing.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, wait_for};
use quorumkv::{Client, DvvSet, Level};

const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

/// Each home replica's state of `key`, or `None` when one could not be read.
async fn replicas(c: &Client, key: &str) -> Option<Vec<(u32, Option<DvvSet>)>> {
    let ins = c.inspect(key).await.ok()?;
    ins.replicas.into_iter().map(|(n, r)| r.ok().map(|s| (n, s))).collect()
}

/// True when every home replica of every key holds the same state, and that state holds `value`.
async fn converged(c: &Client, keys: &[String], value: &str) -> bool {
    for k in keys {
        let Some(reps) = replicas(c, k).await else { return false };
        let first = &reps[0].1;
        if reps.iter().any(|r| &r.1 != first)
            || !first.as_ref().is_some_and(|s| s.values().any(|v| v == value.as_bytes()))
        {
            return false;
        }
    }
    true
}

async fn total_read_repairs(c: &Cluster) -> u64 {
    let client = c.client();
    let mut total = 0;
    for a in &c.addrs {
        total += client.status_of(*a).await.map(|s| s.read_repairs).unwrap_or(0);
    }
    total
}

async fn total_aae_repairs(c: &Cluster) -> u64 {
    let client = c.client();
    let mut total = 0;
    for a in &c.addrs {
        total += client.status_of(*a).await.map(|s| s.aae.keys_repaired).unwrap_or(0);
    }
    total
}

fn wipe(c: &mut Cluster, id: usize) {
    c.kill(id);
    std::fs::remove_dir_all(c.dir.path().join(format!("data/node{id}"))).unwrap();
}

#[tokio::test]
async fn after_a_partition_heals_replicas_converge_without_any_read() {
    let c = Cluster::start(Opts { extra: "fault_injection = true\nanti_entropy.interval_ms = 200", ..Opts::default() })
        .await;
    let client = c.client_for(&[1]);
    client.inject_fault(c.addrs[2], vec![1, 2]).await.unwrap();
    client.inject_fault(c.addrs[0], vec![3]).await.unwrap();
    client.inject_fault(c.addrs[1], vec![3]).await.unwrap();
    c.wait_seen(3, false).await;
    let keys: Vec<String> = (0..200).map(|i| format!("cut-{i}")).collect();
    for k in &keys {
        // Node 3 is cut off: the quorum is nodes 1 and 2, and nothing is hinted (all three are home).
        client.put(k.clone(), "v").w(Level::Quorum).strict().await.unwrap();
    }
    for a in &c.addrs {
        client.inject_fault(*a, vec![]).await.unwrap();
    }
    wait_for("every replica of every key agrees", CONVERGE_WITHIN, || converged(&client, &keys, "v")).await;
    assert_eq!(total_read_repairs(&c).await, 0, "nothing was read: anti-entropy did it");
    assert!(total_aae_repairs(&c).await >= keys.len() as u64);
    let (code, out, _) = c.qkv(&["status"], None);
    assert_eq!(code, 0);
    assert!(out.contains("anti-entropy:") && out.contains("keys repaired"), "{out}");
}

#[tokio::test]
async fn a_node_whose_disk_was_wiped_is_refilled_without_any_read() {
    let mut c = Cluster::start(Opts { extra: "anti_entropy.interval_ms = 200", ..Opts::default() }).await;
    let client = c.client_for(&[1]);
    let keys: Vec<String> = (0..200).map(|i| format!("wiped-{i}")).collect();
    for k in &keys {
        client.put(k.clone(), "v").w(Level::All).await.unwrap();
    }
    wipe(&mut c, 2);
    c.restart(2).await;
    wait_for("node 2 holds every key again", CONVERGE_WITHIN, || converged(&client, &keys, "v")).await;
    assert_eq!(total_read_repairs(&c).await, 0);
    assert!(total_aae_repairs(&c).await >= keys.len() as u64, "anti-entropy refilled the empty disk");
}

#[tokio::test]
async fn writes_whose_stand_in_died_with_the_hint_reach_their_home_replicas() {
    let mut c = Cluster::start(Opts { nodes: 5, replication: 3, extra: "anti_entropy.interval_ms = 200" }).await;
    let client = c.client();
    // Keys sharing one set of home replicas.
    let mut keys = vec![];
    let mut home = vec![];
    for i in 0..2000 {
        let k = format!("orphan-{i}");
        let h: Vec<usize> = client.ring(k.clone()).await.unwrap().replicas.iter().map(|r| r.0 as usize).collect();
        if home.is_empty() {
            home = h.clone();
        }
        let (mut a, mut b) = (h.clone(), home.clone());
        a.sort();
        b.sort();
        if a == b {
            keys.push(k);
        }
        if keys.len() == 10 {
            break;
        }
    }
    let (alive, dead) = (home[0], [home[1], home[2]]);
    for d in dead {
        c.kill(d);
    }
    for d in dead {
        c.wait_seen(d, false).await;
    }
    let writer = c.client_for(&[alive]);
    let mut standins = vec![];
    for k in &keys {
        let r = writer.put(k.clone(), "v").w(Level::Two).await.unwrap();
        assert_eq!(r.home_acks, vec![alive as u32], "{r:?}");
        standins.extend(r.standin_acks.iter().map(|s| s.0 as usize));
    }
    standins.sort();
    standins.dedup();
    // Every stand-in dies with its disk, and the hints on it.
    for &s in &standins {
        wipe(&mut c, s);
    }
    for d in dead {
        c.restart(d).await;
    }
    for &s in &standins {
        c.restart(s).await;
    }
    wait_for("the home replicas hold every write", CONVERGE_WITHIN, || converged(&writer, &keys, "v")).await;
    assert_eq!(total_read_repairs(&c).await, 0);
}

#[tokio::test]
async fn a_wiped_node_takes_a_new_epoch_and_does_not_replace_values_it_never_saw() {
    // No anti-entropy: the wiped node must coordinate a write before anything refills it.
    let mut c = Cluster::start(Opts { extra: "anti_entropy.enabled = false", ..Opts::default() }).await;
    let via3 = c.client_for(&[3]);
    let first = via3.put("doom", "old").w(Level::All).await.unwrap();
    assert_eq!(first.coordinator, 3);
    wipe(&mut c, 3);
    c.restart(3).await;
    let via3 = c.client_for(&[3]);
    let blind = via3.put("doom", "new").w(Level::All).await.unwrap();
    assert_eq!(blind.coordinator, 3, "the wiped node coordinates the write");
    let got = c.client().get("doom").r(Level::All).await.unwrap();
    let mut vals: Vec<&[u8]> = got.values.iter().map(|v| v.as_slice()).collect();
    vals.sort();
    assert_eq!(vals, vec![b"new".as_slice(), b"old"], "the write it never saw survives as a sibling");
}

#[tokio::test]
async fn a_deleted_key_does_not_come_back_when_a_replica_that_missed_the_delete_returns() {
    let mut c = Cluster::start(Opts {
        extra: "anti_entropy.interval_ms = 200\nanti_entropy.tombstone_grace_ms = 1000\nhints.window_ms = 1000",
        ..Opts::default()
    })
    .await;
    let client = c.client_for(&[1, 2]);
    let put = client.put("gone", "v").w(Level::All).await.unwrap();
    c.kill(3);
    c.wait_seen(3, false).await;
    client.delete("gone").context(put.context).w(Level::Quorum).strict().await.unwrap();
    // Let the grace delay pass several times over while node 3 is away.
    let st = client.status_of(c.addrs[0]).await.unwrap();
    let from = st.aae.exchanges;
    wait_for("node 1 ran 15 exchanges (3 s)", CONVERGE_WITHIN, || {
        let client = client.clone();
        let addr = c.addrs[0];
        async move { client.status_of(addr).await.is_ok_and(|s| s.aae.exchanges >= from + 15) }
    })
    .await;
    for n in [0, 1] {
        let st = client.status_of(c.addrs[n]).await.unwrap();
        assert_eq!(st.aae.tombstones_pending, 1, "node {} must keep the tombstone: node 3 lacks it", n + 1);
    }
    let ins = client.inspect("gone").await.unwrap();
    for (n, r) in ins.replicas.iter().filter(|r| r.0 != 3) {
        assert!(r.as_ref().is_ok_and(|s| s.as_ref().is_some_and(|s| s.is_deleted())), "node {n}: {r:?}");
    }
    // Node 3 returns, still holding the value.
    c.restart(3).await;
    wait_for("every replica purged the key", CONVERGE_WITHIN, || async {
        let Some(reps) = replicas(&client, "gone").await else { return false };
        // Never the old value on nodes 1 and 2 while node 3 may still hold it.
        assert!(reps.iter().filter(|r| r.0 != 3).all(|r| r.1.as_ref().is_none_or(|s| s.is_deleted())), "{reps:?}");
        reps.iter().all(|r| r.1.is_none())
    })
    .await;
    let got = c.client().get("gone").r(Level::All).await.unwrap();
    assert!(!got.found, "the deleted value did not come back");
    let (code, out, _) = c.qkv(&["status"], None);
    assert_eq!(code, 0);
    assert!(out.contains("0 tombstones pending GC"), "{out}");
}
