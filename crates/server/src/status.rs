//! The wire replies about a node, made here at the edge from what its core
//! reports ([`qkv_core::Report`]): `qkv status`, and a key's placement.

use qkv_core::Report;
use qkv_proto::{AaePair, AaeStatus, HintStatus, KeyLimitStatus, MemberStatus, OwnerHints, StatusReply};

/// The `Status` answer.
pub fn status_reply(r: &Report) -> StatusReply {
    let h = &r.hints;
    let a = &r.aae;
    StatusReply {
        node: r.node,
        n: r.n as u32,
        vnodes: r.vnodes,
        members: r
            .members
            .iter()
            .map(|m| MemberStatus { node: m.node, addr: m.addr.clone(), up: m.up, ownership: m.ownership })
            .collect(),
        read_repairs: r.stats.read_repairs,
        read_checks: r.stats.read_checks,
        read_checks_differed: r.stats.read_checks_differed,
        hints: HintStatus {
            count: h.count,
            bytes: h.bytes,
            refused: h.refused,
            handed_off: h.handed_off,
            redirected: h.redirected,
            expired: h.expired,
            bytes_max: h.limits.total_bytes_max,
            owner_bytes_max: h.limits.owner_bytes_max,
            owners: h
                .owners
                .iter()
                .map(|o| OwnerHints {
                    owner: o.owner,
                    owner_up: o.owner_up,
                    count: o.count,
                    bytes: o.bytes,
                    oldest_age_ms: o.oldest_age_ms,
                    rate_hints_per_s: o.rate_hints_per_s,
                    rate_bytes_per_s: o.rate_bytes_per_s,
                    drain_eta_ms: o.drain_eta_ms,
                })
                .collect(),
        },
        aae: AaeStatus {
            enabled: a.enabled,
            ranges_in_sync: a.ranges_in_sync,
            ranges_out_of_sync: a.ranges_out_of_sync,
            exchanges: a.exchanges,
            exchanges_failed: a.exchanges_failed,
            keys_repaired: a.keys_repaired,
            keys_exchanged: a.keys_exchanged,
            bytes_exchanged: a.bytes_exchanged,
            tombstones_pending: a.tombstones_pending,
            tombstones_purged: a.tombstones_purged,
            tombstones_index_incomplete: a.tombstones_index_incomplete,
            purge_records: a.purge_records,
            pairs: a
                .pairs
                .iter()
                .map(|p| AaePair {
                    range: p.range,
                    peer: p.peer,
                    last_exchange_ago_ms: p.last_exchange_ago_ms,
                    in_sync: p.in_sync,
                })
                .collect(),
        },
        key_limits: KeyLimitStatus {
            siblings_max: r.key_limits.key_siblings_max as u64,
            bytes_max: r.key_limits.key_state_bytes_max as u64,
            writes_refused: r.stats.key_writes_refused,
            merges_refused: r.stats.key_merges_refused,
        },
    }
}
