//! quorumkv's sans-IO core: placement, quorum decisions, the get and put state
//! machines, the replica's merge rules and peer liveness.
//!
//! Nothing here opens a socket, reads a clock, spawns a thread or draws a random
//! number: time comes in as `now_ms` arguments and effects go out as return
//! values. `qkv-node` drives this code with tokio, quinn and fjall; the
//! simulator drives the same code from a seed.
//!
//! # Layout
//! - [`ring`]: consistent hashing with vnodes; preference lists; ownership.
//! - [`quorum`]: the pure "won / lost / pending" decision.
//! - [`route`]: who coordinates a write; the up-front availability check.
//! - [`put`]: the write state machine.
//! - [`get`]: the read state machine, with the read-repair plan.
//! - [`replica`]: the two ways a key's state changes, and input limits.
//! - [`liveness`]: peer up/down from pings.
//! - [`node_core`]: a whole node's logic as one state machine over a [`Store`].

pub mod get;
pub mod liveness;
pub mod node_core;
pub mod put;
pub mod quorum;
pub mod replica;
pub mod ring;
pub mod route;

pub use get::{GetAction, GetAnswer, GetOp};
pub use liveness::Liveness;
pub use node_core::{Core, CoreConfig, Output, ReqId, RpcId, Store};
pub use put::{PutOp, PutOutcome};
pub use ring::{Ring, RingError};
pub use route::{WriteRoute, check_available, route_write};
