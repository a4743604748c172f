//! Durable bet storage behind a small interface.
//!
//! The server talks to storage only through the [`Store`] trait: commit batches
//! durably, record an agency's `FIN`, record the draw, tell what is stored (rebuilt
//! from the store's own files when it is opened), and stream the stored bets to the
//! draw. [`CsvJournalStore`] is the one implementation: the course's 6-column CSV bets
//! file plus a commit journal beside it (`docs/STORAGE.md` gives both formats byte by
//! byte and the recovery rules). A database backend fits behind the same trait, and
//! the contract tests (`tests/storage_contract.rs`) run against each backend.
//!
//! The store knows nothing of sockets or of the protocol: the server's ledger decides
//! *whether* a batch may be stored; the store only makes it durable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::bet::{AgencyId, Bet, DrawResult, EARLIEST_BIRTHDATE};

mod csv_journal;
pub mod faults;
mod journal;
pub mod memory;
mod scan;

pub use csv_journal::{CsvJournalStore, for_each_stored, journal_path};
pub use faults::{FaultAction, Faults, Step};
pub use memory::MemoryStore;

/// An upload's identity: the client's fingerprint of what it uploads.
pub type UploadId = u64;

/// The upload id under which bets adopted from a bets file without a journal (an older
/// run) are recorded. Real clients never use it.
pub const ADOPTED_UPLOAD: UploadId = 0;

/// One batch to commit: `bets` of `agency`, batch `seq` of its upload `upload`.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The agency the bets belong to.
    pub agency: AgencyId,
    /// The upload the batch belongs to.
    pub upload: UploadId,
    /// The batch's sequence number within the upload.
    pub seq: u64,
    /// Where the batch ends in the agency's source: the 1-based line of its agency
    /// file that holds the batch's last bet (0 when the bets come from no file, e.g.
    /// a single bet). A resuming client goes on after this line.
    pub line: u64,
    /// The batch's content digest ([`digest`]), recorded so that a replay of the
    /// batch can be told from another batch with the same `seq`.
    pub digest: u32,
    /// The bets, at least one.
    pub bets: &'a [Bet],
    /// The same bets already formatted as the bets file's rows, with their digest
    /// ([`Rows::of`] of this batch's agency and bets), if the caller has them: a store
    /// that writes that format writes them as they are instead of formatting and
    /// digesting the bets again.
    pub rows: Option<&'a Rows>,
}

/// A batch's bets formatted as the bets file's rows (`docs/STORAGE.md` §1), with their
/// digest: made once, where the batch is accepted, and handed to the store's commit.
/// Only [`Rows::of`] makes one, so its digest is always that of its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    bytes: Vec<u8>,
    digest: u32,
}

impl Rows {
    /// The rows.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Their CRC-32C: the batch's [`digest`].
    pub fn digest(&self) -> u32 {
        self.digest
    }

    /// The rows of `bets` of `agency`.
    pub fn of(agency: AgencyId, bets: &[Bet]) -> Rows {
        let mut buf = Vec::new();
        csv_journal::append_rows(&mut buf, agency, bets);
        Rows {
            digest: csv_journal::checksum(&buf),
            bytes: buf,
        }
    }
}

/// What is durably stored of one agency.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgencyProgress {
    /// The upload the agency's bets belong to (that of its last committed batch).
    pub upload: UploadId,
    /// The `seq` of the last committed batch of that upload (0: none).
    pub last_seq: u64,
    /// How many bets the last committed batch had.
    pub last_count: u32,
    /// The digest of the last committed batch.
    pub last_digest: u32,
    /// The `line` of the last committed batch (0: none or no file).
    pub last_line: u64,
    /// Every stored bet of the agency, all uploads together.
    pub bets: u64,
}

impl AgencyProgress {
    /// The progress after a committed batch of `count` bets: batch `seq` of upload
    /// `upload`, ending at file line `line`, with content digest `digest`.
    pub fn advance(&mut self, upload: UploadId, seq: u64, line: u64, count: u32, digest: u32) {
        self.upload = upload;
        self.last_seq = seq;
        self.last_line = line;
        self.last_count = count;
        self.last_digest = digest;
        self.bets += u64::from(count);
    }
}

/// What the draw needs of one stored bet ([`Store::for_each_play`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Play<'a> {
    /// The agency the bet belongs to.
    pub agency: AgencyId,
    /// The bettor's document, as stored.
    pub document: &'a str,
    /// The number played.
    pub number: u16,
}

/// The draw, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrawRecord {
    /// The winning number the draw used.
    pub winning_number: u16,
    /// How many bets were stored when it ran.
    pub bets: u64,
}

/// Everything the server's state is rebuilt from after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Progress of every agency that stored at least one bet.
    pub agencies: BTreeMap<AgencyId, AgencyProgress>,
    /// Agencies whose `FIN` is recorded.
    pub finished: BTreeSet<AgencyId>,
    /// The draw, if it was recorded.
    pub draw: Option<DrawRecord>,
    /// Every stored bet.
    pub bets: u64,
}

/// Durable storage of bets, `FIN`s and the draw.
///
/// Every method that records something returns only once it is durable (synced to
/// disk, or committed by a database): a caller that acknowledges after it returns
/// never acknowledges what a crash could lose. A method that fails has recorded
/// nothing of its call, unless the error is [`StorageError::Disabled`], after which
/// the store refuses every write until it is opened again (whose recovery decides
/// from the store's own files what is committed).
pub trait Store: Send {
    /// What the store held when it was opened, as rebuilt by its recovery.
    fn recovered(&self) -> &Recovered;

    /// Commits `batches` durably, in order, as one unit: all of them or none. Several
    /// batches of several agencies may share one commit (group commit), and several
    /// consecutive batches of one upload may be in one commit (pipelining).
    fn commit(&mut self, batches: &[Batch<'_>]) -> Result<(), StorageError>;

    /// Records that `agency` sent `FIN`.
    fn record_fin(&mut self, agency: AgencyId) -> Result<(), StorageError>;

    /// Records that the draw ran with `draw.winning_number` over `draw.bets` bets.
    fn record_draw(&mut self, draw: DrawRecord) -> Result<(), StorageError>;

    /// Calls `f` with every committed bet, in commit order; returns how many.
    fn for_each_bet(&mut self, f: &mut dyn FnMut(AgencyId, Bet)) -> Result<u64, StorageError>;

    /// Calls `f` with what the draw needs of every committed bet — its agency,
    /// document and number — in commit order; returns how many. The same bets as
    /// [`Store::for_each_bet`], without building a [`Bet`] for each (the default does,
    /// through it; a backend may read the three fields in place).
    fn for_each_play(&mut self, f: &mut dyn FnMut(Play<'_>)) -> Result<u64, StorageError> {
        self.for_each_bet(&mut |agency, bet| {
            f(Play {
                agency,
                document: &bet.document,
                number: bet.number,
            })
        })
    }

    /// Calls `f`, in commit order, with what the draw needs of every committed bet that
    /// `keep` accepts; returns how many bets there are, kept or not. The same as
    /// [`Store::for_each_play`] with `f` called only on the kept bets (the default does
    /// just that); since `keep` may run on several threads at once, a backend may read
    /// its bets on several threads and hand `f` only the kept ones, in order.
    fn for_each_play_where(
        &mut self,
        keep: &(dyn Fn(Play<'_>) -> bool + Sync),
        f: &mut dyn FnMut(Play<'_>),
    ) -> Result<u64, StorageError> {
        self.for_each_play(&mut |play| {
            if keep(play) {
                f(play)
            }
        })
    }

    /// A short description for logs (e.g. the bets file's path).
    fn describe(&self) -> String;
}

/// The content digest of a batch: CRC-32C over the batch's bets in the bets file's
/// row format (agency included). Backend-independent, so a replayed batch is
/// recognised whatever stores it.
pub fn digest(agency: AgencyId, bets: &[Bet]) -> u32 {
    csv_journal::rows_digest(agency, bets)
}

/// Runs the draw for `winning_number` over every bet `store` holds; returns the result
/// and how many bets it read. It reads only each bet's agency, document and number,
/// and keeps only the winners ([`Store::for_each_play_where`]: the CSV store reads
/// its file on several threads), in commit order.
pub fn run_draw(
    store: &mut dyn Store,
    winning_number: u16,
) -> Result<(DrawResult, u64), StorageError> {
    let mut draw = DrawResult::new(winning_number);
    let count = store.for_each_play_where(&|play| play.number == winning_number, &mut |play| {
        // Only a winner becomes a `Bet` (about one in 10 000): the result keeps its
        // document; the names and the birthdate play no part in it.
        draw.consider(
            play.agency,
            Bet {
                first_name: String::new(),
                last_name: String::new(),
                document: play.document.to_string(),
                birthdate: EARLIEST_BIRTHDATE,
                number: play.number,
            },
        );
    })?;
    Ok((draw, count))
}

/// A storage failure, with the file it concerns.
#[derive(Debug)]
pub enum StorageError {
    /// Opening, writing, syncing or reading a file failed; nothing of the call is
    /// recorded and the store goes on serving (e.g. a full disk: retry later).
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// A stored record or row cannot be read back.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where: a 1-based line number (bets file) or a byte offset (journal).
        at: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store refuses every write until it is opened again: a sync failed (its
    /// data can no longer be trusted to be on disk), a rollback failed, or its files
    /// were removed or replaced under it.
    Disabled {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process (another server) holds the store's lock.
    Locked {
        /// The locked file.
        path: PathBuf,
    },
    /// The configured path is not a regular file (a directory, a device, …).
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: String,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            StorageError::Corrupt { path, at, reason } => {
                write!(f, "{}:{at}: {reason}", path.display())
            }
            StorageError::Disabled { path, reason } => write!(
                f,
                "storage {} is disabled until the server restarts: {reason}",
                path.display()
            ),
            StorageError::Locked { path } => write!(
                f,
                "{} is in use by another server (it holds the file's lock)",
                path.display()
            ),
            StorageError::NotAFile { path, kind } => write!(
                f,
                "{} is not a regular file but {kind}; the bets file must be a plain file",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
