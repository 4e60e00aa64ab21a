//! Loopback tests of the transport: mutual TLS, roles, frame limits.

use std::sync::Arc;
use std::time::Duration;

use qkv_proto::{Error, Request, Response};

use super::*;

struct Echo;

impl Handler for Echo {
    async fn handle(&self, role: PeerRole, req: Request) -> Response {
        if !server::allowed(role, &req) {
            return Response::Error(Error::NotAuthorized("replica traffic needs a node certificate".into()));
        }
        match req {
            Request::Ping { from, .. } => Response::Pong { from, gossip: vec![] },
            _ => Response::ReplicaAck,
        }
    }
}

const FRAME_MAX: usize = 64 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn start(dir: &std::path::Path) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let ep = node_endpoint("127.0.0.1:0".parse().unwrap(), &TlsFiles::in_dir(dir, "node-1")).unwrap();
    let addr = ep.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(ep, Arc::new(Echo), FRAME_MAX, rx));
    (addr, tx)
}

#[test]
fn roles_are_enforced_and_strangers_refused() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1, 2], &["client"]).unwrap();
    let other = tempfile::tempdir().unwrap();
    certs::generate(other.path(), &[1], &["client"]).unwrap();
    runtime().block_on(async {
        let (addr, _stop) = start(dir.path()).await;
        let t = Duration::from_secs(5);
        let ping = Request::Ping { from: 2, gossip: vec![] };

        let node = Pool::new(client_endpoint(&TlsFiles::in_dir(dir.path(), "node-2")).unwrap(), FRAME_MAX);
        assert_eq!(node.request(addr, &ping, t).await.unwrap(), Response::Pong { from: 2, gossip: vec![] });

        let client = Pool::new(client_endpoint(&TlsFiles::in_dir(dir.path(), "client")).unwrap(), FRAME_MAX);
        assert!(matches!(client.request(addr, &ping, t).await, Ok(Response::Error(Error::NotAuthorized(_)))));
        assert_eq!(client.request(addr, &Request::Status, t).await.unwrap(), Response::ReplicaAck);

        // Same names, different CA: the handshake fails.
        let mut stranger = TlsFiles::in_dir(other.path(), "client");
        stranger.ca = dir.path().join("ca.pem");
        let stranger = Pool::new(client_endpoint(&stranger).unwrap(), FRAME_MAX);
        assert!(matches!(stranger.request(addr, &Request::Status, t).await, Err(Error::Unreachable(_))));
    });
}

#[test]
fn oversized_and_garbage_frames_get_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1], &["client"]).unwrap();
    runtime().block_on(async {
        let (addr, _stop) = start(dir.path()).await;
        let ep = client_endpoint(&TlsFiles::in_dir(dir.path(), "client")).unwrap();
        let conn = ep.connect(addr, certs::SERVER_NAME).unwrap().await.unwrap();

        for bad in [((FRAME_MAX as u32) + 1).to_be_bytes().to_vec(), vec![0, 0, 0, 3, 1, 0xc1, 0xc1]] {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&bad).await.unwrap();
            let _ = send.finish();
            let resp: Response = wire::read_frame(&mut recv, FRAME_MAX).await.unwrap();
            assert!(matches!(resp, Response::Error(Error::TooLarge { .. } | Error::BadRequest(_))), "{resp:?}");
        }
        let pool = Pool::new(ep, FRAME_MAX);
        let status = pool.request(addr, &Request::Status, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, Response::ReplicaAck);
    });
}

#[test]
fn a_dead_peer_fails_fast_while_backing_off() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1], &["client"]).unwrap();
    runtime().block_on(async {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = sock.local_addr().unwrap();
        drop(sock);
        let pool = Pool::new(client_endpoint(&TlsFiles::in_dir(dir.path(), "client")).unwrap(), FRAME_MAX);
        let first = pool.request(dead, &Request::Status, Duration::from_millis(300)).await;
        assert!(first.is_err());
    });
}

#[test]
fn certs_are_kept_when_regenerating() {
    let dir = tempfile::tempdir().unwrap();
    let first = certs::generate(dir.path(), &[1], &["client"]).unwrap();
    assert_eq!(first.written.len(), 7, "CA, cluster secret, node-1 and client: {:?}", first.written);
    let secret = certs::load_secret(&dir.path().join(certs::SECRET_FILE)).unwrap();
    let again = certs::generate(dir.path(), &[1, 2], &["client"]).unwrap();
    assert_eq!(again.written.len(), 2, "only node-2 is new");
    assert_eq!(certs::load_secret(&dir.path().join(certs::SECRET_FILE)).unwrap(), secret, "the secret is kept");
    tls::server_config(&TlsFiles::in_dir(dir.path(), "node-2")).unwrap();
    let missing = TlsFiles::in_dir(dir.path(), "node-9");
    assert!(tls::client_config(&missing).is_err());
}
