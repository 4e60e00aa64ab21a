//! Token-aware routing: the client learns the cluster's layout from the nodes,
//! places each key on the ring as they do, and sends a write to a home replica of
//! the key (which coordinates it, with no forward) and a read to one of its home
//! replicas (which answers an R = one read from its own copy). It follows layout
//! changes: the layout is fetched again every [`REFRESH`], and soon after a write
//! was coordinated by another node than the one it went to.
//!
//! Routing only picks the order nodes are tried in: a stale layout costs a forward
//! or a remote read, never a wrong answer (the nodes place keys themselves).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use qkv_core::Ring;
use qkv_core::membership::ClusterInfo;
use qkv_proto::NodeId;

/// How often the layout is fetched again.
pub const REFRESH: Duration = Duration::from_secs(10);
/// The soonest a fetch follows another (after a write was forwarded).
pub const REFRESH_MIN: Duration = Duration::from_secs(1);

/// The ring of a layout, with each member's address.
pub(crate) struct RingView {
    /// The layout's epoch.
    pub(crate) epoch: u64,
    ring: Ring,
    addrs: HashMap<NodeId, SocketAddr>,
}

impl RingView {
    /// The ring of the newest layout of `info`, and the members' addresses (those that
    /// are `ip:port`; members named otherwise are left out, and reached through the
    /// configured nodes). Forgotten members are left out.
    pub(crate) fn from_info(info: &ClusterInfo) -> Result<RingView, String> {
        let cluster = &info.cluster;
        let ring = cluster.newest().checked_ring().map_err(|e| e.to_string())?;
        let addrs = cluster
            .members()
            .into_iter()
            .filter(|&id| !cluster.is_lost(id))
            .filter_map(|id| cluster.addr(id).and_then(|a| a.parse().ok()).map(|a| (id, a)))
            .collect();
        Ok(RingView { epoch: cluster.epoch(), ring, addrs })
    }

    /// The addresses of `key`'s home replicas, in preference order.
    pub(crate) fn homes(&self, key: &[u8]) -> Vec<SocketAddr> {
        self.ring.preference_list(key).iter().filter_map(|id| self.addrs.get(id).copied()).collect()
    }

    /// The ring's preference lists with the share of keys on each.
    pub(crate) fn shares(&self) -> Vec<(Vec<NodeId>, f64)> {
        self.ring.preference_shares()
    }

    /// The address of node `id`.
    pub(crate) fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.addrs.get(&id).copied()
    }
}

/// What the client knows of the ring, and when to look again.
pub(crate) struct Routing {
    pub(crate) view: Option<Arc<RingView>>,
    /// When the next fetch is due.
    pub(crate) due: Instant,
    /// A fetch is running.
    pub(crate) fetching: bool,
}

impl Routing {
    pub(crate) fn new() -> Routing {
        Routing { view: None, due: Instant::now(), fetching: false }
    }

    /// Whether a fetch should start now (and mark it started).
    pub(crate) fn start_fetch(&mut self) -> bool {
        if self.fetching || Instant::now() < self.due {
            return false;
        }
        self.fetching = true;
        true
    }

    /// A fetch ended (with a view, or not). A view older than the one held (from a
    /// node that has not heard of the newest layout yet) is not taken.
    pub(crate) fn fetched(&mut self, view: Option<RingView>) {
        self.fetching = false;
        match view {
            Some(v) if self.view.as_ref().is_none_or(|old| v.epoch >= old.epoch) => {
                self.view = Some(Arc::new(v));
                self.due = Instant::now() + REFRESH;
            }
            // No answer, or an older layout (from a node behind): ask again soon.
            _ => self.due = Instant::now() + REFRESH_MIN,
        }
    }

    /// Look again soon: the view looks stale.
    pub(crate) fn stale(&mut self) {
        self.due = self.due.min(Instant::now() + REFRESH_MIN);
    }
}

/// A retry budget for hedged reads, in the manner of Finagle's and
/// scylla-rust-driver's: every read deposits `percent` hundredths of a hedge, a hedge
/// withdraws a whole one, and at most [`HEDGE_TOKENS_MAX`] are saved, so hedges add
/// at most `percent` % to the reads sent (plus a burst of the saved ones), even when
/// every replica is slow.
pub(crate) struct Budget {
    /// Hundredths of a hedge.
    cents: AtomicU64,
    percent: u64,
}

/// Hedges a budget saves up, at most.
pub const HEDGE_TOKENS_MAX: u64 = 10;

impl Budget {
    pub(crate) fn new(percent: u32) -> Budget {
        Budget { cents: AtomicU64::new(0), percent: u64::from(percent) }
    }

    /// A read was sent.
    pub(crate) fn deposit(&self) {
        let _ = self.cents.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
            Some((c + self.percent).min(HEDGE_TOKENS_MAX * 100))
        });
    }

    /// Take a hedge, if the budget has one.
    pub(crate) fn withdraw(&self) -> bool {
        self.cents.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(100)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_share_of_hedges_and_saves_a_few() {
        let b = Budget::new(10);
        assert!(!b.withdraw(), "nothing saved yet");
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw(), "ten reads pay for one hedge at 10 %");
        assert!(!b.withdraw());
        for _ in 0..10_000 {
            b.deposit();
        }
        let taken = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(taken as u64, HEDGE_TOKENS_MAX, "at most this many saved");
    }

    #[test]
    fn a_fetch_runs_one_at_a_time_and_a_stale_view_is_fetched_soon() {
        let mut r = Routing::new();
        assert!(r.start_fetch());
        assert!(!r.start_fetch(), "one at a time");
        r.fetched(None);
        assert!(!r.start_fetch(), "not at once after a failed fetch");
        assert!(r.due <= Instant::now() + REFRESH_MIN, "but soon");
        r.stale();
        assert!(r.due <= Instant::now() + REFRESH_MIN);
    }
}
