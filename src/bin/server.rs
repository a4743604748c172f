//! `server [--config FILE]`: the lottery's central server.
//!
//! Exit codes: 0 stopped by SIGTERM/SIGINT, 1 could not start or run, 2 bad arguments
//! or configuration.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use loteria::config::{self, SERVER_KEYS, ServerConfig};
use loteria::shutdown::{Shutdown, SignalThread};
use loteria::{logging, server};

fn main() -> ExitCode {
    let args = std::env::args().skip(1);
    let config = match config::from_command_line(
        "server",
        "config/server.toml",
        SERVER_KEYS,
        args,
        ServerConfig::load,
    ) {
        Ok(config) => config,
        Err(code) => return ExitCode::from(code),
    };
    logging::init(config.log_level.filter);
    log::info!("action: config | result: success | {}", config.summary());
    match serve(&config) {
        Ok(()) => {
            log::info!("action: end | result: success");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The error may name a path or a peer's text: one line, no forged fields.
            let e = logging::sanitize(&e.to_string()).into_owned();
            log::error!("action: end | result: fail | error: {e}");
            eprintln!("server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: &ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = Shutdown::new();
    let signals = SignalThread::start(shutdown.clone())?;
    let result = server::bind(config).and_then(|listener| server::run(listener, config, &shutdown));
    signals.stop();
    log::info!("action: close_signal_thread | result: success");
    Ok(result?)
}
