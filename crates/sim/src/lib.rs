//! Deterministic simulation of a whole quorumkv cluster, and the consistency checker.
//!
//! The simulator drives the very `qkv_core::Core` that `qkv-node` runs,
//! from one seed: same seed, same history. The checker judges every history; it
//! is shown to fail on deliberately broken variants of the core (`Bugs`).
//!
//! # Layout
//! - [`world`]: the event loop, network, disks, clocks, faults and the run's phases.
//! - [`disk`]: a `Store` whose unflushed writes a crash loses.
//! - [`workload`]: the clients: mixed, set and register workloads.
//! - [`history`]: what clients did and saw (shared with the chaos runner).
//! - [`checker`]: the properties every history must have.

pub mod checker;
pub mod disk;
pub mod history;
pub mod workload;
pub mod world;

pub use checker::{Report, Violation};
pub use history::History;
pub use workload::Workload;
pub use world::{Run, SimConfig, World};

/// Run one seed and judge it.
pub fn run_seed(seed: u64, cfg: &SimConfig) -> (Run, Report) {
    let run = World::new(seed, cfg.clone()).run();
    let facts = checker::Facts {
        n: cfg.n,
        finals: &run.finals,
        set_workload: cfg.workload == Workload::Set,
        check_convergence: true,
        destroyed: &run.destroyed,
        wipes: &run.wipes,
    };
    let mut report = checker::check(&run.history, &facts);
    for &(observer, peer) in &run.stuck_down {
        report.violations.push(Violation {
            kind: "peer stuck down",
            key: vec![],
            detail: format!("after healing, node {observer} still sees node {peer} down though both run"),
        });
    }
    for c in &run.membership_regressions {
        report.violations.push(Violation { kind: "membership went back", key: vec![], detail: c.clone() });
    }
    for c in &run.layout_conflicts {
        report.violations.push(Violation { kind: "two layouts for one epoch", key: vec![], detail: c.clone() });
    }
    if let Some(why) = &run.livelock {
        report.violations.push(Violation { kind: "livelock", key: vec![], detail: why.clone() });
    }
    if let Some(why) = &run.unsettled {
        report.violations.push(Violation {
            kind: "membership change unsettled",
            key: vec![],
            detail: format!("after healing, {why}"),
        });
    }
    (run, report)
}
