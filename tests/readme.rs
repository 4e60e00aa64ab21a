//! The README's CLI session works exactly as printed: each `$ ` line is run by `sh`
//! against a fresh 3-node cluster and its output compared with the lines below it.
//!
//! Causal contexts are the one exception: they carry a MAC under the cluster's own
//! secret, so every cluster prints its own. A word that is a context token in both
//! the README and the output may differ. The session passes tokens on in shell
//! variables (`ctx=$(...)`), as a newcomer pasting it does: such a line prints
//! nothing, and its variable is set for the commands after it.

mod common;

use common::{Cluster, Opts};

#[tokio::test]
async fn the_readme_session_works_as_printed() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- session:").expect("session marker");
    let end = readme.find("<!-- end session -->").expect("end marker");
    let block = &readme[start..end];
    let body = &block[block.find("```console\n").unwrap() + 11..block.rfind("```").unwrap()];

    let mut steps: Vec<(String, Vec<String>)> = vec![];
    for line in body.lines() {
        match line.strip_prefix("$ ") {
            Some(cmd) => steps.push((cmd.to_string(), vec![])),
            None => steps.last_mut().expect("output before any command").1.push(line.to_string()),
        }
    }
    assert!(steps.len() >= 8, "the session has its commands");

    let c = Cluster::start(Opts::default()).await;
    let bin_dir = common::bin("qkv").parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut tokens: Vec<(String, String)> = vec![];
    let mut vars: Vec<(String, String)> = vec![];
    for (cmd, want) in steps {
        // The README's PATH line points at the release build; the test uses this build's binaries.
        if cmd.starts_with("export PATH=") {
            continue;
        }
        let mut cmd = cmd;
        for (readme, real) in &tokens {
            cmd = cmd.replace(readme.as_str(), real);
        }
        // `name=$(...)`: run it, keep what it printed as `$name` for later commands.
        let assign = cmd.split_once("=$(").filter(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_lowercase()));
        let script = match assign {
            Some((name, _)) => format!("{cmd}\nprintf %s \"${name}\""),
            // The newline keeps a trailing `# comment` in the command from swallowing the `}`.
            None => format!("{{ {cmd}\n}} 2>&1"),
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", &path)
            .env("QKV_CLIENT_CONFIG", c.dir.path().join("client.toml"))
            .output()
            .unwrap();
        if let Some((name, _)) = assign {
            let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(out.status.success() && is_token(&value), "README command `{cmd}` set no context: {out:?}");
            assert!(want.is_empty(), "`{cmd}` prints nothing");
            vars.push((name.to_string(), value));
            continue;
        }
        let got: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        let same = got.len() == want.len()
            && got.iter().zip(&want).all(|(g, w)| {
                let (gw, ww): (Vec<&str>, Vec<&str>) = (split(g), split(w));
                gw.len() == ww.len()
                    && gw.iter().zip(&ww).all(|(a, b)| {
                        a == b || {
                            let ok = is_token(a) && is_token(b);
                            if ok && !tokens.iter().any(|t| t.0 == *b) {
                                tokens.push((b.to_string(), a.to_string()));
                            }
                            ok
                        }
                    })
            });
        assert!(same, "README command `{cmd}`:\n got: {got:#?}\nwant: {want:#?}");
    }
}

/// Words, with JSON punctuation split off so a token inside a JSON line is a word too.
fn split(line: &str) -> Vec<&str> {
    line.split([' ', '"', ',', ':', '{', '}', '[', ']']).filter(|w| !w.is_empty()).collect()
}

/// A causal context token: base64url of a version byte and a clock.
fn is_token(w: &str) -> bool {
    w.len() >= 6
        && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && quorumkv::Context::decode(w).is_ok()
}

/// Every simulator command the README prints runs as printed (with fewer seeds, and
/// in the test build's profile: the same code), `make sim` included.
#[test]
fn the_readme_simulator_commands_run() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let mut cmds: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("$ cargo run "))
        .map(|l| format!("cargo run {}", l.split('#').next().unwrap().trim()))
        .collect();
    assert!(readme.contains("make sim"), "the README shows make sim");
    let make = std::process::Command::new("make")
        .args(["--no-print-directory", "-n", "sim", "SEEDS=3", "NODES=5"])
        .current_dir(root)
        .output()
        .expect("make runs");
    let printed = String::from_utf8_lossy(&make.stdout);
    cmds.extend(printed.lines().filter(|l| l.trim_start().starts_with("cargo ")).map(|l| l.trim().to_string()));
    assert!(cmds.len() >= 2 && cmds.iter().all(|c| c.contains("qkv-sim")), "{cmds:?}");
    for cmd in cmds {
        let words: Vec<String> = cmd.split_whitespace().filter(|w| *w != "--release").map(String::from).collect();
        let mut args: Vec<String> = vec![];
        let mut it = words[1..].iter();
        while let Some(w) = it.next() {
            args.push(w.clone());
            if w == "--seeds" {
                it.next();
                args.push("3".into());
            }
        }
        let out = std::process::Command::new(&words[0]).args(&args).current_dir(root).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("violations: 0"),
            "README command `{cmd}` failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
