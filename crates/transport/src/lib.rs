//! quorumkv's transport: QUIC (quinn) with mutual TLS (rustls), one framed
//! request per bidirectional stream. The only crate that opens sockets.
//!
//! # Layout
//! - [`certs`]: the cluster CA and node/client certificates (rcgen).
//! - [`tls`]: rustls + quinn configurations; ALPN `qkv/1`, TLS 1.3, client certificates required.
//! - [`role`]: node or client, from the peer's certificate.
//! - [`wire`]: reading and writing one frame on a stream ([`FrameError`]).
//! - [`mux`]: the sending side of a multiplexed stream (many requests, answers by id).
//! - [`pool`]: outgoing requests over pooled connections, redial with backoff
//!   ([`RequestError`]: unreachable, timed out, dropped, a protocol violation, not sendable).
//! - [`server`]: the accept loop and the [`server::Handler`] trait.

use std::net::SocketAddr;
use std::path::PathBuf;

pub mod certs;
pub mod mux;
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
///
/// Its stateless-reset key is derived from the node's private key, so it is the same
/// across restarts: when a killed node comes back on its address, a packet a peer
/// sends on a connection to its former process is answered with a reset the peer
/// accepts (at most one every 20 ms, quinn's bound), and the peer redials instead of
/// waiting out a timeout. A node whose key file is replaced gets new keys.
pub fn node_endpoint(addr: SocketAddr, files: &TlsFiles) -> Result<quinn::Endpoint, TlsError> {
    let server = tls::server_config(files)?;
    let key = std::fs::read(&files.key).map_err(|e| TlsError::Io(files.key.clone(), e))?;
    let derive = |purpose: &[u8]| {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(b"quorumkv ");
        digest.update(purpose);
        digest.update(&key);
        digest.finish()
    };
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derive(b"stateless reset key\0").as_ref());
    let mut config = quinn::EndpointConfig::new(std::sync::Arc::new(reset_key));
    // Connection IDs carry a keyed hash the endpoint checks before it answers a packet
    // for a connection it does not know; the same key lets it answer its former self's.
    let cid_key = derive(b"connection id key\0");
    let cid_key = u64::from_le_bytes(cid_key.as_ref()[..8].try_into().expect("a SHA-256 digest has 32 bytes"));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    let socket = std::net::UdpSocket::bind(addr).map_err(|e| TlsError::Bind(addr, e))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TlsError::Bind(addr, std::io::Error::other("no async runtime found")))?;
    let mut ep = quinn::Endpoint::new(config, Some(server), socket, runtime).map_err(|e| TlsError::Bind(addr, e))?;
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
