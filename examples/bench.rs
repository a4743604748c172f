//! Throughput benchmark: an in-process server on loopback and N agency clients
//! uploading generated files concurrently, end to end (file parsing, framing,
//! validation, CSV append + fsync, the FIN barrier and the draw).
//!
//! `cargo run --release --example bench -- [agencies] [bets_per_agency] [batch]`
//! (defaults 5, 100000, 100). Prints numbers; asserts nothing about speed.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use loteria::client::{self, Outcome};
use loteria::config::{ClientConfig, LogLevel, Mode, ServerConfig};
use loteria::server;
use loteria::shutdown::Shutdown;

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let agencies = arg(1, 5) as u32;
    let bets = arg(2, 100_000);
    let batch = arg(3, 100) as u16;
    let dir = std::env::temp_dir().join(format!("loteria-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let level = LogLevel {
        name: "ERROR".into(),
        filter: log::LevelFilter::Error,
    };
    let mut files = Vec::new();
    for a in 1..=agencies {
        let path = dir.join(format!("agency-{a}.csv"));
        let mut text = String::with_capacity(bets as usize * 48);
        for i in 0..bets {
            text.push_str(&format!(
                "Tiago Nicolás,Núñez,{:08},1990-05-17,{}\r\n",
                (u64::from(a) * 1_000_000 + i) % 100_000_000,
                i % 10_000
            ));
        }
        std::fs::write(&path, text)?;
        files.push(path);
    }
    let server_config = ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        listen_backlog: 128,
        io_timeout: Duration::from_secs(60),
        max_connections: 1024,
        log_level: level.clone(),
        agencies,
        winning_number: 7574,
        storage_path: dir.join("bets.csv"),
        status_port: None,
        tls: Default::default(),
        tls_required: false,
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let server_shutdown = shutdown.clone();
    let server =
        std::thread::spawn(move || server::run(listener, &server_config, &server_shutdown));

    let started = Instant::now();
    let clients: Vec<_> = files
        .into_iter()
        .enumerate()
        .map(|(i, data): (usize, PathBuf)| {
            let config = ClientConfig {
                id: i as u32 + 1,
                mode: Mode::Bets,
                data,
                server_address: addr.to_string(),
                connect_timeout: Duration::from_secs(5),
                retry_deadline: Duration::from_secs(30),
                io_timeout: Duration::from_secs(60),
                loop_amount: 0,
                loop_period: Duration::ZERO,
                log_level: level.clone(),
                batch_max_amount: batch,
                single_bet: None,
                tls: Default::default(),
            };
            std::thread::spawn(move || client::run(&config, &Shutdown::new()))
        })
        .collect();
    for c in clients {
        match c.join() {
            Ok(Ok(Outcome::Completed { skipped: 0 })) => {}
            other => return Err(format!("client failed: {other:?}").into()),
        }
    }
    let elapsed = started.elapsed();
    shutdown.trigger();
    server.join().map_err(|_| "server panicked")??;
    let total = u64::from(agencies) * bets;
    let stored = loteria::storage::for_each_stored(&dir.join("bets.csv"), |_, _| {})?;
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(stored, total, "every bet stored once");
    println!(
        "agencies={agencies} bets_per_agency={bets} batch={batch} total={total} elapsed={:.3}s throughput={:.0} bets/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
