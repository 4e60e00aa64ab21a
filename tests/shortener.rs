//! The URL shortener (`examples/shortener`, bin `qkv-shortener`) end to end, over HTTP,
//! on a real 3-node cluster whose node 3 applies replica writes 0 to 2 s late: every
//! endpoint's answers, a creator whose cookie makes their own click safe at R = one on
//! the late node, a friend without one who gets a 404 there, and refused cookies.

mod common;
mod web;

use std::time::Duration;

use common::{Cluster, Opts};
use web::{Conn, Instance, Jar, Response, form_value};

const COOKIE: &str = "qkv_session";
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// Node 3 holds replica writes from peers 0 to 2 s before applying them.
async fn slow_third() -> Cluster {
    Cluster::start_with(Opts::default(), |id| if id == 3 { "test_apply_delay_ms = 1000".into() } else { String::new() })
        .await
}

/// A `qkv-shortener` on the cluster's client config, with `args`.
fn shortener(c: &Cluster, name: &str, args: &[String]) -> Instance {
    let mut all = vec!["--config".to_string(), c.dir.path().join("client.toml").display().to_string()];
    all.extend_from_slice(args);
    Instance::start(&common::bin("qkv-shortener"), &all, &c.dir.path().join(format!("shortener-{name}.log")))
}

/// `--node` for each of `ids`.
fn pinned(c: &Cluster, ids: &[usize]) -> Vec<String> {
    ids.iter().flat_map(|&i| ["--node".to_string(), c.addrs[i - 1].to_string()]).collect()
}

/// POST `url` as a form, with `jar`'s cookie, keeping what it sets.
async fn create(conn: &mut Conn, jar: &mut Jar, url: &str) -> Response {
    let body = format!("url={}", form_value(url));
    let cookie = jar.header(COOKIE);
    let mut headers = vec![FORM];
    if let Some(c) = &cookie {
        headers.push(("Cookie", c));
    }
    let resp = conn.send("POST", "/", &headers, body.as_bytes()).await;
    jar.update(&resp, COOKIE);
    resp
}

/// The code a 201 answer names (the last path segment of its `Location`).
fn code_of(resp: &Response) -> String {
    assert_eq!(resp.status, 201, "create: {resp:?}");
    let loc = resp.header("location").expect("a Location header");
    loc.rsplit('/').next().unwrap().to_string()
}

/// GET /`code`, with `cookie` if given.
async fn click(conn: &mut Conn, code: &str, cookie: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    conn.get(&format!("/{code}"), &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_documented() {
    let c = slow_third().await;
    // Pinned to nodes 1 and 2 at R = quorum: what this instance answers never depends
    // on node 3's lag (strict quorum reads overlap strict quorum writes).
    let mut args = pinned(&c, &[1, 2]);
    args.extend(["--read-level".to_string(), "quorum".to_string()]);
    let front = shortener(&c, "front", &args);
    let mut http = Conn::new(front.addr);
    let mut jar = Jar::default();

    let page = http.get("/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"), "{page:?}");
    assert!(page.body.contains("<form") && page.body.contains("name=\"url\""), "{}", page.body);

    // Create: 201, Location and body with the short URL, the session cookie.
    let target = "https://example.com/a/long/path?q=1&r=é";
    let made = create(&mut http, &mut jar, target).await;
    let code = code_of(&made);
    assert_eq!(code.len(), 7);
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()), "{code}");
    let short = made.header("location").unwrap();
    assert_eq!(short, format!("http://{}/{code}", front.addr));
    assert_eq!(made.body.trim(), short);
    let set = made.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("set-cookie")).expect("Set-Cookie").1.clone();
    assert!(set.starts_with("qkv_session=") && set.contains("Path=/") && set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Lax"), "{set}");

    // Follow it, without a cookie: a redirect to the URL (non-ASCII percent-encoded).
    let go = click(&mut http, &code, None).await;
    assert_eq!(go.status, 302, "{go:?}");
    assert_eq!(go.header("location"), Some("https://example.com/a/long/path?q=1&r=%C3%A9"));

    // JSON in, JSON out.
    let body = br#"{"url": "http://example.org/json"}"#;
    let made = http.send("POST", "/", &[("Content-Type", "application/json")], body).await;
    let json_code = code_of(&made);
    let v: serde_json::Value = serde_json::from_str(&made.body).unwrap();
    assert_eq!(v["code"], json_code.as_str());
    assert_eq!(v["url"], "http://example.org/json");
    assert_eq!(click(&mut http, &json_code, None).await.header("location"), Some("http://example.org/json"));

    // Unknown codes are 404; malformed ones 400.
    let none = click(&mut http, "NoSuchCode1", None).await;
    assert_eq!(none.status, 404, "{none:?}");
    for bad in ["abc-def", "a%21", "aaaaaaaaaaaaaaaaa", "caf%C3%A9"] {
        let r = click(&mut http, bad, None).await;
        assert_eq!(r.status, 400, "GET /{bad}: {r:?}");
        assert!(r.body.contains("invalid code"), "{}", r.body);
        assert_eq!(http.send("DELETE", &format!("/{bad}"), &[], b"").await.status, 400);
    }

    // Bad URLs and bodies are 400, each with its reason.
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for (body, why) in [
        (format!("url={}", form_value("ftp://example.com/file")), "only http and https"),
        (format!("url={}", form_value("javascript:alert(1)")), "absolute URL"),
        (format!("url={}", form_value("https://")), "no host"),
        (format!("url={}", form_value("https://example.com/a b")), "percent-encode"),
        (format!("url={}", form_value(&long)), "limit is 2048"),
        ("link=https://example.com".to_string(), "no url field"),
        ("url=%FF".to_string(), "not UTF-8"),
    ] {
        let r = http.send("POST", "/", &[FORM], body.as_bytes()).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert!(r.body.contains(why), "{body}: {}", r.body);
    }
    let r = http.send("POST", "/", &[("Content-Type", "application/json")], b"{\"href\": 1}").await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("bad JSON"), "{}", r.body);

    // Delete: 204, then the link is gone (404), and deleting it again is 404.
    let del = http.send("DELETE", &format!("/{json_code}"), &[], b"").await;
    assert_eq!(del.status, 204, "{del:?}");
    assert_eq!(click(&mut http, &json_code, None).await.status, 404);
    assert_eq!(http.send("DELETE", &format!("/{json_code}"), &[], b"").await.status, 404);
    // In the creator's session: the cookie comes back with the delete in it.
    let cookie = jar.header(COOKIE).unwrap();
    let del = http.send("DELETE", &format!("/{code}"), &[("Cookie", &cookie)], b"").await;
    assert_eq!(del.status, 204, "{del:?}");
    jar.update(&del, COOKIE);
    assert_ne!(jar.header(COOKIE).unwrap(), cookie, "the session's cookie now holds the delete");
    assert_eq!(click(&mut http, &code, jar.header(COOKIE).as_deref()).await.status, 404);
    assert_eq!(click(&mut http, &code, None).await.status, 404);

    // A malformed cookie is ignored, and cleared.
    let mut other = Jar::default();
    let live = code_of(&create(&mut http, &mut other, "https://example.net/").await);
    let r = click(&mut http, &live, Some("qkv_session=not-a-token!")).await;
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.set_cookie(COOKIE), Some(""), "the malformed cookie is cleared: {r:?}");

    // A forged one (a floor of one link presented for another: its MAC is for the
    // first) is refused by the node: 400, and cleared.
    let mut one = Jar::default();
    let first = code_of(&create(&mut http, &mut one, "https://example.net/first").await);
    let forged = swap_key(one.value.as_deref().unwrap(), &format!("short/{first}"), &format!("short/{live}"));
    let r = click(&mut http, &live, Some(&format!("qkv_session={forged}"))).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("session cookie was refused"), "{}", r.body);
    assert_eq!(r.set_cookie(COOKIE), Some(""), "the forged cookie is cleared: {r:?}");

    // Anything else is a 404 that says what is served.
    let r = http.get("/a/b", &[]).await;
    assert_eq!(r.status, 404, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_r_one_on_the_late_node_the_creator_sees_their_link_and_a_friend_may_not() {
    let c = slow_third().await;
    // The creator's service talks to nodes 1 and 2 (which coordinate every write); the
    // clicks go to a service next to node 3, the late replica, reading at R = one.
    let front = shortener(&c, "front", &pinned(&c, &[1, 2]));
    let late = shortener(&c, "late", &pinned(&c, &[3]));
    let (mut creator, mut there) = (Conn::new(front.addr), Conn::new(late.addr));

    // The creator clicks each new link at once, on the late node, with their cookie:
    // always a redirect (the session read asks past R, or waits, until it sees the write).
    let mut jar = Jar::default();
    for i in 0..20 {
        let url = format!("https://example.com/mine/{i}");
        let code = code_of(&create(&mut creator, &mut jar, &url).await);
        let got = click(&mut there, &code, jar.header(COOKIE).as_deref()).await;
        assert_eq!(got.status, 302, "link {i} ({code}): the creator's own click missed it: {got:?}");
        assert_eq!(got.header("location"), Some(url.as_str()));
    }
    // 20 links, the cookie remembers the last 16: it stays well under a browser's 4 KiB.
    let cookie = jar.header(COOKIE).unwrap();
    println!("session cookie after 20 links: {} bytes", cookie.len());
    assert!(cookie.len() < 4000, "cookie of {} bytes", cookie.len());

    // A friend, without the cookie, clicking at once on the late node: a 404 for a link
    // that exists (the write is acknowledged by nodes 1 and 2, node 3 applies it up to 2 s later).
    let mut outcomes = vec![];
    for i in 0..10 {
        let url = format!("https://example.com/shared/{i}");
        let code = code_of(&create(&mut creator, &mut Jar::default(), &url).await);
        let got = click(&mut there, &code, None).await;
        assert!(matches!(got.status, 302 | 404), "{got:?}");
        outcomes.push(got.status);
        if got.status == 404 {
            break;
        }
    }
    println!("friend's clicks on the late node: {outcomes:?}");
    assert!(outcomes.contains(&404), "a friend's click at R = one on the late node missed a fresh link at least once");

    // Once node 3 has caught up, the friend's click works.
    let code = code_of(&create(&mut creator, &mut Jar::default(), "https://example.com/later").await);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = click(&mut there, &code, None).await;
        if got.status == 302 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node 3 never caught up: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `token` with its key `from` renamed `to` (same length; base64url of msgpack, the
/// key a bin8).
fn swap_key(token: &str, from: &str, to: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(from.len(), to.len());
    let mut bytes = URL_SAFE_NO_PAD.decode(token).unwrap();
    let pat = [&[0xc4, from.len() as u8][..], from.as_bytes()].concat();
    let at = bytes.windows(pat.len()).position(|w| w == pat).expect("the key in the token");
    bytes[at + 2..at + 2 + to.len()].copy_from_slice(to.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}
