//! A URL shortener over the quorumkv client: the replication-lag scenario of a
//! shortener (a link is created, and a friend clicks it at once on a replica that has
//! not got it yet) played on a real cluster.
//!
//! - `GET /`: a page with a form to create a link.
//! - `POST /` (form `url=...`, or JSON `{"url": ...}`): a random 7-character code,
//!   written `code -> url` at W = quorum, strict, in the creator's session (from the
//!   `qkv_session` cookie, or a new one), whose token goes back as that cookie. 201,
//!   with the short URL in `Location` and the body.
//! - `GET /{code}`: read at the configured R (strict), in the cookie's session if there
//!   is one, so the creator always sees their link; 302 to the URL, or 404.
//! - `DELETE /{code}`: read at R = quorum, then delete what it saw at W = quorum strict
//!   (in the session, if any): 204, or 404 if there is nothing.
//!
//! The session is what makes the creator's own click safe at R = one: a session read
//! is never older than what the session wrote (the node asks more replicas, or the
//! client waits, within the request's deadline). A friend has no such session: at
//! R = one they may be answered by a replica that has not applied the write yet (a
//! 404), at R = quorum they never are (R + W > N, both strict).
//!
//! Every cluster request has the client's deadline, and each HTTP request an overall
//! one ([`Shortener::deadline`]). Input is checked, never trusted: a malformed cookie
//! is ignored (and cleared); a cookie whose floors the cluster did not issue is
//! refused by the node, answered 400, and cleared.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use qkv_client::{Client, ClusterError, Error, Level, Session};
use rand::RngExt;

/// The session cookie's default name.
pub const COOKIE_NAME: &str = "qkv_session";
/// Longest URL accepted, in bytes (after non-ASCII characters are percent-encoded).
pub const URL_BYTES_MAX: usize = 2048;
/// Characters in a new code.
pub const CODE_CHARS: usize = 7;
/// Longest code a request may name.
pub const CODE_CHARS_MAX: usize = 16;
/// Keys a browser's session remembers: its last links (a floor is about 70 bytes of
/// cookie, and browsers keep 4 KiB per cookie).
pub const SESSION_KEYS: usize = 16;
/// Largest request body.
const BODY_BYTES_MAX: usize = 16 * 1024;
/// New codes tried before giving up (each one found taken).
const CODE_TRIES: usize = 5;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The service's state: the cluster client and how it reads.
#[derive(Clone)]
pub struct Shortener {
    /// The cluster client (its configured deadline bounds every request).
    pub client: Client,
    /// R for redirects (writes are always W = quorum, strict).
    pub read_level: Level,
    /// The session cookie's name.
    pub cookie_name: String,
    /// Keys a session cookie remembers.
    pub session_keys: usize,
    /// The short links' prefix, e.g. `https://qkv.example` (default: `http://` and the
    /// request's `Host`; without a usable one, links are relative).
    pub base_url: Option<String>,
    /// The whole HTTP request's deadline (a create may take a read and a write, and
    /// more when a code is taken).
    pub deadline: Duration,
}

impl Shortener {
    /// Defaults: cookie [`COOKIE_NAME`], [`SESSION_KEYS`] keys, links from `Host`, a 5 s deadline.
    pub fn new(client: Client, read_level: Level) -> Self {
        Shortener {
            client,
            read_level,
            cookie_name: COOKIE_NAME.into(),
            session_keys: SESSION_KEYS,
            base_url: None,
            deadline: Duration::from_secs(5),
        }
    }
}

/// The routes: `GET /`, `POST /`, `GET /{code}`, `DELETE /{code}`.
pub fn app(state: Shortener) -> Router {
    Router::new()
        .route("/", get(index).post(create))
        .route("/{code}", get(redirect).delete(remove))
        .fallback(|| async {
            text(StatusCode::NOT_FOUND, "not found: GET / for the form, GET /{code} to follow a link")
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(Arc::new(state))
}

/// The cluster key of `code`.
pub fn key(code: &str) -> String {
    format!("short/{code}")
}

/// A new random code: [`CODE_CHARS`] base62 characters (62^7, about 3.5e12 codes).
pub fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_CHARS).map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())])).collect()
}

/// Whether `code` may name a link: 1 to [`CODE_CHARS_MAX`] ASCII letters and digits.
pub fn valid_code(code: &str) -> bool {
    (1..=CODE_CHARS_MAX).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `raw` as a URL to redirect to, or why not: http or https with a host, no spaces or
/// control characters, at most [`URL_BYTES_MAX`] bytes; non-ASCII characters are
/// percent-encoded (so the URL is a valid `Location`).
pub fn check_url(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    if url.is_empty() {
        return Err("no URL given: send url=https://...".into());
    }
    if url.len() > URL_BYTES_MAX {
        return Err(format!("the URL is {} bytes, the limit is {URL_BYTES_MAX}", url.len()));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("not an absolute URL: it must start with http:// or https://".into());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("only http and https URLs are accepted, not `{}`", scheme.escape_default()));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.rsplit('@').next().unwrap_or("").is_empty() {
        return Err("the URL has no host".into());
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("the URL contains {:?}: percent-encode spaces and control characters", c));
    }
    let mut out = String::with_capacity(url.len());
    for b in url.bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > URL_BYTES_MAX {
        return Err(format!("the URL is {} bytes once percent-encoded, the limit is {URL_BYTES_MAX}", out.len()));
    }
    Ok(out)
}

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// The `url` field of a form body (`application/x-www-form-urlencoded`).
pub fn form_field(body: &[u8], name: &str) -> Result<Option<String>, String> {
    for pair in body.split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        if form_decode(k)? == name {
            return form_decode(v).map(Some);
        }
    }
    Ok(None)
}

fn form_decode(s: &[u8]) -> Result<String, String> {
    let plus: Vec<u8> = s.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    percent_encoding::percent_decode(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "the form body is not UTF-8".to_string())
}

/// HTML-escape `s`.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{msg}\n")).into_response()
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n\
         <style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}\
         input[type=url]{{width:100%;padding:.5em;box-sizing:border-box}}button{{margin-top:.5em;padding:.5em 1em}}\
         code{{word-break:break-all}}</style></head>\n<body>\n{body}\n</body></html>\n",
        title = esc(title)
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// Attach `Set-Cookie` to `resp` (a cookie that could not be a header value is left out).
fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// What the request's session cookie gave.
enum Cookie {
    None,
    /// A well-formed token (the node still checks its floors).
    Session(Session),
    /// Not a token: ignored, and cleared in the answer.
    Malformed,
}

impl Shortener {
    fn session(&self, headers: &HeaderMap) -> Cookie {
        match cookie(headers, &self.cookie_name) {
            None | Some("") => Cookie::None,
            Some(token) => match self.client.resume_session(token) {
                Ok(s) => Cookie::Session(s.with_capacity(self.session_keys)),
                Err(e) => {
                    tracing::debug!("ignoring a malformed session cookie: {e}");
                    Cookie::Malformed
                }
            },
        }
    }

    fn set_cookie(&self, session: &Session) -> String {
        format!("{}={}; Path=/; HttpOnly; SameSite=Lax", self.cookie_name, session.token())
    }

    fn drop_cookie(&self) -> String {
        format!("{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0", self.cookie_name)
    }

    /// A cluster error as an answer: a session the node refused (floors it did not
    /// issue: a forged or foreign cookie) is 400 and clears the cookie; the rest is 503.
    fn failure(&self, e: Error, in_session: bool) -> Response {
        match e {
            Error::Cluster(ClusterError::BadRequest(m)) if in_session => {
                tracing::info!("a session cookie was refused: {m}");
                let msg = format!("your session cookie was refused by the cluster ({m}); it is cleared, try again");
                with_cookie(text(StatusCode::BAD_REQUEST, msg), &self.drop_cookie())
            }
            e => {
                tracing::warn!("cluster error: {e}");
                text(StatusCode::SERVICE_UNAVAILABLE, format!("the cluster did not answer: {e}"))
            }
        }
    }

    /// `fut`'s answer, or 503 past [`Shortener::deadline`].
    async fn within(&self, fut: impl Future<Output = Response>) -> Response {
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("a request took longer than {:?}", self.deadline);
                text(StatusCode::SERVICE_UNAVAILABLE, format!("timed out after {:?}", self.deadline))
            }
        }
    }

    /// Where short links point: `--base-url`, or the request's `Host` when it looks
    /// like one, or nothing (relative links).
    fn base(&self, headers: &HeaderMap) -> String {
        if let Some(b) = &self.base_url {
            return b.trim_end_matches('/').to_string();
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let plausible = !host.is_empty()
            && host.len() <= 255
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if plausible { format!("http://{host}") } else { String::new() }
    }
}

async fn index(State(st): State<Arc<Shortener>>) -> Response {
    let body = format!(
        "<h1>Shorten a link</h1>\n\
         <form method=\"post\" action=\"/\">\n\
         <input type=\"url\" name=\"url\" placeholder=\"https://example.com/a/long/path\" required maxlength=\"{URL_BYTES_MAX}\" autofocus>\n\
         <button type=\"submit\">Shorten</button>\n</form>\n\
         <p>Links are written to quorumkv at W = quorum; a click reads at R = {r}. Your own links are read in \
         your session (a cookie), so you see them at once, wherever you click.</p>",
        r = esc(&st.read_level.to_string())
    );
    html(StatusCode::OK, "qkv shortener", &body)
}

#[derive(serde::Deserialize)]
struct CreateJson {
    url: String,
}

async fn create(State(st): State<Arc<Shortener>>, headers: HeaderMap, body: Bytes) -> Response {
    st.within(create_inner(&st, &headers, &body)).await
}

async fn create_inner(st: &Shortener, headers: &HeaderMap, body: &[u8]) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let json = content_type.trim_start().to_ascii_lowercase().starts_with("application/json");
    let raw = if json {
        match serde_json::from_slice::<CreateJson>(body) {
            Ok(c) => c.url,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad JSON body (want {{\"url\": \"...\"}}): {e}")),
        }
    } else {
        match form_field(body, "url") {
            Ok(Some(u)) => u,
            Ok(None) => return text(StatusCode::BAD_REQUEST, "no url field: send url=https://... (a form) or JSON"),
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        }
    };
    let url = match check_url(&raw) {
        Ok(u) => u,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    // (A malformed cookie is replaced by the new session's.)
    let (session, had_session) = match st.session(headers) {
        Cookie::Session(s) => (s, true),
        Cookie::None | Cookie::Malformed => (st.client.session().with_capacity(st.session_keys), false),
    };
    for _ in 0..CODE_TRIES {
        let code = new_code();
        let k = key(&code);
        // Taken codes are not overwritten: read first (R + W > N, strict, so a code
        // created before is seen); writing with the read's context also supersedes a
        // deleted code's tombstone cleanly.
        let seen = match st.client.get(k.clone()).r(Level::Quorum).strict().await {
            Ok(g) => g,
            Err(e) => return st.failure(e, false),
        };
        if seen.found {
            tracing::info!(code, "code taken, drawing another");
            continue;
        }
        let put = session.put(k, url.clone()).w(Level::Quorum).strict().context(seen.context).await;
        if let Err(e) = put {
            return st.failure(e, had_session);
        }
        tracing::info!(code, url_bytes = url.len(), "created");
        let short = format!("{}/{code}", st.base(headers));
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mut resp = if json || accept.contains("application/json") {
            let body = serde_json::json!({"code": code, "short_url": short, "url": url});
            (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], format!("{body}\n")).into_response()
        } else if accept.contains("text/html") {
            let body = format!(
                "<h1>Your short link</h1>\n<p><a href=\"{s}\">{s}</a></p>\n<p>goes to <code>{u}</code></p>\n\
                 <p><a href=\"/\">Shorten another</a></p>",
                s = esc(&short),
                u = esc(&url)
            );
            html(StatusCode::CREATED, "qkv shortener: created", &body)
        } else {
            text(StatusCode::CREATED, &short)
        };
        if let Ok(v) = HeaderValue::from_str(&short) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return with_cookie(resp, &st.set_cookie(&session));
    }
    text(StatusCode::SERVICE_UNAVAILABLE, format!("{CODE_TRIES} random codes in a row were taken; try again"))
}

async fn redirect(State(st): State<Arc<Shortener>>, Path(code): Path<String>, headers: HeaderMap) -> Response {
    st.within(redirect_inner(&st, &code, &headers)).await
}

async fn redirect_inner(st: &Shortener, code: &str, headers: &HeaderMap) -> Response {
    if !valid_code(code) {
        return text(StatusCode::BAD_REQUEST, format!("invalid code: 1 to {CODE_CHARS_MAX} letters and digits"));
    }
    let cookie = st.session(headers);
    let read = match &cookie {
        Cookie::Session(s) => s.get(key(code)),
        Cookie::None | Cookie::Malformed => st.client.get(key(code)),
    };
    let got = read.r(st.read_level).strict().await;
    // (The cookie is not sent back: it keeps the links this browser made, not the
    // ones it followed.)
    let resp = match got {
        Err(e) => return st.failure(e, matches!(cookie, Cookie::Session(_))),
        Ok(g) if !g.found => {
            tracing::debug!(code, "not found");
            html(
                StatusCode::NOT_FOUND,
                "qkv shortener: not found",
                &format!(
                    "<h1>Not found</h1>\n<p>No link <code>{}</code> here. If it was made a moment ago, it may \
                     not have reached this replica yet: try again.</p>",
                    esc(code)
                ),
            )
        }
        Ok(g) => match target(&g.values) {
            Some(location) => {
                tracing::debug!(code, "redirect");
                let mut resp = (StatusCode::FOUND, [(header::CACHE_CONTROL, "no-store")]).into_response();
                resp.headers_mut().insert(header::LOCATION, location);
                resp
            }
            None => {
                tracing::warn!(code, "no stored value is a URL");
                text(StatusCode::INTERNAL_SERVER_ERROR, "the stored value is not a URL")
            }
        },
    };
    match cookie {
        Cookie::Malformed => with_cookie(resp, &st.drop_cookie()),
        _ => resp,
    }
}

/// Where a link's values send a click. Siblings (concurrent writes of one code) resolve
/// to the same target whichever replica answers: the smallest valid URL.
fn target(values: &[Vec<u8>]) -> Option<HeaderValue> {
    let url = values.iter().filter_map(|v| std::str::from_utf8(v).ok()).filter_map(|u| check_url(u).ok()).min()?;
    HeaderValue::from_str(&url).ok()
}

async fn remove(State(st): State<Arc<Shortener>>, Path(code): Path<String>, headers: HeaderMap) -> Response {
    st.within(remove_inner(&st, &code, &headers)).await
}

async fn remove_inner(st: &Shortener, code: &str, headers: &HeaderMap) -> Response {
    if !valid_code(code) {
        return text(StatusCode::BAD_REQUEST, format!("invalid code: 1 to {CODE_CHARS_MAX} letters and digits"));
    }
    let cookie = st.session(headers);
    let session = match &cookie {
        Cookie::Session(s) => Some(s.clone()),
        _ => None,
    };
    let k = key(code);
    let read = match &session {
        Some(s) => s.get(k.clone()),
        None => st.client.get(k.clone()),
    };
    let got = match read.r(Level::Quorum).strict().await {
        Ok(g) => g,
        Err(e) => return st.failure(e, session.is_some()),
    };
    let resp = if !got.found {
        text(StatusCode::NOT_FOUND, format!("no link {code}"))
    } else {
        // Delete what the read saw (a later write of the code is kept as a sibling).
        let delete = match &session {
            Some(s) => s.delete(k),
            None => st.client.delete(k),
        };
        if let Err(e) = delete.context(got.context).w(Level::Quorum).strict().await {
            return st.failure(e, session.is_some());
        }
        tracing::info!(code, "deleted");
        let resp = StatusCode::NO_CONTENT.into_response();
        // The session now holds the delete: the browser's own clicks see it gone.
        match &session {
            Some(s) => with_cookie(resp, &st.set_cookie(s)),
            None => resp,
        }
    };
    match cookie {
        Cookie::Malformed => with_cookie(resp, &st.drop_cookie()),
        _ => resp,
    }
}

/// Serve `app` on `listener` until `shutdown` completes: HTTP/1.1 with keep-alive, at
/// most 1024 connections, a request head within 10 s (an idle connection is closed
/// after as long).
pub async fn serve(listener: tokio::net::TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    const CONNECTIONS_MAX: usize = 1024;
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // (Out of file descriptors, say: pause rather than spin.)
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!("{CONNECTIONS_MAX} connections open: closing one from {peer}");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(BODY_BYTES_MAX)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_non_ascii_is_encoded() {
        assert_eq!(check_url(" https://example.com/a?b=c#d ").unwrap(), "https://example.com/a?b=c#d");
        assert_eq!(check_url("HTTP://example.com").unwrap(), "HTTP://example.com");
        assert_eq!(check_url("https://example.com/café").unwrap(), "https://example.com/caf%C3%A9");
        for (bad, why) in [
            ("", "no URL"),
            ("example.com", "absolute"),
            ("ftp://example.com/x", "only http and https"),
            ("javascript://alert(1)", "only http and https"),
            ("https:///path", "no host"),
            ("https://user@/x", "no host"),
            ("https://example.com/a b", "percent-encode"),
            ("https://example.com/\r\nSet-Cookie: x=y", "percent-encode"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(URL_BYTES_MAX));
        assert!(check_url(&long).unwrap_err().contains("limit is 2048"));
        let wide = format!("https://example.com/{}", "é".repeat(URL_BYTES_MAX / 4));
        assert!(check_url(&wide).unwrap_err().contains("once percent-encoded"));
    }

    #[test]
    fn codes_are_base62_and_checked() {
        for _ in 0..100 {
            let c = new_code();
            assert_eq!(c.len(), CODE_CHARS);
            assert!(valid_code(&c), "{c}");
        }
        assert_ne!(new_code(), new_code());
        for bad in ["", "abc-def", "a.b", "ééé", &"a".repeat(CODE_CHARS_MAX + 1), "a b"] {
            assert!(!valid_code(bad), "{bad:?}");
        }
        assert!(valid_code(&"Z".repeat(CODE_CHARS_MAX)));
    }

    #[test]
    fn cookies_and_form_fields_are_found() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; qkv_session=\"tok\"; b=2"));
        assert_eq!(cookie(&h, "qkv_session"), Some("tok"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(
            form_field(b"x=1&url=https%3A%2F%2Fa.b%2F%3Fq%3D1+2", "url").unwrap().unwrap(),
            "https://a.b/?q=1 2"
        );
        assert_eq!(form_field(b"x=1", "url").unwrap(), None);
        assert_eq!(form_field(b"url", "url").unwrap().unwrap(), "");
        assert!(form_field(b"url=%FF", "url").is_err());
    }

    #[test]
    fn siblings_resolve_to_the_smallest_valid_url() {
        let values = [b"https://b.example".to_vec(), b"junk".to_vec(), b"https://a.example".to_vec(), vec![0xff]];
        assert_eq!(target(&values).unwrap(), "https://a.example");
        assert_eq!(target(&[b"ftp://x".to_vec()]), None);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
