//! End-to-end tests of the command line and the configuration: bad files, bad values
//! and `--help`, on the real binaries.
mod support;

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

/// Expects exit code 2 and a stderr naming every one of `needles`; nothing served.
fn assert_config_error(mut proc: Proc, needles: &[&str]) {
    let dump = proc.dump();
    assert_eq!(proc.exit_code(), 2, "{dump}");
    let stderr = proc.stderr_lines().join("\n");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr does not name {needle:?}\n{dump}"
        );
    }
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
    let client = client_with(&[("NOMBRE", "Ana"), ("DOCUMENTO", "30904465")]);
    assert_config_error(client, &["APELLIDO", "NACIMIENTO", "NUMERO"]);
    let client = client_with(&[
        ("NOMBRE", "Ana"),
        ("APELLIDO", "Núñez"),
        ("DOCUMENTO", "30904465"),
        ("NACIMIENTO", "17/03/1999"),
        ("NUMERO", "7574"),
    ]);
    assert_config_error(client, &["NACIMIENTO", "17/03/1999"]);
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
    assert_config_error(server, &["--verbose"]);
    let client = run_to_end("client", CLIENT_EXE, &["--config"], &[]);
    assert_config_error(client, &["--config"]);
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
