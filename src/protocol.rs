//! The wire protocol of `docs/PROTOCOL.md`: frames and messages, pure.
//!
//! This module turns [`Message`]s into bytes and bytes into [`Message`]s. It never touches
//! a socket or a file: encoding writes into a `Vec<u8>` (or any [`Write`]), decoding
//! reads from a `&[u8]` (or any [`Read`]). Reading is split in two steps so that a peer
//! that sends a well-framed but meaningless message does not lose its connection:
//!
//! 1. [`read_frame`] reads one [`Frame`] (header + payload). It checks the version and the
//!    length against [`MAX_PAYLOAD_LEN`] *before* allocating the payload. Its errors
//!    ([`FrameError`]) mean the byte stream can no longer be trusted.
//! 2. [`Message::decode`] gives the frame's payload a meaning. Its errors
//!    ([`DecodeError`]) concern one frame only; the stream stays in sync.

use std::fmt;
use std::io::{self, Read, Write};

use chrono::{Datelike, NaiveDate};

use crate::bet::{AgencyId, Bet};

/// The protocol version this crate speaks; the first byte of every frame.
pub const VERSION: u8 = 3;
/// Bytes in a frame header: version, kind, 2-byte payload length.
pub const HEADER_LEN: usize = 4;
/// The hard maximum size of a whole frame, header included (8 KiB).
pub const MAX_FRAME_LEN: usize = 8192;
/// The largest payload a frame can carry.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;
/// Payload bytes of a `BETS` frame before its first bet (`seq: u64`, `line: u64`,
/// `count: u16`).
pub const BETS_PREFIX_LEN: usize = 8 + 8 + 2;
/// Payload bytes of a `WINNERS` frame before its first document (`last: u8`, `count: u16`).
pub const WINNERS_PREFIX_LEN: usize = 1 + 2;
/// Payload bytes of a `STATUS` frame before its first entry (`last: u8`,
/// `agencies: u32`, `finished: u32`, `drawn: u8`, `count: u16`).
pub const STATUS_PREFIX_LEN: usize = 1 + 4 + 4 + 1 + 2;
/// Bytes of one agency entry in a `STATUS` payload (`agency: u32`, `flags: u8`,
/// `bets: u64`, `winners: u32`).
pub const STATUS_ENTRY_LEN: usize = 4 + 1 + 8 + 4;
/// The most agency entries one `STATUS` frame carries (480).
pub const STATUS_ENTRIES_PER_CHUNK: usize =
    (MAX_PAYLOAD_LEN - STATUS_PREFIX_LEN) / STATUS_ENTRY_LEN;
/// Bit 0 of a `STATUS` entry's flags: the agency has a connection bound right now.
pub const STATUS_FLAG_CONNECTED: u8 = 0x01;
/// Bit 1 of a `STATUS` entry's flags: the agency's `FIN` is recorded.
pub const STATUS_FLAG_FINISHED: u8 = 0x02;
/// Bit 2 of a `STATUS` entry's flags: the draw ran and `winners` is the agency's count.
pub const STATUS_FLAG_WINNERS: u8 = 0x04;
/// How often the server sends `DRAW_PENDING` to an agency waiting for the draw.
pub const PENDING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);
/// The smallest a bet can be on the wire (all strings empty); used to bound allocation.
const MIN_BET_LEN: usize = 2 + 2 + 1 + 4 + 2;

/// The `kind` byte of each message (the second byte of a frame).
pub mod kind {
    /// `HELLO`: binds the connection to an agency.
    pub const HELLO: u8 = 0x01;
    /// `BETS`: one batch of bets.
    pub const BETS: u8 = 0x02;
    /// `FIN`: the agency has sent all its bets.
    pub const FIN: u8 = 0x03;
    /// `WINNERS_QUERY`: asks for the agency's winners.
    pub const WINNERS_QUERY: u8 = 0x04;
    /// `ECHO`: answered with the identical frame.
    pub const ECHO: u8 = 0x05;
    /// `STATUS_QUERY`: asks for the collection's progress (with or without `HELLO`).
    pub const STATUS_QUERY: u8 = 0x06;
    /// `WELCOME`: the answer to `HELLO`.
    pub const WELCOME: u8 = 0x81;
    /// `BETS_ACK`: the batch is stored durably.
    pub const BETS_ACK: u8 = 0x82;
    /// `FIN_ACK`: the answer to `FIN`.
    pub const FIN_ACK: u8 = 0x83;
    /// `WINNERS`: one chunk of the agency's winners.
    pub const WINNERS: u8 = 0x84;
    /// `DRAW_PENDING`: the draw has not run yet; sent periodically to a waiting agency.
    pub const DRAW_PENDING: u8 = 0x85;
    /// `STATUS`: one chunk of the answer to `STATUS_QUERY`.
    pub const STATUS: u8 = 0x86;
    /// `ERROR`: a typed error reply.
    pub const ERROR: u8 = 0xFF;
}

/// The code of an `ERROR` reply (see the table in `docs/PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: the payload does not parse as its kind says.
    Malformed,
    /// 2: the kind is not a request the server knows.
    UnknownKind,
    /// 3: the version byte is not [`VERSION`].
    UnsupportedVersion,
    /// 4: the length is above [`MAX_PAYLOAD_LEN`].
    FrameTooLarge,
    /// 5: a request that needs `HELLO` came before it.
    NotIdentified,
    /// 6: `HELLO` named an agency outside `1..=N`.
    UnknownAgency,
    /// 7: `HELLO` named another agency on an already bound connection.
    AlreadyIdentified,
    /// 8: a bet broke a rule; nothing of its batch was stored.
    InvalidBet,
    /// 9: bets after this agency's `FIN`.
    AgencyFinished,
    /// 10: bets after the draw.
    DrawDone,
    /// 11: `WINNERS_QUERY` before this agency's `FIN`.
    NotFinished,
    /// 12: the peer was idle for too long.
    IdleTimeout,
    /// 13: the server has no room for another connection.
    ServerBusy,
    /// 14: the server is stopping.
    ShuttingDown,
    /// 15: the server failed (e.g. storage); nothing was stored. Worth retrying.
    Internal,
    /// 16: another connection of the same agency said `HELLO`; this one is closed.
    Superseded,
    /// 17: the agency already stored bets of another upload (another file).
    UploadConflict,
    /// 18: a batch that is neither the next one nor a replay of the last stored one.
    BadSeq,
    /// 19: an agency request (`HELLO`, `BETS`, `FIN`, `WINNERS_QUERY`) in the clear to
    /// a server that requires TLS.
    TlsRequired,
    /// 20: the TLS client certificate does not speak for the agency of the `HELLO`
    /// (another agency's, or none).
    NotAuthorized,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::UnknownKind => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::FrameTooLarge => 4,
            ErrorCode::NotIdentified => 5,
            ErrorCode::UnknownAgency => 6,
            ErrorCode::AlreadyIdentified => 7,
            ErrorCode::InvalidBet => 8,
            ErrorCode::AgencyFinished => 9,
            ErrorCode::DrawDone => 10,
            ErrorCode::NotFinished => 11,
            ErrorCode::IdleTimeout => 12,
            ErrorCode::ServerBusy => 13,
            ErrorCode::ShuttingDown => 14,
            ErrorCode::Internal => 15,
            ErrorCode::Superseded => 16,
            ErrorCode::UploadConflict => 17,
            ErrorCode::BadSeq => 18,
            ErrorCode::TlsRequired => 19,
            ErrorCode::NotAuthorized => 20,
            ErrorCode::Other(code) => code,
        }
    }

    /// The code with number `code`.
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnknownKind,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::FrameTooLarge,
            5 => ErrorCode::NotIdentified,
            6 => ErrorCode::UnknownAgency,
            7 => ErrorCode::AlreadyIdentified,
            8 => ErrorCode::InvalidBet,
            9 => ErrorCode::AgencyFinished,
            10 => ErrorCode::DrawDone,
            11 => ErrorCode::NotFinished,
            12 => ErrorCode::IdleTimeout,
            13 => ErrorCode::ServerBusy,
            14 => ErrorCode::ShuttingDown,
            15 => ErrorCode::Internal,
            16 => ErrorCode::Superseded,
            17 => ErrorCode::UploadConflict,
            18 => ErrorCode::BadSeq,
            19 => ErrorCode::TlsRequired,
            20 => ErrorCode::NotAuthorized,
            other => ErrorCode::Other(other),
        }
    }

    /// Whether the server closes the connection after sending this error.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::UnsupportedVersion
                | ErrorCode::FrameTooLarge
                | ErrorCode::IdleTimeout
                | ErrorCode::ServerBusy
                | ErrorCode::ShuttingDown
                | ErrorCode::Superseded
                | ErrorCode::TlsRequired
                | ErrorCode::NotAuthorized
        )
    }

    /// The code's name as `docs/PROTOCOL.md` writes it.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::UnknownKind => "UNKNOWN_KIND",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::NotIdentified => "NOT_IDENTIFIED",
            ErrorCode::UnknownAgency => "UNKNOWN_AGENCY",
            ErrorCode::AlreadyIdentified => "ALREADY_IDENTIFIED",
            ErrorCode::InvalidBet => "INVALID_BET",
            ErrorCode::AgencyFinished => "AGENCY_FINISHED",
            ErrorCode::DrawDone => "DRAW_DONE",
            ErrorCode::NotFinished => "NOT_FINISHED",
            ErrorCode::IdleTimeout => "IDLE_TIMEOUT",
            ErrorCode::ServerBusy => "SERVER_BUSY",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Superseded => "SUPERSEDED",
            ErrorCode::UploadConflict => "UPLOAD_CONFLICT",
            ErrorCode::BadSeq => "BAD_SEQ",
            ErrorCode::TlsRequired => "TLS_REQUIRED",
            ErrorCode::NotAuthorized => "NOT_AUTHORIZED",
            ErrorCode::Other(_) => "UNKNOWN_ERROR",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_u16())
    }
}

/// One message of the protocol, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Agency → server: bind this connection to `agency`.
    Hello {
        /// The agency's id, `1..=N`.
        agency: AgencyId,
        /// Identifies the agency's upload: a fingerprint of what it uploads (its
        /// file's content), so a restarted client with the same file resumes it.
        upload: u64,
    },
    /// Agency → server: one batch of bets, numbered `seq`.
    Bets {
        /// The batch's sequence number (1, 2, 3, … per agency).
        seq: u64,
        /// The 1-based line of the agency file that holds the batch's last bet (0 when
        /// the bets come from no file, e.g. a single bet): where a resumed upload goes
        /// on.
        line: u64,
        /// The bets, at least one.
        bets: Vec<Bet>,
    },
    /// Agency → server: every bet has been sent.
    Fin,
    /// Agency → server: send me my winners (held until the draw).
    WinnersQuery,
    /// Both ways: the reply repeats the request byte for byte.
    Echo(Vec<u8>),
    /// Anyone → server: how far is the collection? Answered with `STATUS` chunks; needs
    /// no `HELLO` and changes nothing.
    StatusQuery,
    /// Server → agency: the connection is bound to `agency`, and this is how far the
    /// agency's upload is durably stored.
    Welcome {
        /// The agency the connection is now bound to.
        agency: AgencyId,
        /// The upload the agency's stored bets belong to (the `HELLO`'s own upload
        /// when nothing is stored yet). Another value than the `HELLO`'s means the
        /// agency stored bets of another upload: its `BETS` get `UPLOAD_CONFLICT`.
        upload: u64,
        /// The `seq` of the last batch stored for that upload (0: none).
        stored_seq: u64,
        /// How many bets of the agency are stored.
        stored_bets: u64,
        /// The `line` of the last stored batch (0: none, or its bets came from no
        /// file): a resuming client goes on after this line of its file.
        stored_line: u64,
        /// Whether the agency's `FIN` is recorded.
        finished: bool,
        /// Whether the draw has run.
        drawn: bool,
    },
    /// Server → agency: batch `seq` is stored durably.
    BetsAck {
        /// The acknowledged batch.
        seq: u64,
        /// How many bets the batch had.
        count: u16,
    },
    /// Server → agency: the `FIN` is recorded.
    FinAck {
        /// How many distinct agencies have sent `FIN` so far.
        finished: u32,
        /// How many agencies the server waits for.
        agencies: u32,
    },
    /// Server → agency: one chunk of this agency's winners.
    Winners {
        /// Whether this is the final chunk.
        last: bool,
        /// Documents of winning bets.
        documents: Vec<String>,
    },
    /// Server → agency: the draw has not run yet (sent every [`PENDING_INTERVAL`] while
    /// the agency waits for its winners).
    DrawPending {
        /// How many distinct agencies have sent `FIN` so far.
        finished: u32,
        /// How many agencies the server waits for.
        agencies: u32,
    },
    /// Server → anyone: one chunk of the answer to `STATUS_QUERY`.
    Status(StatusChunk),
    /// Server → agency: a request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A human-readable explanation.
        reason: String,
    },
}

/// One chunk of a `STATUS` answer: the collection's totals and a run of agencies.
///
/// The chunks of one answer come from one snapshot: they repeat the same totals, and
/// their entries, concatenated, list every agency `1..=agencies` once, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChunk {
    /// Whether this is the answer's final chunk.
    pub last: bool,
    /// How many agencies the server waits for (N).
    pub agencies: u32,
    /// How many distinct agencies have sent `FIN`.
    pub finished: u32,
    /// Whether the draw has run.
    pub drawn: bool,
    /// This chunk's agencies, in increasing id order.
    pub entries: Vec<AgencyStatus>,
}

/// What a `STATUS` answer says about one agency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgencyStatus {
    /// The agency's id.
    pub agency: AgencyId,
    /// Whether a connection is bound to the agency right now.
    pub connected: bool,
    /// Whether the agency's `FIN` is recorded.
    pub finished: bool,
    /// How many of its bets are stored.
    pub bets: u64,
    /// How many of its bets won; `None` until the draw has run.
    pub winners: Option<u32>,
}

/// The whole collection's state at one moment: what a `STATUS` answer is cut from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// How many agencies the server waits for (N).
    pub agencies: u32,
    /// How many distinct agencies have sent `FIN`.
    pub finished: u32,
    /// Whether the draw has run.
    pub drawn: bool,
    /// Every agency `1..=agencies`, in order.
    pub entries: Vec<AgencyStatus>,
}

impl StatusSnapshot {
    /// Cuts the snapshot into `STATUS` chunks of at most [`STATUS_ENTRIES_PER_CHUNK`]
    /// entries (so each fits a frame); the last has `last = true`. A snapshot without
    /// entries gives one empty, final chunk.
    pub fn chunks(&self) -> Vec<StatusChunk> {
        let mut chunks: Vec<StatusChunk> = self
            .entries
            .chunks(STATUS_ENTRIES_PER_CHUNK)
            .map(|entries| StatusChunk {
                last: false,
                agencies: self.agencies,
                finished: self.finished,
                drawn: self.drawn,
                entries: entries.to_vec(),
            })
            .collect();
        match chunks.last_mut() {
            Some(chunk) => chunk.last = true,
            None => chunks.push(StatusChunk {
                last: true,
                agencies: self.agencies,
                finished: self.finished,
                drawn: self.drawn,
                entries: Vec::new(),
            }),
        }
        chunks
    }

    /// Puts the chunks of one answer back together; `None` (the answer breaks the
    /// protocol) unless `chunks` is exactly one whole answer, as [`StatusAssembler`]
    /// checks it.
    pub fn from_chunks(chunks: &[StatusChunk]) -> Option<StatusSnapshot> {
        let (final_chunk, rest) = chunks.split_last()?;
        let mut assembler = StatusAssembler::default();
        for chunk in rest {
            // A whole answer before the final chunk: more than one answer.
            if assembler.push(chunk.clone()).ok()?.is_some() {
                return None;
            }
        }
        assembler.push(final_chunk.clone()).ok()?
    }

    /// The agencies that have not sent `FIN` yet, in order.
    pub fn missing(&self) -> Vec<AgencyId> {
        self.entries
            .iter()
            .filter(|e| !e.finished)
            .map(|e| e.agency)
            .collect()
    }
}

/// Why a `STATUS` answer is refused: the text says which rule of `docs/PROTOCOL.md` it
/// breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusAnswerError(pub String);

impl fmt::Display for StatusAnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StatusAnswerError {}

/// Puts a `STATUS` answer back together chunk by chunk, checking each as it arrives, so
/// that a reader never holds more than one valid answer: every chunk repeats the first
/// one's totals, every chunk but the final one carries exactly
/// [`STATUS_ENTRIES_PER_CHUNK`] entries, the entries list `1..=agencies` once each in
/// increasing order, `finished` counts the finished entries, and winner counts are
/// there exactly when the draw has run.
#[derive(Debug, Default)]
pub struct StatusAssembler {
    /// The answer so far: the first chunk's totals and the entries received.
    answer: Option<StatusSnapshot>,
}

impl StatusAssembler {
    /// Takes the next chunk: `Ok(Some(snapshot))` once the final chunk completes the
    /// answer (the assembler is then empty again), `Ok(None)` while more must come.
    pub fn push(
        &mut self,
        chunk: StatusChunk,
    ) -> Result<Option<StatusSnapshot>, StatusAnswerError> {
        let bad = |text: String| Err(StatusAnswerError(text));
        let answer = self.answer.get_or_insert_with(|| StatusSnapshot {
            agencies: chunk.agencies,
            finished: chunk.finished,
            drawn: chunk.drawn,
            entries: Vec::new(),
        });
        if (answer.agencies, answer.finished, answer.drawn)
            != (chunk.agencies, chunk.finished, chunk.drawn)
        {
            return bad("STATUS chunks that disagree on the totals".into());
        }
        if !chunk.last && chunk.entries.len() != STATUS_ENTRIES_PER_CHUNK {
            return bad(format!(
                "a STATUS chunk before the last with {} entries (not {STATUS_ENTRIES_PER_CHUNK})",
                chunk.entries.len()
            ));
        }
        let agencies = u64::from(chunk.agencies);
        for entry in chunk.entries {
            let agency = u64::from(entry.agency);
            // The agency this entry must be: entries list 1..=agencies in order.
            let next = answer.entries.len() as u64 + 1;
            if agency > agencies {
                return bad(format!(
                    "an entry for agency {agency} of {agencies} (out of range)"
                ));
            }
            if agency != next {
                return bad(format!(
                    "an entry for agency {agency} where agency {next} belongs (out of order, \
                     repeated or one left out)"
                ));
            }
            answer.entries.push(entry);
        }
        if !chunk.last {
            return Ok(None);
        }
        let received = answer.entries.len() as u64;
        if received != agencies {
            return bad(format!(
                "an answer that ends after agency {received} of {agencies} (agencies left out)"
            ));
        }
        let finished = answer.entries.iter().filter(|e| e.finished).count();
        if finished as u64 != u64::from(answer.finished) {
            return bad(format!(
                "finished: {} but {finished} agency entries finished",
                answer.finished
            ));
        }
        if let Some(e) = answer
            .entries
            .iter()
            .find(|e| e.winners.is_some() != answer.drawn)
        {
            let which = if answer.drawn {
                "no winner count after the draw"
            } else {
                "a winner count before the draw"
            };
            return bad(format!("agency {} with {which}", e.agency));
        }
        Ok(self.answer.take())
    }
}

/// A raw frame: a kind and an undecoded payload of at most [`MAX_PAYLOAD_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The kind byte.
    pub kind: u8,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// Reading a frame failed; the stream cannot be trusted any more.
#[derive(Debug)]
pub enum FrameError {
    /// The version byte was not [`VERSION`].
    UnsupportedVersion(u8),
    /// The announced payload length is above [`MAX_PAYLOAD_LEN`].
    TooLarge(usize),
    /// The stream ended inside a frame, after `got` of `expected` bytes.
    Truncated {
        /// Bytes the frame needed (header, or header and payload).
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The underlying reader failed (this includes read timeouts).
    Io(io::Error),
}

impl FrameError {
    /// Whether this is a read timeout (the peer sent nothing for too long).
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    /// The error code the server answers this error with, if it answers at all.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            FrameError::UnsupportedVersion(_) => Some(ErrorCode::UnsupportedVersion),
            FrameError::TooLarge(_) => Some(ErrorCode::FrameTooLarge),
            FrameError::Truncated { .. } | FrameError::Io(_) => None,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnsupportedVersion(v) => {
                write!(f, "unsupported protocol version {v} (expected {VERSION})")
            }
            FrameError::TooLarge(len) => write!(
                f,
                "frame payload of {len} bytes exceeds the maximum of {MAX_PAYLOAD_LEN}"
            ),
            FrameError::Truncated { expected, got } => write!(
                f,
                "connection closed inside a frame ({got} of {expected} bytes received)"
            ),
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// A frame could not be given a meaning; the stream itself is still in sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The kind byte is not a known message.
    UnknownKind(u8),
    /// The payload does not match its kind's layout.
    Malformed {
        /// The message being decoded.
        message: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Bet `index` (1-based) of a batch has a date that does not exist.
    InvalidDate {
        /// The bet's position in its batch, from 1.
        index: usize,
        /// Year as sent.
        year: u16,
        /// Month as sent.
        month: u8,
        /// Day as sent.
        day: u8,
    },
}

impl DecodeError {
    /// The error code the server answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownKind(_) => ErrorCode::UnknownKind,
            DecodeError::Malformed { .. } => ErrorCode::Malformed,
            DecodeError::InvalidDate { .. } => ErrorCode::InvalidBet,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind 0x{k:02x}"),
            DecodeError::Malformed { message, detail } => {
                write!(f, "malformed {message}: {detail}")
            }
            DecodeError::InvalidDate {
                index,
                year,
                month,
                day,
            } => write!(
                f,
                "bet {index}: birthdate {year:04}-{month:02}-{day:02} is not a calendar date"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A message cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded frame would be larger than [`MAX_FRAME_LEN`].
    FrameTooLarge(usize),
    /// A field does not fit its wire width.
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length or value.
        len: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::FrameTooLarge(len) => write!(
                f,
                "encoded frame of {len} bytes exceeds the maximum of {MAX_FRAME_LEN}"
            ),
            EncodeError::FieldTooLong { field, len } => {
                write!(f, "{field} ({len}) does not fit its wire field")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// Reads one frame. `Ok(None)` means the stream ended cleanly between two frames.
///
/// The length is checked before the payload is allocated, and the payload is read with
/// `read_exact`: either the whole frame arrives or this fails.
pub fn read_frame<R: Read>(reader: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    expected: HEADER_LEN,
                    got,
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    if header[0] != VERSION {
        return Err(FrameError::UnsupportedVersion(header[0]));
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if len > MAX_PAYLOAD_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match reader.read(&mut payload[filled..]) {
            Ok(0) => {
                return Err(FrameError::Truncated {
                    expected: HEADER_LEN + len,
                    got: HEADER_LEN + filled,
                });
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(Some(Frame {
        kind: header[1],
        payload,
    }))
}

impl Frame {
    /// Gives the frame its meaning.
    pub fn decode(&self) -> Result<Message, DecodeError> {
        Message::decode(self.kind, &self.payload)
    }

    /// The frame's bytes, header included (used to echo a frame back unchanged).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.push(VERSION);
        out.push(self.kind);
        // Invariant: a Frame's payload is at most MAX_PAYLOAD_LEN (< u16::MAX) bytes,
        // both when read by `read_frame` and when built by `Message::encode`.
        out.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

impl Message {
    /// The kind byte this message travels with.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => kind::HELLO,
            Message::Bets { .. } => kind::BETS,
            Message::Fin => kind::FIN,
            Message::WinnersQuery => kind::WINNERS_QUERY,
            Message::Echo(_) => kind::ECHO,
            Message::StatusQuery => kind::STATUS_QUERY,
            Message::Welcome { .. } => kind::WELCOME,
            Message::BetsAck { .. } => kind::BETS_ACK,
            Message::FinAck { .. } => kind::FIN_ACK,
            Message::Winners { .. } => kind::WINNERS,
            Message::DrawPending { .. } => kind::DRAW_PENDING,
            Message::Status(_) => kind::STATUS,
            Message::Error { .. } => kind::ERROR,
        }
    }

    /// Appends the whole frame (header and payload) to `out`.
    ///
    /// On error `out` is left as it was.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_frame(self.kind(), out, |out| self.encode_payload(out))
    }

    /// The whole frame as a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Message::Hello { agency, upload } => {
                out.extend_from_slice(&agency.to_be_bytes());
                out.extend_from_slice(&upload.to_be_bytes());
            }
            Message::Welcome {
                agency,
                upload,
                stored_seq,
                stored_bets,
                stored_line,
                finished,
                drawn,
            } => {
                out.extend_from_slice(&agency.to_be_bytes());
                out.extend_from_slice(&upload.to_be_bytes());
                out.extend_from_slice(&stored_seq.to_be_bytes());
                out.extend_from_slice(&stored_bets.to_be_bytes());
                out.extend_from_slice(&stored_line.to_be_bytes());
                out.push(u8::from(*finished));
                out.push(u8::from(*drawn));
            }
            Message::Bets { seq, line, bets } => encode_bets_payload(*seq, *line, bets, out)?,
            Message::Fin | Message::WinnersQuery | Message::StatusQuery => {}
            Message::Echo(bytes) => out.extend_from_slice(bytes),
            Message::BetsAck { seq, count } => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Message::FinAck { finished, agencies }
            | Message::DrawPending { finished, agencies } => {
                out.extend_from_slice(&finished.to_be_bytes());
                out.extend_from_slice(&agencies.to_be_bytes());
            }
            Message::Status(chunk) => encode_status(chunk, out)?,
            Message::Winners { last, documents } => {
                out.push(u8::from(*last));
                let count =
                    u16::try_from(documents.len()).map_err(|_| EncodeError::FieldTooLong {
                        field: "winner count",
                        len: documents.len(),
                    })?;
                out.extend_from_slice(&count.to_be_bytes());
                for doc in documents {
                    put_str8(out, "document", doc)?;
                }
            }
            Message::Error { code, reason } => {
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                put_str16(out, "reason", reason)?;
            }
        }
        Ok(())
    }

    /// Decodes the payload of a frame of kind `kind`.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Message, DecodeError> {
        let name = kind_name(kind).ok_or(DecodeError::UnknownKind(kind))?;
        let mut r = PayloadReader {
            buf: payload,
            message: name,
        };
        let message = match kind {
            kind::HELLO => Message::Hello {
                agency: r.u32()?,
                upload: r.u64()?,
            },
            kind::WELCOME => Message::Welcome {
                agency: r.u32()?,
                upload: r.u64()?,
                stored_seq: r.u64()?,
                stored_bets: r.u64()?,
                stored_line: r.u64()?,
                finished: r.flag("finished")?,
                drawn: r.flag("drawn")?,
            },
            kind::BETS => {
                let mut bets = Vec::new();
                let (seq, line) = decode_bets(&mut r, &mut bets)?;
                Message::Bets { seq, line, bets }
            }
            kind::FIN => Message::Fin,
            kind::WINNERS_QUERY => Message::WinnersQuery,
            kind::STATUS_QUERY => Message::StatusQuery,
            kind::ECHO => Message::Echo(r.rest().to_vec()),
            kind::BETS_ACK => Message::BetsAck {
                seq: r.u64()?,
                count: r.u16()?,
            },
            kind::FIN_ACK => Message::FinAck {
                finished: r.u32()?,
                agencies: r.u32()?,
            },
            kind::WINNERS => {
                let last = r.flag("last")?;
                let count = usize::from(r.u16()?);
                let mut documents = Vec::with_capacity(count.min(payload.len()));
                for _ in 0..count {
                    documents.push(r.str8("document")?);
                }
                Message::Winners { last, documents }
            }
            kind::DRAW_PENDING => Message::DrawPending {
                finished: r.u32()?,
                agencies: r.u32()?,
            },
            kind::STATUS => Message::Status(decode_status(&mut r)?),
            kind::ERROR => Message::Error {
                code: ErrorCode::from_u16(r.u16()?),
                reason: r.str16("reason")?,
            },
            // kind_name() returned Some, so `kind` is one of the arms above.
            _ => return Err(DecodeError::UnknownKind(kind)),
        };
        if !r.buf.is_empty() {
            return Err(r.malformed(format!("{} unexpected trailing bytes", r.buf.len())));
        }
        Ok(message)
    }

    /// Splits `documents` into as few `WINNERS` messages as the frame limit allows; the
    /// last one has `last = true` (a single empty one when there are no documents).
    pub fn winners_chunks(documents: &[String]) -> Vec<Message> {
        let mut chunks = Vec::new();
        let mut current = Vec::new();
        let mut size = HEADER_LEN + WINNERS_PREFIX_LEN;
        for doc in documents {
            let doc_len = 1 + doc.len();
            if !current.is_empty() && size + doc_len > MAX_FRAME_LEN {
                chunks.push(Message::Winners {
                    last: false,
                    documents: std::mem::take(&mut current),
                });
                size = HEADER_LEN + WINNERS_PREFIX_LEN;
            }
            size += doc_len;
            current.push(doc.clone());
        }
        chunks.push(Message::Winners {
            last: true,
            documents: current,
        });
        chunks
    }
}

/// Encodes `message` and writes the whole frame with `write_all`.
pub fn write_message<W: Write>(writer: &mut W, message: &Message) -> io::Result<()> {
    let bytes = message
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    writer.write_all(&bytes)
}

/// Appends a frame of `kind` whose payload `payload` writes to `out`; on error `out` is
/// left as it was.
fn encode_frame(
    kind: u8,
    out: &mut Vec<u8>,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[VERSION, kind, 0, 0]);
    let result = payload(out);
    let len = out.len() - start;
    let result = if len > MAX_FRAME_LEN {
        result.and(Err(EncodeError::FrameTooLarge(len)))
    } else {
        result
    };
    match result {
        Ok(()) => {
            // Checked just above: payload_len <= MAX_PAYLOAD_LEN < u16::MAX.
            let payload_len = (len - HEADER_LEN) as u16;
            out[start + 2..start + 4].copy_from_slice(&payload_len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Appends the `BETS` frame of batch `seq` (last bet on file line `line`) holding
/// `bets`: the bytes `Message::Bets { seq, line, bets }.encode_into(out)` appends,
/// without the message owning the bets (a sender can keep and refill its batch's
/// `Vec`). On error `out` is left as it was.
pub fn encode_bets_into(
    seq: u64,
    line: u64,
    bets: &[Bet],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_frame(kind::BETS, out, |out| {
        encode_bets_payload(seq, line, bets, out)
    })
}

/// Decodes the payload of a `BETS` frame into `bets` and returns its `seq` and
/// `line`: what `Message::decode(kind::BETS, payload)` gives, with the errors it gives,
/// but reusing `bets`' elements and their `String`s' capacity (a receiver that keeps
/// the `Vec` decodes batch after batch without allocating). On success `bets` holds
/// exactly the batch; on error it holds some valid bets of no meaning.
pub fn decode_bets_into(payload: &[u8], bets: &mut Vec<Bet>) -> Result<(u64, u64), DecodeError> {
    let mut r = PayloadReader {
        buf: payload,
        message: "BETS",
    };
    let seq_line = decode_bets(&mut r, bets)?;
    if !r.buf.is_empty() {
        return Err(r.malformed(format!("{} unexpected trailing bytes", r.buf.len())));
    }
    Ok(seq_line)
}

fn encode_bets_payload(
    seq: u64,
    line: u64,
    bets: &[Bet],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&line.to_be_bytes());
    let count = u16::try_from(bets.len()).map_err(|_| EncodeError::FieldTooLong {
        field: "bet count",
        len: bets.len(),
    })?;
    out.extend_from_slice(&count.to_be_bytes());
    for bet in bets {
        encode_bet(bet, out)?;
    }
    Ok(())
}

/// The batch of a `BETS` payload into `bets` (reusing its elements), up to the end of
/// the bets: the caller checks that nothing trails them.
fn decode_bets(r: &mut PayloadReader<'_>, bets: &mut Vec<Bet>) -> Result<(u64, u64), DecodeError> {
    let seq = r.u64()?;
    let line = r.u64()?;
    let count = usize::from(r.u16()?);
    if count == 0 {
        return Err(r.malformed("a batch needs at least one bet".into()));
    }
    // Bounded by what the payload can hold, not by what the peer claims.
    bets.reserve(
        count
            .min(r.buf.len() / MIN_BET_LEN)
            .saturating_sub(bets.len()),
    );
    for index in 1..=count {
        match bets.get_mut(index - 1) {
            Some(bet) => decode_bet_into(r, index, bet)?,
            None => bets.push(decode_bet(r, index)?),
        }
    }
    bets.truncate(count);
    Ok((seq, line))
}

/// The bytes `bet` takes inside a `BETS` payload.
pub fn bet_wire_len(bet: &Bet) -> usize {
    2 + bet.first_name.len() + 2 + bet.last_name.len() + 1 + bet.document.len() + 4 + 2
}

/// The size of a `BETS` frame holding bets of `bets_len` wire bytes in total.
pub fn bets_frame_len(bets_len: usize) -> usize {
    HEADER_LEN + BETS_PREFIX_LEN + bets_len
}

fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        kind::HELLO => "HELLO",
        kind::BETS => "BETS",
        kind::FIN => "FIN",
        kind::WINNERS_QUERY => "WINNERS_QUERY",
        kind::ECHO => "ECHO",
        kind::WELCOME => "WELCOME",
        kind::BETS_ACK => "BETS_ACK",
        kind::FIN_ACK => "FIN_ACK",
        kind::WINNERS => "WINNERS",
        kind::STATUS_QUERY => "STATUS_QUERY",
        kind::DRAW_PENDING => "DRAW_PENDING",
        kind::STATUS => "STATUS",
        kind::ERROR => "ERROR",
        _ => return None,
    })
}

fn encode_status(chunk: &StatusChunk, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(u8::from(chunk.last));
    out.extend_from_slice(&chunk.agencies.to_be_bytes());
    out.extend_from_slice(&chunk.finished.to_be_bytes());
    out.push(u8::from(chunk.drawn));
    let count = u16::try_from(chunk.entries.len()).map_err(|_| EncodeError::FieldTooLong {
        field: "status entry count",
        len: chunk.entries.len(),
    })?;
    out.extend_from_slice(&count.to_be_bytes());
    for entry in &chunk.entries {
        out.extend_from_slice(&entry.agency.to_be_bytes());
        let mut flags = 0u8;
        if entry.connected {
            flags |= STATUS_FLAG_CONNECTED;
        }
        if entry.finished {
            flags |= STATUS_FLAG_FINISHED;
        }
        if entry.winners.is_some() {
            flags |= STATUS_FLAG_WINNERS;
        }
        out.push(flags);
        out.extend_from_slice(&entry.bets.to_be_bytes());
        out.extend_from_slice(&entry.winners.unwrap_or(0).to_be_bytes());
    }
    Ok(())
}

fn decode_status(r: &mut PayloadReader<'_>) -> Result<StatusChunk, DecodeError> {
    let last = r.flag("last")?;
    let agencies = r.u32()?;
    let finished = r.u32()?;
    let drawn = r.flag("drawn")?;
    let count = usize::from(r.u16()?);
    let needed = count * STATUS_ENTRY_LEN;
    if r.buf.len() != needed {
        return Err(r.malformed(format!(
            "{count} entries need {needed} bytes, {} left",
            r.buf.len()
        )));
    }
    let known = STATUS_FLAG_CONNECTED | STATUS_FLAG_FINISHED | STATUS_FLAG_WINNERS;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let agency = r.u32()?;
        let flags = r.u8()?;
        if flags & !known != 0 {
            return Err(r.malformed(format!(
                "agency {agency}: unknown flag bits 0x{:02x}",
                flags & !known
            )));
        }
        let bets = r.u64()?;
        let winners = r.u32()?;
        let winners = if flags & STATUS_FLAG_WINNERS != 0 {
            Some(winners)
        } else if winners != 0 {
            return Err(r.malformed(format!(
                "agency {agency}: {winners} winners without the winners-known flag"
            )));
        } else {
            None
        };
        entries.push(AgencyStatus {
            agency,
            connected: flags & STATUS_FLAG_CONNECTED != 0,
            finished: flags & STATUS_FLAG_FINISHED != 0,
            bets,
            winners,
        });
    }
    Ok(StatusChunk {
        last,
        agencies,
        finished,
        drawn,
        entries,
    })
}

fn encode_bet(bet: &Bet, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    put_str16(out, "first_name", &bet.first_name)?;
    put_str16(out, "last_name", &bet.last_name)?;
    put_str8(out, "document", &bet.document)?;
    let year = u16::try_from(bet.birthdate.year()).map_err(|_| EncodeError::FieldTooLong {
        field: "birth year",
        len: usize::try_from(bet.birthdate.year()).unwrap_or(0),
    })?;
    out.extend_from_slice(&year.to_be_bytes());
    // chrono guarantees month in 1..=12 and day in 1..=31: both fit a u8.
    out.push(bet.birthdate.month() as u8);
    out.push(bet.birthdate.day() as u8);
    out.extend_from_slice(&bet.number.to_be_bytes());
    Ok(())
}

fn decode_bet(r: &mut PayloadReader<'_>, index: usize) -> Result<Bet, DecodeError> {
    let first_name = r.str16("first_name")?;
    let last_name = r.str16("last_name")?;
    let document = r.str8("document")?;
    let year = r.u16()?;
    let month = r.u8()?;
    let day = r.u8()?;
    let number = r.u16()?;
    let birthdate = NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))
        .ok_or(DecodeError::InvalidDate {
            index,
            year,
            month,
            day,
        })?;
    Ok(Bet {
        first_name,
        last_name,
        document,
        birthdate,
        number,
    })
}

/// Decodes bet `index` into `bet`, reusing its `String`s.
fn decode_bet_into(
    r: &mut PayloadReader<'_>,
    index: usize,
    bet: &mut Bet,
) -> Result<(), DecodeError> {
    r.str16_into("first_name", &mut bet.first_name)?;
    r.str16_into("last_name", &mut bet.last_name)?;
    r.str8_into("document", &mut bet.document)?;
    let year = r.u16()?;
    let month = r.u8()?;
    let day = r.u8()?;
    bet.number = r.u16()?;
    bet.birthdate = NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))
        .ok_or(DecodeError::InvalidDate {
            index,
            year,
            month,
            day,
        })?;
    Ok(())
}

fn put_str8(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), EncodeError> {
    let len = u8::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong {
        field,
        len: s.len(),
    })?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong {
        field,
        len: s.len(),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A cursor over a payload; every read is bounds-checked.
struct PayloadReader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> PayloadReader<'a> {
    /// `n` bytes for `what` are not there.
    #[cold]
    fn short(&self, n: usize, what: &str) -> DecodeError {
        self.malformed(format!("{what} needs {n} bytes, {} left", self.buf.len()))
    }

    #[cold]
    fn not_utf8(&self, field: &str) -> DecodeError {
        self.malformed(format!("{field} is not valid UTF-8"))
    }

    #[cold]
    fn malformed(&self, detail: String) -> DecodeError {
        DecodeError::Malformed {
            message: self.message,
            detail,
        }
    }

    #[inline]
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.short(n, what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, what)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>("u8")?[0])
    }

    /// A `u8` that must be 0 (`false`) or 1 (`true`).
    fn flag(&mut self, name: &str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.malformed(format!("{name} flag is {other}, not 0 or 1"))),
        }
    }

    #[inline]
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array("u16")?))
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array("u32")?))
    }

    #[inline]
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array("u64")?))
    }

    #[inline]
    fn utf8(&mut self, len: usize, field: &str) -> Result<String, DecodeError> {
        self.text(len, field).map(String::from)
    }

    /// The next `len` bytes as text, borrowed from the payload (checked once).
    #[inline]
    fn text(&mut self, len: usize, field: &str) -> Result<&'a str, DecodeError> {
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| self.not_utf8(field))
    }

    /// The next `len` bytes as text into `into`, reusing its capacity.
    #[inline]
    fn text_into(&mut self, len: usize, field: &str, into: &mut String) -> Result<(), DecodeError> {
        let text = self.text(len, field)?;
        into.clear();
        into.push_str(text);
        Ok(())
    }

    /// A `str8` into `into`, reusing its capacity.
    #[inline]
    fn str8_into(&mut self, field: &str, into: &mut String) -> Result<(), DecodeError> {
        let len = usize::from(self.u8()?);
        self.text_into(len, field, into)
    }

    /// A `str16` into `into`, reusing its capacity.
    #[inline]
    fn str16_into(&mut self, field: &str, into: &mut String) -> Result<(), DecodeError> {
        let len = usize::from(self.u16()?);
        self.text_into(len, field, into)
    }

    #[inline]
    fn str8(&mut self, field: &str) -> Result<String, DecodeError> {
        let len = usize::from(self.u8()?);
        self.utf8(len, field)
    }

    #[inline]
    fn str16(&mut self, field: &str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        self.utf8(len, field)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn bet(first: &str, doc: &str, number: u16) -> Bet {
        Bet {
            first_name: first.into(),
            last_name: "Núñez".into(),
            document: doc.into(),
            birthdate: NaiveDate::from_ymd_opt(1999, 3, 17).expect("valid date"),
            number,
        }
    }

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello {
                agency: 3,
                upload: 0x0102_0304_0506_0708,
            },
            Message::Hello {
                agency: u32::MAX,
                upload: u64::MAX,
            },
            Message::Bets {
                seq: 1,
                line: 0,
                bets: vec![bet("Ana", "30904465", 7574)],
            },
            Message::Bets {
                seq: u64::MAX,
                line: u64::MAX,
                bets: vec![bet("José María", "00000000", 0), bet("Zoë", "1", 9999)],
            },
            Message::Fin,
            Message::WinnersQuery,
            Message::Echo(b"[CLIENT 1] Message N\xc2\xb01".to_vec()),
            Message::Echo(Vec::new()),
            Message::Echo(vec![0xff; MAX_PAYLOAD_LEN]),
            Message::Welcome {
                agency: 3,
                upload: 0x0102_0304_0506_0708,
                stored_seq: 2,
                stored_bets: 150,
                stored_line: 151,
                finished: false,
                drawn: false,
            },
            Message::Welcome {
                agency: u32::MAX,
                upload: u64::MAX,
                stored_seq: u64::MAX,
                stored_bets: u64::MAX,
                stored_line: u64::MAX,
                finished: true,
                drawn: true,
            },
            Message::BetsAck { seq: 7, count: 100 },
            Message::FinAck {
                finished: 2,
                agencies: 5,
            },
            Message::Winners {
                last: true,
                documents: vec!["30904465".into(), "00000000".into()],
            },
            Message::Winners {
                last: false,
                documents: Vec::new(),
            },
            Message::Error {
                code: ErrorCode::InvalidBet,
                reason: "bet 1: number 12000 is not in 0..=9999".into(),
            },
            Message::Error {
                code: ErrorCode::Other(999),
                reason: String::new(),
            },
            Message::StatusQuery,
            Message::DrawPending {
                finished: 3,
                agencies: 5,
            },
            Message::Status(example_status()),
            Message::Status(StatusChunk {
                last: false,
                agencies: u32::MAX,
                finished: u32::MAX,
                drawn: false,
                entries: Vec::new(),
            }),
            Message::Status(StatusChunk {
                last: true,
                agencies: 1000,
                finished: 1000,
                drawn: true,
                entries: (1..=STATUS_ENTRIES_PER_CHUNK as u32)
                    .map(|agency| AgencyStatus {
                        agency,
                        connected: agency % 2 == 0,
                        finished: true,
                        bets: u64::MAX - u64::from(agency),
                        winners: Some(u32::MAX - agency),
                    })
                    .collect(),
            }),
        ]
    }

    /// The `STATUS` chunk of the worked example in `docs/PROTOCOL.md` (also the status
    /// page's test lottery).
    pub(crate) fn example_status() -> StatusChunk {
        StatusChunk {
            last: true,
            agencies: 2,
            finished: 1,
            drawn: false,
            entries: vec![
                AgencyStatus {
                    agency: 1,
                    connected: true,
                    finished: true,
                    bets: 150,
                    winners: None,
                },
                AgencyStatus {
                    agency: 2,
                    connected: false,
                    finished: false,
                    bets: 0,
                    winners: None,
                },
            ],
        }
    }

    fn read_all(mut bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        read_frame(&mut bytes)
    }

    #[test]
    fn wire_constants_are_pinned() {
        assert_eq!(VERSION, 3);
        assert_eq!(HEADER_LEN, 4);
        assert_eq!(MAX_FRAME_LEN, 8192);
        assert_eq!(MAX_PAYLOAD_LEN, 8188);
        let kinds = [
            (kind::HELLO, 0x01),
            (kind::BETS, 0x02),
            (kind::FIN, 0x03),
            (kind::WINNERS_QUERY, 0x04),
            (kind::ECHO, 0x05),
            (kind::STATUS_QUERY, 0x06),
            (kind::WELCOME, 0x81),
            (kind::BETS_ACK, 0x82),
            (kind::FIN_ACK, 0x83),
            (kind::WINNERS, 0x84),
            (kind::DRAW_PENDING, 0x85),
            (kind::STATUS, 0x86),
            (kind::ERROR, 0xFF),
        ];
        for (actual, expected) in kinds {
            assert_eq!(actual, expected);
        }
        for code in 1..=20u16 {
            let known = ErrorCode::from_u16(code);
            assert_ne!(known, ErrorCode::Other(code), "code {code} is named");
            assert_eq!(known.to_u16(), code);
        }
        assert_eq!(ErrorCode::InvalidBet.to_u16(), 8);
        assert_eq!(ErrorCode::Internal.to_u16(), 15);
        assert_eq!(ErrorCode::Superseded.to_u16(), 16);
        assert_eq!(ErrorCode::UploadConflict.to_u16(), 17);
        assert_eq!(ErrorCode::BadSeq.to_u16(), 18);
        assert_eq!(ErrorCode::TlsRequired.to_u16(), 19);
        assert_eq!(ErrorCode::NotAuthorized.to_u16(), 20);
        assert_eq!(ErrorCode::from_u16(21), ErrorCode::Other(21));
        assert_eq!(STATUS_PREFIX_LEN, 12);
        assert_eq!(STATUS_ENTRY_LEN, 17);
        assert_eq!(STATUS_ENTRIES_PER_CHUNK, 480);
        assert_eq!(PENDING_INTERVAL, std::time::Duration::from_secs(3));
    }

    #[test]
    fn worked_examples_match_the_protocol_document() {
        let hex = |m: &Message| {
            m.encode()
                .expect("encodes")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            hex(&Message::Hello {
                agency: 3,
                upload: 0x0102_0304_0506_0708
            }),
            "03 01 00 0c 00 00 00 03 01 02 03 04 05 06 07 08"
        );
        assert_eq!(
            hex(&Message::Welcome {
                agency: 3,
                upload: 0x0102_0304_0506_0708,
                stored_seq: 2,
                stored_bets: 150,
                stored_line: 151,
                finished: false,
                drawn: false,
            }),
            "03 81 00 26 00 00 00 03 01 02 03 04 05 06 07 08 00 00 00 00 00 00 00 02 \
             00 00 00 00 00 00 00 96 00 00 00 00 00 00 00 97 00 00"
        );
        let ana = Bet {
            first_name: "Ana".into(),
            ..bet("Ana", "30904465", 7574)
        };
        assert_eq!(
            hex(&Message::Bets {
                seq: 1,
                line: 1,
                bets: vec![ana]
            }),
            "03 02 00 2f 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 00 01 00 03 41 6e 61 00 07 4e c3 ba c3 b1 65 7a \
             08 33 30 39 30 34 34 36 35 07 cf 03 11 1d 96"
        );
        assert_eq!(
            hex(&Message::BetsAck { seq: 1, count: 1 }),
            "03 82 00 0a 00 00 00 00 00 00 00 01 00 01"
        );
        assert_eq!(hex(&Message::Fin), "03 03 00 00");
        assert_eq!(
            hex(&Message::FinAck {
                finished: 2,
                agencies: 5
            }),
            "03 83 00 08 00 00 00 02 00 00 00 05"
        );
        assert_eq!(hex(&Message::WinnersQuery), "03 04 00 00");
        assert_eq!(
            hex(&Message::Winners {
                last: true,
                documents: vec!["30904465".into(), "00000000".into()]
            }),
            "03 84 00 15 01 00 02 08 33 30 39 30 34 34 36 35 08 30 30 30 30 30 30 30 30"
        );
        assert_eq!(
            hex(&Message::Echo(b"hello".to_vec())),
            "03 05 00 05 68 65 6c 6c 6f"
        );
        assert_eq!(hex(&Message::StatusQuery), "03 06 00 00");
        assert_eq!(
            hex(&Message::DrawPending {
                finished: 3,
                agencies: 5
            }),
            "03 85 00 08 00 00 00 03 00 00 00 05"
        );
        assert_eq!(
            hex(&Message::Status(example_status())),
            "03 86 00 2e 01 00 00 00 02 00 00 00 01 00 00 02 \
             00 00 00 01 03 00 00 00 00 00 00 00 96 00 00 00 00 \
             00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 00 00"
        );
        let drawn = StatusChunk {
            last: true,
            agencies: 1,
            finished: 1,
            drawn: true,
            entries: vec![AgencyStatus {
                agency: 1,
                connected: false,
                finished: true,
                bets: 150,
                winners: Some(2),
            }],
        };
        assert_eq!(
            hex(&Message::Status(drawn)),
            "03 86 00 1d 01 00 00 00 01 00 00 00 01 01 00 01 \
             00 00 00 01 06 00 00 00 00 00 00 00 96 00 00 00 02"
        );
        assert!(
            hex(&Message::Error {
                code: ErrorCode::InvalidBet,
                reason: "bet 1: number 12000 is not in 0..=9999".into()
            })
            .starts_with("03 ff 00 2a 00 08 00 26 62 65 74")
        );
    }

    #[test]
    fn every_message_round_trips() {
        for message in all_messages() {
            let bytes = message.encode().expect("encodes");
            assert!(bytes.len() <= MAX_FRAME_LEN);
            let frame = read_all(&bytes).expect("reads").expect("one frame");
            assert_eq!(frame.to_bytes(), bytes, "frame bytes survive");
            assert_eq!(frame.decode().expect("decodes"), message);
        }
    }

    #[test]
    fn every_frame_cut_at_every_offset_is_truncated() {
        for message in all_messages() {
            let bytes = message.encode().expect("encodes");
            assert!(
                matches!(read_all(&[]), Ok(None)),
                "empty input is a clean end"
            );
            for cut in 1..bytes.len() {
                match read_all(&bytes[..cut]) {
                    Err(FrameError::Truncated { got, .. }) => assert_eq!(got, cut),
                    other => panic!("{message:?} cut at {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn every_payload_cut_short_is_malformed() {
        for message in all_messages() {
            let bytes = message.encode().expect("encodes");
            let payload = &bytes[HEADER_LEN..];
            for cut in 0..payload.len() {
                if let Ok(decoded) = Message::decode(message.kind(), &payload[..cut]) {
                    // Only ECHO carries free-form bytes: any prefix of it is an ECHO too.
                    assert_eq!(message.kind(), kind::ECHO, "{decoded:?} decoded from a cut");
                }
            }
        }
    }

    #[test]
    fn two_frames_back_to_back_read_one_at_a_time() {
        let mut bytes = Message::Fin.encode().expect("encodes");
        Message::Hello {
            agency: 1,
            upload: 9,
        }
        .encode_into(&mut bytes)
        .expect("encodes");
        let mut reader = &bytes[..];
        let first = read_frame(&mut reader).expect("ok").expect("frame");
        let second = read_frame(&mut reader).expect("ok").expect("frame");
        assert_eq!(first.decode(), Ok(Message::Fin));
        assert_eq!(
            second.decode(),
            Ok(Message::Hello {
                agency: 1,
                upload: 9
            })
        );
        assert!(read_frame(&mut reader).expect("ok").is_none());
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_payload() {
        let bytes = [VERSION, kind::BETS, 0xff, 0xff];
        assert!(matches!(read_all(&bytes), Err(FrameError::TooLarge(65535))));
        let bytes = [VERSION, kind::ECHO, 0x1f, 0xfd]; // 8189
        assert!(matches!(read_all(&bytes), Err(FrameError::TooLarge(8189))));
    }

    #[test]
    fn wrong_version_is_refused() {
        assert!(matches!(
            read_all(b"hello\n"),
            Err(FrameError::UnsupportedVersion(b'h'))
        ));
    }

    #[test]
    fn bad_payloads_are_malformed_not_panics() {
        assert_eq!(
            Message::decode(0x42, &[]),
            Err(DecodeError::UnknownKind(0x42))
        );
        assert!(matches!(
            Message::decode(kind::HELLO, &[0, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9, 9]),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            Message::decode(kind::WINNERS, &[2, 0, 0]),
            Err(DecodeError::Malformed { .. })
        ));
        // A batch that claims 65535 bets but holds none.
        let mut payload = 1u64.to_be_bytes().to_vec();
        payload.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            Message::decode(kind::BETS, &payload),
            Err(DecodeError::Malformed { .. })
        ));
        // An empty batch.
        let mut payload = 1u64.to_be_bytes().to_vec();
        payload.extend_from_slice(&1u64.to_be_bytes());
        payload.extend_from_slice(&0u16.to_be_bytes());
        assert!(matches!(
            Message::decode(kind::BETS, &payload),
            Err(DecodeError::Malformed { .. })
        ));
        // Invalid UTF-8 in a name.
        let mut bytes = Message::Bets {
            seq: 1,
            line: 0,
            bets: vec![bet("Ana", "1", 1)],
        }
        .encode()
        .expect("encodes");
        bytes[HEADER_LEN + BETS_PREFIX_LEN + 2] = 0xff;
        assert!(matches!(
            Message::decode(kind::BETS, &bytes[HEADER_LEN..]),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn impossible_dates_are_invalid_bets() {
        let mut bytes = Message::Bets {
            seq: 1,
            line: 0,
            bets: vec![bet("Ana", "1", 1)],
        }
        .encode()
        .expect("encodes");
        let day_at = bytes.len() - 3;
        bytes[day_at - 1] = 2; // February
        bytes[day_at] = 30;
        let err = Message::decode(kind::BETS, &bytes[HEADER_LEN..]).expect_err("30 February");
        assert_eq!(err.code(), ErrorCode::InvalidBet);
        assert_eq!(
            err.to_string(),
            "bet 1: birthdate 1999-02-30 is not a calendar date"
        );
    }

    #[test]
    fn frames_over_the_limit_do_not_encode() {
        let big = "ñ".repeat(MAX_FRAME_LEN / 2);
        let message = Message::Bets {
            seq: 1,
            line: 0,
            bets: vec![bet(&big, "1", 1)],
        };
        assert!(matches!(
            message.encode(),
            Err(EncodeError::FrameTooLarge(_))
        ));
        let mut out = vec![7];
        assert!(message.encode_into(&mut out).is_err());
        assert_eq!(out, vec![7], "a failed encode leaves the buffer untouched");
        assert!(
            Message::Echo(vec![0; MAX_PAYLOAD_LEN + 1])
                .encode()
                .is_err()
        );
        assert!(matches!(
            Message::Winners {
                last: true,
                documents: vec!["9".repeat(256)]
            }
            .encode(),
            Err(EncodeError::FieldTooLong {
                field: "document",
                ..
            })
        ));
    }

    #[test]
    fn bet_sizes_match_their_encoding() {
        let b = bet("José María", "00000000", 0);
        let bytes = Message::Bets {
            seq: 1,
            line: 0,
            bets: vec![b.clone(), b.clone()],
        }
        .encode()
        .expect("encodes");
        assert_eq!(bytes.len(), bets_frame_len(2 * bet_wire_len(&b)));
    }

    #[test]
    fn winners_are_chunked_under_the_frame_limit() {
        assert_eq!(
            Message::winners_chunks(&[]),
            vec![Message::Winners {
                last: true,
                documents: vec![]
            }]
        );
        let docs: Vec<String> = (0..5000).map(|i| format!("{i:08}")).collect();
        let chunks = Message::winners_chunks(&docs);
        assert_eq!(chunks.len(), 6);
        let mut seen = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let bytes = chunk.encode().expect("fits");
            assert!(bytes.len() <= MAX_FRAME_LEN);
            match chunk {
                Message::Winners { last, documents } => {
                    assert_eq!(*last, i == chunks.len() - 1);
                    seen.extend(documents.iter().cloned());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, docs);
    }

    fn snapshot(n: u32) -> StatusSnapshot {
        StatusSnapshot {
            agencies: n,
            finished: n / 2,
            drawn: false,
            entries: (1..=n)
                .map(|agency| AgencyStatus {
                    agency,
                    connected: agency % 3 == 0,
                    finished: agency <= n / 2,
                    bets: u64::from(agency) * 10,
                    winners: None,
                })
                .collect(),
        }
    }

    #[test]
    fn status_is_chunked_under_the_frame_limit_and_reassembles() {
        for (n, expected_chunks) in [(0, 1), (1, 1), (480, 1), (481, 2), (1000, 3)] {
            let snap = snapshot(n);
            let chunks = snap.chunks();
            assert_eq!(chunks.len(), expected_chunks, "{n} agencies");
            for (i, chunk) in chunks.iter().enumerate() {
                assert_eq!(chunk.last, i + 1 == chunks.len());
                let bytes = Message::Status(chunk.clone()).encode().expect("fits");
                assert!(bytes.len() <= MAX_FRAME_LEN);
                let frame = read_all(&bytes).expect("reads").expect("frame");
                assert_eq!(frame.decode(), Ok(Message::Status(chunk.clone())));
            }
            assert_eq!(StatusSnapshot::from_chunks(&chunks), Some(snap.clone()));
            assert_eq!(snap.missing(), ((n / 2 + 1)..=n).collect::<Vec<_>>());
        }
        // A full chunk is exactly as large as the limit allows: one more entry would not fit.
        let full = &snapshot(480).chunks()[0];
        let len = Message::Status(full.clone()).encode().expect("fits").len();
        assert!(len + STATUS_ENTRY_LEN > MAX_FRAME_LEN, "{len} leaves room");
    }

    #[test]
    fn status_answers_that_are_not_whole_do_not_reassemble() {
        let chunks = snapshot(1000).chunks();
        assert_eq!(StatusSnapshot::from_chunks(&[]), None);
        assert_eq!(
            StatusSnapshot::from_chunks(&chunks[..2]),
            None,
            "no final chunk"
        );
        let mut mixed = chunks.clone();
        mixed[0].finished += 1;
        assert_eq!(StatusSnapshot::from_chunks(&mixed), None, "two snapshots");
        let mut early = chunks.clone();
        early[0].last = true;
        assert_eq!(
            StatusSnapshot::from_chunks(&early),
            None,
            "last before the end"
        );
    }

    #[test]
    fn status_answers_must_list_every_agency_once_in_order() {
        let chunks = snapshot(1000).chunks();
        let broken = |edit: &dyn Fn(&mut Vec<StatusChunk>)| {
            let mut c = chunks.clone();
            edit(&mut c);
            StatusSnapshot::from_chunks(&c)
        };
        assert_eq!(
            broken(&|c| {
                c[1].entries.pop();
            }),
            None,
            "a gap"
        );
        assert_eq!(
            broken(&|c| {
                let extra = c[2].entries[0];
                c[2].entries.push(extra);
            }),
            None,
            "a duplicate"
        );
        assert_eq!(broken(&|c| c[0].entries.swap(3, 4)), None, "out of order");
        assert_eq!(
            broken(&|c| c[2].entries[39].agency = 1001),
            None,
            "beyond N"
        );
        assert_eq!(
            broken(&|c| c.iter_mut().for_each(|c| c.agencies = 999)),
            None,
            "more entries than agencies"
        );
        assert_eq!(
            broken(&|c| c.iter_mut().for_each(|c| c.agencies = 1001)),
            None,
            "fewer entries than agencies"
        );
        let mut shifted = snapshot(3);
        shifted.entries.iter_mut().for_each(|e| e.agency += 1);
        assert_eq!(
            StatusSnapshot::from_chunks(&shifted.chunks()),
            None,
            "2..=4"
        );
        assert!(StatusSnapshot::from_chunks(&chunks).is_some());
        assert!(StatusSnapshot::from_chunks(&snapshot(0).chunks()).is_some());
    }

    #[test]
    fn bad_status_payloads_are_malformed() {
        let good = Message::Status(example_status()).encode().expect("encodes");
        let payload = &good[HEADER_LEN..];
        let malformed = |bytes: &[u8]| {
            matches!(
                Message::decode(kind::STATUS, bytes),
                Err(DecodeError::Malformed { .. })
            )
        };
        // Unknown flag bits on the first entry (offset: prefix + agency).
        for bit in [0x08u8, 0x10, 0x80] {
            let mut bytes = payload.to_vec();
            bytes[STATUS_PREFIX_LEN + 4] |= bit;
            assert!(malformed(&bytes), "flag bit 0x{bit:02x}");
        }
        // Winners without the winners-known flag.
        let mut bytes = payload.to_vec();
        bytes[STATUS_PREFIX_LEN + STATUS_ENTRY_LEN - 1] = 1;
        assert!(malformed(&bytes));
        // A count the payload cannot hold: refused before anything is allocated.
        let mut bytes = payload[..STATUS_PREFIX_LEN].to_vec();
        bytes[STATUS_PREFIX_LEN - 2..].copy_from_slice(&u16::MAX.to_be_bytes());
        let err = Message::decode(kind::STATUS, &bytes).expect_err("65535 entries in 0 bytes");
        assert!(err.to_string().contains("65535 entries"), "{err}");
        // A count smaller than the entries sent.
        let mut bytes = payload.to_vec();
        bytes[STATUS_PREFIX_LEN - 1] = 1;
        assert!(malformed(&bytes));
        // last / drawn that are not 0 or 1.
        let mut bytes = payload.to_vec();
        bytes[0] = 2;
        assert!(malformed(&bytes));
        let mut bytes = payload.to_vec();
        bytes[9] = 7;
        assert!(malformed(&bytes));
        // The queries carry nothing.
        assert!(Message::decode(kind::STATUS_QUERY, &[0]).is_err());
        assert!(Message::decode(kind::DRAW_PENDING, &[0; 9]).is_err());
    }

    #[test]
    fn error_codes_that_close_the_connection() {
        let closing: Vec<u16> = (1..=20)
            .filter(|c| ErrorCode::from_u16(*c).closes_connection())
            .collect();
        assert_eq!(closing, vec![3, 4, 12, 13, 14, 16, 19, 20]);
    }

    /// A stale batch to decode into: more bets than most, with long strings.
    fn stale(n: usize) -> Vec<Bet> {
        (0..n)
            .map(|i| bet(&"x".repeat(40 + i), "99999999", 1))
            .collect()
    }

    /// What `decode_bets_into` gives over `into`, as a `Message` like `decode`'s.
    fn decoded_into(payload: &[u8], mut into: Vec<Bet>) -> Result<Message, DecodeError> {
        decode_bets_into(payload, &mut into).map(|(seq, line)| Message::Bets {
            seq,
            line,
            bets: into,
        })
    }

    #[test]
    fn bets_decode_into_a_reused_batch_as_into_a_new_one() {
        for message in all_messages() {
            let Message::Bets { seq, line, bets } = &message else {
                continue;
            };
            let frame = message.encode().expect("encodes");
            let mut out = vec![7u8];
            encode_bets_into(*seq, *line, bets, &mut out).expect("encodes");
            assert_eq!(out[1..], frame[..], "the same bytes as the message's");
            for stale_len in [0, 1, bets.len(), bets.len() + 3] {
                assert_eq!(
                    decoded_into(&frame[HEADER_LEN..], stale(stale_len)),
                    Ok(message.clone())
                );
            }
        }
        // Errors: the same as decode's, whatever the reused batch held.
        let good = Message::Bets {
            seq: 1,
            line: 2,
            bets: vec![bet("Ana", "1", 1), bet("Bea", "2", 2)],
        }
        .encode()
        .expect("encodes");
        let payload = &good[HEADER_LEN..];
        let mut trailing = payload.to_vec();
        trailing.push(0);
        let mut bad_date = payload.to_vec();
        let n = bad_date.len();
        bad_date[n - 3] = 31; // The second bet's day.
        bad_date[n - 4] = 2; // ... of February.
        let mut bad_utf8 = payload.to_vec();
        bad_utf8[BETS_PREFIX_LEN + 2] = 0xff;
        let mut no_bets = payload[..BETS_PREFIX_LEN].to_vec();
        no_bets[BETS_PREFIX_LEN - 1] = 0;
        for bad in [
            &trailing[..],
            &bad_date,
            &bad_utf8,
            &no_bets,
            &payload[..payload.len() - 1],
            &payload[..3],
        ] {
            let want = Message::decode(kind::BETS, bad);
            assert!(want.is_err());
            for stale_len in [0, 1, 5] {
                assert_eq!(decoded_into(bad, stale(stale_len)), want);
            }
        }
    }

    /// Prints the cost per bet of encoding and decoding 100-bet batches:
    /// `cargo test --release --lib protocol::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: prints numbers"]
    fn speed() {
        let bets: Vec<Bet> = (0..100u16)
            .map(|i| Bet {
                first_name: format!("Santiago Lionel {i}"),
                last_name: "Lorca Núñez".into(),
                document: format!("{}", 30_000_000 + u32::from(i)),
                birthdate: NaiveDate::from_ymd_opt(1999, 3, 17).expect("date"),
                number: i,
            })
            .collect();
        let message = Message::Bets {
            seq: 1,
            line: 100,
            bets: bets.clone(),
        };
        let frame = message.encode().expect("encodes");
        let payload = &frame[HEADER_LEN..];
        let rounds = 20_000u32;
        let per_bet = |f: &mut dyn FnMut()| {
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..rounds {
                        f();
                    }
                    t.elapsed().as_secs_f64() * 1e9 / f64::from(rounds) / 100.0
                })
                .fold(f64::MAX, f64::min)
        };
        let mut out = Vec::new();
        let encode = per_bet(&mut || {
            out.clear();
            message.encode_into(&mut out).expect("encodes");
            std::hint::black_box(&out);
        });
        let encode_slice = per_bet(&mut || {
            out.clear();
            encode_bets_into(1, 100, &bets, &mut out).expect("encodes");
            std::hint::black_box(&out);
        });
        let decode = per_bet(&mut || {
            std::hint::black_box(Message::decode(kind::BETS, payload).expect("decodes"));
        });
        let mut reused = Vec::new();
        let decode_into = per_bet(&mut || {
            decode_bets_into(payload, &mut reused).expect("decodes");
            std::hint::black_box(&reused);
        });
        println!(
            "per bet: encode_into {encode:.1} ns, encode_bets_into {encode_slice:.1} ns, \
             decode {decode:.1} ns, decode_bets_into (reused) {decode_into:.1} ns"
        );
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
                let mut reader = &bytes[..];
                while let Ok(Some(frame)) = read_frame(&mut reader) {
                    let _ = frame.decode();
                }
            }

            #[test]
            fn decoding_arbitrary_payloads_never_panics(
                kind in prop_oneof![Just(0x01u8), Just(0x02), Just(0x84), Just(0x86), Just(0xff), any::<u8>()],
                payload in proptest::collection::vec(any::<u8>(), 0..600),
            ) {
                if let Ok(message) = Message::decode(kind, &payload) {
                    // Whatever decodes re-encodes to the same payload.
                    let bytes = message.encode().expect("a decoded message encodes");
                    prop_assert_eq!(&bytes[HEADER_LEN..], &payload[..]);
                }
            }

            #[test]
            fn bets_decode_into_as_decode(
                payload in proptest::collection::vec(any::<u8>(), 0..400),
                stale_len in 0usize..4,
            ) {
                let mut into: Vec<Bet> = (0..stale_len)
                    .map(|i| Bet {
                        first_name: "é".repeat(i * 9),
                        last_name: String::new(),
                        document: "1".into(),
                        birthdate: NaiveDate::MIN,
                        number: 9,
                    })
                    .collect();
                let got = decode_bets_into(&payload, &mut into).map(|(seq, line)| Message::Bets { seq, line, bets: into });
                prop_assert_eq!(got, Message::decode(kind::BETS, &payload));
            }

            #[test]
            fn bets_round_trip(
                names in proptest::collection::vec(("\\PC{1,20}", "\\PC{1,20}", "[0-9]{1,8}", 0u16..=9999), 1..20),
                seq in any::<u64>(),
            ) {
                let bets: Vec<Bet> = names.into_iter().map(|(f, l, d, n)| Bet {
                    first_name: f, last_name: l, document: d,
                    birthdate: NaiveDate::from_ymd_opt(1980, 2, 29).expect("leap day"),
                    number: n,
                }).collect();
                let message = Message::Bets { seq, line: seq / 2, bets };
                let bytes = message.encode().expect("small batches fit");
                let frame = read_frame(&mut &bytes[..]).expect("reads").expect("frame");
                prop_assert_eq!(frame.decode().expect("decodes"), message);
            }
        }
    }
}
