//! Pipelining on every path: one answer per request, in request order; exactly-once
//! storage when a group commit fails with batches in flight; a connection holding
//! answers while it waits for the rest of a frame.
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use loteria::bet::Bet;
use loteria::protocol::{ErrorCode, Message, VERSION, kind};
use loteria::storage::{FaultAction, Faults, Step};
use support::wire::*;
use support::*;

fn bets(first: u32, count: u32) -> Vec<Bet> {
    (first..first + count)
        .map(|d| bet("Ana", &d.to_string(), (d % 10_000) as u16))
        .collect()
}

fn batch(seq: u64, count: u32) -> Message {
    Message::Bets {
        seq,
        line: seq,
        bets: bets(u32::try_from(seq).unwrap() * 1000, count),
    }
}

fn encode(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        m.encode_into(&mut out).expect("encode");
    }
    out
}

fn expect_ack(peer: &mut Peer, seq: u64, count: u16) {
    assert_eq!(
        peer.recv(),
        Some(Message::BetsAck { seq, count }),
        "seq {seq}"
    );
}

/// Every kind of request interleaved with batches, in one write: each gets exactly
/// one answer (STATUS: its chunks), in the order sent.
#[test]
fn every_request_kind_interleaved_with_batches_is_answered_once_in_order() {
    let dir = TempDir::new("rv-interleave");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut peer = Peer::hello(server.addr, 1);
    let mut bytes = encode(&[batch(1, 3), batch(2, 3), Message::StatusQuery, batch(3, 3)]);
    bytes.extend(encode(&[Message::Echo(b"\x01\x02".to_vec())]));
    bytes.extend(encode(&[
        batch(4, 3),
        Message::Hello {
            agency: 1,
            upload: 0,
        },
        batch(5, 3),
        Message::WinnersQuery, // Before FIN: NOT_FINISHED.
        batch(6, 3),
    ]));
    // A BETS that does not decode (count 0), then a good one.
    bytes.extend(frame(kind::BETS, &bets_payload(7, &[])));
    bytes.extend(encode(&[batch(7, 3), Message::Fin, batch(8, 3)]));
    peer.send_bytes(&bytes);

    expect_ack(&mut peer, 1, 3);
    expect_ack(&mut peer, 2, 3);
    loop {
        match peer.recv() {
            Some(Message::Status(chunk)) => {
                if chunk.last {
                    break;
                }
            }
            other => panic!("expected STATUS, got {other:?}"),
        }
    }
    expect_ack(&mut peer, 3, 3);
    assert_eq!(peer.recv(), Some(Message::Echo(b"\x01\x02".to_vec())));
    expect_ack(&mut peer, 4, 3);
    match peer.recv() {
        Some(Message::Welcome {
            agency: 1,
            stored_seq,
            stored_bets,
            ..
        }) => {
            // The WELCOME is sent after batch 4's ACK: batch 4 is durable by now.
            assert_eq!((stored_seq, stored_bets), (4, 12));
        }
        other => panic!("expected WELCOME, got {other:?}"),
    }
    expect_ack(&mut peer, 5, 3);
    expect_error(&mut peer, ErrorCode::NotFinished);
    expect_ack(&mut peer, 6, 3);
    expect_error(&mut peer, ErrorCode::Malformed);
    expect_ack(&mut peer, 7, 3);
    match peer.recv() {
        Some(Message::FinAck {
            finished: 1,
            agencies: 2,
        }) => {}
        other => panic!("expected FIN_ACK, got {other:?}"),
    }
    expect_error(&mut peer, ErrorCode::AgencyFinished);
    assert_eq!(server.stored().len(), 21);
    stop_bounded(server);
}

/// A frame with a bad version after accepted batches closes the connection: the
/// batches are answered first, then the error, then the close.
#[test]
fn a_closing_frame_error_after_batches_answers_them_first() {
    let dir = TempDir::new("rv-badversion");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    let mut bytes = encode(&[batch(1, 2), batch(2, 2), batch(3, 2)]);
    bytes.extend(raw_frame(VERSION.wrapping_add(1), kind::BETS, 0, &[]));
    peer.send_bytes(&bytes);
    for seq in 1..=3 {
        expect_ack(&mut peer, seq, 2);
    }
    expect_error(&mut peer, ErrorCode::UnsupportedVersion);
    expect_closed(&mut peer);
    assert_eq!(server.stored().len(), 6);
    stop_bounded(server);
}

/// Batches followed by the first bytes of a frame that never completes: the server
/// holds the answers while it waits for the frame; at the idle timeout it answers
/// them, in order, then IDLE_TIMEOUT, and closes.
#[test]
fn a_partial_frame_after_batches_gets_their_acks_then_idle_timeout() {
    let dir = TempDir::new("rv-partial");
    let server = TestServer::start(with_timeout(&dir, 1, Duration::from_secs(2)));
    let mut peer = Peer::hello(server.addr, 1);
    let mut bytes = encode(&[batch(1, 2), batch(2, 2), batch(3, 2)]);
    bytes.extend([VERSION, kind::BETS]); // Half a header.
    peer.send_bytes(&bytes);
    for seq in 1..=3 {
        expect_ack(&mut peer, seq, 2);
    }
    expect_error(&mut peer, ErrorCode::IdleTimeout);
    expect_closed(&mut peer);
    stop_bounded(server);
}

/// The same, and meanwhile a newer connection of the agency says HELLO: the old one
/// answers the batches it had accepted, then SUPERSEDED (each later one of its batches
/// is refused); the WELCOME counts exactly the batches the old one acknowledged,
/// however many of them it had read when the takeover came.
#[test]
fn superseded_while_holding_tickets_and_waiting_for_a_frame() {
    let dir = TempDir::new("rv-supersede-held");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut old = Peer::hello(server.addr, 1);
    let mut bytes = encode(&[batch(1, 2), batch(2, 2), batch(3, 2)]);
    bytes.extend([VERSION, kind::BETS, 0]); // Part of a header.
    old.send_bytes(&bytes);
    let mut new = Peer::connect(server.addr);
    let progress = new.say_hello(1, 0);
    let stored = progress.stored_seq;
    assert!(stored <= 3, "{progress:?}");
    assert_eq!(progress.stored_bets, stored * 2, "{progress:?}");
    for seq in 1..=stored {
        expect_ack(&mut old, seq, 2);
    }
    // Then SUPERSEDED (as the answer to the first batch it had not accepted, or on
    // its own), and the connection closes.
    expect_error(&mut old, ErrorCode::Superseded);
    expect_closed(&mut old);
    new.store(stored + 1, bets(9000, 1));
    assert_eq!(server.stored().len() as u64, stored * 2 + 1);
    stop_bounded(server);
}

/// A server whose store fails the `n`-th write of a commit's rows (1-based), once: the
/// store rolls the write back and goes on (a failed *sync* would disable it).
fn failing_server(dir: &TempDir, fail_at: usize) -> (TestServer, Arc<AtomicBool>) {
    let config = server_config(dir.path(), 1);
    let syncs = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&failed);
    let faults = Faults::with(move |step| {
        if step == Step::WriteRows && syncs.fetch_add(1, Ordering::SeqCst) + 1 == fail_at {
            flag.store(true, Ordering::SeqCst);
            return FaultAction::Fail(std::io::ErrorKind::Other);
        }
        FaultAction::Proceed
    });
    let store = reopen_store(&config.storage_path, faults).expect("open the store");
    (
        TestServer::start_with_store(config, Box::new(store)),
        failed,
    )
}

/// A group commit fails with many batches in flight: every batch gets one answer;
/// the ACKs are a prefix, each later batch is refused; a new connection's WELCOME
/// says exactly the acknowledged ones are stored, once each.
#[test]
fn a_failed_group_commit_in_the_middle_of_a_window_stores_exactly_the_acked_prefix() {
    const BATCHES: u64 = 120;
    for fail_at in [1, 2, 3] {
        let dir = TempDir::new(&format!("rv-fail-{fail_at}"));
        let (server, failed) = failing_server(&dir, fail_at);
        let mut peer = Peer::hello(server.addr, 1);
        let messages: Vec<Message> = (1..=BATCHES).map(|s| batch(s, 4)).collect();
        peer.send_bytes(&encode(&messages));
        let mut acked = 0u64;
        let mut refused = 0u64;
        for seq in 1..=BATCHES {
            match peer.recv() {
                Some(Message::BetsAck { seq: s, count: 4 }) if s == seq => {
                    assert_eq!(refused, 0, "batch {seq} acked after a refused one");
                    acked = seq;
                }
                Some(Message::Error {
                    code: ErrorCode::Internal | ErrorCode::BadSeq,
                    ..
                }) => refused += 1,
                other => panic!("batch {seq}: unexpected {other:?}"),
            }
        }
        let mut again = Peer::connect(server.addr);
        let progress = again.say_hello(1, 0);
        println!(
            "fail_at {fail_at} (failed: {}): acked {acked}, refused {refused}, WELCOME seq {}",
            failed.load(Ordering::SeqCst),
            progress.stored_seq
        );
        assert_eq!(progress.stored_seq, acked);
        assert_eq!(server.stored().len() as u64, acked * 4);
        drop(peer);
        stop_bounded(server);
    }
}

/// After a failed commit, the last *durable* batch sent again is a replay: it must be
/// acknowledged (it is stored), not refused INTERNAL "nothing was stored" — the
/// ledger's `last_group` still points at the failed group.
#[test]
fn a_replay_of_the_durable_batch_after_a_failed_commit_is_acknowledged() {
    let dir = TempDir::new("rv-replay-after-fail");
    let (server, _) = failing_server(&dir, 2);
    let mut peer = Peer::hello(server.addr, 1);
    let first = bets(100, 2);
    peer.store(1, first.clone());
    // Commit 2 fails: batch 2 is not stored.
    peer.send(&Message::Bets {
        seq: 2,
        line: 0,
        bets: bets(200, 2),
    });
    expect_error(&mut peer, ErrorCode::Internal);
    // Batch 1 again: stored, so a replay.
    let answer = peer.request(&Message::Bets {
        seq: 1,
        line: 0,
        bets: first,
    });
    assert_eq!(
        answer,
        Message::BetsAck { seq: 1, count: 2 },
        "a replay of the stored batch 1"
    );
    stop_bounded(server);
}

/// After a failed commit, a FIN (the failed batch given up on) finds every accepted
/// batch settled: it must be recorded, not refused INTERNAL for a batch that is gone.
#[test]
fn a_fin_after_a_failed_commit_is_recorded() {
    let dir = TempDir::new("rv-fin-after-fail");
    let (server, _) = failing_server(&dir, 2);
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, bets(100, 2));
    peer.send(&Message::Bets {
        seq: 2,
        line: 0,
        bets: bets(200, 2),
    });
    expect_error(&mut peer, ErrorCode::Internal);
    drop(peer);
    // The agency comes back (its file no longer holds batch 2's bets): batch 1 is
    // all it has stored, and it finishes.
    let mut again = Peer::connect(server.addr);
    let progress = again.say_hello(1, 0);
    assert_eq!(progress.stored_seq, 1);
    match again.request(&Message::Fin) {
        Message::FinAck { .. } => {}
        other => panic!("expected FIN_ACK on a new connection, got {other:?}"),
    }
    stop_bounded(server);
}

/// Over TLS: batches sent ahead in one write, then the stream's TLS close_notify and a
/// half-close while the server still holds them: every batch is stored and the
/// ACKs come back in order before the server's own close.
#[test]
fn tls_batches_sent_ahead_are_answered_in_order() {
    use support::certs::TestPki;
    let dir = TempDir::new("rv-tls");
    let pki = TestPki::new();
    let mut config = server_config(dir.path(), 1);
    config.tls = pki.server_files();
    config.tls_required = true;
    let server = TestServer::start(config);
    let tls = pki.client_tls(Some(&pki.agency(1)));
    let mut peer = Peer::connect_tls(server.addr, &tls);
    peer.say_hello(1, 0);
    const BATCHES: u64 = 200;
    let messages: Vec<Message> = (1..=BATCHES).map(|s| batch(s, 5)).collect();
    peer.conn.write_messages(&messages).expect("send ahead");
    peer.conn
        .write_messages(&[Message::StatusQuery])
        .expect("status");
    for seq in 1..=BATCHES {
        expect_ack(&mut peer, seq, 5);
    }
    match peer.recv() {
        Some(Message::Status(_)) => {}
        other => panic!("expected STATUS, got {other:?}"),
    }
    assert_eq!(server.stored().len() as u64, BATCHES * 5);
    stop_bounded(server);
}

/// Shutdown while a connection holds accepted batches and waits for the rest of a
/// frame: the server stops (no thread stuck), and what it stored is a prefix of the
/// batches, once each, as a restart finds it.
#[test]
fn shutdown_while_holding_tickets_stores_a_prefix_once() {
    let dir = TempDir::new("rv-shutdown-held");
    let config = server_config(dir.path(), 1);
    let path = config.storage_path.clone();
    let server = TestServer::start(config.clone());
    let mut peer = Peer::hello(server.addr, 1);
    let mut bytes = encode(&(1..=50).map(|s| batch(s, 3)).collect::<Vec<_>>());
    bytes.extend([VERSION, kind::BETS]);
    peer.send_bytes(&bytes);
    // The server holds every answer while it waits for the rest of the last frame.
    expect_no_reply_within(&mut peer, HOLD);
    stop_bounded(server);
    let rows = stored_rows(&path);
    assert_eq!(rows.len() % 3, 0);
    let mut documents: Vec<&String> = rows.iter().map(|r| &r.1).collect();
    let n = documents.len();
    documents.sort();
    documents.dedup();
    assert_eq!(documents.len(), n, "a bet stored twice");
    let server = TestServer::start(config);
    let mut again = Peer::connect(server.addr);
    let progress = again.say_hello(1, 0);
    assert_eq!(progress.stored_bets as usize, n);
    assert_eq!(progress.stored_seq * 3, progress.stored_bets);
    println!(
        "shutdown with batches in flight: {} of 50 stored",
        progress.stored_seq
    );
    stop_bounded(server);
}
