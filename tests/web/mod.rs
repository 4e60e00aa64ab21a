//! For the URL shortener's test and bench: a `qkv-shortener` process, and a minimal
//! HTTP/1.1 client over a tokio `TcpStream` (keep-alive, `Content-Length` or chunked
//! bodies), every request within a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

/// A request's deadline, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest response head read.
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// A `qkv-shortener` process, killed on drop.
pub struct Instance {
    child: Child,
    pub addr: SocketAddr,
}

impl Instance {
    /// Start `bin` with `args` (its stderr to `log`) and wait, at most 20 s, for the
    /// line that says where it listens.
    pub fn start(bin: &Path, args: &[String], log: &Path) -> Instance {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = Command::new(bin)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Read the first line, then drain stdout until the process exits.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("qkv-shortener {args:?} did not say where it listens: {other:?} (see its log)");
            }
        };
        let addr = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from qkv-shortener: {line:?}"));
        Instance { child, addr }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value `Set-Cookie` gives cookie `name` ("" when it clears it).
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next()?.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// One keep-alive connection to `addr` (reconnects when the server closed it).
pub struct Conn {
    addr: SocketAddr,
    stream: Option<AsyncBufReader<TcpStream>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn { addr, stream: None }
    }

    /// `method path` with `headers` and `body`, within [`REQUEST_TIMEOUT`]; panics on
    /// a transport error or past the deadline (a test's failure, with the reason).
    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let fut = self.try_send(method, path, headers, body);
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{method} http://{}{path}: {e}", self.addr),
            Err(_) => panic!("{method} http://{}{path}: no answer within {REQUEST_TIMEOUT:?}", self.addr),
        }
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.send("GET", path, headers, b"").await
    }

    async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        // A connection kept alive may have been closed by the server meanwhile: when
        // nothing at all came back on it, the request is sent once more on a new one.
        let reused = self.stream.is_some();
        match self.exchange(method, &bytes).await {
            Err((e, false)) if reused => {
                let _ = e;
                self.stream = None;
                self.exchange(method, &bytes).await.map_err(|(e, _)| e)
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    /// One exchange; on error, whether any of the answer had arrived.
    async fn exchange(&mut self, method: &str, request: &[u8]) -> Result<Response, (std::io::Error, bool)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await.map_err(|e| (e, false))?;
            s.set_nodelay(true).map_err(|e| (e, false))?;
            self.stream = Some(AsyncBufReader::new(s));
        }
        let stream = self.stream.as_mut().expect("connected");
        let result = async {
            stream.get_mut().write_all(request).await.map_err(|e| (e, false))?;
            read_response(stream, method == "HEAD").await
        }
        .await;
        match &result {
            Ok(r) if r.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) => self.stream = None,
            Ok(_) => {}
            Err(_) => self.stream = None,
        }
        result
    }
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

async fn read_response(s: &mut AsyncBufReader<TcpStream>, head_only: bool) -> Result<Response, (std::io::Error, bool)> {
    let mut line = String::new();
    let n = s.read_line(&mut line).await.map_err(|e| (e, false))?;
    if n == 0 {
        return Err((std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"), false));
    }
    let got = |e| (e, true);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| got(bad(format!("bad status line {line:?}"))))?;
    let mut headers = vec![];
    let mut head = line.len();
    loop {
        line.clear();
        head += s.read_line(&mut line).await.map_err(got)?;
        if head > HEAD_BYTES_MAX {
            return Err(got(bad("response head too long")));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| got(bad(format!("bad header {l:?}"))))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let mut body = vec![];
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if header("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
        loop {
            line.clear();
            s.read_line(&mut line).await.map_err(got)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).map_err(|_| got(bad(format!("bad chunk size {line:?}"))))?;
            let mut chunk = vec![0; size + 2];
            s.read_exact(&mut chunk).await.map_err(got)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| got(bad(format!("bad content-length {len:?}"))))?;
        body.resize(len, 0);
        s.read_exact(&mut body).await.map_err(got)?;
    } else {
        s.read_to_end(&mut body).await.map_err(got)?;
    }
    Ok(Response { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// A form body's value, percent-encoded.
pub fn form_value(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A browser's cookie jar of one cookie.
#[derive(Default, Clone)]
pub struct Jar {
    pub value: Option<String>,
}

impl Jar {
    /// Keep what `resp` sets for cookie `name` ("" clears it).
    pub fn update(&mut self, resp: &Response, name: &str) {
        if let Some(v) = resp.set_cookie(name) {
            self.value = (!v.is_empty()).then(|| v.to_string());
        }
    }

    /// The `Cookie` header to send, if any.
    pub fn header(&self, name: &str) -> Option<String> {
        self.value.as_ref().map(|v| format!("{name}={v}"))
    }
}
