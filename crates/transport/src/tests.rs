//! Loopback tests of the transport: mutual TLS, roles, frame limits.

use std::sync::Arc;
use std::time::Duration;

use qkv_proto::{Error, Request, Response};

use super::*;

struct Echo;

impl Handler for Echo {
    async fn handle(&self, role: PeerRole, req: Request) -> Response {
        if !server::allowed(role, &req) {
            return Response::Error(Error::NotAuthorized(req.sender().refusal().into()));
        }
        match req {
            Request::Ping { from, .. } => Response::Pong { from, gossip: vec![], view: Default::default() },
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
    certs::generate(dir.path(), &[1, 2], &["client"], &["admin"]).unwrap();
    let other = tempfile::tempdir().unwrap();
    certs::generate(other.path(), &[1], &["client"], &["admin"]).unwrap();
    runtime().block_on(async {
        let (addr, _stop) = start(dir.path()).await;
        let t = Duration::from_secs(5);
        let ping = Request::Ping { from: 2, gossip: vec![], view: Default::default() };

        let node = Pool::new(client_endpoint(&TlsFiles::in_dir(dir.path(), "node-2")).unwrap(), FRAME_MAX);
        assert_eq!(
            node.request(addr, &ping, t).await.unwrap(),
            Response::Pong { from: 2, gossip: vec![], view: Default::default() }
        );

        let client = Pool::new(client_endpoint(&TlsFiles::in_dir(dir.path(), "client")).unwrap(), FRAME_MAX);
        assert!(matches!(client.request(addr, &ping, t).await, Ok(Response::Error(Error::NotAuthorized(_)))));
        assert_eq!(client.request(addr, &Request::Status, t).await.unwrap(), Response::ReplicaAck);

        // Membership: anyone may look, only operators (and nodes) may change it.
        use qkv_proto::msg::{ClusterAdmin, ClusterChange};
        let show = Request::Cluster(ClusterAdmin::Show);
        let changes = [
            Request::Cluster(ClusterAdmin::Stage(ClusterChange::Leave { id: 1 })),
            Request::Cluster(ClusterAdmin::Commit),
            Request::Cluster(ClusterAdmin::Abort),
        ];
        assert_eq!(client.request(addr, &show, t).await.unwrap(), Response::ReplicaAck);
        for change in &changes {
            match client.request(addr, change, t).await {
                Ok(Response::Error(Error::NotAuthorized(why))) => assert!(why.contains("admin certificate"), "{why}"),
                other => panic!("a client certificate changed membership: {other:?}"),
            }
        }
        let admin = Pool::new(client_endpoint(&TlsFiles::in_dir(dir.path(), "admin")).unwrap(), FRAME_MAX);
        assert!(matches!(admin.request(addr, &ping, t).await, Ok(Response::Error(Error::NotAuthorized(_)))));
        for req in changes.iter().chain([&show, &Request::Status]) {
            assert_eq!(admin.request(addr, req, t).await.unwrap(), Response::ReplicaAck, "{req:?}");
            assert_eq!(node.request(addr, req, t).await.unwrap(), Response::ReplicaAck, "{req:?}");
        }

        // Same names, different CA: the handshake fails.
        let mut stranger = TlsFiles::in_dir(other.path(), "client");
        stranger.ca = dir.path().join("ca.pem");
        let stranger = Pool::new(client_endpoint(&stranger).unwrap(), FRAME_MAX);
        // (TLS 1.3: the client may finish its side before the server refuses its certificate.)
        let refused = stranger.request(addr, &Request::Status, t).await;
        assert!(
            matches!(refused, Err(crate::RequestError::Unreachable { .. } | crate::RequestError::Dropped { .. })),
            "{refused:?}"
        );
    });
}

#[test]
fn oversized_and_garbage_frames_get_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1], &["client"], &["admin"]).unwrap();
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
fn a_peer_restarted_on_its_port_is_reached_by_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1], &["client"], &["admin"]).unwrap();
    // The first server runs on a runtime of its own, so that it can die as a killed
    // process does: without closing its connections.
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let (started, addr) = std::sync::mpsc::channel();
    let certs = dir.path().to_owned();
    let first = std::thread::spawn(move || {
        let rt = runtime();
        rt.block_on(async {
            let (addr, _stop) = start(&certs).await;
            started.send(addr).unwrap();
            let _ = killed.await;
        });
        rt.shutdown_background();
    });
    let addr = addr.recv().unwrap();
    let t = Duration::from_secs(5);
    runtime().block_on(async {
        let pool = Pool::new(client_endpoint(&TlsFiles::in_dir(dir.path(), "client")).unwrap(), FRAME_MAX);
        assert_eq!(pool.request(addr, &Request::Status, t).await.unwrap(), Response::ReplicaAck);
        kill.send(()).unwrap();
        first.join().unwrap();
        let ep = node_endpoint(addr, &TlsFiles::in_dir(dir.path(), "node-1")).unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(ep, Arc::new(Echo), FRAME_MAX, rx));
        // The pooled connection is to the dead process; the new one answers it with a
        // stateless reset, and the request goes once more over a fresh connection.
        assert_eq!(pool.request(addr, &Request::Status, t).await.unwrap(), Response::ReplicaAck);
    });
}

#[test]
fn a_dead_peer_fails_fast_while_backing_off() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1], &["client"], &["admin"]).unwrap();
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
    let first = certs::generate(dir.path(), &[1], &["client"], &["admin"]).unwrap();
    assert_eq!(first.written.len(), 9, "CA, cluster secret, node-1, client and admin: {:?}", first.written);
    let secret = certs::load_secret(&dir.path().join(certs::SECRET_FILE)).unwrap();
    let again = certs::generate(dir.path(), &[1, 2], &["client"], &["admin"]).unwrap();
    assert_eq!(again.written.len(), 2, "only node-2 is new");
    assert_eq!(certs::load_secret(&dir.path().join(certs::SECRET_FILE)).unwrap(), secret, "the secret is kept");
    tls::server_config(&TlsFiles::in_dir(dir.path(), "node-2")).unwrap();
    // A node given a client's certificate refuses to start, saying why.
    let client = TlsFiles::in_dir(dir.path(), "client");
    let e = match tls::server_config(&client) {
        Ok(_) => panic!("a client certificate cannot serve"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("does not allow server authentication"), "{e}");
    let missing = TlsFiles::in_dir(dir.path(), "node-9");
    assert!(tls::client_config(&missing).is_err());
}

/// Open a stream on `conn` and send a frame's length and half its body, then hold it.
async fn half_sent(conn: &quinn::Connection, len: u32) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&len.to_be_bytes()).await.unwrap();
    send.write_all(&vec![0u8; len as usize / 2]).await.unwrap();
    (send, recv)
}

#[test]
fn past_a_receive_budget_a_request_is_refused_at_once_and_peers_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1, 2], &["client"], &["admin"]).unwrap();
    runtime().block_on(async {
        let ep = node_endpoint("127.0.0.1:0".parse().unwrap(), &TlsFiles::in_dir(dir.path(), "node-1")).unwrap();
        let addr = ep.local_addr().unwrap();
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let budgets = server::Budgets { connection_bytes: 100 << 10, node_bytes: 120 << 10 };
        tokio::spawn(server::serve_with(ep, Arc::new(Echo), FRAME_MAX, budgets, rx));
        let clients = client_endpoint(&TlsFiles::in_dir(dir.path(), "client")).unwrap();
        let len = 60 << 10;

        // One connection: a second half-sent 60 KiB request passes its 100 KiB budget.
        let conn = clients.connect(addr, certs::SERVER_NAME).unwrap().await.unwrap();
        let _first = half_sent(&conn, len).await;
        let started = std::time::Instant::now();
        let (_send, mut recv) = half_sent(&conn, len).await;
        let resp: Response = wire::read_frame(&mut recv, FRAME_MAX).await.unwrap();
        assert!(matches!(&resp, Response::Error(Error::Overloaded(m)) if m.contains("connection")), "{resp:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "refused after {:?}, not at once", started.elapsed());

        // Clients together: a second connection's 60 KiB fills the clients' 120 KiB; a third passes it.
        let other = clients.connect(addr, certs::SERVER_NAME).unwrap().await.unwrap();
        let _second = half_sent(&other, len).await;
        let third = clients.connect(addr, certs::SERVER_NAME).unwrap().await.unwrap();
        let (_send, mut recv) = half_sent(&third, len).await;
        let resp: Response = wire::read_frame(&mut recv, FRAME_MAX).await.unwrap();
        assert!(matches!(&resp, Response::Error(Error::Overloaded(m)) if m.contains("node")), "{resp:?}");

        // Small frames take no budget: a client's small request is still served.
        let t = Duration::from_secs(5);
        let small = Pool::new(clients.clone(), FRAME_MAX);
        assert_eq!(small.request(addr, &Request::Status, t).await.unwrap(), Response::ReplicaAck);
        // A peer draws on its own budget: replication goes on, and pings.
        let node = Pool::new(client_endpoint(&TlsFiles::in_dir(dir.path(), "node-2")).unwrap(), FRAME_MAX);
        let big = Request::ReplicaPut { key: vec![7; 20 << 10], set: qkv_proto::DvvSet::new() };
        assert_eq!(node.request(addr, &big, t).await.unwrap(), Response::ReplicaAck);
        let ping = Request::Ping { from: 2, gossip: vec![], view: Default::default() };
        assert_eq!(
            node.request(addr, &ping, t).await.unwrap(),
            Response::Pong { from: 2, gossip: vec![], view: Default::default() }
        );
    });
}

/// Answers `Ring { key }` with the key, after a delay that depends on it, so answers
/// complete out of order.
struct Slow;

impl Handler for Slow {
    async fn handle(&self, _role: PeerRole, req: Request) -> Response {
        match req {
            Request::Ring { key } => {
                tokio::time::sleep(Duration::from_millis(u64::from(key[0] % 7))).await;
                Response::Ring(qkv_proto::RingReply { replicas: vec![(1, String::from_utf8(key).unwrap())] })
            }
            _ => Response::ReplicaAck,
        }
    }
}

#[test]
fn concurrent_requests_share_a_multiplexed_stream_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1], &["client"], &["admin"]).unwrap();
    runtime().block_on(async {
        let ep = node_endpoint("127.0.0.1:0".parse().unwrap(), &TlsFiles::in_dir(dir.path(), "node-1")).unwrap();
        let addr = ep.local_addr().unwrap();
        let (_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(ep, Arc::new(Slow), 1 << 20, rx));
        let client = client_endpoint(&TlsFiles::in_dir(dir.path(), "client")).unwrap();
        let pool = Arc::new(Pool::new(client, 1 << 20));
        let mut tasks = vec![];
        for i in 0..300u32 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("{}-key-{i}", (i * 7919) % 251).into_bytes();
                let got = pool.request(addr, &Request::Ring { key: key.clone() }, Duration::from_secs(5)).await;
                (key, got)
            }));
        }
        let mut conns = std::collections::BTreeSet::new();
        for t in tasks {
            let (key, got) = t.await.unwrap();
            match got.unwrap() {
                Response::Ring(r) => assert_eq!(r.replicas[0].1.as_bytes(), key.as_slice()),
                other => panic!("{other:?}"),
            }
            conns.insert(pool.channels.lock().unwrap().get(&addr).map(|c| c.conn.stable_id()));
        }
        assert_eq!(conns.len(), 1, "one connection, one multiplexed stream: {conns:?}");
        // A large request takes a stream of its own and is served all the same.
        let big = Request::Ring { key: vec![b'x'; crate::mux::FRAME_BYTES_MAX + 1] };
        let t = Duration::from_secs(5);
        assert!(matches!(pool.request(addr, &big, t).await.unwrap(), Response::Ring(_)));
    });
}

#[test]
fn a_garbled_request_on_a_multiplexed_stream_is_answered_by_its_id_and_the_stream_goes_on() {
    use qkv_proto::frame;
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1], &["client"], &["admin"]).unwrap();
    runtime().block_on(async {
        let (addr, _stop) = start(dir.path()).await;
        let ep = client_endpoint(&TlsFiles::in_dir(dir.path(), "client")).unwrap();
        let conn = ep.connect(addr, certs::SERVER_NAME).unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut garbled = frame::encode_mux(6, &Request::Status, FRAME_MAX).unwrap();
        let n = garbled.len();
        garbled[n - 1] = 0xc1; // never valid msgpack
        for f in [frame::encode_mux(5, &Request::Status, FRAME_MAX).unwrap(), garbled] {
            send.write_all(&f).await.unwrap();
        }
        send.write_all(&frame::encode_mux(7, &Request::Status, FRAME_MAX).unwrap()).await.unwrap();
        let mut answers = std::collections::BTreeMap::new();
        for _ in 0..3 {
            let len = wire::read_len(&mut recv, FRAME_MAX).await.unwrap();
            let body = wire::read_bytes(&mut recv, len).await.unwrap();
            let (id, resp) = frame::decode_mux_body::<Response>(&body).unwrap();
            answers.insert(id, resp.unwrap());
        }
        assert_eq!(answers[&5], Response::ReplicaAck);
        assert!(matches!(&answers[&6], Response::Error(Error::BadRequest(_))), "{:?}", answers[&6]);
        assert_eq!(answers[&7], Response::ReplicaAck);
        // A frame over the limit is read and dropped, and answered by its id.
        let mut big = frame::encode_mux(8, &Request::Ring { key: vec![1; FRAME_MAX] }, 4 * FRAME_MAX).unwrap();
        big.extend(frame::encode_mux(9, &Request::Status, FRAME_MAX).unwrap());
        send.write_all(&big).await.unwrap();
        for id in [8, 9] {
            let len = wire::read_len(&mut recv, FRAME_MAX).await.unwrap();
            let (got, resp) =
                frame::decode_mux_body::<Response>(&wire::read_bytes(&mut recv, len).await.unwrap()).unwrap();
            assert_eq!(got, id);
            match (id, resp.unwrap()) {
                (8, Response::Error(Error::TooLarge { .. })) | (9, Response::ReplicaAck) => {}
                other => panic!("{other:?}"),
            }
        }
        // A frame with no readable id ends the stream; the connection serves on.
        send.write_all(&[0, 0, 0, 2, frame::MUX_VERSION, 0xc1]).await.unwrap();
        let end = wire::read_len(&mut recv, FRAME_MAX).await;
        assert!(end.is_err(), "{end:?}");
        let pool = Pool::new(ep, FRAME_MAX);
        assert_eq!(pool.request(addr, &Request::Status, Duration::from_secs(5)).await.unwrap(), Response::ReplicaAck);
    });
}

#[test]
fn a_peer_of_an_earlier_release_gets_a_stream_per_request() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &[1], &["client"], &["admin"]).unwrap();
    runtime().block_on(async {
        // What a node of the release before multiplexed streams does: one version 1
        // frame per stream, and an error for any other version.
        let ep = node_endpoint("127.0.0.1:0".parse().unwrap(), &TlsFiles::in_dir(dir.path(), "node-1")).unwrap();
        let addr = ep.local_addr().unwrap();
        let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = streams.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let conn = incoming.await.unwrap();
                let counted = counted.clone();
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let resp = match wire::read_frame::<Request>(&mut recv, FRAME_MAX).await {
                            Ok(_) => Response::ReplicaAck,
                            Err(e) => Response::Error(e.into()),
                        };
                        let _ = wire::write_frame(&mut send, &resp, FRAME_MAX).await;
                    }
                });
            }
        });
        let pool = Pool::new(client_endpoint(&TlsFiles::in_dir(dir.path(), "client")).unwrap(), FRAME_MAX);
        let t = Duration::from_secs(5);
        for _ in 0..3 {
            assert_eq!(pool.request(addr, &Request::Status, t).await.unwrap(), Response::ReplicaAck);
        }
        // The refused multiplexed stream, then one stream per request.
        assert_eq!(streams.load(std::sync::atomic::Ordering::Relaxed), 4);
    });
}
