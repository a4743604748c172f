//! Contract tests of the `Store` trait, written once, generic over a backend factory
//! (`fn(&Path) -> Box<dyn Store>`; "reopen" = drop the store and call the factory
//! again), and run against every backend. A future database backend adds one line per
//! test at the bottom.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use loteria::bet::{AgencyId, Bet};
use loteria::storage::{
    self, AgencyProgress, Batch, CsvJournalStore, DrawRecord, FaultAction, Faults, Step,
    StorageError, Store,
};

/// Opens (or reopens) the store at a path.
type Factory = fn(&Path) -> Box<dyn Store>;
/// Opens the store at a path with a fault hook.
type FaultyFactory = fn(&Path, Faults) -> Box<dyn Store>;

fn csv_journal(path: &Path) -> Box<dyn Store> {
    Box::new(CsvJournalStore::open(path).expect("open the CSV journal store"))
}

fn csv_journal_faulty(path: &Path, faults: Faults) -> Box<dyn Store> {
    Box::new(CsvJournalStore::open_with_faults(path, faults).expect("open the CSV journal store"))
}

// ---- helpers -------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "loteria-contract-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn bets(&self) -> PathBuf {
        self.0.join("bets.csv")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn bet(name: &str, number: u16) -> Bet {
    Bet {
        first_name: name.to_string(),
        last_name: "Pérez, \"el\" Grande".to_string(),
        document: format!("{:08}", number),
        birthdate: NaiveDate::from_ymd_opt(1980, 5, 17).expect("date"),
        number,
    }
}

fn bets(prefix: &str, n: u16) -> Vec<Bet> {
    (0..n).map(|i| bet(&format!("{prefix}{i}"), i)).collect()
}

/// The agency-file line recorded for batch `seq` (distinct from `seq`, so a mix-up
/// would show).
fn line_of(seq: u64) -> u64 {
    seq * 10 + 1
}

fn batch(agency: AgencyId, upload: u64, seq: u64, bets: &[Bet]) -> Batch<'_> {
    Batch {
        agency,
        upload,
        seq,
        line: line_of(seq),
        digest: storage::digest(agency, bets),
        bets,
        rows: None,
    }
}

fn all(store: &mut dyn Store) -> Vec<(AgencyId, Bet)> {
    let mut out = Vec::new();
    let n = store
        .for_each_bet(&mut |a, b| out.push((a, b)))
        .expect("for_each_bet");
    assert_eq!(n as usize, out.len(), "for_each_bet's count");
    out
}

fn tagged(agency: AgencyId, bets: &[Bet]) -> Vec<(AgencyId, Bet)> {
    bets.iter().map(|b| (agency, b.clone())).collect()
}

// ---- the contract --------------------------------------------------------------

fn commit_then_recover_round_trip(open: Factory) {
    let dir = TempDir::new("round-trip");
    let mut store = open(&dir.bets());
    assert_eq!(store.recovered().bets, 0);
    assert!(store.recovered().agencies.is_empty());
    let a = bets("a", 3);
    store.commit(&[batch(1, 42, 1, &a)]).expect("commit");
    drop(store);

    let mut store = open(&dir.bets());
    let r = store.recovered().clone();
    assert_eq!(r.bets, 3);
    assert_eq!(
        r.agencies[&1],
        AgencyProgress {
            upload: 42,
            last_seq: 1,
            last_count: 3,
            last_digest: storage::digest(1, &a),
            last_line: line_of(1),
            bets: 3,
        }
    );
    assert!(r.finished.is_empty());
    assert_eq!(r.draw, None);
    assert_eq!(all(store.as_mut()), tagged(1, &a));

    // Committing after a reopen appends.
    let b = bets("b", 2);
    store.commit(&[batch(1, 42, 2, &b)]).expect("commit");
    drop(store);
    let mut store = open(&dir.bets());
    assert_eq!(store.recovered().agencies[&1].last_seq, 2);
    assert_eq!(store.recovered().agencies[&1].last_count, 2);
    assert_eq!(store.recovered().agencies[&1].last_line, line_of(2));
    assert_eq!(store.recovered().agencies[&1].bets, 5);
    let mut want = tagged(1, &a);
    want.extend(tagged(1, &b));
    assert_eq!(all(store.as_mut()), want);
}

fn several_batches_of_several_agencies_in_one_commit(open: Factory) {
    let dir = TempDir::new("group");
    let mut store = open(&dir.bets());
    let (a1, a2, b1, c1) = (bets("a", 2), bets("aa", 1), bets("b", 4), bets("c", 1));
    store
        .commit(&[
            batch(1, 10, 1, &a1),
            batch(2, 20, 1, &b1),
            batch(1, 10, 2, &a2),
            batch(3, 30, 7, &c1),
        ])
        .expect("group commit");
    drop(store);
    let mut store = open(&dir.bets());
    let r = store.recovered().clone();
    assert_eq!(r.bets, 8);
    assert_eq!(r.agencies.len(), 3);
    assert_eq!(
        r.agencies[&1],
        AgencyProgress {
            upload: 10,
            last_seq: 2,
            last_count: 1,
            last_digest: storage::digest(1, &a2),
            last_line: line_of(2),
            bets: 3,
        }
    );
    assert_eq!((r.agencies[&2].last_seq, r.agencies[&2].bets), (1, 4));
    assert_eq!((r.agencies[&3].last_seq, r.agencies[&3].bets), (7, 1));
    let mut want = tagged(1, &a1);
    want.extend(tagged(2, &b1));
    want.extend(tagged(1, &a2));
    want.extend(tagged(3, &c1));
    assert_eq!(all(store.as_mut()), want);
}

fn fin_and_draw_survive_reopen(open: Factory) {
    let dir = TempDir::new("fin-draw");
    let mut store = open(&dir.bets());
    let a = bets("a", 2);
    store.commit(&[batch(1, 1, 1, &a)]).expect("commit");
    store.record_fin(1).expect("fin 1");
    store.record_fin(2).expect("fin 2 (no bets)");
    drop(store);
    let mut store = open(&dir.bets());
    assert_eq!(
        store
            .recovered()
            .finished
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(store.recovered().draw, None);
    let draw = DrawRecord {
        winning_number: 7574,
        bets: 2,
    };
    store.record_draw(draw).expect("draw");
    drop(store);
    let store = open(&dir.bets());
    assert_eq!(store.recovered().draw, Some(draw));
    assert_eq!(store.recovered().finished.len(), 2);
    assert_eq!(store.recovered().bets, 2);
}

fn for_each_bet_returns_exactly_the_committed_bets_in_order(open: Factory) {
    let dir = TempDir::new("order");
    let mut store = open(&dir.bets());
    assert!(all(store.as_mut()).is_empty());
    let mut want = Vec::new();
    for round in 0..5u64 {
        for agency in 1..=3u32 {
            let b = bets(&format!("r{round}a{agency}-"), (agency as u16) + 1);
            store
                .commit(&[batch(agency, 100 + u64::from(agency), round + 1, &b)])
                .expect("commit");
            want.extend(tagged(agency, &b));
        }
        // The live store streams what is committed so far, too.
        assert_eq!(all(store.as_mut()), want);
    }
    drop(store);
    let mut store = open(&dir.bets());
    assert_eq!(store.recovered().bets, want.len() as u64);
    assert_eq!(all(store.as_mut()), want);
}

/// The draw's view of the stored bets: agency, document and number of each, in order.
fn plays(store: &mut dyn Store) -> Vec<(AgencyId, String, u16)> {
    let mut out = Vec::new();
    let n = store
        .for_each_play(&mut |p| out.push((p.agency, p.document.to_string(), p.number)))
        .expect("for_each_play");
    assert_eq!(n as usize, out.len(), "for_each_play's count");
    out
}

/// `reopen`: whether the backend keeps its bets across a reopen (the memory store's
/// factory makes a new, empty one).
fn for_each_play_sees_what_for_each_bet_sees_and_the_draw_its_winners(open: Factory, reopen: bool) {
    let dir = TempDir::new("plays");
    let mut store = open(&dir.bets());
    assert!(plays(store.as_mut()).is_empty());
    for round in 0..4u64 {
        for agency in 1..=3u32 {
            let b = bets(&format!("r{round}a{agency}, \"q\""), 7 + agency as u16);
            store
                .commit(&[batch(agency, u64::from(agency), round + 1, &b)])
                .expect("commit");
        }
    }
    for reopened in [false, true] {
        if reopened && !reopen {
            break;
        }
        if reopened {
            drop(store);
            store = open(&dir.bets());
        }
        let full: Vec<(AgencyId, String, u16)> = all(store.as_mut())
            .into_iter()
            .map(|(a, b)| (a, b.document, b.number))
            .collect();
        assert_eq!(plays(store.as_mut()), full, "reopened: {reopened}");
        let (draw, count) = storage::run_draw(store.as_mut(), 8).expect("draw");
        assert_eq!(count, full.len() as u64);
        for agency in 1..=3u32 {
            let want: Vec<String> = full
                .iter()
                .filter(|(a, _, n)| *a == agency && *n == 8)
                .map(|(_, d, _)| d.clone())
                .collect();
            assert_eq!(draw.winners_of(agency), want.as_slice(), "agency {agency}");
        }
        assert_eq!(
            draw.total(),
            full.iter().filter(|(_, _, n)| *n == 8).count()
        );
        assert_eq!(draw.total(), 8, "agencies 2 and 3, four rounds");
    }
}

fn a_failed_commit_leaves_nothing(open: FaultyFactory) {
    for step in [Step::WriteRows, Step::WriteRecord] {
        let dir = TempDir::new("failed");
        let fail_next = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hook_flag = fail_next.clone();
        let faults = Faults::with(move |s| {
            if s == step && hook_flag.swap(false, std::sync::atomic::Ordering::SeqCst) {
                FaultAction::Fail(std::io::ErrorKind::StorageFull)
            } else {
                FaultAction::Proceed
            }
        });
        let mut store = open(&dir.bets(), faults);
        let a = bets("a", 2);
        store.commit(&[batch(1, 1, 1, &a)]).expect("commit");
        fail_next.store(true, std::sync::atomic::Ordering::SeqCst);
        let b = bets("b", 3);
        let err = store
            .commit(&[batch(1, 1, 2, &b), batch(2, 2, 1, &b)])
            .expect_err("injected failure");
        assert!(matches!(err, StorageError::Io { .. }), "{step:?}: {err}");
        // Nothing of it is visible, now or after a reopen.
        assert_eq!(all(store.as_mut()), tagged(1, &a), "{step:?}");
        drop(store);
        let mut store = open(&dir.bets(), Faults::none());
        assert_eq!(store.recovered().bets, 2, "{step:?}");
        assert_eq!(store.recovered().agencies[&1].last_seq, 1, "{step:?}");
        assert!(!store.recovered().agencies.contains_key(&2), "{step:?}");
        assert_eq!(all(store.as_mut()), tagged(1, &a), "{step:?}");
    }
}

// ---- backends --------------------------------------------------------------------

#[test]
fn csv_journal_commit_then_recover_round_trip() {
    commit_then_recover_round_trip(csv_journal);
}

#[test]
fn csv_journal_several_batches_of_several_agencies_in_one_commit() {
    several_batches_of_several_agencies_in_one_commit(csv_journal);
}

#[test]
fn csv_journal_fin_and_draw_survive_reopen() {
    fin_and_draw_survive_reopen(csv_journal);
}

#[test]
fn csv_journal_for_each_bet_returns_exactly_the_committed_bets_in_order() {
    for_each_bet_returns_exactly_the_committed_bets_in_order(csv_journal);
}

#[test]
fn csv_journal_for_each_play_sees_what_for_each_bet_sees_and_the_draw_its_winners() {
    for_each_play_sees_what_for_each_bet_sees_and_the_draw_its_winners(csv_journal, true);
}

#[test]
fn memory_for_each_play_sees_what_for_each_bet_sees_and_the_draw_its_winners() {
    for_each_play_sees_what_for_each_bet_sees_and_the_draw_its_winners(
        |_| Box::new(storage::MemoryStore::new()),
        false,
    );
}

#[test]
fn csv_journal_a_failed_commit_leaves_nothing() {
    a_failed_commit_leaves_nothing(csv_journal_faulty);
}

#[test]
fn csv_journal_describe_names_the_bets_file() {
    let dir = TempDir::new("describe");
    let store = csv_journal(&dir.bets());
    assert_eq!(store.describe(), dir.bets().display().to_string());
}
