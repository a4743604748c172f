//! One session: a TCP connection to the server and the requests sent on it.

use std::io;
use std::net::{Shutdown as Both, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{ClientError, unexpected};
use crate::bet::{AgencyId, Bet};
use crate::connection::{Connection, ConnectionError};
use crate::protocol::{
    AgencyStatus, ErrorCode, FrameError, Message, PENDING_INTERVAL, StatusChunk, StatusSnapshot,
};
use crate::shutdown::{HookGuard, Shutdown};

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

/// A connection to the server; closed when dropped.
pub struct Session {
    conn: Connection,
    agency: AgencyId,
    io_timeout: Duration,
    _close_on_shutdown: HookGuard,
}

impl Session {
    /// Makes one connection attempt (each resolved address gets `timeout`) and sets
    /// the reply timeout `io_timeout`.
    pub fn connect(
        address: &str,
        agency: AgencyId,
        timeout: Duration,
        io_timeout: Duration,
        shutdown: &Shutdown,
    ) -> Result<Session, ClientError> {
        let connect_error = |source: io::Error| ClientError::Connect {
            address: address.to_string(),
            source,
        };
        let stream = try_connect(address, timeout).map_err(connect_error)?;
        let mut conn = Connection::new(stream).map_err(connect_error)?;
        conn.set_timeouts(Some(io_timeout)).map_err(connect_error)?;
        let closer = conn.shared_stream();
        let hook = shutdown.on_trigger(move || {
            // Unblocks any read or write in progress; errors mean it is closed already.
            let _ = closer.shutdown(Both::Both);
        });
        log::info!(
            "action: connect | result: success | client_id: {agency} | server_address: {address}"
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
    pub fn send_batch(&mut self, seq: u64, line: u64, bets: Vec<Bet>) -> Result<u64, ClientError> {
        let count = bets.len();
        self.send("send batch", &Message::Bets { seq, line, bets })?;
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
    pub fn winners(&mut self) -> Result<Vec<String>, ClientError> {
        let id = self.agency;
        self.send("winners query", &Message::WinnersQuery)?;
        let silence = draw_wait_timeout(self.io_timeout);
        self.conn
            .set_timeouts(Some(silence))
            .map_err(|source| ClientError::Connection {
                stage: "winners query",
                source: ConnectionError::Write(source),
            })?;
        let mut winners = Vec::new();
        let mut logged: Option<Instant> = None;
        loop {
            let reply = match self.receive("winners query") {
                Err(ClientError::Connection { source, .. }) if source.is_timeout() => {
                    return Err(ClientError::Silent {
                        stage: "waiting for the draw",
                        after: silence,
                    });
                }
                other => other?,
            };
            match reply {
                Message::Winners { last, documents } => {
                    winners.extend(documents);
                    if last {
                        return Ok(winners);
                    }
                }
                Message::DrawPending { finished, agencies } if winners.is_empty() => {
                    if logged.is_none_or(|at| at.elapsed() >= WAITING_LOG_EVERY) {
                        logged = Some(Instant::now());
                        log::info!(
                            "action: waiting_draw | result: in_progress | client_id: {id} | finished: {finished} | agencies: {agencies}"
                        );
                    }
                }
                other => return Err(unexpected("winners query", &other)),
            }
        }
    }

    /// `STATUS_QUERY` → the lottery's progress (no `HELLO` needed). A server that
    /// does not know the query (`UNKNOWN_KIND`, or an older protocol version) gives
    /// [`ClientError::StatusUnsupported`].
    pub fn status(&mut self) -> Result<StatusSnapshot, ClientError> {
        const STAGE: &str = "status query";
        let unsupported = |detail: String| ClientError::StatusUnsupported { detail };
        self.send(STAGE, &Message::StatusQuery)?;
        let mut chunks: Vec<StatusChunk> = Vec::new();
        let mut entries = 0usize;
        loop {
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
                Err(e) => return Err(e),
            };
            let bad = |got: String| ClientError::Unexpected { stage: STAGE, got };
            // Every chunk of one answer repeats the same totals, and only the final one
            // may be empty: so the answer ends within `agencies` entries.
            if let Some(first) = chunks.first()
                && (first.agencies, first.finished, first.drawn)
                    != (chunk.agencies, chunk.finished, chunk.drawn)
            {
                return Err(bad("STATUS chunks that disagree on the totals".into()));
            }
            if chunk.entries.is_empty() && !chunk.last {
                return Err(bad("an empty STATUS chunk that is not the last".into()));
            }
            entries = entries.saturating_add(chunk.entries.len());
            // An answer lists each agency once: more entries than agencies is not one.
            if u64::try_from(entries).unwrap_or(u64::MAX) > u64::from(chunk.agencies) {
                return Err(bad(format!("more than {} agency entries", chunk.agencies)));
            }
            let last = chunk.last;
            chunks.push(chunk);
            if last {
                break;
            }
        }
        let snapshot = StatusSnapshot::from_chunks(&chunks).ok_or(ClientError::Unexpected {
            stage: STAGE,
            got: "STATUS chunks that do not make one answer".into(),
        })?;
        if !in_order(&snapshot.entries, snapshot.agencies) {
            return Err(ClientError::Unexpected {
                stage: STAGE,
                got: "agency entries out of order or out of range".into(),
            });
        }
        Ok(snapshot)
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

/// Whether `entries` have strictly increasing agency ids within `1..=agencies`.
fn in_order(entries: &[AgencyStatus], agencies: u32) -> bool {
    let mut previous = 0;
    entries.iter().all(|e| {
        let ok = e.agency > previous && e.agency <= agencies;
        previous = e.agency;
        ok
    })
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
    use std::net::TcpListener;

    /// A server for one connection that answers the first frame with `replies`.
    fn answering(replies: Vec<Message>) -> String {
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
                    if conn.write_message(reply).is_err() {
                        return;
                    }
                }
            }
            // Hold the connection until the client is done with it.
            let _ = conn.read_message();
        });
        address
    }

    fn query(replies: Vec<Message>) -> Result<StatusSnapshot, ClientError> {
        let address = answering(replies);
        let shutdown = Shutdown::new();
        let mut session = Session::connect(
            &address,
            1,
            Duration::from_secs(2),
            Duration::from_secs(5),
            &shutdown,
        )?;
        session.status()
    }

    fn entry(agency: AgencyId) -> AgencyStatus {
        AgencyStatus {
            agency,
            connected: false,
            finished: agency.is_multiple_of(2),
            bets: u64::from(agency) * 10,
            winners: None,
        }
    }

    fn chunk(last: bool, agencies: u32, entries: Vec<AgencyStatus>) -> Message {
        Message::Status(StatusChunk {
            last,
            agencies,
            finished: 1,
            drawn: false,
            entries,
        })
    }

    #[test]
    fn a_status_answer_in_chunks_is_put_back_together() {
        let snapshot = query(vec![
            chunk(false, 3, vec![entry(1), entry(2)]),
            chunk(true, 3, vec![entry(3)]),
        ])
        .expect("an answer");
        assert_eq!(snapshot.agencies, 3);
        assert_eq!(snapshot.entries, [entry(1), entry(2), entry(3)]);
        assert_eq!(snapshot.missing(), [1, 3]);
    }

    #[test]
    fn a_status_answer_that_makes_no_sense_is_refused() {
        for (name, replies) in [
            (
                "out of order",
                vec![chunk(true, 3, vec![entry(2), entry(1)])],
            ),
            ("out of range", vec![chunk(true, 3, vec![entry(4)])]),
            (
                "too many entries",
                vec![
                    chunk(false, 2, vec![entry(1), entry(2)]),
                    chunk(true, 2, vec![entry(3)]),
                ],
            ),
            (
                "totals disagree",
                vec![
                    chunk(false, 3, vec![entry(1)]),
                    chunk(true, 4, vec![entry(2)]),
                ],
            ),
            (
                "an empty chunk before the last",
                vec![chunk(false, 3, vec![]), chunk(true, 3, vec![entry(1)])],
            ),
            ("another reply", vec![Message::Fin]),
        ] {
            match query(replies) {
                Err(e @ ClientError::Unexpected { .. }) => {
                    assert!(!super::super::retry::is_retryable(&e), "{name}: {e}");
                    assert!(e.to_string().starts_with("status query: "), "{name}: {e}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
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
