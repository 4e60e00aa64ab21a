//! The consistency checker: judges a history against the final state of every key.
//!
//! Checks, for every key:
//! - **no acknowledged write lost**: its dot is a sibling of the final state, or
//!   covered by the final clock (or by a tombstone some replica purged) *and* some
//!   put was sent with a context covering it (someone read it and wrote over it);
//! - **no resurrection**: a write some acknowledged put overwrote is not a sibling
//!   of the final state (a tombstone purged too early brings such values back);
//! - **strict quorums see acknowledged writes**: a strict read with R + W > N that
//!   started after a strict write was acknowledged returns a context covering it;
//! - **convergence**: every home replica holds the same state (a tombstone-only
//!   state and no state are the same: both read as "not found");
//! - **no value from nowhere**: every value read was written by some put;
//! - **set workload**: every element of an acknowledged set write is in the final state.
//!
//! Crashes and power losses lose only unflushed writes, which a correct node never
//! acknowledged. Disk wipes lose flushed ones, so they come with excuses: a write
//! whose every durable copy a wipe destroyed ([`Facts::destroyed`]) may be lost, an
//! overwrite whose copies were destroyed may leave the old value, and a strict read
//! may miss a destroyed write, or any write if a home replica of the key was wiped
//! after the write began (the wiped replica answers until anti-entropy refills it).
//! A node the operator forgets is not wiped, but what it alone held is destroyed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use qkv_proto::{Dot, DvvSet, NodeId};

use crate::history::{Entry, History, OpKind, Outcome};

/// What the checker found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which property.
    pub kind: &'static str,
    /// The key.
    pub key: Vec<u8>,
    /// What happened, in a sentence.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on key {}: {}", self.kind, String::from_utf8_lossy(&self.key), self.detail)
    }
}

/// The state of one key at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct FinalKey {
    /// Each home replica's state (`None`: it holds nothing).
    pub replicas: Vec<(NodeId, Option<DvvSet>)>,
    /// Tombstones of this key that replicas purged: when, and their clocks.
    pub purged: Vec<(u64, qkv_proto::Seen)>,
    /// Every node that was a home replica of the key in some layout of the run, when
    /// membership changed (empty: the home replicas above were its only ones).
    pub homes_ever: Vec<NodeId>,
}

impl FinalKey {
    /// Every home replica holds the same state; a tombstone-only state and no state
    /// are the same (both read as "not found"; GC turns one into the other).
    pub fn agrees(&self) -> bool {
        fn live(s: &Option<DvvSet>) -> Option<&DvvSet> {
            s.as_ref().filter(|s| !s.is_deleted())
        }
        self.replicas.windows(2).all(|w| live(&w[0].1) == live(&w[1].1))
    }

    /// The merge of every home replica.
    pub fn merged(&self) -> DvvSet {
        self.replicas.iter().filter_map(|r| r.1.as_ref()).fold(DvvSet::new(), |acc, s| acc.merged(s))
    }
}

/// What the checker needs besides the history.
pub struct Facts<'a> {
    /// Replication factor.
    pub n: usize,
    /// Final state per key.
    pub finals: &'a BTreeMap<Vec<u8>, FinalKey>,
    /// Whether the set workload ran (values are comma-separated element sets).
    pub set_workload: bool,
    /// Whether to require convergence of home replicas.
    pub check_convergence: bool,
    /// Dots whose every durable copy a disk wipe destroyed.
    pub destroyed: &'a BTreeSet<Dot>,
    /// Disk wipes: (node, time ms).
    pub wipes: &'a [(NodeId, u64)],
}

/// A checker's verdict.
#[derive(Debug, Default)]
pub struct Report {
    /// Violations found.
    pub violations: Vec<Violation>,
    /// Acknowledged writes checked.
    pub acked_writes: usize,
    /// Reads checked.
    pub reads: usize,
}

/// Parse a set-workload value: comma-separated decimal elements.
pub fn parse_set(v: &[u8]) -> BTreeSet<u64> {
    std::str::from_utf8(v).unwrap_or("").split(',').filter_map(|x| x.parse().ok()).collect()
}

/// Encode a set-workload value.
pub fn encode_set(s: &BTreeSet<u64>) -> Vec<u8> {
    s.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

fn required(level: qkv_proto::Level, n: usize) -> usize {
    level.required(n).unwrap_or(usize::MAX)
}

/// Judge a history.
pub fn check(history: &History, facts: &Facts<'_>) -> Report {
    let mut report = Report::default();
    let keys: BTreeSet<&Vec<u8>> = history.entries.iter().map(|e| &e.key).collect();
    for key in keys {
        let entries = history.of_key(key);
        let fin = facts.finals.get(key).cloned().unwrap_or_default();
        check_key(key, &entries, &fin, facts, &mut report);
    }
    report
}

fn check_key(key: &[u8], entries: &[&Entry], fin: &FinalKey, facts: &Facts<'_>, report: &mut Report) {
    let merged = fin.merged();
    let mut seen = qkv_proto::Seen { vv: merged.clock().clone(), dots: merged.cloud().to_vec() };
    let mut purged = qkv_proto::Seen::new();
    for (_, c) in &fin.purged {
        purged.vv.join(&c.vv);
        purged.dots.extend(c.dots.iter().copied());
    }
    purged.normalize();
    seen.vv.join(&purged.vv);
    seen.dots.extend(purged.dots.iter().copied());
    seen.normalize();
    // A purge covering `dot` by time `t`: the key's history before it may be gone from replies.
    let purged_by = |dot: Dot, t: u64| fin.purged.iter().any(|(at, c)| *at <= t && c.covers(dot));
    // A wipe of any replica the key had, in any layout, may take a write's only copies.
    let home: Vec<NodeId> = fin.replicas.iter().map(|r| r.0).chain(fin.homes_ever.iter().copied()).collect();
    let wiped_between =
        |from: u64, to: u64| facts.wipes.iter().any(|&(n, t)| home.contains(&n) && from <= t && t <= to);
    let mut bad = |kind: &'static str, detail: String| {
        report.violations.push(Violation { kind, key: key.to_vec(), detail });
    };
    // No acknowledged write lost.
    let sent: Vec<&qkv_proto::Seen> = entries.iter().filter_map(|e| e.sent_context()).collect();
    for e in entries.iter().filter(|e| e.is_acked_put()) {
        let Some(dot) = e.dot() else {
            bad("malformed answer", format!("client {} got a put context without a new dot", e.client));
            continue;
        };
        let written = match &e.op {
            OpKind::Put { value, .. } => value.as_deref(),
            OpKind::Get { .. } => None,
        };
        // A write is its dot *and* its value: a node that lost its disk may mint the dot again.
        if merged.siblings().iter().any(|s| s.dot == dot && s.value.as_deref() != written) {
            bad(
                "dot reused",
                format!(
                    "client {}'s write at {} ms has dot {}:{}, which now holds another value",
                    e.client,
                    e.completed_ms,
                    qkv_proto::actor_name(dot.actor),
                    dot.counter
                ),
            );
            continue;
        }
        // A retry taken by two coordinators is one sibling under the first dot: same write,
        // same value (a delete's tombstone too: same write id, no value).
        let same_write = |s: &qkv_proto::dvv::Sibling| {
            s.value.as_deref() == written
                && (written.is_some() || (e.duplicated && e.write_id.is_some() && s.write_id == e.write_id))
        };
        let present = merged.siblings().iter().any(|s| s.dot == dot || same_write(s));
        // (For a resurrection the sibling must be this dot, or the same value: a retried
        // delete kept under another dot is not covered by this answer's context.)
        let back =
            merged.siblings().iter().any(|s| s.dot == dot || (written.is_some() && s.value.as_deref() == written));
        // A value may disappear only when a later write was sent with the context of an
        // observation that returned it: a read that showed the value, or this write's own
        // answer (its writer replacing it). A tombstone, whenever a context covered it.
        // A duplicated put may have been coordinated twice: replicas keep one of its
        // dots, so a read may show its value under the other dot, which that read's
        // context covers instead of this one.
        let superseded = seen.covers(dot)
            && match written {
                Some(v) => entries.iter().any(|p| {
                    let OpKind::Put { context: c, .. } = &p.op else { return false };
                    (c.seen.covers(dot) || e.duplicated)
                        && entries.iter().any(|o| {
                            // The writer's own earlier observation, not an equal context someone else got.
                            o.client == p.client
                                && o.completed_ms <= p.invoked_ms
                                && o.observed_context() == Some(c)
                                && match &o.outcome {
                                    Outcome::Get { values, .. } => values.iter().any(|x| x.as_slice() == v),
                                    Outcome::Put { dot: d, .. } => *d == dot,
                                    _ => false,
                                }
                        })
                }),
                None => sent.iter().any(|c| c.covers(dot)),
            };
        // Overwritten by an acknowledged put whose copies no wipe destroyed: it must stay gone.
        let overwritten_for_good = entries.iter().any(|o| {
            o.is_acked_put()
                && o.sent_context().is_some_and(|c| c.covers(dot))
                && o.dot().is_some_and(|d| !facts.destroyed.contains(&d))
        });
        if back && overwritten_for_good {
            bad(
                "resurrected value",
                format!(
                    "client {}'s write at {} ms (dot {}:{}) was overwritten by an acknowledged put, yet is back",
                    e.client,
                    e.completed_ms,
                    qkv_proto::actor_name(dot.actor),
                    dot.counter
                ),
            );
        }
        // A delete whose tombstone was purged once every home replica held it is not lost.
        let purged_delete = written.is_none() && purged.covers(dot);
        if !present && !superseded && !purged_delete && !facts.destroyed.contains(&dot) {
            let why = if seen.covers(dot) {
                "its sibling is gone though no put was sent with the context of an observation that returned it"
            } else {
                "no home replica has seen it"
            };
            bad(
                "acknowledged write lost",
                format!(
                    "client {}'s write at {} ms (dot {}:{}) : {why}",
                    e.client,
                    e.completed_ms,
                    qkv_proto::actor_name(dot.actor),
                    dot.counter
                ),
            );
        }
    }
    report.acked_writes += entries.iter().filter(|e| e.is_acked_put()).count();

    // A write refused for its context or the key's limit changed nothing: its value is nowhere.
    for e in entries {
        let (OpKind::Put { value: Some(v), .. }, Outcome::Failed(why)) = (&e.op, &e.outcome) else { continue };
        if e.duplicated || !(why.starts_with("key full") || why.starts_with("bad request: invalid context")) {
            continue;
        }
        let read_back = entries.iter().any(|o| matches!(&o.outcome, Outcome::Get { values, .. } if values.contains(v)));
        if read_back || merged.values().any(|x| x == v.as_slice()) {
            bad(
                "refused write landed",
                format!(
                    "client {}'s write at {} ms was refused ({why}), yet its value was stored",
                    e.client, e.completed_ms
                ),
            );
        }
    }

    // Strict quorums: a strict read with R + W > N after a strict acked write covers it.
    for r in entries.iter() {
        let (OpKind::Get { r: rl, strict: true }, Outcome::Get { context, .. }) = (&r.op, &r.outcome) else {
            continue;
        };
        report.reads += 1;
        for w in entries.iter().filter(|w| w.is_acked_put() && w.completed_ms < r.invoked_ms) {
            let OpKind::Put { w: wl, strict: true, .. } = &w.op else { continue };
            if required(*rl, facts.n).saturating_add(required(*wl, facts.n)) <= facts.n {
                continue;
            }
            if let Some(dot) = w.dot()
                && !context.seen.covers(dot)
                && !facts.destroyed.contains(&dot)
                && !wiped_between(w.invoked_ms, r.completed_ms)
                && !purged_by(dot, r.completed_ms)
            {
                bad(
                    "stale strict read",
                    format!(
                        "client {}'s read (R={rl}) at {} ms missed client {}'s write (W={wl}, dot {}:{}) acknowledged at {} ms",
                        r.client,
                        r.invoked_ms,
                        w.client,
                        qkv_proto::actor_name(dot.actor),
                        dot.counter,
                        w.completed_ms
                    ),
                );
            }
        }
    }

    // Nothing read that nobody wrote.
    let written: BTreeSet<&[u8]> = entries
        .iter()
        .filter_map(|e| match &e.op {
            OpKind::Put { value: Some(v), .. } => Some(v.as_slice()),
            _ => None,
        })
        .collect();
    for e in entries.iter() {
        if let Outcome::Get { values, .. } = &e.outcome {
            for v in values.iter().filter(|v| !written.contains(v.as_slice())) {
                bad(
                    "phantom value",
                    format!("client {} read {:?}, which nobody wrote", e.client, String::from_utf8_lossy(v)),
                );
            }
        }
    }

    // A forged session floor is untrusted input the cluster refuses.
    for e in entries.iter().filter(|e| e.forged_floor) {
        if matches!(e.outcome, Outcome::Put { .. } | Outcome::Get { .. }) {
            bad(
                "forged session floor accepted",
                format!("client {}'s request at {} ms carried a forged floor and was answered", e.client, e.invoked_ms),
            );
        }
    }

    // Sessions: a read in a session returns a state at least as new as everything the
    // session wrote or read of the key before (Terry et al.'s read-your-writes and
    // monotonic reads). "As new" is causal: the read's context covers what the session
    // knew. An answer with no value stands for a delete the session made or saw, or
    // one whose purged tombstone covered what the session knew.
    let sessions: BTreeSet<u32> = entries.iter().filter(|e| e.session).map(|e| e.client).collect();
    for c in sessions {
        let mut known = qkv_proto::Seen::new();
        let mut deleted = false;
        let mut mine: Vec<&&Entry> = entries.iter().filter(|e| e.client == c).collect();
        mine.sort_by_key(|e| (e.invoked_ms, e.completed_ms));
        for e in mine {
            match (&e.op, &e.outcome) {
                (OpKind::Get { r, .. }, Outcome::Get { values, context }) => {
                    let fresh = context.seen.covers_all(&known);
                    // A purged tombstone that covered what the session knew reads as nothing.
                    let purged_before = fin
                        .purged
                        .iter()
                        .filter(|(t, _)| *t <= e.completed_ms)
                        .fold(qkv_proto::Seen::new(), |acc, (_, s)| acc.joined(s))
                        .covers_all(&known);
                    if fresh {
                        known = known.joined(&context.seen);
                        deleted = values.is_empty();
                    } else if !(values.is_empty() && (deleted || purged_before)) {
                        bad(
                            "session read went back",
                            format!(
                                "client {}'s read at R = {r:?} (invoked at {} ms) saw {} but the session had seen {}",
                                e.client,
                                e.invoked_ms,
                                seen_text(&context.seen),
                                seen_text(&known)
                            ),
                        );
                    }
                }
                (OpKind::Put { value, .. }, Outcome::Put { context, .. }) => {
                    known = known.joined(&context.seen);
                    deleted = value.is_none();
                }
                _ => {}
            }
        }
    }

    // Convergence of home replicas.
    if facts.check_convergence && !fin.agrees() {
        let states: Vec<String> = fin
            .replicas
            .iter()
            .map(|(n, s)| format!("node {n}: {:?}", s.as_ref().map(|s| (s.clock().0.clone(), s.siblings().len()))))
            .collect();
        bad("replicas diverge", states.join("; "));
    }

    // Set workload: every acknowledged element survives.
    if facts.set_workload {
        let have: BTreeSet<u64> = merged.values().flat_map(parse_set).collect();
        // A write whose every durable copy was lost (a wipe, or a power loss of `buffer` nodes) is excused.
        for e in entries.iter().filter(|e| e.is_acked_put() && e.dot().is_none_or(|d| !facts.destroyed.contains(&d))) {
            if let OpKind::Put { value: Some(v), .. } = &e.op {
                let missing: Vec<u64> = parse_set(v).difference(&have).copied().collect();
                if !missing.is_empty() {
                    bad(
                        "acknowledged set element lost",
                        format!("client {}'s write lost elements {missing:?}", e.client),
                    );
                }
            }
        }
    }
}

fn seen_text(s: &qkv_proto::Seen) -> String {
    let vv: Vec<String> = s.vv.0.iter().map(|(a, c)| format!("{}:{c}", qkv_proto::actor_name(*a))).collect();
    let dots: Vec<String> =
        s.dots.iter().map(|d| format!("{}:{}", qkv_proto::actor_name(d.actor), d.counter)).collect();
    if dots.is_empty() { format!("[{}]", vv.join(" ")) } else { format!("[{}]+{{{}}}", vv.join(" "), dots.join(" ")) }
}

/// The trace of one key, for a violation report.
/// A value as a trace shows it: large ones (the hot key's) by their name and size.
fn value_text(v: &[u8]) -> String {
    match v.iter().position(|&b| b == b':') {
        Some(i) if v.len() > 40 => format!("{}:<{} bytes>", String::from_utf8_lossy(&v[..i]), v.len()),
        _ => String::from_utf8_lossy(v).into_owned(),
    }
}

pub fn trace(history: &History, key: &[u8]) -> String {
    let mut out = String::new();
    for e in history.of_key(key) {
        let op = match &e.op {
            OpKind::Put { value, context, w, strict } => format!(
                "put {} ctx={} w={w}{}",
                value.as_deref().map_or("<delete>".into(), value_text),
                seen_text(&context.seen),
                if *strict { " strict" } else { "" }
            ),
            OpKind::Get { r, strict } => format!("get r={r}{}", if *strict { " strict" } else { "" }),
        };
        let outcome = match &e.outcome {
            Outcome::Put { context, dot } => {
                format!("ok dot={}:{} ctx={}", qkv_proto::actor_name(dot.actor), dot.counter, seen_text(&context.seen))
            }
            Outcome::Get { values, context } => format!(
                "ok {:?} ctx={}",
                values.iter().map(|v| value_text(v)).collect::<Vec<_>>(),
                seen_text(&context.seen)
            ),
            Outcome::Failed(e) => format!("failed: {e}"),
            Outcome::Unknown => "no answer".into(),
        };
        out +=
            &format!("  [{:>7} .. {:>7} ms] client {:>2}: {op} -> {outcome}\n", e.invoked_ms, e.completed_ms, e.client);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_proto::{Context, Level, Seen, VersionVector};

    fn put(client: u32, value: &str, sent: &[(u64, u64)], got: &[(u64, u64)], at: u64, strict: bool) -> Entry {
        let vv = |v: &[(u64, u64)]| Context { seen: Seen::of(VersionVector(v.iter().copied().collect())), mac: vec![] };
        let grew = got.iter().find(|(a, c)| !sent.iter().any(|(b, d)| a == b && d >= c)).copied().unwrap_or((0, 0));
        Entry {
            client,
            key: b"k".to_vec(),
            op: OpKind::Put { value: Some(value.into()), context: vv(sent), w: Level::Quorum, strict },
            invoked_ms: at,
            completed_ms: at + 1,
            outcome: Outcome::Put { context: vv(got), dot: Dot { actor: grew.0, counter: grew.1 } },
            duplicated: false,
            write_id: None,
            session: false,
            forged_floor: false,
        }
    }

    /// A read of `k` by `client` at `r` over 10 to 11 ms, answered `values` (no context).
    fn get(client: u32, r: Level, strict: bool, values: &[&str]) -> Entry {
        Entry {
            client,
            key: b"k".to_vec(),
            op: OpKind::Get { r, strict },
            invoked_ms: 10,
            completed_ms: 11,
            outcome: Outcome::Get {
                values: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
                context: Context::empty(),
            },
            duplicated: false,
            write_id: None,
            session: false,
            forged_floor: false,
        }
    }

    fn finals(set: DvvSet) -> BTreeMap<Vec<u8>, FinalKey> {
        [(
            b"k".to_vec(),
            FinalKey {
                replicas: vec![(1, Some(set.clone())), (2, Some(set))],
                purged: Default::default(),
                homes_ever: vec![],
            },
        )]
        .into()
    }

    static NONE: BTreeSet<Dot> = BTreeSet::new();

    fn facts(f: &BTreeMap<Vec<u8>, FinalKey>) -> Facts<'_> {
        Facts { n: 3, finals: f, set_workload: false, check_convergence: true, destroyed: &NONE, wipes: &[] }
    }

    #[test]
    fn a_lost_write_and_an_lww_drop_are_caught() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"a".to_vec()), 1);
        let h = History { entries: vec![put(1, "a", &[], &[(1, 1)], 0, false), put(2, "b", &[], &[(2, 1)], 5, false)] };
        let f = finals(s.clone());
        let r = check(&h, &facts(&f));
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].detail.contains("no home replica has seen it"));
        // LWW: the clock covers b's dot but its sibling is gone with no context covering it.
        let mut lww = s.clone();
        lww.update(&VersionVector::new(), Some(b"b".to_vec()), 2);
        let lww = lww.newest_only();
        let r = check(&h, &facts(&finals(lww)));
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].detail.contains("no put was sent with the context of an observation that returned it"));
    }

    #[test]
    fn a_reused_dot_with_another_value_is_caught() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"other".to_vec()), 1);
        let h = History { entries: vec![put(1, "a", &[], &[(1, 1)], 0, false)] };
        let r = check(&h, &facts(&finals(s)));
        assert_eq!(r.violations.iter().map(|v| v.kind).collect::<Vec<_>>(), vec!["dot reused"]);
    }

    #[test]
    fn overwriting_with_a_context_is_not_a_loss() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"a".to_vec()), 1);
        let ctx = s.clock().clone();
        s.update(&ctx, Some(b"b".to_vec()), 1);
        let h = History {
            entries: vec![put(1, "a", &[], &[(1, 1)], 0, false), put(1, "b", &[(1, 1)], &[(1, 2)], 5, false)],
        };
        assert!(check(&h, &facts(&finals(s))).violations.is_empty());
    }

    #[test]
    fn a_stale_strict_read_divergence_and_phantoms_are_caught() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"a".to_vec()), 1);
        let read = get(3, Level::Quorum, true, &["zzz"]);
        let h = History { entries: vec![put(1, "a", &[], &[(1, 1)], 0, true), read] };
        let mut f = finals(s);
        f.get_mut(b"k".as_slice()).unwrap().replicas.push((3, None));
        let kinds: Vec<&str> = check(&h, &facts(&f)).violations.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, vec!["stale strict read", "phantom value", "replicas diverge"]);
    }

    #[test]
    fn session_reads_that_go_back_and_accepted_forged_floors_are_caught() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"a".to_vec()), 1);
        let mut write = put(1, "a", &[], &[(1, 1)], 0, true);
        write.session = true;
        // The same session then reads nothing: older than its own write.
        let mut read = get(1, Level::One, false, &[]);
        read.session = true;
        let mut forged = read.clone();
        forged.outcome =
            Outcome::Get { values: vec![b"a".to_vec()], context: write.observed_context().unwrap().clone() };
        forged.forged_floor = true;
        forged.client = 2;
        let h = History { entries: vec![write, read, forged] };
        let kinds: Vec<&str> = check(&h, &facts(&finals(s))).violations.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, vec!["forged session floor accepted", "session read went back"]);
    }
}
