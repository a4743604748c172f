//! Exactly-once uploads (protocol version 2) over loopback with an in-process server:
//! only the next batch of an upload is stored, only the last one is replayed, `WELCOME`
//! reports durable progress (also after an idle timeout and a restart), FINs and the
//! draw survive a restart, a newer `HELLO` supersedes an older connection, one upload
//! per agency, storage faults answer `INTERNAL` and never acknowledge, and the store
//! refuses paths it cannot own. Every wait is bounded.
mod support;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use loteria::bet::Bet;
use loteria::config::ServerConfig;
use loteria::protocol::{ErrorCode, Message};
use loteria::server::{self, ServerError};
use loteria::shutdown::Shutdown;
use loteria::storage::{FaultAction, Faults, Step, StorageError, Store};
use support::process;
use support::wire::*;
use support::*;

/// `n` distinct bets whose documents start with `prefix`; every 4th plays 7574.
fn bets(prefix: &str, n: usize) -> Vec<Bet> {
    (0..n)
        .map(|i| {
            let number = if i % 4 == 3 { 7574 } else { (i % 7000) as u16 };
            bet(
                &format!("Apostador {prefix}{i}"),
                &format!("{prefix}{i:04}"),
                number,
            )
        })
        .collect()
}

/// The documents of `bets` that play 7574.
fn winners_of(bets: &[Bet]) -> Vec<String> {
    sorted(
        &bets
            .iter()
            .filter(|b| b.number == 7574)
            .map(|b| b.document.clone())
            .collect::<Vec<_>>(),
    )
}

/// Sends `BETS(seq, bets)` and returns the reply.
fn send_batch(peer: &mut Peer, seq: u64, bets: &[Bet]) -> Message {
    peer.request(&Message::Bets {
        seq,
        line: 0,
        bets: bets.to_vec(),
    })
}

/// Sends `BETS(seq, bets)` and expects `ERROR code`.
fn refused(peer: &mut Peer, seq: u64, bets: &[Bet], code: ErrorCode) -> String {
    peer.send(&Message::Bets {
        seq,
        line: 0,
        bets: bets.to_vec(),
    });
    expect_error(peer, code)
}

/// What the store at `path` holds once reopened (the server must have stopped): the
/// committed rows, as its recovery decides.
fn committed(path: &Path) -> Vec<(u32, String, u16)> {
    let mut store = support::reopen_store(path, Faults::none()).expect("reopen the store");
    let mut rows = Vec::new();
    store
        .for_each_bet(&mut |agency, bet| rows.push((agency, bet.document, bet.number)))
        .expect("read committed bets");
    rows
}

/// `server::run` on a thread; its result, or a failure if it has not returned within
/// `bound` (the thread is left behind, stopped by `shutdown`).
fn run_expecting_return(
    config: ServerConfig,
    bound: Duration,
) -> (Result<(), ServerError>, Duration) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let shutdown = Shutdown::new();
    let (tx, rx) = mpsc::channel();
    let s = shutdown.clone();
    let started = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(server::run(listener, &config, &s));
    });
    match rx.recv_timeout(bound) {
        Ok(result) => (result, started.elapsed()),
        Err(_) => {
            shutdown.trigger();
            panic!("server::run did not return within {bound:?}");
        }
    }
}

/// A fault hook that fails `step` with `kind` while `remaining` is above zero
/// (counting down), and proceeds otherwise.
fn failing(step: Step, kind: std::io::ErrorKind, remaining: Arc<AtomicUsize>) -> Faults {
    Faults::with(move |s| {
        if s == step
            && remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            FaultAction::Fail(kind)
        } else {
            FaultAction::Proceed
        }
    })
}

// ------------------------------------------------------------------- seq rules

/// v1 took a batch with seq 2^64-1 as the agency's highest, after which every real
/// batch "was a replay": acknowledged and dropped. Now it is refused and the upload
/// goes on.
#[test]
fn seq_max_is_refused_and_the_upload_goes_on() {
    let dir = TempDir::new("eo-seq-max");
    let server = TestServer::start(server_config(dir.path(), 1));
    let data = bets("1", 50);
    let batches = batches(&data, 10);
    let (mut victim, _) = Peer::hello_upload(server.addr, 1, 0xAB);
    victim.store(1, batches[0].clone());
    let reason = refused(
        &mut victim,
        u64::MAX,
        &[bet("Intruso", "99999999", 7574)],
        ErrorCode::BadSeq,
    );
    assert!(reason.contains("2"), "names the expected seq: {reason}");
    victim.store(2, batches[1].clone());
    drop(victim);

    // An intruder with the same upload id on its own connection: refused too.
    let (mut intruder, progress) = Peer::hello_upload(server.addr, 1, 0xAB);
    assert_eq!((progress.stored_seq, progress.stored_bets), (2, 20));
    refused(
        &mut intruder,
        u64::MAX,
        &[bet("Intruso", "99999998", 7574)],
        ErrorCode::BadSeq,
    );
    drop(intruder);

    // The victim comes back and finishes from where WELCOME says.
    let (mut victim, progress) = Peer::hello_upload(server.addr, 1, 0xAB);
    assert_eq!((progress.stored_seq, progress.stored_bets), (2, 20));
    for (k, batch) in batches.iter().enumerate().skip(2) {
        victim.store(k as u64 + 1, batch.clone());
    }
    let stored = server.stored();
    println!(
        "seq_max: stored {}/{} of the victim's bets, 0 of the intruder's",
        stored.len(),
        data.len()
    );
    assert_eq!(
        stored,
        rows_of(1, &data),
        "every bet of the victim, in order"
    );
    assert_eq!(victim.fin(), (1, 1));
    assert_eq!(sorted(&victim.winners()), winners_of(&data));
    stop_bounded(server);
}

#[test]
fn only_the_last_batch_is_replayed_and_other_seqs_are_refused() {
    let dir = TempDir::new("eo-replay");
    let server = TestServer::start(server_config(dir.path(), 1));
    let data = bets("2", 9);
    let (b1, b2, b3) = (&data[..3], &data[3..6], &data[6..]);
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, b1.to_vec());
    peer.store(2, b2.to_vec());
    // The last batch again (its ACK was lost): ACKed again, stored once.
    assert_eq!(
        send_batch(&mut peer, 2, b2),
        Message::BetsAck { seq: 2, count: 3 }
    );
    assert_eq!(
        send_batch(&mut peer, 2, b2),
        Message::BetsAck { seq: 2, count: 3 }
    );
    // Same seq, other bets; a shorter prefix; an older batch; a gap: all BAD_SEQ.
    refused(&mut peer, 2, b3, ErrorCode::BadSeq);
    refused(&mut peer, 2, &b2[..2], ErrorCode::BadSeq);
    refused(&mut peer, 1, b1, ErrorCode::BadSeq);
    refused(&mut peer, 4, b3, ErrorCode::BadSeq);
    refused(&mut peer, 0, b3, ErrorCode::BadSeq);
    assert_eq!(
        server.stored(),
        rows_of(1, &data[..6]),
        "refusals stored nothing"
    );
    // The numbering goes on at 3.
    peer.store(3, b3.to_vec());
    let stored = server.stored();
    println!(
        "replay: stored {}/{} bets after 2 replays and 5 refusals",
        stored.len(),
        data.len()
    );
    assert_eq!(stored, rows_of(1, &data));
    stop_bounded(server);
}

// ------------------------------------------------------------- WELCOME progress

/// After an idle timeout (and a lost ACK), a new connection learns exactly how far
/// the upload is stored and finishes it with every bet stored once.
#[test]
fn after_an_idle_timeout_welcome_reports_progress_and_the_upload_resumes_exactly() {
    let dir = TempDir::new("eo-idle-resume");
    let server = TestServer::start(with_timeout(&dir, 1, Duration::from_secs(1)));
    let data = bets("3", 40);
    let sizes = [7usize, 5, 3, 9, 6, 10];
    let mut batches = Vec::new();
    let mut at = 0;
    for size in sizes {
        batches.push(data[at..at + size].to_vec());
        at += size;
    }
    let (mut first, progress) = Peer::hello_upload(server.addr, 1, 0x77);
    assert_eq!(progress, Progress::fresh(0x77));
    for (k, batch) in batches.iter().take(3).enumerate() {
        first.store(k as u64 + 1, batch.clone());
    }
    // Batch 4 is sent, but its ACK is never read; then the connection idles out.
    first.send(&Message::Bets {
        seq: 4,
        line: 0,
        bets: batches[3].clone(),
    });
    let mut saw_timeout = false;
    while let Some(message) = recv_or_close(&mut first) {
        match message {
            Message::BetsAck { seq: 4, .. } => {} // the "lost" ACK, read now
            Message::Error {
                code: ErrorCode::IdleTimeout,
                ..
            } => saw_timeout = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_timeout, "the idle connection got IDLE_TIMEOUT");

    let (mut second, progress) = Peer::hello_upload(server.addr, 1, 0x77);
    let expected_bets: usize = sizes[..4].iter().sum();
    println!(
        "idle resume: WELCOME stored_seq {} stored_bets {} (expected 4 / {expected_bets})",
        progress.stored_seq, progress.stored_bets
    );
    assert_eq!(
        progress,
        Progress {
            upload: 0x77,
            stored_seq: 4,
            stored_bets: expected_bets as u64,
            stored_line: 0,
            finished: false,
            drawn: false,
        }
    );
    // A client that did not see ACK 4 may resend batch 4: a replay, acknowledged.
    second.store(4, batches[3].clone());
    for (k, batch) in batches.iter().enumerate().skip(4) {
        second.store(k as u64 + 1, batch.clone());
    }
    assert_eq!(second.fin(), (1, 1));
    assert_eq!(sorted(&second.winners()), winners_of(&data));
    let stored = server.stored();
    println!("idle resume: stored {}/{} bets", stored.len(), data.len());
    assert_eq!(stored, rows_of(1, &data), "every bet once, in order");
    stop_bounded(server);
}

// ---------------------------------------------------------------------- restart

#[test]
fn a_restarted_server_reports_the_same_progress_and_keeps_fins() {
    let dir = TempDir::new("eo-restart-progress");
    let one = bets("4", 12);
    let two = bets("5", 8);
    let server = TestServer::start(server_config(dir.path(), 3));
    let (mut a1, _) = Peer::hello_upload(server.addr, 1, 0xA1);
    a1.store(1, one[..6].to_vec());
    a1.store(2, one[6..].to_vec());
    assert_eq!(a1.fin(), (1, 3));
    let (mut a2, _) = Peer::hello_upload(server.addr, 2, 0xA2);
    a2.store_at(1, 5, two[..4].to_vec());
    drop((a1, a2));
    stop_bounded(server);

    let server = TestServer::start(server_config(dir.path(), 3));
    let (mut a1, progress) = Peer::hello_upload(server.addr, 1, 0xA1);
    println!("restart: agency 1 WELCOME {progress:?}");
    assert_eq!(
        progress,
        Progress {
            upload: 0xA1,
            stored_seq: 2,
            stored_bets: 12,
            stored_line: 0,
            finished: true,
            drawn: false,
        }
    );
    refused(
        &mut a1,
        3,
        &[bet("Tarde", "77777777", 7574)],
        ErrorCode::AgencyFinished,
    );
    assert_eq!(
        a1.fin(),
        (1, 3),
        "the FIN before the restart still counts, once"
    );
    let (mut a2, progress) = Peer::hello_upload(server.addr, 2, 0xA2);
    assert_eq!(
        progress,
        Progress {
            upload: 0xA2,
            stored_seq: 1,
            stored_bets: 4,
            stored_line: 5,
            finished: false,
            drawn: false,
        }
    );
    // A replay of the last batch before the restart is still recognised.
    a2.store(1, two[..4].to_vec());
    a2.store(2, two[4..].to_vec());
    assert_eq!(a2.fin(), (2, 3));
    let mut expected = rows_of(1, &one);
    expected.extend(rows_of(2, &two));
    assert_eq!(server.stored(), expected);
    stop_bounded(server);
}

#[test]
fn after_the_draw_a_restarted_server_answers_at_once_the_same_winners() {
    let dir = TempDir::new("eo-restart-drawn");
    let one = bets("6", 20);
    let two = bets("7", 16);
    let server = TestServer::start(server_config(dir.path(), 2));
    let mut a1 = Peer::hello(server.addr, 1);
    a1.store(1, one.clone());
    let mut a2 = Peer::hello(server.addr, 2);
    a2.store(1, two.clone());
    assert_eq!(a1.fin(), (1, 2));
    assert_eq!(a2.fin(), (2, 2));
    let before_one = winners_chunks(&mut a1);
    let before_two = winners_chunks(&mut a2);
    assert_eq!(sorted(&flatten(&before_one)), winners_of(&one));
    drop((a1, a2));
    stop_bounded(server);

    // Another configured winning number: the recorded draw keeps its own.
    let mut config = server_config(dir.path(), 2);
    config.winning_number = 1;
    let server = TestServer::start(config);
    let (mut a1, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert_eq!(
        (progress.stored_bets, progress.finished, progress.drawn),
        (20, true, true)
    );
    // At once: no FIN on this connection, nothing else happens first.
    a1.conn
        .set_timeouts(Some(Duration::from_secs(5)))
        .expect("short timeout");
    let started = Instant::now();
    let after_one = winners_chunks(&mut a1);
    let elapsed = started.elapsed();
    println!(
        "restart after draw: answered in {elapsed:?}, {} winners",
        flatten(&after_one).len()
    );
    assert_eq!(after_one, before_one, "the same documents, the same chunks");
    refused(
        &mut a1,
        2,
        &[bet("Tarde", "88888888", 7574)],
        ErrorCode::DrawDone,
    );
    let mut a2 = Peer::hello(server.addr, 2);
    refused(
        &mut a2,
        1,
        &[bet("Tarde", "88888887", 7574)],
        ErrorCode::DrawDone,
    );
    assert_eq!(winners_chunks(&mut a2), before_two);
    assert_eq!(server.stored().len(), one.len() + two.len());
    stop_bounded(server);
}

/// Every FIN is journaled but the DRAW record is not (its write fails, as if the
/// server had stopped right after the last FIN): the next start-up runs the draw
/// (`action: draw_resume`) and answers at once.
#[test]
fn all_fins_without_the_draw_record_run_the_draw_at_start_up() {
    let dir = TempDir::new("eo-draw-resume");
    let one = bets("8", 12);
    let two = bets("9", 12);
    let armed = Arc::new(AtomicBool::new(false));
    let records = Arc::new(AtomicUsize::new(0));
    let faults = {
        let (armed, records) = (Arc::clone(&armed), Arc::clone(&records));
        // Once armed (before the last FIN): the FIN record is written, the next
        // record (the DRAW) fails.
        Faults::with(move |step| {
            if armed.load(Ordering::SeqCst)
                && step == Step::WriteRecord
                && records.fetch_add(1, Ordering::SeqCst) == 1
            {
                FaultAction::Fail(std::io::ErrorKind::Other)
            } else {
                FaultAction::Proceed
            }
        })
    };
    let config = server_config(dir.path(), 2);
    let store = support::reopen_store(&config.storage_path, faults).expect("open");
    let server = TestServer::start_with_store(config, Box::new(store));
    let mut a1 = Peer::hello(server.addr, 1);
    a1.store(1, one.clone());
    let mut a2 = Peer::hello(server.addr, 2);
    a2.store(1, two.clone());
    assert_eq!(a1.fin(), (1, 2));
    armed.store(true, Ordering::SeqCst);
    assert_eq!(a2.fin(), (2, 2));
    assert!(
        records.load(Ordering::SeqCst) >= 2,
        "the DRAW record was attempted"
    );
    drop((a1, a2));
    stop_bounded(server);

    // The real server binary on the same bets file: it must resume the draw.
    let mut server = process::Server::start(dir.path(), 2);
    let resumed = server.proc.log_lines("draw_resume", "in_progress");
    assert_eq!(resumed.len(), 1, "{}", server.proc.dump());
    let (mut a1, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert_eq!(
        (progress.finished, progress.drawn),
        (true, true),
        "{progress:?}"
    );
    a1.conn
        .set_timeouts(Some(Duration::from_secs(5)))
        .expect("short timeout");
    let started = Instant::now();
    let got = sorted(&a1.winners());
    println!(
        "draw resume: answered in {:?}, {} winners",
        started.elapsed(),
        got.len()
    );
    assert_eq!(got, winners_of(&one));
    let mut a2 = Peer::hello(server.addr, 2);
    refused(
        &mut a2,
        2,
        &[bet("Tarde", "99999990", 7574)],
        ErrorCode::DrawDone,
    );
    assert_eq!(sorted(&a2.winners()), winners_of(&two));
    drop((a1, a2));
    server.stop();
    assert_eq!(
        server.proc.log_lines("draw_resume", "in_progress").len(),
        1,
        "{}",
        server.proc.dump()
    );
}

// -------------------------------------------------------------------- supersede

#[test]
fn a_new_hello_supersedes_the_older_connection_and_its_bets_are_never_stored() {
    let dir = TempDir::new("eo-supersede");
    let server = TestServer::start(server_config(dir.path(), 1));
    let data = bets("10", 6);
    let mut a = Peer::hello(server.addr, 1);
    a.store(1, data[..3].to_vec());
    let (mut b, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert_eq!((progress.stored_seq, progress.stored_bets), (1, 3));
    a.conn
        .set_timeouts(Some(Duration::from_secs(5)))
        .expect("bounded read");
    let reason = expect_error(&mut a, ErrorCode::Superseded);
    assert!(reason.contains('1'), "names the agency: {reason}");
    expect_closed(&mut a);
    // Whatever A still sends is not read, let alone stored (the write may fail).
    let _ = a.conn.write_message(&Message::Bets {
        seq: 2,
        line: 0,
        bets: vec![bet("Viejo", "66666666", 7574)],
    });
    b.store(2, data[3..].to_vec());
    let stored = server.stored();
    println!(
        "supersede: stored {}/{} of B's bets, 0 of A's late batch",
        stored.len(),
        data.len()
    );
    assert_eq!(stored, rows_of(1, &data));
    stop_bounded(server);
}

#[test]
fn a_connection_waiting_for_the_winners_is_superseded_promptly() {
    let dir = TempDir::new("eo-supersede-waiting");
    let server = TestServer::start(server_config(dir.path(), 2));
    let one = bets("11", 8);
    let mut a = Peer::hello(server.addr, 1);
    a.store(1, one.clone());
    assert_eq!(a.fin(), (1, 2));
    a.send(&Message::WinnersQuery);
    expect_no_reply_within(&mut a, HOLD);

    let started = Instant::now();
    let (mut b, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert!(progress.finished && !progress.drawn, "{progress:?}");
    a.conn
        .set_timeouts(Some(Duration::from_secs(5)))
        .expect("bounded read");
    expect_error(&mut a, ErrorCode::Superseded);
    let elapsed = started.elapsed();
    expect_closed(&mut a);
    println!("supersede while waiting: SUPERSEDED after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");

    // B finishes (counted once) and waits; agency 2's FIN runs the draw.
    assert_eq!(b.fin(), (1, 2));
    b.send(&Message::WinnersQuery);
    expect_no_reply_within(&mut b, HOLD);
    let mut two = Peer::hello(server.addr, 2);
    assert_eq!(two.fin(), (2, 2));
    assert_eq!(sorted(&flatten(&collect_chunks(&mut b))), winners_of(&one));
    stop_bounded(server);
}

// -------------------------------------------------------------- upload conflict

#[test]
fn another_upload_of_an_agency_with_bets_gets_upload_conflict() {
    let dir = TempDir::new("eo-conflict");
    let server = TestServer::start(server_config(dir.path(), 1));
    let data = bets("12", 10);
    let (mut x, _) = Peer::hello_upload(server.addr, 1, 0x5151);
    x.store(1, data[..5].to_vec());
    x.store(2, data[5..].to_vec());
    drop(x);

    let (mut y, progress) = Peer::hello_upload(server.addr, 1, 0x5252);
    assert_eq!(progress.upload, 0x5151, "WELCOME names the stored upload");
    assert_eq!((progress.stored_seq, progress.stored_bets), (2, 10));
    let other = bets("13", 3);
    for seq in [1, 2, 3] {
        let reason = refused(&mut y, seq, &other, ErrorCode::UploadConflict);
        assert!(reason.contains("5151"), "names the stored upload: {reason}");
    }
    let stored = server.stored();
    println!(
        "conflict: stored {} bets (the first upload's {}), 0 of the second",
        stored.len(),
        data.len()
    );
    assert_eq!(stored, rows_of(1, &data));
    // FIN and the winners are still allowed.
    assert_eq!(y.fin(), (1, 1));
    assert_eq!(sorted(&y.winners()), winners_of(&data));
    stop_bounded(server);
}

// --------------------------------------------------------------- storage faults

#[test]
fn a_full_disk_gets_internal_and_the_same_batch_succeeds_later() {
    let dir = TempDir::new("eo-disk-full");
    let data = bets("14", 9);
    let failures = Arc::new(AtomicUsize::new(0));
    let faults = failing(
        Step::WriteRows,
        std::io::ErrorKind::StorageFull,
        Arc::clone(&failures),
    );
    let config = server_config(dir.path(), 1);
    let store = support::reopen_store(&config.storage_path, faults).expect("open");
    let server = TestServer::start_with_store(config, Box::new(store));
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, data[..3].to_vec());
    failures.store(2, Ordering::SeqCst);
    for attempt in 0..2 {
        let reason = refused(&mut peer, 2, &data[3..6], ErrorCode::Internal);
        assert_eq!(
            server.stored(),
            rows_of(1, &data[..3]),
            "attempt {attempt}: nothing stored"
        );
        assert!(!reason.is_empty());
    }
    // Space again: the same batch on the same connection is stored, then the next.
    peer.store(2, data[3..6].to_vec());
    peer.store(3, data[6..].to_vec());
    let (_again, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert_eq!((progress.stored_seq, progress.stored_bets), (3, 9));
    let stored = server.stored();
    println!(
        "disk full: 2 INTERNAL, then stored {}/{}",
        stored.len(),
        data.len()
    );
    assert_eq!(stored, rows_of(1, &data));
    stop_bounded(server);
    assert_eq!(committed(&dir.join("bets.csv")), rows_of(1, &data));
}

#[test]
fn a_failed_sync_disables_the_store_but_the_server_keeps_serving() {
    let dir = TempDir::new("eo-sync-fail");
    let data = bets("15", 9);
    let failures = Arc::new(AtomicUsize::new(0));
    let faults = failing(
        Step::SyncRows,
        std::io::ErrorKind::Other,
        Arc::clone(&failures),
    );
    let config = server_config(dir.path(), 1);
    let store = support::reopen_store(&config.storage_path, faults).expect("open");
    let server = TestServer::start_with_store(config, Box::new(store));
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, data[..3].to_vec());
    failures.store(1, Ordering::SeqCst); // one failing fsync, then the disk is "fine"
    let mut internal = 0;
    // The next batch (2) is what would be stored; it never is again.
    for seq in [2, 2, 2, 2] {
        refused(&mut peer, seq, &data[3..6], ErrorCode::Internal);
        internal += 1;
    }
    // Still serving: ECHO, HELLO; the store stays disabled for every batch and FIN.
    assert_eq!(
        peer.request(&Message::Echo(b"alive".to_vec())),
        Message::Echo(b"alive".to_vec())
    );
    let (mut other, progress) = Peer::hello_upload(server.addr, 1, 0);
    assert_eq!((progress.stored_seq, progress.stored_bets), (1, 3));
    refused(&mut other, 2, &data[3..6], ErrorCode::Internal);
    internal += 1;
    other.send(&Message::Fin);
    expect_error(&mut other, ErrorCode::Internal);
    println!(
        "sync failure: {} INTERNAL replies, 0 ACKs after the failure",
        internal + 1
    );
    stop_bounded(server);
    // Recovery keeps what was acknowledged and nothing else.
    assert_eq!(committed(&dir.join("bets.csv")), rows_of(1, &data[..3]));
}

#[test]
fn a_bets_file_removed_while_the_server_runs_gets_internal_never_an_ack() {
    let dir = TempDir::new("eo-removed");
    let server = TestServer::start(server_config(dir.path(), 1));
    let data = bets("16", 6);
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, data[..3].to_vec());
    fs::remove_file(&server.storage).expect("remove the bets file");
    for seq in [2, 2, 2] {
        match send_batch(&mut peer, seq, &data[3..]) {
            Message::Error {
                code: ErrorCode::Internal,
                reason,
            } => assert!(reason.contains("bets.csv"), "names the file: {reason}"),
            other => panic!("batch {seq} after the file was removed: {other:?}"),
        }
    }
    assert_eq!(
        peer.request(&Message::Echo(b"x".to_vec())),
        Message::Echo(b"x".to_vec())
    );
    assert!(
        !server.storage.exists(),
        "nothing recreated the removed file"
    );
    println!("removed file: 3 batches refused with INTERNAL, 0 acknowledged");
    stop_bounded(server);
}

// ---------------------------------------------------------------- store opening

#[test]
fn a_second_server_on_the_same_bets_file_is_refused() {
    let dir = TempDir::new("eo-locked");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, vec![bet("Ana", "1", 1)]);
    let (result, elapsed) =
        run_expecting_return(server_config(dir.path(), 1), Duration::from_secs(5));
    let error = result.expect_err("a second server on the same file must not run");
    let text = error.to_string();
    println!("second server: refused in {elapsed:?}: {text}");
    assert!(
        matches!(error, ServerError::Storage(StorageError::Locked { .. })),
        "{error:?}"
    );
    assert!(
        text.contains(&server.storage.display().to_string()),
        "names the file: {text}"
    );
    // The first one is undisturbed.
    peer.store(2, vec![bet("Luis", "2", 2)]);
    assert_eq!(server.stored().len(), 2);
    stop_bounded(server);
}

#[test]
fn a_storage_path_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = TempDir::new("eo-not-a-file");
    let sub = dir.join("a-directory");
    fs::create_dir_all(&sub).expect("mkdir");
    for path in [Path::new("/dev/zero").to_path_buf(), sub] {
        let mut config = server_config(dir.path(), 1);
        config.storage_path = path.clone();
        let (result, elapsed) = run_expecting_return(config, Duration::from_secs(5));
        let error = result.expect_err("not a regular file");
        let text = error.to_string();
        println!("{}: refused in {elapsed:?}: {text}", path.display());
        assert!(
            text.contains(&path.display().to_string()),
            "names the path: {text}"
        );
        assert!(
            matches!(error, ServerError::Storage(StorageError::NotAFile { .. })),
            "{error:?}"
        );
    }
}

// ------------------------------------------------------------------ adopted bets

/// Regression: bets adopted from a journal-less bets file (an older run) were a
/// conflict for every upload, so their agency could never finish and the draw never
/// ran. They are now the first bets of whatever upload goes on.
#[test]
fn bets_adopted_from_an_older_run_are_resumed_by_the_agencys_upload() {
    let dir = TempDir::new("eo-adopted");
    let data = bets("8", 10);
    let config = server_config(dir.path(), 1);
    // An older run stored the first 4 bets, with no journal beside the file.
    let rows: String = data[..4]
        .iter()
        .map(|b| {
            format!(
                "1,{},{},{},{},{}\n",
                b.first_name,
                b.last_name,
                b.document,
                b.birthdate.format("%Y-%m-%d"),
                b.number
            )
        })
        .collect();
    fs::write(&config.storage_path, rows).expect("write the old bets file");
    let server = TestServer::start(config.clone());
    let (mut peer, progress) = Peer::hello_upload(server.addr, 1, 0xF11E);
    println!("adopted: WELCOME {progress:?}");
    assert_eq!(
        (
            progress.upload,
            progress.stored_seq,
            progress.stored_bets,
            progress.stored_line
        ),
        (0xF11E, 0, 4, 0),
        "adopted bets are reported under the asking upload"
    );
    peer.store_at(1, 10, data[4..].to_vec());
    assert_eq!(peer.fin(), (1, 1));
    assert_eq!(sorted(&peer.winners()), winners_of(&data));
    assert_eq!(
        server.stored(),
        rows_of(1, &data),
        "every bet once, in order"
    );
    drop(peer);
    stop_bounded(server);

    // After a restart the agency's bets belong to that upload.
    let server = TestServer::start(config);
    let (_peer, progress) = Peer::hello_upload(server.addr, 1, 0xF11E);
    assert_eq!(
        (
            progress.upload,
            progress.stored_seq,
            progress.stored_bets,
            progress.stored_line
        ),
        (0xF11E, 1, 10, 10)
    );
    stop_bounded(server);
}
