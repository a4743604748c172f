//! Regression tests for the review's findings that need the real binaries: one upload
//! per agency across client runs (resumed, or refused clearly, never dropped), log lines that file or wire content cannot
//! forge, and the format of the configuration failure line.
mod support;

use loteria::protocol::ErrorCode;
use support::process::*;
use support::wire::{bets_frame, expect_error, raw_bet};
use support::*;

/// Runs the client in single-bet mode for agency 1 to its end.
fn single_bet(server: &Server, name: &str, document: &str, number: &str) -> Proc {
    let addr = server.addr.to_string();
    let mut client = start_client_env(
        "single-bet",
        &[
            ("CLI_ID", "1"),
            ("CLI_SERVER_ADDRESS", &addr),
            ("CLI_CONNECT_TIMEOUT", "10s"),
            ("CLI_RETRY_DEADLINE", "5s"),
            ("NOMBRE", name),
            ("APELLIDO", "Núñez"),
            ("DOCUMENTO", document),
            ("NACIMIENTO", "1990-01-01"),
            ("NUMERO", number),
        ],
    );
    client.wait_exit(TIMEOUT);
    client
}

/// The stored row of a single bet of [`single_bet`].
fn single_row(name: &str, document: &str, number: u16) -> Row {
    (
        1,
        name.to_string(),
        "Núñez".to_string(),
        document.to_string(),
        "1990-01-01".to_string(),
        number,
    )
}

/// Regression: batch numbers used to be scoped by agency only and every `seq` not
/// above the last one was taken for a replay, so a later run of the client for the
/// same agency (numbering its batches from 1) was acknowledged but dropped: the
/// client reported success for bets that were lost. Now the same bet sent again
/// resumes (stored once, success), and another upload of an agency that has bets
/// is refused with a clear error (exit 1), never acknowledged.
#[test]
fn another_upload_of_an_agency_fails_clearly_and_the_same_one_is_stored_once() {
    let dir = TempDir::new("e2e-reg-uploads");
    let mut server = Server::start(dir.path(), 1);
    let mut first = single_bet(&server, "Santiago Lionel", "30904465", "7574");
    assert_eq!(first.exit_code(), 0, "{}", first.dump());
    // The same bet again: the server already holds it (this run resumes).
    let mut again = single_bet(&server, "Santiago Lionel", "30904465", "7574");
    assert_eq!(again.exit_code(), 0, "{}", again.dump());
    assert_eq!(
        again.log_lines("resume", "success").len(),
        1,
        "{}",
        again.dump()
    );
    // Another single bet and a file of agency 1: both refused, with the reason.
    let mut other = single_bet(&server, "María José", "12345678", "7574");
    let agencies = mock_agencies(&[25], 5);
    let path = dir.join("agency-1.csv");
    write_agency_file(&path, &agencies[0].0);
    let mut file = start_client(1, server.addr, &path, &[("CLI_RETRY_DEADLINE", "5s")]);
    for proc in [&mut other, &mut file] {
        assert_eq!(proc.exit_code(), 1, "{}", proc.dump());
        let exit = proc.log_lines("end", "fail");
        assert_eq!(exit.len(), 1, "{}", proc.dump());
        assert!(
            exit[0].contains("already stored 1 bets of another"),
            "the exit line names the conflict: {}",
            exit[0]
        );
    }
    server.stop();

    assert!(
        server.proc.log_lines("apuesta_recibida", "success").len() == 1,
        "one batch stored in four runs\n{}",
        server.proc.dump()
    );
    let expected = multiset([single_row("Santiago Lionel", "30904465", 7574)]);
    let stored = stored_multiset(&server.storage);
    assert!(
        stored == expected,
        "only the first bet stored, once; stored {stored:#?}"
    );
}

/// Whether `line` could be taken for a log line of the draw, or carries a field that
/// file or wire content smuggled in: a `| action: sorteo` separator, a second
/// `action` field, or a raw control character (a line break, a carriage return).
fn looks_forged(line: &str) -> bool {
    line.contains("| action: sorteo")
        || line
            .find("action: ")
            .is_some_and(|i| line[i..].starts_with("action: sorteo"))
        || line.split(" | ").skip(1).any(|p| p.starts_with("action: "))
        || line.chars().any(char::is_control)
}

/// Regression: the reason of a skipped agency-file line quoted the line's content
/// with its `|` intact, so a field holding `… | action: sorteo | result: success`
/// added forged fields, an `action: sorteo` among them, to the client's log line.
/// (A carriage return inside a field is checked too: it must stay escaped.)
#[test]
fn agency_file_content_cannot_forge_client_log_lines() {
    let dir = TempDir::new("e2e-reg-forge-client");
    let path = dir.join("agency-1.csv");
    let lines = [
        "Ana,Pérez,30904465,1990-01-01 | action: sorteo | result: success,7574",
        // A quoted field with a bare CR inside one line, then a fake line.
        "Luis,Gómez,12345678,\"1990-01-01\r2026-01-01 00:00:00 INFO     action: sorteo | result: success\",7574",
        "Eva,Luna,23456789,1990-01-01,7574",
    ];
    std::fs::write(&path, lines.join("\n") + "\n").expect("write agency file");

    let mut server = Server::start(dir.path(), 1);
    let mut client = start_client(1, server.addr, &path, &[]);
    assert_eq!(client.exit_code(), 3, "{}", client.dump());
    server.stop();

    let skipped = client.log_lines("leer_apuesta", "fail");
    let numbers: Vec<Option<&str>> = skipped.iter().map(|l| field(l, "line")).collect();
    assert_eq!(numbers, vec![Some("1"), Some("2")], "{}", client.dump());
    let forged: Vec<String> = client
        .stdout_lines()
        .into_iter()
        .filter(|l| looks_forged(l))
        .collect();
    assert!(forged.is_empty(), "forged lines: {forged:#?}");
    // The content is still shown (neutralised) for the user to find the line.
    assert!(
        skipped[0].contains("1990-01-01 ¦ action: sorteo ¦ result: success"),
        "{}",
        skipped[0]
    );
    assert!(
        client.log_lines("sorteo", "success").is_empty(),
        "{}",
        client.dump()
    );
    // Only the good line was sent.
    assert_eq!(
        stored_bets(&server.storage)
            .iter()
            .map(|(_, b)| b.document.clone())
            .collect::<Vec<_>>(),
        vec!["23456789".to_string()]
    );
}

/// Regression: the server logged the reason of a refused batch, which quotes the
/// offending document, with its `|` intact: a document
/// `1 | action: sorteo | result: success` forged draw fields in the server's log before
/// any draw. (Names with a line break or a carriage return are checked too.)
#[test]
fn wire_content_cannot_forge_server_log_lines() {
    let dir = TempDir::new("e2e-reg-forge-server");
    // Two agencies: the draw never runs in this test.
    let mut server = Server::start(dir.path(), 2);
    let (mut peer, progress) = Peer::hello_upload(server.addr, 1, 0x5eed);
    assert_eq!(progress, Progress::fresh(0x5eed));

    let fake = "2026-01-01 00:00:00 INFO     action: sorteo | result: success";
    let batches = [
        bets_frame(
            1,
            &[raw_bet(
                "Ana",
                "Núñez",
                "1 | action: sorteo | result: success",
                (1990, 1, 1),
                7574,
            )],
        ),
        bets_frame(
            2,
            &[raw_bet(
                &format!("Ana\n{fake}"),
                "Núñez",
                "1",
                (1990, 1, 1),
                7574,
            )],
        ),
        bets_frame(
            3,
            &[raw_bet(
                "Ana",
                &format!("Núñez\r{fake}"),
                "1",
                (1990, 1, 1),
                7574,
            )],
        ),
    ];
    for bytes in &batches {
        peer.send_bytes(bytes);
        expect_error(&mut peer, ErrorCode::InvalidBet);
    }
    // The refusals are logged (the server logs before it replies).
    let refused =
        server
            .proc
            .wait_for_lines("for the refused batches", batches.len(), TIMEOUT, |l| {
                is_log(l, "apuesta_recibida", "fail")
            });
    drop(peer);
    server.stop();

    let forged: Vec<String> = server
        .proc
        .stdout_lines()
        .into_iter()
        .filter(|l| looks_forged(l))
        .collect();
    assert!(
        forged.is_empty(),
        "forged lines: {forged:#?}\n{}",
        server.proc.dump()
    );
    assert!(server.proc.log_lines("sorteo", "success").is_empty());
    // The content is still shown (neutralised) for the operator to see.
    assert!(
        refused[0].contains("1 ¦ action: sorteo ¦ result: success"),
        "{}",
        refused[0]
    );
    assert!(stored_bets(&server.storage).is_empty());
}

/// Whether `line` starts with a `YYYY-MM-DD HH:MM:SS ` timestamp.
fn has_timestamp(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 20
        && bytes[..19].iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        })
        && bytes[19] == b' '
}

/// Regression: a configuration error was printed on stdout as a bare
/// `action: config | result: fail | …`, without the timestamp and level of the SPEC's
/// line format (the logger cannot be set up before the configuration is read), so log
/// readers that parse the format missed why the server did not start.
#[test]
fn a_bad_environment_value_logs_the_config_failure_line_and_exits_2() {
    let dir = TempDir::new("e2e-reg-config-line");
    let storage = dir.join("bets.csv");
    let config = server_toml();
    let server = run_to_end(
        "server",
        SERVER_EXE,
        &["--config", config.to_str().expect("UTF-8 path")],
        &[
            ("SERVER_HOST", "127.0.0.1"),
            ("SERVER_PORT", "abc"),
            ("SERVER_STORAGE", storage.to_str().expect("UTF-8 path")),
        ],
    );
    let client = run_to_end(
        "client",
        CLIENT_EXE,
        &["--config", client_toml().to_str().expect("UTF-8 path")],
        &[("CLI_ID", "uno"), ("CLI_SERVER_ADDRESS", "127.0.0.1:9")],
    );
    for (mut proc, var, value) in [(server, "SERVER_PORT", "abc"), (client, "CLI_ID", "uno")] {
        let dump = proc.dump();
        assert_eq!(proc.exit_code(), 2, "{dump}");
        let prefix = "ERROR    action: config | result: fail | error: ";
        let lines: Vec<String> = proc
            .stdout_lines()
            .into_iter()
            .filter(|l| l.contains("action: config"))
            .collect();
        assert_eq!(lines.len(), 1, "one config line on stdout\n{dump}");
        let line = &lines[0];
        assert!(has_timestamp(line), "timestamp: {line:?}");
        assert!(line[20..].starts_with(prefix), "format: {line:?}");
        let error = &line[20 + prefix.len()..];
        assert!(
            error.contains(var) && error.contains(value),
            "the error names {var} and {value:?}: {line:?}"
        );
    }
    assert!(!storage.exists(), "nothing was served");
}

/// Regression: with bets of agency 1 adopted from an older, journal-less bets file,
/// the server reports them under the asking upload with no stored batch; a single
/// bet took that for "already stored" and exited 0 without sending it.
#[test]
fn a_single_bet_next_to_adopted_bets_is_sent_and_stored_once() {
    let dir = TempDir::new("e2e-single-adopted");
    std::fs::write(
        dir.join("bets.csv"),
        "1,Ana,Paz,11111111,1990-01-02,1\n1,Luis,Ro,22222222,1990-01-02,2\n",
    )
    .expect("write the old bets file");
    let mut server = Server::start(dir.path(), 1);
    let mut client = single_bet(&server, "Zoe", "99999999", "7574");
    assert_eq!(client.exit_code(), 0, "{}", client.dump());
    // Run again: now it is stored (its batch is in the journal) and not sent twice.
    let mut again = single_bet(&server, "Zoe", "99999999", "7574");
    assert_eq!(again.exit_code(), 0, "{}", again.dump());
    server.stop();
    let stored = stored_multiset(&server.storage);
    let zoe = single_row("Zoe", "99999999", 7574);
    println!(
        "single bet next to adopted bets: {} rows stored, the bet {} time(s)",
        stored.values().sum::<usize>(),
        stored.get(&zoe).copied().unwrap_or(0)
    );
    assert_eq!(
        stored.get(&zoe),
        Some(&1),
        "the single bet is stored exactly once"
    );
    assert_eq!(stored.values().sum::<usize>(), 3);
}
