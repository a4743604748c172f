//! Regression tests for the review's findings, over loopback with an in-process server:
//! an acknowledgement that always means "stored", one file descriptor per connection, a stalled waiting
//! agency that does not hold up the others, per-frame read deadlines, NOT_IDENTIFIED
//! before any payload check, and the earliest valid birthdate.
//!
//! (The finding "a waiting agency whose connection closes frees its thread" is covered
//! by `an_agency_that_leaves_while_held_frees_its_connection_slot` in `lifecycle.rs`.)
mod support;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use loteria::agency_file::{AgencyFile, Line};
use loteria::bet::Bet;
use loteria::connection::Connection;
use loteria::protocol::{ErrorCode, Message, kind};
use socket2::{Domain, Protocol, Socket, Type};
use support::wire::*;
use support::*;

// ------------------------------------------------- 1. an ACK always means stored

/// Regression: the replay check used to take every `seq` not above the agency's last
/// one for a replay and acknowledge it without storing, so a second upload of the
/// same agency (numbering its batches from 1 again) had every batch acknowledged but
/// dropped: acknowledged bets were silently lost. Now an agency stores one upload, and
/// a batch is acknowledged only if it is stored now or is the last stored batch sent
/// again; everything else is refused with an error, never acknowledged.
#[test]
fn a_batch_of_another_upload_or_an_older_seq_is_refused_never_acknowledged() {
    let dir = TempDir::new("reg-upload-ids");
    let server = TestServer::start(server_config(dir.path(), 2));

    let (mut first, progress) = Peer::hello_upload(server.addr, 1, 0x1111);
    assert_eq!(progress, Progress::fresh(0x1111));
    first.store(1, vec![bet("Ana", "1", 7574)]);
    first.store(2, vec![bet("Luis", "2", 2)]);
    drop(first);

    // Another upload of agency 1 numbering from 1 again: refused, not "replayed".
    let (mut second, progress) = Peer::hello_upload(server.addr, 1, 0x2222);
    assert_eq!(
        (progress.upload, progress.stored_seq, progress.stored_bets),
        (0x1111, 2, 2),
        "WELCOME names the stored upload"
    );
    for seq in [1, 2, 3] {
        second.send(&Message::Bets {
            seq,
            line: 0,
            bets: vec![bet("Eva", "3", 7574)],
        });
        expect_error(&mut second, ErrorCode::UploadConflict);
    }
    drop(second);

    // The first upload again, on a new connection: an older batch is refused, the
    // last one sent again is acknowledged (not stored twice), the next is stored.
    let (mut resend, progress) = Peer::hello_upload(server.addr, 1, 0x1111);
    assert_eq!((progress.stored_seq, progress.stored_bets), (2, 2));
    resend.send(&Message::Bets {
        seq: 1,
        line: 0,
        bets: vec![bet("Ana", "1", 7574)],
    });
    expect_error(&mut resend, ErrorCode::BadSeq);
    resend.store(2, vec![bet("Luis", "2", 2)]);
    resend.store(3, vec![bet("Juan", "5", 5)]);

    // Another agency using the same upload id has its own numbering.
    let (mut other, progress) = Peer::hello_upload(server.addr, 2, 0x1111);
    assert_eq!(progress, Progress::fresh(0x1111));
    other.store(1, vec![bet("Raúl", "6", 7574)]);

    let expected = vec![
        (1, "1".to_string(), 7574),
        (1, "2".to_string(), 2),
        (1, "5".to_string(), 5),
        (2, "6".to_string(), 7574),
    ];
    assert_eq!(sorted(&server.stored()), expected);

    // Every stored bet counts in the draw, none of the refused ones.
    assert_eq!(resend.fin(), (1, 2));
    assert_eq!(other.fin(), (2, 2));
    assert_eq!(resend.winners(), vec!["1".to_string()]);
    assert_eq!(other.winners(), vec!["6".to_string()]);
    stop_bounded(server);
}

// --------------------------------------------- 2. one file descriptor per connection

/// The inodes of this process's TCP sockets with `port` at either end (from
/// `/proc/self/net/tcp{,6}`).
fn tcp_inodes_on_port(port: u16) -> HashSet<u64> {
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut inodes = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            if (port_of(cols[1]) == Some(port) || port_of(cols[2]) == Some(port))
                && let Ok(inode) = cols[9].parse::<u64>()
                && inode != 0
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// For every socket of this process on `port` (the server's listener, its accepted
/// connections, and the test's client ends): how many open file descriptors refer to
/// it. Other tests running in parallel in this binary use other ports, so they do not
/// disturb the count.
fn fds_per_socket_on_port(port: u16) -> HashMap<u64, usize> {
    let inodes = tcp_inodes_on_port(port);
    let mut fds = HashMap::new();
    for entry in fs::read_dir("/proc/self/fd").expect("list /proc/self/fd") {
        let Ok(entry) = entry else { continue };
        // The directory's own descriptor may be gone by now: skip unreadable links.
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
            *fds.entry(inode).or_insert(0) += 1;
        }
    }
    fds
}

fn total(fds: &HashMap<u64, usize>) -> usize {
    fds.values().sum()
}

/// Regression: every accepted connection used to cost about three file descriptors
/// (`try_clone` for the session's reader, for the shutdown registry and for the
/// waiting list), so `max_connections` idle agencies could exhaust the descriptor
/// limit well before the connection limit. Now the server shares one socket.
#[test]
fn each_connection_costs_one_server_file_descriptor() {
    const CONNECTIONS: usize = 60;
    let dir = TempDir::new("reg-fds");
    // One agency per connection (a second HELLO of an agency would close the first
    // connection), and one more that never finishes, so no draw runs.
    let server = TestServer::start(server_config(dir.path(), CONNECTIONS as u32 + 1));
    let port = server.addr.port();
    // The server is up and serving before the baseline is taken.
    let mut first = Peer::connect(server.addr);
    assert_eq!(
        first.request(&Message::Echo(b"up".to_vec())),
        Message::Echo(b"up".to_vec())
    );
    let before = fds_per_socket_on_port(port);
    assert!(
        total(&before) >= 3,
        "the listener and the first connection's two ends are visible: {before:?}"
    );

    let mut peers: Vec<Peer> = (0..CONNECTIONS)
        .map(|i| Peer::hello(server.addr, i as u32 + 1))
        .collect();
    // One of them waits for the draw: the waiting list holds its socket too.
    assert_eq!(peers[0].fin(), (1, CONNECTIONS as u32 + 1));
    peers[0].send(&Message::WinnersQuery);
    expect_no_reply_within(&mut peers[0], HOLD);

    let after = fds_per_socket_on_port(port);
    let increase = total(&after).saturating_sub(total(&before));
    assert!(
        increase >= 2 * CONNECTIONS,
        "both ends of {CONNECTIONS} connections should be counted, found {increase} new descriptors"
    );
    assert!(
        increase <= 2 * CONNECTIONS + 10,
        "{CONNECTIONS} connections added {increase} descriptors (at most 2 each expected: \
         the test's end and the server's end)"
    );
    let shared: Vec<(&u64, &usize)> = after.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(
        shared.is_empty(),
        "sockets held by more than one descriptor (inode, descriptors): {shared:?}"
    );

    // Closing them gives the server's descriptors back (bounded wait: the server
    // notices each close on its own schedule).
    drop(peers);
    drop(first);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = fds_per_socket_on_port(port);
        // Only the listener is left.
        if total(&now) <= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server still holds {} descriptors for closed connections",
            total(&now) - 1
        );
        thread::sleep(Duration::from_millis(50));
    }
    stop_bounded(server);
}

// --------------------------------------------------- 3. a stalled waiting agency

/// A peer whose receive buffer and segment size are small (set before connecting, so
/// the kernel neither grows the receive buffer nor sizes the server's send buffer for
/// loopback's 64 KiB segments): if it never reads, the server's writes to it block
/// after a few tens of kilobytes.
fn connect_small_buffers(addr: SocketAddr, agency: u32) -> Peer {
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("create socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.set_tcp_mss(1024).expect("TCP_MAXSEG");
    socket
        .connect_timeout(&addr.into(), TIMEOUT)
        .expect("connect");
    let mut conn = Connection::new(socket.into()).expect("wrap");
    conn.set_timeouts(Some(TIMEOUT)).expect("timeouts");
    let mut peer = Peer { conn };
    peer.say_hello(agency, 0);
    peer
}

/// Reads `stream` until the server closes it or [`TIMEOUT`] passes without a byte;
/// returns how many bytes came and whether the server closed the connection.
fn drain(stream: &TcpStream) -> (usize, bool) {
    drain_slowly(stream, 64 * 1024, Duration::ZERO, &AtomicBool::new(true))
}

/// How the big-answer agency of [`lottery_with_a_bad_reader`] reads its answer.
#[derive(Clone, Copy)]
enum BadReader {
    /// Never reads.
    Stalled,
    /// Reads `bytes` every `pause`: always making a little progress.
    Slow { bytes: usize, pause: Duration },
}

/// Three agencies; agency 1 has 100 000 winners (an answer of about 900 KB, more than
/// the socket buffers) and reads it as `reader` says; agency 2 reads normally. Agency
/// 3's FIN must be acknowledged and agency 2 must get its whole answer within 60 s,
/// and the server must give up on agency 1 (close after part of the answer).
fn lottery_with_a_bad_reader(name: &str, reader: BadReader) {
    const WINNERS: usize = 100_000;
    let dir = TempDir::new(name);
    // Agency 1's own thread writes its answer under one deadline of io_timeout (5 s)
    // for the whole answer. A regression to "io_timeout per blocked write" would let
    // the slow reader take its whole answer (about two minutes). (Many such agencies
    // ahead of an honest one: `tests/waiters.rs`.)
    const IO_TIMEOUT: Duration = Duration::from_secs(5);
    let server = TestServer::start(with_timeout(&dir, 3, IO_TIMEOUT));

    // Agency 1: 100 000 winning bets, so its answer is about 900 KB.
    let documents: Vec<String> = (0..WINNERS).map(|i| format!("{i:08}")).collect();
    let bets: Vec<Bet> = documents.iter().map(|d| bet("A", d, 7574)).collect();
    let mut uploader = Peer::hello(server.addr, 1);
    for (k, batch) in batches(&bets, 300).into_iter().enumerate() {
        uploader.store(k as u64 + 1, batch);
    }
    drop(uploader);
    // Then it finishes on a fresh connection with small buffers (on the busy upload
    // connection the server's send buffer has grown to megabytes).
    let mut bad = connect_small_buffers(server.addr, 1);
    assert_eq!(bad.fin(), (1, 3));
    bad.send(&Message::WinnersQuery);
    expect_no_reply_within(&mut bad, HOLD); // held (nothing arrived, nothing read)
    let bad_stream = bad.conn.stream().try_clone().expect("clone test socket");
    let hurry = Arc::new(AtomicBool::new(false));
    let bad_reader = {
        let hurry = Arc::clone(&hurry);
        thread::spawn(move || match reader {
            BadReader::Stalled => None,
            BadReader::Slow { bytes, pause } => {
                Some(drain_slowly(&bad_stream, bytes, pause, &hurry))
            }
        })
    };

    // Agency 2 asks too and reads normally.
    let mut two = Peer::hello(server.addr, 2);
    two.store(
        1,
        vec![
            bet("Eva", "2000001", 7574),
            bet("Sara", "2000002", 1),
            bet("Juan", "2000003", 7574),
        ],
    );
    assert_eq!(two.fin(), (2, 3));
    two.send(&Message::WinnersQuery);
    expect_no_reply_within(&mut two, HOLD);

    // Agency 3's FIN runs the draw: its FIN_ACK comes at once, and agency 2 gets its
    // complete answer.
    let mut three = Peer::hello(server.addr, 3);
    assert_eq!(three.fin(), (3, 3));
    two.conn
        .set_timeouts(Some(Duration::from_secs(60)))
        .expect("timeouts");
    let chunks = collect_chunks(&mut two);
    assert_eq!(
        sorted(&flatten(&chunks)),
        vec!["2000001".to_string(), "2000003".into()]
    );
    // The point is made. Agency 1's thread started its answer when the result was
    // published, before agency 2's arrived: once its deadline (io_timeout) has passed,
    // a slow reader may drain the rest at full speed.
    thread::sleep(IO_TIMEOUT + Duration::from_secs(1));
    hurry.store(true, Ordering::SeqCst);

    // The server gave up on agency 1: what it had managed to send is followed by a
    // close, and it is less than the whole answer (so the stall really happened).
    let full: usize = Message::winners_chunks(&documents)
        .iter()
        .map(|m| m.encode().expect("encodes").len())
        .sum();
    let (received, closed) = match bad_reader.join().expect("reader thread") {
        Some(result) => result,
        None => drain(bad.conn.stream()),
    };
    eprintln!("agency 1 received {received} of {full} bytes, closed: {closed}");
    assert!(
        received < full,
        "agency 1 got its whole {full}-byte answer: the socket buffers held it, so the \
         stall this test is about did not happen"
    );
    assert!(
        closed,
        "agency 1's connection is still open after {received} of {full} bytes: the \
         server did not give up on it"
    );
    assert_eq!(server.stored().len(), WINNERS + 3);
    stop_bounded(server);
}

/// Reads `bytes` every `pause` (without pausing once `hurry` is set) until the server
/// closes the stream (or [`TIMEOUT`] passes without a byte); returns how many bytes
/// came and whether it was closed.
fn drain_slowly(
    stream: &TcpStream,
    bytes: usize,
    pause: Duration,
    hurry: &AtomicBool,
) -> (usize, bool) {
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let mut buf = vec![0u8; bytes];
    let mut received = 0;
    loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => return (received, true),
            Ok(n) => received += n,
            Err(e) if is_close(&e) => return (received, true),
            Err(_) => return (received, false),
        }
        if !hurry.load(Ordering::SeqCst) {
            thread::sleep(pause);
        }
    }
}

/// Regression: the drawing thread used to write every waiting agency's winners with
/// the full `io_timeout` (60 s) per blocked write, and only sent the N-th agency's
/// FIN_ACK after the draw. One agency that asked for its winners and then stopped
/// reading (an answer bigger than the socket buffers) held up the FIN_ACK of the last
/// agency and the answers of every other waiting agency for a minute or more.
#[test]
fn a_waiting_agency_that_stops_reading_does_not_hold_up_the_others() {
    lottery_with_a_bad_reader("reg-stalled-waiter", BadReader::Stalled);
}

/// Regression: the 2 s limit on writing to a waiting agency was a socket write
/// timeout, which restarts at every `write` call. An agency that read a little every
/// now and then (here 8 KiB a second: the 900 KB answer would take 2 minutes)
/// held up every other agency's winners for as long as it liked. Now one deadline
/// covers the whole answer.
#[test]
fn a_waiting_agency_that_reads_slowly_does_not_hold_up_the_others() {
    lottery_with_a_bad_reader(
        "reg-slow-waiter",
        BadReader::Slow {
            bytes: 8192,
            pause: Duration::from_secs(1),
        },
    );
}

// -------------------------------------------------------- 4. per-frame deadline

/// Regression: the read timeout used to apply to each `read` call, so a peer that
/// trickled a frame one byte at a time (each gap shorter than `io_timeout`) kept its
/// connection and thread indefinitely, and the frame was served in the end. Now a
/// whole frame must arrive within `io_timeout`.
#[test]
fn a_trickled_frame_gets_idle_timeout_instead_of_an_echo() {
    let dir = TempDir::new("reg-trickle");
    let server = TestServer::start(with_timeout(&dir, 1, Duration::from_secs(1)));
    let mut peer = Peer::connect(server.addr);
    let bytes = frame(kind::ECHO, &[7u8; 64]);
    let mut writer_stream = peer.conn.stream().try_clone().expect("clone test socket");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            // One byte every 30 ms (about 2 s for the frame): every gap is well under
            // the 1 s io_timeout, the whole frame is not.
            for byte in bytes {
                if stop.load(Ordering::SeqCst) || writer_stream.write_all(&[byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(30));
            }
        })
    };
    let reason = expect_error(&mut peer, ErrorCode::IdleTimeout);
    assert!(reason.contains("1s"), "reason names the timeout: {reason}");
    expect_closed(&mut peer);
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer thread");
    // The server is fine and serves others.
    let mut other = Peer::hello(server.addr, 1);
    other.store(1, vec![bet("Ana", "1", 1)]);
    stop_bounded(server);
}

// ------------------------------------------------- 5. NOT_IDENTIFIED first

/// Regression: a `BETS` frame before `HELLO` used to be decoded first, so a batch
/// with an impossible date got INVALID_BET and one with a wrong count got MALFORMED,
/// although the protocol says a request that needs `HELLO` gets NOT_IDENTIFIED before
/// one, whatever its payload.
#[test]
fn a_malformed_or_invalid_batch_before_hello_gets_not_identified() {
    let dir = TempDir::new("reg-not-identified");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::connect(server.addr);

    let bad_date = bets_frame(1, &[raw_bet("Ana", "Núñez", "1", (1999, 2, 30), 1)]);
    let ancient = bets_frame(1, &[raw_bet("Ana", "Núñez", "1", (1899, 12, 31), 1)]);
    let big_number = bets_frame(1, &[good_raw_bet("1", 12_000)]);
    let mut wrong_count = bets_payload(1, &[good_raw_bet("1", 1)]);
    wrong_count[17] = 3; // says 3 bets, holds 1 (count is bytes 16..18)
    let wrong_count = frame(kind::BETS, &wrong_count);
    let short = frame(kind::BETS, &[0, 1]);
    let cases = [
        ("an impossible date", &bad_date, ErrorCode::InvalidBet),
        ("a birthdate before 1900", &ancient, ErrorCode::InvalidBet),
        ("a number above 9999", &big_number, ErrorCode::InvalidBet),
        ("a wrong count", &wrong_count, ErrorCode::Malformed),
        ("a 2-byte payload", &short, ErrorCode::Malformed),
    ];
    for (what, bytes, _) in &cases {
        peer.send_bytes(bytes);
        match peer.recv() {
            Some(Message::Error {
                code: ErrorCode::NotIdentified,
                ..
            }) => {}
            other => {
                panic!("BETS with {what} before HELLO: expected NOT_IDENTIFIED, got {other:?}")
            }
        }
    }
    // Identified, the same frames get the error their payload deserves.
    assert_eq!(peer.say_hello(1, 9), Progress::fresh(9));
    for (what, bytes, code) in &cases {
        peer.send_bytes(bytes);
        match peer.recv() {
            Some(Message::Error { code: got, .. }) if got == *code => {}
            other => panic!("BETS with {what} after HELLO: expected {code}, got {other:?}"),
        }
    }
    assert!(server.stored().is_empty());
    stop_bounded(server);
}

// ------------------------------------------------------- 9. earliest birthdate

/// Regression: any birthdate in the past used to be a valid bet, however old (1899,
/// 1066, year 0), although a bettor cannot be born before 1900-01-01. Now those are
/// invalid bets naming the birthdate, on the server and in the agency file, and
/// 1900-01-01 itself is valid.
#[test]
fn birthdates_before_1900_are_invalid_and_1900_01_01_is_valid() {
    let dir = TempDir::new("reg-birthdate");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    for (k, date) in [(1899, 12, 31), (1899, 1, 1), (1066, 10, 14), (0, 1, 1)]
        .into_iter()
        .enumerate()
    {
        // A valid bet first: the whole batch is refused, naming the second bet.
        peer.send_bytes(&bets_frame(
            k as u64 + 1,
            &[
                good_raw_bet("11", 1),
                raw_bet("Ana", "Núñez", "22", date, 2),
            ],
        ));
        let reason = expect_error(&mut peer, ErrorCode::InvalidBet);
        assert!(
            reason.contains("bet 2") && reason.contains("birthdate"),
            "{date:?}: the reason names the bet and the field: {reason}"
        );
    }
    assert!(server.stored().is_empty(), "nothing of a refused batch");

    let mut oldest = bet("Ana", "33", 7574);
    oldest.birthdate = date(1900, 1, 1);
    // The refused batches stored nothing, so the upload's first batch is seq 1.
    peer.store(1, vec![oldest]);
    peer.send_bytes(&bets_frame(
        2,
        &[raw_bet("Luis", "Paz", "44", (1900, 1, 1), 3)],
    ));
    assert_eq!(peer.recv(), Some(Message::BetsAck { seq: 2, count: 1 }));
    assert_eq!(
        server.stored(),
        vec![(1, "33".to_string(), 7574), (1, "44".to_string(), 3)]
    );
    stop_bounded(server);

    // The client's reading of an agency file applies the same rule.
    let path = dir.join("agency-1.csv");
    fs::write(&path, "Ana,Núñez,1,1899-12-31,1\nLuis,Paz,2,1900-01-01,2\n")
        .expect("write agency file");
    let lines: Vec<Line> = AgencyFile::open(&path, loteria::bet::today())
        .expect("open agency file")
        .map(|l| l.expect("readable"))
        .collect();
    match &lines[..] {
        [Line::Invalid(bad), Line::Bet { line: 2, bet }] => {
            assert_eq!(bad.line, 1);
            assert!(bad.reason.contains("birthdate"), "{}", bad.reason);
            assert_eq!(bet.birthdate, date(1900, 1, 1));
        }
        other => panic!("expected line 1 invalid and line 2 a bet, got {other:?}"),
    }
}
