//! Crash and I/O-error tests of `CsvJournalStore`: a fault injected at every step of a
//! sequence of commits, FINs and a draw, then recovery from the files alone must give
//! exactly what was acknowledged (`docs/STORAGE.md` §5). Run with `--nocapture` to see
//! the figures.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use loteria::bet::{AgencyId, Bet};
use loteria::storage::{
    self, Batch, CsvJournalStore, DrawRecord, FaultAction, Faults, Recovered, Step, StorageError,
    Store, journal_path,
};

// ---- helpers -------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loteria-crash-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
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
        last_name: "Gómez, \"Tito\"".to_string(),
        document: format!("{:08}", u32::from(number) * 7),
        birthdate: NaiveDate::from_ymd_opt(1975, 11, 30).expect("date"),
        number,
    }
}

fn bets(prefix: &str, n: u16) -> Vec<Bet> {
    (0..n)
        .map(|i| bet(&format!("{prefix}-{i}"), i * 11))
        .collect()
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

fn all(store: &mut dyn Store) -> Result<Vec<(AgencyId, Bet)>, StorageError> {
    let mut out = Vec::new();
    let n = store.for_each_bet(&mut |a, b| out.push((a, b)))?;
    assert_eq!(n as usize, out.len(), "for_each_bet's count");
    Ok(out)
}

/// One call of the script.
#[derive(Debug, Clone)]
enum Op {
    Commit(Vec<(AgencyId, u64, u64, Vec<Bet>)>),
    Fin(AgencyId),
    Draw(DrawRecord),
}

impl Op {
    fn steps(&self) -> &'static [Step] {
        match self {
            Op::Commit(_) => &[
                Step::WriteRows,
                Step::SyncRows,
                Step::WriteRecord,
                Step::SyncRecord,
            ],
            Op::Fin(_) | Op::Draw(_) => &[Step::WriteRecord, Step::SyncRecord],
        }
    }

    fn run(&self, store: &mut dyn Store) -> Result<(), StorageError> {
        match self {
            Op::Commit(batches) => {
                let batches: Vec<Batch<'_>> = batches
                    .iter()
                    .map(|(agency, upload, seq, bets)| batch(*agency, *upload, *seq, bets))
                    .collect();
                store.commit(&batches)
            }
            Op::Fin(agency) => store.record_fin(*agency),
            Op::Draw(draw) => store.record_draw(*draw),
        }
    }
}

/// Several agencies, several batches (some in one group commit), FINs and the draw.
fn script() -> Vec<Op> {
    vec![
        Op::Commit(vec![(1, 100, 1, bets("a1", 2))]),
        Op::Commit(vec![(2, 200, 1, bets("b1", 1)), (1, 100, 2, bets("a2", 3))]),
        Op::Commit(vec![(3, 300, 1, bets("c1", 2))]),
        Op::Fin(1),
        Op::Commit(vec![(2, 200, 2, bets("b2", 2)), (3, 300, 2, bets("c2", 1))]),
        Op::Fin(2),
        Op::Fin(3),
        Op::Draw(DrawRecord {
            winning_number: 22,
            bets: 11,
        }),
    ]
}

/// What a store holding exactly `ops` must recover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Model {
    recovered: Recovered,
    bets: Vec<(AgencyId, Bet)>,
}

impl Model {
    fn of<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Model {
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Commit(batches) => {
                    for (agency, upload, seq, bets) in batches {
                        let p = m.recovered.agencies.entry(*agency).or_default();
                        p.upload = *upload;
                        p.last_seq = *seq;
                        p.last_line = line_of(*seq);
                        p.last_count = bets.len() as u32;
                        p.last_digest = storage::digest(*agency, bets);
                        p.bets += bets.len() as u64;
                        m.recovered.bets += bets.len() as u64;
                        m.bets.extend(bets.iter().map(|b| (*agency, b.clone())));
                    }
                }
                Op::Fin(agency) => {
                    m.recovered.finished.insert(*agency);
                }
                Op::Draw(draw) => m.recovered.draw = Some(*draw),
            }
        }
        m
    }

    fn read(store: &mut dyn Store) -> Result<Model, StorageError> {
        Ok(Model {
            recovered: store.recovered().clone(),
            bets: all(store)?,
        })
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Every step of the script, in order: the op it belongs to, the step, and how many
/// bytes that step writes (0 for a sync), measured on a run without faults.
fn step_plan(ops: &[Op]) -> Vec<(usize, Step, usize)> {
    let dir = TempDir::new("plan");
    let path = dir.bets();
    let mut store = CsvJournalStore::open(&path).expect("open");
    let mut plan = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let (b0, j0) = (file_len(&path), file_len(&journal_path(&path)));
        op.run(&mut store).expect("clean run");
        let (b1, j1) = (file_len(&path), file_len(&journal_path(&path)));
        for &step in op.steps() {
            let len = match step {
                Step::WriteRows => b1 - b0,
                Step::WriteRecord => j1 - j0,
                Step::SyncRows | Step::SyncRecord => 0,
            };
            plan.push((i, step, len as usize));
        }
    }
    plan
}

fn actions_for(step: Step, len: usize) -> Vec<FaultAction> {
    let mut actions = vec![
        FaultAction::Crash,
        FaultAction::Fail(ErrorKind::StorageFull),
        FaultAction::Fail(ErrorKind::Other),
    ];
    match step {
        Step::WriteRows | Step::WriteRecord => {
            let mut sizes = vec![0, 1, len / 2, len - 1, len];
            sizes.dedup();
            actions.extend(sizes.into_iter().map(FaultAction::TornWrite));
        }
        // At a sync step a torn write is a plain crash; once is enough.
        Step::SyncRows | Step::SyncRecord => actions.push(FaultAction::TornWrite(0)),
    }
    actions
}

/// Faults `action` at the `k`-th step (0-based), counting what it injects.
fn fault_at(k: usize, action: FaultAction, injected: Arc<AtomicUsize>) -> Faults {
    let seen = AtomicUsize::new(0);
    Faults::with(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == k {
            injected.fetch_add(1, Ordering::SeqCst);
            action
        } else {
            FaultAction::Proceed
        }
    })
}

// ---- crash at every step ---------------------------------------------------------

#[test]
fn crash_at_every_step_recovers_exactly_what_was_acknowledged() {
    let ops = script();
    let plan = step_plan(&ops);
    let injected = Arc::new(AtomicUsize::new(0));
    let (mut checked, mut survived, mut cases) = (0usize, 0usize, 0usize);
    let mut mismatches: Vec<String> = Vec::new();

    for (k, &(faulted, step, len)) in plan.iter().enumerate() {
        for action in actions_for(step, len) {
            cases += 1;
            let case = format!("step {k} ({step:?} of op {faulted}, {len} bytes), {action:?}");
            let dir = TempDir::new("sweep");
            let path = dir.bets();
            let mut store =
                CsvJournalStore::open_with_faults(&path, fault_at(k, action, injected.clone()))
                    .expect("open");

            let mut acked = Vec::new();
            let mut dead = false;
            for (i, op) in ops.iter().enumerate() {
                match op.run(&mut store) {
                    Ok(()) => {
                        if i == faulted {
                            mismatches.push(format!("{case}: the faulted call returned Ok"));
                        }
                        if dead {
                            mismatches.push(format!("{case}: op {i} succeeded after death"));
                        }
                        acked.push(i);
                    }
                    Err(err) => {
                        let io = matches!(err, StorageError::Io { .. });
                        // Only an injected write error is a plain, survivable Io error.
                        let want_io = i == faulted
                            && matches!(action, FaultAction::Fail(_))
                            && matches!(step, Step::WriteRows | Step::WriteRecord);
                        if io != want_io
                            || !matches!(
                                err,
                                StorageError::Io { .. } | StorageError::Disabled { .. }
                            )
                        {
                            mismatches.push(format!("{case}: op {i} failed with {err:?}"));
                        }
                        if i != faulted && !dead {
                            mismatches.push(format!("{case}: op {i} failed unfaulted: {err}"));
                        }
                        if !io {
                            dead = true;
                        }
                    }
                }
            }
            // The live store, unless "killed", streams exactly what it acknowledged.
            let crashed = matches!(action, FaultAction::Crash | FaultAction::TornWrite(_));
            if !crashed {
                match all(&mut store) {
                    Ok(got) if got == Model::of(acked.iter().map(|&i| &ops[i])).bets => {}
                    other => mismatches.push(format!("{case}: live for_each_bet gave {other:?}")),
                }
            } else if all(&mut store).is_ok() {
                mismatches.push(format!("{case}: a crashed store still reads"));
            }
            drop(store);

            // Recovery, from the files alone.
            let strict = Model::of(acked.iter().map(|&i| &ops[i]));
            let mut with_faulted = acked.clone();
            with_faulted.push(faulted);
            with_faulted.sort_unstable();
            let lenient = Model::of(with_faulted.iter().map(|&i| &ops[i]));
            // The faulted call may survive only if its whole record may have reached
            // the journal: a fault at its final sync, or a "torn" write of all of it.
            let may_survive = step == Step::SyncRecord
                || (step == Step::WriteRecord && action == FaultAction::TornWrite(len));
            let mut reopened = match CsvJournalStore::open(&path) {
                Ok(s) => s,
                Err(e) => {
                    mismatches.push(format!("{case}: reopen failed: {e}"));
                    continue;
                }
            };
            checked += 1;
            let got = match Model::read(&mut reopened) {
                Ok(m) => m,
                Err(e) => {
                    mismatches.push(format!("{case}: reading back failed: {e}"));
                    continue;
                }
            };
            if got == lenient && got != strict {
                if may_survive {
                    survived += 1;
                } else {
                    mismatches.push(format!("{case}: an unacknowledged call survived"));
                }
            } else if got != strict {
                mismatches.push(format!(
                    "{case}: recovered {:?} / {} bets, want {:?} / {} bets",
                    got.recovered,
                    got.bets.len(),
                    strict.recovered,
                    strict.bets.len()
                ));
            }
            // The files agree with each other: the bets file holds exactly the
            // committed rows, and the store goes on working after recovery.
            let on_disk = storage::for_each_stored(&path, |_, _| {}).expect("read the bets file");
            if on_disk != got.recovered.bets {
                mismatches.push(format!(
                    "{case}: bets file holds {on_disk} rows, recovered {}",
                    got.recovered.bets
                ));
            }
            let extra = bets("extra", 2);
            reopened
                .commit(&[batch(9, 900, 1, &extra)])
                .expect("commit after recovery");
            drop(reopened);
            let mut again = CsvJournalStore::open(&path).expect("second reopen");
            let mut want = got.clone();
            want.bets.extend(extra.iter().map(|b| (9, b.clone())));
            let again = Model::read(&mut again).expect("read back");
            if again.bets != want.bets || again.recovered.bets != got.recovered.bets + 2 {
                mismatches.push(format!("{case}: a commit after recovery was not kept"));
            }
        }
    }

    let injected = injected.load(Ordering::SeqCst);
    println!(
        "storage_crash: steps: {}, cases: {cases}, faults injected: {injected}, recoveries \
         checked: {checked}, unacknowledged calls that survived (allowed): {survived}, \
         mismatches: {}",
        plan.len(),
        mismatches.len()
    );
    for m in &mismatches {
        println!("  mismatch: {m}");
    }
    assert_eq!(injected, cases, "every case injected its fault");
    assert!(mismatches.is_empty(), "{} mismatches", mismatches.len());
}

// ---- single scenarios --------------------------------------------------------------

#[test]
fn a_commit_after_a_storage_full_rollback_succeeds() {
    for at in [Step::WriteRows, Step::WriteRecord] {
        let dir = TempDir::new("full");
        let path = dir.bets();
        let first = Arc::new(AtomicUsize::new(0));
        let hook = first.clone();
        let faults = Faults::with(move |step| {
            if step == at && hook.fetch_add(1, Ordering::SeqCst) == 1 {
                FaultAction::Fail(ErrorKind::StorageFull)
            } else {
                FaultAction::Proceed
            }
        });
        let mut store = CsvJournalStore::open_with_faults(&path, faults).expect("open");
        let (a, b, c) = (bets("a", 2), bets("b", 3), bets("c", 1));
        store.commit(&[batch(1, 1, 1, &a)]).expect("first");
        let (bets_len, journal_len) = (file_len(&path), file_len(&journal_path(&path)));
        let err = store.commit(&[batch(1, 1, 2, &b)]).expect_err("disk full");
        match &err {
            StorageError::Io { source, .. } => assert_eq!(source.kind(), ErrorKind::StorageFull),
            other => panic!("{at:?}: expected Io, got {other:?}"),
        }
        // Rolled back: both files are as before the failed commit.
        assert_eq!(file_len(&path), bets_len, "{at:?}");
        assert_eq!(file_len(&journal_path(&path)), journal_len, "{at:?}");
        // Space is back: the store goes on serving.
        store
            .commit(&[batch(1, 1, 2, &c)])
            .expect("after the rollback");
        store.record_fin(1).expect("fin");
        drop(store);
        let mut store = CsvJournalStore::open(&path).expect("reopen");
        let want = Model::of(&[
            Op::Commit(vec![(1, 1, 1, a.clone())]),
            Op::Commit(vec![(1, 1, 2, c.clone())]),
            Op::Fin(1),
        ]);
        assert_eq!(Model::read(&mut store).expect("read"), want, "{at:?}");
        assert_eq!(
            storage::for_each_stored(&path, |_, _| {}).expect("stored"),
            3,
            "{at:?}"
        );
    }
}

#[test]
fn a_failed_sync_disables_the_store() {
    for at in [Step::SyncRows, Step::SyncRecord] {
        let dir = TempDir::new("fsyncgate");
        let path = dir.bets();
        let calls = Arc::new(AtomicUsize::new(0));
        let hook = calls.clone();
        let faults = Faults::with(move |step| {
            if step == at && hook.fetch_add(1, Ordering::SeqCst) == 1 {
                FaultAction::Fail(ErrorKind::Other)
            } else {
                FaultAction::Proceed
            }
        });
        let mut store = CsvJournalStore::open_with_faults(&path, faults).expect("open");
        let a = bets("a", 2);
        store.commit(&[batch(1, 1, 1, &a)]).expect("first");
        let err = store
            .commit(&[batch(1, 1, 2, &bets("b", 1))])
            .expect_err("sync fails");
        let StorageError::Disabled { reason, .. } = &err else {
            panic!("{at:?}: expected Disabled, got {err:?}");
        };
        assert!(reason.contains("never retried"), "{reason}");
        // Every later write is refused with the reason, without touching the files.
        let before = (file_len(&path), file_len(&journal_path(&path)));
        for result in [
            store.commit(&[batch(1, 1, 3, &bets("c", 1))]),
            store.record_fin(1),
            store.record_draw(DrawRecord {
                winning_number: 1,
                bets: 2,
            }),
        ] {
            match result {
                Err(StorageError::Disabled { reason: r, .. }) => assert_eq!(&r, reason),
                other => panic!("{at:?}: expected Disabled, got {other:?}"),
            }
        }
        assert_eq!(before, (file_len(&path), file_len(&journal_path(&path))));
        assert!(
            err.to_string()
                .contains("disabled until the server restarts")
        );
        // What was committed before can still be read (for the draw).
        assert_eq!(all(&mut store).expect("read").len(), 2);
        drop(store);
        // The next open decides from the files: the second commit is there (its record
        // reached the page cache) or not, never in part.
        let mut store = CsvJournalStore::open(&path).expect("reopen");
        let n = store.recovered().bets;
        assert!(n == 2 || (at == Step::SyncRecord && n == 3), "{at:?}: {n}");
        assert_eq!(all(&mut store).expect("read").len() as u64, n);
    }
}

#[test]
fn a_second_open_of_the_same_path_is_locked() {
    let dir = TempDir::new("locked");
    let path = dir.bets();
    let mut store = CsvJournalStore::open(&path).expect("open");
    store
        .commit(&[batch(1, 1, 1, &bets("a", 1))])
        .expect("commit");
    let journal_before = fs::read(journal_path(&path)).expect("journal");
    match CsvJournalStore::open(&path) {
        Err(StorageError::Locked { path: p }) => assert_eq!(p, path),
        other => panic!("expected Locked, got {other:?}"),
    }
    // The refused open changed nothing, and the first store goes on.
    assert_eq!(
        fs::read(journal_path(&path)).expect("journal"),
        journal_before
    );
    store
        .commit(&[batch(1, 1, 2, &bets("b", 1))])
        .expect("commit");
    drop(store);
    let store = CsvJournalStore::open(&path).expect("open after the first is dropped");
    assert_eq!(store.recovered().bets, 2);
}

#[test]
fn not_a_file_is_refused_at_once() {
    let dir = TempDir::new("notafile");
    let sub = dir.0.join("a-directory");
    fs::create_dir_all(&sub).expect("dir");
    let mut paths = vec![sub.clone()];
    if Path::new("/dev/zero").exists() {
        paths.push(PathBuf::from("/dev/zero"));
    }
    for path in paths {
        let start = Instant::now();
        match CsvJournalStore::open(&path) {
            Err(StorageError::NotAFile { path: p, kind }) => {
                assert_eq!(p, path);
                assert!(!kind.is_empty());
            }
            other => panic!("{}: expected NotAFile, got {other:?}", path.display()),
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{}",
            path.display()
        );
    }
    // The journal's path being a directory is refused too.
    let path = dir.bets();
    fs::create_dir_all(journal_path(&path)).expect("dir");
    match CsvJournalStore::open(&path) {
        Err(StorageError::NotAFile { path: p, kind }) => {
            assert_eq!(p, journal_path(&path));
            assert_eq!(kind, "a directory");
        }
        other => panic!("expected NotAFile, got {other:?}"),
    }
}

#[test]
fn files_removed_or_replaced_while_open_disable_the_store() {
    type Mischief = fn(&Path);
    let cases: [(&str, Mischief, bool); 5] = [
        (
            "remove the bets file",
            |p| fs::remove_file(p).expect("rm"),
            true,
        ),
        (
            "rename the bets file",
            |p| fs::rename(p, p.with_extension("old")).expect("mv"),
            true,
        ),
        (
            "replace the bets file",
            |p| {
                let tmp = p.with_extension("new");
                fs::write(&tmp, "").expect("write");
                fs::rename(&tmp, p).expect("mv");
            },
            true,
        ),
        (
            "remove the journal",
            |p| fs::remove_file(journal_path(p)).expect("rm"),
            false,
        ),
        (
            "remove the directory",
            |p| fs::remove_dir_all(p.parent().expect("parent")).expect("rm -r"),
            true,
        ),
    ];
    for (what, mischief, names_bets) in cases {
        let dir = TempDir::new("mischief");
        let path = dir.0.join("data/bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        store
            .commit(&[batch(1, 1, 1, &bets("a", 2))])
            .expect("commit");
        // Keep a handle on the original file to see that nothing more reaches it.
        let held = fs::File::open(&path).expect("open");
        let held_len = held.metadata().expect("meta").len();
        mischief(&path);
        let err = store
            .commit(&[batch(1, 1, 2, &bets("b", 1))])
            .expect_err(what);
        let StorageError::Disabled { path: p, reason } = &err else {
            panic!("{what}: expected Disabled, got {err:?}");
        };
        assert!(
            reason.contains("was removed or replaced while the server ran"),
            "{what}: {reason}"
        );
        let want = if names_bets {
            path.clone()
        } else {
            journal_path(&path)
        };
        assert_eq!(p, &want, "{what}");
        assert!(
            reason.contains(&want.display().to_string()),
            "{what}: {reason}"
        );
        assert!(matches!(
            store.record_fin(1),
            Err(StorageError::Disabled { .. })
        ));
        assert_eq!(held.metadata().expect("meta").len(), held_len, "{what}");
    }
}

#[test]
fn a_journal_less_file_with_a_torn_last_line_is_adopted() {
    let dir = TempDir::new("adopt");
    let path = dir.bets();
    fs::write(
        &path,
        "1,Ana,Paz,30111222,1990-01-02,5\n\
         2,Luis,\"Ro, Jr\",30111223,1985-03-04,6\n\
         1,Eva,Paz,30111224,1970-05-06,7\n\
         2,Torn,Li,301",
    )
    .expect("write");
    let mut store = CsvJournalStore::open(&path).expect("adopt");
    let r = store.recovered().clone();
    assert_eq!(r.bets, 3);
    assert_eq!(r.agencies[&1].bets, 2);
    assert_eq!(r.agencies[&2].bets, 1);
    for p in r.agencies.values() {
        assert_eq!((p.upload, p.last_seq), (storage::ADOPTED_UPLOAD, 0));
    }
    assert!(r.finished.is_empty() && r.draw.is_none());
    let got = all(&mut store).expect("read");
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].1.last_name, "Ro, Jr");
    assert!(
        fs::read_to_string(&path)
            .expect("read")
            .ends_with("1970-05-06,7\n"),
        "the torn line is cut"
    );
    assert!(journal_path(&path).is_file());
    store
        .commit(&[batch(2, 5, 1, &bets("new", 2))])
        .expect("commit");
    drop(store);
    let mut store = CsvJournalStore::open(&path).expect("reopen");
    assert_eq!(store.recovered().bets, 5);
    assert_eq!(store.recovered().agencies[&2].upload, 5);
    assert_eq!(store.recovered().agencies[&2].bets, 3);
    assert_eq!(all(&mut store).expect("read").len(), 5);
}

// ---- the bets file changed outside the server (docs/STORAGE.md §4 step 4) ----------

fn snapshot(path: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        fs::read(path).expect("bets"),
        fs::read(journal_path(path)).expect("journal"),
    )
}

fn expect_corrupt(path: &Path) -> (String, String) {
    match CsvJournalStore::open(path) {
        Err(StorageError::Corrupt {
            path: p,
            at,
            reason,
        }) => {
            assert_eq!(p, path);
            (at, reason)
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(store) => panic!("expected Corrupt, opened with {:?}", store.recovered()),
    }
}

#[test]
fn a_bets_file_overwritten_with_longer_content_is_refused_untouched() {
    let dir = TempDir::new("overwritten");
    let path = dir.bets();
    let mut store = CsvJournalStore::open(&path).expect("open");
    store
        .commit(&[batch(1, 1, 1, &bets("a", 2))])
        .expect("commit");
    drop(store);
    let committed = file_len(&path);
    let other: String = (0..50)
        .map(|i| format!("4,Other,Person,{i:08},1999-09-09,{i}\n"))
        .collect();
    assert!(other.len() as u64 > committed);
    fs::write(&path, &other).expect("overwrite");
    let before = snapshot(&path);
    let (at, reason) = expect_corrupt(&path);
    assert_eq!(at, "1");
    assert!(
        reason.starts_with("batch seq 1 of agency 1 (lines 1..=2")
            && reason.contains("does not match its journal digest")
            && reason.ends_with("the bets file was changed outside the server"),
        "{reason}"
    );
    assert_eq!(snapshot(&path), before, "neither file was changed");
    // Refused again on every later open, still changing nothing.
    expect_corrupt(&path);
    assert_eq!(snapshot(&path), before);
}

#[test]
fn a_flipped_byte_in_a_committed_row_is_refused() {
    let dir = TempDir::new("flipped");
    let path = dir.bets();
    let mut store = CsvJournalStore::open(&path).expect("open");
    store
        .commit(&[batch(1, 1, 1, &bets("a", 2))])
        .expect("commit");
    store
        .commit(&[batch(2, 2, 1, &bets("b", 3)), batch(1, 1, 2, &bets("c", 1))])
        .expect("commit");
    drop(store);
    let intact = fs::read(&path).expect("bets");
    // A byte inside the first row of agency 2's batch (line 3): "Gómez" becomes "Hómez".
    let row3 = intact
        .split_inclusive(|&b| b == b'\n')
        .take(2)
        .map(<[u8]>::len)
        .sum::<usize>();
    let at_g = row3 + intact[row3..].iter().position(|&b| b == b'G').expect("G");
    let mut flipped = intact.clone();
    flipped[at_g] = b'H';
    fs::write(&path, &flipped).expect("flip");
    let before = snapshot(&path);
    let (at, reason) = expect_corrupt(&path);
    assert_eq!(at, "3");
    assert!(
        reason.starts_with("batch seq 1 of agency 2 (lines 3..=5"),
        "{reason}"
    );
    assert_eq!(snapshot(&path), before);
    fs::write(&path, &intact).expect("restore");
    assert_eq!(
        CsvJournalStore::open(&path)
            .expect("intact")
            .recovered()
            .bets,
        6
    );
}

#[test]
fn committed_rows_intact_plus_an_unacknowledged_tail_are_repaired() {
    let dir = TempDir::new("tail");
    let path = dir.bets();
    let mut store = CsvJournalStore::open(&path).expect("open");
    let a = bets("a", 2);
    store.commit(&[batch(1, 1, 1, &a)]).expect("commit");
    drop(store);
    let committed = fs::read(&path).expect("bets");
    let mut with_tail = committed.clone();
    with_tail.extend_from_slice(b"1,Never,Acknowledged,00000001,1990-01-01,1\n2,Torn,Ro");
    fs::write(&path, &with_tail).expect("tail");
    let mut store = CsvJournalStore::open(&path).expect("repaired");
    assert_eq!(store.recovered().bets, 2);
    assert_eq!(
        all(&mut store).expect("read"),
        a.iter().map(|b| (1, b.clone())).collect::<Vec<_>>()
    );
    drop(store);
    assert_eq!(
        fs::read(&path).expect("bets"),
        committed,
        "the tail was cut"
    );
}

/// What the check costs: the open time of a bets file of `LOTERIA_OPEN_ROWS` rows
/// (default 20 000, so the suite stays fast; the report's figure is from
/// `LOTERIA_OPEN_ROWS=1000000 cargo test --release --test storage_crash open_time
/// -- --nocapture`). Prints only; it asserts nothing about the time.
#[test]
fn open_time_of_a_large_bets_file() {
    let rows: usize = std::env::var("LOTERIA_OPEN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    const PER_BATCH: usize = 100;
    const BATCHES_PER_COMMIT: usize = 1_000;
    let dir = TempDir::new("open-time");
    let path = dir.bets();
    let mut store = CsvJournalStore::open(&path).expect("open");
    let template = bets("open-time", PER_BATCH as u16);
    let mut seq = 0u64;
    let mut left = rows;
    while left > 0 {
        let mut batches = Vec::new();
        while left > 0 && batches.len() < BATCHES_PER_COMMIT {
            let n = left.min(PER_BATCH);
            seq += 1;
            let agency = (seq % 5) as AgencyId + 1;
            batches.push(batch(agency, u64::from(agency), seq, &template[..n]));
            left -= n;
        }
        store.commit(&batches).expect("commit");
    }
    drop(store);
    let (bets_len, journal_len) = (file_len(&path), file_len(&journal_path(&path)));
    let start = Instant::now();
    let mut store = CsvJournalStore::open(&path).expect("reopen");
    let open = start.elapsed();
    assert_eq!(store.recovered().bets, rows as u64);
    let start = Instant::now();
    let n = store.for_each_bet(&mut |_, _| {}).expect("read");
    let read = start.elapsed();
    assert_eq!(n, rows as u64);
    println!(
        "storage_open_time: rows: {rows}, batches: {seq}, bets file: {bets_len} bytes, journal: \
         {journal_len} bytes, open (verifying the committed prefix): {:.1} ms, for_each_bet \
         (the draw's full parse, for scale): {:.1} ms ({} build)",
        open.as_secs_f64() * 1e3,
        read.as_secs_f64() * 1e3,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}
