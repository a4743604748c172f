//! One session: a TCP connection to the server and the requests sent on it.

use std::io;
use std::net::{Shutdown as Both, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{ClientError, unexpected};
use crate::bet::{self, AgencyId, Bet};
use crate::config::MAX_AGENCIES;
use crate::connection::{Connection, ConnectionError};
use crate::logging::excerpt;
use crate::protocol::{
    ErrorCode, FrameError, Message, PENDING_INTERVAL, StatusAssembler, StatusSnapshot,
};
use crate::shutdown::{HookGuard, Shutdown};
use crate::tls::ClientTls;

/// The least time between two `waiting_draw` lines (the server's `DRAW_PENDING`
/// frames come every [`PENDING_INTERVAL`]; a faster server is not logged faster).
const WAITING_LOG_EVERY: Duration = Duration::from_secs(2);

/// How long the wait for the draw may go without any frame before the server counts
/// as gone: `server.io_timeout`, but at least two of the server's pending intervals
/// (so a short `io_timeout` does not take a healthy wait for a dead server).
pub fn draw_wait_timeout(io_timeout: Duration) -> Duration {
    io_timeout.max(PENDING_INTERVAL.saturating_mul(2))
}

/// What the server's `WELCOME` says about the agency's stored upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The upload the stored bets belong to.
    pub upload: u64,
    /// The `seq` of the last stored batch of that upload.
    pub stored_seq: u64,
    /// Bets of the agency stored.
    pub stored_bets: u64,
    /// The file line of the last stored batch's last bet (0: none, or no line known).
    pub stored_line: u64,
    /// Whether the agency's `FIN` is recorded.
    pub finished: bool,
    /// Whether the draw has run.
    pub drawn: bool,
}

/// The stage of the TLS handshake, in errors.
pub(super) const TLS_HANDSHAKE: &str = "tls handshake";

/// A connection to the server; closed when dropped.
pub struct Session {
    conn: Connection,
    agency: AgencyId,
    io_timeout: Duration,
    _close_on_shutdown: HookGuard,
}

impl Session {
    /// Makes one connection attempt (each resolved address gets `timeout`), with the
    /// TLS handshake when `tls` is given (the server's certificate must be valid for
    /// the host of `address`), and sets the reply timeout `io_timeout`.
    pub fn connect(
        address: &str,
        agency: AgencyId,
        timeout: Duration,
        io_timeout: Duration,
        shutdown: &Shutdown,
        tls: Option<&ClientTls>,
    ) -> Result<Session, ClientError> {
        let connect_error = |source: io::Error| ClientError::Connect {
            address: address.to_string(),
            source,
        };
        let stream = try_connect(address, timeout).map_err(connect_error)?;
        let mut conn = Connection::new(stream).map_err(connect_error)?;
        // The handshake is bounded by the connection attempt's time too.
        conn.set_timeouts(Some(timeout.min(io_timeout)))
            .map_err(connect_error)?;
        let closer = conn.shared_stream();
        let hook = shutdown.on_trigger(move || {
            // Unblocks any read or write in progress; errors mean it is closed already.
            let _ = closer.shutdown(Both::Both);
        });
        if let Some(tls) = tls {
            let name = crate::tls::server_name(address).map_err(ClientError::Tls)?;
            conn.connect_tls(tls.config(), name)
                .map_err(|source| match source.clear_answer() {
                    // A refusal in the clear (SERVER_BUSY: retried) is a refusal.
                    Some(Message::Error { code, reason }) => ClientError::Refused {
                        stage: TLS_HANDSHAKE.to_string(),
                        code: *code,
                        reason: reason.clone(),
                    },
                    Some(other) => unexpected(TLS_HANDSHAKE, other),
                    None => ClientError::Connection {
                        stage: TLS_HANDSHAKE,
                        source,
                    },
                })?;
        }
        conn.set_timeouts(Some(io_timeout)).map_err(connect_error)?;
        log::info!(
            "action: connect | result: success | client_id: {agency} | server_address: {address} | tls: {}",
            if tls.is_some() { "on" } else { "off" }
        );
        Ok(Session {
            conn,
            agency,
            io_timeout,
            _close_on_shutdown: hook,
        })
    }

    fn send(&mut self, stage: &'static str, message: &Message) -> Result<(), ClientError> {
        self.conn
            .write_message(message)
            .map_err(|source| ClientError::Connection { stage, source })
    }

    /// Reads the next reply; an `ERROR` reply becomes [`ClientError::Refused`] (or
    /// [`ClientError::Superseded`]).
    fn receive(&mut self, stage: &'static str) -> Result<Message, ClientError> {
        match self.conn.read_message() {
            Ok(Some(Message::Error {
                code: ErrorCode::Superseded,
                ..
            })) => Err(ClientError::Superseded {
                agency: self.agency,
            }),
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

    /// `HELLO` → `WELCOME`.
    pub fn hello(&mut self, upload: u64) -> Result<Welcome, ClientError> {
        let agency = self.agency;
        self.send("hello", &Message::Hello { agency, upload })?;
        match self.receive("hello")? {
            Message::Welcome {
                agency: a,
                upload,
                stored_seq,
                stored_bets,
                stored_line,
                finished,
                drawn,
            } if a == agency => Ok(Welcome {
                upload,
                stored_seq,
                stored_bets,
                stored_line,
                finished,
                drawn,
            }),
            other => Err(unexpected("hello", &other)),
        }
    }

    /// Sends batch `seq`, whose last bet is on file line `line` (0: no file), and
    /// waits for its acknowledgement; returns the bets acked.
    pub fn send_batch(&mut self, seq: u64, line: u64, bets: &[Bet]) -> Result<u64, ClientError> {
        self.send_batch_ahead(seq, line, bets)?;
        self.receive_ack(seq, bets.len())
    }

    /// Sends batch `seq` without waiting for its acknowledgement (pipelining: the
    /// server answers every batch, in the order sent; see [`Session::receive_ack`]).
    pub fn send_batch_ahead(
        &mut self,
        seq: u64,
        line: u64,
        bets: &[Bet],
    ) -> Result<(), ClientError> {
        self.conn
            .write_encoded(|out| crate::protocol::encode_bets_into(seq, line, bets, out))
            .map_err(|source| ClientError::Connection {
                stage: "send batch",
                source,
            })
    }

    /// Reads the answer to the oldest batch in flight, `seq` of `count` bets: its
    /// acknowledgement (returns the bets acked), or the server's refusal of it.
    pub fn receive_ack(&mut self, seq: u64, count: usize) -> Result<u64, ClientError> {
        match self.receive("send batch") {
            Ok(Message::BetsAck { seq: s, count: c }) if s == seq && usize::from(c) == count => {
                Ok(u64::from(c))
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

    /// A refusal the server sent unasked before it closed (`SUPERSEDED`, say), if one
    /// is waiting to be read.
    pub fn refusal_received(&mut self) -> Option<ClientError> {
        match self.receive("send batch") {
            Err(refusal @ (ClientError::Refused { .. } | ClientError::Superseded { .. })) => {
                Some(refusal)
            }
            _ => None,
        }
    }

    /// `FIN` → `FIN_ACK` (idempotent on the server).
    pub fn finish(&mut self) -> Result<(), ClientError> {
        let id = self.agency;
        self.send("fin", &Message::Fin)?;
        match self.receive("fin")? {
            Message::FinAck { finished, agencies } => {
                log::info!(
                    "action: fin | result: success | client_id: {id} | finished: {finished} | agencies: {agencies}"
                );
                Ok(())
            }
            other => Err(unexpected("fin", &other)),
        }
    }

    /// `WINNERS_QUERY` → the agency's winners (after [`Session::finish`]). Until the
    /// draw the server answers `DRAW_PENDING` every few seconds: each is logged as
    /// `waiting_draw` (at most every [`WAITING_LOG_EVERY`]) and proves the server
    /// alive, so the wait fails with [`ClientError::Silent`] (retryable) when no frame
    /// at all arrives for [`draw_wait_timeout`]. SIGTERM ends the wait too.
    ///
    /// The answer is checked as it arrives ([`check_winners`]), so a hostile server
    /// cannot make the client hold more than `most` winners (the bets the agency can
    /// have stored, at most [`super::MAX_WINNERS`]): every document must be a DNI and
    /// every chunk before the last must hold at least one, so the answer is at most
    /// `most + 1` frames and `8 × most` bytes of documents. From its first `WINNERS`
    /// chunk the whole answer must arrive within `server.io_timeout`
    /// ([`ClientError::SlowAnswer`] otherwise).
    pub fn winners(&mut self, most: u64) -> Result<Vec<String>, ClientError> {
        const STAGE: &str = "winners query";
        let id = self.agency;
        self.send(STAGE, &Message::WinnersQuery)?;
        let silence = draw_wait_timeout(self.io_timeout);
        let limit = self.io_timeout;
        let mut winners: Vec<String> = Vec::new();
        // When the answer's first WINNERS chunk arrived.
        let mut answering: Option<Instant> = None;
        let mut logged: Option<Instant> = None;
        loop {
            let wait = match answering {
                None => silence,
                Some(first) => {
                    let left = limit.saturating_sub(first.elapsed());
                    if left.is_zero() {
                        return Err(ClientError::SlowAnswer {
                            stage: STAGE,
                            limit,
                        });
                    }
                    left
                }
            };
            // The connection's deadline counts per frame: once the answer has begun,
            // the time left of the whole answer bounds every frame of it.
            self.conn
                .set_timeouts(Some(wait))
                .map_err(|source| ClientError::Connection {
                    stage: STAGE,
                    source: ConnectionError::Write(source),
                })?;
            let reply = match self.receive(STAGE) {
                Err(ClientError::Connection { source, .. }) if source.is_timeout() => {
                    return Err(match answering {
                        None => ClientError::Silent {
                            stage: "waiting for the draw",
                            after: silence,
                        },
                        Some(_) => ClientError::SlowAnswer {
                            stage: STAGE,
                            limit,
                        },
                    });
                }
                other => other?,
            };
            match reply {
                Message::Winners { last, documents } => {
                    answering.get_or_insert_with(Instant::now);
                    check_winners(winners.len(), &documents, last, most)?;
                    winners.extend(documents);
                    if last {
                        return Ok(winners);
                    }
                }
                Message::DrawPending { finished, agencies } if answering.is_none() => {
                    if logged.is_none_or(|at| at.elapsed() >= WAITING_LOG_EVERY) {
                        logged = Some(Instant::now());
                        log::info!(
                            "action: waiting_draw | result: in_progress | client_id: {id} | finished: {finished} | agencies: {agencies}"
                        );
                    }
                }
                other => return Err(unexpected(STAGE, &other)),
            }
        }
    }

    /// `STATUS_QUERY` → the lottery's progress (no `HELLO` needed). A server that
    /// does not know the query (`UNKNOWN_KIND`, or an older protocol version) gives
    /// [`ClientError::StatusUnsupported`].
    ///
    /// The answer is checked as it arrives, so a hostile or broken server cannot make
    /// the client store more than one valid answer: at most [`MAX_AGENCIES`] agencies,
    /// every chunk repeating the first one's totals, every chunk but the final one
    /// carrying exactly [`STATUS_ENTRIES_PER_CHUNK`] entries, and the entries listing
    /// `1..=agencies` exactly once in order (protocol rule 9). The whole answer must
    /// arrive within `server.io_timeout` ([`ClientError::SlowAnswer`] otherwise), and
    /// its `finished` must count the finished entries, winners given iff drawn.
    pub fn status(&mut self) -> Result<StatusSnapshot, ClientError> {
        const STAGE: &str = "status query";
        let unsupported = |detail: String| ClientError::StatusUnsupported { detail };
        let bad = |got: String| ClientError::Unexpected { stage: STAGE, got };
        self.send(STAGE, &Message::StatusQuery)?;
        let limit = self.io_timeout;
        let started = Instant::now();
        let mut answer = StatusAssembler::default();
        loop {
            let left = limit.saturating_sub(started.elapsed());
            let slow = ClientError::SlowAnswer {
                stage: STAGE,
                limit,
            };
            if left.is_zero() {
                return Err(slow);
            }
            // The connection's deadline counts per frame from the start of each read:
            // the time left of the whole answer bounds every frame of it.
            self.conn
                .set_timeouts(Some(left))
                .map_err(|source| ClientError::Connection {
                    stage: STAGE,
                    source: ConnectionError::Write(source),
                })?;
            let chunk = match self.receive(STAGE) {
                Ok(Message::Status(chunk)) => chunk,
                Ok(other) => return Err(unexpected(STAGE, &other)),
                Err(ClientError::Refused {
                    code: ErrorCode::UnknownKind,
                    reason,
                    ..
                }) => return Err(unsupported(format!("it answered UNKNOWN_KIND ({reason})"))),
                Err(ClientError::Connection {
                    source: ConnectionError::Frame(FrameError::UnsupportedVersion(version)),
                    ..
                }) => {
                    return Err(unsupported(format!("it speaks protocol version {version}")));
                }
                Err(ClientError::Connection { source, .. }) if source.is_timeout() => {
                    return Err(slow);
                }
                Err(e) => return Err(e),
            };
            // This client's own bound, before anything of the chunk is kept.
            if chunk.agencies > MAX_AGENCIES {
                return Err(bad(format!(
                    "a STATUS answer for {} agencies (at most {MAX_AGENCIES})",
                    chunk.agencies
                )));
            }
            if let Some(snapshot) = answer.push(chunk).map_err(|e| bad(e.0))? {
                return Ok(snapshot);
            }
        }
    }

    /// Sends `text` as an echo request and checks that the reply repeats it.
    pub fn echo(&mut self, text: &str) -> Result<(), ClientError> {
        let request = Message::Echo(text.as_bytes().to_vec());
        self.send("echo", &request)?;
        let reply = self.receive("echo")?;
        if reply == request {
            Ok(())
        } else {
            Err(unexpected("echo", &reply))
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.close();
    }
}

/// Checks one `WINNERS` chunk of `documents` (`last`: the final one) before it is
/// kept, after `kept` winners of the same answer: at most `most` winners in all,
/// every document a DNI as a bet's must be ([`bet::is_document`]), and no empty chunk
/// before the last (the server fills every chunk it can; an empty one would only
/// keep the client reading). Fails with [`ClientError::BadWinners`] naming what the
/// server sent.
pub fn check_winners(
    kept: usize,
    documents: &[String],
    last: bool,
    most: u64,
) -> Result<(), ClientError> {
    let kept = u64::try_from(kept).unwrap_or(u64::MAX);
    let bad = |problem: String| ClientError::BadWinners { kept, problem };
    let total = kept.saturating_add(u64::try_from(documents.len()).unwrap_or(u64::MAX));
    if total > most {
        let why = if most >= super::MAX_WINNERS {
            format!("the client's limit of {} (MAX_WINNERS)", super::MAX_WINNERS)
        } else {
            format!("the {most} bets the agency has stored")
        };
        return Err(bad(format!(
            "a WINNERS chunk of {} documents makes {total} winners, more than {why}",
            documents.len()
        )));
    }
    if let Some(doc) = documents.iter().find(|d| !bet::is_document(d)) {
        return Err(bad(format!(
            "document \"{}\" is not a DNI (1 to {} digits)",
            excerpt(doc.as_bytes()),
            bet::MAX_DOCUMENT_DIGITS
        )));
    }
    if documents.is_empty() && !last {
        return Err(bad("an empty WINNERS chunk before the last".to_string()));
    }
    Ok(())
}

/// One connection attempt to each address `address` resolves to, `timeout` each.
fn try_connect(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolved to nothing");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1))) {
            Ok(stream) => {
                crate::connection::tune(&stream)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AgencyStatus, STATUS_ENTRIES_PER_CHUNK, StatusChunk};
    use std::net::TcpListener;

    /// A server for one connection that answers the first frame with `replies`, each
    /// after `pause`, then holds the connection until the client closes it.
    fn answering(replies: Vec<Message>, pause: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let Ok(mut conn) = Connection::new(stream) else {
                return;
            };
            if let Ok(Some(Message::StatusQuery)) = conn.read_message() {
                for reply in &replies {
                    std::thread::sleep(pause);
                    if conn.write_message(reply).is_err() {
                        return;
                    }
                }
            }
            let _ = conn.read_message();
        });
        address
    }

    fn query_with(
        replies: Vec<Message>,
        pause: Duration,
        io_timeout: Duration,
    ) -> Result<StatusSnapshot, ClientError> {
        let address = answering(replies, pause);
        let shutdown = Shutdown::new();
        let mut session = Session::connect(
            &address,
            1,
            Duration::from_secs(2),
            io_timeout,
            &shutdown,
            None,
        )?;
        session.status()
    }

    fn query(replies: Vec<Message>) -> Result<StatusSnapshot, ClientError> {
        query_with(replies, Duration::ZERO, Duration::from_secs(5))
    }

    fn entry(agency: AgencyId, drawn: bool) -> AgencyStatus {
        AgencyStatus {
            agency,
            connected: false,
            finished: agency.is_multiple_of(2),
            bets: u64::from(agency) * 10,
            winners: drawn.then_some(agency % 3),
        }
    }

    /// A consistent snapshot of `agencies` agencies (the even ones finished).
    fn snapshot(agencies: u32, drawn: bool) -> StatusSnapshot {
        StatusSnapshot {
            agencies,
            finished: agencies / 2,
            drawn,
            entries: (1..=agencies).map(|a| entry(a, drawn)).collect(),
        }
    }

    /// The answer a server sends for `snapshot`.
    fn answer(snapshot: &StatusSnapshot) -> Vec<Message> {
        snapshot.chunks().into_iter().map(Message::Status).collect()
    }

    fn chunk(last: bool, agencies: u32, ids: impl IntoIterator<Item = u32>) -> Message {
        let entries: Vec<AgencyStatus> = ids.into_iter().map(|a| entry(a, false)).collect();
        Message::Status(StatusChunk {
            last,
            agencies,
            finished: agencies / 2,
            drawn: false,
            entries,
        })
    }

    fn assert_refused(name: &str, result: Result<StatusSnapshot, ClientError>) -> String {
        match result {
            Err(e @ ClientError::Unexpected { .. }) => {
                assert!(!super::super::retry::is_retryable(&e), "{name}: {e}");
                let text = e.to_string();
                assert!(text.starts_with("status query: "), "{name}: {text}");
                text
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn a_status_answer_in_chunks_is_put_back_together() {
        for (agencies, drawn) in [(1000, false), (3, true), (480, false)] {
            let expected = snapshot(agencies, drawn);
            let got = query(answer(&expected)).expect("an answer");
            assert_eq!(got, expected);
        }
        let three = query(answer(&snapshot(3, false))).expect("an answer");
        assert_eq!(three.missing(), [1, 3]);
    }

    #[test]
    fn a_status_answer_that_makes_no_sense_is_refused() {
        let with = |change: &dyn Fn(&mut StatusSnapshot)| {
            let mut s = snapshot(3, false);
            change(&mut s);
            answer(&s)
        };
        let full = STATUS_ENTRIES_PER_CHUNK as u32;
        let cases: Vec<(&str, Vec<Message>, &str)> = vec![
            (
                "out of order",
                vec![chunk(true, 3, [2, 1, 3])],
                "agency 2 where agency 1 belongs",
            ),
            (
                "out of range",
                vec![chunk(true, 3, [1, 2, 4])],
                "agency 4 of 3 (out of range)",
            ),
            (
                "a repeated agency",
                vec![chunk(true, 3, [1, 2, 2])],
                "agency 2 where agency 3 belongs",
            ),
            (
                "too many entries",
                vec![chunk(true, 3, [1, 2, 3, 4])],
                "out of range",
            ),
            (
                "agencies left out at the end",
                vec![chunk(true, 5, [1])],
                "ends after agency 1 of 5 (agencies left out)",
            ),
            (
                "an agency left out in the middle",
                vec![chunk(true, 3, [1, 3])],
                "agency 3 where agency 2 belongs",
            ),
            (
                "totals disagree",
                vec![chunk(false, 481, 1..=full), chunk(true, 482, [481])],
                "disagree on the totals",
            ),
            (
                "a short chunk before the last",
                vec![chunk(false, 3, [1, 2]), chunk(true, 3, [3])],
                "before the last with 2 entries (not 480)",
            ),
            (
                "an empty chunk before the last",
                vec![chunk(false, 3, []), chunk(true, 3, [1, 2, 3])],
                "before the last with 0 entries",
            ),
            (
                "finished that does not count the finished entries",
                with(&|s| s.finished = 2),
                "finished: 2 but 1 agency entries finished",
            ),
            (
                "winners before the draw",
                with(&|s| s.entries[1].winners = Some(0)),
                "agency 2 with a winner count before the draw",
            ),
            (
                "no winners after the draw",
                with(&|s| {
                    s.drawn = true;
                    for e in &mut s.entries {
                        e.winners = Some(1);
                    }
                    s.entries[2].winners = None;
                }),
                "agency 3 with no winner count after the draw",
            ),
            ("another reply", vec![Message::Fin], "unexpected reply Fin"),
        ];
        for (name, replies, says) in cases {
            let text = assert_refused(name, query(replies));
            assert!(text.contains(says), "{name}: {text}");
        }
    }

    #[test]
    fn a_hostile_answer_is_refused_at_its_first_bad_chunk() {
        // Each answer goes on (the server holds the connection after a non-final
        // chunk): it must be refused at once, not after the reply timeout.
        let full = STATUS_ENTRIES_PER_CHUNK as u32;
        for (name, first, says) in [
            (
                "more agencies than a lottery may have",
                chunk(false, u32::MAX, 1..=full),
                "a STATUS answer for 4294967295 agencies (at most 1000000)",
            ),
            (
                "the same agency over and over",
                chunk(false, MAX_AGENCIES, std::iter::repeat_n(1, full as usize)),
                "agency 1 where agency 2 belongs",
            ),
        ] {
            let started = Instant::now();
            let text = assert_refused(name, query(vec![first]));
            assert!(text.contains(says), "{name}: {text}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{name}: {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn a_trickled_answer_is_bounded_by_one_deadline_for_the_whole_answer() {
        // Valid chunks for a million agencies, one every 250 ms (each well within the
        // 1 s reply timeout), 24 of them and then nothing: the whole answer may take
        // 1 s, so the query fails after 1 s, not after 7 s.
        let full = STATUS_ENTRIES_PER_CHUNK as u32;
        let replies = (0..24)
            .map(|k| chunk(false, MAX_AGENCIES, k * full + 1..=(k + 1) * full))
            .collect();
        let started = Instant::now();
        let result = query_with(replies, Duration::from_millis(250), Duration::from_secs(1));
        let elapsed = started.elapsed();
        match result {
            Err(e @ ClientError::SlowAnswer { .. }) => {
                assert!(super::super::retry::is_retryable(&e));
                assert_eq!(
                    e.to_string(),
                    "status query: the whole answer did not arrive within 1s \
                     (server.io_timeout)"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(2500),
            "{elapsed:?}"
        );
    }

    #[test]
    fn a_server_without_status_queries_is_named_as_such() {
        let refused = query(vec![Message::Error {
            code: ErrorCode::UnknownKind,
            reason: "unknown message kind 0x06".into(),
        }]);
        match refused {
            Err(e @ ClientError::StatusUnsupported { .. }) => {
                assert!(!super::super::retry::is_retryable(&e));
                assert_eq!(
                    e.to_string(),
                    "the server does not answer status queries (it answered UNKNOWN_KIND \
                     (unknown message kind 0x06)): it is older than protocol version 3; \
                     upgrade the server to use status mode"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_wait_for_the_draw_tolerates_at_least_two_pending_intervals() {
        assert_eq!(
            draw_wait_timeout(Duration::from_secs(1)),
            PENDING_INTERVAL * 2
        );
        assert_eq!(
            draw_wait_timeout(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
