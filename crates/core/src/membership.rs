//! Membership over time, as data: the committed layouts in effect with each
//! participant's progress through a change ([`Cluster`]), the acceptor's state that
//! lets exactly one layout be committed per epoch ([`Acceptor`]), and what a node
//! must fetch when it gains ranges. Pure: the router drives it
//! (`router/membership.rs`), and docs/MEMBERSHIP.md tells the whole protocol.
//!
//! # A change, step by step
//!
//! Committing epoch `E` (a single-decree Paxos round among the members of `E - 1`,
//! see [`Acceptor`]) starts a *transition*: both layouts are in effect until every
//! participant (the members of either, but for nodes `E` replaced, which are taken
//! as lost) has moved through four steps, each a monotone counter it raises for
//! itself and gossips with its pings ([`Progress`]):
//!
//! 1. **acked**: the node routes every new write to W replicas of the old *and* W of
//!    the new home set, and no write it started on the old layout alone is still
//!    in flight. Reads still go to the old home set.
//! 2. **synced**: once every participant has acked, each node that gains ranges
//!    fetches them from all their old home replicas (but replaced nodes), and says
//!    so when it holds all of them. Every write acknowledged before is on W old
//!    replicas, so it is fetched; every write since reaches W new ones itself.
//! 3. **reading**: once every participant has synced, a node reads from the new home
//!    set. Writes still reach both, so a node still reading the old one misses nothing.
//! 4. **dropped**: once every participant reads the new set, writes go to the new set
//!    alone, and each node that lost ranges hands every key of them to the key's new
//!    home replicas and deletes it once all of them have taken it (the new owners'
//!    copies may have been lost since they fetched them: a power loss of `buffer`
//!    nodes). No tombstone is purged anywhere until the transition ends, so no copy
//!    handed over can bring a deleted value back, however late it arrives.
//!
//! Once every participant has dropped, the old layout is retired. A strict read with
//! R + W > N overlaps every strict write acknowledged before it at each step.

use std::collections::{BTreeMap, BTreeSet};

use qkv_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::layout::{EPOCH_MAX, Layout, LayoutError, MEMBERS_MAX, Move, Plan};

/// A proposal number: (round, proposer). Higher rounds win; the node id breaks ties.
pub type Ballot = (u64, NodeId);

/// Largest encoded [`Cluster`] or [`Acceptor`] a node decodes (a layout of 1024
/// members with 16,384 partitions is about 200 KiB; two of them fit many times).
pub const ENCODED_BYTES_MAX: usize = 8 << 20;

/// How far one participant is through the newest epoch's transition. Each field is
/// the highest epoch for which that step is done; only the node itself raises its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// It writes to both home sets, and no write of the old layout alone is in flight.
    pub acked: u64,
    /// It holds every range it gains.
    pub synced: u64,
    /// It reads from the new home set.
    pub reading: u64,
    /// It handed the keys of every range it lost to their new home replicas, and
    /// deleted them (absent in layouts stored by earlier releases).
    #[serde(default)]
    pub dropped: u64,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 5] = [Phase::Stable, Phase::Acking, Phase::Syncing, Phase::Switching, Phase::Dropping];

    /// Its name in status output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Stable => "stable",
            Phase::Acking => "acking",
            Phase::Syncing => "syncing",
            Phase::Switching => "switching",
            Phase::Dropping => "dropping",
        }
    }
}

impl Progress {
    fn join(&mut self, o: &Progress) {
        self.acked = self.acked.max(o.acked);
        self.synced = self.synced.max(o.synced);
        self.reading = self.reading.max(o.reading);
        self.dropped = self.dropped.max(o.dropped);
    }
}

/// Which step of its transition the newest epoch is at, as one node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// One layout in effect.
    Stable,
    /// Waiting for every participant to route writes to both home sets.
    Acking,
    /// Nodes that gain ranges are fetching them.
    Syncing,
    /// Every new owner has its ranges; waiting for every participant to read from them.
    Switching,
    /// Everyone reads the new home set and writes go to it alone; old owners hand over
    /// and delete the ranges they lost.
    Dropping,
}

/// The layouts in effect and the progress of the change between them: what a node
/// stores and what nodes send each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// The committed layouts in effect, oldest first: one, or two (consecutive
    /// epochs) during a transition.
    pub versions: Vec<Layout>,
    /// Each participant's progress through the newest epoch (empty when stable).
    pub progress: BTreeMap<NodeId, Progress>,
    /// Members an operator declared gone for good (`qkv cluster forget`): no step
    /// waits for them, nothing is fetched from or handed to them, no request is routed
    /// to them, and they serve no client. Grow-only while they are members of a layout
    /// in effect (spread by pings, so concurrent forgets merge); dropped once they are
    /// not (a replace or a leave took them out). Absent in layouts of earlier releases.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub lost: BTreeSet<NodeId>,
}

impl Cluster {
    /// A cluster of one layout.
    pub fn new(layout: Layout) -> Cluster {
        Cluster { versions: vec![layout], progress: BTreeMap::new(), lost: BTreeSet::new() }
    }

    /// The newest layout: the one writes are placed by.
    pub fn newest(&self) -> &Layout {
        self.versions.last().expect("a cluster has a layout")
    }

    /// The layout being left, during a transition.
    pub fn old(&self) -> Option<&Layout> {
        (self.versions.len() == 2).then(|| &self.versions[0])
    }

    /// The newest epoch.
    pub fn epoch(&self) -> u64 {
        self.newest().epoch
    }

    /// Whether `id` is a member of a layout in effect.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.versions.iter().any(|l| l.members.contains_key(&id))
    }

    /// The address of a member of a layout in effect.
    pub fn addr(&self, id: NodeId) -> Option<&str> {
        self.versions.iter().rev().find_map(|l| l.members.get(&id)).map(|m| m.addr.as_str())
    }

    /// Every member of a layout in effect.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.versions.iter().flat_map(|l| l.members.keys().copied()).collect()
    }

    /// The nodes the transition waits for: members of either layout, but for the
    /// nodes the newest replaced and those forgotten.
    pub fn participants(&self) -> BTreeSet<NodeId> {
        let mut p = self.members();
        for r in self.newest().replaced.iter().chain(&self.lost) {
            p.remove(r);
        }
        p
    }

    /// Whether `id` was forgotten (see [`Cluster::lost`]).
    pub fn is_lost(&self, id: NodeId) -> bool {
        self.lost.contains(&id)
    }

    /// Members that are not forgotten: the nodes to route to and watch.
    pub fn live_members(&self) -> BTreeSet<NodeId> {
        let mut m = self.members();
        m.retain(|id| !self.lost.contains(id));
        m
    }

    /// Whether some member is forgotten and every member of `layout` is.
    pub fn all_forgotten(&self, layout: &Layout) -> bool {
        !self.lost.is_empty() && layout.members.keys().all(|m| self.lost.contains(m))
    }

    /// Whether forgetting `id` too leaves a member of the newest layout not forgotten
    /// (the layout the cluster goes on with; one of an old layout alone is not enough:
    /// once the old one retires, nobody would be left).
    fn leaves_a_newest_member(&self, id: NodeId) -> bool {
        self.newest().members.keys().any(|m| *m != id && !self.lost.contains(m))
    }

    /// Forget `id`, a member gone for good. Returns whether anything changed.
    pub fn forget(&mut self, id: NodeId) -> Result<bool, String> {
        if !self.is_member(id) {
            return Err(format!("node {id} is not a member of epoch {}", self.epoch()));
        }
        if self.is_lost(id) {
            return Ok(false);
        }
        if !self.leaves_a_newest_member(id) {
            return Err(format!("node {id} is the last member of epoch {} not forgotten", self.epoch()));
        }
        let changed = self.lost.insert(id);
        self.progress.remove(&id);
        Ok(changed)
    }

    /// Take the forgotten nodes another copy of the same epoch knows of (those still
    /// members here). Never the last member of the newest layout not forgotten: a node
    /// keeps one to route to (two concurrent forgets of the last two then stay where each
    /// was taken, until an operator resolves them; a cleared set would flap back at the
    /// next ping).
    fn merge_lost(&mut self, lost: &BTreeSet<NodeId>) -> bool {
        let mut changed = false;
        for &id in lost.iter().take(2 * MEMBERS_MAX) {
            if !self.is_member(id) || self.is_lost(id) || !self.leaves_a_newest_member(id) {
                continue;
            }
            self.lost.insert(id);
            self.progress.remove(&id);
            changed = true;
        }
        changed
    }

    /// Forgotten nodes no longer members are no longer kept.
    fn prune_lost(&mut self) {
        let members = self.members();
        self.lost.retain(|id| members.contains(id));
    }

    /// Whether every participant has done the step `step` picks for the newest epoch.
    pub fn everyone(&self, step: impl Fn(&Progress) -> u64) -> bool {
        let e = self.epoch();
        self.participants().iter().all(|p| self.progress.get(p).is_some_and(|g| step(g) >= e))
    }

    /// This node's progress through the newest epoch.
    pub fn progress_of(&self, id: NodeId) -> Progress {
        self.progress.get(&id).copied().unwrap_or_default()
    }

    /// The step the transition is at.
    pub fn phase(&self) -> Phase {
        if self.old().is_none() {
            Phase::Stable
        } else if !self.everyone(|p| p.acked) {
            Phase::Acking
        } else if !self.everyone(|p| p.synced) {
            Phase::Syncing
        } else if !self.everyone(|p| p.reading) {
            Phase::Switching
        } else {
            Phase::Dropping
        }
    }

    /// Raise `id`'s own progress (the node itself, or what it gossiped).
    pub fn raise(&mut self, id: NodeId, p: Progress) -> bool {
        if self.old().is_none() || !self.participants().contains(&id) {
            return false;
        }
        let e = self.epoch();
        let clamp = Progress {
            acked: p.acked.min(e),
            synced: p.synced.min(e),
            reading: p.reading.min(e),
            dropped: p.dropped.min(e),
        };
        let mine = self.progress.entry(id).or_default();
        let before = *mine;
        mine.join(&clamp);
        *mine != before
    }

    /// Take gossiped progress for epoch `epoch` (ignored unless it is the newest).
    pub fn merge_progress(&mut self, epoch: u64, entries: &[(NodeId, Progress)]) -> bool {
        if epoch != self.epoch() {
            return false;
        }
        let mut changed = false;
        for (id, p) in entries.iter().take(2 * MEMBERS_MAX) {
            changed |= self.raise(*id, *p);
        }
        changed
    }

    /// The progress to gossip.
    pub fn progress_list(&self) -> Vec<(NodeId, Progress)> {
        self.progress.iter().map(|(&id, &p)| (id, p)).collect()
    }

    /// Retire the old layout once every participant has dropped what it lost.
    pub fn retire_if_done(&mut self) -> bool {
        if self.old().is_none() || !self.everyone(|p| p.dropped) {
            return false;
        }
        self.versions.remove(0);
        self.progress.clear();
        self.prune_lost();
        true
    }

    /// Start the transition to `next`, the layout committed for the next epoch.
    pub fn begin(&mut self, next: Layout) -> Result<(), String> {
        if self.old().is_some() {
            return Err(format!("epoch {} is still in transition", self.epoch()));
        }
        self.check_successor(&next)?;
        self.versions.push(next);
        self.progress.clear();
        Ok(())
    }

    /// Whether `next` may follow the newest layout.
    pub fn check_successor(&self, next: &Layout) -> Result<(), String> {
        if next.epoch != self.epoch() + 1 {
            return Err(format!("layout epoch {} cannot follow epoch {}", next.epoch, self.epoch()));
        }
        if next.n != self.newest().n {
            return Err(format!("a change keeps N ({}), not {}", self.newest().n, next.n));
        }
        next.check().map_err(|e| e.to_string())
    }

    /// Take what another node holds, when it is newer. Returns whether anything changed.
    ///
    /// A newer epoch replaces the layouts (its old layout, if any, is the one this node
    /// had, or a later one whose transition ended: a node that holds epoch `E` retired
    /// `E - 1` only when every participant dropped for `E`). The same epoch merges
    /// progress, and a retired copy retires this one (its condition held somewhere).
    ///
    /// Forgotten nodes merge between copies of one epoch. An id names one incarnation
    /// only while it stays a member: a node left or replaced may later join again under
    /// the same id, so an older copy's forgets are not taken (its holder carries them
    /// over when it learns this epoch), and this copy's own go over to the next epoch
    /// only for members of its newest layout (one change cannot both take such a member
    /// out and bring its id back).
    pub fn adopt(&mut self, other: Cluster) -> Result<bool, String> {
        other.check()?;
        if other.epoch() > self.epoch() {
            let newest = self.newest().members.clone();
            let mut mine = std::mem::take(&mut self.lost);
            mine.retain(|id| newest.contains_key(id));
            let next = other.epoch() == self.epoch() + 1;
            *self = other;
            if next {
                self.merge_lost(&mine);
            }
            return Ok(true);
        }
        if other.epoch() < self.epoch() || other.newest() != self.newest() {
            return Ok(false);
        }
        if self.old().is_some() && other.old().is_none() {
            self.versions.remove(0);
            self.progress.clear();
            self.prune_lost();
            self.merge_lost(&other.lost);
            return Ok(true);
        }
        let forgot = self.merge_lost(&other.lost);
        let e = self.epoch();
        Ok(self.merge_progress(e, &other.progress_list()) | forgot)
    }

    /// Take forgotten nodes a peer's ping named, if it holds epoch `epoch` too (see
    /// [`Cluster::adopt`]). Returns whether anything changed.
    pub fn merge_lost_ids(&mut self, epoch: u64, ids: &[NodeId]) -> bool {
        if epoch != self.epoch() {
            return false;
        }
        let ids: BTreeSet<NodeId> = ids.iter().take(2 * MEMBERS_MAX).copied().collect();
        self.merge_lost(&ids)
    }

    /// A valid cluster: one or two layouts of consecutive epochs, each valid, with
    /// the same N, and progress only of participants (a copy from a peer or the disk
    /// is checked with this).
    pub fn check(&self) -> Result<(), String> {
        match self.versions.as_slice() {
            [one] => one.check().map_err(|e| e.to_string())?,
            [old, new] => {
                old.check().map_err(|e| e.to_string())?;
                Cluster::new(old.clone()).check_successor(new)?;
            }
            _ => return Err(format!("a cluster holds one or two layouts, not {}", self.versions.len())),
        }
        let participants = self.participants();
        if let Some(id) = self.progress.keys().find(|id| !participants.contains(id)) {
            return Err(format!("progress of node {id}, which takes no part in the change"));
        }
        if let Some(id) = self.lost.iter().find(|id| !self.is_member(**id)) {
            return Err(format!("node {id} is forgotten but not a member"));
        }
        if self.all_forgotten(self.newest()) {
            return Err(format!("every member of epoch {} is forgotten", self.epoch()));
        }
        Ok(())
    }

    /// The ranges `me` gains in the transition, each with the old home replicas to
    /// fetch it from (replaced nodes left out; forgotten ones stay in, so a forget does
    /// not renumber transfers: the router skips them).
    pub fn gains(&self, me: NodeId) -> Result<Vec<Move>, LayoutError> {
        let Some(old) = self.old() else { return Ok(vec![]) };
        let replaced = &self.newest().replaced;
        let plan = Plan::new(old, self.newest())?;
        Ok(plan
            .moves
            .into_iter()
            .filter(|m| m.to.contains(&me))
            .map(|mut m| {
                m.from.retain(|f| *f != me && !replaced.contains(f));
                m
            })
            .collect())
    }

    /// Encode for the disk or a peer.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("a cluster encodes")
    }

    /// Decode and check a cluster from the disk or a peer.
    pub fn decode(bytes: &[u8]) -> Result<Cluster, String> {
        let c = Cluster::parse(bytes)?;
        c.check()?;
        Ok(c)
    }

    fn parse(bytes: &[u8]) -> Result<Cluster, String> {
        if bytes.len() > ENCODED_BYTES_MAX {
            return Err(format!("a cluster layout of {} bytes is over {ENCODED_BYTES_MAX}", bytes.len()));
        }
        rmp_serde::from_slice(bytes).map_err(|e| format!("decoding a cluster layout: {e}"))
    }

    /// A cluster from this node's own disk: as [`Cluster::decode`], but one stored with
    /// every member of its newest layout forgotten (an earlier release allowed that
    /// while a member of the layout being left was not) gets one such member back,
    /// with a warning, rather than keep the node from starting: `me` when it is one
    /// (it runs, so it is not gone), else the lowest.
    pub fn decode_stored(bytes: &[u8], me: NodeId) -> Result<Cluster, String> {
        let mut c = Cluster::parse(bytes)?;
        let newest: Vec<NodeId> = c.newest().members.keys().copied().collect();
        if c.all_forgotten(c.newest())
            && let Some(&back) = newest.iter().find(|&&m| m == me).or(newest.first())
        {
            tracing::warn!(node = back, "every member of the stored layout was forgotten: node {back} is not");
            c.lost.remove(&back);
        }
        c.check()?;
        Ok(c)
    }
}

/// A node's vote in the round that commits epoch `epoch`: the highest ballot it
/// promised, and the layout it accepted, if any. Stored, and synced, before it answers.
///
/// Only a member of epoch `epoch - 1` whose cluster is stable at that epoch votes:
/// a change starts only when the one before has ended at a majority, which means
/// every participant of it handed over and dropped what it lost (see [`Cluster`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Acceptor {
    /// The epoch this vote is for.
    pub epoch: u64,
    /// The highest ballot promised for it.
    pub promised: Ballot,
    /// The layout accepted for it, with the ballot it came with.
    pub accepted: Option<(Ballot, Layout)>,
}

/// An acceptor's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Vote {
    /// Promised: no lower ballot is accepted; here is what was accepted before, if anything.
    Promise(Option<(Ballot, Layout)>),
    /// Accepted.
    Accepted,
    /// A higher ballot was promised.
    Outbid(Ballot),
    /// This node cannot vote for that epoch (it holds a newer one, is behind, or is
    /// in a transition), with why.
    Refused(String),
}

impl Acceptor {
    fn ready(&mut self, cluster: &Cluster, epoch: u64, me: NodeId) -> Result<(), String> {
        if cluster.epoch() >= epoch {
            return Err(format!("epoch {epoch} is already committed (this node holds epoch {})", cluster.epoch()));
        }
        if cluster.epoch() + 1 != epoch {
            return Err(format!("this node holds epoch {}, behind epoch {}", cluster.epoch(), epoch - 1));
        }
        if cluster.old().is_some() {
            return Err(format!("epoch {} is still in transition here", cluster.epoch()));
        }
        if !cluster.newest().members.contains_key(&me) {
            return Err(format!("node {me} is not a member of epoch {}", cluster.epoch()));
        }
        if self.epoch != epoch {
            *self = Acceptor { epoch, promised: (0, 0), accepted: None };
        }
        Ok(())
    }

    /// Phase 1. A `Promise` changes the state: store it before answering.
    pub fn prepare(&mut self, cluster: &Cluster, me: NodeId, epoch: u64, ballot: Ballot) -> Vote {
        if let Err(e) = self.ready(cluster, epoch, me).and(check_ballot(ballot)) {
            return Vote::Refused(e);
        }
        // The same ballot again is the same proposer's same round, sent twice (a
        // request resent over a fresh connection): the same answer.
        if ballot < self.promised {
            return Vote::Outbid(self.promised);
        }
        self.promised = ballot;
        Vote::Promise(self.accepted.clone())
    }

    /// Phase 2. `Accepted` changes the state: store it before answering.
    pub fn accept(&mut self, cluster: &Cluster, me: NodeId, epoch: u64, ballot: Ballot, layout: Layout) -> Vote {
        if let Err(e) = self.ready(cluster, epoch, me).and(check_ballot(ballot)) {
            return Vote::Refused(e);
        }
        if let Err(e) = cluster.check_successor(&layout) {
            return Vote::Refused(e);
        }
        if ballot < self.promised {
            return Vote::Outbid(self.promised);
        }
        self.promised = ballot;
        self.accepted = Some((ballot, layout));
        Vote::Accepted
    }

    /// Encode for the disk.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("an acceptor encodes")
    }

    /// Decode from the disk.
    pub fn decode(bytes: &[u8]) -> Result<Acceptor, String> {
        if bytes.len() > ENCODED_BYTES_MAX {
            return Err(format!("an acceptor record of {} bytes is over {ENCODED_BYTES_MAX}", bytes.len()));
        }
        let a: Acceptor = rmp_serde::from_slice(bytes).map_err(|e| format!("decoding the acceptor record: {e}"))?;
        check_ballot(a.promised)?;
        Ok(a)
    }
}

/// A ballot a node takes: its number at most [`EPOCH_MAX`], so the next is no overflow.
pub fn check_ballot(ballot: Ballot) -> Result<(), String> {
    if ballot.0 > EPOCH_MAX {
        return Err(format!("ballot {} is past the largest, {EPOCH_MAX}", ballot.0));
    }
    Ok(())
}

/// The proposer's side of one round: counts votes from the members of the epoch
/// being succeeded and says what to do next.
#[derive(Clone, Debug)]
pub struct Round {
    /// The epoch being committed.
    pub epoch: u64,
    /// This round's ballot.
    pub ballot: Ballot,
    /// What this proposer wants committed.
    pub proposal: Layout,
    voters: BTreeSet<NodeId>,
    promised: BTreeSet<NodeId>,
    accepted: BTreeSet<NodeId>,
    refused: BTreeMap<NodeId, String>,
    /// The highest-ballot layout a promise reported: it must be proposed instead.
    prior: Option<(Ballot, Layout)>,
    /// Sent the accepts (phase 2), with this layout.
    pub value: Option<Layout>,
}

/// What a round asks for next.
#[derive(Clone, Debug, PartialEq)]
pub enum RoundStep {
    /// Keep waiting for votes.
    Wait,
    /// A majority promised: send accepts of this layout.
    Accept(Layout),
    /// A majority accepted this layout: it is committed.
    Chosen(Layout),
    /// The round cannot succeed, with why.
    Failed(String),
}

impl Round {
    /// A round for the epoch after `cluster`'s newest, proposing `proposal`, with a
    /// ballot above `promised_before` (the highest this node has seen).
    pub fn new(cluster: &Cluster, me: NodeId, proposal: Layout, promised_before: Ballot) -> Round {
        Round {
            epoch: cluster.epoch() + 1,
            ballot: (promised_before.0.min(EPOCH_MAX) + 1, me),
            proposal,
            voters: cluster.newest().members.keys().copied().collect(),
            promised: BTreeSet::new(),
            accepted: BTreeSet::new(),
            refused: BTreeMap::new(),
            prior: None,
            value: None,
        }
    }

    /// The members whose votes count.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().copied()
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    fn failed_if_hopeless(&self, got: usize) -> RoundStep {
        if self.voters.len() - self.refused.len() < self.majority() && got < self.majority() {
            let why: Vec<String> = self.refused.iter().map(|(n, e)| format!("node {n}: {e}")).collect();
            return RoundStep::Failed(format!(
                "no majority of the {} members of epoch {} could vote: {}",
                self.voters.len(),
                self.epoch - 1,
                why.join("; ")
            ));
        }
        RoundStep::Wait
    }

    /// A voter's answer (`Err`: it could not be reached).
    pub fn on_vote(&mut self, from: NodeId, vote: Result<Vote, String>) -> RoundStep {
        if !self.voters.contains(&from) {
            return RoundStep::Wait;
        }
        match vote {
            Ok(Vote::Promise(prior)) if self.value.is_none() => {
                self.promised.insert(from);
                if let Some((b, l)) = prior
                    && self.prior.as_ref().is_none_or(|p| b > p.0)
                {
                    self.prior = Some((b, l));
                }
                if self.promised.len() >= self.majority() {
                    let value = self.prior.as_ref().map_or_else(|| self.proposal.clone(), |p| p.1.clone());
                    self.value = Some(value.clone());
                    return RoundStep::Accept(value);
                }
                self.failed_if_hopeless(self.promised.len())
            }
            Ok(Vote::Accepted) if self.value.is_some() => {
                self.accepted.insert(from);
                if self.accepted.len() >= self.majority() {
                    return RoundStep::Chosen(self.value.clone().expect("accepting a value"));
                }
                self.failed_if_hopeless(self.accepted.len())
            }
            Ok(Vote::Outbid(b)) => RoundStep::Failed(format!(
                "node {from} promised a higher ballot {b:?} for epoch {}: another commit is running; try again",
                self.epoch
            )),
            Ok(Vote::Refused(e)) => {
                self.refused.insert(from, e);
                let got = if self.value.is_some() { self.accepted.len() } else { self.promised.len() };
                self.failed_if_hopeless(got)
            }
            Ok(_) => RoundStep::Wait,
            Err(e) => {
                self.refused.insert(from, e);
                let got = if self.value.is_some() { self.accepted.len() } else { self.promised.len() };
                self.failed_if_hopeless(got)
            }
        }
    }
}

/// One range a node fetches from one old home replica in a transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    /// Start of the range (exclusive).
    pub lo: u64,
    /// End (inclusive); `lo == hi`: the whole ring.
    pub hi: u64,
    /// The old home replica it is fetched from.
    pub from: NodeId,
    /// Where the next page starts (`None` and not done: at the start).
    pub cursor: Option<(u64, Vec<u8>)>,
    /// Every page is merged and durable.
    pub done: bool,
    /// Keys and bytes merged so far.
    pub keys: u64,
    /// Bytes of states merged so far.
    pub bytes: u64,
    /// Failed pages in a row (the next try waits longer).
    #[serde(default)]
    pub failures: u32,
    /// The last failure, in words.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl Transfer {
    /// Where `token` lies along the range, from 0 at its start.
    pub fn position(&self, token: u64) -> u64 {
        token.wrapping_sub(self.lo.wrapping_add(1))
    }

    /// Whether `token` is in the range.
    pub fn contains(&self, token: u64) -> bool {
        self.lo == self.hi || self.position(token) <= self.hi.wrapping_sub(self.lo.wrapping_add(1))
    }

    /// The fraction of the range's tokens passed (1.0 when done).
    pub fn fraction_done(&self) -> f64 {
        if self.done {
            return 1.0;
        }
        let Some((t, _)) = &self.cursor else { return 0.0 };
        let width = if self.lo == self.hi { u64::MAX } else { self.hi.wrapping_sub(self.lo) };
        (self.position(*t) as f64 / width as f64).clamp(0.0, 1.0)
    }

    /// What is left of `done` (this transfer's keys or bytes so far), estimated from the
    /// share of the range passed: 0 when done, `None` before the first page.
    pub fn left_of(&self, done: u64) -> Option<f64> {
        let f = self.fraction_done();
        if self.done {
            Some(0.0)
        } else if f > 0.0 {
            Some(done as f64 * (1.0 - f) / f)
        } else {
            None
        }
    }
}

/// The transfers of one node for the newest epoch's transition.
pub fn transfers_for(cluster: &Cluster, me: NodeId) -> Result<Vec<Transfer>, LayoutError> {
    let mut out = vec![];
    for m in cluster.gains(me)? {
        for &from in &m.from {
            out.push(Transfer {
                lo: m.lo,
                hi: m.hi,
                from,
                cursor: None,
                done: false,
                keys: 0,
                bytes: 0,
                failures: 0,
                last_error: None,
            });
        }
    }
    Ok(out)
}

/// What `qkv cluster` shows: a node's layouts, its staged changes and their plan,
/// the step of the transition, and its transfers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The answering node.
    pub node: NodeId,
    /// Its layouts and the progress of the change.
    pub cluster: Cluster,
    /// The step of the transition.
    pub phase: Phase,
    /// Changes staged on this node.
    pub staged: Vec<crate::layout::Change>,
    /// The plan of the staged changes, if any.
    pub plan: Option<Plan>,
    /// This node's transfers in the transition, with their rate (bytes/s).
    pub transfers: Vec<(Transfer, f64)>,
    /// Keys dropped since start from ranges this node no longer holds.
    pub dropped_keys: u64,
}

impl ClusterInfo {
    /// Encode for the wire.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("cluster info encodes")
    }

    /// Decode from the wire.
    pub fn decode(bytes: &[u8]) -> Result<ClusterInfo, String> {
        if bytes.len() > 4 * ENCODED_BYTES_MAX {
            return Err(format!("cluster info of {} bytes is too large", bytes.len()));
        }
        rmp_serde::from_slice(bytes).map_err(|e| format!("decoding cluster info: {e}"))
    }
}

/// Encode a vote for the wire.
pub fn encode_vote(v: &Vote) -> Vec<u8> {
    rmp_serde::to_vec(v).expect("a vote encodes")
}

/// Decode a vote from a peer.
pub fn decode_vote(bytes: &[u8]) -> Result<Vote, String> {
    if bytes.len() > ENCODED_BYTES_MAX {
        return Err("a vote is too large".into());
    }
    rmp_serde::from_slice(bytes).map_err(|e| format!("decoding a vote: {e}"))
}

/// Encode a layout for the wire.
pub fn encode_layout(l: &Layout) -> Vec<u8> {
    rmp_serde::to_vec(l).expect("a layout encodes")
}

/// Decode and check a layout from a peer.
pub fn decode_layout(bytes: &[u8]) -> Result<Layout, String> {
    if bytes.len() > ENCODED_BYTES_MAX {
        return Err("a layout is too large".into());
    }
    let l: Layout = rmp_serde::from_slice(bytes).map_err(|e| format!("decoding a layout: {e}"))?;
    l.check().map_err(|e| e.to_string())?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Change;

    fn seeds(n: NodeId) -> Vec<(NodeId, String)> {
        (1..=n).map(|i| (i, format!("10.0.0.{i}:7000"))).collect()
    }

    fn three() -> Cluster {
        Cluster::new(Layout::initial(&seeds(3), 64, 3).unwrap())
    }

    #[test]
    fn a_transition_goes_through_its_steps_and_retires() {
        let mut c = three();
        let next = c.newest().apply(&Change::Join { id: 4, addr: "10.0.0.4:7000".into() }).unwrap();
        c.begin(next).unwrap();
        assert_eq!(c.participants(), [1, 2, 3, 4].into());
        assert_eq!(c.phase(), Phase::Acking);
        for id in 1..=4 {
            c.raise(id, Progress { acked: 2, ..Default::default() });
        }
        assert_eq!(c.phase(), Phase::Syncing);
        assert!(!c.gains(4).unwrap().is_empty(), "the new node gains ranges");
        for id in 1..=4 {
            c.raise(id, Progress { acked: 2, synced: 2, ..Default::default() });
        }
        assert_eq!(c.phase(), Phase::Switching);
        assert!(!c.retire_if_done());
        for id in 1..=4 {
            c.raise(id, Progress { acked: 2, synced: 2, reading: 2, dropped: 0 });
        }
        assert_eq!(c.phase(), Phase::Dropping);
        assert!(!c.retire_if_done(), "old owners still hold what they lost");
        for id in 1..=3 {
            c.raise(id, Progress { acked: 2, synced: 2, reading: 2, dropped: 2 });
        }
        assert!(!c.retire_if_done(), "node 4 has not said it dropped");
        c.raise(4, Progress { acked: 2, synced: 2, reading: 2, dropped: 2 });
        assert!(c.retire_if_done());
        assert_eq!(c.phase(), Phase::Stable);
        assert_eq!(c.epoch(), 2);
        assert!(c.progress.is_empty());
    }

    #[test]
    fn a_forgotten_participant_no_longer_holds_the_transition_and_the_forget_spreads() {
        let mut c = three();
        let next = c.newest().apply(&Change::Join { id: 4, addr: "10.0.0.4:7000".into() }).unwrap();
        c.begin(next).unwrap();
        let all = Progress { acked: 2, synced: 2, reading: 2, dropped: 2 };
        for id in [1, 2, 4] {
            c.raise(id, Progress { acked: 2, ..Default::default() });
        }
        c.raise(3, Progress { acked: 2, ..Default::default() });
        assert_eq!(c.phase(), Phase::Syncing);
        // Node 3 dies for good before it syncs: the transition waits for it.
        let mut other = c.clone();
        for id in [1, 2, 4] {
            c.raise(id, all);
        }
        assert!(!c.retire_if_done(), "node 3 has not dropped");
        assert_eq!(c.phase(), Phase::Syncing);
        assert_eq!(c.forget(9), Err("node 9 is not a member of epoch 2".into()));
        assert_eq!(c.forget(3), Ok(true));
        assert_eq!(c.forget(3), Ok(false), "a forget again changes nothing");
        assert!(!c.participants().contains(&3));
        assert!(!c.progress.contains_key(&3), "its progress goes with it");
        assert!(!c.raise(3, all), "a forgotten node raises nothing");
        assert_eq!(c.live_members(), [1, 2, 4].into());
        c.check().unwrap();
        // It survives the disk and the wire.
        assert_eq!(Cluster::decode(&c.encode()).unwrap(), c);
        // A node that did not hear of the forget learns it with the rest.
        assert!(other.adopt(c.clone()).unwrap());
        assert!(other.is_lost(3));
        assert!(c.retire_if_done(), "nothing waits for node 3 any more");
        assert_eq!(c.lost, [3].into(), "still a member of epoch 2: still forgotten");
        // A newer epoch from a node that never heard of it keeps the forget here.
        let mut fresh = Cluster::new(c.newest().clone());
        assert!(!fresh.is_lost(3));
        assert!(!fresh.merge_lost_ids(1, &[3]), "a ping of another epoch names other incarnations");
        assert!(fresh.merge_lost_ids(2, &[3, 77]), "ids that are no members are passed over");
        assert_eq!(fresh.lost, [3].into());
        let before_replace = c.clone();
        // Once a replace takes node 3 out, it is no longer kept.
        let replaced = c.newest().apply(&Change::Replace { old: 3, new: 5, addr: "10.0.0.5:7000".into() }).unwrap();
        c.begin(replaced).unwrap();
        assert!(c.is_lost(3), "a member of the layout being left");
        for id in [1, 2, 4, 5] {
            c.raise(id, all);
            c.raise(id, Progress { acked: 3, synced: 3, reading: 3, dropped: 3 });
        }
        assert!(c.retire_if_done());
        assert!(c.lost.is_empty());
        // Node 3 comes back wiped and joins again under its old id: no older copy's
        // forget, by layout or by ping, takes the new incarnation.
        let rejoin = c.newest().apply(&Change::Join { id: 3, addr: "10.0.0.3:7000".into() }).unwrap();
        c.begin(rejoin).unwrap();
        assert_eq!(c.epoch(), 4);
        assert_eq!(c.adopt(before_replace.clone()), Ok(false));
        assert!(!c.merge_lost_ids(2, &[3]));
        assert!(!c.is_lost(3));
        let mut stale = before_replace.clone();
        assert!(stale.adopt(c.clone()).unwrap());
        assert!(!stale.is_lost(3), "a forget is not carried over two epochs");
        // Nor one epoch, for an id the newest layout had already taken out.
        let mut leaving = before_replace.clone();
        let out = leaving.newest().apply(&Change::Leave { id: 3 }).unwrap();
        leaving.begin(out.clone()).unwrap();
        assert!(leaving.is_lost(3), "a member of the layout being left");
        let mut back = Cluster::new(out);
        back.begin(back.newest().apply(&Change::Join { id: 3, addr: "10.0.0.3:7000".into() }).unwrap()).unwrap();
        assert!(leaving.adopt(back).unwrap());
        assert!(!leaving.is_lost(3));
        // Never every member, and never a forgotten non-member from a peer.
        let mut two = Cluster::new(Layout::initial(&seeds(2), 64, 2).unwrap());
        assert_eq!(two.forget(1), Ok(true));
        assert_eq!(two.forget(1), Ok(false), "a forget again is no error, even with one member left");
        assert_eq!(two.forget(2), Err("node 2 is the last member of epoch 1 not forgotten".into()));
        assert!(!two.merge_lost_ids(1, &[2]), "nor does a peer's word take it");
        assert_eq!(two.live_members(), [2].into());
        // A member of the layout being left alone is not enough: once it retires, the
        // cluster would have no member to go on with.
        let mut shrink = Cluster::new(Layout::initial(&seeds(2), 64, 1).unwrap());
        shrink.begin(shrink.newest().apply(&Change::Leave { id: 1 }).unwrap()).unwrap();
        assert_eq!(shrink.forget(2), Err("node 2 is the last member of epoch 2 not forgotten".into()));
        assert!(!shrink.merge_lost_ids(2, &[2]), "nor by a peer's word");
        assert_eq!(shrink.forget(1), Ok(true), "the leaving node may go");
        shrink.check().unwrap();
        let mut bad = shrink.clone();
        bad.lost.insert(2);
        assert!(Cluster::decode(&bad.encode()).is_err(), "a stored cluster with no live newest member");
        // As an earlier release could store it: on this node's own disk, it is mended.
        let mended = Cluster::decode_stored(&bad.encode(), 1).unwrap();
        assert_eq!(mended.lost, [1].into());
        let mut all = Cluster::new(Layout::initial(&seeds(3), 64, 1).unwrap());
        all.lost = [1, 2, 3].into();
        assert_eq!(
            Cluster::decode_stored(&all.encode(), 2).unwrap().lost,
            [1, 3].into(),
            "the node itself, which runs"
        );
        assert_eq!(Cluster::decode_stored(&all.encode(), 9).unwrap().lost, [2, 3].into(), "else the lowest");
        let mut bad = three();
        bad.lost.insert(9);
        assert!(Cluster::decode(&bad.encode()).is_err());
        // A cluster stored with no forgotten node encodes as before.
        let plain = three();
        #[derive(Serialize)]
        struct Before {
            versions: Vec<Layout>,
            progress: BTreeMap<NodeId, Progress>,
        }
        let before = Before { versions: plain.versions.clone(), progress: plain.progress.clone() };
        assert_eq!(rmp_serde::to_vec(&before).unwrap(), plain.encode());
    }

    #[test]
    fn a_cluster_stored_before_the_drop_step_decodes() {
        #[derive(Serialize)]
        struct Before {
            acked: u64,
            synced: u64,
            reading: u64,
        }
        #[derive(Serialize)]
        struct Stored {
            versions: Vec<Layout>,
            progress: BTreeMap<NodeId, Before>,
        }
        let mut c = three();
        let next = c.newest().apply(&Change::Join { id: 4, addr: "10.0.0.4:7000".into() }).unwrap();
        c.begin(next).unwrap();
        let stored =
            Stored { versions: c.versions.clone(), progress: [(1, Before { acked: 2, synced: 2, reading: 2 })].into() };
        let back = Cluster::decode(&rmp_serde::to_vec(&stored).unwrap()).unwrap();
        assert_eq!(back.progress_of(1), Progress { acked: 2, synced: 2, reading: 2, dropped: 0 });
    }

    #[test]
    fn a_replaced_node_is_not_waited_for_nor_fetched_from() {
        let mut c = three();
        let next = c.newest().apply(&Change::Replace { old: 2, new: 5, addr: "10.0.0.5:7000".into() }).unwrap();
        c.begin(next).unwrap();
        assert_eq!(c.participants(), [1, 3, 5].into());
        assert!(!c.raise(2, Progress { acked: 2, synced: 2, reading: 2, dropped: 2 }), "not a participant");
        let gains = c.gains(5).unwrap();
        assert!(!gains.is_empty());
        assert!(gains.iter().all(|m| !m.from.contains(&2) && !m.from.is_empty()));
    }

    #[test]
    fn progress_is_clamped_and_only_for_the_newest_epoch() {
        let mut c = three();
        let next = c.newest().apply(&Change::Leave { id: 3 }).unwrap_err();
        assert!(matches!(next, LayoutError::TooFewNodes { .. }));
        let next = c.newest().apply(&Change::Join { id: 4, addr: "a:1".into() }).unwrap();
        c.begin(next).unwrap();
        assert!(!c.merge_progress(7, &[(1, Progress { acked: 7, synced: 7, reading: 7, dropped: 7 })]));
        assert!(c.merge_progress(2, &[(1, Progress { acked: 99, dropped: 99, ..Default::default() })]));
        assert_eq!(c.progress_of(1).acked, 2, "clamped to the epoch");
        assert_eq!(c.progress_of(1).dropped, 2, "clamped to the epoch");
        assert!(!c.merge_progress(2, &[(9, Progress::default())]), "a stranger's progress is ignored");
    }

    #[test]
    fn adopt_takes_newer_and_refuses_broken_copies() {
        let mut a = three();
        let mut b = a.clone();
        let next = b.newest().apply(&Change::Join { id: 4, addr: "a:1".into() }).unwrap();
        b.begin(next).unwrap();
        assert!(a.adopt(b.clone()).unwrap());
        assert_eq!(a, b);
        assert!(!a.adopt(three()).unwrap(), "an older copy changes nothing");
        let mut broken = b.clone();
        broken.versions[1].epoch = 9;
        assert!(a.adopt(broken).is_err());
        let mut bad = b.clone();
        bad.progress.insert(77, Progress::default());
        assert!(Cluster::decode(&bad.encode()).is_err());
        assert!(Cluster::decode(b"\xff\x00garbage").is_err());
        assert_eq!(Cluster::decode(&b.encode()).unwrap(), b);
        // A retired copy of the same epoch retires this one.
        let mut retired = b.clone();
        retired.versions.remove(0);
        retired.progress.clear();
        assert!(a.adopt(retired).unwrap());
        assert_eq!(a.phase(), Phase::Stable);
    }

    #[test]
    fn one_layout_per_epoch_whatever_the_order_of_votes() {
        let c = three();
        let join4 = c.newest().apply(&Change::Join { id: 4, addr: "a:4".into() }).unwrap();
        let join5 = c.newest().apply(&Change::Join { id: 5, addr: "a:5".into() }).unwrap();
        let mut acc: BTreeMap<NodeId, Acceptor> = (1..=3).map(|i| (i, Acceptor::default())).collect();
        // Proposer 1 gets promises from 1 and 2 and an accept from 1 only.
        let mut r1 = Round::new(&c, 1, join4.clone(), (0, 0));
        for v in [1, 2] {
            let vote = acc.get_mut(&v).unwrap().prepare(&c, v, 2, r1.ballot);
            if let RoundStep::Accept(l) = r1.on_vote(v, Ok(vote)) {
                assert_eq!(l, join4);
            }
        }
        let vote = acc.get_mut(&1).unwrap().accept(&c, 1, 2, r1.ballot, join4.clone());
        assert_eq!(r1.on_vote(1, Ok(vote)), RoundStep::Wait);
        // Proposer 3, with a higher ballot, asks 1 and 3: it must propose join4.
        let mut r3 = Round::new(&c, 3, join5.clone(), r1.ballot);
        let mut step = RoundStep::Wait;
        for v in [3, 1] {
            let vote = acc.get_mut(&v).unwrap().prepare(&c, v, 2, r3.ballot);
            step = r3.on_vote(v, Ok(vote));
        }
        assert_eq!(step, RoundStep::Accept(join4.clone()), "the accepted layout wins");
        // Proposer 1's late accept is refused where proposer 3 was promised.
        let vote = acc.get_mut(&3).unwrap().accept(&c, 3, 2, r1.ballot, join4.clone());
        assert!(matches!(vote, Vote::Outbid(_)), "node 3 promised proposer 3");
        for v in [3, 1] {
            let vote = acc.get_mut(&v).unwrap().accept(&c, v, 2, r3.ballot, join4.clone());
            step = r3.on_vote(v, Ok(vote));
        }
        assert_eq!(step, RoundStep::Chosen(join4));
    }

    #[test]
    fn acceptors_refuse_what_they_cannot_vote_for() {
        let c = three();
        let mut a = Acceptor::default();
        assert!(matches!(a.prepare(&c, 1, 1, (1, 1)), Vote::Refused(_)), "epoch 1 is committed");
        assert!(matches!(a.prepare(&c, 1, 3, (1, 1)), Vote::Refused(_)), "behind");
        assert!(matches!(a.prepare(&c, 9, 2, (1, 1)), Vote::Refused(_)), "not a member");
        let mut bad = c.newest().apply(&Change::Join { id: 4, addr: "a:4".into() }).unwrap();
        bad.n = 2;
        assert!(matches!(a.accept(&c, 1, 2, (1, 1), bad), Vote::Refused(_)), "N changes");
        assert_eq!(a.prepare(&c, 1, 2, (2, 1)), Vote::Promise(None));
        assert_eq!(a.prepare(&c, 1, 2, (2, 1)), Vote::Promise(None), "a resent prepare gets the same answer");
        assert_eq!(a.prepare(&c, 1, 2, (1, 3)), Vote::Outbid((2, 1)));
        assert_eq!(Acceptor::decode(&a.encode()).unwrap(), a);
        // Numbers at the top of the range (a peer's, or a damaged disk's) are refused, not overflowed.
        assert!(matches!(a.prepare(&c, 1, 2, (u64::MAX, 2)), Vote::Refused(_)), "ballot past EPOCH_MAX");
        assert!(matches!(a.prepare(&c, 1, u64::MAX, (3, 1)), Vote::Refused(_)), "epoch far ahead");
        let mut far = c.newest().clone();
        far.epoch = u64::MAX;
        assert!(Cluster::new(far).check().is_err(), "a layout epoch past EPOCH_MAX");
        let forged = Acceptor { epoch: 2, promised: (u64::MAX, 1), accepted: None };
        assert!(Acceptor::decode(&forged.encode()).is_err());
        let top = Round::new(&c, 1, c.newest().clone(), (EPOCH_MAX, 3));
        assert_eq!(top.ballot, (EPOCH_MAX + 1, 1), "the next ballot above the largest taken");
    }

    #[test]
    fn a_round_without_a_majority_fails_with_why() {
        let c = three();
        let join4 = c.newest().apply(&Change::Join { id: 4, addr: "a:4".into() }).unwrap();
        let mut r = Round::new(&c, 1, join4, (0, 0));
        assert_eq!(r.on_vote(2, Err("unreachable".into())), RoundStep::Wait);
        assert!(matches!(r.on_vote(3, Err("unreachable".into())), RoundStep::Failed(_)));
    }
}
