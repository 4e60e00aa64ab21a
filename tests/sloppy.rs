//! Sloppy quorums and hinted handoff with real processes: 5 nodes, N = 3.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, wait_for};
use quorumkv::{Client, ClusterError, Error, Level};

const HANDOFF_WITHIN: Duration = Duration::from_secs(30);

async fn home_of(c: &Client, key: &str) -> Vec<usize> {
    c.ring(key).await.unwrap().replicas.iter().map(|r| r.0 as usize).collect()
}

/// A key whose home replicas satisfy `want`.
async fn key_where(c: &Client, prefix: &str, want: impl Fn(&[usize]) -> bool) -> (String, Vec<usize>) {
    for i in 0..1000 {
        let key = format!("{prefix}-{i}");
        let home = home_of(c, &key).await;
        if want(&home) {
            return (key, home);
        }
    }
    panic!("no key found");
}

/// True when every home replica holds exactly `values` for `key` and no stand-in holds a hint for it.
async fn settled(c: &Client, key: &str, values: &[&str]) -> bool {
    let Ok(ins) = c.inspect(key).await else { return false };
    let mut want: Vec<Vec<u8>> = values.iter().map(|v| v.as_bytes().to_vec()).collect();
    want.sort();
    ins.hints.is_empty()
        && ins.replicas.iter().all(|(_, r)| match r {
            Ok(Some(s)) => {
                let mut got: Vec<Vec<u8>> = s.values().map(<[u8]>::to_vec).collect();
                got.sort();
                got == want
            }
            _ => false,
        })
}

fn five() -> Opts {
    Opts { nodes: 5, replication: 3, extra: "fault_injection = true" }
}

#[tokio::test]
async fn two_home_nodes_down_sloppy_write_succeeds_strict_fails_and_handoff_brings_it_home() {
    let mut c = Cluster::start(five()).await;
    let client = c.client();
    let (key, home) = key_where(&client, "two-down", |_| true).await;
    let (alive, dead) = (home[0], [home[1], home[2]]);
    for d in dead {
        c.kill(d);
    }
    for d in dead {
        c.wait_seen(d, false).await;
    }
    let err = client.put(key.clone(), "v").w(Level::Two).strict().await.unwrap_err();
    assert!(matches!(err, Error::Cluster(ClusterError::Unavailable { needed: 2, alive: 1, .. })), "{err}");
    let put = client.put(key.clone(), "v").w(Level::Two).await.unwrap();
    assert_eq!(put.home_acks, vec![alive as u32], "{put:?}");
    assert_eq!(put.standin_acks.len(), 1, "{put:?}");
    let (standin, owner) = put.standin_acks[0];
    assert!(!home.contains(&(standin as usize)) && dead.contains(&(owner as usize)));
    // The stand-ins' hints show in inspect while the owners are away.
    wait_for("both stand-ins hold a hint", Duration::from_secs(5), || async {
        client.inspect(key.clone()).await.unwrap().hints.len() == 2
    })
    .await;
    for d in dead {
        c.restart(d).await;
    }
    wait_for("every home replica holds the value and the hints are gone", HANDOFF_WITHIN, || {
        settled(&client, &key, &["v"])
    })
    .await;
}

#[tokio::test]
async fn a_stand_in_killed_and_restarted_before_handoff_still_hands_off() {
    // Without anti-entropy, which could otherwise bring the owner the value from the
    // other home replicas before the check below: only handoff may deliver it here.
    let mut c = Cluster::start(Opts { extra: "fault_injection = true\nanti_entropy.enabled = false", ..five() }).await;
    let client = c.client();
    let (key, home) = key_where(&client, "standin-restart", |_| true).await;
    let owner = home[2];
    c.kill(owner);
    c.wait_seen(owner, false).await;
    let put = client.put(key.clone(), "kept").w(Level::All).await.unwrap();
    assert_eq!(put.standin_acks.len(), 1, "{put:?}");
    let standin = put.standin_acks[0].0 as usize;
    c.kill(standin);
    c.restart(owner).await;
    c.wait_seen(owner, true).await;
    let ins = client.inspect(key.clone()).await.unwrap();
    let held = ins.replicas.iter().find(|r| r.0 as usize == owner).unwrap().1.clone().unwrap();
    assert!(held.is_none(), "the owner cannot have it yet: its only hint is on the dead stand-in");
    c.restart(standin).await;
    wait_for("the restarted stand-in hands its hint off", HANDOFF_WITHIN, || settled(&client, &key, &["kept"])).await;
    let st = c.client().status_of(c.addrs[standin - 1]).await.unwrap();
    assert!(st.hints.handed_off >= 1, "{:?}", st.hints);
}

#[tokio::test]
async fn both_sides_of_a_partition_accept_writes_and_healing_keeps_both_as_siblings() {
    let c = Cluster::start(five()).await;
    let client = c.client();
    let (key, home) = key_where(&client, "split", |_| true).await;
    let outsider = (1..=5).find(|n| !home.contains(n)).unwrap();
    let left: Vec<usize> = vec![home[0], outsider];
    let right: Vec<usize> = (1..=5).filter(|n| !left.contains(n)).collect();
    let ids = |v: &[usize]| v.iter().map(|&n| n as u32).collect::<Vec<_>>();
    for &n in &left {
        client.inject_fault(c.addrs[n - 1], ids(&right)).await.unwrap();
    }
    for &n in &right {
        client.inject_fault(c.addrs[n - 1], ids(&left)).await.unwrap();
    }
    let sees_down = |observer: usize, peer: usize| {
        let client = client.clone();
        let addr = c.addrs[observer - 1];
        async move {
            let st = client.status_of(addr).await.unwrap();
            st.members.iter().any(|m| m.node == peer as u32 && !m.up)
        }
    };
    wait_for("the sides see each other down", Duration::from_secs(10), || async {
        sees_down(home[0], home[1]).await && sees_down(home[1], home[0]).await
    })
    .await;

    let l = c.client_for(&[home[0]]).put(key.clone(), "left").w(Level::Two).await.unwrap();
    assert_eq!(l.standin_acks.len(), 1, "the left side needs a stand-in: {l:?}");
    let r = c.client_for(&[home[1]]).put(key.clone(), "right").w(Level::Two).await.unwrap();
    // Home[1] and home[2] plus a stand-in for home[0] were asked; W = 2 answers with the first two acks.
    assert!(r.home_acks.contains(&(home[1] as u32)) && r.home_acks.len() + r.standin_acks.len() == 2, "{r:?}");

    for n in 1..=5 {
        client.inject_fault(c.addrs[n - 1], vec![]).await.unwrap();
    }
    wait_for("after healing a read sees both writes as siblings", HANDOFF_WITHIN, || async {
        match client.get(key.clone()).r(Level::All).strict().await {
            Ok(got) => {
                let mut v = got.values.clone();
                v.sort();
                v == vec![b"left".to_vec(), b"right".to_vec()]
            }
            Err(_) => false,
        }
    })
    .await;
    wait_for("every home replica converges on both siblings", HANDOFF_WITHIN, || {
        settled(&client, &key, &["left", "right"])
    })
    .await;
}

#[tokio::test]
async fn hint_limits_are_enforced_and_reported() {
    let mut c = Cluster::start(Opts {
        nodes: 5,
        replication: 3,
        extra: "hints.owner_bytes_max = 8192\nhints.total_bytes_max = 16384",
    })
    .await;
    let client = c.client();
    c.kill(5);
    c.wait_seen(5, false).await;
    let value = "x".repeat(1000);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..200 {
        let key = format!("limit-{i}");
        if !home_of(&client, &key).await.contains(&5) {
            continue;
        }
        match client.put(key, value.clone()).w(Level::All).await {
            Ok(p) => {
                assert_eq!(p.standin_acks.len(), 1);
                ok += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("hint refused"), "{e}");
                refused += 1;
            }
        }
        if refused >= 3 {
            break;
        }
    }
    assert!(ok >= 7, "stand-ins took hints up to their limits: {ok}");
    assert!(refused >= 3, "writes past every stand-in's limit fail: {refused}");
    let mut total_refused = 0;
    for n in 1..=4 {
        let st = client.status_of(c.addrs[n - 1]).await.unwrap();
        total_refused += st.hints.refused;
        assert!(st.hints.bytes <= 16_384, "{:?}", st.hints);
        for o in &st.hints.owners {
            assert!(o.bytes <= 8192, "per-owner limit: {o:?}");
            assert_eq!(o.owner, 5);
            assert!(!o.owner_up);
        }
    }
    assert!(total_refused >= 3);
    let (code, out, _) = c.qkv(&["status"], None);
    assert_eq!(code, 0);
    assert!(out.contains("hint backlog") && out.contains("hints refused at a limit"), "{out}");
}
