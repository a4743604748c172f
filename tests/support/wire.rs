//! Raw-wire helpers for the integration tests: hand-built frames and bets (so tests can
//! send what the library's encoder refuses to produce), typed error expectations, and
//! close / no-reply-yet detection. Every wait is bounded by a socket timeout.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{self, Read, Write};
use std::net::{Shutdown as Both, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use loteria::bet::Bet;
use loteria::config::ServerConfig;
use loteria::connection::ConnectionError;
use loteria::protocol::{ErrorCode, FrameError, Message, VERSION, kind};

use super::{Peer, TempDir, TestServer, server_config};

/// The bound on every blocking socket call made by these helpers.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// How long a test watches a held request to see that no answer comes yet.
pub const HOLD: Duration = Duration::from_millis(300);

/// Stops the server on another thread; fails the test (instead of hanging it) if
/// `stop` has not returned after a generous bound.
pub fn stop_bounded(server: TestServer) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(server.stop().map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(result) => result.expect("stop returns Ok"),
        Err(_) => panic!("server.stop() did not return: a thread is stuck"),
    }
}

/// A test server configuration with `io_timeout` changed.
pub fn with_timeout(dir: &TempDir, agencies: u32, io_timeout: Duration) -> ServerConfig {
    let mut config = server_config(dir.path(), agencies);
    config.io_timeout = io_timeout;
    config
}

/// A frame with the protocol's version and the real payload length.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("payload fits a u16 length");
    raw_frame(VERSION, kind, len, payload)
}

/// A frame whose header says whatever the test wants.
pub fn raw_frame(version: u8, kind: u8, len: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![version, kind];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `HELLO(agency, upload 0)` as bytes.
pub fn hello_frame(agency: u32) -> Vec<u8> {
    let mut payload = agency.to_be_bytes().to_vec();
    payload.extend_from_slice(&0u64.to_be_bytes());
    frame(kind::HELLO, &payload)
}

/// One bet as wire bytes, with the date given as raw numbers (so impossible dates can
/// be sent).
pub fn raw_bet(
    first: &str,
    last: &str,
    document: &str,
    (year, month, day): (u16, u8, u8),
    number: u16,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(first.len() as u16).to_be_bytes());
    out.extend_from_slice(first.as_bytes());
    out.extend_from_slice(&(last.len() as u16).to_be_bytes());
    out.extend_from_slice(last.as_bytes());
    out.push(u8::try_from(document.len()).expect("document fits a str8"));
    out.extend_from_slice(document.as_bytes());
    out.extend_from_slice(&year.to_be_bytes());
    out.push(month);
    out.push(day);
    out.extend_from_slice(&number.to_be_bytes());
    out
}

/// A well-formed, valid bet as wire bytes.
pub fn good_raw_bet(document: &str, number: u16) -> Vec<u8> {
    raw_bet("Ana", "Núñez", document, (1999, 3, 17), number)
}

/// The payload of a `BETS` frame: `seq`, `line = 0`, `count = bets.len()`, the bets.
pub fn bets_payload(seq: u64, bets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes());
    out.extend_from_slice(&(bets.len() as u16).to_be_bytes());
    for bet in bets {
        out.extend_from_slice(bet);
    }
    out
}

/// A whole `BETS` frame built from raw bets.
pub fn bets_frame(seq: u64, bets: &[Vec<u8>]) -> Vec<u8> {
    frame(kind::BETS, &bets_payload(seq, bets))
}

/// The reply must be an `ERROR` with `code`; returns its reason.
pub fn expect_error(peer: &mut Peer, code: ErrorCode) -> String {
    match peer.recv() {
        Some(Message::Error { code: got, reason }) if got == code => reason,
        other => panic!("expected ERROR {code}, got {other:?}"),
    }
}

/// Whether an I/O error means "the peer closed the connection" (as opposed to, say, a
/// timeout, which means the server did *not* close it).
pub fn is_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// The next message, or `None` when the server closed the connection (clean end of
/// stream or a reset). A timeout or a garbled reply fails the test.
pub fn recv_or_close(peer: &mut Peer) -> Option<Message> {
    match peer.conn.read_message() {
        // The keep-alive of an agency waiting for the draw is not a reply.
        Ok(Some(Message::DrawPending { .. })) => recv_or_close(peer),
        Ok(message) => message,
        Err(ConnectionError::Frame(FrameError::Io(e))) if is_close(&e) => None,
        Err(e) => panic!("expected a reply or a close, got error: {e}"),
    }
}

/// The server must close the connection now (without sending anything more).
pub fn expect_closed(peer: &mut Peer) {
    if let Some(message) = recv_or_close(peer) {
        panic!("expected the server to close the connection, got {message:?}");
    }
}

/// Nothing but `DRAW_PENDING` keep-alives arrives on `peer` within `wait`: the read
/// times out (the server neither answered nor closed). Restores the usual timeout
/// afterwards.
pub fn expect_no_reply_within(peer: &mut Peer, wait: Duration) {
    let deadline = std::time::Instant::now() + wait;
    let result = loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(1));
        peer.conn.set_timeouts(Some(left)).expect("short timeout");
        match peer.conn.read_message() {
            Ok(Some(Message::DrawPending { .. })) => continue,
            other => break other,
        }
    };
    peer.conn
        .set_timeouts(Some(TIMEOUT))
        .expect("restore timeout");
    match result {
        Err(e) if e.is_timeout() => {}
        other => panic!("expected no reply yet (a read timeout), got {other:?}"),
    }
}

/// A plain TCP stream to `addr` with bounded reads and writes.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(TIMEOUT)).expect("timeout");
    stream
}

/// Reads exactly `n` bytes.
pub fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("read reply bytes");
    buf
}

/// Sends `bytes` and half-closes the write side (the server sees end of stream).
pub fn send_and_half_close(peer: &mut Peer, bytes: &[u8]) {
    let mut stream = peer.conn.stream();
    stream.write_all(bytes).expect("send bytes");
    stream.shutdown(Both::Write).expect("half close");
}

/// Sends `WINNERS_QUERY` and returns every `WINNERS` chunk as (last, documents).
pub fn winners_chunks(peer: &mut Peer) -> Vec<(bool, Vec<String>)> {
    peer.send(&Message::WinnersQuery);
    collect_chunks(peer)
}

/// Reads `WINNERS` chunks up to and including the one with `last = 1`.
pub fn collect_chunks(peer: &mut Peer) -> Vec<(bool, Vec<String>)> {
    let mut chunks = Vec::new();
    loop {
        match peer.recv() {
            Some(Message::Winners { last, documents }) => {
                chunks.push((last, documents));
                if last {
                    return chunks;
                }
            }
            other => panic!("expected WINNERS, got {other:?}"),
        }
    }
}

/// Every document of the chunks, in order.
pub fn flatten(chunks: &[(bool, Vec<String>)]) -> Vec<String> {
    chunks.iter().flat_map(|(_, d)| d.iter().cloned()).collect()
}

/// Sorted copy (to compare lists as multisets).
pub fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort();
    v
}

/// The (agency, document, number) rows that storing `bets` for `agency` must produce.
pub fn rows_of(agency: u32, bets: &[Bet]) -> Vec<(u32, String, u16)> {
    bets.iter()
        .map(|b| (agency, b.document.clone(), b.number))
        .collect()
}

/// Splits `bets` into batches of at most `size` (each fits a frame for the mock data).
pub fn batches(bets: &[Bet], size: usize) -> Vec<Vec<Bet>> {
    bets.chunks(size).map(<[Bet]>::to_vec).collect()
}
