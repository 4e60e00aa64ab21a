//! What clients did and saw: the input of the checker, shared by the simulator
//! and the chaos runner on real processes.

use std::hash::Hasher;

use qkv_proto::{Context, Dot, Level, Seen};

/// What a client asked.
#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// A put (`value: None` is a delete) with the context the client sent.
    Put {
        /// The value, or `None` for a delete.
        value: Option<Vec<u8>>,
        /// The context sent.
        context: Context,
        /// W.
        w: Level,
        /// Strict or sloppy.
        strict: bool,
    },
    /// A get.
    Get {
        /// R.
        r: Level,
        /// Strict or sloppy.
        strict: bool,
    },
}

/// How it ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A put was acknowledged with this context.
    Put {
        /// The returned context: the sent one plus the write's dot.
        context: Context,
        /// The write's dot.
        dot: Dot,
    },
    /// A get answered.
    Get {
        /// Sibling values.
        values: Vec<Vec<u8>>,
        /// The returned context.
        context: Context,
    },
    /// The cluster answered with an error: nothing is known of a write's fate.
    Failed(String),
    /// No answer in time: nothing is known.
    Unknown,
}

/// One operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The client.
    pub client: u32,
    /// The key.
    pub key: Vec<u8>,
    /// What was asked.
    pub op: OpKind,
    /// When it was invoked (ms).
    pub invoked_ms: u64,
    /// When its outcome arrived (ms).
    pub completed_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The request may have reached nodes more than once (a duplicated message, a
    /// client's failover): its answer speaks for one attempt only.
    pub duplicated: bool,
    /// A put's write id (the same on every copy of the request).
    pub write_id: Option<u64>,
    /// The client works in a session (read-your-writes, monotonic reads): the checker
    /// holds its reads to the session rules.
    pub session: bool,
    /// The request carried a forged session floor: the cluster must refuse it.
    pub forged_floor: bool,
}

impl Entry {
    /// The dot an acknowledged put minted: the one clock entry that grew.
    pub fn dot(&self) -> Option<Dot> {
        match (&self.op, &self.outcome) {
            (OpKind::Put { .. }, Outcome::Put { dot, .. }) => Some(*dot),
            _ => None,
        }
    }

    /// The context this operation's answer carried (a read's, or a write's).
    pub fn observed_context(&self) -> Option<&Context> {
        match &self.outcome {
            Outcome::Put { context, .. } | Outcome::Get { context, .. } => Some(context),
            _ => None,
        }
    }

    /// True for an acknowledged put.
    pub fn is_acked_put(&self) -> bool {
        matches!(self.outcome, Outcome::Put { .. })
    }

    /// The context a put sent, if this is a put.
    pub fn sent_context(&self) -> Option<&Seen> {
        match &self.op {
            OpKind::Put { context, .. } => Some(&context.seen),
            OpKind::Get { .. } => None,
        }
    }
}

/// Every operation of a run, in completion order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The entries.
    pub entries: Vec<Entry>,
}

impl History {
    /// A stable hash of the whole history (same seed, same hash).
    pub fn fingerprint(&self) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(1, 2);
        for e in &self.entries {
            h.write(format!("{e:?}").as_bytes());
        }
        h.finish()
    }

    /// The entries of one key, in invocation order.
    pub fn of_key(&self, key: &[u8]) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.iter().filter(|e| e.key == key).collect();
        v.sort_by_key(|e| (e.invoked_ms, e.client));
        v
    }
}
