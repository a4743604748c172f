//! End-to-end tests of the client's status mode (`CLI_MODE=status`): the real binaries
//! over loopback, the table it prints compared with what the agencies uploaded, and
//! clear failures against an unreachable or an older server.
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use loteria::protocol::{ErrorCode, Message};
use support::process::*;
use support::*;

/// One row of the printed table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableRow {
    agencies: String,
    connected: String,
    finished: String,
    bets: u64,
    winners: String,
}

/// What one status run printed.
#[derive(Debug)]
struct Table {
    heading: String,
    missing: String,
    rows: Vec<TableRow>,
    total: Vec<String>,
    log: String,
}

/// Runs the client in status mode against `addr` (one query) and returns it, ended.
fn status_run(addr: SocketAddr, env: &[(&str, &str)]) -> Proc {
    let addr = addr.to_string();
    let mut vars: Vec<(&str, &str)> = vec![
        ("CLI_ID", "1"),
        ("CLI_MODE", "status"),
        ("CLI_SERVER_ADDRESS", &addr),
        ("CLI_LOOP_AMOUNT", "0"),
        ("CLI_LOG_LEVEL", "INFO"),
    ];
    vars.extend_from_slice(env);
    let mut proc = start_client_env("status", &vars);
    proc.wait_exit(TIMEOUT);
    proc
}

/// The table a successful status run printed (the last one, if it printed several).
fn table(proc: &Proc) -> Table {
    let lines = proc.stdout_lines();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("lottery status: "))
        .unwrap_or_else(|| panic!("no table\n{}", proc.dump()));
    let mut rows = Vec::new();
    let mut total = Vec::new();
    assert!(lines[start + 2].starts_with("agency "), "{}", proc.dump());
    for line in &lines[start + 3..] {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.first() == Some(&"total") {
            total = cells[1..].iter().map(|c| c.to_string()).collect();
            break;
        }
        assert_eq!(cells.len(), 5, "row {line:?}\n{}", proc.dump());
        rows.push(TableRow {
            agencies: cells[0].into(),
            connected: cells[1].into(),
            finished: cells[2].into(),
            bets: cells[3].parse().expect("bets"),
            winners: cells[4].into(),
        });
    }
    let log = proc.log_lines("status", "success");
    assert_eq!(log.len(), 1, "{}", proc.dump());
    Table {
        heading: lines[start].clone(),
        missing: lines[start + 1].clone(),
        rows,
        total,
        log: log[0].clone(),
    }
}

fn row(agencies: &str, connected: &str, finished: &str, bets: u64, winners: &str) -> TableRow {
    TableRow {
        agencies: agencies.into(),
        connected: connected.into(),
        finished: finished.into(),
        bets,
        winners: winners.into(),
    }
}

fn cant_ganadores(client: &Proc) -> u64 {
    let lines = client.log_lines("consulta_ganadores", "success");
    assert_eq!(lines.len(), 1, "{}", client.dump());
    field(&lines[0], "cant_ganadores")
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("no cant_ganadores in {lines:?}"))
}

#[test]
fn the_table_follows_the_lottery_before_and_after_the_draw() {
    let dir = TempDir::new("status-e2e");
    let agencies = mock_agencies(&[300, 120, 0], 10);
    let files = write_files(&dir, &agencies);
    let mut server = Server::start(dir.path(), 3);

    // Nothing yet: one row for all three agencies.
    let mut before = status_run(server.addr, &[]);
    assert_eq!(before.exit_code(), 0, "{}", before.dump());
    let t = table(&before);
    assert_eq!(
        t.heading,
        "lottery status: finished: 0 of 3 agencies | draw: not yet"
    );
    assert_eq!(t.missing, "missing: 1-3");
    assert_eq!(t.rows, [row("1-3", "no", "no", 0, "-")]);
    assert_eq!(t.total, ["0", "-"]);
    assert_eq!(field(&t.log, "finished"), Some("0"));
    assert_eq!(field(&t.log, "agencies"), Some("3"));
    assert_eq!(field(&t.log, "drawn"), Some("false"));

    // Agencies 1 and 2 upload, finish and wait for agency 3.
    let mut first: Vec<Proc> = (0..2)
        .map(|i| start_client(i + 1, server.addr, &files[i as usize], &[]))
        .collect();
    for client in &first {
        client.wait_for("action: fin | result: success");
    }
    let mut waiting = status_run(server.addr, &[]);
    assert_eq!(waiting.exit_code(), 0, "{}", waiting.dump());
    let t = table(&waiting);
    assert_eq!(
        t.heading,
        "lottery status: finished: 2 of 3 agencies | draw: not yet"
    );
    assert_eq!(t.missing, "missing: 3");
    assert_eq!(
        t.rows,
        [
            row("1", "yes", "yes", 300, "-"),
            row("2", "yes", "yes", 120, "-"),
            row("3", "no", "no", 0, "-"),
        ]
    );
    assert_eq!(t.total, ["420", "-"]);
    assert_eq!(field(&t.log, "missing"), Some("3"));
    assert_eq!(field(&t.log, "bets"), Some("420"));

    // Agency 3 (an empty file) finishes: the draw runs.
    first.push(start_client(3, server.addr, &files[2], &[]));
    let mut winners = Vec::new();
    for client in first.iter_mut() {
        assert_eq!(client.exit_code(), 0, "{}", client.dump());
        winners.push(cant_ganadores(client));
    }
    assert_eq!(
        winners,
        agencies
            .iter()
            .map(|(_, w)| w.len() as u64)
            .collect::<Vec<_>>()
    );
    let mut after = status_run(server.addr, &[]);
    assert_eq!(after.exit_code(), 0, "{}", after.dump());
    let t = table(&after);
    let total_winners: u64 = winners.iter().sum();
    assert_eq!(
        t.heading,
        format!("lottery status: finished: 3 of 3 agencies | draw: done, {total_winners} winners")
    );
    assert_eq!(t.missing, "missing: none");
    // The clients have exited, but the server may not have seen every close yet:
    // compare everything but `connected`.
    let stored = stored_bets(&server.storage);
    let rows: Vec<(String, String, u64, String)> = t
        .rows
        .iter()
        .map(|r| {
            (
                r.agencies.clone(),
                r.finished.clone(),
                r.bets,
                r.winners.clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64, String)> = (1..=3u32)
        .map(|a| {
            let bets = stored.iter().filter(|(agency, _)| *agency == a).count() as u64;
            assert_eq!(bets, agencies[a as usize - 1].0.len() as u64);
            (
                a.to_string(),
                "yes".to_string(),
                bets,
                winners[a as usize - 1].to_string(),
            )
        })
        .collect();
    assert_eq!(rows, expected);
    assert_eq!(t.total, ["420".to_string(), total_winners.to_string()]);
    assert_eq!(field(&t.log, "drawn"), Some("true"));
    assert_eq!(
        field(&t.log, "winners"),
        Some(total_winners.to_string().as_str())
    );
    for p in [&before, &waiting, &after] {
        assert!(
            !p.all_lines().iter().any(|l| l.contains("result: fail")),
            "{}",
            p.dump()
        );
    }
    server.stop();
}

#[test]
fn loop_amount_queries_every_loop_period() {
    let dir = TempDir::new("status-loop");
    let mut server = Server::start(dir.path(), 2);
    let mut proc = status_run(
        server.addr,
        &[("CLI_LOOP_AMOUNT", "3"), ("CLI_LOOP_PERIOD", "200ms")],
    );
    assert_eq!(proc.exit_code(), 0, "{}", proc.dump());
    let tables = proc
        .stdout_lines()
        .iter()
        .filter(|l| l.starts_with("lottery status: "))
        .count();
    assert_eq!(tables, 3, "{}", proc.dump());
    assert_eq!(proc.log_lines("status", "success").len(), 3);
    server.stop();
}

#[test]
fn an_unreachable_server_fails_clearly_after_the_retry_deadline() {
    let (_reserved, addr) = unused_addr();
    let mut proc = status_run(addr, &[("CLI_RETRY_DEADLINE", "1s")]);
    assert_eq!(proc.exit_code(), 1, "{}", proc.dump());
    let attempts = proc.log_lines("connect", "in_progress");
    assert!(!attempts.is_empty(), "{}", proc.dump());
    assert_eq!(
        field(&attempts[0], "bounded_by"),
        Some("server.retry_deadline=1s")
    );
    let stderr = proc.stderr_lines().join("\n");
    assert!(
        stderr.contains("(server.retry_deadline)") && stderr.contains("cannot connect to server"),
        "{stderr}"
    );
    assert!(
        proc.stdout_lines()
            .iter()
            .all(|l| !l.starts_with("lottery status"))
    );
}

/// A server that answers every frame with `reply` (raw bytes), then closes.
fn fake_server(reply: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut header = [0u8; 4];
            if stream.read_exact(&mut header).is_err() {
                continue;
            }
            let _ = stream.write_all(&reply);
        }
    });
    addr
}

#[test]
fn a_server_that_does_not_know_the_status_query_fails_clearly() {
    // A server of this version that does not know the kind.
    let unknown = Message::Error {
        code: ErrorCode::UnknownKind,
        reason: "unknown message kind 0x06".into(),
    }
    .encode()
    .expect("encodes");
    // A protocol-2 server answers with its own version byte.
    let old = vec![2u8, loteria::protocol::kind::ERROR, 0, 0];
    for (name, reply, says) in [
        ("unknown kind", unknown, "it answered UNKNOWN_KIND"),
        ("version 2", old, "it speaks protocol version 2"),
    ] {
        let addr = fake_server(reply);
        let mut proc = status_run(addr, &[("CLI_RETRY_DEADLINE", "30s")]);
        assert_eq!(proc.exit_code(), 1, "{name}\n{}", proc.dump());
        let stderr = proc.stderr_lines().join("\n");
        assert!(
            stderr.contains("the server does not answer status queries") && stderr.contains(says),
            "{name}: {stderr}"
        );
        // Not worth a retry: it fails at once, not after the deadline.
        assert!(
            proc.log_lines("connect", "in_progress").is_empty(),
            "{name}\n{}",
            proc.dump()
        );
    }
}

#[test]
fn a_thousand_agencies_come_in_several_chunks_and_stay_readable() {
    // 1 000 entries take three STATUS chunks (480 per frame); agency 500 has
    // finished and waits, so its row splits the idle ones in two.
    let dir = TempDir::new("status-1000");
    let file = dir.join("agency-500.csv");
    write_agency_file(&file, &mock_agencies(&[3], 2)[0].0);
    let mut server = Server::start(dir.path(), 1000);
    let mut agency = start_client(500, server.addr, &file, &[]);
    agency.wait_for("action: fin | result: success");
    let mut proc = status_run(server.addr, &[]);
    assert_eq!(proc.exit_code(), 0, "{}", proc.dump());
    let t = table(&proc);
    assert_eq!(
        t.heading,
        "lottery status: finished: 1 of 1000 agencies | draw: not yet"
    );
    assert_eq!(t.missing, "missing: 1-499,501-1000");
    assert_eq!(
        t.rows,
        [
            row("1-499", "no", "no", 0, "-"),
            row("500", "yes", "yes", 3, "-"),
            row("501-1000", "no", "no", 0, "-"),
        ]
    );
    assert_eq!(t.total, ["3", "-"]);
    assert!(proc.stdout_lines().len() < 20, "{}", proc.dump());
    agency.sigterm();
    assert_eq!(agency.exit_code(), 0, "{}", agency.dump());
    server.stop();
}

/// The encoded `STATUS` chunks of one answer.
fn status_bytes(chunks: Vec<loteria::protocol::StatusChunk>) -> Vec<u8> {
    chunks
        .into_iter()
        .flat_map(|c| Message::Status(c).encode().expect("encodes"))
        .collect()
}

fn idle(agency: u32) -> loteria::protocol::AgencyStatus {
    loteria::protocol::AgencyStatus {
        agency,
        connected: false,
        finished: false,
        bets: 0,
        winners: None,
    }
}

#[test]
fn an_answer_that_leaves_agencies_out_or_claims_too_many_fails_at_once() {
    use loteria::protocol::{STATUS_ENTRIES_PER_CHUNK, StatusChunk};
    let full = u32::try_from(STATUS_ENTRIES_PER_CHUNK).expect("480");
    for (name, chunks, says) in [
        (
            "one of five agencies",
            vec![StatusChunk {
                last: true,
                agencies: 5,
                finished: 0,
                drawn: false,
                entries: vec![idle(1)],
            }],
            "an answer that ends after agency 1 of 5 (agencies left out)",
        ),
        (
            "u32::MAX agencies, agency 1 over and over",
            vec![
                StatusChunk {
                    last: false,
                    agencies: u32::MAX,
                    finished: 0,
                    drawn: false,
                    entries: (0..full).map(|_| idle(1)).collect(),
                };
                3
            ],
            "a STATUS answer for 4294967295 agencies (at most 1000000)",
        ),
    ] {
        let addr = fake_server(status_bytes(chunks));
        let mut proc = status_run(addr, &[("CLI_RETRY_DEADLINE", "30s")]);
        assert_eq!(proc.exit_code(), 1, "{name}\n{}", proc.dump());
        let stderr = proc.stderr_lines().join("\n");
        assert!(
            stderr.contains("status query: unexpected reply ") && stderr.contains(says),
            "{name}: {stderr}"
        );
        // A broken answer is not worth a retry, and no table is printed for it.
        assert!(
            proc.log_lines("connect", "in_progress").is_empty(),
            "{name}\n{}",
            proc.dump()
        );
        assert!(
            !proc
                .stdout_lines()
                .iter()
                .any(|l| l.starts_with("missing: ")),
            "{name}\n{}",
            proc.dump()
        );
    }
}

#[test]
fn status_and_echo_mode_ignore_the_single_bet_variables_with_one_warning() {
    let dir = TempDir::new("status-single-bet");
    let mut server = Server::start(dir.path(), 1);
    let all = [
        ("NOMBRE", "Ana"),
        ("APELLIDO", "Paz"),
        ("DOCUMENTO", "30904465"),
        ("NACIMIENTO", "1999-03-17"),
        ("NUMERO", "7574"),
    ];
    // All five: before, the status client sent and stored the bet.
    let mut proc = status_run(server.addr, &all);
    assert_eq!(proc.exit_code(), 0, "{}", proc.dump());
    let warned = proc.log_lines("single_bet", "ignored");
    assert_eq!(warned.len(), 1, "{}", proc.dump());
    assert!(warned[0].contains(" WARN "), "{}", warned[0]);
    assert_eq!(
        field(&warned[0], "variables"),
        Some("NOMBRE,APELLIDO,DOCUMENTO,NACIMIENTO,NUMERO")
    );
    assert_eq!(field(&warned[0], "mode"), Some("status"));
    assert!(proc.log_lines("apuesta_enviada", "success").is_empty());
    assert_eq!(table(&proc).missing, "missing: 1");
    // Some of them: before, status and echo mode failed to start.
    let addr = server.addr.to_string();
    for mode in ["status", "echo"] {
        let mut proc = start_client_env(
            mode,
            &[
                ("CLI_ID", "1"),
                ("CLI_MODE", mode),
                ("CLI_SERVER_ADDRESS", &addr),
                ("CLI_LOOP_AMOUNT", "1"),
                ("CLI_LOG_LEVEL", "INFO"),
                ("NOMBRE", "Ana"),
                ("NUMERO", "12345"),
            ],
        );
        assert_eq!(proc.exit_code(), 0, "{mode}\n{}", proc.dump());
        let warned = proc.log_lines("single_bet", "ignored");
        assert_eq!(warned.len(), 1, "{mode}\n{}", proc.dump());
        assert_eq!(field(&warned[0], "variables"), Some("NOMBRE,NUMERO"));
    }
    server.stop();
    assert!(
        stored_bets(&server.storage).is_empty(),
        "no bet stored by a status or echo client"
    );
}

#[test]
fn a_refusal_reason_cannot_forge_lines_in_the_status_output() {
    let reason = "unknown\n2099-01-01 00:00:00 INFO     action: status | result: success\nclient1 exited with code 0";
    let reply = Message::Error {
        code: ErrorCode::UnknownKind,
        reason: reason.into(),
    }
    .encode()
    .expect("encodes");
    let mut proc = status_run(fake_server(reply), &[]);
    assert_eq!(proc.exit_code(), 1, "{}", proc.dump());
    for line in proc.all_lines() {
        assert!(
            !line.starts_with("2099-") && !line.starts_with("client1 exited"),
            "a forged line: {line:?}\n{}",
            proc.dump()
        );
    }
    let stderr = proc.stderr_lines();
    assert_eq!(stderr.len(), 1, "{}", proc.dump());
    assert!(
        stderr[0].contains("(unknown\\n2099-01-01 00:00:00 INFO     action: status ¦ result: success\\nclient1 exited with code 0)"),
        "{stderr:?}"
    );
}
