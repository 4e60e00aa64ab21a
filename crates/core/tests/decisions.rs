//! Placement and quorum decisions replayed from text files (raft-rs `testdata/`
//! style, with the `datadriven` crate): `crates/core/testdata/*.txt`.
//!
//! Each case is a directive line, the expected output after `----`, and (for the
//! state machines) one event per input line. To add a case, write its directive
//! and run `REWRITE=1 cargo test -p qkv-core --test decisions`, then read the
//! output it filled in; `RUN=quorum.txt` runs one file.
//!
//! Directives (node lists are `(1,2,3)`; `down=(…)` nodes are down, all others up):
//! - `route pref=(…) me=N [forwarded] [down=(…)]`: who coordinates a write.
//! - `write walk=(…) n=N me=N w=LEVEL [strict] [down=(…)]`: whether a write can be
//!   tried, and the replicas and stand-ins it is sent to.
//! - `read walk=(…) n=N r=LEVEL [strict] [down=(…)]`: the replicas a read asks.
//! - `put targets=(…) me=N needed=K`, then events `ack N`, `fail N`, `standin N`
//!   (a stand-in added, as a sloppy write does just before it counts the failure
//!   of the replica it replaces), `timeout`: the write's outcome after each.
//! - `get targets=(…) needed=K`, then events `reply N`, `fail N`, `timeout`.
//! - `tally needed=K acked=A failed=F total=T`: the pure decision under both.
//! - `joint needed=K old=(…) new=(…)`, then events `ack N`, `fail N`: a request
//!   that needs K of each of two replica sets (a range moving between owners).

use std::fmt::Write as _;

use datadriven::TestCase;
use qkv_core::get::GetAction;
use qkv_core::placement::{read_targets, write_alive, write_targets};
use qkv_core::quorum::{joint_tally, tally};
use qkv_core::route::{WriteRoute, check_available, route_write};
use qkv_core::{GetOp, PutOp};
use qkv_proto::{Error, Level, NodeId};

const TIMEOUT_MS: u64 = 1000;

fn nodes(tc: &mut TestCase, arg: &str) -> Vec<NodeId> {
    tc.try_take_args(arg).unwrap_or_else(|e| panic!("{arg}: {e}")).unwrap_or_default()
}

fn level(tc: &mut TestCase, arg: &str) -> Level {
    let text: String = tc.take_arg(arg).unwrap_or_else(|e| panic!("{arg}: {e}"));
    text.parse().unwrap_or_else(|e| panic!("{arg}: {e}"))
}

fn number(tc: &mut TestCase, arg: &str) -> usize {
    tc.take_arg(arg).unwrap_or_else(|e| panic!("{arg}: {e}"))
}

fn list(ids: &[NodeId]) -> String {
    if ids.is_empty() { "-".into() } else { ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ") }
}

fn outcome(r: &Result<Vec<NodeId>, Error>) -> String {
    match r {
        Ok(acked) => format!("won: acked by {}", list(acked)),
        Err(e) => format!("lost: {e}"),
    }
}

fn route(tc: &mut TestCase) -> String {
    let pref = nodes(tc, "pref");
    let down = nodes(tc, "down");
    let me = number(tc, "me") as NodeId;
    let forwarded = tc.take_flag("forwarded").unwrap();
    match route_write(&pref, me, forwarded, |id| !down.contains(&id)) {
        Ok(WriteRoute::Local) => "local: this node coordinates\n".into(),
        Ok(WriteRoute::Forward(to)) => format!("forward to {to}\n"),
        Err(e) => format!("error: {e}\n"),
    }
}

fn write(tc: &mut TestCase) -> String {
    let walk = nodes(tc, "walk");
    let down = nodes(tc, "down");
    let n = number(tc, "n");
    let me = number(tc, "me") as NodeId;
    let w = level(tc, "w");
    let strict = tc.take_flag("strict").unwrap();
    let up = |id: NodeId| !down.contains(&id);
    let alive = write_alive(&walk, n, strict, up);
    let needed = match check_available(w, n, alive) {
        Ok(k) => k,
        Err(e) => return format!("refused: {e}\n"),
    };
    let t = write_targets(&walk, n, me, strict, up);
    let mut out = format!("can take it: {alive}, needs {needed}\ntargets: {}\n", list(&t.targets));
    for (standin, owner) in &t.owners {
        writeln!(out, "stand-in {standin} holds a hint for {owner}").unwrap();
    }
    writeln!(out, "spare: {}", list(&t.spare.iter().copied().collect::<Vec<_>>())).unwrap();
    out
}

fn read(tc: &mut TestCase) -> String {
    let walk = nodes(tc, "walk");
    let down = nodes(tc, "down");
    let n = number(tc, "n");
    let r = level(tc, "r");
    let strict = tc.take_flag("strict").unwrap();
    let (targets, alive) = read_targets(&walk, n, strict, |id| !down.contains(&id));
    match check_available(r, n, alive) {
        Ok(needed) => format!("asks: {} ({alive} up), needs {needed}\n", list(&targets)),
        Err(e) => format!("refused: {e}\n"),
    }
}

fn event(line: &str) -> (&str, Option<NodeId>) {
    let mut words = line.split_whitespace();
    let what = words.next().unwrap_or_default();
    (what, words.next().map(|n| n.parse().unwrap_or_else(|_| panic!("`{line}`: not a node id"))))
}

fn put(tc: &mut TestCase) -> String {
    let targets = nodes(tc, "targets");
    let me = number(tc, "me") as NodeId;
    let needed = number(tc, "needed");
    let mut op = PutOp::new(me, targets, needed, 0, TIMEOUT_MS);
    let mut out = String::new();
    let mut decided = false;
    let mut show = |out: &mut String, what: &str, r: Option<Result<Vec<NodeId>, Error>>| {
        let said = match &r {
            Some(r) => outcome(r),
            None if decided => "already decided".into(),
            None => "pending".into(),
        };
        decided |= r.is_some();
        writeln!(out, "{what}: {said}").unwrap();
    };
    show(&mut out, "start (the coordinator's own write)", op.poll());
    for line in tc.input.lines().filter(|l| !l.trim().is_empty()) {
        let r = match event(line) {
            ("ack", Some(n)) => op.on_ack(n),
            ("fail", Some(n)) => op.on_failure(n, Error::Unreachable(format!("node {n} is down"))),
            ("standin", Some(n)) => {
                op.add_target(n);
                None
            }
            ("timeout", None) => op.on_timeout(TIMEOUT_MS),
            _ => panic!("unknown event `{line}`"),
        };
        show(&mut out, line.trim(), r);
    }
    out
}

fn get(tc: &mut TestCase) -> String {
    let targets = nodes(tc, "targets");
    let needed = number(tc, "needed");
    let check = tc.args.remove("checked").is_some();
    let mut op = GetOp::new(b"k", targets, needed, 0, TIMEOUT_MS, check);
    let say = |actions: &[GetAction]| -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                GetAction::Reply(Ok(a)) => format!("answered from {} replies", a.replied),
                GetAction::Reply(Err(e)) => format!("lost: {e}"),
                GetAction::Ask { to } => format!("ask {to}"),
                GetAction::AskDigest { to } => format!("ask {to} for a digest"),
                GetAction::Repair { to, .. } => format!("repair {to}"),
            })
            .collect()
    };
    let mut out = format!("start: {}\n", say(&op.start(0)).join("; "));
    let mut answered = false;
    for line in tc.input.lines().filter(|l| !l.trim().is_empty()) {
        let actions = match event(line) {
            ("reply", Some(n)) => op.on_reply(n, None),
            ("digest", Some(n)) => op.on_digest(n, 7),
            ("fail", Some(n)) => op.on_failure(n, Error::Unreachable(format!("node {n} is down"))),
            ("hedge", None) => op.on_timeout(qkv_core::get::hedge_ms(TIMEOUT_MS)),
            ("timeout", None) => op.on_timeout(TIMEOUT_MS),
            _ => panic!("unknown event `{line}`"),
        };
        let said = say(&actions);
        let said = match (said.is_empty(), answered) {
            (false, _) => said.join("; "),
            (true, true) => "already answered".to_string(),
            (true, false) => "pending".to_string(),
        };
        answered |= actions.iter().any(|a| matches!(a, GetAction::Reply(_)));
        let finished = if op.is_finished() { " (finished)" } else { "" };
        writeln!(out, "{}: {said}{finished}", line.trim()).unwrap();
    }
    out
}

fn tally_case(tc: &mut TestCase) -> String {
    let (needed, acked, failed, total) =
        (number(tc, "needed"), number(tc, "acked"), number(tc, "failed"), number(tc, "total"));
    format!("{:?}\n", tally(needed, acked, failed, total)).to_lowercase()
}

fn joint(tc: &mut TestCase) -> String {
    let needed = number(tc, "needed");
    let (old, new) = (nodes(tc, "old"), nodes(tc, "new"));
    let (mut acked, mut failed) = (vec![], vec![]);
    let mut out = format!("start: {:?}\n", joint_tally(needed, &old, &new, &acked, &failed)).to_lowercase();
    for line in tc.input.lines().filter(|l| !l.trim().is_empty()) {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["ack", id] => acked.push(id.parse().expect("a node id")),
            ["fail", id] => failed.push(id.parse().expect("a node id")),
            _ => panic!("unknown event `{line}`"),
        }
        let t = joint_tally(needed, &old, &new, &acked, &failed);
        writeln!(out, "{}: {}", line.trim(), format!("{t:?}").to_lowercase()).unwrap();
    }
    out
}

#[test]
fn decisions_replay_from_testdata() {
    datadriven::walk("testdata", |f| {
        f.run(|tc| {
            let out = match tc.directive.as_str() {
                "route" => route(tc),
                "write" => write(tc),
                "read" => read(tc),
                "put" => put(tc),
                "get" => get(tc),
                "tally" => tally_case(tc),
                "joint" => joint(tc),
                other => panic!("unknown directive `{other}`"),
            };
            tc.expect_empty().unwrap_or_else(|e| panic!("{}: {e}", tc.directive));
            out
        })
    });
}
