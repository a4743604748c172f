//! [`CsvJournalStore`]: the course's 6-column CSV bets file plus a commit journal
//! beside it (`docs/STORAGE.md` gives both formats byte by byte, the write order and
//! the recovery rules).
//!
//! A commit writes its rows (one `write_all`), syncs the bets file, appends one COMMIT
//! record to the journal and syncs it; only then does it return `Ok`. The journal
//! decides what is stored: rows after the last recorded end offset were never
//! acknowledged and are cut off when the store is opened, once the rows before it have
//! been checked against the journal's digests ([`Verify`]): a bets file changed outside
//! the server is refused, not cut.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::faults::{FaultAction, Faults, Step};
use super::journal::{self, AdoptEntry, CommitEntry, Record, ScanError};
use super::{
    ADOPTED_UPLOAD, AgencyProgress, Batch, DrawRecord, Play, Recovered, StorageError, Store,
};
use crate::bet::{AgencyId, Bet};

/// The journal's path for the bets file at `bets`: its path with `.journal` appended
/// (`data/bets.csv` → `data/bets.csv.journal`).
pub fn journal_path(bets: &Path) -> PathBuf {
    let mut p = OsString::from(bets.as_os_str());
    p.push(".journal");
    PathBuf::from(p)
}

/// Where a new journal is written before it is renamed into place.
fn journal_tmp_path(bets: &Path) -> PathBuf {
    let mut p = OsString::from(journal_path(bets).as_os_str());
    p.push(".tmp");
    PathBuf::from(p)
}

/// The durable store: a CSV bets file and its commit journal (see the module docs).
///
/// It holds an exclusive lock on the bets file for its whole lifetime.
#[derive(Debug)]
pub struct CsvJournalStore {
    path: PathBuf,
    journal_path: PathBuf,
    bets: File,
    journal: File,
    /// The bets file's committed end: its length once every acknowledged commit is in.
    committed_end: u64,
    /// The journal's length once every acknowledged record is in.
    journal_len: u64,
    /// Bets committed, the recovered ones included.
    total_bets: u64,
    recovered: Recovered,
    faults: Faults,
    /// Set once the store refuses writes: the file concerned and why.
    disabled: Option<(PathBuf, String)>,
    /// Set by an injected crash: no more I/O of any kind.
    crashed: bool,
    rows: Vec<u8>,
    record: Vec<u8>,
}

/// What went wrong at a step.
enum Fault {
    /// A real (or injected) I/O error.
    Io(io::Error),
    /// An injected crash: stop all I/O.
    Crash(Step),
}

/// Which of the two files.
#[derive(Clone, Copy)]
enum Which {
    Bets,
    Journal,
}

impl CsvJournalStore {
    /// Opens the store whose bets file is at `path` (creating both files and the
    /// directory if needed), recovering from the files what is committed
    /// (`docs/STORAGE.md` §4).
    pub fn open(path: &Path) -> Result<CsvJournalStore, StorageError> {
        CsvJournalStore::open_with_faults(path, Faults::none())
    }

    /// [`CsvJournalStore::open`], consulting `faults` before each step of every
    /// durable write (fault-injection tests; production passes [`Faults::none`]).
    pub fn open_with_faults(path: &Path, faults: Faults) -> Result<CsvJournalStore, StorageError> {
        let path = path.to_path_buf();
        let jpath = journal_path(&path);
        let io_err = |p: &Path, action: &'static str| {
            let p = p.to_path_buf();
            move |source| StorageError::Io {
                path: p,
                action,
                source,
            }
        };
        // Refuse anything but a regular file before opening (let alone reading) it.
        let bets_existed = check_regular(&path)?;
        if check_regular(&jpath)? && !bets_existed {
            // We create the bets file before its journal, so this is no crash of ours:
            // the bets file was deleted. Refuse without creating anything.
            return Err(StorageError::Corrupt {
                at: "byte 0".into(),
                reason: format!(
                    "the bets file is missing but its journal {} exists: committed bets \
                     vanished (was the file deleted?)",
                    jpath.display()
                ),
                path,
            });
        }
        let dir = parent_dir(&path);
        fs::create_dir_all(&dir).map_err(io_err(&path, "create the directory of"))?;
        let bets = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        let meta = bets.metadata().map_err(io_err(&path, "inspect"))?;
        if !meta.is_file() {
            return Err(StorageError::NotAFile {
                path,
                kind: describe_kind(&meta.file_type()),
            });
        }
        match bets.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StorageError::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(io_err(&path, "lock")(e)),
        }
        if !bets_existed {
            // The new file's directory entry must be durable too.
            sync_dir(&dir).map_err(io_err(&path, "sync the directory of"))?;
        }
        // Only under the lock: another server may have created the journal meanwhile.
        if !check_regular(&jpath)? {
            adopt(&path, &bets)?;
        }

        let journal = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&jpath)
            .map_err(io_err(&jpath, "open"))?;
        let journal_meta = journal.metadata().map_err(io_err(&jpath, "inspect"))?;
        if !journal_meta.is_file() {
            return Err(StorageError::NotAFile {
                path: jpath,
                kind: describe_kind(&journal_meta.file_type()),
            });
        }
        let on_disk = journal_meta.len();
        let mut reader = BufReader::new(&journal);
        let mut head = [0u8; journal::HEADER_LEN as usize];
        let got = journal::read_full(&mut reader, &mut head).map_err(io_err(&jpath, "read"))?;
        journal::check_header(&head[..got]).map_err(|reason| StorageError::Corrupt {
            path: jpath.clone(),
            at: "byte 0".into(),
            reason,
        })?;
        let bets_len = bets.metadata().map_err(io_err(&path, "inspect"))?.len();
        let mut rebuild = Rebuild::default();
        // Each record's rows are checked against the bets file as the record is read,
        // before anything is repaired (docs/STORAGE.md §4 step 4, "Committed prefix").
        let mut verify = Verify::new(&path, &bets, bets_len);
        let scanned = journal::scan(&mut reader, on_disk, |_, record| {
            rebuild.apply(&record)?;
            verify.record(&record)
        });
        if let Some(err) = verify.failure.take() {
            return Err(err);
        }
        let scan = scanned.map_err(|e| match e {
            ScanError::Io(source) => StorageError::Io {
                path: jpath.clone(),
                action: "read",
                source,
            },
            ScanError::Corrupt { offset, reason } => StorageError::Corrupt {
                path: jpath.clone(),
                at: format!("byte {offset}"),
                reason,
            },
        })?;
        drop(reader);
        let end = rebuild.end;
        if bets_len < end {
            return Err(StorageError::Corrupt {
                path,
                at: format!("byte {bets_len}"),
                reason: format!(
                    "the bets file is {bets_len} bytes long but the journal commits {end} bytes \
                     of it: committed bets vanished (was the file truncated or replaced?)"
                ),
            });
        }
        if scan.valid_len < on_disk {
            journal
                .set_len(scan.valid_len)
                .and_then(|()| journal.sync_data())
                .map_err(io_err(&jpath, "truncate the torn tail of"))?;
            log::warn!(
                "action: storage_repair | result: success | path: {} | dropped_journal_bytes: {} | reason: {}",
                jpath.display(),
                on_disk - scan.valid_len,
                scan.torn.as_deref().unwrap_or("torn tail")
            );
        }
        if bets_len > end {
            bets.set_len(end)
                .and_then(|()| bets.sync_data())
                .map_err(io_err(&path, "truncate the unacknowledged rows of"))?;
            log::warn!(
                "action: storage_repair | result: success | path: {} | dropped_bytes: {}",
                path.display(),
                bets_len - end
            );
        }
        let recovered = rebuild.recovered;
        log::info!(
            "action: storage_open | result: success | path: {} | bets: {} | committed_bytes: {} | finished: {} | drawn: {}",
            path.display(),
            recovered.bets,
            end,
            recovered.finished.len(),
            recovered.draw.is_some()
        );
        Ok(CsvJournalStore {
            path,
            journal_path: jpath,
            bets,
            journal,
            committed_end: end,
            journal_len: scan.valid_len,
            total_bets: recovered.bets,
            recovered,
            faults,
            disabled: None,
            crashed: false,
            rows: Vec::new(),
            record: Vec::new(),
        })
    }

    /// Fails unless the store may write: not disabled, not crashed, and both files are
    /// still the ones at their paths.
    fn check_writable(&mut self) -> Result<(), StorageError> {
        if let Some((path, reason)) = &self.disabled {
            return Err(StorageError::Disabled {
                path: path.clone(),
                reason: reason.clone(),
            });
        }
        for which in [Which::Bets, Which::Journal] {
            let (path, file) = self.file(which);
            if let Err(reason) = same_file(path, file) {
                let path = path.to_path_buf();
                return Err(self.disable(path, reason));
            }
        }
        Ok(())
    }

    fn file(&self, which: Which) -> (&Path, &File) {
        match which {
            Which::Bets => (&self.path, &self.bets),
            Which::Journal => (&self.journal_path, &self.journal),
        }
    }

    fn disable(&mut self, path: PathBuf, reason: String) -> StorageError {
        log::error!(
            "action: storage_disable | result: success | path: {} | reason: {reason}",
            path.display()
        );
        self.disabled = Some((path.clone(), reason.clone()));
        StorageError::Disabled { path, reason }
    }

    fn crash(&mut self, step: Step) -> StorageError {
        self.crashed = true;
        let path = self.path.clone();
        let reason = format!("simulated crash (fault injection) at step {step:?}");
        self.disabled = Some((path.clone(), reason.clone()));
        StorageError::Disabled { path, reason }
    }

    /// Handles a failed write step: roll both files back to their committed ends.
    fn write_failed(&mut self, which: Which, fault: Fault) -> StorageError {
        let source = match fault {
            Fault::Crash(step) => return self.crash(step),
            Fault::Io(e) => e,
        };
        let path = self.file(which).0.to_path_buf();
        let rollback = self
            .bets
            .set_len(self.committed_end)
            .map_err(|e| (self.path.clone(), e))
            .and_then(|()| {
                self.journal
                    .set_len(self.journal_len)
                    .map_err(|e| (self.journal_path.clone(), e))
            });
        if let Err((rpath, e)) = rollback {
            return self.disable(
                rpath.clone(),
                format!(
                    "writing {} failed ({source}) and rolling {} back failed too ({e}): \
                     the file's end is unknown",
                    path.display(),
                    rpath.display()
                ),
            );
        }
        log::warn!(
            "action: storage_write | result: fail | path: {} | error: {source} | rollback: success",
            path.display()
        );
        StorageError::Io {
            path,
            action: "append to",
            source,
        }
    }

    /// Handles a failed sync step: never retried, the store is disabled.
    fn sync_failed(&mut self, which: Which, fault: Fault) -> StorageError {
        let source = match fault {
            Fault::Crash(step) => return self.crash(step),
            Fault::Io(e) => e,
        };
        let path = self.file(which).0.to_path_buf();
        let reason = format!(
            "syncing {} failed ({source}); a failed sync is never retried, since what it \
             should have made durable may be lost (the next start recovers from the files)",
            path.display()
        );
        self.disable(path, reason)
    }

    /// Writes `self.record` to the journal and syncs it (steps WriteRecord, SyncRecord).
    fn append_record(&mut self) -> Result<(), StorageError> {
        if let Err(fault) = write_step(
            &self.faults,
            Step::WriteRecord,
            &mut self.journal,
            &self.record,
        ) {
            return Err(self.write_failed(Which::Journal, fault));
        }
        if let Err(fault) = sync_step(&self.faults, Step::SyncRecord, &self.journal) {
            return Err(self.sync_failed(Which::Journal, fault));
        }
        self.journal_len += self.record.len() as u64;
        Ok(())
    }

    /// Fails once an injected crash stopped all I/O.
    fn check_readable(&self) -> Result<(), StorageError> {
        if self.crashed
            && let Some((path, reason)) = &self.disabled
        {
            return Err(StorageError::Disabled {
                path: path.clone(),
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    /// `count` rows were read up to the committed end: they must be every committed bet.
    fn check_count(&self, count: u64) -> Result<u64, StorageError> {
        if count != self.total_bets {
            return Err(StorageError::Corrupt {
                path: self.path.clone(),
                at: format!("byte {}", self.committed_end),
                reason: format!(
                    "the journal commits {} bets but the bets file holds {count} up to its \
                     committed end",
                    self.total_bets
                ),
            });
        }
        Ok(count)
    }

    /// Encodes `record` into `self.record`, refusing it (nothing written) if too big.
    fn encode(&mut self, record: &Record) -> Result<(), StorageError> {
        self.record.clear();
        record
            .encode(&mut self.record)
            .map_err(|reason| StorageError::Io {
                path: self.journal_path.clone(),
                action: "append to",
                source: io::Error::new(io::ErrorKind::InvalidInput, reason),
            })
    }
}

impl Store for CsvJournalStore {
    fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    fn commit(&mut self, batches: &[Batch<'_>]) -> Result<(), StorageError> {
        self.check_writable()?;
        if batches.is_empty() {
            return Ok(());
        }
        let invalid = |path: &Path, msg: String| StorageError::Io {
            path: path.to_path_buf(),
            action: "append to",
            source: io::Error::new(io::ErrorKind::InvalidInput, msg),
        };
        self.rows.clear();
        let mut entries = Vec::with_capacity(batches.len());
        let mut bets = 0u64;
        for b in batches {
            let start = self.rows.len();
            // The digest of rows formatted by the caller (`storage::Rows`) is theirs.
            let mut known_digest = None;
            let line_break = match b.rows {
                // One line per bet, or the bets are formatted again below to find the
                // one that breaks a line.
                Some(rows) if is_one_line_per_bet(rows.bytes(), b.bets.len()) => {
                    self.rows.extend_from_slice(rows.bytes());
                    known_digest = Some(rows.digest());
                    false
                }
                _ => push_rows(&mut self.rows, b.agency, b.bets),
            };
            // Every row must be exactly one line: recovery checks the committed rows
            // line by line against their digests (docs/STORAGE.md §4 step 4).
            if line_break && let Some(i) = b.bets.iter().position(has_line_break) {
                return Err(invalid(
                    &self.path,
                    format!(
                        "bet {} of batch seq {} of agency {} holds a line break; a stored row \
                         must be one line",
                        i + 1,
                        b.seq,
                        b.agency
                    ),
                ));
            }
            let count = u32::try_from(b.bets.len()).map_err(|_| {
                invalid(
                    &self.path,
                    format!("a batch of {} bets is too big", b.bets.len()),
                )
            })?;
            // The journal's digest must be that of the rows as written, or recovery
            // would refuse them.
            let digest =
                known_digest.unwrap_or_else(|| journal::CRC32C.checksum(&self.rows[start..]));
            if digest != b.digest {
                return Err(invalid(
                    &self.path,
                    format!(
                        "batch seq {} of agency {} carries digest {:#010x}, but its rows' \
                         digest is {digest:#010x}",
                        b.seq, b.agency, b.digest
                    ),
                ));
            }
            bets += u64::from(count);
            entries.push(CommitEntry {
                agency: b.agency,
                upload: b.upload,
                seq: b.seq,
                line: b.line,
                count,
                digest,
            });
        }
        let end = self.committed_end + self.rows.len() as u64;
        self.encode(&Record::Commit { end, entries })?;

        if let Err(fault) = write_step(&self.faults, Step::WriteRows, &mut self.bets, &self.rows) {
            return Err(self.write_failed(Which::Bets, fault));
        }
        if let Err(fault) = sync_step(&self.faults, Step::SyncRows, &self.bets) {
            return Err(self.sync_failed(Which::Bets, fault));
        }
        self.append_record()?;
        self.committed_end = end;
        self.total_bets += bets;
        Ok(())
    }

    fn record_fin(&mut self, agency: AgencyId) -> Result<(), StorageError> {
        self.check_writable()?;
        self.encode(&Record::Fin { agency })?;
        self.append_record()
    }

    fn record_draw(&mut self, draw: DrawRecord) -> Result<(), StorageError> {
        self.check_writable()?;
        self.encode(&Record::Draw {
            winning_number: draw.winning_number,
            bets: draw.bets,
        })?;
        self.append_record()
    }

    fn for_each_bet(&mut self, f: &mut dyn FnMut(AgencyId, Bet)) -> Result<u64, StorageError> {
        self.check_readable()?;
        let count = read_rows(&self.path, &self.bets, self.committed_end, f)?;
        self.check_count(count)
    }

    fn for_each_play(&mut self, f: &mut dyn FnMut(Play<'_>)) -> Result<u64, StorageError> {
        self.check_readable()?;
        let count = super::scan::for_each_play(&self.path, &self.bets, self.committed_end, f)?;
        self.check_count(count)
    }

    fn for_each_play_where(
        &mut self,
        keep: &(dyn Fn(Play<'_>) -> bool + Sync),
        f: &mut dyn FnMut(Play<'_>),
    ) -> Result<u64, StorageError> {
        self.check_readable()?;
        let count =
            super::scan::for_each_play_where(&self.path, &self.bets, self.committed_end, keep, f)?;
        self.check_count(count)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Performs a write step as the fault hook says.
fn write_step(faults: &Faults, step: Step, file: &mut File, data: &[u8]) -> Result<(), Fault> {
    match faults.at(step) {
        FaultAction::Proceed => file.write_all(data).map_err(Fault::Io),
        FaultAction::Fail(kind) => Err(Fault::Io(injected(kind, step))),
        FaultAction::Crash => Err(Fault::Crash(step)),
        FaultAction::TornWrite(n) => {
            // The "dying" process gets no say in what happens to the error.
            let _ = file.write_all(&data[..n.min(data.len())]);
            Err(Fault::Crash(step))
        }
    }
}

/// Performs a sync step as the fault hook says.
fn sync_step(faults: &Faults, step: Step, file: &File) -> Result<(), Fault> {
    match faults.at(step) {
        FaultAction::Proceed => file.sync_data().map_err(Fault::Io),
        FaultAction::Fail(kind) => Err(Fault::Io(injected(kind, step))),
        FaultAction::Crash | FaultAction::TornWrite(_) => Err(Fault::Crash(step)),
    }
}

fn injected(kind: io::ErrorKind, step: Step) -> io::Error {
    io::Error::new(kind, format!("injected {kind} at {step:?}"))
}

/// Checks that the file at `path` is still `file` (same device and inode).
fn same_file(path: &Path, file: &File) -> Result<(), String> {
    let gone = |detail: String| {
        format!(
            "{} was removed or replaced while the server ran ({detail}); nothing more is \
             written to it",
            path.display()
        )
    };
    let held = file
        .metadata()
        .map_err(|e| gone(format!("cannot inspect the open file: {e}")))?;
    let now = fs::metadata(path).map_err(|e| gone(e.to_string()))?;
    if now.dev() == held.dev() && now.ino() == held.ino() {
        Ok(())
    } else {
        Err(gone("another file is at its path now".into()))
    }
}

/// `Ok(true)` if `path` is a regular file, `Ok(false)` if nothing is there, and
/// [`StorageError::NotAFile`] for anything else. Only stats the path.
fn check_regular(path: &Path) -> Result<bool, StorageError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(true),
        Ok(meta) => Err(StorageError::NotAFile {
            path: path.to_path_buf(),
            kind: describe_kind(&meta.file_type()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StorageError::Io {
            path: path.to_path_buf(),
            action: "inspect",
            source,
        }),
    }
}

fn describe_kind(t: &fs::FileType) -> String {
    let kind = if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    };
    kind.to_string()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Adopts a bets file that has no journal (`docs/STORAGE.md` §4 step 3): cuts a torn
/// last line, counts the rows of each agency, and writes the journal (header and, if
/// the file holds anything, an ADOPT record) through a temporary file renamed into
/// place.
fn adopt(path: &Path, bets: &File) -> Result<(), StorageError> {
    let io_err = |p: &Path, action: &'static str| {
        let p = p.to_path_buf();
        move |source| StorageError::Io {
            path: p,
            action,
            source,
        }
    };
    let on_disk = bets.metadata().map_err(io_err(path, "inspect"))?.len();
    let end = complete_length(bets, on_disk).map_err(io_err(path, "read"))?;
    if end < on_disk {
        bets.set_len(end)
            .and_then(|()| bets.sync_data())
            .map_err(io_err(path, "truncate the torn last line of"))?;
        log::warn!(
            "action: storage_repair | result: success | path: {} | dropped_bytes: {}",
            path.display(),
            on_disk - end
        );
    }
    let mut per_agency: BTreeMap<AgencyId, u64> = BTreeMap::new();
    let count = read_rows(path, bets, end, |agency, _| {
        *per_agency.entry(agency).or_default() += 1;
    })?;
    let mut content = journal::header().to_vec();
    if end > 0 {
        let entries = per_agency
            .into_iter()
            .map(|(agency, bets)| AdoptEntry { agency, bets })
            .collect();
        Record::Adopt { end, entries }
            .encode(&mut content)
            .map_err(|reason| StorageError::Corrupt {
                path: path.to_path_buf(),
                at: "byte 0".into(),
                reason: format!("cannot adopt the file: {reason}"),
            })?;
    }
    let jpath = journal_path(path);
    let tmp = journal_tmp_path(path);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(&content)?;
        f.sync_all()
    });
    written.map_err(io_err(&tmp, "write"))?;
    fs::rename(&tmp, &jpath).map_err(io_err(&jpath, "create"))?;
    sync_dir(&parent_dir(path)).map_err(io_err(&jpath, "sync the directory of"))?;
    if end > 0 {
        log::info!(
            "action: storage_adopt | result: success | path: {} | bets: {count}",
            path.display()
        );
    } else {
        log::info!(
            "action: storage_create | result: success | path: {}",
            jpath.display()
        );
    }
    Ok(())
}

/// The store's state, rebuilt record by record.
#[derive(Default)]
struct Rebuild {
    recovered: Recovered,
    /// The committed end so far.
    end: u64,
}

impl Rebuild {
    fn apply(&mut self, record: &Record) -> Result<(), String> {
        match *record {
            Record::Commit { end, ref entries } => {
                self.advance(end)?;
                let r = &mut self.recovered;
                for e in entries {
                    r.agencies
                        .entry(e.agency)
                        .or_default()
                        .advance(e.upload, e.seq, e.line, e.count, e.digest);
                    r.bets += u64::from(e.count);
                }
            }
            Record::Adopt { end, ref entries } => {
                self.advance(end)?;
                let r = &mut self.recovered;
                for e in entries {
                    let p = r.agencies.entry(e.agency).or_insert(AgencyProgress {
                        upload: ADOPTED_UPLOAD,
                        ..AgencyProgress::default()
                    });
                    p.bets += e.bets;
                    r.bets += e.bets;
                }
            }
            Record::Fin { agency } => {
                self.recovered.finished.insert(agency);
            }
            Record::Draw {
                winning_number,
                bets,
            } => {
                self.recovered.draw = Some(DrawRecord {
                    winning_number,
                    bets,
                });
            }
        }
        Ok(())
    }

    fn advance(&mut self, end: u64) -> Result<(), String> {
        if end < self.end {
            return Err(format!(
                "committed end {end} is before the previous committed end {}",
                self.end
            ));
        }
        self.end = end;
        Ok(())
    }
}

/// How much of the bets file [`Verify`] reads at a time.
const VERIFY_BUFFER: usize = 64 * 1024;

/// Checks, record by record as the journal is read, that the bets file's committed
/// prefix holds exactly the rows the journal says were written (`docs/STORAGE.md` §4
/// step 4, "Committed prefix"): the rows of every COMMIT entry, line by line, hash to
/// the entry's digest, the rows of an ADOPT record count what it says per agency, and
/// each record's `end` falls exactly after its last row. The file is streamed once,
/// from byte 0, through a fixed buffer; nothing is written.
struct Verify<'a> {
    path: &'a Path,
    file: &'a File,
    /// The bets file's length when it was opened.
    len: u64,
    reader: BufReader<ReadAt<'a>>,
    /// Bytes checked so far (the reader's position).
    pos: u64,
    /// Complete lines checked so far.
    lines: u64,
    /// The last byte checked (a line feed unless a row is cut).
    last: Option<u8>,
    /// A record commits bytes beyond the file's end: the length check after the scan
    /// refuses the file, so checking stops.
    beyond: bool,
    /// What did not match; the scan is stopped when it is set.
    failure: Option<StorageError>,
}

impl<'a> Verify<'a> {
    fn new(path: &'a Path, file: &'a File, len: u64) -> Verify<'a> {
        Verify {
            path,
            file,
            len,
            reader: Self::reader_at(file, 0, len),
            pos: 0,
            lines: 0,
            last: None,
            beyond: false,
            failure: None,
        }
    }

    fn reader_at(file: &'a File, pos: u64, end: u64) -> BufReader<ReadAt<'a>> {
        BufReader::with_capacity(VERIFY_BUFFER, ReadAt { file, pos, end })
    }

    /// Checks the rows of one journal record; an `Err` stops the scan, and
    /// [`Verify::failure`] then says what did not match.
    fn record(&mut self, record: &Record) -> Result<(), String> {
        let end = match *record {
            Record::Commit { end, .. } | Record::Adopt { end, .. } => end,
            Record::Fin { .. } | Record::Draw { .. } => return Ok(()),
        };
        if self.beyond || end > self.len {
            self.beyond = true;
            return Ok(());
        }
        let checked = match record {
            Record::Commit { entries, .. } => self.commit(end, entries),
            Record::Adopt { entries, .. } => self.adopt(end, entries),
            Record::Fin { .. } | Record::Draw { .. } => Ok(()),
        };
        checked.map_err(|err| {
            let reason = err.to_string();
            self.failure = Some(err);
            reason
        })
    }

    /// A mismatch at `at`: a 1-based line, or `byte N`.
    fn corrupt(&self, at: impl fmt::Display, reason: String) -> StorageError {
        StorageError::Corrupt {
            path: self.path.to_path_buf(),
            at: at.to_string(),
            reason: format!("{reason}; the bets file was changed outside the server"),
        }
    }

    /// The rows of each entry, `count` lines each, must hash to its digest, and the
    /// last of them must end exactly at `end`.
    fn commit(&mut self, end: u64, entries: &[CommitEntry]) -> Result<(), StorageError> {
        for e in entries {
            let (first_line, start) = (self.lines + 1, self.pos);
            let mut digest = journal::CRC32C.digest();
            let mut left = e.count;
            while left > 0 {
                let path = self.path;
                let buf = self
                    .reader
                    .fill_buf()
                    .map_err(|err| read_error(path, err))?;
                let room = usize::try_from(end - self.pos).unwrap_or(usize::MAX);
                let buf = &buf[..buf.len().min(room)];
                if buf.is_empty() {
                    let cut = match self.last {
                        Some(b) if b != b'\n' => format!(
                            ", and they end inside a row (byte {} is not a line feed)",
                            self.pos - 1
                        ),
                        _ => String::new(),
                    };
                    return Err(self.corrupt(
                        self.lines + 1,
                        format!(
                            "batch seq {} of agency {} has {} rows in the journal, but the \
                             committed bytes (up to byte {end}) hold only {} complete rows of \
                             it{cut}",
                            e.seq,
                            e.agency,
                            e.count,
                            e.count - left
                        ),
                    ));
                }
                let mut take = buf.len();
                for i in memchr::memchr_iter(b'\n', buf) {
                    left -= 1;
                    self.lines += 1;
                    if left == 0 {
                        take = i + 1;
                        break;
                    }
                }
                digest.update(&buf[..take]);
                self.last = Some(buf[take - 1]);
                self.reader.consume(take);
                self.pos += take as u64;
            }
            let got = digest.finalize();
            if got != e.digest {
                return Err(self.corrupt(
                    first_line,
                    format!(
                        "batch seq {} of agency {} (lines {first_line}..={}, bytes {start}..{}) \
                         does not match its journal digest (its rows hash to {got:#010x}, the \
                         journal records {:#010x})",
                        e.seq, e.agency, self.lines, self.pos, e.digest
                    ),
                ));
            }
        }
        if self.pos != end {
            return Err(self.corrupt(
                self.lines + 1,
                format!(
                    "the journal's rows end at byte {}, but its commit record puts the committed \
                     end at byte {end}: bytes {}..{end} hold rows the journal does not know of",
                    self.pos, self.pos
                ),
            ));
        }
        Ok(())
    }

    /// The rows up to `end`, parsed as adoption parsed them, must hold exactly the
    /// ADOPT record's bets per agency, and end with a line feed.
    fn adopt(&mut self, end: u64, entries: &[AdoptEntry]) -> Result<(), StorageError> {
        let mut want: BTreeMap<AgencyId, u64> = BTreeMap::new();
        for e in entries {
            *want.entry(e.agency).or_default() += e.bets;
        }
        if end > self.pos {
            let mut last = [0u8; 1];
            self.file
                .read_exact_at(&mut last, end - 1)
                .map_err(|err| read_error(self.path, err))?;
            if last[0] != b'\n' {
                return Err(self.corrupt(
                    format_args!("byte {}", end - 1),
                    format!(
                        "the adopted rows end inside a row (byte {} is not a line feed)",
                        end - 1
                    ),
                ));
            }
        }
        let mut got: BTreeMap<AgencyId, u64> = BTreeMap::new();
        let (_, lines) = read_rows_between(self.path, self.file, self.pos, end, |agency, _| {
            *got.entry(agency).or_default() += 1;
        })
        .map_err(|err| match err {
            StorageError::Corrupt { path, at, reason } => StorageError::Corrupt {
                path,
                at,
                reason: format!(
                    "{reason} (an adopted row); the bets file was changed outside the server"
                ),
            },
            other => other,
        })?;
        let last_line = self.lines + lines;
        let agencies: BTreeSet<AgencyId> = want.keys().chain(got.keys()).copied().collect();
        for agency in agencies {
            let (w, g) = (
                want.get(&agency).copied().unwrap_or(0),
                got.get(&agency).copied().unwrap_or(0),
            );
            if w != g {
                return Err(self.corrupt(
                    last_line,
                    format!(
                        "the adopted rows (bytes {}..{end}) hold {g} bets of agency {agency}, but \
                         the journal's ADOPT record says {w}",
                        self.pos
                    ),
                ));
            }
        }
        self.pos = end;
        self.lines = last_line;
        self.last = Some(b'\n');
        self.reader = Self::reader_at(self.file, end, self.len);
        Ok(())
    }
}

fn read_error(path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    }
}

/// Whether `rows` are `count` rows of one line each: exactly `count` line feeds, the
/// last at the end, and no carriage return.
fn is_one_line_per_bet(rows: &[u8], count: usize) -> bool {
    rows.last() == Some(&b'\n')
        && memchr::memchr_iter(b'\n', rows).count() == count
        && memchr::memchr(b'\r', rows).is_none()
}

/// Whether a bet's text would put a line break (LF or CR) into its row.
fn has_line_break(bet: &Bet) -> bool {
    [&bet.first_name, &bet.last_name, &bet.document]
        .iter()
        .any(|s| s.contains(['\n', '\r']))
}

/// `bets` of `agency` formatted as the bets file's rows, appended to `buf`; whether a
/// field holds a line break (such rows cannot be committed).
pub(crate) fn append_rows(buf: &mut Vec<u8>, agency: AgencyId, bets: &[Bet]) -> bool {
    push_rows(buf, agency, bets)
}

/// The CRC-32C of rows as the bets file holds them (a batch's digest).
pub(crate) fn checksum(rows: &[u8]) -> u32 {
    journal::CRC32C.checksum(rows)
}

/// The CRC-32C of `bets` of `agency` formatted exactly as the bets file's rows: the
/// digest of their [`super::Rows`] (what the ledger makes of each batch it accepts).
pub(crate) fn rows_digest(agency: AgencyId, bets: &[Bet]) -> u32 {
    super::Rows::of(agency, bets).digest()
}

/// Formats `bets` as CSV rows of the bets file, appending them to `buf`. It cannot
/// fail (it only appends to memory); the `Result` is kept for its callers.
#[cfg(test)]
fn format_rows(buf: &mut Vec<u8>, agency: AgencyId, bets: &[Bet]) -> io::Result<()> {
    push_rows(buf, agency, bets);
    Ok(())
}

/// Appends the rows of `bets` of `agency` to `buf`, byte for byte as the `csv` crate's
/// default writer writes them (`docs/STORAGE.md` §1): fields separated by `,`, each
/// row ended by `\n`, and a field quoted — in `"`, its `"` doubled — exactly when it
/// holds a `,`, a `"`, a `\r` or a `\n`. The agency, the birthdate (`%Y-%m-%d`) and the
/// number are written digit by digit: no allocation per bet. Returns whether a field
/// holds a line break (LF or CR), which would break its row over two lines.
fn push_rows(buf: &mut Vec<u8>, agency: AgencyId, bets: &[Bet]) -> bool {
    let mut prefix = [0u8; 11];
    let prefix = {
        let n = push_decimal(&mut prefix, u64::from(agency));
        prefix[n] = b',';
        &prefix[..=n]
    };
    // A typical row is about 50 bytes.
    buf.reserve(bets.len() * 48);
    let mut line_break = false;
    for bet in bets {
        buf.extend_from_slice(prefix);
        line_break |= push_field(buf, bet.first_name.as_bytes());
        buf.push(b',');
        line_break |= push_field(buf, bet.last_name.as_bytes());
        buf.push(b',');
        line_break |= push_field(buf, bet.document.as_bytes());
        buf.push(b',');
        push_date(buf, bet.birthdate);
        buf.push(b',');
        push_number(buf, bet.number);
    }
    line_break
}

/// Whether `field` holds a byte for which the `csv` crate's writer (default
/// configuration) quotes a field: `,`, `"`, `\r` or `\n`. A field is a name or a
/// document, a few bytes, so this is a plain loop, not a library call (`memchr3` plus
/// a CR search measured slower per bet here); it does not stop at the first hit, which
/// lets the compiler vectorize it (and a hit is rare).
fn any_needs_quotes(field: &[u8]) -> bool {
    field.iter().fold(false, |any, &b| {
        any | matches!(b, b',' | b'"' | b'\r' | b'\n')
    })
}

/// Appends one text field, quoted as the `csv` crate's writer quotes it; returns
/// whether it holds a line break (only a quoted field can).
fn push_field(buf: &mut Vec<u8>, field: &[u8]) -> bool {
    if !any_needs_quotes(field) {
        buf.extend_from_slice(field);
        return false;
    }
    buf.push(b'"');
    for part in field.split_inclusive(|&b| b == b'"') {
        buf.extend_from_slice(part);
        if part.last() == Some(&b'"') {
            buf.push(b'"');
        }
    }
    buf.push(b'"');
    field.contains(&b'\n') || field.contains(&b'\r')
}

/// Writes `n` in decimal at the start of `out`; returns how many digits (`out` must
/// hold them: 20 for any u64, 10 for a u32, 5 for a u16).
fn push_decimal(out: &mut [u8], mut n: u64) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        // `n % 10` is a single digit.
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    out[..len].copy_from_slice(&tmp[i..]);
    len
}

/// Appends `n` in decimal and the row's line feed.
fn push_number(buf: &mut Vec<u8>, n: u16) {
    let n = u32::from(n);
    // Each `% 10` is a single digit.
    let d = |v: u32| b'0' + (v % 10) as u8;
    match n {
        0..=9 => buf.extend_from_slice(&[d(n), b'\n']),
        10..=99 => buf.extend_from_slice(&[d(n / 10), d(n), b'\n']),
        100..=999 => buf.extend_from_slice(&[d(n / 100), d(n / 10), d(n), b'\n']),
        1000..=9999 => {
            buf.extend_from_slice(&[d(n / 1000), d(n / 100), d(n / 10), d(n), b'\n']);
        }
        _ => buf.extend_from_slice(&[
            d(n / 10000),
            d(n / 1000),
            d(n / 100),
            d(n / 10),
            d(n),
            b'\n',
        ]),
    }
}

/// Appends `date` as chrono's `%Y-%m-%d` writes it: digits by hand for years
/// `0..=9999` (every bettor's), chrono itself for the rest (a sign, more digits).
fn push_date(buf: &mut Vec<u8>, date: NaiveDate) {
    use chrono::Datelike;
    let (year, month, day) = (date.year(), date.month(), date.day());
    match u16::try_from(year) {
        Ok(y) if y <= 9999 => {
            let two = |v: u32| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
            let y = u32::from(y);
            let [y1, y2] = two(y / 100);
            let [y3, y4] = two(y % 100);
            let [m1, m2] = two(month);
            let [d1, d2] = two(day);
            buf.extend_from_slice(&[y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2]);
        }
        _ => {
            // Writing into a Vec cannot fail.
            let _ = write!(buf, "{}", date.format("%Y-%m-%d"));
        }
    }
}

/// Reads the bets file at `path` row by row (any file in the bets file's format,
/// journal or not), calling `f` with each bet; returns how many.
pub fn for_each_stored<F>(path: &Path, f: F) -> Result<u64, StorageError>
where
    F: FnMut(AgencyId, Bet),
{
    let file = File::open(path).map_err(|source| StorageError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    read_rows(path, &file, u64::MAX, f)
}

/// Streams the rows of `file` (the bets file at `path`) from offset 0 up to `end`
/// through positioned reads, so the handle's own offset is left alone.
fn read_rows<F>(path: &Path, file: &File, end: u64, f: F) -> Result<u64, StorageError>
where
    F: FnMut(AgencyId, Bet),
{
    read_rows_between(path, file, 0, end, f).map(|(count, _)| count)
}

/// [`read_rows`] from offset `start`; returns how many rows and how many lines (line
/// feeds) were read.
fn read_rows_between<F>(
    path: &Path,
    file: &File,
    start: u64,
    end: u64,
    mut f: F,
) -> Result<(u64, u64), StorageError>
where
    F: FnMut(AgencyId, Bet),
{
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(ReadAt {
            file,
            pos: start,
            end,
        });
    let mut count = 0;
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        let more = reader.read_record(&mut record).map_err(|e| {
            if let csv::ErrorKind::Io(_) = e.kind() {
                StorageError::Io {
                    path: path.to_path_buf(),
                    action: "read",
                    source: csv_to_io(e),
                }
            } else {
                StorageError::Corrupt {
                    path: path.to_path_buf(),
                    at: line.to_string(),
                    reason: e.to_string(),
                }
            }
        })?;
        if !more {
            // The reader counts lines from 1 by the line feeds it has read.
            return Ok((count, reader.position().line().saturating_sub(1)));
        }
        let (agency, bet) = parse_row(&record).map_err(|reason| StorageError::Corrupt {
            path: path.to_path_buf(),
            at: line.to_string(),
            reason,
        })?;
        f(agency, bet);
        count += 1;
    }
}

/// Reads `file` from `pos` up to `end` with positioned reads.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

pub(super) fn parse_row(record: &csv::StringRecord) -> Result<(AgencyId, Bet), String> {
    if record.len() != 6 {
        return Err(format!("expected 6 fields, found {}", record.len()));
    }
    let agency = record[0]
        .parse()
        .map_err(|_| format!("agency {:?} is not a number", &record[0]))?;
    let birthdate = NaiveDate::parse_from_str(&record[4], "%Y-%m-%d")
        .map_err(|_| format!("birthdate {:?} is not YYYY-MM-DD", &record[4]))?;
    let number = record[5]
        .parse()
        .map_err(|_| format!("number {:?} is not a number", &record[5]))?;
    Ok((
        agency,
        Bet {
            first_name: record[1].to_string(),
            last_name: record[2].to_string(),
            document: record[3].to_string(),
            birthdate,
            number,
        },
    ))
}

fn csv_to_io(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// The length of the first `len` bytes of `file` up to and including their last line
/// break: what was written completely. Reads backwards from the end, a block at a time.
fn complete_length(file: &File, len: u64) -> io::Result<u64> {
    const BLOCK: u64 = 8192;
    let mut end = len;
    let mut block = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        // `end - start` is at most BLOCK, which fits a usize.
        let chunk = &mut block[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A new directory under the system temp dir for one test (also the draw scan's
    /// tests').
    pub(in crate::storage) fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "loteria-csvj-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn bet(first: &str, doc: &str, number: u16) -> Bet {
        Bet {
            first_name: first.into(),
            last_name: "Pérez, \"el\" Grande".into(),
            document: doc.into(),
            birthdate: NaiveDate::from_ymd_opt(1990, 1, 2).expect("date"),
            number,
        }
    }

    fn batch(agency: AgencyId, upload: u64, seq: u64, bets: &[Bet]) -> Batch<'_> {
        Batch {
            agency,
            upload,
            seq,
            // A cursor that differs from seq, so a mix-up would show.
            line: seq * 10 + 1,
            digest: rows_digest(agency, bets),
            bets,
            rows: None,
        }
    }

    fn all(store: &mut CsvJournalStore) -> Vec<(AgencyId, Bet)> {
        let mut out = Vec::new();
        let n = store
            .for_each_bet(&mut |a, b| out.push((a, b)))
            .expect("for_each_bet");
        assert_eq!(n as usize, out.len());
        out
    }

    fn corrupt_reason(err: StorageError) -> (String, String) {
        match err {
            StorageError::Corrupt { at, reason, .. } => (at, reason),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn journal_path_appends_journal() {
        assert_eq!(
            journal_path(Path::new("data/bets.csv")),
            PathBuf::from("data/bets.csv.journal")
        );
    }

    #[test]
    fn a_fresh_open_creates_both_files() {
        let dir = temp_dir("fresh");
        let path = dir.join("sub/bets.csv");
        let store = CsvJournalStore::open(&path).expect("open");
        assert_eq!(store.recovered(), &Recovered::default());
        assert_eq!(fs::read(&path).expect("bets"), b"");
        assert_eq!(
            fs::read(journal_path(&path)).expect("journal"),
            journal::header()
        );
        assert!(!journal_tmp_path(&path).exists());
        assert_eq!(store.describe(), path.display().to_string());
        drop(store);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn committed_bets_load_back_in_the_course_format() {
        let dir = temp_dir("format");
        let path = dir.join("bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        let one = [bet("Ana", "00000000", 7574), bet("Zoë", "1", 1)];
        let two = [bet("Luis", "2", 2)];
        store
            .commit(&[batch(1, 11, 1, &one), batch(2, 22, 1, &two)])
            .expect("commit");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "1,Ana,\"Pérez, \"\"el\"\" Grande\",00000000,1990-01-02,7574\n\
             1,Zoë,\"Pérez, \"\"el\"\" Grande\",1,1990-01-02,1\n\
             2,Luis,\"Pérez, \"\"el\"\" Grande\",2,1990-01-02,2\n"
        );
        // The digest is the CRC-32C of exactly those rows.
        let first_two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            rows_digest(1, &one),
            journal::CRC32C.checksum(first_two.as_bytes())
        );
        assert_eq!(super::super::digest(1, &one), rows_digest(1, &one));
        let mut seen = Vec::new();
        assert_eq!(
            for_each_stored(&path, |a, b| seen.push((a, b))).expect("stored"),
            3
        );
        assert_eq!(seen, all(&mut store));
        drop(store);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn progress_comes_from_the_latest_commit_and_bets_are_summed() {
        let dir = temp_dir("progress");
        let path = dir.join("bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        let a = [bet("A", "1", 1), bet("B", "2", 2)];
        let b = [bet("C", "3", 3)];
        store.commit(&[batch(1, 5, 1, &a)]).expect("commit");
        store
            .commit(&[batch(1, 6, 1, &b), batch(2, 7, 9, &a)])
            .expect("commit");
        store.record_fin(2).expect("fin");
        store
            .record_draw(DrawRecord {
                winning_number: 3,
                bets: 5,
            })
            .expect("draw");
        drop(store);
        let store = CsvJournalStore::open(&path).expect("reopen");
        let r = store.recovered();
        assert_eq!(
            r.agencies[&1],
            AgencyProgress {
                upload: 6,
                last_seq: 1,
                last_count: 1,
                last_digest: rows_digest(1, &b),
                last_line: 11,
                bets: 3
            }
        );
        assert_eq!(r.agencies[&2].last_seq, 9);
        assert_eq!(r.agencies[&2].last_line, 91);
        assert_eq!(r.agencies[&2].bets, 2);
        assert_eq!(r.bets, 5);
        assert_eq!(r.finished.iter().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(
            r.draw,
            Some(DrawRecord {
                winning_number: 3,
                bets: 5
            })
        );
        drop(store);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_torn_journal_tail_and_unacknowledged_rows_are_cut() {
        let dir = temp_dir("torn-tail");
        let path = dir.join("bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        let a = [bet("A", "1", 1)];
        store.commit(&[batch(1, 5, 1, &a)]).expect("commit");
        drop(store);
        let bets_len = fs::metadata(&path).expect("meta").len();
        let jpath = journal_path(&path);
        let journal_len = fs::metadata(&jpath).expect("meta").len();
        // A second commit whose rows reached the file but whose record is torn.
        let mut rows = Vec::new();
        format_rows(&mut rows, 1, &a).expect("rows");
        let mut record = Vec::new();
        Record::Fin { agency: 1 }
            .encode(&mut record)
            .expect("encode");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&rows))
            .expect("rows");
        OpenOptions::new()
            .append(true)
            .open(&jpath)
            .and_then(|mut f| f.write_all(&record[..record.len() - 1]))
            .expect("record");
        let mut store = CsvJournalStore::open(&path).expect("reopen");
        assert_eq!(store.recovered().bets, 1);
        assert!(store.recovered().finished.is_empty());
        assert_eq!(fs::metadata(&path).expect("meta").len(), bets_len);
        assert_eq!(fs::metadata(&jpath).expect("meta").len(), journal_len);
        assert_eq!(all(&mut store).len(), 1);
        drop(store);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_bets_file_shorter_than_committed_is_refused() {
        let dir = temp_dir("shorter");
        let path = dir.join("bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        store
            .commit(&[batch(1, 5, 1, &[bet("A", "1", 1)])])
            .expect("commit");
        drop(store);
        let len = fs::metadata(&path).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(len - 3).expect("truncate");
        drop(f);
        let (_, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("shorter"));
        assert!(reason.contains("vanished"), "{reason}");
        // Nothing was changed.
        assert_eq!(fs::metadata(&path).expect("meta").len(), len - 3);
        fs::remove_file(&path).expect("rm");
        let (_, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("missing"));
        assert!(reason.contains("missing"), "{reason}");
        assert!(!path.exists(), "nothing is created");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_foreign_journal_is_refused() {
        let dir = temp_dir("foreign");
        let path = dir.join("bets.csv");
        let jpath = journal_path(&path);
        fs::write(&path, "").expect("bets");
        for (content, want) in [
            (
                b"NOTAJRNL\0\0\0\x01\0\0\0\0".to_vec(),
                "not a lottery journal",
            ),
            (b"LOTJRNL\0\0\0\0\x02\0\0\0\0".to_vec(), "version 2"),
            (b"LOTJRNL".to_vec(), "shorter"),
        ] {
            fs::write(&jpath, &content).expect("journal");
            let err = CsvJournalStore::open(&path).expect_err("foreign");
            assert!(err.to_string().contains(want), "{err}");
            assert_eq!(fs::read(&jpath).expect("journal"), content);
        }
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn checksummed_damage_is_refused() {
        let dir = temp_dir("damage");
        let path = dir.join("bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        store.record_fin(1).expect("fin");
        store.record_fin(2).expect("fin");
        drop(store);
        let jpath = journal_path(&path);
        let mut bytes = fs::read(&jpath).expect("journal");
        bytes[journal::HEADER_LEN as usize + 12] ^= 1; // FIN 1's agency
        fs::write(&jpath, &bytes).expect("journal");
        let (at, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("damage"));
        assert_eq!(at, "byte 16");
        assert!(reason.contains("checksum"), "{reason}");
        // An end that goes backwards is refused as well.
        let mut bytes = journal::header().to_vec();
        for end in [10, 5] {
            Record::Commit {
                end,
                entries: vec![],
            }
            .encode(&mut bytes)
            .expect("encode");
        }
        fs::write(&jpath, &bytes).expect("journal");
        let (_, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("backwards"));
        assert!(reason.contains("before the previous"), "{reason}");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_journal_less_file_is_adopted_once() {
        let dir = temp_dir("adopt");
        let path = dir.join("bets.csv");
        fs::write(
            &path,
            "1,Ana,Paz,1,1990-01-02,5\n2,Luis,Ro,2,1990-01-02,6\n1,Eva,Paz,3,1990-01-02,7\n2,Torn,Li",
        )
        .expect("write");
        let mut store = CsvJournalStore::open(&path).expect("open");
        let r = store.recovered().clone();
        assert_eq!(r.bets, 3);
        assert_eq!(
            r.agencies[&1],
            AgencyProgress {
                upload: ADOPTED_UPLOAD,
                last_seq: 0,
                last_count: 0,
                last_digest: 0,
                last_line: 0,
                bets: 2
            }
        );
        assert_eq!(r.agencies[&2].bets, 1);
        assert_eq!(all(&mut store).len(), 3);
        assert!(
            fs::read_to_string(&path)
                .expect("read")
                .ends_with("1,Eva,Paz,3,1990-01-02,7\n")
        );
        // A later commit of an adopted agency takes over its progress.
        let b = [bet("New", "9", 9)];
        store.commit(&[batch(1, 77, 1, &b)]).expect("commit");
        drop(store);
        let journal_len = fs::metadata(journal_path(&path)).expect("meta").len();
        let mut store = CsvJournalStore::open(&path).expect("reopen");
        assert_eq!(store.recovered().agencies[&1].upload, 77);
        assert_eq!(store.recovered().agencies[&1].last_line, 11);
        assert_eq!(store.recovered().agencies[&1].bets, 3);
        assert_eq!(store.recovered().bets, 4);
        assert_eq!(all(&mut store).len(), 4);
        drop(store);
        // Not adopted twice.
        assert_eq!(
            fs::metadata(journal_path(&path)).expect("meta").len(),
            journal_len
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn adopting_a_bad_row_names_its_line_and_writes_no_journal() {
        let dir = temp_dir("adopt-bad");
        let path = dir.join("bets.csv");
        fs::write(
            &path,
            "1,Ana,Paz,1,1990-01-02,5\n1,Ana,Paz,1,1990-13-02,5\n",
        )
        .expect("write");
        let err = CsvJournalStore::open(&path).expect_err("bad date");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: birthdate \"1990-13-02\" is not YYYY-MM-DD",
                path.display()
            )
        );
        assert!(!journal_path(&path).exists());
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn long_files_find_their_last_line_break() {
        let dir = temp_dir("long");
        let path = dir.join("bets.csv");
        let mut content = "1,Ana,Paz,1,1990-01-02,5\n".repeat(1000);
        content.push_str(&"x".repeat(20_000));
        fs::write(&path, &content).expect("write");
        let mut store = CsvJournalStore::open(&path).expect("open");
        assert_eq!(store.recovered().bets, 1000);
        assert_eq!(all(&mut store).len(), 1000);
        drop(store);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let dir = temp_dir("unwritable");
        let file = dir.join("plain-file");
        fs::write(&file, "").expect("write");
        let err = CsvJournalStore::open(&file.join("bets.csv")).expect_err("parent is a file");
        assert!(err.to_string().contains("plain-file"), "{err}");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    /// Both files' bytes, to show that a refused open changed nothing.
    fn snapshot(path: &Path) -> (Vec<u8>, Vec<u8>) {
        (
            fs::read(path).expect("bets"),
            fs::read(journal_path(path)).expect("journal"),
        )
    }

    /// A store at `dir/bets.csv` holding two commits: agency 1 seq 1 (2 bets), then
    /// agency 2 seq 1 (1 bet) with agency 1 seq 2 (1 bet).
    fn two_commits(dir: &Path) -> PathBuf {
        let path = dir.join("bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        let (a, b, c) = (
            [bet("Ana", "1", 1), bet("Zoë", "2", 2)],
            [bet("Luis", "3", 3)],
            [bet("Eva", "4", 4)],
        );
        store.commit(&[batch(1, 5, 1, &a)]).expect("commit");
        store
            .commit(&[batch(2, 6, 1, &b), batch(1, 5, 2, &c)])
            .expect("commit");
        drop(store);
        path
    }

    #[test]
    fn the_raw_lines_of_a_batch_hash_to_its_digest() {
        // Recovery hashes the committed bytes line by line (each line with its LF);
        // that must be exactly `rows_digest`, whatever quoting the names need.
        let dir = temp_dir("raw-lines");
        let path = dir.join("bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        let names = [
            "Ana",
            "O'Neil",
            "Paz, María",
            "\"Tito\"",
            " spaced ",
            "日本",
            "a\"b,c",
        ];
        let mut batches = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let n = i as u16;
            batches.push(vec![
                Bet {
                    first_name: (*name).into(),
                    last_name: format!("{name}, {name}"),
                    document: format!("{:08}", i),
                    birthdate: NaiveDate::from_ymd_opt(1950 + i as i32, 1, 1).expect("date"),
                    number: n * 1111,
                };
                i + 1
            ]);
        }
        for (i, bets) in batches.iter().enumerate() {
            store
                .commit(&[batch(i as u32 + 1, 1, 1, bets)])
                .expect("commit");
        }
        drop(store);
        let text = fs::read(&path).expect("read");
        let mut lines = text.split_inclusive(|&b| b == b'\n');
        for (i, bets) in batches.iter().enumerate() {
            let raw: Vec<u8> = lines.by_ref().take(bets.len()).flatten().copied().collect();
            assert_eq!(
                journal::CRC32C.checksum(&raw),
                rows_digest(i as u32 + 1, bets),
                "batch {i}"
            );
            assert_eq!(raw.iter().filter(|&&b| b == b'\n').count(), bets.len());
        }
        assert_eq!(lines.next(), None);
        assert!(
            CsvJournalStore::open(&path).is_ok(),
            "and recovery accepts them"
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_commit_refuses_a_line_break_or_a_wrong_digest_before_writing() {
        let dir = temp_dir("refuse");
        let path = dir.join("bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        let good = [bet("Ana", "1", 1)];
        store.commit(&[batch(1, 5, 1, &good)]).expect("commit");
        let before = snapshot(&path);
        for bad in ["An\na", "Ana\r"] {
            let bets = [bet(bad, "2", 2)];
            let err = store
                .commit(&[batch(1, 5, 2, &good), batch(1, 5, 3, &bets)])
                .expect_err("line break");
            assert!(err.to_string().contains("holds a line break"), "{err}");
        }
        let mut wrong = batch(1, 5, 2, &good);
        wrong.digest ^= 1;
        let err = store.commit(&[wrong]).expect_err("digest");
        assert!(err.to_string().contains("carries digest"), "{err}");
        assert_eq!(snapshot(&path), before, "nothing was written");
        store
            .commit(&[batch(1, 5, 2, &good)])
            .expect("the store goes on");
        drop(store);
        assert_eq!(
            CsvJournalStore::open(&path)
                .expect("reopen")
                .recovered()
                .bets,
            2
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn rows_formatted_by_the_caller_are_written_as_the_store_would_write_them() {
        let (dir_a, dir_b) = (temp_dir("rows-given"), temp_dir("rows-made"));
        let (path_a, path_b) = (dir_a.join("bets.csv"), dir_b.join("bets.csv"));
        let mut given = CsvJournalStore::open(&path_a).expect("open");
        let mut made = CsvJournalStore::open(&path_b).expect("open");
        let bets = [
            bet("Ana", "1", 1),
            bet("Zoë, \"la\"", "2", 9999),
            bet("María José", "3", 0),
        ];
        let rows = super::super::Rows::of(4, &bets);
        let mut with_rows = batch(4, 5, 1, &bets);
        assert_eq!(with_rows.digest, rows.digest());
        with_rows.rows = Some(&rows);
        given
            .commit(&[with_rows])
            .expect("commit the caller's rows");
        made.commit(&[batch(4, 5, 1, &bets)]).expect("commit");
        drop((given, made));
        assert_eq!(
            fs::read(&path_a).expect("read"),
            fs::read(&path_b).expect("read")
        );
        assert_eq!(
            fs::read(journal_path(&path_a)).expect("read"),
            fs::read(journal_path(&path_b)).expect("read")
        );
        // Rows that would break a line are formatted again and refused by name.
        let mut store = CsvJournalStore::open(&path_a).expect("reopen");
        let before = snapshot(&path_a);
        for bad in ["An\na", "Ana\r"] {
            let bets = [bet(bad, "2", 2)];
            let rows = super::super::Rows::of(4, &bets);
            let mut b = batch(4, 5, 2, &bets);
            b.rows = Some(&rows);
            let err = store.commit(&[b]).expect_err("line break");
            assert!(err.to_string().contains("holds a line break"), "{err}");
        }
        assert_eq!(snapshot(&path_a), before, "nothing was written");
        fs::remove_dir_all(dir_a).expect("cleanup");
        fs::remove_dir_all(dir_b).expect("cleanup");
    }

    #[test]
    fn an_overwritten_bets_file_is_refused_and_left_untouched() {
        // The reviewer's case: other, longer content in place of the committed rows
        // used to be cut at the committed end (mid-row), and the draw then failed.
        let dir = temp_dir("overwritten");
        let path = dir.join("bets.csv");
        let mut store = CsvJournalStore::open(&path).expect("open");
        let two = [bet("Ana", "1", 1), bet("Zoë", "2", 2)];
        store.commit(&[batch(1, 5, 1, &two)]).expect("commit");
        drop(store);
        let committed = fs::metadata(&path).expect("meta").len();
        let other = "7,Someone,Else,12345678,1960-06-06,1234\n".repeat(5);
        assert!(other.len() as u64 > committed);
        fs::write(&path, &other).expect("overwrite");
        let before = snapshot(&path);
        let err = CsvJournalStore::open(&path).expect_err("overwritten");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:1: batch seq 1 of agency 1 (lines 1..=2, bytes 0..80) does not match its \
                 journal digest (its rows hash to {:#010x}, the journal records {:#010x}); the \
                 bets file was changed outside the server",
                path.display(),
                journal::CRC32C.checksum(&other.as_bytes()[..80]),
                rows_digest(1, &two)
            )
        );
        assert_eq!(snapshot(&path), before, "the refused open changed nothing");
        // A shorter overwrite is refused too (by the length check).
        fs::write(&path, "7,A,B,1,1960-06-06,1\n").expect("overwrite");
        let (_, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("shorter"));
        assert!(reason.contains("vanished"), "{reason}");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn every_flipped_bit_of_the_committed_rows_is_refused() {
        let dir = temp_dir("flip");
        let path = two_commits(&dir);
        let (bets, journal) = snapshot(&path);
        let mut lines_named = BTreeSet::new();
        for i in 0..bets.len() {
            for bit in [0x01u8, 0x20, 0x80] {
                let mut flipped = bets.clone();
                flipped[i] ^= bit;
                fs::write(&path, &flipped).expect("flip");
                let err = CsvJournalStore::open(&path).expect_err("a flipped bit");
                let (at, reason) = corrupt_reason(err);
                assert!(
                    reason.contains("changed outside the server"),
                    "byte {i}: {reason}"
                );
                lines_named.insert(at);
                assert_eq!(
                    fs::read(&path).expect("bets"),
                    flipped,
                    "byte {i} untouched"
                );
                assert_eq!(fs::read(journal_path(&path)).expect("journal"), journal);
            }
        }
        // Batches start on lines 1 (agency 1 seq 1), 3 and 4.
        assert!(
            lines_named.contains("1") && lines_named.contains("3"),
            "{lines_named:?}"
        );
        fs::write(&path, &bets).expect("restore");
        assert_eq!(
            CsvJournalStore::open(&path)
                .expect("intact")
                .recovered()
                .bets,
            4
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_committed_prefix_that_ends_mid_row_is_refused() {
        let dir = temp_dir("mid-row");
        let path = two_commits(&dir);
        let mut bets = fs::read(&path).expect("bets");
        let last = bets.len() - 1;
        bets[last] = b'x';
        bets.extend_from_slice(b"\n");
        fs::write(&path, &bets).expect("write");
        let (at, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("mid-row"));
        assert_eq!(at, "4");
        assert!(
            reason.contains(&format!("byte {last} is not a line feed")),
            "{reason}"
        );
        assert_eq!(fs::read(&path).expect("bets"), bets);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn rows_the_journal_does_not_know_of_inside_the_committed_end_are_refused() {
        let dir = temp_dir("unknown-rows");
        let path = dir.join("bets.csv");
        let a = [bet("Ana", "1", 1)];
        let mut rows = Vec::new();
        format_rows(&mut rows, 1, &a).expect("rows");
        let first = rows.len() as u64;
        format_rows(&mut rows, 1, &a).expect("rows");
        fs::write(&path, &rows).expect("bets");
        let mut journal = journal::header().to_vec();
        Record::Commit {
            end: rows.len() as u64,
            entries: vec![CommitEntry {
                agency: 1,
                upload: 5,
                seq: 1,
                line: 1,
                count: 1,
                digest: rows_digest(1, &a),
            }],
        }
        .encode(&mut journal)
        .expect("encode");
        fs::write(journal_path(&path), &journal).expect("journal");
        let (at, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("unknown"));
        assert_eq!(at, "2");
        assert!(
            reason.contains(&format!(
                "bytes {first}..{} hold rows the journal does not know of",
                rows.len()
            )),
            "{reason}"
        );
        assert_eq!(fs::read(&path).expect("bets"), rows);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn an_intact_prefix_with_an_unacknowledged_tail_is_still_repaired() {
        let dir = temp_dir("tail");
        let path = two_commits(&dir);
        let committed = fs::read(&path).expect("bets");
        for tail in [
            &b"9,Never,Acked,1,1990-01-01,1\n"[..],
            b"garbage without a line feed",
            b"\n\n\n",
        ] {
            let mut bets = committed.clone();
            bets.extend_from_slice(tail);
            fs::write(&path, &bets).expect("write");
            let mut store = CsvJournalStore::open(&path).expect("repaired");
            assert_eq!(store.recovered().bets, 4);
            assert_eq!(all(&mut store).len(), 4);
            drop(store);
            assert_eq!(fs::read(&path).expect("bets"), committed, "the tail is cut");
        }
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn adopted_rows_are_checked_per_agency() {
        let dir = temp_dir("adopt-check");
        let path = dir.join("bets.csv");
        let adopted = "1,Ana,Paz,1,1990-01-02,5\n2,Luis,\"Ro, Jr\",2,1990-01-02,6\n\
                       1,Eva,Paz,3,1990-01-02,7\n";
        fs::write(&path, adopted).expect("write");
        let mut store = CsvJournalStore::open(&path).expect("adopt");
        store
            .commit(&[batch(2, 9, 1, &[bet("New", "9", 9)])])
            .expect("commit");
        drop(store);
        let intact = fs::read(&path).expect("bets");
        assert_eq!(
            CsvJournalStore::open(&path)
                .expect("reopen")
                .recovered()
                .bets,
            4
        );
        // An adopted row moved to another agency (same length).
        let mut moved = intact.clone();
        moved[0] = b'2';
        fs::write(&path, &moved).expect("write");
        let (at, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("moved"));
        assert_eq!(at, "3");
        assert!(
            reason.contains("hold 1 bets of agency 1, but the journal's ADOPT record says 2"),
            "{reason}"
        );
        assert_eq!(fs::read(&path).expect("bets"), moved);
        // The commit after the adopted rows is checked from the right line.
        let mut changed = intact.clone();
        let at_new = adopted.len() + 2;
        changed[at_new] ^= 0x20;
        fs::write(&path, &changed).expect("write");
        let (at, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("changed"));
        assert_eq!(at, "4");
        assert!(reason.contains("batch seq 1 of agency 2"), "{reason}");
        // An adopted range that no longer ends with a line feed.
        let mut cut = intact.clone();
        cut[adopted.len() - 1] = b' ';
        fs::write(&path, &cut).expect("write");
        let (at, reason) = corrupt_reason(CsvJournalStore::open(&path).expect_err("cut"));
        assert_eq!(at, format!("byte {}", adopted.len() - 1));
        assert!(reason.contains("not a line feed"), "{reason}");
        fs::remove_dir_all(dir).expect("cleanup");
    }
}

#[cfg(test)]
mod format_tests {
    //! The hand-written row formatter against the `csv` crate's writer, which wrote the
    //! bets file before it (and still defines its bytes: `docs/STORAGE.md` §1).
    use super::*;
    use proptest::prelude::*;

    /// The rows as the `csv` crate's default writer writes them (the former formatter).
    fn reference_rows(agency: AgencyId, bets: &[Bet]) -> Vec<u8> {
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        for bet in bets {
            writer
                .write_record([
                    agency.to_string(),
                    bet.first_name.clone(),
                    bet.last_name.clone(),
                    bet.document.clone(),
                    bet.birthdate.format("%Y-%m-%d").to_string(),
                    bet.number.to_string(),
                ])
                .expect("write");
        }
        writer.into_inner().expect("flush")
    }

    fn check(agency: AgencyId, bets: &[Bet]) {
        let mut ours = Vec::new();
        format_rows(&mut ours, agency, bets).expect("format");
        let theirs = reference_rows(agency, bets);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "{bets:?}"
        );
        assert_eq!(ours, theirs);
        assert_eq!(rows_digest(agency, bets), journal::CRC32C.checksum(&theirs));
    }

    const HOSTILE: [&str; 22] = [
        "",
        "Ana",
        "\"",
        "\"\"",
        "a\"b",
        "\"quoted\"",
        ",",
        "a,b",
        ",lead",
        "trail,",
        "\r",
        "\n",
        "a\r\nb",
        " spaced ",
        "  ",
        "\t",
        "Zoë Núñez",
        "日本語",
        "🎲,\"🎲\"",
        "#comment",
        "'single'",
        "\\back\\slash",
    ];

    #[test]
    fn hostile_fields_are_quoted_exactly_as_the_csv_writer_quotes_them() {
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("date");
        let long = "x\",y".repeat(5_000);
        let mut fields: Vec<String> = HOSTILE.iter().map(|s| (*s).to_string()).collect();
        fields.push(long);
        let mut bets = Vec::new();
        for (i, a) in fields.iter().enumerate() {
            for (j, b) in fields.iter().enumerate() {
                bets.push(Bet {
                    first_name: a.clone(),
                    last_name: b.clone(),
                    document: fields[(i + j) % fields.len()].clone(),
                    birthdate: date(1900 + (i * 7 + j) as i32, 1 + (j % 12) as u32, 1 + i as u32),
                    number: (i * 1000 + j) as u16,
                });
            }
        }
        check(1, &bets);
        for agency in [0, 9, 10, 99, 12345, u32::MAX] {
            check(agency, &bets[..3]);
        }
    }

    #[test]
    fn every_number_and_unusual_years_are_written_as_before() {
        let base = Bet {
            first_name: "Ana".into(),
            last_name: "Paz".into(),
            document: "1".into(),
            birthdate: NaiveDate::from_ymd_opt(1990, 1, 2).expect("date"),
            number: 0,
        };
        let numbers: Vec<Bet> = (0..=u16::MAX)
            .step_by(7)
            .chain([9, 10, 99, 100, 999, 1000, 9999, 10000, u16::MAX])
            .map(|number| Bet {
                number,
                ..base.clone()
            })
            .collect();
        check(3, &numbers);
        let years: Vec<Bet> = [
            -262_000, -10_000, -1, 0, 1, 9, 99, 999, 1000, 9999, 10_000, 262_000,
        ]
        .into_iter()
        .flat_map(|y| [(y, 1, 1), (y, 12, 31)])
        .filter_map(|(y, m, d)| NaiveDate::from_ymd_opt(y, m, d))
        .map(|birthdate| Bet {
            birthdate,
            ..base.clone()
        })
        .collect();
        assert!(years.len() >= 20);
        check(4, &years);
    }

    /// What formatting and digesting cost per bet, the former `csv` writer's way and
    /// now: `cargo test --release --lib format_cost -- --ignored --nocapture`. Prints
    /// only; asserts nothing about time.
    #[test]
    #[ignore = "a benchmark: run it by name"]
    fn format_cost() {
        let bets: Vec<Bet> = (0..100u32)
            .map(|i| Bet {
                first_name: "Tiago Nicolás".into(),
                last_name: if i % 10 == 0 {
                    "Núñez, Jr".into()
                } else {
                    "Núñez".into()
                },
                document: format!("{:08}", 30_000_000 + i),
                birthdate: NaiveDate::from_ymd_opt(1950 + (i % 50) as i32, 5, 17).expect("date"),
                number: (i * 97 % 10_000) as u16,
            })
            .collect();
        const ROUNDS: u32 = 10_000;
        let per_bet = |elapsed: std::time::Duration| {
            elapsed.as_secs_f64() * 1e9 / f64::from(ROUNDS) / bets.len() as f64
        };
        let start = std::time::Instant::now();
        let mut sink = 0u32;
        for _ in 0..ROUNDS {
            sink ^= journal::CRC32C.checksum(&reference_rows(7, &bets));
        }
        let old = per_bet(start.elapsed());
        let start = std::time::Instant::now();
        let mut buf = Vec::new();
        for _ in 0..ROUNDS {
            buf.clear();
            push_rows(&mut buf, 7, &bets);
        }
        let format = per_bet(start.elapsed());
        let start = std::time::Instant::now();
        for _ in 0..ROUNDS {
            sink ^= rows_digest(7, &bets);
        }
        let digest = per_bet(start.elapsed());
        let start = std::time::Instant::now();
        for _ in 0..ROUNDS {
            sink ^= journal::CRC32C.checksum(&buf);
        }
        let crc = per_bet(start.elapsed());
        println!(
            "format_cost (ns per bet, {} bytes per row): csv writer + crc: {old:.1}, push_rows: \
             {format:.1}, rows_digest (format + crc): {digest:.1}, crc alone: {crc:.1} [{sink:x}]",
            buf.len() / bets.len()
        );
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z ]{0,12}",
            "[\",\r\n a\u{e9}\u{65e5}]{0,10}",
            any::<String>(),
            prop::sample::select(HOSTILE.to_vec()).prop_map(String::from),
        ]
    }

    fn any_bet() -> impl Strategy<Value = Bet> {
        (
            field(),
            field(),
            field(),
            (-5000i32..15000, 1u32..=12, 1u32..=28),
            any::<u16>(),
        )
            .prop_map(|(first_name, last_name, document, (y, m, d), number)| Bet {
                first_name,
                last_name,
                document,
                birthdate: NaiveDate::from_ymd_opt(y, m, d).unwrap_or(NaiveDate::MIN),
                number,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn generated_batches_format_byte_for_byte_as_the_csv_writer(
            agency in any::<u32>(),
            bets in prop::collection::vec(any_bet(), 1..40),
        ) {
            check(agency, &bets);
        }
    }
}
