//! Certificates for a cluster, made with rcgen: one CA, a certificate per node, client certificates.
//!
//! Node certificates carry the organisational unit [`NODE_OU`] and the common name
//! `node-<id>`; client certificates carry [`CLIENT_OU`], operator certificates also the
//! organisation [`ADMIN_ORG`].
//! All are signed by the cluster CA and all may send client requests; only node
//! certificates may send replica traffic, only node and operator certificates may change
//! membership, and only node certificates carry the server name [`SERVER_NAME`] that
//! clients and nodes verify.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::TlsError;

/// Organisational unit of node certificates.
pub const NODE_OU: &str = "qkv-node";
/// Organisational unit of client certificates.
pub const CLIENT_OU: &str = "qkv-client";
/// Organisation of operator certificates: client requests and membership changes. An
/// operator certificate is a client certificate ([`CLIENT_OU`]) of this organisation, so
/// nodes of releases before the role still take it as a client's (a rolling upgrade).
pub const ADMIN_ORG: &str = "quorumkv operators";
/// The DNS name every node certificate carries and every peer verifies.
pub const SERVER_NAME: &str = "qkv-node";

/// File paths of one identity: CA certificate, own certificate, own key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This identity's certificate (PEM).
    pub cert: PathBuf,
    /// This identity's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The conventional files in `dir` for `name` (`node-1`, `client`): `ca.pem`, `NAME.pem`, `NAME.key`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsFiles { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
    }
}

/// The cluster secret's file name, beside the CA.
pub const SECRET_FILE: &str = "cluster.secret";

/// Read a cluster secret file.
pub fn load_secret(path: &Path) -> Result<qkv_proto::Secret, TlsError> {
    let text = fs::read_to_string(path).map_err(|e| TlsError::Io(path.to_path_buf(), e))?;
    qkv_proto::Secret::parse(&text).map_err(|e| TlsError::Pem(path.to_path_buf(), e))
}

/// What [`generate`] wrote.
#[derive(Debug, Default)]
pub struct Generated {
    /// Files created.
    pub written: Vec<PathBuf>,
    /// Files that existed and were kept.
    pub kept: Vec<PathBuf>,
}

fn write_new(path: &Path, contents: &str, out: &mut Generated, private: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    // Keys and the cluster secret are private from the moment they exist.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = private;
    let mut f = opts.open(path).map_err(|e| TlsError::Io(path.to_path_buf(), e))?;
    f.write_all(contents.as_bytes()).map_err(|e| TlsError::Io(path.to_path_buf(), e))?;
    out.written.push(path.to_path_buf());
    Ok(())
}

fn leaf_params(cn: &str, ou: &str, node: bool) -> Result<CertificateParams, TlsError> {
    let names = if node { vec![SERVER_NAME.to_string(), "localhost".to_string()] } else { vec![] };
    let mut p = CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    if node {
        p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("valid ip")));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    } else {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::OrganizationName, "quorumkv");
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// Create, in `dir`, whatever is missing of: the CA (`ca.pem`, `ca.key`), the cluster secret
/// (`cluster.secret`, which every node needs and no client may see), `node-<id>.pem/.key`
/// for each id in `nodes`, `<client>.pem/.key` for each name in `clients`, and
/// `<admin>.pem/.key` for each name in `admins` (operators: they may also change membership).
/// Existing files are kept, so the command can be re-run to add nodes to a cluster.
pub fn generate(dir: &Path, nodes: &[u32], clients: &[&str], admins: &[&str]) -> Result<Generated, TlsError> {
    fs::create_dir_all(dir).map_err(|e| TlsError::Io(dir.to_path_buf(), e))?;
    let mut out = Generated::default();
    let (ca_pem, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let issuer = if ca_pem.exists() && ca_key_path.exists() {
        let key_pem = fs::read_to_string(&ca_key_path).map_err(|e| TlsError::Io(ca_key_path.clone(), e))?;
        let cert_pem = fs::read_to_string(&ca_pem).map_err(|e| TlsError::Io(ca_pem.clone(), e))?;
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Generate(format!("{}: {e}", ca_key_path.display())))?;
        out.kept.extend([ca_pem.clone(), ca_key_path.clone()]);
        Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| TlsError::Generate(format!("{}: {e}", ca_pem.display())))?
    } else {
        let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Generate(e.to_string()))?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "quorumkv cluster CA");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = p.self_signed(&key).map_err(|e| TlsError::Generate(e.to_string()))?;
        write_new(&ca_pem, &cert.pem(), &mut out, false)?;
        write_new(&ca_key_path, &key.serialize_pem(), &mut out, true)?;
        Issuer::new(p, key)
    };
    // The cluster secret that authenticates causal contexts (see `qkv_proto::context`).
    let secret = dir.join(SECRET_FILE);
    if secret.exists() {
        out.kept.push(secret);
    } else {
        let mut bytes = [0u8; qkv_proto::context::SECRET_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| TlsError::Generate("no randomness for the cluster secret".into()))?;
        write_new(&secret, &format!("{}\n", qkv_proto::Secret(bytes).to_hex()), &mut out, true)?;
    }
    let mut leaves: Vec<(String, CertificateParams)> = vec![];
    for id in nodes {
        let name = format!("node-{id}");
        leaves.push((name.clone(), leaf_params(&name, NODE_OU, true)?));
    }
    for c in clients {
        leaves.push((c.to_string(), leaf_params(c, CLIENT_OU, false)?));
    }
    for a in admins {
        let mut p = leaf_params(a, CLIENT_OU, false)?;
        p.distinguished_name.push(DnType::OrganizationName, ADMIN_ORG);
        leaves.push((a.to_string(), p));
    }
    for (name, params) in leaves {
        let files = TlsFiles::in_dir(dir, &name);
        if files.cert.exists() && files.key.exists() {
            out.kept.extend([files.cert, files.key]);
            continue;
        }
        let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
        let cert = params.signed_by(&key, &issuer).map_err(|e| TlsError::Generate(e.to_string()))?;
        write_new(&files.cert, &cert.pem(), &mut out, false)?;
        write_new(&files.key, &key.serialize_pem(), &mut out, true)?;
    }
    Ok(out)
}
