//! Agencies waiting for the draw (issue 9): every waiting connection's own thread
//! writes its answer, so agencies that never read cannot delay the others' winners;
//! an agency has at most one live waiter, so connections that claim one agency
//! cannot take the server's connection slots from the others.
mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use loteria::bet::Bet;
use loteria::connection::Connection;
use loteria::protocol::{ErrorCode, Message};
use socket2::{Domain, Protocol, Socket, Type};
use support::shm::fast_dir;
use support::wire::*;
use support::*;

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

/// Stores `count` winning bets for `agency` (documents `AAiiiiii`) on a connection of
/// its own, which it then closes; returns their documents.
fn upload_winners(addr: SocketAddr, agency: u32, count: usize) -> Vec<String> {
    let documents: Vec<String> = (0..count).map(|i| format!("{agency:02}{i:06}")).collect();
    let bets: Vec<Bet> = documents.iter().map(|d| bet("A", d, 7574)).collect();
    let mut peer = Peer::hello(addr, agency);
    for (k, batch) in batches(&bets, 300).into_iter().enumerate() {
        peer.store(k as u64 + 1, batch);
    }
    documents
}

/// Reads `stream` until the server closes it (or [`TIMEOUT`] passes without a byte);
/// returns how many bytes came.
fn drain(stream: &TcpStream) -> usize {
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received += n,
            Err(e) if is_close(&e) => return received,
            Err(e) => panic!("the server did not close a slow waiter after stopping: {e}"),
        }
    }
}

/// Regression (issue 9): the thread that ran the draw wrote every waiting agency's
/// WINNERS itself, one waiter after the other, with up to 2 s for each. Ten agencies
/// that asked for their winners and then never read delayed the honest agencies'
/// answers by 20 s. Now each waiting thread writes its own answer (under its own
/// deadline, `io_timeout`): here 20 such agencies, whose answers (180 KB each) cannot
/// fit the socket buffers, wait before the honest ones; the old server needed at
/// least 40 s to reach the honest agencies, the fixed one answers them at once (the
/// bound below is generous) while the slow ones' writes are still blocked — and stop
/// does not wait for those.
#[test]
fn agencies_that_never_read_their_winners_do_not_delay_the_others() {
    const SLOW: u32 = 20;
    const HONEST: u32 = 3;
    const SLOW_WINNERS: usize = 20_000;
    const AGENCIES: u32 = SLOW + HONEST;
    let dir = fast_dir("slow-waiters");
    // The slow agencies' writes may block for 30 s each: far past the bound below.
    let server = TestServer::start(with_timeout(&dir, AGENCIES, Duration::from_secs(30)));
    let started = Instant::now();

    let uploads: Vec<_> = (1..=SLOW)
        .map(|agency| {
            let addr = server.addr;
            thread::spawn(move || upload_winners(addr, agency, SLOW_WINNERS))
        })
        .collect();
    let slow_documents: Vec<Vec<String>> = uploads
        .into_iter()
        .map(|u| u.join().expect("upload thread"))
        .collect();
    let uploaded = started.elapsed();

    // Each slow agency finishes on a fresh connection with small buffers, asks for its
    // winners and never reads.
    let slow: Vec<Peer> = (1..=SLOW)
        .map(|agency| {
            let mut peer = connect_small_buffers(server.addr, agency);
            assert_eq!(peer.fin(), (agency, AGENCIES));
            peer.send(&Message::WinnersQuery);
            peer
        })
        .collect();
    // Let the slow queries reach the waiting list before the honest ones (the old
    // server answered waiters in the order they came).
    thread::sleep(HOLD);

    let honest_bets = |agency: u32| -> (Vec<Bet>, Vec<String>) {
        let win = |k: u32| format!("{agency:02}00000{k}");
        let bets = vec![
            bet("Eva", &win(1), 7574),
            bet("Sara", &format!("{agency:02}000009"), 1),
            bet("Juan", &win(2), 7574),
        ];
        (bets, vec![win(1), win(2)])
    };
    let mut honest = Vec::new();
    for agency in SLOW + 1..AGENCIES {
        let (bets, winners) = honest_bets(agency);
        let mut peer = Peer::hello(server.addr, agency);
        peer.store(1, bets);
        assert_eq!(peer.fin(), (agency, AGENCIES));
        peer.send(&Message::WinnersQuery);
        honest.push((peer, winners));
    }
    thread::sleep(HOLD);
    // The last agency's FIN runs the draw; then it asks too.
    let (bets, winners) = honest_bets(AGENCIES);
    let mut last = Peer::hello(server.addr, AGENCIES);
    last.store(1, bets);
    let draw = Instant::now();
    assert_eq!(last.fin(), (AGENCIES, AGENCIES));
    last.send(&Message::WinnersQuery);
    honest.push((last, winners));

    for (peer, expected) in &mut honest {
        // Long enough for the old server to answer in the end (so it fails on the
        // bound below, with the time it took, rather than on a read timeout).
        peer.conn
            .set_timeouts(Some(Duration::from_secs(120)))
            .expect("timeouts");
        let chunks = collect_chunks(peer);
        assert_eq!(sorted(&flatten(&chunks)), sorted(expected));
    }
    let answered = draw.elapsed();
    eprintln!(
        "{SLOW} slow waiters × {SLOW_WINNERS} winners uploaded in {uploaded:?}; the {HONEST} honest agencies had their winners {answered:?} after the last FIN"
    );
    assert!(
        answered < Duration::from_secs(10),
        "the honest agencies waited {answered:?} for their winners: the slow waiters held them up"
    );

    // Stop is not held by the blocked writes either; then each slow agency finds that
    // it got only part of its answer: the stall really happened.
    stop_bounded(server);
    for (peer, documents) in slow.iter().zip(&slow_documents) {
        let full: usize = Message::winners_chunks(documents)
            .iter()
            .map(|m| m.encode().expect("encodes").len())
            .sum();
        let received = drain(peer.conn.stream());
        assert!(
            received < full,
            "a slow agency got its whole {full}-byte answer: the socket buffers held it, so \
             the stall this test is about did not happen"
        );
    }
}

/// Issue 9: once an agency has finished, anyone can claim it and wait for its
/// winners. 20 connections (as many as `max_connections`) do so at once for agency 1
/// and never read: an agency has one live waiter (each newer `HELLO` supersedes the
/// older connection, whether it waits or not), and connections that said `HELLO` do
/// not count against `max_connections`, so the real agencies 2–4 still connect,
/// upload, finish and get their winners; and exactly one of the 20 gets agency 1's.
#[test]
fn connections_claiming_one_agency_cannot_take_the_slots_of_the_others() {
    const CLAIMS: usize = 20;
    let dir = fast_dir("one-agency-claims");
    let mut config = server_config(dir.path(), 4);
    config.max_connections = CLAIMS;
    let server = TestServer::start(config);
    let data = mock_agencies(&[12, 30, 25, 40], 4);

    let mut one = Peer::hello(server.addr, 1);
    one.store(1, data[0].0.clone());
    assert_eq!(one.fin(), (1, 4));
    drop(one);

    // The claims: all connected at once, then each says HELLO as agency 1 and asks for
    // the winners (pipelined, not waiting for WELCOME), and reads nothing.
    let gate = Arc::new(Barrier::new(CLAIMS));
    let claims: Vec<_> = (0..CLAIMS)
        .map(|_| {
            let (gate, addr) = (Arc::clone(&gate), server.addr);
            thread::spawn(move || {
                let mut peer = Peer::connect(addr);
                gate.wait();
                // A claim refused SERVER_BUSY may find its socket closed: it reads the
                // refusal below.
                let _ = peer.conn.write_message(&Message::Hello {
                    agency: 1,
                    upload: 0,
                });
                let _ = peer.conn.write_message(&Message::WinnersQuery);
                peer
            })
        })
        .collect();
    let mut claims: Vec<Peer> = claims
        .into_iter()
        .map(|c| c.join().expect("claim thread"))
        .collect();

    // The real agencies get in (retrying a SERVER_BUSY, as the client does, while the
    // superseded claims are being closed).
    let real: Vec<_> = (2..=4u32)
        .map(|agency| {
            let (bets, winners) = data[agency as usize - 1].clone();
            let addr = server.addr;
            thread::spawn(move || {
                let mut peer = hello_retrying_busy(addr, agency);
                for (k, batch) in batches(&bets, 10).into_iter().enumerate() {
                    peer.store(k as u64 + 1, batch);
                }
                peer.fin();
                (sorted(&peer.winners()), sorted(&winners))
            })
        })
        .collect();
    for agency in real {
        let (got, expected) = agency.join().expect("a real agency failed");
        assert_eq!(got, expected);
    }

    // Exactly one claim was the live waiter of agency 1: it gets agency 1's winners;
    // every other one was told SUPERSEDED (or just closed).
    let mut answered = 0;
    for peer in &mut claims {
        match recv_or_close(peer) {
            Some(Message::Welcome { agency: 1, .. }) => {}
            // Refused at once, or its HELLO came after a newer claim's (stale).
            Some(Message::Error {
                code: ErrorCode::ServerBusy | ErrorCode::Superseded,
                ..
            })
            | None => continue,
            other => panic!("expected WELCOME for agency 1, got {other:?}"),
        }
        match recv_or_close(peer) {
            Some(Message::Winners { last, documents }) => {
                let mut all = documents;
                let mut last = last;
                while !last {
                    match recv_or_close(peer) {
                        Some(Message::Winners {
                            last: l,
                            documents: d,
                        }) => {
                            all.extend(d);
                            last = l;
                        }
                        other => panic!("expected more WINNERS, got {other:?}"),
                    }
                }
                assert_eq!(sorted(&all), sorted(&data[0].1));
                answered += 1;
            }
            Some(Message::Error {
                code: ErrorCode::Superseded,
                ..
            })
            | None => {}
            other => panic!("expected WINNERS or SUPERSEDED, got {other:?}"),
        }
    }
    assert_eq!(answered, 1, "agency 1 had {answered} live waiters");
    stop_bounded(server);
}

/// Regression (issue 9): `max_connections` counted every connection, agencies that
/// waited for the draw included, so with more agencies than `max_connections` the
/// first ones waited for a draw that could never run while the others were refused
/// `SERVER_BUSY` for ever. Now a connection that said `HELLO` owns its agency and is
/// not counted: 12 agencies, all waiting for the draw at once, with room for 5.
#[test]
fn more_agencies_than_max_connections_all_wait_and_get_their_winners() {
    const AGENCIES: u32 = 12;
    let dir = fast_dir("more-agencies-than-slots");
    let mut config = server_config(dir.path(), AGENCIES);
    config.max_connections = 5;
    let server = TestServer::start(config);
    let data = mock_agencies(&vec![20; AGENCIES as usize], 3);
    let gate = Arc::new(Barrier::new(AGENCIES as usize));
    let (done, results) = mpsc::channel();
    let agencies: Vec<_> = (1..=AGENCIES)
        .map(|agency| {
            let (bets, winners) = data[agency as usize - 1].clone();
            let (gate, addr, done) = (Arc::clone(&gate), server.addr, done.clone());
            thread::spawn(move || {
                gate.wait();
                let mut peer = hello_retrying_busy(addr, agency);
                peer.store(1, bets);
                peer.fin();
                let _ = done.send((agency, sorted(&peer.winners()), sorted(&winners)));
            })
        })
        .collect();
    drop(done);
    // The waiting agencies would wait for ever (kept alive by DRAW_PENDING): bounded.
    let deadline = Instant::now() + 2 * TIMEOUT;
    let mut answered = 0;
    while answered < AGENCIES {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((agency, got, expected)) = results.recv_timeout(left) else {
            break;
        };
        assert_eq!(got, expected, "agency {agency}'s winners");
        answered += 1;
    }
    // Stopping answers whoever still waits (SHUTTING_DOWN), so every thread ends.
    stop_bounded(server);
    for agency in agencies {
        let _ = agency.join();
    }
    assert_eq!(
        answered, AGENCIES,
        "only {answered} of {AGENCIES} agencies got their winners"
    );
}

/// Connects and says `HELLO` as `agency`, again after a short pause while the server
/// answers `SERVER_BUSY` (or closes at once), for at most [`TIMEOUT`].
fn hello_retrying_busy(addr: SocketAddr, agency: u32) -> Peer {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut peer = Peer::connect(addr);
        // A refused connection may be closed already: the refusal is read below.
        let _ = peer
            .conn
            .write_message(&Message::Hello { agency, upload: 0 });
        match recv_or_close(&mut peer) {
            Some(Message::Welcome { agency: got, .. }) if got == agency => return peer,
            Some(Message::Error {
                code: ErrorCode::ServerBusy,
                ..
            })
            | None => {
                assert!(
                    Instant::now() < deadline,
                    "agency {agency} was refused SERVER_BUSY for {TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
            other => panic!("expected WELCOME for agency {agency}, got {other:?}"),
        }
    }
}

/// Regression (issue 9 final review): connections that own no agency but keep asking
/// (an ECHO every 300 ms) held every slot for ever: `io_timeout` bounds each request,
/// not a connection's life, so an agency was refused `SERVER_BUSY` at every attempt
/// (14 of 14 in 4 s). Now a refused connection makes room: the oldest connection that
/// owns no agency and has been open two `io_timeout`s is closed with `SERVER_BUSY`, so
/// the agency's next attempt gets in.
#[test]
fn anonymous_peers_that_keep_asking_cannot_keep_an_agency_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = TempDir::new("waiters-echo-holders");
    let mut config = with_timeout(&dir, 1, Duration::from_millis(500));
    config.max_connections = 2;
    let server = TestServer::start(config);
    let stop = Arc::new(AtomicBool::new(false));
    let holders: Vec<_> = (0..2)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let addr = server.addr;
            thread::spawn(move || {
                let mut peer = Peer::connect(addr);
                let echo = Message::Echo(format!("holder {i}").into_bytes());
                // One echo; `Some(what came back)` unless it was the echo. An evicted
                // holder may be between its reads: its write then fails, and the
                // SERVER_BUSY answer is still there to read.
                let mut exchange = || {
                    let written = peer.conn.write_message(&echo);
                    match peer.conn.read_message() {
                        Ok(Some(m)) if m == echo && written.is_ok() => None,
                        other => Some(format!("{other:?}")),
                    }
                };
                while !stop.load(Ordering::SeqCst) {
                    if let Some(end) = exchange() {
                        return Some(end);
                    }
                    thread::sleep(Duration::from_millis(300));
                }
                // Evicted while it slept (the agency got in meanwhile): its answer is
                // waiting to be read.
                exchange()
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200)); // Both hold their slots.
    let started = Instant::now();
    let mut refused = 0;
    loop {
        let mut peer = Peer::connect(server.addr);
        match peer.request(&Message::Hello {
            agency: 1,
            upload: 0,
        }) {
            Message::Welcome { agency: 1, .. } => break,
            Message::Error {
                code: ErrorCode::ServerBusy,
                ..
            } => refused += 1,
            other => panic!("expected WELCOME or SERVER_BUSY, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "agency 1 was refused SERVER_BUSY {refused} times in 10s"
        );
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "an agency got in after {refused} refusals and {:?}",
        started.elapsed()
    );
    stop.store(true, Ordering::SeqCst);
    let ends: Vec<Option<String>> = holders
        .into_iter()
        .map(|h| h.join().expect("holder"))
        .collect();
    assert!(
        ends.iter()
            .any(|e| e.as_deref().is_some_and(|e| e.contains("ServerBusy"))),
        "a holder was closed with SERVER_BUSY: {ends:?}"
    );
    stop_bounded(server);
}
