//! The attack catalogue (issue 9): several hundred hostile peers against a real
//! server with TLS required, while honest agencies run a whole lottery over TLS.
//!
//! Seven agencies: 1–5 are honest (`loteria::client::run`, their own certificates,
//! 6 000 bets each, one bet per batch so that the uploads go on while the attacks
//! run); 6 is a rogue agency with its own valid certificate (it may only hurt
//! itself: replays, takeovers, bad batches, waiters that never read); 7 is the
//! gate, driven by this test, whose `FIN` comes last so that the attacks meant for
//! "before the draw" really run before it (a forged `FIN` would show as an early
//! draw). Twice a flood of idle connections (more than `max_connections`) holds
//! every slot: as the honest agencies connect (they are refused `SERVER_BUSY` and
//! retry) and around the draw (connections that own an agency are not counted).
//! Every attack states its own expected outcome and checks it (the exact
//! error code, the close, the echo, nothing but an alert, …); at the end the test
//! checks that every honest agency completed and got exactly its own winners, that
//! the stored rows are exactly the bets that were acknowledged (0 lost, 0 doubled,
//! 0 forged), that the server stops within a bound and that no thread panicked, and
//! it prints the figures (`attacks: N tried, N refused | …`).
//!
//! The random attacks come from a fixed seed, so every run sends the same bytes.

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown as Both, SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, MutexGuard, Once, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use loteria::bet::Bet;
use loteria::client::{self, Outcome};
use loteria::connection::{Connection, ConnectionError, MAX_TEXT_LINE, starts_plain_text};
use loteria::protocol::{
    self, AgencyStatus, ErrorCode, FrameError, HEADER_LEN, MAX_PAYLOAD_LEN, Message, StatusChunk,
    VERSION, kind,
};
use loteria::shutdown::Shutdown;
use loteria::tls::{ClientTls, HANDSHAKE_BYTE, agency_name};
use support::certs::{Pair, TestPki};
use support::shm::fast_dir;
use support::wire::{TIMEOUT, bets_frame, good_raw_bet, is_close, raw_bet, stop_bounded};
use support::{
    TestServer, bet, client_config, mock_agencies, server_config, stored_whole_bets, write_files,
};

// ------------------------------------------------------------------- the lottery

/// Agencies 1..=HONEST upload with the real client.
const HONEST: u32 = 5;
/// The rogue agency: a valid certificate of its own, used against itself only.
const ROGUE: u32 = 6;
/// The gate: its `FIN` (sent by this test) runs the draw.
const GATE: u32 = 7;
const AGENCIES: u32 = 7;
const HONEST_BETS: usize = 6000;
const HONEST_BATCH: u16 = 1;
const WINNER_EVERY: usize = 37;
const WINNING_NUMBER: u16 = 7574;
/// Short, so that slow and silent peers are cut quickly; generous for honest peers.
const IO_TIMEOUT: Duration = Duration::from_secs(4);
const MAX_CONNECTIONS: usize = 64;
/// Idle connections opened at once: more than `MAX_CONNECTIONS`.
const FLOOD: usize = 90;
/// The rogue's winning bets: its answer (≈180 KB) cannot fit the socket buffers of
/// a waiter that never reads.
const ROGUE_WINNERS: usize = 20_000;
const ROGUE_UPLOAD: u64 = 0x0606_0606_0606_0606;
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const WORKERS: usize = 4;
/// A peer the server must cut (at `IO_TIMEOUT`, perhaps twice: the first byte, then
/// the frame) is cut within this, however loaded the machine is.
const CUT_BOUND: Duration = Duration::from_secs(30);

// ----------------------------------------------------------------------- tooling

/// A tiny xorshift64 generator: the same attacks on every run, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Impersonation,
    EarlyDraw,
    WinnersLeak,
    Garbage,
    Tls,
    Resource,
    Replay,
}

impl Category {
    const ALL: [Category; 7] = [
        Category::Impersonation,
        Category::EarlyDraw,
        Category::WinnersLeak,
        Category::Garbage,
        Category::Tls,
        Category::Resource,
        Category::Replay,
    ];

    fn name(self) -> &'static str {
        match self {
            Category::Impersonation => "impersonation",
            Category::EarlyDraw => "early-draw",
            Category::WinnersLeak => "others'-winners",
            Category::Garbage => "garbage",
            Category::Tls => "tls",
            Category::Resource => "resource",
            Category::Replay => "replay/takeover",
        }
    }
}

use Category::*;

/// What an attack's own check says: `Ok` when the server refused it (or it was
/// harmless) exactly as expected, else what happened instead.
type Verdict = Result<(), String>;

/// Attacks tried and refused per category, and every unexpected outcome.
#[derive(Default)]
struct Tally {
    tried: BTreeMap<Category, usize>,
    refused: BTreeMap<Category, usize>,
    failures: Vec<String>,
}

impl Tally {
    fn total(map: &BTreeMap<Category, usize>) -> usize {
        map.values().sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn record(tally: &Mutex<Tally>, category: Category, name: &str, verdict: Verdict) {
    let mut t = lock(tally);
    *t.tried.entry(category).or_default() += 1;
    match verdict {
        Ok(()) => *t.refused.entry(category).or_default() += 1,
        Err(what) => t
            .failures
            .push(format!("[{}] {name}: {what}", category.name())),
    }
}

/// Ends the test at once if anything failed so far (listing every failure): the
/// lottery cannot end well after, and waiting for it would only take longer.
fn stop_if_failed(tally: &Mutex<Tally>) {
    let t = lock(tally);
    if t.failures.is_empty() {
        return;
    }
    for failure in &t.failures {
        eprintln!("FAILED {failure}");
    }
    panic!(
        "{} failures before the draw (listed above)",
        t.failures.len()
    );
}

/// A broken invariant that is not one attack's outcome (an early draw, say).
fn violation(tally: &Mutex<Tally>, what: String) {
    lock(tally).failures.push(format!("[invariant] {what}"));
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// Runs `f`, turning a panic into a failed verdict.
fn guarded(f: impl FnOnce() -> Verdict) -> Verdict {
    panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&*p))))
}

/// Every panic in the process (server threads included), counted.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// One attack: its category, what it is, and the attack with its own check.
struct Attack {
    category: Category,
    name: String,
    run: Box<dyn FnOnce(&Ctx) -> Verdict + Send>,
}

fn attack(
    category: Category,
    name: impl Into<String>,
    run: impl FnOnce(&Ctx) -> Verdict + Send + 'static,
) -> Attack {
    Attack {
        category,
        name: name.into(),
        run: Box::new(run),
    }
}

/// Runs `attacks` on `workers` threads, recording each verdict.
fn run_all(ctx: &Ctx, tally: &Mutex<Tally>, attacks: Vec<Attack>, workers: usize) {
    let queue = Mutex::new(VecDeque::from(attacks));
    thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                loop {
                    let Some(a) = lock(&queue).pop_front() else {
                        return;
                    };
                    let run = a.run;
                    let verdict = guarded(|| run(ctx));
                    record(tally, a.category, &a.name, verdict);
                }
            });
        }
    });
}

/// What every attack may use: the server's address and TLS set-ups.
struct Ctx {
    addr: SocketAddr,
    /// `agency[k - 1]`: agency k's own certificate.
    agency: Vec<ClientTls>,
    /// The lottery CA, no client certificate.
    anonymous: ClientTls,
    /// A real ClientHello (from the anonymous set-up), as bytes.
    client_hello: Vec<u8>,
}

impl Ctx {
    fn cert(&self, k: u32) -> &ClientTls {
        &self.agency[k as usize - 1]
    }
}

// ------------------------------------------------------------- talking to it

fn err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn raw(ctx: &Ctx) -> Result<TcpStream, String> {
    let s = TcpStream::connect(ctx.addr).map_err(err("connect"))?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(err("timeout"))?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(err("timeout"))?;
    Ok(s)
}

fn plain(ctx: &Ctx) -> Result<Connection, String> {
    let mut c = Connection::new(raw(ctx)?).map_err(err("wrap"))?;
    c.set_timeouts(Some(TIMEOUT)).map_err(err("timeouts"))?;
    Ok(c)
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    loteria::tls::server_name("localhost:1").expect("a name")
}

fn tls(ctx: &Ctx, with: &ClientTls) -> Result<Connection, String> {
    let mut c = plain(ctx)?;
    c.connect_tls(with.config(), server_name())
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(c)
}

/// What the server did next (the texts are read through `Debug`, in failures).
#[derive(Debug)]
#[allow(dead_code)]
enum Reply {
    Msg(Message),
    Closed,
    Tls(String),
    Timeout,
    Broken(String),
}

fn reply(c: &mut Connection) -> Reply {
    match c.read_message() {
        Ok(Some(m)) => Reply::Msg(m),
        Ok(None) => Reply::Closed,
        Err(e) if e.is_timeout() => Reply::Timeout,
        Err(e) if e.tls_failure().is_some() => Reply::Tls(e.to_string()),
        Err(ConnectionError::Frame(FrameError::Io(e))) if is_close(&e) => Reply::Closed,
        Err(e) => Reply::Broken(e.to_string()),
    }
}

/// [`reply`], skipping the keep-alives of a waiting agency.
fn reply_skipping_pending(c: &mut Connection) -> Reply {
    loop {
        match reply(c) {
            Reply::Msg(Message::DrawPending { .. }) => {}
            other => return other,
        }
    }
}

fn short(text: String) -> String {
    if text.len() <= 300 {
        return text;
    }
    let mut cut = 300;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

fn send(c: &mut Connection, m: &Message) -> Verdict {
    c.write_message(m).map_err(|e| format!("send {m:?}: {e}"))
}

fn send_raw(c: &mut Connection, bytes: &[u8]) -> Verdict {
    c.write_bytes(bytes).map_err(|e| format!("send bytes: {e}"))
}

fn encoded(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        m.encode_into(&mut out).expect("encodes");
    }
    out
}

/// The server must now close the connection, without another word.
fn closed_after(c: &mut Connection, what: &str) -> Verdict {
    match reply(c) {
        Reply::Closed => Ok(()),
        other => Err(short(format!(
            "expected the server to close after {what}, got {other:?}"
        ))),
    }
}

/// The connection still serves: an `ECHO` comes back.
fn alive(c: &mut Connection) -> Verdict {
    let probe = Message::Echo(b"still here?".to_vec());
    send(c, &probe)?;
    match reply(c) {
        Reply::Msg(m) if m == probe => Ok(()),
        other => Err(short(format!(
            "expected the connection to go on (ECHO back), got {other:?}"
        ))),
    }
}

/// The next reply is `ERROR code` (its reason containing `mentions`); then the
/// server closes (`closes`) or the conversation goes on.
fn refused_with(c: &mut Connection, code: ErrorCode, mentions: &str, closes: bool) -> Verdict {
    match reply(c) {
        Reply::Msg(Message::Error { code: got, reason }) if got == code => {
            if !reason.contains(mentions) {
                return Err(format!("{code}'s reason {reason:?} lacks {mentions:?}"));
            }
        }
        other => return Err(short(format!("expected {code}, got {other:?}"))),
    }
    if closes {
        closed_after(c, &code.to_string())
    } else {
        alive(c)
    }
}

fn refused(c: &mut Connection, code: ErrorCode, closes: bool) -> Verdict {
    refused_with(c, code, "", closes)
}

/// Reads until the server closes; a read that times out (the server neither answers
/// nor closes within [`TIMEOUT`]) is a failure.
fn read_to_close(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if is_close(&e) => return Ok(out),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "the server did not close ({e}) after sending {} bytes",
                    out.len()
                ));
            }
        }
    }
}

/// Sends `bytes` on a fresh connection, ends the sending side, and returns all the
/// server sent back until it closed.
fn exchange(ctx: &Ctx, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = raw(ctx)?;
    // The server may close before it has read everything (a refusal that closes).
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Both::Write);
    read_to_close(&mut s)
}

/// Whole frames from raw bytes (the server's answer in the clear).
fn parse_frames(mut bytes: &[u8]) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    loop {
        match protocol::read_frame(&mut bytes) {
            Ok(None) => return Ok(out),
            Ok(Some(frame)) => out.push(
                frame
                    .decode()
                    .map_err(|e| format!("a reply that does not decode: {e}"))?,
            ),
            Err(e) => return Err(format!("reply bytes that are not whole frames: {e}")),
        }
    }
}

/// Messages until the server closes the TLS connection.
fn read_all(c: &mut Connection) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    loop {
        match reply(c) {
            Reply::Msg(m) => out.push(m),
            Reply::Closed => return Ok(out),
            other => {
                return Err(short(format!(
                    "after {} replies ({out:?}): {other:?}",
                    out.len()
                )));
            }
        }
    }
}

// ------------------------------------------------------------------ the oracle

/// One reply the server owes, by the rules of docs/PROTOCOL.md.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Echo(Vec<u8>),
    Status,
    Error(ErrorCode),
}

/// Where the bytes are sent.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// In the clear, to a server that requires TLS.
    Clear,
    /// Inside TLS, with no client certificate.
    Anonymous,
}

/// What the server answers to frame bytes on `side`, then it closes (at a refusal
/// that closes, at a truncated frame, or at the end of the stream).
fn plan_frames(mut rest: &[u8], side: Side) -> Vec<Want> {
    let mut wants = Vec::new();
    loop {
        if rest.len() < HEADER_LEN {
            return wants; // The end, or a truncated header: closed without a word.
        }
        if rest[0] != VERSION {
            wants.push(Want::Error(ErrorCode::UnsupportedVersion));
            return wants;
        }
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if len > MAX_PAYLOAD_LEN {
            wants.push(Want::Error(ErrorCode::FrameTooLarge));
            return wants;
        }
        if rest.len() < HEADER_LEN + len {
            return wants; // A truncated frame: closed without a word.
        }
        let (k, payload) = (rest[1], &rest[HEADER_LEN..HEADER_LEN + len]);
        rest = &rest[HEADER_LEN + len..];
        let want = match (side, k) {
            (Side::Clear, kind::HELLO | kind::BETS | kind::FIN | kind::WINNERS_QUERY) => {
                Want::Error(ErrorCode::TlsRequired)
            }
            (Side::Anonymous, kind::BETS | kind::FIN | kind::WINNERS_QUERY) => {
                Want::Error(ErrorCode::NotIdentified)
            }
            _ => match Message::decode(k, payload) {
                Ok(Message::Echo(p)) => Want::Echo(p),
                Ok(Message::StatusQuery) => Want::Status,
                Ok(Message::Hello { agency, .. }) if (1..=AGENCIES).contains(&agency) => {
                    Want::Error(ErrorCode::NotAuthorized)
                }
                Ok(Message::Hello { .. }) => Want::Error(ErrorCode::UnknownAgency),
                Ok(_) => Want::Error(ErrorCode::UnknownKind),
                Err(e) => Want::Error(e.code()),
            },
        };
        let closes = matches!(want, Want::Error(code) if code.closes_connection());
        wants.push(want);
        if closes {
            return wants;
        }
    }
}

/// What the plain-text echo sends back for `bytes` (then it closes).
fn plan_text(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..=at], true),
            None => (rest, false),
        };
        if line.len() - usize::from(complete) > MAX_TEXT_LINE {
            out.extend_from_slice(
                format!("ERROR line longer than {MAX_TEXT_LINE} bytes; closing\n").as_bytes(),
            );
            return out;
        }
        out.extend_from_slice(line);
        rest = &rest[line.len()..];
    }
    out
}

fn compare(wants: &[Want], got: &[Message]) -> Verdict {
    let matches = |w: &Want, m: &Message| match (w, m) {
        (Want::Echo(p), Message::Echo(q)) => p == q,
        (Want::Status, Message::Status(chunk)) => {
            chunk.last && chunk.agencies == AGENCIES && chunk.entries.len() == AGENCIES as usize
        }
        (Want::Error(code), Message::Error { code: got, .. }) => code == got,
        _ => false,
    };
    if wants.len() == got.len() && wants.iter().zip(got).all(|(w, m)| matches(w, m)) {
        Ok(())
    } else {
        Err(short(format!(
            "expected {wants:?} then a close, got {got:?}"
        )))
    }
}

/// A TLS record that is an alert (what rustls sends when it refuses a handshake).
fn nothing_or_an_alert(got: &[u8]) -> Verdict {
    if got.is_empty() || (got[0] == 0x15 && got.len() <= 64) {
        Ok(())
    } else {
        Err(short(format!(
            "expected nothing or a TLS alert, got {} bytes {:02x?}",
            got.len(),
            &got[..got.len().min(32)]
        )))
    }
}

/// Bytes in the clear, checked against what the rules say: frames, text or TLS.
fn clear(category: Category, name: impl Into<String>, bytes: Vec<u8>) -> Attack {
    attack(category, name, move |ctx| {
        let got = exchange(ctx, &bytes)?;
        match bytes.first() {
            Some(&HANDSHAKE_BYTE) => nothing_or_an_alert(&got),
            Some(&first) if starts_plain_text(first) => {
                let want = plan_text(&bytes);
                if got == want {
                    Ok(())
                } else {
                    Err(short(format!(
                        "text echo: expected {:?}, got {:?}",
                        String::from_utf8_lossy(&want),
                        String::from_utf8_lossy(&got)
                    )))
                }
            }
            _ => compare(&plan_frames(&bytes, Side::Clear), &parse_frames(&got)?),
        }
    })
}

/// Bytes inside TLS without a certificate, then the TCP sending side ends (no
/// `close_notify`: the server takes it as the end of the stream).
fn in_tls(category: Category, name: impl Into<String>, bytes: Vec<u8>) -> Attack {
    attack(category, name, move |ctx| {
        let mut c = tls(ctx, &ctx.anonymous)?;
        let _ = c.write_bytes(&bytes);
        let _ = c.stream().shutdown(Both::Write);
        compare(&plan_frames(&bytes, Side::Anonymous), &read_all(&mut c)?)
    })
}

// ------------------------------------------------------------ building blocks

fn hello(agency: u32) -> Message {
    Message::Hello { agency, upload: 0 }
}

fn impostor_bets(cert: u32, target: u32) -> Message {
    Message::Bets {
        seq: 1,
        line: 0,
        bets: vec![bet(
            "Impostor",
            &format!("99{cert:02}{target:02}"),
            WINNING_NUMBER,
        )],
    }
}

/// A real ClientHello, as the anonymous client sends it.
fn client_hello(with: &ClientTls) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(with.config(), server_name()).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("ClientHello");
    }
    out
}

/// One sample of every kind of frame, well formed.
fn sample_frames() -> Vec<(&'static str, Vec<u8>)> {
    let status = Message::Status(StatusChunk {
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
    });
    let messages = [
        ("HELLO", hello(1)),
        ("BETS", impostor_bets(0, 0)),
        ("FIN", Message::Fin),
        ("WINNERS_QUERY", Message::WinnersQuery),
        ("ECHO", Message::Echo(b"hola".to_vec())),
        ("STATUS_QUERY", Message::StatusQuery),
        (
            "WELCOME",
            Message::Welcome {
                agency: 1,
                upload: 1,
                stored_seq: 9,
                stored_bets: 900,
                stored_line: 900,
                finished: true,
                drawn: true,
            },
        ),
        ("BETS_ACK", Message::BetsAck { seq: 1, count: 1 }),
        (
            "FIN_ACK",
            Message::FinAck {
                finished: 7,
                agencies: 7,
            },
        ),
        (
            "WINNERS",
            Message::Winners {
                last: true,
                documents: vec!["30904465".into()],
            },
        ),
        (
            "DRAW_PENDING",
            Message::DrawPending {
                finished: 6,
                agencies: 7,
            },
        ),
        ("STATUS", status),
        (
            "ERROR",
            Message::Error {
                code: ErrorCode::ServerBusy,
                reason: "try again".into(),
            },
        ),
    ];
    messages
        .into_iter()
        .map(|(name, m)| (name, encoded(&[m])))
        .collect()
}

fn header(version: u8, k: u8, len: u16) -> Vec<u8> {
    let mut out = vec![version, k];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

fn frame(k: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = header(VERSION, k, payload.len() as u16);
    out.extend_from_slice(payload);
    out
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ------------------------------------------------------------- impersonation

#[derive(Clone, Copy, Debug)]
enum Then {
    Bets,
    Fin,
    WinnersQuery,
    /// HELLO, BETS, FIN and WINNERS_QUERY in one write, before any reply.
    Pipelined,
}

impl Then {
    fn category(self) -> Category {
        match self {
            Then::Bets | Then::Pipelined => Impersonation,
            Then::Fin => EarlyDraw,
            Then::WinnersQuery => WinnersLeak,
        }
    }
}

/// Agency `cert`'s certificate says HELLO as `target`: NOT_AUTHORIZED (naming
/// `agency-<target>`) and the close; whatever follows is never served.
fn impersonate(ctx: &Ctx, cert: u32, target: u32, then: Then) -> Verdict {
    let mut c = tls(ctx, ctx.cert(cert))?;
    let follow = match then {
        Then::Bets => impostor_bets(cert, target),
        Then::Fin => Message::Fin,
        Then::WinnersQuery | Then::Pipelined => Message::WinnersQuery,
    };
    if let Then::Pipelined = then {
        send_raw(
            &mut c,
            &encoded(&[
                hello(target),
                impostor_bets(cert, target),
                Message::Fin,
                Message::WinnersQuery,
            ]),
        )?;
        return refused_with(&mut c, ErrorCode::NotAuthorized, &agency_name(target), true);
    }
    send(&mut c, &hello(target))?;
    match reply(&mut c) {
        Reply::Msg(Message::Error {
            code: ErrorCode::NotAuthorized,
            reason,
        }) if reason.contains(&agency_name(target)) => {}
        other => {
            return Err(short(format!(
                "expected NOT_AUTHORIZED naming {}, got {other:?}",
                agency_name(target)
            )));
        }
    }
    // The server has closed: this write may fail, and nothing may answer it.
    let _ = c.write_message(&follow);
    closed_after(&mut c, "NOT_AUTHORIZED")
}

/// A certificate the server must refuse in the handshake: the handshake fails, or
/// (TLS 1.3: the client finishes its side first) the first read is the server's
/// alert. Nothing is ever served.
fn certificate_refused(ctx: &Ctx, with: &ClientTls, target: u32) -> Verdict {
    let mut c = plain(ctx)?;
    let alert =
        |e: &ConnectionError| matches!(e.tls_failure(), Some(rustls::Error::AlertReceived(_)));
    match c.connect_tls(with.config(), server_name()) {
        Err(e) if alert(&e) => return Ok(()),
        Err(e) => return Err(format!("expected the server's alert, got {e}")),
        Ok(()) => {}
    }
    let _ = c.write_message(&hello(target));
    match c.read_message() {
        Err(e) if alert(&e) => Ok(()),
        Err(e) => Err(format!("expected the server's alert, got {e}")),
        Ok(other) => Err(short(format!(
            "a certificate the server must refuse got {other:?}"
        ))),
    }
}

fn impersonation_attacks(pki: &TestPki, attacks: &mut Vec<Attack>) {
    // Every agency's certificate, as every other agency, then each request.
    for cert in 1..=AGENCIES {
        for target in (1..=AGENCIES).filter(|&t| t != cert) {
            for then in [Then::Bets, Then::Fin, Then::WinnersQuery, Then::Pipelined] {
                attacks.push(attack(
                    then.category(),
                    format!("agency {cert}'s certificate: HELLO as {target}, then {then:?}"),
                    move |ctx| impersonate(ctx, cert, target, then),
                ));
            }
        }
    }
    // No certificate: no HELLO at all; requests before one are NOT_IDENTIFIED.
    for target in 1..=AGENCIES {
        attacks.push(attack(
            Impersonation,
            format!("no certificate: HELLO as {target}"),
            move |ctx| {
                let mut c = tls(ctx, &ctx.anonymous)?;
                send(&mut c, &hello(target))?;
                refused_with(&mut c, ErrorCode::NotAuthorized, "presented none", true)
            },
        ));
    }
    for (then, request) in [
        (Then::Bets, impostor_bets(0, 1)),
        (Then::Fin, Message::Fin),
        (Then::WinnersQuery, Message::WinnersQuery),
    ] {
        attacks.push(attack(
            then.category(),
            format!("no certificate: {then:?} without HELLO"),
            move |ctx| {
                let mut c = tls(ctx, &ctx.anonymous)?;
                send(&mut c, &request)?;
                refused(&mut c, ErrorCode::NotIdentified, false)
            },
        ));
    }
    for target in [0, AGENCIES + 1, 16, 1000, u32::MAX] {
        attacks.push(attack(
            EarlyDraw,
            format!("no certificate: HELLO as agency {target} (not in the lottery), then FIN"),
            move |ctx| {
                let mut c = tls(ctx, &ctx.anonymous)?;
                send(&mut c, &hello(target))?;
                refused(&mut c, ErrorCode::UnknownAgency, false)?;
                send(&mut c, &Message::Fin)?;
                refused(&mut c, ErrorCode::NotIdentified, false)
            },
        ));
    }
    // Certificates of the lottery CA whose names are near an agency's.
    for (file, names) in [
        ("agency-16", &["agency-16"][..]),
        ("agency-07", &["agency-07"][..]),
        ("agency-7.example", &["agency-7.example"][..]),
        ("agency-x", &["agency-x", "agency-"][..]),
    ] {
        let with = pki.client_tls(Some(&pki.client_for_names(file, names)));
        for target in [1, ROGUE, GATE] {
            let with = with.clone();
            attacks.push(attack(
                Impersonation,
                format!("a certificate for {names:?}: HELLO as {target}"),
                move |ctx| {
                    let mut c = tls(ctx, &with)?;
                    send(&mut c, &hello(target))?;
                    refused_with(&mut c, ErrorCode::NotAuthorized, &agency_name(target), true)
                },
            ));
        }
    }
    let with = pki.client_tls(Some(&pki.client_for_names("agency-16b", &["agency-16"])));
    attacks.push(attack(
        EarlyDraw,
        "a certificate for agency-16: HELLO as 16 (not in the lottery), then FIN",
        move |ctx| {
            let mut c = tls(ctx, &with)?;
            send(&mut c, &hello(16))?;
            refused(&mut c, ErrorCode::UnknownAgency, false)?;
            send(&mut c, &Message::Fin)?;
            refused(&mut c, ErrorCode::NotIdentified, false)
        },
    ));
    // Certificates the handshake refuses.
    let mut refused_certs: Vec<(String, Pair)> = Vec::new();
    for k in [1, ROGUE, GATE] {
        refused_certs.push((format!("agency {k}'s, expired"), pki.expired_agency(k)));
        refused_certs.push((
            format!("agency {k}'s, from a foreign CA"),
            pki.foreign_agency(k),
        ));
        refused_certs.push((
            format!("agency {k}'s, for the server's role"),
            pki.agency_as_server(k),
        ));
        refused_certs.push((
            format!("a CA certificate for agency-{k}"),
            pki.ca_for_agency(k),
        ));
    }
    refused_certs.push(("the server's own".into(), pki.server.clone()));
    refused_certs.push(("the lottery CA's own".into(), pki.ca_as_client()));
    for (what, pair) in refused_certs {
        let with = ClientTls::load(
            &pki.ca.cert,
            Some((pair.cert.as_path(), pair.key.as_path())),
        )
        .expect("the client loads it");
        for target in [1, GATE] {
            let with = with.clone();
            attacks.push(attack(
                Impersonation,
                format!("{what} certificate, HELLO as {target}"),
                move |ctx| certificate_refused(ctx, &with, target),
            ));
        }
    }
    // In the clear, for every agency: TLS_REQUIRED and the close.
    for target in (0..=AGENCIES + 1).chain([u32::MAX]) {
        let h = encoded(&[hello(target)]);
        for (then, follow) in [
            (None, Vec::new()),
            (Some(Then::Bets), encoded(&[impostor_bets(0, target)])),
            (Some(Then::Fin), encoded(&[Message::Fin])),
            (Some(Then::WinnersQuery), encoded(&[Message::WinnersQuery])),
        ] {
            let category = then.map_or(Impersonation, Then::category);
            attacks.push(clear(
                category,
                format!("in the clear: HELLO as {target}, then {then:?}"),
                concat(&[&h, &follow]),
            ));
        }
    }
    for (then, m) in [
        (Then::Bets, impostor_bets(0, 1)),
        (Then::Fin, Message::Fin),
        (Then::WinnersQuery, Message::WinnersQuery),
    ] {
        attacks.push(clear(
            then.category(),
            format!("in the clear: {then:?} alone"),
            encoded(&[m]),
        ));
    }
}

// ------------------------------------------------------------------- garbage

fn garbage_attacks(ctx: &Ctx, rng: &mut Rng, attacks: &mut Vec<Attack>) {
    // Every first byte: a frame, text, TLS, or refused as a bad version.
    for first in 0..=255u8 {
        attacks.push(clear(
            Garbage,
            format!("first byte 0x{first:02x}, then \"hola\\n\""),
            concat(&[&[first], b"hola\n"]),
        ));
    }
    // Every kind byte, empty payload, in the clear.
    for k in 0..=255u8 {
        attacks.push(clear(
            Garbage,
            format!("kind 0x{k:02x} with an empty payload, in the clear"),
            frame(k, &[]),
        ));
    }
    // Random bytes; a quarter of them start like a frame.
    for i in 0..80 {
        let len = 1 + rng.below(96);
        let mut bytes = rng.bytes(len);
        if i % 4 == 0 {
            bytes[0] = VERSION;
        }
        attacks.push(clear(
            Garbage,
            format!("random bytes #{i} ({len} bytes)"),
            bytes,
        ));
    }
    // Random frames (right lengths, random kinds and payloads), a few in a row.
    let kinds = [
        kind::ECHO,
        kind::STATUS_QUERY,
        kind::WELCOME,
        kind::BETS_ACK,
        kind::FIN_ACK,
        kind::WINNERS,
        kind::DRAW_PENDING,
        kind::STATUS,
        kind::ERROR,
        kind::HELLO,
        kind::BETS,
    ];
    for i in 0..60 {
        let mut bytes = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let k = if rng.below(3) == 0 {
                rng.byte()
            } else {
                kinds[rng.below(kinds.len())]
            };
            let n = rng.below(64);
            let payload = rng.bytes(n);
            bytes.extend_from_slice(&frame(k, &payload));
        }
        attacks.push(clear(Garbage, format!("random frames #{i}"), bytes.clone()));
        if i % 2 == 0 {
            attacks.push(in_tls(
                Garbage,
                format!("random frames #{i}, inside TLS"),
                bytes,
            ));
        }
    }
    for i in 0..30 {
        let len = 1 + rng.below(96);
        attacks.push(in_tls(
            Garbage,
            format!("random bytes #{i} ({len} bytes), inside TLS"),
            rng.bytes(len),
        ));
    }
    // Truncated frames of every kind: the close, no answer.
    for (name, bytes) in sample_frames() {
        let len = bytes.len();
        let mut cuts: Vec<usize> = vec![1, 2, 3, 4, 5, len / 2, len - 1];
        cuts.retain(|&cut| cut > 0 && cut < len);
        cuts.sort_unstable();
        cuts.dedup();
        for cut in cuts {
            attacks.push(clear(
                Garbage,
                format!("{name} cut after {cut} of {len} bytes"),
                bytes[..cut].to_vec(),
            ));
            if cut == 3 || cut == len - 1 {
                attacks.push(in_tls(
                    Garbage,
                    format!("{name} cut after {cut} of {len} bytes, inside TLS"),
                    bytes[..cut].to_vec(),
                ));
            }
        }
    }
    // Oversized lengths, refused before anything is read or allocated.
    for len in [8189u16, 8190, 8192, 9000, 16384, 32768, 65535] {
        for k in [
            kind::HELLO,
            kind::BETS,
            kind::ECHO,
            kind::STATUS_QUERY,
            0x00,
            0x99,
        ] {
            let bytes = concat(&[&header(VERSION, k, len), &rng.bytes(16)]);
            attacks.push(clear(
                Garbage,
                format!("kind 0x{k:02x} claiming {len} payload bytes"),
                bytes.clone(),
            ));
            if k == kind::BETS || k == kind::ECHO {
                attacks.push(in_tls(
                    Garbage,
                    format!("kind 0x{k:02x} claiming {len} payload bytes, inside TLS"),
                    bytes,
                ));
            }
        }
    }
    // Bad versions: after a good frame in the clear, and first inside TLS (where no
    // byte is taken for text).
    let echo = encoded(&[Message::Echo(b"ok".to_vec())]);
    for version in [
        0u8, 1, 2, 4, 9, 0x10, 0x16, 0x20, 0x30, 0x41, 0x7f, 0x80, 0xc3, 0xff,
    ] {
        attacks.push(clear(
            Garbage,
            format!("version {version} in the second frame"),
            concat(&[&echo, &header(version, kind::ECHO, 0)]),
        ));
    }
    for version in (0..=255u8)
        .step_by(9)
        .chain([1, 2, 4, 0x16, b'h'])
        .filter(|&v| v != VERSION)
    {
        attacks.push(in_tls(
            Garbage,
            format!("version {version} inside TLS"),
            concat(&[&header(version, kind::ECHO, 2), b"ok"]),
        ));
    }
    // Replies sent as requests.
    for (name, bytes) in sample_frames().into_iter().skip(6) {
        attacks.push(clear(
            Garbage,
            format!("a {name} sent to the server"),
            bytes.clone(),
        ));
        attacks.push(in_tls(
            Garbage,
            format!("a {name} sent to the server, inside TLS"),
            bytes,
        ));
    }
    // Valid frames with bad payloads (each followed by an ECHO: the conversation
    // goes on when the refusal does not close).
    let mut payloads: Vec<(String, Vec<u8>)> = Vec::new();
    for len in [0usize, 1, 4, 11, 13, 20] {
        payloads.push((
            format!("HELLO with a {len}-byte payload"),
            frame(kind::HELLO, &vec![0; len]),
        ));
    }
    for (k, name) in [
        (kind::FIN, "FIN"),
        (kind::WINNERS_QUERY, "WINNERS_QUERY"),
        (kind::STATUS_QUERY, "STATUS_QUERY"),
    ] {
        payloads.push((format!("{name} with a payload"), frame(k, b"x")));
    }
    payloads.push(("BETS with no bets".into(), frame(kind::BETS, &[0; 18])));
    payloads.push((
        "BETS with a count above its bets".into(),
        frame(kind::BETS, &{
            let mut p = vec![0; 16];
            p.extend_from_slice(&5u16.to_be_bytes());
            p.extend_from_slice(&good_raw_bet("30904465", 1));
            p
        }),
    ));
    for target in [0, 8, 16, 1000, u32::MAX] {
        payloads.push((
            format!("HELLO as agency {target}"),
            encoded(&[hello(target)]),
        ));
    }
    payloads.push((
        "ECHO of the largest payload".into(),
        frame(kind::ECHO, &vec![b'e'; MAX_PAYLOAD_LEN]),
    ));
    payloads.push(("ECHO of nothing".into(), frame(kind::ECHO, &[])));
    payloads.push((
        "a second ClientHello as a frame".into(),
        ctx.client_hello.clone(),
    ));
    for (name, bytes) in payloads {
        let bytes = concat(&[&bytes, &echo]);
        // In the clear a ClientHello is a handshake (the TLS attacks try that).
        if bytes[0] != HANDSHAKE_BYTE {
            attacks.push(clear(
                Garbage,
                format!("{name}, in the clear"),
                bytes.clone(),
            ));
        }
        attacks.push(in_tls(Garbage, format!("{name}, inside TLS"), bytes));
    }
    // Plain text: too long, on the boundary, binary after text.
    let long = |n: usize, b: u8| vec![b; n];
    let texts: Vec<(&str, Vec<u8>)> = vec![
        ("a line of 1025 bytes", long(1025, b'a')),
        (
            "a line of exactly 1024 bytes",
            concat(&[&long(1024, b'a'), b"\n"]),
        ),
        (
            "a good line, then 5000 bytes",
            concat(&[b"hola\n", &long(5000, b'x'), b"\n"]),
        ),
        (
            "600 'n with tilde' (1200 bytes)",
            "ñ".repeat(600).into_bytes(),
        ),
        ("64 KiB without a newline", long(64 * 1024, b'z')),
        ("2000 carriage returns", long(2000, b'\r')),
        ("many short lines", b"a\n".repeat(3000)),
        (
            "a HELLO frame after text",
            concat(&[b"hola\n", &encoded(&[hello(1)]), b"\n"]),
        ),
        (
            "a whole upload after text",
            concat(&[
                b"x",
                &encoded(&[hello(1), impostor_bets(0, 1), Message::Fin]),
                b"\n",
            ]),
        ),
        ("NUL bytes after text", concat(&[b"x", &[0u8; 64], b"\n"])),
        (
            "a ClientHello after text",
            concat(&[b"hola\n", &ctx.client_hello]),
        ),
        (
            "random bytes after text",
            concat(&["¡hola!".as_bytes(), &rng.bytes(300)]),
        ),
    ];
    for (name, bytes) in texts {
        attacks.push(clear(Garbage, format!("plain text: {name}"), bytes));
    }
}

// ----------------------------------------------------------------- TLS level

/// Raw bytes that start like TLS: nothing or an alert comes back, then the close.
fn tls_raw(name: impl Into<String>, bytes: Vec<u8>) -> Attack {
    attack(Tls, name, move |ctx| {
        nothing_or_an_alert(&exchange(ctx, &bytes)?)
    })
}

fn tls_attacks(ctx: &Ctx, rng: &mut Rng, attacks: &mut Vec<Attack>) {
    for _ in 0..30 {
        let len = rng.below(300);
        attacks.push(tls_raw(
            format!("0x16 and {len} random bytes"),
            concat(&[&[HANDSHAKE_BYTE], &rng.bytes(len)]),
        ));
    }
    for i in 0..20 {
        let len = 1 + rng.below(300);
        let mut bytes = vec![HANDSHAKE_BYTE, 3, 1];
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
        bytes.extend_from_slice(&rng.bytes(len));
        attacks.push(tls_raw(
            format!("a handshake record of {len} random bytes (#{i})"),
            bytes,
        ));
    }
    let ch = &ctx.client_hello;
    let len = ch.len();
    let mut cuts = vec![1, 2, 3, 4, 5, 6, 9, 20, 50, 100, len / 2, len - 1];
    cuts.retain(|&cut| cut < len);
    cuts.dedup();
    for cut in cuts {
        attacks.push(tls_raw(
            format!("a ClientHello cut after {cut} of {len} bytes"),
            ch[..cut].to_vec(),
        ));
    }
    // A whole ClientHello, then junk: the server's flight, then the close — never a
    // frame in the clear.
    for i in 0..6 {
        let n = 1 + rng.below(200);
        let junk = rng.bytes(n);
        let bytes = concat(&[ch, &junk]);
        attacks.push(attack(
            Tls,
            format!("a ClientHello, then {} random bytes (#{i})", junk.len()),
            move |ctx| {
                let got = exchange(ctx, &bytes)?;
                match got.first() {
                    Some(&HANDSHAKE_BYTE) | Some(0x15) | None => Ok(()),
                    _ => Err(short(format!("expected TLS records, got {got:02x?}"))),
                }
            },
        ));
    }
    // After a good handshake, bytes in the clear on the socket: an alert or the close.
    let mut clear_after: Vec<(String, Vec<u8>)> = vec![
        ("a HELLO frame".into(), encoded(&[hello(1)])),
        (
            "an ECHO frame".into(),
            encoded(&[Message::Echo(b"x".to_vec())]),
        ),
        ("a line of text".into(), b"hola\n".to_vec()),
        ("a second ClientHello".into(), ch.clone()),
        (
            "a close_notify in the clear".into(),
            vec![0x15, 3, 3, 0, 2, 1, 0],
        ),
    ];
    for i in 0..4 {
        let n = 1 + rng.below(64);
        clear_after.push((
            format!("an application record of {n} random bytes (#{i})"),
            concat(&[&[0x17, 3, 3, 0, n as u8], &rng.bytes(n)]),
        ));
        clear_after.push((format!("{n} random bytes (#{i})"), rng.bytes(n)));
    }
    for (cert, (name, bytes)) in [None, Some(ROGUE)].into_iter().cycle().zip(clear_after) {
        attacks.push(attack(
            Tls,
            format!(
                "after a TLS handshake ({}): {name} in the clear",
                cert.map_or("no certificate".to_string(), |k| format!("agency {k}'s"))
            ),
            move |ctx| {
                let with = cert.map_or(&ctx.anonymous, |k| ctx.cert(k));
                let mut c = tls(ctx, with)?;
                let mut s: &TcpStream = c.stream();
                s.write_all(&bytes).map_err(err("send"))?;
                match reply(&mut c) {
                    Reply::Closed | Reply::Tls(_) => Ok(()),
                    other => Err(short(format!(
                        "expected an alert or the close, got {other:?}"
                    ))),
                }
            },
        ));
    }
}

// ------------------------------------------------------------------ resource

/// The server cut the peer within [`CUT_BOUND`] (a bound that fails instead of
/// hanging, not a speed requirement).
fn cut_in_time(started: Instant, what: &str) -> Verdict {
    let took = started.elapsed();
    if took < CUT_BOUND {
        Ok(())
    } else {
        Err(format!("{what} was cut only after {took:?}"))
    }
}

fn is_timeout_kind(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sends `bytes` one at a time, `every` apart, until the server answers or closes;
/// returns all it sent back, up to its close.
fn trickle(s: &mut TcpStream, bytes: &[u8], every: Duration) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(every)).map_err(err("timeout"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut open = true;
    for &b in bytes {
        if s.write_all(&[b]).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => {
                open = false;
                break;
            }
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                break;
            }
            Err(e) if is_timeout_kind(&e) => {}
            Err(e) if is_close(&e) => {
                open = false;
                break;
            }
            Err(e) => return Err(format!("trickle: {e}")),
        }
    }
    s.set_read_timeout(Some(TIMEOUT)).map_err(err("timeout"))?;
    if open {
        got.extend(read_to_close(s)?);
    }
    Ok(got)
}

/// A TCP connection whose receive buffer and segments are small, so that a server
/// writing to it while it never reads blocks after a few kilobytes.
fn small_buffers(addr: SocketAddr) -> Result<TcpStream, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(err("socket"))?;
    socket
        .set_recv_buffer_size(4096)
        .map_err(err("SO_RCVBUF"))?;
    socket.set_tcp_mss(1024).map_err(err("TCP_MAXSEG"))?;
    socket
        .connect_timeout(&addr.into(), TIMEOUT)
        .map_err(err("connect"))?;
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(err("timeout"))?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(err("timeout"))?;
    Ok(stream)
}

fn idle_timeout_only(got: &[u8]) -> Verdict {
    compare(&[Want::Error(ErrorCode::IdleTimeout)], &parse_frames(got)?)
}

/// The peers that are slow on purpose: each holds a connection until the server
/// cuts it, so they run side by side.
fn slow_attacks() -> Vec<Attack> {
    let every = Duration::from_millis(400);
    vec![
        attack(Resource, "a connection that sends nothing", |ctx| {
            let started = Instant::now();
            let got = read_to_close(&mut raw(ctx)?)?;
            idle_timeout_only(&got)?;
            cut_in_time(started, "a silent connection")
        }),
        attack(
            Resource,
            "slow loris: an ECHO frame, a byte every 400 ms",
            move |ctx| {
                let started = Instant::now();
                let bytes = encoded(&[Message::Echo(vec![b's'; 36])]);
                let got = trickle(&mut raw(ctx)?, &bytes, every)?;
                idle_timeout_only(&got)?;
                cut_in_time(started, "a trickled frame")
            },
        ),
        attack(
            Resource,
            "slow loris: a line of text, a byte every 400 ms",
            move |ctx| {
                let started = Instant::now();
                let got = trickle(&mut raw(ctx)?, &[b'h'; 40], every)?;
                let want = format!(
                    "ERROR no complete line for {}; closing\n",
                    loteria::config::format_duration(IO_TIMEOUT)
                );
                if got != want.as_bytes() {
                    return Err(format!(
                        "expected {want:?}, got {:?}",
                        String::from_utf8_lossy(&got)
                    ));
                }
                cut_in_time(started, "a trickled line")
            },
        ),
        attack(
            Resource,
            "a BETS header claiming 200 bytes, then silence",
            |ctx| {
                let started = Instant::now();
                let mut s = raw(ctx)?;
                s.write_all(&header(VERSION, kind::BETS, 200))
                    .map_err(err("send"))?;
                idle_timeout_only(&read_to_close(&mut s)?)?;
                cut_in_time(started, "a half-sent frame")
            },
        ),
        attack(
            Tls,
            "a ClientHello cut after 10 bytes, then silence",
            |ctx| {
                let started = Instant::now();
                let mut s = raw(ctx)?;
                s.write_all(&ctx.client_hello[..10]).map_err(err("send"))?;
                nothing_or_an_alert(&read_to_close(&mut s)?)?;
                cut_in_time(started, "a half-sent ClientHello")
            },
        ),
        attack(
            Tls,
            "a whole ClientHello, then silence (the handshake stops midway)",
            |ctx| {
                let started = Instant::now();
                let mut s = raw(ctx)?;
                s.write_all(&ctx.client_hello).map_err(err("send"))?;
                let got = read_to_close(&mut s)?;
                if got.first() != Some(&HANDSHAKE_BYTE) {
                    return Err(format!(
                        "expected the server's flight, got {:02x?}",
                        &got[..got.len().min(16)]
                    ));
                }
                cut_in_time(started, "a handshake that stops midway")
            },
        ),
        attack(
            Tls,
            "slow loris: a ClientHello, a byte every 100 ms",
            |ctx| {
                let started = Instant::now();
                let got = trickle(
                    &mut raw(ctx)?,
                    &ctx.client_hello,
                    Duration::from_millis(100),
                )?;
                nothing_or_an_alert(&got)?;
                cut_in_time(started, "a trickled ClientHello")
            },
        ),
        attack(Resource, "TLS without a certificate, then silence", |ctx| {
            let started = Instant::now();
            let mut c = tls(ctx, &ctx.anonymous)?;
            refused(&mut c, ErrorCode::IdleTimeout, true)?;
            cut_in_time(started, "a silent TLS connection")
        }),
        attack(
            Resource,
            "slow loris inside TLS: an ECHO frame, a record per byte every 400 ms",
            move |ctx| {
                let started = Instant::now();
                let mut c = tls(ctx, &ctx.anonymous)?;
                let bytes = encoded(&[Message::Echo(vec![b's'; 36])]);
                let mut answer = None;
                for b in bytes {
                    if c.write_bytes(&[b]).is_err() {
                        break;
                    }
                    c.set_timeouts(Some(every)).map_err(err("timeouts"))?;
                    match reply(&mut c) {
                        Reply::Timeout => {}
                        other => {
                            answer = Some(other);
                            break;
                        }
                    }
                }
                c.set_timeouts(Some(TIMEOUT)).map_err(err("timeouts"))?;
                match answer {
                    Some(Reply::Msg(Message::Error {
                        code: ErrorCode::IdleTimeout,
                        ..
                    })) => closed_after(&mut c, "IDLE_TIMEOUT")?,
                    other => return Err(short(format!("expected IDLE_TIMEOUT, got {other:?}"))),
                }
                cut_in_time(started, "a frame trickled inside TLS")
            },
        ),
        attack(
            Resource,
            "50 000 STATUS_QUERY frames at once, never reading the answers",
            |ctx| {
                let started = Instant::now();
                let mut s = small_buffers(ctx.addr)?;
                // The answers (≈6 MB) cannot all fit the socket buffers: the server's
                // write blocks, and its write timeout ends the connection. Our own
                // write may block too once the server stops reading.
                s.set_write_timeout(Some(Duration::from_secs(2)))
                    .map_err(err("timeout"))?;
                let _ = s.write_all(&encoded(&[Message::StatusQuery]).repeat(50_000));
                thread::sleep(2 * IO_TIMEOUT + Duration::from_secs(1));
                let got = read_to_close(&mut s)?;
                // Whole STATUS frames (the last one perhaps cut by the close), or all
                // the answers and the IDLE_TIMEOUT that follows them.
                let mut rest = &got[..];
                let (mut answers, mut idle) = (0, false);
                while let Ok(Some(frame)) = protocol::read_frame(&mut rest) {
                    match frame.decode() {
                        Ok(Message::Status(_)) if !idle => answers += 1,
                        // Every query that arrived was answered (our own write may
                        // have timed out first), then the connection idled.
                        Ok(Message::Error {
                            code: ErrorCode::IdleTimeout,
                            ..
                        }) if !idle => idle = true,
                        other => {
                            return Err(short(format!(
                                "after {answers} STATUS answers: {other:?}"
                            )));
                        }
                    }
                }
                if answers == 0 {
                    return Err("no STATUS answer at all".into());
                }
                cut_in_time(started, "a peer that never reads")
            },
        ),
        attack(
            Resource,
            "inside TLS: a BETS header claiming 200 bytes, then silence",
            |ctx| {
                let started = Instant::now();
                let mut c = tls(ctx, &ctx.anonymous)?;
                send_raw(&mut c, &header(VERSION, kind::BETS, 200))?;
                refused(&mut c, ErrorCode::IdleTimeout, true)?;
                cut_in_time(started, "a half-sent frame inside TLS")
            },
        ),
    ]
}

/// Quick resource attacks for the pool.
fn resource_attacks(attacks: &mut Vec<Attack>) {
    attacks.push(attack(
        Resource,
        "30 connections reset at once, then a status query",
        |ctx| {
            for _ in 0..30 {
                let s = raw(ctx)?;
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .map_err(err("SO_LINGER"))?;
                drop(s);
            }
            let got = exchange(ctx, &encoded(&[Message::StatusQuery]))?;
            compare(&[Want::Status], &parse_frames(&got)?)
        },
    ));
    attacks.push(attack(
        Resource,
        "30 TLS connections closed in the middle of the handshake",
        |ctx| {
            for _ in 0..30 {
                let mut s = raw(ctx)?;
                s.write_all(&ctx.client_hello).map_err(err("send"))?;
                let mut first = [0u8; 1];
                s.read_exact(&mut first)
                    .map_err(err("the server's flight"))?;
            }
            let got = exchange(ctx, &encoded(&[Message::StatusQuery]))?;
            compare(&[Want::Status], &parse_frames(&got)?)
        },
    ));
}

// --------------------------------------------------------- the rogue agency

/// What a `WELCOME` said.
#[derive(Debug, Clone, Copy)]
struct Welcomed {
    upload: u64,
    stored_seq: u64,
    stored_bets: u64,
    finished: bool,
    drawn: bool,
}

fn say_hello(c: &mut Connection, agency: u32, upload: u64) -> Result<Welcomed, String> {
    send(c, &Message::Hello { agency, upload })?;
    match reply(c) {
        Reply::Msg(Message::Welcome {
            agency: got,
            upload,
            stored_seq,
            stored_bets,
            finished,
            drawn,
            ..
        }) if got == agency => Ok(Welcomed {
            upload,
            stored_seq,
            stored_bets,
            finished,
            drawn,
        }),
        other => Err(short(format!(
            "expected WELCOME for agency {agency}, got {other:?}"
        ))),
    }
}

/// Asks for the winners and collects every chunk.
fn winners_of(c: &mut Connection) -> Result<Vec<String>, String> {
    send(c, &Message::WinnersQuery)?;
    let mut all = Vec::new();
    loop {
        match reply_skipping_pending(c) {
            Reply::Msg(Message::Winners { last, documents }) => {
                all.extend(documents);
                if last {
                    all.sort();
                    return Ok(all);
                }
            }
            other => return Err(short(format!("expected WINNERS, got {other:?}"))),
        }
    }
}

fn step(tally: &Mutex<Tally>, category: Category, name: &str, f: impl FnOnce() -> Verdict) {
    record(tally, category, name, guarded(f));
}

/// The rogue agency's own state: what it has stored.
struct Rogue<'a> {
    ctx: &'a Ctx,
    /// Every bet acknowledged as stored, in order.
    acked: Vec<Bet>,
    /// The last batch acknowledged, and its `seq`.
    last: Vec<Bet>,
    seq: u64,
    next_document: u32,
}

impl Rogue<'_> {
    fn open(&self, upload: u64) -> Result<(Connection, Welcomed), String> {
        let mut c = tls(self.ctx, self.ctx.cert(ROGUE))?;
        let w = say_hello(&mut c, ROGUE, upload)?;
        Ok((c, w))
    }

    /// `n` bets with documents of its own (`6nnnnnnn`).
    fn fresh(&mut self, names: &[&str], n: usize, number: u16) -> Vec<Bet> {
        (0..n)
            .map(|i| {
                self.next_document += 1;
                let mut b = bet(
                    names[i % names.len()],
                    &format!("6{:07}", self.next_document),
                    number,
                );
                b.last_name = names[(i + 1) % names.len()].to_string();
                b
            })
            .collect()
    }

    /// Sends `bets` as the next batch and expects its acknowledgement.
    fn store(&mut self, c: &mut Connection, bets: Vec<Bet>) -> Verdict {
        let seq = self.seq + 1;
        let count = bets.len() as u16;
        send(
            c,
            &Message::Bets {
                seq,
                line: seq,
                bets: bets.clone(),
            },
        )?;
        match reply(c) {
            Reply::Msg(Message::BetsAck { seq: s, count: n }) if s == seq && n == count => {
                self.seq = seq;
                self.acked.extend(bets.iter().cloned());
                self.last = bets;
                Ok(())
            }
            other => Err(short(format!("expected BETS_ACK {seq}, got {other:?}"))),
        }
    }

    /// Sends batch `seq` holding `bets` and expects `ERROR code` (the conversation
    /// goes on).
    fn refused_batch(
        &self,
        c: &mut Connection,
        seq: u64,
        bets: Vec<Bet>,
        code: ErrorCode,
    ) -> Verdict {
        send(
            c,
            &Message::Bets {
                seq,
                line: seq,
                bets,
            },
        )?;
        refused(c, code, false)
    }

    fn winners(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .acked
            .iter()
            .filter(|b| b.number == WINNING_NUMBER)
            .map(|b| b.document.clone())
            .collect();
        w.sort();
        w
    }
}

/// Names a CSV file or a spreadsheet could take for something else: stored and
/// read back verbatim, each as one field of one row.
const TRICKY_NAMES: &[&str] = &[
    "a,b",
    "\"quoted\"",
    "\"",
    "x\",6,66666666,2000-01-01,7574",
    "=HYPERLINK(\"http://evil.example\")",
    "+1",
    "-1",
    "@SUM(A1)",
    "O'Brien; DROP TABLE bets",
    "ñandú",
    "名前",
    "sep\u{2028}arated",
    "\u{202e}evil",
    "\u{feff}bom",
    "a|b",
    "back\\slash",
    "nbsp\u{a0}here",
    "🎲",
];

/// Bets that break a rule (INVALID_BET), as wire bytes.
fn invalid_bets() -> Vec<(&'static str, Vec<u8>)> {
    let good = (1999u16, 3u8, 17u8);
    let b = |first: &str, doc: &str, date: (u16, u8, u8), number: u16| {
        raw_bet(first, "Rogue", doc, date, number)
    };
    vec![
        ("an empty first name", b("", "60000001", good, 1)),
        ("a first name of spaces", b("   ", "60000001", good, 1)),
        ("a newline in a name", b("a\nb", "60000001", good, 1)),
        (
            "a carriage return in a name",
            b("a\rb", "60000001", good, 1),
        ),
        ("a tab in a name", b("a\tb", "60000001", good, 1)),
        ("a NUL in a name", b("a\u{0}b", "60000001", good, 1)),
        (
            "a NEL (U+0085) in a name",
            b("a\u{85}b", "60000001", good, 1),
        ),
        (
            "an ANSI escape in a name",
            b("\u{1b}[31mred", "60000001", good, 1),
        ),
        ("an empty document", b("Ana", "", good, 1)),
        ("a 9-digit document", b("Ana", "123456789", good, 1)),
        ("a document with a letter", b("Ana", "12a", good, 1)),
        ("a document of Arabic digits", b("Ana", "١٢٣", good, 1)),
        ("a negative document", b("Ana", "-1", good, 1)),
        ("a document with a space", b("Ana", " 1", good, 1)),
        ("number 10000", b("Ana", "60000001", good, 10000)),
        ("number 65535", b("Ana", "60000001", good, 65535)),
        ("30 February", b("Ana", "60000001", (2023, 2, 30), 1)),
        ("month 13", b("Ana", "60000001", (1999, 13, 1), 1)),
        ("month 0", b("Ana", "60000001", (1999, 0, 1), 1)),
        ("year 0", b("Ana", "60000001", (0, 1, 1), 1)),
        ("born in 1899", b("Ana", "60000001", (1899, 12, 31), 1)),
        ("born in 2099", b("Ana", "60000001", (2099, 1, 1), 1)),
    ]
}

/// Batches that do not parse (MALFORMED), as `BETS` payloads after `seq`/`line`.
fn malformed_batches() -> Vec<(&'static str, Vec<u8>)> {
    let good = good_raw_bet("60000001", 1);
    let with_count = |count: u16, body: &[u8]| {
        let mut p = count.to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    };
    let mut bad_utf8 = 2u16.to_be_bytes().to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8.extend_from_slice(&good[5..]); // "Ana" replaced by two bytes that are not UTF-8
    vec![
        ("a first name that is not UTF-8", with_count(1, &bad_utf8)),
        ("no bets", with_count(0, &[])),
        ("a count of 5 with one bet", with_count(5, &good)),
        (
            "bytes after the last bet",
            with_count(1, &concat(&[&good, b"junk"])),
        ),
        (
            "a name longer than the frame",
            with_count(1, &[0x13, 0x88, b'A', b'n', b'a']),
        ),
        (
            "a document past the end",
            with_count(1, &concat(&[&good[..13], &[255]])),
        ),
    ]
}

/// What the rogue leaves behind before the draw.
struct RogueEnd<'a> {
    rogue: Rogue<'a>,
    /// Waiters that asked for the winners and never read.
    waiters: Vec<Connection>,
}

/// The rogue agency attacks itself: replays, out-of-order batches, takeovers, bad
/// batches, a FIN that is not one, a storm of connections racing to store one
/// batch, a slow loris on its own connection, and waiters that never read.
fn rogue_before_the_draw<'a>(ctx: &'a Ctx, tally: &Mutex<Tally>) -> RogueEnd<'a> {
    let mut r = Rogue {
        ctx,
        acked: Vec::new(),
        last: Vec::new(),
        seq: 0,
        next_document: 0,
    };
    let mut a: Option<Connection> = None;
    step(
        tally,
        Replay,
        "rogue: names that look like CSV, formulas or bidi text are stored as they are",
        || {
            let (mut c, w) = r.open(ROGUE_UPLOAD)?;
            if w.stored_seq != 0 || w.stored_bets != 0 || w.finished || w.drawn {
                return Err(format!("a fresh agency's WELCOME said {w:?}"));
            }
            let bets = r.fresh(TRICKY_NAMES, TRICKY_NAMES.len(), 1);
            r.store(&mut c, bets)?;
            let long = "L".repeat(4000);
            let bets = r.fresh(&[&long], 1, 2);
            r.store(&mut c, bets)?;
            a = Some(c);
            Ok(())
        },
    );
    let need = |c: &mut Option<Connection>| -> Result<Connection, String> {
        c.take()
            .ok_or_else(|| "no connection (an earlier step failed)".to_string())
    };
    let mut c_a = a;
    step(
        tally,
        Replay,
        "rogue: its last batch again: acknowledged, not stored twice",
        || {
            let mut c = need(&mut c_a)?;
            send(
                &mut c,
                &Message::Bets {
                    seq: r.seq,
                    line: r.seq,
                    bets: r.last.clone(),
                },
            )?;
            let count = r.last.len() as u16;
            match reply(&mut c) {
                Reply::Msg(Message::BetsAck { seq, count: n }) if seq == r.seq && n == count => {}
                other => {
                    return Err(short(format!(
                        "expected the replay's BETS_ACK, got {other:?}"
                    )));
                }
            }
            c_a = Some(c);
            Ok(())
        },
    );
    for (name, which) in [
        ("its last seq with other bets", 0),
        ("a seq two ahead", 1),
        ("seq 0", 2),
        ("seq u64::MAX", 3),
        ("its first batch again (not the last)", 4),
    ] {
        step(
            tally,
            Replay,
            &format!("rogue: {name}: BAD_SEQ, nothing stored"),
            || {
                let mut c = need(&mut c_a)?;
                let (seq, bets) = match which {
                    0 => (r.seq, r.fresh(&["Fuera"], 3, WINNING_NUMBER)),
                    1 => (r.seq + 2, r.fresh(&["Fuera"], 3, WINNING_NUMBER)),
                    2 => (0, r.fresh(&["Fuera"], 3, WINNING_NUMBER)),
                    3 => (u64::MAX, r.fresh(&["Fuera"], 3, WINNING_NUMBER)),
                    _ => (1, r.acked[..TRICKY_NAMES.len()].to_vec()),
                };
                r.refused_batch(&mut c, seq, bets, ErrorCode::BadSeq)?;
                c_a = Some(c);
                Ok(())
            },
        );
    }
    // A takeover by its own newer connection: the older can no longer store.
    let mut c_b = None;
    step(
        tally,
        Replay,
        "rogue: a superseded connection's batch is not stored",
        || {
            let mut old = need(&mut c_a)?;
            let (mut c, w) = r.open(ROGUE_UPLOAD)?;
            if w.stored_seq != r.seq || w.stored_bets != r.acked.len() as u64 || w.finished {
                return Err(format!("after {} batches, WELCOME said {w:?}", r.seq));
            }
            let lost = r.fresh(&["Perdida"], 2, WINNING_NUMBER);
            let _ = old.write_message(&Message::Bets {
                seq: r.seq + 1,
                line: 0,
                bets: lost,
            });
            refused_with(&mut old, ErrorCode::Superseded, "", true)?;
            // The replay of the last batch, on the newer connection: acknowledged again.
            send(
                &mut c,
                &Message::Bets {
                    seq: r.seq,
                    line: r.seq,
                    bets: r.last.clone(),
                },
            )?;
            match reply(&mut c) {
                Reply::Msg(Message::BetsAck { seq, .. }) if seq == r.seq => {}
                other => {
                    return Err(short(format!(
                        "expected the replay's BETS_ACK, got {other:?}"
                    )));
                }
            }
            c_b = Some(c);
            Ok(())
        },
    );
    let mut c_c = None;
    step(
        tally,
        Replay,
        "rogue: a batch of another upload: UPLOAD_CONFLICT",
        || {
            let mut old = need(&mut c_b)?;
            let (mut c, w) = r.open(!ROGUE_UPLOAD)?;
            if w.upload != ROGUE_UPLOAD || w.stored_seq != r.seq {
                return Err(format!("WELCOME for another upload said {w:?}"));
            }
            refused(&mut old, ErrorCode::Superseded, true)?;
            let bets = r.fresh(&["Otra"], 2, WINNING_NUMBER);
            r.refused_batch(&mut c, r.seq + 1, bets, ErrorCode::UploadConflict)?;
            c_c = Some(c);
            Ok(())
        },
    );
    for other in [HONEST, GATE] {
        step(
            tally,
            Impersonation,
            &format!("rogue: HELLO as agency {other} on its own bound connection"),
            || {
                let mut c = need(&mut c_c)?;
                send(&mut c, &hello(other))?;
                refused(&mut c, ErrorCode::AlreadyIdentified, false)?;
                c_c = Some(c);
                Ok(())
            },
        );
    }
    drop(c_c);
    let mut c_d = None;
    step(
        tally,
        Replay,
        "rogue: a new connection goes on where it stopped",
        || {
            let (c, w) = r.open(ROGUE_UPLOAD)?;
            if w.stored_seq != r.seq || w.stored_bets != r.acked.len() as u64 {
                return Err(format!("WELCOME said {w:?}"));
            }
            c_d = Some(c);
            Ok(())
        },
    );
    for (name, bet) in invalid_bets() {
        step(
            tally,
            Garbage,
            &format!("rogue: a batch with {name}: INVALID_BET"),
            || {
                let mut c = need(&mut c_d)?;
                let good = good_raw_bet("60000002", 3);
                send_raw(&mut c, &bets_frame(r.seq + 1, &[good, bet]))?;
                refused(&mut c, ErrorCode::InvalidBet, false)?;
                c_d = Some(c);
                Ok(())
            },
        );
    }
    for (name, tail) in malformed_batches() {
        step(
            tally,
            Garbage,
            &format!("rogue: a batch with {name}: MALFORMED"),
            || {
                let mut c = need(&mut c_d)?;
                let mut payload = (r.seq + 1).to_be_bytes().to_vec();
                payload.extend_from_slice(&0u64.to_be_bytes());
                payload.extend_from_slice(&tail);
                send_raw(&mut c, &frame(kind::BETS, &payload))?;
                refused(&mut c, ErrorCode::Malformed, false)?;
                c_d = Some(c);
                Ok(())
            },
        );
    }
    step(
        tally,
        Replay,
        "rogue: after every refused batch, the next seq is still free",
        || {
            let mut c = need(&mut c_d)?;
            let bets = r.fresh(&["Sigue"], 5, WINNING_NUMBER);
            r.store(&mut c, bets)?;
            c_d = Some(c);
            Ok(())
        },
    );
    step(
        tally,
        EarlyDraw,
        "rogue: a FIN with a payload is not a FIN",
        || {
            let mut c = need(&mut c_d)?;
            send_raw(&mut c, &frame(kind::FIN, b"\x01"))?;
            refused(&mut c, ErrorCode::Malformed, false)?;
            send(&mut c, &Message::WinnersQuery)?;
            refused(&mut c, ErrorCode::NotFinished, false)?;
            c_d = Some(c);
            Ok(())
        },
    );
    drop(c_d);
    // A storm: 20 connections of its own race to store the same next batch.
    step(
        tally,
        Resource,
        "rogue: 20 of its connections race HELLO + the same batch: stored once",
        || {
            const STORM: usize = 20;
            let batch = r.fresh(&["Tormenta"], 7, WINNING_NUMBER);
            let seq = r.seq + 1;
            let bytes = encoded(&[
                Message::Hello {
                    agency: ROGUE,
                    upload: ROGUE_UPLOAD,
                },
                Message::Bets {
                    seq,
                    line: seq,
                    bets: batch.clone(),
                },
            ]);
            let gate = Barrier::new(STORM);
            let outcomes: Vec<Result<bool, String>> = thread::scope(|s| {
                let handles: Vec<_> = (0..STORM)
                    .map(|_| {
                        s.spawn(|| -> Result<bool, String> {
                            let c = tls(ctx, ctx.cert(ROGUE));
                            gate.wait();
                            let mut c = c?;
                            let _ = c.write_bytes(&bytes);
                            let mut acked = false;
                            loop {
                                match reply(&mut c) {
                                    Reply::Msg(Message::Welcome { agency: ROGUE, .. }) => {}
                                    Reply::Msg(Message::BetsAck { seq: s, .. }) if s == seq => {
                                        acked = true
                                    }
                                    Reply::Msg(Message::Error {
                                        code: ErrorCode::Superseded,
                                        ..
                                    }) => {}
                                    Reply::Closed => return Ok(acked),
                                    Reply::Timeout if acked => return Ok(true),
                                    other => {
                                        return Err(short(format!(
                                            "a storm connection got {other:?}"
                                        )));
                                    }
                                }
                                if acked {
                                    // The newest connection keeps it: stop waiting soon.
                                    c.set_timeouts(Some(Duration::from_millis(200)))
                                        .map_err(err("timeouts"))?;
                                }
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| Err(panic_text(&*p))))
                    .collect()
            });
            let mut acks = 0;
            for outcome in outcomes {
                acks += usize::from(outcome?);
            }
            if acks == 0 {
                return Err("no storm connection got the batch acknowledged".into());
            }
            let (_, w) = r.open(ROGUE_UPLOAD)?;
            let want = r.acked.len() + batch.len();
            if w.stored_seq != seq || w.stored_bets != want as u64 {
                return Err(format!(
                    "after the storm WELCOME said {w:?}, expected seq {seq} and {want} bets"
                ));
            }
            r.seq = seq;
            r.acked.extend(batch.iter().cloned());
            r.last = batch;
            Ok(())
        },
    );
    step(
        tally,
        Resource,
        "rogue: a slow loris on its own bound connection",
        || {
            let started = Instant::now();
            let (mut c, _) = r.open(ROGUE_UPLOAD)?;
            send_raw(
                &mut c,
                &concat(&[&header(VERSION, kind::BETS, 300), &[0; 10]]),
            )?;
            refused(&mut c, ErrorCode::IdleTimeout, true)?;
            cut_in_time(started, "the rogue's slow loris")
        },
    );
    // Its big upload (all winners), then its FIN — twice.
    let mut c_g = None;
    step(
        tally,
        EarlyDraw,
        "rogue: FIN twice counts once (and does not draw)",
        || {
            let (mut c, _) = r.open(ROGUE_UPLOAD)?;
            let winners = r.fresh(&["Gana"], ROGUE_WINNERS, WINNING_NUMBER);
            for batch in winners.chunks(300) {
                r.store(&mut c, batch.to_vec())?;
            }
            let mut counts = Vec::new();
            for _ in 0..2 {
                send(&mut c, &Message::Fin)?;
                match reply(&mut c) {
                    Reply::Msg(Message::FinAck { finished, agencies })
                        if agencies == AGENCIES && finished < AGENCIES =>
                    {
                        counts.push(finished)
                    }
                    other => {
                        return Err(short(format!(
                            "expected FIN_ACK (not the last), got {other:?}"
                        )));
                    }
                }
            }
            if counts[1] < counts[0] {
                return Err(format!("FIN_ACKs went down: {counts:?}"));
            }
            c_g = Some(c);
            Ok(())
        },
    );
    step(
        tally,
        Replay,
        "rogue: after its FIN, a new batch or a replay: AGENCY_FINISHED",
        || {
            let mut c = need(&mut c_g)?;
            let bets = r.fresh(&["Tarde"], 2, WINNING_NUMBER);
            r.refused_batch(&mut c, r.seq + 1, bets, ErrorCode::AgencyFinished)?;
            r.refused_batch(&mut c, r.seq, r.last.clone(), ErrorCode::AgencyFinished)?;
            Ok(())
        },
    );
    step(
        tally,
        Resource,
        "rogue: a waiter that half-closes is let go",
        || {
            let started = Instant::now();
            let (mut c, _) = r.open(ROGUE_UPLOAD)?;
            send(&mut c, &Message::WinnersQuery)?;
            c.stream()
                .shutdown(Both::Write)
                .map_err(err("half close"))?;
            match reply_skipping_pending(&mut c) {
                Reply::Closed => {}
                other => return Err(short(format!("expected the close, got {other:?}"))),
            }
            cut_in_time(started, "a half-closed waiter")
        },
    );
    // Waiters that never read (each newer one supersedes the older).
    let mut waiters = Vec::new();
    for i in 0..5 {
        step(
            tally,
            Resource,
            &format!("rogue: waiter #{i} that never reads (set up)"),
            || {
                let stream = small_buffers(ctx.addr)?;
                let mut c = Connection::new(stream).map_err(err("wrap"))?;
                c.set_timeouts(Some(TIMEOUT)).map_err(err("timeouts"))?;
                c.connect_tls(ctx.cert(ROGUE).config(), server_name())
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                send_raw(
                    &mut c,
                    &encoded(&[
                        Message::Hello {
                            agency: ROGUE,
                            upload: ROGUE_UPLOAD,
                        },
                        Message::WinnersQuery,
                    ]),
                )?;
                waiters.push(c);
                Ok(())
            },
        );
    }
    RogueEnd { rogue: r, waiters }
}

/// After the draw: the rogue cannot add bets, its FIN changes nothing, it gets
/// exactly its own winners; its waiters that never read were answered (or cut) with
/// nothing but its own.
fn rogue_after_the_draw(tally: &Mutex<Tally>, end: RogueEnd<'_>) -> Vec<String> {
    let RogueEnd { mut rogue, waiters } = end;
    let winners = rogue.winners();
    step(
        tally,
        Replay,
        "rogue: a batch after the draw: DRAW_DONE",
        || {
            let (mut c, w) = rogue.open(ROGUE_UPLOAD)?;
            if !w.drawn || !w.finished {
                return Err(format!("after the draw WELCOME said {w:?}"));
            }
            let bets = rogue.fresh(&["Despues"], 2, WINNING_NUMBER);
            rogue.refused_batch(&mut c, rogue.seq + 1, bets, ErrorCode::DrawDone)?;
            send(&mut c, &Message::Fin)?;
            match reply(&mut c) {
                Reply::Msg(Message::FinAck {
                    finished: AGENCIES,
                    agencies: AGENCIES,
                }) => {}
                other => return Err(short(format!("expected FIN_ACK 7/7, got {other:?}"))),
            }
            let got = winners_of(&mut c)?;
            if got != winners {
                return Err(format!(
                    "the rogue got {} winners, its own are {}",
                    got.len(),
                    winners.len()
                ));
            }
            Ok(())
        },
    );
    let own: std::collections::HashSet<&String> = winners.iter().collect();
    for (i, mut c) in waiters.into_iter().enumerate() {
        step(
            tally,
            Resource,
            &format!("rogue: waiter #{i} that never read: only its own winners, then cut"),
            || {
                let started = Instant::now();
                let mut documents = 0;
                loop {
                    match reply(&mut c) {
                        Reply::Msg(Message::Welcome { agency: ROGUE, .. })
                        | Reply::Msg(Message::DrawPending { .. })
                        | Reply::Msg(Message::Error {
                            code: ErrorCode::Superseded,
                            ..
                        }) => {}
                        Reply::Msg(Message::Winners { documents: d, .. }) => {
                            if let Some(stranger) = d.iter().find(|doc| !own.contains(doc)) {
                                return Err(format!(
                                    "a winner that is not the rogue's: {stranger}"
                                ));
                            }
                            documents += d.len();
                        }
                        // Closed, or cut in the middle of a record or a frame.
                        Reply::Closed | Reply::Broken(_) | Reply::Tls(_) => break,
                        other => {
                            return Err(short(format!(
                                "a waiter got {other:?} ({documents} documents)"
                            )));
                        }
                    }
                }
                cut_in_time(started, "a waiter that never read")
            },
        );
    }
    winners
}

// ------------------------------------------------------------------ the gate

fn gate_bets() -> Vec<Bet> {
    vec![
        bet("Gate", "7000001", WINNING_NUMBER),
        bet("Gate", "7000002", 1),
        bet("Gate", "7000003", WINNING_NUMBER),
    ]
}

fn status_of(c: &mut Connection) -> Result<StatusChunk, String> {
    send(c, &Message::StatusQuery)?;
    match reply(c) {
        Reply::Msg(Message::Status(chunk))
            if chunk.last && chunk.entries.len() == AGENCIES as usize =>
        {
            Ok(chunk)
        }
        other => Err(short(format!("expected one STATUS chunk, got {other:?}"))),
    }
}

/// Agency 7, driven by the test: its `FIN` runs the draw once the attacks meant for
/// before it are done.
struct Gate {
    c: Connection,
}

impl Gate {
    fn open(ctx: &Ctx) -> Result<Gate, String> {
        let mut c = tls(ctx, ctx.cert(GATE))?;
        let w = say_hello(&mut c, GATE, 0)?;
        if w.finished || w.drawn {
            return Err(format!("the gate's WELCOME said {w:?} before its FIN"));
        }
        Ok(Gate { c })
    }

    /// A status query on the gate's connection (opened again if the server cut it).
    fn status(&mut self, ctx: &Ctx) -> Result<StatusChunk, String> {
        match status_of(&mut self.c) {
            Ok(chunk) => Ok(chunk),
            Err(_) => {
                *self = Gate::open(ctx)?;
                status_of(&mut self.c)
            }
        }
    }

    /// Before the gate's `FIN`: the draw has not run and agency 7 has not finished —
    /// a forged `FIN` for it (or one too many) would show here.
    fn watch(&mut self, ctx: &Ctx, tally: &Mutex<Tally>) -> Option<StatusChunk> {
        match self.status(ctx) {
            Ok(chunk) => {
                if chunk.drawn {
                    violation(tally, "the draw ran before the gate's FIN".into());
                }
                if chunk.entries[GATE as usize - 1].finished {
                    violation(tally, "agency 7 finished without its FIN".into());
                }
                Some(chunk)
            }
            Err(e) => {
                violation(tally, format!("the gate's status query failed: {e}"));
                None
            }
        }
    }
}

/// More idle connections than `max_connections` at once, while `during` runs: each
/// is refused `SERVER_BUSY` at once or cut with `IDLE_TIMEOUT`, and the flood really
/// exceeded the limit. Returns how many were refused, and what `during` returned.
fn flood<R>(ctx: &Ctx, tally: &Mutex<Tally>, when: &str, during: impl FnOnce() -> R) -> (usize, R) {
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        match raw(ctx) {
            Ok(s) => flood.push(s),
            Err(e) => violation(tally, format!("flood connection #{i} {when}: {e}")),
        }
    }
    // Let the server accept (or refuse) them all.
    thread::sleep(Duration::from_millis(500));
    let result = during();
    let mut busy = 0;
    for (i, mut s) in flood.into_iter().enumerate() {
        let verdict = guarded(|| {
            let got = read_to_close(&mut s)?;
            match parse_frames(&got)?.as_slice() {
                [
                    Message::Error {
                        code: ErrorCode::ServerBusy,
                        ..
                    },
                ] => {
                    busy += 1;
                    Ok(())
                }
                [
                    Message::Error {
                        code: ErrorCode::IdleTimeout,
                        ..
                    },
                ] => Ok(()),
                other => Err(short(format!(
                    "expected SERVER_BUSY or IDLE_TIMEOUT, got {other:?}"
                ))),
            }
        });
        record(
            tally,
            Resource,
            &format!("idle connection #{i} of {FLOOD} {when} (max_connections {MAX_CONNECTIONS})"),
            verdict,
        );
    }
    if busy < FLOOD - MAX_CONNECTIONS {
        violation(
            tally,
            format!(
                "only {busy} of {FLOOD} idle connections {when} were refused: the flood did not exceed the limit"
            ),
        );
    }
    (busy, result)
}

/// The gate's `FIN` runs the draw (connections that own an agency are not counted
/// against `max_connections`, so the gate's, opened before the flood, still serves),
/// and the gate gets exactly its winners.
fn draw(gate: &mut Gate, gate_winners: &[String]) -> Verdict {
    let chunk = status_of(&mut gate.c)?;
    if chunk.drawn || chunk.finished != AGENCIES - 1 {
        return Err(format!(
            "before the gate's FIN: drawn {}, {} finished (expected {})",
            chunk.drawn,
            chunk.finished,
            AGENCIES - 1
        ));
    }
    send(&mut gate.c, &Message::Fin)?;
    match reply(&mut gate.c) {
        Reply::Msg(Message::FinAck {
            finished: AGENCIES,
            agencies: AGENCIES,
        }) => {}
        other => {
            return Err(short(format!(
                "the gate's FIN: expected FIN_ACK 7/7, got {other:?}"
            )));
        }
    }
    let got = winners_of(&mut gate.c)?;
    if got != gate_winners {
        return Err(format!(
            "the gate's winners: {got:?}, expected {gate_winners:?}"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------ after the draw

fn after_the_draw_attacks(pki: &TestPki, winners: BTreeMap<u32, usize>) -> Vec<Attack> {
    let mut attacks = Vec::new();
    for cert in 1..=AGENCIES {
        for target in (1..=AGENCIES).filter(|&t| t != cert) {
            attacks.push(attack(
                WinnersLeak,
                format!(
                    "after the draw: agency {cert}'s certificate asks agency {target}'s winners"
                ),
                move |ctx| impersonate(ctx, cert, target, Then::WinnersQuery),
            ));
        }
        let target = cert % AGENCIES + 1;
        attacks.push(attack(
            EarlyDraw,
            format!("after the draw: agency {cert}'s certificate sends agency {target}'s FIN"),
            move |ctx| impersonate(ctx, cert, target, Then::Fin),
        ));
        attacks.push(attack(
            WinnersLeak,
            format!("after the draw: no certificate asks agency {cert}'s winners"),
            move |ctx| {
                let mut c = tls(ctx, &ctx.anonymous)?;
                send_raw(&mut c, &encoded(&[hello(cert), Message::WinnersQuery]))?;
                refused_with(&mut c, ErrorCode::NotAuthorized, "presented none", true)
            },
        ));
        attacks.push(clear(
            WinnersLeak,
            format!("after the draw: agency {cert}'s winners asked in the clear"),
            encoded(&[hello(cert), Message::WinnersQuery]),
        ));
    }
    attacks.push(attack(
        WinnersLeak,
        "after the draw: WINNERS_QUERY without HELLO",
        |ctx| {
            let mut c = tls(ctx, &ctx.anonymous)?;
            send(&mut c, &Message::WinnersQuery)?;
            refused(&mut c, ErrorCode::NotIdentified, false)
        },
    ));
    attacks.push(clear(
        WinnersLeak,
        "after the draw: WINNERS_QUERY alone in the clear",
        encoded(&[Message::WinnersQuery]),
    ));
    for k in [1, HONEST] {
        let expired = pki.client_tls(Some(&pki.expired_agency(k)));
        attacks.push(attack(
            WinnersLeak,
            format!("after the draw: agency {k}'s expired certificate asks its winners"),
            move |ctx| certificate_refused(ctx, &expired, k),
        ));
    }
    attacks.push(attack(
        WinnersLeak,
        "after the draw: the status (in the clear) has counts, no documents",
        move |ctx| {
            let mut c = plain(ctx)?;
            let chunk = status_of(&mut c)?;
            let counts: BTreeMap<u32, usize> = chunk
                .entries
                .iter()
                .map(|e| (e.agency, e.winners.map_or(usize::MAX, |w| w as usize)))
                .collect();
            if !chunk.drawn || counts != winners {
                return Err(format!("status winners {counts:?}, expected {winners:?}"));
            }
            Ok(())
        },
    ));
    attacks
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

type Row = (u32, String, u16, String, String, NaiveDate);

fn row(agency: u32, b: &Bet) -> Row {
    (
        agency,
        b.document.clone(),
        b.number,
        b.first_name.clone(),
        b.last_name.clone(),
        b.birthdate,
    )
}

/// How many rows of `a` are not in `b` (as multisets).
fn missing(a: &BTreeMap<Row, usize>, b: &BTreeMap<Row, usize>) -> usize {
    a.iter()
        .map(|(r, &n)| n.saturating_sub(b.get(r).copied().unwrap_or(0)))
        .sum()
}

fn multiset(rows: impl IntoIterator<Item = Row>) -> BTreeMap<Row, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(r).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------- the test

#[test]
fn attacks_are_refused_while_honest_agencies_run_a_lottery() {
    count_panics();
    let wall = Instant::now();
    let mut rng = Rng::new(SEED);
    let dir = fast_dir("attacks");
    let pki = TestPki::new();
    let mut config = server_config(dir.path(), AGENCIES);
    config.tls = pki.server_files();
    config.tls_required = true;
    config.io_timeout = IO_TIMEOUT;
    config.max_connections = MAX_CONNECTIONS;
    config.winning_number = WINNING_NUMBER;
    let server = TestServer::start(config);
    let pairs: Vec<Pair> = (1..=AGENCIES).map(|k| pki.agency(k)).collect();
    let anonymous = pki.client_tls(None);
    let ctx = Ctx {
        addr: server.addr,
        agency: pairs.iter().map(|p| pki.client_tls(Some(p))).collect(),
        client_hello: client_hello(&anonymous),
        anonymous,
    };
    let tally = Mutex::new(Tally::default());

    let mut before = Vec::new();
    impersonation_attacks(&pki, &mut before);
    garbage_attacks(&ctx, &mut rng, &mut before);
    tls_attacks(&ctx, &mut rng, &mut before);
    resource_attacks(&mut before);
    shuffle(&mut before, &mut rng);
    let slow = slow_attacks();

    // The gate stores its bets and holds its FIN back.
    let mut gate = Gate::open(&ctx).expect("the gate connects");
    send(
        &mut gate.c,
        &Message::Bets {
            seq: 1,
            line: 0,
            bets: gate_bets(),
        },
    )
    .expect("the gate's bets");
    match reply(&mut gate.c) {
        Reply::Msg(Message::BetsAck { seq: 1, count: 3 }) => {}
        other => panic!("the gate's bets: {other:?}"),
    }
    let gate_winners = vec!["7000001".to_string(), "7000003".to_string()];

    // The honest agencies, with the real client, over TLS — started while a flood of
    // idle connections holds every slot: they are refused SERVER_BUSY and retry.
    let data = mock_agencies(&[HONEST_BETS; HONEST as usize], WINNER_EVERY);
    let files = write_files(&dir, &data);
    let (done, results) = mpsc::channel();
    let (busy_at_start, honest) = flood(&ctx, &tally, "while the agencies connect", || {
        let honest: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let id = i as u32 + 1;
                let mut config = client_config(server.addr, id, path);
                config.server_address = format!("localhost:{}", server.addr.port());
                config.tls = pki.client_files(Some(&pairs[i]));
                config.retry_deadline = Duration::from_secs(60);
                // Small batches: the uploads go on while the attacks run.
                config.batch_max_amount = HONEST_BATCH;
                let done = done.clone();
                thread::spawn(move || {
                    let outcome = client::run(&config, &Shutdown::new());
                    let _ = done.send((id, outcome.map_err(|e| e.to_string())));
                })
            })
            .collect();
        // The flood holds the slots: no agency got in yet.
        thread::sleep(Duration::from_secs(1));
        match status_of(&mut gate.c) {
            Ok(chunk) if chunk.entries[..HONEST as usize].iter().any(|e| e.connected) => violation(
                &tally,
                format!("an agency got in through the flood: {chunk:?}"),
            ),
            Ok(_) => {}
            Err(e) => violation(&tally, format!("the gate's status during the flood: {e}")),
        }
        honest
    });
    drop(done);

    // Before the draw: the catalogue, the slow peers and the rogue, side by side,
    // while the gate watches that nothing draws early.
    let mut honest_uploaded = None;
    let mut catalogue_done = None;
    let rogue = thread::scope(|s| {
        let fast = s.spawn(|| {
            run_all(&ctx, &tally, before, WORKERS);
            wall.elapsed()
        });
        let slow = s.spawn(|| {
            let n = slow.len();
            run_all(&ctx, &tally, slow, n)
        });
        let rogue = s.spawn(|| rogue_before_the_draw(&ctx, &tally));
        while !(fast.is_finished() && slow.is_finished() && rogue.is_finished()) {
            let chunk = gate.watch(&ctx, &tally);
            let uploaded =
                chunk.is_some_and(|c| c.entries[..HONEST as usize].iter().all(|e| e.finished));
            if uploaded && honest_uploaded.is_none() {
                honest_uploaded = Some(wall.elapsed());
            }
            thread::sleep(Duration::from_millis(500));
        }
        catalogue_done = Some(fast.join().expect("attack pool"));
        slow.join().expect("slow attacks");
        rogue.join().expect("the rogue")
    });
    let attacks_done = wall.elapsed();
    // Every agency but the gate finishes by itself. (A failure so far makes that
    // unlikely — a forged FIN, a takeover —: the test stops at once then.)
    let mut ended = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        while let Ok((id, outcome)) = results.try_recv() {
            if outcome.is_err() {
                violation(
                    &tally,
                    format!("honest agency {id} before the draw: {outcome:?}"),
                );
            }
            ended.push((id, outcome));
        }
        stop_if_failed(&tally);
        let chunk = gate.watch(&ctx, &tally);
        if chunk.is_some_and(|c| c.entries[..ROGUE as usize].iter().all(|e| e.finished)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agencies 1..=6 did not all finish"
        );
        thread::sleep(Duration::from_millis(500));
    }
    // The draw, in the middle of a flood of idle connections, from a fresh gate
    // connection (the flood leaves no room for a new one).
    gate = Gate::open(&ctx).expect("the gate connects again");
    let (busy, drawn) = flood(&ctx, &tally, "around the draw", || {
        draw(&mut gate, &gate_winners)
    });
    if let Err(e) = drawn {
        violation(&tally, format!("the draw during the flood: {e}"));
    }
    drop(gate);

    // After the draw.
    let mut winners: BTreeMap<u32, Vec<String>> = data
        .iter()
        .enumerate()
        .map(|(i, (_, w))| (i as u32 + 1, sorted(w)))
        .collect();
    winners.insert(GATE, gate_winners.clone());
    let mut counts: BTreeMap<u32, usize> = winners.iter().map(|(&k, w)| (k, w.len())).collect();
    counts.insert(ROGUE, rogue.rogue.winners().len());
    let after = after_the_draw_attacks(&pki, counts);
    let rogue_acked = rogue.rogue.acked.clone();
    let rogue_winners = thread::scope(|s| {
        let pool = s.spawn(|| run_all(&ctx, &tally, after, WORKERS));
        let rogue = rogue_after_the_draw(&tally, rogue);
        pool.join().expect("attack pool");
        rogue
    });
    winners.insert(ROGUE, rogue_winners);

    // Every honest agency completed, and its winners are exactly its own.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended.len() < HONEST as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        match results.recv_timeout(left) {
            Ok(result) => ended.push(result),
            Err(_) => {
                violation(&tally, "an honest agency did not end".into());
                break;
            }
        }
    }
    let mut completed = 0;
    for (id, outcome) in ended {
        match outcome {
            Ok(Outcome::Completed { skipped: 0 }) => completed += 1,
            other => violation(&tally, format!("honest agency {id}: {other:?}")),
        }
    }
    for h in honest {
        if h.join().is_err() {
            violation(&tally, "an honest agency's thread panicked".into());
        }
    }
    for (&k, want) in &winners {
        let got = tls(&ctx, ctx.cert(k)).and_then(|mut c| {
            say_hello(&mut c, k, 0)?;
            winners_of(&mut c)
        });
        match got {
            Ok(got) if &got == want => {}
            other => violation(
                &tally,
                short(format!(
                    "agency {k}'s winners: {other:?}, expected {} of its own",
                    want.len()
                )),
            ),
        }
    }

    // The stored rows are exactly the acknowledged bets.
    let mut expected: Vec<Row> = Vec::new();
    for (i, (bets, _)) in data.iter().enumerate() {
        expected.extend(bets.iter().map(|b| row(i as u32 + 1, b)));
    }
    let honest_rows = expected.len();
    expected.extend(rogue_acked.iter().map(|b| row(ROGUE, b)));
    expected.extend(gate_bets().iter().map(|b| row(GATE, b)));
    let stored: Vec<Row> = stored_whole_bets(&server.storage)
        .iter()
        .map(|(a, b)| row(*a, b))
        .collect();
    let (want, got) = (
        multiset(expected.iter().cloned()),
        multiset(stored.iter().cloned()),
    );
    let (lost, extra) = (missing(&want, &got), missing(&got, &want));
    if lost + extra > 0 {
        violation(&tally, format!("stored rows: {lost} lost, {extra} extra"));
    }

    let stopping = Instant::now();
    stop_bounded(server);
    let stopped = stopping.elapsed();
    let panics = PANICS.load(Ordering::SeqCst);

    let t = lock(&tally);
    let (tried, refused) = (Tally::total(&t.tried), Tally::total(&t.refused));
    let total_winners: usize = winners.values().map(Vec::len).sum();
    eprintln!(
        "attacks: {tried} tried, {refused} refused | honest agencies: {completed} of {HONEST} | bets: {} stored ({honest_rows} honest, {} the rogue's own, 3 the gate's), {lost} lost, {extra} extra | draw: number {WINNING_NUMBER}, {total_winners} winners, each agency exactly its own | floods: {FLOOD} idle connections twice (as the agencies connect: {busy_at_start} refused SERVER_BUSY, {} cut IDLE_TIMEOUT; around the draw: {busy} refused, {} cut) | stop: {stopped:?} | panics: {panics} | times: honest FINs by {:?}, catalogue by {:?}, slow attacks by {attacks_done:?}, wall {:?}",
        stored.len(),
        rogue_acked.len(),
        FLOOD - busy_at_start,
        FLOOD - busy,
        honest_uploaded.unwrap_or_default(),
        catalogue_done.unwrap_or_default(),
        wall.elapsed()
    );
    eprintln!(
        "attacks by category: {}",
        Category::ALL
            .iter()
            .map(|c| format!(
                "{} {}/{}",
                c.name(),
                t.refused.get(c).copied().unwrap_or(0),
                t.tried.get(c).copied().unwrap_or(0)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for failure in &t.failures {
        eprintln!("FAILED {failure}");
    }
    assert!(
        t.failures.is_empty(),
        "{} failures (listed above)",
        t.failures.len()
    );
    assert_eq!(tried, refused);
    assert!(tried >= 500, "only {tried} attacks");
    assert_eq!(completed, HONEST);
    assert_eq!(panics, 0, "a thread panicked");
}

fn sorted(items: &[String]) -> Vec<String> {
    let mut v = items.to_vec();
    v.sort();
    v
}
