//! [`Connection`]: one TCP stream that speaks the protocol, frame by frame.
//!
//! It owns the [`TcpStream`] (shared through an [`Arc`], so that the server can keep a
//! handle for shutdown without another file descriptor), buffers reads, and writes
//! each frame with one `write_all`. End of stream between frames is `Ok(None)`; inside
//! a frame it is an error ([`FrameError::Truncated`]).
//!
//! The read timeout is a deadline for a *whole frame*: a peer that trickles a frame
//! in one byte at a time cannot keep a connection (and its thread) forever.
//!
//! The same connection can also carry plain text (see `docs/PROTOCOL.md`, "Plain-text
//! echo"): [`Connection::peek_byte`] looks at the first byte without consuming it,
//! [`starts_plain_text`] tells a line of text from a frame, and
//! [`Connection::read_line`] / [`Connection::write_bytes`] move bounded lines, under the
//! same deadline (a whole line must arrive within the timeout).

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown as Both, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};

use crate::protocol::{self, DecodeError, EncodeError, Frame, FrameError, Message};

/// The longest line of plain text served, in bytes, not counting its `\n`.
pub const MAX_TEXT_LINE: usize = 1024;

/// Whether a connection whose first byte is `first` speaks plain text rather than
/// frames: printable ASCII (`0x20..=0x7E`), a tab, CR or LF, or the first byte of a
/// multi-byte UTF-8 character (`0xC2..=0xF4`: `echo "¡hola!"`, `ñandú`). Every frame
/// starts with [`protocol::VERSION`] (a control byte), and a TLS ClientHello with
/// `0x16`: neither is text, so this never takes a frame (or a handshake) for text.
pub fn starts_plain_text(first: u8) -> bool {
    first != protocol::VERSION
        && (matches!(first, 0x20..=0x7e | 0xc2..=0xf4) || matches!(first, b'\t' | b'\r' | b'\n'))
}

/// One line of plain text, as [`Connection::read_line`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextLine {
    /// The bytes of a line, up to and including its `\n`.
    Complete(Vec<u8>),
    /// The last bytes of the stream, which ended before a `\n`.
    Unterminated(Vec<u8>),
    /// More than the limit came before a `\n` (nothing of it is returned).
    TooLong,
    /// The stream ended at a line boundary.
    End,
}

/// A protocol connection over TCP, in the clear or inside TLS.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<Wire>,
    stream: Arc<TcpStream>,
    frame_timeout: Option<Duration>,
    out: Vec<u8>,
}

/// The bytes under the frames: the shared stream, and the TLS session when there is
/// one. Reads fail with `TimedOut` once `deadline` has passed; writes go through
/// [`Wire::write_all`].
struct Wire {
    stream: Arc<TcpStream>,
    deadline: Option<Instant>,
    tls: Option<Box<rustls::Connection>>,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire")
            .field("stream", &self.stream)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The socket with a deadline on every read and write (what rustls reads TLS records
/// from and writes them to).
struct Timed<'a> {
    stream: &'a TcpStream,
    deadline: Option<Instant>,
}

impl Timed<'_> {
    /// The time left before the deadline (`None`: no deadline), or `TimedOut`.
    fn left(&self) -> io::Result<Option<Duration>> {
        match self.deadline {
            None => Ok(None),
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed")),
            },
        }
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Always set: another handle may have left a short timeout (a probe).
        self.stream.set_read_timeout(self.left()?)?;
        self.stream.read(buf).map_err(timed_out)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.deadline.is_some() {
            self.stream.set_write_timeout(self.left()?)?;
        }
        self.stream.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A socket timeout reads as `WouldBlock` on Unix: rustls would take it for a
/// non-blocking socket, so it is reported as what it is.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, e)
    } else {
        e
    }
}

/// A TLS failure (bad record, refused certificate, alert from the peer) as an
/// `io::Error` of kind `InvalidData` that carries the rustls error; see
/// [`tls_failure`].
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The TLS failure inside `e`, if it is one ([`ConnectionError::tls_failure`]).
pub fn tls_failure(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

impl Wire {
    fn timed(&self) -> Timed<'_> {
        Timed {
            stream: &self.stream,
            deadline: self.deadline,
        }
    }

    /// Writes the TLS records rustls has queued.
    fn flush_tls(tls: &mut rustls::Connection, io: &mut Timed<'_>) -> io::Result<()> {
        while tls.wants_write() {
            if tls.write_tls(io)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Writes all of `buf` (encrypted when in TLS) before `deadline` if one is given,
    /// else under the stream's write timeout.
    fn write_all(&mut self, mut buf: &[u8], deadline: Option<Instant>) -> io::Result<()> {
        let mut io = Timed {
            stream: &self.stream,
            deadline,
        };
        let Some(tls) = self.tls.as_deref_mut() else {
            return write_plain(&mut io, buf);
        };
        while !buf.is_empty() {
            // rustls buffers a bounded amount: write records out until it takes more.
            let taken = tls.writer().write(buf)?;
            buf = &buf[taken..];
            if taken == 0 && !tls.wants_write() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            Wire::flush_tls(tls, &mut io)?;
        }
        Wire::flush_tls(tls, &mut io)
    }

    /// Reads decrypted bytes: from what rustls holds, else one more read of TLS
    /// records from the socket. A peer that ends the TCP stream without TLS'
    /// `close_notify` ends the stream all the same (our frames carry their own lengths,
    /// so a frame cut short is still an error).
    fn read_tls(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut io = Timed {
            stream: &self.stream,
            deadline: self.deadline,
        };
        let Some(tls) = self.tls.as_deref_mut() else {
            return io.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let read = tls.read_tls(&mut io)?;
            if let Err(e) = tls.process_new_packets() {
                // Tell the peer why (best effort), then fail.
                let _ = Wire::flush_tls(tls, &mut io);
                return Err(tls_error(e));
            }
            // A key update or an alert may want an answer.
            Wire::flush_tls(tls, &mut io)?;
            if read == 0 {
                // End of stream: the reader now says whether it was clean.
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Runs the TLS handshake on `tls` before `deadline`, then keeps it. `Ok(false)`:
    /// a client whose server answered the ClientHello with a frame in the clear (its
    /// first byte is our version, never a TLS record's); nothing of it is read yet.
    fn handshake(&mut self, mut tls: rustls::Connection, deadline: Instant) -> io::Result<bool> {
        let mut io = Timed {
            stream: &self.stream,
            deadline: Some(deadline),
        };
        if matches!(tls, rustls::Connection::Client(_)) {
            // A server refuses a connection it will not serve (`SERVER_BUSY`) in the
            // clear, before it reads anything: that is an answer, not a bad record.
            Wire::flush_tls(&mut tls, &mut io)?;
            if peek_before(&self.stream, Some(deadline))? == Some(protocol::VERSION) {
                return Ok(false);
            }
        }
        while tls.is_handshaking() {
            // On a failure complete_io has already sent the alert, if any.
            tls.complete_io(&mut io)?;
        }
        Wire::flush_tls(&mut tls, &mut io)?;
        self.tls = Some(Box::new(tls));
        Ok(true)
    }
}

/// `write_all` on `io`, retrying interrupted writes.
fn write_plain(io: &mut Timed<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match io.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `write_all` of plain bytes on `stream` that fails with `TimedOut` once `deadline`
/// has passed, however the peer paces its reads (the status page's answers).
pub(crate) fn write_all_before(
    stream: &TcpStream,
    buf: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    write_plain(
        &mut Timed {
            stream,
            deadline: Some(deadline),
        },
        buf,
    )
}

/// The next byte on `stream`, not consumed, waiting until `deadline` at most;
/// `Ok(None)` if the stream ends first.
fn peek_before(stream: &TcpStream, deadline: Option<Instant>) -> io::Result<Option<u8>> {
    let io = Timed { stream, deadline };
    let mut byte = [0u8; 1];
    loop {
        stream.set_read_timeout(io.left()?)?;
        match stream.peek(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
}

/// Whether a byte is waiting on `stream` now (a peek that does not wait). The stream
/// is put back into blocking mode before returning; any failure reads as "no".
fn peek_now(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let ready = loop {
        match stream.peek(&mut byte) {
            Ok(n) => break n > 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    // Blocking again, or every later read would fail with WouldBlock: if this fails
    // the next read reports the socket's error (it is broken).
    let _ = stream.set_nonblocking(false);
    ready
}

/// What a server answered a TLS client's handshake with in the clear: a frame of our
/// protocol instead of TLS records (an `ERROR`: `SERVER_BUSY` from a server that
/// refuses the connection before reading it, `UNSUPPORTED_VERSION` from a server
/// without TLS). Carried inside [`ConnectionError::Handshake`]; see
/// [`ConnectionError::clear_answer`].
#[derive(Debug)]
pub struct ClearAnswer(pub Message);

impl fmt::Display for ClearAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Message::Error { code, reason } => write!(
                f,
                "the server answered in the clear, without TLS: {code}: {reason}"
            ),
            other => write!(
                f,
                "the server answered in the clear, without TLS, with a frame of kind 0x{:02x}",
                other.kind()
            ),
        }
    }
}

impl std::error::Error for ClearAnswer {}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let _ = self.timed().left()?;
        self.read_tls(buf)
    }
}

/// TCP options every protocol connection uses: no Nagle delay for the small
/// request/reply frames, and keepalive probes so that a peer that vanished without
/// closing (a crashed host, a cut cable) is noticed within about a minute even while
/// one side only waits (an agency waiting for the draw).
pub fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// A connection-level failure.
#[derive(Debug)]
pub enum ConnectionError {
    /// The byte stream broke (I/O error, truncated frame, bad header, timeout).
    Frame(FrameError),
    /// A frame arrived whose payload makes no sense.
    Decode(DecodeError),
    /// A message could not be encoded (a bug or an oversized field).
    Encode(EncodeError),
    /// Writing failed.
    Write(io::Error),
    /// The TLS handshake failed (a refused or unknown certificate, a peer that does
    /// not speak TLS, a timeout).
    Handshake(io::Error),
}

impl ConnectionError {
    /// Whether the failure is a read or write timeout.
    pub fn is_timeout(&self) -> bool {
        match self {
            ConnectionError::Frame(e) => e.is_timeout(),
            ConnectionError::Write(e) | ConnectionError::Handshake(e) => {
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                )
            }
            _ => false,
        }
    }

    /// The frame a server answered this client's TLS handshake with in the clear,
    /// if that is why the handshake failed ([`ClearAnswer`]).
    pub fn clear_answer(&self) -> Option<&Message> {
        match self {
            ConnectionError::Handshake(e) => e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<ClearAnswer>())
                .map(|answer| &answer.0),
            _ => None,
        }
    }

    /// The TLS failure behind this error, if it is one: a certificate the peer
    /// refused or that could not be verified, a bad record, an alert.
    pub fn tls_failure(&self) -> Option<&rustls::Error> {
        match self {
            ConnectionError::Frame(FrameError::Io(e))
            | ConnectionError::Write(e)
            | ConnectionError::Handshake(e) => tls_failure(e),
            _ => None,
        }
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::Frame(e) => write!(f, "{e}"),
            ConnectionError::Decode(e) => write!(f, "{e}"),
            ConnectionError::Encode(e) => write!(f, "{e}"),
            ConnectionError::Write(e) => write!(f, "write failed: {e}"),
            ConnectionError::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectionError::Frame(e) => Some(e),
            ConnectionError::Decode(e) => Some(e),
            ConnectionError::Encode(e) => Some(e),
            ConnectionError::Write(e) | ConnectionError::Handshake(e) => Some(e),
        }
    }
}

impl From<FrameError> for ConnectionError {
    fn from(e: FrameError) -> Self {
        ConnectionError::Frame(e)
    }
}

impl Connection {
    /// Wraps a connected stream (no timeouts until [`Connection::set_timeouts`]).
    pub fn new(stream: TcpStream) -> io::Result<Connection> {
        let stream = Arc::new(stream);
        Ok(Connection {
            reader: BufReader::with_capacity(
                READ_BUFFER,
                Wire {
                    stream: Arc::clone(&stream),
                    deadline: None,
                    tls: None,
                },
            ),
            stream,
            frame_timeout: None,
            out: Vec::with_capacity(protocol::MAX_FRAME_LEN),
        })
    }

    /// The underlying stream (to set options or write raw bytes).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Another handle to the same stream (same socket, no new file descriptor).
    pub fn shared_stream(&self) -> Arc<TcpStream> {
        Arc::clone(&self.stream)
    }

    /// Sets the time allowed to receive each whole frame (counted from the start of
    /// [`Connection::read_frame`]) and the write timeout; `None` waits forever.
    pub fn set_timeouts(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.frame_timeout = timeout;
        self.stream.set_write_timeout(timeout)
    }

    /// Reads the next raw frame; `Ok(None)` at a clean end of stream.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.reader.get_mut().deadline = self.frame_timeout.map(|t| Instant::now() + t);
        protocol::read_frame(&mut self.reader)
    }

    /// The next byte the peer sends, without consuming it (it stays buffered for the
    /// next read); `Ok(None)` if the stream ends first. Waits at most the timeout.
    pub fn peek_byte(&mut self) -> Result<Option<u8>, FrameError> {
        self.reader.get_mut().deadline = self.frame_timeout.map(|t| Instant::now() + t);
        loop {
            match self.reader.fill_buf() {
                Ok(buf) => return Ok(buf.first().copied()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }

    /// Whether bytes of another frame are here already — read and buffered, or
    /// waiting on the socket — looked at without waiting. A server reading ahead of
    /// its answers (pipelining) answers what it holds once this is `false`: a peer
    /// sends whole frames before it waits for answers, so bytes that are here mean
    /// the rest of their frame is on its way.
    pub fn has_input_ready(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        peek_now(&self.stream)
    }

    /// Whether the peer has ended the stream — a TCP close, TLS' `close_notify`, or a
    /// broken connection — looking for at most `wait`. Bytes the peer sent meanwhile
    /// stay buffered for the next read (for a connection that is not otherwise
    /// reading: an agency waiting for the draw).
    pub fn peer_has_closed(&mut self, wait: Duration) -> bool {
        self.reader.get_mut().deadline = Some(Instant::now() + wait);
        loop {
            match self.reader.fill_buf() {
                Ok(buf) => return buf.is_empty(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    );
                }
            }
        }
    }

    /// Reads one line of plain text (see [`TextLine`]); more than `max` bytes before
    /// the `\n` is [`TextLine::TooLong`]. The whole line must arrive within the
    /// timeout, or the error is a timeout ([`FrameError::is_timeout`]).
    pub fn read_line(&mut self, max: usize) -> Result<TextLine, FrameError> {
        self.reader.get_mut().deadline = self.frame_timeout.map(|t| Instant::now() + t);
        let mut line = Vec::new();
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FrameError::Io(e)),
            };
            if buf.is_empty() {
                return Ok(if line.is_empty() {
                    TextLine::End
                } else {
                    TextLine::Unterminated(line)
                });
            }
            let (taken, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(at) => (at + 1, true),
                None => (buf.len(), false),
            };
            let content = line.len() + taken - usize::from(complete);
            if content > max {
                return Ok(TextLine::TooLong);
            }
            line.extend_from_slice(&buf[..taken]);
            self.reader.consume(taken);
            if complete {
                return Ok(TextLine::Complete(line));
            }
        }
    }

    /// Writes raw bytes (a line of plain text) in one `write_all`.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.reader
            .get_mut()
            .write_all(bytes, None)
            .map_err(ConnectionError::Write)
    }

    /// Reads and decodes the next message; `Ok(None)` at a clean end of stream.
    pub fn read_message(&mut self) -> Result<Option<Message>, ConnectionError> {
        match self.read_frame()? {
            None => Ok(None),
            Some(frame) => frame.decode().map(Some).map_err(ConnectionError::Decode),
        }
    }

    /// Encodes `message` and writes the whole frame.
    pub fn write_message(&mut self, message: &Message) -> Result<(), ConnectionError> {
        self.write_encoded(|out| message.encode_into(out))
    }

    /// Writes the frame(s) `encode` appends to the connection's own buffer, in one
    /// `write_all` (a sender that encodes from borrowed data, e.g.
    /// [`protocol::encode_bets_into`]).
    pub fn write_encoded(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
    ) -> Result<(), ConnectionError> {
        self.out.clear();
        encode(&mut self.out).map_err(ConnectionError::Encode)?;
        self.reader
            .get_mut()
            .write_all(&self.out, None)
            .map_err(ConnectionError::Write)
    }

    /// Encodes `messages` and writes them all in one `write_all` (under the write
    /// timeout).
    pub fn write_messages(&mut self, messages: &[Message]) -> Result<(), ConnectionError> {
        self.write_encoded(|out| messages.iter().try_for_each(|m| m.encode_into(out)))
    }

    /// Encodes `messages` and writes them one after the other, all of them before
    /// `deadline` however slowly the peer reads (a peer that reads nothing cannot hold
    /// the writer past it); the write timeout is restored afterwards. A failure may
    /// leave part of a frame written: close the connection then.
    pub fn write_messages_before(
        &mut self,
        messages: &[Message],
        deadline: Instant,
    ) -> Result<(), ConnectionError> {
        self.out.clear();
        for message in messages {
            message
                .encode_into(&mut self.out)
                .map_err(ConnectionError::Encode)?;
        }
        let written = self.reader.get_mut().write_all(&self.out, Some(deadline));
        let restored = self.stream.set_write_timeout(self.frame_timeout);
        written.and(restored).map_err(ConnectionError::Write)
    }

    /// Writes an already encoded frame (used to echo a frame back unchanged).
    pub fn write_frame(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        self.reader
            .get_mut()
            .write_all(&frame.to_bytes(), None)
            .map_err(ConnectionError::Write)
    }

    /// Ends the conversation: in TLS, a `close_notify` (best effort, within a short
    /// bound), then both directions of the stream are shut down; blocked reads on any
    /// handle return.
    pub fn close(&mut self) {
        let wire = self.reader.get_mut();
        if let Some(tls) = wire.tls.as_deref_mut() {
            tls.send_close_notify();
            let mut io = Timed {
                stream: &wire.stream,
                deadline: Some(Instant::now() + CLOSE_NOTIFY_LIMIT),
            };
            let _ = Wire::flush_tls(tls, &mut io);
        }
        // Already closed by the peer or by a shutdown hook: nothing left to do.
        let _ = self.stream.shutdown(Both::Both);
    }

    /// Whether the conversation runs inside TLS.
    pub fn is_tls(&self) -> bool {
        self.reader.get_ref().tls.is_some()
    }

    /// The peer's certificate (the end of its chain), which the handshake verified;
    /// `None` in the clear or when the peer presented none.
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.reader
            .get_ref()
            .tls
            .as_deref()
            .and_then(|tls| tls.peer_certificates())
            .and_then(|chain| chain.first())
    }

    /// The first byte the peer sends, read from the socket without consuming it and
    /// before anything is buffered (so that a TLS handshake can still start), waiting
    /// at most the timeout; `Ok(None)` if the stream ends first.
    pub fn peek_first_byte(&mut self) -> Result<Option<u8>, FrameError> {
        let deadline = self.frame_timeout.map(|t| Instant::now() + t);
        peek_before(&self.stream, deadline).map_err(FrameError::Io)
    }

    /// Server side: runs the TLS handshake (within the timeout) before anything else
    /// is read; every frame after it is inside TLS.
    pub fn accept_tls(&mut self, config: Arc<rustls::ServerConfig>) -> Result<(), ConnectionError> {
        let tls = rustls::ServerConnection::new(config)
            .map_err(|e| ConnectionError::Handshake(tls_error(e)))?;
        self.handshake(tls.into())
    }

    /// Client side: runs the TLS handshake with the server named `name` (its
    /// certificate must be valid for that name), within the timeout.
    pub fn connect_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<(), ConnectionError> {
        let tls = rustls::ClientConnection::new(config, name)
            .map_err(|e| ConnectionError::Handshake(tls_error(e)))?;
        self.handshake(tls.into())
    }

    fn handshake(&mut self, tls: rustls::Connection) -> Result<(), ConnectionError> {
        if !self.reader.buffer().is_empty() || self.is_tls() {
            return Err(ConnectionError::Handshake(io::Error::other(
                "TLS must start before anything is read",
            )));
        }
        let limit = self.frame_timeout.unwrap_or(HANDSHAKE_LIMIT);
        let deadline = Instant::now() + limit;
        let handshaken = match self.reader.get_mut().handshake(tls, deadline) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.read_clear_answer(deadline)),
            Err(e) => Err(ConnectionError::Handshake(timed_out(e))),
        };
        let restored = self.stream.set_write_timeout(self.frame_timeout);
        handshaken?;
        restored.map_err(ConnectionError::Write)
    }

    /// Reads the frame a server sent in the clear instead of its handshake (before
    /// `deadline`): a [`ClearAnswer`], or why it could not be read.
    fn read_clear_answer(&mut self, deadline: Instant) -> ConnectionError {
        self.reader.get_mut().deadline = Some(deadline);
        match protocol::read_frame(&mut self.reader) {
            Ok(Some(frame)) => match frame.decode() {
                Ok(message) => ConnectionError::Handshake(io::Error::new(
                    io::ErrorKind::InvalidData,
                    ClearAnswer(message),
                )),
                Err(e) => ConnectionError::Decode(e),
            },
            Ok(None) => ConnectionError::Handshake(io::ErrorKind::UnexpectedEof.into()),
            Err(e) => ConnectionError::Frame(e),
        }
    }
}

/// How long a `close_notify` may take to write when a TLS connection closes.
const CLOSE_NOTIFY_LIMIT: Duration = Duration::from_millis(100);

/// The read buffer of a connection: several frames, so that one read takes in what a
/// pipelining peer sent (its pages are only touched as far as they are filled).
const READ_BUFFER: usize = 2 * protocol::MAX_FRAME_LEN;
/// The handshake's bound when the connection has no timeout.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (Connection::new(server).expect("wrap"), client)
    }

    #[test]
    fn reads_frames_and_a_clean_end() {
        let (mut conn, mut peer) = pair();
        let mut bytes = Message::Hello {
            agency: 2,
            upload: 1,
        }
        .encode()
        .expect("encodes");
        Message::Fin.encode_into(&mut bytes).expect("encodes");
        peer.write_all(&bytes).expect("send");
        drop(peer);
        assert_eq!(
            conn.read_message().expect("ok"),
            Some(Message::Hello {
                agency: 2,
                upload: 1,
            })
        );
        assert_eq!(conn.read_message().expect("ok"), Some(Message::Fin));
        assert_eq!(conn.read_message().expect("ok"), None);
    }

    #[test]
    fn end_inside_a_frame_is_an_error() {
        let (mut conn, mut peer) = pair();
        let bytes = Message::Hello {
            agency: 2,
            upload: 1,
        }
        .encode()
        .expect("encodes");
        peer.write_all(&bytes[..6]).expect("send");
        drop(peer);
        assert!(matches!(
            conn.read_message(),
            Err(ConnectionError::Frame(FrameError::Truncated {
                expected: 16,
                got: 6
            }))
        ));
    }

    #[test]
    fn writes_whole_frames_and_reports_timeouts() {
        let (mut conn, mut peer) = pair();
        conn.write_message(&Message::WinnersQuery).expect("write");
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).expect("read");
        assert_eq!(buf, [protocol::VERSION, 4, 0, 0]);
        conn.set_timeouts(Some(Duration::from_millis(20)))
            .expect("timeouts");
        let err = conn.read_message().expect_err("nothing sent");
        assert!(err.is_timeout(), "{err}");
    }

    #[test]
    fn text_is_told_from_frames_and_tls() {
        for text in b"hola HOLA 0~\t\r\n"
            .iter()
            .copied()
            .chain(0x20..=0x7e)
            .chain(0xc2..=0xf4)
        {
            assert!(starts_plain_text(text), "0x{text:02x}");
        }
        // "ñandú" and "¡hola!" start with UTF-8 lead bytes.
        assert!(starts_plain_text("ñandú".as_bytes()[0]));
        assert!(starts_plain_text("¡hola!".as_bytes()[0]));
        // Our version byte, TLS' handshake byte, other control bytes, bytes that cannot
        // start a UTF-8 character.
        for binary in [
            protocol::VERSION,
            0x16,
            0x00,
            0x01,
            0x1b,
            0x7f,
            0x80,
            0xbf,
            0xc0,
            0xc1,
            0xf5,
            0xff,
        ] {
            assert!(!starts_plain_text(binary), "0x{binary:02x}");
        }
    }

    #[test]
    fn peeking_keeps_the_byte_for_the_frame() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&Message::Fin.encode().expect("encodes"))
            .expect("send");
        drop(peer);
        assert_eq!(conn.peek_byte().expect("peek"), Some(protocol::VERSION));
        assert_eq!(
            conn.peek_byte().expect("peek again"),
            Some(protocol::VERSION)
        );
        assert_eq!(conn.read_message().expect("ok"), Some(Message::Fin));
        assert_eq!(conn.peek_byte().expect("end"), None);
    }

    #[test]
    fn lines_are_read_whole_bounded_and_to_the_end() {
        let (mut conn, mut peer) = pair();
        let long = [b'x'; 10];
        let mut bytes = b"hola\n\nchau\r\n".to_vec();
        bytes.extend_from_slice(&long[..8]);
        bytes.push(b'\n');
        bytes.extend_from_slice(b"last");
        peer.write_all(&bytes).expect("send");
        drop(peer);
        let complete = |bytes: &[u8]| TextLine::Complete(bytes.to_vec());
        assert_eq!(conn.read_line(8).expect("1"), complete(b"hola\n"));
        assert_eq!(conn.read_line(8).expect("2"), complete(b"\n"));
        assert_eq!(conn.read_line(8).expect("3"), complete(b"chau\r\n"));
        // Exactly `max` bytes before the `\n` is still a line.
        assert_eq!(conn.read_line(8).expect("4"), complete(b"xxxxxxxx\n"));
        assert_eq!(
            conn.read_line(8).expect("5"),
            TextLine::Unterminated(b"last".to_vec())
        );
        assert_eq!(conn.read_line(8).expect("end"), TextLine::End);

        let (mut conn, mut peer) = pair();
        peer.write_all(&long[..9]).expect("send");
        drop(peer);
        assert_eq!(conn.read_line(8).expect("read"), TextLine::TooLong);
    }

    #[test]
    fn a_line_must_arrive_within_the_timeout() {
        let (mut conn, mut peer) = pair();
        conn.set_timeouts(Some(Duration::from_millis(50)))
            .expect("timeouts");
        peer.write_all(b"no end").expect("send");
        let err = conn.read_line(MAX_TEXT_LINE).expect_err("no newline");
        assert!(err.is_timeout(), "{err}");
        conn.write_bytes(b"bye\n").expect("write");
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"bye\n");
    }

    #[test]
    fn a_trickled_frame_hits_the_frame_deadline() {
        let (mut conn, mut peer) = pair();
        conn.set_timeouts(Some(Duration::from_millis(300)))
            .expect("timeouts");
        let bytes = Message::Echo(vec![7; 64]).encode().expect("encodes");
        let writer = std::thread::spawn(move || {
            // One byte every 20 ms: each read succeeds, the whole frame takes 1.3 s.
            for byte in bytes {
                if peer.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let err = conn
            .read_message()
            .expect_err("deadline for the whole frame");
        assert!(err.is_timeout(), "{err}");
        conn.close();
        writer.join().expect("writer");
    }
}
