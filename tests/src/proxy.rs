//! An HTTP/1.1 interceptor between a client (card-tool, terminal-sim) and the real issuance
//! server, for the faults and attacks that need the network to misbehave: an answer replaced (a
//! stale or replayed signed object, as a cache or an attacker on the path would serve it), or a
//! request held while the test kills the server in the middle of processing it.
//!
//! Each connection carries one request (the proxy answers with `Connection: close`); clients
//! with keep-alive simply connect again. Only what the platform's clients send is understood:
//! a request line, headers, and a body of `Content-Length` bytes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, e.g. `/api/v1/status-list/delta?from=1`.
    pub path: String,
    /// The body.
    pub body: Vec<u8>,
}

/// What to do with a request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Pass it to the server and its answer back.
    Forward,
    /// Answer this instead, without asking the server.
    Respond {
        /// HTTP status.
        status: u16,
        /// `Content-Type`.
        content_type: &'static str,
        /// Body.
        body: Vec<u8>,
    },
    /// Pass the request to the server, then hold: no answer reaches the client until
    /// [`Proxy::release`], and then none at all (the connection is closed), as when the server
    /// dies while it processes the request. [`Proxy::held`] tells the test when to kill it.
    Hold,
}

type Rule = dyn Fn(&Request) -> Action + Send + Sync;

struct Shared {
    upstream: Mutex<String>,
    rule: Box<Rule>,
    seen: Mutex<Vec<Request>>,
    /// Requests held so far.
    held: AtomicUsize,
    /// Held requests let go so far (the first `released` holds end).
    released: AtomicUsize,
    stop: AtomicBool,
}

/// A running interceptor on a loopback port; stopped when dropped.
pub struct Proxy {
    /// Its base URL (`http://127.0.0.1:PORT`): give this to the client instead of the server's.
    pub url: String,
    shared: Arc<Shared>,
    port: u16,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (`http://127.0.0.1:PORT`) applying `rule` to every
    /// request.
    pub fn start(
        upstream: &str,
        rule: impl Fn(&Request) -> Action + Send + Sync + 'static,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(authority(upstream)?),
            rule: Box::new(rule),
            seen: Mutex::new(Vec::new()),
            held: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = Arc::clone(&s);
                thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        Ok(Proxy {
            url: format!("http://127.0.0.1:{port}"),
            shared,
            port,
            accept: Some(accept),
        })
    }

    /// Points the proxy at another server address (after a restart on a new port).
    pub fn set_upstream(&self, upstream: &str) -> Result<()> {
        let a = authority(upstream)?;
        if let Ok(mut u) = self.shared.upstream.lock() {
            *u = a;
        }
        Ok(())
    }

    /// Every request seen so far, in order.
    pub fn seen(&self) -> Vec<Request> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// How many requests were held so far (forwarded, their answer withheld).
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Lets the requests held so far end: their connections are closed without an answer. A
    /// later [`Action::Hold`] holds again.
    pub fn release(&self) {
        let held = self.shared.held.load(Ordering::SeqCst);
        self.shared.released.store(held, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.released.store(usize::MAX, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// `127.0.0.1:PORT` of `http://127.0.0.1:PORT[/...]`.
fn authority(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url} is not an http:// URL"))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_owned())
}

/// Reads one request: the head up to the empty line, then `Content-Length` bytes.
fn read_request(conn: &mut TcpStream) -> Result<(Request, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&raw, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            bail!("the client closed before a whole request");
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > 64 << 10 {
            bail!("request head too long");
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            bail!("the client closed in the middle of the body");
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = raw[head_end..head_end + length].to_vec();
    // Forwarded as one request per connection, whatever the client asked for.
    let mut forward = Vec::new();
    for line in head[..head.len() - 4].split("\r\n") {
        let key = line.split(':').next().unwrap_or_default().trim();
        if key.eq_ignore_ascii_case("connection") || key.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        forward.extend_from_slice(line.as_bytes());
        forward.extend_from_slice(b"\r\n");
    }
    forward.extend_from_slice(b"Connection: close\r\n\r\n");
    forward.extend_from_slice(&body);
    Ok((Request { method, path, body }, forward))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        404 => "Not Found",
        410 => "Gone",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve(shared: &Shared, mut conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (request, forward) = read_request(&mut conn)?;
    if let Ok(mut seen) = shared.seen.lock() {
        seen.push(request.clone());
    }
    let action = (shared.rule)(&request);
    match action {
        Action::Respond {
            status,
            content_type,
            body,
        } => {
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                reason_phrase(status),
                body.len()
            );
            conn.write_all(head.as_bytes())?;
            conn.write_all(&body)?;
        }
        Action::Forward | Action::Hold => {
            let upstream = shared
                .upstream
                .lock()
                .map(|u| u.clone())
                .unwrap_or_default();
            let mut server = TcpStream::connect(&upstream)?;
            server.write_all(&forward)?;
            if matches!(action, Action::Hold) {
                let mine = shared.held.fetch_add(1, Ordering::SeqCst);
                while shared.released.load(Ordering::SeqCst) <= mine {
                    thread::sleep(Duration::from_millis(5));
                }
                // The server died with the request (or answered a client that is gone): the
                // client gets no answer.
                let _ = conn.shutdown(Shutdown::Both);
                return Ok(());
            }
            server.set_read_timeout(Some(Duration::from_secs(60)))?;
            let mut answer = Vec::new();
            server.read_to_end(&mut answer)?;
            conn.write_all(&answer)?;
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot upstream that answers every request with `body` and records what it got.
    fn upstream(body: &'static str) -> (String, JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while find(&got, b"\r\n\r\n").is_none() {
                let n = c.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            c.write_all(answer.as_bytes()).unwrap();
            got
        });
        (url, t)
    }

    fn get(url: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent.get(url).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    #[test]
    fn forwards_replaces_and_records() {
        let (up, t) = upstream("from the server");
        let proxy = Proxy::start(&up, |r| {
            if r.path.starts_with("/replaced") {
                Action::Respond {
                    status: 410,
                    content_type: "text/plain",
                    body: b"instead".to_vec(),
                }
            } else {
                Action::Forward
            }
        })
        .unwrap();
        assert_eq!(
            get(&format!("{}/replaced?x=1", proxy.url)),
            (410, "instead".to_owned())
        );
        assert_eq!(
            get(&format!("{}/real", proxy.url)),
            (200, "from the server".to_owned())
        );
        let head = String::from_utf8(t.join().unwrap()).unwrap();
        assert!(head.starts_with("GET /real HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
        let seen: Vec<String> = proxy.seen().into_iter().map(|r| r.path).collect();
        assert_eq!(seen, vec!["/replaced?x=1", "/real"]);
    }

    #[test]
    fn a_held_request_reaches_the_server_and_gets_no_answer() {
        let (up, t) = upstream("never seen");
        let proxy = Proxy::start(&up, |_| Action::Hold).unwrap();
        let url = format!("{}/held", proxy.url);
        let client = thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
            agent.post(&url).send("body").is_err()
        });
        let head = String::from_utf8(t.join().unwrap()).unwrap();
        assert!(head.starts_with("POST /held "), "{head}");
        crate::wait_until(Duration::from_secs(5), "the hold", || Ok(proxy.held() == 1)).unwrap();
        proxy.release();
        assert!(client.join().unwrap(), "the client got an answer");

        // A later request is held again until its own release.
        let (up, _t) = upstream("never seen either");
        proxy.set_upstream(&up).unwrap();
        let url = format!("{}/again", proxy.url);
        let client = thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
            agent.get(&url).call().is_err()
        });
        crate::wait_until(Duration::from_secs(5), "the second hold", || {
            Ok(proxy.held() == 2)
        })
        .unwrap();
        thread::sleep(Duration::from_millis(100));
        assert!(!client.is_finished(), "the second request was not held");
        proxy.release();
        assert!(client.join().unwrap(), "the client got an answer");
    }

    #[test]
    fn only_http_upstreams() {
        assert!(Proxy::start("https://127.0.0.1:1", |_| Action::Forward).is_err());
        assert_eq!(authority("http://127.0.0.1:8/x").unwrap(), "127.0.0.1:8");
    }
}
