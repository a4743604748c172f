//! Storage benchmark over a large store, one phase per process (so each phase's peak
//! memory, `VmHWM`, is its own):
//!
//! * `cargo run --release --example store_bench -- gen DIR [bets]` writes a store of
//!   `bets` bets (default 4 000 000) in `DIR` through the store API: 8 agencies,
//!   batches of 100 bets, 80 batches per commit (as a group commit would).
//! * `… -- commit DIR [bets]` times, on the thread's CPU clock, the ledger's digests
//!   and the store's commits of `bets` bets built beforehand (one agency, batches of
//!   100, 80 batches per commit).
//! * `… -- open DIR` times opening it (recovery: the journal read and the committed
//!   rows checked against its digests).
//! * `… -- draw DIR [number]` times the draw (`storage::run_draw`), after an open.
//! * `… -- fin DIR` records the FIN of agencies 1..=8 (a server started on the store
//!   with 8 agencies then runs the draw at once and logs its time).
//! * `… -- bets DIR` times `for_each_bet` (every row parsed into a full `Bet`), after
//!   an open, for scale.
//!
//! Prints numbers; asserts nothing about speed.

use std::path::Path;
use std::time::Instant;

use chrono::NaiveDate;
use loteria::bet::{AgencyId, Bet};
use loteria::storage::{self, Batch, CsvJournalStore, Store};

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "?".into())
}

/// This thread's CPU time so far (ns), from `/proc/thread-self/schedstat`.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Bet `i` of the benchmark's data: one name in ten needs quoting (a comma).
fn bench_bet(i: u64, birthdate: NaiveDate) -> Bet {
    Bet {
        first_name: "Tiago Nicolás".into(),
        last_name: if i.is_multiple_of(10) {
            "Núñez, Jr".into()
        } else {
            "Núñez".into()
        },
        document: format!("{:08}", i * 7 % 100_000_000),
        birthdate,
        number: (i * 7919 % 10_000) as u16,
    }
}

/// Times the storage work of `total` bets: the ledger's digest of each batch
/// (`storage::digest`), then the commits (format, check, write, sync), on this thread's
/// CPU clock; the bets are built beforehand.
fn commit_cost(dir: &Path, total: u64) -> Result<(), Box<dyn std::error::Error>> {
    const PER_BATCH: usize = 100;
    const PER_COMMIT: usize = 80;
    std::fs::create_dir_all(dir)?;
    let birthdate = NaiveDate::from_ymd_opt(1990, 5, 17).ok_or("date")?;
    let all: Vec<Bet> = (0..total).map(|i| bench_bet(i, birthdate)).collect();
    let chunks: Vec<&[Bet]> = all.chunks(PER_BATCH).collect();
    let cpu = thread_cpu_ns();
    let digests: Vec<u32> = chunks.iter().map(|c| storage::digest(1, c)).collect();
    let digest_ns = thread_cpu_ns() - cpu;
    let mut store = CsvJournalStore::open(&dir.join("bets.csv"))?;
    let (cpu, wall) = (thread_cpu_ns(), Instant::now());
    for first in (0..chunks.len()).step_by(PER_COMMIT) {
        let batches: Vec<Batch<'_>> = (first..chunks.len().min(first + PER_COMMIT))
            .map(|i| Batch {
                agency: 1,
                upload: 1,
                seq: i as u64 + 1,
                line: 0,
                digest: digests[i],
                bets: chunks[i],
                rows: None,
            })
            .collect();
        store.commit(&batches)?;
    }
    let commit_ns = thread_cpu_ns() - cpu;
    let per = |ns: u64| ns as f64 / total as f64;
    println!(
        "commit_cost: {total} bets, {} commits; CPU per bet: digest {:.1} ns, commit {:.1} ns \
         (wall {:.2} s, syncs included)",
        chunks.len().div_ceil(PER_COMMIT),
        per(digest_ns),
        per(commit_ns),
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}

fn generate(dir: &Path, total: u64) -> Result<(), Box<dyn std::error::Error>> {
    const AGENCIES: u32 = 8;
    const PER_BATCH: u64 = 100;
    const PER_COMMIT: usize = 80;
    std::fs::create_dir_all(dir)?;
    let mut store = CsvJournalStore::open(&dir.join("bets.csv"))?;
    let birthdate = NaiveDate::from_ymd_opt(1990, 5, 17).ok_or("date")?;
    let mut seq = [0u64; AGENCIES as usize];
    let mut made = 0u64;
    let start = Instant::now();
    while made < total {
        let mut owned: Vec<(AgencyId, u64, Vec<Bet>)> = Vec::new();
        while made < total && owned.len() < PER_COMMIT {
            let agency = (made / PER_BATCH) as u32 % AGENCIES + 1;
            let n = PER_BATCH.min(total - made);
            let bets = (made..made + n).map(|i| bench_bet(i, birthdate)).collect();
            let s = &mut seq[agency as usize - 1];
            *s += 1;
            owned.push((agency, *s, bets));
            made += n;
        }
        let batches: Vec<Batch<'_>> = owned
            .iter()
            .map(|(agency, seq, bets)| Batch {
                agency: *agency,
                upload: u64::from(*agency),
                seq: *seq,
                line: *seq * PER_BATCH,
                digest: storage::digest(*agency, bets),
                bets,
                rows: None,
            })
            .collect();
        store.commit(&batches)?;
    }
    println!("gen: {made} bets in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let phase = args.get(1).map(String::as_str).unwrap_or("");
    let dir = Path::new(args.get(2).ok_or("usage: store_bench PHASE DIR [N]")?);
    let n: u64 = args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4_000_000);
    if phase == "gen" {
        return generate(dir, n);
    }
    if phase == "commit" {
        return commit_cost(dir, n);
    }
    let start = Instant::now();
    let mut store = CsvJournalStore::open(&dir.join("bets.csv"))?;
    let open = start.elapsed();
    let bets = store.recovered().bets;
    println!(
        "open: {bets} bets in {:.1} ms, VmHWM {}",
        open.as_secs_f64() * 1e3,
        vm_hwm()
    );
    match phase {
        "open" => {}
        "fin" => {
            // Every agency's FIN, so a server started on the store runs the draw.
            for agency in 1..=8 {
                store.record_fin(agency)?;
            }
            println!("fin: agencies 1..=8 finished");
        }
        "draw" => {
            let number = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(7574);
            let start = Instant::now();
            let (draw, count) = storage::run_draw(&mut store, number)?;
            println!(
                "draw: {count} bets, {} winners, in {:.1} ms, VmHWM {}",
                draw.total(),
                start.elapsed().as_secs_f64() * 1e3,
                vm_hwm()
            );
        }
        "bets" => {
            let start = Instant::now();
            let mut winners = 0u64;
            let count =
                store.for_each_bet(&mut |_, bet| winners += u64::from(bet.number == 7574))?;
            println!(
                "for_each_bet: {count} bets, {winners} winners, in {:.1} ms, VmHWM {}",
                start.elapsed().as_secs_f64() * 1e3,
                vm_hwm()
            );
        }
        other => return Err(format!("unknown phase {other:?}").into()),
    }
    Ok(())
}
