//! Errors that cross the wire: each reads as a sentence a user can act on.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A request's failure, as sent to clients and between nodes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// Not enough replicas are alive to try; nothing was sent.
    #[error("unavailable: {level} needs {needed} replicas, {alive} alive; nothing was sent")]
    Unavailable {
        /// The level asked for, e.g. `quorum`.
        level: String,
        /// Replies the level needs.
        needed: u32,
        /// Replicas believed alive.
        alive: u32,
    },
    /// The deadline passed before enough replicas answered.
    #[error(
        "timeout: {acked} of {needed} replicas answered in time{}",
        if *write { "; the write may still have landed on some replicas" } else { "" }
    )]
    Timeout {
        /// Replicas that answered.
        acked: u32,
        /// Replies needed.
        needed: u32,
        /// True for writes and deletes.
        write: bool,
    },
    /// Replicas answered with failures, so the level can no longer be reached.
    #[error(
        "failed: {acked} of {needed} replicas succeeded, {failed} failed ({cause}){}",
        if *write { "; the write may still have landed on some replicas" } else { "" }
    )]
    Failed {
        /// Replicas that succeeded.
        acked: u32,
        /// Replies needed.
        needed: u32,
        /// Replicas that failed.
        failed: u32,
        /// The first failure.
        cause: String,
        /// True for writes and deletes.
        write: bool,
    },
    /// The level asks for more replicas than the key has.
    #[error("invalid level: {level} needs {needed} replicas but the replication factor is {n}")]
    InvalidLevel {
        /// The level asked for.
        level: String,
        /// Replies it would need.
        needed: usize,
        /// The replication factor.
        n: u32,
    },
    /// A key or value is over the configured limit.
    #[error("too large: {what} is {size} bytes, the limit is {max}")]
    TooLarge {
        /// `key`, `value` or `frame`.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The write would take one key's state past its limit: too many siblings or
    /// bytes. Nothing changed; the key stays readable, and a write with its read's
    /// context (which replaces the siblings it saw) is accepted.
    #[error(
        "key full: the key holds {siblings} siblings in {bytes} bytes and this write would make it {siblings_after} \
         in {bytes_after} bytes, past the per-key limit of {siblings_max} siblings or {bytes_max} bytes; read the \
         key and write with its context to resolve the siblings"
    )]
    KeyFull {
        /// Siblings the key holds now.
        siblings: u64,
        /// Bytes its state takes now.
        bytes: u64,
        /// Siblings it would hold after the write.
        siblings_after: u64,
        /// Bytes it would take after the write.
        bytes_after: u64,
        /// The sibling limit.
        siblings_max: u64,
        /// The byte limit.
        bytes_max: u64,
    },
    /// A session read found no replica as new as what the session wrote or saw of the
    /// key (replication has not reached the replicas asked yet). Nothing is returned
    /// rather than an older state; retry after a pause (the client does, within its
    /// deadline).
    #[error(
        "behind: {asked} replicas answered, none as new as what this session wrote or read of the key; retry \
         shortly (replication is on its way)"
    )]
    Behind {
        /// Replicas that answered (none of them as new as the session).
        asked: u32,
    },
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The peer's certificate does not allow this request.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// The node could not store or read data.
    #[error("storage error: {0}")]
    Storage(String),
    /// A node could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A stand-in refused to hold a hint (a limit or the hint window); the coordinator tries another.
    #[error("hint refused by node {node}: {reason}")]
    HintRefused {
        /// The stand-in.
        node: NodeId,
        /// Why, with the numbers.
        reason: String,
    },
    /// The node has too much in flight (operations, or bytes of requests being
    /// received) to take this request now; nothing was done. Retry after a pause.
    #[error("overloaded: {0}; nothing was done, retry after a pause")]
    Overloaded(String),
    /// The node is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// A peer answered with something the protocol does not allow there (a reply of
    /// the wrong kind, a state that is not valid).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The request was routed, or a range asked for, by a cluster layout other than
    /// the one this node holds (`epoch`): the sender should fetch the newer layout, or
    /// send its own when it is the newer one. Nothing was done.
    #[error("node holds cluster layout epoch {epoch}: {reason}")]
    WrongLayout {
        /// The layout epoch the answering node holds.
        epoch: u64,
        /// Why the request does not fit it.
        reason: String,
    },
    /// The node broke one of its own rules: a bug, not the request's fault.
    #[error("internal error: {0}; this is a bug, please report it")]
    Internal(String),
}
