//! The real `server` and `client` binaries as child processes, for the end-to-end
//! tests: spawn them with environment overrides, read their stdout/stderr lines on
//! background threads, wait for a log line or for the exit (always with a bounded
//! timeout, killing the child on timeout), send SIGTERM, and parse log lines.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loteria::bet::Bet;

/// The bound on every wait: a bug makes a test fail after this, never hang.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The `server` binary built by cargo for this test run.
pub const SERVER_EXE: &str = env!("CARGO_BIN_EXE_server");
/// The `client` binary built by cargo for this test run.
pub const CLIENT_EXE: &str = env!("CARGO_BIN_EXE_client");

/// `config/server.toml` of the repository.
pub fn server_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/server.toml")
}

/// `config/client.toml` of the repository.
pub fn client_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/client.toml")
}

/// Lines read from one pipe of a child, and whether the pipe has closed.
#[derive(Default)]
struct Captured {
    state: Mutex<Output>,
    changed: Condvar,
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: bool,
}

impl Captured {
    fn lock(&self) -> MutexGuard<'_, Output> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }
}

fn capture<R: Read + Send + 'static>(pipe: R, sink: Arc<Captured>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    sink.lock().lines.push(line);
                    sink.changed.notify_all();
                }
            }
        }
        sink.lock().closed = true;
        sink.changed.notify_all();
    })
}

/// A running (or finished) child process with its output captured line by line.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Arc<Captured>,
    stderr: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// A command for `exe` with a clean environment (only `PATH` and `RUST_BACKTRACE`
/// pass through) plus `env`, run in `cwd`.
pub fn command(exe: &str, args: &[&OsStr], env: &[(&str, &str)], cwd: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(args).env_clear().current_dir(cwd);
    for name in ["PATH", "RUST_BACKTRACE"] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

impl Proc {
    /// Spawns `cmd` with piped stdout and stderr; `name` labels failure messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        let stdout = Arc::new(Captured::default());
        let stderr = Arc::new(Captured::default());
        let readers = vec![
            capture(child.stdout.take().expect("piped stdout"), stdout.clone()),
            capture(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lines()
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lines()
    }

    /// Every stdout and stderr line so far.
    pub fn all_lines(&self) -> Vec<String> {
        let mut lines = self.stdout_lines();
        lines.extend(self.stderr_lines());
        lines
    }

    /// Stdout lines that carry `action: <action> | result: <result>`.
    pub fn log_lines(&self, action: &str, result: &str) -> Vec<String> {
        self.stdout_lines()
            .into_iter()
            .filter(|l| is_log(l, action, result))
            .collect()
    }

    /// Everything the child printed, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}\n",
            self.name,
            self.stdout_lines().join("\n"),
            self.name,
            self.stderr_lines().join("\n")
        )
    }

    /// Waits until stdout holds `count` lines matching `pred` and returns them. Fails
    /// if stdout closes (the process ended) first or after `timeout`.
    pub fn wait_for_lines(
        &self,
        what: &str,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = self.stdout.lock();
        loop {
            let found: Vec<String> = out.lines.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= count {
                return found;
            }
            let closed = out.closed;
            let now = Instant::now();
            if closed || now >= deadline {
                drop(out);
                panic!(
                    "{}: {} waiting for {count} line(s) {what} (found {})\n{}",
                    self.name,
                    if closed {
                        "stdout closed while"
                    } else {
                        "timed out"
                    },
                    found.len(),
                    self.dump()
                );
            }
            out = self
                .stdout
                .changed
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits (up to [`TIMEOUT`]) for a stdout line containing `needle`.
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_for_lines(&format!("containing {needle:?}"), 1, TIMEOUT, |l| {
            l.contains(needle)
        })
        .remove(0)
    }

    /// Waits for the exit; on timeout kills the child and fails. Afterwards all of its
    /// output has been read.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    self.drain(Duration::from_secs(5));
                    panic!(
                        "{} did not exit within {timeout:?}; killed\n{}",
                        self.name,
                        self.dump()
                    );
                }
                Err(e) => panic!("{}: wait failed: {e}", self.name),
            }
        };
        self.status = Some(status);
        self.drain(TIMEOUT);
        status
    }

    /// Waits (bounded) until both pipes have closed, then joins the reader threads.
    fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for pipe in [&self.stdout, &self.stderr] {
            let mut out = pipe.lock();
            while !out.closed {
                let now = Instant::now();
                if now >= deadline {
                    return; // Leave the readers detached rather than hang.
                }
                out = pipe
                    .changed
                    .wait_timeout(out, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// The exit code (waiting up to [`TIMEOUT`]); fails if a signal killed it.
    pub fn exit_code(&mut self) -> i32 {
        let status = self.wait_exit(TIMEOUT);
        match status.code() {
            Some(code) => code,
            None => panic!(
                "{} was killed by a signal ({status})\n{}",
                self.name,
                self.dump()
            ),
        }
    }

    /// Sends SIGTERM with `kill -TERM <pid>`.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `server` process on `127.0.0.1` with a free port and its bets file in a temp dir.
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its bets file.
    pub storage: PathBuf,
}

impl Server {
    /// Starts a server waiting for `agencies`, storing into `dir/bets.csv`.
    pub fn start(dir: &Path, agencies: u32) -> Server {
        Server::start_with(dir, agencies, &[])
    }

    /// As [`Server::start`], with more environment overrides.
    pub fn start_with(dir: &Path, agencies: u32, env: &[(&str, &str)]) -> Server {
        let storage = dir.join("bets.csv");
        let agencies = agencies.to_string();
        let storage_text = storage.to_str().expect("UTF-8 temp path").to_string();
        let mut vars: Vec<(&str, &str)> = vec![
            ("SERVER_HOST", "127.0.0.1"),
            ("SERVER_PORT", "0"),
            ("SERVER_AGENCIES", &agencies),
            ("SERVER_STORAGE", &storage_text),
            ("LOGGING_LEVEL", "INFO"),
        ];
        vars.extend_from_slice(env);
        let config = server_toml();
        let cmd = command(
            SERVER_EXE,
            &["--config".as_ref(), config.as_os_str()],
            &vars,
            dir,
        );
        let proc = Proc::spawn("server", cmd);
        let line = proc.wait_for("action: listen | result: success");
        let addr = field(&line, "address")
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        Server {
            proc,
            addr,
            storage,
        }
    }

    /// Sends SIGTERM and expects exit code 0.
    pub fn stop(&mut self) {
        self.proc.sigterm();
        let code = self.proc.exit_code();
        assert_eq!(code, 0, "server exit code\n{}", self.proc.dump());
    }
}

/// Starts a `client` for agency `id` of `server`, uploading `data`, with more
/// environment overrides in `env` (later entries win).
pub fn start_client(id: u32, addr: SocketAddr, data: &Path, env: &[(&str, &str)]) -> Proc {
    let id_text = id.to_string();
    let addr_text = addr.to_string();
    let data_text = data.to_str().expect("UTF-8 temp path").to_string();
    let mut vars: Vec<(&str, &str)> = vec![
        ("CLI_ID", &id_text),
        ("CLI_SERVER_ADDRESS", &addr_text),
        ("CLI_DATA", &data_text),
        ("CLI_LOG_LEVEL", "INFO"),
        ("CLI_CONNECT_TIMEOUT", "10s"),
    ];
    vars.extend_from_slice(env);
    start_client_env(&format!("client{id}"), &vars)
}

/// Starts a `client` with `--config config/client.toml` and exactly `env`.
pub fn start_client_env(name: &str, env: &[(&str, &str)]) -> Proc {
    let config = client_toml();
    let cwd = std::env::temp_dir();
    let cmd = command(
        CLIENT_EXE,
        &["--config".as_ref(), config.as_os_str()],
        env,
        &cwd,
    );
    Proc::spawn(name, cmd)
}

/// Runs `exe` with `args` and `env` to completion (bounded) and returns it.
pub fn run_to_end(name: &str, exe: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let cmd = command(exe, &args, env, &std::env::temp_dir());
    let mut proc = Proc::spawn(name, cmd);
    proc.wait_exit(TIMEOUT);
    proc
}

/// A loopback address where nothing listens, with the socket that keeps it reserved.
pub fn unused_addr() -> (socket2::Socket, SocketAddr) {
    // Bound but never listening: connecting is refused, and no other test's `bind(0)`
    // can take the port while the returned socket is alive.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind loopback");
    let addr = socket
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("an inet address");
    (socket, addr)
}

/// Whether `line` is the log line `action: <action> | result: <result> | …`.
pub fn is_log(line: &str, action: &str, result: &str) -> bool {
    let wanted = format!("action: {action} | result: {result}");
    match line.find(&wanted) {
        Some(i) => {
            let rest = &line[i + wanted.len()..];
            rest.is_empty() || rest.starts_with(" |")
        }
        None => false,
    }
}

/// The value of `key` in a log line `… action: a | result: r | key: value | …`.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find("action: ")?;
    line[start..]
        .split(" | ")
        .filter_map(|part| part.split_once(": "))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The bets file read back in order as (agency, bet); empty if it does not exist.
pub fn stored_bets(path: &Path) -> Vec<(u32, Bet)> {
    let mut rows = Vec::new();
    if path.exists() {
        loteria::storage::for_each_stored(path, |agency, bet| rows.push((agency, bet)))
            .expect("bets file readable");
    }
    rows
}

/// A bet as a comparable row: (agency, first, last, document, birthdate, number).
pub type Row = (u32, String, String, String, String, u16);

/// `bet` of `agency` as a [`Row`].
pub fn row(agency: u32, bet: &Bet) -> Row {
    (
        agency,
        bet.first_name.clone(),
        bet.last_name.clone(),
        bet.document.clone(),
        bet.birthdate.format("%Y-%m-%d").to_string(),
        bet.number,
    )
}

/// Counts each distinct row.
pub fn multiset(rows: impl IntoIterator<Item = Row>) -> BTreeMap<Row, usize> {
    let mut counts = BTreeMap::new();
    for r in rows {
        *counts.entry(r).or_insert(0) += 1;
    }
    counts
}

/// The stored rows of the bets file.
pub fn stored_multiset(path: &Path) -> BTreeMap<Row, usize> {
    multiset(stored_bets(path).iter().map(|(a, b)| row(*a, b)))
}
