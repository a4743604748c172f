//! End-to-end tests of what a running client tells its watcher: progress lines with
//! percent, rate and time left; `waiting_draw` lines while its agency waits for the
//! others; and every failed connection attempt at INFO with what bounds the retries.
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::process::*;
use support::*;

/// A TCP relay in front of `upstream` that holds every chunk the server sends for
/// `delay` before passing it on: a slow link, so that an upload lasts long enough to
/// log its progress.
fn slow_relay(upstream: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(upstream) else {
                return;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream, delay: Duration| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                std::thread::sleep(delay);
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                })
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            pipe(client, s2, Duration::ZERO);
            pipe(server, c2, delay);
        }
    });
    addr
}

fn percent(line: &str) -> f64 {
    field(line, "percent")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no percent in {line:?}"))
}

#[test]
fn progress_lines_count_up_to_one_hundred_percent_with_rate_and_eta() {
    let dir = TempDir::new("watch-progress");
    let agencies = mock_agencies(&[1_000], 50);
    let file = dir.join("agency-1.csv");
    write_agency_file(&file, &agencies[0].0);
    let mut server = Server::start(dir.path(), 1);
    // 100 batches of 10, one at a time (no pipelining), each acknowledgement 30 ms
    // late: about 3 s of upload.
    let relay = slow_relay(server.addr, Duration::from_millis(30));
    let mut client = start_client(
        1,
        relay,
        &file,
        &[("CLI_BATCH_MAX_AMOUNT", "10"), ("CLI_BATCH_WINDOW", "1")],
    );
    assert_eq!(client.exit_code(), 0, "{}", client.dump());
    server.stop();
    let progress = client.log_lines("upload", "in_progress");
    assert!(progress.len() >= 2, "{}", client.dump());
    assert!(percent(&progress[0]) < 100.0, "{}", progress[0]);
    let mut last = 0.0;
    for line in &progress {
        // A line logged right after the last batch may already say 100.0.
        let p = percent(line);
        assert!(p > last && p <= 100.0, "percent goes up: {line}");
        last = p;
        let acked: u64 = field(line, "bets_sent")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bets_sent in {line}"));
        assert!(acked > 0 && acked <= 1_000, "{line}");
        let rate = field(line, "rate").unwrap_or_else(|| panic!("rate in {line}"));
        let per_second: f64 = rate
            .strip_suffix(" bets/s")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("rate {rate:?}"));
        // 10 bets per 30 ms at best: at most ~333/s.
        assert!(per_second > 0.0 && per_second < 400.0, "{line}");
        // About 3 s in all; whole seconds, at least 1 while something is left.
        let eta = field(line, "eta").unwrap_or_else(|| panic!("eta in {line}"));
        let secs: u64 = eta
            .strip_suffix('s')
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("eta {eta:?}"));
        if p < 100.0 {
            assert!((1..60).contains(&secs), "{line}");
        } else {
            assert_eq!(secs, 0, "{line}");
        }
    }
    let done = client.log_lines("upload", "success");
    assert_eq!(done.len(), 1, "{}", client.dump());
    assert_eq!(field(&done[0], "percent"), Some("100.0"));
    assert_eq!(field(&done[0], "bets_sent"), Some("1000"));
}

#[test]
fn an_agency_waiting_for_a_missing_one_logs_waiting_draw() {
    let dir = TempDir::new("watch-waiting");
    let agencies = mock_agencies(&[20, 5], 4);
    let files: Vec<_> = (0..2)
        .map(|i| {
            let path = dir.join(&format!("agency-{}.csv", i + 1));
            write_agency_file(&path, &agencies[i].0);
            path
        })
        .collect();
    let mut server = Server::start(dir.path(), 2);
    // A short reply timeout: the wait must still survive (DRAW_PENDING keeps it alive).
    let mut first = start_client(1, server.addr, &files[0], &[("CLI_IO_TIMEOUT", "1s")]);
    first.wait_for("action: fin | result: success");
    let started = Instant::now();
    let waiting = first.wait_for_lines("waiting_draw", 2, Duration::from_secs(10), |l| {
        is_log(l, "waiting_draw", "in_progress")
    });
    let waited = started.elapsed();
    for line in &waiting {
        assert_eq!(field(line, "finished"), Some("1"), "{line}");
        assert_eq!(field(line, "agencies"), Some("2"), "{line}");
    }
    // Two lines a pending interval apart (3 s), not a flood.
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    let mut second = start_client(2, server.addr, &files[1], &[]);
    assert_eq!(second.exit_code(), 0, "{}", second.dump());
    assert_eq!(first.exit_code(), 0, "{}", first.dump());
    // Waiting longer than io_timeout was no failure: one connection, no reconnect.
    assert!(
        first.log_lines("reconnect", "in_progress").is_empty(),
        "{}",
        first.dump()
    );
    assert!(!first.all_lines().iter().any(|l| l.contains("result: fail")));
    let lines = first.stdout_lines();
    let fin = lines
        .iter()
        .position(|l| is_log(l, "fin", "success"))
        .expect("fin");
    let winners = lines
        .iter()
        .position(|l| is_log(l, "consulta_ganadores", "success"))
        .expect("winners");
    let between: Vec<&String> = lines[fin..winners]
        .iter()
        .filter(|l| is_log(l, "waiting_draw", "in_progress"))
        .collect();
    assert!(between.len() >= 2, "{}", first.dump());
    server.stop();
}

#[test]
fn every_failed_connection_attempt_is_logged_at_info_with_its_bound() {
    let (_reserved, addr) = unused_addr();
    let dir = TempDir::new("watch-connect");
    let file = dir.join("agency-1.csv");
    write_agency_file(&file, &mock_agencies(&[3], 2)[0].0);
    let started = Instant::now();
    let mut client = start_client(1, addr, &file, &[("CLI_RETRY_DEADLINE", "2s")]);
    // The first failure shows at once, not after a backoff or the deadline.
    let first = client.wait_for_lines("a connect attempt", 1, Duration::from_secs(2), |l| {
        is_log(l, "connect", "in_progress")
    });
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(field(&first[0], "attempt"), Some("1"));
    assert_eq!(client.exit_code(), 1, "{}", client.dump());
    let attempts = client.log_lines("connect", "in_progress");
    assert!(attempts.len() >= 3, "{}", client.dump());
    for (k, line) in attempts.iter().enumerate() {
        assert!(line.contains(" INFO "), "{line}");
        assert_eq!(field(line, "attempt"), Some((k + 1).to_string().as_str()));
        assert_eq!(field(line, "bounded_by"), Some("server.retry_deadline=2s"));
        let left = field(line, "gives_up_in").unwrap_or_else(|| panic!("{line}"));
        assert!(left.ends_with('s'), "{line}");
        assert!(
            field(line, "error").is_some_and(|e| e.contains("refused")),
            "{line}"
        );
    }
    assert!(
        field(&attempts[0], "gives_up_in") == Some("2s"),
        "{}",
        attempts[0]
    );
    let stderr = client.stderr_lines().join("\n");
    assert!(
        stderr.contains("for 2s (server.retry_deadline)"),
        "{stderr}"
    );
}

/// A fake server on loopback: every connection is served by `serve` on its own thread.
fn fake_server(
    serve: impl Fn(&mut loteria::connection::Connection) + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let serve = std::sync::Arc::clone(&serve);
            std::thread::spawn(move || {
                if let Ok(mut conn) = loteria::connection::Connection::new(stream) {
                    serve(&mut conn);
                }
            });
        }
    });
    addr
}

/// A whole log line a hostile server tries to slip into the client's output, and the
/// line Compose prints when a container ends.
const FORGED: &str =
    "2099-01-01 00:00:00 INFO     action: consulta_ganadores | result: success | cant_ganadores: 9";
const EXITED: &str = "client1 exited with code 0";

/// Fails unless every line of `proc`'s output is its own (no line starts with the
/// server's forged text) and the stderr line is one line.
fn assert_nothing_forged(proc: &Proc) {
    for line in proc.all_lines() {
        assert!(
            !line.starts_with("2099-") && !line.starts_with(EXITED),
            "a forged line: {line:?}\n{}",
            proc.dump()
        );
    }
}

#[test]
fn a_server_reason_cannot_forge_lines_in_the_client_output() {
    use loteria::protocol::{ErrorCode, Message};
    let reason = format!("nope\n{FORGED}\r\n{EXITED} | result: success");
    let addr = fake_server(move |conn| {
        if let Ok(Some(Message::Hello { .. })) = conn.read_message() {
            let _ = conn.write_message(&Message::Error {
                code: ErrorCode::UnknownAgency,
                reason: reason.clone(),
            });
        }
        let _ = conn.read_message();
    });
    let dir = TempDir::new("watch-forged-reason");
    let file = dir.join("agency-1.csv");
    write_agency_file(&file, &mock_agencies(&[3], 2)[0].0);
    let mut client = start_client(1, addr, &file, &[]);
    assert_eq!(client.exit_code(), 1, "{}", client.dump());
    assert_nothing_forged(&client);
    let end = client.log_lines("end", "fail");
    assert_eq!(end.len(), 1, "{}", client.dump());
    assert!(
        end[0].contains("the server refused with UNKNOWN_AGENCY (6): nope\\n2099-01-01")
            && end[0].contains("\\r\\nclient1 exited with code 0 ¦ result: success"),
        "{}",
        end[0]
    );
    let stderr = client.stderr_lines();
    assert_eq!(stderr.len(), 1, "{}", client.dump());
    assert!(stderr[0].starts_with("client: hello: "), "{stderr:?}");
}

#[test]
fn a_winner_document_cannot_forge_lines_in_the_client_output() {
    use loteria::protocol::Message;
    let document = format!("1\n{FORGED}\n{EXITED}");
    let addr = fake_server(move |conn| {
        while let Ok(Some(message)) = conn.read_message() {
            let reply = match message {
                Message::Hello { agency, upload } => Message::Welcome {
                    agency,
                    upload,
                    stored_seq: 0,
                    stored_bets: 0,
                    stored_line: 0,
                    finished: false,
                    drawn: true,
                },
                Message::Bets { seq, bets, .. } => Message::BetsAck {
                    seq,
                    count: u16::try_from(bets.len()).expect("a small batch"),
                },
                Message::Fin => Message::FinAck {
                    finished: 1,
                    agencies: 1,
                },
                Message::WinnersQuery => Message::Winners {
                    last: true,
                    documents: vec![document.clone()],
                },
                _ => return,
            };
            if conn.write_message(&reply).is_err() {
                return;
            }
        }
    });
    let dir = TempDir::new("watch-forged-winner");
    let file = dir.join("agency-1.csv");
    write_agency_file(&file, &mock_agencies(&[3], 2)[0].0);
    let mut client = start_client(1, addr, &file, &[]);
    // Not a DNI: the answer is refused (issue 9), and the error names it, made safe.
    assert_eq!(client.exit_code(), 1, "{}", client.dump());
    assert_nothing_forged(&client);
    assert!(client.log_lines("ganadores", "success").is_empty());
    let end = client.log_lines("end", "fail");
    assert_eq!(end.len(), 1, "{}", client.dump());
    assert!(
        end[0].ends_with("error: winners query: the server's answer is refused after 0 winners: document \"1\\\\n2099-01-01 00:00:00 INFO     action: consulta_ganadores ¦ result: success ¦ cant_ganadores: 9\\\\nclient1 exited with code 0\" is not a DNI (1 to 8 digits)"),
        "{}",
        end[0]
    );
}
