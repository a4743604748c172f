//! End-to-end fault tests with the real `server` and `client` binaries: the server
//! killed with SIGKILL again and again during a 1 000 000-bet upload, a client killed
//! and started again, a client frozen (SIGSTOP) past the server's io_timeout, a second
//! client process of one agency, and a full disk. Every wait is bounded; every test
//! prints its figures (`cargo test --test e2e_faults -- --nocapture --test-threads=1`).
//!
//! The random instants come from a xorshift generator seeded from the clock; the seed
//! is printed, and `LOTERIA_FAULT_SEED=<seed>` replays it.

mod support;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::TempDir;
use support::process::{
    Proc, Row, command, field, is_log, multiset, row, server_toml, start_client, stored_multiset,
};

/// The configured winning number (`config/server.toml`).
const WINNING_NUMBER: u16 = 7574;
/// Every `WINNER_EVERY`-th bet of a generated file plays the winning number.
const WINNER_EVERY: usize = 997;

// ---------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------

/// xorshift64*: plenty for picking kill instants.
struct Rng(u64);

impl Rng {
    /// Seeded from `LOTERIA_FAULT_SEED` if set, else from the clock; prints the seed.
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("LOTERIA_FAULT_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                nanos ^ u64::from(std::process::id()).rotate_left(32)
            });
        println!("{test}: seed {seed} (LOTERIA_FAULT_SEED={seed} replays it)");
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

// ---------------------------------------------------------------------------------
// Generated agency files
// ---------------------------------------------------------------------------------

/// Bet `i` of `agency` as the row the server must store. Documents are
/// `<agency><i:07>`, unique, so a stored row maps back to its position in the file.
fn bet_row(agency: u32, i: usize) -> Row {
    let number = if i % WINNER_EVERY == WINNER_EVERY - 1 {
        WINNING_NUMBER
    } else {
        match ((i * 7919 + agency as usize * 13) % 10_000) as u16 {
            WINNING_NUMBER => WINNING_NUMBER - 1,
            n => n,
        }
    };
    (
        agency,
        format!("Agencia{agency} Núñez {i}"),
        if i.is_multiple_of(3) {
            "Pérez"
        } else {
            "Gómez Ibáñez"
        }
        .to_string(),
        format!("{agency}{i:07}"),
        format!("{:04}-{:02}-{:02}", 1940 + i % 60, 1 + i % 12, 1 + i % 28),
        number,
    )
}

/// One agency's generated file: `bets` lines `first,last,document,YYYY-MM-DD,number`.
struct Agency {
    id: u32,
    bets: usize,
    path: PathBuf,
}

impl Agency {
    fn write(dir: &Path, id: u32, bets: usize) -> Agency {
        assert!((1..=9).contains(&id) && bets <= 10_000_000);
        let path = dir.join(format!("agency-{id}.csv"));
        let mut out = BufWriter::new(File::create(&path).expect("create agency file"));
        for i in 0..bets {
            let (_, first, last, document, birthdate, number) = bet_row(id, i);
            writeln!(out, "{first},{last},{document},{birthdate},{number}")
                .expect("write agency file");
        }
        out.flush().expect("flush agency file");
        Agency { id, bets, path }
    }

    fn rows(&self) -> impl Iterator<Item = Row> + '_ {
        (0..self.bets).map(|i| bet_row(self.id, i))
    }

    /// The documents of this file's winning bets, sorted.
    fn winners(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .rows()
            .filter(|r| r.5 == WINNING_NUMBER)
            .map(|r| r.3)
            .collect();
        w.sort();
        w
    }

    /// The position in the file of the bet with `document`, if it is one of ours.
    fn index_of(&self, document: &str) -> Option<usize> {
        let rest = document.strip_prefix(&self.id.to_string())?;
        if document.len() != 8 {
            return None;
        }
        rest.parse::<usize>().ok().filter(|&i| i < self.bets)
    }
}

/// The expected multiset of the store: every generated bet exactly once.
fn expected_multiset(agencies: &[&Agency]) -> BTreeMap<Row, usize> {
    multiset(agencies.iter().flat_map(|a| a.rows()))
}

/// (bets lost, duplicates) of `stored` against `expected`, from the two multisets:
/// lost = expected copies missing, duplicates = stored copies beyond the expected
/// (rows that were never uploaded count as duplicates too).
fn diff_multisets(
    expected: &BTreeMap<Row, usize>,
    stored: &BTreeMap<Row, usize>,
) -> (usize, usize) {
    let lost = expected
        .iter()
        .map(|(r, &n)| n.saturating_sub(stored.get(r).copied().unwrap_or(0)))
        .sum();
    let duplicates = stored
        .iter()
        .map(|(r, &n)| n.saturating_sub(expected.get(r).copied().unwrap_or(0)))
        .sum();
    (lost, duplicates)
}

/// What the store holds of each agency, compared with its file without building the
/// 1 000 000-entry multisets: the multiset indexed by the bet's position (documents
/// are unique). Returns (stored, lost, duplicates, per-agency stored).
fn verify_store_indexed(storage: &Path, agencies: &[Agency]) -> (u64, u64, u64, Vec<u64>) {
    let mut counts: Vec<Vec<u32>> = agencies.iter().map(|a| vec![0u32; a.bets]).collect();
    let mut foreign = 0u64;
    let mut stored = 0u64;
    let mut first_foreign: Option<Row> = None;
    loteria::storage::for_each_stored(storage, |agency, bet| {
        stored += 1;
        let r = row(agency, &bet);
        let slot = agencies
            .iter()
            .position(|a| a.id == agency)
            .and_then(|k| agencies[k].index_of(&r.3).map(|i| (k, i)))
            .filter(|&(k, i)| bet_row(agencies[k].id, i) == r);
        match slot {
            Some((k, i)) => counts[k][i] += 1,
            None => {
                foreign += 1;
                first_foreign.get_or_insert(r);
            }
        }
    })
    .expect("bets file readable");
    if let Some(r) = first_foreign {
        println!("  first stored row that was never uploaded: {r:?}");
    }
    let lost = counts.iter().flatten().filter(|&&c| c == 0).count() as u64;
    let duplicates = counts
        .iter()
        .flatten()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum::<u64>()
        + foreign;
    let per_agency = counts
        .iter()
        .map(|c| c.iter().map(|&n| u64::from(n)).sum())
        .collect();
    (stored, lost, duplicates, per_agency)
}

// ---------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------

/// How to start (and restart) a server: always the same files and port.
struct ServerSpec {
    cwd: PathBuf,
    storage: PathBuf,
    /// 0: any free port.
    port: u16,
    agencies: u32,
    env: Vec<(String, String)>,
}

impl ServerSpec {
    fn new(dir: &Path, storage: &Path, agencies: u32) -> ServerSpec {
        ServerSpec {
            cwd: dir.to_path_buf(),
            storage: storage.to_path_buf(),
            port: 0,
            agencies,
            env: Vec::new(),
        }
    }

    fn with(mut self, key: &str, value: &str) -> ServerSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Spawns the server and waits (bounded) until it listens; returns it and where.
    fn spawn(&self, name: &str) -> (Proc, SocketAddr) {
        let port = self.port.to_string();
        let agencies = self.agencies.to_string();
        let storage = self.storage.to_str().expect("UTF-8 temp path").to_string();
        let mut vars: Vec<(&str, &str)> = vec![
            ("SERVER_HOST", "127.0.0.1"),
            ("SERVER_PORT", &port),
            ("SERVER_AGENCIES", &agencies),
            ("SERVER_STORAGE", &storage),
            ("LOGGING_LEVEL", "INFO"),
        ];
        vars.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let config = server_toml();
        let cmd = command(
            support::process::SERVER_EXE,
            &["--config".as_ref(), config.as_os_str()],
            &vars,
            &self.cwd,
        );
        let proc = Proc::spawn(name, cmd);
        let line = proc
            .wait_for_lines("action: listen", 1, Duration::from_secs(30), |l| {
                is_log(l, "listen", "success")
            })
            .remove(0);
        let addr = field(&line, "address")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (proc, addr)
    }
}

/// Sends `signal` (`"KILL"`, `"STOP"`, `"CONT"`, `"TERM"`) with `kill -<signal> <pid>`.
fn signal(proc: &Proc, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(proc.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {} failed", proc.pid());
}

/// SIGKILL and reap: afterwards all of its output has been read.
fn kill9(proc: &mut Proc) {
    signal(proc, "KILL");
    let status = proc.wait_exit(Duration::from_secs(10));
    assert!(
        status.code().is_none(),
        "expected death by SIGKILL, got {status}"
    );
}

/// SIGTERM and expect exit code 0.
fn stop(proc: &mut Proc) {
    signal(proc, "TERM");
    let status = proc.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM\n{}",
        proc.dump()
    );
}

/// Waits for the exit until `deadline` (killing it then) and returns the exit code.
fn exit_code_by(proc: &mut Proc, deadline: Instant) -> i32 {
    let left = deadline.saturating_duration_since(Instant::now());
    let status = proc.wait_exit(left.max(Duration::from_millis(1)));
    status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal ({status})\n{}", proc.dump()))
}

fn count_log(proc: &Proc, action: &str, result: &str) -> usize {
    proc.stdout_lines()
        .iter()
        .filter(|l| is_log(l, action, result))
        .count()
}

/// Batches the server stored (`apuesta_recibida | result: success` lines).
fn batches(server: &Proc) -> usize {
    count_log(server, "apuesta_recibida", "success")
}

/// Bets the server stored for `agency`, from its `apuesta_recibida` lines.
fn stored_by_log(server: &Proc, agency: u32) -> u64 {
    let agency = agency.to_string();
    server
        .log_lines("apuesta_recibida", "success")
        .iter()
        .filter(|l| field(l, "agency") == Some(agency.as_str()))
        .map(|l| {
            field(l, "cantidad")
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no cantidad in {l:?}"))
        })
        .sum()
}

/// Polls until `cond` holds; false at `deadline`.
fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `server` has stored at least `count` batches.
fn wait_batches(server: &Proc, count: usize, timeout: Duration) {
    let ok = wait_until(Instant::now() + timeout, || batches(server) >= count);
    assert!(
        ok,
        "the server stored only {} of {count} batches in {timeout:?}\n{}",
        batches(server),
        server.dump()
    );
}

/// The client's winners from its `ganadores` line, sorted.
fn client_winners(client: &Proc) -> Vec<String> {
    let lines = client.log_lines("ganadores", "success");
    assert_eq!(lines.len(), 1, "one ganadores line\n{}", client.dump());
    let mut w: Vec<String> = field(&lines[0], "dnis")
        .unwrap_or("")
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    w.sort();
    w
}

/// The client's `cant_ganadores`.
fn client_winner_count(client: &Proc) -> usize {
    let lines = client.log_lines("consulta_ganadores", "success");
    assert_eq!(
        lines.len(),
        1,
        "one consulta_ganadores line\n{}",
        client.dump()
    );
    field(&lines[0], "cant_ganadores")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no cant_ganadores in {:?}", lines[0]))
}

/// Asserts the client's winners are exactly those of its file.
fn assert_winners(client: &Proc, agency: &Agency) {
    let expected = agency.winners();
    assert_eq!(
        client_winner_count(client),
        expected.len(),
        "cant_ganadores of agency {}",
        agency.id
    );
    assert_eq!(
        client_winners(client),
        expected,
        "winners of agency {}",
        agency.id
    );
}

/// Stored bets of the client's `resume` lines (`stored_bets`), in order.
fn resumes(client: &Proc) -> Vec<u64> {
    client
        .log_lines("resume", "success")
        .iter()
        .filter_map(|l| field(l, "stored_bets").and_then(|v| v.parse().ok()))
        .collect()
}

/// A loopback port outside the kernel's ephemeral range (so that no client's own
/// outgoing connection can take it while the server is down, which would make that
/// client connect to itself), free right now.
fn fixed_port(rng: &mut Rng) -> u16 {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (lo, hi) = if low > 12_000 {
        (10_000u64, u64::from(low) - 1)
    } else {
        (u64::from(low) / 2, u64::from(low) - 1)
    };
    for _ in 0..200 {
        let port = rng.range(lo, hi) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {lo}..={hi}");
}

// ---------------------------------------------------------------------------------
// 1. kill -9 loop
// ---------------------------------------------------------------------------------

/// Bets per agency in the kill loop (5 agencies: 1 000 000 in all).
const KILL_LOOP_BETS: usize = 200_000;
/// Batch size in the kill loop. Measured on 2 cores with debug binaries and a real
/// disk (two fsyncs per commit): 50 takes ~170 s for the upload alone, 100 ~50 s
/// (plus ~10 s for the draw), so 100: 10 000 commit points.
const KILL_LOOP_BATCH: &str = "100";

/// Batches in flight per client in the kill loop: each kill finds some unanswered,
/// and the upload stays long enough for every kill (with a window of 32 the
/// uploads ended after 3 kills).
const KILL_LOOP_WINDOW: &str = "4";

#[test]
fn kill9_server_loop_stores_every_bet_exactly_once() {
    let started = Instant::now();
    let mut rng = Rng::seeded("kill9_server_loop");
    let dir = TempDir::new("faults-kill9");
    let agencies: Vec<Agency> = (1..=5)
        .map(|id| Agency::write(dir.path(), id, KILL_LOOP_BETS))
        .collect();
    let total: usize = agencies.iter().map(|a| a.bets).sum();
    println!(
        "kill9_server_loop: {total} bets in {} files generated in {:?}",
        agencies.len(),
        started.elapsed()
    );
    let storage = dir.join("bets.csv");
    let mut spec = ServerSpec::new(dir.path(), &storage, agencies.len() as u32);
    spec.port = fixed_port(&mut rng);
    let (mut server, addr) = spec.spawn("server-run-0");
    println!("kill9_server_loop: server on fixed port {addr}");
    let mut finished_runs: Vec<Proc> = Vec::new();
    let upload_started = Instant::now();
    let mut clients: Vec<Proc> = agencies
        .iter()
        .map(|a| {
            start_client(
                a.id,
                addr,
                &a.path,
                &[
                    ("CLI_BATCH_MAX_AMOUNT", KILL_LOOP_BATCH),
                    ("CLI_BATCH_WINDOW", KILL_LOOP_WINDOW),
                    ("CLI_RETRY_DEADLINE", "60s"),
                ],
            )
        })
        .collect();

    let uploading = |server: &Proc, clients: &[Proc]| {
        count_log(server, "fin", "success") == 0
            && clients
                .iter()
                .all(|c| count_log(c, "upload", "success") == 0)
    };
    let kills_wanted = rng.range(6, 8);
    let mut kills = 0u64;
    while kills < kills_wanted {
        let need = rng.range(10, 60) as usize;
        wait_batches(&server, need, Duration::from_secs(30));
        // Short enough for every kill to land mid-upload at pipelined speed.
        sleep(rng.millis(50, 400));
        if !uploading(&server, &clients) {
            println!("kill9_server_loop: uploads ended before kill {}", kills + 1);
            break;
        }
        let in_run = batches(&server);
        kill9(&mut server);
        kills += 1;
        println!(
            "  kill {kills} at {:.1}s: {in_run} batches stored by this run",
            upload_started.elapsed().as_secs_f64()
        );
        sleep(rng.millis(0, 400));
        let (next, _) = spec.spawn(&format!("server-run-{kills}"));
        finished_runs.push(std::mem::replace(&mut server, next));
    }
    assert!(
        kills >= 5,
        "only {kills} kills happened while uploading: the upload was too short"
    );

    let deadline = upload_started + Duration::from_secs(170);
    for (client, agency) in clients.iter_mut().zip(&agencies) {
        let code = exit_code_by(client, deadline);
        assert_eq!(code, 0, "client {} exit code\n{}", agency.id, client.dump());
    }
    let upload_elapsed = upload_started.elapsed();
    stop(&mut server);
    finished_runs.push(server);

    for (client, agency) in clients.iter().zip(&agencies) {
        assert_winners(client, agency);
    }
    let sorteos: usize = finished_runs
        .iter()
        .map(|s| count_log(s, "sorteo", "success"))
        .sum();
    let reconnects: usize = clients
        .iter()
        .map(|c| count_log(c, "reconnect", "in_progress"))
        .sum();
    let resumed: usize = clients.iter().map(|c| resumes(c).len()).sum();

    // Across every restart: what the new run found stored covers everything the runs
    // before it logged as stored (`apuesta_recibida` is logged after the commit).
    let mut logged_so_far = 0u64;
    let mut opened: Vec<u64> = Vec::new();
    for (k, run) in finished_runs.iter().enumerate() {
        let open = run
            .log_lines("storage_open", "success")
            .iter()
            .find_map(|l| field(l, "bets").and_then(|b| b.parse::<u64>().ok()))
            .unwrap_or_else(|| panic!("no storage_open line in run {k}\n{}", run.dump()));
        assert!(
            open >= logged_so_far,
            "run {k} opened {open} bets, but the runs before it stored {logged_so_far}"
        );
        opened.push(open);
        logged_so_far += (1..=agencies.len() as u32)
            .map(|a| stored_by_log(run, a))
            .sum::<u64>();
    }
    let repairs: usize = finished_runs
        .iter()
        .map(|s| count_log(s, "storage_repair", "success"))
        .sum();
    let server_fails: Vec<String> = finished_runs
        .iter()
        .flat_map(|s| s.stdout_lines())
        .filter(|l| l.contains("result: fail"))
        .collect();
    let verify_started = Instant::now();
    let (stored, lost, duplicates, per_agency) = verify_store_indexed(&storage, &agencies);
    let verify_elapsed = verify_started.elapsed();
    println!("kill9_server_loop: kills survived:   {kills}");
    println!(
        "kill9_server_loop: server runs:      {}",
        finished_runs.len()
    );
    println!("kill9_server_loop: bets uploaded:    {total}");
    println!("kill9_server_loop: bets stored:      {stored} (per agency {per_agency:?})");
    println!("kill9_server_loop: bets lost:        {lost}");
    println!("kill9_server_loop: duplicates:       {duplicates}");
    println!("kill9_server_loop: reconnects:       {reconnects} (resumes: {resumed})");
    println!("kill9_server_loop: sorteo lines:     {sorteos}");
    println!("kill9_server_loop: bets at each open: {opened:?}");
    println!("kill9_server_loop: storage repairs:  {repairs}");
    println!(
        "kill9_server_loop: server fail lines: {} {:?}",
        server_fails.len(),
        server_fails.iter().take(3).collect::<Vec<_>>()
    );
    println!(
        "kill9_server_loop: winners:          {:?}",
        clients.iter().map(client_winner_count).collect::<Vec<_>>()
    );
    println!(
        "kill9_server_loop: elapsed:          upload+draw {:.1}s, store check {:.1}s, total {:.1}s",
        upload_elapsed.as_secs_f64(),
        verify_elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0, "bets lost");
    assert_eq!(duplicates, 0, "bets stored twice (or never uploaded)");
    assert_eq!(stored, total as u64);
    assert_eq!(sorteos, 1, "the draw ran exactly once over all server runs");
    assert!(
        reconnects >= kills as usize,
        "each kill makes every client reconnect: {reconnects} reconnect lines for {kills} kills"
    );
}

// ---------------------------------------------------------------------------------
// 2. A client killed with SIGKILL and started again
// ---------------------------------------------------------------------------------

#[test]
fn client_kill9_and_restart_resumes_exactly() {
    let started = Instant::now();
    let mut rng = Rng::seeded("client_kill9_restart");
    let dir = TempDir::new("faults-client-kill");
    let agency = Agency::write(dir.path(), 1, 150_000);
    let storage = dir.join("bets.csv");
    let (mut server, addr) = ServerSpec::new(dir.path(), &storage, 1).spawn("server");
    // A few batches in flight (pipelining), over a file long enough that the upload
    // is still going when the fault comes.
    let env = [
        ("CLI_BATCH_MAX_AMOUNT", "50"),
        ("CLI_BATCH_WINDOW", "4"),
        ("CLI_RETRY_DEADLINE", "60s"),
    ];
    let mut first = start_client(1, addr, &agency.path, &env);
    wait_batches(&server, rng.range(20, 80) as usize, Duration::from_secs(30));
    sleep(rng.millis(0, 300));
    kill9(&mut first);
    // The server stores a batch it read completely even if its sender died: wait for
    // the connection to end before reading what it stored.
    let closed = wait_until(Instant::now() + Duration::from_secs(10), || {
        count_log(&server, "close_connection", "success") >= 1
    });
    assert!(
        closed,
        "the server never closed the killed client's connection\n{}",
        server.dump()
    );
    let acked_before = stored_by_log(&server, 1);
    assert!(
        acked_before < agency.bets as u64,
        "the first client finished before the kill"
    );

    let mut second = start_client(1, addr, &agency.path, &env);
    let code = exit_code_by(&mut second, Instant::now() + Duration::from_secs(60));
    assert_eq!(code, 0, "restarted client\n{}", second.dump());
    stop(&mut server);
    let resumed = resumes(&second);
    assert_winners(&second, &agency);

    let expected = expected_multiset(&[&agency]);
    let got = stored_multiset(&storage);
    let (lost, duplicates) = diff_multisets(&expected, &got);
    let total: usize = got.values().sum();
    println!("client_kill9_restart: acked before kill: {acked_before}");
    println!("client_kill9_restart: resumed from:      {resumed:?}");
    println!(
        "client_kill9_restart: total stored:      {total} of {}",
        agency.bets
    );
    println!("client_kill9_restart: lost {lost}, duplicates {duplicates}");
    println!(
        "client_kill9_restart: elapsed:           {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        resumed,
        vec![acked_before],
        "the restart resumes after the stored bets"
    );
    assert_eq!((lost, duplicates), (0, 0));
    assert_eq!(total, agency.bets);
}

// ---------------------------------------------------------------------------------
// 3. A client frozen past the server's io_timeout
// ---------------------------------------------------------------------------------

#[test]
fn sigstop_past_io_timeout_reconnects_and_finishes() {
    let started = Instant::now();
    let mut rng = Rng::seeded("sigstop_io_timeout");
    let dir = TempDir::new("faults-sigstop");
    let agency = Agency::write(dir.path(), 1, 30_000);
    let storage = dir.join("bets.csv");
    let (mut server, addr) = ServerSpec::new(dir.path(), &storage, 1)
        .with("SERVER_IO_TIMEOUT", "1s")
        .spawn("server");
    let mut client = start_client(
        1,
        addr,
        &agency.path,
        &[
            ("CLI_BATCH_MAX_AMOUNT", "50"),
            ("CLI_RETRY_DEADLINE", "60s"),
        ],
    );
    wait_batches(&server, rng.range(20, 80) as usize, Duration::from_secs(30));
    signal(&client, "STOP");
    let stopped_at = Instant::now();
    let before = stored_by_log(&server, 1);
    let timed_out = wait_until(Instant::now() + Duration::from_secs(5), || {
        server
            .stdout_lines()
            .iter()
            .any(|l| is_log(l, "close_connection", "success") && l.contains("idle timeout"))
    });
    sleep(Duration::from_secs(3).saturating_sub(stopped_at.elapsed()));
    signal(&client, "CONT");
    let frozen = stopped_at.elapsed();
    let code = exit_code_by(&mut client, Instant::now() + Duration::from_secs(60));
    assert_eq!(code, 0, "client after SIGCONT\n{}", client.dump());
    stop(&mut server);
    let reconnects = count_log(&client, "reconnect", "in_progress");
    let resumed = resumes(&client);
    assert_winners(&client, &agency);

    let expected = expected_multiset(&[&agency]);
    let got = stored_multiset(&storage);
    let (lost, duplicates) = diff_multisets(&expected, &got);
    let total: usize = got.values().sum();
    let timeout_line = server
        .stdout_lines()
        .into_iter()
        .find(|l| l.contains("idle timeout"));
    println!("sigstop_io_timeout: stored before SIGSTOP: {before}");
    println!("sigstop_io_timeout: frozen for:            {frozen:?}");
    println!("sigstop_io_timeout: server timed out:      {timeout_line:?}");
    println!("sigstop_io_timeout: reconnects:            {reconnects} (resumes {resumed:?})");
    println!(
        "sigstop_io_timeout: total stored:          {total} of {}",
        agency.bets
    );
    println!("sigstop_io_timeout: lost {lost}, duplicates {duplicates}");
    println!(
        "sigstop_io_timeout: elapsed:               {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        timed_out,
        "the server did not time the frozen client out\n{}",
        server.dump()
    );
    assert!(reconnects >= 1, "the client reconnected\n{}", client.dump());
    assert_eq!((lost, duplicates), (0, 0));
    assert_eq!(total, agency.bets);
}

// ---------------------------------------------------------------------------------
// 4. A second client process of the same agency
// ---------------------------------------------------------------------------------

#[test]
fn second_client_of_an_agency_supersedes_the_first() {
    let started = Instant::now();
    let mut rng = Rng::seeded("second_client_supersedes");
    let dir = TempDir::new("faults-supersede");
    let agency = Agency::write(dir.path(), 1, 150_000);
    let storage = dir.join("bets.csv");
    let (mut server, addr) = ServerSpec::new(dir.path(), &storage, 1).spawn("server");
    // A few batches in flight (pipelining), over a file long enough that the upload
    // is still going when the fault comes.
    let env = [
        ("CLI_BATCH_MAX_AMOUNT", "50"),
        ("CLI_BATCH_WINDOW", "4"),
        ("CLI_RETRY_DEADLINE", "60s"),
    ];
    let mut first = start_client(1, addr, &agency.path, &env);
    wait_batches(&server, rng.range(20, 80) as usize, Duration::from_secs(30));
    let first_lines_before = first.stdout_lines().len();
    let mut second = start_client(1, addr, &agency.path, &env);
    let first_code = exit_code_by(&mut first, Instant::now() + Duration::from_secs(30));
    let second_code = exit_code_by(&mut second, Instant::now() + Duration::from_secs(60));
    stop(&mut server);

    let first_lines = first.stdout_lines();
    let superseded_at = first_lines.iter().position(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("superseded") || l.contains("took over")
    });
    // No reconnect once the second process started (before its HELLO nothing broke
    // the first's connection either), none giving SUPERSEDED as its reason, and none
    // after the line that reports the takeover.
    let reconnects_after = first_lines[first_lines_before.min(first_lines.len())..]
        .iter()
        .filter(|l| is_log(l, "reconnect", "in_progress") || is_log(l, "connect", "in_progress"))
        .count();
    let reconnect_for_takeover = first_lines.iter().any(|l| {
        is_log(l, "reconnect", "in_progress")
            && (l.contains("SUPERSEDED") || l.contains("took over"))
    });
    let reconnects_after_told = superseded_at.map(|i| {
        first_lines[i..]
            .iter()
            .filter(|l| is_log(l, "reconnect", "in_progress"))
            .count()
    });
    let first_acked = first
        .log_lines("close_connection", "success")
        .last()
        .and_then(|l| field(l, "bets_acked").map(str::to_string));
    let expected = expected_multiset(&[&agency]);
    let got = stored_multiset(&storage);
    let (lost, duplicates) = diff_multisets(&expected, &got);
    let total: usize = got.values().sum();
    println!("second_client_supersedes: first exit code:   {first_code}");
    println!(
        "second_client_supersedes: first told:        {:?}",
        superseded_at.map(|i| &first_lines[i])
    );
    println!("second_client_supersedes: first acked:       {first_acked:?}");
    println!(
        "second_client_supersedes: reconnects after:  {reconnects_after} since the second started, {reconnects_after_told:?} after the takeover line"
    );
    println!("second_client_supersedes: second exit code:  {second_code}");
    println!(
        "second_client_supersedes: second resumed:    {:?}",
        resumes(&second)
    );
    println!(
        "second_client_supersedes: total stored:      {total} of {}",
        agency.bets
    );
    println!("second_client_supersedes: lost {lost}, duplicates {duplicates}");
    println!(
        "second_client_supersedes: elapsed:           {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_ne!(
        first_code,
        0,
        "the superseded client fails\n{}",
        first.dump()
    );
    assert!(
        superseded_at.is_some(),
        "the first client says it was superseded\n{}",
        first.dump()
    );
    assert!(
        reconnects_after == 0 && reconnects_after_told == Some(0) && !reconnect_for_takeover,
        "a superseded client does not reconnect\n{}",
        first.dump()
    );
    assert_eq!(second_code, 0, "the second client\n{}", second.dump());
    assert_winners(&second, &agency);
    assert_eq!((lost, duplicates), (0, 0));
    assert_eq!(total, agency.bets);
}

// ---------------------------------------------------------------------------------
// 5. A full disk
// ---------------------------------------------------------------------------------

/// A tmpfs mounted on a directory, unmounted on drop (also when the test fails).
struct TmpfsMount {
    dir: PathBuf,
}

impl TmpfsMount {
    fn mount(dir: &Path, size: &str) -> TmpfsMount {
        fs::create_dir_all(dir).expect("create mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => TmpfsMount {
                dir: dir.to_path_buf(),
            },
            Ok(out) => panic!(
                "the disk-full test needs to mount a tmpfs (run as root, as CI does): \
                 `mount -t tmpfs -o size={size} tmpfs {}` failed with {}: {}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "the disk-full test needs to mount a tmpfs (run as root, as CI does): \
                 cannot run `mount`: {e}"
            ),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a child not reaped yet): detach it now, freed when unused.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Fills the file system of `path` with a file there, then gives back `leave` bytes.
fn fill_leaving(path: &Path, leave: u64) -> u64 {
    let mut file = File::create(path).expect("create filler");
    let chunk = vec![0xAAu8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("writing the filler: {e}"),
        }
    }
    let _ = file.flush();
    let keep = written.saturating_sub(leave);
    file.set_len(keep).expect("shrink filler");
    file.sync_all().expect("sync filler");
    keep
}

#[test]
fn disk_full_is_retried_until_space_returns() {
    let started = Instant::now();
    let dir = TempDir::new("faults-disk-full");
    let agency = Agency::write(dir.path(), 1, 20_000);
    let data_size = fs::metadata(&agency.path).expect("agency file").len();
    let mount = TmpfsMount::mount(&dir.join("disk"), "4m");
    let storage = mount.dir.join("bets.csv");
    let filler = mount.dir.join("filler");
    let filled = fill_leaving(&filler, 96 * 1024);
    println!(
        "disk_full: tmpfs 4m, filler {filled} bytes, ~96 KiB free, upload of {} bets (~{data_size} bytes of CSV)",
        agency.bets
    );
    let spec = ServerSpec::new(dir.path(), &storage, 1);
    let (mut server, addr) = spec.spawn("server");
    let mut client = start_client(
        1,
        addr,
        &agency.path,
        &[
            ("CLI_BATCH_MAX_AMOUNT", "50"),
            ("CLI_RETRY_DEADLINE", "60s"),
        ],
    );
    let full = wait_until(Instant::now() + Duration::from_secs(30), || {
        count_log(&server, "store_bets", "fail") >= 3
            && count_log(&client, "reconnect", "in_progress") >= 2
    });
    assert!(
        full,
        "no store_bets failure and client retry on a full disk\n{}{}",
        server.dump(),
        client.dump()
    );
    let stored_when_full = stored_by_log(&server, 1);
    let fails_when_full = count_log(&server, "store_bets", "fail");
    fs::remove_file(&filler).expect("remove filler");
    let freed_at = Instant::now();
    let code = exit_code_by(&mut client, Instant::now() + Duration::from_secs(60));
    assert_eq!(
        code,
        0,
        "client after the disk has space again\n{}",
        client.dump()
    );
    let after_free = freed_at.elapsed();
    stop(&mut server);
    assert_winners(&client, &agency);

    let fails = count_log(&server, "store_bets", "fail");
    let internal = client
        .stdout_lines()
        .iter()
        .filter(|l| l.contains("INTERNAL") || l.contains("could not store"))
        .count();
    let reconnects = count_log(&client, "reconnect", "in_progress");
    let retry_line = client
        .log_lines("reconnect", "in_progress")
        .first()
        .cloned()
        .unwrap_or_default();
    let fail_line = server
        .log_lines("store_bets", "fail")
        .first()
        .cloned()
        .unwrap_or_default();

    let expected = expected_multiset(&[&agency]);
    let got = stored_multiset(&storage);
    let (lost, duplicates) = diff_multisets(&expected, &got);
    let total: usize = got.values().sum();

    // The journal agrees: a fresh server on the same files reports the same count.
    let (mut fresh, _) = spec.spawn("server-reopen");
    let reopened: Vec<u64> = fresh
        .log_lines("storage_open", "success")
        .iter()
        .filter_map(|l| field(l, "bets").and_then(|b| b.parse().ok()))
        .collect();
    stop(&mut fresh);
    let journal = PathBuf::from(format!("{}.journal", storage.display()));
    let journal_len = fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);

    println!(
        "disk_full: stored when full:        {stored_when_full} bets ({fails_when_full} store_bets fails)"
    );
    println!("disk_full: first failure:           {fail_line}");
    println!("disk_full: store_bets fails:        {fails}");
    println!("disk_full: first client retry:      {retry_line}");
    println!("disk_full: client INTERNAL lines:   {internal}, reconnects {reconnects}");
    println!("disk_full: done after space freed:  {after_free:?}");
    println!(
        "disk_full: total stored:            {total} of {}",
        agency.bets
    );
    println!("disk_full: lost {lost}, duplicates {duplicates}");
    println!("disk_full: reopened storage_open:   bets {reopened:?}, journal {journal_len} bytes");
    println!(
        "disk_full: elapsed:                 {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(fails >= 3);
    assert!(reconnects >= 2);
    assert_eq!((lost, duplicates), (0, 0));
    assert_eq!(total, agency.bets);
    assert!(
        !reopened.is_empty(),
        "a storage_open line\n{}",
        fresh.dump()
    );
    assert!(
        reopened.iter().all(|&b| b == agency.bets as u64),
        "the reopened store reports {reopened:?} bets, the file holds {total}"
    );
    assert!(journal_len > 16, "a journal beside the bets file");
    drop(mount);
}
