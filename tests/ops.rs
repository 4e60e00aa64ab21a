//! The ops files: the Prometheus alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), and every metric that the alerts, their tests and the Grafana
//! dashboard name is one a real node serves at /metrics.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Cluster, Opts, wait_for};
use quorumkv::Level;

const ALERTS: &str = "ops/prometheus/qkv-alerts.yml";
const ALERT_TESTS: &str = "ops/prometheus/qkv-alerts.test.yml";
const DASHBOARD: &str = "ops/grafana/quorumkv.json";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `name` on PATH, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// promtool, installed from Debian's package by scripts/install-promtool.sh when missing.
fn promtool() -> PathBuf {
    if let Some(p) = on_path("promtool") {
        return p;
    }
    let out = Command::new(root().join("scripts/install-promtool.sh")).output().expect("running install-promtool.sh");
    assert!(out.status.success(), "scripts/install-promtool.sh failed ({}):\n{}", out.status, output_text(&out));
    on_path("promtool").or_else(|| Some(PathBuf::from("/usr/bin/promtool")).filter(|p| p.is_file())).unwrap_or_else(
        || panic!("scripts/install-promtool.sh succeeded but promtool is not on PATH:\n{}", output_text(&out)),
    )
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = promtool();
    for args in [["check", "rules", ALERTS], ["test", "rules", ALERT_TESTS]] {
        let out = Command::new(&promtool).args(args).current_dir(root()).output().expect("running promtool");
        assert!(out.status.success(), "promtool {} failed ({}):\n{}", args.join(" "), out.status, output_text(&out));
    }
}

/// The metric names in a PromQL expression: every identifier starting with `qkv_`, outside
/// string literals (label values, regexes).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, names: &mut BTreeSet<String>| {
        if word.starts_with("qkv_") {
            names.insert(word.clone());
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                flush(&mut word, &mut names);
                while let Some(d) = chars.next() {
                    match d {
                        '\\' if c != '`' => {
                            chars.next();
                        }
                        d if d == c => break,
                        _ => {}
                    }
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => word.push(c),
            _ => flush(&mut word, &mut names),
        }
    }
    flush(&mut word, &mut names);
    names
}

/// The sample names an OpenMetrics exposition can have, from its `# TYPE` lines: a counter
/// `x` is queried as `x_total` (and `x_created`), a histogram as `x_bucket`, `x_sum`,
/// `x_count` (and `x_created`), a gauge as `x`.
fn exported_samples(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line: {line}"));
        let suffixes: &[&str] = match kind.trim() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The names in `exprs` that are not in `exported`, with the expression naming each.
fn unknown_names<'a>(exprs: impl IntoIterator<Item = &'a str>, exported: &BTreeSet<String>) -> BTreeSet<String> {
    let mut unknown = BTreeSet::new();
    for expr in exprs {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                unknown.insert(format!("{name} (in `{expr}`)"));
            }
        }
    }
    unknown
}

/// The value of each `expr:` key in a rules or rule-test YAML file: inline (plain or
/// quoted), or a block scalar (`|`, `>-`, ...) or plain scalar continued on the lines
/// indented deeper than the key.
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = vec![];
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let body = body.strip_prefix("- ").map(str::trim_start).unwrap_or(body);
        let Some(rest) = body.strip_prefix("expr:") else { continue };
        let column = line.len() - body.len();
        let rest = rest.trim();
        let mut parts = vec![];
        if let Some(q) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            parts.push(q.replace("''", "'"));
        } else if let Some(q) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            parts.push(q.replace("\\\"", "\"").replace("\\\\", "\\"));
        } else if !rest.starts_with(['|', '>']) {
            parts.push(rest.to_string());
        }
        for next in &lines[i + 1..] {
            let indent = next.len() - next.trim_start().len();
            if !next.trim().is_empty() && indent <= column {
                break;
            }
            parts.push(next.trim().to_string());
        }
        let expr = parts.join(" ").trim().to_string();
        assert!(!expr.is_empty(), "empty expr at line {}", i + 1);
        exprs.push(expr);
    }
    exprs
}

/// The series names fed to the rules in a `promtool test rules` file.
fn yaml_series_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- series:"))
        .map(|s| s.trim().trim_matches(['\'', '"']).split('{').next().unwrap_or_default().trim().to_string())
        .collect()
}

/// Every `expr` anywhere in the dashboard (panel targets, nested in rows too), and each
/// query variable's query.
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            match &var["query"] {
                serde_json::Value::String(q) => out.push(q.clone()),
                q => out.extend(q["query"].as_str().map(str::to_string)),
            }
        }
    }
    out
}

/// Every panel but rows, nested ones included.
fn dashboard_panels(dash: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = vec![];
    let mut stack: Vec<&serde_json::Value> = dash["panels"].as_array().into_iter().flatten().collect();
    while let Some(p) = stack.pop() {
        if p["type"] == "row" {
            stack.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn metric_names_are_found_outside_strings_and_checked_by_type() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(qkv_lag_seconds_bucket{node=~"$node", x="qkv_fake"}[$__rate_interval])))
        / on() qkv_up + rate(qkv_reqs_total[5m]) and qkv_gone"#;
    let want: BTreeSet<String> =
        ["qkv_lag_seconds_bucket", "qkv_up", "qkv_reqs_total", "qkv_gone"].iter().map(|s| s.to_string()).collect();
    assert_eq!(metric_names(expr), want);
    assert_eq!(metric_names(r#"label_values(qkv_up, node)"#).len(), 1);
    assert!(metric_names(r#"up{job='qkv_x\'s'} or vector(1)"#).is_empty());

    let text = "# TYPE qkv_lag_seconds histogram\nqkv_lag_seconds_bucket{le=\"1.0\"} 1\n# TYPE qkv_up gauge\nqkv_up 1\n\
                # TYPE qkv_reqs counter\nqkv_reqs_total 3\n# EOF\n";
    let exported = exported_samples(text);
    assert!(
        ["qkv_lag_seconds_bucket", "qkv_lag_seconds_count", "qkv_up", "qkv_reqs_total"]
            .iter()
            .all(|n| exported.contains(*n))
    );
    let unknown = unknown_names([expr], &exported);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(unknown.iter().all(|u| u.starts_with("qkv_gone ")), "{unknown:?}");
    // A counter without `_total`, a gauge with it, a histogram without a suffix: not series.
    for wrong in ["rate(qkv_reqs[1m])", "qkv_up_total", "qkv_lag_seconds", "qkv_up_bucket"] {
        assert_eq!(unknown_names([wrong], &exported).len(), 1, "{wrong} passed");
    }
    // A dashboard naming a metric that does not exist fails.
    let dash = serde_json::json!({"panels": [{"type": "row", "panels": [
        {"type": "timeseries", "targets": [{"expr": "sum(qkv_up{node=~\"$node\"})"}, {"expr": "qkv_nonexistent"}]}]}],
        "templating": {"list": [{"type": "query", "query": {"query": "label_values(qkv_up, node)"}}]}});
    let exprs = dashboard_exprs(&dash);
    assert_eq!(exprs.len(), 3, "{exprs:?}");
    assert_eq!(dashboard_panels(&dash).len(), 1);
    let unknown = unknown_names(exprs.iter().map(String::as_str), &exported);
    assert_eq!(unknown, BTreeSet::from(["qkv_nonexistent (in `qkv_nonexistent`)".to_string()]));
}

#[test]
fn yaml_exprs_are_read_inline_quoted_and_as_blocks() {
    let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: qkv_a > 1\n        for: 5m\n\
                \x20     - alert: B\n        expr: >-\n          qkv_b\n\n          > 2\n        labels: {}\n\
                \x20     - alert: C\n        expr: 'qkv_c{x=''y''} > 3'\n      - alert: D\n        expr: qkv_d\n          > 4\n\
                \x20     - expr: \"qkv_e{x=\\\"y\\\"}\"\n        record: qkv:e\n";
    assert_eq!(yaml_exprs(text), vec!["qkv_a > 1", "qkv_b  > 2", "qkv_c{x='y'} > 3", "qkv_d > 4", "qkv_e{x=\"y\"}"],);
    assert_eq!(
        yaml_series_names(
            "    input_series:\n      - series: 'qkv_x{node=\"1\"}'\n        values: '1x3'\n      - series: qkv_y\n"
        ),
        vec!["qkv_x", "qkv_y"]
    );
}

/// The OpenMetrics text node `addr` serves at /metrics.
fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.1 200") && body.contains("# EOF")).then(|| body.to_string())
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_name_only_metrics_a_node_serves() {
    let c = Cluster::start(Opts { nodes: 1, replication: 1, extra: "" }).await;
    let client = c.client();
    for i in 0..5 {
        client.put(format!("ops-{i}"), "v").w(Level::One).await.unwrap();
        client.get(format!("ops-{i}")).r(Level::One).await.unwrap();
    }
    // The registry's own counter families (errors by kind, failures by op) are served once
    // they have a series: one refused request gives them one.
    assert!(client.get("ops-0").r(Level::Exactly(2)).await.is_err(), "R = 2 with N = 1 is refused");
    let addr: std::net::SocketAddr =
        client.stats_of(c.addrs[0]).await.unwrap().metrics_addr.expect("metrics served").parse().unwrap();
    let mut text = String::new();
    wait_for("/metrics served with the lag histogram and the errors filled", Duration::from_secs(20), || {
        let got = scrape(addr);
        let done = got.as_deref().is_some_and(|t| {
            t.contains("qkv_replication_lag_seconds_count{node=\"1\"} 5") && t.contains("qkv_request_errors_total{")
        });
        if let Some(t) = got {
            text = t;
        }
        async move { done }
    })
    .await;
    let exported = exported_samples(&text);
    // What the TYPE lines say is what the samples are.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(exported.contains(name), "sample `{name}` not derived from a TYPE line:\n{text}");
    }
    for want in
        ["qkv_requests_total", "qkv_replication_lag_seconds_bucket", "qkv_hints_oldest_age_seconds", "qkv_peer_up"]
    {
        assert!(exported.contains(want), "{want} not served:\n{text}");
    }

    let mut unknown = vec![];

    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");
    let exprs = dashboard_exprs(&dash);
    let panels = dashboard_panels(&dash);
    assert!(panels.len() >= 10 && exprs.len() >= panels.len(), "{} panels, {} exprs", panels.len(), exprs.len());
    for p in &panels {
        let targets: Vec<&str> =
            p["targets"].as_array().into_iter().flatten().filter_map(|t| t["expr"].as_str()).collect();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {}", p["title"]);
        for e in targets {
            assert!(e.contains("node=~\"$node\""), "panel {}: `{e}` ignores the node variable", p["title"]);
            assert!(!metric_names(e).is_empty(), "panel {}: `{e}` names no qkv metric", p["title"]);
        }
    }
    let vars: Vec<&str> =
        dash["templating"]["list"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
    assert!(vars.contains(&"DS_PROMETHEUS") && vars.contains(&"node"), "variables: {vars:?}");
    unknown.extend(
        unknown_names(exprs.iter().map(String::as_str), &exported).into_iter().map(|u| format!("{DASHBOARD}: {u}")),
    );

    let rules = read(ALERTS);
    let exprs = yaml_exprs(&rules);
    let rule_count = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:"))
        .count();
    assert!(rule_count >= 5 && exprs.len() == rule_count, "{rule_count} rules, {} exprs found: {exprs:?}", exprs.len());
    unknown.extend(
        unknown_names(exprs.iter().map(String::as_str), &exported).into_iter().map(|u| format!("{ALERTS}: {u}")),
    );

    let tests = read(ALERT_TESTS);
    let series = yaml_series_names(&tests);
    assert!(!series.is_empty(), "no input series in {ALERT_TESTS}");
    let exprs = yaml_exprs(&tests);
    unknown.extend(
        unknown_names(series.iter().chain(&exprs).map(String::as_str), &exported)
            .into_iter()
            .map(|u| format!("{ALERT_TESTS}: {u}")),
    );

    assert!(
        unknown.is_empty(),
        "metrics named in the ops files that a node does not serve:\n  {}\n(served: {exported:?})",
        unknown.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}
