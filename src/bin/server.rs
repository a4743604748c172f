//! `server [--config FILE]`: the lottery's central server.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use loteria::config::{self, Command, SERVER_KEYS, ServerConfig};
use loteria::shutdown::{Shutdown, SignalThread};
use loteria::{logging, server};

const DEFAULT_CONFIG: &str = "config/server.toml";

fn main() -> ExitCode {
    let path = match config::parse_args(std::env::args().skip(1), DEFAULT_CONFIG) {
        Ok(Command::Run(path)) => path,
        Ok(Command::Help) => {
            print!("{}", config::help("server", DEFAULT_CONFIG, SERVER_KEYS));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "server: {e}\n\n{}",
                config::help("server", DEFAULT_CONFIG, SERVER_KEYS)
            );
            return ExitCode::from(2);
        }
    };
    let config = match ServerConfig::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("server: {e}");
            println!("action: config | result: fail | error: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log_level.filter);
    log::info!("action: config | result: success | {}", config.summary());
    match serve(&config) {
        Ok(()) => {
            log::info!("action: exit | result: success");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("action: exit | result: fail | error: {e}");
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
