//! Issue 8, "a lottery you can watch", over loopback: `STATUS_QUERY` / `STATUS` at
//! every stage of a lottery, `DRAW_PENDING` while an agency waits for the draw, and the
//! HTTP status page (`/`, `/metrics`, `/status.json`) with its shutdown; plus the log
//! lines of the real `server` binary (`waiting_agencies`, `draw_summary`).
mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use loteria::protocol::{
    AgencyStatus, ErrorCode, Message, PENDING_INTERVAL, STATUS_ENTRIES_PER_CHUNK, StatusSnapshot,
};
use loteria::server::ServerError;
use support::process::{self, Server};
use support::*;

fn row(snap: &StatusSnapshot, agency: u32) -> AgencyStatus {
    let entry = snap.entries[(agency - 1) as usize];
    assert_eq!(entry.agency, agency);
    entry
}

/// Every agency `1..=N` exactly once, in order.
fn assert_complete(snap: &StatusSnapshot) {
    let ids: Vec<u32> = snap.entries.iter().map(|e| e.agency).collect();
    assert_eq!(ids, (1..=snap.agencies).collect::<Vec<_>>());
    let finished = snap.entries.iter().filter(|e| e.finished).count() as u32;
    assert_eq!(finished, snap.finished, "finished total matches the flags");
}

/// Polls the status until `done` holds (connections are released by their own
/// threads, a moment after the peer closes).
fn status_until(
    monitor: &mut Peer,
    what: &str,
    done: impl Fn(&StatusSnapshot) -> bool,
) -> StatusSnapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (snap, _) = monitor.status();
        if done(&snap) {
            return snap;
        }
        assert!(Instant::now() < deadline, "{what}: last status {snap:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn status_without_and_with_hello_changes_nothing() {
    let dir = TempDir::new("status-hello");
    let server = TestServer::start(server_config(dir.path(), 3));
    let mut monitor = Peer::connect(server.addr);
    let (snap, chunks) = monitor.status();
    assert_eq!(chunks, 1);
    assert_eq!((snap.agencies, snap.finished, snap.drawn), (3, 0, false));
    assert_complete(&snap);
    for e in &snap.entries {
        assert_eq!(
            (e.connected, e.finished, e.bets, e.winners),
            (false, false, 0, None)
        );
    }
    // Asking twice gives the same answer: the query changes nothing.
    assert_eq!(monitor.status().0, snap);
    // The same connection may still say HELLO, and then ask again.
    assert_eq!(monitor.say_hello(2, 42), Progress::fresh(42));
    let (snap, _) = monitor.status();
    assert!(row(&snap, 2).connected, "{snap:?}");
    assert!(!row(&snap, 1).connected && !row(&snap, 3).connected);
    // And it did not store, finish or bind anything else.
    let mut agency = Peer::connect(server.addr);
    assert_eq!(agency.say_hello(1, 7), Progress::fresh(7));
    // A STATUS_QUERY with a payload is malformed, and the conversation goes on.
    agency.send_bytes(&wire::frame(loteria::protocol::kind::STATUS_QUERY, &[1]));
    match agency.recv() {
        Some(Message::Error { code, .. }) => assert_eq!(code, ErrorCode::Malformed),
        other => panic!("expected MALFORMED, got {other:?}"),
    }
    assert_eq!(agency.status().0.agencies, 3);
    drop(monitor);
    let snap = status_until(&mut agency, "agency 2 released", |s| !row(s, 2).connected);
    assert!(row(&snap, 1).connected);
    server.stop().expect("clean stop");
}

#[test]
fn status_follows_uploads_fins_and_the_draw() {
    let dir = TempDir::new("status-lottery");
    let server = TestServer::start(server_config(dir.path(), 3));
    let mut monitor = Peer::connect(server.addr);
    let agencies = mock_agencies(&[12, 7, 5], 3);
    let mut peers = Vec::new();
    for (i, (bets, _)) in agencies.iter().enumerate() {
        let agency = i as u32 + 1;
        let mut peer = Peer::hello(server.addr, agency);
        // The first half now, the rest later.
        let half = bets.len() / 2;
        peer.store(1, bets[..half].to_vec());
        let (snap, _) = monitor.status();
        assert_eq!(row(&snap, agency).bets, half as u64);
        assert!(row(&snap, agency).connected);
        peer.store(2, bets[half..].to_vec());
        peers.push(peer);
    }
    let (snap, _) = monitor.status();
    let stored: Vec<u64> = snap.entries.iter().map(|e| e.bets).collect();
    assert_eq!(stored, vec![12, 7, 5]);
    assert_eq!(snap.finished, 0);
    // Agencies 1 and 3 finish: 2 is the one missing.
    assert_eq!(peers[0].fin(), (1, 3));
    assert_eq!(peers[2].fin(), (2, 3));
    let (snap, _) = monitor.status();
    assert_complete(&snap);
    assert_eq!((snap.finished, snap.drawn), (2, false));
    assert_eq!(snap.missing(), vec![2]);
    assert!(
        snap.entries.iter().all(|e| e.winners.is_none()),
        "no winners before the draw"
    );
    // The last FIN runs the draw; every agency asks for its winners.
    assert_eq!(peers[1].fin(), (3, 3));
    let mut got = Vec::new();
    for peer in &mut peers {
        got.push(peer.winners().len() as u32);
    }
    let expected: Vec<u32> = agencies.iter().map(|(_, w)| w.len() as u32).collect();
    assert_eq!(got, expected);
    let (snap, _) = monitor.status();
    assert_complete(&snap);
    assert!(snap.drawn);
    let counts: Vec<Option<u32>> = snap.entries.iter().map(|e| e.winners).collect();
    assert_eq!(
        counts,
        expected.iter().map(|&w| Some(w)).collect::<Vec<_>>(),
        "STATUS counts what each agency got"
    );
    drop(peers);
    let snap = status_until(&mut monitor, "agencies released", |s| {
        s.entries.iter().all(|e| !e.connected)
    });
    assert!(snap.drawn && snap.finished == 3);
    server.stop().expect("clean stop");
}

#[test]
fn a_thousand_agencies_take_three_chunks_of_one_snapshot() {
    let dir = TempDir::new("status-1000");
    let server = TestServer::start(server_config(dir.path(), 1000));
    for agency in [1u32, 480, 481, 1000] {
        let mut peer = Peer::hello(server.addr, agency);
        peer.store(1, vec![bet("Ana", &agency.to_string(), 1)]);
        peer.fin();
    }
    let mut monitor = Peer::connect(server.addr);
    monitor.send(&Message::StatusQuery);
    let mut sizes = Vec::new();
    let mut chunks = Vec::new();
    loop {
        match monitor.recv() {
            Some(Message::Status(chunk)) => {
                sizes.push(chunk.entries.len());
                let last = chunk.last;
                chunks.push(chunk);
                if last {
                    break;
                }
            }
            other => panic!("expected STATUS, got {other:?}"),
        }
    }
    assert_eq!(sizes, vec![480, 480, 40]);
    assert_eq!(STATUS_ENTRIES_PER_CHUNK, 480);
    let snap = StatusSnapshot::from_chunks(&chunks).expect("one whole answer");
    assert_complete(&snap);
    assert_eq!(snap.finished, 4);
    for agency in [1u32, 480, 481, 1000] {
        assert_eq!(
            (row(&snap, agency).bets, row(&snap, agency).finished),
            (1, true)
        );
    }
    assert_eq!(row(&snap, 2).bets, 0);
    assert_eq!(snap.missing().len(), 996);
    server.stop().expect("clean stop");
}

#[test]
fn an_agency_waiting_for_the_draw_gets_draw_pending_then_its_winners() {
    let dir = TempDir::new("status-pending");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut waiting = Peer::hello(server.addr, 1);
    waiting.store(1, vec![bet("Ana", "30904465", 7574)]);
    assert_eq!(waiting.fin(), (1, 2));
    let asked = Instant::now();
    waiting.send(&Message::WinnersQuery);
    // Two keep-alives, each about PENDING_INTERVAL after the previous one.
    let mut at = Vec::new();
    while at.len() < 2 {
        match waiting.recv_any() {
            Some(Message::DrawPending { finished, agencies }) => {
                assert_eq!((finished, agencies), (1, 2));
                at.push(asked.elapsed());
            }
            other => panic!("expected DRAW_PENDING, got {other:?}"),
        }
    }
    assert!(
        at[0] >= PENDING_INTERVAL,
        "first after the interval: {at:?}"
    );
    assert!(
        at[1] - at[0] >= PENDING_INTERVAL - Duration::from_millis(300),
        "{at:?}"
    );
    assert!(at[1] < 3 * PENDING_INTERVAL, "{at:?}");
    // The other agency finishes: the waiting one gets its winners, whole.
    let mut other = Peer::hello(server.addr, 2);
    assert_eq!(other.fin(), (2, 2));
    let mut documents = Vec::new();
    loop {
        match waiting.recv_any() {
            Some(Message::DrawPending { .. }) => {} // one may race with the draw
            Some(Message::Winners { last, documents: d }) => {
                documents.extend(d);
                if last {
                    break;
                }
            }
            other => panic!("expected WINNERS, got {other:?}"),
        }
    }
    assert_eq!(documents, vec!["30904465".to_string()]);
    // After the draw nothing more comes unasked: the next frame answers the next query.
    waiting.send(&Message::StatusQuery);
    assert!(matches!(waiting.recv_any(), Some(Message::Status(s)) if s.drawn));
    // A query after the draw is answered at once, with no DRAW_PENDING.
    assert_eq!(other.winners(), Vec::<String>::new());
    server.stop().expect("clean stop");
}

#[test]
fn metrics_and_the_page_over_http() {
    let dir = TempDir::new("status-http");
    let mut config = server_config(dir.path(), 2);
    let port = free_port();
    config.status_port = Some(port);
    let server = TestServer::start(config);
    let page: SocketAddr = ([127, 0, 0, 1], port).into();
    // A known upload: agency 1 stores 3 batches (4 + 4 + 2 bets), one batch is
    // refused, and it finishes; agency 2 stores one bet and stays connected.
    let mut sent_bytes = 0usize;
    let mut peer = Peer::connect(server.addr);
    let hello = Message::Hello {
        agency: 1,
        upload: 0,
    };
    sent_bytes += hello.encode().expect("encodes").len();
    peer.send(&hello);
    assert!(matches!(peer.recv(), Some(Message::Welcome { .. })));
    let bets: Vec<_> = (0..10)
        .map(|i| bet("Ana", &format!("{i}"), if i == 3 { 7574 } else { 1 }))
        .collect();
    for (seq, batch) in [&bets[..4], &bets[4..8], &bets[8..]].iter().enumerate() {
        let message = Message::Bets {
            seq: seq as u64 + 1,
            line: 0,
            bets: batch.to_vec(),
        };
        sent_bytes += message.encode().expect("encodes").len();
        peer.store(seq as u64 + 1, batch.to_vec());
    }
    let mut bad = bet("Ana", "1", 1);
    bad.number = 12000;
    let message = Message::Bets {
        seq: 4,
        line: 0,
        bets: vec![bad],
    };
    sent_bytes += message.encode().expect("encodes").len();
    match peer.request(&message) {
        Message::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidBet),
        other => panic!("expected INVALID_BET, got {other:?}"),
    }
    sent_bytes += Message::Fin.encode().expect("encodes").len();
    assert_eq!(peer.fin(), (1, 2));
    let mut second = Peer::hello(server.addr, 2);
    second.store(1, vec![bet("Bea", "77", 7574)]);

    let metrics = http_get(page, "/metrics");
    assert_eq!(metrics.status, 200, "{}", metrics.head);
    assert!(
        metrics
            .head
            .contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        metrics.head
    );
    let value = |series: &str| {
        prom_value(&metrics.body, series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", metrics.body))
    };
    assert_eq!(value("loteria_bets_stored_total"), 11);
    assert_eq!(value("loteria_batches_stored_total"), 4);
    assert_eq!(value("loteria_errors_sent_total{code=\"INVALID_BET\"}"), 1);
    assert_eq!(value("loteria_errors_sent_total{code=\"BAD_SEQ\"}"), 0);
    assert_eq!(value("loteria_connections_accepted_total"), 2);
    assert_eq!(value("loteria_connections_open"), 2);
    assert_eq!(value("loteria_agencies"), 2);
    assert_eq!(value("loteria_agencies_finished"), 1);
    assert_eq!(value("loteria_agencies_connected"), 2);
    assert_eq!(value("loteria_bets_in_storage"), 11);
    assert_eq!(value("loteria_draw_done"), 0);
    // Agency 2's HELLO and BETS frames too.
    let second_bytes = Message::Hello {
        agency: 2,
        upload: 0,
    }
    .encode()
    .expect("encodes")
    .len()
        + Message::Bets {
            seq: 1,
            line: 0,
            bets: vec![bet("Bea", "77", 7574)],
        }
        .encode()
        .expect("encodes")
        .len();
    assert_eq!(
        value("loteria_received_bytes_total"),
        (sent_bytes + second_bytes) as u64
    );
    assert!(
        metrics
            .body
            .contains("# TYPE loteria_bets_stored_total counter")
    );

    let html = http_get(page, "/");
    assert_eq!(html.status, 200);
    assert!(html.head.contains("Content-Type: text/html"));
    assert!(html.body.contains("http-equiv=\"refresh\""));
    assert!(
        html.body
            .contains("<span id=\"finished\">1</span> of <span id=\"agencies\">2</span>"),
        "{}",
        html.body
    );
    assert!(html.body.contains("<span id=\"missing\">2</span>"));
    assert!(html.body.contains("<td class=\"bets\">10</td>"));
    assert!(!html.body.contains("src=\"http"), "self-contained");
    let json = http_get(page, "/status.json");
    assert_eq!(json.status, 200);
    assert!(json.body.contains("\"finished\":1") && json.body.contains("\"missing\":[2]"));
    assert_eq!(http_get(page, "/nothing-here").status, 404);
    assert_eq!(http_request(page, "POST", "/").status, 405);
    let head = http_request(page, "HEAD", "/metrics");
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    // The draw: the page shows the winners, the counter says so.
    assert_eq!(second.fin(), (2, 2));
    assert_eq!(peer.winners(), vec!["3".to_string()]);
    assert_eq!(second.winners(), vec!["77".to_string()]);
    let html = http_get(page, "/").body;
    assert!(html.contains("done: 2 winners"), "{html}");
    assert!(html.contains("<span id=\"missing\">none</span>"));
    let metrics = http_get(page, "/metrics").body;
    assert_eq!(prom_value(&metrics, "loteria_draw_done"), Some(1));
    assert_eq!(prom_value(&metrics, "loteria_winners"), Some(2));

    // Shutdown stops and joins the page's threads: the port is closed afterwards,
    // even with an idle HTTP connection open.
    let _idle = TcpStream::connect(page).expect("connect");
    let started = Instant::now();
    server.stop().expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        TcpStream::connect(page).is_err(),
        "status page still listening"
    );
}

#[test]
fn a_status_port_in_use_stops_the_server_with_a_clear_error() {
    let dir = TempDir::new("status-busy-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut config = server_config(dir.path(), 1);
    config.status_port = Some(port);
    let server = TestServer::start(config);
    let started = Instant::now();
    // `run` returns the error by itself; stop() only joins it.
    while started.elapsed() < Duration::from_secs(5) && TcpStream::connect(server.addr).is_ok() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let error = server.stop().expect_err("the status port is taken");
    assert!(matches!(error, ServerError::StatusPage(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("status"),
        "{text}"
    );
}

#[test]
fn the_server_logs_who_it_waits_for_and_a_draw_summary() {
    let dir = TempDir::new("status-logs");
    let mut server = Server::start(dir.path(), 3);
    let mut peers = Vec::new();
    for (agency, bets) in [(1u32, 3usize), (2, 2)] {
        let mut peer = Peer::hello(server.addr, agency);
        let batch = (0..bets)
            .map(|i| {
                bet(
                    "Ana",
                    &format!("{agency}{i}"),
                    if i == 0 { 7574 } else { 1 },
                )
            })
            .collect();
        peer.store(1, batch);
        peer.fin();
        // Both wait for the draw: still one log line per interval.
        peer.send(&Message::WinnersQuery);
        peers.push(peer);
    }
    let line = server
        .proc
        .wait_for("action: waiting_agencies | result: in_progress");
    assert!(
        line.ends_with("| finished: 2 | agencies: 3 | missing: 3"),
        "{line}"
    );
    let mut last = Peer::hello(server.addr, 3);
    last.fin();
    let line = server
        .proc
        .wait_for("action: draw_summary | result: success");
    assert!(
        line.contains("| agencies: 3 | bets: 5 | winners: 2 | duration: "),
        "{line}"
    );
    assert!(
        line.ends_with("| bets_per_agency: 1:3,2:2,3:0 | winners_per_agency: 1:1,2:1,3:0"),
        "{line}"
    );
    let duration = process::field(&line, "duration").expect("duration");
    assert!(
        duration.ends_with("ms") || duration.ends_with('s'),
        "{duration}"
    );
    // One line per interval, not one per waiter: two agencies wait, yet there is at
    // most one line per WAITING_LOG_EVERY (5 s) and the wait lasted less than 10 s.
    let waits = server
        .proc
        .log_lines("waiting_agencies", "in_progress")
        .len();
    assert!(waits <= 2, "{waits} waiting_agencies lines");
    drop(peers);
    drop(last);
    server.stop();
    // After a restart the restored draw is summed up again.
    let mut again = Server::start(dir.path(), 3);
    let line = again
        .proc
        .wait_for("action: draw_summary | result: success");
    assert!(
        line.ends_with("| bets_per_agency: 1:3,2:2,3:0 | winners_per_agency: 1:1,2:1,3:0"),
        "{line}"
    );
    again.stop();
}

/// Regression (issue 9 review): a status answer was written chunk by chunk with only
/// the per-write timeout, so a reader that kept taking it at a steady pace held the
/// server thread for as long as the answer took (1 000 000 agencies: 17 MB; at
/// 40 kB/s, seven minutes with the default 60 s timeout). The whole answer now has one
/// deadline, `server.io_timeout`: a reader taking it at about 3 MB/s with a 2 s
/// timeout gets the first part and then the end of the stream, never all of it.
#[test]
fn a_status_answer_slower_than_the_io_timeout_is_cut() {
    use std::io::Read;
    let dir = TempDir::new("status-trickle");
    let agencies = 1_000_000;
    let mut config = server_config(dir.path(), agencies);
    config.io_timeout = Duration::from_secs(2);
    let server = TestServer::start(config);
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .set_recv_buffer_size(64 * 1024)
        .expect("a small window");
    socket.connect(&server.addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    std::io::Write::write_all(
        &mut stream,
        &Message::StatusQuery.encode().expect("encodes"),
    )
    .expect("ask");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let whole: usize = agencies as usize / STATUS_ENTRIES_PER_CHUNK * 8_000;
    let started = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        assert!(started.elapsed() < Duration::from_secs(60), "still reading");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "status answer at ~3 MB/s: {got} bytes in {:?} (the whole answer is over {whole})",
        started.elapsed()
    );
    assert!(got > 0, "the answer started");
    assert!(
        got < whole * 5 / 6,
        "the whole answer went out: {got} bytes"
    );
    wire::stop_bounded(server);
}
