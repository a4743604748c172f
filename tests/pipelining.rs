//! Pipelining over loopback (docs/PROTOCOL.md, "Pipelining"): a peer may send
//! batches ahead of their acknowledgements; the server answers every request once, in
//! the order sent, stores each batch once, and makes many of them durable with one
//! sync (its group commit takes every batch read ahead).
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use loteria::bet::Bet;
use loteria::protocol::{ErrorCode, Message};
use loteria::storage::{FaultAction, Faults, Step};
use support::wire::*;
use support::*;

/// `count` distinct valid bets, documents from `first` on.
fn bets(first: u32, count: u32) -> Vec<Bet> {
    (first..first + count)
        .map(|d| bet("Ana", &d.to_string(), (d % 10_000) as u16))
        .collect()
}

/// A test server whose store counts its commits (one sync of the bets file each).
fn counting_server(dir: &TempDir, agencies: u32) -> (TestServer, Arc<AtomicUsize>) {
    let config = server_config(dir.path(), agencies);
    let commits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&commits);
    let faults = Faults::with(move |step| {
        if step == Step::SyncRows {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        FaultAction::Proceed
    });
    let store = reopen_store(&config.storage_path, faults).expect("open the store");
    (
        TestServer::start_with_store(config, Box::new(store)),
        commits,
    )
}

/// Sends `messages` in one write, reading nothing.
fn send_all(peer: &mut Peer, messages: &[Message]) {
    peer.conn.write_messages(messages).expect("send ahead");
}

#[test]
fn batches_sent_ahead_are_answered_in_order_stored_once_and_share_syncs() {
    const BATCHES: u64 = 300; // Several times the server's read-ahead bound.
    let dir = TempDir::new("pipe-order");
    let (server, commits) = counting_server(&dir, 1);
    let mut peer = Peer::hello(server.addr, 1);
    let messages: Vec<Message> = (1..=BATCHES)
        .map(|seq| Message::Bets {
            seq,
            line: seq * 10,
            bets: bets(u32::try_from(seq).unwrap() * 10, 10),
        })
        .collect();
    send_all(&mut peer, &messages);
    for seq in 1..=BATCHES {
        assert_eq!(peer.recv(), Some(Message::BetsAck { seq, count: 10 }));
    }
    let synced = commits.load(Ordering::SeqCst);
    let (finished, agencies) = peer.fin();
    assert_eq!((finished, agencies), (1, 1));
    let stored = server.stored();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (_, document, _) in &stored {
        *seen.entry(document.clone()).or_default() += 1;
    }
    println!("pipelining: {BATCHES} batches sent ahead, {synced} commits (syncs of the bets file)");
    assert_eq!(stored.len(), BATCHES as usize * 10);
    assert!(seen.values().all(|&n| n == 1), "a bet stored twice");
    assert!(
        synced < BATCHES as usize,
        "batches read ahead share commits: {synced} commits for {BATCHES} batches"
    );
    stop_bounded(server);
}

#[test]
fn a_refused_batch_in_flight_is_answered_in_its_place_and_the_rest_after_it() {
    let dir = TempDir::new("pipe-refused");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    let mut invalid = bets(500, 2);
    invalid[1].number = 10_000; // Out of range: the batch is refused.
    let messages = vec![
        Message::Bets {
            seq: 1,
            line: 0,
            bets: bets(100, 3),
        },
        Message::Bets {
            seq: 2,
            line: 0,
            bets: bets(200, 3),
        },
        Message::Bets {
            seq: 3,
            line: 0,
            bets: invalid,
        },
        // Not the next batch: seq 3 was not stored.
        Message::Bets {
            seq: 4,
            line: 0,
            bets: bets(400, 3),
        },
        Message::Bets {
            seq: 3,
            line: 0,
            bets: bets(300, 3),
        },
        Message::Fin,
    ];
    send_all(&mut peer, &messages);
    assert_eq!(peer.recv(), Some(Message::BetsAck { seq: 1, count: 3 }));
    assert_eq!(peer.recv(), Some(Message::BetsAck { seq: 2, count: 3 }));
    match peer.recv() {
        Some(Message::Error {
            code: ErrorCode::InvalidBet,
            reason,
        }) => assert!(reason.contains("bet 2"), "{reason}"),
        other => panic!("expected INVALID_BET for batch 3, got {other:?}"),
    }
    match peer.recv() {
        Some(Message::Error {
            code: ErrorCode::BadSeq,
            reason,
        }) => assert!(reason.contains("(3)"), "{reason}"),
        other => panic!("expected BAD_SEQ for batch 4, got {other:?}"),
    }
    assert_eq!(peer.recv(), Some(Message::BetsAck { seq: 3, count: 3 }));
    // The FIN is answered after every batch before it, and counts them all.
    assert_eq!(
        peer.recv(),
        Some(Message::FinAck {
            finished: 1,
            agencies: 1
        })
    );
    let mut documents: Vec<String> = server.stored().into_iter().map(|r| r.1).collect();
    documents.sort();
    let mut expected: Vec<String> = [100, 101, 102, 200, 201, 202, 300, 301, 302]
        .iter()
        .map(u32::to_string)
        .collect();
    expected.sort();
    assert_eq!(documents, expected);
    stop_bounded(server);
}

#[test]
fn a_peer_that_leaves_with_batches_in_flight_has_them_stored_exactly_as_acknowledged() {
    let dir = TempDir::new("pipe-leave");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    let messages: Vec<Message> = (1..=40u64)
        .map(|seq| Message::Bets {
            seq,
            line: seq,
            bets: bets(u32::try_from(seq).unwrap() * 100, 5),
        })
        .collect();
    send_all(&mut peer, &messages);
    drop(peer); // Gone without reading one answer.
    // A new connection of the agency learns how far it is stored: every batch the
    // server accepted is durable by the time the WELCOME is sent (HELLO settles the
    // agency's batches), and the store holds exactly those, once each.
    let mut again = Peer::connect(server.addr);
    let progress = again.say_hello(1, 0);
    let stored = server.stored();
    println!(
        "pipelining: left with 40 batches in flight; WELCOME says seq {} / {} bets; {} rows stored",
        progress.stored_seq,
        progress.stored_bets,
        stored.len()
    );
    assert_eq!(progress.stored_bets, progress.stored_seq * 5);
    assert_eq!(stored.len() as u64, progress.stored_bets);
    // The upload goes on exactly after the last stored batch.
    let next = progress.stored_seq + 1;
    if next <= 40 {
        again.store(next, bets(u32::try_from(next).unwrap() * 100, 5));
    }
    stop_bounded(server);
}
