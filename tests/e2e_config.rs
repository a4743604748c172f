//! End-to-end tests of the command line and the configuration: bad files, bad values
//! and `--help`, a port already taken, and the programs' last log line, on the real
//! binaries.
mod support;

use std::net::TcpListener;

use support::process::*;
use support::*;

/// Runs the server with `config/server.toml`, loopback settings and `env` on top.
fn server_with(env: &[(&str, &str)], dir: &TempDir) -> Proc {
    let storage = dir.join("bets.csv");
    let storage = storage.to_str().expect("UTF-8 temp path");
    let mut vars = vec![
        ("SERVER_HOST", "127.0.0.1"),
        ("SERVER_PORT", "0"),
        ("SERVER_AGENCIES", "1"),
        ("SERVER_STORAGE", storage),
    ];
    vars.extend_from_slice(env);
    let config = server_toml();
    run_to_end(
        "server",
        SERVER_EXE,
        &["--config", config.to_str().expect("UTF-8 path")],
        &vars,
    )
}

/// Runs the client with `config/client.toml`, a loopback address and `env` on top.
fn client_with(env: &[(&str, &str)]) -> Proc {
    let mut vars = vec![
        ("CLI_ID", "1"),
        ("CLI_SERVER_ADDRESS", "127.0.0.1:9"),
        ("CLI_MODE", "echo"),
        ("CLI_CONNECT_TIMEOUT", "100ms"),
    ];
    vars.extend_from_slice(env);
    let config = client_toml();
    run_to_end(
        "client",
        CLIENT_EXE,
        &["--config", config.to_str().expect("UTF-8 path")],
        &vars,
    )
}

/// Expects exit code 2 and the problem printed once: one
/// `action: config | result: fail | error: …` line on stdout naming every one of
/// `needles`, nothing else on stdout or stderr; nothing served. Returns the error.
fn assert_config_error(mut proc: Proc, needles: &[&str]) -> String {
    let dump = proc.dump();
    assert_eq!(proc.exit_code(), 2, "{dump}");
    let lines = proc.all_lines();
    assert_eq!(lines.len(), 1, "exactly one line printed\n{dump}");
    let line = &lines[0];
    assert!(is_log(line, "config", "fail"), "the config line\n{dump}");
    let error = field(line, "error").unwrap_or_default().to_string();
    for needle in needles {
        assert!(
            error.contains(needle),
            "the error does not name {needle:?}\n{dump}"
        );
    }
    error
}

/// Expects exit code 2 for a bad command line: the problem and the usage on stderr
/// (naming every one of `needles`), nothing on stdout; nothing served.
fn assert_argument_error(mut proc: Proc, needles: &[&str]) {
    let dump = proc.dump();
    assert_eq!(proc.exit_code(), 2, "{dump}");
    let stderr = proc.stderr_lines().join("\n");
    for needle in needles.iter().chain(&["Usage:"]) {
        assert!(
            stderr.contains(needle),
            "stderr does not name {needle:?}\n{dump}"
        );
    }
    assert!(proc.stdout_lines().is_empty(), "nothing on stdout\n{dump}");
    assert!(
        proc.log_lines("listen", "success").is_empty()
            && proc.log_lines("connect", "success").is_empty(),
        "it started anyway\n{dump}"
    );
}

#[test]
fn missing_config_file_exits_2_naming_the_file() {
    let dir = TempDir::new("cfg-missing");
    let missing = dir.join("no-such-server.toml");
    let missing = missing.to_str().expect("UTF-8 path");
    let server = run_to_end("server", SERVER_EXE, &["--config", missing], &[]);
    assert_config_error(server, &[missing]);
    let missing = dir.join("no-such-client.toml");
    let missing = missing.to_str().expect("UTF-8 path");
    let client = run_to_end("client", CLIENT_EXE, &["--config", missing], &[]);
    assert_config_error(client, &[missing]);
}

#[test]
fn invalid_server_values_from_the_environment_exit_2() {
    let dir = TempDir::new("cfg-server-env");
    for (var, value) in [
        ("SERVER_PORT", "abc"),
        ("SERVER_PORT", "70000"),
        ("SERVER_AGENCIES", "0"),
        ("SERVER_WINNING_NUMBER", "10000"),
        ("SERVER_LISTEN_BACKLOG", "-1"),
        ("LOGGING_LEVEL", "LOUD"),
        ("SERVER_IO_TIMEOUT", "5"),
    ] {
        let server = server_with(&[(var, value)], &dir);
        assert_config_error(server, &[var, &format!("{value:?}")]);
    }
}

#[test]
fn invalid_client_values_from_the_environment_exit_2() {
    for (var, value) in [
        ("CLI_ID", "0"),
        ("CLI_ID", "uno"),
        ("CLI_LOOP_PERIOD", "5"),
        ("CLI_LOOP_AMOUNT", "-3"),
        ("CLI_MODE", "lottery"),
        ("CLI_SERVER_ADDRESS", "no-port"),
        ("CLI_BATCH_MAX_AMOUNT", "0"),
        ("CLI_LOG_LEVEL", "chatty"),
        ("CLI_CONNECT_TIMEOUT", "soon"),
    ] {
        let client = client_with(&[(var, value)]);
        assert_config_error(client, &[var, &format!("{value:?}")]);
    }
}

#[test]
fn an_incomplete_single_bet_names_the_missing_variables() {
    // Single-bet mode is part of bets mode (echo and status ignore the variables).
    let client_with = |vars: &[(&str, &str)]| {
        let mut vars = vars.to_vec();
        vars.push(("CLI_MODE", "bets"));
        client_with(&vars)
    };
    let client = client_with(&[("NOMBRE", "Ana"), ("DOCUMENTO", "30904465")]);
    let error = assert_config_error(client, &["APELLIDO", "NACIMIENTO", "NUMERO"]);
    assert!(
        error.starts_with("APELLIDO, NACIMIENTO and NUMERO are missing: single-bet mode needs NOMBRE, APELLIDO, DOCUMENTO, NACIMIENTO and NUMERO"),
        "{error}"
    );
    let bet = [
        ("NOMBRE", "Ana"),
        ("APELLIDO", "Núñez"),
        ("DOCUMENTO", "30904465"),
        ("NACIMIENTO", "1999-03-17"),
        ("NUMERO", "7574"),
    ];
    let client = client_with(&bet[..4]);
    let error = assert_config_error(client, &["NUMERO is missing"]);
    assert!(!error.contains("invalid value"), "{error}");
    let mut bad = bet;
    bad[3] = ("NACIMIENTO", "17/03/1999");
    let error = assert_config_error(client_with(&bad), &["NACIMIENTO", "17/03/1999"]);
    assert!(error.contains("YYYY-MM-DD"), "{error}");
    bad[3] = ("NACIMIENTO", "1999-02-30");
    let error = assert_config_error(client_with(&bad), &["NACIMIENTO", "1999-02-30"]);
    assert!(
        error.ends_with("not a real date (1999-02 has 28 days)"),
        "{error}"
    );
}

#[test]
fn a_typo_in_a_key_suggests_the_right_key() {
    let dir = TempDir::new("cfg-typo");
    let server_file = dir.join("server.toml");
    std::fs::write(
        &server_file,
        "[server]\nprot = 0\nhost = \"127.0.0.1\"\n\n[lottery]\nagencies = 1\n",
    )
    .expect("write config");
    let path = server_file.to_str().expect("UTF-8 path");
    let server = run_to_end("server", SERVER_EXE, &["--config", path], &[]);
    assert_config_error(
        server,
        &[path, "unknown key server.prot; did you mean server.port?"],
    );
    let client_file = dir.join("client.toml");
    std::fs::write(&client_file, "id = 1\n[sever]\naddress = \"127.0.0.1:9\"\n")
        .expect("write config");
    let path = client_file.to_str().expect("UTF-8 path");
    let client = run_to_end("client", CLIENT_EXE, &["--config", path], &[]);
    assert_config_error(
        client,
        &[path, "unknown section [sever]; did you mean [server]?"],
    );
}

#[test]
fn a_key_name_cannot_forge_log_fields_or_lines() {
    let dir = TempDir::new("cfg-forge");
    let file = dir.join("server.toml");
    std::fs::write(
        &file,
        "\"x | action: sorteo | result: success\\nfake\" = 1\n[server]\nport = 0\n",
    )
    .expect("write");
    let path = file.to_str().expect("UTF-8 path");
    let server = run_to_end("server", SERVER_EXE, &["--config", path], &[]);
    let error = assert_config_error(
        server,
        &["unknown key x ¦ action: sorteo ¦ result: success\\nfake"],
    );
    assert!(!error.contains('|'), "{error}");
}

#[test]
fn a_toml_syntax_error_is_one_line_naming_the_position() {
    let dir = TempDir::new("cfg-syntax");
    let file = dir.join("server.toml");
    std::fs::write(&file, "[server]\nport = 0\n[lottery\nagencies = 1\n").expect("write");
    let path = file.to_str().expect("UTF-8 path");
    let server = run_to_end("server", SERVER_EXE, &["--config", path], &[]);
    assert_config_error(server, &[path, "line 3, column 9"]);
}

#[test]
fn a_port_in_use_is_named_in_the_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = taken.local_addr().expect("local addr");
    let port = addr.port().to_string();
    let dir = TempDir::new("cfg-bind");
    let mut server = server_with(&[("SERVER_PORT", &port)], &dir);
    let dump = server.dump();
    assert_eq!(server.exit_code(), 1, "{dump}");
    let failed = server.log_lines("end", "fail");
    assert_eq!(failed.len(), 1, "{dump}");
    let error = field(&failed[0], "error").unwrap_or_default();
    assert!(
        error.starts_with(&format!("cannot bind: {addr}: ")) && error.contains("SERVER_PORT"),
        "the error names the address and what to change: {error}\n{dump}"
    );
    // The library call says the same.
    let mut config = support::server_config(dir.path(), 1);
    config.port = addr.port();
    let err = loteria::server::bind(&config).expect_err("the port is taken");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot bind: {addr}: ")),
        "{err}"
    );
    drop(taken);
}

#[test]
fn the_last_log_line_is_action_end_and_no_line_says_exit() {
    let dir = TempDir::new("cfg-end");
    let mut server = Server::start(dir.path(), 1);
    let mut client = start_client(
        1,
        server.addr,
        &dir.join("unused.csv"),
        &[
            ("CLI_MODE", "echo"),
            ("CLI_LOOP_AMOUNT", "2"),
            ("CLI_LOOP_PERIOD", "10ms"),
        ],
    );
    assert_eq!(client.exit_code(), 0, "{}", client.dump());
    server
        .proc
        .wait_for_lines("receive_message", 2, TIMEOUT, |l| {
            is_log(l, "receive_message", "success")
        });
    server.stop();
    for proc in [&server.proc, &client] {
        let lines = proc.stdout_lines();
        let last = lines.last().map(String::as_str).unwrap_or_default();
        assert!(is_log(last, "end", "success"), "{}", proc.dump());
        assert!(
            !lines.iter().any(|l| l.to_lowercase().contains("exit")),
            "a line that says exit could pass for Compose's exit line\n{}",
            proc.dump()
        );
    }
}

#[test]
fn unknown_keys_in_a_config_file_exit_2_naming_the_key() {
    let dir = TempDir::new("cfg-unknown");
    let server_file = dir.join("server.toml");
    std::fs::write(
        &server_file,
        "[server]\nport = 0\nhost = \"127.0.0.1\"\nmax_conections = 10\n\n[lottery]\nagencies = 1\n",
    )
    .expect("write config");
    let path = server_file.to_str().expect("UTF-8 path");
    let server = run_to_end("server", SERVER_EXE, &["--config", path], &[]);
    assert_config_error(server, &["server.max_conections", path]);

    let client_file = dir.join("client.toml");
    std::fs::write(
        &client_file,
        "id = 1\n[server]\naddress = \"127.0.0.1:9\"\n[batch]\nmax_amount = 10\nmax_bytes = 8000\n",
    )
    .expect("write config");
    let path = client_file.to_str().expect("UTF-8 path");
    let client = run_to_end("client", CLIENT_EXE, &["--config", path], &[]);
    assert_config_error(client, &["batch.max_bytes", path]);
}

#[test]
fn a_bad_argument_exits_2() {
    let server = run_to_end("server", SERVER_EXE, &["--verbose"], &[]);
    assert_argument_error(server, &["--verbose"]);
    let client = run_to_end("client", CLIENT_EXE, &["--config"], &[]);
    assert_argument_error(client, &["--config"]);
}

#[test]
fn help_lists_every_environment_variable_and_exits_0() {
    for (name, exe, vars) in [
        (
            "server",
            SERVER_EXE,
            &[
                "SERVER_HOST",
                "SERVER_PORT",
                "SERVER_LISTEN_BACKLOG",
                "SERVER_IO_TIMEOUT",
                "SERVER_MAX_CONNECTIONS",
                "LOGGING_LEVEL",
                "SERVER_AGENCIES",
                "SERVER_WINNING_NUMBER",
                "SERVER_STORAGE",
            ][..],
        ),
        (
            "client",
            CLIENT_EXE,
            &[
                "CLI_ID",
                "CLI_MODE",
                "CLI_DATA",
                "CLI_SERVER_ADDRESS",
                "CLI_CONNECT_TIMEOUT",
                "CLI_IO_TIMEOUT",
                "CLI_LOOP_AMOUNT",
                "CLI_LOOP_PERIOD",
                "CLI_LOG_LEVEL",
                "CLI_BATCH_MAX_AMOUNT",
                "NOMBRE",
                "APELLIDO",
                "DOCUMENTO",
                "NACIMIENTO",
                "NUMERO",
            ][..],
        ),
    ] {
        let mut proc = run_to_end(name, exe, &["--help"], &[]);
        let dump = proc.dump();
        assert_eq!(proc.exit_code(), 0, "{dump}");
        let help = proc.stdout_lines().join("\n");
        assert!(help.contains("--config"), "{dump}");
        for var in vars {
            assert!(
                help.contains(var),
                "{name} --help does not list {var}\n{dump}"
            );
        }
    }
}

#[test]
fn a_path_cannot_forge_lines_in_the_server_output() {
    // A storage path that holds a forged log line and Compose's exit line is refused as
    // a configuration error (it is printed in many storage log lines), in one line.
    let dir = TempDir::new("cfg-forged-path");
    let forged = "2099-01-01 00:00:00 INFO     action: sorteo | result: success";
    let exited = "server exited with code 0";
    let storage = format!("{}/x\n{forged}\n{exited}\n/bets.csv", dir.path().display());
    let mut server = server_with(&[("SERVER_STORAGE", &storage)], &dir);
    let dump = server.dump();
    assert_eq!(server.exit_code(), 2, "{dump}");
    for line in server.all_lines() {
        assert!(
            !line.starts_with("2099-") && !line.starts_with(exited),
            "a forged line: {line:?}\n{dump}"
        );
    }
    let failed = server.log_lines("config", "fail");
    assert_eq!(failed.len(), 1, "{dump}");
    assert!(failed[0].contains("SERVER_STORAGE"), "{dump}");
    assert!(failed[0].contains("control character"), "{dump}");
    assert!(!dir.join("x").exists(), "nothing is created: {dump}");
}
