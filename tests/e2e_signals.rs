//! End-to-end tests of shutdown and failure paths on the real binaries: SIGTERM to the
//! server while an agency waits for the draw, SIGTERM to a client in the middle of an
//! upload, a client that outlives a server restart, and a client with no server to
//! talk to (it gives up after its retry deadline).
mod support;

use loteria::bet::Bet;
use support::process::*;
use support::*;

/// The position of the first stdout line of `proc` that is `action: <action> | …`.
fn position(proc: &Proc, lines: &[String], action: &str, result: &str) -> usize {
    lines
        .iter()
        .position(|l| is_log(l, action, result))
        .unwrap_or_else(|| {
            panic!(
                "no `action: {action} | result: {result}` line\n{}",
                proc.dump()
            )
        })
}

/// A server for two agencies where agency 1 (a real client) has uploaded `bets`
/// bets, sent FIN and waits for a draw that never comes.
fn agency_waiting_for_the_draw(dir: &TempDir, bets: usize) -> (Server, Proc) {
    let agencies = mock_agencies(&[bets], 7);
    let path = dir.join("agency-1.csv");
    write_agency_file(&path, &agencies[0].0);
    let server = Server::start(dir.path(), 2);
    // A lost server is retried for 2 s only, so the tests see the client give up.
    let client = start_client(1, server.addr, &path, &[("CLI_RETRY_DEADLINE", RETRY)]);
    server
        .proc
        .wait_for("action: winners_wait | result: in_progress | agency: 1");
    client.wait_for("action: fin | result: success");
    (server, client)
}

/// How long the clients of these tests keep reconnecting to a lost server.
const RETRY: &str = "2s";

/// The client gave up reconnecting: its exit line names the retry deadline.
fn assert_gave_up(client: &mut Proc) {
    assert_eq!(client.exit_code(), 1, "client exit code\n{}", client.dump());
    let failed = client.log_lines("end", "fail");
    assert_eq!(failed.len(), 1, "{}", client.dump());
    let error = field(&failed[0], "error").unwrap_or_default();
    assert!(
        error.contains("retry_deadline") && error.contains(RETRY),
        "{}",
        client.dump()
    );
    let stderr = client.stderr_lines().join("\n");
    assert!(stderr.contains("retry_deadline"), "{}", client.dump());
}

/// Batch size of the mid-upload tests: small, so that an upload lasts seconds.
const MID_UPLOAD_BATCH: usize = 20;
/// The batches the uploading client keeps in flight (`CLI_BATCH_WINDOW`).
const MID_UPLOAD_WINDOW: usize = 8;

/// A server for two agencies (so even a finished upload would leave the client
/// waiting) and agency 1, a real client, uploading `count` bets in batches of
/// `MID_UPLOAD_BATCH`. Returns the bets of its file too.
fn agency_uploading(dir: &TempDir, count: usize) -> (Vec<Bet>, Server, Proc) {
    let bets = mock_agencies(&[count], 1000).swap_remove(0).0;
    let path = dir.join("agency-1.csv");
    write_agency_file(&path, &bets);
    let server = Server::start(dir.path(), 2);
    let batch = MID_UPLOAD_BATCH.to_string();
    let window = MID_UPLOAD_WINDOW.to_string();
    let client = start_client(
        1,
        server.addr,
        &path,
        &[
            ("CLI_BATCH_MAX_AMOUNT", &batch),
            ("CLI_BATCH_WINDOW", &window),
            ("CLI_RETRY_DEADLINE", RETRY),
        ],
    );
    (bets, server, client)
}

#[test]
fn sigterm_stops_the_server_while_an_agency_waits_for_the_draw() {
    let dir = TempDir::new("sig-server");
    let (mut server, mut client) = agency_waiting_for_the_draw(&dir, 30);

    server.proc.sigterm();
    let code = server.proc.exit_code();
    assert_eq!(code, 0, "server exit code\n{}", server.proc.dump());

    let lines = server.proc.stdout_lines();
    let signal = position(&server.proc, &lines, "signal", "success");
    let close_listener = position(&server.proc, &lines, "close_listener", "success");
    let join = position(&server.proc, &lines, "join_connections", "success");
    let close_storage = position(&server.proc, &lines, "close_storage", "success");
    let exit = position(&server.proc, &lines, "end", "success");
    assert!(
        signal < close_listener
            && close_listener < join
            && join < close_storage
            && close_storage < exit,
        "closing lines out of order\n{}",
        server.proc.dump()
    );
    assert!(server.proc.log_lines("sorteo", "success").is_empty());
    assert!(server.proc.log_lines("end", "fail").is_empty());

    // The waiting agency cannot get its winners: it reconnects until its retry
    // deadline, then fails with a clear error (SHUTTING_DOWN first; see the next test).
    assert_gave_up(&mut client);
    assert!(client.log_lines("consulta_ganadores", "success").is_empty());

    // Everything acknowledged before the signal is on disk.
    assert_eq!(stored_bets(&server.storage).len(), 30);
}

/// Regression: the shutdown hook used to shut the waiting agency's socket down before
/// waking its thread, so the SHUTTING_DOWN reply never arrived (a bare close instead).
#[test]
fn a_waiting_agency_is_told_the_server_is_shutting_down() {
    let dir = TempDir::new("sig-shutting-down");
    let (mut server, mut client) = agency_waiting_for_the_draw(&dir, 5);
    server.stop();
    assert_gave_up(&mut client);
    let told: Vec<String> = client
        .log_lines("reconnect", "in_progress")
        .into_iter()
        .filter(|l| l.contains("winners query") && l.contains("SHUTTING_DOWN"))
        .collect();
    assert_eq!(
        told.len(),
        1,
        "the client should say the server refused with SHUTTING_DOWN\n{}{}",
        client.dump(),
        server.proc.dump()
    );
}

/// A client waiting for the draw outlives a server restart: it reconnects, the new
/// server's WELCOME says its FIN is recorded, and once the other agency finishes it
/// gets its winners, with every bet stored once.
#[test]
fn a_waiting_client_reconnects_to_a_restarted_server_and_gets_its_winners() {
    let dir = TempDir::new("sig-restart");
    let agencies = mock_agencies(&[30, 20], 7);
    let paths: Vec<_> = (1..=2)
        .map(|id| {
            let path = dir.join(&format!("agency-{id}.csv"));
            write_agency_file(&path, &agencies[id - 1].0);
            path
        })
        .collect();
    let mut server = Server::start(dir.path(), 2);
    let port = server.addr.port().to_string();
    let mut client1 = start_client(1, server.addr, &paths[0], &[("CLI_RETRY_DEADLINE", "60s")]);
    server
        .proc
        .wait_for("action: winners_wait | result: in_progress | agency: 1");
    server.stop();
    client1.wait_for("action: reconnect | result: in_progress");

    // The same port and bets file.
    let mut server = Server::start_with(dir.path(), 2, &[("SERVER_PORT", &port)]);
    server
        .proc
        .wait_for("action: winners_wait | result: in_progress | agency: 1");
    let mut client2 = start_client(2, server.addr, &paths[1], &[]);
    for (client, (_, winners)) in [&mut client1, &mut client2].into_iter().zip(&agencies) {
        assert_eq!(client.exit_code(), 0, "{}", client.dump());
        let consulta = client.log_lines("consulta_ganadores", "success");
        assert_eq!(consulta.len(), 1, "{}", client.dump());
        let expected = winners.len().to_string();
        assert_eq!(
            field(&consulta[0], "cant_ganadores"),
            Some(expected.as_str())
        );
    }
    server.stop();
    let hello = server.proc.log_lines("hello", "success");
    assert!(
        hello
            .iter()
            .any(|l| field(l, "agency") == Some("1") && field(l, "finished") == Some("true")),
        "the restarted server knew agency 1 had finished\n{}",
        server.proc.dump()
    );
    let expected = multiset(
        agencies
            .iter()
            .enumerate()
            .flat_map(|(i, (bets, _))| bets.iter().map(move |b| row(i as u32 + 1, b))),
    );
    assert!(
        stored_multiset(&server.storage) == expected,
        "every bet stored once"
    );
}

#[test]
fn sigterm_to_an_idle_server_exits_0() {
    let dir = TempDir::new("sig-idle");
    let mut server = Server::start(dir.path(), 3);
    server.stop();
    let lines = server.proc.stdout_lines();
    for action in [
        "close_listener",
        "join_connections",
        "close_storage",
        "close_signal_thread",
        "end",
    ] {
        position(&server.proc, &lines, action, "success");
    }
    assert!(
        !server
            .proc
            .all_lines()
            .iter()
            .any(|l| l.contains("result: fail")),
        "{}",
        server.proc.dump()
    );
}

#[test]
fn sigterm_to_a_client_mid_upload_keeps_every_acknowledged_bet() {
    const BETS: usize = 300_000;
    let dir = TempDir::new("sig-client");
    let (bets, mut server, mut client) = agency_uploading(&dir, BETS);
    // Normally the upload takes seconds and reports progress every second; on a
    // machine fast enough to finish first, the client waits for the draw instead, and
    // the checks below hold all the same.
    client.wait_for_lines("showing upload progress", 1, TIMEOUT, |l| {
        is_log(l, "upload", "in_progress") || is_log(l, "upload", "success")
    });
    client.sigterm();
    let code = client.exit_code();
    assert_eq!(code, 0, "client exit code\n{}", client.dump());
    let exit = client.log_lines("end", "success");
    assert_eq!(exit.len(), 1, "{}", client.dump());
    assert_eq!(field(&exit[0], "status"), Some("interrupted"));
    assert!(!client.log_lines("signal", "success").is_empty());
    let closed = client.log_lines("close_connection", "success");
    assert_eq!(closed.len(), 1, "{}", client.dump());
    let client_acked: usize = field(&closed[0], "bets_acked")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bets_acked in {}", closed[0]));
    assert!(
        !client
            .all_lines()
            .iter()
            .any(|l| l.contains("result: fail")),
        "{}",
        client.dump()
    );

    // Once the server has seen the connection end, every batch it handled is logged.
    server
        .proc
        .wait_for("action: close_connection | result: success");
    server.stop();

    let acknowledged = acknowledged(&server.proc);
    assert!(acknowledged > 0, "{}", server.proc.dump());
    // What the client reports as acknowledged is stored (the server may have stored the
    // batches in flight, a window of them, whose ACKs the stop cut off).
    assert!(
        client_acked <= acknowledged
            && acknowledged - client_acked <= MID_UPLOAD_BATCH * MID_UPLOAD_WINDOW,
        "client: {client_acked} acknowledged, server: {acknowledged}"
    );
    if client.log_lines("upload", "success").is_empty() {
        assert!(
            acknowledged < BETS,
            "interrupted mid-upload, yet all stored"
        );
    }
    assert!(server.proc.log_lines("apuesta_recibida", "fail").is_empty());

    // The file holds exactly the acknowledged bets: the first `acknowledged` lines of
    // the agency file, in order, each once, and no partial batch.
    let stored = stored_bets(&server.storage);
    assert_eq!(stored.len(), acknowledged);
    for (i, (agency, bet)) in stored.iter().enumerate() {
        assert_eq!(*agency, 1);
        assert_eq!(bet, &bets[i], "stored row {}", i + 1);
    }
}

#[test]
fn a_client_without_a_server_exits_1_naming_the_address() {
    let dir = TempDir::new("sig-noserver");
    let agencies = mock_agencies(&[3], 7);
    let path = dir.join("agency-1.csv");
    write_agency_file(&path, &agencies[0].0);
    let (_held, addr) = unused_addr();
    let mut client = start_client(
        1,
        addr,
        &path,
        &[
            ("CLI_CONNECT_TIMEOUT", "300ms"),
            ("CLI_RETRY_DEADLINE", RETRY),
        ],
    );
    assert_eq!(client.exit_code(), 1, "{}", client.dump());
    let stderr = client.stderr_lines().join("\n");
    assert!(
        stderr.contains(&format!("cannot connect to server {addr}")),
        "{}",
        client.dump()
    );
    let failed = client.log_lines("end", "fail");
    assert_eq!(failed.len(), 1, "{}", client.dump());
    assert!(
        field(&failed[0], "error").is_some_and(|e| e.contains(&addr.to_string())),
        "{}",
        client.dump()
    );
}

/// The sum of `cantidad` over the server's `apuesta_recibida` success lines.
fn acknowledged(server: &Proc) -> usize {
    server
        .log_lines("apuesta_recibida", "success")
        .iter()
        .map(|l| {
            field(l, "cantidad")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no cantidad in {l:?}"))
        })
        .sum()
}

#[test]
fn sigterm_to_the_server_mid_upload_keeps_every_acknowledged_bet() {
    let dir = TempDir::new("sig-server-upload");
    let (bets, mut server, mut client) = agency_uploading(&dir, 200_000);
    server
        .proc
        .wait_for_lines("of stored batches", 10, TIMEOUT, |l| {
            is_log(l, "apuesta_recibida", "success")
        });
    server.stop();
    position(
        &server.proc,
        &server.proc.stdout_lines(),
        "close_storage",
        "success",
    );

    // The agency lost its server: it reconnects until its retry deadline, then a
    // clear failure, not a hang and not a success.
    assert_gave_up(&mut client);

    let acknowledged = acknowledged(&server.proc);
    let stored = stored_bets(&server.storage);
    assert_eq!(stored.len(), acknowledged);
    for (i, (agency, bet)) in stored.iter().enumerate() {
        assert_eq!(*agency, 1);
        assert_eq!(bet, &bets[i], "stored row {}", i + 1);
    }
}

#[test]
fn sigterm_to_a_client_waiting_for_the_draw_exits_0_and_the_draw_still_runs() {
    let dir = TempDir::new("sig-client-wait");
    let agencies = mock_agencies(&[12, 40], 5);
    let paths: Vec<_> = (1..=2)
        .map(|id| {
            let path = dir.join(&format!("agency-{id}.csv"));
            write_agency_file(&path, &agencies[id - 1].0);
            path
        })
        .collect();
    let mut server = Server::start(dir.path(), 2);
    let mut client1 = start_client(1, server.addr, &paths[0], &[]);
    server
        .proc
        .wait_for("action: winners_wait | result: in_progress | agency: 1");
    client1.sigterm();
    assert_eq!(client1.exit_code(), 0, "{}", client1.dump());
    let exit = client1.log_lines("end", "success");
    assert_eq!(exit.len(), 1, "{}", client1.dump());
    assert_eq!(field(&exit[0], "status"), Some("interrupted"));
    assert!(
        client1
            .log_lines("consulta_ganadores", "success")
            .is_empty()
    );

    // Agency 1 is gone but its FIN counts: agency 2's FIN runs the draw, and the
    // server answers agency 2 although agency 1's socket is closed.
    let mut client2 = start_client(2, server.addr, &paths[1], &[]);
    assert_eq!(client2.exit_code(), 0, "{}", client2.dump());
    let winners = client2.log_lines("consulta_ganadores", "success");
    assert_eq!(winners.len(), 1, "{}", client2.dump());
    let expected = agencies[1].1.len().to_string();
    assert_eq!(
        field(&winners[0], "cant_ganadores"),
        Some(expected.as_str())
    );
    assert_eq!(server.proc.log_lines("sorteo", "success").len(), 1);

    server.stop();
    assert_eq!(stored_bets(&server.storage).len(), 12 + 40);
}
