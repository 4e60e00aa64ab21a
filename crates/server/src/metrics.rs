//! The node's metrics: one `prometheus-client` registry that serves both the
//! Prometheus endpoint and the `Stats` request behind `qkv stats` and the benches.
//!
//! Latencies are HDR histograms (microseconds, 3 significant digits), so `Stats`
//! can give exact percentiles; they sit in the registry as metrics of their own
//! type ([`Latencies`], `Hdr`) that encode as Prometheus histograms at fixed
//! bucket bounds. Counters of failures are the registry's own. What the core
//! counts (hints, anti-entropy, peers) is read from its status at each scrape by a
//! collector (`StatusView`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use qkv_proto::{Error, NodeId, OpStats, Percentiles, StatsReply, StatusReply};

/// Bucket bounds of latency histograms, seconds.
const LATENCY_BUCKETS_S: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Bucket bounds of the replication lag histogram, seconds.
const LAG_BUCKETS_S: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0];
/// Bucket bounds of siblings per read.
const SIBLING_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 100.0];

/// The content type of what [`Metrics::prometheus`] renders.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every error kind, in the order `Stats` lists them.
const ERROR_KINDS: &[&str] = &[
    "unavailable",
    "timeout",
    "failed",
    "invalid_level",
    "too_large",
    "bad_request",
    "not_authorized",
    "storage",
    "unreachable",
    "hint_refused",
    "key_full",
    "overloaded",
    "shutting_down",
    "protocol",
    "internal",
    "other",
];

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
        Error::Protocol(_) => "protocol",
        Error::Internal(_) => "internal",
        _ => "other",
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hist(max: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, max, 3).expect("valid histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let q = |p: f64| h.value_at_quantile(p) as f64;
    Percentiles { count: h.len(), p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999), max: h.max() as f64 }
}

/// An HDR histogram whose unit is `scale` of a second (or of one, for counts) as a
/// Prometheus histogram at `bounds`.
fn encode_hdr(enc: &mut MetricEncoder, h: &Histogram<u64>, bounds: &[f64], scale: f64) -> Result<(), std::fmt::Error> {
    let mut buckets = Vec::with_capacity(bounds.len() + 1);
    let mut below = 0;
    for &b in bounds {
        let upto = (b / scale) as u64;
        let cumulative = if upto < h.low() { 0 } else { h.count_between(0, upto) };
        buckets.push((b, cumulative - below));
        below = cumulative;
    }
    buckets.push((f64::INFINITY, h.len() - below));
    let sum: f64 =
        h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum::<f64>() * scale;
    enc.encode_histogram::<NoLabelSet>(sum, h.len(), &buckets, None)
}

/// One HDR histogram in the registry.
#[derive(Debug)]
pub struct Hdr {
    h: Mutex<Histogram<u64>>,
    bounds: &'static [f64],
    scale: f64,
}

impl Hdr {
    fn new(max: u64, bounds: &'static [f64], scale: f64) -> Arc<Hdr> {
        Arc::new(Hdr { h: Mutex::new(hist(max)), bounds, scale })
    }

    fn record(&self, v: u64) {
        let _ = lock(&self.h).record(v.max(1));
    }

    fn percentiles(&self) -> Percentiles {
        percentiles(&lock(&self.h))
    }
}

/// An [`Hdr`] as registered.
#[derive(Debug)]
struct HdrMetric(Arc<Hdr>);

impl EncodeMetric for HdrMetric {
    fn encode(&self, mut enc: MetricEncoder) -> Result<(), std::fmt::Error> {
        let hdr = &self.0;
        encode_hdr(&mut enc, &lock(&hdr.h), hdr.bounds, hdr.scale)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The labels of a client request's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    level: String,
    strict: bool,
}

/// Client requests' latencies (µs) by op, level and strictness.
#[derive(Debug, Default)]
pub struct Latencies(Mutex<BTreeMap<RequestLabels, Histogram<u64>>>);

/// [`Latencies`] as histograms (`duration`) or as the counters of their counts.
#[derive(Debug, Clone)]
struct LatencyView(Arc<Latencies>, MetricType);

impl EncodeMetric for LatencyView {
    fn encode(&self, mut enc: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in lock(&self.0.0).iter() {
            let mut series = enc.encode_family(labels)?;
            match self.1 {
                MetricType::Histogram => encode_hdr(&mut series, h, LATENCY_BUCKETS_S, 1e-6)?,
                _ => series.encode_counter::<NoLabelSet, _, u64>(&h.len(), None::<&Exemplar<NoLabelSet, u64>>)?,
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.1
    }
}

/// One series of a status metric: its labels and value.
type Row = (Vec<(&'static str, String)>, f64);

/// What the core counts, read from its status at each scrape.
#[derive(Debug, Default)]
struct StatusView(Mutex<Option<(StatusReply, StatsReply, MembershipStats)>>);

/// The membership numbers a scrape exports: the layout and this node's range
/// transfers, summed per node they come from (so the series stay few however many
/// ranges move).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MembershipStats {
    /// The newest layout epoch.
    pub epoch: u64,
    /// `stable`, `acking`, `syncing` or `switching`.
    pub phase: &'static str,
    /// Changes staged on this node.
    pub staged: usize,
    /// Keys dropped since start from ranges this node no longer holds.
    pub dropped_keys: u64,
    /// Members forgotten (`qkv cluster forget`) and not yet replaced or retired.
    pub forgotten: usize,
    /// Transfers by the node fetched from, ascending.
    pub from: Vec<TransferSum>,
}

/// This node's transfers from one node, summed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransferSum {
    /// The node fetched from.
    pub from: NodeId,
    /// Ranges done and not yet.
    pub ranges_done: u64,
    /// Ranges not done.
    pub ranges_left: u64,
    /// Keys fetched.
    pub keys_done: u64,
    /// Bytes fetched.
    pub bytes_done: u64,
    /// Keys left, estimated from the share of each range passed (a range not started counts 0).
    pub keys_left: f64,
    /// Bytes left, estimated likewise.
    pub bytes_left: f64,
    /// Bytes per second.
    pub rate: f64,
}

impl MembershipStats {
    /// From the core's membership report.
    pub fn new(info: &qkv_core::membership::ClusterInfo) -> MembershipStats {
        let mut from: BTreeMap<NodeId, TransferSum> = BTreeMap::new();
        for (t, rate) in &info.transfers {
            let s = from.entry(t.from).or_insert_with(|| TransferSum { from: t.from, ..Default::default() });
            let left = |done: u64| t.left_of(done).unwrap_or(0.0);
            if t.done {
                s.ranges_done += 1;
            } else {
                s.ranges_left += 1;
            }
            s.keys_done += t.keys;
            s.bytes_done += t.bytes;
            s.keys_left += left(t.keys);
            s.bytes_left += left(t.bytes);
            s.rate += rate;
        }
        MembershipStats {
            epoch: info.cluster.epoch(),
            phase: info.phase.name(),
            staged: info.staged.len(),
            dropped_keys: info.dropped_keys,
            forgotten: info.cluster.lost.len(),
            from: from.into_values().collect(),
        }
    }
}

/// Trials per (R, W) of the scrape's staleness prediction.
const PBS_TRIALS: usize = 5_000;
/// Delays (ms) after the ack the gauge predicts for.
const PBS_AFTER_MS: [u64; 2] = [0, 10];

/// The stale-read probability of every (R, W), from this node's round trips to its
/// peers standing for every pair's (no samples yet: no rows). R + W > N is 0: every
/// read set meets every write set.
fn pbs_rows(me: NodeId, n: usize, stats: &StatsReply) -> Vec<Row> {
    let report = qkv_core::pbs::NodeReport {
        node: me,
        peers: stats.latency.clone(),
        apply_wait_us: stats.replica_write_wait_us.clone(),
    };
    let samples = qkv_core::pbs::Samples::from_nodes(&[report]);
    let mut rows = vec![];
    for r in 1..=n {
        for w in 1..=n {
            let p = if r + w > n { None } else { Some(qkv_core::pbs::predict(&samples, n, r, w, PBS_TRIALS, 1)) };
            if let Some(Err(_)) = p {
                return vec![];
            }
            for after in PBS_AFTER_MS {
                let labels = vec![("r", r.to_string()), ("w", w.to_string()), ("after_ms", after.to_string())];
                let stale = match &p {
                    Some(Ok(p)) => ((1.0 - p.p_at(after as f64)) * 1e4).round() / 1e4,
                    _ => 0.0,
                };
                rows.push((labels, stale));
            }
        }
    }
    rows
}

fn family(enc: &mut DescriptorEncoder, name: &str, help: &str, kind: MetricType, rows: Vec<Row>) -> std::fmt::Result {
    fn value(e: &mut MetricEncoder, kind: MetricType, v: f64) -> std::fmt::Result {
        // Whole numbers print as integers.
        let whole = v.fract() == 0.0 && v.abs() < 9.0e15;
        match kind {
            MetricType::Counter if whole => e.encode_counter::<NoLabelSet, _, u64>(&(v as u64), None),
            MetricType::Counter => e.encode_counter::<NoLabelSet, _, u64>(&v, None),
            _ if whole => e.encode_gauge(&(v as i64)),
            _ => e.encode_gauge(&v),
        }
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            value(&mut m, kind, v)?;
        } else {
            value(&mut m.encode_family(&labels)?, kind, v)?;
        }
    }
    Ok(())
}

fn one(v: f64) -> Vec<Row> {
    vec![(vec![], v)]
}

fn membership_families(e: &mut DescriptorEncoder, m: &MembershipStats) -> std::fmt::Result {
    let (gauge, counter) = (MetricType::Gauge, MetricType::Counter);
    family(e, "qkv_layout_epoch", "The newest cluster layout epoch this node holds.", gauge, one(m.epoch as f64))?;
    family(
        e,
        "qkv_layout_phase",
        "1 for the step the layout change is at (stable: no change running).",
        gauge,
        qkv_core::membership::Phase::ALL
            .iter()
            .map(|p| (vec![("phase", p.name().to_string())], if p.name() == m.phase { 1.0 } else { 0.0 }))
            .collect(),
    )?;
    family(e, "qkv_layout_staged_changes", "Membership changes staged on this node.", gauge, one(m.staged as f64))?;
    family(
        e,
        "qkv_layout_forgotten_nodes",
        "Members forgotten as gone for good and not yet replaced or retired.",
        gauge,
        one(m.forgotten as f64),
    )?;
    family(
        e,
        "qkv_layout_dropped_keys",
        "Keys dropped from ranges this node no longer holds, since start.",
        counter,
        one(m.dropped_keys as f64),
    )?;
    let by = |state: &'static str, f: &dyn Fn(&TransferSum) -> f64| -> Vec<Row> {
        m.from.iter().map(|t| (vec![("from", t.from.to_string()), ("state", state.to_string())], f(t))).collect()
    };
    let both = |done: &dyn Fn(&TransferSum) -> f64, left: &dyn Fn(&TransferSum) -> f64| {
        let mut rows = by("done", done);
        rows.extend(by("left", left));
        rows
    };
    family(
        e,
        "qkv_transfer_ranges",
        "Ranges this node fetches in a layout change, per node fetched from, done and left.",
        gauge,
        both(&|t| t.ranges_done as f64, &|t| t.ranges_left as f64),
    )?;
    family(
        e,
        "qkv_transfer_keys",
        "Keys this node fetched in a layout change, and keys left (estimated), per node fetched from.",
        gauge,
        both(&|t| t.keys_done as f64, &|t| t.keys_left.round()),
    )?;
    family(
        e,
        "qkv_transfer_bytes",
        "Bytes this node fetched in a layout change, and bytes left (estimated), per node fetched from.",
        gauge,
        both(&|t| t.bytes_done as f64, &|t| t.bytes_left.round()),
    )?;
    family(
        e,
        "qkv_transfer_rate_bytes_per_second",
        "Fetch rate since the layout change started here, per node fetched from.",
        gauge,
        m.from.iter().map(|t| (vec![("from", t.from.to_string())], t.rate)).collect(),
    )
}

/// The [`StatusView`] as registered.
#[derive(Debug)]
struct StatusCollector(Arc<StatusView>);

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = lock(&self.0.0);
        let Some((status, stats, members)) = snapshot.as_ref() else { return Ok(()) };
        let (gauge, counter) = (MetricType::Gauge, MetricType::Counter);
        let e = &mut enc;
        membership_families(e, members)?;
        family(
            e,
            "qkv_replication_lag_pending_writes",
            "Writes acked but not yet on every home replica.",
            gauge,
            one(stats.replication_lag_pending as f64),
        )?;
        family(
            e,
            "qkv_read_repairs",
            "Read repairs acknowledged by stale replicas.",
            counter,
            one(status.read_repairs as f64),
        )?;
        family(
            e,
            "qkv_read_checks",
            "Reads below R = N that compared the digests of the replicas they did not ask (a sample).",
            counter,
            one(status.read_checks as f64),
        )?;
        family(
            e,
            "qkv_read_checks_differed",
            "Checked reads that found a replica holding something else, and repaired it.",
            counter,
            one(status.read_checks_differed as f64),
        )?;
        family(
            e,
            "qkv_pbs_stale_read_probability",
            "Predicted probability that a read at R = r issued after_ms after a write at W = w was acknowledged \
             misses it (PBS, WARS model; this node's view: its round trips and apply waits stand for every \
             node's; `qkv pbs` has the whole cluster's).",
            gauge,
            pbs_rows(status.node, status.n as usize, stats),
        )?;
        let h = &status.hints;
        let per_owner = |f: &dyn Fn(&qkv_proto::OwnerHints) -> f64| -> Vec<Row> {
            h.owners.iter().map(|o| (vec![("owner", o.owner.to_string())], f(o))).collect()
        };
        family(e, "qkv_hints_pending", "Hints held for a home replica.", gauge, per_owner(&|o| o.count as f64))?;
        family(
            e,
            "qkv_hints_pending_bytes",
            "Bytes of hints held for a home replica.",
            gauge,
            per_owner(&|o| o.bytes as f64),
        )?;
        family(
            e,
            "qkv_hints_oldest_age_seconds",
            "Age of the oldest hint held for a home replica.",
            gauge,
            per_owner(&|o| o.oldest_age_ms as f64 / 1e3),
        )?;
        family(
            e,
            "qkv_handoff_rate_bytes_per_second",
            "Hinted handoff rate over the last 10 s.",
            gauge,
            per_owner(&|o| o.rate_bytes_per_s),
        )?;
        family(e, "qkv_hints_refused", "Hints refused at a limit.", counter, one(h.refused as f64))?;
        family(
            e,
            "qkv_hints_redirected",
            "Hints handed to another home replica of their key (their owner was down past half the tombstone grace).",
            counter,
            one(h.redirected as f64),
        )?;
        family(
            e,
            "qkv_hints_expired",
            "Hints dropped, older than the tombstone grace.",
            counter,
            one(h.expired as f64),
        )?;
        let k = &status.key_limits;
        family(
            e,
            "qkv_key_limit_refusals",
            "Writes refused at the per-key limit (kind=\"write\": client writes this node coordinated; \
             kind=\"merge\": replica merges past twice the limit).",
            counter,
            vec![
                (vec![("kind", "write".into())], k.writes_refused as f64),
                (vec![("kind", "merge".into())], k.merges_refused as f64),
            ],
        )?;
        family(e, "qkv_hints_handed_off", "Hints handed off to their owners.", counter, one(h.handed_off as f64))?;
        let a = &status.aae;
        family(
            e,
            "qkv_aae_ranges",
            "Ranges this node replicates, by whether the last comparison with every peer found them equal.",
            gauge,
            vec![
                (vec![("state", "in_sync".into())], f64::from(a.ranges_in_sync)),
                (vec![("state", "out_of_sync".into())], f64::from(a.ranges_out_of_sync)),
            ],
        )?;
        family(
            e,
            "qkv_aae_exchanges",
            "Anti-entropy exchanges this node started, by outcome.",
            counter,
            vec![
                (vec![("outcome", "completed".into())], a.exchanges as f64),
                (vec![("outcome", "failed".into())], a.exchanges_failed as f64),
            ],
        )?;
        family(
            e,
            "qkv_aae_keys_repaired",
            "Keys changed here, or acknowledged by a peer, through anti-entropy.",
            counter,
            one(a.keys_repaired as f64),
        )?;
        family(
            e,
            "qkv_aae_keys_exchanged",
            "Key states received and sent by this node's exchanges and its answers to its peers'.",
            counter,
            one(a.keys_exchanged as f64),
        )?;
        family(
            e,
            "qkv_aae_bytes_exchanged",
            "Bytes of key states received and sent by this node's exchanges and its answers to its peers'.",
            counter,
            one(a.bytes_exchanged as f64),
        )?;
        let pair = |p: &qkv_proto::AaePair| vec![("range", p.range.to_string()), ("peer", p.peer.to_string())];
        family(
            e,
            "qkv_aae_last_exchange_age_seconds",
            "Since the last completed exchange, per range and peer (absent: never).",
            gauge,
            a.pairs.iter().filter_map(|p| p.last_exchange_ago_ms.map(|ms| (pair(p), ms as f64 / 1e3))).collect(),
        )?;
        family(
            e,
            "qkv_aae_in_sync",
            "1 when the last comparison of the range with the peer found them equal.",
            gauge,
            a.pairs.iter().map(|p| (pair(p), if p.in_sync { 1.0 } else { 0.0 })).collect(),
        )?;
        family(
            e,
            "qkv_tombstones_pending_gc",
            "Tombstones held until every home replica holds them and the grace delay passed.",
            gauge,
            one(a.tombstones_pending as f64),
        )?;
        family(e, "qkv_tombstones_purged", "Tombstones purged.", counter, one(a.tombstones_purged as f64))?;
        family(
            e,
            "qkv_purge_records",
            "Purge records held (when they fill purge_records_bytes_max, tombstone GC waits).",
            gauge,
            one(a.purge_records as f64),
        )?;
        let peers =
            status.members.iter().map(|p| (vec![("peer", p.node.to_string())], if p.up { 1.0 } else { 0.0 })).collect();
        family(e, "qkv_peer_up", "1 when this node sees the peer up.", gauge, peers)?;
        family(e, "qkv_storage_bytes", "Bytes on disk.", gauge, one(stats.storage_bytes as f64))?;
        family(e, "qkv_uptime_seconds", "Seconds since the node started.", gauge, one(stats.uptime_ms as f64 / 1e3))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The registry, and handles on what it holds.
pub struct Metrics {
    registry: Registry,
    latencies: Arc<Latencies>,
    errors: Family<KindLabel, Counter>,
    op_errors: Family<RequestLabels, Counter>,
    siblings: Arc<Hdr>,
    lag_ms: Arc<Hdr>,
    status: Arc<StatusView>,
    /// One scrape at a time (the status view holds one snapshot).
    scrape: Mutex<()>,
}

impl Metrics {
    /// The metrics of node `node` (a label on every series).
    pub fn new(node: NodeId) -> Metrics {
        let labels = [(Cow::Borrowed("node"), Cow::Owned(node.to_string()))];
        let mut registry = Registry::with_labels(labels.into_iter());
        let latencies = Arc::new(Latencies::default());
        registry.register(
            "qkv_request_duration_seconds",
            "Latency of client requests coordinated by this node",
            LatencyView(latencies.clone(), MetricType::Histogram),
        );
        registry.register(
            "qkv_requests",
            "Client requests coordinated by this node",
            LatencyView(latencies.clone(), MetricType::Counter),
        );
        let errors = Family::<KindLabel, Counter>::default();
        registry.register("qkv_request_errors", "Client requests that failed, by kind", errors.clone());
        let op_errors = Family::<RequestLabels, Counter>::default();
        registry.register("qkv_request_failures", "Client requests that failed, by op and level", op_errors.clone());
        let siblings = Hdr::new(1_000_000, SIBLING_BUCKETS, 1.0);
        registry.register(
            "qkv_siblings_per_read",
            "Siblings returned by successful reads",
            HdrMetric(siblings.clone()),
        );
        let lag_ms = Hdr::new(24 * 3_600_000, LAG_BUCKETS_S, 1e-3);
        registry.register(
            "qkv_replication_lag_seconds",
            "Time from a write's ack until its last home replica held it",
            HdrMetric(lag_ms.clone()),
        );
        let status = Arc::new(StatusView::default());
        registry.register_collector(Box::new(StatusCollector(status.clone())));
        Metrics { registry, latencies, errors, op_errors, siblings, lag_ms, status, scrape: Mutex::new(()) }
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
        let labels = RequestLabels { op, level, strict };
        {
            let mut all = lock(&self.latencies.0);
            let h = match all.get_mut(&labels) {
                Some(h) => h,
                None => all.entry(labels.clone()).or_insert_with(|| hist(3_600_000_000)),
            };
            let _ = h.record(micros.max(1));
        }
        match outcome {
            Ok(Some(siblings)) => self.siblings.record(siblings as u64),
            Ok(None) => {}
            Err(e) => {
                self.op_errors.get_or_create(&labels).inc();
                self.errors.get_or_create(&KindLabel { kind: error_kind(e) }).inc();
            }
        }
    }

    /// Time-to-all-replicas samples, ms.
    pub fn lag(&self, samples: &[u64]) {
        for &s in samples {
            self.lag_ms.record(s);
        }
    }

    /// The `Stats` answer, from the registry.
    pub fn stats(&self, status: &StatusReply, base: StatsReply) -> StatsReply {
        let ops = lock(&self.latencies.0)
            .iter()
            .map(|(l, h)| OpStats {
                op: l.op.to_string(),
                level: l.level.clone(),
                strict: l.strict,
                errors: self.op_errors.get(l).map_or(0, |c| c.get()),
                latency_us: percentiles(h),
            })
            .collect();
        let mut errors: Vec<(String, u64)> = ERROR_KINDS
            .iter()
            .filter_map(|&kind| self.errors.get(&KindLabel { kind }).map(|c| (kind.to_string(), c.get())))
            .collect();
        errors.sort();
        StatsReply {
            ops,
            errors,
            read_repairs: status.read_repairs,
            siblings_per_read: self.siblings.percentiles(),
            replication_lag_ms: self.lag_ms.percentiles(),
            hints: (status.hints.count, status.hints.bytes),
            ..base
        }
    }

    /// The registry in the OpenMetrics text format ([`CONTENT_TYPE`]), with the core's
    /// counters from `status` and `stats`.
    pub fn prometheus(&self, status: &StatusReply, stats: &StatsReply, members: &MembershipStats) -> String {
        let _one = lock(&self.scrape);
        *lock(&self.status.0) = Some((status.clone(), stats.clone(), members.clone()));
        let mut out = String::new();
        let encoded = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        *lock(&self.status.0) = None;
        if let Err(e) = encoded {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_histograms_counters_and_gauges() {
        let m = Metrics::new(1);
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
            read_checks: 9,
            read_checks_differed: 1,
        };
        let stats = m.stats(&status, StatsReply::default());
        assert_eq!(stats.ops.len(), 2);
        assert_eq!(stats.ops.iter().map(|o| o.errors).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(stats.errors, vec![("timeout".to_string(), 1)]);
        assert_eq!(stats.replication_lag_ms.count, 2);
        let members = MembershipStats {
            epoch: 2,
            phase: "syncing",
            staged: 1,
            dropped_keys: 0,
            forgotten: 1,
            from: vec![TransferSum {
                from: 3,
                ranges_done: 1,
                ranges_left: 2,
                keys_done: 10,
                bytes_done: 1000,
                keys_left: 30.0,
                bytes_left: 3000.0,
                rate: 250.5,
            }],
        };
        let text = m.prometheus(&status, &stats, &members);
        for want in [
            "qkv_request_duration_seconds_bucket{node=\"1\",le=\"0.0005\",op=\"get\",level=\"quorum\",strict=\"false\"} 1",
            "qkv_request_duration_seconds_bucket{node=\"1\",le=\"0.00025\",op=\"get\",level=\"quorum\",strict=\"false\"} 0",
            "qkv_request_duration_seconds_bucket{node=\"1\",le=\"+Inf\",op=\"get\",level=\"quorum\",strict=\"false\"} 1",
            "qkv_requests_total{node=\"1\",op=\"put\",level=\"all\",strict=\"true\"} 1",
            "qkv_request_errors_total{node=\"1\",kind=\"timeout\"} 1",
            "qkv_request_failures_total{node=\"1\",op=\"put\",level=\"all\",strict=\"true\"} 1",
            "qkv_replication_lag_seconds_bucket{node=\"1\",le=\"5.0\"} 2",
            "qkv_replication_lag_seconds_bucket{node=\"1\",le=\"1.0\"} 1",
            "qkv_read_repairs_total{node=\"1\"} 4",
            "qkv_read_checks_total{node=\"1\"} 9",
            "qkv_read_checks_differed_total{node=\"1\"} 1",
            "qkv_key_limit_refusals_total{node=\"1\",kind=\"write\"} 2",
            "qkv_layout_epoch{node=\"1\"} 2",
            "qkv_layout_phase{node=\"1\",phase=\"syncing\"} 1",
            "qkv_layout_phase{node=\"1\",phase=\"stable\"} 0",
            "qkv_transfer_keys{node=\"1\",from=\"3\",state=\"left\"} 30",
            "qkv_transfer_bytes{node=\"1\",from=\"3\",state=\"done\"} 1000",
            "qkv_transfer_ranges{node=\"1\",from=\"3\",state=\"left\"} 2",
            "qkv_transfer_rate_bytes_per_second{node=\"1\",from=\"3\"} 250.5",
            "qkv_layout_dropped_keys_total{node=\"1\"} 0",
            "qkv_layout_forgotten_nodes{node=\"1\"} 1",
            "# HELP qkv_read_repairs Read repairs acknowledged by stale replicas.\n",
            "# TYPE qkv_siblings_per_read histogram",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
        assert_eq!(lock(&m.status.0).as_ref(), None, "no snapshot kept between scrapes");
    }
}
