//! The node's metrics: one registry that serves both the Prometheus text endpoint
//! and the `Stats` request behind `qkv stats` and the benches.
//!
//! Latencies are HDR histograms (microseconds, 3 significant digits); Prometheus
//! histograms are rendered from them at fixed bucket bounds. The `metrics` crate
//! would serve Prometheus alone; the same numbers are needed over QUIC, so one
//! small registry keeps one source of truth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use qkv_proto::{Error, OpStats, Percentiles, StatsReply, StatusReply};

/// Bucket bounds of latency histograms, seconds.
const LATENCY_BUCKETS_S: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Bucket bounds of the replication lag histogram, seconds.
const LAG_BUCKETS_S: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0];
/// Bucket bounds of siblings per read.
const SIBLING_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 100.0];

type Key = (&'static str, String, bool);

struct Op {
    latency_us: Histogram<u64>,
    errors: u64,
}

struct Inner {
    ops: BTreeMap<Key, Op>,
    errors: BTreeMap<&'static str, u64>,
    siblings: Histogram<u64>,
    lag_ms: Histogram<u64>,
}

/// The registry.
pub struct Metrics(Mutex<Inner>);

fn hist(max: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, max, 3).expect("valid histogram bounds")
}

fn percentiles(h: &Histogram<u64>, scale: f64) -> Percentiles {
    let q = |p: f64| h.value_at_quantile(p) as f64 * scale;
    Percentiles { count: h.len(), p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999), max: h.max() as f64 * scale }
}

/// The short name of an error kind, for labels.
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Unavailable { .. } => "unavailable",
        Error::Timeout { .. } => "timeout",
        Error::Failed { .. } => "failed",
        Error::InvalidLevel { .. } => "invalid_level",
        Error::TooLarge { .. } => "too_large",
        Error::BadRequest(_) => "bad_request",
        Error::NotAuthorized(_) => "not_authorized",
        Error::Storage(_) => "storage",
        Error::Unreachable(_) => "unreachable",
        Error::HintRefused { .. } => "hint_refused",
        Error::KeyFull { .. } => "key_full",
        Error::Overloaded(_) => "overloaded",
        Error::ShuttingDown => "shutting_down",
        _ => "other",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics(Mutex::new(Inner {
            ops: BTreeMap::new(),
            errors: BTreeMap::new(),
            siblings: hist(1_000_000),
            lag_ms: hist(24 * 3_600_000),
        }))
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client request this node coordinated: `siblings` for a successful read.
    pub fn request(
        &self,
        op: &'static str,
        level: String,
        strict: bool,
        micros: u64,
        outcome: Result<Option<usize>, &Error>,
    ) {
        let mut m = self.lock();
        let entry =
            m.ops.entry((op, level, strict)).or_insert_with(|| Op { latency_us: hist(3_600_000_000), errors: 0 });
        let _ = entry.latency_us.record(micros.max(1));
        match outcome {
            Ok(Some(siblings)) => {
                let _ = m.siblings.record(siblings.max(1) as u64);
            }
            Ok(None) => {}
            Err(e) => {
                entry.errors += 1;
                *m.errors.entry(error_kind(e)).or_default() += 1;
            }
        }
    }

    /// Time-to-all-replicas samples, ms.
    pub fn lag(&self, samples: &[u64]) {
        let mut m = self.lock();
        for &s in samples {
            let _ = m.lag_ms.record(s.max(1));
        }
    }

    /// The `Stats` answer.
    pub fn stats(&self, status: &StatusReply, base: StatsReply) -> StatsReply {
        let m = self.lock();
        StatsReply {
            ops: m
                .ops
                .iter()
                .map(|((op, level, strict), o)| OpStats {
                    op: op.to_string(),
                    level: level.clone(),
                    strict: *strict,
                    errors: o.errors,
                    latency_us: percentiles(&o.latency_us, 1.0),
                })
                .collect(),
            errors: m.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            read_repairs: status.read_repairs,
            siblings_per_read: percentiles(&m.siblings, 1.0),
            replication_lag_ms: percentiles(&m.lag_ms, 1.0),
            hints: (status.hints.count, status.hints.bytes),
            ..base
        }
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn prometheus(&self, status: &StatusReply, stats: &StatsReply) -> String {
        let m = self.lock();
        let mut out = String::new();
        let node = status.node;
        out += "# HELP qkv_request_duration_seconds Latency of client requests coordinated by this node.\n";
        out += "# TYPE qkv_request_duration_seconds histogram\n";
        for ((op, level, strict), o) in &m.ops {
            let labels = format!("node=\"{node}\",op=\"{op}\",level=\"{level}\",strict=\"{strict}\"");
            histogram(&mut out, "qkv_request_duration_seconds", &labels, &o.latency_us, LATENCY_BUCKETS_S, 1e-6);
        }
        out +=
            "# HELP qkv_requests_total Client requests coordinated by this node.\n# TYPE qkv_requests_total counter\n";
        for ((op, level, strict), o) in &m.ops {
            let _ = writeln!(
                out,
                "qkv_requests_total{{node=\"{node}\",op=\"{op}\",level=\"{level}\",strict=\"{strict}\"}} {}",
                o.latency_us.len()
            );
        }
        out += "# HELP qkv_request_errors_total Client requests that failed, by kind.\n# TYPE qkv_request_errors_total counter\n";
        for (kind, v) in &m.errors {
            let _ = writeln!(out, "qkv_request_errors_total{{node=\"{node}\",kind=\"{kind}\"}} {v}");
        }
        out += "# HELP qkv_siblings_per_read Siblings returned by successful reads.\n# TYPE qkv_siblings_per_read histogram\n";
        histogram(&mut out, "qkv_siblings_per_read", &format!("node=\"{node}\""), &m.siblings, SIBLING_BUCKETS, 1.0);
        out += "# HELP qkv_replication_lag_seconds Time from a write's ack until its last home replica held it.\n";
        out += "# TYPE qkv_replication_lag_seconds histogram\n";
        histogram(&mut out, "qkv_replication_lag_seconds", &format!("node=\"{node}\""), &m.lag_ms, LAG_BUCKETS_S, 1e-3);
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{node=\"{node}\"{labels}}} {v}");
            }
        };
        gauge(
            &mut out,
            "qkv_replication_lag_pending_writes",
            "Writes acked but not yet on every home replica.",
            "gauge",
            vec![(String::new(), stats.replication_lag_pending as f64)],
        );
        gauge(
            &mut out,
            "qkv_read_repairs_total",
            "Read repairs acknowledged by stale replicas.",
            "counter",
            vec![(String::new(), status.read_repairs as f64)],
        );
        let h = &status.hints;
        let per_owner = |f: &dyn Fn(&qkv_proto::OwnerHints) -> f64| {
            h.owners.iter().map(|o| (format!(",owner=\"{}\"", o.owner), f(o))).collect::<Vec<_>>()
        };
        gauge(&mut out, "qkv_hints_pending", "Hints held for a home replica.", "gauge", per_owner(&|o| o.count as f64));
        gauge(
            &mut out,
            "qkv_hints_pending_bytes",
            "Bytes of hints held for a home replica.",
            "gauge",
            per_owner(&|o| o.bytes as f64),
        );
        gauge(
            &mut out,
            "qkv_hints_oldest_age_seconds",
            "Age of the oldest hint held for a home replica.",
            "gauge",
            per_owner(&|o| o.oldest_age_ms as f64 / 1e3),
        );
        gauge(
            &mut out,
            "qkv_handoff_rate_bytes_per_second",
            "Hinted handoff rate over the last 10 s.",
            "gauge",
            per_owner(&|o| o.rate_bytes_per_s),
        );
        gauge(
            &mut out,
            "qkv_hints_refused_total",
            "Hints refused at a limit.",
            "counter",
            vec![(String::new(), h.refused as f64)],
        );
        gauge(
            &mut out,
            "qkv_hints_redirected_total",
            "Hints handed to another home replica of their key (their owner was down past half the tombstone grace).",
            "counter",
            vec![(String::new(), h.redirected as f64)],
        );
        gauge(
            &mut out,
            "qkv_hints_expired_total",
            "Hints dropped, older than the tombstone grace.",
            "counter",
            vec![(String::new(), h.expired as f64)],
        );
        let k = &status.key_limits;
        gauge(
            &mut out,
            "qkv_key_limit_refusals_total",
            "Writes refused at the per-key limit (kind=\"write\": client writes this node coordinated; \
             kind=\"merge\": replica merges past twice the limit).",
            "counter",
            vec![
                (",kind=\"write\"".into(), k.writes_refused as f64),
                (",kind=\"merge\"".into(), k.merges_refused as f64),
            ],
        );
        gauge(
            &mut out,
            "qkv_hints_handed_off_total",
            "Hints handed off to their owners.",
            "counter",
            vec![(String::new(), h.handed_off as f64)],
        );
        let a = &status.aae;
        let one = |v: f64| vec![(String::new(), v)];
        gauge(
            &mut out,
            "qkv_aae_ranges",
            "Ranges this node replicates, by whether the last comparison with every peer found them equal.",
            "gauge",
            vec![
                (",state=\"in_sync\"".into(), f64::from(a.ranges_in_sync)),
                (",state=\"out_of_sync\"".into(), f64::from(a.ranges_out_of_sync)),
            ],
        );
        gauge(
            &mut out,
            "qkv_aae_exchanges_total",
            "Anti-entropy exchanges this node started, by outcome.",
            "counter",
            vec![
                (",outcome=\"completed\"".into(), a.exchanges as f64),
                (",outcome=\"failed\"".into(), a.exchanges_failed as f64),
            ],
        );
        gauge(
            &mut out,
            "qkv_aae_keys_repaired_total",
            "Keys changed here, or acknowledged by a peer, through anti-entropy.",
            "counter",
            one(a.keys_repaired as f64),
        );
        gauge(
            &mut out,
            "qkv_aae_keys_exchanged_total",
            "Key states received and sent by exchanges this node started.",
            "counter",
            one(a.keys_exchanged as f64),
        );
        gauge(
            &mut out,
            "qkv_aae_bytes_exchanged_total",
            "Bytes of key states received and sent by exchanges this node started.",
            "counter",
            one(a.bytes_exchanged as f64),
        );
        gauge(
            &mut out,
            "qkv_aae_last_exchange_age_seconds",
            "Since the last completed exchange, per range and peer (absent: never).",
            "gauge",
            a.pairs
                .iter()
                .filter_map(|p| {
                    p.last_exchange_ago_ms
                        .map(|ms| (format!(",range=\"{}\",peer=\"{}\"", p.range, p.peer), ms as f64 / 1e3))
                })
                .collect(),
        );
        gauge(
            &mut out,
            "qkv_aae_in_sync",
            "1 when the last comparison of the range with the peer found them equal.",
            "gauge",
            a.pairs
                .iter()
                .map(|p| (format!(",range=\"{}\",peer=\"{}\"", p.range, p.peer), if p.in_sync { 1.0 } else { 0.0 }))
                .collect(),
        );
        gauge(
            &mut out,
            "qkv_tombstones_pending_gc",
            "Tombstones held until every home replica holds them and the grace delay passed.",
            "gauge",
            one(a.tombstones_pending as f64),
        );
        gauge(
            &mut out,
            "qkv_tombstones_purged_total",
            "Tombstones purged.",
            "counter",
            one(a.tombstones_purged as f64),
        );
        gauge(
            &mut out,
            "qkv_purge_records",
            "Purge records held (when they fill purge_records_bytes_max, tombstone GC waits).",
            "gauge",
            one(a.purge_records as f64),
        );
        let peers =
            status.members.iter().map(|p| (format!(",peer=\"{}\"", p.node), if p.up { 1.0 } else { 0.0 })).collect();
        gauge(&mut out, "qkv_peer_up", "1 when this node sees the peer up.", "gauge", peers);
        gauge(
            &mut out,
            "qkv_storage_bytes",
            "Bytes on disk.",
            "gauge",
            vec![(String::new(), stats.storage_bytes as f64)],
        );
        gauge(
            &mut out,
            "qkv_uptime_seconds",
            "Seconds since the node started.",
            "gauge",
            vec![(String::new(), stats.uptime_ms as f64 / 1e3)],
        );
        out
    }
}

/// A Prometheus histogram from an HDR histogram whose unit is `scale` of the bucket unit.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>, bounds: &[f64], scale: f64) {
    for b in bounds {
        let upto = (b / scale) as u64;
        let count = if upto < h.low() { 0 } else { h.count_between(0, upto) };
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
    let sum: f64 =
        h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum::<f64>() * scale;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_histograms_counters_and_gauges() {
        let m = Metrics::default();
        m.request("get", "quorum".into(), false, 300, Ok(Some(2)));
        m.request("put", "all".into(), true, 5_000, Err(&Error::Timeout { acked: 1, needed: 3, write: true }));
        m.lag(&[0, 1500]);
        let status = StatusReply {
            node: 1,
            n: 3,
            vnodes: 64,
            members: vec![],
            read_repairs: 4,
            hints: Default::default(),
            aae: Default::default(),
            key_limits: qkv_proto::KeyLimitStatus { writes_refused: 2, ..Default::default() },
        };
        let stats = m.stats(&status, StatsReply::default());
        assert_eq!(stats.ops.len(), 2);
        assert_eq!(stats.errors, vec![("timeout".to_string(), 1)]);
        assert_eq!(stats.replication_lag_ms.count, 2);
        let text = m.prometheus(&status, &stats);
        for want in [
            "qkv_request_duration_seconds_bucket{node=\"1\",op=\"get\",level=\"quorum\",strict=\"false\",le=\"0.0005\"} 1",
            "qkv_request_duration_seconds_bucket{node=\"1\",op=\"get\",level=\"quorum\",strict=\"false\",le=\"0.00025\"} 0",
            "qkv_requests_total{node=\"1\",op=\"put\",level=\"all\",strict=\"true\"} 1",
            "qkv_request_errors_total{node=\"1\",kind=\"timeout\"} 1",
            "qkv_replication_lag_seconds_bucket{node=\"1\",le=\"5\"} 2",
            "qkv_replication_lag_seconds_bucket{node=\"1\",le=\"1\"} 1",
            "qkv_read_repairs_total{node=\"1\"} 4",
            "qkv_key_limit_refusals_total{node=\"1\",kind=\"write\"} 2",
            "# TYPE qkv_siblings_per_read histogram",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
    }
}
