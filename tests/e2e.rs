//! End-to-end tests: the real `server` and `client` binaries over loopback, checked
//! through their log lines, exit codes and the bets file they leave behind.
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use loteria::bet::Bet;
use support::process::*;
use support::*;

const WINNING_NUMBER: u16 = 7574;

/// The agency files of the course dataset read back as rows, with the same trimming
/// the client does.
fn input_rows(agency: u32, path: &Path) -> Vec<Row> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .from_path(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    reader
        .records()
        .map(|record| {
            let r = record.expect("a CSV record");
            assert_eq!(r.len(), 5, "dataset line {r:?}");
            (
                agency,
                r[0].to_string(),
                r[1].to_string(),
                r[2].to_string(),
                r[3].to_string(),
                r[4].parse().expect("a number"),
            )
        })
        .collect()
}

/// Fails if any line of any process says `result: fail`.
fn assert_no_failures(procs: &[&Proc]) {
    for p in procs {
        let failed: Vec<String> = p
            .all_lines()
            .into_iter()
            .filter(|l| l.contains("result: fail"))
            .collect();
        assert!(
            failed.is_empty(),
            "failure lines: {failed:#?}\n{}",
            p.dump()
        );
    }
}

/// The one `action: <action> | result: success` line of `proc`.
fn only_line(proc: &Proc, action: &str) -> String {
    let lines = proc.log_lines(action, "success");
    assert_eq!(lines.len(), 1, "{action} lines\n{}", proc.dump());
    lines.into_iter().next().unwrap_or_default()
}

/// The winners' documents listed by a client's `action: ganadores` line, sorted.
fn listed_winners(client: &Proc) -> Vec<String> {
    let line = only_line(client, "ganadores");
    let dnis = field(&line, "dnis").unwrap_or_else(|| panic!("no dnis in {line:?}"));
    let mut dnis: Vec<String> = dnis
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    dnis.sort();
    dnis
}

fn cant_ganadores(client: &Proc) -> usize {
    let line = only_line(client, "consulta_ganadores");
    field(&line, "cant_ganadores")
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("no cant_ganadores in {line:?}"))
}

/// The `cantidad` of every `apuesta_recibida` success line for `agency`, in order.
fn received_batches(server: &Proc, agency: u32) -> Vec<usize> {
    let agency = agency.to_string();
    server
        .log_lines("apuesta_recibida", "success")
        .iter()
        .filter(|l| field(l, "agency") == Some(agency.as_str()))
        .map(|l| {
            field(l, "cantidad")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no cantidad in {l:?}"))
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The protocol's size of one bet inside a BETS payload (docs/PROTOCOL.md, "Sizes").
fn wire_len(bet: &Bet) -> usize {
    2 + bet.first_name.len() + 2 + bet.last_name.len() + 1 + bet.document.len() + 4 + 2
}

/// BETS payload prefix (seq + count) plus the frame header.
const BATCH_OVERHEAD: usize = 10 + 4;
const MAX_FRAME: usize = 8192;

#[test]
fn course_dataset_with_five_concurrent_agencies() {
    let dataset = dataset_dir();
    let files: Vec<PathBuf> = (1..=5)
        .map(|id| dataset.join(format!("agency-{id}.csv")))
        .collect();
    for f in &files {
        assert!(f.exists(), "dataset file {} missing", f.display());
    }
    let dir = TempDir::new("e2e-dataset");
    let mut server = Server::start(dir.path(), 5);
    let mut clients: Vec<Proc> = files
        .iter()
        .zip(1..)
        .map(|(file, id)| start_client(id, server.addr, file, &[]))
        .collect();

    let expected_winners = [2, 3, 3, 2, 0];
    let inputs: Vec<Vec<Row>> = files
        .iter()
        .zip(1..)
        .map(|(file, id)| input_rows(id, file))
        .collect();
    assert_eq!(inputs.iter().map(Vec::len).sum::<usize>(), 78_697);

    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.exit_code(), 0, "client {}\n{}", i + 1, client.dump());
        assert_eq!(
            cant_ganadores(client),
            expected_winners[i],
            "agency {}",
            i + 1
        );
        let winners: Vec<String> = inputs[i]
            .iter()
            .filter(|r| r.5 == WINNING_NUMBER)
            .map(|r| r.3.clone())
            .collect();
        assert_eq!(listed_winners(client), sorted(winners), "agency {}", i + 1);
    }
    server.stop();

    let sorteo = server.proc.log_lines("sorteo", "success");
    assert_eq!(sorteo.len(), 1, "sorteo lines\n{}", server.proc.dump());
    assert_eq!(field(&sorteo[0], "bets"), Some("78697"));
    assert_eq!(field(&sorteo[0], "winners"), Some("10"));
    let mut all: Vec<&Proc> = clients.iter().collect();
    all.push(&server.proc);
    assert_no_failures(&all);

    let stored = stored_multiset(&server.storage);
    let expected = multiset(inputs.into_iter().flatten());
    assert_eq!(stored.values().sum::<usize>(), 78_697);
    assert!(stored == expected, "stored bets differ from the dataset");
}

/// Runs one lottery over generated agency files and checks winners and storage.
fn mock_lottery(name: &str, per_agency: &[usize], winner_every: usize) {
    let dir = TempDir::new(name);
    let agencies = mock_agencies(per_agency, winner_every);
    let files = write_files(&dir, &agencies);
    let mut server = Server::start(dir.path(), per_agency.len() as u32);
    let mut clients: Vec<Proc> = files
        .iter()
        .zip(1..)
        .map(|(file, id)| start_client(id, server.addr, file, &[]))
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let (_, winners) = &agencies[i];
        assert_eq!(client.exit_code(), 0, "client {}\n{}", i + 1, client.dump());
        assert_eq!(cant_ganadores(client), winners.len(), "agency {}", i + 1);
        assert_eq!(
            listed_winners(client),
            sorted(winners.clone()),
            "agency {}",
            i + 1
        );
    }
    server.stop();
    assert_eq!(server.proc.log_lines("sorteo", "success").len(), 1);
    let mut all: Vec<&Proc> = clients.iter().collect();
    all.push(&server.proc);
    assert_no_failures(&all);
    let expected = multiset(
        agencies
            .iter()
            .zip(1..)
            .flat_map(|((bets, _), id)| bets.iter().map(move |b| row(id, b))),
    );
    assert!(
        stored_multiset(&server.storage) == expected,
        "stored bets differ from the generated files"
    );
}

#[test]
fn mock_data_three_agencies_get_their_own_winners() {
    mock_lottery("e2e-mock3", &[250, 120, 333], 9);
}

#[test]
fn mock_data_five_agencies_including_an_empty_one() {
    // Agency 4 has an empty file: it still sends FIN and gets zero winners.
    mock_lottery("e2e-mock5", &[400, 37, 1, 0, 1_234], 13);
}

#[test]
fn batches_hold_at_most_max_amount_bets() {
    let dir = TempDir::new("e2e-batch7");
    let agencies = mock_agencies(&[50], 10);
    let files = write_files(&dir, &agencies);
    let mut server = Server::start(dir.path(), 1);
    let mut client = start_client(1, server.addr, &files[0], &[("CLI_BATCH_MAX_AMOUNT", "7")]);
    assert_eq!(client.exit_code(), 0, "{}", client.dump());
    assert_eq!(cant_ganadores(&client), 5);
    server.stop();
    assert_eq!(
        received_batches(&server.proc, 1),
        vec![7, 7, 7, 7, 7, 7, 7, 1]
    );
    let upload = only_line(&client, "upload");
    assert_eq!(field(&upload, "bets_sent"), Some("50"));
    assert_eq!(field(&upload, "batches"), Some("8"));
    assert_eq!(stored_bets(&server.storage).len(), 50);
    assert_no_failures(&[&client, &server.proc]);
}

/// Bets whose names are long UTF-8 strings: `chars` × 'ñ' (2 bytes each) per name.
fn long_name_bets(chars: &[usize]) -> Vec<Bet> {
    chars
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut b = bet(&"ñ".repeat(n), &format!("{:08}", 30_000_000 + i), 100);
            b.last_name = "Ñ".repeat(n);
            b
        })
        .collect()
}

#[test]
fn long_utf8_names_are_packed_into_frames_under_8_kib() {
    let dir = TempDir::new("e2e-long");
    // 1000 'ñ' per name (2000 bytes each) for most bets, some shorter and longer ones so
    // that the packing is not uniform.
    let mut sizes = vec![1000; 20];
    sizes.extend([
        10, 1500, 3, 700, 1999, 1, 1000, 250, 2000, 40, 1000, 1000, 5,
    ]);
    let bets = long_name_bets(&sizes);
    let path = dir.join("agency-1.csv");
    write_agency_file(&path, &bets);

    let mut server = Server::start(dir.path(), 1);
    let mut client = start_client(1, server.addr, &path, &[("CLI_BATCH_MAX_AMOUNT", "1000")]);
    assert_eq!(client.exit_code(), 0, "{}", client.dump());
    server.stop();
    assert_no_failures(&[&client, &server.proc]);

    let batches = received_batches(&server.proc, 1);
    assert_eq!(batches.iter().sum::<usize>(), bets.len(), "{batches:?}");
    let mut start = 0;
    for (k, &count) in batches.iter().enumerate() {
        assert!(count >= 1);
        let batch = &bets[start..start + count];
        let frame = BATCH_OVERHEAD + batch.iter().map(wire_len).sum::<usize>();
        assert!(
            frame <= MAX_FRAME,
            "batch {} of {count} bets is a {frame}-byte frame",
            k + 1
        );
        if let Some(next) = bets.get(start + count) {
            assert!(
                frame + wire_len(next) > MAX_FRAME,
                "batch {} ({frame} bytes) had room for the next bet ({} bytes)",
                k + 1,
                wire_len(next)
            );
        }
        start += count;
    }
    assert!(batches.len() > 1, "the names should need several frames");

    let expected = multiset(bets.iter().map(|b| row(1, b)));
    assert!(stored_multiset(&server.storage) == expected);
}

#[test]
fn a_bet_larger_than_one_frame_is_skipped_as_an_invalid_line() {
    let dir = TempDir::new("e2e-huge");
    let mut bets = long_name_bets(&[1000, 1000, 1000, 4500, 1000, 10]);
    // Line 4: 9000 bytes of first name alone, more than a frame holds.
    bets[3].last_name = "Gómez".into();
    let path = dir.join("agency-1.csv");
    write_agency_file(&path, &bets);

    let mut server = Server::start(dir.path(), 1);
    let mut client = start_client(1, server.addr, &path, &[("CLI_BATCH_MAX_AMOUNT", "1000")]);
    assert_eq!(client.exit_code(), 3, "{}", client.dump());
    server.stop();

    let bad = client.log_lines("leer_apuesta", "fail");
    assert_eq!(bad.len(), 1, "{}", client.dump());
    assert_eq!(field(&bad[0], "file"), path.to_str());
    assert_eq!(field(&bad[0], "line"), Some("4"));
    assert_eq!(cant_ganadores(&client), 0);
    let exit = client.log_lines("end", "fail");
    assert_eq!(exit.len(), 1, "{}", client.dump());
    assert_eq!(field(&exit[0], "skipped_lines"), Some("1"));

    assert!(server.proc.log_lines("apuesta_recibida", "fail").is_empty());
    let mut rest = bets.clone();
    rest.remove(3);
    let expected = multiset(rest.iter().map(|b| row(1, b)));
    assert!(stored_multiset(&server.storage) == expected);
}

#[test]
fn bad_csv_lines_are_reported_with_file_and_line_and_skipped() {
    let dir = TempDir::new("e2e-badcsv");
    let path = dir.join("agency-1.csv");
    let lines = [
        "Ana,Pérez,30904465,1999-03-17,7574",     // 1 ok (winner)
        "Luis,Gómez,12345678,1990-01-01",         // 2 four fields
        "María José,Núñez,00000000,1985-12-31,0", // 3 ok
        "Pedro,Paz,23456789,1990-13-01,12",       // 4 month 13
        "Juana,Rey,34567890,1970-02-03,10000",    // 5 number out of range
        "Sofía,Díaz,45678901,2001-07-08,9999",    // 6 ok
        ",Sosa,56789012,1980-04-05,44",           // 7 empty first name
        "Carla,Ruiz,123456789,1975-06-07,55",     // 8 nine-digit document
        "Tomás,Ortiz,67890123,1960-09-10,7574",   // 9 ok (winner)
        "Lucía,Vega,78901234,1999-02-30,1",       // 10 no such date
        "Raúl,Mena,89012345,2999-01-01,2",        // 11 future birthdate
        "Eva,Luna,90123456,1999-03-17,3,extra",   // 12 six fields
    ];
    std::fs::write(&path, lines.join("\r\n") + "\r\n").expect("write agency file");
    let bad_lines: BTreeSet<u64> = [2, 4, 5, 7, 8, 10, 11, 12].into();

    let mut server = Server::start(dir.path(), 1);
    let mut client = start_client(1, server.addr, &path, &[]);
    assert_eq!(client.exit_code(), 3, "{}", client.dump());
    server.stop();

    let reported = client.log_lines("leer_apuesta", "fail");
    let file = path.to_str();
    let mut seen = BTreeSet::new();
    for line in &reported {
        assert_eq!(field(line, "file"), file, "{line}");
        assert!(
            field(line, "reason").is_some_and(|r| !r.is_empty()),
            "{line}"
        );
        let n: u64 = field(line, "line")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line number in {line:?}"));
        assert!(seen.insert(n), "line {n} reported twice");
    }
    assert_eq!(seen, bad_lines, "{}", client.dump());
    let exit = client.log_lines("end", "fail");
    assert_eq!(exit.len(), 1, "{}", client.dump());
    assert_eq!(field(&exit[0], "skipped_lines"), Some("8"));
    assert_eq!(cant_ganadores(&client), 2);
    assert_eq!(
        listed_winners(&client),
        vec!["30904465".to_string(), "67890123".to_string()]
    );
    assert!(server.proc.log_lines("apuesta_recibida", "fail").is_empty());

    let stored: Vec<(u32, String, u16)> = stored_bets(&server.storage)
        .into_iter()
        .map(|(a, b)| (a, b.document, b.number))
        .collect();
    assert_eq!(
        stored,
        vec![
            (1, "30904465".to_string(), 7574),
            (1, "00000000".to_string(), 0),
            (1, "45678901".to_string(), 9999),
            (1, "67890123".to_string(), 7574),
        ]
    );
}

#[test]
fn a_single_bet_from_the_environment_is_stored_and_confirmed() {
    let dir = TempDir::new("e2e-single");
    let mut server = Server::start(dir.path(), 1);
    let addr = server.addr.to_string();
    let mut client = start_client_env(
        "client1",
        &[
            ("CLI_ID", "1"),
            ("CLI_SERVER_ADDRESS", &addr),
            ("NOMBRE", "Santiago Lionel"),
            ("APELLIDO", "Lorca"),
            ("DOCUMENTO", "30904465"),
            ("NACIMIENTO", "1999-03-17"),
            ("NUMERO", "7574"),
        ],
    );
    assert_eq!(client.exit_code(), 0, "{}", client.dump());
    let sent = only_line(&client, "apuesta_enviada");
    assert!(
        sent.ends_with("action: apuesta_enviada | result: success | dni: 30904465 | numero: 7574"),
        "{sent}"
    );
    let stored_line = server
        .proc
        .wait_for("action: apuesta_almacenada | result: success");
    assert!(
        stored_line.ends_with(
            "action: apuesta_almacenada | result: success | dni: 30904465 | numero: 7574"
        ),
        "{stored_line}"
    );
    server.stop();
    assert_no_failures(&[&client, &server.proc]);
    let stored = stored_bets(&server.storage);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        row(stored[0].0, &stored[0].1),
        (
            1,
            "Santiago Lionel".to_string(),
            "Lorca".to_string(),
            "30904465".to_string(),
            "1999-03-17".to_string(),
            7574
        )
    );
}

#[test]
fn echo_loop_gets_every_message_back() {
    let dir = TempDir::new("e2e-echo");
    let mut server = Server::start(dir.path(), 1);
    let addr = server.addr.to_string();
    let mut client = start_client_env(
        "client1",
        &[
            ("CLI_ID", "1"),
            ("CLI_SERVER_ADDRESS", &addr),
            ("CLI_MODE", "echo"),
            ("CLI_LOOP_AMOUNT", "3"),
            ("CLI_LOOP_PERIOD", "10ms"),
        ],
    );
    assert_eq!(client.exit_code(), 0, "{}", client.dump());
    server.stop();
    let lines: Vec<String> = client
        .stdout_lines()
        .into_iter()
        .filter(|l| {
            is_log(l, "receive_message", "success") || is_log(l, "loop_finished", "success")
        })
        .collect();
    let tails: Vec<&str> = lines
        .iter()
        .map(|l| &l[l.find("action: ").unwrap_or(0)..])
        .collect();
    assert_eq!(
        tails,
        vec![
            "action: receive_message | result: success | client_id: 1 | msg: [CLIENT 1] Message N°1",
            "action: receive_message | result: success | client_id: 1 | msg: [CLIENT 1] Message N°2",
            "action: receive_message | result: success | client_id: 1 | msg: [CLIENT 1] Message N°3",
            "action: loop_finished | result: success | client_id: 1",
        ]
    );
    assert_no_failures(&[&client, &server.proc]);
    assert!(stored_bets(&server.storage).is_empty());
}

/// After the draw, re-running an agency's client gets its bets refused (DRAW_DONE, a
/// clear error, exit 1) and still the same winners as the first time; nothing more
/// is stored. A client that had already sent FIN (AGENCY_FINISHED) is treated alike.
#[test]
fn a_client_rerun_after_the_draw_resumes_and_another_file_is_refused() {
    let dir = TempDir::new("e2e-rerun");
    let agencies = mock_agencies(&[60, 40], 7);
    let files = write_files(&dir, &agencies);
    let mut server = Server::start(dir.path(), 2);
    let mut first: Vec<Proc> = (0..2)
        .map(|i| start_client(i as u32 + 1, server.addr, &files[i], &[]))
        .collect();
    for client in &mut first {
        assert_eq!(client.exit_code(), 0, "{}", client.dump());
    }
    let expected = cant_ganadores(&first[0]);
    assert_eq!(expected, agencies[0].1.len());

    // The same file again: the server holds all of it and the FIN; same winners.
    let mut again = start_client(1, server.addr, &files[0], &[]);
    assert_eq!(again.exit_code(), 0, "{}", again.dump());
    assert_eq!(cant_ganadores(&again), expected, "{}", again.dump());
    assert!(
        again.log_lines("upload", "success")[0].contains("already finished"),
        "{}",
        again.dump()
    );

    // Another file for agency 1: refused (one upload per agency), but the agency
    // still gets its winners, and the run fails naming the conflict.
    let other = dir.join("agency-1-other.csv");
    write_agency_file(&other, &agencies[1].0[..5]);
    let mut changed = start_client(1, server.addr, &other, &[]);
    assert_eq!(changed.exit_code(), 1, "{}", changed.dump());
    assert_eq!(cant_ganadores(&changed), expected, "{}", changed.dump());
    let failed = changed.log_lines("end", "fail");
    assert_eq!(failed.len(), 1, "{}", changed.dump());
    assert!(failed[0].contains("another file"), "{}", changed.dump());
    assert!(
        changed.stderr_lines().join("\n").contains("new lottery"),
        "{}",
        changed.dump()
    );
    server.stop();
    assert_eq!(stored_bets(&server.storage).len(), 100);
    assert_eq!(server.proc.log_lines("sorteo", "success").len(), 1);
}
