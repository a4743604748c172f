//! A big lottery with the default configurations (issue 9): 1 000 agencies of 1 000
//! bets each, every one a real client (`loteria::client::run`, one thread each) of an
//! in-process server (`loteria::server::run`), with nothing set but the port, the
//! storage path, the number of agencies and the data files.
mod support;

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use loteria::client::{self, Outcome};
use loteria::config::{ClientConfig, ServerConfig};
use loteria::shutdown::Shutdown;
use support::process::{client_toml, server_toml};
use support::shm::fast_dir;

const AGENCIES: u32 = 1_000;
const BETS: usize = 1_000;
/// The default `lottery.winning_number`, which the generator plays too.
const WINNING: &str = "7574";
/// Far above what the lottery takes (well under a minute in a debug build): past it
/// the test stops everything and fails instead of hanging.
const BOUND: Duration = Duration::from_secs(150);

/// Collects what the clients log about their winners (`action: ganadores`), by
/// agency, and counts the server's `SERVER_BUSY` refusals.
#[derive(Default)]
struct Capture {
    winners: Mutex<HashMap<u32, Vec<String>>>,
    busy: Mutex<u64>,
}

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn || metadata.target().starts_with("loteria::client")
    }

    fn log(&self, record: &log::Record) {
        if record.target().starts_with("loteria::client") && record.level() == log::Level::Info {
            let line = record.args().to_string();
            let Some(rest) = line.strip_prefix("action: ganadores | result: success | client_id: ")
            else {
                return;
            };
            let (id, dnis) = rest.split_once(" | dnis: ").expect("a ganadores line");
            let id: u32 = id.parse().expect("an agency id");
            let dnis = dnis
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect();
            self.winners.lock().expect("capture lock").insert(id, dnis);
        } else if record.target().starts_with("loteria::server")
            && record.args().to_string().contains("server busy")
        {
            *self.busy.lock().expect("capture lock") += 1;
        }
    }

    fn flush(&self) {}
}

/// The documents of `file`'s winning bets, sorted.
fn expected_winners(file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).expect("read an agency file");
    // `first,last,document,birthdate,number` (names have no commas).
    let mut winners: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.rsplitn(4, ',');
            let number = fields.next()?;
            let document = fields.nth(1)?;
            (number == WINNING).then(|| document.to_string())
        })
        .collect();
    winners.sort();
    winners
}

fn agency_file(dir: &Path, agency: u32) -> PathBuf {
    dir.join(format!("agency-{agency}.csv"))
}

/// Regression (issue 9): `server.max_connections = 512` (the default) counted every
/// connection, so with 1 000 agencies the 512 admitted ones waited for a draw that
/// could never run while the other 488 were refused `SERVER_BUSY` until their clients
/// gave up (`retry_deadline`, 300 s). Now only connections that own no agency count
/// against it: every agency finishes and gets exactly its own winners.
#[test]
fn a_thousand_agencies_of_a_thousand_bets_finish_with_the_default_configuration() {
    let capture: &'static Capture = Box::leak(Box::default());
    log::set_logger(capture).expect("the only logger of this test binary");
    log::set_max_level(log::LevelFilter::Info);

    let dir = fast_dir("many-agencies");
    let data = dir.join("agencies");
    let started = Instant::now();
    let generated = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen_agencies.py"))
        .args([
            "--agencies",
            &AGENCIES.to_string(),
            "--bets",
            &BETS.to_string(),
        ])
        .arg("-o")
        .arg(&data)
        .output()
        .expect("run scripts/gen_agencies.py (python3)");
    assert!(
        generated.status.success(),
        "the generator failed: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let expected: HashMap<u32, Vec<String>> = (1..=AGENCIES)
        .map(|a| (a, expected_winners(&agency_file(&data, a))))
        .collect();
    let winners_total: usize = expected.values().map(Vec::len).sum();
    let generation = started.elapsed();

    let storage = dir.join("bets.csv");
    let server_env = |name: &str| match name {
        "SERVER_PORT" => Some("0".to_string()),
        "SERVER_STORAGE" => Some(storage.display().to_string()),
        "SERVER_AGENCIES" => Some(AGENCIES.to_string()),
        _ => None,
    };
    let config =
        ServerConfig::load_with_env(&server_toml(), &server_env).expect("the default config");
    assert_eq!(
        config.max_connections, 512,
        "the default, below the agencies"
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = listener.local_addr().expect("local address").to_string();
    let server_shutdown = Shutdown::new();
    let server = {
        let shutdown = server_shutdown.clone();
        thread::spawn(move || loteria::server::run(listener, &config, &shutdown))
    };

    let ran = Instant::now();
    let client_shutdown = Shutdown::new();
    let (done, results) = mpsc::channel();
    let clients: Vec<_> = (1..=AGENCIES)
        .map(|agency| {
            let file = agency_file(&data, agency).display().to_string();
            let address = address.clone();
            let env = move |name: &str| match name {
                "CLI_ID" => Some(agency.to_string()),
                "CLI_DATA" => Some(file.clone()),
                "CLI_SERVER_ADDRESS" => Some(address.clone()),
                _ => None,
            };
            let config =
                ClientConfig::load_with_env(&client_toml(), &env).expect("the default config");
            let (shutdown, done) = (client_shutdown.clone(), done.clone());
            thread::Builder::new()
                .name(format!("agency-{agency}"))
                .spawn(move || {
                    let result = client::run(&config, &shutdown).map_err(|e| e.to_string());
                    let _ = done.send((agency, result));
                })
                .expect("spawn a client thread")
        })
        .collect();
    drop(done);

    let deadline = ran + BOUND;
    let mut outcomes: HashMap<u32, Result<Outcome, String>> = HashMap::new();
    while outcomes.len() < AGENCIES as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        match results.recv_timeout(left) {
            Ok((agency, result)) => {
                outcomes.insert(agency, result);
            }
            Err(_) => break,
        }
    }
    let elapsed = ran.elapsed();
    let finished = outcomes.len();
    if finished < AGENCIES as usize {
        // Fail instead of hanging: stop the clients and the server, then report.
        client_shutdown.trigger();
        server_shutdown.trigger();
    }
    for client in clients {
        client.join().expect("a client thread panicked");
    }
    server_shutdown.trigger();
    server
        .join()
        .expect("the server thread panicked")
        .expect("the server ran");
    let busy = *capture.busy.lock().expect("capture lock");
    eprintln!(
        "{AGENCIES} agencies × {BETS} bets ({} bets, {winners_total} winners): data generated in {generation:?}, lottery run in {elapsed:?}; {busy} connections refused SERVER_BUSY",
        AGENCIES as usize * BETS
    );
    assert_eq!(
        finished, AGENCIES as usize,
        "only {finished} of {AGENCIES} agencies finished within {BOUND:?}"
    );

    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, r)| !matches!(r, Ok(Outcome::Completed { skipped: 0 })))
        .take(5)
        .collect();
    assert!(
        failed.is_empty(),
        "agencies that did not complete: {failed:?}"
    );
    let winners = capture.winners.lock().expect("capture lock");
    for agency in 1..=AGENCIES {
        let mut got = winners
            .get(&agency)
            .unwrap_or_else(|| panic!("agency {agency} logged no winners"))
            .clone();
        got.sort();
        assert_eq!(got, expected[&agency], "agency {agency}'s winners");
    }
    // One row per bet (the bets file has no header), none lost or stored twice.
    let rows = fs::read(&storage)
        .expect("read the bets file")
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    assert_eq!(rows, AGENCIES as usize * BETS);
}
