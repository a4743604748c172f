//! Bad bytes and bad conversations over real loopback sockets: every one gets the
//! ERROR code `docs/PROTOCOL.md` documents, the closing ones close the connection, the
//! others leave it usable, and ECHO repeats its request byte for byte.
mod support;

use std::io::Write;
use std::net::Shutdown as Both;

use loteria::protocol::{ErrorCode, Message, VERSION, kind};
use support::wire::*;
use support::*;

/// The connection still works after a non-closing error: HELLO gets WELCOME.
fn assert_still_usable(peer: &mut Peer, agency: u32) {
    assert_eq!(
        peer.request(&Message::Hello { agency, upload: 0 }),
        fresh_welcome(agency, 0),
        "the connection must go on after a non-closing error"
    );
}

/// An ECHO on a fresh connection proves the server still serves others.
fn assert_server_serves(server: &TestServer) {
    let mut other = Peer::connect(server.addr);
    assert_eq!(
        other.request(&Message::Echo(b"still here".to_vec())),
        Message::Echo(b"still here".to_vec())
    );
}

// ---------------------------------------------------------------- closing errors

#[test]
fn binary_garbage_gets_unsupported_version_and_a_close() {
    let dir = TempDir::new("garbage");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut peer = Peer::connect(server.addr);
    // A control byte first: not a frame and not text (text is echoed, see
    // tests/plaintext_echo.rs).
    peer.send_bytes(b"\x1bhello\n");
    let reason = expect_error(&mut peer, ErrorCode::UnsupportedVersion);
    assert!(
        reason.contains("version"),
        "reason names the problem: {reason}"
    );
    expect_closed(&mut peer);
    assert_server_serves(&server);
    server.stop().expect("clean stop");
}

#[test]
fn a_wrong_version_byte_gets_unsupported_version_and_a_close() {
    let dir = TempDir::new("version");
    let server = TestServer::start(server_config(dir.path(), 2));
    for version in [0u8, 1, 2, 4, 0xff] {
        let mut peer = Peer::connect(server.addr);
        // A perfectly shaped HELLO except for the version byte.
        peer.send_bytes(&raw_frame(version, kind::HELLO, 4, &1u32.to_be_bytes()));
        let reason = expect_error(&mut peer, ErrorCode::UnsupportedVersion);
        assert!(
            reason.contains(&version.to_string()),
            "reason names version {version}: {reason}"
        );
        expect_closed(&mut peer);
    }
    assert_server_serves(&server);
    server.stop().expect("clean stop");
}

#[test]
fn a_wrong_version_after_a_good_conversation_still_closes() {
    let dir = TempDir::new("version-late");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, vec![bet("Ana", "1", 5)]);
    peer.send_bytes(&raw_frame(9, kind::FIN, 0, &[]));
    expect_error(&mut peer, ErrorCode::UnsupportedVersion);
    expect_closed(&mut peer);
    // What was acknowledged before stays stored, and the bad FIN counted for nothing.
    assert_eq!(server.stored(), vec![(1, "1".to_string(), 5)]);
    let mut again = Peer::hello(server.addr, 1);
    assert_eq!(again.fin(), (1, 2), "the garbled FIN was not recorded");
    server.stop().expect("clean stop");
}

#[test]
fn an_oversized_length_gets_frame_too_large_and_a_close() {
    let dir = TempDir::new("too-large");
    let server = TestServer::start(server_config(dir.path(), 2));
    for len in [0xffffu16, 8189] {
        let mut peer = Peer::connect(server.addr);
        // Only the header: the server must refuse before waiting for the payload.
        peer.send_bytes(&raw_frame(VERSION, kind::ECHO, len, &[]));
        let reason = expect_error(&mut peer, ErrorCode::FrameTooLarge);
        assert!(
            reason.contains(&len.to_string()),
            "reason names length {len}: {reason}"
        );
        expect_closed(&mut peer);
    }
    assert_server_serves(&server);
    server.stop().expect("clean stop");
}

#[test]
fn an_oversized_bets_frame_from_an_identified_agency_stores_nothing() {
    let dir = TempDir::new("too-large-bets");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    peer.send_bytes(&raw_frame(VERSION, kind::BETS, 0xffff, &[]));
    expect_error(&mut peer, ErrorCode::FrameTooLarge);
    expect_closed(&mut peer);
    assert!(server.stored().is_empty());
    server.stop().expect("clean stop");
}

#[test]
fn a_truncated_payload_then_close_stores_nothing_and_is_closed() {
    let dir = TempDir::new("truncated");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    let whole = bets_frame(1, &[good_raw_bet("30904465", 7574)]);
    // The header promises the whole payload; five bytes never arrive.
    send_and_half_close(&mut peer, &whole[..whole.len() - 5]);
    expect_closed(&mut peer);
    assert!(
        server.stored().is_empty(),
        "a truncated batch must store nothing"
    );
    // The agency can reconnect and send the batch whole: it is stored once.
    let mut again = Peer::hello(server.addr, 1);
    again.send_bytes(&whole);
    assert_eq!(again.recv(), Some(Message::BetsAck { seq: 1, count: 1 }));
    assert_eq!(server.stored(), vec![(1, "30904465".to_string(), 7574)]);
    server.stop().expect("clean stop");
}

#[test]
fn a_truncated_header_then_close_is_closed_and_harmless() {
    let dir = TempDir::new("truncated-header");
    let server = TestServer::start(server_config(dir.path(), 1));
    for cut in 1..4 {
        let mut peer = Peer::connect(server.addr);
        send_and_half_close(&mut peer, &hello_frame(1)[..cut]);
        expect_closed(&mut peer);
    }
    assert_server_serves(&server);
    server.stop().expect("clean stop");
}

// ------------------------------------------------------------ non-closing errors

#[test]
fn an_unknown_kind_gets_unknown_kind_and_the_conversation_goes_on() {
    let dir = TempDir::new("unknown-kind");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut peer = Peer::connect(server.addr);
    for k in [0x00u8, 0x07, 0x42, 0x80, 0x87, 0xfe] {
        peer.send_bytes(&frame(k, b"whatever"));
        let reason = expect_error(&mut peer, ErrorCode::UnknownKind);
        assert!(
            reason.contains(&format!("{k:02x}")),
            "reason names kind 0x{k:02x}: {reason}"
        );
    }
    assert_still_usable(&mut peer, 2);
    server.stop().expect("clean stop");
}

#[test]
fn reply_kinds_sent_to_the_server_get_unknown_kind() {
    let dir = TempDir::new("reply-kinds");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut peer = Peer::hello(server.addr, 1);
    let replies = [
        fresh_welcome(1, 0),
        Message::BetsAck { seq: 1, count: 1 },
        Message::FinAck {
            finished: 2,
            agencies: 2,
        },
        Message::Winners {
            last: true,
            documents: vec!["1".into()],
        },
        Message::Error {
            code: ErrorCode::Internal,
            reason: "x".into(),
        },
        Message::DrawPending {
            finished: 2,
            agencies: 2,
        },
        Message::Status(loteria::protocol::StatusChunk {
            last: true,
            agencies: 2,
            finished: 2,
            drawn: true,
            entries: Vec::new(),
        }),
    ];
    for reply in &replies {
        peer.send(reply);
        expect_error(&mut peer, ErrorCode::UnknownKind);
    }
    // None of them did anything: a FIN_ACK "2 of 2" sent to the server finished nobody.
    assert_eq!(peer.fin(), (1, 2));
    server.stop().expect("clean stop");
}

#[test]
fn malformed_payloads_get_malformed_and_the_conversation_goes_on() {
    let dir = TempDir::new("malformed");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut peer = Peer::connect(server.addr);

    let mut bad_utf8 = good_raw_bet("1", 1);
    bad_utf8[2] = 0xff; // first byte of "Ana"
    let mut count_too_big = bets_payload(1, &[good_raw_bet("1", 1)]);
    count_too_big[17] = 2; // says 2 bets, holds 1 (count is bytes 16..18)
    let mut trailing = bets_payload(1, &[good_raw_bet("1", 1)]);
    trailing.push(0);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("HELLO with 3 bytes", frame(kind::HELLO, &[0, 0, 1])),
        ("HELLO with 5 bytes", frame(kind::HELLO, &[0, 0, 0, 1, 0])),
        ("FIN with a payload", frame(kind::FIN, &[0])),
        (
            "WINNERS_QUERY with a payload",
            frame(kind::WINNERS_QUERY, &[1, 2]),
        ),
        (
            "BETS with no bets",
            frame(kind::BETS, &bets_payload(1, &[])),
        ),
        (
            "BETS shorter than its count",
            frame(kind::BETS, &count_too_big),
        ),
        ("BETS with trailing bytes", frame(kind::BETS, &trailing)),
        ("BETS with invalid UTF-8", bets_frame(1, &[bad_utf8])),
        ("BETS with 4 bytes", frame(kind::BETS, &[0, 0, 0, 1])),
        ("WINNERS with last = 2", frame(kind::WINNERS, &[2, 0, 0])),
    ];
    // Before HELLO, a request that needs one is refused as NOT_IDENTIFIED whatever its
    // payload; the others are decoded and refused as MALFORMED.
    let needs_hello =
        |bytes: &[u8]| matches!(bytes[1], kind::BETS | kind::FIN | kind::WINNERS_QUERY);
    for (what, bytes) in &cases {
        peer.send_bytes(bytes);
        let expected = if needs_hello(bytes) {
            ErrorCode::NotIdentified
        } else {
            ErrorCode::Malformed
        };
        match peer.recv() {
            Some(Message::Error { code, .. }) if code == expected => {}
            other => panic!("{what}: expected {expected}, got {other:?}"),
        }
    }
    // Still in sync and still usable, and not identified by any of the above.
    peer.send(&Message::Fin);
    expect_error(&mut peer, ErrorCode::NotIdentified);
    assert_still_usable(&mut peer, 1);
    // Identified now: the same payloads are MALFORMED, and none of them counts.
    for (what, bytes) in cases.iter().filter(|(_, b)| needs_hello(b)) {
        peer.send_bytes(bytes);
        match peer.recv() {
            Some(Message::Error {
                code: ErrorCode::Malformed,
                ..
            }) => {}
            other => panic!("{what}: expected MALFORMED, got {other:?}"),
        }
    }
    peer.store(1, vec![bet("Ana", "7", 7)]);
    assert_eq!(server.stored(), vec![(1, "7".to_string(), 7)]);
    server.stop().expect("clean stop");
}

#[test]
fn garbage_on_one_connection_does_not_disturb_another_agency() {
    let dir = TempDir::new("garbage-neighbour");
    let server = TestServer::start(server_config(dir.path(), 2));
    let data = mock_agencies(&[600], 7);
    let (bets, expected_winners) = &data[0];

    let addr = server.addr;
    let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
    let vandal = {
        let gate = std::sync::Arc::clone(&gate);
        std::thread::spawn(move || {
            gate.wait();
            let mut refused = 0;
            for round in 0..40 {
                let mut peer = Peer::connect(addr);
                match round % 5 {
                    0 => {
                        peer.send_bytes(b"\x1bhello\n");
                        expect_error(&mut peer, ErrorCode::UnsupportedVersion);
                        expect_closed(&mut peer);
                    }
                    1 => {
                        peer.send_bytes(&raw_frame(VERSION, kind::BETS, 0xffff, &[]));
                        expect_error(&mut peer, ErrorCode::FrameTooLarge);
                        expect_closed(&mut peer);
                    }
                    2 => {
                        // Says it is agency 2 (a HELLO for agency 1 would take agency
                        // 1's connection over), then sends a half batch and leaves.
                        peer.say_hello(2, 0);
                        let whole = bets_frame(1, &[good_raw_bet("99999999", 7574)]);
                        send_and_half_close(&mut peer, &whole[..whole.len() - 3]);
                        expect_closed(&mut peer);
                    }
                    3 => {
                        peer.send_bytes(&frame(0x42, &[1, 2, 3]));
                        expect_error(&mut peer, ErrorCode::UnknownKind);
                        peer.send_bytes(&frame(kind::HELLO, &[1]));
                        expect_error(&mut peer, ErrorCode::Malformed);
                        peer.send_bytes(&frame(kind::FIN, &[]));
                        expect_error(&mut peer, ErrorCode::NotIdentified);
                    }
                    _ => {
                        peer.send_bytes(&[0xff; 64]);
                        expect_error(&mut peer, ErrorCode::UnsupportedVersion);
                        expect_closed(&mut peer);
                    }
                }
                refused += 1;
            }
            refused
        })
    };

    let mut agency = Peer::hello(server.addr, 1);
    gate.wait();
    for (i, batch) in batches(bets, 25).into_iter().enumerate() {
        agency.store(i as u64 + 1, batch);
    }
    assert_eq!(vandal.join().expect("vandal thread"), 40);
    assert_eq!(agency.fin(), (1, 2));
    let mut two = Peer::hello(server.addr, 2);
    assert_eq!(two.fin(), (2, 2));
    assert_eq!(two.winners(), Vec::<String>::new());
    assert_eq!(sorted(&agency.winners()), sorted(expected_winners));
    assert_eq!(
        sorted(&server.stored()),
        sorted(&rows_of(1, bets)),
        "every bet stored exactly once, none of the vandal's"
    );
    server.stop().expect("clean stop");
}

// ------------------------------------------------------------------ conversation

#[test]
fn requests_before_hello_get_not_identified() {
    let dir = TempDir::new("not-identified");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut peer = Peer::connect(server.addr);
    peer.send(&Message::Bets {
        seq: 1,
        line: 0,
        bets: vec![bet("Ana", "1", 7574)],
    });
    expect_error(&mut peer, ErrorCode::NotIdentified);
    peer.send(&Message::Fin);
    expect_error(&mut peer, ErrorCode::NotIdentified);
    peer.send(&Message::WinnersQuery);
    expect_error(&mut peer, ErrorCode::NotIdentified);
    assert!(server.stored().is_empty());
    // Nothing was recorded: after HELLO, agency 1's FIN is the first.
    assert_still_usable(&mut peer, 1);
    assert_eq!(peer.fin(), (1, 2));
    server.stop().expect("clean stop");
}

#[test]
fn hello_outside_one_to_n_gets_unknown_agency() {
    let dir = TempDir::new("unknown-agency");
    let server = TestServer::start(server_config(dir.path(), 3));
    let mut peer = Peer::connect(server.addr);
    for agency in [0u32, 4, 5, u32::MAX] {
        peer.send(&Message::Hello { agency, upload: 0 });
        let reason = expect_error(&mut peer, ErrorCode::UnknownAgency);
        assert!(reason.contains(&agency.to_string()), "{reason}");
    }
    // Still unbound after the refusals, and still usable.
    peer.send(&Message::Fin);
    expect_error(&mut peer, ErrorCode::NotIdentified);
    assert_still_usable(&mut peer, 3);
    // A bound connection asking for an unknown agency is refused and stays bound.
    peer.send(&Message::Hello {
        agency: 0,
        upload: 0,
    });
    expect_error(&mut peer, ErrorCode::UnknownAgency);
    assert_eq!(peer.fin(), (1, 3));
    server.stop().expect("clean stop");
}

#[test]
fn a_second_hello_is_welcome_for_the_same_agency_and_refused_for_another() {
    let dir = TempDir::new("second-hello");
    let server = TestServer::start(server_config(dir.path(), 3));
    let mut peer = Peer::hello(server.addr, 2);
    assert_eq!(peer.say_hello(2, 0), Progress::fresh(0));
    peer.send(&Message::Hello {
        agency: 3,
        upload: 0,
    });
    let reason = expect_error(&mut peer, ErrorCode::AlreadyIdentified);
    assert!(
        reason.contains('2'),
        "reason names the bound agency: {reason}"
    );
    // Still bound to agency 2: its bets are stored as agency 2's.
    peer.store(1, vec![bet("Ana", "22", 1)]);
    assert_eq!(server.stored(), vec![(2, "22".to_string(), 1)]);
    // A repeated HELLO on the bound connection reports the progress, and does not
    // take the connection from itself: it goes on storing.
    let progress = peer.say_hello(2, 0);
    assert_eq!((progress.stored_seq, progress.stored_bets), (1, 1));
    peer.store(2, vec![bet("Luis", "23", 2)]);
    server.stop().expect("clean stop");
}

#[test]
fn winners_query_before_fin_gets_not_finished() {
    let dir = TempDir::new("not-finished");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, vec![bet("Ana", "1", 7574)]);
    peer.send(&Message::WinnersQuery);
    expect_error(&mut peer, ErrorCode::NotFinished);
    // Agency 2 finishing does not let agency 1 ask before its own FIN.
    let mut other = Peer::hello(server.addr, 2);
    assert_eq!(other.fin(), (1, 2));
    peer.send(&Message::WinnersQuery);
    expect_error(&mut peer, ErrorCode::NotFinished);
    // The conversation goes on: FIN (the last one, runs the draw), then the answer.
    assert_eq!(peer.fin(), (2, 2));
    assert_eq!(peer.winners(), vec!["1".to_string()]);
    assert_eq!(other.winners(), Vec::<String>::new());
    server.stop().expect("clean stop");
}

// ---------------------------------------------------------------------------- ECHO

fn echo_round_trip(stream: &mut std::net::TcpStream, payload: &[u8]) {
    let request = frame(kind::ECHO, payload);
    stream.write_all(&request).expect("send echo");
    let reply = read_n(stream, request.len());
    assert!(
        reply == request,
        "echo of {} payload bytes came back different",
        payload.len()
    );
}

#[test]
fn echo_is_byte_for_byte_without_hello() {
    let dir = TempDir::new("echo");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut stream = raw_connect(server.addr);
    // The worked example of PROTOCOL.md.
    stream
        .write_all(&[0x03, 0x05, 0x00, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f])
        .expect("send");
    assert_eq!(
        read_n(&mut stream, 9),
        [0x03, 0x05, 0x00, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f]
    );
    echo_round_trip(&mut stream, b"");
    echo_round_trip(&mut stream, "[CLIENT 1] Message N°1".as_bytes());
    // Bytes that look like frames, invalid UTF-8, zeros: all just payload.
    let tricky: Vec<u8> = hello_frame(1)
        .into_iter()
        .chain([0xff, 0xfe, 0x00, 0x00, 0x01])
        .collect();
    echo_round_trip(&mut stream, &tricky);
    let max: Vec<u8> = (0..8188u32).map(|i| (i * 31 % 251) as u8).collect();
    echo_round_trip(&mut stream, &max);
    // Two echoes written back to back come back back to back.
    let mut both = frame(kind::ECHO, b"one");
    both.extend(frame(kind::ECHO, b"two"));
    stream.write_all(&both).expect("send two");
    assert_eq!(read_n(&mut stream, both.len()), both);
    // Echo did not identify the connection.
    stream.write_all(&frame(kind::FIN, &[])).expect("send FIN");
    let mut conn = loteria::connection::Connection::new(stream).expect("wrap");
    match conn.read_message().expect("reply") {
        Some(Message::Error {
            code: ErrorCode::NotIdentified,
            ..
        }) => {}
        other => panic!("expected NOT_IDENTIFIED, got {other:?}"),
    }
    server.stop().expect("clean stop");
}

#[test]
fn echo_works_in_the_middle_of_an_agency_conversation() {
    let dir = TempDir::new("echo-mid");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, vec![bet("Ana", "1", 1)]);
    let max = vec![0xabu8; 8188];
    assert_eq!(
        peer.request(&Message::Echo(max.clone())),
        Message::Echo(max)
    );
    peer.store(2, vec![bet("Luis", "2", 2)]);
    assert_eq!(server.stored().len(), 2);
    // An echo one byte over the limit is a frame too large, and closes.
    peer.send_bytes(&raw_frame(VERSION, kind::ECHO, 8189, &[0; 8189]));
    expect_error(&mut peer, ErrorCode::FrameTooLarge);
    expect_closed(&mut peer);
    server.stop().expect("clean stop");
}

#[test]
fn half_closed_echo_client_still_gets_its_reply() {
    // nc-style: send the request, close the write side, read until the server closes.
    let dir = TempDir::new("echo-nc");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut stream = raw_connect(server.addr);
    let request = frame(kind::ECHO, b"ping");
    stream.write_all(&request).expect("send");
    stream.shutdown(Both::Write).expect("half close");
    let mut reply = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut reply).expect("read to the end");
    assert_eq!(reply, request);
    server.stop().expect("clean stop");
}
