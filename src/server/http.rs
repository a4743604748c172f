//! The opt-in HTTP status page (`[status] http_port`): a small blocking HTTP/1.1
//! server on its own listener, written over `std::net` (only `GET` and `HEAD`, one
//! request per connection, `Connection: close`).
//!
//! * `/` — a self-contained HTML page (no external assets) that reloads itself every
//!   2 s: finished k of N, the draw's state, the missing agencies and one row per
//!   agency (connected, bets stored, finished, winners after the draw).
//! * `/metrics` — the counters in the Prometheus text format (`text/plain;
//!   version=0.0.4`).
//! * `/status.json` — the same snapshot as `/`, as JSON.
//! * anything else — `404`; other methods — `405`.
//!
//! Threads: one acceptor thread, and one thread per HTTP connection (at most
//! [`MAX_CLIENTS`] at once; more are answered `503` by the acceptor), each with a
//! deadline of [`REQUEST_DEADLINE`] for its whole request and answer, so a browser's
//! idle pre-connections or a slow client cannot block the page. [`StatusPage::stop`]
//! stops the acceptor (it wakes it with a connection of its own) and joins it; the
//! acceptor joins every connection thread before it ends. No lock is held while a
//! socket is read or written: the page's content is rendered first, from one snapshot.

use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::protocol::StatusSnapshot;

/// How many HTTP connections are served at once.
pub const MAX_CLIENTS: usize = 16;
/// The longest a request may take to arrive and its answer to be written.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// The largest request head (request line and headers) read.
const MAX_REQUEST_HEAD: usize = 8192;
/// How many missing agencies the page lists by id.
const MISSING_SHOWN: usize = 50;

/// What the page shows; implemented by the server's shared state.
pub trait Source: Send + Sync + 'static {
    /// The collection's state now, in one snapshot.
    fn snapshot(&self) -> StatusSnapshot;
    /// The metrics in the Prometheus text format.
    fn metrics(&self) -> String;
    /// Counts one answered request.
    fn count_request(&self) {}
}

/// The status page could not start.
#[derive(Debug)]
pub enum HttpError {
    /// The address did not resolve.
    Resolve {
        /// `host:port` as configured.
        address: String,
        /// The cause.
        source: io::Error,
    },
    /// The listener could not be bound.
    Bind {
        /// `host:port` as configured.
        address: String,
        /// The cause.
        source: io::Error,
    },
    /// The acceptor thread could not be started.
    Spawn(io::Error),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Resolve { address, source } => write!(
                f,
                "cannot resolve the status page address {address} (status.http_port): {source}"
            ),
            HttpError::Bind { address, source } => write!(
                f,
                "cannot bind the status page on {address} (status.http_port): {source}"
            ),
            HttpError::Spawn(e) => write!(f, "cannot start the status page thread: {e}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Resolve { source, .. } | HttpError::Bind { source, .. } => Some(source),
            HttpError::Spawn(e) => Some(e),
        }
    }
}

/// A running status page.
pub struct StatusPage {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: JoinHandle<usize>,
}

impl StatusPage {
    /// Binds `host:port` and starts serving `source` there.
    pub fn start(host: &str, port: u16, source: Arc<dyn Source>) -> Result<StatusPage, HttpError> {
        let address = format!("{host}:{port}");
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|source| HttpError::Resolve {
                address: address.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| HttpError::Resolve {
                address: address.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no address"),
            })?;
        let listener = TcpListener::bind(addr).map_err(|source| HttpError::Bind {
            address: address.clone(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| HttpError::Bind {
            address: address.clone(),
            source,
        })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stopping = Arc::clone(&stopping);
            thread::Builder::new()
                .name("status-page".into())
                .spawn(move || accept_loop(&listener, &stopping, &source))
                .map_err(HttpError::Spawn)?
        };
        Ok(StatusPage {
            addr,
            stopping,
            acceptor,
        })
    }

    /// The address the page listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for the requests in progress and joins every thread of
    /// the page; returns how many connection threads were joined in all.
    pub fn stop(self) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        wake(self.addr);
        self.acceptor.join().unwrap_or_else(|_| {
            log::error!("action: status_page_stop | result: fail | error: thread panicked");
            0
        })
    }
}

/// Unblocks the acceptor's `accept` with a connection of our own.
fn wake(local: SocketAddr) {
    let mut target = local;
    if target.ip().is_unspecified() {
        target.set_ip(match target.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    // If this fails the listener is gone already, which is what we want.
    let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
}

fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, source: &Arc<dyn Source>) -> usize {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut joined = 0;
    while !stopping.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !stopping.load(Ordering::SeqCst) {
                    log::warn!("action: status_page_accept | result: fail | error: {e}");
                    thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let (done, running): (Vec<_>, Vec<_>) =
            workers.into_iter().partition(JoinHandle::is_finished);
        joined += join_all(done);
        workers = running;
        if workers.len() >= MAX_CLIENTS {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = respond(
                &stream,
                &Response::text(503, "Service Unavailable", "too many requests\n"),
                false,
            );
            continue;
        }
        let source = Arc::clone(source);
        let spawned = thread::Builder::new()
            .name("status-http".into())
            .spawn(move || serve(stream, source.as_ref()));
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => log::warn!("action: status_page_accept | result: fail | error: {e}"),
        }
    }
    joined + join_all(workers)
}

fn join_all(workers: Vec<JoinHandle<()>>) -> usize {
    let count = workers.len();
    for worker in workers {
        if worker.join().is_err() {
            log::error!("action: status_page_request | result: fail | error: thread panicked");
        }
    }
    count
}

/// An HTTP answer.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
            allow: false,
        }
    }
}

/// Serves one connection: one request, one answer, then close.
fn serve(stream: TcpStream, source: &dyn Source) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let head = match read_head(&stream, deadline) {
        Ok(Some(head)) => head,
        // Closed without a request (e.g. a browser's unused pre-connection), or too
        // slow: nothing to answer.
        Ok(None) | Err(_) => return,
    };
    let (response, head_only) = route(&head, source);
    let _ = stream.set_write_timeout(Some(
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(1)),
    ));
    if let Err(e) = respond(&stream, &response, head_only) {
        log::debug!("action: status_page_request | result: fail | error: {e}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Reads the request head (up to the empty line), `None` if the peer sent nothing.
fn read_head(mut stream: &TcpStream, deadline: Instant) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "request too slow"))?;
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok((!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            // Answer what arrived; the request line is all we look at.
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
    }
}

/// The answer to a request head, and whether only its head is sent (`HEAD`).
fn route(head: &str, source: &dyn Source) -> (Response, bool) {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("/"),
    );
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let mut response = Response::text(405, "Method Not Allowed", "only GET and HEAD\n");
        response.allow = true;
        return (response, false);
    }
    source.count_request();
    let response = match path {
        "/" | "/index.html" => Response {
            status: 200,
            reason: "OK",
            content_type: "text/html; charset=utf-8",
            body: render_page(&source.snapshot()),
            allow: false,
        },
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: source.metrics(),
            allow: false,
        },
        "/status.json" => Response {
            status: 200,
            reason: "OK",
            content_type: "application/json",
            body: render_json(&source.snapshot()),
            allow: false,
        },
        _ => Response::text(404, "Not Found", "not found\n"),
    };
    (response, head_only)
}

fn respond(mut stream: &TcpStream, response: &Response, head_only: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// The state of the draw in words.
fn draw_state(snap: &StatusSnapshot) -> String {
    if snap.drawn {
        let winners: u64 = snap
            .entries
            .iter()
            .map(|e| u64::from(e.winners.unwrap_or(0)))
            .sum();
        format!("done: {winners} winners")
    } else if snap.finished == snap.agencies {
        "running".to_string()
    } else {
        format!(
            "waiting for {} of {} agencies",
            snap.agencies - snap.finished,
            snap.agencies
        )
    }
}

fn missing_list(snap: &StatusSnapshot) -> String {
    let missing = snap.missing();
    let mut shown: Vec<String> = missing
        .iter()
        .take(MISSING_SHOWN)
        .map(|a| a.to_string())
        .collect();
    if missing.len() > MISSING_SHOWN {
        shown.push(format!("… ({} in all)", missing.len()));
    }
    if shown.is_empty() {
        "none".to_string()
    } else {
        shown.join(", ")
    }
}

/// The HTML page: everything inline, reloaded every 2 s.
fn render_page(snap: &StatusSnapshot) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut rows = String::new();
    for e in &snap.entries {
        let winners = e.winners.map_or("—".to_string(), |w| w.to_string());
        // Writing to a String cannot fail.
        let _ = writeln!(
            rows,
            "<tr id=\"agency-{a}\" class=\"{cls}\"><td class=\"agency\">{a}</td><td class=\"connected\">{c}</td><td class=\"bets\">{b}</td><td class=\"finished\">{f}</td><td class=\"winners\">{winners}</td></tr>",
            a = e.agency,
            cls = if e.finished { "done" } else { "open" },
            c = yes_no(e.connected),
            b = e.bets,
            f = yes_no(e.finished),
        );
    }
    let bets: u64 = snap.entries.iter().map(|e| e.bets).sum();
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="2">
<title>Lotería Nacional — status</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.6em; }}
.summary span {{ font-weight: bold; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
th, td {{ border: 1px solid #bbb; padding: 0.25em 0.8em; text-align: right; }}
th {{ background: #eee; }}
tr.done td.finished {{ background: #d8f0d8; }}
tr.open td.finished {{ background: #f6e7c8; }}
</style>
</head>
<body>
<h1>Lotería Nacional — bet collection</h1>
<p class="summary">Finished: <span id="finished">{finished}</span> of <span id="agencies">{agencies}</span> agencies.
Bets stored: <span id="bets">{bets}</span>.
Draw: <span id="draw" data-drawn="{drawn}">{state}</span>.</p>
<p>Missing agencies: <span id="missing">{missing}</span></p>
<table id="agencies-table">
<thead><tr><th>agency</th><th>connected</th><th>bets stored</th><th>finished</th><th>winners</th></tr></thead>
<tbody>
{rows}</tbody>
</table>
<p><a href="/metrics">metrics</a> · <a href="/status.json">status.json</a> · refreshes every 2 s</p>
</body>
</html>
"#,
        finished = snap.finished,
        agencies = snap.agencies,
        drawn = snap.drawn,
        state = draw_state(snap),
        missing = missing_list(snap),
    )
}

/// The snapshot as JSON (numbers and booleans only, so nothing needs escaping).
fn render_json(snap: &StatusSnapshot) -> String {
    let entries: Vec<String> = snap
        .entries
        .iter()
        .map(|e| {
            format!(
                "{{\"agency\":{},\"connected\":{},\"finished\":{},\"bets\":{},\"winners\":{}}}",
                e.agency,
                e.connected,
                e.finished,
                e.bets,
                e.winners.map_or("null".to_string(), |w| w.to_string())
            )
        })
        .collect();
    let missing: Vec<String> = snap.missing().iter().map(|a| a.to_string()).collect();
    format!(
        "{{\"agencies\":{},\"finished\":{},\"drawn\":{},\"missing\":[{}],\"entries\":[{}]}}\n",
        snap.agencies,
        snap.finished,
        snap.drawn,
        missing.join(","),
        entries.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AgencyStatus;

    struct Fixed(StatusSnapshot);

    impl Source for Fixed {
        fn snapshot(&self) -> StatusSnapshot {
            self.0.clone()
        }
        fn metrics(&self) -> String {
            "# HELP x y\n# TYPE x counter\nx 1\n".into()
        }
    }

    fn fixed() -> Arc<dyn Source> {
        Arc::new(Fixed(StatusSnapshot {
            agencies: 2,
            finished: 1,
            drawn: false,
            entries: vec![
                AgencyStatus {
                    agency: 1,
                    connected: true,
                    finished: true,
                    bets: 150,
                    winners: None,
                },
                AgencyStatus {
                    agency: 2,
                    connected: false,
                    finished: false,
                    bets: 0,
                    winners: None,
                },
            ],
        }))
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    }

    #[test]
    fn routes_methods_and_shutdown() {
        let page = StatusPage::start("127.0.0.1", 0, fixed()).expect("starts");
        let addr = page.local_addr();
        let html = get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(html.starts_with("HTTP/1.1 200 OK\r\n"), "{html}");
        assert!(html.contains("Content-Type: text/html"));
        assert!(html.contains("<span id=\"finished\">1</span> of <span id=\"agencies\">2</span>"));
        assert!(html.contains("<span id=\"missing\">2</span>"));
        assert!(html.contains("waiting for 1 of 2 agencies"));
        assert!(html.contains("<td class=\"bets\">150</td>"));
        let metrics = get(addr, "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(metrics.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(metrics.ends_with("x 1\n"));
        let json = get(addr, "GET /status.json?x=1 HTTP/1.1\r\n\r\n");
        assert!(json.contains("\"missing\":[2]"), "{json}");
        let head = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK"));
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let post = get(addr, "POST / HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD"));
        // An idle connection does not keep the others waiting, nor the stop.
        let _idle = TcpStream::connect(addr).expect("connect");
        assert!(get(addr, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        let started = Instant::now();
        let joined = page.stop();
        assert!(joined >= 8, "every connection thread is joined ({joined})");
        assert!(started.elapsed() < REQUEST_DEADLINE + Duration::from_secs(1));
        assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let err = StatusPage::start("127.0.0.1", port, fixed())
            .err()
            .expect("port in use");
        let text = err.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{port}")) && text.contains("status"),
            "{text}"
        );
    }

    #[test]
    fn the_page_after_the_draw_shows_winners_and_no_missing() {
        let snap = StatusSnapshot {
            agencies: 1,
            finished: 1,
            drawn: true,
            entries: vec![AgencyStatus {
                agency: 1,
                connected: false,
                finished: true,
                bets: 9,
                winners: Some(3),
            }],
        };
        let html = render_page(&snap);
        assert!(html.contains("done: 3 winners"));
        assert!(html.contains("<td class=\"winners\">3</td>"));
        assert!(html.contains("<span id=\"missing\">none</span>"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external assets"
        );
        assert_eq!(
            render_json(&snap),
            "{\"agencies\":1,\"finished\":1,\"drawn\":true,\"missing\":[],\"entries\":[{\"agency\":1,\"connected\":false,\"finished\":true,\"bets\":9,\"winners\":3}]}\n"
        );
    }
}
