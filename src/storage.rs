//! Durable bet storage: an append-only CSV file in the course's format.
//!
//! Each row is `agency,first_name,last_name,document,birthdate,number` with no header,
//! as the course's `store_bets` / `load_bets` write and read it. [`Storage::append`]
//! writes a whole batch with one `write_all` and syncs it to disk before returning, so
//! a caller that acknowledges after `append` never acknowledges a bet that a crash
//! could lose. A failed append is rolled back to the previous length, and a torn last
//! line (a crash in the middle of a write, never acknowledged) is cut off on open.
//!
//! Known limit: a crash in the middle of a batch's write can leave that batch's first
//! rows complete on disk. They were never acknowledged, so an agency that uploads
//! again would store them twice; making that impossible needs a journal of committed
//! offsets, which this format (the course's plain CSV) does not have.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::bet::{AgencyId, Bet};

/// The open bets file.
#[derive(Debug)]
pub struct Storage {
    path: PathBuf,
    file: File,
    len: u64,
    buf: Vec<u8>,
    /// Set when a failed append could not be rolled back: the file's end is then
    /// unknown, and appending more could glue rows to a torn one.
    broken: Option<String>,
}

/// A storage failure, with the file (and line) it concerns.
#[derive(Debug)]
pub enum StorageError {
    /// Opening, writing, syncing or reading the file failed.
    Io {
        /// The bets file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// A stored row cannot be read back.
    Corrupt {
        /// The bets file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
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
            StorageError::Corrupt { path, line, reason } => {
                write!(f, "{}:{line}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            StorageError::Corrupt { .. } => None,
        }
    }
}

impl Storage {
    /// Opens (creating it and its directory if needed) the bets file at `path` for
    /// appending, and cuts off a torn last line left by a crash.
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        let io_err = |action, source| StorageError::Io {
            path: path.to_path_buf(),
            action,
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io_err("create the directory of", e))?;
        }
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| io_err("open", e))?;
        if !existed {
            // A new file's directory entry must be durable too, or a crash could lose
            // the whole file with every batch acknowledged into it.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            File::open(dir.unwrap_or(Path::new(".")))
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("sync the directory of", e))?;
        }
        let len = complete_length(&mut file).map_err(|e| io_err("read", e))?;
        let on_disk = file.metadata().map_err(|e| io_err("inspect", e))?.len();
        if len != on_disk {
            log::warn!(
                "action: storage_repair | result: success | path: {} | dropped_bytes: {}",
                path.display(),
                on_disk - len
            );
            file.set_len(len).map_err(|e| io_err("truncate", e))?;
            file.sync_all().map_err(|e| io_err("sync", e))?;
        }
        Ok(Storage {
            path: path.to_path_buf(),
            file,
            len,
            buf: Vec::new(),
            broken: None,
        })
    }

    /// Appends `bets` of `agency` and syncs them to disk. Either all of them are stored
    /// or, on error, none.
    pub fn append(&mut self, agency: AgencyId, bets: &[Bet]) -> Result<(), StorageError> {
        if let Some(reason) = &self.broken {
            return Err(self.io_error(
                "append to",
                io::Error::other(format!("storage disabled after {reason}")),
            ));
        }
        self.buf.clear();
        format_rows(&mut self.buf, agency, bets)
            .map_err(|e| self.io_error("format a row for", e))?;
        let written = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Roll back whatever part of the batch reached the file. If even that
            // fails, refuse every later append (the torn tail is cut off the next
            // time the file is opened).
            if let Err(rollback) = self.file.set_len(self.len) {
                self.broken = Some(format!("a failed rollback ({rollback})"));
            }
            return Err(self.io_error("append to", e));
        }
        self.len += self.buf.len() as u64;
        Ok(())
    }

    /// Reads every stored bet, in storage order.
    #[cfg(test)]
    fn load(&self) -> Result<Vec<(AgencyId, Bet)>, StorageError> {
        let mut bets = Vec::new();
        for_each_stored(&self.path, |agency, bet| bets.push((agency, bet)))?;
        Ok(bets)
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> StorageError {
        StorageError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }
}

/// Formats `bets` as CSV rows of the bets file into `buf`.
fn format_rows(buf: &mut Vec<u8>, agency: AgencyId, bets: &[Bet]) -> io::Result<()> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(buf);
    let agency = agency.to_string();
    for bet in bets {
        let birthdate = bet.birthdate.format("%Y-%m-%d").to_string();
        let number = bet.number.to_string();
        writer
            .write_record([
                agency.as_str(),
                &bet.first_name,
                &bet.last_name,
                &bet.document,
                &birthdate,
                &number,
            ])
            .map_err(csv_to_io)?;
    }
    writer.flush()
}

/// Reads the bets file at `path` row by row, calling `f` with each bet.
pub fn for_each_stored<F>(path: &Path, mut f: F) -> Result<u64, StorageError>
where
    F: FnMut(AgencyId, Bet),
{
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| StorageError::Io {
            path: path.to_path_buf(),
            action: "read",
            source: csv_to_io(e),
        })?;
    let mut count = 0;
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        let more = reader
            .read_record(&mut record)
            .map_err(|e| StorageError::Corrupt {
                path: path.to_path_buf(),
                line,
                reason: e.to_string(),
            })?;
        if !more {
            return Ok(count);
        }
        let (agency, bet) = parse_row(&record).map_err(|reason| StorageError::Corrupt {
            path: path.to_path_buf(),
            line,
            reason,
        })?;
        f(agency, bet);
        count += 1;
    }
}

fn parse_row(record: &csv::StringRecord) -> Result<(AgencyId, Bet), String> {
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

/// The length of `file` up to and including its last line break: what was written
/// completely. Reads backwards from the end, a block at a time.
fn complete_length(file: &mut File) -> io::Result<u64> {
    const BLOCK: u64 = 8192;
    let len = file.seek(SeekFrom::End(0))?;
    let mut end = len;
    let mut block = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        // `end - start` is at most BLOCK, which fits a usize.
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "loteria-storage-{name}-{}-{}",
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

    #[test]
    fn appended_bets_load_back_in_the_course_format() {
        let dir = temp_dir("append");
        let path = dir.join("sub/bets.csv");
        let mut storage = Storage::open(&path).expect("open");
        storage
            .append(1, &[bet("Ana", "00000000", 7574), bet("Zoë", "1", 1)])
            .expect("append");
        storage.append(2, &[bet("Luis", "2", 2)]).expect("append");
        let loaded = storage.load().expect("load");
        assert_eq!(
            loaded,
            vec![
                (1, bet("Ana", "00000000", 7574)),
                (1, bet("Zoë", "1", 1)),
                (2, bet("Luis", "2", 2))
            ]
        );
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("1,Ana,\"Pérez, \"\"el\"\" Grande\",00000000,1990-01-02,7574\n"));
        drop(storage);
        // Reopening appends after what is there.
        let mut storage = Storage::open(&path).expect("reopen");
        storage.append(3, &[bet("Eva", "3", 3)]).expect("append");
        assert_eq!(storage.load().expect("load").len(), 4);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_on_open() {
        let dir = temp_dir("torn");
        let path = dir.join("bets.csv");
        fs::write(&path, "1,Ana,Paz,1,1990-01-02,5\n2,Luis,Ro").expect("write");
        let storage = Storage::open(&path).expect("open");
        assert_eq!(storage.load().expect("load").len(), 1);
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "1,Ana,Paz,1,1990-01-02,5\n"
        );
        fs::write(&path, "no newline at all").expect("write");
        let storage = Storage::open(&path).expect("open");
        assert!(storage.load().expect("load").is_empty());
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn long_files_find_their_last_line_break() {
        let dir = temp_dir("long");
        let path = dir.join("bets.csv");
        let mut content = "1,Ana,Paz,1,1990-01-02,5\n".repeat(1000);
        content.push_str(&"x".repeat(20_000));
        fs::write(&path, &content).expect("write");
        let storage = Storage::open(&path).expect("open");
        assert_eq!(storage.load().expect("load").len(), 1000);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn corrupt_rows_name_their_line() {
        let dir = temp_dir("corrupt");
        let path = dir.join("bets.csv");
        fs::write(
            &path,
            "1,Ana,Paz,1,1990-01-02,5\n1,Ana,Paz,1,1990-13-02,5\n",
        )
        .expect("write");
        let storage = Storage::open(&path).expect("open");
        let err = storage.load().expect_err("bad date");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: birthdate \"1990-13-02\" is not YYYY-MM-DD",
                path.display()
            )
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let dir = temp_dir("unwritable");
        let file = dir.join("plain-file");
        fs::write(&file, "").expect("write");
        let err = Storage::open(&file.join("bets.csv")).expect_err("parent is a file");
        assert!(err.to_string().contains("plain-file"), "{err}");
        fs::remove_dir_all(dir).expect("cleanup");
    }
}
