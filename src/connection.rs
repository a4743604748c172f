//! [`Connection`]: one TCP stream that speaks the protocol, frame by frame.
//!
//! It owns the [`TcpStream`], buffers reads, and writes each frame with one
//! `write_all`. End of stream between frames is `Ok(None)`; inside a frame it is an
//! error ([`FrameError::Truncated`]).

use std::fmt;
use std::io::{self, BufReader, Write};
use std::net::{Shutdown as Both, SocketAddr, TcpStream};
use std::time::Duration;

use crate::protocol::{self, DecodeError, EncodeError, Frame, FrameError, Message};

/// A protocol connection over TCP.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
    peer: Option<SocketAddr>,
}

/// A connection-level failure.
#[derive(Debug)]
pub enum ConnectionError {
    /// The byte stream broke (I/O error, truncated frame, bad header).
    Frame(FrameError),
    /// A frame arrived whose payload makes no sense.
    Decode(DecodeError),
    /// A message could not be encoded (a bug or an oversized field).
    Encode(EncodeError),
    /// Writing failed.
    Write(io::Error),
}

impl ConnectionError {
    /// Whether the failure is a read or write timeout.
    pub fn is_timeout(&self) -> bool {
        match self {
            ConnectionError::Frame(e) => e.is_timeout(),
            ConnectionError::Write(e) => {
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                )
            }
            _ => false,
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
        }
    }
}

impl std::error::Error for ConnectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectionError::Frame(e) => Some(e),
            ConnectionError::Decode(e) => Some(e),
            ConnectionError::Encode(e) => Some(e),
            ConnectionError::Write(e) => Some(e),
        }
    }
}

impl From<FrameError> for ConnectionError {
    fn from(e: FrameError) -> Self {
        ConnectionError::Frame(e)
    }
}

impl Connection {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> io::Result<Connection> {
        let peer = stream.peer_addr().ok();
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Connection {
            reader,
            writer: stream,
            out: Vec::with_capacity(protocol::MAX_FRAME_LEN),
            peer,
        })
    }

    /// The remote address, when the OS still knew it at connection time.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The underlying stream (to set timeouts or clone it for a shutdown hook).
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Sets both the read and the write timeout (`None`: block forever).
    pub fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(timeout)?;
        self.writer.set_write_timeout(timeout)
    }

    /// Reads the next raw frame; `Ok(None)` at a clean end of stream.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        protocol::read_frame(&mut self.reader)
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
        self.out.clear();
        message
            .encode_into(&mut self.out)
            .map_err(ConnectionError::Encode)?;
        self.writer
            .write_all(&self.out)
            .map_err(ConnectionError::Write)
    }

    /// Writes an already encoded frame (used to echo a frame back unchanged).
    pub fn write_frame(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        self.writer
            .write_all(&frame.to_bytes())
            .map_err(ConnectionError::Write)
    }

    /// Shuts both directions of the stream down; blocked reads on any clone return.
    pub fn close(&self) {
        // Already closed by the peer or by a shutdown hook: nothing left to do.
        let _ = self.writer.shutdown(Both::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
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
        let mut bytes = Message::Hello { agency: 2 }.encode().expect("encodes");
        Message::Fin.encode_into(&mut bytes).expect("encodes");
        peer.write_all(&bytes).expect("send");
        drop(peer);
        assert_eq!(
            conn.read_message().expect("ok"),
            Some(Message::Hello { agency: 2 })
        );
        assert_eq!(conn.read_message().expect("ok"), Some(Message::Fin));
        assert_eq!(conn.read_message().expect("ok"), None);
    }

    #[test]
    fn end_inside_a_frame_is_an_error() {
        let (mut conn, mut peer) = pair();
        let bytes = Message::Hello { agency: 2 }.encode().expect("encodes");
        peer.write_all(&bytes[..6]).expect("send");
        drop(peer);
        assert!(matches!(
            conn.read_message(),
            Err(ConnectionError::Frame(FrameError::Truncated {
                expected: 8,
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
        assert_eq!(buf, [1, 4, 0, 0]);
        conn.set_timeouts(Some(Duration::from_millis(20)))
            .expect("timeouts");
        let err = conn.read_message().expect_err("nothing sent");
        assert!(err.is_timeout(), "{err}");
    }
}
