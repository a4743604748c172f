//! One session: a TCP connection to the server and the requests sent on it.

use std::io;
use std::net::{Shutdown as Both, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{ClientError, unexpected};
use crate::bet::{AgencyId, Bet};
use crate::connection::{Connection, ConnectionError};
use crate::protocol::{ErrorCode, Message};
use crate::shutdown::{HookGuard, Shutdown};

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

    /// `WINNERS_QUERY` → the agency's winners (after [`Session::finish`]). The wait
    /// for the draw has no timeout (TCP keepalive notices a vanished server; SIGTERM
    /// ends it too).
    pub fn winners(&mut self) -> Result<Vec<String>, ClientError> {
        self.send("winners query", &Message::WinnersQuery)?;
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
                        return Ok(winners);
                    }
                }
                other => return Err(unexpected("winners query", &other)),
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
