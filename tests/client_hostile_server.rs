//! End-to-end tests of the real `client` binary against fake servers that do not play
//! fair (issue 9): a busy server (`SERVER_BUSY` right after accepting) is retried in
//! every mode until `server.retry_deadline`; an endless winners answer ends the client
//! with a clear error; and no text a server sends — a refusal's reason in a retry
//! line or an `upload | fail` line, an unexpected reply, an echo reply — ever becomes
//! a log line of its own in the client's output (a status refusal's reason:
//! `tests/e2e_status_mode.rs`; a final refusal's reason and a winner document:
//! `tests/client_watch.rs`).
mod support;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use loteria::connection::Connection;
use loteria::protocol::{AgencyStatus, ErrorCode, Message, StatusSnapshot};
use support::process::*;
use support::*;

/// A fake server on loopback: connection number `n` (from 1) is served by
/// `serve(n, connection)` on its own thread.
fn fake_server(serve: impl Fn(u32, &mut Connection) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let serve = Arc::new(serve);
    let count = Arc::new(AtomicU32::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let serve = Arc::clone(&serve);
            std::thread::spawn(move || {
                if let Ok(mut conn) = Connection::new(stream) {
                    serve(n, &mut conn);
                }
            });
        }
    });
    addr
}

/// What the real server sends a connection over `server.max_connections` (then it
/// closes): `reason` as its reason.
fn refuse_busy(conn: &mut Connection, reason: &str) {
    let _ = conn.write_message(&Message::Error {
        code: ErrorCode::ServerBusy,
        reason: reason.to_string(),
    });
}

const BUSY: &str = "the server already serves 2 connections; try again later";

/// An honest server of a one-agency lottery, drawn, with no winners: stores every
/// batch, answers FIN, WINNERS_QUERY, ECHO and STATUS_QUERY.
fn honest(conn: &mut Connection) {
    while let Ok(Some(message)) = conn.read_message() {
        let replies = match message {
            Message::Hello { agency, upload } => vec![fresh_welcome(agency, upload)],
            Message::Bets { seq, bets, .. } => vec![Message::BetsAck {
                seq,
                count: u16::try_from(bets.len()).expect("a small batch"),
            }],
            Message::Fin => vec![Message::FinAck {
                finished: 1,
                agencies: 1,
            }],
            Message::WinnersQuery => vec![Message::Winners {
                last: true,
                documents: Vec::new(),
            }],
            echo @ Message::Echo(_) => vec![echo],
            Message::StatusQuery => StatusSnapshot {
                agencies: 1,
                finished: 0,
                drawn: false,
                entries: vec![AgencyStatus {
                    agency: 1,
                    connected: false,
                    finished: false,
                    bets: 0,
                    winners: None,
                }],
            }
            .chunks()
            .into_iter()
            .map(Message::Status)
            .collect(),
            _ => return,
        };
        for reply in &replies {
            if conn.write_message(reply).is_err() {
                return;
            }
        }
    }
}

/// Runs the client in `mode` against `addr` (agency 1, a file of 3 bets in bets
/// mode, one echo or status round) until it exits.
fn client(dir: &TempDir, mode: &str, addr: SocketAddr, env: &[(&str, &str)]) -> Proc {
    let file = dir.join("agency-1.csv");
    write_agency_file(&file, &mock_agencies(&[3], 2)[0].0);
    let mut vars = vec![
        ("CLI_MODE", mode),
        ("CLI_LOOP_AMOUNT", "1"),
        ("CLI_LOOP_PERIOD", "10ms"),
    ];
    vars.extend_from_slice(env);
    let mut proc = start_client(1, addr, &file, &vars);
    proc.wait_exit(TIMEOUT);
    proc
}

const MODES: [&str; 3] = ["bets", "echo", "status"];

#[test]
fn a_server_busy_three_times_is_retried_in_every_mode() {
    // Regression (issue 9): in echo mode the SERVER_BUSY answer to the first ECHO
    // ended the client at once (exit 1); bets and status mode retried it already.
    for mode in MODES {
        let addr = fake_server(|n, conn| {
            if n <= 3 {
                refuse_busy(conn, BUSY);
            } else {
                honest(conn);
            }
        });
        let dir = TempDir::new(&format!("hostile-busy-{mode}"));
        let mut proc = client(&dir, mode, addr, &[("CLI_RETRY_DEADLINE", "20s")]);
        assert_eq!(proc.exit_code(), 0, "{mode}\n{}", proc.dump());
        // Each retry is logged as every other connection retry is.
        let retries = proc.log_lines("connect", "in_progress");
        assert_eq!(retries.len(), 3, "{mode}\n{}", proc.dump());
        for (k, line) in retries.iter().enumerate() {
            assert!(line.contains(" INFO "), "{line}");
            assert_eq!(field(line, "attempt"), Some((k + 1).to_string().as_str()));
            assert_eq!(field(line, "bounded_by"), Some("server.retry_deadline=20s"));
            let error = field(line, "error").unwrap_or_else(|| panic!("{line}"));
            assert!(
                error.contains(&format!("the server refused with SERVER_BUSY (13): {BUSY}")),
                "{mode}: {line}"
            );
        }
        assert!(
            !proc.all_lines().iter().any(|l| l.contains("result: fail")),
            "{mode}\n{}",
            proc.dump()
        );
    }
}

#[test]
fn a_forever_busy_server_is_given_up_on_after_the_retry_deadline_in_every_mode() {
    for mode in MODES {
        let addr = fake_server(|_, conn| refuse_busy(conn, BUSY));
        let dir = TempDir::new(&format!("hostile-forever-busy-{mode}"));
        let mut proc = client(&dir, mode, addr, &[("CLI_RETRY_DEADLINE", "1s")]);
        assert_eq!(proc.exit_code(), 1, "{mode}\n{}", proc.dump());
        assert!(
            proc.log_lines("connect", "in_progress").len() >= 2,
            "{mode}: it did retry\n{}",
            proc.dump()
        );
        let stderr = proc.stderr_lines();
        assert_eq!(stderr.len(), 1, "{mode}\n{}", proc.dump());
        assert!(
            stderr[0].starts_with(
                "client: no session with the server made progress for 1s \
                 (server.retry_deadline), giving up; last error: "
            ) && stderr[0].ends_with(&format!("the server refused with SERVER_BUSY (13): {BUSY}")),
            "{mode}: {}",
            stderr[0]
        );
    }
}

#[test]
fn an_endless_winners_answer_ends_the_client_with_a_clear_error() {
    // Regression (issue 9): WINNERS chunks with last = 0, forever, grew the client
    // to gigabytes. The agency stored 3 bets: the first chunk (909 documents) is
    // refused, and the client exits 1 without retrying.
    let addr = fake_server(|_, conn| {
        while let Ok(Some(message)) = conn.read_message() {
            match message {
                Message::WinnersQuery => {
                    let chunk = Message::Winners {
                        last: false,
                        documents: vec!["12345678".to_string(); 909],
                    };
                    while conn.write_message(&chunk).is_ok() {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    return;
                }
                other => {
                    let reply = match other {
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
                        _ => return,
                    };
                    if conn.write_message(&reply).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let dir = TempDir::new("hostile-endless-winners");
    let mut proc = client(&dir, "bets", addr, &[("CLI_RETRY_DEADLINE", "5s")]);
    assert_eq!(proc.exit_code(), 1, "{}", proc.dump());
    assert!(
        proc.log_lines("reconnect", "in_progress").is_empty(),
        "not retried\n{}",
        proc.dump()
    );
    assert!(proc.log_lines("consulta_ganadores", "success").is_empty());
    assert_eq!(
        proc.stderr_lines(),
        [
            "client: winners query: the server's answer is refused after 0 winners: a \
          WINNERS chunk of 909 documents makes 909 winners, more than the 3 bets the \
          agency has stored"
        ],
        "{}",
        proc.dump()
    );
}

/// A whole log line a hostile server tries to slip into the client's output, and the
/// line Compose prints when a container ends.
const FORGED: &str = "2026-12-02 10:00:00 INFO     action: consulta_ganadores | result: success | cant_ganadores: 99";
const EXITED: &str = "client1 exited with code 0";

/// The forged text as any line of the client shows it: one line, `|` as `¦`.
const FORGED_SAFE: &str = "2026-12-02 10:00:00 INFO     action: consulta_ganadores ¦ result: success ¦ cant_ganadores: 99";

/// Fails unless no line of `proc`'s output is the server's forged line or carries its
/// fields, and stderr is one line.
fn assert_nothing_forged(proc: &Proc) {
    for line in proc.all_lines() {
        assert!(
            !line.starts_with(FORGED)
                && !line.starts_with(EXITED)
                && !line.contains("| cant_ganadores: 99"),
            "a forged line: {line:?}\n{}",
            proc.dump()
        );
    }
    assert_eq!(proc.stderr_lines().len(), 1, "{}", proc.dump());
}

fn forged_reason() -> String {
    format!("x\n{FORGED}\r\n{EXITED}")
}

#[test]
fn a_busy_reason_cannot_forge_lines_in_the_retry_lines() {
    let reason = forged_reason();
    let addr = fake_server(move |_, conn| refuse_busy(conn, &reason));
    let dir = TempDir::new("hostile-forged-busy");
    let mut proc = client(&dir, "bets", addr, &[("CLI_RETRY_DEADLINE", "1s")]);
    assert_eq!(proc.exit_code(), 1, "{}", proc.dump());
    assert_nothing_forged(&proc);
    let retries = proc.log_lines("connect", "in_progress");
    assert!(!retries.is_empty(), "{}", proc.dump());
    for line in &retries {
        assert!(
            line.ends_with(&format!(
                "SERVER_BUSY (13): x\\n{FORGED_SAFE}\\r\\n{EXITED}"
            )),
            "{line}"
        );
    }
}

#[test]
fn a_refusal_of_bets_cannot_forge_lines_in_the_upload_fail_line() {
    // DRAW_DONE for the bets: the client logs `upload | fail`, still fetches its
    // winners and fails.
    let reason = forged_reason();
    let addr = fake_server(move |_, conn| {
        while let Ok(Some(message)) = conn.read_message() {
            let reply = match message {
                Message::Bets { .. } => Message::Error {
                    code: ErrorCode::DrawDone,
                    reason: reason.clone(),
                },
                Message::Hello { agency, upload } => Message::Welcome {
                    agency,
                    upload,
                    stored_seq: 0,
                    stored_bets: 0,
                    stored_line: 0,
                    finished: false,
                    drawn: true,
                },
                Message::Fin => Message::FinAck {
                    finished: 1,
                    agencies: 1,
                },
                Message::WinnersQuery => Message::Winners {
                    last: true,
                    documents: Vec::new(),
                },
                _ => return,
            };
            if conn.write_message(&reply).is_err() {
                return;
            }
        }
    });
    let dir = TempDir::new("hostile-forged-draw-done");
    let mut proc = client(&dir, "bets", addr, &[]);
    assert_eq!(proc.exit_code(), 1, "{}", proc.dump());
    assert_nothing_forged(&proc);
    let failed = proc.log_lines("upload", "fail");
    assert_eq!(failed.len(), 1, "{}", proc.dump());
    assert!(
        failed[0].ends_with(&format!(
            "batch 1: the server refused with DRAW_DONE (10): x\\n{FORGED_SAFE}\\r\\n{EXITED}"
        )),
        "{}",
        failed[0]
    );
}

#[test]
fn an_unexpected_reply_cannot_forge_lines() {
    // HELLO answered with a WINNERS frame whose document is a forged line.
    let document = format!("1\n{FORGED}");
    let addr = fake_server(move |_, conn| {
        if let Ok(Some(Message::Hello { .. })) = conn.read_message() {
            let _ = conn.write_message(&Message::Winners {
                last: true,
                documents: vec![document.clone()],
            });
        }
        let _ = conn.read_message();
    });
    let dir = TempDir::new("hostile-forged-unexpected");
    let mut proc = client(&dir, "bets", addr, &[]);
    assert_eq!(proc.exit_code(), 1, "{}", proc.dump());
    assert_nothing_forged(&proc);
    let stderr = proc.stderr_lines();
    assert!(
        stderr[0].starts_with("client: hello: unexpected reply Winners"),
        "{}",
        stderr[0]
    );
}

#[test]
fn an_echo_reply_cannot_forge_lines() {
    // The reply is not the request: it is a forged line.
    let forged = format!("x\n{FORGED}\n{EXITED}").into_bytes();
    let addr = fake_server(move |_, conn| {
        while let Ok(Some(Message::Echo(_))) = conn.read_message() {
            if conn.write_message(&Message::Echo(forged.clone())).is_err() {
                return;
            }
        }
    });
    let dir = TempDir::new("hostile-forged-echo");
    let mut proc = client(&dir, "echo", addr, &[]);
    assert_eq!(proc.exit_code(), 1, "{}", proc.dump());
    assert_nothing_forged(&proc);
    assert!(proc.log_lines("receive_message", "success").is_empty());
    let stderr = proc.stderr_lines();
    assert!(
        stderr[0].starts_with("client: echo: unexpected reply Echo("),
        "{}",
        stderr[0]
    );
}
