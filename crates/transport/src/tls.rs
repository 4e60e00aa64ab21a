//! rustls configurations for mutual TLS over QUIC: both sides present a certificate
//! signed by the cluster CA; TLS 1.3 only; ALPN `qkv/1`.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{TlsError, TlsFiles};

/// ALPN protocol id.
pub const ALPN: &[u8] = b"qkv/1";
/// Most concurrent request streams a peer may open on one connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// QUIC flow control: bytes a peer may send on one stream before the node reads them.
pub const STREAM_RECEIVE_WINDOW: u32 = 2 << 20;
/// ... and on one connection, all streams together.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;
/// A connection with no traffic for this long is closed (keep-alives prevent it while healthy).
pub const IDLE_TIMEOUT_MS: u32 = 10_000;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Loaded {
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let pem_err = |p: &std::path::Path, e: rustls_pki_types::pem::Error| TlsError::Pem(p.to_path_buf(), e.to_string());
    let mut roots = RootCertStore::empty();
    let cas: Vec<_> = CertificateDer::pem_file_iter(&files.ca)
        .map_err(|e| pem_err(&files.ca, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&files.ca, e))?;
    if cas.is_empty() {
        return Err(TlsError::Pem(files.ca.clone(), "no certificate in file".into()));
    }
    for ca in cas {
        roots.add(ca).map_err(|e| TlsError::Pem(files.ca.clone(), e.to_string()))?;
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| pem_err(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&files.cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(files.cert.clone(), "no certificate in file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_err(&files.key, e))?;
    Ok(Loaded { roots, chain, key })
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into());
    t.max_concurrent_uni_streams(0u32.into());
    // What QUIC buffers for data the node has not read yet: a stream waiting for its
    // receive budget (see `server::Budgets`) holds at most a stream window, and a
    // connection at most its window.
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS))));
    t.keep_alive_interval(Some(Duration::from_millis(u64::from(IDLE_TIMEOUT_MS) / 4)));
    Arc::new(t)
}

/// Server side: require a client certificate signed by the cluster CA.
pub fn server_config(files: &TlsFiles) -> Result<quinn::ServerConfig, TlsError> {
    let l = load(files)?;
    refuse_client_only(&files.cert, &l.chain[0])?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(l.roots), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(l.chain, l.key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(cfg).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport());
    Ok(server)
}

/// A node must serve with a certificate that allows server authentication: a client's
/// (say `QKV_TLS_CERT` left exported for an application) would start, and every peer
/// would then refuse it at each handshake.
fn refuse_client_only(path: &std::path::Path, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else { return Ok(()) };
    match parsed.extended_key_usage() {
        Ok(Some(eku)) if !eku.value.server_auth && !eku.value.any => Err(TlsError::Pem(
            path.to_path_buf(),
            "a client certificate (it does not allow server authentication): a node needs its own node \
             certificate (certs/node-<id>.pem; check tls.cert and QKV_TLS_CERT)"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Client side: verify the node's certificate against the cluster CA and present ours.
pub fn client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, TlsError> {
    let l = load(files)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(l.roots)
        .with_client_auth_cert(l.chain, l.key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(cfg).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport());
    Ok(client)
}
