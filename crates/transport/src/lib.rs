//! quorumkv's transport: QUIC (quinn) with mutual TLS (rustls), one framed
//! request per bidirectional stream. The only crate that opens sockets.
//!
//! # Layout
//! - [`certs`]: the cluster CA and node/client certificates (rcgen).
//! - [`tls`]: rustls + quinn configurations; ALPN `qkv/1`, TLS 1.3, client certificates required.
//! - [`role`]: node or client, from the peer's certificate.
//! - [`wire`]: reading and writing one frame on a stream ([`FrameError`]).
//! - [`pool`]: outgoing requests over pooled connections, redial with backoff
//!   ([`RequestError`]: unreachable, timed out, dropped, a protocol violation, not sendable).
//! - [`server`]: the accept loop and the [`server::Handler`] trait.

use std::net::SocketAddr;
use std::path::PathBuf;

pub mod certs;
pub mod pool;
pub mod role;
pub mod server;
pub mod tls;
pub mod wire;

pub use certs::TlsFiles;
pub use pool::{Pool, RequestError};
pub use role::PeerRole;
pub use server::{Handler, serve};
pub use wire::FrameError;

/// Errors setting up TLS or certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A PEM file is missing, unreadable or holds the wrong thing.
    #[error("{0}: {1}")]
    Pem(PathBuf, String),
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// A server endpoint on `addr` that also dials peers with the same identity.
pub fn node_endpoint(addr: SocketAddr, files: &TlsFiles) -> Result<quinn::Endpoint, TlsError> {
    let mut ep = quinn::Endpoint::server(tls::server_config(files)?, addr).map_err(|e| TlsError::Bind(addr, e))?;
    ep.set_default_client_config(tls::client_config(files)?);
    Ok(ep)
}

/// A client-only endpoint on an ephemeral port.
pub fn client_endpoint(files: &TlsFiles) -> Result<quinn::Endpoint, TlsError> {
    let any: SocketAddr = "0.0.0.0:0".parse().expect("valid address");
    let mut ep = quinn::Endpoint::client(any).map_err(|e| TlsError::Bind(any, e))?;
    ep.set_default_client_config(tls::client_config(files)?);
    Ok(ep)
}

#[cfg(test)]
mod tests;
