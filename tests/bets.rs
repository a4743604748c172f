//! Batches over loopback: one invalid bet rejects its whole batch (and nothing of it is
//! stored) while the batches around it are stored; only the next batch is stored, the
//! last one sent again is acknowledged again but stored once, any other `seq` is
//! refused.
mod support;

use chrono::Days;
use loteria::bet::Bet;
use loteria::protocol::{ErrorCode, Message};
use support::wire::*;
use support::*;

fn rows(list: &[(u32, &str, u16)]) -> Vec<(u32, String, u16)> {
    list.iter()
        .map(|&(a, d, n)| (a, d.to_string(), n))
        .collect()
}

/// A valid bet changed by `change`.
fn modified(change: impl FnOnce(&mut Bet)) -> Bet {
    let mut b = bet("Bea", "2", 1);
    change(&mut b);
    b
}

/// A batch of three bets whose second one is `bad`.
fn batch_around(bad: Bet) -> Vec<Bet> {
    vec![bet("Ana", "11111111", 7574), bad, bet("Eva", "33333333", 1)]
}

/// Sends `bets` as `seq` and expects INVALID_BET naming bet 2; returns the reason.
fn expect_rejected(peer: &mut Peer, seq: u64, bets: Vec<Bet>) -> String {
    peer.send(&Message::Bets { seq, line: 0, bets });
    let reason = expect_error(peer, ErrorCode::InvalidBet);
    assert!(
        reason.contains("bet 2"),
        "the reason names the bet's index: {reason}"
    );
    reason
}

#[test]
fn one_invalid_bet_rejects_its_whole_batch_only() {
    let dir = TempDir::new("invalid-bets");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, vec![bet("Luis", "1", 10), bet("Sara", "00000000", 7574)]);

    let tomorrow = chrono::Local::now()
        .date_naive()
        .checked_add_days(Days::new(1))
        .expect("tomorrow");
    let cases: Vec<(&str, Bet, &str)> = vec![
        ("number 10000", bet("Bea", "2", 10000), "number"),
        ("number 65535", bet("Bea", "2", u16::MAX), "number"),
        ("9-digit document", bet("Bea", "123456789", 1), "document"),
        ("empty document", bet("Bea", "", 1), "document"),
        ("letters in document", bet("Bea", "12a45", 1), "document"),
        ("signed document", bet("Bea", "-1234", 1), "document"),
        ("spaced document", bet("Bea", " 1234", 1), "document"),
        ("empty first name", bet("", "2", 1), "first_name"),
        ("blank first name", bet(" \t ", "2", 1), "first_name"),
        ("NUL in first name", bet("Be\0a", "2", 1), "first_name"),
        (
            "empty last name",
            modified(|b| b.last_name.clear()),
            "last_name",
        ),
        (
            "line break in last name",
            modified(|b| b.last_name = "Ro\nmero".into()),
            "last_name",
        ),
        (
            "birthdate tomorrow",
            modified(|b| b.birthdate = tomorrow),
            "birthdate",
        ),
        (
            "birthdate in 2999",
            modified(|b| b.birthdate = date(2999, 1, 1)),
            "birthdate",
        ),
    ];

    for (what, bad, field) in cases {
        let reason = expect_rejected(&mut peer, 2, batch_around(bad));
        assert!(
            reason.contains(field),
            "{what}: reason names {field}: {reason}"
        );
        assert_eq!(
            server.stored().len(),
            2,
            "{what}: nothing of the batch stored"
        );
    }

    // seq 2 was never stored, so a valid seq 2 is new, not a replay.
    peer.store(2, vec![bet("Eva", "4", 7574)]);
    assert_eq!(
        server.stored(),
        rows(&[(1, "1", 10), (1, "00000000", 7574), (1, "4", 7574)])
    );
    assert_eq!(peer.fin(), (1, 1));
    assert_eq!(
        sorted(&peer.winners()),
        vec!["00000000".to_string(), "4".to_string()],
        "no winner of a rejected batch"
    );
    server.stop().expect("clean stop");
}

#[test]
fn impossible_dates_sent_as_raw_bytes_are_invalid_bets() {
    let dir = TempDir::new("raw-dates");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    peer.send_bytes(&bets_frame(1, &[good_raw_bet("1", 1)]));
    assert_eq!(peer.recv(), Some(Message::BetsAck { seq: 1, count: 1 }));

    for (y, m, d) in [
        (1990u16, 2u8, 30u8),
        (2023, 2, 29),
        (1990, 4, 31),
        (1990, 13, 1),
        (1990, 0, 10),
        (1990, 1, 0),
        (1990, 1, 32),
        (1899, 12, 31),
        (1, 1, 1),
    ] {
        let batch = [
            good_raw_bet("2", 7574),
            raw_bet("Ana", "Paz", "3", (y, m, d), 7574),
            good_raw_bet("4", 7574),
        ];
        peer.send_bytes(&bets_frame(2, &batch));
        let reason = expect_error(&mut peer, ErrorCode::InvalidBet);
        assert!(
            reason.contains("bet 2") && reason.contains("birthdate"),
            "{y}-{m}-{d}: {reason}"
        );
        assert_eq!(server.stored().len(), 1, "{y}-{m}-{d}: nothing stored");
    }

    // Real but unusual past dates are fine: leap days, the earliest accepted day.
    let batch = [
        raw_bet("Ana", "Paz", "5", (2000, 2, 29), 7574),
        raw_bet("Ana", "Paz", "6", (1904, 2, 29), 2),
        raw_bet("Ana", "Paz", "7", (1900, 1, 1), 7574),
    ];
    peer.send_bytes(&bets_frame(2, &batch));
    assert_eq!(peer.recv(), Some(Message::BetsAck { seq: 2, count: 3 }));
    assert_eq!(
        server.stored(),
        rows(&[(1, "1", 1), (1, "5", 7574), (1, "6", 2), (1, "7", 7574)])
    );
    assert_eq!(peer.fin(), (1, 1));
    assert_eq!(sorted(&peer.winners()), vec!["5".to_string(), "7".into()]);
    server.stop().expect("clean stop");
}

#[test]
fn boundary_values_are_valid() {
    let dir = TempDir::new("boundaries");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    let yesterday = chrono::Local::now()
        .date_naive()
        .checked_sub_days(Days::new(2))
        .expect("two days ago");
    let mut recent = bet("Bebé", "0", 0);
    recent.birthdate = yesterday;
    let mut odd_names = bet("José María, \"Pepe\"", "99999999", 9999);
    odd_names.last_name = "O'Brien-Núñez 李".into();
    peer.store(1, vec![recent, odd_names, bet("Ana", "00000000", 7574)]);
    assert_eq!(
        server.stored(),
        rows(&[(1, "0", 0), (1, "99999999", 9999), (1, "00000000", 7574)])
    );
    server.stop().expect("clean stop");
}

#[test]
fn an_invalid_batch_of_one_agency_does_not_touch_another() {
    let dir = TempDir::new("invalid-two");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut one = Peer::hello(server.addr, 1);
    let mut two = Peer::hello(server.addr, 2);
    one.store(1, vec![bet("Ana", "1", 1)]);
    expect_rejected(&mut two, 1, batch_around(bet("Bad", "1234567890", 1)));
    one.store(2, vec![bet("Ana", "2", 2)]);
    two.store(1, vec![bet("Luis", "3", 3)]);
    assert_eq!(
        sorted(&server.stored()),
        rows(&[(1, "1", 1), (1, "2", 2), (2, "3", 3)])
    );
    server.stop().expect("clean stop");
}

/// Sends `bets` as `seq` and expects BAD_SEQ.
fn expect_bad_seq(peer: &mut Peer, seq: u64, bets: Vec<Bet>) {
    peer.send(&Message::Bets { seq, line: 0, bets });
    let reason = expect_error(peer, ErrorCode::BadSeq);
    assert!(reason.contains(&seq.to_string()), "names the seq: {reason}");
}

#[test]
fn only_the_last_batch_is_replayed_and_every_other_seq_is_refused() {
    let dir = TempDir::new("replay");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut peer = Peer::hello(server.addr, 1);
    let first = vec![bet("Ana", "1", 7574), bet("Luis", "2", 2)];
    let second = vec![
        bet("Eva", "3", 3),
        bet("Sara", "4", 7574),
        bet("Juan", "5", 5),
    ];
    peer.store(1, first.clone());
    peer.store(2, second.clone());
    let expected = rows(&[
        (1, "1", 7574),
        (1, "2", 2),
        (1, "3", 3),
        (1, "4", 7574),
        (1, "5", 5),
    ]);
    assert_eq!(server.stored(), expected);

    // The last batch again (its ACK was lost): ACKed with its seq and count, not stored.
    peer.store(2, second.clone());
    // An older batch, the last seq with other content, seq 0, a gap: all refused.
    expect_bad_seq(&mut peer, 1, first.clone());
    expect_bad_seq(&mut peer, 2, vec![bet("Intrusa", "66666666", 7574)]);
    expect_bad_seq(&mut peer, 2, second[..2].to_vec());
    expect_bad_seq(&mut peer, 0, vec![bet("Cero", "77777777", 7574)]);
    expect_bad_seq(&mut peer, 4, vec![bet("Gap", "9", 9)]);
    assert_eq!(
        server.stored(),
        expected,
        "refusals and replays stored nothing"
    );

    // The numbering is per agency: agency 2's seq 1 is new.
    let mut other = Peer::hello(server.addr, 2);
    other.store(1, vec![bet("Otro", "8", 8)]);
    // A new connection of agency 1 is told where the upload is, may replay the last
    // batch, and goes on with the next one.
    drop(peer);
    let (mut again, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert_eq!((progress.stored_seq, progress.stored_bets), (2, 5));
    again.store(2, second);
    again.store(3, vec![bet("Next", "11", 11)]);

    let mut all = expected.clone();
    all.extend(rows(&[(2, "8", 8), (1, "11", 11)]));
    assert_eq!(sorted(&server.stored()), sorted(&all));

    assert_eq!(again.fin(), (1, 2));
    assert_eq!(other.fin(), (2, 2));
    assert_eq!(
        sorted(&again.winners()),
        vec!["1".to_string(), "4".to_string()],
        "each winner counted once, none from a refused batch"
    );
    server.stop().expect("clean stop");
}

/// Two connections of one agency race to upload the same batches, each taking the
/// agency over with its `HELLO` and going on from what its `WELCOME` reports; a
/// superseded one starts again with a new connection. However they interleave, every
/// bet is stored exactly once, in order.
#[test]
fn two_connections_of_one_agency_racing_the_same_upload_store_it_once() {
    let dir = TempDir::new("replay-race");
    let server = TestServer::start(server_config(dir.path(), 1));
    let data = mock_agencies(&[800], 9);
    let (bets, winners) = data[0].clone();
    let batches = batches(&bets, 20);
    let addr = server.addr;
    let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let batches = batches.clone();
            let gate = std::sync::Arc::clone(&gate);
            std::thread::spawn(move || {
                gate.wait();
                let mut takeovers = 0;
                'session: for _ in 0..1000 {
                    let mut peer = Peer::connect(addr);
                    peer.send(&Message::Hello {
                        agency: 1,
                        upload: 0,
                    });
                    let stored_seq = match recv_or_close(&mut peer) {
                        Some(Message::Welcome {
                            stored_seq,
                            stored_bets,
                            ..
                        }) => {
                            // Every batch has 20 bets: the stored count says where to
                            // go on.
                            assert_eq!(stored_bets, stored_seq * 20);
                            stored_seq
                        }
                        // This HELLO was handled after the other connection's newer
                        // one: it is the stale one, superseded at once. Start again.
                        Some(Message::Error {
                            code: ErrorCode::Superseded,
                            ..
                        })
                        | None => {
                            takeovers += 1;
                            continue 'session;
                        }
                        Some(other) => panic!("unexpected reply to HELLO {other:?}"),
                    };
                    for seq in stored_seq + 1..=batches.len() as u64 {
                        let batch = batches[seq as usize - 1].clone();
                        let count = batch.len() as u16;
                        if peer
                            .conn
                            .write_message(&Message::Bets {
                                seq,
                                line: 0,
                                bets: batch,
                            })
                            .is_err()
                        {
                            takeovers += 1;
                            continue 'session;
                        }
                        match recv_or_close(&mut peer) {
                            Some(Message::BetsAck { seq: s, count: c }) => {
                                assert_eq!((s, c), (seq, count));
                            }
                            // Taken over by the other connection: start again.
                            Some(Message::Error {
                                code: ErrorCode::Superseded | ErrorCode::BadSeq,
                                ..
                            })
                            | None => {
                                takeovers += 1;
                                continue 'session;
                            }
                            Some(other) => panic!("unexpected reply {other:?}"),
                        }
                    }
                    return takeovers;
                }
                panic!("the upload never completed");
            })
        })
        .collect();
    let takeovers: Vec<u32> = senders
        .into_iter()
        .map(|s| s.join().expect("sender thread"))
        .collect();
    println!("takeovers per connection: {takeovers:?}");
    assert_eq!(
        server
            .stored()
            .iter()
            .map(|r| r.1.clone())
            .collect::<Vec<_>>(),
        bets.iter().map(|b| b.document.clone()).collect::<Vec<_>>(),
        "every batch stored exactly once, in order"
    );
    let mut peer = Peer::hello(server.addr, 1);
    assert_eq!(peer.fin(), (1, 1));
    assert_eq!(sorted(&peer.winners()), sorted(&winners));
    server.stop().expect("clean stop");
}
