//! The `qkv` command line against a real cluster: output formats, exit codes, errors.

mod common;

use common::{Cluster, Opts};

#[tokio::test]
async fn put_get_delete_and_exit_codes() {
    let c = Cluster::start(Opts::default()).await;
    let (code, ctx, _) = c.qkv(&["put", "fruit", "apple"], None);
    assert_eq!(code, 0);
    let ctx = ctx.trim().to_string();
    assert!(!ctx.is_empty());

    // A concurrent blind write: both are siblings.
    assert_eq!(c.qkv(&["put", "fruit", "pear", "--w", "all"], None).0, 0);
    let (code, out, _) = c.qkv(&["get", "fruit", "--r", "all"], None);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines.contains(&"apple") && lines.contains(&"pear"));
    let token = lines[2].strip_prefix("context: ").expect("context line").to_string();

    // Resolve with the context; JSON output.
    let (code, out, _) = c.qkv(&["put", "fruit", "apple+pear", "--context", &token, "--json"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["key"], "fruit");
    assert!(v["context"].is_string());
    let (_, out, _) = c.qkv(&["get", "fruit", "--json", "--strict", "--r", "quorum"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["found"], true);
    assert_eq!(v["values"], serde_json::json!(["apple+pear"]));

    // stdin values, binary values shown as base64.
    assert_eq!(c.qkv(&["put", "bin", "-"], Some(&[0xff, 0x00, 0x10])).0, 0);
    let (_, out, _) = c.qkv(&["get", "bin", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["values"], serde_json::json!(["base64:/wAQ"]));

    // Delete, then get: exit 1, not found, a context still printed.
    let (_, out, _) = c.qkv(&["get", "fruit"], None);
    let token = out.lines().last().unwrap().strip_prefix("context: ").unwrap().to_string();
    assert_eq!(c.qkv(&["delete", "fruit", "--context", &token], None).0, 0);
    let (code, out, err) = c.qkv(&["get", "fruit"], None);
    assert_eq!(code, 1);
    assert!(out.starts_with("context: "), "{out}");
    assert!(err.contains("not found"));
    let (code, out, _) = c.qkv(&["get", "never", "--json"], None);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["found"], false);
}

#[tokio::test]
async fn errors_are_one_line_with_exit_2_and_change_nothing() {
    let mut c = Cluster::start(Opts::default()).await;
    let cases: &[(&[&str], &str)] = &[
        (&["get", "k", "--r", "4"], "invalid level: 4 needs 4 replicas but the replication factor is 3"),
        (&["put", "k", "v", "--context", "nonsense!"], "invalid context token"),
        (&["put", "k", "v", "--w", "most"], "invalid consistency level"),
        (&["get", "k", "--timeout-ms", "0"], "--timeout-ms must be between 1 and 60000"),
    ];
    for (args, want) in cases {
        let (code, out, err) = c.qkv(args, None);
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    assert_eq!(c.qkv(&["get", "k"], None).0, 1, "nothing was written by the failed puts");

    c.kill(2);
    c.kill(3);
    c.wait_seen(2, false).await;
    c.wait_seen(3, false).await;
    let (code, _, err) = c.qkv(&["put", "k", "v"], None);
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "qkv: unavailable: quorum needs 2 replicas, 1 alive; nothing was sent");

    let missing = c.dir.path().join("nope.toml");
    let out = std::process::Command::new(common::bin("qkv"))
        .arg("--config")
        .arg(&missing)
        .args(["get", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test]
async fn status_ring_and_inspect() {
    let mut c = Cluster::start(Opts::default()).await;
    let (code, out, _) = c.qkv(&["status"], None);
    assert_eq!(code, 0);
    assert!(out.contains("N=3"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("100.0%")).count(), 3, "{out}");

    let (_, out, _) = c.qkv(&["ring", "somekey", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replicas"].as_array().unwrap().len(), 3);

    c.qkv(&["put", "somekey", "v1", "--w", "all"], None);
    let (_, out, _) = c.qkv(&["inspect", "somekey", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for r in v["replicas"].as_array().unwrap() {
        assert_eq!(r["siblings"][0]["value"], "v1", "{out}");
    }

    c.kill(3);
    c.wait_seen(3, false).await;
    let (code, out, _) = c.qkv(&["status", "--json"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert!(nodes[2]["error"].is_string());
    let seen_by_1 = &nodes[0]["members"].as_array().unwrap()[2];
    assert_eq!(seen_by_1["up"], false);
    let (_, out, _) = c.qkv(&["inspect", "somekey"], None);
    assert!(out.contains("node 3: error"), "{out}");
}
