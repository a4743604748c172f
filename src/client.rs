//! The agency client: uploads its bets file in batches, notifies the end and receives
//! its winners; or sends a single bet; or runs an echo loop.
//!
//! [`run`] blocks until the work is done, fails, or `shutdown` is triggered (which shuts
//! the stream down so that any blocked read or write returns at once).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Shutdown as Both, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::agency_file::{AgencyFile, AgencyFileError, Line};
use crate::bet::{self, Bet};
use crate::config::{ClientConfig, Mode};
use crate::connection::{Connection, ConnectionError};
use crate::protocol::{self, ErrorCode, Message};
use crate::shutdown::{HookGuard, Shutdown};

/// How long between two progress lines while uploading.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How a run ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All work done. `skipped` lines of the agency file were invalid and not sent.
    Completed {
        /// Invalid lines skipped (always 0 outside bets mode).
        skipped: u64,
    },
    /// Shutdown was requested before the work was done.
    Interrupted,
}

/// Why a client run failed.
#[derive(Debug)]
pub enum ClientError {
    /// No connection could be made within `server.connect_timeout`.
    Connect {
        /// The server address.
        address: String,
        /// The last failure.
        source: io::Error,
    },
    /// The connection broke.
    Connection {
        /// What the client was doing.
        stage: &'static str,
        /// The cause.
        source: ConnectionError,
    },
    /// The server closed the connection.
    Closed {
        /// What the client was doing.
        stage: &'static str,
    },
    /// The server answered with an error.
    Refused {
        /// What the client was doing.
        stage: String,
        /// The error code.
        code: ErrorCode,
        /// The server's reason.
        reason: String,
    },
    /// The server answered something the protocol does not allow here.
    Unexpected {
        /// What the client was doing.
        stage: &'static str,
        /// What arrived.
        got: String,
    },
    /// The agency file could not be read.
    AgencyFile(AgencyFileError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { address, source } => {
                write!(f, "cannot connect to server {address}: {source}")
            }
            ClientError::Connection { stage, source } => write!(f, "{stage}: {source}"),
            ClientError::Closed { stage } => {
                write!(f, "{stage}: the server closed the connection")
            }
            ClientError::Refused {
                stage,
                code,
                reason,
            } => write!(f, "{stage}: the server refused with {code}: {reason}"),
            ClientError::Unexpected { stage, got } => {
                write!(f, "{stage}: unexpected reply {got}")
            }
            ClientError::AgencyFile(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } => Some(source),
            ClientError::Connection { source, .. } => Some(source),
            ClientError::AgencyFile(e) => Some(e),
            _ => None,
        }
    }
}

/// Runs the client as `config` says until done, failed or shut down.
pub fn run(config: &ClientConfig, shutdown: &Shutdown) -> Result<Outcome, ClientError> {
    let result = match (&config.single_bet, config.mode) {
        (Some(bet), _) => Agency::connect(config, shutdown).and_then(|mut a| a.single_bet(bet)),
        (None, Mode::Bets) => {
            // Open the file before connecting: a missing file is the user's mistake,
            // not the server's business.
            let file =
                AgencyFile::open(&config.data, bet::today()).map_err(ClientError::AgencyFile)?;
            Agency::connect(config, shutdown).and_then(|mut a| a.upload(file))
        }
        (None, Mode::Echo) => Agency::connect(config, shutdown).and_then(|mut a| a.echo_loop()),
    };
    match result {
        Err(_) if shutdown.is_triggered() => Ok(Outcome::Interrupted),
        other => other,
    }
}

/// A connected agency.
struct Agency<'a> {
    config: &'a ClientConfig,
    shutdown: &'a Shutdown,
    conn: Connection,
    /// This run's upload id (see `Message::Hello`).
    upload: u64,
    /// Bets the server acknowledged on this connection (logged when it closes, so a
    /// stopped or failed upload tells how much of it is safely stored).
    acked: u64,
    _close_on_shutdown: HookGuard,
}

impl<'a> Agency<'a> {
    fn connect(
        config: &'a ClientConfig,
        shutdown: &'a Shutdown,
    ) -> Result<Agency<'a>, ClientError> {
        let stream = connect_with_retry(config, shutdown)?;
        let connection_error = |source: io::Error| ClientError::Connection {
            stage: "connect",
            source: ConnectionError::Write(source),
        };
        let mut conn = Connection::new(stream).map_err(connection_error)?;
        conn.set_timeouts(Some(config.io_timeout))
            .map_err(connection_error)?;
        let closer = conn.shared_stream();
        let hook = shutdown.on_trigger(move || {
            // Unblocks any read or write in progress; errors mean it is closed already.
            let _ = closer.shutdown(Both::Both);
        });
        log::info!(
            "action: connect | result: success | client_id: {} | server_address: {}",
            config.id,
            config.server_address
        );
        Ok(Agency {
            config,
            shutdown,
            conn,
            upload: new_upload_id(),
            acked: 0,
            _close_on_shutdown: hook,
        })
    }

    fn send(&mut self, stage: &'static str, message: &Message) -> Result<(), ClientError> {
        self.conn
            .write_message(message)
            .map_err(|source| ClientError::Connection { stage, source })
    }

    /// Reads the next reply; an `ERROR` reply becomes [`ClientError::Refused`].
    fn receive(&mut self, stage: &'static str) -> Result<Message, ClientError> {
        match self.conn.read_message() {
            Ok(Some(Message::Error { code, reason })) => Err(ClientError::Refused {
                stage: stage.to_string(),
                code,
                reason,
            }),
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(ClientError::Closed { stage }),
            Err(source) => Err(ClientError::Connection { stage, source }),
        }
    }

    fn hello(&mut self) -> Result<(), ClientError> {
        let agency = self.config.id;
        let upload = self.upload;
        self.send("hello", &Message::Hello { agency, upload })?;
        match self.receive("hello")? {
            Message::Welcome { agency: a } if a == agency => Ok(()),
            other => Err(unexpected("hello", &other)),
        }
    }

    /// Sends one batch and waits for its acknowledgement.
    fn send_batch(&mut self, seq: u64, bets: Vec<Bet>) -> Result<(), ClientError> {
        let count = bets.len();
        self.send("send batch", &Message::Bets { seq, bets })?;
        match self.receive("send batch") {
            Ok(Message::BetsAck { seq: s, count: c }) if s == seq && usize::from(c) == count => {
                self.acked += u64::from(c);
                Ok(())
            }
            Ok(other) => Err(unexpected("send batch", &other)),
            Err(ClientError::Refused { code, reason, .. }) => Err(ClientError::Refused {
                stage: format!("batch {seq}"),
                code,
                reason,
            }),
            Err(e) => Err(e),
        }
    }

    fn single_bet(&mut self, bet: &Bet) -> Result<Outcome, ClientError> {
        self.hello()?;
        self.send_batch(1, vec![bet.clone()])?;
        log::info!(
            "action: apuesta_enviada | result: success | dni: {} | numero: {}",
            bet.document,
            bet.number
        );
        Ok(Outcome::Completed { skipped: 0 })
    }

    fn upload(&mut self, file: AgencyFile) -> Result<Outcome, ClientError> {
        self.hello()?;
        let skipped = match self.stream_file(file) {
            Ok(Some(skipped)) => skipped,
            Ok(None) => return Ok(Outcome::Interrupted),
            Err(
                refused @ ClientError::Refused {
                    code: ErrorCode::DrawDone | ErrorCode::AgencyFinished,
                    ..
                },
            ) => {
                // The bets are refused, but the agency is entitled to its winners:
                // ask for them (FIN counts once) and still fail the run.
                log::error!(
                    "action: upload | result: fail | client_id: {} | error: {refused}",
                    self.config.id
                );
                self.finish_and_get_winners()?;
                return Err(refused);
            }
            Err(e) => return Err(e),
        };
        self.finish_and_get_winners()?;
        Ok(Outcome::Completed { skipped })
    }

    /// Streams the agency file in batches, each acknowledged before the next is sent.
    /// Returns how many invalid lines were skipped, or `None` if shutdown interrupted.
    fn stream_file(&mut self, file: AgencyFile) -> Result<Option<u64>, ClientError> {
        let id = self.config.id;
        let max_amount = usize::from(self.config.batch_max_amount);
        let started = Instant::now();
        let mut last_progress = started;
        let mut batch: Vec<Bet> = Vec::with_capacity(max_amount.min(1024));
        let mut batch_len = 0;
        let (mut seq, mut skipped) = (0u64, 0u64);
        for line in file {
            if self.shutdown.is_triggered() {
                return Ok(None);
            }
            let (line, bet) = match line.map_err(ClientError::AgencyFile)? {
                Line::Bet { line, bet } => (line, bet),
                Line::Invalid(bad) => {
                    log::warn!(
                        "action: leer_apuesta | result: fail | client_id: {id} | file: {} | line: {} | reason: {}",
                        bad.path.display(),
                        bad.line,
                        crate::logging::sanitize(&bad.reason)
                    );
                    skipped += 1;
                    continue;
                }
            };
            let len = protocol::bet_wire_len(&bet);
            if protocol::bets_frame_len(len) > protocol::MAX_FRAME_LEN {
                log::warn!(
                    "action: leer_apuesta | result: fail | client_id: {id} | file: {} | line: {line} | reason: the bet takes {} bytes, more than one {}-byte frame holds",
                    self.config.data.display(),
                    protocol::bets_frame_len(len),
                    protocol::MAX_FRAME_LEN
                );
                skipped += 1;
                continue;
            }
            let full = batch.len() == max_amount
                || protocol::bets_frame_len(batch_len + len) > protocol::MAX_FRAME_LEN;
            if full {
                seq += 1;
                self.send_batch(seq, std::mem::take(&mut batch))?;
                batch_len = 0;
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    last_progress = Instant::now();
                    log::info!(
                        "action: upload | result: in_progress | client_id: {id} | bets_sent: {} | batches: {seq} | rate: {:.0} bets/s",
                        self.acked,
                        rate(self.acked, started)
                    );
                }
            }
            batch_len += len;
            batch.push(bet);
        }
        if !batch.is_empty() {
            seq += 1;
            self.send_batch(seq, batch)?;
        }
        log::info!(
            "action: upload | result: success | client_id: {id} | bets_sent: {} | batches: {seq} | skipped: {skipped} | elapsed: {} | rate: {:.0} bets/s",
            self.acked,
            crate::config::format_duration(Duration::from_millis(
                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
            )),
            rate(self.acked, started)
        );
        Ok(Some(skipped))
    }

    fn finish_and_get_winners(&mut self) -> Result<(), ClientError> {
        let id = self.config.id;
        self.send("fin", &Message::Fin)?;
        match self.receive("fin")? {
            Message::FinAck { finished, agencies } => log::info!(
                "action: fin | result: success | client_id: {id} | finished: {finished} | agencies: {agencies}"
            ),
            other => return Err(unexpected("fin", &other)),
        }
        self.send("winners query", &Message::WinnersQuery)?;
        // The answer waits for every other agency: no timeout here (SIGTERM still ends it).
        self.conn
            .set_timeouts(None)
            .map_err(|source| ClientError::Connection {
                stage: "winners query",
                source: ConnectionError::Write(source),
            })?;
        let mut winners = Vec::new();
        loop {
            match self.receive("winners query")? {
                Message::Winners { last, documents } => {
                    winners.extend(documents);
                    if last {
                        break;
                    }
                }
                other => return Err(unexpected("winners query", &other)),
            }
        }
        log::info!(
            "action: consulta_ganadores | result: success | cant_ganadores: {}",
            winners.len()
        );
        log::info!(
            "action: ganadores | result: success | client_id: {id} | dnis: {}",
            winners.join(",")
        );
        Ok(())
    }

    fn echo_loop(&mut self) -> Result<Outcome, ClientError> {
        let id = self.config.id;
        for k in 1..=self.config.loop_amount {
            let text = format!("[CLIENT {id}] Message N°{k}");
            let request = Message::Echo(text.clone().into_bytes());
            self.send("echo", &request)?;
            let reply = self.receive("echo")?;
            if reply != request {
                return Err(unexpected("echo", &reply));
            }
            log::info!("action: receive_message | result: success | client_id: {id} | msg: {text}");
            if k < self.config.loop_amount && self.shutdown.sleep(self.config.loop_period) {
                return Ok(Outcome::Interrupted);
            }
        }
        log::info!("action: loop_finished | result: success | client_id: {id}");
        Ok(Outcome::Completed { skipped: 0 })
    }
}

impl Drop for Agency<'_> {
    fn drop(&mut self) {
        self.conn.close();
        log::info!(
            "action: close_connection | result: success | client_id: {} | bets_acked: {}",
            self.config.id,
            self.acked
        );
    }
}

fn unexpected(stage: &'static str, got: &Message) -> ClientError {
    let mut got = format!("{got:?}");
    if got.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| got.is_char_boundary(i))
            .unwrap_or(0);
        got.truncate(cut);
        got.push('…');
    }
    ClientError::Unexpected { stage, got }
}

/// A fresh random upload id: std's `RandomState` is seeded randomly per process; the
/// clock and the process id make two runs in one process differ too.
fn new_upload_id() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn rate(count: u64, since: Instant) -> f64 {
    let secs = since.elapsed().as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Connects to the server, retrying with backoff until `connect_timeout` has passed
/// (the server may still be starting, e.g. under Docker Compose).
fn connect_with_retry(
    config: &ClientConfig,
    shutdown: &Shutdown,
) -> Result<TcpStream, ClientError> {
    let deadline = Instant::now() + config.connect_timeout;
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        let error = match try_connect(&config.server_address, deadline) {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline || shutdown.is_triggered() {
            return Err(ClientError::Connect {
                address: config.server_address.clone(),
                source: error,
            });
        }
        log::debug!(
            "action: connect | result: in_progress | client_id: {} | attempt: {attempt} | error: {error}",
            config.id
        );
        if shutdown.sleep(delay.min(deadline - now)) {
            return Err(ClientError::Connect {
                address: config.server_address.clone(),
                source: io::Error::new(io::ErrorKind::Interrupted, "shutdown requested"),
            });
        }
        delay = (delay * 2).min(Duration::from_secs(1));
        attempt += 1;
    }
}

fn try_connect(address: &str, deadline: Instant) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolved to nothing");
    for addr in addrs {
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match TcpStream::connect_timeout(&addr, budget) {
            Ok(stream) => {
                crate::connection::tune(&stream)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
