//! Mutual TLS: agencies are who their certificate says, over loopback with a
//! throw-away PKI (`support::certs`).
//!
//! * over TLS a whole lottery runs, and the server learns nothing in the clear;
//! * agency 2's certificate cannot upload, FIN or ask for winners as agency 1;
//! * no certificate, an expired one, or one from a foreign CA cannot act as an agency;
//! * the client refuses a server whose certificate is not the lottery's;
//! * with TLS required, agency requests in the clear get `TLS_REQUIRED`, while the
//!   echo check (frames and plain text) and status still work in the clear.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use loteria::client::{self, ClientError, Outcome};
use loteria::config::ServerConfig;
use loteria::protocol::{ErrorCode, Message};
use loteria::shutdown::Shutdown;
use support::certs::TestPki;
use support::wire::{TIMEOUT, stop_bounded};
use support::{
    Peer, TempDir, TestServer, client_config, mock_agencies, server_config, write_files,
};

fn tls_server(dir: &TempDir, pki: &TestPki, agencies: u32) -> ServerConfig {
    let mut config = server_config(dir.path(), agencies);
    config.tls = pki.server_files();
    config.tls_required = true;
    config
}

/// Agency 1 with one bet to upload to `addr` (named `localhost`, as the server's
/// certificate says) over TLS with `files`, giving up after `retry_deadline`.
fn one_bet_agency(
    dir: &TempDir,
    addr: std::net::SocketAddr,
    files: loteria::tls::TlsFiles,
    retry_deadline: Duration,
) -> loteria::config::ClientConfig {
    let data = dir.join("agency-1.csv");
    support::write_agency_file(&data, &[support::bet("A", "1", 1)]);
    let mut config = client_config(addr, 1, &data);
    config.server_address = format!("localhost:{}", addr.port());
    config.retry_deadline = retry_deadline;
    config.tls = files;
    config
}

/// The requests only an agency may make: `HELLO` for `agency`, a first batch of
/// `bets`, `FIN` and `WINNERS_QUERY`.
fn agency_requests(agency: u32, bets: Vec<loteria::bet::Bet>) -> [Message; 4] {
    [
        Message::Hello { agency, upload: 0 },
        Message::Bets {
            seq: 1,
            line: 0,
            bets,
        },
        Message::Fin,
        Message::WinnersQuery,
    ]
}

/// The reply to `message`, expected to be `ERROR` with `code`; then the server closes.
fn refused_and_closed(peer: &mut Peer, message: &Message, code: ErrorCode) -> String {
    match peer.request(message) {
        Message::Error { code: got, reason } if got == code => {
            assert_eq!(peer.recv(), None, "the server closes after {code}");
            reason
        }
        other => panic!("expected {code} for {message:?}, got {other:?}"),
    }
}

#[test]
fn a_whole_lottery_runs_over_tls() {
    let dir = TempDir::new("tls-lottery");
    let pki = TestPki::new();
    let agencies = mock_agencies(&[120, 80, 45], 7);
    let files = write_files(&dir, &agencies);
    let server = TestServer::start(tls_server(&dir, &pki, 3));
    let handles: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let id = i as u32 + 1;
            let mut config = client_config(server.addr, id, data);
            config.server_address = format!("localhost:{}", server.addr.port());
            config.tls = pki.client_files(Some(&pki.agency(id)));
            std::thread::spawn(move || client::run(&config, &Shutdown::new()))
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let outcome = handle.join().expect("client thread");
        assert!(
            matches!(outcome, Ok(Outcome::Completed { .. })),
            "agency {}: {outcome:?}",
            i + 1
        );
    }
    // Every bet stored once, under its own agency.
    let stored = server.stored();
    for (i, (bets, _)) in agencies.iter().enumerate() {
        let agency = i as u32 + 1;
        assert_eq!(
            stored.iter().filter(|(a, _, _)| *a == agency).count(),
            bets.len()
        );
    }
    // And the winners, asked again over TLS, are each agency's own.
    for (i, (_, winners)) in agencies.iter().enumerate() {
        let id = i as u32 + 1;
        let mut peer = Peer::connect_tls(server.addr, &pki.client_tls(Some(&pki.agency(id))));
        peer.say_hello(id, 0);
        let mut got = peer.winners();
        got.sort();
        let mut want = winners.clone();
        want.sort();
        assert_eq!(got, want, "agency {id}");
    }
    stop_bounded(server);
}

#[test]
fn agency_2s_certificate_cannot_act_as_agency_1() {
    let dir = TempDir::new("tls-impersonation");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 2));
    let second = pki.client_tls(Some(&pki.agency(2)));
    let batch = vec![support::bet("Impostor", "11111111", 7574)];
    // HELLO as agency 1 is refused and the connection closed; so are BETS, FIN and
    // WINNERS_QUERY sent as agency 1 after it (each on a new connection).
    for message in agency_requests(1, batch.clone()) {
        let mut peer = Peer::connect_tls(server.addr, &second);
        let reason = refused_and_closed(
            &mut peer,
            &Message::Hello {
                agency: 1,
                upload: 0,
            },
            ErrorCode::NotAuthorized,
        );
        assert!(reason.contains("agency-1"), "{reason}");
        // Whatever comes next on that connection is not served.
        let _ = peer.conn.write_message(&message);
        assert_eq!(peer.conn.read_message().ok().flatten(), None, "{message:?}");
    }
    // Nothing of agency 1 was stored, and agency 1 has not finished.
    assert!(server.stored().is_empty());
    let mut watcher = Peer::connect_tls(server.addr, &second);
    let (status, _) = watcher.status();
    assert_eq!(status.finished, 0);
    // The same certificate works as what it is: agency 2.
    let mut peer = Peer::connect_tls(server.addr, &second);
    peer.say_hello(2, 0);
    peer.store(1, batch);
    assert_eq!(server.stored(), vec![(2, "11111111".to_string(), 7574)]);
    stop_bounded(server);
}

#[test]
fn no_certificate_cannot_act_as_an_agency_but_may_ask_the_status() {
    let dir = TempDir::new("tls-no-cert");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 2));
    let anonymous = pki.client_tls(None);
    let mut peer = Peer::connect_tls(server.addr, &anonymous);
    let (status, _) = peer.status();
    assert_eq!(status.agencies, 2);
    let reason = refused_and_closed(
        &mut peer,
        &Message::Hello {
            agency: 1,
            upload: 0,
        },
        ErrorCode::NotAuthorized,
    );
    assert!(reason.contains("presented none"), "{reason}");
    // Requests that need a HELLO get NOT_IDENTIFIED and change nothing.
    let mut peer = Peer::connect_tls(server.addr, &anonymous);
    match peer.request(&Message::Fin) {
        Message::Error {
            code: ErrorCode::NotIdentified,
            ..
        } => {}
        other => panic!("expected NOT_IDENTIFIED, got {other:?}"),
    }
    assert_eq!(peer.status().0.finished, 0);
    stop_bounded(server);
}

/// A handshake with `pair` fails, or (TLS 1.3: the client may finish its side before
/// the server checks its certificate) the first reply is the server's alert.
fn refused_certificate(server: &TestServer, pki: &TestPki, pair: &support::certs::Pair) -> String {
    let tls = loteria::tls::ClientTls::load(
        &pki.ca.cert,
        Some((pair.cert.as_path(), pair.key.as_path())),
    )
    .expect("the client loads it");
    match Peer::try_connect_tls(server.addr, &tls) {
        Err(e) => e.to_string(),
        Ok(mut peer) => {
            let _ = peer.conn.write_message(&Message::Hello {
                agency: 1,
                upload: 0,
            });
            match peer.conn.read_message() {
                Err(e) => {
                    assert!(e.tls_failure().is_some(), "a TLS failure: {e}");
                    e.to_string()
                }
                Ok(other) => panic!("a refused certificate got {other:?}"),
            }
        }
    }
}

#[test]
fn an_expired_or_foreign_certificate_is_refused() {
    let dir = TempDir::new("tls-bad-certs");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 2));
    let expired = refused_certificate(&server, &pki, &pki.expired_agency(1));
    let foreign = refused_certificate(&server, &pki, &pki.foreign_agency(1));
    eprintln!("expired: {expired}\nforeign: {foreign}");
    assert!(
        expired.contains("alert") || expired.contains("xpired"),
        "{expired}"
    );
    assert!(
        foreign.contains("alert") || foreign.contains("nknown"),
        "{foreign}"
    );
    assert!(server.stored().is_empty());
    // The client binary's own run fails fast and clearly, not after its retry
    // deadline: a refused certificate is not worth retrying.
    let config = one_bet_agency(
        &dir,
        server.addr,
        pki.client_files(Some(&pki.expired_agency(1))),
        Duration::from_secs(60),
    );
    let started = std::time::Instant::now();
    let err = client::run(&config, &Shutdown::new()).expect_err("refused");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up only after {:?}: {err}",
        started.elapsed()
    );
    assert!(!matches!(err, ClientError::RetryDeadline { .. }), "{err}");
    stop_bounded(server);
}

#[test]
fn the_client_refuses_a_server_that_is_not_the_lotterys() {
    let dir = TempDir::new("tls-fake-server");
    let pki = TestPki::new();
    let (foreign_ca, foreign_server) = pki.foreign_server();
    let mut config = tls_server(&dir, &pki, 1);
    config.tls.cert = Some(foreign_server.cert);
    config.tls.key = Some(foreign_server.key);
    config.tls.ca = Some(foreign_ca);
    let server = TestServer::start(config);
    let client = one_bet_agency(
        &dir,
        server.addr,
        pki.client_files(Some(&pki.agency(1))),
        Duration::from_secs(60),
    );
    let err = client::run(&client, &Shutdown::new()).expect_err("an untrusted server");
    let text = err.to_string();
    assert!(
        text.contains("UnknownIssuer") || text.contains("invalid peer certificate"),
        "{text}"
    );
    assert!(
        server.stored().is_empty(),
        "no bet went to the untrusted server"
    );
    stop_bounded(server);
}

#[test]
fn in_the_clear_agencies_get_tls_required_but_echo_and_status_work() {
    let dir = TempDir::new("tls-required");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 2));
    for message in agency_requests(1, vec![support::bet("A", "1", 1)]) {
        let mut peer = Peer::connect(server.addr);
        let reason = refused_and_closed(&mut peer, &message, ErrorCode::TlsRequired);
        assert!(reason.contains("TLS"), "{reason}");
    }
    // The echo check in frames and in plain text, and status, in the clear.
    let mut peer = Peer::connect(server.addr);
    let echo = Message::Echo(b"hola".to_vec());
    assert_eq!(peer.request(&echo), echo);
    assert_eq!(peer.status().0.agencies, 2);
    let mut text = TcpStream::connect(server.addr).expect("connect");
    text.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    text.write_all(b"hola\n").expect("send");
    let mut back = [0u8; 5];
    text.read_exact(&mut back).expect("echoed");
    assert_eq!(&back, b"hola\n");
    assert!(server.stored().is_empty());
    stop_bounded(server);
}

#[test]
fn with_tls_not_required_both_kinds_of_agency_are_served() {
    let dir = TempDir::new("tls-optional");
    let pki = TestPki::new();
    let mut config = tls_server(&dir, &pki, 2);
    config.tls_required = false;
    let server = TestServer::start(config);
    let mut clear = Peer::hello(server.addr, 1);
    clear.store(1, vec![support::bet("A", "1", 1)]);
    let mut secure = Peer::connect_tls(server.addr, &pki.client_tls(Some(&pki.agency(2))));
    secure.say_hello(2, 0);
    secure.store(1, vec![support::bet("B", "2", 2)]);
    // A certificate still binds its connection to its own agency only.
    let mut wrong = Peer::connect_tls(server.addr, &pki.client_tls(Some(&pki.agency(2))));
    refused_and_closed(
        &mut wrong,
        &Message::Hello {
            agency: 1,
            upload: 0,
        },
        ErrorCode::NotAuthorized,
    );
    assert_eq!(server.stored().len(), 2);
    stop_bounded(server);
}

#[test]
fn a_tls_client_to_a_server_without_tls_fails_clearly() {
    let dir = TempDir::new("tls-off");
    let pki = TestPki::new();
    let server = TestServer::start(server_config(dir.path(), 1));
    let client = one_bet_agency(
        &dir,
        server.addr,
        pki.client_files(Some(&pki.agency(1))),
        Duration::from_secs(1),
    );
    let err = client::run(&client, &Shutdown::new()).expect_err("no TLS there");
    let text = err.to_string();
    assert!(text.contains("is TLS on at the server"), "{text}");
    assert!(
        !matches!(err, ClientError::RetryDeadline { .. }),
        "a server without TLS is not retried: {err}"
    );
    stop_bounded(server);
}

#[test]
fn a_client_with_another_agencys_certificate_stops_before_connecting() {
    let dir = TempDir::new("tls-own-cert");
    let pki = TestPki::new();
    // Nothing listens there: the check comes first.
    let addr = "127.0.0.1:9".parse().expect("addr");
    let mut client = one_bet_agency(
        &dir,
        addr,
        pki.client_files(Some(&pki.agency(2))),
        Duration::from_secs(1),
    );
    let err = client::run(&client, &Shutdown::new()).expect_err("not agency 1's");
    assert!(
        err.to_string().contains("not agency 1's certificate"),
        "{err}"
    );
    client.tls = pki.client_files(None);
    let err = client::run(&client, &Shutdown::new()).expect_err("no certificate");
    assert!(
        err.to_string().contains("needs agency 1's certificate"),
        "{err}"
    );
}

/// Regression (issue 9 review): a waiting agency that left over TLS was not noticed by
/// the probe, which peeked at the socket and saw TLS' `close_notify` record as data;
/// only a later `DRAW_PENDING` write failing (two of them, about 6 s) freed its place.
/// The probe now reads through the connection, so the close is noticed at once (the
/// agency shows as not connected).
#[test]
fn a_tls_waiter_that_leaves_is_noticed_at_once() {
    let dir = TempDir::new("tls-waiter-leaves");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 2));
    let tls = pki.client_tls(Some(&pki.agency(1)));
    let mut waiter = Peer::connect_tls(server.addr, &tls);
    waiter.say_hello(1, 0);
    waiter.fin();
    waiter.send(&Message::WinnersQuery);
    let mut monitor = Peer::connect(server.addr);
    let connected = |monitor: &mut Peer| monitor.status().0.entries[0].connected;
    let started = std::time::Instant::now();
    while !connected(&mut monitor) {
        assert!(
            started.elapsed() < TIMEOUT,
            "agency 1 never showed as connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.conn.close(); // close_notify, then the TCP close
    drop(waiter);
    let left = std::time::Instant::now();
    while connected(&mut monitor) {
        assert!(
            left.elapsed() < Duration::from_secs(4),
            "agency 1 still holds its place {:?} after it left",
            left.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "a TLS waiter that left was noticed after {:?}",
        left.elapsed()
    );
    stop_bounded(server);
}
