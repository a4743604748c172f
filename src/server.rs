//! The central server: one thread per connection, shared storage and the FIN barrier.
//!
//! Shared state lives in `Shared` behind two mutexes, never held across socket I/O:
//!
//! * `ledger` — the bet [`Storage`] plus what decides whether a batch may be stored:
//!   the last stored `seq` per agency, the agencies that sent `FIN`, and whether the
//!   draw has started. Storing a batch and recording a `FIN` both happen under this
//!   lock, so once the N-th `FIN` flips `drawn` no bet can slip in behind the draw.
//! * `barrier` — the agencies waiting for their winners (with a clone of their socket)
//!   and, once known, the draw's result. The thread that records the N-th `FIN` runs
//!   the draw, publishes the result, answers every waiting agency over its socket, and
//!   wakes the waiting threads through the `drawn` [`Condvar`]. Shutdown wakes them too.
//!
//! [`run`] takes a bound listener and a [`Shutdown`]; it returns once shutdown was
//! triggered and every connection thread has been joined.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::bet::{self, AgencyId, Bet, DrawResult};
use crate::config::ServerConfig;
use crate::connection::{Connection, ConnectionError};
use crate::logging;
use crate::protocol::{self, ErrorCode, Frame, FrameError, Message, kind};
use crate::shutdown::{Shutdown, lock};
use crate::storage::{self, Storage, StorageError};

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
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Storage(e) => write!(f, "storage: {e}"),
            ServerError::Io { action, source } => write!(f, "cannot {action}: {source}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Storage(e) => Some(e),
            ServerError::Io { source, .. } => Some(source),
        }
    }
}

impl From<StorageError> for ServerError {
    fn from(e: StorageError) -> Self {
        ServerError::Storage(e)
    }
}

/// How often an agency waiting for the draw is checked for having left, so that its
/// thread and connection slot are freed instead of being held until the draw.
const PROBE_WAITER_EVERY: Duration = Duration::from_millis(250);

/// How long the drawing thread may block writing to one waiting agency.
const WAITER_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the listening socket with the configured host, port and listen backlog.
pub fn bind(config: &ServerConfig) -> Result<TcpListener, ServerError> {
    let io_err = |action| move |source| ServerError::Io { action, source };
    let addr = (config.host.as_str(), config.port)
        .to_socket_addrs()
        .map_err(io_err("resolve the listen address"))?
        .next()
        .ok_or_else(|| ServerError::Io {
            action: "resolve the listen address",
            source: io::Error::new(io::ErrorKind::NotFound, config.host.clone()),
        })?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(io_err("create the listening socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(io_err("set SO_REUSEADDR"))?;
    socket.bind(&addr.into()).map_err(io_err("bind"))?;
    socket
        .listen(config.listen_backlog)
        .map_err(io_err("listen"))?;
    Ok(socket.into())
}

/// Serves agencies on `listener` until `shutdown` is triggered.
///
/// Opens the bets file first (an error there is returned before anything is served),
/// then accepts connections, one thread each. On shutdown it stops accepting, shuts
/// every connection down, wakes the waiting agencies, joins every thread and closes
/// the bets file, logging each step.
pub fn run(
    listener: TcpListener,
    config: &ServerConfig,
    shutdown: &Shutdown,
) -> Result<(), ServerError> {
    let local = listener.local_addr().map_err(|source| ServerError::Io {
        action: "read the listening address",
        source,
    })?;
    let storage = Storage::open(&config.storage_path)?;
    let stored = storage::for_each_stored(&config.storage_path, |_, _| {})?;
    log::info!(
        "action: storage_open | result: success | path: {} | bets: {stored}",
        config.storage_path.display()
    );
    log::info!("action: listen | result: success | address: {local}");
    let shared = Arc::new(Shared {
        config: config.clone(),
        shutdown: shutdown.clone(),
        ledger: Mutex::new(Ledger {
            storage,
            last_seq: HashMap::new(),
            finished: BTreeSet::new(),
            drawn: false,
        }),
        barrier: Mutex::new(Barrier::default()),
        drawn: Condvar::new(),
        connections: Mutex::new(HashMap::new()),
    });
    let hook = {
        let shared = Arc::clone(&shared);
        shutdown.on_trigger(move || {
            // Agencies waiting for the draw are woken to answer SHUTTING_DOWN
            // themselves; every other socket is shut down so blocked reads return.
            let waiting: HashSet<u64> = {
                let barrier = lock(&shared.barrier);
                shared.drawn.notify_all();
                barrier.waiting.iter().map(|w| w.conn_id).collect()
            };
            shared.close_connections_except(&waiting);
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
    drop(hook);
    // Every worker is joined and the hook unregistered, so once a hook call still
    // running on the signal thread (if any) returns, this is the last reference and
    // the bets file closes with it.
    drop(shared);
    log::info!(
        "action: close_storage | result: success | path: {}",
        config.storage_path.display()
    );
    Ok(())
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
        if workers.len() >= shared.config.max_connections {
            refuse_busy(stream, peer, shared.config.max_connections);
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
        if !shared.register(id, conn.shared_stream()) {
            break; // Shutdown began between accept and registration.
        }
        let worker_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || {
                Session::serve(&worker_shared, conn, id, peer);
                worker_shared.unregister(id);
            });
        match spawned {
            Ok(handle) => workers.push(handle),
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

fn refuse_busy(stream: TcpStream, peer: SocketAddr, max: usize) {
    log::warn!(
        "action: accept | result: fail | peer: {peer} | error: server busy ({max} connections)"
    );
    let message = Message::Error {
        code: ErrorCode::ServerBusy,
        reason: format!("the server already serves {max} connections; try again later"),
    };
    // Best effort: the peer may already be gone, and the socket closes on drop.
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = protocol::write_message(&mut &stream, &message);
}

/// Unblocks `accept` by connecting to the listener (on loopback if it listens on any
/// address).
fn wake_acceptor(local: SocketAddr) {
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

/// State shared by every connection thread.
struct Shared {
    config: ServerConfig,
    shutdown: Shutdown,
    ledger: Mutex<Ledger>,
    barrier: Mutex<Barrier>,
    drawn: Condvar,
    connections: Mutex<HashMap<u64, Arc<TcpStream>>>,
}

struct Ledger {
    storage: Storage,
    /// The highest stored `seq` of each upload (agency, upload id).
    last_seq: HashMap<(AgencyId, u64), u64>,
    finished: BTreeSet<AgencyId>,
    drawn: bool,
}

#[derive(Default)]
struct Barrier {
    result: Option<DrawOutcome>,
    waiting: Vec<Waiter>,
    /// Connections the drawing thread is writing winners to right now.
    sending: HashSet<u64>,
    /// Connections that have been answered (`true`) or whose answer could not be
    /// written (`false`), and have not yet noticed it.
    answered: HashMap<u64, bool>,
}

type DrawOutcome = Result<Arc<DrawResult>, String>;

struct Waiter {
    conn_id: u64,
    agency: AgencyId,
    stream: Arc<TcpStream>,
}

enum Stored {
    New,
    Replay { last: u64 },
}

enum Refusal {
    DrawDone,
    AgencyFinished,
    Storage(StorageError),
}

impl Shared {
    /// Records a stream so shutdown can close it; `false` if shutdown already began.
    fn register(&self, id: u64, stream: Arc<TcpStream>) -> bool {
        let mut connections = lock(&self.connections);
        // Checked under the lock the shutdown hook takes: either the hook sees this
        // stream, or we see the flag it set before running.
        if self.shutdown.is_triggered() {
            return false;
        }
        connections.insert(id, stream);
        true
    }

    fn unregister(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    fn close_connections_except(&self, keep: &HashSet<u64>) {
        let connections = lock(&self.connections);
        for (_, stream) in connections.iter().filter(|(id, _)| !keep.contains(id)) {
            // A stream the peer already closed reports an error; nothing to do then.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Stores a validated batch unless the agency finished, the draw ran, or it is a
    /// replay of a batch already stored.
    fn store(
        &self,
        agency: AgencyId,
        upload: u64,
        seq: u64,
        bets: &[Bet],
    ) -> Result<Stored, Refusal> {
        let mut ledger = lock(&self.ledger);
        if ledger.drawn {
            return Err(Refusal::DrawDone);
        }
        if ledger.finished.contains(&agency) {
            return Err(Refusal::AgencyFinished);
        }
        let key = (agency, upload);
        if let Some(&last) = ledger.last_seq.get(&key).filter(|&&last| seq <= last) {
            return Ok(Stored::Replay { last });
        }
        ledger
            .storage
            .append(agency, bets)
            .map_err(Refusal::Storage)?;
        ledger.last_seq.insert(key, seq);
        Ok(Stored::New)
    }

    /// Records `agency`'s FIN. Returns how many agencies have finished and whether this
    /// call completed the set, which makes the caller the one that runs the draw.
    fn finish(&self, agency: AgencyId) -> (u32, bool) {
        let mut ledger = lock(&self.ledger);
        let newly = ledger.finished.insert(agency);
        // At most `agencies` (a u32) distinct ids in 1..=agencies can be recorded.
        let finished = u32::try_from(ledger.finished.len()).unwrap_or(u32::MAX);
        let draw_now = newly && finished == self.config.agencies && !ledger.drawn;
        if draw_now {
            ledger.drawn = true;
        }
        (finished, draw_now)
    }

    fn has_finished(&self, agency: AgencyId) -> bool {
        lock(&self.ledger).finished.contains(&agency)
    }

    /// Runs the draw over everything stored, publishes the result, and answers every
    /// agency that is already waiting.
    fn draw_and_answer(&self) {
        // `drawn` is set, so nothing is appended any more: the file can be read without
        // holding the ledger lock.
        let mut draw = DrawResult::new(self.config.winning_number);
        let outcome = match storage::for_each_stored(&self.config.storage_path, |agency, bet| {
            draw.consider(agency, bet)
        }) {
            Ok(count) => {
                log::info!(
                    "action: sorteo | result: success | bets: {count} | winning_number: {} | winners: {}",
                    self.config.winning_number,
                    draw.total()
                );
                Ok(Arc::new(draw))
            }
            Err(e) => {
                log::error!("action: sorteo | result: fail | error: {e}");
                Err(format!("the draw failed: {e}"))
            }
        };
        let waiters = {
            let mut barrier = lock(&self.barrier);
            barrier.result = Some(outcome.clone());
            let waiters = std::mem::take(&mut barrier.waiting);
            barrier.sending.extend(waiters.iter().map(|w| w.conn_id));
            waiters
        };
        let mut delivered = Vec::with_capacity(waiters.len());
        for waiter in &waiters {
            // One deadline for the whole answer, not per write call: a waiter that
            // reads slowly or not at all must not hold the others up.
            let limit = self.config.io_timeout.min(WAITER_WRITE_TIMEOUT);
            let sent = self.send_winners(&waiter.stream, &outcome, waiter.agency, limit);
            delivered.push((waiter.conn_id, sent.is_ok()));
        }
        let mut barrier = lock(&self.barrier);
        for (conn_id, ok) in delivered {
            barrier.sending.remove(&conn_id);
            barrier.answered.insert(conn_id, ok);
        }
        self.drawn.notify_all();
    }

    /// Writes `agency`'s answer to `stream` within `limit` (however the peer paces its
    /// reads), restores the stream's write timeout and logs the outcome.
    fn send_winners(
        &self,
        stream: &TcpStream,
        outcome: &DrawOutcome,
        agency: AgencyId,
        limit: Duration,
    ) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        let sent = winners_reply(outcome, agency).iter().try_for_each(|m| {
            let bytes = m
                .encode()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            write_all_before(stream, &bytes, deadline)
        });
        let restored = stream.set_write_timeout(Some(self.config.io_timeout));
        let sent = sent.and(restored);
        let count = outcome.as_ref().map_or(0, |d| d.winners_of(agency).len());
        match &sent {
            Ok(()) => log::info!(
                "action: winners_sent | result: success | agency: {agency} | cant_ganadores: {count}"
            ),
            Err(e) => {
                log::warn!("action: winners_sent | result: fail | agency: {agency} | error: {e}")
            }
        }
        sent
    }
}

/// `write_all` that fails with `TimedOut` once `deadline` has passed, however the
/// peer paces its reads.
fn write_all_before(stream: &TcpStream, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "answer deadline passed"))?;
        stream.set_write_timeout(Some(left))?;
        match (&*stream).write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The messages that answer `agency`'s winners query once the draw is done.
fn winners_reply(outcome: &DrawOutcome, agency: AgencyId) -> Vec<Message> {
    match outcome {
        Ok(draw) => Message::winners_chunks(draw.winners_of(agency)),
        Err(reason) => vec![Message::Error {
            code: ErrorCode::Internal,
            reason: reason.clone(),
        }],
    }
}

/// Whether the connection goes on after a request.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// One connection's conversation.
struct Session<'a> {
    shared: &'a Shared,
    conn: Connection,
    id: u64,
    peer: SocketAddr,
    agency: Option<AgencyId>,
    /// The upload id the agency gave in its `HELLO`.
    upload: u64,
}

impl Session<'_> {
    fn serve(shared: &Shared, mut conn: Connection, id: u64, peer: SocketAddr) {
        let configured = conn
            .set_timeouts(Some(shared.config.io_timeout))
            .and_then(|()| crate::connection::tune(conn.stream()));
        if let Err(e) = configured {
            log::warn!("action: open_connection | result: fail | peer: {peer} | error: {e}");
            return;
        }
        log::debug!("action: open_connection | result: success | peer: {peer}");
        let mut session = Session {
            shared,
            conn,
            id,
            peer,
            agency: None,
            upload: 0,
        };
        let reason = session.conversation();
        session.conn.close();
        log::info!(
            "action: close_connection | result: success | peer: {peer} | agency: {} | reason: {reason}",
            session.agency_label()
        );
    }

    /// Serves requests until the connection ends; returns why it ended.
    fn conversation(&mut self) -> String {
        loop {
            // A waiter answered by a draw that raced with shutdown kept its socket
            // open (the hook spares waiting sockets): do not serve it further.
            if self.shared.shutdown.is_triggered() {
                return "shutdown".into();
            }
            let frame = match self.conn.read_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) if self.shared.shutdown.is_triggered() => return "shutdown".into(),
                Ok(None) => return "closed by peer".into(),
                Err(e) => return self.broken_stream(e),
            };
            match self.handle(frame) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => return "closed after error".into(),
                Err(e) if self.shared.shutdown.is_triggered() => return format!("shutdown ({e})"),
                Err(e) => return format!("write failed: {e}"),
            }
        }
    }

    fn broken_stream(&mut self, error: FrameError) -> String {
        if self.shared.shutdown.is_triggered() {
            return "shutdown".into();
        }
        if error.is_timeout() {
            // Best effort: the stream is closed right after either way.
            let _ = self.reply_error(
                ErrorCode::IdleTimeout,
                format!(
                    "no complete request for {}",
                    crate::config::format_duration(self.shared.config.io_timeout)
                ),
            );
            return "idle timeout".into();
        }
        match error.code() {
            Some(code) => {
                let _ = self.reply_error(code, error.to_string());
            }
            None => log::warn!(
                "action: receive_frame | result: fail | peer: {} | error: {error}",
                self.peer
            ),
        }
        error.to_string()
    }

    fn handle(&mut self, frame: Frame) -> Result<Flow, ConnectionError> {
        let needs_hello = matches!(frame.kind, kind::BETS | kind::FIN | kind::WINNERS_QUERY);
        if needs_hello && self.agency.is_none() {
            return self.not_identified();
        }
        let message = match frame.decode() {
            Ok(message) => message,
            Err(e) => {
                if frame.kind == kind::BETS {
                    self.log_batch_refused(&frame.payload, &e.to_string());
                }
                return self.reply_error(e.code(), e.to_string());
            }
        };
        match message {
            Message::Echo(_) => {
                self.conn.write_frame(&frame)?;
                Ok(Flow::Continue)
            }
            Message::Hello { agency, upload } => self.hello(agency, upload),
            Message::Bets { seq, bets } => self.bets(seq, bets),
            Message::Fin => self.fin(),
            Message::WinnersQuery => self.winners(),
            other => self.reply_error(
                ErrorCode::UnknownKind,
                format!("kind 0x{:02x} is a reply, not a request", other.kind()),
            ),
        }
    }

    /// Logs a refused `BETS` frame, with its count read straight from the payload
    /// (it may not decode).
    fn log_batch_refused(&self, payload: &[u8], reason: &str) {
        let count = payload
            .get(8..10)
            .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
        log::warn!(
            "action: apuesta_recibida | result: fail | cantidad: {count} | agency: {} | reason: {}",
            self.agency_label(),
            logging::sanitize(reason)
        );
    }

    fn agency_label(&self) -> String {
        self.agency.map_or("-".to_string(), |a| a.to_string())
    }

    fn reply_error(&mut self, code: ErrorCode, reason: String) -> Result<Flow, ConnectionError> {
        log::warn!(
            "action: request | result: fail | peer: {} | agency: {} | code: {code} | reason: {}",
            self.peer,
            self.agency_label(),
            logging::sanitize(&reason)
        );
        self.conn.write_message(&Message::Error { code, reason })?;
        Ok(if code.closes_connection() {
            Flow::Close
        } else {
            Flow::Continue
        })
    }

    fn hello(&mut self, agency: AgencyId, upload: u64) -> Result<Flow, ConnectionError> {
        let agencies = self.shared.config.agencies;
        if !(1..=agencies).contains(&agency) {
            return self.reply_error(
                ErrorCode::UnknownAgency,
                format!("agency {agency} is not one of 1..={agencies}"),
            );
        }
        match self.agency {
            Some(bound) if bound != agency => self.reply_error(
                ErrorCode::AlreadyIdentified,
                format!("this connection already belongs to agency {bound}"),
            ),
            _ => {
                self.agency = Some(agency);
                self.upload = upload;
                log::info!(
                    "action: hello | result: success | agency: {agency} | upload: {upload:016x} | peer: {}",
                    self.peer
                );
                self.conn.write_message(&Message::Welcome { agency })?;
                Ok(Flow::Continue)
            }
        }
    }

    fn bets(&mut self, seq: u64, bets: Vec<Bet>) -> Result<Flow, ConnectionError> {
        let Some(agency) = self.agency else {
            return self.not_identified();
        };
        let count = bets.len();
        // The batch was decoded from a u16 count, so `count` fits a u16.
        let ack = Message::BetsAck {
            seq,
            count: u16::try_from(count).unwrap_or(u16::MAX),
        };
        let today = bet::today();
        let invalid = bets.iter().enumerate().find_map(|(i, b)| {
            b.validate(today)
                .err()
                .map(|e| format!("bet {}: {e}", i + 1))
        });
        let (code, reason) = match invalid {
            Some(reason) => (ErrorCode::InvalidBet, reason),
            None => match self.shared.store(agency, self.upload, seq, &bets) {
                Ok(Stored::New) => {
                    log::info!(
                        "action: apuesta_recibida | result: success | cantidad: {count} | agency: {agency} | seq: {seq}"
                    );
                    if let [single] = bets.as_slice() {
                        log::info!(
                            "action: apuesta_almacenada | result: success | dni: {} | numero: {}",
                            single.document,
                            single.number
                        );
                    }
                    self.conn.write_message(&ack)?;
                    return Ok(Flow::Continue);
                }
                Ok(Stored::Replay { last }) => {
                    log::warn!(
                        "action: batch_replay | result: success | agency: {agency} | upload: {:016x} | seq: {seq} | last_stored: {last} | cantidad: {count}",
                        self.upload
                    );
                    self.conn.write_message(&ack)?;
                    return Ok(Flow::Continue);
                }
                Err(Refusal::DrawDone) => (
                    ErrorCode::DrawDone,
                    "the draw has already run; no more bets are accepted".to_string(),
                ),
                Err(Refusal::AgencyFinished) => (
                    ErrorCode::AgencyFinished,
                    format!("agency {agency} already sent FIN; no more bets are accepted"),
                ),
                Err(Refusal::Storage(e)) => {
                    log::error!(
                        "action: store_bets | result: fail | agency: {agency} | seq: {seq} | error: {e}"
                    );
                    (
                        ErrorCode::Internal,
                        format!("could not store the batch: {e}"),
                    )
                }
            },
        };
        log::warn!(
            "action: apuesta_recibida | result: fail | cantidad: {count} | agency: {agency} | seq: {seq} | reason: {}",
            logging::sanitize(&reason)
        );
        self.reply_error(code, reason)
    }

    fn fin(&mut self) -> Result<Flow, ConnectionError> {
        let Some(agency) = self.agency else {
            return self.not_identified();
        };
        let agencies = self.shared.config.agencies;
        let (finished, draw_now) = self.shared.finish(agency);
        log::info!(
            "action: fin | result: success | agency: {agency} | finished: {finished} | agencies: {agencies}"
        );
        // Acknowledge first: the drawing agency does not wait for the draw to hear
        // that its FIN counted.
        let acked = self
            .conn
            .write_message(&Message::FinAck { finished, agencies });
        if draw_now {
            self.shared.draw_and_answer();
        }
        acked.map(|()| Flow::Continue)
    }

    fn winners(&mut self) -> Result<Flow, ConnectionError> {
        let Some(agency) = self.agency else {
            return self.not_identified();
        };
        if !self.shared.has_finished(agency) {
            return self.reply_error(
                ErrorCode::NotFinished,
                format!("agency {agency} must send FIN before asking for its winners"),
            );
        }
        let shared = self.shared;
        let mut barrier = lock(&shared.barrier);
        if let Some(outcome) = barrier.result.clone() {
            drop(barrier);
            return shared
                .send_winners(
                    self.conn.stream(),
                    &outcome,
                    agency,
                    shared.config.io_timeout,
                )
                .map(|()| Flow::Continue)
                .map_err(ConnectionError::Write);
        }
        barrier.waiting.push(Waiter {
            conn_id: self.id,
            agency,
            stream: self.conn.shared_stream(),
        });
        log::info!("action: winners_wait | result: in_progress | agency: {agency}");
        loop {
            if let Some(delivered) = barrier.answered.remove(&self.id) {
                // A half-written answer leaves the stream unusable: close it.
                return Ok(if delivered {
                    Flow::Continue
                } else {
                    Flow::Close
                });
            }
            // While the drawing thread writes to this socket, only it may touch it.
            let mine = !barrier.sending.contains(&self.id);
            if mine && shared.shutdown.is_triggered() {
                barrier.waiting.retain(|w| w.conn_id != self.id);
                drop(barrier);
                return self.reply_error(
                    ErrorCode::ShuttingDown,
                    "the server is stopping before the draw".into(),
                );
            }
            let (guard, wait) = shared
                .drawn
                .wait_timeout(barrier, PROBE_WAITER_EVERY)
                .unwrap_or_else(PoisonError::into_inner);
            barrier = guard;
            if !wait.timed_out() || barrier.sending.contains(&self.id) {
                continue;
            }
            // Nobody else reads this socket while we wait, so a quick peek tells
            // whether the agency is still there, without holding the lock.
            drop(barrier);
            let left = self.peer_has_left();
            barrier = lock(&shared.barrier);
            let answered_meanwhile =
                barrier.answered.contains_key(&self.id) || barrier.sending.contains(&self.id);
            if left && !answered_meanwhile {
                barrier.waiting.retain(|w| w.conn_id != self.id);
                log::info!(
                    "action: winners_wait | result: fail | agency: {agency} | reason: the agency closed the connection before the draw"
                );
                return Ok(Flow::Close);
            }
        }
    }

    /// Whether the peer has closed its side (or the connection broke). Only for a
    /// connection that is not otherwise reading: it peeks with a 1 ms timeout (the
    /// connection sets its own read timeout again before its next read).
    fn peer_has_left(&self) -> bool {
        let stream = self.conn.stream();
        if stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .is_err()
        {
            return true;
        }
        match stream.peek(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ),
        }
    }

    fn not_identified(&mut self) -> Result<Flow, ConnectionError> {
        self.reply_error(
            ErrorCode::NotIdentified,
            "send HELLO with the agency id first".into(),
        )
    }
}
