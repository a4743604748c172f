//! The central server: one thread per connection, a durable ledger and the draw
//! barrier.
//!
//! * [`ledger`](self) — `ledger::Ledger` owns the [`Store`] and the rules over it
//!   (next batch, replay, upload conflict, FIN, who owns an agency) behind its lock.
//! * `draw` — `draw::DrawBarrier`: the agencies waiting for their winners (one
//!   connection each) and the result; publishing it wakes them to answer themselves.
//! * `session` — one connection's conversation.
//! * `metrics` — lock-free counters, rendered in the Prometheus text format.
//! * `http` — the opt-in status page (`[status] http_port`): `/`, `/metrics`,
//!   `/status.json`.
//! * this module — binding, the accept loop (thread per connection, all joined; at
//!   most `max_connections` that own no agency, plus one per agency), the registry
//!   of live connections (shutdown, superseding), start-up recovery
//!   of the draw, the progress logger thread and the draw summary.
//!
//! No lock is held across socket I/O. [`run`] takes a bound listener and a
//! [`Shutdown`]; it returns once shutdown was triggered and every thread it started
//! (connections, the progress logger, the status page) has been joined.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ServerConfig;
use crate::connection::Connection;
use crate::protocol::{self, ErrorCode, Message, StatusSnapshot};
use crate::shutdown::{Shutdown, lock};
use crate::storage::{CsvJournalStore, StorageError, Store};

mod draw;
pub mod http;
mod ledger;
pub mod metrics;
mod session;

use draw::{DrawBarrier, DrawOutcome};
use http::{HttpError, StatusPage};
use ledger::Ledger;
use metrics::{Gauges, Metrics};
use session::Session;

/// How often the server logs `waiting_agencies` while some agency has finished and
/// the draw has not run.
pub const WAITING_LOG_EVERY: Duration = Duration::from_secs(5);
/// How many missing agencies a log line names.
const MISSING_SHOWN: usize = 20;

/// Why the server could not run.
#[derive(Debug)]
pub enum ServerError {
    /// The bets file could not be opened or read.
    Storage(StorageError),
    /// A socket operation failed.
    Io {
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The status page (`[status] http_port`) could not start.
    StatusPage(HttpError),
    /// The TLS material (`[tls] ca, cert, key`) could not be used.
    Tls(crate::tls::TlsError),
    /// A thread of the server could not be started.
    Spawn {
        /// Which thread.
        thread: &'static str,
        /// The cause.
        source: io::Error,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Storage(e) => write!(f, "storage: {e}"),
            ServerError::Io { action, source } => write!(f, "cannot {action}: {source}"),
            ServerError::StatusPage(e) => write!(f, "{e}"),
            ServerError::Tls(e) => write!(f, "tls: {e}"),
            ServerError::Spawn { thread, source } => {
                write!(f, "cannot start the {thread} thread: {source}")
            }
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Storage(e) => Some(e),
            ServerError::Io { source, .. } | ServerError::Spawn { source, .. } => Some(source),
            ServerError::StatusPage(e) => Some(e),
            ServerError::Tls(e) => Some(e),
        }
    }
}

impl From<StorageError> for ServerError {
    fn from(e: StorageError) -> Self {
        ServerError::Storage(e)
    }
}

/// Binds the listening socket with the configured host, port and listen backlog.
///
/// Every error names the address (`cannot bind: 0.0.0.0:12345: Address already in
/// use …`), and a port in use says what to do about it.
pub fn bind(config: &ServerConfig) -> Result<TcpListener, ServerError> {
    let wanted = format!("{}:{}", config.host, config.port);
    // The io::Error keeps its kind; its message gains the address (and a hint).
    let at = |action: &'static str, addr: &str| {
        let addr = addr.to_string();
        move |source: io::Error| {
            let hint = if source.kind() == io::ErrorKind::AddrInUse {
                "; another program listens there: stop it, or choose another server.port (SERVER_PORT)"
            } else {
                ""
            };
            ServerError::Io {
                action,
                source: io::Error::new(source.kind(), format!("{addr}: {source}{hint}")),
            }
        }
    };
    let addr = (config.host.as_str(), config.port)
        .to_socket_addrs()
        .map_err(at("resolve the listen address", &wanted))?
        .next()
        .ok_or_else(|| {
            at("resolve the listen address", &wanted)(io::Error::new(
                io::ErrorKind::NotFound,
                "no address found",
            ))
        })?;
    let shown = addr.to_string();
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(at("create the listening socket", &shown))?;
    socket
        .set_reuse_address(true)
        .map_err(at("set SO_REUSEADDR", &shown))?;
    socket.bind(&addr.into()).map_err(at("bind", &shown))?;
    socket
        .listen(config.listen_backlog)
        .map_err(at("listen", &shown))?;
    Ok(socket.into())
}

/// Serves agencies on `listener` until `shutdown` is triggered, storing bets in the
/// CSV + journal store at `config.storage_path`.
///
/// Opens (and recovers) the store first (an error there is returned before anything
/// is served), then accepts connections, one thread each. On shutdown it stops
/// accepting, shuts every connection down, wakes the waiting agencies, joins every
/// thread and closes the store, logging each step.
pub fn run(
    listener: TcpListener,
    config: &ServerConfig,
    shutdown: &Shutdown,
) -> Result<(), ServerError> {
    let store = CsvJournalStore::open(&config.storage_path)?;
    run_with_store(listener, config, shutdown, Box::new(store))
}

/// [`run`] over any [`Store`] (tests use it to inject storage faults).
pub fn run_with_store(
    listener: TcpListener,
    config: &ServerConfig,
    shutdown: &Shutdown,
    store: Box<dyn Store>,
) -> Result<(), ServerError> {
    let local = listener.local_addr().map_err(|source| ServerError::Io {
        action: "read the listening address",
        source,
    })?;
    let tls = load_tls(config)?;
    let recovered = store.recovered().clone();
    log::info!(
        "action: recovery | result: success | storage: {} | bets: {} | agencies_with_bets: {} | finished: {} | drawn: {}",
        store.describe(),
        recovered.bets,
        recovered.agencies.len(),
        recovered.finished.len(),
        recovered.draw.is_some()
    );
    let shared = Arc::new(Shared {
        config: config.clone(),
        shutdown: shutdown.clone(),
        ledger: Ledger::new(store, config.agencies),
        barrier: DrawBarrier::default(),
        connections: Mutex::new(HashMap::new()),
        metrics: Metrics::default(),
        tls,
    });
    shared.restore_draw();
    let page = match config.status_port {
        Some(port) => {
            let source: Arc<dyn http::Source> = Arc::clone(&shared) as Arc<dyn http::Source>;
            let page = StatusPage::start(&config.host, port, source).map_err(|e| {
                log::error!(
                    "action: status_page | result: fail | error: {}",
                    crate::logging::sanitize(&e.to_string())
                );
                ServerError::StatusPage(e)
            })?;
            log::info!(
                "action: status_page | result: success | address: {} | pages: /,/metrics,/status.json",
                page.local_addr()
            );
            Some(page)
        }
        None => None,
    };
    let progress = {
        let shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("progress".into())
            .spawn(move || shared.progress_logger())
    };
    let progress = match progress {
        Ok(handle) => handle,
        Err(source) => {
            if let Some(page) = page {
                page.stop();
            }
            return Err(ServerError::Spawn {
                thread: "progress logger",
                source,
            });
        }
    };
    log::info!("action: listen | result: success | address: {local}");
    log::info!(
        "action: connection_limit | result: success | max_connections: {} | agencies: {} | max_open: {} | note: connections that have not said HELLO are capped at max_connections; each agency's own connection is not counted",
        config.max_connections,
        config.agencies,
        max_open(config)
    );
    let hook = {
        let shared = Arc::clone(&shared);
        shutdown.on_trigger(move || {
            // Agencies waiting for the draw are woken to answer SHUTTING_DOWN
            // themselves; every other socket is shut down so blocked reads and writes
            // return (a waiter writing a DRAW_PENDING or its winners included).
            let spared = shared.barrier.close();
            shared.close_connections_except(&spared);
            wake_acceptor(local);
        })
    };

    let workers = accept_loop(&listener, &shared);
    drop(listener);
    log::info!("action: close_listener | result: success | address: {local}");

    let count = workers.len();
    for worker in workers {
        if worker.join().is_err() {
            log::error!("action: join_connection | result: fail | error: thread panicked");
        }
    }
    log::info!("action: join_connections | result: success | threads: {count}");
    // The hook triggered shutdown's sleepers too: the logger wakes and ends.
    if progress.join().is_err() {
        log::error!("action: join_progress | result: fail | error: thread panicked");
    }
    if let Some(page) = page {
        let address = page.local_addr();
        let threads = page.stop();
        log::info!(
            "action: status_page_stop | result: success | address: {address} | threads: {threads}"
        );
    }
    drop(hook);
    // Every worker is joined and the hook unregistered, so once a hook call still
    // running on the signal thread (if any) returns, this is the last reference and
    // the store closes with it.
    let path = shared.ledger.describe();
    drop(shared);
    log::info!("action: close_storage | result: success | path: {path}");
    Ok(())
}

/// Loads the TLS material of `config` (none: TLS off) and logs how agencies are
/// authenticated, with a WARN line when they are not.
fn load_tls(config: &ServerConfig) -> Result<Option<crate::tls::ServerTls>, ServerError> {
    use crate::logging::sanitize;
    let files = &config.tls;
    let (Some(ca), Some(cert), Some(key)) = (&files.ca, &files.cert, &files.key) else {
        log::warn!(
            "action: tls | result: success | tls: off | note: agencies are not authenticated: anyone who reaches the port can act as any agency and bets travel in the clear; set tls.ca, tls.cert and tls.key (make certs writes them under certs/)"
        );
        return Ok(None);
    };
    let tls = crate::tls::ServerTls::load(ca, cert, key).map_err(|e| {
        log::error!(
            "action: tls | result: fail | error: {}",
            sanitize(&e.to_string())
        );
        ServerError::Tls(e)
    })?;
    let shown = |p: &std::path::Path| sanitize(&p.display().to_string()).to_string();
    if config.tls_required {
        log::info!(
            "action: tls | result: success | tls: on | required: true | ca: {} | cert: {} | note: agencies must come over TLS with their own certificate",
            shown(ca),
            shown(cert)
        );
    } else {
        log::warn!(
            "action: tls | result: success | tls: on | required: false | ca: {} | cert: {} | note: agencies may also come in the clear, unauthenticated (tls.required = false)",
            shown(ca),
            shown(cert)
        );
    }
    Ok(Some(tls))
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    while !shared.shutdown.is_triggered() {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                if !shared.shutdown.is_triggered() {
                    log::warn!("action: accept | result: fail | error: {e}");
                    // Back off so that a persistent error (e.g. no file descriptors
                    // left) does not spin this thread.
                    shared.shutdown.sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        if shared.shutdown.is_triggered() {
            break; // Most likely our own wake-up connection.
        }
        workers = reap(workers);
        if !shared.has_room() {
            shared.metrics.refused_busy();
            refuse_busy(stream, peer, shared.config.max_connections);
            // Make room for the next attempt: connections that own no agency and
            // keep a slot past what any honest one needs (an echo or status loop
            // that never ends) must not keep agencies out.
            shared.evict_oldest_unowned();
            continue;
        }
        next_id += 1;
        let id = next_id;
        let conn = match Connection::new(stream) {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("action: open_connection | result: fail | peer: {peer} | error: {e}");
                continue;
            }
        };
        let superseded = Arc::new(AtomicBool::new(false));
        let evicted = Arc::new(AtomicBool::new(false));
        let flags = Flags {
            superseded: Arc::clone(&superseded),
            evicted: Arc::clone(&evicted),
        };
        if !shared.register(id, conn.shared_stream(), flags) {
            break; // Shutdown began between accept and registration.
        }
        let worker_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || {
                Session::serve(&worker_shared, conn, id, peer, superseded, evicted);
                worker_shared.unregister(id);
            });
        match spawned {
            Ok(handle) => {
                shared.metrics.connection_accepted();
                workers.push(handle);
            }
            Err(e) => {
                log::error!("action: spawn_connection | result: fail | peer: {peer} | error: {e}");
                shared.unregister(id);
            }
        }
    }
    log::info!("action: accept_loop | result: success | status: stopped");
    workers
}

/// Joins the threads that have finished and keeps the others.
fn reap(workers: Vec<JoinHandle<()>>) -> Vec<JoinHandle<()>> {
    let (done, running): (Vec<_>, Vec<_>) = workers.into_iter().partition(|w| w.is_finished());
    for worker in done {
        if worker.join().is_err() {
            log::error!("action: join_connection | result: fail | error: thread panicked");
        }
    }
    running
}

/// The most connections open at once: `max_connections` not (or no longer) owning
/// an agency, plus one per agency.
fn max_open(config: &ServerConfig) -> usize {
    let agencies = usize::try_from(config.agencies).unwrap_or(usize::MAX);
    config.max_connections.saturating_add(agencies)
}

fn refuse_busy(stream: TcpStream, peer: SocketAddr, max: usize) {
    log::warn!(
        "action: accept | result: fail | peer: {peer} | error: server busy ({max} connections that own no agency)"
    );
    let message = Message::Error {
        code: ErrorCode::ServerBusy,
        reason: format!(
            "the server already serves {max} connections that have not said HELLO; try again later"
        ),
    };
    // Best effort: the peer may already be gone, and the socket closes on drop.
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = protocol::write_message(&mut &stream, &message);
}

/// Unblocks `accept` by connecting to the listener (on loopback if it listens on any
/// address).
pub(super) fn wake_acceptor(local: SocketAddr) {
    let mut target = local;
    if target.ip().is_unspecified() {
        target.set_ip(match target.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    // If this fails the listener is already gone, which is what we wanted anyway.
    let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
}

/// A live connection, as the registry knows it.
struct Registered {
    stream: Arc<TcpStream>,
    superseded: Arc<AtomicBool>,
    /// Set when the accept loop closes this connection to make room (it owned no
    /// agency and was older than [`EVICTABLE_AFTER`] timeouts).
    evicted: Arc<AtomicBool>,
    /// When it was accepted.
    since: Instant,
}

/// What the accept loop hands a connection's thread and keeps in the registry.
struct Flags {
    superseded: Arc<AtomicBool>,
    evicted: Arc<AtomicBool>,
}

/// A connection that owns no agency may be closed to make room once it has been open
/// this many `server.io_timeout`s: longer than any idle, trickling or unread peer
/// lives (each is cut at one), so only a peer that keeps asking (echo, status) is.
const EVICTABLE_AFTER: u32 = 2;

/// State shared by every connection thread.
struct Shared {
    config: ServerConfig,
    shutdown: Shutdown,
    ledger: Ledger,
    barrier: DrawBarrier,
    connections: Mutex<HashMap<u64, Registered>>,
    metrics: Metrics,
    /// The TLS set-up, when `[tls]` is configured.
    tls: Option<crate::tls::ServerTls>,
}

impl http::Source for Shared {
    fn snapshot(&self) -> StatusSnapshot {
        self.status_snapshot()
    }

    fn metrics(&self) -> String {
        self.metrics_text()
    }

    fn count_request(&self, status: u16) {
        self.metrics.http_request(status);
    }
}

impl Shared {
    /// Records a stream so shutdown can close it; `false` if shutdown already began.
    fn register(&self, id: u64, stream: Arc<TcpStream>, flags: Flags) -> bool {
        let mut connections = lock(&self.connections);
        // Checked under the lock the shutdown hook takes: either the hook sees this
        // stream, or we see the flag it set before running.
        if self.shutdown.is_triggered() {
            return false;
        }
        connections.insert(
            id,
            Registered {
                stream,
                superseded: flags.superseded,
                evicted: flags.evicted,
                since: Instant::now(),
            },
        );
        true
    }

    /// Closes the oldest connection that owns no agency, if it has been open at least
    /// [`EVICTABLE_AFTER`] × `server.io_timeout`: its thread sees the flag when its
    /// read returns (the read side is shut down for that), answers `SERVER_BUSY` and
    /// closes. So anonymous peers that keep asking cannot hold every slot for ever;
    /// an agency refused `SERVER_BUSY` finds room at its next attempt.
    fn evict_oldest_unowned(&self) {
        let owned = self.ledger.owner_connections();
        let old_enough = self.config.io_timeout.saturating_mul(EVICTABLE_AFTER);
        let connections = lock(&self.connections);
        let oldest = connections
            .iter()
            .filter(|(id, c)| {
                !owned.contains(id)
                    && !c.evicted.load(Ordering::SeqCst)
                    && !c.superseded.load(Ordering::SeqCst)
                    && c.since.elapsed() >= old_enough
            })
            .min_by_key(|(_, c)| c.since);
        if let Some((&id, conn)) = oldest {
            conn.evicted.store(true, Ordering::SeqCst);
            let _ = conn.stream.shutdown(std::net::Shutdown::Read);
            log::warn!(
                "action: evict | result: success | connection: {id} | open_for: {} | reason: the server is full and this connection owns no agency",
                crate::config::format_duration(conn.since.elapsed())
            );
        }
    }

    fn unregister(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    /// Whether the accept loop may take one more connection: fewer than
    /// `max_connections` of the open ones own no agency (they have not said `HELLO`,
    /// or a newer connection of their agency took over and they are closing). A
    /// connection whose `HELLO` was accepted owns its agency (the ledger's owner, one
    /// per agency) and is not counted, so agencies that wait for the draw never keep
    /// the others out, and at most `max_connections + agencies` are open at once.
    ///
    /// The open count is read first, then the owners: only this (accept) thread adds
    /// connections, so between the two reads the open count can only fall and a rise
    /// of the owners is a move out of the unowned ones — the difference never counts
    /// fewer unowned connections than there are.
    fn has_room(&self) -> bool {
        let open = lock(&self.connections).len();
        let owning = self.ledger.owners();
        open.saturating_sub(owning) < self.config.max_connections
    }

    fn close_connections_except(&self, keep: &HashSet<u64>) {
        let connections = lock(&self.connections);
        for (_, conn) in connections.iter().filter(|(id, _)| !keep.contains(id)) {
            // A stream the peer already closed reports an error; nothing to do then.
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Tells connection `id` that a newer connection of its agency took over: its
    /// thread sees the flag when its read returns (the read side is shut down for
    /// that) or when its wait for the draw wakes, answers `SUPERSEDED` and closes.
    fn supersede(&self, id: u64) {
        if let Some(conn) = lock(&self.connections).get(&id) {
            conn.superseded.store(true, Ordering::SeqCst);
            let _ = conn.stream.shutdown(std::net::Shutdown::Read);
        }
        self.barrier.wake_all();
    }

    /// At start-up: answers at once if the draw had run, and runs it if every `FIN`
    /// was recorded but the draw was not (a crash between the two).
    fn restore_draw(&self) {
        if let Some(record) = self.ledger.draw() {
            if record.winning_number != self.config.winning_number {
                log::warn!(
                    "action: draw_restore | result: in_progress | recorded_winning_number: {} | configured: {} | reason: the recorded draw keeps its number",
                    record.winning_number,
                    self.config.winning_number
                );
            }
            let outcome = self.compute_draw("draw_restore");
            self.barrier.publish(outcome);
        } else if let Some(recorded) = self.ledger.draw_pending(self.config.winning_number) {
            log::info!(
                "action: draw_resume | result: in_progress | reason: every agency had finished but the draw had not run"
            );
            self.draw_and_answer(recorded.err());
        } else {
            self.log_missing();
        }
    }

    /// The collection's state in one snapshot. The draw's result is read first: once
    /// it is published every `FIN` is recorded and no bet can change, so the ledger's
    /// snapshot taken after it agrees with it.
    fn status_snapshot(&self) -> StatusSnapshot {
        let result = self.barrier.result();
        let draw = result.as_ref().and_then(|outcome| outcome.as_ref().ok());
        self.ledger.status(draw.map(|d| &**d))
    }

    /// The metrics page: the counters and the gauges read now.
    fn metrics_text(&self) -> String {
        let snap = self.status_snapshot();
        let connections_open = u64::try_from(lock(&self.connections).len()).unwrap_or(u64::MAX);
        let connected = snap.entries.iter().filter(|e| e.connected).count();
        let gauges = Gauges {
            connections_open,
            agencies: snap.agencies,
            agencies_finished: snap.finished,
            agencies_connected: u32::try_from(connected).unwrap_or(u32::MAX),
            bets_in_storage: snap.entries.iter().map(|e| e.bets).sum(),
            draw_done: snap.drawn,
            winners: snap
                .entries
                .iter()
                .map(|e| u64::from(e.winners.unwrap_or(0)))
                .sum(),
        };
        self.metrics.render(&gauges)
    }

    /// The progress logger thread: every [`WAITING_LOG_EVERY`], while at least one
    /// agency has finished and the draw has not run, one `waiting_agencies` line.
    fn progress_logger(&self) {
        while !self.shutdown.sleep(WAITING_LOG_EVERY) {
            if self.barrier.result().is_some() {
                continue;
            }
            let agencies = self.ledger.agencies();
            let (finished, missing, count) = self.ledger.waiting_for(MISSING_SHOWN);
            if finished == 0 || count == 0 {
                continue;
            }
            log::info!(
                "action: waiting_agencies | result: in_progress | finished: {finished} | agencies: {agencies} | missing: {}",
                missing_label(&missing, count)
            );
        }
    }

    /// Logs the draw's one-line summary (the demo's table is built from it).
    fn log_draw_summary(&self, draw: &crate::bet::DrawResult, elapsed: Duration) {
        let snap = self.ledger.status(Some(draw));
        let pairs = |f: &dyn Fn(&protocol::AgencyStatus) -> u64| {
            snap.entries
                .iter()
                .map(|e| format!("{}:{}", e.agency, f(e)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let bets: u64 = snap.entries.iter().map(|e| e.bets).sum();
        log::info!(
            "action: draw_summary | result: success | agencies: {} | bets: {bets} | winners: {} | duration: {} | bets_per_agency: {} | winners_per_agency: {}",
            snap.agencies,
            draw.total(),
            crate::config::format_duration(elapsed),
            pairs(&|e| e.bets),
            pairs(&|e| u64::from(e.winners.unwrap_or(0))),
        );
    }

    /// Runs the draw through the store and logs it under `action`.
    fn compute_draw(&self, action: &str) -> DrawOutcome {
        let started = Instant::now();
        match self.ledger.compute_draw() {
            Ok((draw, count)) => {
                let committed = self.ledger.bets();
                if count != committed {
                    log::error!(
                        "action: {action} | result: fail | bets_read: {count} | bets_committed: {committed} | reason: the store read back another number of bets than it committed"
                    );
                }
                let elapsed = started.elapsed();
                log::info!(
                    "action: {action} | result: success | bets: {count} | winning_number: {} | winners: {} | elapsed: {}ms",
                    draw.winning_number(),
                    draw.total(),
                    elapsed.as_millis()
                );
                self.log_draw_summary(&draw, elapsed);
                Ok(Arc::new(draw))
            }
            Err(e) => {
                log::error!("action: {action} | result: fail | error: {e}");
                Err(format!("the draw failed: {e}"))
            }
        }
    }

    /// Runs the draw over everything stored and publishes the result: every agency
    /// waiting for it is woken and writes its own answer (this thread writes to no
    /// other connection). If the draw could not be journaled (`unrecorded`), the
    /// result is an error and every agency is answered `INTERNAL` instead: winners that
    /// a restart might draw differently are never sent.
    fn draw_and_answer(&self, unrecorded: Option<String>) {
        let outcome = match unrecorded {
            None => self.compute_draw("sorteo"),
            Some(why) => {
                log::error!(
                    "action: sorteo | result: fail | error: the draw could not be journaled: {why}"
                );
                Err(format!(
                    "the draw could not be recorded ({why}); it runs when the server restarts"
                ))
            }
        };
        let drawn = outcome.is_ok();
        let waiting = self.barrier.publish(outcome);
        log::info!(
            "action: draw_published | result: {} | waiting_agencies: {waiting}",
            if drawn { "success" } else { "fail" }
        );
    }

    /// Logs which agencies the draw still waits for.
    fn log_missing(&self) {
        let agencies = self.ledger.agencies();
        let (finished, missing, count) = self.ledger.waiting_for(MISSING_SHOWN);
        if count > 0 {
            log::info!(
                "action: draw_wait | result: in_progress | finished: {finished} | agencies: {agencies} | missing: {}",
                missing_label(&missing, count)
            );
        }
    }
}

/// `1,2,3` — or `1,2,…` when more than the shown agencies are missing.
fn missing_label(shown: &[crate::bet::AgencyId], count: u32) -> String {
    let mut label: Vec<String> = shown.iter().map(|a| a.to_string()).collect();
    if usize::try_from(count).unwrap_or(usize::MAX) > shown.len() {
        label.push("…".into());
    }
    label.join(",")
}
