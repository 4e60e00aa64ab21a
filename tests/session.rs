//! Sessions on real processes: a session reads its own writes through a replica that
//! applies them late, a token carries the session to another client, and a forged
//! token changes nothing.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use quorumkv::{ClusterError, Error, Level};

/// Node 3 applies replica writes 0 to 2 s late: a read there right after a write
/// coordinated elsewhere misses it, unless it is a session read.
async fn slow_third() -> Cluster {
    Cluster::start_with(Opts::default(), |id| if id == 3 { "test_apply_delay_ms = 1000".into() } else { String::new() })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_writes_through_a_late_replica_and_travels_as_a_token() {
    let c = slow_third().await;
    let (writer, reader) = (c.client_for(&[1]), c.client_for(&[3]));
    let session = writer.session();
    let (mut stale_plain, mut extra_asked) = (0, vec![]);
    for i in 0..10 {
        let key = format!("s{i}");
        // Without a session: R = one at the late node right after a W = one write.
        let first = writer.put(key.clone(), "v1").w(Level::One).await.unwrap();
        let plain = reader.get(key.clone()).r(Level::One).await.unwrap();
        if !plain.found {
            stale_plain += 1;
        }
        // In the session (resumed at the late node from a token): never older than its write.
        session.put(key.clone(), "v2").w(Level::One).context(first.context).await.unwrap();
        let there = reader.resume_session(&session.token()).unwrap();
        let started = Instant::now();
        let got = there.get(key.clone()).r(Level::One).timeout(Duration::from_secs(3)).await.unwrap();
        assert_eq!(got.values, vec![b"v2".to_vec()], "key {key}: the session's read missed its own write");
        extra_asked.push((got.replied, started.elapsed()));
        // Monotonic: the session that read v2 there never reads back either.
        let again = there.get(key.clone()).r(Level::One).await.unwrap();
        assert_eq!(again.values, vec![b"v2".to_vec()]);
    }
    assert!(stale_plain > 0, "reads without a session at the late node missed a fresh write at least once");
    println!("session reads at the late replica: (replicas asked, latency) {extra_asked:?}");
    assert!(extra_asked.iter().any(|(replied, _)| *replied > 1), "a stale first answer made the read ask past R");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_session_token_is_refused_and_changes_nothing() {
    let c = Cluster::start(Opts::default()).await;
    let client = c.client();
    let s = client.session();
    s.put("a", "1").await.unwrap();
    s.put("b", "2").await.unwrap();
    // Key a's floor presented for key b (a token edited by hand): the MAC is for a.
    let token = s.token();
    let a_floor_as_b = {
        let t = client.session();
        let _ = t.put("a", "3").await.unwrap();
        t.token()
    };
    assert_ne!(token, a_floor_as_b);
    let forged_token = swap_key(&a_floor_as_b, b"a", b"b");
    let forged = client.resume_session(&forged_token).unwrap();
    match forged.get("b").await {
        Err(Error::Cluster(ClusterError::BadRequest(m))) => assert!(m.contains("invalid context"), "{m}"),
        other => panic!("a forged floor must be refused: {other:?}"),
    }
    // The refused floor is forgotten: the session's next read of the key goes through.
    assert_eq!(forged.get("b").await.unwrap().values, vec![b"2".to_vec()]);
    match client.resume_session(&forged_token).unwrap().put("b", "forged").await {
        Err(Error::Cluster(ClusterError::BadRequest(m))) => assert!(m.contains("invalid context"), "{m}"),
        other => panic!("a forged floor must be refused: {other:?}"),
    }
    let b = client.get("b").r(Level::All).await.unwrap();
    assert_eq!(b.values, vec![b"2".to_vec()], "nothing changed");
    assert!(client.resume_session("not a token!").is_err());
}

/// The token with its one key renamed (base64url of msgpack: the key is a bin8 of one byte).
fn swap_key(token: &str, from: &[u8], to: &[u8]) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = URL_SAFE_NO_PAD.decode(token).unwrap();
    let pat = [&[0xc4, from.len() as u8][..], from].concat();
    let at = bytes.windows(pat.len()).position(|w| w == pat).expect("the key in the token");
    bytes[at + 2..at + 2 + to.len()].copy_from_slice(to);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `qkv pbs` predicts from the live round trips: strict quorums are always fresh, and a
/// late replica makes R = W = 1 stale right after the ack, less so later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbs_predicts_from_live_round_trips() {
    let c =
        Cluster::start_with(
            Opts::default(),
            |id| {
                if id == 3 { "test_apply_delay_ms = 20".into() } else { String::new() }
            },
        )
        .await;
    // Nothing written yet: no replica round trips, a clear error.
    let (code, _, err) = c.qkv(&["pbs"], None);
    assert_ne!(code, 0);
    assert!(err.contains("no latency samples yet"), "{err}");
    let client = c.client();
    for i in 0..200 {
        client.put(format!("p{i}"), "v").w(Level::All).await.unwrap();
        client.get(format!("p{i}")).r(Level::All).await.unwrap();
    }
    // The samples carry the ring's placement: each node's share of keys' first homes.
    let (samples, n) = client.latency_samples().await.unwrap();
    assert_eq!(n, 3);
    assert!(samples.placed_by_ring(3), "{:?}", samples.orders);
    assert!((samples.orders.iter().map(|o| o.1).sum::<f64>() - 1.0).abs() < 1e-6, "{:?}", samples.orders);
    let (code, out, err) = c.qkv(&["pbs", "--json", "--trials", "20000"], None);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["n"], 3);
    assert_eq!(v["placed_by_ring"], true);
    assert_eq!(v["all"].as_array().unwrap().len(), 9);
    let p = |rw: &serde_json::Value, t: usize| rw["p"][t]["p"].as_f64().unwrap();
    for rw in v["all"].as_array().unwrap() {
        let (r, w) = (rw["r"].as_u64().unwrap(), rw["w"].as_u64().unwrap());
        if r + w > 3 {
            assert_eq!(p(rw, 0), 1.0, "R = {r}, W = {w} is a strict quorum");
        }
    }
    // Node 3 applies 0 to 40 ms late: when it reads alone (about 2 reads in 9) the
    // write may not be there at t = 0, and is by t = 50 ms.
    let given = &v["given"];
    assert!(p(given, 0) < 0.97 && p(given, 0) > 0.6, "{given}");
    assert!(p(given, 5) > 0.99, "{given}");
    let (code, _, err) = c.qkv(&["pbs", "--r", "4"], None);
    assert_ne!(code, 0);
    assert!(err.contains("1 <= R <= N"), "{err}");
    // Its reader gone (`qkv pbs | head`), the command ends by SIGPIPE, as Unix tools
    // do, without a panic.
    let mut cmd = std::process::Command::new(common::bin("qkv"));
    cmd.arg("--config").arg(c.dir.path().join("client.toml")).arg("pbs");
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(13), "{:?}: {err}", out.status);
}
