//! Membership changes in a run: an operator who joins, retires and replaces nodes
//! with the very admin requests `qkv cluster` sends (stage, then commit), while the
//! clients work and faults strike.
//!
//! A seed that runs changes draws a short script (one to three steps) from its own
//! stream of randomness, so seeds without changes replay as before. Each step:
//! 1. *prepare*: a joining node, or the new node of a replace, starts outside the
//!    cluster (its config holds the seeds' layout at epoch 0, as a new node's does),
//!    and a replaced node is killed for good, its disk lost with it. Half the steps
//!    also crash or cut off one member around the time the change is staged.
//! 2. *stage and commit* on one member (`via`, never itself changed), retried with
//!    a `Show` first, so a lost answer never stages a change twice.
//! 3. *doom* (some joins and leaves): a participant other than `via` dies for good,
//!    its disk lost, a moment after the commit: the transition cannot end until the
//!    operator *forgets* it (`qkv cluster forget`, retried until `via` sees it down
//!    and takes it). A dead node still a member is then replaced by the next step;
//!    half of those were only down, and come back with their disk once forgotten (so
//!    a forgotten node must serve nothing and give nothing back) until that replace.
//! 4. *settle*: wait until `via` holds the change in a stable layout (its data
//!    moved) before the next step.
//!
//! Healing waits for the script to end and every running node to hold one stable
//! layout; the final state of each key is then read from that layout's home replicas.

use qkv_core::layout::Layout;
use qkv_core::membership::ClusterInfo;
use qkv_proto::{ClusterAdmin, ClusterChange, NodeId, Request, Response};
use rand::RngExt;
use rand::rngs::StdRng;

use super::{Addr, Body, CLIENT_TIMEOUT_MS, Ev, World};

/// The operator's address.
pub(super) const ADMIN: u32 = u32::MAX;

/// One membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Join(NodeId),
    Leave(NodeId),
    Replace { old: NodeId, new: NodeId },
}

impl Step {
    fn change(self) -> ClusterChange {
        match self {
            Step::Join(id) => ClusterChange::Join { id, addr: format!("sim-{id}") },
            Step::Leave(id) => ClusterChange::Leave { id },
            Step::Replace { old, new } => ClusterChange::Replace { old, new, addr: format!("sim-{new}") },
        }
    }

    /// Whether `layout` has this change in it.
    fn done_in(self, layout: &Layout) -> bool {
        match self {
            Step::Join(id) => layout.members.contains_key(&id),
            Step::Leave(id) => !layout.members.contains_key(&id),
            Step::Replace { old, new } => layout.members.contains_key(&new) && !layout.members.contains_key(&old),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Step::Join(_) => "join",
            Step::Leave(_) => "leave",
            Step::Replace { .. } => "replace",
        }
    }
}

/// The pace of data moves in a slow script: a range of a few hundred KiB takes seconds.
const SLOW_TRANSFER_BYTES_PER_S: u64 = 32 << 10;

/// Where the operator is in the current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Prepare,
    /// Ask `via` what it holds, and go on from there.
    Check,
    Stage,
    Commit,
    /// Kill the step's doomed participant for good.
    Doom,
    /// Forget the doomed participant on `via`.
    Forget,
    /// Committed: wait for the transition to end.
    Settle,
}

/// The operator of a run.
pub(super) struct Admin {
    steps: Vec<Step>,
    /// Whether each step also crashes or cuts off a member as it is staged.
    disturb: Vec<bool>,
    /// The participant that dies for good once each step is committed, if any.
    doom: Vec<Option<NodeId>>,
    /// The current step's doomed node is dead.
    killed: bool,
    /// A dead node `via` has not yet taken the forget of.
    forgetting: Option<NodeId>,
    /// `via` refused the last forget: ask what it holds before asking again (the node
    /// may have left the layout meanwhile, and a forget of a non-member is refused
    /// for good).
    forget_show: bool,
    /// When `via` answered that it holds the current step's forget.
    forgot_at: Option<u64>,
    /// A forgotten node that comes back only once the change it held has ended (its
    /// data may then predate deletes purged since).
    late_return: Option<NodeId>,
    /// The current step's doomed node goes down only once it is handing over the
    /// ranges it lost (the `dropping` step), and comes back once forgotten.
    doom_at_drop: bool,
    /// The doomed node was only down (the operator took it for dead): once forgotten,
    /// it comes back with its disk, until the step that replaces it.
    returning: bool,
    /// The member every change is staged and committed on.
    pub via: NodeId,
    /// Data moves at this many bytes per second: half the scripts move it slowly, so
    /// many requests (and faults) land while new owners are still fetching.
    pub transfer_bytes_per_s: u64,
    /// When the first step starts, ms.
    pub start_ms: u64,
    at: usize,
    state: State,
    seq: u64,
    inflight: Option<u64>,
    committed: bool,
    /// A commit `via` answered for the current step: (epoch, when).
    acked: Option<(u64, u64)>,
    /// The newest epoch the operator saw settle on `via`, and when.
    settled: Option<(u64, u64)>,
    /// What the operator saw go back: an acknowledged commit `via` later did not hold,
    /// or a transition it saw end that `via` later ran again (with no wipe of `via`
    /// in between). Violations.
    pub regressions: Vec<String>,
}

impl Admin {
    /// Draw a script for a cluster of `nodes` members with replication factor `n`.
    pub fn draw(rng: &mut StdRng, nodes: usize, n: usize, horizon_ms: u64) -> Admin {
        let mut members: Vec<NodeId> = (1..=nodes as NodeId).collect();
        let via = members[rng.random_range(0..members.len())];
        let mut next = nodes as NodeId + 1;
        let mut steps = vec![];
        let mut doom = vec![];
        let apply = |members: &mut Vec<NodeId>, next: &mut NodeId, step: Step| match step {
            Step::Join(id) => {
                members.push(id);
                *next += 1;
            }
            Step::Leave(id) => members.retain(|&m| m != id),
            Step::Replace { old, new } => {
                members.retain(|&m| m != old);
                members.push(new);
                *next += 1;
            }
        };
        for _ in 0..rng.random_range(1..=3) {
            let others: Vec<NodeId> = members.iter().copied().filter(|&m| m != via).collect();
            let step = match rng.random_range(0..3) {
                1 if members.len() > n.max(3) => Step::Leave(others[rng.random_range(0..others.len())]),
                2 => Step::Replace { old: others[rng.random_range(0..others.len())], new: next },
                _ => Step::Join(next),
            };
            // A participant of a join or a leave dies for good during it (the joiner
            // itself, the leaver itself, or another member but `via`).
            let victim = match step {
                Step::Join(_) | Step::Leave(_) if rng.random_bool(0.3) => {
                    let mut can: Vec<NodeId> = others.clone();
                    if let Step::Join(j) = step {
                        can.push(j);
                    }
                    Some(can[rng.random_range(0..can.len())])
                }
                _ => None,
            };
            apply(&mut members, &mut next, step);
            steps.push(step);
            doom.push(victim);
            // Still a member: the next step replaces it.
            if let Some(v) = victim
                && members.contains(&v)
            {
                let replace = Step::Replace { old: v, new: next };
                apply(&mut members, &mut next, replace);
                steps.push(replace);
                doom.push(None);
            }
        }
        let disturb = steps.iter().map(|_| rng.random_bool(0.5)).collect();
        let start_ms = rng.random_range(100..horizon_ms.max(200) / 2 + 100);
        let transfer_bytes_per_s = if rng.random_bool(0.5) {
            SLOW_TRANSFER_BYTES_PER_S
        } else {
            qkv_core::router::TRANSFER_BYTES_PER_S_DEFAULT
        };
        Admin {
            steps,
            disturb,
            doom,
            killed: false,
            forgetting: None,
            forget_show: false,
            forgot_at: None,
            late_return: None,
            doom_at_drop: false,
            returning: false,
            via,
            transfer_bytes_per_s,
            start_ms,
            at: 0,
            state: State::Prepare,
            seq: 0,
            inflight: None,
            committed: false,
            acked: None,
            settled: None,
            regressions: vec![],
        }
    }

    /// Ids of the nodes the script starts (beyond the first `nodes`).
    pub fn new_nodes(&self) -> Vec<NodeId> {
        self.steps
            .iter()
            .filter_map(|s| match *s {
                Step::Join(id) | Step::Replace { new: id, .. } => Some(id),
                Step::Leave(_) => None,
            })
            .collect()
    }

    /// Every step is done and settled.
    pub fn done(&self) -> bool {
        self.at >= self.steps.len()
    }

    /// Steps not yet seen settled, the current one included.
    pub fn steps_left(&self) -> usize {
        self.steps.len().saturating_sub(self.at)
    }
}

impl World {
    /// The operator's next move.
    pub(super) fn admin_tick(&mut self) {
        let Some(a) = self.admin.as_ref() else { return };
        if a.done() || a.inflight.is_some() {
            return;
        }
        let (step, state, via) = (a.steps[a.at], a.state, a.via);
        match state {
            State::Prepare => {
                self.prepare_step(step);
                self.set_admin(State::Check, 0);
            }
            State::Doom => {
                let Some(v) = a.doom[a.at] else { return self.set_admin(State::Settle, 0) };
                // Still a member, and so replaced by the next step: half the time it was
                // only down, and comes back once forgotten, with what it held.
                let replaced_next = matches!(a.steps.get(a.at + 1), Some(Step::Replace { old, .. }) if *old == v);
                let at_drop = a.doom_at_drop;
                let returning = at_drop || (replaced_next && self.rng.random_bool(0.5));
                self.crash(v);
                if at_drop {
                    self.fault("a participant goes down while it hands over ranges");
                }
                if returning {
                    self.log(format!("node {v} goes down during {step:?}; the operator takes it for dead"));
                    self.fault("a participant goes down, taken for dead, during a change");
                } else {
                    self.log(format!("node {v} dies for good during {step:?}"));
                    self.fault("a participant dies for good during a change");
                    self.wipe(v);
                }
                self.nodes.get_mut(&v).expect("node exists").active = false;
                let a = self.admin.as_mut().expect("checked");
                a.killed = true;
                a.forgetting = Some(v);
                a.returning = returning;
                let wait = self.rng.random_range(0..2000);
                self.set_admin(State::Forget, wait);
            }
            State::Forget => match a.forgetting {
                Some(_) if a.forget_show => {
                    self.admin.as_mut().expect("checked").forget_show = false;
                    self.admin_ask(via, ClusterAdmin::Show)
                }
                Some(id) => self.admin_ask(via, ClusterAdmin::Forget { id }),
                None => self.set_admin(State::Settle, 0),
            },
            State::Check | State::Settle => self.admin_ask(via, ClusterAdmin::Show),
            State::Stage => self.admin_ask(via, ClusterAdmin::Stage(step.change())),
            State::Commit => self.admin_ask(via, ClusterAdmin::Commit),
        }
    }

    fn set_admin(&mut self, state: State, delay_ms: u64) {
        if let Some(a) = self.admin.as_mut() {
            a.state = state;
        }
        self.at(self.now + delay_ms, Ev::Admin);
    }

    fn admin_ask(&mut self, via: NodeId, ask: ClusterAdmin) {
        let Some(a) = self.admin.as_mut() else { return };
        a.seq += 1;
        let seq = a.seq;
        a.inflight = Some(seq);
        self.send(Addr::Client(ADMIN), Addr::Node(via, 0), seq, Body::Req(Request::Cluster(ask)));
        self.at(self.now + CLIENT_TIMEOUT_MS, Ev::AdminTimeout { seq });
    }

    /// `via`'s answer (`None`: none came in time).
    pub(super) fn admin_answer(&mut self, seq: u64, resp: Option<Response>) {
        let Some(a) = self.admin.as_mut() else { return };
        if a.inflight != Some(seq) {
            return;
        }
        a.inflight = None;
        let (step, state) = (a.steps[a.at], a.state);
        let info = match &resp {
            Some(Response::ClusterInfo(b)) => ClusterInfo::decode(b).ok(),
            _ => None,
        };
        let retry = self.rng.random_range(100..600);
        let Some(info) = info else {
            if let Some(Response::Error(e)) = &resp {
                self.log(format!("operator: {} of {step:?}: {e}", format!("{state:?}").to_lowercase()));
            }
            // A forget `via` refused (it still sees the node up, or the node is no
            // member any more) is asked again, after a look at what `via` holds.
            let again = if state == State::Forget { State::Forget } else { State::Check };
            if state == State::Forget && resp.is_some() {
                self.admin.as_mut().expect("checked").forget_show = true;
            }
            return self.set_admin(again, retry);
        };
        for l in &info.cluster.versions {
            if let Err(why) = self.note_layout(info.node, l) {
                self.log(format!("operator: {why}"));
            }
        }
        let newest = info.cluster.newest();
        let holds = step.done_in(newest);
        self.check_regression(&info);
        match state {
            State::Forget => {
                let a = self.admin.as_mut().expect("checked");
                match a.forgetting {
                    Some(v) if info.cluster.is_lost(v) || !info.cluster.is_member(v) => {
                        a.forgetting = None;
                        a.forgot_at = Some(self.now);
                        let returning = std::mem::take(&mut a.returning);
                        let at_drop = a.doom_at_drop;
                        self.log(format!("operator: node {v} forgotten at epoch {}", newest.epoch));
                        self.fault("forget");
                        if returning {
                            // What it alone held is lost to the cluster, as its docs say: a
                            // write only it has, or a strict read that misses one, is excused.
                            self.note_holdings_lost(v);
                        }
                        // One that went down in its drop comes back once the change ended.
                        if returning && (at_drop || self.rng.random_bool(0.5)) {
                            self.admin.as_mut().expect("checked").late_return = Some(v);
                        } else if returning {
                            // It must learn it serves nothing, and give nothing it holds back.
                            self.nodes.get_mut(&v).expect("node exists").active = true;
                            let back = self.now + self.rng.random_range(0..1500);
                            self.at(back, Ev::Restart(v));
                            self.fault("a forgotten node comes back");
                        }
                        self.set_admin(State::Settle, 0);
                    }
                    Some(_) => self.set_admin(State::Forget, retry),
                    None => self.set_admin(State::Settle, 0),
                }
            }
            State::Check if holds => {
                self.committed(step, newest.epoch);
                self.after_commit();
            }
            State::Check if info.staged.iter().any(|c| staged_is(c, step)) => self.set_admin(State::Commit, 0),
            State::Check => self.set_admin(State::Stage, 0),
            State::Stage => self.set_admin(State::Commit, 0),
            State::Commit => {
                if holds {
                    let now = self.now;
                    self.admin.as_mut().expect("checked").acked = Some((newest.epoch, now));
                }
                self.committed(step, newest.epoch);
                self.after_commit();
            }
            State::Settle if self.admin.as_ref().is_some_and(|a| a.forgetting.is_some()) => {
                self.set_admin(State::Forget, 0)
            }
            State::Settle if self.dooms_at_drop(&info) => self.set_admin(State::Doom, 0),
            // The forget was taken, but `via` no longer holds it (it lost its disk
            // before the forget spread), and the dead node holds the change again: an
            // operator forgets it again.
            State::Settle if let Some(v) = self.doomed_unforgotten(&info) => {
                self.log(format!("operator: node {v} is dead but no longer forgotten on node {}", info.node));
                let a = self.admin.as_ref().expect("checked");
                let since = a.forgot_at.unwrap_or(0);
                if !self.disks_lost.iter().any(|&(n, t)| n == info.node && t >= since) {
                    // Only a lost disk takes back a forget `via` answered for (it was
                    // stored and synced first).
                    let why = format!("node {} answered the forget of node {v}, then held it not forgotten", info.node);
                    self.admin.as_mut().expect("checked").regressions.push(why);
                }
                self.admin.as_mut().expect("checked").forgetting = Some(v);
                self.set_admin(State::Forget, 0)
            }
            State::Settle if holds && info.phase == qkv_core::membership::Phase::Stable => {
                self.log(format!("operator: {step:?} settled at epoch {}", newest.epoch));
                let mut gap = self.rng.random_range(100..1500);
                if let Some(v) = self.admin.as_mut().expect("checked").late_return.take() {
                    // Back once tombstones deleted during the change may be purged, before
                    // the next step (its replace) begins.
                    let back = self.rng.random_range(800..6000);
                    self.at(self.now + back, Ev::Return(v));
                    self.fault("a forgotten node comes back after the change ended");
                    gap = back + self.rng.random_range(300..1000);
                }
                let now = self.now;
                let a = self.admin.as_mut().expect("checked");
                a.at += 1;
                a.committed = false;
                a.killed = false;
                a.doom_at_drop = false;
                a.forgot_at = None;
                a.acked = None;
                a.settled = Some((newest.epoch, now));
                self.set_admin(State::Prepare, gap);
            }
            // Committed, yet not in `via`'s layout (a commit whose answer was lost and
            // whose layout a power loss took before it was learned): go again. One whose
            // commit `via` had acknowledged must not be lost that way.
            State::Settle if !holds => {
                let wiped = |since: u64| self.disks_lost.iter().any(|&(n, t)| n == info.node && t >= since);
                let a = self.admin.as_ref().expect("checked");
                if let Some((epoch, at)) = a.acked
                    && !wiped(at)
                {
                    let why = format!(
                        "node {} acknowledged the commit of {step:?} as epoch {epoch}, then held epoch {} without it",
                        info.node, newest.epoch
                    );
                    self.admin.as_mut().expect("checked").regressions.push(why);
                }
                self.admin.as_mut().expect("checked").acked = None;
                self.set_admin(State::Check, 250)
            }
            State::Settle => self.set_admin(State::Settle, 250),
            State::Prepare | State::Doom => {}
        }
    }

    /// Whether the doomed node, waited for until the drop, is in it now, as `via` sees.
    fn dooms_at_drop(&self, info: &ClusterInfo) -> bool {
        let Some(a) = self.admin.as_ref() else { return false };
        let Some(v) = a.doom[a.at].filter(|_| a.doom_at_drop && !a.killed) else { return false };
        let e = info.cluster.epoch();
        info.phase == qkv_core::membership::Phase::Dropping && info.cluster.progress_of(v).dropped < e
    }

    /// The current step's doomed node, if it is dead (not taken back) and `info` shows
    /// it a member not forgotten.
    fn doomed_unforgotten(&self, info: &ClusterInfo) -> Option<NodeId> {
        let a = self.admin.as_ref()?;
        let v = a.doom[a.at].filter(|_| a.killed)?;
        let dead = self.nodes.get(&v).is_some_and(|n| !n.active);
        (dead && info.cluster.is_member(v) && !info.cluster.is_lost(v)).then_some(v)
    }

    /// The step is committed: its doomed participant dies a moment later (once), and
    /// the operator forgets it before waiting for the change to end.
    fn after_commit(&mut self) {
        let Some(a) = self.admin.as_ref() else { return };
        let replaced_next = |v: NodeId| matches!(a.steps.get(a.at + 1), Some(Step::Replace { old, .. }) if *old == v);
        if let Some(v) = a.doom[a.at]
            && !a.killed
            && replaced_next(v)
            && self.rng.random_bool(0.25)
        {
            self.admin.as_mut().expect("checked").doom_at_drop = true;
            self.set_admin(State::Settle, 0);
        } else if a.doom[a.at].is_some() && !a.killed {
            let wait = self.rng.random_range(0..1500);
            self.set_admin(State::Doom, wait);
        } else if a.forgetting.is_some() {
            self.set_admin(State::Forget, 0);
        } else {
            self.set_admin(State::Settle, 0);
        }
    }

    /// A transition the operator saw end on `via` must not run again there: the
    /// operator has acted on its end (retired a node, begun the next step).
    fn check_regression(&mut self, info: &ClusterInfo) {
        let Some((epoch, at)) = self.admin.as_ref().and_then(|a| a.settled) else { return };
        // Membership state is synced whatever the persist policy: only a lost disk excuses.
        let wiped = self.disks_lost.iter().any(|&(n, t)| n == info.node && t >= at);
        let newest = info.cluster.newest().epoch;
        if !wiped && (newest < epoch || (newest == epoch && info.cluster.old().is_some())) {
            let why = format!(
                "node {} showed the change to epoch {epoch} done, then {} (phase {})",
                info.node,
                if newest < epoch {
                    format!("held epoch {newest}")
                } else {
                    format!("epoch {epoch} still moving data")
                },
                info.phase.name()
            );
            let a = self.admin.as_mut().expect("checked");
            a.regressions.push(why);
            a.settled = None;
        }
    }

    fn committed(&mut self, step: Step, epoch: u64) {
        let Some(a) = self.admin.as_mut() else { return };
        if !a.committed {
            a.committed = true;
            self.log(format!("operator: {step:?} committed as epoch {epoch}"));
            self.fault(step.kind());
        }
    }

    /// Start the nodes a step brings, kill the one it replaces, and maybe strike a member.
    fn prepare_step(&mut self, step: Step) {
        self.log(format!("operator: {step:?} begins"));
        match step {
            Step::Join(id) => self.activate(id),
            Step::Leave(_) => {}
            Step::Replace { old, new } => {
                // The old node is gone for good, and its disk with it.
                self.log(format!("node {old} dies for good"));
                self.crash(old);
                self.wipe(old);
                self.nodes.get_mut(&old).expect("node exists").active = false;
                self.activate(new);
            }
        }
        let Some(a) = self.admin.as_ref() else { return };
        if self.reliable || !a.disturb[a.at] {
            return;
        }
        let via = a.via;
        let spared = |id: NodeId| id != via && !matches!(step, Step::Join(n) | Step::Replace { new: n, .. } if n == id);
        let victims: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.active && n.core.is_some() && spared(**id))
            .map(|(&id, _)| id)
            .collect();
        if victims.is_empty() {
            return;
        }
        let v = victims[self.rng.random_range(0..victims.len())];
        let until = self.now + self.rng.random_range(300..2500);
        if self.rng.random_bool(0.5) {
            self.fault("change staged while a node is down");
            self.at(self.now, Ev::Crash(v));
            self.at(until, Ev::Restart(v));
        } else {
            self.fault("change staged while a node is cut off");
            let all: Vec<NodeId> = self.nodes.keys().copied().collect();
            let cut = all.iter().filter(|&&o| o != v).flat_map(|&o| [(v, o), (o, v)]).collect();
            self.at(self.now, Ev::Partition(cut));
            self.at(until, Ev::Heal);
        }
    }

    fn activate(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if node.active {
            return;
        }
        node.active = true;
        self.start(id);
        self.log(format!("node {id} starts outside the cluster"));
    }
}

fn staged_is(c: &qkv_core::layout::Change, step: Step) -> bool {
    use qkv_core::layout::Change;
    match (c, step) {
        (Change::Join { id, .. }, Step::Join(s)) => *id == s,
        (Change::Leave { id }, Step::Leave(s)) => *id == s,
        (Change::Replace { old, new, .. }, Step::Replace { old: o, new: n }) => *old == o && *new == n,
        _ => false,
    }
}
