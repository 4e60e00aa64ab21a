//! The counter lease, on one node driven by hand: no dot of this node's actor is
//! minted twice or above the durable lease, whatever a peer, a context or the disk
//! names, and no write waits for a lease forever.

use qkv_core::mem::MemStore;
use qkv_core::replica::Limits;
use qkv_core::{AaeConfig, Core, CoreConfig, Output};
use qkv_proto::{Context, Dot, DvvSet, Error, Level, PutRequest, Request, Response, Seen, VersionVector};

type Mem = MemStore;

const SECRET: qkv_proto::Secret = qkv_proto::Secret([3; qkv_proto::context::SECRET_BYTES]);

fn config() -> CoreConfig {
    CoreConfig {
        me: 1,
        incarnation: 1,
        hints: Default::default(),
        layout: qkv_core::layout::Layout::legacy(&[(1, "node1".into())], 16, 1).unwrap(),
        limits: Limits::default(),
        request_timeout_ms: 1000,
        ping_interval_ms: 100,
        down_after_ms: 300,
        epoch: 1,
        aae: AaeConfig { interval_ms: 200, tombstone_grace_ms: 1000, ..AaeConfig::default() },
        secret: SECRET,
        transfer_bytes_per_s: qkv_core::router::TRANSFER_BYTES_PER_S_DEFAULT,
        bugs: Default::default(),
    }
}

fn me() -> qkv_proto::Actor {
    qkv_proto::actor(1, config().epoch)
}

/// One node, N = 1.
fn lone_core(store: Mem) -> Core<Mem> {
    Core::new(config(), store, 0, 1_000_000).unwrap()
}

/// Carry out a core's outputs until it goes quiet: flushes end as `flush` says.
fn settle(core: &mut Core<Mem>, mut flush: impl FnMut(bool) -> Result<(), Error>) -> Vec<Response> {
    let mut replies = vec![];
    for _ in 0..100 {
        let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
        if outputs.is_empty() {
            return replies;
        }
        for o in outputs {
            match o {
                Output::Flush { token, sync } => core.handle_flushed(0, token, flush(sync)),
                Output::Reply { resp, .. } => replies.push(resp),
                Output::Send { .. } => panic!("a lone node sends nothing"),
            }
        }
    }
    panic!("the core never went quiet");
}

fn put(key: &str, value: &str, context: Context) -> Request {
    Request::Put(PutRequest {
        key: key.into(),
        value: Some(value.into()),
        context,
        w: Level::One,
        strict: false,
        timeout_ms: None,
        forwarded: false,
        write_id: None,
        session: None,
    })
}

/// Write `key` and return the counter of this node's actor it minted.
fn write(core: &mut Core<Mem>, req: u64, key: &str) -> u64 {
    core.handle_request(0, req, put(key, "v", Context::empty()));
    let replies = settle(core, |_| Ok(()));
    assert!(matches!(replies[..], [Response::Put(_)]), "{replies:?}");
    core.store().value(key.as_bytes()).unwrap().max_counter(me())
}

/// A state another actor wrote after seeing dot `counter` of this node's actor
/// alone: that dot sits in the state's cloud, not its clock.
fn clouded(counter: u64, value: Option<&[u8]>) -> DvvSet {
    let mut set = DvvSet::new();
    let seen = Seen { vv: VersionVector::new(), dots: vec![Dot { actor: me(), counter }] };
    set.apply(&seen, value.map(<[u8]>::to_vec), Dot { actor: qkv_proto::actor(2, 2), counter: 1 }, None);
    assert!(set.is_valid());
    set
}

fn replica_put(core: &mut Core<Mem>, req: u64, key: &str, set: DvvSet) -> Vec<Response> {
    core.handle_request(0, req, Request::ReplicaPut { key: key.into(), set });
    settle(core, |_| Ok(()))
}

/// A stored dot of this node's actor above its lease (a disk gone back to an older
/// copy of some records): the node never mints that counter again.
#[test]
fn a_stored_dot_above_the_lease_is_never_minted_again() {
    let mut store = Mem::default();
    let mut set = DvvSet::new();
    for _ in 0..5 {
        let seen = set.clock().clone();
        set.update(&seen, Some(b"old".to_vec()), me());
    }
    qkv_core::Store::put(&mut store, b"k", &set).unwrap();
    let mut core = lone_core(store);
    let minted = write(&mut core, 1, "other");
    assert!(minted > 5, "minted counter {minted}, which the disk already holds for another value");
}

/// The same for a dot the disk holds only in a state's cloud.
#[test]
fn a_stored_cloud_dot_above_the_lease_is_never_minted_again() {
    let mut store = Mem::default();
    qkv_core::Store::put(&mut store, b"k", &clouded(50_000, Some(b"x"))).unwrap();
    let mut core = lone_core(store);
    assert!(write(&mut core, 1, "other") > 50_000);
    assert!(write(&mut core, 2, "k") > 50_000);
}

/// A peer's state naming a dot of this node's actor above the lease, in its cloud:
/// the node neither aborts (minting above its durable lease) nor mints it again; it
/// waits for a lease above it.
#[test]
fn a_merged_cloud_dot_above_the_lease_raises_the_counter() {
    let mut core = lone_core(Mem::default());
    write(&mut core, 1, "a");
    let r = replica_put(&mut core, 2, "k", clouded(20_000, Some(b"x")));
    assert!(matches!(r[..], [Response::ReplicaAck]), "{r:?}");
    assert!(write(&mut core, 3, "k") > 20_000, "the key that holds it");
    assert!(write(&mut core, 4, "b") > 20_000, "any other key");
}

/// A peer's tombstone-only state (nothing to store here) still names dots this node
/// must not mint again.
#[test]
fn a_merged_state_with_nothing_to_store_still_raises_the_counter() {
    let mut core = lone_core(Mem::default());
    write(&mut core, 1, "a");
    let r = replica_put(&mut core, 2, "gone", clouded(30_000, None).without(|_| true));
    assert!(matches!(r[..], [Response::ReplicaAck]), "{r:?}");
    assert!(core.store().value(b"gone").is_none(), "nothing stored");
    assert!(write(&mut core, 3, "b") > 30_000);
}

/// A state or context naming a counter of this node's actor far above any it minted
/// is corrupt or forged: refused with a clear error, and the node goes on writing
/// (it would otherwise raise its lease to `u64::MAX` and never mint a dot again).
#[test]
fn an_implausible_counter_of_this_actor_is_refused_and_changes_nothing() {
    let mut core = lone_core(Mem::default());
    let before = write(&mut core, 1, "a");
    for (req, c) in [(2, u64::MAX), (3, 1 << 50)] {
        let r = replica_put(&mut core, req, "k", clouded(c, Some(b"x")));
        assert!(matches!(&r[..], [Response::Error(Error::Protocol(m))] if m.contains("far above")), "{r:?}");
    }
    assert!(core.store().value(b"k").is_none());
    let ctx = Context::issue(
        &SECRET,
        b"a",
        Seen { vv: VersionVector::new(), dots: vec![Dot { actor: me(), counter: u64::MAX }] },
    );
    core.handle_request(0, 4, put("a", "w", ctx));
    let r = settle(&mut core, |_| Ok(()));
    assert!(matches!(&r[..], [Response::Error(Error::BadRequest(m))] if m.contains("far above")), "{r:?}");
    let after = write(&mut core, 5, "b");
    assert!(after > before && after < before + 100, "writes go on from {before}: {after}");
}

/// A data dir holding such a counter does not start (with a message that says so),
/// rather than start and never write.
#[test]
fn a_data_dir_naming_an_implausible_counter_of_this_actor_is_refused_at_start() {
    let mut store = Mem::default();
    qkv_core::Store::put(&mut store, b"k", &clouded(1 << 50, Some(b"x"))).unwrap();
    let e = Core::new(config(), store, 0, 1_000_000).err().expect("refused").to_string();
    assert!(e.contains("damaged"), "{e}");
    let store = Mem { counter_lease: u64::MAX, ..Mem::default() };
    let e = Core::new(config(), store, 0, 1_000_000).err().expect("refused").to_string();
    assert!(e.contains("damaged"), "{e}");
}

/// A counter lease whose sync fails is renewed by the next write, not waited for
/// forever.
#[test]
fn a_failed_lease_sync_is_renewed_and_writes_go_on() {
    let mut core = lone_core(Mem::default());
    core.handle_request(0, 1, put("k", "v", Context::empty()));
    let mut lease_syncs = 0;
    let replies = settle(&mut core, |sync| {
        lease_syncs += usize::from(sync);
        if sync && lease_syncs == 1 { Err(Error::Storage("injected".into())) } else { Ok(()) }
    });
    assert_eq!(lease_syncs, 2, "the lease was renewed after its failed sync");
    assert!(matches!(replies[..], [Response::Put(_)]), "{replies:?}");
}

/// A lease that cannot be recorded fails the write that needs it at once (nothing
/// would wake it), and the next write records it.
#[test]
fn a_lease_that_cannot_be_recorded_fails_the_write_and_the_next_one_goes_on() {
    let mut core = lone_core(Mem { fail_lease_writes: 1, ..Mem::default() });
    core.handle_request(0, 1, put("k", "v", Context::empty()));
    let r = settle(&mut core, |_| Ok(()));
    assert!(matches!(&r[..], [Response::Error(Error::Storage(m))] if m.contains("counter lease")), "{r:?}");
    assert!(core.store().value(b"k").is_none(), "nothing written");
    assert!(write(&mut core, 2, "k") > 0);
}

/// A write waiting for a lease sync that never finishes gives up at its deadline,
/// with nothing written.
#[test]
fn a_write_waiting_for_a_lease_sync_that_never_ends_times_out() {
    let mut core = lone_core(Mem::default());
    core.handle_request(0, 1, put("k", "v", Context::empty()));
    let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
    assert!(matches!(outputs[..], [Output::Flush { sync: true, .. }]), "{outputs:?}");
    let mut replies = vec![];
    let mut now = 0;
    while replies.is_empty() && now <= 1000 {
        now = core.poll_timeout().max(now + 1);
        core.handle_timeout(now);
        replies.extend(std::iter::from_fn(|| core.poll_output()).filter(|o| matches!(o, Output::Reply { .. })));
    }
    assert_eq!(now, 1000, "at the request's deadline");
    assert!(
        matches!(&replies[..], [Output::Reply { resp: Response::Error(Error::Storage(m)), .. }] if m.contains("nothing was written")),
        "{replies:?}"
    );
    assert!(core.store().value(b"k").is_none());
}

/// In a handoff batch, such a state is refused alone: the others are taken.
#[test]
fn an_implausible_state_in_a_batch_is_refused_alone() {
    let mut core = lone_core(Mem::default());
    let good = clouded(3, Some(b"fine"));
    let items = vec![
        qkv_proto::KeyState { key: b"good".to_vec(), set: good.clone() },
        qkv_proto::KeyState { key: b"bad".to_vec(), set: clouded(1 << 50, Some(b"x")) },
    ];
    core.handle_request(0, 1, Request::ReplicaPutBatch { items, sync: false });
    let r = settle(&mut core, |_| Ok(()));
    assert_eq!(r, vec![Response::ReplicaBatchAck { refused: vec![1] }]);
    assert_eq!(core.store().value(b"good"), Some(&good));
    assert!(core.store().value(b"bad").is_none());
}

/// A node whose actor reached the highest counter it may mint refuses writes with a
/// clear error (never minting past it, which its peers would refuse), and a lease
/// recorded a step past it still starts.
#[test]
fn an_actor_at_its_last_counter_refuses_writes_and_still_starts() {
    let max = qkv_core::router::OWN_COUNTER_MAX;
    let mut core = lone_core(Mem { counter_lease: max, ..Mem::default() });
    core.handle_request(0, 1, put("k", "v", Context::empty()));
    let r = settle(&mut core, |_| Ok(()));
    assert!(matches!(&r[..], [Response::Error(Error::Storage(m))] if m.contains("replace it")), "{r:?}");
    let lease = max + qkv_core::router::COUNTER_LEASE_STEP;
    assert!(Core::new(config(), Mem { counter_lease: lease, ..Mem::default() }, 0, 1_000_000).is_ok());
}
