//! Configuration: TOML files under `config/`, overridden by environment variables.
//!
//! Every key is listed in [`SERVER_KEYS`] / [`CLIENT_KEYS`] with its environment
//! variable and default; `README.md` documents the same table. A value that is missing
//! (for a key with no default) or invalid stops the program with a [`ConfigError`]
//! naming the key, where it came from and the bad value. Unknown keys in a file are
//! errors too, so a typo never goes unnoticed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

use crate::bet::{AgencyId, Bet, BetError, MAX_NUMBER};
use crate::logging::sanitize;
use crate::tls::TlsFiles;

/// One configuration key: its TOML path, environment variable and default.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Dotted TOML path, e.g. `server.port`.
    pub path: &'static str,
    /// The environment variable that overrides it.
    pub env: &'static str,
    /// The default, or `None` when the key is required.
    pub default: Option<&'static str>,
    /// What the key does.
    pub doc: &'static str,
}

const fn key(
    path: &'static str,
    env: &'static str,
    default: Option<&'static str>,
    doc: &'static str,
) -> Key {
    Key {
        path,
        env,
        default,
        doc,
    }
}

/// Every server key (`config/server.toml`).
pub const SERVER_KEYS: &[Key] = &[
    key(
        "server.host",
        "SERVER_HOST",
        Some("0.0.0.0"),
        "address to listen on",
    ),
    key(
        "server.port",
        "SERVER_PORT",
        None,
        "TCP port to listen on (0: any free port)",
    ),
    key(
        "server.listen_backlog",
        "SERVER_LISTEN_BACKLOG",
        Some("128"),
        "pending-connection queue length",
    ),
    key(
        "server.io_timeout",
        "SERVER_IO_TIMEOUT",
        Some("60s"),
        "an agency idle this long is disconnected; also bounds each write",
    ),
    key(
        "server.max_connections",
        "SERVER_MAX_CONNECTIONS",
        Some("512"),
        "connections served at once that own no agency (no HELLO yet); more are refused with SERVER_BUSY, and each refusal closes the oldest one open two io_timeouts. An agency's own connection is not counted: at most this + lottery.agencies are open",
    ),
    key(
        "log.level",
        "LOGGING_LEVEL",
        Some("INFO"),
        "TRACE, DEBUG, INFO, WARN or ERROR",
    ),
    key(
        "lottery.agencies",
        "SERVER_AGENCIES",
        None,
        "agencies to wait for before the draw (ids 1..=N)",
    ),
    key(
        "lottery.winning_number",
        "SERVER_WINNING_NUMBER",
        Some("7574"),
        "the number that wins, 0..=9999",
    ),
    key(
        "storage.path",
        "SERVER_STORAGE",
        Some("data/bets.csv"),
        "the bets file (CSV, appended)",
    ),
    key(
        "status.http_port",
        "SERVER_STATUS_PORT",
        Some("0"),
        "HTTP port on server.host of the live status page (/), Prometheus metrics (/metrics) and /status.json; 0: off",
    ),
    key(
        "tls.ca",
        "SERVER_TLS_CA",
        Some(""),
        "the lottery CA's certificate (PEM) that every agency's certificate must chain to; with tls.cert and tls.key turns TLS on (empty: off, agencies are not authenticated)",
    ),
    key(
        "tls.cert",
        "SERVER_TLS_CERT",
        Some(""),
        "the server's certificate chain (PEM), e.g. certs/server.pem from make certs",
    ),
    key(
        "tls.key",
        "SERVER_TLS_KEY",
        Some(""),
        "the server's private key (PEM), e.g. certs/server.key",
    ),
    key(
        "tls.required",
        "SERVER_TLS_REQUIRED",
        Some("auto"),
        "true: HELLO, BETS, FIN and WINNERS_QUERY in the clear get TLS_REQUIRED (echo and status still work in the clear); false: agencies may also come in the clear, unauthenticated; auto: true when TLS is on",
    ),
];

/// Every client key (`config/client.toml`).
pub const CLIENT_KEYS: &[Key] = &[
    key("id", "CLI_ID", None, "this agency's id, 1..=N"),
    key(
        "mode",
        "CLI_MODE",
        Some("bets"),
        "\"bets\" (upload the agency file, or the single bet of NOMBRE … NUMERO when all five are set), \"echo\", or \"status\" (print the lottery's progress, every loop.period for loop.amount times; 0: once); echo and status ignore the single-bet variables (one WARN line names them)",
    ),
    key(
        "data",
        "CLI_DATA",
        Some("agencies/agency-<id>.csv"),
        "the agency's bets file",
    ),
    key(
        "server.address",
        "CLI_SERVER_ADDRESS",
        None,
        "server host:port",
    ),
    key(
        "server.connect_timeout",
        "CLI_CONNECT_TIMEOUT",
        Some("10s"),
        "how long one connection attempt may take",
    ),
    key(
        "server.retry_deadline",
        "CLI_RETRY_DEADLINE",
        Some("300s"),
        "how long to keep reconnecting while no session makes progress before giving up",
    ),
    key(
        "server.io_timeout",
        "CLI_IO_TIMEOUT",
        Some("60s"),
        "how long to wait for each reply; while waiting for the draw, the longest silence (at least 6s) before the server counts as gone",
    ),
    key(
        "loop.amount",
        "CLI_LOOP_AMOUNT",
        Some("5"),
        "echo: messages to send; status: queries (0 or 1: once)",
    ),
    key(
        "loop.period",
        "CLI_LOOP_PERIOD",
        Some("1s"),
        "pause between echo messages or status queries",
    ),
    key(
        "log.level",
        "CLI_LOG_LEVEL",
        Some("INFO"),
        "TRACE, DEBUG, INFO, WARN or ERROR",
    ),
    key(
        "batch.max_amount",
        "CLI_BATCH_MAX_AMOUNT",
        Some("200"),
        "bets per batch at most (a batch also stays under 8 KiB)",
    ),
    key(
        "batch.window",
        "CLI_BATCH_WINDOW",
        Some("64"),
        "batches sent ahead of their acknowledgements, 1..=1024 (1: wait for each ACK)",
    ),
    key(
        "tls.ca",
        "CLI_TLS_CA",
        Some(""),
        "the lottery CA's certificate (PEM) the server's certificate must chain to; set: TLS on (empty: off, in the clear)",
    ),
    key(
        "tls.cert",
        "CLI_TLS_CERT",
        Some(""),
        "this agency's certificate (PEM), valid for the name agency-<id>, e.g. certs/agency-<id>.pem (with tls.key; without them only status and echo work over TLS)",
    ),
    key(
        "tls.key",
        "CLI_TLS_KEY",
        Some(""),
        "this agency's private key (PEM), e.g. certs/agency-<id>.key",
    ),
];

/// The most agencies a lottery may have (`lottery.agencies`); the client refuses a
/// `STATUS` answer for more.
pub const MAX_AGENCIES: u32 = 1_000_000;

/// The largest `batch.window`: batches one client keeps in flight (each at most one
/// frame, so at most 8 MiB unacknowledged).
pub const MAX_BATCH_WINDOW: u16 = 1024;

/// The environment variables of single-bet mode, in order.
pub const SINGLE_BET_VARS: [&str; 5] = ["NOMBRE", "APELLIDO", "DOCUMENTO", "NACIMIENTO", "NUMERO"];

/// A configuration problem; its `Display` names the key and the bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A required key has no value.
    Missing {
        /// The key.
        key: &'static str,
        /// Its environment variable.
        env: &'static str,
    },
    /// Some of the single-bet variables are set and these are not.
    SingleBetIncomplete {
        /// The variables that are missing, in [`SINGLE_BET_VARS`] order.
        missing: Vec<&'static str>,
    },
    /// A value is not acceptable.
    Invalid {
        /// The key (or environment variable) at fault.
        key: String,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, reason } => {
                write!(f, "cannot read config file {}: {reason}", path.display())
            }
            ConfigError::Parse { path, reason } => {
                write!(
                    f,
                    "invalid config file {}: {}",
                    path.display(),
                    reason.trim_end()
                )
            }
            ConfigError::Missing { key, env } => {
                write!(
                    f,
                    "missing config value {key} (set it in the file or with {env})"
                )
            }
            ConfigError::SingleBetIncomplete { missing } => {
                let verb = if missing.len() == 1 { "is" } else { "are" };
                write!(
                    f,
                    "{} {verb} missing: single-bet mode needs {} (or none of them, to upload the agency file)",
                    and_list(missing),
                    and_list(&SINGLE_BET_VARS)
                )
            }
            ConfigError::Invalid { key, value, reason } => {
                write!(f, "invalid value {value:?} for {key}: {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// `A`, `A and B`, `A, B and C`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [only] => (*only).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The edit distance between `a` and `b` (insertions, deletions, substitutions and
/// swaps of two neighbours each count 1), ignoring ASCII case.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    // rows[i][j]: the distance between the first i chars of a and the first j of b.
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The known name closest to `unknown`, if one is close enough to be a typo (or has
/// the same last part, e.g. `port` for `server.port`).
fn nearest<'k>(unknown: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let last = |name: &str| {
        name.rsplit('.')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let allowed = (unknown.chars().count() / 4).clamp(1, 3);
    known
        .into_iter()
        .map(|name| {
            let distance = edit_distance(unknown, name);
            let same_last = last(name) == last(unknown);
            (distance, same_last, name)
        })
        .filter(|&(distance, same_last, _)| distance <= allowed || same_last)
        .min_by_key(|&(distance, same_last, _)| (!same_last && distance > allowed, distance))
        .map(|(_, _, name)| name)
}

/// The `line L, column C: message` of a TOML error, on one line.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .unwrap_or_default()
                .chars()
                .count()
                + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// A log level as written in the config, with its filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel {
    /// The text as written (printed back in the `config` log line).
    pub name: String,
    /// The filter it means.
    pub filter: LevelFilter,
}

/// What the client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Upload the agency file, notify the end, receive the winners.
    Bets,
    /// Send `loop.amount` echo messages.
    Echo,
    /// Print the lottery's progress (a status query), once or every `loop.period`.
    Status,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Bets => "bets",
            Mode::Echo => "echo",
            Mode::Status => "status",
        })
    }
}

/// The server's effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Listen queue length.
    pub listen_backlog: i32,
    /// Idle/write timeout per connection.
    pub io_timeout: Duration,
    /// Connections served at once that own no agency (each agency's own connection,
    /// the last to say `HELLO` for it, is not counted).
    pub max_connections: usize,
    /// Log level.
    pub log_level: LogLevel,
    /// Agencies to wait for.
    pub agencies: u32,
    /// The winning number.
    pub winning_number: u16,
    /// The bets file.
    pub storage_path: PathBuf,
    /// Port of the HTTP status page and metrics; `None` when off (`0`).
    pub status_port: Option<u16>,
    /// The TLS material (`[tls] ca, cert, key`): all three, or none (TLS off).
    pub tls: TlsFiles,
    /// Whether agencies must come over TLS (`tls.required`; only with TLS on).
    pub tls_required: bool,
}

/// The client's effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// This agency's id.
    pub id: AgencyId,
    /// Bets or echo.
    pub mode: Mode,
    /// The agency file.
    pub data: PathBuf,
    /// Server `host:port`.
    pub server_address: String,
    /// The bound of one connection attempt.
    pub connect_timeout: Duration,
    /// How long to keep reconnecting while no session makes progress before giving up.
    pub retry_deadline: Duration,
    /// Wait for each reply.
    pub io_timeout: Duration,
    /// Echo messages to send.
    pub loop_amount: u64,
    /// Pause between echo messages.
    pub loop_period: Duration,
    /// Log level.
    pub log_level: LogLevel,
    /// Bets per batch at most.
    pub batch_max_amount: u16,
    /// Batches sent and not yet acknowledged, at most (1: stop-and-wait).
    pub batch_window: u16,
    /// The bet of single-bet mode (`NOMBRE` … `NUMERO` all set, in bets mode only).
    pub single_bet: Option<Bet>,
    /// The TLS material (`[tls] ca, cert, key`): `ca` turns TLS on; `cert` and `key`
    /// come together.
    pub tls: TlsFiles,
}

/// Reads a key's value: the environment variable first, then the file, then the default.
struct Source<'a> {
    file: toml::Table,
    env: &'a dyn Fn(&str) -> Option<String>,
    keys: &'static [Key],
}

impl Source<'_> {
    fn load<'a>(
        path: &Path,
        env: &'a dyn Fn(&str) -> Option<String>,
        keys: &'static [Key],
    ) -> Result<Source<'a>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let file: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: toml_error(&text, &e),
        })?;
        let source = Source { file, env, keys };
        source.reject_unknown_keys(path)?;
        Ok(source)
    }

    /// Every unknown or misplaced key of the file, all in one error (a user with two
    /// typos fixes both at once).
    fn reject_unknown_keys(&self, path: &Path) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.collect_unknown_keys(&self.file, "", &mut problems);
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Parse {
            path: path.to_path_buf(),
            reason: problems.join("; and "),
        })
    }

    fn collect_unknown_keys(&self, table: &toml::Table, prefix: &str, problems: &mut Vec<String>) {
        for (name, value) in table {
            let full = format!("{prefix}{name}");
            let section = format!("{full}.");
            let is_key = self.keys.iter().any(|k| k.path == full);
            let is_section = self.keys.iter().any(|k| k.path.starts_with(&section));
            let misplaced = match value {
                toml::Value::Table(inner) if is_section => {
                    self.collect_unknown_keys(inner, &section, problems);
                    continue;
                }
                toml::Value::Table(_) if is_key => {
                    Some(format!("{full} must be a value, not a table"))
                }
                toml::Value::Table(_) => None,
                _ if is_key => continue,
                _ if is_section => Some(format!(
                    "{full} must be a table ([{full}] and its keys), not a value"
                )),
                _ => None,
            };
            if let Some(reason) = misplaced {
                problems.push(reason);
                continue;
            }
            let sections: Vec<&str> = self
                .keys
                .iter()
                .filter_map(|k| k.path.rsplit_once('.').map(|(section, _)| section))
                .collect();
            problems.push(if value.is_table() {
                match nearest(&full, sections) {
                    Some(known) => format!("unknown section [{full}]; did you mean [{known}]?"),
                    None => format!("unknown section [{full}]"),
                }
            } else {
                match nearest(&full, self.keys.iter().map(|k| k.path)) {
                    Some(known) => format!("unknown key {full}; did you mean {known}?"),
                    None => format!("unknown key {full}"),
                }
            });
        }
    }

    fn spec(&self, path: &str) -> Key {
        // Every caller passes a path from `self.keys`; a miss is a programming error
        // caught by the unit tests, and falls back to a key that is always "missing".
        self.keys
            .iter()
            .copied()
            .find(|k| k.path == path)
            .unwrap_or(key("?", "?", None, ""))
    }

    /// The raw text of a key and the name to blame if it is bad.
    fn raw(&self, path: &str) -> Result<(String, String), ConfigError> {
        let spec = self.spec(path);
        if let Some(value) = (self.env)(spec.env) {
            return Ok((value, spec.env.to_string()));
        }
        let mut node: Option<&toml::Value> = None;
        let mut table = &self.file;
        for part in spec.path.split('.') {
            node = table.get(part);
            match node {
                Some(toml::Value::Table(inner)) => table = inner,
                _ => break,
            }
        }
        match node {
            Some(toml::Value::String(s)) => Ok((s.clone(), spec.path.to_string())),
            Some(toml::Value::Table(_)) | None => match spec.default {
                Some(default) => Ok((default.to_string(), spec.path.to_string())),
                None => Err(ConfigError::Missing {
                    key: spec.path,
                    env: spec.env,
                }),
            },
            Some(other) => Ok((other.to_string(), spec.path.to_string())),
        }
    }

    fn get<T>(
        &self,
        path: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let (value, key) = self.raw(path)?;
        parse(value.trim()).map_err(|reason| ConfigError::Invalid { key, value, reason })
    }
}

fn int<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    move |s| match s.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// Parses a duration written as a whole number with a unit: `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let bad = || format!("expected a duration such as 100ms, 5s, 2m or 1h, got {s:?}");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

/// Formats a duration the way the log lines show it: `100ms`, `5s`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

fn log_level(s: &str) -> Result<LogLevel, String> {
    let filter = match s.to_ascii_uppercase().as_str() {
        "TRACE" => LevelFilter::Trace,
        "DEBUG" => LevelFilter::Debug,
        "INFO" => LevelFilter::Info,
        "WARN" | "WARNING" => LevelFilter::Warn,
        "ERROR" => LevelFilter::Error,
        "OFF" => LevelFilter::Off,
        _ => return Err("expected TRACE, DEBUG, INFO, WARN, ERROR or OFF".into()),
    };
    Ok(LogLevel {
        name: s.to_string(),
        filter,
    })
}

/// A path value: refused with a control character, since paths are printed in log
/// lines (storage, recovery, TLS, errors) and a line break would split them.
fn path_value(s: &str) -> Result<PathBuf, String> {
    if s.chars().any(char::is_control) {
        return Err("a path with a control character (a line break, a tab, …) is refused".into());
    }
    Ok(PathBuf::from(s))
}

/// An optional path: empty is unset.
fn optional_path(s: &str) -> Result<Option<PathBuf>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        path_value(s).map(Some)
    }
}

/// The `[tls]` paths, checked to go together: `cert` and `key` both or neither; the
/// server needs all three or none (it checks agencies against `ca` and shows its own
/// certificate), the client needs `ca` for anything (it checks the server).
fn tls_files(src: &Source<'_>, server: bool) -> Result<TlsFiles, ConfigError> {
    let files = TlsFiles {
        ca: src.get("tls.ca", optional_path)?,
        cert: src.get("tls.cert", optional_path)?,
        key: src.get("tls.key", optional_path)?,
    };
    let blame = |path: &str, reason: String| -> Result<TlsFiles, ConfigError> {
        let (value, key) = src.raw(path)?;
        Err(ConfigError::Invalid { key, value, reason })
    };
    match (&files.ca, &files.cert, &files.key) {
        (_, Some(_), None) => blame("tls.cert", "tls.key must be set with tls.cert".into()),
        (_, None, Some(_)) => blame("tls.key", "tls.cert must be set with tls.key".into()),
        (None, Some(_), Some(_)) => blame(
            "tls.cert",
            if server {
                "tls.ca must be set too: the server checks every agency's certificate against it"
            } else {
                "tls.ca must be set too: the client checks the server's certificate against it"
            }
            .into(),
        ),
        (Some(_), None, None) if server => blame(
            "tls.ca",
            "tls.cert and tls.key must be set too: the server shows its own certificate".into(),
        ),
        _ => Ok(files),
    }
}

impl ServerConfig {
    /// Loads `path`, with overrides from the process environment.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        ServerConfig::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// Loads `path`, with overrides from `env` (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServerConfig, ConfigError> {
        let src = Source::load(path, env, SERVER_KEYS)?;
        Ok(ServerConfig {
            host: src.get("server.host", non_empty)?,
            port: src.get("server.port", int(0, u16::MAX))?,
            listen_backlog: src.get("server.listen_backlog", int(1, 65_535))?,
            io_timeout: src.get("server.io_timeout", positive_duration)?,
            max_connections: src.get("server.max_connections", int(1, 100_000))?,
            log_level: src.get("log.level", log_level)?,
            agencies: src.get("lottery.agencies", int(1, MAX_AGENCIES))?,
            winning_number: src.get("lottery.winning_number", int(0, MAX_NUMBER))?,
            storage_path: src.get("storage.path", |s| path_value(&non_empty(s)?))?,
            status_port: src
                .get("status.http_port", int(0, u16::MAX))
                .map(|port| (port != 0).then_some(port))?,
            tls: tls_files(&src, true)?,
            tls_required: false,
        })
        .and_then(|config| {
            let required = src.get("tls.required", |s| match s {
                "auto" => Ok(None),
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err("expected true, false or auto".into()),
            })?;
            let on = !config.tls.is_empty();
            match required {
                Some(true) if !on => Err(ConfigError::Invalid {
                    key: src.raw("tls.required")?.1,
                    value: "true".into(),
                    reason: "TLS is off: set tls.ca, tls.cert and tls.key (make certs writes them under certs/)".into(),
                }),
                required => Ok(ServerConfig {
                    tls_required: required.unwrap_or(on),
                    ..config
                }),
            }
        })
    }

    /// The `key: value` pairs of the `action: config` log line (text values
    /// [`sanitize`]d: a path or host from the environment cannot forge a line).
    pub fn summary(&self) -> String {
        format!(
            "host: {} | port: {} | listen_backlog: {} | logging_level: {} | agencies: {} | \
             winning_number: {} | storage: {} | io_timeout: {} | max_connections: {} | \
             status_port: {} | tls: {} | tls_required: {}",
            sanitize(&self.host),
            self.port,
            self.listen_backlog,
            sanitize(&self.log_level.name),
            self.agencies,
            self.winning_number,
            sanitize(&self.storage_path.display().to_string()),
            format_duration(self.io_timeout),
            self.max_connections,
            self.status_port
                .map_or_else(|| "off".to_string(), |p| p.to_string()),
            if self.tls.is_empty() { "off" } else { "on" },
            self.tls_required
        )
    }
}

impl ClientConfig {
    /// Loads `path`, with overrides from the process environment.
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        ClientConfig::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// Loads `path`, with overrides from `env` (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ClientConfig, ConfigError> {
        let src = Source::load(path, env, CLIENT_KEYS)?;
        let id: AgencyId = src.get("id", int(1, u32::MAX))?;
        let data = src.get("data", |s| {
            non_empty(s).map(|s| PathBuf::from(s.replace("<id>", &id.to_string())))
        })?;
        let mode = src.get("mode", |s| match s {
            "bets" => Ok(Mode::Bets),
            "echo" => Ok(Mode::Echo),
            "status" => Ok(Mode::Status),
            _ => Err("expected \"bets\", \"echo\" or \"status\"".into()),
        })?;
        Ok(ClientConfig {
            id,
            mode,
            data,
            server_address: src.get("server.address", |s| {
                match s.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                    Some((host, Ok(port))) if !host.is_empty() && port > 0 => Ok(s.to_string()),
                    _ => Err("expected host:port".into()),
                }
            })?,
            connect_timeout: src.get("server.connect_timeout", positive_duration)?,
            retry_deadline: src.get("server.retry_deadline", duration)?,
            io_timeout: src.get("server.io_timeout", positive_duration)?,
            loop_amount: src.get("loop.amount", int(0, u64::MAX))?,
            loop_period: src.get("loop.period", duration)?,
            log_level: src.get("log.level", log_level)?,
            batch_max_amount: src.get("batch.max_amount", int(1, u16::MAX))?,
            batch_window: src.get("batch.window", int(1, MAX_BATCH_WINDOW))?,
            // Single-bet mode is a way of uploading: echo and status mode ignore the
            // variables (see `ignored_single_bet_vars`).
            single_bet: match mode {
                Mode::Bets => single_bet(env)?,
                Mode::Echo | Mode::Status => None,
            },
            tls: tls_files(&src, false)?,
        })
    }

    /// The `key: value` pairs of the `action: config` log line (text values
    /// [`sanitize`]d: a path or host from the environment cannot forge a line).
    pub fn summary(&self) -> String {
        let mode = match self.single_bet {
            Some(_) => "single_bet".to_string(),
            None => self.mode.to_string(),
        };
        format!(
            "client_id: {} | server_address: {} | loop_amount: {} | loop_period: {} | \
             log_level: {} | mode: {} | data: {} | batch_max_amount: {} | \
             batch_window: {} | connect_timeout: {} | retry_deadline: {} | io_timeout: {} | tls: {}",
            self.id,
            sanitize(&self.server_address),
            self.loop_amount,
            format_duration(self.loop_period),
            sanitize(&self.log_level.name),
            mode,
            sanitize(&self.data.display().to_string()),
            self.batch_max_amount,
            self.batch_window,
            format_duration(self.connect_timeout),
            format_duration(self.retry_deadline),
            format_duration(self.io_timeout),
            match (&self.tls.ca, &self.tls.cert) {
                (None, _) => "off",
                (Some(_), None) => "on (no certificate)",
                (Some(_), Some(_)) => "on",
            }
        )
    }
}

/// The single-bet variables set in `env` that `mode` ignores (all of them outside
/// bets mode; none in bets mode, where they make single-bet mode), in
/// [`SINGLE_BET_VARS`] order. The client logs them in one WARN line.
pub fn ignored_single_bet_vars(
    mode: Mode,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<&'static str> {
    match mode {
        Mode::Bets => Vec::new(),
        Mode::Echo | Mode::Status => SINGLE_BET_VARS
            .into_iter()
            .filter(|name| env(name).is_some())
            .collect(),
    }
}

fn single_bet(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Bet>, ConfigError> {
    let values: [Option<String>; 5] = SINGLE_BET_VARS.map(env);
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let missing: Vec<&str> = SINGLE_BET_VARS
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(ConfigError::SingleBetIncomplete { missing });
    }
    let [first_name, last_name, document, birthdate, number] =
        values.map(Option::unwrap_or_default);
    let invalid = |key: &str, value: &str, reason: String| ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    let date = crate::bet::parse_birthdate(birthdate.trim()).map_err(|e| {
        let reason = match e {
            BetError::ImpossibleBirthdate { why, .. } => format!("not a real date ({why})"),
            _ => "expected a date written YYYY-MM-DD, such as 1999-03-17".to_string(),
        };
        invalid("NACIMIENTO", &birthdate, reason)
    })?;
    let parsed_number =
        int(0, MAX_NUMBER)(number.trim()).map_err(|reason| invalid("NUMERO", &number, reason))?;
    let bet = Bet {
        first_name: first_name.trim().to_string(),
        last_name: last_name.trim().to_string(),
        document: document.trim().to_string(),
        birthdate: date,
        number: parsed_number,
    };
    bet.validate(crate::bet::today()).map_err(|e| {
        let (var, value) = match e {
            BetError::EmptyName {
                field: "first_name",
            }
            | BetError::ControlCharacter {
                field: "first_name",
            } => ("NOMBRE", &first_name),
            BetError::EmptyName { .. } | BetError::ControlCharacter { .. } => {
                ("APELLIDO", &last_name)
            }
            BetError::BadDocument(_) => ("DOCUMENTO", &document),
            BetError::FutureBirthdate(_)
            | BetError::AncientBirthdate(_)
            | BetError::MalformedBirthdate(_)
            | BetError::ImpossibleBirthdate { .. } => ("NACIMIENTO", &birthdate),
            BetError::NumberOutOfRange(_) => ("NUMERO", &number),
        };
        invalid(var, value, e.to_string())
    })?;
    Ok(Some(bet))
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run with this config file.
    Run(PathBuf),
    /// Print the help text and exit.
    Help,
}

/// Parses `[--config FILE] [--help]`; `default` is the config file when none is given.
pub fn parse_args<I>(args: I, default: &str) -> Result<Command, String>
where
    I: IntoIterator<Item = String>,
{
    let mut config = PathBuf::from(default);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-c" | "--config" => match args.next() {
                Some(path) => config = PathBuf::from(path),
                None => return Err("--config needs a file".into()),
            },
            other => match other.strip_prefix("--config=") {
                Some(path) => config = PathBuf::from(path),
                None => return Err(format!("unexpected argument {other:?}")),
            },
        }
    }
    Ok(Command::Run(config))
}

/// The start of both binaries: parses the command line and loads the configuration.
///
/// On `--help` prints the help and returns `Err(0)`; on bad arguments prints the
/// problem and the help on stderr, on a bad configuration prints the problem once, as
/// the log line `action: config | result: fail | error: …` on stdout (with the other
/// log lines, where Compose and the course's tools look); either way returns `Err(2)`:
/// the exit code to use.
pub fn from_command_line<C, I>(
    program: &str,
    default: &str,
    keys: &[Key],
    args: I,
    load: impl FnOnce(&Path) -> Result<C, ConfigError>,
) -> Result<C, u8>
where
    I: IntoIterator<Item = String>,
{
    let path = match parse_args(args, default) {
        Ok(Command::Run(path)) => path,
        Ok(Command::Help) => {
            print!("{}", help(program, default, keys));
            return Err(0);
        }
        Err(e) => {
            eprintln!("{program}: {e}\n\n{}", help(program, default, keys));
            return Err(2);
        }
    };
    load(&path).map_err(|e| {
        // The logger needs the config's level, so this one line is formatted by hand.
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
        // A key name or a path from the file could hold `|` or a line break.
        let message = format!(
            "action: config | result: fail | error: {}",
            crate::logging::sanitize(&e.to_string())
        );
        println!(
            "{}",
            crate::logging::format_line(&now, log::Level::Error, &format_args!("{message}"))
        );
        2
    })
}

/// The `--help` text: usage and the table of keys.
pub fn help(program: &str, default: &str, keys: &[Key]) -> String {
    let mut text = format!(
        "Usage: {program} [--config FILE]\n\n\
         Options:\n  -c, --config FILE  configuration file (default: {default})\n  \
         -h, --help         print this help\n\n\
         Configuration keys (environment variables override the file):\n"
    );
    for k in keys {
        let default = k
            .default
            .map_or("required".to_string(), |d| format!("default {d}"));
        text.push_str(&format!(
            "  {:<24} {:<24} {} ({default})\n",
            k.path, k.env, k.doc
        ));
    }
    if keys.iter().any(|k| k.env.starts_with("CLI_")) {
        text.push_str(&format!(
            "\nSingle-bet mode (mode \"bets\" only): set all of {} (NACIMIENTO as YYYY-MM-DD).\n",
            SINGLE_BET_VARS.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write_temp(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("loteria-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        path
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const SERVER: &str = "[server]\nport = 12345\nlisten_backlog = 5\n\n[log]\nlevel = \"INFO\"\n\n\
                          [lottery]\nagencies = 5\n\n[storage]\npath = \"data/bets.csv\"\n";
    const CLIENT: &str = "id = 1\n[server]\naddress = \"server:12345\"\n[loop]\namount = 5\n\
                          period = \"100ms\"\n[log]\nlevel = \"DEBUG\"\n[batch]\nmax_amount = 80\n";

    #[test]
    fn server_file_and_defaults() {
        let path = write_temp("server-ok", SERVER);
        let config = ServerConfig::load_with_env(&path, &env(&[])).expect("loads");
        assert_eq!(config.port, 12345);
        assert_eq!(config.listen_backlog, 5);
        assert_eq!(config.agencies, 5);
        assert_eq!(config.winning_number, 7574);
        assert_eq!(config.host, "0.0.0.0");
        assert_eq!(config.io_timeout, Duration::from_secs(60));
        assert_eq!(config.log_level.filter, LevelFilter::Info);
        assert!(
            config
                .summary()
                .contains("port: 12345 | listen_backlog: 5 | logging_level: INFO")
        );
    }

    #[test]
    fn tls_keys_go_together_and_required_follows_them() {
        let path = write_temp("server-tls", SERVER);
        let load = |vars: &[(&str, &str)]| ServerConfig::load_with_env(&path, &env(vars));
        let off = load(&[]).expect("TLS off by default");
        assert!(off.tls.is_empty());
        assert!(!off.tls_required);
        assert!(off.summary().ends_with("tls: off | tls_required: false"));
        let all = [
            ("SERVER_TLS_CA", "certs/ca.pem"),
            ("SERVER_TLS_CERT", "certs/server.pem"),
            ("SERVER_TLS_KEY", "certs/server.key"),
        ];
        let on = load(&all).expect("TLS on");
        assert_eq!(on.tls.cert, Some(PathBuf::from("certs/server.pem")));
        assert!(on.tls_required, "auto: required when TLS is on");
        let mut optional = all.to_vec();
        optional.push(("SERVER_TLS_REQUIRED", "false"));
        assert!(!load(&optional).expect("optional").tls_required);
        let err = load(&[("SERVER_TLS_REQUIRED", "true")]).expect_err("nothing to require");
        assert!(err.to_string().contains("SERVER_TLS_REQUIRED"), "{err}");
        assert!(err.to_string().contains("TLS is off"), "{err}");
        let err = load(&all[..2]).expect_err("no key");
        assert!(
            err.to_string()
                .contains("tls.key must be set with tls.cert"),
            "{err}"
        );
        let err = load(&all[1..]).expect_err("no CA");
        assert!(err.to_string().contains("tls.ca must be set too"), "{err}");
        let err = load(&all[..1]).expect_err("a CA alone");
        assert!(err.to_string().contains("SERVER_TLS_CA"), "{err}");
        let err = load(&[("SERVER_TLS_REQUIRED", "yes")]).expect_err("not a bool");
        assert!(
            err.to_string().contains("expected true, false or auto"),
            "{err}"
        );
        let err = load(&[("SERVER_TLS_CA", "a\nb")]).expect_err("a line break");
        assert!(err.to_string().contains("control character"), "{err}");

        let path = write_temp("client-tls", CLIENT);
        let load = |vars: &[(&str, &str)]| ClientConfig::load_with_env(&path, &env(vars));
        assert!(load(&[]).expect("off").summary().ends_with("tls: off"));
        let ca_only = load(&[("CLI_TLS_CA", "certs/ca.pem")]).expect("CA only");
        assert!(ca_only.summary().ends_with("tls: on (no certificate)"));
        let err = load(&[("CLI_TLS_CERT", "c.pem"), ("CLI_TLS_KEY", "c.key")])
            .expect_err("no CA to check the server");
        assert!(
            err.to_string().contains("checks the server's certificate"),
            "{err}"
        );
        let err =
            load(&[("CLI_TLS_CA", "ca.pem"), ("CLI_TLS_KEY", "c.key")]).expect_err("a key alone");
        assert!(
            err.to_string()
                .contains("tls.cert must be set with tls.key"),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let path = write_temp("server-env", SERVER);
        let config = ServerConfig::load_with_env(
            &path,
            &env(&[
                ("SERVER_PORT", "4000"),
                ("SERVER_LISTEN_BACKLOG", "9"),
                ("LOGGING_LEVEL", "debug"),
                ("SERVER_AGENCIES", "3"),
                ("SERVER_WINNING_NUMBER", "12"),
                ("SERVER_STORAGE", "/tmp/x.csv"),
                ("SERVER_IO_TIMEOUT", "250ms"),
            ]),
        )
        .expect("loads");
        assert_eq!(config.port, 4000);
        assert_eq!(config.listen_backlog, 9);
        assert_eq!(config.log_level.name, "debug");
        assert_eq!(config.agencies, 3);
        assert_eq!(config.winning_number, 12);
        assert_eq!(config.storage_path, PathBuf::from("/tmp/x.csv"));
        assert_eq!(config.io_timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        let path = write_temp("server-bad", SERVER);
        let err = ServerConfig::load_with_env(&path, &env(&[("SERVER_PORT", "70000")]))
            .expect_err("port too big");
        assert_eq!(
            err.to_string(),
            "invalid value \"70000\" for SERVER_PORT: expected a whole number from 0 to 65535"
        );
        let err = ServerConfig::load_with_env(&path, &env(&[("SERVER_WINNING_NUMBER", "10000")]))
            .expect_err("number too big");
        assert!(err.to_string().contains("SERVER_WINNING_NUMBER"), "{err}");
        let bad = write_temp(
            "server-bad2",
            &SERVER.replace("agencies = 5", "agencies = 0"),
        );
        let err = ServerConfig::load_with_env(&bad, &env(&[])).expect_err("no agencies");
        assert!(err.to_string().contains("lottery.agencies"), "{err}");
        assert!(err.to_string().contains("\"0\""), "{err}");
        let bad = write_temp(
            "server-bad3",
            &SERVER.replace("level = \"INFO\"", "level = \"LOUD\""),
        );
        let err = ServerConfig::load_with_env(&bad, &env(&[])).expect_err("bad level");
        assert!(err.to_string().contains("log.level"), "{err}");
    }

    #[test]
    fn missing_required_keys_and_unknown_keys_are_errors() {
        let path = write_temp("server-missing", &SERVER.replace("port = 12345\n", ""));
        let err = ServerConfig::load_with_env(&path, &env(&[])).expect_err("no port");
        assert_eq!(
            err,
            ConfigError::Missing {
                key: "server.port",
                env: "SERVER_PORT"
            }
        );
        let path = write_temp(
            "server-typo",
            &SERVER.replace("port = 12345", "prot = 12345"),
        );
        let err =
            ServerConfig::load_with_env(&path, &env(&[("SERVER_PORT", "1")])).expect_err("typo");
        assert!(err.to_string().contains("unknown key server.prot"), "{err}");
        let err = ServerConfig::load_with_env(Path::new("/nonexistent/server.toml"), &env(&[]))
            .expect_err("no file");
        assert!(
            err.to_string().contains("/nonexistent/server.toml"),
            "{err}"
        );
        let path = write_temp("server-syntax", "[server\nport = ");
        let err = ServerConfig::load_with_env(&path, &env(&[])).expect_err("syntax");
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn unknown_keys_suggest_the_nearest_known_one() {
        let cases = [
            (
                "port = 12345",
                "prot = 12345",
                "unknown key server.prot; did you mean server.port?",
            ),
            (
                "listen_backlog = 5",
                "listen_backlog = 5\nmax_conections = 3",
                "unknown key server.max_conections; did you mean server.max_connections?",
            ),
            (
                "listen_backlog = 5",
                "listen_backlog = 5\nIO_timeout = \"5s\"",
                "unknown key server.IO_timeout; did you mean server.io_timeout?",
            ),
            (
                "[storage]",
                "[storage]\nagencies = 3",
                "unknown key storage.agencies; did you mean lottery.agencies?",
            ),
            (
                "[lottery]",
                "[lotery]",
                "unknown section [lotery]; did you mean [lottery]?",
            ),
            (
                "listen_backlog = 5",
                "listen_backlog = 5\ncolour = 1",
                "unknown key server.colour\n",
            ),
            ("[storage]", "[metrics]", "unknown section [metrics]\n"),
        ];
        for (i, (from, to, expected)) in cases.into_iter().enumerate() {
            let path = write_temp(&format!("server-typo-{i}"), &SERVER.replacen(from, to, 1));
            let err = ServerConfig::load_with_env(&path, &env(&[("SERVER_PORT", "1")]))
                .expect_err("unknown key");
            // A trailing newline in `expected` means: nothing after it (no suggestion).
            let text = format!("{err}\n");
            assert!(text.contains(expected), "{to:?}: {err}");
        }
        let path = write_temp("client-typo", &format!("mdoe = \"echo\"\n{CLIENT}"));
        let err = ClientConfig::load_with_env(&path, &env(&[])).expect_err("typo");
        assert!(
            err.to_string()
                .contains("unknown key mdoe; did you mean mode?"),
            "{err}"
        );
        // Every problem of the file at once, not one per run.
        let path = write_temp(
            "client-typos",
            &CLIENT
                .replacen("[server]", "[server]\nadress = \"x:1\"", 1)
                .replacen("[batch]", "[batch]\nmax_amout = 3", 1),
        );
        let err = ClientConfig::load_with_env(&path, &env(&[])).expect_err("typos");
        let text = err.to_string();
        assert!(
            text.contains("unknown key server.adress; did you mean server.address?"),
            "{text}"
        );
        assert!(
            text.contains("unknown key batch.max_amout; did you mean batch.max_amount?"),
            "{text}"
        );
        assert_eq!(text.matches("; and ").count(), 1, "{text}");
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("LOG", "log"), 0);
    }

    #[test]
    fn a_toml_syntax_error_is_one_line_with_its_position() {
        let path = write_temp("server-syntax-line", "[server]\nport = 1\n[lottery\n");
        let err = ServerConfig::load_with_env(&path, &env(&[])).expect_err("syntax");
        let text = err.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("line 3, column 9: "), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }

    #[test]
    fn client_config_and_overrides() {
        let path = write_temp("client-ok", CLIENT);
        let config = ClientConfig::load_with_env(&path, &env(&[])).expect("loads");
        assert_eq!(config.id, 1);
        assert_eq!(config.mode, Mode::Bets);
        assert_eq!(config.data, PathBuf::from("agencies/agency-1.csv"));
        assert_eq!(config.loop_period, Duration::from_millis(100));
        assert_eq!(config.batch_max_amount, 80);
        assert_eq!(config.single_bet, None);
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.retry_deadline, Duration::from_secs(300));
        assert!(
            config
                .summary()
                .contains("connect_timeout: 10s | retry_deadline: 300s | io_timeout: 60s"),
            "{}",
            config.summary()
        );
        assert!(config.summary().starts_with(
            "client_id: 1 | server_address: server:12345 | loop_amount: 5 | loop_period: 100ms | log_level: DEBUG"
        ));
        let config = ClientConfig::load_with_env(
            &path,
            &env(&[
                ("CLI_ID", "4"),
                ("CLI_MODE", "echo"),
                ("CLI_SERVER_ADDRESS", "127.0.0.1:9"),
                ("CLI_LOOP_AMOUNT", "2"),
                ("CLI_LOOP_PERIOD", "5s"),
                ("CLI_LOG_LEVEL", "ERROR"),
                ("CLI_BATCH_MAX_AMOUNT", "7"),
                ("CLI_RETRY_DEADLINE", "2m"),
                ("CLI_CONNECT_TIMEOUT", "250ms"),
            ]),
        )
        .expect("loads");
        assert_eq!(config.id, 4);
        assert_eq!(config.data, PathBuf::from("agencies/agency-4.csv"));
        assert_eq!(config.mode, Mode::Echo);
        assert_eq!(config.server_address, "127.0.0.1:9");
        assert_eq!(config.loop_amount, 2);
        assert_eq!(config.loop_period, Duration::from_secs(5));
        assert_eq!(config.batch_max_amount, 7);
        assert_eq!(config.retry_deadline, Duration::from_secs(120));
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        let path_deadline = write_temp(
            "client-deadline",
            &CLIENT.replace(
                "address = \"server:12345\"\n",
                "address = \"server:12345\"\nretry_deadline = \"45s\"\n",
            ),
        );
        let config = ClientConfig::load_with_env(&path_deadline, &env(&[])).expect("loads");
        assert_eq!(config.retry_deadline, Duration::from_secs(45));
        for (var, value) in [
            ("CLI_RETRY_DEADLINE", "soon"),
            ("CLI_RETRY_DEADLINE", "5"),
            ("CLI_CONNECT_TIMEOUT", "0s"),
            ("CLI_ID", "0"),
            ("CLI_MODE", "both"),
            ("CLI_SERVER_ADDRESS", "nohost"),
            ("CLI_LOOP_PERIOD", "5"),
            ("CLI_BATCH_MAX_AMOUNT", "0"),
            ("CLI_LOOP_AMOUNT", "-1"),
        ] {
            let err =
                ClientConfig::load_with_env(&path, &env(&[(var, value)])).expect_err("bad value");
            assert!(err.to_string().contains(var), "{var}: {err}");
        }
    }

    #[test]
    fn single_bet_mode_from_the_environment() {
        let path = write_temp("client-single", CLIENT);
        let vars = [
            ("NOMBRE", "Santiago Lionel"),
            ("APELLIDO", "Lorca"),
            ("DOCUMENTO", "30904465"),
            ("NACIMIENTO", "1999-03-17"),
            ("NUMERO", "7574"),
        ];
        let config = ClientConfig::load_with_env(&path, &env(&vars)).expect("loads");
        let bet = config.single_bet.expect("single bet");
        assert_eq!(bet.document, "30904465");
        assert_eq!(bet.number, 7574);
        let err = ClientConfig::load_with_env(&path, &env(&vars[..4])).expect_err("NUMERO missing");
        assert_eq!(
            err.to_string(),
            "NUMERO is missing: single-bet mode needs NOMBRE, APELLIDO, DOCUMENTO, NACIMIENTO and NUMERO (or none of them, to upload the agency file)"
        );
        let some = [vars[0], vars[2]];
        let err = ClientConfig::load_with_env(&path, &env(&some)).expect_err("three missing");
        assert!(
            err.to_string()
                .starts_with("APELLIDO, NACIMIENTO and NUMERO are missing: "),
            "{err}"
        );
        let mut impossible = vars;
        impossible[3] = ("NACIMIENTO", "1999-02-30");
        let err = ClientConfig::load_with_env(&path, &env(&impossible)).expect_err("no such day");
        assert_eq!(
            err.to_string(),
            "invalid value \"1999-02-30\" for NACIMIENTO: not a real date (1999-02 has 28 days)"
        );
        impossible[3] = ("NACIMIENTO", "1999-13-01");
        let err = ClientConfig::load_with_env(&path, &env(&impossible)).expect_err("no month 13");
        assert!(
            err.to_string()
                .ends_with("not a real date (there is no month 13)"),
            "{err}"
        );
        let mut bad = vars;
        bad[3] = ("NACIMIENTO", "17/03/1999");
        let err = ClientConfig::load_with_env(&path, &env(&bad)).expect_err("bad date");
        assert_eq!(
            err.to_string(),
            "invalid value \"17/03/1999\" for NACIMIENTO: expected a date written YYYY-MM-DD, such as 1999-03-17"
        );
        bad = vars;
        bad[2] = ("DOCUMENTO", "123456789");
        let err = ClientConfig::load_with_env(&path, &env(&bad)).expect_err("bad document");
        assert!(err.to_string().contains("DOCUMENTO"), "{err}");
    }

    #[test]
    fn single_bet_variables_apply_only_in_bets_mode() {
        let path = write_temp("client-single-modes", CLIENT);
        let all = [
            ("NOMBRE", "Ana"),
            ("APELLIDO", "Paz"),
            ("DOCUMENTO", "30904465"),
            ("NACIMIENTO", "1999-03-17"),
            ("NUMERO", "7574"),
        ];
        for (mode, expected) in [("status", Mode::Status), ("echo", Mode::Echo)] {
            for vars in [&all[..], &all[..2], &all[3..]] {
                let mut vars = vars.to_vec();
                vars.push(("CLI_MODE", mode));
                let config = ClientConfig::load_with_env(&path, &env(&vars))
                    .unwrap_or_else(|e| panic!("{mode} with {vars:?}: {e}"));
                assert_eq!(config.mode, expected);
                assert_eq!(config.single_bet, None, "{mode} with {vars:?}");
                assert!(config.summary().contains(&format!("| mode: {mode} |")));
                let names: Vec<&str> = vars[..vars.len() - 1].iter().map(|v| v.0).collect();
                assert_eq!(ignored_single_bet_vars(expected, &env(&vars)), names);
            }
            // Not even checked: an impossible bet does not stop echo or status mode.
            let bad = [("NACIMIENTO", "1999-02-30"), ("CLI_MODE", mode)];
            assert!(ClientConfig::load_with_env(&path, &env(&bad)).is_ok());
        }
        let config = ClientConfig::load_with_env(&path, &env(&all)).expect("bets mode");
        assert!(config.single_bet.is_some());
        assert!(config.summary().contains("| mode: single_bet |"));
        assert!(ignored_single_bet_vars(Mode::Bets, &env(&all)).is_empty());
        let err = ClientConfig::load_with_env(&path, &env(&all[..2])).expect_err("incomplete");
        assert!(
            matches!(err, ConfigError::SingleBetIncomplete { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_key_written_as_a_table_or_a_section_as_a_value_is_named_as_such() {
        let no_address = CLIENT.replace("address = \"server:12345\"\n", "");
        let address = [("CLI_SERVER_ADDRESS", "server:1")];
        for (text, expected) in [
            (
                format!("mode = {{ a = 1 }}\n{no_address}"),
                "mode must be a value, not a table",
            ),
            (
                format!("{no_address}[server.address]\nhost = \"x\"\n"),
                "server.address must be a value, not a table",
            ),
            (
                format!("{no_address}[server.retry_deadline]\n"),
                "server.retry_deadline must be a value, not a table",
            ),
            (
                "id = 1\nloop = 3\n".to_string(),
                "loop must be a table ([loop] and its keys), not a value",
            ),
        ] {
            let path = write_temp("client-misplaced", &text);
            let err = ClientConfig::load_with_env(&path, &env(&address)).expect_err("misplaced");
            assert!(err.to_string().ends_with(expected), "{text:?}: {err}");
            assert!(!err.to_string().contains("unknown"), "{text:?}: {err}");
        }
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "1.5s", "-1s", "5 s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }

    #[test]
    fn every_key_is_reachable() {
        for keys in [SERVER_KEYS, CLIENT_KEYS] {
            for k in keys {
                assert!(!k.doc.is_empty());
                let src = Source {
                    file: toml::Table::new(),
                    env: &|_| None,
                    keys,
                };
                assert_eq!(src.spec(k.path).env, k.env);
            }
        }
    }

    #[test]
    fn command_line() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_args(args(&[]), "config/server.toml"),
            Ok(Command::Run("config/server.toml".into()))
        );
        assert_eq!(
            parse_args(args(&["--config", "x.toml"]), "d"),
            Ok(Command::Run("x.toml".into()))
        );
        assert_eq!(
            parse_args(args(&["--config=y.toml"]), "d"),
            Ok(Command::Run("y.toml".into()))
        );
        assert_eq!(parse_args(args(&["--help"]), "d"), Ok(Command::Help));
        assert!(parse_args(args(&["--config"]), "d").is_err());
        assert!(parse_args(args(&["--verbose"]), "d").is_err());
        assert!(help("server", "config/server.toml", SERVER_KEYS).contains("SERVER_PORT"));
    }
}
