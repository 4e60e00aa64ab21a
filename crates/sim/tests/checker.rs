//! The simulator is deterministic, the correct core passes, and the checker fails
//! each deliberately broken core within a bounded number of seeds.

use qkv_core::Bugs;
use qkv_sim::{SimConfig, Workload, run_seed};

const WORKLOADS: [Workload; 3] = [Workload::Mixed, Workload::Set, Workload::Register];

fn cfg(seed: u64) -> SimConfig {
    SimConfig { workload: WORKLOADS[(seed % 3) as usize], ..SimConfig::default() }
}

#[test]
fn the_same_seed_gives_the_same_history() {
    let a = run_seed(7, &cfg(7)).0.history.fingerprint();
    let b = run_seed(7, &cfg(7)).0.history.fingerprint();
    let c = run_seed(8, &cfg(8)).0.history.fingerprint();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn the_correct_core_passes_a_fixed_set_of_seeds() {
    let (mut ops, mut writes) = (0, 0);
    for seed in 0..400 {
        let (run, report) = run_seed(seed, &cfg(seed));
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}\nreplay: cargo run --release -p qkv-sim -- --seed {seed} --workload {:?}",
            report.violations,
            cfg(seed).workload
        );
        ops += run.counters.ops;
        writes += report.acked_writes;
    }
    println!("400 seeds, {ops} operations, {writes} acknowledged writes: no violation");
    assert!(writes > 10_000, "the seeds do real work: {writes}");
}

/// The first seed (of `bound`) at which the checker fails the broken core, if any.
fn first_caught(bugs: Bugs, bound: u64, tweak: impl Fn(&mut SimConfig)) -> Option<(u64, String)> {
    first_caught_as(bugs, bound, tweak, &[""])
}

/// The first seed (of `bound`) with a violation whose text holds one of `kinds`.
fn first_caught_as(bugs: Bugs, bound: u64, tweak: impl Fn(&mut SimConfig), kinds: &[&str]) -> Option<(u64, String)> {
    (0..bound).find_map(|seed| {
        let mut c = SimConfig { bugs, ..cfg(seed) };
        tweak(&mut c);
        let (_, report) = run_seed(seed, &c);
        let v = report.violations.iter().map(|v| v.to_string()).find(|v| kinds.iter().any(|k| v.contains(k)));
        v.map(|v| (seed, v))
    })
}

/// What a change that lets a read or write miss the data shows as.
const MISSED: &[&str] = &["stale strict read", "acknowledged write lost", "set element lost"];

#[test]
fn the_checker_catches_last_writer_wins() {
    let caught = first_caught(Bugs { lww: true, ..Bugs::default() }, 20, |_| {});
    let (seed, v) = caught.expect("LWW merge caught within 20 seeds");
    println!("lww caught at seed {seed}: {v}");
}

#[test]
fn the_checker_catches_stand_in_acks_counted_under_strict() {
    let caught = first_caught(Bugs { strict_counts_standins: true, ..Bugs::default() }, 200, |_| {});
    let (seed, v) = caught.expect("strict counting stand-ins caught within 200 seeds");
    assert!(v.contains("stale strict read") || v.contains("lost"), "{v}");
    println!("strict-counts-standins caught at seed {seed}: {v}");
}

#[test]
fn the_checker_catches_acknowledging_before_persisting() {
    // Durability bugs show when every node loses power at once: make that common.
    let caught = first_caught(Bugs { ack_before_flush: true, ..Bugs::default() }, 1200, |c| {
        c.power_loss = 0.5;
        c.clients = 8;
    });
    let (seed, v) = caught.expect("ack-before-flush caught within 1200 seeds");
    println!("ack-before-flush caught at seed {seed}: {v}");
}

#[test]
fn the_checker_catches_tombstones_purged_on_a_timer_alone() {
    let caught = first_caught(Bugs { gc_unconfirmed: true, ..Bugs::default() }, 1600, |_| {});
    let (seed, v) = caught.expect("unconfirmed tombstone GC caught within 1600 seeds");
    println!("gc-unconfirmed caught at seed {seed}: {v}");
}

/// Issue 10, point 1: the context a put returned used to be the writer's vector joined
/// with the new dot, claiming concurrent writes of the same coordinator. Writers that
/// reuse put-reply contexts then delete values they never saw; the checker's rule (a
/// value may vanish only under a context from an observation that returned it) sees it.
#[test]
fn the_checker_catches_put_contexts_that_claim_concurrent_writes() {
    let caught = first_caught(Bugs { vv_context: true, ..Bugs::default() }, 100, |c| c.workload = Workload::Mixed);
    let (seed, v) = caught.expect("the old context rule caught within 100 seeds");
    assert!(v.contains("acknowledged write lost"), "{v}");
    println!("vv-context caught at seed {seed}: {v}");
}

/// Issue 10, point 3: a counter lease persisted only with the write that crosses it sits
/// in the OS buffer under `buffer`; a power loss rolls it back and the node mints the
/// same dots again for other values. The checker sees the reused dot; the correct core,
/// which syncs every lease before a dot above it leaves the node, never reuses one.
#[test]
fn a_lease_lost_in_a_power_loss_reuses_dots_and_is_caught() {
    // With the epoch kept across unclean restarts: `qkv-node` now draws a new one, which
    // makes a rolled-back lease harmless too; the lease must hold on its own.
    let buffered = |c: &mut SimConfig| {
        c.buffer = 1.0;
        c.keep_epoch = true;
        c.workload = Workload::Mixed;
    };
    let reused = |bugs: Bugs, seeds: u64| {
        (0..seeds).find_map(|seed| {
            let mut c = SimConfig { bugs, ..cfg(seed) };
            buffered(&mut c);
            let (_, report) = run_seed(seed, &c);
            report.violations.iter().find(|v| v.kind == "dot reused").map(|v| (seed, v.to_string()))
        })
    };
    let (seed, v) = reused(Bugs { lease_not_durable: true, ..Bugs::default() }, 300).expect("caught within 300 seeds");
    println!("lease-not-durable caught at seed {seed}: {v}");
    assert_eq!(reused(Bugs::default(), 300), None, "the correct core never reuses a dot");
}

/// Two schedules that failed at 5 nodes with injected storage errors. 4779: a purge
/// whose tombstone delete failed left a purge record behind, which then stripped the
/// live tombstones from their own copies (a core bug). 2845: a hint dropped past the
/// grace took a write's last copy (by design; the checker now counts it destroyed).
/// Seed 6932 at 5 nodes, every node `buffer`: a duplicated put was coordinated
/// twice; replicas kept it under one dot, a reader saw it under that dot and wrote
/// over it. The checker took the value for lost, as the read's context did not
/// cover the other dot the writer was answered with.
#[test]
fn a_duplicated_write_read_under_its_other_dot_and_overwritten_is_not_lost() {
    let c = SimConfig {
        nodes: 5,
        buffer: 1.0,
        storage_errors: 0.002,
        workload: Workload::Register,
        ..SimConfig::default()
    };
    let (_, report) = run_seed(6932, &c);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// Seed 8868 at 5 nodes, a quarter of them `buffer`: two stand-ins dropped the same
/// expired hint in one step, each counting on the other's copy (deleted, not yet
/// flushed) to keep the write; a deleted copy now keeps nothing.
#[test]
fn two_stand_ins_dropping_one_expired_hint_destroy_its_write() {
    let c =
        SimConfig { nodes: 5, buffer: 0.25, storage_errors: 0.002, workload: Workload::Mixed, ..SimConfig::default() };
    let (_, report) = run_seed(8868, &c);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[test]
fn storage_error_schedules_found_at_five_nodes_pass() {
    for (seed, workload) in [(4779, Workload::Mixed), (2845, Workload::Set)] {
        let c = SimConfig { nodes: 5, storage_errors: 0.002, workload, ..SimConfig::default() };
        let (_, report) = run_seed(seed, &c);
        assert!(report.violations.is_empty(), "seed {seed}: {:?}", report.violations);
    }
}

/// Issue 12: an operator joins, retires and replaces nodes while clients work and
/// faults strike (half the changes staged while a member is down or cut off); nothing
/// acknowledged is lost, strict reads stay strict, and every run ends in one stable
/// layout whose home replicas agree.
#[test]
fn membership_changes_amid_faults_lose_nothing() {
    let (mut writes, mut changes) = (0, 0);
    for seed in 0..60 {
        let c = SimConfig { membership: 1.0, ..cfg(seed) };
        let (run, report) = run_seed(seed, &c);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}\nreplay: cargo run --release -p qkv-sim -- --seed {seed} --membership 1",
            report.violations
        );
        writes += report.acked_writes;
        changes +=
            ["join", "leave", "replace"].iter().map(|k| run.counters.faults.get(k).copied().unwrap_or(0)).sum::<u64>();
    }
    assert!(changes >= 60, "every seed commits a change: {changes}");
    assert!(writes > 1_000, "the seeds do real work: {writes}");
}

/// A node that reads from the new home set before its new owners fetched their ranges
/// misses writes acknowledged before the change.
///
/// It shows only when a strict read lands in the few ms between a commit and the new
/// owners' fetch, on a key whose newest write missed a replica: about one seed in 75 (seeds
/// 111, 154, 212 and 260 of the first 300 at this config). The bound leaves room for any
/// change to the random streams (missing it in 1000 seeds at that rate: about 1 in 600 000).
#[test]
fn the_checker_catches_reads_switched_before_the_data_moved() {
    let caught =
        first_caught_as(Bugs { early_read_switch: true, ..Bugs::default() }, 1000, |c| c.membership = 1.0, MISSED);
    let (seed, v) = caught.expect("an early read switch caught within 1000 seeds");
    println!("early-read-switch caught at seed {seed}: {v}");
}

/// Writes that reach only the new home set during a change are missed by strict reads
/// that still read the old one.
#[test]
fn the_checker_catches_writes_to_the_new_home_set_alone() {
    let caught =
        first_caught_as(Bugs { no_joint_writes: true, ..Bugs::default() }, 100, |c| c.membership = 1.0, MISSED);
    let (seed, v) = caught.expect("writes to the new home set alone caught within 100 seeds");
    println!("no-joint-writes caught at seed {seed}: {v}");
}

#[test]
fn session_reads_never_go_back_and_the_rules_fail_a_client_without_sessions() {
    // Mixed workload: every other client is a session client, reading at R = one and
    // two through any node while others write.
    let mixed = |sessions: bool| SimConfig { workload: Workload::Mixed, sessions, ..SimConfig::default() };
    let went_back = |seed: u64, sessions: bool| {
        run_seed(seed, &mixed(sessions)).1.violations.iter().filter(|v| v.kind == "session read went back").count()
    };
    let without: usize = (0..60).map(|seed| went_back(seed, false)).sum();
    assert!(without > 0, "a client that sends no session floors reads back in time somewhere in 60 seeds");
    for seed in 0..60 {
        assert_eq!(went_back(seed, true), 0, "seed {seed}: replay with qkv-sim --seed {seed} --workload mixed");
    }
}
