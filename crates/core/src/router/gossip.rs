//! Pings and the failure detector: every round, bump this node's heartbeat and
//! ping every peer with the heartbeats it knows; merge what comes back.

use qkv_proto::{Error, Heartbeat, LayoutView, NodeId, Request, Response};

use super::{Core, Op, OpId, Store};

impl<S: Store> Core<S> {
    pub(super) fn ping_round(&mut self) {
        self.detector.beat();
        let gossip = self.detector.gossip();
        let peers: Vec<NodeId> = self.members.cluster.members().into_iter().filter(|&m| m != self.cfg.me).collect();
        let timeout_ms = self.cfg.ping_interval_ms * 2;
        let view = self.layout_view();
        for to in peers {
            let op = self.id();
            self.ops.insert(op, Op::Ping { to });
            let req = Request::Ping { from: self.cfg.me, gossip: gossip.clone(), view: view.clone() };
            self.send(op, to, req, timeout_ms);
        }
        self.judge();
    }

    /// A peer's ping: take its gossip, answer with ours.
    pub(super) fn on_ping(&mut self, from: NodeId, gossip: &[Heartbeat], view: &LayoutView) -> Response {
        self.detector.merge(gossip, self.now_ms);
        self.judge();
        self.on_view(from, view);
        Response::Pong { from: self.cfg.me, gossip: self.detector.gossip(), view: self.layout_view() }
    }

    pub(super) fn ping_response(&mut self, op_id: OpId, result: Result<Response, Error>) {
        let Some(Op::Ping { to }) = self.ops.remove(&op_id) else { return };
        match result {
            Ok(Response::Pong { from, gossip, view }) if from == to => {
                self.detector.on_reachable(to);
                self.detector.merge(&gossip, self.now_ms);
                self.on_view(from, &view);
            }
            // A node too busy to take the ping answered it: it is up.
            Err(Error::Overloaded(_)) => self.detector.on_reachable(to),
            _ => self.detector.on_unreachable(to),
        }
        self.judge();
    }

    fn judge(&mut self) {
        for (peer, up) in self.detector.update(self.now_ms) {
            tracing::info!(peer, up, "peer liveness changed");
        }
    }
}
