//! `client [--config FILE]`: one betting agency.
//!
//! Exit codes: 0 done (or stopped by SIGTERM/SIGINT), 1 failed, 2 bad configuration or
//! arguments, 3 done but some lines of the agency file were invalid and skipped.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use loteria::client::{self, Outcome};
use loteria::config::{self, CLIENT_KEYS, ClientConfig};
use loteria::logging;
use loteria::shutdown::{Shutdown, SignalThread};

fn main() -> ExitCode {
    let args = std::env::args().skip(1);
    let config = match config::from_command_line(
        "client",
        "config/client.toml",
        CLIENT_KEYS,
        args,
        ClientConfig::load,
    ) {
        Ok(config) => config,
        Err(code) => return ExitCode::from(code),
    };
    logging::init(config.log_level.filter);
    log::info!("action: config | result: success | {}", config.summary());
    let id = config.id;
    let ignored = config::ignored_single_bet_vars(config.mode, &|name| std::env::var(name).ok());
    if !ignored.is_empty() {
        log::warn!(
            "action: single_bet | result: ignored | client_id: {id} | mode: {} | variables: {} | reason: single-bet mode applies only in mode bets",
            config.mode,
            ignored.join(",")
        );
    }
    match run(&config) {
        Ok(Outcome::Completed { skipped: 0 }) => {
            log::info!("action: end | result: success | client_id: {id}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Completed { skipped }) => {
            log::warn!("action: end | result: fail | client_id: {id} | skipped_lines: {skipped}");
            ExitCode::from(3)
        }
        Ok(Outcome::Interrupted) => {
            log::info!("action: end | result: success | client_id: {id} | status: interrupted");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The error may carry the server's text (a refusal's reason): one line,
            // no forged fields or lines, on stdout and on stderr alike.
            let e = logging::sanitize(&e.to_string()).into_owned();
            log::error!("action: end | result: fail | client_id: {id} | error: {e}");
            eprintln!("client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &ClientConfig) -> Result<Outcome, Box<dyn std::error::Error>> {
    let shutdown = Shutdown::new();
    let signals = SignalThread::start(shutdown.clone())?;
    let result = client::run(config, &shutdown);
    signals.stop();
    log::info!(
        "action: close_signal_thread | result: success | client_id: {}",
        config.id
    );
    Ok(result?)
}
