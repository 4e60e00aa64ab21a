//! Who is on the other end of a connection, from its (already CA-verified) certificate.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::certs::{ADMIN_ORG, CLIENT_OU, NODE_OU};

/// The role a peer's certificate grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// A cluster node (its id from the common name `node-<id>`, 0 if absent): may send replica traffic.
    Node(u32),
    /// A client: may send client requests only.
    Client,
    /// An operator: client requests and membership changes.
    Admin,
}

/// The role of a connection's peer; `None` when the certificate names no known role.
pub fn peer_role(conn: &quinn::Connection) -> Option<PeerRole> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let (_, cert) = X509Certificate::from_der(certs.first()?.as_ref()).ok()?;
    let id = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok()?.strip_prefix("node-")?.parse::<u32>().ok())
        .next()
        .unwrap_or(0);
    let mut role = None;
    for ou in cert.subject().iter_organizational_unit() {
        match ou.as_str().ok()? {
            NODE_OU => role = Some(PeerRole::Node(id)),
            CLIENT_OU if role.is_none() => role = Some(PeerRole::Client),
            _ => {}
        }
    }
    let operator = cert.subject().iter_organization().any(|o| o.as_str() == Ok(ADMIN_ORG));
    if role == Some(PeerRole::Client) && operator { Some(PeerRole::Admin) } else { role }
}
