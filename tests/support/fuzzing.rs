//! The fuzzing harnesses: one function per cargo-fuzz target of `fuzz/`, each taking the
//! fuzzer's bytes and checking what the code under test must guarantee for *any* input
//! (oracles, not only "no panic"). The fuzz targets (`fuzz/fuzz_targets/*.rs`) and the
//! corpus replay test (`tests/fuzz_corpus.rs`) both include this one file, so a corpus
//! input or a crash replayed by `cargo test` runs exactly the checks the fuzzer ran.
//!
//! | target | feeds | checks |
//! |---|---|---|
//! | `frame_decoder` | a byte stream to `protocol::read_frame`, frame after frame | every frame is exactly its bytes; a decoded message re-encodes to the same bytes; a stream error says truthfully what is wrong; the same bytes read in short pieces (and interrupted reads) give the same frames; `STATUS` chunks through `StatusAssembler` give only whole, consistent answers |
//! | `server_session` | one to six connections to a fresh server (`run_with_store` over a `MemoryStore`) | no thread panics, the server stops and joins within a bound; every reply is frames of the protocol (or the plain-text echo of the lines sent); an ACK means stored, and the store holds only acknowledged batches; winners, status and welcome agree with the store |
//! | `agency_file` | the bytes as an agency file | line numbers increase, every bet is valid, the whole file is consumed, every bet written back as CSV reads back as itself |
//! | `config` | TOML text, then (after a NUL byte) `NAME=value` environment lines | loading never panics; a loaded configuration is within its ranges and its log summary is one clean line |
//! | `log_text` | any bytes as a peer's text | `logging::sanitize`/`excerpt` leave no field separator or control character and lose nothing (escapes decode back) |
#![allow(dead_code)] // Each fuzz target uses one harness; the replay test uses all.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown as Half, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use loteria::agency_file::{AgencyFile, Line};
use loteria::bet::{AgencyId, Bet};
use loteria::config::{ClientConfig, LogLevel, MAX_AGENCIES, ServerConfig};
use loteria::connection::{MAX_TEXT_LINE, starts_plain_text};
use loteria::protocol::{
    self, BETS_PREFIX_LEN, DecodeError, ErrorCode, Frame, FrameError, HEADER_LEN, MAX_PAYLOAD_LEN,
    Message, StatusAssembler, StatusChunk, StatusSnapshot, VERSION, kind,
};
use loteria::shutdown::Shutdown;
use loteria::storage::MemoryStore;
use loteria::storage::memory::MemoryContents;

/// A harness: takes the fuzzer's bytes, panics when an oracle fails.
pub type Harness = fn(&[u8]);

/// Every harness by target name (the name of its `fuzz/fuzz_targets/<name>.rs` and of
/// its `fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Harness)] = &[
    ("frame_decoder", frame_decoder),
    ("server_session", server_session),
    ("agency_file", agency_file),
    ("config", config),
    ("log_text", log_text),
];

/// Every kind byte the protocol defines.
const KNOWN_KINDS: [u8; 13] = [
    kind::HELLO,
    kind::BETS,
    kind::FIN,
    kind::WINNERS_QUERY,
    kind::ECHO,
    kind::STATUS_QUERY,
    kind::WELCOME,
    kind::BETS_ACK,
    kind::FIN_ACK,
    kind::WINNERS,
    kind::DRAW_PENDING,
    kind::STATUS,
    kind::ERROR,
];

// ---------------------------------------------------------------------------------
// frame_decoder

/// How a stream of frames ended: cleanly between two frames, or with this error.
type StreamEnd = Option<String>;

/// `frame_decoder`: `data` as a byte stream of frames.
pub fn frame_decoder(data: &[u8]) {
    let mut rest = data;
    let mut frames = Vec::new();
    let end: StreamEnd = loop {
        let before = rest;
        match protocol::read_frame(&mut rest) {
            Ok(Some(frame)) => {
                let used = before.len() - rest.len();
                assert_eq!(
                    frame.to_bytes(),
                    &before[..used],
                    "a frame is exactly the bytes it was read from"
                );
                check_frame(&frame);
                frames.push(frame);
            }
            Ok(None) => {
                assert!(before.is_empty(), "a clean end only where the input ends");
                break None;
            }
            Err(e) => {
                check_frame_error(&e, before);
                break Some(format!("{e:?}"));
            }
        }
    };
    // The same bytes, read in short pieces with interrupted reads in between, as a
    // socket may deliver them: the same frames and the same end.
    let mut trickle = Trickle { data, calls: 0 };
    let mut again = Vec::new();
    let end_again: StreamEnd = loop {
        match protocol::read_frame(&mut trickle) {
            Ok(Some(frame)) => again.push(frame),
            Ok(None) => break None,
            Err(e) => break Some(format!("{e:?}")),
        }
    };
    assert_eq!(again, frames, "short reads change the frames");
    assert_eq!(end_again, end, "short reads change how the stream ends");

    check_status_answers(frames.iter().filter_map(|frame| match frame.decode() {
        Ok(Message::Status(chunk)) => Some(chunk),
        _ => None,
    }));
}

/// A reader that hands out 1, 3, 2, 7 or 64 bytes at a time and fails every fourth
/// call with `Interrupted` (which readers must retry).
struct Trickle<'a> {
    data: &'a [u8],
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(4) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = [1, 3, 2, 7, 64][self.calls % 5]
            .min(buf.len())
            .min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// One frame read from the stream: its payload fits, and whatever decodes re-encodes
/// to the very same bytes (the wire format has one encoding per message).
/// The server's decoder of `BETS` into reused bets (`decode_bets_into`, over a `Vec`
/// holding stale bets of another batch) gives what `Message::decode` gives, error
/// for error; the client's encoder from borrowed bets gives the frame back.
fn check_bets_decoders(frame: &Frame) {
    let mut reused: Vec<loteria::bet::Bet> = (0..3)
        .map(|i| loteria::bet::Bet {
            first_name: "stale".repeat(i + 1),
            last_name: "x".into(),
            document: "99".into(),
            birthdate: loteria::bet::EARLIEST_BIRTHDATE,
            number: 9,
        })
        .collect();
    let into = protocol::decode_bets_into(&frame.payload, &mut reused);
    match (Message::decode(frame.kind, &frame.payload), into) {
        (Ok(Message::Bets { seq, line, bets }), Ok((s, l))) => {
            assert_eq!((s, l), (seq, line));
            assert_eq!(reused, bets, "decoded into reused bets differently");
            let mut out = Vec::new();
            protocol::encode_bets_into(seq, line, &bets, &mut out).expect("re-encodes");
            assert_eq!(
                out,
                frame.to_bytes(),
                "encoded from borrowed bets differently"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the two decoders fail differently"),
        (a, b) => panic!("the two decoders disagree: {a:?} / {b:?}"),
    }
}

fn check_frame(frame: &Frame) {
    assert!(frame.payload.len() <= MAX_PAYLOAD_LEN);
    if frame.kind == protocol::kind::BETS {
        check_bets_decoders(frame);
    }
    match frame.decode() {
        Ok(message) => {
            assert_eq!(message.kind(), frame.kind);
            let bytes = message
                .encode()
                .unwrap_or_else(|e| panic!("{message:?} was decoded but does not encode: {e}"));
            assert_eq!(
                bytes,
                frame.to_bytes(),
                "{message:?} re-encodes differently"
            );
            let mut written = Vec::new();
            protocol::write_message(&mut written, &message).expect("writes to a Vec");
            assert_eq!(written, bytes);
            assert_eq!(
                Message::decode(frame.kind, &bytes[HEADER_LEN..]),
                Ok(message.clone())
            );
            if let Message::Bets { bets, .. } = &message {
                let wire: usize = bets.iter().map(protocol::bet_wire_len).sum();
                assert_eq!(BETS_PREFIX_LEN + wire, frame.payload.len());
                assert_eq!(protocol::bets_frame_len(wire), bytes.len());
            }
        }
        Err(e) => {
            let known = KNOWN_KINDS.contains(&frame.kind);
            assert_eq!(
                e == DecodeError::UnknownKind(frame.kind),
                !known,
                "kind 0x{:02x}: {e:?}",
                frame.kind
            );
            assert!(matches!(
                e.code(),
                ErrorCode::Malformed | ErrorCode::UnknownKind | ErrorCode::InvalidBet
            ));
            // The text goes back to the peer in an ERROR and into a log line.
            let text = e.to_string();
            assert!(
                !text.is_empty() && !text.chars().any(char::is_control),
                "{text:?}"
            );
        }
    }
}

/// A stream error says truthfully what is wrong with the bytes `rest` left.
fn check_frame_error(e: &FrameError, rest: &[u8]) {
    match *e {
        FrameError::UnsupportedVersion(v) => {
            assert!(
                rest.len() >= HEADER_LEN,
                "a version refused before a whole header"
            );
            assert_eq!(v, rest[0]);
            assert_ne!(v, VERSION);
            assert_eq!(e.code(), Some(ErrorCode::UnsupportedVersion));
        }
        FrameError::TooLarge(len) => {
            assert!(rest.len() >= HEADER_LEN && rest[0] == VERSION);
            assert_eq!(len, usize::from(u16::from_be_bytes([rest[2], rest[3]])));
            assert!(len > MAX_PAYLOAD_LEN);
            assert_eq!(e.code(), Some(ErrorCode::FrameTooLarge));
        }
        FrameError::Truncated { expected, got } => {
            assert_eq!(got, rest.len(), "every byte left was read");
            assert!(got < expected);
            if rest.len() < HEADER_LEN {
                assert_eq!(expected, HEADER_LEN);
            } else {
                let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
                assert_eq!(expected, HEADER_LEN + len);
            }
            assert_eq!(e.code(), None);
        }
        FrameError::Io(ref io) => panic!("reading a slice failed: {io}"),
    }
    assert!(!e.to_string().is_empty());
}

/// Feeds `chunks` to a [`StatusAssembler`] as a client receives them (a new one after
/// an answer it refused): every answer it completes is whole and consistent, is what
/// `StatusSnapshot::from_chunks` makes of the same chunks, and survives being cut into
/// chunks again.
fn check_status_answers(chunks: impl Iterator<Item = StatusChunk>) {
    let mut assembler = StatusAssembler::default();
    let mut pending: Vec<StatusChunk> = Vec::new();
    for chunk in chunks {
        pending.push(chunk.clone());
        match assembler.push(chunk) {
            Ok(None) => {}
            Ok(Some(snapshot)) => {
                check_snapshot(&snapshot);
                assert_eq!(
                    StatusSnapshot::from_chunks(&pending).as_ref(),
                    Some(&snapshot)
                );
                let entries: Vec<_> = pending.iter().flat_map(|c| c.entries.clone()).collect();
                assert_eq!(entries, snapshot.entries);
                let again = snapshot.chunks();
                for chunk in &again {
                    Message::Status(chunk.clone())
                        .encode()
                        .expect("a chunk of an answer fits a frame");
                }
                assert_eq!(
                    StatusSnapshot::from_chunks(&again).as_ref(),
                    Some(&snapshot)
                );
                pending.clear();
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert_eq!(StatusSnapshot::from_chunks(&pending), None);
                assembler = StatusAssembler::default();
                pending.clear();
            }
        }
    }
}

/// A whole `STATUS` answer: agencies `1..=N` once each, in order, `finished` counting
/// the finished ones, winner counts exactly when the draw ran.
fn check_snapshot(snapshot: &StatusSnapshot) {
    let ids: Vec<AgencyId> = snapshot.entries.iter().map(|e| e.agency).collect();
    assert!(ids.iter().copied().eq(1..=snapshot.agencies), "{ids:?}");
    let finished = snapshot.entries.iter().filter(|e| e.finished).count();
    assert_eq!(finished as u64, u64::from(snapshot.finished));
    assert!(
        snapshot
            .entries
            .iter()
            .all(|e| e.winners.is_some() == snapshot.drawn)
    );
    let missing: Vec<AgencyId> = snapshot
        .entries
        .iter()
        .filter(|e| !e.finished)
        .map(|e| e.agency)
        .collect();
    assert_eq!(snapshot.missing(), missing);
}

// ---------------------------------------------------------------------------------
// server_session

/// Separates the connections of a `server_session` input (after its mode byte).
pub const CONNECTION_SEPARATOR: &[u8] = b"\0NEXT\0";
/// The most connections one `server_session` input opens (more separators are data).
pub const MAX_CONNECTIONS: usize = 6;
/// Bit 0 of the mode byte: 3 agencies instead of 2.
pub const MODE_THREE_AGENCIES: u8 = 0x01;
/// Bit 1 of the mode byte: every connection at once instead of one after the other.
pub const MODE_CONCURRENT: u8 = 0x02;
/// The number every bet must play to win, as the session's server is configured.
const WINNING_NUMBER: u16 = 7574;
/// How long a connection is given to be served before the next one starts (one after
/// the other), and all of them before shutdown. Only a connection whose request is held
/// (winners before the draw) uses it up; it is not a correctness bound.
const GRACE: Duration = Duration::from_millis(40);
/// The bound on everything after shutdown: every connection closed, the server
/// returned. Exceeding it is a hang, reported as a failure.
const BOUND: Duration = Duration::from_secs(10);

/// A `server_session` input: the mode byte, then the connections' bytes separated by
/// [`CONNECTION_SEPARATOR`].
pub fn session_input(mode: u8, connections: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![mode];
    for (i, bytes) in connections.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(CONNECTION_SEPARATOR);
        }
        out.extend_from_slice(bytes);
    }
    out
}

/// The connections of a `server_session` input (without its mode byte).
fn split_connections(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut connections = Vec::new();
    while connections.len() + 1 < MAX_CONNECTIONS {
        match rest
            .windows(CONNECTION_SEPARATOR.len())
            .position(|w| w == CONNECTION_SEPARATOR)
        {
            Some(at) => {
                connections.push(&rest[..at]);
                rest = &rest[at + CONNECTION_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    connections.push(rest);
    connections
}

/// Panics seen by the panic hook [`count_panics`] installs (any thread).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Installs (once) a panic hook that counts panics, then does what the hook before it
/// did: a server thread that panics is joined and only logged by the server, so the
/// harness checks this count (under libFuzzer, its own hook aborts as well). It counts
/// every thread of the process: the replay test runs one harness at a time.
fn count_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn session_config(agencies: u32) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        listen_backlog: 16,
        io_timeout: Duration::from_secs(2),
        max_connections: 16,
        log_level: LogLevel {
            name: "OFF".into(),
            filter: log::LevelFilter::Off,
        },
        agencies,
        winning_number: WINNING_NUMBER,
        storage_path: PathBuf::from("memory"),
        status_port: None,
        tls: Default::default(),
        tls_required: false,
    }
}

/// How a connection's reply stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The server closed it (end of stream).
    Closed,
    /// The server reset it (it closed with our bytes unread): bytes may be lost.
    Reset,
}

/// What one connection received.
#[derive(Debug)]
struct Outcome {
    received: Vec<u8>,
    end: End,
}

/// One client connection: a thread that writes the input (then half-closes) while
/// another reads every reply to the end.
struct Client {
    handle: JoinHandle<Outcome>,
    done: mpsc::Receiver<()>,
    finished: bool,
}

impl Client {
    fn start(stream: TcpStream, input: Vec<u8>) -> Client {
        let (tx, done) = mpsc::channel();
        let handle = thread::spawn(move || {
            let outcome = converse(stream, input);
            let _ = tx.send(());
            outcome
        });
        Client {
            handle,
            done,
            finished: false,
        }
    }

    /// Waits at most until `deadline` for the connection to end; whether it has.
    fn wait_until(&mut self, deadline: Instant) -> bool {
        if !self.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            self.finished = self.done.recv_timeout(left).is_ok();
        }
        self.finished
    }

    fn finish(mut self, which: usize) -> Outcome {
        if !self.wait_until(Instant::now() + BOUND) {
            panic!("connection {which} was still open {BOUND:?} after shutdown");
        }
        self.handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Sends `input` and reads until the server closes (bounded by [`BOUND`] per read).
fn converse(stream: TcpStream, input: Vec<u8>) -> Outcome {
    stream.set_read_timeout(Some(BOUND)).expect("read timeout");
    stream
        .set_write_timeout(Some(BOUND))
        .expect("write timeout");
    let writer = {
        let stream = stream.try_clone().expect("clone the client stream");
        thread::spawn(move || {
            // The server may close before it has read everything: not an error here.
            let _ = (&stream).write_all(&input);
            let _ = stream.shutdown(Half::Write);
        })
    };
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        match (&stream).read(&mut buf) {
            Ok(0) => break End::Closed,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break End::Reset,
            Err(e) => panic!("reading the server's replies failed: {e}"),
        }
    };
    writer.join().expect("the writer thread does not panic");
    Outcome { received, end }
}

/// `server_session`: the mode byte, then up to [`MAX_CONNECTIONS`] connections' bytes.
pub fn server_session(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let agencies = if mode & MODE_THREE_AGENCIES != 0 {
        3
    } else {
        2
    };
    let concurrent = mode & MODE_CONCURRENT != 0;
    let inputs = split_connections(rest);
    count_panics();
    let panics_before = PANICS.load(Ordering::SeqCst);

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let store = MemoryStore::new();
    let view = store.view();
    let shutdown = Shutdown::new();
    let (stopped, server_stopped) = mpsc::channel();
    let server = {
        let shutdown = shutdown.clone();
        let config = session_config(agencies);
        thread::spawn(move || {
            let result =
                loteria::server::run_with_store(listener, &config, &shutdown, Box::new(store));
            let _ = stopped.send(());
            result
        })
    };

    let mut clients = Vec::new();
    for input in &inputs {
        let stream = TcpStream::connect(addr).expect("connect to the server");
        let mut client = Client::start(stream, input.to_vec());
        if !concurrent {
            client.wait_until(Instant::now() + GRACE);
        }
        clients.push(client);
    }
    let deadline = Instant::now() + GRACE;
    let served: Vec<bool> = clients.iter_mut().map(|c| c.wait_until(deadline)).collect();
    shutdown.trigger();
    let outcomes: Vec<Outcome> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.finish(i))
        .collect();
    assert!(
        server_stopped.recv_timeout(BOUND).is_ok(),
        "the server did not return within {BOUND:?} of shutdown"
    );
    let result = server.join().expect("the server's thread does not panic");
    assert!(result.is_ok(), "the server failed: {result:?}");
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics_before,
        "a thread panicked during the session"
    );
    let contents = view.contents();

    let mut seen = Seen::default();
    for (i, (input, outcome)) in inputs.iter().zip(&outcomes).enumerate() {
        // Served to its natural end before shutdown, and nothing lost to a reset.
        let whole = served[i] && outcome.end == End::Closed;
        let limit = 64 * input.len() + 64 * 1024;
        assert!(
            outcome.received.len() <= limit,
            "connection {i}: {} reply bytes for {} bytes sent",
            outcome.received.len(),
            input.len()
        );
        match input.first() {
            Some(&first) if starts_plain_text(first) => check_text_reply(i, input, outcome, whole),
            _ => {
                let agency = check_frame_reply(i, agencies, input, outcome, whole, &mut seen);
                if !whole {
                    // An acknowledgement of this connection's agency may be lost.
                    seen.uncertain.push(agency);
                }
            }
        }
    }
    check_store(agencies, &contents, &seen);
}

/// The plain-text echo of `input`: every line back as it came, until a line longer
/// than [`MAX_TEXT_LINE`] (answered with the error line, and the end).
fn expected_echo(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (line, content) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..=at], at),
            None => (rest, rest.len()),
        };
        if content > MAX_TEXT_LINE {
            out.extend_from_slice(
                format!("ERROR line longer than {MAX_TEXT_LINE} bytes; closing\n").as_bytes(),
            );
            break;
        }
        out.extend_from_slice(line);
        rest = &rest[line.len()..];
    }
    out
}

fn check_text_reply(i: usize, input: &[u8], outcome: &Outcome, whole: bool) {
    let expected = expected_echo(input);
    if whole {
        assert_eq!(
            String::from_utf8_lossy(&outcome.received),
            String::from_utf8_lossy(&expected),
            "connection {i}: the plain-text echo"
        );
        assert_eq!(outcome.received, expected, "connection {i}");
    } else {
        assert!(
            expected.starts_with(&outcome.received),
            "connection {i}: the plain-text echo, cut short, is not a prefix of the echo: {:?}",
            String::from_utf8_lossy(&outcome.received)
        );
    }
}

/// What the replies of every connection said, to hold against the store.
#[derive(Default)]
struct Seen {
    /// `(agency, seq, count)` of every `BETS_ACK`.
    acks: BTreeSet<(AgencyId, u64, u16)>,
    /// Every whole `WINNERS` answer: the agency and its documents.
    winners: Vec<(AgencyId, Vec<String>)>,
    /// Every whole `STATUS` answer.
    statuses: Vec<StatusSnapshot>,
    /// `(agency, stored_bets, finished, drawn)` of every `WELCOME`.
    welcomes: Vec<(AgencyId, u64, bool, bool)>,
    /// The agency (if its `WELCOME` came) of every connection whose replies may miss
    /// something: cut by shutdown, or reset.
    uncertain: Vec<Option<AgencyId>>,
}

/// An answer of several frames in progress on a connection.
enum InProgress {
    Nothing,
    Winners(Vec<String>),
    Status,
}

fn check_frame_reply(
    i: usize,
    agencies: u32,
    input: &[u8],
    outcome: &Outcome,
    whole: bool,
    seen: &mut Seen,
) -> Option<AgencyId> {
    // The ECHO requests, as the server reads them: echoed back in order, byte for byte.
    let mut echoes = Vec::new();
    let mut sent = input;
    while let Ok(Some(frame)) = protocol::read_frame(&mut sent) {
        if frame.kind == kind::ECHO {
            echoes.push(frame.to_bytes());
        }
    }
    let mut echoes = echoes.into_iter();
    let context = || format!("connection {i}: replies {:02x?}", outcome.received);

    let mut rest = &outcome.received[..];
    let mut agency: Option<AgencyId> = None;
    let mut closed = false;
    let mut in_progress = InProgress::Nothing;
    let mut status = StatusAssembler::default();
    loop {
        let frame = match protocol::read_frame(&mut rest) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(FrameError::Truncated { .. }) if !whole => break,
            Err(e) => panic!("{}: the reply stream breaks: {e}", context()),
        };
        assert!(!closed, "{}: a frame after a closing error", context());
        let message = frame
            .decode()
            .unwrap_or_else(|e| panic!("{}: a reply does not decode: {e}", context()));
        let bound = |what: &str| {
            agency.unwrap_or_else(|| panic!("{}: {what} before any WELCOME", context()))
        };
        match (&mut in_progress, &message) {
            (InProgress::Nothing, _)
            | (InProgress::Winners(_), Message::Winners { .. })
            | (InProgress::Status, Message::Status(_)) => {}
            _ => panic!(
                "{}: {message:?} interleaved with a multi-frame answer",
                context()
            ),
        }
        match message {
            Message::Echo(_) => assert_eq!(
                echoes.next().as_deref(),
                Some(&frame.to_bytes()[..]),
                "{}: an ECHO reply that is not the next ECHO request",
                context()
            ),
            Message::Welcome {
                agency: a,
                stored_bets,
                finished,
                drawn,
                ..
            } => {
                assert!((1..=agencies).contains(&a), "{}", context());
                assert!(
                    agency.is_none_or(|bound| bound == a),
                    "{}: WELCOME for two agencies",
                    context()
                );
                agency = Some(a);
                seen.welcomes.push((a, stored_bets, finished, drawn));
            }
            Message::BetsAck { seq, count } => {
                let a = bound("BETS_ACK");
                assert!(count >= 1 && seq >= 1, "{}", context());
                seen.acks.insert((a, seq, count));
            }
            Message::FinAck {
                finished,
                agencies: n,
            } => {
                bound("FIN_ACK");
                assert!(
                    n == agencies && (1..=n).contains(&finished),
                    "{}",
                    context()
                );
            }
            Message::DrawPending {
                finished,
                agencies: n,
            } => {
                bound("DRAW_PENDING");
                assert!(n == agencies && finished <= n, "{}", context());
            }
            Message::Winners { last, documents } => {
                let a = bound("WINNERS");
                let mut so_far = match std::mem::replace(&mut in_progress, InProgress::Nothing) {
                    InProgress::Winners(so_far) => so_far,
                    _ => Vec::new(),
                };
                so_far.extend(documents);
                if last {
                    seen.winners.push((a, so_far));
                } else {
                    in_progress = InProgress::Winners(so_far);
                }
            }
            Message::Status(chunk) => {
                assert_eq!(chunk.agencies, agencies, "{}", context());
                let last = chunk.last;
                match status.push(chunk) {
                    Ok(Some(snapshot)) => {
                        check_snapshot(&snapshot);
                        seen.statuses.push(snapshot);
                    }
                    Ok(None) => {}
                    Err(e) => panic!("{}: a STATUS answer breaks the rules: {e}", context()),
                }
                in_progress = if last {
                    InProgress::Nothing
                } else {
                    InProgress::Status
                };
            }
            Message::Error { code, reason } => {
                assert!(
                    !matches!(code, ErrorCode::Other(_)) && !reason.is_empty(),
                    "{}: ERROR {code}: {reason:?}",
                    context()
                );
                closed = code.closes_connection();
            }
            request @ (Message::Hello { .. }
            | Message::Bets { .. }
            | Message::Fin
            | Message::WinnersQuery
            | Message::StatusQuery) => {
                panic!("{}: the server sent a request: {request:?}", context())
            }
        }
    }
    if whole {
        assert!(
            matches!(in_progress, InProgress::Nothing),
            "{}: an answer left unfinished",
            context()
        );
    }
    agency
}

/// The replies held against what the store holds once the server has stopped.
fn check_store(agencies: u32, contents: &MemoryContents, seen: &Seen) {
    let today = loteria::bet::today();
    let mut stored: BTreeMap<AgencyId, Vec<&Bet>> = BTreeMap::new();
    let mut batches: BTreeMap<AgencyId, Vec<(u64, u64)>> = BTreeMap::new();
    let mut committed = BTreeSet::new();
    for batch in &contents.batches {
        assert!((1..=agencies).contains(&batch.agency), "{batch:?}");
        assert!(!batch.bets.is_empty(), "an empty batch was stored");
        for bet in &batch.bets {
            bet.validate(today)
                .unwrap_or_else(|e| panic!("an invalid bet was stored: {e}: {bet:?}"));
        }
        stored.entry(batch.agency).or_default().extend(&batch.bets);
        batches
            .entry(batch.agency)
            .or_default()
            .push((batch.upload, batch.seq));
        committed.insert((batch.agency, batch.seq, batch.bets.len() as u16));
    }
    // One upload per agency, its batches 1, 2, 3, … each once.
    for (agency, list) in &batches {
        let upload = list[0].0;
        for (n, &(u, seq)) in list.iter().enumerate() {
            assert_eq!(u, upload, "agency {agency}: batches of two uploads stored");
            assert_eq!(
                seq,
                n as u64 + 1,
                "agency {agency}: batches stored {list:?}"
            );
        }
    }
    // An ACK means stored.
    for ack in &seen.acks {
        assert!(
            committed.contains(ack),
            "BETS_ACK (agency, seq, count) {ack:?} for a batch that is not stored: {committed:?}"
        );
    }
    // Only what was acknowledged is stored, for every agency whose acknowledgements
    // all arrived (none lost to a reset or cut by shutdown; a connection cut before
    // its WELCOME arrived could have been any agency's).
    let unknown = seen.uncertain.contains(&None);
    for batch in &committed {
        if !unknown && !seen.uncertain.contains(&Some(batch.0)) {
            assert!(
                seen.acks.contains(batch),
                "a batch (agency, seq, count) {batch:?} was stored but never acknowledged"
            );
        }
    }
    let fins: BTreeSet<AgencyId> = contents.fins.iter().copied().collect();
    assert!(fins.iter().all(|a| (1..=agencies).contains(a)), "{fins:?}");
    assert!(contents.draws.len() <= 1, "two draws: {:?}", contents.draws);
    let drawn = contents.draws.first();
    if let Some(draw) = drawn {
        assert!(
            fins.iter().copied().eq(1..=agencies),
            "a draw before every FIN"
        );
        assert_eq!(draw.winning_number, WINNING_NUMBER);
        assert_eq!(
            draw.bets,
            contents.batches.iter().map(|b| b.bets.len() as u64).sum()
        );
    }
    let count = |agency: AgencyId| stored.get(&agency).map_or(0, Vec::len) as u64;
    let winners_of = |agency: AgencyId| {
        let mut docs: Vec<String> = stored
            .get(&agency)
            .into_iter()
            .flatten()
            .filter(|bet| bet.wins(WINNING_NUMBER))
            .map(|bet| bet.document.clone())
            .collect();
        docs.sort();
        docs
    };
    for (agency, documents) in &seen.winners {
        assert!(drawn.is_some(), "WINNERS without a recorded draw");
        let mut documents = documents.clone();
        documents.sort();
        assert_eq!(documents, winners_of(*agency), "agency {agency}'s winners");
    }
    for snapshot in &seen.statuses {
        for entry in &snapshot.entries {
            assert!(entry.bets <= count(entry.agency), "{entry:?}");
            if entry.finished {
                assert!(fins.contains(&entry.agency), "{entry:?}");
            }
            if snapshot.drawn {
                assert!(drawn.is_some());
                assert_eq!(entry.bets, count(entry.agency), "{entry:?}");
                assert_eq!(
                    entry.winners,
                    Some(winners_of(entry.agency).len() as u32),
                    "{entry:?}"
                );
            }
        }
    }
    for &(agency, stored_bets, finished, was_drawn) in &seen.welcomes {
        assert!(stored_bets <= count(agency));
        assert!(!finished || fins.contains(&agency));
        if was_drawn {
            assert!(drawn.is_some());
            assert_eq!(stored_bets, count(agency));
        }
    }
}

// ---------------------------------------------------------------------------------
// agency_file and config: decoders of files, fed through a temporary file

/// A file in the system temp dir holding `bytes`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "loteria-fuzz-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, bytes).expect("write a temp file");
        TempFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The date the `agency_file` harness reads files on (fixed, so a replay is the run).
fn fixed_today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 6, 1).expect("a valid date")
}

/// Every line of the agency file `bytes`, read on [`fixed_today`].
fn read_agency_file(bytes: &[u8]) -> (Vec<Line>, u64, PathBuf) {
    let file = TempFile::new("agency.csv", bytes);
    let reader = AgencyFile::open(file.path(), fixed_today()).expect("open the agency file");
    assert_eq!(reader.size(), bytes.len() as u64);
    let position = reader.position();
    let lines: Vec<Line> = reader
        .map(|line| line.expect("reading a file in the temp dir does not fail"))
        .collect();
    (lines, position.bytes(), file.path().to_path_buf())
}

/// `agency_file`: the bytes as an agency's bets file.
pub fn agency_file(data: &[u8]) {
    let today = fixed_today();
    let (lines, consumed, path) = read_agency_file(data);
    assert_eq!(consumed, data.len() as u64, "the whole file is consumed");
    let line_count = data.split(|&b| b == b'\n').count() as u64;
    let mut last = 0;
    let mut bets = Vec::new();
    for line in &lines {
        let n = match line {
            Line::Bet { line, bet } => {
                bet.validate(today)
                    .unwrap_or_else(|e| panic!("line {line}: an invalid bet passed: {e}"));
                bets.push(bet.clone());
                *line
            }
            Line::Invalid(bad) => {
                assert_eq!(bad.path, path);
                assert!(!bad.reason.is_empty(), "line {}: no reason", bad.line);
                bad.line
            }
        };
        assert!(n > last && n <= line_count, "line {n} after line {last}");
        last = n;
    }
    if bets.is_empty() {
        return;
    }
    // Every bet, written back as a line of quoted fields, reads back as itself.
    let mut text = String::new();
    for bet in &bets {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        text.push_str(&format!(
            "{},{},{},{},{}\r\n",
            quote(&bet.first_name),
            quote(&bet.last_name),
            quote(&bet.document),
            bet.birthdate,
            bet.number
        ));
    }
    let (again, _, _) = read_agency_file(text.as_bytes());
    let again: Vec<Bet> = again
        .into_iter()
        .map(|line| match line {
            Line::Bet { bet, .. } => bet,
            Line::Invalid(bad) => panic!("a bet written back does not read back: {bad}"),
        })
        .collect();
    assert_eq!(again, bets);
}

/// `config`: TOML text, then (after the first NUL byte) environment lines
/// `NAME=value`; loaded as the server's and as the client's configuration.
pub fn config(data: &[u8]) {
    let (file, env) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let env_text = String::from_utf8_lossy(env);
    let vars: Vec<(String, String)> = env_text
        .split('\n')
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let file = TempFile::new("config.toml", file);
    let one_clean_line = |text: &str| !text.chars().any(char::is_control);
    match ServerConfig::load_with_env(file.path(), &env) {
        Ok(c) => {
            assert!(one_clean_line(&c.summary()), "{:?}", c.summary());
            assert!((1..=MAX_AGENCIES).contains(&c.agencies));
            assert!(!c.io_timeout.is_zero() && c.max_connections >= 1 && c.listen_backlog >= 1);
            assert!(c.winning_number <= loteria::bet::MAX_NUMBER);
            assert!(c.status_port != Some(0));
            let path = c.storage_path.to_string_lossy();
            assert!(!path.is_empty() && one_clean_line(&path), "{path:?}");
            assert!(!c.host.is_empty());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match ClientConfig::load_with_env(file.path(), &env) {
        Ok(c) => {
            assert!(one_clean_line(&c.summary()), "{:?}", c.summary());
            assert!(c.id >= 1 && c.batch_max_amount >= 1);
            assert!(!c.connect_timeout.is_zero() && !c.io_timeout.is_zero());
            assert!(!c.data.to_string_lossy().contains("<id>"), "{:?}", c.data);
            if let Some(bet) = &c.single_bet {
                bet.validate(loteria::bet::today())
                    .expect("the single bet is valid");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

// ---------------------------------------------------------------------------------
// log_text

/// Whether `c` may appear in a log line made of a peer's text.
fn loggable(c: char) -> bool {
    !(c == '|'
        || c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
}

/// Undoes `logging::sanitize`'s escapes (`\\`, `\t`, `\r`, `\n`, `\u{…}`); `None` for
/// a backslash that starts none of them.
fn unescape(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'n' => out.push('\n'),
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// `log_text`: any bytes as a peer's text in a log line.
pub fn log_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let clean = loteria::logging::sanitize(&text);
    assert!(clean.chars().all(loggable), "{clean:?}");
    if !text.contains('|') && !text.contains('¦') {
        assert_eq!(
            unescape(&clean).as_deref(),
            Some(&*text),
            "sanitize lost something: {clean:?}"
        );
    }
    let excerpt = loteria::logging::excerpt(data);
    assert!(excerpt.chars().all(loggable), "{excerpt:?}");
    if text.chars().count() <= loteria::logging::MAX_LOGGED_CHARS {
        assert_eq!(excerpt, clean);
    } else {
        assert!(excerpt.ends_with(&format!("… ({} bytes)", data.len())));
    }
}
