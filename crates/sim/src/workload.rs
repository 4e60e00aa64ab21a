//! Simulated clients: what they ask next, and what they remember.

use std::collections::{BTreeMap, BTreeSet};

use qkv_proto::{Context, GetRequest, Level, PutRequest, Request};
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

    /// The next request, and its history record.
    pub fn next(&mut self, id: u32, seq: u64, w: Workload, n: usize, rng: &mut StdRng) -> (Vec<u8>, OpKind, Request) {
        match w {
            Workload::Mixed => {
                let key = format!("k{}", rng.random_range(0..MIXED_KEYS)).into_bytes();
                let strict = rng.random_bool(0.5);
                let roll = rng.random_range(0..100);
                if roll < 45 {
                    let r = level(rng, n);
                    (key.clone(), OpKind::Get { r, strict }, get(key, r, strict))
                } else {
                    // One write in ten is a delete.
                    let value = if roll >= 90 { None } else { Some(format!("c{id}-{seq}").into_bytes()) };
                    let context = if value.is_none() || rng.random_bool(0.7) {
                        self.contexts.get(&key).cloned().unwrap_or_default()
                    } else {
                        Context::empty()
                    };
                    let wl = level(rng, n);
                    let op = OpKind::Put { value: value.clone(), context: context.clone(), w: wl, strict };
                    (key.clone(), op, put(key, value, context, wl, strict))
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
                    (key.clone(), op, put(key, value, context, Level::Quorum, true))
                }
            }
            Workload::Set => match self.pending_add.take() {
                Some((key, mut elements, context, strict)) => {
                    self.next_element += 1;
                    elements.insert(u64::from(id) * 1_000_000 + self.next_element);
                    let value = Some(encode_set(&elements));
                    let op = OpKind::Put { value: value.clone(), context: context.clone(), w: Level::Quorum, strict };
                    (key.clone(), op, put(key, value, context, Level::Quorum, strict))
                }
                None => {
                    let key = format!("set{}", rng.random_range(0..SET_KEYS)).into_bytes();
                    let strict = rng.random_bool(0.5);
                    (key.clone(), OpKind::Get { r: Level::Quorum, strict }, get(key, Level::Quorum, strict))
                }
            },
        }
    }

    /// Remember what an operation returned.
    pub fn completed(&mut self, w: Workload, key: &[u8], op: &OpKind, outcome: &Outcome) {
        match outcome {
            Outcome::Get { values, context } => {
                self.contexts.insert(key.to_vec(), context.clone());
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

fn get(key: Vec<u8>, r: Level, strict: bool) -> Request {
    Request::Get(GetRequest { key, r, strict, timeout_ms: None })
}

fn put(key: Vec<u8>, value: Option<Vec<u8>>, context: Context, w: Level, strict: bool) -> Request {
    Request::Put(PutRequest { key, value, context, w, strict, timeout_ms: None, forwarded: false })
}
