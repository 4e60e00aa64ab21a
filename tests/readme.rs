//! The README's CLI session works exactly as printed: each `$ ` line is run by `sh`
//! against a fresh 3-node cluster and its output compared with the lines below it.
//!
//! Causal contexts are the one exception: they name each node's disk epoch, drawn
//! at random when a data dir is created, so every cluster prints its own. A word
//! that is a context token in both the README and the output may differ; the
//! README's token then stands for the cluster's in later commands.

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
    for (cmd, want) in steps {
        // The README's PATH line points at the release build; the test uses this build's binaries.
        if cmd.starts_with("export PATH=") {
            continue;
        }
        let mut cmd = cmd;
        for (readme, real) in &tokens {
            cmd = cmd.replace(readme.as_str(), real);
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            // The newline keeps a trailing `# comment` in the command from swallowing the `}`.
            .arg(format!("{{ {cmd}\n}} 2>&1"))
            .env("PATH", &path)
            .env("QKV_CLIENT_CONFIG", c.dir.path().join("client.toml"))
            .output()
            .unwrap();
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
