//! The client's error type.

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cluster answered with an error: unavailable, timeout, too large, ...
    /// Match on the inner [`qkv_proto::Error`] for the numbers.
    #[error(transparent)]
    Cluster(#[from] qkv_proto::Error),
    /// No configured node could be reached.
    #[error("no node reachable: tried {tried}, last error: {last}")]
    NoNodeReachable {
        /// Nodes tried.
        tried: usize,
        /// The last connection error.
        last: String,
    },
    /// The request's deadline passed while failing over between nodes.
    #[error("deadline passed after trying {tried} nodes (last error: {last}); a write may still have landed")]
    Deadline {
        /// Nodes tried.
        tried: usize,
        /// The last error.
        last: String,
    },
    /// The client's configuration is unusable.
    #[error("config: {0}")]
    Config(String),
    /// A node answered with something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}
