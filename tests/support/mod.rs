//! Helpers shared by the integration tests: temporary directories, an in-process
//! server on `127.0.0.1:0`, a raw protocol peer, and test data.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::NaiveDate;
use loteria::bet::Bet;
use loteria::config::{LogLevel, ServerConfig};
use loteria::connection::Connection;
use loteria::protocol::Message;
use loteria::server::{self, ServerError};
use loteria::shutdown::Shutdown;
use loteria::storage::{CsvJournalStore, Faults, StorageError, Store};

/// The course dataset: the repository's copy in `tests/data/tp0` (see its README), or
/// the directory named by `LOTERIA_DATASET`.
pub fn dataset_dir() -> PathBuf {
    match std::env::var_os("LOTERIA_DATASET") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tp0"),
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loteria-test-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A server configuration for tests: loopback, any port, storage in `dir`.
pub fn server_config(dir: &Path, agencies: u32) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        listen_backlog: 128,
        io_timeout: Duration::from_secs(30),
        max_connections: 512,
        log_level: LogLevel {
            name: "INFO".into(),
            filter: log::LevelFilter::Info,
        },
        agencies,
        winning_number: 7574,
        storage_path: dir.join("bets.csv"),
        status_port: None,
        tls: Default::default(),
        tls_required: false,
    }
}

/// A client configuration for in-process runs (`loteria::client::run`): agency `id`
/// uploading `data` to `addr`, with short timeouts, TLS off.
pub fn client_config(addr: SocketAddr, id: u32, data: &Path) -> loteria::config::ClientConfig {
    loteria::config::ClientConfig {
        id,
        mode: loteria::config::Mode::Bets,
        data: data.to_path_buf(),
        server_address: addr.to_string(),
        connect_timeout: Duration::from_secs(5),
        retry_deadline: Duration::from_secs(10),
        io_timeout: Duration::from_secs(20),
        loop_amount: 0,
        loop_period: Duration::ZERO,
        log_level: LogLevel {
            name: "INFO".into(),
            filter: log::LevelFilter::Info,
        },
        batch_max_amount: 100,
        batch_window: 32,
        single_bet: None,
        tls: Default::default(),
    }
}

/// Opens the CSV + journal store at `path` with `faults`, as a restarted server would.
///
/// The store's lock is a `flock`, held by the open file description. While another
/// test of the same binary spawns a process, the child holds a copy of every open
/// descriptor between its fork and its exec (close-on-exec closes them only at exec),
/// so a store that this process has just closed can still read as locked for that
/// instant. Only `Locked` is retried, for at most two seconds; any other error, or a
/// lock that lasts, is returned.
pub fn reopen_store(path: &Path, faults: Faults) -> Result<CsvJournalStore, StorageError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match CsvJournalStore::open_with_faults(path, faults.clone()) {
            Err(StorageError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// `server::run` on its own thread, stopped (and joined) on `stop` or drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub storage: PathBuf,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// Opens the CSV + journal store at `config.storage_path` (failing the test at once,
    /// naming the error, if it cannot be opened) and serves it on its own thread.
    pub fn start(config: ServerConfig) -> TestServer {
        let store = reopen_store(&config.storage_path, Faults::none())
            .unwrap_or_else(|e| panic!("open the test server's store: {e}"));
        TestServer::start_with_store(config, Box::new(store))
    }

    /// `server::run_with_store` over `store` on its own thread.
    pub fn start_with_store(config: ServerConfig, store: Box<dyn Store>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = Shutdown::new();
        let storage = config.storage_path.clone();
        let s = shutdown.clone();
        let thread =
            std::thread::spawn(move || server::run_with_store(listener, &config, &s, store));
        TestServer {
            addr,
            shutdown,
            storage,
            thread: Some(thread),
        }
    }

    /// Triggers shutdown and waits for `run` to return.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.shutdown.trigger();
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("server thread panicked")
    }

    /// The stored rows, parsed (agency, document, number).
    pub fn stored(&self) -> Vec<(u32, String, u16)> {
        stored_rows(&self.storage)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shutdown.trigger();
            let _ = thread.join();
        }
    }
}

/// Reads a bets file back as (agency, document, number) rows.
pub fn stored_rows(path: &Path) -> Vec<(u32, String, u16)> {
    let mut rows = Vec::new();
    if !path.exists() {
        return rows;
    }
    loteria::storage::for_each_stored(path, |agency, bet| {
        rows.push((agency, bet.document, bet.number))
    })
    .expect("bets file readable");
    rows
}

/// What a `WELCOME` reports about an agency's durable progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub upload: u64,
    pub stored_seq: u64,
    pub stored_bets: u64,
    pub stored_line: u64,
    pub finished: bool,
    pub drawn: bool,
}

impl Progress {
    /// Nothing stored yet for `upload`, not finished, no draw.
    pub fn fresh(upload: u64) -> Progress {
        Progress {
            upload,
            stored_seq: 0,
            stored_bets: 0,
            stored_line: 0,
            finished: false,
            drawn: false,
        }
    }
}

/// The `WELCOME` of an agency that has stored nothing yet under `upload`.
pub fn fresh_welcome(agency: u32, upload: u64) -> Message {
    Message::Welcome {
        agency,
        upload,
        stored_seq: 0,
        stored_bets: 0,
        stored_line: 0,
        finished: false,
        drawn: false,
    }
}

/// A raw protocol peer: sends exactly what a test says and reads replies.
pub struct Peer {
    pub conn: Connection,
}

impl Peer {
    pub fn connect(addr: SocketAddr) -> Peer {
        let stream = TcpStream::connect(addr).expect("connect");
        let mut conn = Connection::new(stream).expect("wrap");
        conn.set_timeouts(Some(Duration::from_secs(20)))
            .expect("timeouts");
        Peer { conn }
    }

    /// Connects and runs the TLS handshake with `tls`, the server named `localhost`.
    pub fn connect_tls(addr: SocketAddr, tls: &loteria::tls::ClientTls) -> Peer {
        Peer::try_connect_tls(addr, tls).expect("TLS handshake")
    }

    /// Like [`Peer::connect_tls`], returning a failed handshake.
    pub fn try_connect_tls(
        addr: SocketAddr,
        tls: &loteria::tls::ClientTls,
    ) -> Result<Peer, loteria::connection::ConnectionError> {
        let mut peer = Peer::connect(addr);
        let name = loteria::tls::server_name("localhost:1").expect("a name");
        peer.conn.connect_tls(tls.config(), name)?;
        Ok(peer)
    }

    pub fn send(&mut self, message: &Message) {
        self.conn.write_message(message).expect("send");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let mut stream = self.conn.stream();
        stream.write_all(bytes).expect("send bytes");
    }

    /// The next reply, or `None` if the server closed the connection. `DRAW_PENDING`
    /// frames (the server's keep-alive to an agency waiting for the draw, every
    /// `PENDING_INTERVAL`) are skipped; [`Peer::recv_any`] returns them too.
    pub fn recv(&mut self) -> Option<Message> {
        loop {
            match self.recv_any() {
                Some(Message::DrawPending { finished, agencies }) => {
                    assert!(finished <= agencies, "DRAW_PENDING {finished}/{agencies}");
                }
                other => return other,
            }
        }
    }

    /// The next frame the server sent, whatever it is; `None` once it closed.
    pub fn recv_any(&mut self) -> Option<Message> {
        self.conn.read_message().expect("a well-formed reply")
    }

    /// Sends `STATUS_QUERY` and puts the answer's chunks back together (checking that
    /// they form one whole answer); also returns how many chunks there were.
    pub fn status(&mut self) -> (loteria::protocol::StatusSnapshot, usize) {
        self.send(&Message::StatusQuery);
        let mut chunks = Vec::new();
        loop {
            match self.recv() {
                Some(Message::Status(chunk)) => {
                    let last = chunk.last;
                    chunks.push(chunk);
                    if last {
                        break;
                    }
                }
                other => panic!("expected STATUS, got {other:?}"),
            }
        }
        let snapshot = loteria::protocol::StatusSnapshot::from_chunks(&chunks)
            .unwrap_or_else(|| panic!("the chunks are not one answer: {chunks:?}"));
        (snapshot, chunks.len())
    }

    pub fn request(&mut self, message: &Message) -> Message {
        self.send(message);
        self.recv().expect("a reply")
    }

    /// Sends `HELLO(agency, upload)` on this connection and expects a `WELCOME` for
    /// `agency`; returns what it reports.
    pub fn say_hello(&mut self, agency: u32, upload: u64) -> Progress {
        match self.request(&Message::Hello { agency, upload }) {
            Message::Welcome {
                agency: got,
                upload,
                stored_seq,
                stored_bets,
                stored_line,
                finished,
                drawn,
            } if got == agency => Progress {
                upload,
                stored_seq,
                stored_bets,
                stored_line,
                finished,
                drawn,
            },
            other => panic!("expected WELCOME for agency {agency}, got {other:?}"),
        }
    }

    /// Connects and binds to `agency` with upload id 0 (any stored progress).
    pub fn hello(addr: SocketAddr, agency: u32) -> Peer {
        Peer::hello_upload(addr, agency, 0).0
    }

    /// Connects and binds to `agency` with `upload`; returns the peer and the
    /// `WELCOME`'s progress.
    pub fn hello_upload(addr: SocketAddr, agency: u32, upload: u64) -> (Peer, Progress) {
        let mut peer = Peer::connect(addr);
        let progress = peer.say_hello(agency, upload);
        (peer, progress)
    }

    /// Sends one batch (from no file: `line` 0) and expects its acknowledgement.
    pub fn store(&mut self, seq: u64, bets: Vec<Bet>) {
        self.store_at(seq, 0, bets);
    }

    /// Sends one batch ending at file line `line` and expects its acknowledgement.
    pub fn store_at(&mut self, seq: u64, line: u64, bets: Vec<Bet>) {
        let count = bets.len() as u16;
        assert_eq!(
            self.request(&Message::Bets { seq, line, bets }),
            Message::BetsAck { seq, count }
        );
    }

    /// Sends FIN and expects FIN_ACK.
    pub fn fin(&mut self) -> (u32, u32) {
        match self.request(&Message::Fin) {
            Message::FinAck { finished, agencies } => (finished, agencies),
            other => panic!("expected FIN_ACK, got {other:?}"),
        }
    }

    /// Asks for the winners and collects every chunk.
    pub fn winners(&mut self) -> Vec<String> {
        self.send(&Message::WinnersQuery);
        let mut all = Vec::new();
        loop {
            match self.recv() {
                Some(Message::Winners { last, documents }) => {
                    all.extend(documents);
                    if last {
                        return all;
                    }
                }
                other => panic!("expected WINNERS, got {other:?}"),
            }
        }
    }
}

pub fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
}

pub fn bet(first: &str, document: &str, number: u16) -> Bet {
    Bet {
        first_name: first.into(),
        last_name: "Pérez".into(),
        document: document.into(),
        birthdate: date(1990, 5, 17),
        number,
    }
}

/// Writes bets as an agency file (LF line ends).
pub fn write_agency_file(path: &Path, bets: &[Bet]) {
    let mut text = String::new();
    for b in bets {
        text.push_str(&format!(
            "{},{},{},{},{}\n",
            b.first_name,
            b.last_name,
            b.document,
            b.birthdate.format("%Y-%m-%d"),
            b.number
        ));
    }
    fs::write(path, text).expect("write agency file");
}

/// A deterministic mock data set: `per_agency[i]` bets for agency `i + 1`, where
/// every `winner_every`-th bet plays the winning number 7574. Returns the bets and the
/// expected winners' documents per agency.
pub fn mock_agencies(per_agency: &[usize], winner_every: usize) -> Vec<(Vec<Bet>, Vec<String>)> {
    per_agency
        .iter()
        .enumerate()
        .map(|(a, &n)| {
            let mut winners = Vec::new();
            let bets = (0..n)
                .map(|i| {
                    let document = format!("{}{:06}", a + 1, i);
                    let number = if i % winner_every == winner_every - 1 {
                        winners.push(document.clone());
                        7574
                    } else {
                        (i % 7574) as u16
                    };
                    bet(&format!("Agencia{} Núñez {i}", a + 1), &document, number)
                })
                .collect();
            (bets, winners)
        })
        .collect()
}
pub mod certs;
pub mod process;
pub mod shm;
pub mod wire;

/// A loopback port that was free a moment ago (for `status_port`, which takes a
/// number, not a listener).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
        .port()
}

/// An HTTP answer: status code, head (status line and headers) and body.
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `method path` over a plain `TcpStream` to `addr` (HTTP/1.1, `Connection: close`),
/// read to the end.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> HttpAnswer {
    use std::io::Read;
    let mut stream = TcpStream::connect(addr).expect("connect to the status page");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpAnswer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `GET path` (see [`http_request`]).
pub fn http_get(addr: SocketAddr, path: &str) -> HttpAnswer {
    http_request(addr, "GET", path)
}

/// The value of the Prometheus sample `series` (name with its labels) in `text`.
pub fn prom_value(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Writes one agency file per entry of `agencies` (as [`mock_agencies`] makes them) into
/// `dir`: `agency-1.csv`, `agency-2.csv`, …
pub fn write_files(dir: &TempDir, agencies: &[(Vec<Bet>, Vec<String>)]) -> Vec<PathBuf> {
    agencies
        .iter()
        .enumerate()
        .map(|(i, (bets, _))| {
            let path = dir.join(&format!("agency-{}.csv", i + 1));
            write_agency_file(&path, bets);
            path
        })
        .collect()
}

/// Reads a bets file back as whole bets, each with its agency (names and birthdate
/// included, to check that what was stored is exactly what was sent).
pub fn stored_whole_bets(path: &Path) -> Vec<(u32, Bet)> {
    let mut rows = Vec::new();
    if !path.exists() {
        return rows;
    }
    loteria::storage::for_each_stored(path, |agency, bet| rows.push((agency, bet)))
        .expect("bets file readable");
    rows
}
