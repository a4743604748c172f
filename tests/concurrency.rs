//! Many agencies at once over loopback: every bet stored exactly once, every agency
//! gets exactly its own winners, whatever the interleaving of uploads, FINs and
//! queries.
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

use loteria::bet::Bet;
use loteria::protocol::Message;
use support::wire::*;
use support::*;

const HOLD: Duration = Duration::from_millis(300);

/// One agency's whole conversation on its own connection; returns its winners.
fn agency_run(addr: SocketAddr, agency: u32, bets: Vec<Bet>, batch: usize) -> Vec<String> {
    let mut peer = Peer::hello(addr, agency);
    for (i, chunk) in batches(&bets, batch).into_iter().enumerate() {
        peer.store(i as u64 + 1, chunk);
    }
    let (finished, agencies) = peer.fin();
    assert!(
        (1..=agencies).contains(&finished),
        "FIN_ACK {finished} of {agencies}"
    );
    peer.winners()
}

fn all_rows(data: &[(Vec<Bet>, Vec<String>)]) -> Vec<(u32, String, u16)> {
    data.iter()
        .enumerate()
        .flat_map(|(i, (bets, _))| rows_of(i as u32 + 1, bets))
        .collect()
}

#[test]
fn sixty_agencies_upload_concurrently_and_get_exactly_their_winners() {
    const AGENCIES: usize = 60;
    let dir = TempDir::new("sixty");
    let server = TestServer::start(server_config(dir.path(), AGENCIES as u32));
    // Different sizes (some agencies with no winner at all), several batches each.
    let sizes: Vec<usize> = (0..AGENCIES).map(|i| 10 + (i * 37) % 190).collect();
    let data = mock_agencies(&sizes, 23);
    assert!(data.iter().any(|(_, w)| w.is_empty()));
    assert!(data.iter().any(|(_, w)| w.len() > 3));

    let gate = Arc::new(Barrier::new(AGENCIES));
    let threads: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, (bets, _))| {
            let bets = bets.clone();
            let gate = Arc::clone(&gate);
            let addr = server.addr;
            thread::Builder::new()
                .name(format!("agency-{}", i + 1))
                .spawn(move || {
                    gate.wait();
                    agency_run(addr, i as u32 + 1, bets, 17 + i % 11)
                })
                .expect("spawn agency")
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let got = thread.join().expect("agency thread");
        assert_eq!(
            sorted(&got),
            sorted(&data[i].1),
            "agency {} got exactly its winners",
            i + 1
        );
    }
    assert_eq!(
        sorted(&server.stored()),
        sorted(&all_rows(&data)),
        "every bet stored exactly once"
    );
    server.stop().expect("clean stop");
}

#[test]
fn one_slow_agency_holds_everyone_until_its_fin() {
    const AGENCIES: usize = 12;
    let dir = TempDir::new("slow-last");
    let server = TestServer::start(server_config(dir.path(), AGENCIES as u32));
    let data = mock_agencies(&[120; AGENCIES], 13);
    let (fin_tx, fin_rx) = mpsc::channel::<u32>();
    let (answer_tx, answer_rx) = mpsc::channel::<(usize, Vec<String>)>();

    // Agencies 1..=11 upload, FIN and query from their own threads, reporting their
    // FIN and, later, their answer.
    let threads: Vec<_> = (0..AGENCIES - 1)
        .map(|i| {
            let bets = data[i].0.clone();
            let addr = server.addr;
            let fin_tx = fin_tx.clone();
            let answer_tx = answer_tx.clone();
            thread::spawn(move || {
                let mut peer = Peer::hello(addr, i as u32 + 1);
                for (k, chunk) in batches(&bets, 25).into_iter().enumerate() {
                    peer.store(k as u64 + 1, chunk);
                }
                let (finished, agencies) = peer.fin();
                assert_eq!(agencies, AGENCIES as u32);
                fin_tx.send(finished).expect("report FIN");
                let winners = peer.winners();
                answer_tx.send((i, winners)).expect("report answer");
            })
        })
        .collect();

    // Agency 12 uploads everything while the others run.
    let mut last = Peer::hello(server.addr, AGENCIES as u32);
    for (i, chunk) in batches(&data[AGENCIES - 1].0, 30).into_iter().enumerate() {
        last.store(i as u64 + 1, chunk);
    }
    let mut fin_counts: Vec<u32> = (0..AGENCIES - 1)
        .map(|_| {
            fin_rx
                .recv_timeout(TIMEOUT)
                .expect("every other agency FINs")
        })
        .collect();
    fin_counts.sort();
    assert_eq!(
        fin_counts,
        (1..AGENCIES as u32).collect::<Vec<_>>(),
        "the FIN_ACK counts are 1..=11, each once"
    );
    // Eleven agencies have finished and are asking: still nobody is answered.
    std::thread::sleep(HOLD);
    assert!(
        answer_rx.try_recv().is_err(),
        "no agency may get its answer before the last FIN"
    );
    assert_eq!(last.fin(), (AGENCIES as u32, AGENCIES as u32));
    assert_eq!(sorted(&last.winners()), sorted(&data[AGENCIES - 1].1));
    for _ in 0..AGENCIES - 1 {
        let (i, winners) = answer_rx
            .recv_timeout(TIMEOUT)
            .expect("every agency answered");
        assert_eq!(sorted(&winners), sorted(&data[i].1), "agency {}", i + 1);
    }
    for thread in threads {
        thread.join().expect("agency thread");
    }
    assert_eq!(sorted(&server.stored()), sorted(&all_rows(&data)));
    server.stop().expect("clean stop");
}

#[test]
fn racing_last_fins_and_queries_never_lose_an_answer() {
    // Many rounds of a small lottery where every agency FINs and queries at the same
    // instant: the N-th FIN races with the queries being registered.
    for round in 0..25 {
        let dir = TempDir::new("race-round");
        let agencies = 2 + round % 7;
        let server = TestServer::start(server_config(dir.path(), agencies as u32));
        let data = mock_agencies(&vec![30; agencies], 4 + round % 5);
        let gate = Arc::new(Barrier::new(agencies));
        let threads: Vec<_> = (0..agencies)
            .map(|i| {
                let bets = data[i].0.clone();
                let gate = Arc::clone(&gate);
                let addr = server.addr;
                thread::spawn(move || {
                    let mut peer = Peer::hello(addr, i as u32 + 1);
                    peer.store(1, bets);
                    gate.wait();
                    // FIN and the query in one write: the query may reach the server
                    // before, during or after the draw.
                    let mut bytes = Message::Fin.encode().expect("encode");
                    bytes.extend(Message::WinnersQuery.encode().expect("encode"));
                    peer.send_bytes(&bytes);
                    match peer.recv() {
                        Some(Message::FinAck { .. }) => {}
                        other => panic!("expected FIN_ACK, got {other:?}"),
                    }
                    flatten(&collect_chunks(&mut peer))
                })
            })
            .collect();
        for (i, thread) in threads.into_iter().enumerate() {
            assert_eq!(
                sorted(&thread.join().expect("agency thread")),
                sorted(&data[i].1),
                "round {round}, agency {}",
                i + 1
            );
        }
        assert_eq!(sorted(&server.stored()), sorted(&all_rows(&data)));
        server.stop().expect("clean stop");
    }
}
