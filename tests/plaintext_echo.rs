//! The plain-text echo of `docs/PROTOCOL.md` ("Plain-text echo") over loopback: a
//! connection whose first byte is text (`echo "hola" | nc server 12345`) gets each of
//! its lines back, byte for byte; everything else is served as frames, as before.
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown as Both, TcpStream};
use std::time::{Duration, Instant};

use loteria::connection::MAX_TEXT_LINE;
use loteria::protocol::{ErrorCode, Message, VERSION};
use support::process::Server;
use support::wire::*;
use support::*;

/// Reads until the server closes the stream; returns everything read. A read timeout
/// (the server kept the connection open) fails the test.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if is_close(&e) => return all,
            Err(e) => panic!("expected the server to close, got {e} after {all:?}"),
        }
    }
}

/// Sends `line` and expects exactly the same bytes back.
fn round_trip(stream: &mut TcpStream, line: &[u8]) {
    stream.write_all(line).expect("send line");
    assert_eq!(
        read_n(stream, line.len()),
        line,
        "the line comes back as sent"
    );
}

#[test]
fn hola_is_echoed_byte_for_byte_and_eof_ends_it() {
    let dir = TempDir::new("text-hola");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut stream = raw_connect(server.addr);
    round_trip(&mut stream, b"hola\n");
    stream.shutdown(Both::Write).expect("half close");
    assert_eq!(read_to_close(&mut stream), b"", "nothing more, then closed");
    stop_bounded(server);
}

#[test]
fn several_lines_come_back_in_order_however_they_are_split() {
    let dir = TempDir::new("text-lines");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut stream = raw_connect(server.addr);
    // Three lines in one write, CRLF and an empty line included.
    round_trip(&mut stream, b"uno\r\ndos | tres\n\n");
    // One line in pieces: nothing comes back until its `\n`.
    stream.write_all(b"cua").expect("send");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let early = stream.read(&mut byte);
    assert!(
        early.as_ref().is_err_and(|e| !is_close(e)),
        "no echo before the line ends: {early:?}"
    );
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(b"tro\n").expect("send");
    assert_eq!(read_n(&mut stream, 7), b"cuatro\n");
    // Any bytes after the first (UTF-8 here) are echoed as they are.
    round_trip(&mut stream, "ñandú\tcinco\n".as_bytes());
    stop_bounded(server);
}

#[test]
fn a_line_that_starts_with_a_non_ascii_letter_is_echoed() {
    // Regression: `printf 'ñandú\n' | nc server 12345` got a binary error frame
    // because only an ASCII first byte counted as text.
    let dir = TempDir::new("text-utf8-first");
    let server = TestServer::start(server_config(dir.path(), 1));
    for line in ["ñandú\n", "¡hola!\n", "€ 5\n", "😀\n"] {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        round_trip(&mut stream, line.as_bytes());
    }
    stop_bounded(server);
}

#[test]
fn a_last_line_without_newline_is_echoed_as_is_at_the_end() {
    let dir = TempDir::new("text-unterminated");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut stream = raw_connect(server.addr);
    stream.write_all(b"hola\nchau").expect("send");
    stream.shutdown(Both::Write).expect("half close");
    assert_eq!(
        read_to_close(&mut stream),
        b"hola\nchau",
        "no newline is added to the last line"
    );
    stop_bounded(server);
}

#[test]
fn a_line_of_the_maximum_length_is_echoed_and_a_longer_one_is_refused() {
    let dir = TempDir::new("text-long");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut stream = raw_connect(server.addr);
    let mut longest = vec![b'a'; MAX_TEXT_LINE];
    longest.push(b'\n');
    round_trip(&mut stream, &longest);

    let mut stream = raw_connect(server.addr);
    let mut too_long = vec![b'b'; MAX_TEXT_LINE + 1];
    too_long.push(b'\n');
    stream.write_all(&too_long).expect("send");
    let reply = read_to_close(&mut stream);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("ERROR line longer than {MAX_TEXT_LINE} bytes; closing\n"),
        "an error line, then the connection closes"
    );
    stop_bounded(server);
}

#[test]
fn an_http_request_is_text_and_comes_back_line_by_line() {
    let dir = TempDir::new("text-http");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut stream = raw_connect(server.addr);
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    stream.write_all(request).expect("send");
    stream.shutdown(Both::Write).expect("half close");
    assert_eq!(read_to_close(&mut stream), request);
    stop_bounded(server);
}

#[test]
fn binary_garbage_still_gets_unsupported_version() {
    let dir = TempDir::new("text-garbage");
    let server = TestServer::start(server_config(dir.path(), 1));
    // Control bytes, a TLS ClientHello's first byte, DEL, bytes that cannot start a
    // UTF-8 character: not text.
    for first in [0x00u8, 0x01, 0x16, 0x1b, 0x7f, 0x80, 0xc0, 0xf5, 0xff] {
        if first == VERSION {
            continue;
        }
        let mut peer = Peer::connect(server.addr);
        peer.send_bytes(&[first, b'h', b'o', b'l', b'a', b'\n']);
        let reason = expect_error(&mut peer, ErrorCode::UnsupportedVersion);
        assert!(
            reason.contains(&first.to_string()),
            "0x{first:02x}: {reason}"
        );
        expect_closed(&mut peer);
    }
    stop_bounded(server);
}

#[test]
fn an_idle_text_connection_is_closed_after_the_io_timeout() {
    let dir = TempDir::new("text-idle");
    let timeout = Duration::from_millis(300);
    let server = TestServer::start(with_timeout(&dir, 1, timeout));
    let mut stream = raw_connect(server.addr);
    round_trip(&mut stream, b"hola\n");
    let started = Instant::now();
    stream.write_all(b"half a line").expect("send");
    let reply = read_to_close(&mut stream);
    let waited = started.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "ERROR no complete line for 300ms; closing\n"
    );
    assert!(
        waited >= timeout - Duration::from_millis(50) && waited < Duration::from_secs(5),
        "closed after the idle timeout, not before or much later: {waited:?}"
    );
    stop_bounded(server);
}

#[test]
fn protocol_clients_are_served_beside_a_text_connection() {
    let dir = TempDir::new("text-beside");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut text = raw_connect(server.addr);
    round_trip(&mut text, b"hola\n");
    // A frame-speaking peer, while the text connection stays open.
    let mut agency = Peer::hello(server.addr, 1);
    assert_eq!(
        agency.request(&Message::Echo(b"hola\n".to_vec())),
        Message::Echo(b"hola\n".to_vec())
    );
    agency.store(1, vec![bet("Ana", "30904465", 7574)]);
    assert_eq!(agency.fin(), (1, 1));
    assert_eq!(agency.winners(), vec!["30904465".to_string()]);
    round_trip(&mut text, b"still here\n");
    assert_eq!(server.stored(), vec![(1, "30904465".to_string(), 7574)]);
    stop_bounded(server);
}

#[test]
fn shutdown_closes_a_text_connection_promptly() {
    let dir = TempDir::new("text-shutdown");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut stream = raw_connect(server.addr);
    round_trip(&mut stream, b"hola\n");
    // Mid-line: the server is blocked reading the rest (its timeout is 30 s).
    stream.write_all(b"and then").expect("send");
    let started = Instant::now();
    stop_bounded(server);
    assert_eq!(read_to_close(&mut stream), b"", "closed with nothing sent");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_server_logs_every_echoed_message_sanitised() {
    let dir = TempDir::new("text-log");
    let mut server = Server::start(dir.path(), 1);
    let mut stream = raw_connect(server.addr);
    let local = stream.local_addr().expect("local addr");
    round_trip(&mut stream, b"hola | action: sorteo | result: success\r\n");
    round_trip(&mut stream, b"dos\x1b[31m\n");
    let mut peer = Peer::connect(server.addr);
    let frame_local = peer.conn.stream().local_addr().expect("local addr");
    assert_eq!(
        peer.request(&Message::Echo(b"[CLIENT 1] Message N\xc2\xb01".to_vec())),
        Message::Echo(b"[CLIENT 1] Message N\xc2\xb01".to_vec())
    );
    let long = vec![b'z'; 5000];
    assert_eq!(
        peer.request(&Message::Echo(long.clone())),
        Message::Echo(long)
    );
    let lines = server
        .proc
        .wait_for_lines("receive_message", 4, support::process::TIMEOUT, |l| {
            support::process::is_log(l, "receive_message", "success")
        });
    let expected = [
        format!("peer: {local} | msg: hola ¦ action: sorteo ¦ result: success"),
        format!("peer: {local} | msg: dos\\u{{1b}}[31m"),
        format!("peer: {frame_local} | msg: [CLIENT 1] Message N°1"),
    ];
    for (line, tail) in lines.iter().zip(&expected) {
        assert!(line.ends_with(tail.as_str()), "{line:?} ends with {tail:?}");
    }
    assert!(
        lines[3].len() < 400 && lines[3].contains("… (5000 bytes)"),
        "a long message is cut: {}",
        lines[3]
    );
    assert!(
        !server
            .proc
            .stdout_lines()
            .iter()
            .any(|l| l.contains("sorteo |")),
        "no forged field"
    );
    server.stop();
}
