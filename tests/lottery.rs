//! FIN, the barrier and the draw over loopback: repeated FINs count once, bets after
//! FIN / after the draw are refused, early queries are held until the last FIN, every
//! agency gets exactly its own winners (however many), the same answer every time.
mod support;

use std::time::Duration;

use loteria::protocol::{ErrorCode, Message};
use support::wire::*;
use support::*;

const HOLD: Duration = Duration::from_millis(300);

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn repeated_fin_counts_once() {
    let dir = TempDir::new("fin-once");
    let server = TestServer::start(server_config(dir.path(), 3));
    let mut one = Peer::hello(server.addr, 1);
    assert_eq!(one.fin(), (1, 3));
    assert_eq!(one.fin(), (1, 3));
    // Another connection of the same agency (it takes the agency over): still one.
    let (mut one_again, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert!(progress.finished, "WELCOME reports the recorded FIN");
    expect_error(&mut one, ErrorCode::Superseded);
    expect_closed(&mut one);
    assert_eq!(one_again.fin(), (1, 3));
    let mut two = Peer::hello(server.addr, 2);
    assert_eq!(two.fin(), (2, 3));
    assert_eq!(one_again.fin(), (2, 3));
    // Not drawn yet: agency 3 can still bet (three FINs from two agencies are two).
    let mut three = Peer::hello(server.addr, 3);
    three.store(1, vec![bet("Eva", "3", 7574)]);
    assert_eq!(three.fin(), (3, 3));
    assert_eq!(three.fin(), (3, 3), "a FIN after the draw changes nothing");
    assert_eq!(three.winners(), strings(&["3"]));
    server.stop().expect("clean stop");
}

#[test]
fn bets_after_own_fin_are_refused_with_agency_finished() {
    let dir = TempDir::new("agency-finished");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut one = Peer::hello(server.addr, 1);
    one.store(1, vec![bet("Ana", "1", 7574)]);
    assert_eq!(one.fin(), (1, 2));
    one.send(&Message::Bets {
        seq: 2,
        line: 0,
        bets: vec![bet("Tarde", "2", 7574)],
    });
    let reason = expect_error(&mut one, ErrorCode::AgencyFinished);
    assert!(reason.contains('1'), "reason names the agency: {reason}");
    // Even a replay is refused after FIN, and the refusal leaves the connection usable.
    one.send(&Message::Bets {
        seq: 1,
        line: 0,
        bets: vec![bet("Ana", "1", 7574)],
    });
    expect_error(&mut one, ErrorCode::AgencyFinished);
    // From another connection of the same agency too.
    let mut one_again = Peer::hello(server.addr, 1);
    one_again.send(&Message::Bets {
        seq: 3,
        line: 0,
        bets: vec![bet("Otra", "3", 7574)],
    });
    expect_error(&mut one_again, ErrorCode::AgencyFinished);
    // Agency 2 has not finished: its bets are still taken.
    let mut two = Peer::hello(server.addr, 2);
    two.store(1, vec![bet("Luis", "4", 7574)]);
    assert_eq!(
        sorted(&server.stored()),
        vec![(1, "1".to_string(), 7574), (2, "4".to_string(), 7574)]
    );
    server.stop().expect("clean stop");
}

#[test]
fn after_the_draw_bets_get_draw_done_and_answers_repeat() {
    let dir = TempDir::new("draw-done");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut one = Peer::hello(server.addr, 1);
    one.store(1, vec![bet("Ana", "10", 7574), bet("Luis", "11", 1)]);
    let mut two = Peer::hello(server.addr, 2);
    two.store(1, vec![bet("Eva", "20", 7574), bet("Sara", "21", 7574)]);
    assert_eq!(one.fin(), (1, 2));
    assert_eq!(two.fin(), (2, 2));
    let first_one = winners_chunks(&mut one);
    let first_two = winners_chunks(&mut two);
    assert_eq!(flatten(&first_one), strings(&["10"]));
    assert_eq!(sorted(&flatten(&first_two)), strings(&["20", "21"]));

    for peer in [&mut one, &mut two] {
        peer.send(&Message::Bets {
            seq: 9,
            line: 0,
            bets: vec![bet("Tarde", "99", 7574)],
        });
        let reason = expect_error(peer, ErrorCode::DrawDone);
        assert!(reason.contains("draw"), "{reason}");
    }
    // A fresh connection after the draw (it takes agency 2 over): its WELCOME says
    // so, bets are refused, the same answer comes at once.
    drop(two);
    let (mut late, progress) = Peer::hello_upload(server.addr, 2, 0);
    assert_eq!(
        (progress.stored_bets, progress.finished, progress.drawn),
        (2, true, true)
    );
    late.send(&Message::Bets {
        seq: 2,
        line: 0,
        bets: vec![bet("Tarde", "98", 7574)],
    });
    expect_error(&mut late, ErrorCode::DrawDone);
    assert_eq!(winners_chunks(&mut late), first_two);
    // Asking again, on the same connection, gives the same chunks.
    for _ in 0..3 {
        assert_eq!(winners_chunks(&mut one), first_one);
        assert_eq!(winners_chunks(&mut late), first_two);
    }
    assert_eq!(server.stored().len(), 4, "nothing stored after the draw");
    server.stop().expect("clean stop");
}

#[test]
fn each_agency_gets_only_its_own_winners() {
    let dir = TempDir::new("own-winners");
    let server = TestServer::start(server_config(dir.path(), 4));
    // The same DNI wins at agencies 1 and 2; agency 3 has bets but no winner; agency 4
    // has no bets at all.
    let mut one = Peer::hello(server.addr, 1);
    one.store(
        1,
        vec![
            bet("Ana", "30904465", 7574),
            bet("Ana", "00000000", 7574),
            bet("Luis", "1", 7575),
        ],
    );
    let mut two = Peer::hello(server.addr, 2);
    two.store(1, vec![bet("Eva", "30904465", 7574), bet("Eva", "2", 4757)]);
    two.store(2, vec![bet("Sara", "22", 7574)]);
    let mut three = Peer::hello(server.addr, 3);
    three.store(1, vec![bet("Juan", "3", 0), bet("Juan", "33", 9999)]);
    let mut four = Peer::hello(server.addr, 4);
    assert_eq!(one.fin(), (1, 4));
    assert_eq!(two.fin(), (2, 4));
    assert_eq!(three.fin(), (3, 4));
    assert_eq!(four.fin(), (4, 4));
    assert_eq!(sorted(&one.winners()), strings(&["00000000", "30904465"]));
    assert_eq!(sorted(&two.winners()), strings(&["22", "30904465"]));
    assert_eq!(
        winners_chunks(&mut three),
        vec![(true, Vec::new())],
        "no winners is one final, empty chunk"
    );
    assert_eq!(winners_chunks(&mut four), vec![(true, Vec::new())]);
    server.stop().expect("clean stop");
}

#[test]
fn the_winning_number_comes_from_the_config() {
    let dir = TempDir::new("winning-number");
    let mut config = server_config(dir.path(), 1);
    config.winning_number = 42;
    let server = TestServer::start(config);
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, vec![bet("Ana", "1", 7574), bet("Luis", "2", 42)]);
    assert_eq!(peer.fin(), (1, 1));
    assert_eq!(peer.winners(), strings(&["2"]));
    server.stop().expect("clean stop");
}

#[test]
fn early_queries_are_held_until_the_last_fin() {
    let dir = TempDir::new("barrier");
    let server = TestServer::start(server_config(dir.path(), 3));
    let mut one = Peer::hello(server.addr, 1);
    one.store(1, vec![bet("Ana", "1", 7574)]);
    assert_eq!(one.fin(), (1, 3));
    one.send(&Message::WinnersQuery);

    let mut two = Peer::hello(server.addr, 2);
    two.store(1, vec![bet("Luis", "2", 1)]);
    assert_eq!(two.fin(), (2, 3));
    two.send(&Message::WinnersQuery);

    // Both are held: neither an answer nor a close while agency 3 is still betting.
    expect_no_reply_within(&mut one, HOLD);
    expect_no_reply_within(&mut two, HOLD);

    // Agency 3's bets, sent after the others' queries, are part of the draw.
    let mut three = Peer::hello(server.addr, 3);
    three.store(1, vec![bet("Eva", "3", 7574), bet("Eva", "33", 7574)]);
    expect_no_reply_within(&mut one, HOLD);
    assert_eq!(three.fin(), (3, 3));

    assert_eq!(flatten(&collect_chunks(&mut one)), strings(&["1"]));
    assert_eq!(collect_chunks(&mut two), vec![(true, Vec::new())]);
    assert_eq!(sorted(&three.winners()), strings(&["3", "33"]));
    // The held connections go on normally afterwards.
    assert_eq!(
        one.request(&Message::Echo(b"after".to_vec())),
        Message::Echo(b"after".to_vec())
    );
    assert_eq!(flatten(&winners_chunks(&mut two)), Vec::<String>::new());
    server.stop().expect("clean stop");
}

#[test]
fn a_query_held_on_a_new_connection_of_a_finished_agency_is_answered() {
    let dir = TempDir::new("barrier-two-conns");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut uploader = Peer::hello(server.addr, 1);
    uploader.store(1, vec![bet("Ana", "1", 7574)]);
    assert_eq!(uploader.fin(), (1, 2));
    // A new connection of agency 1 (a restarted client) takes the agency over and
    // asks (allowed: the agency has finished); the old one is told and closed.
    let (mut asker, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert!(progress.finished && !progress.drawn, "{progress:?}");
    expect_error(&mut uploader, ErrorCode::Superseded);
    expect_closed(&mut uploader);
    asker.send(&Message::WinnersQuery);
    expect_no_reply_within(&mut asker, HOLD);
    let mut two = Peer::hello(server.addr, 2);
    assert_eq!(two.fin(), (2, 2));
    assert_eq!(flatten(&collect_chunks(&mut asker)), strings(&["1"]));
    assert_eq!(two.winners(), Vec::<String>::new());
    server.stop().expect("clean stop");
}

#[test]
fn a_pipelined_fin_and_query_from_the_last_agency_is_answered() {
    let dir = TempDir::new("pipelined");
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut one = Peer::hello(server.addr, 1);
    one.store(1, vec![bet("Ana", "1", 7574)]);
    let mut bytes = Message::Fin.encode().expect("encode");
    bytes.extend(Message::WinnersQuery.encode().expect("encode"));
    one.send_bytes(&bytes);
    assert_eq!(
        one.recv(),
        Some(Message::FinAck {
            finished: 1,
            agencies: 2
        })
    );
    expect_no_reply_within(&mut one, HOLD);

    let mut two = Peer::hello(server.addr, 2);
    two.store(1, vec![bet("Luis", "2", 7574)]);
    two.send_bytes(&bytes);
    assert_eq!(
        two.recv(),
        Some(Message::FinAck {
            finished: 2,
            agencies: 2
        })
    );
    assert_eq!(flatten(&collect_chunks(&mut two)), strings(&["2"]));
    assert_eq!(flatten(&collect_chunks(&mut one)), strings(&["1"]));
    server.stop().expect("clean stop");
}

/// `count` winning bets (8-digit documents) for agency 1, plus some losers.
fn big_winner_list(count: usize) -> (Vec<loteria::bet::Bet>, Vec<String>) {
    let mut bets = Vec::new();
    let mut winners = Vec::new();
    for i in 0..count {
        let document = format!("{:08}", 10_000_000 + i);
        winners.push(document.clone());
        bets.push(bet("G", &document, 7574));
        if i % 10 == 0 {
            bets.push(bet("P", &format!("{i}"), 1234));
        }
    }
    (bets, winners)
}

/// A finished two-agency lottery where agency 1 has many winners.
struct BigDraw {
    server: TestServer,
    /// Keeps the storage directory alive as long as the server.
    _dir: TempDir,
    one: Peer,
    winners: Vec<String>,
    chunks: Vec<(bool, Vec<String>)>,
}

fn upload_and_draw(count: usize, name: &str) -> BigDraw {
    let dir = TempDir::new(name);
    let server = TestServer::start(server_config(dir.path(), 2));
    let (bets, winners) = big_winner_list(count);
    let mut one = Peer::hello(server.addr, 1);
    for (i, batch) in batches(&bets, 300).into_iter().enumerate() {
        one.store(i as u64 + 1, batch);
    }
    assert_eq!(server.stored().len(), bets.len());
    assert_eq!(one.fin(), (1, 2));
    // Agency 2 has no winners and must not see agency 1's.
    let mut two = Peer::hello(server.addr, 2);
    two.store(1, vec![bet("Otro", "5", 7574)]);
    assert_eq!(two.fin(), (2, 2));
    assert_eq!(two.winners(), strings(&["5"]));
    let chunks = winners_chunks(&mut one);
    BigDraw {
        server,
        _dir: dir,
        one,
        winners,
        chunks,
    }
}

fn assert_well_chunked(chunks: &[(bool, Vec<String>)]) {
    let (final_chunk, rest) = chunks.split_last().expect("at least one chunk");
    assert!(final_chunk.0, "the last chunk has last = 1");
    assert!(
        rest.iter().all(|(last, docs)| !last && !docs.is_empty()),
        "only the final chunk has last = 1, and no other chunk is empty"
    );
}

#[test]
fn three_thousand_winners_arrive_in_several_chunks_complete() {
    let mut draw = upload_and_draw(3000, "winners-3000");
    assert!(draw.chunks.len() >= 4, "3000 DNIs need at least 4 chunks");
    assert_well_chunked(&draw.chunks);
    assert_eq!(sorted(&flatten(&draw.chunks)), sorted(&draw.winners));
    // Asking again gives the same complete list.
    assert_eq!(winners_chunks(&mut draw.one), draw.chunks);
    draw.server.stop().expect("clean stop");
}

#[test]
fn a_chunk_holds_909_eight_digit_documents_and_no_more() {
    let draw = upload_and_draw(909, "winners-909");
    assert_eq!(draw.chunks.len(), 1, "909 documents fit one frame");
    assert_eq!(sorted(&flatten(&draw.chunks)), sorted(&draw.winners));
    draw.server.stop().expect("clean stop");

    let draw = upload_and_draw(910, "winners-910");
    assert_eq!(draw.chunks.len(), 2, "910 documents need two frames");
    assert_well_chunked(&draw.chunks);
    assert_eq!(sorted(&flatten(&draw.chunks)), sorted(&draw.winners));
    draw.server.stop().expect("clean stop");
}

#[test]
fn a_held_query_with_many_winners_is_answered_in_full() {
    let dir = TempDir::new("held-many");
    let server = TestServer::start(server_config(dir.path(), 2));
    let (bets, winners) = big_winner_list(2500);
    let mut one = Peer::hello(server.addr, 1);
    for (i, batch) in batches(&bets, 300).into_iter().enumerate() {
        one.store(i as u64 + 1, batch);
    }
    assert_eq!(one.fin(), (1, 2));
    one.send(&Message::WinnersQuery);
    expect_no_reply_within(&mut one, HOLD);
    let mut two = Peer::hello(server.addr, 2);
    assert_eq!(two.fin(), (2, 2));
    let chunks = collect_chunks(&mut one);
    assert!(chunks.len() >= 3);
    assert_well_chunked(&chunks);
    assert_eq!(sorted(&flatten(&chunks)), sorted(&winners));
    server.stop().expect("clean stop");
}
