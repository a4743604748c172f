//! Reading an agency's bets file as a stream of bets, one line at a time.
//!
//! The file is CSV with no header: `first name, last name, document, birthdate, number`,
//! LF or CRLF line ends, UTF-8 names. It is never loaded whole. A line that cannot be a
//! valid bet is reported as [`Line::Invalid`] with its line number and reason, and
//! reading goes on; only an I/O failure ends the stream with an [`AgencyFileError`].
//!
//! Bets are read line by line (a bet never spans lines), so the line numbers in reports
//! are exact for LF and CRLF files alike, blank lines included. Fields follow CSV
//! quoting: `"Paz, María"` is one field and `""` inside quotes is a quote.
//!
//! The file is read in chunks of whole lines: each chunk is checked as UTF-8 once, as
//! it becomes a `String`, and its lines are then slices of it (no copy and no UTF-8
//! check per line). Only a chunk holding a line that is not UTF-8 has its lines
//! checked one by one, so that line is reported on its own and the others are read.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::NaiveDate;

use crate::bet::{Bet, MAX_NUMBER};

/// The longest line read into memory; a longer one cannot be a bet that fits one
/// frame, so it is reported and skipped without being held whole.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Bytes read at a time: a few large reads instead of many small ones, and a chunk
/// of about a thousand lines per UTF-8 check.
const READ_BUFFER: usize = 64 * 1024;

// A line that lies within one read is never over-long (`AgencyFile::refill` checks
// only the line that began before the last read).
const _: () = assert!(READ_BUFFER <= MAX_LINE_BYTES + 1);

/// An open agency file.
pub struct AgencyFile {
    path: PathBuf,
    file: File,
    /// Whole lines already checked as UTF-8 (the last one may lack its line break
    /// when the file ends without one); served from `at`.
    text: String,
    /// The next unread byte of `text` (always at the start of a line).
    at: usize,
    /// A chunk of whole lines not all UTF-8 (read after `text`'s): its lines are
    /// checked one by one, from `unchecked_at`.
    unchecked: Vec<u8>,
    unchecked_at: usize,
    /// Bytes read after the chunk's lines: the beginning of a line.
    raw: Vec<u8>,
    /// Bytes checked as UTF-8 so far (a test's measure of the work done).
    #[cfg(test)]
    checked: std::cell::Cell<u64>,
    /// The file has been read to its end.
    eof: bool,
    /// Bytes read at a time (`READ_BUFFER`; smaller in tests, to cut chunks anywhere).
    read_size: usize,
    line: u64,
    today: NaiveDate,
    /// The file's size in bytes when it was opened.
    size: u64,
    /// Bytes consumed so far (the value `position` publishes).
    consumed: u64,
    /// Bytes consumed so far, readable elsewhere.
    position: ReadPosition,
}

/// What [`AgencyFile::refill`] found next.
enum Refill {
    /// `text` or `unchecked` holds new lines.
    Lines,
    /// The next line was longer than [`MAX_LINE_BYTES`]: consumed, never held whole.
    LongLine,
    /// The file is over.
    End,
}

/// How many bytes of its file an [`AgencyFile`] has consumed: a handle that stays
/// readable while the reader itself is owned by something else (the upload's
/// progress lines read it).
#[derive(Debug, Clone, Default)]
pub struct ReadPosition(Arc<AtomicU64>);

impl ReadPosition {
    /// Bytes consumed so far (whole lines: every line handed out, and the blank or
    /// over-long lines before it).
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Publishes `bytes` consumed (only the reader writes it, so a plain store).
    fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }
}

/// One line of the file: a valid bet, or the reason it is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A valid bet read from line `line`.
    Bet {
        /// 1-based line number.
        line: u64,
        /// The bet.
        bet: Bet,
    },
    /// A line that is not a valid bet.
    Invalid(BadLine),
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The agency file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.reason)
    }
}

/// The agency file cannot be read.
#[derive(Debug)]
pub struct AgencyFileError {
    /// The agency file.
    pub path: PathBuf,
    /// The line being read when it failed (0 when opening).
    pub line: u64,
    /// The cause.
    pub source: io::Error,
}

impl fmt::Display for AgencyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(
                f,
                "cannot open agency file {}: {}",
                self.path.display(),
                self.source
            )
        } else {
            write!(
                f,
                "cannot read agency file {} at line {}: {}",
                self.path.display(),
                self.line,
                self.source
            )
        }
    }
}

impl std::error::Error for AgencyFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl AgencyFile {
    /// Opens `path`; bets are validated against `today` (birthdates must be before it).
    pub fn open(path: &Path, today: NaiveDate) -> Result<AgencyFile, AgencyFileError> {
        let file = File::open(path).map_err(|source| AgencyFileError {
            path: path.to_path_buf(),
            line: 0,
            source,
        })?;
        // The size only scales the progress lines: a file whose metadata cannot be
        // read is still read (and counts as empty there).
        let size = file.metadata().map_or(0, |m| m.len());
        Ok(AgencyFile {
            path: path.to_path_buf(),
            file,
            text: String::new(),
            at: 0,
            unchecked: Vec::new(),
            unchecked_at: 0,
            raw: Vec::new(),
            #[cfg(test)]
            checked: std::cell::Cell::new(0),
            eof: false,
            read_size: READ_BUFFER,
            line: 0,
            today,
            size,
            consumed: 0,
            position: ReadPosition::default(),
        })
    }

    /// The file's size in bytes when it was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A handle on how many bytes have been consumed (see [`ReadPosition`]).
    pub fn position(&self) -> ReadPosition {
        self.position.clone()
    }

    fn bad(&self, line: u64, reason: String) -> BadLine {
        BadLine {
            path: self.path.clone(),
            line,
            reason,
        }
    }

    /// Parses line `line` into `bet` (reusing its `String`s): `Err` when it is not a
    /// valid bet (then `bet` holds no meaning).
    fn parse_into(&self, line: u64, text: &str, bet: &mut Bet) -> Result<(), BadLine> {
        let fields = split_fields(text).map_err(|reason| self.bad(line, reason))?;
        if fields.count != FIELDS {
            return Err(self.bad(
                line,
                format!(
                    "expected 5 fields (first name, last name, document, birthdate, number), found {}",
                    fields.count
                ),
            ));
        }
        let [first_name, last_name, document, birthdate, number] = fields.first;
        // Says "not a real date" for 1999-02-30, the format for anything else.
        let birthdate =
            crate::bet::parse_birthdate(&birthdate).map_err(|e| self.bad(line, e.to_string()))?;
        let number = number.parse::<u16>().map_err(|_| {
            self.bad(
                line,
                format!("number {number:?} is not a whole number from 0 to {MAX_NUMBER}"),
            )
        })?;
        for (into, field) in [
            (&mut bet.first_name, first_name),
            (&mut bet.last_name, last_name),
            (&mut bet.document, document),
        ] {
            into.clear();
            into.push_str(&field);
        }
        bet.birthdate = birthdate;
        bet.number = number;
        bet.validate(self.today)
            .map_err(|e| self.bad(line, e.to_string()))
    }

    /// The next line, read into `bet` (its `String`s reused: reading a file into one
    /// `Bet` allocates nothing per line once its fields have grown to the longest).
    /// `Parsed::Bet` means `bet` holds that line's valid bet; the lines, their numbers
    /// and their reasons are the iterator's.
    pub fn next_into(&mut self, bet: &mut Bet) -> Option<Result<Parsed, AgencyFileError>> {
        loop {
            let (start, len, from_text) = if self.at < self.text.len() {
                let len = line_len(&self.text.as_bytes()[self.at..]);
                self.at += len;
                (self.at - len, len, true)
            } else if self.unchecked_at < self.unchecked.len() {
                let len = line_len(&self.unchecked[self.unchecked_at..]);
                self.unchecked_at += len;
                (self.unchecked_at - len, len, false)
            } else {
                match self.refill() {
                    Ok(Refill::Lines) => continue,
                    Ok(Refill::LongLine) => {
                        self.line += 1;
                        let line = self.line;
                        let reason = format!("line longer than {MAX_LINE_BYTES} bytes");
                        return Some(Ok(Parsed::Invalid(self.bad(line, reason))));
                    }
                    Ok(Refill::End) => return None,
                    Err(source) => {
                        return Some(Err(AgencyFileError {
                            path: self.path.clone(),
                            line: self.line + 1,
                            source,
                        }));
                    }
                }
            };
            self.consumed += len as u64;
            self.position.set(self.consumed);
            self.line += 1;
            let line = self.line;
            let raw = if from_text {
                &self.text[start..start + len]
            } else {
                let bytes = &self.unchecked[start..start + len];
                #[cfg(test)]
                self.checked.set(self.checked.get() + len as u64);
                match std::str::from_utf8(bytes) {
                    Ok(raw) => raw,
                    Err(_) => {
                        let reason = not_utf8(bytes, line == 1);
                        return Some(Ok(Parsed::Invalid(self.bad(line, reason))));
                    }
                }
            };
            let Some(text) = content(raw, line == 1) else {
                continue; // Blank lines carry no bet.
            };
            return Some(Ok(match self.parse_into(line, text, bet) {
                Ok(()) => Parsed::Bet { line },
                Err(bad) => Parsed::Invalid(bad),
            }));
        }
    }

    /// Reads on once the lines read are used up: the next chunk of whole lines into
    /// `text` when they are all UTF-8 (one check for all of them), else into
    /// `unchecked`, to be checked line by line; or the next line on its own when it is
    /// over-long.
    fn refill(&mut self) -> io::Result<Refill> {
        // Whole lines at the start of `raw`: up to its last line break, or all of it
        // at the end of the file.
        let mut searched = 0;
        let whole = loop {
            if let Some(i) = memchr::memrchr(b'\n', &self.raw[searched..]) {
                break searched + i + 1;
            }
            if self.raw.len() > MAX_LINE_BYTES {
                return self.skip_long_line();
            }
            if self.eof {
                if self.raw.is_empty() {
                    return Ok(Refill::End);
                }
                break self.raw.len();
            }
            searched = self.raw.len();
            self.read_more()?;
        };
        // Only the first of these lines can be over-long: it is the one that began
        // before the last read; every other one lies within a single read (at most
        // `READ_BUFFER` bytes, not more than a line may hold).
        let first = memchr::memchr(b'\n', &self.raw).unwrap_or(self.raw.len());
        if first > MAX_LINE_BYTES {
            return self.skip_long_line();
        }
        // `raw`'s whole lines become the chunk; what follows them moves to the old
        // text's buffer, which becomes `raw`: no allocation once both have grown.
        let mut rest = std::mem::take(&mut self.text).into_bytes();
        rest.clear();
        rest.extend_from_slice(&self.raw[whole..]);
        self.raw.truncate(whole);
        let lines = std::mem::replace(&mut self.raw, rest);
        self.at = 0;
        #[cfg(test)]
        self.checked.set(self.checked.get() + lines.len() as u64);
        match String::from_utf8(lines) {
            Ok(text) => self.text = text,
            Err(e) => {
                // Rare: the chunk's lines are checked one by one as they are read, so
                // each bad line is reported alone and every byte is checked once more
                // at most (cutting the chunk at each bad line would check and move
                // the rest of it once per bad line).
                self.unchecked = e.into_bytes();
                self.unchecked_at = 0;
            }
        }
        Ok(Refill::Lines)
    }

    /// Appends up to `read_size` bytes of the file to `raw` (fewer only at its end,
    /// then `eof`).
    fn read_more(&mut self) -> io::Result<()> {
        let want = self.read_size as u64;
        let got = (&mut self.file).take(want).read_to_end(&mut self.raw)?;
        if (got as u64) < want {
            self.eof = true;
        }
        Ok(())
    }

    /// `raw` starts a line longer than [`MAX_LINE_BYTES`]: consumes it up to and
    /// including its line break (or the end), never holding more than a read of it.
    fn skip_long_line(&mut self) -> io::Result<Refill> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.raw) {
                self.raw.drain(..=i);
                self.consumed += i as u64 + 1;
                break;
            }
            self.consumed += self.raw.len() as u64;
            self.raw.clear();
            if self.eof {
                break;
            }
            self.read_more()?;
        }
        self.position.set(self.consumed);
        Ok(Refill::LongLine)
    }
}

/// The length of the first line of `bytes`, its line break included (all of `bytes`
/// when it holds none).
fn line_len(bytes: &[u8]) -> usize {
    memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1)
}

/// The text of line `raw` (its line break included, if it has one) without its line
/// end, and on the first line without a byte-order mark; `None` for a blank line.
fn content(raw: &str, first: bool) -> Option<&str> {
    let mut text = raw.strip_suffix('\n').unwrap_or(raw);
    text = text.strip_suffix('\r').unwrap_or(text);
    if first {
        // A UTF-8 byte-order mark may start the file; it is not data.
        text = text.strip_prefix('\u{feff}').unwrap_or(text);
    }
    if text.bytes().all(|b| b.is_ascii_whitespace()) {
        None
    } else {
        Some(text)
    }
}

/// Why `line` (its line break included) is not UTF-8, as a position in the line once
/// its line end, and on the first line a byte-order mark, are taken off.
fn not_utf8(line: &[u8], first: bool) -> String {
    let mut bytes = line.strip_suffix(b"\n").unwrap_or(line);
    bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if first {
        bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    }
    let at = std::str::from_utf8(bytes)
        .err()
        .map_or(0, |e| e.valid_up_to());
    format!("not valid UTF-8 (at byte {})", at + 1)
}

/// What [`AgencyFile::next_into`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Line `line` is a valid bet, now in the caller's `Bet`.
    Bet {
        /// 1-based line number.
        line: u64,
    },
    /// A line that is not a valid bet.
    Invalid(BadLine),
}

/// Fields a bet line has.
const FIELDS: usize = 5;

/// The fields of one CSV line: the first [`FIELDS`] of them, borrowed from the line
/// unless a quoted field held a doubled quote, and how many there were in all.
struct Fields<'a> {
    first: [Cow<'a, str>; FIELDS],
    count: usize,
}

/// `text` without trailing white space; a text ending in an ASCII byte that is not
/// white space (most fields) is returned without the Unicode search.
fn trim_end(text: &str) -> &str {
    match text.as_bytes().last() {
        Some(b) if b.is_ascii() && !matches!(b, b'\t'..=b'\r' | b' ') => text,
        _ => text.trim_end(),
    }
}

/// The index of the first `byte` in `bytes` at or after `from`.
fn find(bytes: &[u8], from: usize, byte: u8) -> Option<usize> {
    bytes[from..]
        .iter()
        .position(|&b| b == byte)
        .map(|i| from + i)
}

/// Splits one CSV line into trimmed fields, honouring double quotes: leading spaces
/// and tabs are skipped, an unquoted field loses its trailing white space, a quoted
/// one keeps what is inside its quotes (`""` read as `"`) and may be followed by
/// spaces and tabs only. Allocates only for a quoted field holding `""`.
fn split_fields(text: &str) -> Result<Fields<'_>, String> {
    let bytes = text.as_bytes();
    let mut fields = Fields {
        first: [const { Cow::Borrowed("") }; FIELDS],
        count: 0,
    };
    let blank = |b: u8| b == b' ' || b == b'\t';
    let mut i = 0;
    loop {
        while bytes.get(i).copied().is_some_and(blank) {
            i += 1;
        }
        // `i` only ever stops at an ASCII byte or the end, so every slice below is
        // on character boundaries.
        let field = if bytes.get(i) == Some(&b'"') {
            let start = i + 1;
            let mut segment = start;
            let mut unquoted: Option<String> = None;
            let end = loop {
                let Some(quote) = find(bytes, segment, b'"') else {
                    return Err("a quoted field is not closed".into());
                };
                if bytes.get(quote + 1) == Some(&b'"') {
                    unquoted
                        .get_or_insert_with(String::new)
                        .push_str(&text[segment..=quote]);
                    segment = quote + 2;
                } else {
                    break quote;
                }
            };
            i = end + 1;
            while bytes.get(i).copied().is_some_and(blank) {
                i += 1;
            }
            if bytes.get(i).is_some_and(|&b| b != b',') {
                return Err("unexpected text after a quoted field".into());
            }
            match unquoted {
                None => Cow::Borrowed(&text[start..end]),
                Some(mut field) => {
                    field.push_str(&text[segment..end]);
                    Cow::Owned(field)
                }
            }
        } else {
            let end = find(bytes, i, b',').unwrap_or(bytes.len());
            let field = trim_end(&text[i..end]);
            i = end;
            Cow::Borrowed(field)
        };
        if let Some(slot) = fields.first.get_mut(fields.count) {
            *slot = field;
        }
        fields.count += 1;
        if i >= bytes.len() {
            return Ok(fields);
        }
        i += 1; // The comma.
    }
}

/// A source of lines read into a caller's `Bet`, as [`AgencyFile::next_into`] reads
/// them: a reader whose caller keeps the `Bet`s (and their `String`s) to reuse.
pub trait ReadInto {
    /// The next line, its bet (when `Parsed::Bet`) now in `bet`; `None` at the end.
    fn read_into(&mut self, bet: &mut Bet) -> Option<Result<Parsed, AgencyFileError>>;
}

impl ReadInto for AgencyFile {
    fn read_into(&mut self, bet: &mut Bet) -> Option<Result<Parsed, AgencyFileError>> {
        self.next_into(bet)
    }
}

/// A `Bet` holding nothing (no `String` allocated): a slot to read a line into.
pub fn empty_bet() -> Bet {
    Bet {
        first_name: String::new(),
        last_name: String::new(),
        document: String::new(),
        birthdate: crate::bet::EARLIEST_BIRTHDATE,
        number: 0,
    }
}

impl Iterator for AgencyFile {
    type Item = Result<Line, AgencyFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut bet = empty_bet();
        Some(self.next_into(&mut bet)?.map(|parsed| match parsed {
            Parsed::Bet { line } => Line::Bet { line, bet },
            Parsed::Invalid(bad) => Line::Invalid(bad),
        }))
    }
}

/// `lines` valid lines with accented names, as the speed tests read them.
#[cfg(test)]
pub(crate) fn speed_sample(lines: u32) -> String {
    let mut text = String::new();
    for i in 0..lines {
        text.push_str(&format!(
            "Santiago Lionel {i},Lorca Núñez,{},19{:02}-{:02}-{:02},{}\n",
            30_000_000 + i,
            i % 100,
            i % 12 + 1,
            i % 28 + 1,
            i % 10_000
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(name: &str, bytes: &[u8]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("loteria-agency-{}-{name}.csv", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp file");
        path
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 1).expect("date")
    }

    fn read(path: &Path) -> Vec<Line> {
        AgencyFile::open(path, today())
            .expect("open")
            .collect::<Result<Vec<_>, _>>()
            .expect("read")
    }

    #[test]
    fn reads_crlf_and_lf_with_accents() {
        let path = file_with(
            "ok",
            "Santiago Lionel,Lorca,30904465,1999-03-17,2201\r\nTiago Nicolás,Núñez,00000000,2001-08-29,7574\nAna,Paz,1,2000-01-01,0".as_bytes(),
        );
        let lines = read(&path);
        assert_eq!(lines.len(), 3);
        match &lines[1] {
            Line::Bet { line, bet } => {
                assert_eq!(*line, 2);
                assert_eq!(bet.first_name, "Tiago Nicolás");
                assert_eq!(bet.document, "00000000");
                assert_eq!(bet.number, 7574);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(lines[2], Line::Bet { line: 3, .. }));
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_reading_goes_on() {
        let path = file_with(
            "bad",
            b"Ana,Paz,1,2000-01-01,1\n\
              Ana,Paz,1,2000-01-01\n\
              ,Paz,1,2000-01-01,1\n\
              Ana,Paz,123456789,2000-01-01,1\n\
              Ana,Paz,1,2000-02-30,1\n\
              Ana,Paz,1,2030-01-01,1\n\
              Ana,Paz,1,2000-01-01,10000\n\
              Ana,Paz,1,2000-01-01,-1\n\
              An\xff,Paz,1,2000-01-01,1\n\
              \r\n\
              Eva,Ro,2,1990-05-05,5\n",
        );
        let lines = read(&path);
        let reasons: Vec<(u64, String)> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Invalid(bad) => Some((bad.line, bad.reason.clone())),
                Line::Bet { .. } => None,
            })
            .collect();
        assert_eq!(reasons.len(), 8, "{reasons:?}");
        assert_eq!(reasons[0].0, 2);
        assert!(reasons[0].1.contains("expected 5 fields"));
        assert_eq!(reasons[1], (3, "first_name is empty".to_string()));
        assert!(reasons[2].1.contains("document"));
        assert!(reasons[3].1.contains("2000-02-30"));
        assert!(reasons[3].1.contains("not a real date"), "{}", reasons[3].1);
        assert!(reasons[4].1.contains("not in the past"));
        assert!(reasons[5].1.contains("not in 0..=9999"));
        assert!(reasons[6].1.contains("\"-1\""));
        assert_eq!(reasons[7], (9, "not valid UTF-8 (at byte 3)".to_string()));
        assert!(
            matches!(lines.last(), Some(Line::Bet { line: 11, .. })),
            "blank lines count"
        );
        if let Line::Invalid(bad) = &lines[1] {
            assert!(bad.to_string().ends_with(":2: expected 5 fields (first name, last name, document, birthdate, number), found 4"));
        }
    }

    #[test]
    fn quoted_names_and_bom_are_handled() {
        let path = file_with(
            "quoted",
            "\u{feff}\"Paz, María\", \"O'Neil \"\"Jr\"\"\" ,12,1980-02-29,99\n\"x,1\n".as_bytes(),
        );
        match &read(&path)[..] {
            [Line::Bet { bet, .. }, Line::Invalid(bad)] => {
                assert_eq!(bet.first_name, "Paz, María");
                assert_eq!(bet.last_name, "O'Neil \"Jr\"");
                assert_eq!(bad.reason, "a quoted field is not closed");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_over_long_line_is_skipped_without_reading_it_whole() {
        let mut bytes = b"Ana,Paz,1,2000-01-01,1\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE_BYTES));
        bytes.extend_from_slice(b"\nEva,Ro,2,1990-05-05,5\n");
        let path = file_with("long", &bytes);
        let lines = read(&path);
        assert!(matches!(lines[0], Line::Bet { line: 1, .. }));
        match &lines[1] {
            Line::Invalid(bad) => {
                assert_eq!(bad.line, 2);
                assert_eq!(
                    bad.reason,
                    format!("line longer than {MAX_LINE_BYTES} bytes")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(lines[2], Line::Bet { line: 3, .. }));
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn the_read_position_counts_every_byte_consumed() {
        // A blank line, a CRLF line, an over-long line and a last line without a break.
        let mut bytes = b"\nAna,Paz,1,2000-01-01,1\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 2 * MAX_LINE_BYTES));
        bytes.extend_from_slice(b"\nEva,Ro,2,1990-05-05,5");
        let path = file_with("position", &bytes);
        let mut file = AgencyFile::open(&path, today()).expect("open");
        let position = file.position();
        assert_eq!((file.size(), position.bytes()), (bytes.len() as u64, 0));
        assert!(matches!(file.next(), Some(Ok(Line::Bet { line: 2, .. }))));
        assert_eq!(position.bytes(), 1 + 24, "the blank line and line 2");
        assert!(matches!(file.next(), Some(Ok(Line::Invalid(_)))));
        assert_eq!(position.bytes(), 25 + 2 * MAX_LINE_BYTES as u64 + 1);
        assert!(matches!(file.next(), Some(Ok(Line::Bet { line: 4, .. }))));
        assert!(file.next().is_none());
        assert_eq!(position.bytes(), bytes.len() as u64);
        let _ = std::fs::remove_file(&path);
    }

    /// The CSV split as first written, character by character.
    fn split_fields_reference(text: &str) -> Result<Vec<String>, String> {
        let mut fields = Vec::with_capacity(5);
        let mut chars = text.chars().peekable();
        loop {
            while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
            let mut field = String::new();
            if chars.next_if_eq(&'"').is_some() {
                loop {
                    match chars.next() {
                        Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                        Some('"') => break,
                        Some(c) => field.push(c),
                        None => return Err("a quoted field is not closed".into()),
                    }
                }
                while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
                if chars.peek().is_some_and(|c| *c != ',') {
                    return Err("unexpected text after a quoted field".into());
                }
            } else {
                while let Some(c) = chars.next_if(|c| *c != ',') {
                    field.push(c);
                }
                field.truncate(field.trim_end().len());
            }
            fields.push(field);
            if chars.next().is_none() {
                return Ok(fields);
            }
        }
    }

    fn split(text: &str) -> Result<(usize, Vec<String>), String> {
        split_fields(text).map(|f| (f.count, f.first.map(Cow::into_owned).to_vec()))
    }

    fn split_reference(text: &str) -> Result<(usize, Vec<String>), String> {
        split_fields_reference(text).map(|mut f| {
            let count = f.len();
            f.resize(FIELDS, String::new());
            f.truncate(FIELDS);
            (count, f)
        })
    }

    #[test]
    fn fields_split_as_before() {
        for text in [
            "",
            ",",
            "a,b",
            " a ,\tb\t, c\u{3000},d\u{a0}",
            "\"a\"\"b\",\"\"\"\",\"\" ,\"x\"\"\"\"y\"\"\"",
            "\"a\" b,c",
            "\"unclosed",
            "\"a\"\"",
            "a,\"ñ, \"\"ü\"\"\",c,d,e,f,g",
            "a\"b\",c",
        ] {
            assert_eq!(split(text), split_reference(text), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_lines_split_as_before(text in "[a, \"\t\u{3000}\u{a0}ñ]{0,24}") {
            proptest::prop_assert_eq!(split(&text), split_reference(&text));
        }
    }

    /// Prints the reader's cost per line over a generated file:
    /// `cargo test --release --lib agency_file::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: prints numbers"]
    fn speed() {
        let lines = 1_000_000u32;
        let text = crate::agency_file::speed_sample(lines);
        let path = file_with("speed", text.as_bytes());
        let best = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                let mut bets = 0u64;
                for line in AgencyFile::open(&path, today()).expect("open") {
                    if let Ok(Line::Bet { bet, .. }) = line {
                        bets += u64::from(bet.number > 0);
                    }
                }
                std::hint::black_box(bets);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        let best_into = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                let mut bets = 0u64;
                let mut file = AgencyFile::open(&path, today()).expect("open");
                let mut bet = Bet {
                    first_name: String::new(),
                    last_name: String::new(),
                    document: String::new(),
                    birthdate: today(),
                    number: 0,
                };
                while let Some(parsed) = file.next_into(&mut bet) {
                    if let Ok(Parsed::Bet { .. }) = parsed {
                        bets += u64::from(bet.number > 0);
                    }
                }
                std::hint::black_box(bets);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        let _ = std::fs::remove_file(&path);
        println!(
            "AgencyFile: {:.0} ns per line, {:.0} MB/s; next_into one Bet: {:.0} ns per line",
            best * 1e9 / f64::from(lines),
            text.len() as f64 / 1e6 / best,
            best_into * 1e9 / f64::from(lines),
        );
    }

    #[test]
    fn reading_into_one_reused_bet_reads_what_the_iterator_reads() {
        let mut bytes = "\u{feff}Ana,Paz,1,2000-01-01,1\r\n\
              Ana,Paz,1,2000-01-01\n\
              ,Paz,1,2000-01-01,1\n\
              \"Paz, María\", \"O'Neil \"\"Jr\"\"\" ,12,1980-02-29,99\n\
              Ana,Paz,123456789,2000-01-01,1\n\
              Ana,Paz,1,2000-02-30,1\n\
              Santiago Lionel Nicolás,Lorca Núñez,30904465,1999-03-17,2201\n\
              Ana,Paz,1,2030-01-01,1\n\
              \r\n\
              Eva,Ro,2,1990-05-05,5"
            .as_bytes()
            .to_vec();
        bytes.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 1));
        bytes.extend_from_slice(b"\nAn\xff,Paz,1,2000-01-01,1\nBo,Li,3,1991-1-2,3\n");
        let path = file_with("into", &bytes);
        let want = read(&path);
        let mut file = AgencyFile::open(&path, today()).expect("open");
        let mut bet = Bet {
            first_name: "a stale name longer than any".into(),
            last_name: String::new(),
            document: "7".into(),
            birthdate: today(),
            number: 9,
        };
        let mut got = Vec::new();
        while let Some(parsed) = file.next_into(&mut bet) {
            got.push(match parsed.expect("reads") {
                Parsed::Bet { line } => Line::Bet {
                    line,
                    bet: bet.clone(),
                },
                Parsed::Invalid(bad) => Line::Invalid(bad),
            });
        }
        assert_eq!(got, want);
        // "Eva" runs into the over-long line: eleven lines in all.
        assert_eq!(want.len(), 11, "{want:?}");
        let _ = std::fs::remove_file(&path);
    }

    /// The lines of `bytes` as the reader read them when it read each line on its
    /// own (`read_until`, a UTF-8 check per line), each with the bytes consumed once
    /// it is handed out: what chunked reading must keep.
    fn read_line_by_line(file: &AgencyFile, bytes: &[u8]) -> Vec<(Line, u64)> {
        let mut lines = Vec::new();
        let mut number = 0;
        let mut consumed = 0;
        for raw in bytes.split_inclusive(|&b| b == b'\n') {
            number += 1;
            consumed += raw.len() as u64;
            let mut line = raw.strip_suffix(b"\n").unwrap_or(raw);
            if line.len() > MAX_LINE_BYTES {
                let bad = file.bad(number, format!("line longer than {MAX_LINE_BYTES} bytes"));
                lines.push((Line::Invalid(bad), consumed));
                continue;
            }
            line = line.strip_suffix(b"\r").unwrap_or(line);
            if number == 1 {
                line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let read = match std::str::from_utf8(line) {
                Err(e) => Line::Invalid(file.bad(
                    number,
                    format!("not valid UTF-8 (at byte {})", e.valid_up_to() + 1),
                )),
                Ok(text) => {
                    let mut bet = empty_bet();
                    match file.parse_into(number, text, &mut bet) {
                        Ok(()) => Line::Bet { line: number, bet },
                        Err(bad) => Line::Invalid(bad),
                    }
                }
            };
            lines.push((read, consumed));
        }
        lines
    }

    #[test]
    fn chunks_cut_anywhere_read_the_lines_read_one_by_one() {
        let pieces: [&[u8]; 14] = [
            b"Ana,Paz,1,2000-01-01,1\n",
            b"Jos\xc3\xa9,N\xc3\xba\xc3\xb1ez,22,1999-12-31,7574\r\n",
            b"\n",
            b" \t\r\n",
            b"An\xff,Paz,1,2000-01-01,1\n",
            b"\xc3,Paz,1,2000-01-01,1\r\n",
            b"Eva,Ro\xe2\x82,2,1990-05-05,5\n",
            b"\xEF\xBB\xBFAna,Paz,1,2000-01-01,1\n",
            b"\"Paz, Mar\xc3\xada\",Ro,3,1991-01-02,3\n",
            b"Ana,Paz,1,2000-02-30,1\n",
            b"x,y\n",
            b"\r",
            b"\xe2\x82\xac,\xe2\x82\xac,4,1980-01-01,9",
            b"Ana,Paz",
        ];
        let long = |len: usize, end: &[u8]| {
            let mut line = vec![b'x'; len];
            line.extend_from_slice(end);
            line
        };
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) as usize % n
        };
        let mut files: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\xEF\xBB\xBFAna,Paz,1,2000-01-01,1".to_vec(),
            b"\xEF\xBB\xBF\xff\n".to_vec(),
            long(MAX_LINE_BYTES, b"\nAna,Paz,1,2000-01-01,1\n"),
            long(MAX_LINE_BYTES + 1, b"\nAna,Paz,1,2000-01-01,1\n"),
            long(MAX_LINE_BYTES - 1, b"\r\n"),
            long(MAX_LINE_BYTES, b"\r\n"),
            long(MAX_LINE_BYTES + 1, b""),
            long(MAX_LINE_BYTES, b""),
        ];
        for _ in 0..40 {
            let mut file = Vec::new();
            for _ in 0..next(60) {
                match next(40) {
                    0 => file.extend(long(MAX_LINE_BYTES - 2 + next(5), b"\n")),
                    1 => {
                        // A line of text just too long, with a bad byte in it.
                        let mut line = long(MAX_LINE_BYTES + 3, b"\n");
                        line[10] = 0xff;
                        file.extend(line);
                    }
                    _ => file.extend_from_slice(pieces[next(pieces.len())]),
                }
            }
            files.push(file);
        }
        for (n, bytes) in files.iter().enumerate() {
            let path = file_with(&format!("chunks-{n}"), bytes);
            let reference = AgencyFile::open(&path, today()).expect("open");
            let want = read_line_by_line(&reference, bytes);
            for read_size in [1, 2, 3, 5, 8, 13, 64, 1000, READ_BUFFER] {
                let mut file = AgencyFile::open(&path, today()).expect("open");
                file.read_size = read_size;
                let position = file.position();
                let mut got = Vec::new();
                for line in &mut file {
                    got.push((line.expect("reads"), position.bytes()));
                }
                assert_eq!(got, want, "file {n}, reads of {read_size} bytes");
                assert_eq!(position.bytes(), bytes.len() as u64, "file {n}");
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Regression: a chunk was cut at each line that is not UTF-8, so the rest of the
    /// chunk was checked and moved again once per bad line (2.7 MB of such lines took
    /// seconds). Now each byte is checked at most twice.
    #[test]
    fn many_lines_that_are_not_utf8_are_read_with_linear_work() {
        let mut bytes = Vec::new();
        for i in 0..60_000 {
            bytes.extend_from_slice(match i % 3 {
                0 => &b"\xff\n"[..],
                1 => b"Ana,Paz,1,2000-01-01,1\n",
                _ => b"Bea,R\xc3\xado,2,1990-05-05,5\r\n",
            });
        }
        let path = file_with("many-bad", &bytes);
        let mut file = AgencyFile::open(&path, today()).expect("open");
        let (mut bets, mut bad) = (0, 0);
        for line in &mut file {
            match line.expect("reads") {
                Line::Bet { .. } => bets += 1,
                Line::Invalid(_) => bad += 1,
            }
        }
        assert_eq!((bets, bad), (40_000, 20_000));
        let checked = file.checked.get();
        assert!(
            checked <= 2 * bytes.len() as u64,
            "{checked} bytes checked as UTF-8 for a file of {}",
            bytes.len()
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = AgencyFile::open(Path::new("/nonexistent/agency-9.csv"), today())
            .err()
            .expect("missing");
        assert!(err.to_string().contains("/nonexistent/agency-9.csv"));
    }
}
