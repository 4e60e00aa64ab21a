//! The router's side of [`crate::lag`]: send the tracker's probes, report their answers.

use qkv_proto::{DvvSet, Error, Request, Response};

use super::{Core, Op, OpId, Store};

impl<S: Store> Core<S> {
    /// Ask missing replicas that are up whether they hold their writes yet.
    pub(super) fn lag_round(&mut self) {
        let detector = &self.detector;
        let probes = self.lag.probes(self.now_ms, |n| detector.is_up(n));
        let timeout_ms = self.cfg.request_timeout_ms;
        for (track, node, key) in probes {
            let op = self.id();
            self.ops.insert(op, Op::LagProbe { track, node });
            self.send(op, node, Request::ReplicaGet { key }, timeout_ms);
        }
    }

    pub(super) fn lag_probe_response(&mut self, op_id: OpId, result: Result<Response, Error>) {
        let Some(Op::LagProbe { track, node }) = self.ops.remove(&op_id) else { return };
        let state = match result {
            Ok(Response::ReplicaState(Some(s))) => Some(s),
            _ => None,
        };
        let covers = |dot| state.as_ref().is_some_and(|s| DvvSet::clock(s).covers(dot));
        self.lag.probed(track, node, covers, self.now_ms);
    }
}
