//! An adversarial review of the mutual-TLS layer, over loopback with the throw-away PKI
//! of `support::certs`: every way found to act as an agency without its certificate,
//! to hold a server thread past `server.io_timeout`, or to make the client give up
//! too early or too late, as a test. Each regression test names its bug; the others
//! record what held.

mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loteria::client::{self, ClientError, Outcome};
use loteria::config::{Mode, ServerConfig};
use loteria::connection::Connection;
use loteria::protocol::{self, ErrorCode, Message};
use loteria::shutdown::Shutdown;
use loteria::tls::{ClientTls, ServerTls, speaks_for};
use rcgen::{ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use support::certs::{self, Pair, TestPki};
use support::wire::{TIMEOUT, raw_connect, stop_bounded};
use support::{Peer, TempDir, TestServer, client_config, server_config};

fn tls_server(dir: &TempDir, pki: &TestPki, agencies: u32) -> ServerConfig {
    let mut config = server_config(dir.path(), agencies);
    config.tls = pki.server_files();
    config.tls_required = true;
    config
}

fn load_client(pki: &TestPki, pair: &Pair) -> ClientTls {
    ClientTls::load(
        &pki.ca.cert,
        Some((pair.cert.as_path(), pair.key.as_path())),
    )
    .expect("the client loads it")
}

/// The first certificate of a PEM file.
fn first_cert(pair: &Pair) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(&pair.cert)
        .expect("open")
        .next()
        .expect("a certificate")
        .expect("PEM")
}

/// Whether a connection made with `tls` can say `HELLO` for `agency` and be welcomed:
/// `Err` with why not (a failed handshake, an alert, an `ERROR`).
fn hello_over_tls(addr: SocketAddr, tls: &ClientTls, agency: u32) -> Result<(), String> {
    let mut peer = Peer::try_connect_tls(addr, tls).map_err(|e| format!("handshake: {e}"))?;
    peer.conn
        .write_message(&Message::Hello { agency, upload: 0 })
        .map_err(|e| format!("write: {e}"))?;
    match peer.conn.read_message() {
        Ok(Some(Message::Welcome { agency: a, .. })) if a == agency => Ok(()),
        Ok(other) => Err(format!("reply {other:?}")),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Reads from `stream` until the peer closes it (end of stream or a reset), within
/// [`TIMEOUT`]; a read timeout fails the test: the server kept the connection.
fn expect_server_closes(stream: &mut TcpStream, what: &str) {
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if support::wire::is_close(&e) => return,
            Err(e) => panic!(
                "{what}: the server kept the connection for {:?} ({e})",
                started.elapsed()
            ),
        }
    }
}

/// A server of `max_connections = 1` serves a new connection again (its only
/// connection thread has ended): polls with `ECHO` for up to [`TIMEOUT`].
fn wait_until_served_again(addr: SocketAddr, what: &str) {
    let started = Instant::now();
    loop {
        let mut peer = Peer::connect(addr);
        let echo = Message::Echo(b"free?".to_vec());
        if peer.conn.write_message(&echo).is_ok()
            && let Ok(Some(reply)) = peer.conn.read_message()
        {
            if reply == echo {
                return;
            }
            assert!(
                matches!(
                    reply,
                    Message::Error {
                        code: ErrorCode::ServerBusy,
                        ..
                    }
                ),
                "{what}: {reply:?}"
            );
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{what}: the server's only connection thread is still held after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TLS client driven by hand (rustls directly over the socket), to send what the
/// library never sends: trickled records, a key update, a bare `close_notify`.
struct RawTls {
    sock: TcpStream,
    tls: rustls::ClientConnection,
}

impl RawTls {
    fn connect(addr: SocketAddr, tls: &ClientTls) -> RawTls {
        let mut sock = raw_connect(addr);
        let name = loteria::tls::server_name("localhost:1").expect("name");
        let mut conn = rustls::ClientConnection::new(tls.config(), name).expect("client");
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).expect("handshake");
        }
        while conn.wants_write() {
            conn.write_tls(&mut sock).expect("flush");
        }
        RawTls { sock, tls: conn }
    }

    /// The TLS records that carry `message`, not sent.
    fn records(&mut self, message: &Message) -> Vec<u8> {
        let bytes = message.encode().expect("encodes");
        self.tls.writer().write_all(&bytes).expect("buffer");
        self.pending()
    }

    /// Whatever rustls has queued to send, not sent.
    fn pending(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).expect("into a Vec");
        }
        out
    }

    fn send(&mut self, message: &Message) {
        let records = self.records(message);
        self.sock.write_all(&records).expect("send");
    }

    /// The next message, `None` at a clean close.
    fn recv(&mut self) -> io::Result<Option<Message>> {
        let mut stream = rustls::Stream::new(&mut self.tls, &mut self.sock);
        match protocol::read_frame(&mut stream) {
            Ok(None) => Ok(None),
            Ok(Some(frame)) => Ok(Some(frame.decode().map_err(io::Error::other)?)),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }
}

// ---------------------------------------------------------------------------------
// Identity: no way to act as agency k without agency k's certificate.

/// A leaf of the lottery CA for exactly the subject alternative names `sans`.
fn leaf_with_sans(pki: &TestPki, file: &str, sans: Vec<SanType>) -> Pair {
    let mut params = certs::leaf_params(&[], Eku::ClientAuth);
    params.subject_alt_names = sans;
    let key = KeyPair::generate().expect("key");
    pki.ca.write_signed(&pki.dir, file, &params, &key)
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("IA5"))
}

#[test]
fn only_the_exact_name_agency_k_speaks_for_agency_k() {
    let pki = TestPki::new();
    // (subject alternative names, agency 1?, agency 10?)
    let cases: Vec<(&str, Vec<SanType>, bool, bool)> = vec![
        ("exact", vec![dns("agency-1")], true, false),
        // DNS names compare without case: the same name.
        ("upper", vec![dns("AGENCY-1")], true, false),
        ("zero-padded", vec![dns("agency-01")], false, false),
        ("trailing-dot", vec![dns("agency-1.")], false, false),
        ("prefix-of-10", vec![dns("agency-10")], false, true),
        ("suffixed", vec![dns("agency-1x")], false, false),
        ("prefixed", vec![dns("xagency-1")], false, false),
        ("subdomain", vec![dns("agency-1.lottery")], false, false),
        ("star", vec![dns("*")], false, false),
        ("label-star", vec![dns("agency-*")], false, false),
        ("wildcard-parent", vec![dns("*.agency-1")], false, false),
        (
            "email",
            vec![SanType::Rfc822Name("agency-1".try_into().expect("IA5"))],
            false,
            false,
        ),
        (
            "uri",
            vec![SanType::URI("agency-1".try_into().expect("IA5"))],
            false,
            false,
        ),
        ("none", vec![], false, false),
    ];
    for (file, sans, one, ten) in cases {
        let pair = leaf_with_sans(&pki, file, sans);
        let cert = first_cert(&pair);
        assert_eq!(speaks_for(&cert, 1), one, "{file} for agency 1");
        assert_eq!(speaks_for(&cert, 10), ten, "{file} for agency 10");
        assert!(!speaks_for(&cert, 0), "{file} for agency 0");
    }
    // The subject's common name alone does not count (only the SAN does).
    let mut params = certs::leaf_params(&[], Eku::ClientAuth);
    params.subject_alt_names = vec![];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "agency-1");
    let key = KeyPair::generate().expect("key");
    let cn_only = pki.ca.write_signed(&pki.dir, "cn-only", &params, &key);
    assert!(!speaks_for(&first_cert(&cn_only), 1));
    // Garbage is no certificate of anyone.
    assert!(!speaks_for(
        &CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]),
        1
    ));
}

#[test]
fn certificates_of_the_lottery_ca_that_are_not_an_agencys_leaf_cannot_say_hello() {
    let dir = TempDir::new("review-tls-roles");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 2));
    let good = load_client(&pki, &pki.agency(1));
    assert_eq!(hello_over_tls(server.addr, &good, 1), Ok(()));

    // A server certificate (serverAuth only) that even names agency-1.
    let server_role = {
        let params = certs::leaf_params(&["agency-1", "localhost"], Eku::ServerAuth);
        let key = KeyPair::generate().expect("key");
        pki.ca.write_signed(&pki.dir, "server-role", &params, &key)
    };
    // The real server certificate of the PKI.
    let real_server = pki.server.clone();
    // A CA certificate (an intermediate of the lottery CA) naming agency-1, for
    // client authentication, presented as the leaf.
    let sub_ca = {
        let mut params = certs::ca_params("sub-ca");
        params.subject_alt_names = vec![dns("agency-1")];
        params.extended_key_usages = vec![Eku::ClientAuth];
        let key = KeyPair::generate().expect("key");
        pki.ca.write_signed(&pki.dir, "sub-ca", &params, &key)
    };
    // The lottery CA's own certificate and key.
    let root = pki.ca.own_pair(&pki.dir, "root-as-leaf");
    // Agency 2 signs a certificate for agency-1 with its own key and sends the chain
    // [forged agency-1, agency-2]: once with agency 2's certificate marked "no CA",
    // once with no basic constraints at all.
    let forged = |file: &str, explicit: bool| {
        let mut issuer_params = certs::leaf_params(&["agency-2"], Eku::ClientAuth);
        if !explicit {
            issuer_params.is_ca = IsCa::NoCa;
        }
        let issuer_key = KeyPair::generate().expect("key");
        let issuer = pki.ca.write_signed(
            &pki.dir,
            &format!("{file}-issuer"),
            &issuer_params,
            &issuer_key,
        );
        let issuer_pem = std::fs::read_to_string(&issuer.cert).expect("read");
        let key = KeyPair::generate().expect("key");
        certs::write_signed_by_leaf(
            &pki.dir,
            file,
            &certs::leaf_params(&["agency-1"], Eku::ClientAuth),
            &key,
            &issuer_params,
            &issuer_key,
            &issuer_pem,
        )
    };
    let forged_explicit = forged("forged-explicit", true);
    let forged_implicit = forged("forged-implicit", false);
    for (what, pair) in [
        ("a serverAuth certificate naming agency-1", &server_role),
        ("the server's certificate", &real_server),
        ("an intermediate CA naming agency-1", &sub_ca),
        ("the lottery CA itself", &root),
        ("agency-1 signed by agency 2 (cA=false)", &forged_explicit),
        (
            "agency-1 signed by agency 2 (no basicConstraints)",
            &forged_implicit,
        ),
    ] {
        let tls = load_client(&pki, pair);
        let refused = hello_over_tls(server.addr, &tls, 1);
        assert!(refused.is_err(), "{what} acted as agency 1");
        eprintln!("{what}: {}", refused.unwrap_err());
    }
    assert!(server.stored().is_empty());
    stop_bounded(server);
}

#[test]
fn one_connection_is_one_agency_and_a_refused_hello_takes_nothing_over() {
    let dir = TempDir::new("review-tls-hello-order");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 2));
    // Agency 1, over TLS, identified and working.
    let one = load_client(&pki, &pki.agency(1));
    let mut first = Peer::connect_tls(server.addr, &one);
    first.say_hello(1, 0);
    // Agency 2's certificate says HELLO 1: refused, and agency 1's connection is not
    // superseded by it.
    let two = load_client(&pki, &pki.agency(2));
    assert!(hello_over_tls(server.addr, &two, 1).is_err());
    first.store(1, vec![support::bet("Uno", "1", 1)]);
    // A certificate for both names (which `make certs` never issues) still binds a
    // connection to the first agency it says HELLO for.
    let both = leaf_with_sans(&pki, "both", vec![dns("agency-1"), dns("agency-2")]);
    let mut peer = Peer::connect_tls(server.addr, &load_client(&pki, &both));
    peer.say_hello(2, 0);
    match peer.request(&Message::Hello {
        agency: 1,
        upload: 0,
    }) {
        Message::Error {
            code: ErrorCode::AlreadyIdentified,
            ..
        } => {}
        other => panic!("a second HELLO for another agency got {other:?}"),
    }
    // Over TLS with agency 1's certificate, requests before HELLO change nothing.
    let mut early = Peer::connect_tls(server.addr, &one);
    for message in [
        Message::Bets {
            seq: 2,
            line: 0,
            bets: vec![support::bet("Early", "2", 2)],
        },
        Message::Fin,
        Message::WinnersQuery,
    ] {
        match early.request(&message) {
            Message::Error {
                code: ErrorCode::NotIdentified,
                ..
            } => {}
            other => panic!("{message:?} before HELLO got {other:?}"),
        }
    }
    assert_eq!(server.stored(), vec![(1, "1".to_string(), 1)]);
    assert_eq!(early.status().0.finished, 0);
    stop_bounded(server);
}

#[test]
fn tls_and_frames_in_the_clear_do_not_mix_on_one_connection() {
    let dir = TempDir::new("review-tls-mixing");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 1));
    let hello = Message::Hello {
        agency: 1,
        upload: 0,
    }
    .encode()
    .expect("encodes");
    // TLS, then a HELLO frame in the clear on the same socket: a bad record, closed.
    let mut raw = RawTls::connect(server.addr, &load_client(&pki, &pki.agency(2)));
    raw.sock.write_all(&hello).expect("send in the clear");
    expect_server_closes(&mut raw.sock, "a clear frame inside TLS");
    // Frames in the clear first (ECHO is allowed), then a ClientHello: it is read as
    // a frame of version 0x16 and refused; TLS cannot start late.
    let mut peer = Peer::connect(server.addr);
    let echo = Message::Echo(b"x".to_vec());
    assert_eq!(peer.request(&echo), echo);
    let late = peer
        .conn
        .connect_tls(load_client(&pki, &pki.agency(1)).config(), {
            loteria::tls::server_name("localhost:1").expect("name")
        });
    assert!(late.is_err(), "a handshake after frames in the clear");
    assert!(server.stored().is_empty());
    stop_bounded(server);
}

// ---------------------------------------------------------------------------------
// Time: no TLS peer holds a server thread past `server.io_timeout`.

/// A TLS server with `max_connections = 1` and a short `io_timeout`.
fn one_slot_server(dir: &TempDir, pki: &TestPki, io_timeout: Duration) -> TestServer {
    let mut config = tls_server(dir, pki, 1);
    config.max_connections = 1;
    config.io_timeout = io_timeout;
    TestServer::start(config)
}

/// A real ClientHello of the library's client, as bytes.
fn client_hello(pki: &TestPki) -> Vec<u8> {
    let tls = load_client(pki, &pki.agency(1));
    let name = loteria::tls::server_name("localhost:1").expect("name");
    let mut conn = rustls::ClientConnection::new(tls.config(), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("into a Vec");
    }
    out
}

#[test]
fn a_handshake_that_never_completes_is_dropped_after_io_timeout() {
    let dir = TempDir::new("review-tls-slow-handshake");
    let pki = TestPki::new();
    let server = one_slot_server(&dir, &pki, Duration::from_millis(800));
    let hello = client_hello(&pki);
    // 1. A record header that promises 512 bytes, then nothing.
    let mut stream = raw_connect(server.addr);
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .expect("send");
    expect_server_closes(&mut stream, "a record that never completes");
    wait_until_served_again(server.addr, "a record that never completes");
    // 2. A whole ClientHello, then silence (the server waits for our Finished).
    let mut stream = raw_connect(server.addr);
    stream.write_all(&hello).expect("send");
    expect_server_closes(&mut stream, "a ClientHello, then silence");
    wait_until_served_again(server.addr, "a ClientHello, then silence");
    // 3. The ClientHello trickled in, a byte every 20 ms (each read succeeds).
    let mut stream = raw_connect(server.addr);
    let trickle = {
        let mut stream = stream.try_clone().expect("clone");
        std::thread::spawn(move || {
            for byte in hello {
                if stream.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    expect_server_closes(&mut stream, "a trickled ClientHello");
    wait_until_served_again(server.addr, "a trickled ClientHello");
    drop(stream);
    trickle.join().expect("trickle");
    // 4. A handshake message that claims 16 MiB.
    let mut stream = raw_connect(server.addr);
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff])
        .expect("send");
    expect_server_closes(&mut stream, "a 16 MiB handshake message");
    wait_until_served_again(server.addr, "a 16 MiB handshake message");
    stop_bounded(server);
}

#[test]
fn a_record_trickled_after_the_handshake_hits_the_frame_deadline() {
    let dir = TempDir::new("review-tls-trickle");
    let pki = TestPki::new();
    let server = one_slot_server(&dir, &pki, Duration::from_millis(800));
    let mut raw = RawTls::connect(server.addr, &load_client(&pki, &pki.agency(1)));
    let records = raw.records(&Message::Echo(vec![b'e'; 200]));
    let mut sock = raw.sock.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        for byte in records {
            if sock.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // The server answers IDLE_TIMEOUT inside TLS, then closes.
    match raw.recv() {
        Ok(Some(Message::Error {
            code: ErrorCode::IdleTimeout,
            ..
        })) => {}
        other => panic!("expected IDLE_TIMEOUT, got {other:?}"),
    }
    expect_server_closes(&mut raw.sock, "a trickled record");
    trickle.join().expect("trickle");
    wait_until_served_again(server.addr, "a trickled record");
    stop_bounded(server);
}

#[test]
fn a_tls_peer_that_stops_reading_cannot_hold_the_server() {
    let dir = TempDir::new("review-tls-no-read");
    let pki = TestPki::new();
    let server = one_slot_server(&dir, &pki, Duration::from_millis(800));
    let mut raw = RawTls::connect(server.addr, &load_client(&pki, &pki.agency(1)));
    // Echo requests of a whole frame each, never read: the server's answers fill the
    // socket buffers and its writes block.
    let echo = Message::Echo(vec![b'z'; protocol::MAX_FRAME_LEN - protocol::HEADER_LEN]);
    let records = raw.records(&echo);
    raw.sock
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let started = Instant::now();
    while started.elapsed() < TIMEOUT {
        if raw.sock.write_all(&records).is_err() {
            break; // Our own buffers are full too, or the server closed.
        }
    }
    wait_until_served_again(server.addr, "a peer that stops reading");
    stop_bounded(server);
}

#[test]
fn close_notify_ends_the_conversation_at_once() {
    let dir = TempDir::new("review-tls-close-notify");
    let pki = TestPki::new();
    // A long io_timeout: the server must not wait for it.
    let mut config = tls_server(&dir, &pki, 1);
    config.io_timeout = Duration::from_secs(120);
    let server = TestServer::start(config);
    let mut raw = RawTls::connect(server.addr, &load_client(&pki, &pki.agency(1)));
    raw.send(&Message::Hello {
        agency: 1,
        upload: 0,
    });
    assert!(matches!(raw.recv(), Ok(Some(Message::Welcome { .. }))));
    raw.tls.send_close_notify();
    let alert = raw.pending();
    raw.sock.write_all(&alert).expect("send close_notify");
    // The socket stays open on our side; the server closes (with its own
    // close_notify: a clean end).
    assert!(
        matches!(raw.recv(), Ok(None)),
        "a clean close from the server"
    );
    expect_server_closes(&mut raw.sock, "close_notify");
    stop_bounded(server);
}

#[test]
fn shutdown_stops_a_server_with_tls_connections_mid_handshake_and_mid_read() {
    let dir = TempDir::new("review-tls-shutdown");
    let pki = TestPki::new();
    let mut config = tls_server(&dir, &pki, 2);
    config.io_timeout = Duration::from_secs(120);
    let server = TestServer::start(config);
    let hello = client_hello(&pki);
    // Half a ClientHello; a whole one and silence; a handshaken connection idle; one
    // identified and half-way through a record.
    let mut half = raw_connect(server.addr);
    half.write_all(&hello[..hello.len() / 2]).expect("send");
    let mut whole = raw_connect(server.addr);
    whole.write_all(&hello).expect("send");
    let idle = RawTls::connect(server.addr, &load_client(&pki, &pki.agency(2)));
    let mut midway = RawTls::connect(server.addr, &load_client(&pki, &pki.agency(1)));
    midway.send(&Message::Hello {
        agency: 1,
        upload: 0,
    });
    assert!(matches!(midway.recv(), Ok(Some(Message::Welcome { .. }))));
    let records = midway.records(&Message::Echo(vec![b'm'; 100]));
    midway
        .sock
        .write_all(&records[..records.len() / 2])
        .expect("send");
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    stop_bounded(server);
    eprintln!("stopped in {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopping waited for the connections ({:?})",
        started.elapsed()
    );
    drop((idle, half, whole));
}

// ---------------------------------------------------------------------------------
// The client: transient failures retried, final ones not, every wait bounded.

/// A status-mode client of `addr` over TLS (the CA only: status needs no
/// certificate).
fn status_client(dir: &TempDir, pki: &TestPki, addr: SocketAddr) -> loteria::config::ClientConfig {
    let mut config = client_config(addr, 1, &dir.join("unused.csv"));
    config.mode = Mode::Status;
    config.server_address = format!("localhost:{}", addr.port());
    config.tls = pki.client_files(None);
    config
}

#[test]
fn a_busy_server_is_retried_by_a_tls_client() {
    // Regression: the server answers a connection over `max_connections` with
    // SERVER_BUSY in the clear, before it reads anything; a TLS client took that
    // frame for a broken TLS record (InvalidContentType), a TLS failure, and gave up
    // at once instead of retrying as it does without TLS.
    let dir = TempDir::new("review-tls-busy");
    let pki = TestPki::new();
    let mut config = tls_server(&dir, &pki, 1);
    config.max_connections = 1;
    let server = TestServer::start(config);
    let holder = raw_connect(server.addr); // Takes the only slot (sends nothing).
    std::thread::sleep(Duration::from_millis(200));
    let mut client = status_client(&dir, &pki, server.addr);
    client.retry_deadline = Duration::from_secs(2);
    let err = client::run(&client, &Shutdown::new()).expect_err("busy all along");
    let text = err.to_string();
    assert!(
        matches!(&err, ClientError::RetryDeadline { .. }),
        "a busy server is retried until the deadline: {text}"
    );
    assert!(text.contains("SERVER_BUSY"), "{text}");
    // Freed, the same client gets its answer; busy at first, it retries until freed.
    let freer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(holder);
    });
    client.retry_deadline = Duration::from_secs(30);
    let outcome = client::run(&client, &Shutdown::new());
    assert!(
        matches!(outcome, Ok(Outcome::Completed { .. })),
        "{outcome:?}"
    );
    freer.join().expect("freer");
    stop_bounded(server);
}

#[test]
fn a_tls_client_to_a_server_without_tls_still_fails_at_once() {
    // The other frame in the clear a TLS client can meet: UNSUPPORTED_VERSION from a
    // server without TLS. Final, with the hint to check the server's TLS.
    let dir = TempDir::new("review-tls-off-server");
    let pki = TestPki::new();
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut client = status_client(&dir, &pki, server.addr);
    client.retry_deadline = Duration::from_secs(60);
    let started = Instant::now();
    let err = client::run(&client, &Shutdown::new()).expect_err("no TLS there");
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
    assert!(!matches!(err, ClientError::RetryDeadline { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("is TLS on at the server"), "{text}");
    assert!(text.contains("UNSUPPORTED_VERSION"), "{text}");
    stop_bounded(server);
}

/// A listener that accepts connections and never answers, held open until dropped.
fn silent_server() -> (SocketAddr, std::thread::JoinHandle<()>, Arc<Shutdown>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(Shutdown::new());
    let stopped = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stopped.is_triggered() {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => {
                    stopped.sleep(Duration::from_millis(20));
                }
            }
        }
    });
    (addr, thread, stop)
}

#[test]
fn a_client_in_a_tls_handshake_stops_on_sigterm_and_is_bounded_without() {
    let dir = TempDir::new("review-tls-client-handshake");
    let pki = TestPki::new();
    let (addr, thread, stop) = silent_server();
    // SIGTERM (the shutdown trigger) while the handshake waits for a ServerHello
    // that never comes, with long timeouts: the run ends, interrupted.
    let mut client = status_client(&dir, &pki, addr);
    client.connect_timeout = Duration::from_secs(120);
    client.io_timeout = Duration::from_secs(120);
    client.retry_deadline = Duration::from_secs(120);
    let shutdown = Shutdown::new();
    let trigger = {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            shutdown.trigger();
        })
    };
    let started = Instant::now();
    let outcome = client::run(&client, &shutdown);
    assert!(matches!(outcome, Ok(Outcome::Interrupted)), "{outcome:?}");
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    trigger.join().expect("trigger");
    // Without SIGTERM, each handshake is bounded by the attempt's time, and a silent
    // server is retried (a transient failure) until the retry deadline.
    client.connect_timeout = Duration::from_millis(300);
    client.retry_deadline = Duration::from_secs(2);
    let err = client::run(&client, &Shutdown::new()).expect_err("silent");
    assert!(matches!(err, ClientError::RetryDeadline { .. }), "{err}");
    stop.trigger();
    thread.join().expect("silent server");
}

#[test]
fn a_server_side_tls_connection_keeps_its_timeouts() {
    // `Connection` over TLS, server side: after the handshake, after a read that had
    // to answer the peer (a key update), and after a deadline write, the socket's
    // write timeout is the connection's own; a deadline write to a peer that reads
    // nothing ends at its deadline.
    let pki = TestPki::new();
    let tls = ServerTls::load(&pki.ca.cert, &pki.server.cert, &pki.server.key).expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client_tls = load_client(&pki, &pki.agency(1));
    let client = std::thread::spawn(move || RawTls::connect(addr, &client_tls));
    let (stream, _) = listener.accept().expect("accept");
    let mut conn = Connection::new(stream).expect("wrap");
    let timeout = Duration::from_secs(7);
    conn.set_timeouts(Some(timeout)).expect("timeouts");
    conn.accept_tls(tls.config()).expect("handshake");
    let mut raw = client.join().expect("client");
    assert_eq!(conn.stream().write_timeout().expect("get"), Some(timeout));
    // While the server waits for a frame: a key update that asks for ours, late in
    // the frame's time, then the frame.
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        raw.tls.refresh_traffic_keys().expect("key update");
        let update = raw.pending();
        raw.sock.write_all(&update).expect("send");
        std::thread::sleep(Duration::from_millis(200));
        raw.send(&Message::Echo(b"k".to_vec()));
        raw
    });
    assert_eq!(
        conn.read_message().expect("read"),
        Some(Message::Echo(b"k".to_vec()))
    );
    let mut raw = sender.join().expect("sender");
    assert_eq!(
        conn.stream().write_timeout().expect("get"),
        Some(timeout),
        "the write timeout after a read that answered a key update"
    );
    // Our answer to the key update arrived: the client reads the echo we send.
    conn.write_message(&Message::Echo(b"back".to_vec()))
        .expect("write");
    assert_eq!(
        raw.recv().expect("read"),
        Some(Message::Echo(b"back".to_vec()))
    );
    // A deadline write to a client that reads nothing.
    let many: Vec<Message> = (0..2000).map(|_| Message::Echo(vec![b'w'; 8000])).collect();
    let started = Instant::now();
    let err = conn
        .write_messages_before(&many, Instant::now() + Duration::from_millis(500))
        .expect_err("nobody reads 16 MB");
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    assert_eq!(conn.stream().write_timeout().expect("get"), Some(timeout));
    conn.close();
    drop(raw);
}

#[test]
fn a_reconnecting_agency_is_checked_in_full_every_time() {
    // No session is resumed (a resumed session would skip the certificate check, its
    // dates included): every connection of one client process is a full handshake,
    // and its certificate decides whose it is. (Before, the second connection resumed
    // and sent no certificate again.)
    let dir = TempDir::new("review-tls-resume");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 2));
    let one = load_client(&pki, &pki.agency(1));
    let mut first = RawTls::connect(server.addr, &one);
    assert_eq!(
        first.tls.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    first.send(&Message::StatusQuery);
    let _ = first.recv(); // The session tickets come with the first answer.
    drop(first);
    let mut again = RawTls::connect(server.addr, &one);
    assert_eq!(
        again.tls.handshake_kind(),
        Some(rustls::HandshakeKind::Full),
        "the second connection does not resume"
    );
    again.send(&Message::Hello {
        agency: 2,
        upload: 0,
    });
    assert!(
        matches!(
            again.recv(),
            Ok(Some(Message::Error {
                code: ErrorCode::NotAuthorized,
                ..
            }))
        ),
        "agency 1's certificate is not agency 2"
    );
    let mut third = RawTls::connect(server.addr, &one);
    assert_eq!(
        third.tls.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    third.send(&Message::Hello {
        agency: 1,
        upload: 0,
    });
    assert!(
        matches!(third.recv(), Ok(Some(Message::Welcome { agency: 1, .. }))),
        "agency 1's certificate is agency 1"
    );
    stop_bounded(server);
}

/// Counts panics on the server's connection threads (named `conn-<id>`) of this test
/// process, from the first call on.
fn connection_thread_panics() -> &'static std::sync::atomic::AtomicUsize {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: OnceLock<&'static AtomicUsize> = OnceLock::new();
    PANICS.get_or_init(|| {
        let counter: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("conn-"))
            {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
        counter
    })
}

/// A small deterministic generator (xorshift) for the mutations.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mangled_handshakes_and_records_end_their_connection_without_a_panic() {
    use std::sync::atomic::Ordering;
    let panics = connection_thread_panics();
    // The counter sees a panic on a thread named like the server's.
    let calibration = std::thread::Builder::new()
        .name("conn-calibration".into())
        .spawn(|| panic!("calibration"))
        .expect("spawn");
    assert!(calibration.join().is_err());
    let before = panics.load(Ordering::SeqCst);
    assert!(before >= 1, "the panic counter works");
    let dir = TempDir::new("review-tls-mangled");
    let pki = TestPki::new();
    let mut config = tls_server(&dir, &pki, 1);
    config.io_timeout = Duration::from_millis(500);
    let server = TestServer::start(config);
    let hello = client_hello(&pki);
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut sent = 0;
    // 1. ClientHellos with 1 to 8 bytes changed, cut short, or grown with garbage.
    for round in 0..150 {
        let mut bytes = hello.clone();
        for _ in 0..=rng.below(8) {
            let at = 1 + rng.below(bytes.len() - 1); // Keep the 0x16.
            bytes[at] = rng.next() as u8;
        }
        match round % 3 {
            0 => bytes.truncate(1 + rng.below(bytes.len())),
            1 => bytes.extend((0..rng.below(2000)).map(|_| rng.next() as u8)),
            _ => {}
        }
        let mut stream = raw_connect(server.addr);
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        expect_server_closes(&mut stream, "a mangled ClientHello");
        sent += 1;
    }
    // 2. After a good handshake, records with a byte changed (each fails to decrypt
    //    or to parse) and records of every content type.
    let tls = load_client(&pki, &pki.agency(1));
    for round in 0..30 {
        let mut raw = RawTls::connect(server.addr, &tls);
        let mut records = raw.records(&Message::Echo(vec![b'r'; 50]));
        if round < 25 {
            let at = rng.below(records.len());
            records[at] ^= 1 + rng.next() as u8 % 255;
        } else {
            records[0] = [0x14, 0x15, 0x16, 0x18, 0xff][round - 25];
        }
        let _ = raw.sock.write_all(&records);
        let _ = raw.sock.shutdown(std::net::Shutdown::Write);
        expect_server_closes(&mut raw.sock, "a mangled record");
        sent += 1;
    }
    // Still serving, and no connection thread panicked.
    let mut peer = Peer::connect_tls(server.addr, &tls);
    peer.say_hello(1, 0);
    stop_bounded(server);
    assert_eq!(
        panics.load(Ordering::SeqCst) - before,
        0,
        "connection threads panicked on {sent} mangled connections"
    );
}

#[test]
fn a_certificate_without_extended_key_usage_is_good_for_any_role() {
    // Not a defence but a limit the CA must know (docs/SECURITY.md): rustls-webpki
    // takes a certificate with no extended key usage at all as good for every
    // purpose, so the roles are kept apart only if the CA always sets one.
    let dir = TempDir::new("review-tls-no-eku");
    let pki = TestPki::new();
    let server = TestServer::start(tls_server(&dir, &pki, 1));
    let mut params = certs::leaf_params(&["agency-1"], Eku::ClientAuth);
    params.extended_key_usages = vec![];
    let key = KeyPair::generate().expect("key");
    let any = pki.ca.write_signed(&pki.dir, "no-eku", &params, &key);
    assert_eq!(
        hello_over_tls(server.addr, &load_client(&pki, &any), 1),
        Ok(())
    );
    stop_bounded(server);
}
