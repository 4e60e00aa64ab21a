//! Simulated clients: what they ask next, and what they remember.

use std::collections::{BTreeMap, BTreeSet};

use qkv_proto::{Context, GetRequest, Level, PutRequest, Request, SessionFloor};
use rand::RngExt;
use rand::rngs::StdRng;

use crate::checker::{encode_set, parse_set};
use crate::history::{OpKind, Outcome};

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts, gets and deletes on a few keys at random levels, strict and sloppy,
    /// with and without contexts.
    Mixed,
    /// Each client adds unique elements to a few set keys: read, merge the
    /// siblings, add, write with the context (Jepsen's Riak set test).
    Set,
    /// One register: strict quorum reads, and writes with the last read's context.
    Register,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mixed" => Ok(Workload::Mixed),
            "set" => Ok(Workload::Set),
            "register" => Ok(Workload::Register),
            _ => Err(format!("unknown workload `{s}`: mixed, set or register")),
        }
    }
}

const MIXED_KEYS: usize = 6;
/// The mixed workload's hot key: blind writes of large values, against the per-key limit.
pub const HOT_KEY: &[u8] = b"hot";
/// Its values are 4 to 24 KiB: a few blind ones fill the simulator's 96 KiB per-key limit.
const HOT_VALUE_BYTES: std::ops::Range<usize> = 4096..24_576;
const SET_KEYS: usize = 3;

/// One client's memory.
#[derive(Debug, Default)]
pub struct ClientState {
    /// Operations still to do.
    pub ops_left: usize,
    contexts: BTreeMap<Vec<u8>, Context>,
    /// Set workload: a read done, the write of `element` to follow.
    pending_add: Option<(Vec<u8>, BTreeSet<u64>, Context, bool)>,
    next_element: u64,
    /// A session client (see `qkv_client::Session`), and whether it sends its floors.
    session: bool,
    send_floors: bool,
    /// What the session wrote and read of each key (kept as `qkv_client::Session` keeps it).
    floors: BTreeMap<Vec<u8>, SessionFloor>,
    /// The last request carried a forged floor.
    forged_floor: bool,
}

fn level(rng: &mut StdRng, n: usize) -> Level {
    let all = [Level::One, Level::Two, Level::Quorum, Level::All];
    loop {
        let l = all[rng.random_range(0..all.len())];
        if l.required(n).is_ok() {
            return l;
        }
    }
}

impl ClientState {
    /// A client that will do `ops` operations.
    pub fn new(ops: usize) -> Self {
        ClientState { ops_left: ops, ..Default::default() }
    }

    /// Make this a session client (`session`), sending its floors with its requests
    /// (`send_floors`; without, it is a client that only claims to be one).
    pub fn in_session(mut self, session: bool, send_floors: bool) -> Self {
        self.session = session;
        self.send_floors = send_floors;
        self
    }

    /// True for a session client.
    pub fn is_session(&self) -> bool {
        self.session
    }

    /// The next request, and its history record.
    pub fn next(&mut self, id: u32, seq: u64, w: Workload, n: usize, rng: &mut StdRng) -> (Vec<u8>, OpKind, Request) {
        let (key, op, mut req) = self.next_plain(id, seq, w, n, rng);
        self.forged_floor = false;
        if self.session && self.send_floors {
            let mut floor = self.floors.get(&key).cloned();
            // Untrusted input: now and then a floor with its counters raised or actors
            // invented (a client claiming it saw more). The cluster must refuse it.
            if let Some(f) = floor.as_mut().filter(|f| !f.context.is_empty() && rng.random_bool(0.02)) {
                f.context = forged(f.context.clone(), rng);
                self.forged_floor = true;
            }
            match &mut req {
                Request::Get(g) => g.session = floor,
                Request::Put(p) => p.session = floor.map(|f| f.context),
                _ => {}
            }
        }
        (key, op, req)
    }

    /// Whether the request just made carried a forged floor.
    pub fn sent_forged_floor(&self) -> bool {
        self.forged_floor
    }

    /// A session write was acknowledged with this floor.
    pub fn session_wrote(&mut self, key: &[u8], op: &OpKind, floor: &Context) {
        if let (true, OpKind::Put { value, .. }) = (self.session, op) {
            self.floors.insert(key.to_vec(), SessionFloor { context: floor.clone(), deleted: value.is_none() });
        }
    }

    fn next_plain(&mut self, id: u32, seq: u64, w: Workload, n: usize, rng: &mut StdRng) -> (Vec<u8>, OpKind, Request) {
        match w {
            Workload::Mixed => {
                let hot = rng.random_bool(0.1);
                let key =
                    if hot { HOT_KEY.to_vec() } else { format!("k{}", rng.random_range(0..MIXED_KEYS)).into_bytes() };
                let strict = rng.random_bool(0.5);
                let roll = rng.random_range(0..100);
                if hot && roll >= 30 {
                    // Mostly blind: siblings pile up until the limit refuses them, and a
                    // write with a read's context resolves them.
                    let mut value = format!("c{id}-{seq}:").into_bytes();
                    value.resize(rng.random_range(HOT_VALUE_BYTES), b'.');
                    let context = if rng.random_bool(0.3) {
                        self.contexts.get(&key).cloned().unwrap_or_default()
                    } else {
                        Context::empty()
                    };
                    let wl = level(rng, n);
                    let op = OpKind::Put { value: Some(value.clone()), context: context.clone(), w: wl, strict };
                    return (key.clone(), op, put(key, Some(value), context, wl, strict, Some(rng.random())));
                }
                if roll < 45 {
                    let r = level(rng, n);
                    (key.clone(), OpKind::Get { r, strict }, get(key, r, strict))
                } else {
                    // One write in ten is a delete.
                    let value = if roll >= 90 { None } else { Some(format!("c{id}-{seq}").into_bytes()) };
                    let context = match rng.random_range(0..100) {
                        // Untrusted input: another key's context, or a forged one. Both are refused.
                        0..3 => self.foreign_context(&key, rng),
                        3..5 => forged(self.contexts.get(&key).cloned().unwrap_or_default(), rng),
                        _ if value.is_none() || rng.random_bool(0.7) => {
                            self.contexts.get(&key).cloned().unwrap_or_default()
                        }
                        _ => Context::empty(),
                    };
                    let wl = level(rng, n);
                    let op = OpKind::Put { value: value.clone(), context: context.clone(), w: wl, strict };
                    (key.clone(), op, put(key, value, context, wl, strict, Some(rng.random())))
                }
            }
            Workload::Register => {
                let key = b"register".to_vec();
                if rng.random_bool(0.5) {
                    (key.clone(), OpKind::Get { r: Level::Quorum, strict: true }, get(key, Level::Quorum, true))
                } else {
                    let context = self.contexts.get(&key).cloned().unwrap_or_default();
                    let value = Some(format!("c{id}-{seq}").into_bytes());
                    let op =
                        OpKind::Put { value: value.clone(), context: context.clone(), w: Level::Quorum, strict: true };
                    (key.clone(), op, put(key, value, context, Level::Quorum, true, Some(rng.random())))
                }
            }
            Workload::Set => match self.pending_add.take() {
                Some((key, mut elements, context, strict)) => {
                    self.next_element += 1;
                    elements.insert(u64::from(id) * 1_000_000 + self.next_element);
                    let value = Some(encode_set(&elements));
                    let op = OpKind::Put { value: value.clone(), context: context.clone(), w: Level::Quorum, strict };
                    (key.clone(), op, put(key, value, context, Level::Quorum, strict, Some(rng.random())))
                }
                None => {
                    let key = format!("set{}", rng.random_range(0..SET_KEYS)).into_bytes();
                    let strict = rng.random_bool(0.5);
                    (key.clone(), OpKind::Get { r: Level::Quorum, strict }, get(key, Level::Quorum, strict))
                }
            },
        }
    }

    /// A context this client got for some other key (empty if it has none).
    fn foreign_context(&self, key: &[u8], rng: &mut StdRng) -> Context {
        let others: Vec<&Context> =
            self.contexts.iter().filter(|(k, c)| k.as_slice() != key && !c.is_empty()).map(|(_, c)| c).collect();
        if others.is_empty() {
            return Context::empty();
        }
        others[rng.random_range(0..others.len())].clone()
    }

    /// Remember what an operation returned.
    pub fn completed(&mut self, w: Workload, key: &[u8], op: &OpKind, outcome: &Outcome) {
        match outcome {
            Outcome::Get { values, context } => {
                self.contexts.insert(key.to_vec(), context.clone());
                // A session read's answer is the new floor when it covers the old one.
                let covers = self.floors.get(key).is_none_or(|f| context.seen.covers_all(&f.context.seen));
                if self.session && covers {
                    let floor = SessionFloor { context: context.clone(), deleted: values.is_empty() };
                    self.floors.insert(key.to_vec(), floor);
                }
                if w == Workload::Set
                    && let OpKind::Get { strict, .. } = op
                {
                    let union: BTreeSet<u64> = values.iter().flat_map(|v| parse_set(v)).collect();
                    self.pending_add = Some((key.to_vec(), union, context.clone(), *strict));
                    return;
                }
            }
            Outcome::Put { context, .. } => {
                self.contexts.insert(key.to_vec(), context.clone());
            }
            Outcome::Failed(_) | Outcome::Unknown => {}
        }
        self.ops_left = self.ops_left.saturating_sub(1);
    }
}

/// A context with a forged clock: a counter raised far ahead (what a client would do to
/// claim it saw everything), or invented actors; its MAC no longer matches.
fn forged(mut c: Context, rng: &mut StdRng) -> Context {
    if rng.random_bool(0.5) && !c.seen.vv.0.is_empty() {
        for v in c.seen.vv.0.values_mut() {
            *v = v.saturating_add(rng.random_range(1..1_000_000));
        }
    } else {
        for _ in 0..rng.random_range(1..300) {
            c.seen.vv.0.insert(rng.random(), rng.random_range(1..u64::MAX));
        }
        if c.mac.is_empty() {
            c.mac = vec![0; 16];
        }
    }
    c
}

fn get(key: Vec<u8>, r: Level, strict: bool) -> Request {
    Request::Get(GetRequest { key, r, strict, timeout_ms: None, session: None })
}

fn put(
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    context: Context,
    w: Level,
    strict: bool,
    write_id: Option<u64>,
) -> Request {
    Request::Put(PutRequest {
        key,
        value,
        context,
        w,
        strict,
        timeout_ms: None,
        forwarded: false,
        write_id,
        session: None,
    })
}
