//! quorumkv's sans-IO core: placement, quorum decisions, the get and put state
//! machines, the replica's merge rules, hints, anti-entropy, tombstone GC, peer
//! liveness and replication lag, each a state machine of its own.
//!
//! Nothing here opens a socket, reads a clock, spawns a thread or draws a random
//! number: time comes in as `now_ms` arguments and effects go out as return
//! values. `qkv-server` drives this code with tokio, quinn and fjall; the
//! simulator drives the same code from a seed.
//!
//! # Layout
//! - [`layout`]: the cluster layout (members, owned vnode labels, epoch); join, leave,
//!   replace and the plan of what each moves.
//! - [`membership`]: the layouts in effect, a change's progress, and the vote that
//!   commits one layout per epoch.
//! - [`ring`]: consistent hashing with vnodes; preference lists; ownership.
//! - [`quorum`]: the pure "won / lost / pending" decision.
//! - [`route`]: who coordinates a write; the up-front availability check.
//! - [`placement`]: which replicas and stand-ins a write or read asks.
//! - [`put`]: the write state machine.
//! - [`get`]: the read state machine, with the read-repair plan.
//! - [`inspect`]: gathering what every replica and stand-in holds of a key.
//! - [`replica`]: the two ways a key's state changes, and input limits.
//! - [`liveness`]: the failure detector: pings and gossiped heartbeats.
//! - [`hints`]: hint limits, sizes, ages and handoff pacing.
//! - [`handoff`]: hinted handoff: batches to owners, redirects, expiry.
//! - [`lag`]: time to all replicas: tracks of acked writes and their probes.
//! - [`merkle`]: anti-entropy hash trees (XOR Merkle trees per range).
//! - [`antientropy`]: exchanges with peers (initiator, responder), their pace, and
//!   the confirmations tombstone GC waits on.
//! - [`tombstones`]: the tombstone index GC works from, and purge records.
//! - [`gc`]: tombstone GC as its own state machine over those and the store.
//! - [`mem`]: an in-memory store for tests and the simulator.
//! - [`pace`]: the token bucket that paces handoff and anti-entropy.
//! - [`pbs`]: staleness predicted from measured latencies (PBS, the WARS model).
//! - [`router`]: the node as one state machine over a [`Store`]: it owns the tables of
//!   work in flight and hands each input to the subsystem above it is for.

pub mod antientropy;
pub mod gc;
pub mod get;
pub mod handoff;
pub mod hints;
pub mod inspect;
pub mod lag;
pub mod layout;
pub mod liveness;
pub mod mem;
pub mod membership;
pub mod merkle;
pub mod pace;
pub mod pbs;
pub mod placement;
pub mod put;
pub mod quorum;
pub mod replica;
pub mod ring;
pub mod route;
pub mod router;
pub mod tombstones;

pub use get::{GetAction, GetAnswer, GetOp};
pub use liveness::Detector;
pub use put::{PutOp, PutOutcome};
pub use ring::{Ring, RingError};
pub use route::{WriteRoute, check_available, route_write};
pub use router::{
    AaeConfig, Bugs, Core, CoreConfig, Hint, HintMeta, HintsReport, MemberReport, Output, Report, ReqId, RpcId,
    StartError, Store,
};
