//! The agency client: uploads its bets file in batches, notifies the end and receives
//! its winners; or sends a single bet; or runs an echo loop; or prints the lottery's
//! status (`status`).
//!
//! What it logs for a watcher: progress lines with percent, rate and time left
//! (`progress`), a `waiting_draw` line for the server's `DRAW_PENDING` frames while
//! it waits for the draw (which also bound that wait: a server silent for
//! `server.io_timeout`, at least two pending intervals, counts as gone), and every
//! failed connection attempt at INFO with the time left before it gives up.
//!
//! The upload is resumable: its id is a fingerprint of the content
//! (`fingerprint`), so the server's `WELCOME` tells a restarted or reconnected
//! client how much of *this* upload is stored, and the client goes on from there
//! (after the file line of the last stored bet, `upload`). A dropped connection
//! or a transient server error starts a new session after a backoff (`retry`)
//! until `server.retry_deadline` passes without a session that made progress (a
//! `WELCOME` alone is none, nor is a `FIN_ACK` of an agency already finished).
//! Echo mode and status mode retry the same way (a `SERVER_BUSY` or `SHUTTING_DOWN`
//! answer, a broken connection); each echo reply is progress, and each status query
//! has a deadline of its own.
//!
//! The client trusts no more of a server's answer than it can check: the winners are
//! at most the bets its agency can have stored (and [`MAX_WINNERS`]), each a DNI, the
//! whole answer within `server.io_timeout` of its first chunk
//! ([`ClientError::BadWinners`], [`ClientError::SlowAnswer`]); and every text of the
//! server's that reaches a log line or stderr is [`sanitize`]d.
//!
//! The file is fingerprinted again at the start of every session and once more
//! before `FIN`: a file that changed during the run is never resumed by line numbers
//! that belong to its old content ([`ClientError::FileChanged`]).
//!
//! [`run`] blocks until the work is done, fails, or `shutdown` is triggered (which shuts
//! the stream down so that any blocked read or write returns at once, and cuts any
//! backoff sleep short).

mod fingerprint;
mod latency;
mod progress;
mod retry;
mod session;
mod status;
mod upload;
mod window;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::agency_file::{AgencyFile, AgencyFileError, ReadInto, ReadPosition};
use crate::bet::{self, AgencyId, Bet};
use crate::config::{ClientConfig, Mode, format_duration};
use crate::connection::ConnectionError;
use crate::logging::sanitize;
use crate::protocol::{ErrorCode, FrameError, Message};
use crate::shutdown::Shutdown;
use crate::tls::ClientTls;

use latency::Latencies;
use progress::Progress;
use retry::Retrier;
use session::{Session, Welcome};
use upload::{Batcher, Resume, Sendable};
use window::Window;

/// How long between two progress lines while uploading.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The most winners the client accepts in one answer, however many bets the server
/// says the agency stored: a hostile `WELCOME` cannot open the door to an endless
/// answer. The documents of this many winners take about 40 MB; an agency has as
/// many winners as bets with the winning number, one in 10 000 on average, so this
/// bound is far above any real agency's.
pub const MAX_WINNERS: u64 = 1_000_000;

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
    /// A connection attempt failed (each is bounded by `server.connect_timeout`).
    Connect {
        /// The server address.
        address: String,
        /// The failure.
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
    /// The agency already stored bets of another upload (another file, or another
    /// single bet): this one cannot be uploaded in the same lottery.
    UploadConflict {
        /// The agency.
        agency: AgencyId,
        /// Bets the server holds for the agency.
        stored_bets: u64,
        /// The upload they belong to.
        stored_upload: u64,
        /// This run's upload.
        upload: u64,
        /// Whether the agency had already finished (its winners were still fetched).
        finished: bool,
    },
    /// The server holds bets of this upload through a line the file does not reach
    /// (the file is not what was stored: it changed in a way its fingerprint did not
    /// catch).
    ResumeBeyondFile {
        /// The agency.
        agency: AgencyId,
        /// The file line of the last stored bet.
        stored_line: u64,
        /// The file's last line holding data (0: none).
        last_line: u64,
    },
    /// The server holds more bets of this upload than the file has to send (the file
    /// changed in a way its fingerprint did not catch, or the bet rules changed).
    ResumeMismatch {
        /// The agency.
        agency: AgencyId,
        /// Bets the server holds for this upload.
        stored_bets: u64,
        /// Bets the file has to send.
        sendable: u64,
    },
    /// The agency file is not what it was when the run fingerprinted it: resuming by
    /// its line numbers would store a bet twice or lose one, so nothing more is sent.
    FileChanged {
        /// The agency file.
        path: PathBuf,
        /// The run's upload id (the file's fingerprint when the run started).
        was: u64,
        /// The file's fingerprint now.
        now: u64,
    },
    /// The agency already finished (its `FIN` is recorded) without bets of this file:
    /// they cannot be stored any more (its winners were still fetched).
    FinishedNotStored {
        /// The agency.
        agency: AgencyId,
        /// Valid bets of the file after what the server stored.
        unsent: u64,
        /// The file line of the first of them.
        from_line: u64,
    },
    /// Another client process of the same agency said `HELLO` and took over.
    Superseded {
        /// The agency.
        agency: AgencyId,
    },
    /// The server sent nothing at all for this long while it should have (it sends
    /// `DRAW_PENDING` every few seconds while an agency waits for the draw): it
    /// counts as gone.
    Silent {
        /// What the client was doing.
        stage: &'static str,
        /// How long nothing arrived.
        after: Duration,
    },
    /// A whole answer (all the chunks of a `STATUS` or `WINNERS` answer) did not arrive in time: a
    /// server that trickles frames cannot keep the client reading forever.
    SlowAnswer {
        /// What the client was doing.
        stage: &'static str,
        /// The time the whole answer may take (`server.io_timeout`).
        limit: Duration,
    },
    /// The server's winners answer breaks a bound the client knows (more winners than
    /// the agency can have, a document that is not a DNI, an empty chunk before the
    /// last): nothing of it is kept.
    BadWinners {
        /// Winners of the answer accepted before the offending chunk (never more than
        /// the bound).
        kept: u64,
        /// What the server sent, its text made safe for a log line.
        problem: String,
    },
    /// The server does not answer status queries: it is older than protocol version
    /// 3.
    StatusUnsupported {
        /// What the server answered.
        detail: String,
    },
    /// The status table could not be written to standard output.
    Output(io::Error),
    /// The TLS material (`[tls]`) cannot be used, or is not this agency's.
    Tls(crate::tls::TlsError),
    /// No session made progress (a batch acknowledged, the `FIN_ACK` of an agency that
    /// had not finished, the winners) for `server.retry_deadline`.
    RetryDeadline {
        /// The deadline.
        deadline: Duration,
        /// The last failure.
        last_error: Box<ClientError>,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { address, source } => {
                write!(f, "cannot connect to server {address}: {source}")
            }
            ClientError::Connection {
                stage,
                source: source @ ConnectionError::Frame(FrameError::UnsupportedVersion(first)),
            } => {
                // The first byte of the reply: `H` of `HTTP/1.1 400`, say.
                let seen = if first.is_ascii_graphic() {
                    format!(" ({:?}…)", char::from(*first))
                } else {
                    String::new()
                };
                write!(
                    f,
                    "{stage}: {source}: the peer at server.address does not speak this \
                     protocol (its reply starts with byte {first}{seen}); is it the \
                     lottery server's port, and is the server as new as this client?"
                )
            }
            ClientError::Connection {
                stage,
                source: source @ ConnectionError::Handshake(_),
            } => write!(
                f,
                "{stage}: {source} (is TLS on at the server, with its tls.ca, tls.cert and \
                 tls.key? Its certificate must chain to this client's tls.ca and name the \
                 host of server.address)"
            ),
            ClientError::Connection { stage, source } if source.tls_failure().is_some() => {
                write!(
                    f,
                    "{stage}: {source} (did the server refuse this agency's certificate? It \
                     must be the agency's own, signed by the lottery CA and within its dates)"
                )
            }
            ClientError::Connection { stage, source } => write!(f, "{stage}: {source}"),
            ClientError::Closed { stage: "hello" } => write!(
                f,
                "hello: the server closed the connection without answering \
                 (is server.address the lottery server's port?)"
            ),
            ClientError::Closed { stage } => {
                write!(f, "{stage}: the server closed the connection")
            }
            ClientError::Refused {
                stage,
                code: code @ ErrorCode::UnsupportedVersion,
                reason,
            } if stage == session::TLS_HANDSHAKE => write!(
                f,
                "{stage}: the server refused with {code}: {reason} (it answered the TLS \
                 handshake in the clear: is TLS on at the server, with its tls.ca, \
                 tls.cert and tls.key?)"
            ),
            ClientError::Refused {
                stage,
                code,
                reason,
            } => write!(f, "{stage}: the server refused with {code}: {reason}"),
            ClientError::Unexpected { stage, got } => {
                write!(f, "{stage}: unexpected reply {got}")
            }
            ClientError::AgencyFile(e) => write!(f, "{e}"),
            ClientError::UploadConflict {
                agency,
                stored_bets,
                stored_upload,
                upload,
                finished: false,
            } => write!(
                f,
                "agency {agency} already stored {stored_bets} bets of another file \
                 (upload {stored_upload:016x}); this file (upload {upload:016x}) is not \
                 stored; start a new lottery to upload another file"
            ),
            ClientError::UploadConflict {
                agency,
                stored_bets,
                stored_upload,
                upload,
                finished: true,
            } => write!(
                f,
                "agency {agency} already finished with {stored_bets} bets of another file \
                 (upload {stored_upload:016x}); this file (upload {upload:016x}) is not \
                 what the agency stored; start a new lottery to upload another file"
            ),
            ClientError::ResumeBeyondFile {
                agency,
                stored_line,
                last_line,
            } => write!(
                f,
                "agency {agency} has bets of this file stored through line {stored_line}, \
                 but the file ends at line {last_line}; was it changed?"
            ),
            ClientError::ResumeMismatch {
                agency,
                stored_bets,
                sendable,
            } => write!(
                f,
                "agency {agency} has {stored_bets} bets of this file stored, but the file \
                 has only {sendable} valid bets to send; was it changed?"
            ),
            ClientError::FileChanged { path, was, now } => write!(
                f,
                "the agency file {} changed during the upload (fingerprint {was:016x}, now \
                 {now:016x}); nothing more is sent and FIN is not sent — restore the \
                 file and run again to resume (bets already sent from the changed \
                 content stay stored)",
                path.display()
            ),
            ClientError::FinishedNotStored {
                agency,
                unsent,
                from_line,
            } => write!(
                f,
                "agency {agency} already finished; {unsent} bets of this file from line \
                 {from_line} on are not stored"
            ),
            ClientError::Superseded { agency } => write!(
                f,
                "another client process of agency {agency} took over; this one stops"
            ),
            ClientError::Silent { stage, after } => write!(
                f,
                "{stage}: the server sent nothing for {} (it should send DRAW_PENDING \
                 every {}); taking it for gone",
                format_duration(*after),
                format_duration(crate::protocol::PENDING_INTERVAL)
            ),
            ClientError::SlowAnswer { stage, limit } => write!(
                f,
                "{stage}: the whole answer did not arrive within {} (server.io_timeout)",
                format_duration(*limit)
            ),
            ClientError::BadWinners { kept, problem } => write!(
                f,
                "winners query: the server's answer is refused after {kept} winners: {problem}"
            ),
            ClientError::StatusUnsupported { detail } => write!(
                f,
                "the server does not answer status queries ({detail}): it is older than \
                 protocol version 3; upgrade the server to use status mode"
            ),
            ClientError::Output(e) => write!(f, "cannot write the status table: {e}"),
            ClientError::Tls(e) => write!(f, "tls: {e}"),
            ClientError::RetryDeadline {
                deadline,
                last_error,
            } => write!(
                f,
                "no session with the server made progress for {} (server.retry_deadline), \
                 giving up; last error: {last_error}",
                format_duration(*deadline)
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } => Some(source),
            ClientError::Connection { source, .. } => Some(source),
            ClientError::AgencyFile(e) => Some(e),
            ClientError::Output(e) => Some(e),
            ClientError::Tls(e) => Some(e),
            ClientError::RetryDeadline { last_error, .. } => Some(last_error.as_ref()),
            _ => None,
        }
    }
}

/// Runs the client as `config` says until done, failed or shut down.
pub fn run(config: &ClientConfig, shutdown: &Shutdown) -> Result<Outcome, ClientError> {
    let uploads = config.single_bet.is_some() || config.mode == Mode::Bets;
    let tls = load_tls(config, uploads)?;
    let tls = tls.as_ref();
    let result = match (&config.single_bet, config.mode) {
        (Some(bet), _) => {
            let upload = fingerprint::of_bet(config.id, bet);
            Run::new(config, shutdown, Work::Single(bet), upload, tls).upload()
        }
        (None, Mode::Bets) => {
            // Fingerprint the file before connecting: a missing file is the user's
            // mistake, not the server's business.
            let upload = fingerprint::of_file(&config.data).map_err(|source| {
                ClientError::AgencyFile(AgencyFileError {
                    path: config.data.clone(),
                    line: 0,
                    source,
                })
            })?;
            Run::new(config, shutdown, Work::Bets, upload, tls).upload()
        }
        (None, Mode::Echo) => Run::new(config, shutdown, Work::Echo, 0, tls).echo_loop(),
        (None, Mode::Status) => status::run(config, shutdown, tls),
    };
    match result {
        Err(_) if shutdown.is_triggered() => Ok(Outcome::Interrupted),
        other => other,
    }
}

/// Loads the TLS material of `config` (none: TLS off, with a WARN line) and, when
/// the run uploads bets (`uploads`), checks that the certificate is this agency's, so
/// that a wrong file fails at once and clearly instead of at the server.
fn load_tls(config: &ClientConfig, uploads: bool) -> Result<Option<ClientTls>, ClientError> {
    let id = config.id;
    let files = &config.tls;
    let Some(ca) = &files.ca else {
        log::warn!(
            "action: tls | result: success | client_id: {id} | tls: off | note: the server is not authenticated and bets travel in the clear; set tls.ca, tls.cert and tls.key (make certs writes them under certs/)"
        );
        return Ok(None);
    };
    let identity = files.cert.as_deref().zip(files.key.as_deref());
    let tls = ClientTls::load(ca, identity).map_err(ClientError::Tls)?;
    if uploads && tls.speaks_for(id) != Some(true) {
        return Err(ClientError::Tls(crate::tls::TlsError::NotThisAgency {
            agency: id,
            has_cert: identity.is_some(),
        }));
    }
    log::info!(
        "action: tls | result: success | client_id: {id} | tls: on | ca: {} | cert: {}",
        sanitize(&ca.display().to_string()),
        files
            .cert
            .as_ref()
            .map_or("none".to_string(), |c| sanitize(&c.display().to_string())
                .to_string())
    );
    Ok(Some(tls))
}

/// What a run uploads.
#[derive(Clone, Copy)]
enum Work<'a> {
    /// The agency file.
    Bets,
    /// One bet from the environment.
    Single(&'a Bet),
    /// Nothing: an echo loop.
    Echo,
    /// Nothing: status queries.
    Status,
}

/// One client run: its sessions share these counters.
struct Run<'a> {
    config: &'a ClientConfig,
    shutdown: &'a Shutdown,
    /// The TLS set-up, when `[tls]` is configured.
    tls: Option<&'a ClientTls>,
    work: Work<'a>,
    /// This run's upload id (see `Message::Hello`).
    upload: u64,
    /// Bets the server acknowledged in this run, over all sessions (logged when a
    /// connection closes, so a stopped or failed run tells how much it stored). Each
    /// batch counts once, also when it is acknowledged again as a replay.
    acked: u64,
    /// The highest `seq` whose acknowledgement is counted in `acked`.
    acked_through: u64,
    /// Sessions of this run so far (the first needs no new fingerprint: the run just
    /// took it).
    sessions: u64,
    /// How long the current session waited for a held `WINNERS_QUERY` (no failing
    /// time, see `Retrier::held`).
    held: Duration,
    /// Invalid lines of the last complete pass over the file.
    skipped: Option<u64>,
    /// Bad lines up to this line number were already logged in this run.
    reported_through: u64,
    /// A failure to report once the winners are in (bets refused after the draw, or
    /// an agency finished with another file).
    pending: Option<ClientError>,
    /// Some session of this run got its `WELCOME` (in echo mode: an echo reply).
    ever_welcomed: bool,
    /// The most bets the agency can have stored as far as the current session knows:
    /// its `WELCOME`'s `stored_bets` plus every bet acknowledged since. An agency has
    /// no more winners than that.
    agency_bets: u64,
    /// The current session got a batch acknowledged, a `FIN_ACK` or the winners.
    progressed: bool,
    /// This run got a `FIN_ACK`: its upload is complete and checked, so a later
    /// session (the wait for the draw broke) only fetches the winners — it neither
    /// re-checks the file (which may have been edited since) nor re-counts bets that a
    /// date change made valid.
    fin_acked: bool,
    /// How long this run's batches waited for their acknowledgements.
    latencies: Latencies,
    started: Instant,
    last_progress: Instant,
}

impl<'a> Run<'a> {
    fn new(
        config: &'a ClientConfig,
        shutdown: &'a Shutdown,
        work: Work<'a>,
        upload: u64,
        tls: Option<&'a ClientTls>,
    ) -> Run<'a> {
        let now = Instant::now();
        Run {
            config,
            shutdown,
            tls,
            work,
            upload,
            acked: 0,
            acked_through: 0,
            sessions: 0,
            held: Duration::ZERO,
            skipped: None,
            reported_through: 0,
            pending: None,
            ever_welcomed: false,
            agency_bets: 0,
            progressed: false,
            fin_acked: false,
            latencies: Latencies::default(),
            started: now,
            last_progress: now,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, the retry deadline passes, or
    /// shutdown (`Ok(None)`). `attempt` gets the time one connection attempt may take.
    fn with_retries<T>(
        &mut self,
        mut attempt: impl FnMut(&mut Self, Duration) -> Result<T, ClientError>,
    ) -> Result<Option<T>, ClientError> {
        let id = self.config.id;
        let deadline = self.config.retry_deadline;
        let mut retrier = Retrier::new(deadline);
        loop {
            self.progressed = false;
            self.held = Duration::ZERO;
            let budget = self
                .config
                .connect_timeout
                .min(retrier.left(Instant::now()).max(Duration::from_millis(1)));
            let result = attempt(self, budget);
            let error = match result {
                Ok(value) => return Ok(Some(value)),
                Err(_) if self.shutdown.is_triggered() => return Ok(None),
                Err(e) if !retry::is_retryable(&e) => return Err(e),
                Err(e) => e,
            };
            // Only progress restarts the deadline: a server that welcomes every session
            // and fails every request must not keep the client retrying forever.
            retrier.held(self.held);
            let Some(delay) = retrier.failed(self.progressed, Instant::now()) else {
                return Err(ClientError::RetryDeadline {
                    deadline,
                    last_error: Box::new(error),
                });
            };
            let attempt = retrier.attempt();
            let action = if self.ever_welcomed {
                "reconnect"
            } else {
                "connect"
            };
            log::info!(
                "action: {action} | result: in_progress | client_id: {id} | attempt: {attempt} | delay: {} | {} | error: {}",
                format_duration(delay),
                retry_bound(retrier.left(Instant::now()), deadline),
                sanitize(&error.to_string())
            );
            if self.shutdown.sleep(delay) {
                return Ok(None);
            }
        }
    }

    /// Bets or single-bet mode: sessions until the work is done.
    fn upload(&mut self) -> Result<Outcome, ClientError> {
        Ok(self
            .with_retries(Run::session)?
            .unwrap_or(Outcome::Interrupted))
    }

    /// One session: connect, `HELLO`, then whatever the `WELCOME` says is left.
    fn session(&mut self, connect_timeout: Duration) -> Result<Outcome, ClientError> {
        let config = self.config;
        self.sessions += 1;
        if matches!(self.work, Work::Bets) && self.sessions > 1 && !self.fin_acked {
            // Before HELLO: the WELCOME's line numbers must be those of this content.
            self.check_file()?;
        }
        let mut session = Session::connect(
            &config.server_address,
            config.id,
            connect_timeout,
            config.io_timeout,
            self.shutdown,
            self.tls,
        )?;
        let result = self.converse(&mut session);
        drop(session);
        log::info!(
            "action: close_connection | result: success | client_id: {} | bets_acked: {}",
            config.id,
            self.acked
        );
        result
    }

    fn converse(&mut self, session: &mut Session) -> Result<Outcome, ClientError> {
        let welcome = session.hello(self.upload)?;
        self.ever_welcomed = true;
        self.agency_bets = welcome.stored_bets;
        match self.work {
            Work::Single(bet) => self.single_bet(session, &welcome, bet),
            Work::Bets => self.bets(session, &welcome),
            Work::Echo | Work::Status => Ok(Outcome::Completed { skipped: 0 }),
        }
    }

    /// Fails with [`ClientError::FileChanged`] unless the agency file still has the
    /// run's upload id as its fingerprint.
    fn check_file(&self) -> Result<(), ClientError> {
        let path = &self.config.data;
        let now = fingerprint::of_file(path).map_err(|source| {
            ClientError::AgencyFile(AgencyFileError {
                path: path.clone(),
                line: 0,
                source,
            })
        })?;
        if now == self.upload {
            Ok(())
        } else {
            Err(ClientError::FileChanged {
                path: path.clone(),
                was: self.upload,
                now,
            })
        }
    }

    /// Sends batch `seq` and counts its acknowledgement (once per `seq` in a run).
    fn send_batch(
        &mut self,
        session: &mut Session,
        seq: u64,
        line: u64,
        bets: &[Bet],
    ) -> Result<(), ClientError> {
        let acked = session.send_batch(seq, line, bets)?;
        self.count_ack(seq, acked);
        Ok(())
    }

    /// Waits for the answer to the oldest batch in flight and counts it.
    fn await_ack(&mut self, session: &mut Session, window: &mut Window) -> Result<(), ClientError> {
        let Some(batch) = window.oldest() else {
            return Ok(());
        };
        let acked = session.receive_ack(batch.seq, batch.count)?;
        window.acknowledged();
        self.latencies.record(batch.sent.elapsed());
        self.count_ack(batch.seq, acked);
        Ok(())
    }

    /// Why sending failed, from the server's side when it said: a server that
    /// refuses a batch in flight (`SUPERSEDED`, say) answers it and closes, which a
    /// client still sending sees as a broken pipe. The answers already here are read
    /// — acknowledgements counted, a refusal returned instead of `failure`.
    fn answers_after(
        &mut self,
        session: &mut Session,
        window: &mut Window,
        failure: ClientError,
    ) -> ClientError {
        while !window.is_empty() {
            match self.await_ack(session, window) {
                Ok(()) => {}
                Err(refusal @ (ClientError::Refused { .. } | ClientError::Superseded { .. })) => {
                    return refusal;
                }
                Err(_) => return failure,
            }
        }
        // Every batch in flight is answered: a reason the server gave unasked.
        session.refusal_received().unwrap_or(failure)
    }

    /// Counts the acknowledgement of batch `seq`, `acked` bets.
    fn count_ack(&mut self, seq: u64, acked: u64) {
        // Replays too: an over-estimate only loosens the bound on the winners.
        self.agency_bets = self.agency_bets.saturating_add(acked);
        if seq > self.acked_through {
            self.acked_through = seq;
            self.acked += acked;
        }
        self.progressed = true;
    }

    fn conflict(&self, welcome: &Welcome) -> ClientError {
        ClientError::UploadConflict {
            agency: self.config.id,
            stored_bets: welcome.stored_bets,
            stored_upload: welcome.upload,
            upload: self.upload,
            finished: welcome.finished,
        }
    }

    /// Whether the agency's stored bets belong to another upload. Upload 0 is none:
    /// bets adopted from an old bets file (the server reports them as this upload's,
    /// to be skipped by count; an older server reported 0).
    fn is_conflict(&self, welcome: &Welcome) -> bool {
        welcome.upload != self.upload && welcome.upload != 0 && welcome.stored_bets > 0
    }

    fn single_bet(
        &mut self,
        session: &mut Session,
        welcome: &Welcome,
        bet: &Bet,
    ) -> Result<Outcome, ClientError> {
        if welcome.upload == self.upload && welcome.stored_seq >= 1 {
            // Stored by an earlier session or run (its acknowledgement was lost). Bets
            // reported with no stored batch (adopted from an older, journal-less
            // bets file) are not this bet: it is sent below.
            log_resume(self.config.id, welcome);
        } else if self.is_conflict(welcome) {
            return Err(self.conflict(welcome));
        } else {
            let seq = welcome.stored_seq.saturating_add(1);
            // Line 0: the bet comes from no file.
            self.send_batch(session, seq, 0, std::slice::from_ref(bet))?;
        }
        log::info!(
            "action: apuesta_enviada | result: success | dni: {} | numero: {}",
            bet.document,
            bet.number
        );
        Ok(Outcome::Completed { skipped: 0 })
    }

    fn bets(&mut self, session: &mut Session, welcome: &Welcome) -> Result<Outcome, ClientError> {
        let id = self.config.id;
        if welcome.finished {
            if self.is_conflict(welcome) {
                // The agency is done with another file: this one cannot be stored, but
                // the agency is still entitled to its winners.
                let conflict = self.conflict(welcome);
                log::error!(
                    "action: upload | result: fail | client_id: {id} | error: {}",
                    sanitize(&conflict.to_string())
                );
                self.pending.get_or_insert(conflict);
            } else if self.fin_acked {
                // This run finished the upload itself; only the winners are left.
            } else if let Err(failure) = self.check_finished(welcome) {
                // The bets cannot be stored any more; the winners are still fetched.
                log::error!(
                    "action: upload | result: fail | client_id: {id} | error: {}",
                    sanitize(&failure.to_string())
                );
                self.pending.get_or_insert(failure);
            }
            return self.finish(session, welcome);
        }
        if self.is_conflict(welcome) {
            return Err(self.conflict(welcome));
        }
        match self.stream_file(session, welcome) {
            Ok(Some(skipped)) => {
                self.skipped = Some(skipped);
                // Every batch is acknowledged: were they all read from the content
                // the upload id names? If not, no FIN (the run can still be mended).
                self.check_file()?;
            }
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
                    "action: upload | result: fail | client_id: {id} | error: {}",
                    sanitize(&refused.to_string())
                );
                self.pending.get_or_insert(refused);
            }
            Err(e) => return Err(e),
        }
        self.finish(session, welcome)
    }

    /// The agency finished with this upload: goes over the file as a resumed upload
    /// would, sending nothing, and fails when bets would still be left to send (they
    /// are not stored and cannot be any more). Records the file's invalid lines.
    fn check_finished(&mut self, welcome: &Welcome) -> Result<(), ClientError> {
        let id = self.config.id;
        let (unsent, from_line, skipped) = self.over_file(|_, items, _| {
            count_unsent(items, welcome)
                .map(|(unsent, from_line)| (unsent, from_line, items.skipped()))
        })?;
        self.skipped = Some(skipped);
        if unsent > 0 {
            return Err(ClientError::FinishedNotStored {
                agency: id,
                unsent,
                from_line,
            });
        }
        log::info!(
            "action: upload | result: success | client_id: {id} | resumed: already finished | stored_bets: {} | skipped: {skipped}",
            welcome.stored_bets
        );
        Ok(())
    }

    /// Re-reads the agency file, skips what the server stored and sends the rest.
    /// Returns how many lines were skipped, or `None` if shutdown interrupted.
    fn stream_file(
        &mut self,
        session: &mut Session,
        welcome: &Welcome,
    ) -> Result<Option<u64>, ClientError> {
        self.over_file(|run, items, meter| run.send_rest(session, welcome, items, meter))
    }

    /// One pass over the agency file, opened afresh: `pass` gets its sendable bets
    /// (bad lines already reported in this run are not logged again) and a meter of
    /// how far the pass has read.
    fn over_file<T>(
        &mut self,
        pass: impl FnOnce(&mut Self, &mut Sendable<'_, AgencyFile>, &Meter) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let config = self.config;
        let file = AgencyFile::open(&config.data, bet::today()).map_err(ClientError::AgencyFile)?;
        let meter = Meter {
            size: file.size(),
            position: file.position(),
        };
        let mut reported = self.reported_through;
        let result = {
            let mut items = Sendable::new(file, config.id, &config.data, &mut reported);
            pass(self, &mut items, &meter)
        };
        self.reported_through = reported;
        result
    }

    fn send_rest<R: ReadInto>(
        &mut self,
        session: &mut Session,
        welcome: &Welcome,
        items: &mut Sendable<'_, R>,
        meter: &Meter,
    ) -> Result<Option<u64>, ClientError> {
        let id = self.config.id;
        let resume = Resume::new(welcome.stored_line, welcome.stored_bets);
        upload::resume(items, resume)?;
        if resume != Resume::Start {
            log_resume(id, welcome);
        }
        let stored = welcome.stored_bets;
        let mut seq = welcome.stored_seq;
        let mut batcher = Batcher::new(usize::from(self.config.batch_max_amount));
        let mut window = Window::new(self.config.batch_window);
        let sending = Instant::now();
        let progress = Progress::new(meter.size, meter.position.bytes(), self.acked, sending);
        loop {
            if self.shutdown.is_triggered() {
                return Ok(None);
            }
            let batch = match items.next() {
                Some(item) => match batcher.push(item.map_err(ClientError::AgencyFile)?) {
                    Some(batch) => batch,
                    None => continue,
                },
                None => match batcher.take() {
                    Some(batch) => batch,
                    None => break,
                },
            };
            if window.is_full() {
                self.await_ack(session, &mut window)?;
            }
            seq += 1;
            let count = batch.bets.len();
            let sent = session.send_batch_ahead(seq, batch.line, &batch.bets);
            // The sent bets are read into again, their Vec refilled: no allocation
            // per bet.
            let mut bets = batch.bets;
            items.reuse(&mut bets);
            batcher.recycle(bets);
            if let Err(failure) = sent {
                return Err(self.answers_after(session, &mut window, failure));
            }
            window.sent(seq, count);
            if self.last_progress.elapsed() >= PROGRESS_EVERY {
                let now = Instant::now();
                self.last_progress = now;
                let reading = progress.reading(meter.position.bytes(), self.acked, now);
                log::info!(
                    "action: upload | result: in_progress | client_id: {id} | bets_sent: {} | batches: {seq} | percent: {} | rate: {:.0} bets/s | eta: {}",
                    self.acked,
                    reading.percent(),
                    reading.rate,
                    reading.eta_text()
                );
            }
        }
        while !window.is_empty() {
            if self.shutdown.is_triggered() {
                return Ok(None);
            }
            self.await_ack(session, &mut window)?;
        }
        let skipped = items.skipped();
        let reading = progress.reading(meter.position.bytes(), self.acked, Instant::now());
        log::info!(
            "action: upload | result: success | client_id: {id} | bets_sent: {} | batches: {seq} | skipped: {skipped} | percent: {} | elapsed: {} | rate: {:.0} bets/s | resumed: {stored} | window: {} | ack_p50_us: {} | ack_p99_us: {}",
            self.acked,
            reading.percent(),
            format_duration(Duration::from_millis(
                u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
            )),
            rate(self.acked, self.started),
            self.config.batch_window,
            self.latencies.quantile_text(0.5),
            self.latencies.quantile_text(0.99)
        );
        Ok(Some(skipped))
    }

    /// `FIN` and the winners; then the pending failure, if any.
    fn finish(&mut self, session: &mut Session, welcome: &Welcome) -> Result<Outcome, ClientError> {
        session.finish()?;
        self.fin_acked = true;
        if !welcome.finished {
            // The FIN is newly recorded: progress, also when the wait for the draw
            // breaks. A FIN the server had already is none (a server that fails every
            // WINNERS_QUERY must not keep the client retrying forever).
            self.progressed = true;
        }
        let waiting = Instant::now();
        let winners = session.winners(self.agency_bets.min(MAX_WINNERS));
        // The wait is held time while the server kept it alive; the silence that
        // ended it (the server sent nothing when it should have), like an answer
        // that took too long, is failing time.
        self.held = match &winners {
            Err(ClientError::Silent { after, .. }) => waiting.elapsed().saturating_sub(*after),
            Err(ClientError::SlowAnswer { limit, .. }) => waiting.elapsed().saturating_sub(*limit),
            _ => waiting.elapsed(),
        };
        let winners = winners?;
        self.progressed = true;
        log::info!(
            "action: consulta_ganadores | result: success | cant_ganadores: {}",
            winners.len()
        );
        log::info!(
            "action: ganadores | result: success | client_id: {} | dnis: {}",
            self.config.id,
            // The documents are the server's text.
            sanitize(&winners.join(","))
        );
        match self.pending.take() {
            Some(failure) => Err(failure),
            None => Ok(Outcome::Completed {
                skipped: self.skipped.unwrap_or(0),
            }),
        }
    }

    /// Echo mode: sessions (retried like upload sessions: a busy or stopping server,
    /// a broken connection) until every message is echoed; a new session goes on with
    /// the first message not echoed yet. Each echo reply is progress.
    fn echo_loop(mut self) -> Result<Outcome, ClientError> {
        let mut next = 1;
        Ok(self
            .with_retries(|run, timeout| run.echo_session(timeout, &mut next))?
            .unwrap_or(Outcome::Interrupted))
    }

    /// One echo session: connect, then messages `next..=loop.amount`.
    fn echo_session(
        &mut self,
        connect_timeout: Duration,
        next: &mut u64,
    ) -> Result<Outcome, ClientError> {
        let config = self.config;
        let mut session = Session::connect(
            &config.server_address,
            config.id,
            connect_timeout,
            config.io_timeout,
            self.shutdown,
            self.tls,
        )?;
        let result = self.echo_messages(&mut session, next);
        drop(session);
        log::info!(
            "action: close_connection | result: success | client_id: {} | bets_acked: 0",
            config.id
        );
        result
    }

    fn echo_messages(
        &mut self,
        session: &mut Session,
        next: &mut u64,
    ) -> Result<Outcome, ClientError> {
        let id = self.config.id;
        for k in *next..=self.config.loop_amount {
            let text = format!("[CLIENT {id}] Message N°{k}");
            session.echo(&text)?;
            *next = k + 1;
            self.progressed = true;
            self.ever_welcomed = true;
            log::info!("action: receive_message | result: success | client_id: {id} | msg: {text}");
            if k < self.config.loop_amount && self.shutdown.sleep(self.config.loop_period) {
                return Ok(Outcome::Interrupted);
            }
        }
        log::info!("action: loop_finished | result: success | client_id: {id}");
        Ok(Outcome::Completed { skipped: 0 })
    }
}

/// Skips what `welcome` says is stored and counts the bets left: how many, and the
/// file line of the first (0: none).
fn count_unsent<R: ReadInto>(
    items: &mut Sendable<'_, R>,
    welcome: &Welcome,
) -> Result<(u64, u64), ClientError> {
    upload::resume(items, Resume::new(welcome.stored_line, welcome.stored_bets))?;
    let mut unsent = 0;
    let mut from_line = 0;
    for item in items {
        let item = item.map_err(ClientError::AgencyFile)?;
        if unsent == 0 {
            from_line = item.line;
        }
        unsent += 1;
    }
    Ok((unsent, from_line))
}

/// Logs where a resumed upload goes on, as the `WELCOME` says.
fn log_resume(id: AgencyId, welcome: &Welcome) {
    log::info!(
        "action: resume | result: success | client_id: {id} | stored_bets: {} | stored_seq: {} | stored_line: {}",
        welcome.stored_bets,
        welcome.stored_seq,
        welcome.stored_line
    );
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

/// What bounds the retries, as the retry lines show it: the time left and the key
/// that sets it, e.g. `gives_up_in: 297s | bounded_by: server.retry_deadline=300s`.
fn retry_bound(left: Duration, deadline: Duration) -> String {
    // Whole seconds (rounded up) read better than milliseconds once there are some.
    let left = if left >= Duration::from_secs(1) {
        Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    } else {
        left
    };
    format!(
        "gives_up_in: {} | bounded_by: server.retry_deadline={}",
        format_duration(left),
        format_duration(deadline)
    )
}

/// `count` per second since `since`.
fn rate(count: u64, since: Instant) -> f64 {
    let secs = since.elapsed().as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// How far one pass has read its agency file.
struct Meter {
    /// The file's size when the pass opened it.
    size: u64,
    /// Bytes the pass has consumed.
    position: ReadPosition,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogLevel;
    use crate::connection::Connection;
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_peer_that_is_not_a_lottery_server_is_named_as_such() {
        // Regression: an HTTP server at server.address gave only "unsupported protocol
        // version 72 (expected 3)", and a silent close "the server closed the connection".
        let http = ClientError::Connection {
            stage: "hello",
            source: ConnectionError::Frame(FrameError::UnsupportedVersion(b'H')),
        }
        .to_string();
        assert!(http.contains("unsupported protocol version 72"), "{http}");
        assert!(http.contains("does not speak this protocol"), "{http}");
        assert!(http.contains("('H'…)"), "{http}");
        assert!(http.contains("server.address"), "{http}");
        let closed = ClientError::Closed { stage: "hello" }.to_string();
        assert!(closed.contains("without answering"), "{closed}");
        assert!(closed.contains("server.address"), "{closed}");
        assert_eq!(
            ClientError::Closed { stage: "fin" }.to_string(),
            "fin: the server closed the connection"
        );
    }

    /// An agency file of `text` in the temp directory.
    fn agency_file(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("loteria-client-{name}-{}.csv", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    fn config(address: String, data: PathBuf, retry_deadline: Duration) -> ClientConfig {
        ClientConfig {
            id: 1,
            mode: Mode::Bets,
            data,
            server_address: address,
            connect_timeout: Duration::from_secs(1),
            retry_deadline,
            io_timeout: Duration::from_secs(5),
            loop_amount: 0,
            loop_period: Duration::ZERO,
            log_level: LogLevel {
                name: "OFF".into(),
                filter: log::LevelFilter::Off,
            },
            batch_max_amount: 2,
            batch_window: 1,
            single_bet: None,
            tls: Default::default(),
        }
    }

    /// A fake server on a free port: every connection is served by `serve` (on its own
    /// thread, one connection after another). Returns the address.
    fn fake_server(serve: impl Fn(&mut Connection) + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let Ok(mut conn) = Connection::new(stream) else {
                    return;
                };
                serve(&mut conn);
            }
        });
        address
    }

    fn welcome(upload: u64, stored_seq: u64, stored_bets: u64, stored_line: u64) -> Message {
        Message::Welcome {
            agency: 1,
            upload,
            stored_seq,
            stored_bets,
            stored_line,
            finished: false,
            drawn: false,
        }
    }

    #[test]
    fn a_server_that_welcomes_and_fails_every_batch_is_given_up_on() {
        let sessions = Arc::new(Mutex::new(0u32));
        let counted = Arc::clone(&sessions);
        let address = fake_server(move |conn| {
            *counted.lock().expect("lock") += 1;
            while let Ok(Some(message)) = conn.read_message() {
                let reply = match message {
                    Message::Hello { upload, .. } => welcome(upload, 0, 0, 0),
                    _ => Message::Error {
                        code: ErrorCode::Internal,
                        reason: "disk full".into(),
                    },
                };
                if conn.write_message(&reply).is_err() {
                    return;
                }
            }
        });
        let data = agency_file("internal", "Ana,Paz,1,1990-01-01,1\n");
        let config = config(address, data.clone(), Duration::from_secs(1));
        let started = Instant::now();
        let result = run(&config, &Shutdown::new());
        let elapsed = started.elapsed();
        let _ = std::fs::remove_file(&data);
        match result {
            Err(ClientError::RetryDeadline { last_error, .. }) => assert!(
                matches!(
                    *last_error,
                    ClientError::Refused {
                        code: ErrorCode::Internal,
                        ..
                    }
                ),
                "{last_error}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            elapsed < Duration::from_secs(4),
            "gave up after {elapsed:?}"
        );
        assert!(*sessions.lock().expect("lock") >= 2, "it did retry");
    }

    #[test]
    fn a_resumed_upload_goes_on_after_the_stored_line_and_sends_line_numbers() {
        // Lines 1–3 are stored (batch 1); line 5 is invalid and line 6 blank.
        let data = agency_file(
            "resume",
            "Ana,Paz,1,1990-01-01,1\n\
             Bea,Paz,2,1990-01-01,2\n\
             Cid,Paz,3,1990-01-01,3\n\
             Dan,Paz,4,1990-01-01,4\n\
             bad line\n\
             \n\
             Eva,Paz,5,1990-01-01,5\n\
             Fer,Paz,6,1990-01-01,6\n",
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let address = fake_server(move |conn| {
            while let Ok(Some(message)) = conn.read_message() {
                let reply = match message {
                    Message::Hello { upload, .. } => welcome(upload, 1, 2, 3),
                    Message::Bets { seq, line, bets } => {
                        let documents: Vec<String> =
                            bets.iter().map(|b| b.document.clone()).collect();
                        let count = u16::try_from(bets.len()).unwrap_or(u16::MAX);
                        log.lock().expect("lock").push((seq, line, documents));
                        Message::BetsAck { seq, count }
                    }
                    Message::Fin => Message::FinAck {
                        finished: 1,
                        agencies: 1,
                    },
                    Message::WinnersQuery => Message::Winners {
                        last: true,
                        documents: vec!["4".into()],
                    },
                    other => panic!("{other:?}"),
                };
                if conn.write_message(&reply).is_err() {
                    return;
                }
            }
        });
        let config = config(address, data.clone(), Duration::from_secs(5));
        let result = run(&config, &Shutdown::new());
        let _ = std::fs::remove_file(&data);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 1 }));
        let received = received.lock().expect("lock").clone();
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            received,
            [(2, 7, strings(&["4", "5"])), (3, 8, strings(&["6"])),]
        );
    }

    /// What a stateful fake server saw.
    #[derive(Debug, Default, Clone)]
    struct Seen {
        /// `(seq, line, documents)` of every batch stored (replays included).
        batches: Vec<(u64, u64, Vec<String>)>,
        fins: u32,
        queries: u32,
        sessions: u32,
    }

    /// The durable state of a fake server's one agency.
    #[derive(Debug, Default, Clone)]
    struct Stored {
        upload: u64,
        seq: u64,
        bets: u64,
        line: u64,
        finished: bool,
    }

    /// A fake server that stores batches like the real one (next seq only, WELCOME
    /// from its state) and calls `hook(seen, seq)` before answering each batch: the
    /// hook returns whether to acknowledge it (`false`: close the connection, the
    /// batch stored but its ACK lost). `WINNERS_QUERY` gets `winners_reply`.
    fn stateful_server(
        initial: Stored,
        winners_reply: Message,
        hook: impl Fn(&Seen, u64) -> bool + Send + 'static,
    ) -> (String, Arc<Mutex<Seen>>, Arc<Mutex<Stored>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = Arc::new(Mutex::new(initial));
        let (seen_, state_) = (Arc::clone(&seen), Arc::clone(&state));
        let address = fake_server(move |conn| {
            seen_.lock().expect("lock").sessions += 1;
            while let Ok(Some(message)) = conn.read_message() {
                let reply = match message {
                    Message::Hello { upload, .. } => {
                        let mut st = state_.lock().expect("lock");
                        if st.bets == 0 {
                            st.upload = upload;
                        }
                        Message::Welcome {
                            agency: 1,
                            upload: st.upload,
                            stored_seq: st.seq,
                            stored_bets: st.bets,
                            stored_line: st.line,
                            finished: st.finished,
                            drawn: false,
                        }
                    }
                    Message::Bets { seq, line, bets } => {
                        let documents: Vec<String> =
                            bets.iter().map(|b| b.document.clone()).collect();
                        let count = u16::try_from(bets.len()).unwrap_or(u16::MAX);
                        {
                            let mut st = state_.lock().expect("lock");
                            assert!(seq == st.seq + 1 || seq == st.seq, "seq {seq}");
                            if seq == st.seq + 1 {
                                st.seq = seq;
                                st.bets += u64::from(count);
                                st.line = line;
                            }
                        }
                        let ack = {
                            let mut seen = seen_.lock().expect("lock");
                            seen.batches.push((seq, line, documents));
                            hook(&seen, seq)
                        };
                        if !ack {
                            return;
                        }
                        Message::BetsAck { seq, count }
                    }
                    Message::Fin => {
                        seen_.lock().expect("lock").fins += 1;
                        state_.lock().expect("lock").finished = true;
                        Message::FinAck {
                            finished: 1,
                            agencies: 1,
                        }
                    }
                    Message::WinnersQuery => {
                        seen_.lock().expect("lock").queries += 1;
                        winners_reply.clone()
                    }
                    other => panic!("{other:?}"),
                };
                if conn.write_message(&reply).is_err() {
                    return;
                }
            }
        });
        (address, seen, state)
    }

    fn no_winners() -> Message {
        Message::Winners {
            last: true,
            documents: Vec::new(),
        }
    }

    fn documents(seen: &Seen) -> Vec<String> {
        seen.batches
            .iter()
            .flat_map(|(_, _, d)| d.iter().cloned())
            .collect()
    }

    const FOUR: &str = "Ana,Paz,1,1990-01-01,1\n\
                        Bea,Paz,2,1990-01-01,2\n\
                        Cid,Paz,3,1990-01-01,3\n\
                        Dan,Paz,4,1990-01-01,4\n";

    #[test]
    fn a_file_changed_between_sessions_is_not_resumed() {
        // The reviewer's repro: the server dies after storing batch 1 (lines 1–2)
        // and batch 2 (ACK lost); a line is added at the top of the file meanwhile.
        let data = agency_file("changed-between", FOUR);
        let was = fingerprint::of_file(&data).expect("reads");
        let path = data.clone();
        let (address, seen, _) = stateful_server(Stored::default(), no_winners(), move |_, seq| {
            if seq == 2 {
                let text = format!("New,Paz,9,1990-01-01,9\n{FOUR}");
                std::fs::write(&path, text).expect("rewrite");
                return false;
            }
            true
        });
        let config = config(address, data.clone(), Duration::from_secs(5));
        let result = run(&config, &Shutdown::new());
        let now = fingerprint::of_file(&data).expect("reads");
        let _ = std::fs::remove_file(&data);
        match result {
            Err(ClientError::FileChanged {
                path,
                was: w,
                now: n,
            }) => {
                assert_eq!((path, w, n), (data.clone(), was, now));
            }
            other => panic!("{other:?}"),
        }
        assert!(!retry::is_retryable(&ClientError::FileChanged {
            path: data,
            was,
            now
        }));
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(documents(&seen), ["1", "2", "3", "4"], "nothing sent twice");
        assert_eq!(seen.sessions, 1, "no HELLO with the changed file");
        assert_eq!(seen.fins, 0);
    }

    #[test]
    fn a_file_changed_during_the_last_pass_gets_no_fin() {
        let data = agency_file("changed-during", FOUR);
        let path = data.clone();
        let (address, seen, _) = stateful_server(Stored::default(), no_winners(), move |_, seq| {
            if seq == 2 {
                std::fs::write(&path, FOUR.replace("Dan", "Don")).expect("rewrite");
            }
            true
        });
        let config = config(address, data.clone(), Duration::from_secs(5));
        let result = run(&config, &Shutdown::new());
        let _ = std::fs::remove_file(&data);
        match &result {
            Err(ClientError::FileChanged { was, now, .. }) => assert_ne!(was, now),
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.fins, 0, "nothing more is sent");
        assert_eq!(seen.queries, 0);
        // An unchanged file goes on to FIN as before.
        let data = agency_file("unchanged", FOUR);
        let (address, seen, _) = stateful_server(Stored::default(), no_winners(), |_, _| true);
        let unchanged = self::config(address, data.clone(), Duration::from_secs(5));
        let result = run(&unchanged, &Shutdown::new());
        let _ = std::fs::remove_file(&data);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
        assert_eq!(seen.lock().expect("lock").fins, 1);
    }

    /// Runs the client against a server that holds `stored` for the run's upload
    /// (finished), with `text` as the agency file.
    fn run_finished(
        name: &str,
        text: &str,
        stored: impl FnOnce(u64) -> Stored,
    ) -> (Result<Outcome, ClientError>, Seen) {
        let data = agency_file(name, text);
        let upload = fingerprint::of_file(&data).expect("reads");
        let (address, seen, _) = stateful_server(stored(upload), no_winners(), |_, _| true);
        let config = config(address, data.clone(), Duration::from_secs(5));
        let result = run(&config, &Shutdown::new());
        let _ = std::fs::remove_file(&data);
        let seen = seen.lock().expect("lock").clone();
        (result, seen)
    }

    #[test]
    fn an_agency_finished_without_the_bets_of_this_file_fails_but_gets_its_winners() {
        // Run 1 had every line invalid: nothing stored, FIN recorded (an upload of
        // no bets is nobody's: the server reports the HELLO's own).
        let (result, seen) = run_finished("finished-empty", FOUR, |upload| Stored {
            upload,
            finished: true,
            ..Stored::default()
        });
        match result {
            Err(e @ ClientError::FinishedNotStored { .. }) => assert_eq!(
                e.to_string(),
                "agency 1 already finished; 4 bets of this file from line 1 on are not stored"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!((seen.batches.len(), seen.fins, seen.queries), (0, 1, 1));
        // Stored through line 2, line 3 invalid: line 4 is missing.
        let text = FOUR.replace("Cid,Paz,3", "Cid,Paz,x");
        let (result, seen) = run_finished("finished-part", &text, |upload| Stored {
            upload,
            seq: 1,
            bets: 2,
            line: 2,
            finished: true,
        });
        match result {
            Err(ClientError::FinishedNotStored {
                agency: 1,
                unsent: 1,
                from_line: 4,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!((seen.batches.len(), seen.queries), (0, 1));
        // Adopted bets (no line): the first 3 valid bets are stored, 1 is not.
        let (result, _) = run_finished("finished-adopted", FOUR, |upload| Stored {
            upload,
            bets: 3,
            finished: true,
            ..Stored::default()
        });
        assert!(
            matches!(
                result,
                Err(ClientError::FinishedNotStored {
                    unsent: 1,
                    from_line: 4,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn an_agency_finished_with_all_of_this_file_succeeds_and_counts_invalid_lines() {
        // Lines 1–4 stored; line 5 invalid.
        let text = format!("{FOUR}bad line\n");
        let (result, seen) = run_finished("finished-all", &text, |upload| Stored {
            upload,
            seq: 2,
            bets: 4,
            line: 4,
            finished: true,
        });
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 1 }));
        assert_eq!((seen.batches.len(), seen.fins, seen.queries), (0, 1, 1));
        let (result, _) = run_finished("finished-all-lf", FOUR, |upload| Stored {
            upload,
            seq: 2,
            bets: 4,
            line: 4,
            finished: true,
        });
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
    }

    #[test]
    fn winners_that_keep_failing_are_given_up_on() {
        let data = agency_file("winners-internal", FOUR);
        let internal = Message::Error {
            code: ErrorCode::Internal,
            reason: "cannot read the draw".into(),
        };
        let (address, seen, _) = stateful_server(Stored::default(), internal, |_, _| true);
        let config = config(address, data.clone(), Duration::from_secs(1));
        let shutdown = Shutdown::new();
        let (done, finished) = std::sync::mpsc::channel();
        let runner = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                let result = run(&config, &shutdown);
                let _ = done.send(());
                result
            })
        };
        // Before the fix it retries forever: stop it after a while.
        let gave_up = finished.recv_timeout(Duration::from_secs(8)).is_ok();
        shutdown.trigger();
        let result = runner.join().expect("the client thread");
        let _ = std::fs::remove_file(&data);
        assert!(gave_up, "still retrying after 8 s: {result:?}");
        match result {
            Err(ClientError::RetryDeadline { last_error, .. }) => assert!(
                matches!(
                    *last_error,
                    ClientError::Refused {
                        code: ErrorCode::Internal,
                        ..
                    }
                ),
                "{last_error}"
            ),
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(documents(&seen), ["1", "2", "3", "4"]);
        assert!(seen.queries >= 2, "it did retry");
    }

    #[test]
    fn after_its_own_fin_a_broken_wait_only_fetches_the_winners() {
        // The upload finishes and FIN is acknowledged; the wait for the draw breaks
        // and the file is edited meanwhile (for the next day). The next session must
        // neither refuse the changed file nor re-count its bets: it gets the winners.
        let data = agency_file("fin-acked", FOUR);
        let edited = data.clone();
        let (address, sessions) = waiting_server(move |session, conn| {
            if session == 1 {
                let mut text = FOUR.to_string();
                text.push_str("Eva,Paz,5,1990-01-01,5\n");
                std::fs::write(&edited, text).expect("edit the file");
                conn.close(); // the wait breaks
            } else {
                let _ = conn.write_message(&no_winners());
            }
        });
        let config = config(address, data.clone(), Duration::from_secs(5));
        let result = run(&config, &Shutdown::new());
        let _ = std::fs::remove_file(&data);
        assert_eq!(*sessions.lock().expect("lock"), 2);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
    }

    #[test]
    fn bets_adopted_under_upload_zero_are_skipped_by_count_not_a_conflict() {
        // An older server reports adopted bets as upload 0, no seq, no line.
        let data = agency_file("adopted", FOUR);
        let (address, seen, _) = stateful_server(
            Stored {
                upload: 0,
                bets: 3,
                ..Stored::default()
            },
            no_winners(),
            |_, _| true,
        );
        let config = config(address, data.clone(), Duration::from_secs(5));
        let result = run(&config, &Shutdown::new());
        let _ = std::fs::remove_file(&data);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.batches, [(1, 4, vec!["4".to_string()])]);
    }

    #[test]
    fn a_batch_acknowledged_again_as_a_replay_counts_once() {
        // Batches 1 and 2 are acknowledged, then the connection breaks; the next
        // WELCOME says only batch 1 is stored, so batch 2 goes again and is
        // acknowledged again.
        let data = agency_file("replay", FOUR);
        let (address, seen, state) = stateful_server(Stored::default(), no_winners(), |_, _| true);
        let rewind = Arc::clone(&state);
        let once = Arc::new(Mutex::new(false));
        let address = {
            // A proxy in front: after the second ACK it breaks the connection and
            // rewinds the state to batch 1 (keeping the upload).
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let proxy = listener.local_addr().expect("address").to_string();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { return };
                    let Ok(mut client) = Connection::new(client) else {
                        return;
                    };
                    let Ok(server) = std::net::TcpStream::connect(&address) else {
                        return;
                    };
                    let Ok(mut server) = Connection::new(server) else {
                        return;
                    };
                    while let Ok(Some(message)) = client.read_message() {
                        if server.write_message(&message).is_err() {
                            break;
                        }
                        let Ok(Some(reply)) = server.read_message() else {
                            break;
                        };
                        if client.write_message(&reply).is_err() {
                            break;
                        }
                        let mut once = once.lock().expect("lock");
                        if matches!(reply, Message::BetsAck { seq: 2, .. }) && !*once {
                            *once = true;
                            let mut st = rewind.lock().expect("lock");
                            st.seq = 1;
                            st.bets = 2;
                            st.line = 2;
                            break;
                        }
                    }
                }
            });
            proxy
        };
        let config = config(address, data.clone(), Duration::from_secs(5));
        let shutdown = Shutdown::new();
        let mut run = Run::new(
            &config,
            &shutdown,
            Work::Bets,
            fingerprint::of_file(&data).expect("reads"),
            None,
        );
        let result = run.upload();
        let _ = std::fs::remove_file(&data);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
        let seqs: Vec<u64> = seen
            .lock()
            .expect("lock")
            .batches
            .iter()
            .map(|b| b.0)
            .collect();
        assert_eq!(seqs, [1, 2, 2]);
        assert_eq!(run.acked, 4, "batch 2 counted once");
    }

    /// A fake server whose sessions store everything and answer `WINNERS_QUERY` with
    /// `wait(session number, connection)` (which then sends the winners, or not).
    fn waiting_server(
        wait: impl Fn(u32, &mut Connection) + Send + 'static,
    ) -> (String, Arc<Mutex<u32>>) {
        let sessions = Arc::new(Mutex::new(0u32));
        let counter = Arc::clone(&sessions);
        let address = fake_server(move |conn| {
            let session = {
                let mut n = counter.lock().expect("lock");
                *n += 1;
                *n
            };
            while let Ok(Some(message)) = conn.read_message() {
                let reply = match message {
                    Message::Hello { upload, .. } => Message::Welcome {
                        agency: 1,
                        upload,
                        stored_seq: if session == 1 { 0 } else { 2 },
                        stored_bets: if session == 1 { 0 } else { 4 },
                        stored_line: if session == 1 { 0 } else { 4 },
                        finished: session > 1,
                        drawn: false,
                    },
                    Message::Bets { seq, bets, .. } => Message::BetsAck {
                        seq,
                        count: u16::try_from(bets.len()).unwrap_or(u16::MAX),
                    },
                    Message::Fin => Message::FinAck {
                        finished: 1,
                        agencies: 2,
                    },
                    Message::WinnersQuery => {
                        wait(session, conn);
                        continue;
                    }
                    other => panic!("{other:?}"),
                };
                if conn.write_message(&reply).is_err() {
                    return;
                }
            }
        });
        (address, sessions)
    }

    /// Runs the client on its own thread; fails the test (after stopping the client)
    /// if it has not ended within `limit`.
    fn run_bounded(config: ClientConfig, limit: Duration) -> Result<Outcome, ClientError> {
        let shutdown = Shutdown::new();
        let (done, ended) = std::sync::mpsc::channel();
        let runner = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                let result = run(&config, &shutdown);
                let _ = done.send(());
                result
            })
        };
        let in_time = ended.recv_timeout(limit).is_ok();
        shutdown.trigger();
        let result = runner.join().expect("the client thread");
        assert!(in_time, "still running after {limit:?}: {result:?}");
        result
    }

    #[test]
    fn draw_pending_frames_keep_a_wait_longer_than_the_timeouts_alive() {
        // The wait's silence limit is max(io_timeout, 2 pending intervals) = 6 s; the
        // server answers after 7 s, sending DRAW_PENDING every second meanwhile.
        let (address, sessions) = waiting_server(|_, conn| {
            for _ in 0..7 {
                let pending = Message::DrawPending {
                    finished: 1,
                    agencies: 2,
                };
                if conn.write_message(&pending).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            let _ = conn.write_message(&no_winners());
        });
        let data = agency_file("pending", FOUR);
        let mut config = config(address, data.clone(), Duration::from_secs(5));
        config.io_timeout = Duration::from_secs(1);
        let result = run_bounded(config, Duration::from_secs(20));
        let _ = std::fs::remove_file(&data);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
        assert_eq!(*sessions.lock().expect("lock"), 1, "no reconnect");
    }

    #[test]
    fn a_server_silent_while_the_agency_waits_is_taken_for_gone() {
        // Session 1: no frame at all after WINNERS_QUERY (a hung server); the client
        // gives up on it after the silence limit and session 2 gets the winners.
        let (address, sessions) = waiting_server(|session, conn| {
            if session == 1 {
                // Keeps the connection open until the client closes it.
                while let Ok(Some(_)) = conn.read_message() {}
            } else {
                let _ = conn.write_message(&no_winners());
            }
        });
        let data = agency_file("silent", FOUR);
        let mut config = config(address, data.clone(), Duration::from_secs(5));
        config.io_timeout = Duration::from_secs(1);
        let limit = session::draw_wait_timeout(config.io_timeout);
        let started = Instant::now();
        let result = run_bounded(config, Duration::from_secs(20));
        let elapsed = started.elapsed();
        let _ = std::fs::remove_file(&data);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
        assert_eq!(*sessions.lock().expect("lock"), 2, "it reconnected");
        assert!(
            elapsed >= limit && elapsed < limit + Duration::from_secs(4),
            "{elapsed:?}"
        );
        let silent = ClientError::Silent {
            stage: "waiting for the draw",
            after: limit,
        };
        assert!(retry::is_retryable(&silent));
        assert_eq!(
            silent.to_string(),
            "waiting for the draw: the server sent nothing for 6s (it should send \
             DRAW_PENDING every 3s); taking it for gone"
        );
    }

    #[test]
    fn a_server_that_keeps_going_silent_on_the_wait_is_given_up_on() {
        // The agency's FIN is recorded (no progress to make), and every WINNERS_QUERY
        // gets silence: each silence is failing time, so a 1 s deadline gives up at
        // the second one instead of retrying forever.
        let address = fake_server(|conn| {
            while let Ok(Some(message)) = conn.read_message() {
                let reply = match message {
                    Message::Hello { upload, .. } => Message::Welcome {
                        agency: 1,
                        upload,
                        stored_seq: 2,
                        stored_bets: 4,
                        stored_line: 4,
                        finished: true,
                        drawn: false,
                    },
                    Message::Fin => Message::FinAck {
                        finished: 1,
                        agencies: 2,
                    },
                    Message::WinnersQuery => continue,
                    other => panic!("{other:?}"),
                };
                if conn.write_message(&reply).is_err() {
                    return;
                }
            }
        });
        let data = agency_file("always-silent", FOUR);
        let mut config = config(address, data.clone(), Duration::from_secs(1));
        config.io_timeout = Duration::from_secs(1);
        let result = run_bounded(config, Duration::from_secs(30));
        let _ = std::fs::remove_file(&data);
        match result {
            Err(ClientError::RetryDeadline { last_error, .. }) => {
                assert!(
                    matches!(*last_error, ClientError::Silent { .. }),
                    "{last_error}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    /// `WINNERS` chunks of `per_chunk` valid documents each, never the last, one every
    /// `pause`, for as long as the client reads them: an endless answer. Counts the
    /// chunks written in `sent`.
    fn endless_winners(
        per_chunk: usize,
        pause: Duration,
        sent: Arc<Mutex<u64>>,
    ) -> impl Fn(u32, &mut Connection) + Send + 'static {
        move |_, conn| {
            let chunk = Message::Winners {
                last: false,
                documents: vec!["12345678".to_string(); per_chunk],
            };
            while conn.write_message(&chunk).is_ok() {
                *sent.lock().expect("lock") += 1;
                std::thread::sleep(pause);
            }
        }
    }

    #[test]
    fn an_endless_winners_answer_is_refused_at_the_agencys_bet_count() {
        // Regression (issue 9): a server streaming WINNERS chunks with last = 0 forever
        // grew the client without bound. The agency stored 4 bets (the file's 4, all
        // acknowledged), so a fifth winner is refused at once, whatever the chunk size:
        // 909 documents (the most a frame holds) or one at a time. The pause keeps
        // the old client's growth small while it fails this test by its time limit.
        for (per_chunk, kept) in [(909, 0), (1, 4)] {
            let sent = Arc::new(Mutex::new(0u64));
            let (address, sessions) = waiting_server(endless_winners(
                per_chunk,
                Duration::from_millis(10),
                Arc::clone(&sent),
            ));
            let data = agency_file(&format!("endless-{per_chunk}"), FOUR);
            let config = config(address, data.clone(), Duration::from_secs(5));
            let result = run_bounded(config, Duration::from_secs(10));
            let _ = std::fs::remove_file(&data);
            match result {
                Err(e @ ClientError::BadWinners { .. }) => {
                    assert!(!retry::is_retryable(&e), "{e}");
                    let ClientError::BadWinners { kept: k, .. } = &e else {
                        unreachable!()
                    };
                    assert_eq!(*k, kept, "{e}");
                    assert!(*k <= 4, "it never holds more than the bound: {e}");
                    assert_eq!(
                        e.to_string(),
                        format!(
                            "winners query: the server's answer is refused after {kept} \
                             winners: a WINNERS chunk of {per_chunk} documents makes {} \
                             winners, more than the 4 bets the agency has stored",
                            kept + per_chunk as u64
                        )
                    );
                }
                other => panic!("{per_chunk} per chunk: {other:?}"),
            }
            assert_eq!(*sessions.lock().expect("lock"), 1, "not retried");
        }
    }

    #[test]
    fn as_many_winners_as_the_agency_has_bets_are_accepted() {
        // The bound is not too tight: 4 bets stored, 4 winners in 2 chunks.
        let (address, _) = waiting_server(|_, conn| {
            for (last, documents) in [(false, ["1", "00000000"]), (true, ["3", "4"])] {
                let documents = documents.iter().map(|d| d.to_string()).collect();
                if conn
                    .write_message(&Message::Winners { last, documents })
                    .is_err()
                {
                    return;
                }
            }
        });
        let data = agency_file("four-winners", FOUR);
        let config = config(address, data.clone(), Duration::from_secs(5));
        let result = run_bounded(config, Duration::from_secs(20));
        let _ = std::fs::remove_file(&data);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
    }

    #[test]
    fn the_winners_bound_is_the_welcomes_bets_plus_the_acknowledged_ones() {
        // Resumed after 2 stored bets (WELCOME) and 2 acknowledged in the session: 4.
        // A finished agency's bound is its WELCOME's stored bets alone.
        let five = Message::Winners {
            last: true,
            documents: ["1", "2", "3", "4", "5"].map(String::from).to_vec(),
        };
        for (name, stored) in [
            (
                "bound-resumed",
                Stored {
                    seq: 1,
                    bets: 2,
                    line: 2,
                    ..Stored::default()
                },
            ),
            (
                "bound-finished",
                Stored {
                    seq: 2,
                    bets: 4,
                    line: 4,
                    finished: true,
                    ..Stored::default()
                },
            ),
        ] {
            let data = agency_file(name, FOUR);
            let upload = fingerprint::of_file(&data).expect("reads");
            let (address, _, _) =
                stateful_server(Stored { upload, ..stored }, five.clone(), |_, _| true);
            let config = config(address, data.clone(), Duration::from_secs(5));
            let result = run(&config, &Shutdown::new());
            let _ = std::fs::remove_file(&data);
            match result {
                Err(ClientError::BadWinners { kept: 0, problem }) => assert!(
                    problem
                        .ends_with("makes 5 winners, more than the 4 bets the agency has stored"),
                    "{name}: {problem}"
                ),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_winners_chunk_is_checked_before_it_is_kept() {
        let docs = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let problem =
            |kept, d: &[&str], last, most| match session::check_winners(kept, &docs(d), last, most)
            {
                Err(ClientError::BadWinners { problem, .. }) => problem,
                other => panic!("{d:?}: {other:?}"),
            };
        // What passes: DNIs up to the bound, an empty final chunk.
        assert!(session::check_winners(0, &docs(&["00000000", "1"]), false, 2).is_ok());
        assert!(session::check_winners(2, &[], true, 2).is_ok());
        assert!(session::check_winners(0, &[], true, 0).is_ok());
        // Not DNIs, as the server's validation defines them.
        for bad in ["", "123456789", "12a", "-1", " 1", "١٢٣"] {
            let text = problem(0, &["1", bad], true, 10);
            assert!(
                text.ends_with("is not a DNI (1 to 8 digits)"),
                "{bad:?}: {text}"
            );
        }
        // A document that tries to forge a log line is named, made safe.
        let forged = "1\n2026-12-02 10:00:00 INFO     action: consulta_ganadores | \
                      result: success | cant_ganadores: 99";
        let text = problem(0, &[forged], true, 10);
        assert_eq!(
            text,
            "document \"1\\n2026-12-02 10:00:00 INFO     action: consulta_ganadores ¦ \
             result: success ¦ cant_ganadores: 99\" is not a DNI (1 to 8 digits)"
        );
        // Too many, against the agency's bets or the hard cap.
        assert_eq!(
            problem(3, &["1", "2"], false, 4),
            "a WINNERS chunk of 2 documents makes 5 winners, more than the 4 bets the \
             agency has stored"
        );
        assert_eq!(
            problem(0, &["1"], true, 0),
            "a WINNERS chunk of 1 documents makes 1 winners, more than the 0 bets the \
             agency has stored"
        );
        assert_eq!(
            problem(1_000_000, &["1"], false, MAX_WINNERS),
            "a WINNERS chunk of 1 documents makes 1000001 winners, more than the \
             client's limit of 1000000 (MAX_WINNERS)"
        );
        // An empty chunk before the last only keeps the client reading.
        assert_eq!(
            problem(0, &[], false, 4),
            "an empty WINNERS chunk before the last"
        );
    }

    #[test]
    fn a_trickled_winners_answer_is_bounded_by_io_timeout_from_its_first_chunk() {
        // Session 1: one winner every 400 ms, never the last chunk (each frame well
        // within the 6 s silence limit of the wait, so the old client read on
        // forever); the whole answer may take io_timeout = 1 s, so the session fails
        // (retryable) and session 2 gets a proper answer.
        let (address, sessions) = waiting_server(|session, conn| {
            if session > 1 {
                let _ = conn.write_message(&no_winners());
                return;
            }
            let chunk = Message::Winners {
                last: false,
                documents: vec!["7".to_string()],
            };
            while conn.write_message(&chunk).is_ok() {
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        let data = agency_file("trickled-winners", FOUR);
        let mut config = config(address, data.clone(), Duration::from_secs(5));
        config.io_timeout = Duration::from_secs(1);
        let result = run_bounded(config, Duration::from_secs(20));
        let _ = std::fs::remove_file(&data);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
        assert_eq!(*sessions.lock().expect("lock"), 2, "it reconnected");
        let slow = ClientError::SlowAnswer {
            stage: "winners query",
            limit: Duration::from_secs(1),
        };
        assert!(retry::is_retryable(&slow));
    }

    /// A fake server that answers the first `busy` connections with `SERVER_BUSY`
    /// (right after accepting, as the real one does, then closes) and serves the
    /// others with `serve`. Returns the address and the connections it accepted.
    fn busy_server(
        busy: u32,
        serve: impl Fn(&mut Connection) + Send + 'static,
    ) -> (String, Arc<Mutex<u32>>) {
        let connections = Arc::new(Mutex::new(0u32));
        let counter = Arc::clone(&connections);
        let address = fake_server(move |conn| {
            let n = {
                let mut n = counter.lock().expect("lock");
                *n += 1;
                *n
            };
            if n <= busy {
                let _ = conn.write_message(&Message::Error {
                    code: ErrorCode::ServerBusy,
                    reason: "the server already serves 2 connections; try again later".into(),
                });
                return;
            }
            serve(conn);
        });
        (address, connections)
    }

    /// Serves echo requests until the client closes.
    fn echo_back(conn: &mut Connection) {
        while let Ok(Some(message)) = conn.read_message() {
            if conn.write_message(&message).is_err() {
                return;
            }
        }
    }

    fn echo_config(address: String, amount: u64, retry_deadline: Duration) -> ClientConfig {
        ClientConfig {
            mode: Mode::Echo,
            loop_amount: amount,
            ..config(address, PathBuf::from("unused.csv"), retry_deadline)
        }
    }

    #[test]
    fn a_busy_server_is_retried_in_bets_mode() {
        let (address, connections) = busy_server(3, |conn| {
            while let Ok(Some(message)) = conn.read_message() {
                let reply = match message {
                    Message::Hello { upload, .. } => welcome(upload, 0, 0, 0),
                    Message::Bets { seq, bets, .. } => Message::BetsAck {
                        seq,
                        count: u16::try_from(bets.len()).unwrap_or(u16::MAX),
                    },
                    Message::Fin => Message::FinAck {
                        finished: 1,
                        agencies: 1,
                    },
                    Message::WinnersQuery => no_winners(),
                    other => panic!("{other:?}"),
                };
                if conn.write_message(&reply).is_err() {
                    return;
                }
            }
        });
        let data = agency_file("busy-bets", FOUR);
        let config = config(address, data.clone(), Duration::from_secs(10));
        let result = run_bounded(config, Duration::from_secs(30));
        let _ = std::fs::remove_file(&data);
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
        assert_eq!(*connections.lock().expect("lock"), 4);
    }

    #[test]
    fn a_busy_server_is_retried_in_echo_mode() {
        // Regression (issue 9): the echo loop retried only the connection, so the
        // SERVER_BUSY answer to its first ECHO ended the client at once.
        let (address, connections) = busy_server(3, echo_back);
        let config = echo_config(address, 2, Duration::from_secs(10));
        let result = run_bounded(config, Duration::from_secs(30));
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
        assert_eq!(*connections.lock().expect("lock"), 4);
    }

    #[test]
    fn a_forever_busy_server_is_given_up_on_after_the_retry_deadline() {
        for mode in [Mode::Bets, Mode::Echo] {
            let (address, connections) = busy_server(u32::MAX, |_| {});
            let data = agency_file("forever-busy", FOUR);
            let config = ClientConfig {
                mode,
                loop_amount: 2,
                ..config(address, data.clone(), Duration::from_secs(1))
            };
            let result = run_bounded(config, Duration::from_secs(20));
            let _ = std::fs::remove_file(&data);
            match result {
                Err(e @ ClientError::RetryDeadline { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.starts_with(
                            "no session with the server made progress for 1s \
                             (server.retry_deadline), giving up; last error: "
                        ) && text.contains(
                            "the server refused with SERVER_BUSY (13): the server \
                             already serves 2 connections; try again later"
                        ),
                        "{mode}: {text}"
                    );
                }
                other => panic!("{mode}: {other:?}"),
            }
            assert!(
                *connections.lock().expect("lock") >= 2,
                "{mode}: it did retry"
            );
        }
    }

    #[test]
    fn an_echo_loop_whose_connection_breaks_goes_on_with_the_next_message() {
        // Session 1 echoes message 1, then closes on message 2: session 2 sends 2
        // and 3, not 1 again.
        let received: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let log = Arc::clone(&received);
        let address = fake_server(move |conn| {
            let session = {
                let mut log = log.lock().expect("lock");
                log.push(Vec::new());
                log.len()
            };
            while let Ok(Some(message)) = conn.read_message() {
                let Message::Echo(bytes) = &message else {
                    panic!("{message:?}")
                };
                let text = String::from_utf8_lossy(bytes).into_owned();
                let count = {
                    let mut log = log.lock().expect("lock");
                    log[session - 1].push(text);
                    log[session - 1].len()
                };
                if session == 1 && count == 2 {
                    return;
                }
                if conn.write_message(&message).is_err() {
                    return;
                }
            }
        });
        let config = echo_config(address, 3, Duration::from_secs(5));
        let result = run_bounded(config, Duration::from_secs(20));
        assert_eq!(result.ok(), Some(Outcome::Completed { skipped: 0 }));
        let message = |k| format!("[CLIENT 1] Message N°{k}");
        assert_eq!(
            *received.lock().expect("lock"),
            [vec![message(1), message(2)], vec![message(2), message(3)]]
        );
    }

    #[test]
    fn retry_lines_name_the_time_left_and_the_key_that_bounds_it() {
        assert_eq!(
            retry_bound(Duration::from_millis(299_400), Duration::from_secs(300)),
            "gives_up_in: 300s | bounded_by: server.retry_deadline=300s"
        );
        assert_eq!(
            retry_bound(Duration::from_millis(2_000), Duration::from_secs(2)),
            "gives_up_in: 2s | bounded_by: server.retry_deadline=2s"
        );
        assert_eq!(
            retry_bound(Duration::from_millis(250), Duration::from_millis(1_500)),
            "gives_up_in: 250ms | bounded_by: server.retry_deadline=1500ms"
        );
    }

    #[test]
    fn errors_read_clearly() {
        let conflict = ClientError::UploadConflict {
            agency: 3,
            stored_bets: 150,
            stored_upload: 0xab,
            upload: 0xcd,
            finished: false,
        };
        assert_eq!(
            conflict.to_string(),
            "agency 3 already stored 150 bets of another file (upload 00000000000000ab); \
             this file (upload 00000000000000cd) is not stored; start a new lottery to \
             upload another file"
        );
        assert_eq!(
            ClientError::Superseded { agency: 2 }.to_string(),
            "another client process of agency 2 took over; this one stops"
        );
        let deadline = ClientError::RetryDeadline {
            deadline: Duration::from_secs(300),
            last_error: Box::new(ClientError::Connect {
                address: "server:12345".into(),
                source: io::Error::from(io::ErrorKind::ConnectionRefused),
            }),
        };
        let text = deadline.to_string();
        assert!(text.contains("300s"), "{text}");
        assert!(text.contains("server.retry_deadline"), "{text}");
        assert!(
            text.contains("cannot connect to server server:12345"),
            "{text}"
        );
        assert!(std::error::Error::source(&deadline).is_some());
        assert_eq!(
            ClientError::FileChanged {
                path: PathBuf::from("/data/agency-1.csv"),
                was: 0xab,
                now: 0xcd,
            }
            .to_string(),
            "the agency file /data/agency-1.csv changed during the upload (fingerprint \
             00000000000000ab, now 00000000000000cd); nothing more is sent and FIN is not \
             sent — restore the file and run again to resume (bets already sent from the \
             changed content stay stored)"
        );
    }
}
