//! The server's life over loopback: `stop()` wakes held agencies and idle connections
//! and keeps every acknowledged bet; `max_connections` refuses the extra connection
//! with SERVER_BUSY; `io_timeout` ends idle connections with IDLE_TIMEOUT.
mod support;

use std::collections::HashSet;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use loteria::protocol::{ErrorCode, Message, VERSION, kind};
use support::wire::*;
use support::*;

/// After shutdown a held agency gets SHUTTING_DOWN and a close, or just a close.
fn expect_shutting_down_or_close(peer: &mut Peer) {
    match recv_or_close(peer) {
        None => {}
        Some(Message::Error {
            code: ErrorCode::ShuttingDown,
            ..
        }) => expect_closed(peer),
        Some(other) => panic!("expected SHUTTING_DOWN or a close, got {other:?}"),
    }
}

// ---------------------------------------------------------------------- shutdown

#[test]
fn stop_wakes_held_agencies_and_keeps_acknowledged_bets() {
    let dir = TempDir::new("stop-held");
    let server = TestServer::start(server_config(dir.path(), 3));
    let storage = server.storage.clone();
    let mut one = Peer::hello(server.addr, 1);
    one.store(1, vec![bet("Ana", "1", 7574), bet("Luis", "2", 1)]);
    one.store(2, vec![bet("Eva", "3", 7574)]);
    assert_eq!(one.fin(), (1, 3));
    one.send(&Message::WinnersQuery);
    let mut two = Peer::hello(server.addr, 2);
    two.store(1, vec![bet("Sara", "4", 4)]);
    assert_eq!(two.fin(), (2, 3));
    two.send(&Message::WinnersQuery);
    // Agency 3 stored a batch but never finishes.
    let mut three = Peer::hello(server.addr, 3);
    three.store(1, vec![bet("Juan", "5", 7574)]);
    expect_no_reply_within(&mut one, HOLD);
    expect_no_reply_within(&mut two, HOLD);

    stop_bounded(server);

    expect_shutting_down_or_close(&mut one);
    expect_shutting_down_or_close(&mut two);
    expect_closed(&mut three);
    let expected = vec![
        (1, "1".to_string(), 7574),
        (1, "2".to_string(), 1),
        (1, "3".to_string(), 7574),
        (2, "4".to_string(), 4),
        (3, "5".to_string(), 7574),
    ];
    assert_eq!(
        sorted(&stored_rows(&storage)),
        expected,
        "every acknowledged bet survives the shutdown"
    );
}

#[test]
fn idle_and_half_sent_connections_do_not_prevent_stop() {
    let dir = TempDir::new("stop-idle");
    let server = TestServer::start(server_config(dir.path(), 2));
    // Proven served (a reply came back), then idle in the server's read.
    let mut echoed = Peer::connect(server.addr);
    assert_eq!(
        echoed.request(&Message::Echo(b"x".to_vec())),
        Message::Echo(b"x".to_vec())
    );
    let mut identified = Peer::hello(server.addr, 1);
    // Half a header: the server is blocked in the middle of a frame.
    let mut half = Peer::connect(server.addr);
    half.send_bytes(&[VERSION, kind::BETS]);
    // A whole header whose payload never comes.
    let mut headless = Peer::hello(server.addr, 2);
    headless.send_bytes(&raw_frame(VERSION, kind::BETS, 100, &[0; 10]));
    // Never said anything.
    let mut silent = Peer::connect(server.addr);
    // Make sure the server has accepted them all (it answers in order).
    let mut last = Peer::connect(server.addr);
    assert_eq!(
        last.request(&Message::Echo(Vec::new())),
        Message::Echo(Vec::new())
    );
    let storage = server.storage.clone();

    stop_bounded(server);

    for peer in [
        &mut echoed,
        &mut identified,
        &mut half,
        &mut headless,
        &mut silent,
        &mut last,
    ] {
        expect_shutting_down_or_close(peer);
    }
    assert!(stored_rows(&storage).is_empty());
}

#[test]
fn stop_during_uploads_keeps_every_acknowledged_batch_whole() {
    let dir = TempDir::new("stop-uploads");
    let server = TestServer::start(server_config(dir.path(), 4));
    let storage = server.storage.clone();
    // Large enough that no uploader can finish before the stop, however the threads
    // are scheduled (the test asserts the stop came mid-upload).
    let data = mock_agencies(&[30_000, 30_000, 30_000, 30_000], 11);
    let (started_tx, started_rx) = mpsc::channel();
    let uploaders: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, (bets, _))| {
            let bets = bets.clone();
            let addr = server.addr;
            let started_tx = started_tx.clone();
            thread::spawn(move || {
                // Returns the documents of the batches that were acknowledged.
                let mut acked = Vec::new();
                let mut peer = Peer::hello(addr, i as u32 + 1);
                for (k, batch) in batches(&bets, 10).into_iter().enumerate() {
                    let seq = k as u64 + 1;
                    let count = batch.len() as u16;
                    let docs: Vec<String> = batch.iter().map(|b| b.document.clone()).collect();
                    if peer
                        .conn
                        .write_message(&Message::Bets {
                            seq,
                            line: 0,
                            bets: batch,
                        })
                        .is_err()
                    {
                        break;
                    }
                    match recv_or_close(&mut peer) {
                        Some(Message::BetsAck { seq: s, count: c }) => {
                            assert_eq!((s, c), (seq, count));
                            acked.extend(docs);
                        }
                        None
                        | Some(Message::Error {
                            code: ErrorCode::ShuttingDown,
                            ..
                        }) => break,
                        Some(other) => panic!("unexpected reply {other:?}"),
                    }
                    if k == 2 {
                        let _ = started_tx.send(());
                    }
                }
                acked
            })
        })
        .collect();
    for _ in 0..4 {
        started_rx
            .recv_timeout(TIMEOUT)
            .expect("every uploader got going");
    }
    stop_bounded(server);

    let stored = stored_rows(&storage);
    let stored_docs: HashSet<(u32, String)> =
        stored.iter().map(|(a, d, _)| (*a, d.clone())).collect();
    assert_eq!(stored_docs.len(), stored.len(), "nothing stored twice");
    assert!(
        stored.len() < 4 * 30_000,
        "the shutdown came in the middle of the uploads"
    );
    for (i, uploader) in uploaders.into_iter().enumerate() {
        let agency = i as u32 + 1;
        let acked = uploader.join().expect("uploader thread");
        assert!(
            acked.len() >= 30,
            "agency {agency} had acknowledged batches"
        );
        for doc in &acked {
            assert!(
                stored_docs.contains(&(agency, doc.clone())),
                "acknowledged bet {agency}/{doc} lost by the shutdown"
            );
        }
        // Whatever was stored is a prefix of whole batches of what was sent.
        let mine: Vec<&String> = stored
            .iter()
            .filter(|r| r.0 == agency)
            .map(|r| &r.1)
            .collect();
        assert_eq!(mine.len() % 10, 0, "agency {agency}: only whole batches");
        let sent: Vec<&String> = data[i]
            .0
            .iter()
            .map(|b| &b.document)
            .take(mine.len())
            .collect();
        assert_eq!(mine, sent, "agency {agency}: stored in order, no gaps");
    }
}

#[test]
fn acknowledged_bets_count_in_the_draw_after_a_restart() {
    let dir = TempDir::new("restart");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, vec![bet("Ana", "1", 7574), bet("Luis", "2", 2)]);
    drop(peer);
    stop_bounded(server);

    let server = TestServer::start(server_config(dir.path(), 1));
    assert_eq!(
        server.stored().len(),
        2,
        "the bets file was reopened, not emptied"
    );
    let (mut peer, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert_eq!((progress.stored_seq, progress.stored_bets), (1, 2));
    peer.store(2, vec![bet("Eva", "3", 7574)]);
    assert_eq!(peer.fin(), (1, 1));
    assert_eq!(sorted(&peer.winners()), vec!["1".to_string(), "3".into()]);
    stop_bounded(server);
}

// --------------------------------------------------------------- max_connections

#[test]
fn a_connection_over_max_connections_gets_server_busy() {
    let dir = TempDir::new("busy");
    let mut config = server_config(dir.path(), 3);
    config.max_connections = 2;
    let server = TestServer::start(config);
    // Two connections that have not said HELLO take both places.
    let mut one = Peer::connect(server.addr);
    let two = Peer::connect(server.addr);

    // A third, silent connection, and a fourth that speaks first: both refused.
    let mut third = Peer::connect(server.addr);
    let reason = expect_error(&mut third, ErrorCode::ServerBusy);
    assert!(reason.contains('2'), "reason names the limit: {reason}");
    expect_closed(&mut third);
    let mut fourth = Peer::connect(server.addr);
    fourth.send(&Message::Hello {
        agency: 3,
        upload: 0,
    });
    expect_error(&mut fourth, ErrorCode::ServerBusy);
    expect_closed(&mut fourth);

    // Once one leaves, there is room again (the server notices the close on its own
    // schedule: retry, bounded).
    drop(two);
    let mut admitted = None;
    for _ in 0..400 {
        let mut peer = Peer::connect(server.addr);
        peer.send(&Message::Hello {
            agency: 3,
            upload: 0,
        });
        match recv_or_close(&mut peer) {
            Some(Message::Welcome { agency: 3, .. }) => {
                admitted = Some(peer);
                break;
            }
            Some(Message::Error {
                code: ErrorCode::ServerBusy,
                ..
            })
            | None => thread::sleep(Duration::from_millis(25)),
            Some(other) => panic!("unexpected reply {other:?}"),
        }
    }
    let mut three = admitted.expect("a freed slot is reused");
    // The served connection is undisturbed.
    one.say_hello(1, 0);
    one.store(1, vec![bet("Ana", "1", 7574)]);
    three.store(1, vec![bet("Eva", "3", 7574)]);
    assert_eq!(server.stored().len(), 2);

    // A connection that owns its agency (its HELLO was accepted) takes no place: two
    // more connections without HELLO are served (STATUS_QUERY needs none), a third not.
    let mut five = Peer::connect(server.addr);
    let mut six = Peer::connect(server.addr);
    let mut seven = Peer::connect(server.addr);
    assert_eq!(five.status().0.agencies, 3);
    assert_eq!(six.status().0.agencies, 3);
    expect_error(&mut seven, ErrorCode::ServerBusy);
    stop_bounded(server);
}

// -------------------------------------------------------------------- io_timeout

#[test]
fn an_idle_connection_gets_idle_timeout_and_is_closed() {
    let dir = TempDir::new("idle");
    // 1 s, not less: a test thread descheduled between a reply and its next request
    // on a loaded CI machine must not look idle.
    let server = TestServer::start(with_timeout(&dir, 2, Duration::from_secs(1)));
    let mut identified = Peer::hello(server.addr, 1);
    identified.store(1, vec![bet("Ana", "1", 7574)]);
    let mut silent = Peer::connect(server.addr);
    let mut half = Peer::connect(server.addr);
    half.send_bytes(&[VERSION, kind::HELLO, 0]);
    for peer in [&mut identified, &mut silent, &mut half] {
        let reason = expect_error(peer, ErrorCode::IdleTimeout);
        assert!(reason.contains("1s"), "reason names the timeout: {reason}");
        expect_closed(peer);
    }
    // What was acknowledged stays; the agency can come back.
    let mut back = Peer::hello(server.addr, 1);
    back.store(2, vec![bet("Luis", "2", 2)]);
    assert_eq!(server.stored().len(), 2);
    stop_bounded(server);
}

#[test]
fn a_busy_conversation_longer_than_io_timeout_is_not_cut() {
    let dir = TempDir::new("not-idle");
    let server = TestServer::start(with_timeout(&dir, 1, Duration::from_secs(1)));
    let mut peer = Peer::hello(server.addr, 1);
    // About 2 s of conversation in total, never more than 50 ms of silence.
    for i in 0..40u64 {
        peer.store(i + 1, vec![bet("Ana", &i.to_string(), 1)]);
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.stored().len(), 40);
    stop_bounded(server);
}

#[test]
fn an_agency_held_at_the_barrier_is_not_idle() {
    let dir = TempDir::new("held-not-idle");
    let server = TestServer::start(with_timeout(&dir, 2, Duration::from_secs(1)));
    let mut one = Peer::hello(server.addr, 1);
    one.store(1, vec![bet("Ana", "1", 7574)]);
    assert_eq!(one.fin(), (1, 2));
    one.send(&Message::WinnersQuery);
    // Held for several io_timeouts: neither IDLE_TIMEOUT nor a close.
    expect_no_reply_within(&mut one, Duration::from_secs(3));
    let mut two = Peer::hello(server.addr, 2);
    assert_eq!(two.fin(), (2, 2));
    assert_eq!(flatten(&collect_chunks(&mut one)), vec!["1".to_string()]);
    // Idle again after the answer: now the timeout applies.
    expect_error(&mut one, ErrorCode::IdleTimeout);
    expect_closed(&mut one);
    stop_bounded(server);
}

// ------------------------------------------------------------ regressions

/// Regression: a held WINNERS_QUERY whose agency disconnected used to go unnoticed.
/// The server thread stayed parked on the `drawn` condvar (it does not read the socket
/// while waiting), so the dead connection kept its `max_connections` slot until the
/// draw or shutdown. Now the waiting thread probes its peer. Here (3 agencies, max_connections = 3) agency 1 asks and crashes, then
/// comes back and asks again, agency 2 asks: the server counts 3 connections although
/// only 2 are alive, and agency 3 got SERVER_BUSY forever: the draw could never run.
#[test]
fn an_agency_that_leaves_while_held_frees_its_connection_slot() {
    let dir = TempDir::new("abandoned-waiter");
    let mut config = server_config(dir.path(), 3);
    config.max_connections = 3;
    let server = TestServer::start(config);

    let mut crashed = Peer::hello(server.addr, 1);
    crashed.store(1, vec![bet("Ana", "1", 7574)]);
    assert_eq!(crashed.fin(), (1, 3));
    crashed.send(&Message::WinnersQuery);
    expect_no_reply_within(&mut crashed, HOLD);
    drop(crashed); // the agency's process dies while waiting

    let mut one = Peer::hello(server.addr, 1); // restarted agency 1
    assert_eq!(one.fin(), (1, 3));
    one.send(&Message::WinnersQuery);
    let mut two = Peer::hello(server.addr, 2);
    assert_eq!(two.fin(), (2, 3));
    two.send(&Message::WinnersQuery);

    // Only two connections are alive: agency 3 must get in (retry, bounded).
    let mut admitted = None;
    for _ in 0..200 {
        let mut peer = Peer::connect(server.addr);
        peer.send(&Message::Hello {
            agency: 3,
            upload: 0,
        });
        match recv_or_close(&mut peer) {
            Some(Message::Welcome { agency: 3, .. }) => {
                admitted = Some(peer);
                break;
            }
            _ => thread::sleep(Duration::from_millis(25)),
        }
    }
    let mut three = admitted.expect("agency 3 admitted: only 2 live connections of 3");
    assert_eq!(three.fin(), (3, 3));
    assert_eq!(flatten(&collect_chunks(&mut one)), vec!["1".to_string()]);
    assert_eq!(collect_chunks(&mut two), vec![(true, Vec::new())]);
    stop_bounded(server);
}

/// Regression: PROTOCOL.md documents SHUTTING_DOWN (14) for "the server is stopping",
/// and `Session::winners` sends it to a held agency, but the shutdown hook used to
/// shut every socket down *before* waking the held threads, so that write always
/// failed and a held agency only saw a bare close.
#[test]
fn a_held_agency_is_told_the_server_is_shutting_down() {
    let dir = TempDir::new("shutting-down");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut one = Peer::hello(server.addr, 1);
    assert_eq!(one.fin(), (1, 2));
    one.send(&Message::WinnersQuery);
    expect_no_reply_within(&mut one, HOLD);
    stop_bounded(server);
    match recv_or_close(&mut one) {
        Some(Message::Error {
            code: ErrorCode::ShuttingDown,
            ..
        }) => expect_closed(&mut one),
        other => panic!("expected SHUTTING_DOWN before the close, got {other:?}"),
    }
}
