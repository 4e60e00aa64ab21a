//! quorumkv's wire protocol and data model. Pure: no I/O, no clock, no threads.
//!
//! # Layout
//! - [`dvv`]: dotted version vector sets, the per-key state and its merge laws.
//! - [`context`]: the opaque causal context token clients pass back.
//! - [`level`]: consistency levels (R and W).
//! - [`msg`]: requests and responses.
//! - [`frame`]: length-prefixed, versioned msgpack frames with a size limit.
//! - [`wire_error`]: errors that cross the wire.

pub mod context;
pub mod dvv;
pub mod frame;
pub mod level;
pub mod msg;
pub mod wire_error;

pub use context::{Context, Secret};
pub use dvv::{Actor, Dot, DvvSet, NodeId, Seen, Sibling, VersionVector, actor, actor_epoch, actor_name, actor_node};
pub use level::Level;
pub use msg::*;
pub use wire_error::Error;

/// Default largest value, in bytes.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Default largest key, in bytes.
pub const KEY_BYTES_MAX_DEFAULT: usize = 64 * 1024;
