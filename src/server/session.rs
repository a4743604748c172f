//! One connection's conversation: frames in, rules applied through the ledger and
//! the draw barrier, replies out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Shared;
use super::draw::{self, WaitEnd, Waiter, WaitingPeer};
use super::ledger::{Refusal, Stored, Ticket};
use crate::bet::{self, AgencyId, Bet};
use crate::connection::{Connection, ConnectionError};
use crate::logging;
use crate::protocol::{ErrorCode, Frame, FrameError, Message, kind};
use crate::storage::StorageError;

/// Whether the connection goes on after a request.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// One connection's conversation.
pub(super) struct Session<'a> {
    shared: &'a Shared,
    conn: Connection,
    id: u64,
    peer: SocketAddr,
    agency: Option<AgencyId>,
    /// The upload id the agency gave in its `HELLO`.
    upload: u64,
    /// Set when a newer connection of the same agency took over.
    superseded: Arc<AtomicBool>,
    /// Set when the accept loop closes this connection to make room.
    evicted: Arc<AtomicBool>,
    /// Batches accepted and not answered yet, in the order received (pipelining).
    in_flight: Vec<InFlight>,
    /// The payload bytes of `in_flight`'s frames.
    in_flight_bytes: usize,
    /// The answers being gathered for one write.
    answers: Vec<Message>,
}

/// A batch accepted by the ledger, to be answered once its group commit settles.
struct InFlight {
    seq: u64,
    count: usize,
    ticket: Ticket,
    /// A single bet is logged by DNI and number once stored.
    single: Option<(String, u16)>,
}

/// The most batches a connection accepts before it answers them: a peer that sends
/// ahead of its acknowledgements without pause is answered at least this often.
pub(super) const MAX_READ_AHEAD: usize = 64;

/// The most payload bytes of the batches a connection holds before it answers them
/// (32 full frames): what a peer can make one connection hold in memory, decoded.
pub(super) const MAX_READ_AHEAD_BYTES: usize = 32 * crate::protocol::MAX_FRAME_LEN;

impl Session<'_> {
    /// Serves the connection until it ends, then closes it and logs why.
    pub(super) fn serve(
        shared: &Shared,
        mut conn: Connection,
        id: u64,
        peer: SocketAddr,
        superseded: Arc<AtomicBool>,
        evicted: Arc<AtomicBool>,
    ) {
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
            superseded,
            evicted,
            in_flight: Vec::new(),
            in_flight_bytes: 0,
            answers: Vec::new(),
        };
        let reason = session.conversation();
        // Batches accepted and not answered (the conversation broke): settled all the
        // same, so their group commit does not wait for another connection.
        session.answer_in_flight_quietly();
        session.conn.close();
        if let Some(agency) = session.agency {
            shared.ledger.release(agency, id);
        }
        log::info!(
            "action: close_connection | result: success | peer: {peer} | agency: {} | reason: {reason}",
            session.agency_label()
        );
    }

    fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::SeqCst)
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::SeqCst)
    }

    /// The reason given to a connection closed to make room.
    const EVICTED: &'static str = "the server is full and this connection owns no agency: it is closed to make room; try again later";

    /// Tells an evicted connection why it is closed (best effort).
    fn evicted_reply(&mut self) -> String {
        self.answer_in_flight_quietly();
        let _ = self.reply_error(ErrorCode::ServerBusy, Self::EVICTED.into());
        "evicted to make room (the server was full)".into()
    }

    /// Serves requests until the connection ends; returns why it ended.
    fn conversation(&mut self) -> String {
        // The first byte tells a TLS handshake, a person with netcat (text, see
        // docs/PROTOCOL.md "Plain-text echo") and our frames apart. It is peeked on
        // the socket, so it is still there for the handshake or `read_frame`.
        match self.conn.peek_first_byte() {
            Ok(Some(crate::tls::HANDSHAKE_BYTE)) => {
                if let Err(reason) = self.start_tls() {
                    return reason;
                }
            }
            Ok(Some(first)) if crate::connection::starts_plain_text(first) => {
                return self.plain_text_echo();
            }
            Ok(_) => {} // A frame, binary garbage, or the end: the loop deals with it.
            Err(e) => return self.broken_stream(e),
        }
        loop {
            // Batches read ahead are answered once no more input is here (or enough
            // are held): never wait for input while holding answers.
            if !self.in_flight.is_empty()
                && (self.in_flight.len() >= MAX_READ_AHEAD
                    || self.in_flight_bytes >= MAX_READ_AHEAD_BYTES
                    || !self.conn.has_input_ready())
            {
                match self.answer_in_flight() {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Close) => return "closed after error".into(),
                    Err(e) if self.shared.shutdown.is_triggered() => {
                        return format!("shutdown ({e})");
                    }
                    Err(e) => return format!("write failed: {e}"),
                }
            }
            // A waiter answered by a draw that raced with shutdown kept its socket
            // open (the hook spares waiting sockets): do not serve it further.
            if self.shared.shutdown.is_triggered() {
                return "shutdown".into();
            }
            if self.is_superseded() {
                return self.superseded_reply();
            }
            if self.is_evicted() {
                return self.evicted_reply();
            }
            let frame = match self.conn.read_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) if self.shared.shutdown.is_triggered() => return "shutdown".into(),
                Ok(None) if self.is_superseded() => return self.superseded_reply(),
                Ok(None) if self.is_evicted() => return self.evicted_reply(),
                Ok(None) => return "closed by peer".into(),
                Err(_) if self.is_superseded() => return self.superseded_reply(),
                Err(_) if self.is_evicted() => return self.evicted_reply(),
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

    /// Runs the server side of the TLS handshake; `Err` with the reason the
    /// connection ends (a refused certificate, a timeout). With TLS off here the
    /// connection goes on to the frame reader, which refuses its first byte.
    fn start_tls(&mut self) -> Result<(), String> {
        let Some(tls) = &self.shared.tls else {
            // The frame reader answers UNSUPPORTED_VERSION, which the TLS client takes
            // for a broken handshake: it fails at once either way.
            log::warn!(
                "action: tls_handshake | result: fail | peer: {} | error: a TLS client, but TLS is off on this server (tls.ca, tls.cert, tls.key)",
                self.peer
            );
            self.shared.metrics.tls_handshake_failed();
            return Ok(());
        };
        match self.conn.accept_tls(tls.config()) {
            Ok(()) => {
                log::debug!(
                    "action: tls_handshake | result: success | peer: {} | client_certificate: {}",
                    self.peer,
                    self.conn.peer_certificate().is_some()
                );
                Ok(())
            }
            Err(e) => {
                self.shared.metrics.tls_handshake_failed();
                if self.shared.shutdown.is_triggered() {
                    return Err("shutdown".into());
                }
                log::warn!(
                    "action: tls_handshake | result: fail | peer: {} | error: {}",
                    self.peer,
                    logging::sanitize(&e.to_string())
                );
                Err(format!(
                    "TLS handshake failed: {}",
                    logging::sanitize(&e.to_string())
                ))
            }
        }
    }

    /// Tells a superseded connection why it is closed (best effort).
    fn superseded_reply(&mut self) -> String {
        self.answer_in_flight_quietly();
        let agency = self.agency_label();
        let _ = self.reply_error(
            ErrorCode::Superseded,
            format!("another connection of agency {agency} said HELLO; this one is closed"),
        );
        "superseded by a newer connection of the agency".into()
    }

    fn broken_stream(&mut self, error: FrameError) -> String {
        self.answer_in_flight_quietly();
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
        self.shared
            .metrics
            .frame_received(crate::protocol::HEADER_LEN + frame.payload.len());
        // Answers go out in the order of the requests: the batches read ahead first.
        if frame.kind != kind::BETS && self.answer_in_flight()? == Flow::Close {
            return Ok(Flow::Close);
        }
        let agency_request = matches!(
            frame.kind,
            kind::HELLO | kind::BETS | kind::FIN | kind::WINNERS_QUERY
        );
        if agency_request && self.shared.config.tls_required && !self.conn.is_tls() {
            return self.reply_error(
                ErrorCode::TlsRequired,
                "this server requires TLS for agencies: connect with TLS and the agency's certificate (client keys tls.ca, tls.cert, tls.key)".into(),
            );
        }
        let needs_hello = matches!(frame.kind, kind::BETS | kind::FIN | kind::WINNERS_QUERY);
        if needs_hello && self.agency.is_none() {
            return self.not_identified();
        }
        // A batch is decoded into the bets of one already committed (their Strings
        // are reused: no allocation per bet).
        let decoded = if frame.kind == kind::BETS {
            // Counted for the read-ahead bound whether or not the batch is accepted
            // (a refused one is answered at once, with those before it).
            self.in_flight_bytes += frame.payload.len();
            let mut bets = self.shared.ledger.spare_batch();
            crate::protocol::decode_bets_into(&frame.payload, &mut bets)
                .map(|(seq, line)| Message::Bets { seq, line, bets })
        } else {
            frame.decode()
        };
        let message = match decoded {
            Ok(message) => message,
            Err(e) => {
                if frame.kind == kind::BETS {
                    if self.answer_in_flight()? == Flow::Close {
                        return Ok(Flow::Close);
                    }
                    self.log_batch_refused(&frame.payload, &e.to_string());
                }
                return self.reply_error(e.code(), e.to_string());
            }
        };
        match message {
            Message::Echo(_) => {
                log::info!(
                    "action: receive_message | result: success | peer: {} | msg: {}",
                    self.peer,
                    logging::excerpt(&frame.payload)
                );
                self.conn.write_frame(&frame)?;
                Ok(Flow::Continue)
            }
            Message::Hello { agency, upload } => self.hello(agency, upload),
            Message::Bets { seq, line, bets } => self.bets(seq, line, bets),
            Message::Fin => self.fin(),
            Message::WinnersQuery => self.winners(),
            Message::StatusQuery => self.status(),
            other => self.reply_error(
                ErrorCode::UnknownKind,
                format!("kind 0x{:02x} is a reply, not a request", other.kind()),
            ),
        }
    }

    /// Logs a refused `BETS` frame, with its count read straight from the payload
    /// (it may not decode).
    fn log_batch_refused(&self, payload: &[u8], reason: &str) {
        // The count follows `seq` and `line` (BETS_PREFIX_LEN - 2 bytes).
        let at = crate::protocol::BETS_PREFIX_LEN - 2;
        let count = payload
            .get(at..at + 2)
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
        self.reply_error_before(code, reason, None)
    }

    /// [`Self::reply_error`], the reply written before `deadline` when one is given
    /// (else under the connection's write timeout).
    fn reply_error_before(
        &mut self,
        code: ErrorCode,
        reason: String,
        deadline: Option<Instant>,
    ) -> Result<Flow, ConnectionError> {
        self.note_error(code, &reason);
        let message = Message::Error { code, reason };
        match deadline {
            Some(deadline) => self.conn.write_messages_before(&[message], deadline)?,
            None => self.conn.write_message(&message)?,
        }
        Ok(if code.closes_connection() {
            Flow::Close
        } else {
            Flow::Continue
        })
    }

    /// Counts and logs an `ERROR` reply about to be written.
    fn note_error(&self, code: ErrorCode, reason: &str) {
        self.shared.metrics.error_sent(code);
        log::warn!(
            "action: request | result: fail | peer: {} | agency: {} | code: {code} | reason: {}",
            self.peer,
            self.agency_label(),
            logging::sanitize(reason)
        );
    }

    fn hello(&mut self, agency: AgencyId, upload: u64) -> Result<Flow, ConnectionError> {
        let agencies = self.shared.ledger.agencies();
        if !(1..=agencies).contains(&agency) {
            return self.reply_error(
                ErrorCode::UnknownAgency,
                format!("agency {agency} is not one of 1..={agencies}"),
            );
        }
        if let Some(bound) = self.agency.filter(|&bound| bound != agency) {
            return self.reply_error(
                ErrorCode::AlreadyIdentified,
                format!("this connection already belongs to agency {bound}"),
            );
        }
        if self.conn.is_tls() {
            let refusal = match self.conn.peer_certificate() {
                None => Some(format!(
                    "a HELLO for agency {agency} needs that agency's client certificate; this TLS connection presented none"
                )),
                Some(cert) if !crate::tls::speaks_for(cert, agency) => Some(format!(
                    "the client certificate does not speak for agency {agency} (it must be valid for the name {})",
                    crate::tls::agency_name(agency)
                )),
                Some(_) => None,
            };
            if let Some(reason) = refusal {
                return self.reply_error(ErrorCode::NotAuthorized, reason);
            }
        }
        self.agency = Some(agency);
        self.upload = upload;
        let welcome = match self.shared.ledger.hello(agency, upload, self.id) {
            Some(welcome) => welcome,
            None => {
                // A newer connection of the agency said HELLO before this (older)
                // one's HELLO was handled: this one is the stale one.
                self.superseded.store(true, Ordering::SeqCst);
                return Ok(Flow::Continue); // The loop answers SUPERSEDED and closes.
            }
        };
        if let Some(old) = welcome.superseded {
            self.shared.supersede(old);
            log::info!(
                "action: supersede | result: success | agency: {agency} | old_connection: {old} | peer: {}",
                self.peer
            );
        }
        if welcome.upload == upload {
            log::info!(
                "action: hello | result: success | agency: {agency} | upload: {upload:016x} | stored_bets: {} | stored_seq: {} | stored_line: {} | finished: {} | peer: {}",
                welcome.stored_bets,
                welcome.stored_seq,
                welcome.stored_line,
                welcome.finished,
                self.peer
            );
        } else {
            log::warn!(
                "action: hello | result: success | agency: {agency} | upload: {upload:016x} | stored_upload: {:016x} | stored_bets: {} | finished: {} | peer: {} | note: the agency stored bets of another upload; BETS of this one are refused",
                welcome.upload,
                welcome.stored_bets,
                welcome.finished,
                self.peer
            );
        }
        self.conn.write_message(&Message::Welcome {
            agency,
            upload: welcome.upload,
            stored_seq: welcome.stored_seq,
            stored_bets: welcome.stored_bets,
            stored_line: welcome.stored_line,
            finished: welcome.finished,
            drawn: welcome.drawn,
        })?;
        Ok(Flow::Continue)
    }

    /// Accepts a batch into the ledger's group commit; it is answered with the
    /// batches read after it (see [`Session::answer_in_flight`]). A refused batch is
    /// answered at once, after the batches before it.
    fn bets(&mut self, seq: u64, line: u64, bets: Vec<Bet>) -> Result<Flow, ConnectionError> {
        let Some(agency) = self.agency else {
            return self.not_identified();
        };
        let count = bets.len();
        let today = bet::today();
        let invalid = bets.iter().enumerate().find_map(|(i, b)| {
            b.validate(today)
                .err()
                .map(|e| format!("bet {}: {e}", i + 1))
        });
        let single = match bets.as_slice() {
            [b] => Some((b.document.clone(), b.number)),
            _ => None,
        };
        let refusal = match invalid {
            Some(reason) => (ErrorCode::InvalidBet, reason),
            None => match self
                .shared
                .ledger
                .accept(agency, self.id, self.upload, seq, line, bets)
            {
                Ok(ticket) => {
                    self.in_flight.push(InFlight {
                        seq,
                        count,
                        ticket,
                        single,
                    });
                    return Ok(Flow::Continue);
                }
                Err(refusal) => self.refusal(agency, seq, refusal),
            },
        };
        if self.answer_in_flight()? == Flow::Close {
            return Ok(Flow::Close);
        }
        self.refuse_batch(agency, seq, count, refusal)
    }

    /// Answers a refused batch.
    fn refuse_batch(
        &mut self,
        agency: AgencyId,
        seq: u64,
        count: usize,
        (code, reason): (ErrorCode, String),
    ) -> Result<Flow, ConnectionError> {
        log_refused(agency, seq, count, &reason);
        self.reply_error(code, reason)
    }

    /// Settles the batches read ahead, in order, and answers them in one write: an
    /// ACK for each stored one; a batch whose group commit failed gets its `ERROR`
    /// (and so does each after it: their groups failed too).
    fn answer_in_flight(&mut self) -> Result<Flow, ConnectionError> {
        self.in_flight_bytes = 0;
        if self.in_flight.is_empty() {
            return Ok(Flow::Continue);
        }
        let Some(agency) = self.agency else {
            // Batches are only accepted once the connection said HELLO.
            self.in_flight.clear();
            return Ok(Flow::Continue);
        };
        let mut answers = std::mem::take(&mut self.answers);
        answers.clear();
        let mut flow = Flow::Continue;
        for batch in std::mem::take(&mut self.in_flight) {
            if flow == Flow::Close {
                // The connection closes after the error written before: the batch
                // is settled all the same (its group no longer waits for anyone).
                let _ = self.shared.ledger.settle_ticket(&batch.ticket);
                continue;
            }
            match self.shared.ledger.settle_ticket(&batch.ticket) {
                Ok(stored) => {
                    self.log_stored(agency, &batch, stored);
                    answers.push(Message::BetsAck {
                        seq: batch.seq,
                        // Decoded from a u16 count, so `count` fits a u16.
                        count: u16::try_from(batch.count).unwrap_or(u16::MAX),
                    });
                }
                Err(refusal) => {
                    let (code, reason) = self.refusal(agency, batch.seq, refusal);
                    log_refused(agency, batch.seq, batch.count, &reason);
                    self.note_error(code, &reason);
                    if code.closes_connection() {
                        flow = Flow::Close;
                    }
                    answers.push(Message::Error { code, reason });
                }
            }
        }
        let written = self.conn.write_messages(&answers);
        answers.clear();
        self.answers = answers;
        written.map(|()| flow)
    }

    /// [`Session::answer_in_flight`] when the conversation ends anyway: a failure to
    /// write is the end already being reported.
    fn answer_in_flight_quietly(&mut self) {
        let _ = self.answer_in_flight();
    }

    /// Logs (and counts) a batch answered as stored.
    fn log_stored(&self, agency: AgencyId, batch: &InFlight, stored: Stored) {
        let (seq, count) = (batch.seq, batch.count);
        match stored {
            Stored::New => {
                self.shared
                    .metrics
                    .batch_stored(u64::try_from(count).unwrap_or(u64::MAX));
                log::info!(
                    "action: apuesta_recibida | result: success | cantidad: {count} | agency: {agency} | seq: {seq}"
                );
                if let Some((document, number)) = &batch.single {
                    log::info!(
                        "action: apuesta_almacenada | result: success | dni: {document} | numero: {number}"
                    );
                }
            }
            Stored::Replay => {
                self.shared.metrics.batch_replayed();
                log::warn!(
                    "action: batch_replay | result: success | agency: {agency} | upload: {:016x} | seq: {seq} | cantidad: {count}",
                    self.upload
                );
            }
        }
    }

    /// The error reply for a refused batch.
    fn refusal(&self, agency: AgencyId, seq: u64, refusal: Refusal) -> (ErrorCode, String) {
        match refusal {
            Refusal::DrawDone => (
                ErrorCode::DrawDone,
                "the draw has already run; no more bets are accepted".to_string(),
            ),
            Refusal::AgencyFinished => (
                ErrorCode::AgencyFinished,
                format!("agency {agency} already sent FIN; no more bets are accepted"),
            ),
            Refusal::Superseded => (
                ErrorCode::Superseded,
                format!("another connection of agency {agency} said HELLO; this one is closed"),
            ),
            Refusal::UploadConflict { stored, bets } => (
                ErrorCode::UploadConflict,
                format!(
                    "agency {agency} already stored {bets} bets of another upload ({stored:016x}); this upload ({:016x}) is not stored — start a new lottery to upload another file",
                    self.upload
                ),
            ),
            Refusal::BadSeq { expected } => (
                ErrorCode::BadSeq,
                format!(
                    "batch {seq} is neither the next batch ({expected}) nor a replay of the last stored one; nothing was stored"
                ),
            ),
            Refusal::Storage(e) => storage_refusal(agency, Some(seq), &e),
        }
    }

    fn fin(&mut self) -> Result<Flow, ConnectionError> {
        let Some(agency) = self.agency else {
            return self.not_identified();
        };
        let agencies = self.shared.ledger.agencies();
        let finish =
            match self
                .shared
                .ledger
                .finish(agency, self.id, self.shared.config.winning_number)
            {
                Ok(finish) => finish,
                Err(Refusal::Storage(e)) => {
                    let (code, reason) = storage_refusal(agency, None, &e);
                    return self.reply_error(code, reason);
                }
                Err(_) => {
                    self.superseded.store(true, Ordering::SeqCst);
                    return Ok(Flow::Continue); // The loop answers SUPERSEDED and closes.
                }
            };
        log::info!(
            "action: fin | result: success | agency: {agency} | finished: {} | agencies: {agencies}",
            finish.finished
        );
        // Acknowledge first: the drawing agency does not wait for the draw to hear
        // that its FIN counted.
        let acked = self.conn.write_message(&Message::FinAck {
            finished: finish.finished,
            agencies,
        });
        if finish.draw_now {
            self.shared.draw_and_answer(finish.draw_unrecorded);
        } else if !self.shared.shutdown.is_triggered() {
            self.shared.log_missing();
        }
        acked.map(|()| Flow::Continue)
    }

    fn winners(&mut self) -> Result<Flow, ConnectionError> {
        let Some(agency) = self.agency else {
            return self.not_identified();
        };
        if !self.shared.ledger.has_finished(agency) {
            return self.reply_error(
                ErrorCode::NotFinished,
                format!("agency {agency} must send FIN before asking for its winners"),
            );
        }
        let shared = self.shared;
        if shared.barrier.result().is_none() {
            log::info!("action: winners_wait | result: in_progress | agency: {agency}");
        }
        let waiter = Waiter {
            conn_id: self.id,
            agency,
        };
        let mut peer = WaitingConnection {
            shared,
            conn: &mut self.conn,
            superseded: &self.superseded,
            agency,
        };
        let end = shared
            .barrier
            .wait(waiter, &mut peer, crate::protocol::PENDING_INTERVAL);
        match end {
            WaitEnd::Result(outcome) => self.send_winners(agency, &outcome),
            WaitEnd::Superseded => {
                // A newer connection of the agency took over (maybe its place in the
                // barrier before its HELLO's takeover reached this one).
                self.superseded.store(true, Ordering::SeqCst);
                Ok(Flow::Continue) // The loop answers SUPERSEDED and closes.
            }
            WaitEnd::ShuttingDown => self.shutting_down_reply(),
            WaitEnd::Left if self.is_superseded() => Ok(Flow::Continue),
            WaitEnd::Left => {
                log::info!(
                    "action: winners_wait | result: fail | agency: {agency} | reason: the agency closed the connection before the draw"
                );
                Ok(Flow::Close)
            }
        }
    }

    /// Writes `agency`'s answer (its winners, or `INTERNAL` if the draw failed) within
    /// one `io_timeout` for the whole answer, however the peer paces its reads. A
    /// failure may leave part of a frame written: the loop closes the connection.
    fn send_winners(
        &mut self,
        agency: AgencyId,
        outcome: &draw::DrawOutcome,
    ) -> Result<Flow, ConnectionError> {
        if outcome.is_err() {
            self.shared.metrics.error_sent(ErrorCode::Internal);
        }
        let deadline = Instant::now() + self.shared.config.io_timeout;
        let sent = self
            .conn
            .write_messages_before(&draw::winners_reply(outcome, agency), deadline);
        let count = outcome.as_ref().map_or(0, |d| d.winners_of(agency).len());
        match &sent {
            Ok(()) => log::info!(
                "action: winners_sent | result: success | agency: {agency} | cant_ganadores: {count}"
            ),
            Err(e) => {
                log::warn!("action: winners_sent | result: fail | agency: {agency} | error: {e}")
            }
        }
        sent.map(|()| Flow::Continue)
    }

    /// Tells a waiting agency that the server stops before the draw, within
    /// [`draw::STOP_ANSWER_LIMIT`] (shutdown waits for it); then the connection closes.
    fn shutting_down_reply(&mut self) -> Result<Flow, ConnectionError> {
        // SHUTTING_DOWN closes the connection (`ErrorCode::closes_connection`).
        self.reply_error_before(
            ErrorCode::ShuttingDown,
            "the server is stopping before the draw".into(),
            Some(Instant::now() + draw::STOP_ANSWER_LIMIT),
        )
    }

    /// Serves a plain-text connection: echoes each line back as it came and logs it,
    /// until the peer closes, stays idle, sends an over-long line, or shutdown.
    fn plain_text_echo(&mut self) -> String {
        use crate::connection::{MAX_TEXT_LINE, TextLine};
        log::debug!(
            "action: plain_text_echo | result: in_progress | peer: {}",
            self.peer
        );
        loop {
            if self.shared.shutdown.is_triggered() {
                return "shutdown".into();
            }
            let read = self.conn.read_line(MAX_TEXT_LINE);
            if self.shared.shutdown.is_triggered() {
                return "shutdown".into();
            }
            let problem = match read {
                _ if self.is_evicted() => Self::EVICTED.to_string(),
                Ok(TextLine::Complete(line) | TextLine::Unterminated(line)) => {
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    let text = text.strip_suffix(b"\r").unwrap_or(text);
                    log::info!(
                        "action: receive_message | result: success | peer: {} | msg: {}",
                        self.peer,
                        logging::excerpt(text)
                    );
                    match self.conn.write_bytes(&line) {
                        Ok(()) => continue,
                        Err(e) => return format!("{e} (plain text)"),
                    }
                }
                Ok(TextLine::End) => return "closed by peer (plain text)".into(),
                Ok(TextLine::TooLong) => format!("line longer than {MAX_TEXT_LINE} bytes"),
                Err(e) if e.is_timeout() => format!(
                    "no complete line for {}",
                    crate::config::format_duration(self.shared.config.io_timeout)
                ),
                Err(e) => return format!("{e} (plain text)"),
            };
            log::warn!(
                "action: receive_message | result: fail | peer: {} | error: {problem}",
                self.peer
            );
            // Best effort: the connection is closed right after either way.
            let _ = self
                .conn
                .write_bytes(format!("ERROR {problem}; closing\n").as_bytes());
            return format!("{problem} (plain text)");
        }
    }

    /// Answers `STATUS_QUERY`: the chunks of one snapshot (needs no `HELLO`, changes
    /// nothing).
    fn status(&mut self) -> Result<Flow, ConnectionError> {
        self.shared.metrics.status_query();
        let snapshot = self.shared.status_snapshot();
        let chunks = snapshot.chunks();
        log::debug!(
            "action: status_query | result: success | peer: {} | agency: {} | finished: {} | agencies: {} | chunks: {}",
            self.peer,
            self.agency_label(),
            snapshot.finished,
            snapshot.agencies,
            chunks.len()
        );
        // One deadline for the whole answer (a reader that trickles it cannot hold
        // this thread past io_timeout), written one chunk at a time.
        let deadline = Instant::now() + self.shared.config.io_timeout;
        for chunk in chunks {
            self.conn
                .write_messages_before(&[Message::Status(chunk)], deadline)?;
        }
        Ok(Flow::Continue)
    }

    fn not_identified(&mut self) -> Result<Flow, ConnectionError> {
        self.reply_error(
            ErrorCode::NotIdentified,
            "send HELLO with the agency id first".into(),
        )
    }
}

/// A connection waiting for the draw, as the barrier sees it: its own thread writes
/// its `DRAW_PENDING`s through its own [`Connection`] and looks, through it too,
/// whether the agency left (a TCP close, or TLS' `close_notify`, which a peek at the
/// socket could not tell from data).
struct WaitingConnection<'c> {
    shared: &'c Shared,
    conn: &'c mut Connection,
    superseded: &'c AtomicBool,
    agency: AgencyId,
}

impl WaitingPeer for WaitingConnection<'_> {
    fn superseded(&self) -> bool {
        self.superseded.load(Ordering::SeqCst)
    }

    fn has_left(&mut self) -> bool {
        self.conn.peer_has_closed(LEFT_PROBE_WAIT)
    }

    fn send_pending(&mut self) -> bool {
        let (finished, _, _) = self.shared.ledger.waiting_for(0);
        let agencies = self.shared.ledger.agencies();
        let agency = self.agency;
        let pending = Message::DrawPending { finished, agencies };
        let deadline = Instant::now() + self.shared.config.io_timeout;
        match self.conn.write_messages_before(&[pending], deadline) {
            Ok(()) => {
                self.shared.metrics.draw_pending_sent();
                log::debug!(
                    "action: draw_pending | result: success | agency: {agency} | finished: {finished} | agencies: {agencies}"
                );
                true
            }
            Err(e) => {
                log::warn!("action: draw_pending | result: fail | agency: {agency} | error: {e}");
                false
            }
        }
    }
}

/// Logs batch `seq` (of `count` bets) of `agency` as refused, and why.
fn log_refused(agency: AgencyId, seq: u64, count: usize, reason: &str) {
    log::warn!(
        "action: apuesta_recibida | result: fail | cantidad: {count} | agency: {agency} | seq: {seq} | reason: {}",
        logging::sanitize(reason)
    );
}

/// The reply to a request that storage could not record: `INTERNAL`, which the
/// client retries (nothing was stored).
fn storage_refusal(agency: AgencyId, seq: Option<u64>, e: &StorageError) -> (ErrorCode, String) {
    let what = seq.map_or("FIN".to_string(), |s| format!("batch {s}"));
    log::error!(
        "action: store_bets | result: fail | agency: {agency} | request: {what} | error: {}",
        logging::sanitize(&e.to_string())
    );
    (
        ErrorCode::Internal,
        format!("could not store {what}: {e}; nothing was stored, try again"),
    )
}

/// How long a waiting connection looks for the agency having left, each time.
const LEFT_PROBE_WAIT: Duration = Duration::from_millis(1);
