//! The opt-in HTTP status page (`[status] http_port`): a small blocking HTTP/1.1
//! server on its own listener, written over `std::net` (only `GET` and `HEAD`, one
//! request per connection, `Connection: close`).
//!
//! * `/` — a self-contained HTML page (no external assets) that reloads itself every
//!   2 s: finished k of N, the draw's state, the missing agencies (the first 50 by
//!   id, and how many in all) and a table of at most [`MAX_ROWS`] rows whatever N:
//!   one row per agency (connected, bets stored, finished, winners after the draw)
//!   while they fit; beyond that, consecutive agencies in the same state share a row
//!   (`4–5000 | no | 12345 | yes`), and if even those runs are too many the agencies
//!   are cut into equal blocks whose cells count (`250 of 500`). The page stays
//!   under 50 KB for any N.
//! * `/metrics` — the counters in the Prometheus text format (`text/plain;
//!   version=0.0.4`).
//! * `/status.json` — the same snapshot as `/`, as JSON, with every agency: it grows
//!   with N (about 70 bytes per agency, 7 MB at 100 000) and must be written within
//!   the same deadline, so for a huge N the `STATUS_QUERY` message (the client's
//!   status mode) is the way to read every agency.
//! * anything else — `404`; other methods — `405`.
//!
//! Threads: one acceptor thread, and one thread per HTTP connection, each with one
//! deadline of [`REQUEST_DEADLINE`] for its whole request and answer (every write
//! recomputes the time left, so a client that reads a little at a time cannot stretch
//! it; an answer cut by the deadline is reset, not left queued). At most
//! [`MAX_CLIENTS`] requests are served at once: at the cap, the oldest connection
//! still waiting for its request head (a browser's idle pre-connection, a slow
//! sender) is shut down to make room, so idle connections cannot lock the page out;
//! only when every place is answering a request is the newcomer answered `503`.
//! Requests in progress are kept in a registry: [`StatusPage::stop`] marks it
//! stopping (under its lock, which the acceptor takes to admit a request), shuts down
//! every registered socket, so that no peer can delay the stop, wakes the acceptor
//! with a connection of its own and joins it; the acceptor joins every connection
//! thread before it ends. No lock is held while a socket is read or written: the
//! page's content is rendered first, from one snapshot.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::connection::write_all_before;
use crate::protocol::{AgencyStatus, StatusSnapshot};
use crate::shutdown::lock;

/// How many HTTP connections are served at once.
pub const MAX_CLIENTS: usize = 16;
/// The longest a request may take to arrive and its answer to be written.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// The longest the acceptor spends writing a `503`.
const BUSY_DEADLINE: Duration = Duration::from_millis(200);
/// The largest request head (request line and headers) read.
const MAX_REQUEST_HEAD: usize = 8192;
/// The most rows the page's table has, however many agencies there are.
pub const MAX_ROWS: usize = 200;
/// How many missing agencies the page lists by id.
const MISSING_SHOWN: usize = 50;

/// What the page shows; implemented by the server's shared state.
pub trait Source: Send + Sync + 'static {
    /// The collection's state now, in one snapshot.
    fn snapshot(&self) -> StatusSnapshot;
    /// The metrics in the Prometheus text format.
    fn metrics(&self) -> String;
    /// Counts one answer with HTTP status `status` (written, or tried until the
    /// deadline).
    fn count_request(&self, status: u16) {
        let _ = status;
    }
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

/// One request in progress, as the acceptor and [`StatusPage::stop`] see it.
struct InFlight {
    stream: Arc<TcpStream>,
    /// When it was accepted.
    since: Instant,
    /// Whether its request head is still being read (it may be idle: evictable).
    reading: bool,
}

/// The requests in progress, so that `stop` and the acceptor can shut their sockets.
#[derive(Default)]
struct Registry {
    /// Set by `stop`; checked under this lock before a request is admitted.
    stopping: bool,
    next_id: u64,
    requests: HashMap<u64, InFlight>,
}

type Shared = Arc<Mutex<Registry>>;

/// A running status page.
pub struct StatusPage {
    addr: SocketAddr,
    registry: Shared,
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
        let registry = Shared::default();
        let acceptor = {
            let registry = Arc::clone(&registry);
            thread::Builder::new()
                .name("status-page".into())
                .spawn(move || accept_loop(&listener, &registry, &source))
                .map_err(HttpError::Spawn)?
        };
        Ok(StatusPage {
            addr,
            registry,
            acceptor,
        })
    }

    /// The address the page listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, shuts down the socket of every request in progress (so no
    /// peer, however slowly it reads, can delay the stop) and joins every thread of the
    /// page; returns how many connection threads were joined in all.
    pub fn stop(self) -> usize {
        let streams: Vec<Arc<TcpStream>> = {
            let mut registry = lock(&self.registry);
            // Set under the lock the acceptor admits requests under: a request is
            // either registered now (and shut down below) or refused.
            registry.stopping = true;
            registry
                .requests
                .values()
                .map(|r| Arc::clone(&r.stream))
                .collect()
        };
        for stream in streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        super::wake_acceptor(self.addr);
        self.acceptor.join().unwrap_or_else(|_| {
            log::error!("action: status_page_stop | result: fail | error: thread panicked");
            0
        })
    }
}

/// What the acceptor does with a new connection.
enum Admission {
    /// Serve it, registered under this id.
    Serve(u64),
    /// Answer `503`: every place is taken by a request being answered.
    Busy,
    /// The page is stopping.
    Stopping,
}

/// Registers `stream` if there is room. At [`MAX_CLIENTS`] requests, the oldest one
/// still waiting for its request head (an idle pre-connection, a slow sender) is
/// evicted to make room, so idle connections cannot lock everyone out; with no such
/// request, or with `2 × MAX_CLIENTS` threads still running, the answer is `Busy`.
fn admit(registry: &Shared, stream: &Arc<TcpStream>, threads: usize) -> Admission {
    let evicted = {
        let mut registry = lock(registry);
        if registry.stopping {
            return Admission::Stopping;
        }
        let mut evicted = None;
        if registry.requests.len() >= MAX_CLIENTS {
            let oldest_idle = registry
                .requests
                .iter()
                .filter(|(_, r)| r.reading)
                .min_by_key(|(_, r)| r.since)
                .map(|(&id, _)| id);
            match oldest_idle {
                Some(id) if threads < 2 * MAX_CLIENTS => {
                    evicted = registry.requests.remove(&id).map(|r| r.stream);
                }
                _ => return Admission::Busy,
            }
        }
        let id = registry.next_id;
        registry.next_id += 1;
        registry.requests.insert(
            id,
            InFlight {
                stream: Arc::clone(stream),
                since: Instant::now(),
                reading: true,
            },
        );
        (id, evicted)
    };
    let (id, evicted) = evicted;
    if let Some(idle) = evicted {
        // Its thread sees the end of its stream and finishes without answering.
        let _ = idle.shutdown(Shutdown::Both);
    }
    Admission::Serve(id)
}

fn accept_loop(listener: &TcpListener, registry: &Shared, source: &Arc<dyn Source>) -> usize {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut joined = 0;
    while !lock(registry).stopping {
        let stream = match listener.accept() {
            Ok((stream, _)) => Arc::new(stream),
            Err(e) => {
                if !lock(registry).stopping {
                    log::warn!("action: status_page_accept | result: fail | error: {e}");
                    thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        let (done, running): (Vec<_>, Vec<_>) =
            workers.into_iter().partition(JoinHandle::is_finished);
        joined += join_all(done);
        workers = running;
        let id = match admit(registry, &stream, workers.len()) {
            Admission::Serve(id) => id,
            Admission::Stopping => break,
            Admission::Busy => {
                let busy = Response::text(503, "Service Unavailable", "too many requests\n");
                let deadline = Instant::now() + BUSY_DEADLINE;
                let _ = respond(&stream, &busy, false, deadline);
                source.count_request(busy.status);
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
        };
        let spawned = {
            let (registry, source, stream) = (
                Arc::clone(registry),
                Arc::clone(source),
                Arc::clone(&stream),
            );
            thread::Builder::new()
                .name("status-http".into())
                .spawn(move || serve(id, &stream, &registry, source.as_ref()))
        };
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                lock(registry).requests.remove(&id);
                log::warn!("action: status_page_accept | result: fail | error: {e}");
            }
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

/// Serves one connection (registered as `id`): one request, one answer, then close;
/// all within one [`REQUEST_DEADLINE`].
fn serve(id: u64, stream: &TcpStream, registry: &Shared, source: &dyn Source) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    // Closed without a request (e.g. a browser's unused pre-connection), too slow, or
    // evicted: nothing to answer.
    if let Ok(Some(head)) = read_head(stream, deadline) {
        // No longer idle: from now on only `stop` shuts this socket.
        let admitted = match lock(registry).requests.get_mut(&id) {
            Some(request) => {
                request.reading = false;
                true
            }
            None => false,
        };
        if admitted {
            let (response, head_only) = route(&head, source);
            if let Err(e) = respond(stream, &response, head_only, deadline) {
                log::debug!("action: status_page_request | result: fail | error: {e}");
                // A cut answer is reset, not left queued for a peer that reads slowly:
                // closing with a zero linger drops what the kernel still holds.
                let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            }
            source.count_request(response.status);
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    lock(registry).requests.remove(&id);
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

/// Writes `response` to `stream`, the whole of it before `deadline` (however the
/// peer paces its reads).
fn respond(
    stream: &TcpStream,
    response: &Response,
    head_only: bool,
    deadline: Instant,
) -> io::Result<()> {
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
    write_all_before(stream, out.as_bytes(), deadline)
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
    let mut missing = snap
        .entries
        .iter()
        .filter(|e| !e.finished)
        .map(|e| e.agency);
    let mut shown: Vec<String> = missing
        .by_ref()
        .take(MISSING_SHOWN)
        .map(|a| a.to_string())
        .collect();
    let more = missing.count();
    if more > 0 {
        shown.push(format!("… ({} in all)", MISSING_SHOWN + more));
    }
    if shown.is_empty() {
        "none".to_string()
    } else {
        shown.join(", ")
    }
}

/// One row of the page's table: one agency, or consecutive agencies taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    first: u32,
    last: u32,
    agencies: u32,
    connected: u32,
    finished: u32,
    bets: u64,
    /// Winning bets, once the draw is done.
    winners: Option<u64>,
}

impl Row {
    fn of(e: &AgencyStatus) -> Row {
        Row {
            first: e.agency,
            last: e.agency,
            agencies: 1,
            connected: u32::from(e.connected),
            finished: u32::from(e.finished),
            bets: e.bets,
            winners: e.winners.map(u64::from),
        }
    }

    /// Adds the next agencies to the row.
    fn absorb(&mut self, next: &Row) {
        self.last = next.last;
        self.agencies += next.agencies;
        self.connected += next.connected;
        self.finished += next.finished;
        self.bets += next.bets;
        self.winners = match (self.winners, next.winners) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
    }
}

/// The table's rows, at most [`MAX_ROWS`] whatever N: one per agency while they fit;
/// else consecutive agencies in the same state share a row; if those runs are still
/// too many, the agencies are cut into [`MAX_ROWS`] equal blocks. Says which.
fn table_rows(snap: &StatusSnapshot) -> (Vec<Row>, Option<String>) {
    if snap.entries.len() <= MAX_ROWS {
        return (snap.entries.iter().map(Row::of).collect(), None);
    }
    let mut runs: Vec<Row> = Vec::new();
    for e in &snap.entries {
        let row = Row::of(e);
        match runs.last_mut() {
            Some(run)
                if run.connected.min(1) == row.connected && run.finished.min(1) == row.finished =>
            {
                run.absorb(&row)
            }
            _ => {
                runs.push(row);
                if runs.len() > MAX_ROWS {
                    break;
                }
            }
        }
    }
    if runs.len() <= MAX_ROWS {
        let note = format!(
            "{} agencies in {} rows: consecutive agencies in the same state share a row.",
            snap.entries.len(),
            runs.len()
        );
        return (runs, Some(note));
    }
    let block = snap.entries.len().div_ceil(MAX_ROWS);
    let blocks: Vec<Row> = snap
        .entries
        .chunks(block)
        .filter_map(|chunk| {
            let (first, rest) = chunk.split_first()?;
            let mut row = Row::of(first);
            rest.iter().for_each(|next| row.absorb(&Row::of(next)));
            Some(row)
        })
        .collect();
    let note = format!(
        "{} agencies in {} rows of up to {block} consecutive agencies each.",
        snap.entries.len(),
        blocks.len()
    );
    (blocks, Some(note))
}

/// A count of the row's agencies: `yes`/`no` for one agency or a whole row, else
/// `k of m`.
fn share(count: u32, of: u32) -> String {
    if count == of {
        "yes".to_string()
    } else if count == 0 {
        "no".to_string()
    } else {
        format!("{count} of {of}")
    }
}

/// The HTML page: everything inline, reloaded every 2 s, at most [`MAX_ROWS`] rows.
fn render_page(snap: &StatusSnapshot) -> String {
    let (table, note) = table_rows(snap);
    let mut rows = String::new();
    for row in &table {
        let winners = row.winners.map_or("—".to_string(), |w| w.to_string());
        let cls = if row.finished == row.agencies {
            "done"
        } else if row.finished == 0 {
            "open"
        } else {
            "mixed"
        };
        let (id, label) = if row.agencies == 1 {
            (format!("agency-{}", row.first), row.first.to_string())
        } else {
            (
                format!("agencies-{}-{}", row.first, row.last),
                format!("{}–{}", row.first, row.last),
            )
        };
        let (c, f) = (
            share(row.connected, row.agencies),
            share(row.finished, row.agencies),
        );
        // Writing to a String cannot fail.
        let _ = writeln!(
            rows,
            "<tr id=\"{id}\" class=\"{cls}\"><td class=\"agency\">{label}</td><td class=\"connected\">{c}</td><td class=\"bets\">{b}</td><td class=\"finished\">{f}</td><td class=\"winners\">{winners}</td></tr>",
            b = row.bets,
        );
    }
    let note = note.map_or(String::new(), |n| format!("<p id=\"grouping\">{n}</p>\n"));
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
tr.mixed td.finished {{ background: #eeeeb0; }}
</style>
</head>
<body>
<h1>Lotería Nacional — bet collection</h1>
<p class="summary">Finished: <span id="finished">{finished}</span> of <span id="agencies">{agencies}</span> agencies.
Bets stored: <span id="bets">{bets}</span>.
Draw: <span id="draw" data-drawn="{drawn}">{state}</span>.</p>
<p>Missing agencies: <span id="missing">{missing}</span></p>
{note}<table id="agencies-table">
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
    use std::io::Write;

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
        // The lottery of docs/PROTOCOL.md's STATUS example: 2 agencies, agency 1
        // connected and finished with 150 bets.
        let example = crate::protocol::tests::example_status();
        Arc::new(Fixed(
            StatusSnapshot::from_chunks(&[example]).expect("one whole answer"),
        ))
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

    /// `n` agencies; agency `a` has finished when `finished(a)`.
    fn many(n: u32, finished: impl Fn(u32) -> bool) -> StatusSnapshot {
        let entries: Vec<AgencyStatus> = (1..=n)
            .map(|agency| AgencyStatus {
                agency,
                connected: false,
                finished: finished(agency),
                bets: 10,
                winners: None,
            })
            .collect();
        StatusSnapshot {
            agencies: n,
            finished: u32::try_from(entries.iter().filter(|e| e.finished).count()).expect("fits"),
            drawn: false,
            entries,
        }
    }

    /// A connection with a small receive buffer that asks for `path` and then reads
    /// 2 KiB every 300 ms; returns when the server ended the answer (EOF or error).
    fn slow_reader(addr: SocketAddr, path: &str) -> JoinHandle<Duration> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(4096).expect("buffer");
        sock.connect(&addr.into()).expect("connect");
        let mut stream: TcpStream = sock.into();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
            .expect("send");
        let started = Instant::now();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while started.elapsed() < Duration::from_secs(15) {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => thread::sleep(Duration::from_millis(300)),
                }
            }
            started.elapsed()
        })
    }

    /// A big snapshot; notes when an answer ended (its count).
    struct Timed(StatusSnapshot, Mutex<Option<Instant>>);

    impl Source for Timed {
        fn snapshot(&self) -> StatusSnapshot {
            self.0.clone()
        }
        fn metrics(&self) -> String {
            String::new()
        }
        fn count_request(&self, _status: u16) {
            *lock(&self.1) = Some(Instant::now());
        }
    }

    #[test]
    fn a_slow_reader_gets_one_deadline_for_the_whole_answer() {
        // /status.json of 100 000 agencies is 7 MB, more than the kernel buffers: a
        // reader this slow takes minutes for it.
        let source = Arc::new(Timed(many(100_000, |_| false), Mutex::new(None)));
        let page = StatusPage::start("127.0.0.1", 0, Arc::clone(&source) as Arc<dyn Source>)
            .expect("starts");
        let asked = Instant::now();
        let reader = slow_reader(page.local_addr(), "/status.json");
        thread::sleep(REQUEST_DEADLINE + Duration::from_millis(500));
        let ended = *lock(&source.1);
        let ended = ended.map(|t| t.saturating_duration_since(asked));
        assert!(
            ended.is_some_and(|t| t < REQUEST_DEADLINE + Duration::from_millis(300)),
            "the answer's thread was still writing ({ended:?})"
        );
        // The cut answer is reset: the reader sees its end once it drained its buffer.
        assert!(reader.join().expect("reader") < Duration::from_secs(6));
        page.stop();
    }

    #[test]
    fn stop_shuts_the_requests_in_progress_instead_of_waiting_for_them() {
        let page = StatusPage::start("127.0.0.1", 0, Arc::new(Fixed(many(100_000, |_| false))))
            .expect("starts");
        let addr = page.local_addr();
        let reader = slow_reader(addr, "/status.json");
        // And one that has not sent its request yet.
        let _idle = TcpStream::connect(addr).expect("connect");
        thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let joined = page.stop();
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(800),
            "stop waited {took:?} for its peers"
        );
        assert!(joined >= 2, "{joined} threads joined");
        assert!(reader.join().expect("reader") < Duration::from_secs(6));
    }

    #[test]
    fn idle_connections_cannot_lock_the_page_out() {
        let page = StatusPage::start("127.0.0.1", 0, fixed()).expect("starts");
        let addr = page.local_addr();
        let idle: Vec<TcpStream> = (0..MAX_CLIENTS * 2)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        thread::sleep(Duration::from_millis(200));
        let html = get(addr, "GET / HTTP/1.1\r\n\r\n");
        assert!(html.starts_with("HTTP/1.1 200 OK"), "{html}");
        drop(idle);
        page.stop();
    }

    #[derive(Default)]
    struct Counting(Mutex<Vec<u16>>);

    impl Source for Counting {
        fn snapshot(&self) -> StatusSnapshot {
            many(1, |_| true)
        }
        fn metrics(&self) -> String {
            String::new()
        }
        fn count_request(&self, status: u16) {
            lock(&self.0).push(status);
        }
    }

    #[test]
    fn every_answer_is_counted_with_its_status() {
        let source = Arc::new(Counting::default());
        let page = StatusPage::start("127.0.0.1", 0, Arc::clone(&source) as Arc<dyn Source>)
            .expect("starts");
        let addr = page.local_addr();
        for request in [
            "GET / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\n\r\n",
            "GET /nope HTTP/1.1\r\n\r\n",
            "HEAD /metrics HTTP/1.1\r\n\r\n",
        ] {
            get(addr, request);
        }
        // An idle connection gets no answer and is not counted.
        drop(TcpStream::connect(addr).expect("connect"));
        page.stop();
        let mut codes = lock(&source.0).clone();
        codes.sort_unstable();
        assert_eq!(codes, vec![200, 200, 404, 405]);
    }

    #[test]
    fn the_page_stays_small_for_a_huge_lottery() {
        type Case = (&'static str, fn(u32) -> bool);
        let cases: [Case; 4] = [
            ("none finished", |_| false),
            ("all but three", |a| ![7, 500, 99_999].contains(&a)),
            ("alternating", |a| a % 2 == 0),
            ("first half", |a| a <= 50_000),
        ];
        for (name, finished) in cases {
            let snap = many(100_000, finished);
            let html = render_page(&snap);
            assert!(html.len() < 200_000, "{name}: {} bytes", html.len());
            let rows = html.matches("<tr id=").count();
            assert!(rows <= MAX_ROWS, "{name}: {rows} rows");
            assert!(
                html.contains("id=\"grouping\""),
                "{name}: says how rows are grouped"
            );
        }
        let html = render_page(&many(100_000, |a| a <= 50_000));
        assert!(
            html.contains("<tr id=\"agencies-1-50000\" class=\"done\"><td class=\"agency\">1–50000</td><td class=\"connected\">no</td><td class=\"bets\">500000</td><td class=\"finished\">yes</td>"),
            "a run of finished agencies is one row"
        );
        assert!(html.contains("<tr id=\"agencies-50001-100000\" class=\"open\">"));
        assert!(html.contains("… (50000 in all)"), "the missing are counted");
        let html = render_page(&many(100_000, |a| a != 7 && a != 99_999 && a != 500));
        assert!(
            html.contains("<tr id=\"agency-7\" class=\"open\">"),
            "a lone missing agency has its row"
        );
        assert!(html.contains("<span id=\"missing\">7, 500, 99999</span>"));
        let html = render_page(&many(100_000, |a| a % 2 == 0));
        assert!(html.contains("<tr id=\"agencies-1-500\" class=\"mixed\"><td class=\"agency\">1–500</td><td class=\"connected\">no</td><td class=\"bets\">5000</td><td class=\"finished\">250 of 500</td>"), "blocks when runs are too many");
        // Up to MAX_ROWS agencies, one row each, as before.
        let html = render_page(&many(200, |_| false));
        assert_eq!(html.matches("<tr id=\"agency-").count(), 200);
        assert!(!html.contains("id=\"grouping\""));
    }
}
