//! Hinted handoff: push held hints to their owners when they are up, in paced
//! batches; delete a hint only once its owner acknowledged it durably, and only
//! if it did not change while the batch was in flight.

use qkv_proto::{Error, KeyState, Request, Response};

use super::{Core, HANDOFF_TIMEOUT_MS, Op, OpId, Store};
use crate::hints::hint_bytes;

impl<S: Store> Core<S> {
    pub(super) fn handoff_round(&mut self) {
        for owner in self.hints.ready_owners() {
            if !self.is_up(owner) {
                continue;
            }
            let keys = self.hints.next_batch(owner, self.now_ms);
            let mut items = vec![];
            for key in keys {
                match self.store.get_hint(owner, &key) {
                    Ok(Some(h)) => items.push((key, h.set)),
                    // Gone from the store: forget it here too.
                    Ok(None) => self.hints.remove(owner, &key),
                    Err(e) => tracing::warn!(owner, "reading a hint: {e}"),
                }
            }
            if items.is_empty() {
                self.hints.batch_done(owner, 0, 0, self.now_ms);
                continue;
            }
            let batch = items.iter().map(|(key, set)| KeyState { key: key.clone(), set: set.clone() }).collect();
            let op = self.id();
            self.ops.insert(op, Op::Handoff { owner, items });
            self.send(op, owner, Request::ReplicaPutBatch { items: batch }, HANDOFF_TIMEOUT_MS);
        }
    }

    pub(super) fn handoff_response(&mut self, op_id: OpId, result: Result<Response, Error>) {
        let Some(Op::Handoff { owner, items }) = self.ops.remove(&op_id) else { return };
        let (mut delivered, mut bytes) = (0u64, 0u64);
        if matches!(result, Ok(Response::ReplicaAck)) {
            for (key, sent) in items {
                match self.store.get_hint(owner, &key) {
                    Ok(Some(h)) if h.set == sent => {
                        if let Err(e) = self.store.delete_hint(owner, &key) {
                            tracing::warn!(owner, "deleting a handed-off hint: {e}");
                            continue;
                        }
                        self.hints.remove(owner, &key);
                        delivered += 1;
                        bytes += hint_bytes(&key, sent.value_bytes());
                    }
                    // Changed in flight: the newer hint goes in a later batch.
                    _ => {}
                }
            }
        } else if let Err(e) | Ok(Response::Error(e)) = result {
            tracing::debug!(owner, "handoff batch failed: {e}");
        }
        self.hints.batch_done(owner, delivered, bytes, self.now_ms);
    }
}
