//! Wire messages. One request and one response per QUIC bidirectional stream.
//!
//! Client requests may come from client or node certificates; `Replica*` and
//! `Ping` requests only from node certificates.

use serde::{Deserialize, Serialize};

use crate::{Context, DvvSet, Error, Level, NodeId};

/// A request, client-to-node or node-to-node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Read a key at level `r`.
    Get(GetRequest),
    /// Write (`value: Some`) or delete (`value: None`) a key at level `w`.
    Put(PutRequest),
    /// The node's view of the cluster.
    Status,
    /// The preference list of a key.
    Ring {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// What each home replica holds for a key, unmerged and unrepaired.
    Inspect {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Node-to-node: this replica's state of a key.
    ReplicaGet {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Node-to-node: merge this state into the replica's and persist before acking.
    ReplicaPut {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The state to merge.
        set: DvvSet,
    },
    /// Node-to-node liveness probe.
    Ping {
        /// The sender.
        from: NodeId,
    },
}

/// A read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Replies needed.
    pub r: Level,
    /// Only home replicas count.
    pub strict: bool,
    /// Deadline for the request, from its arrival at the coordinator.
    pub timeout_ms: Option<u32>,
}

/// A write or delete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value; `None` deletes (writes a tombstone).
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// The causal context from an earlier read; empty for a blind write.
    pub context: Context,
    /// Acks needed.
    pub w: Level,
    /// Only home replicas count.
    pub strict: bool,
    /// Deadline for the request, from its arrival at the coordinator.
    pub timeout_ms: Option<u32>,
    /// Set by a node that forwarded the write to a replica; a forwarded write is not forwarded again.
    pub forwarded: bool,
}

/// A response to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The request failed.
    Error(Error),
    /// A read's answer.
    Get(GetReply),
    /// A write's answer.
    Put(PutReply),
    /// A node's view of the cluster.
    Status(StatusReply),
    /// A key's preference list.
    Ring(RingReply),
    /// Each home replica's state of a key.
    Inspect(InspectReply),
    /// A replica's state of a key (`None`: never written).
    ReplicaState(Option<DvvSet>),
    /// A replica merged and persisted the state.
    ReplicaAck,
    /// Liveness answer.
    Pong {
        /// The answering node.
        from: NodeId,
    },
}

/// A read's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetReply {
    /// The sibling values (tombstones left out); empty when not found.
    pub values: Vec<serde_bytes::ByteBuf>,
    /// False when there is no live value.
    pub found: bool,
    /// The context to pass to the next write of this key.
    pub context: Context,
    /// Replicas that answered before the reply.
    pub replied: u32,
}

/// A write's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PutReply {
    /// The context of the written state (covers the new value and what it replaced).
    pub context: Context,
    /// Acks from home replicas.
    pub home_acks: Vec<NodeId>,
    /// The node that coordinated the write.
    pub coordinator: NodeId,
}

/// One node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The answering node.
    pub node: NodeId,
    /// Replication factor.
    pub n: u32,
    /// Virtual nodes per node.
    pub vnodes: u32,
    /// Every member and how this node sees it.
    pub members: Vec<MemberStatus>,
    /// Read repairs this node sent since start.
    pub read_repairs: u64,
}

/// A member as seen by one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub node: NodeId,
    /// Its address.
    pub addr: String,
    /// Up as this node sees it.
    pub up: bool,
    /// Share of the key space it is a home replica for (0.0..=1.0, summing to N over members).
    pub ownership: f64,
}

/// A key's preference list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RingReply {
    /// Home replicas, in preference order, with their addresses.
    pub replicas: Vec<(NodeId, String)>,
}

/// Each home replica's state of a key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InspectReply {
    /// Per home replica: its state, or why it could not be read.
    pub replicas: Vec<(NodeId, Result<Option<DvvSet>, Error>)>,
}
