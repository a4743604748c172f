//! The draw's scan of the bets file: each row's agency, document and number, read in
//! large chunks into one buffer, without building a [`Bet`](crate::bet::Bet).
//!
//! A row as the store writes it (`docs/STORAGE.md` §1: six fields, one line, quoting
//! as the `csv` crate's writer) is split here by hand, its bytes searched with the
//! `memchr` crate: the names are skipped (their quoting is followed, never decoded), and the agency, the
//! document, the birthdate (checked, not kept) and the number are read in place. Any
//! other line — a CR, a quoted field across lines, a quote inside an unquoted field,
//! a field that is not plain digits — is read by the `csv` crate's reader instead,
//! exactly as `read_rows` (in `csv_journal`) reads it, so both agree on every file
//! either accepts. (The names' UTF-8 is not checked here: the rows were checked against
//! the journal when the store was opened.)

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::csv_journal::parse_row;
use super::{Play, StorageError};
use crate::bet::AgencyId;

/// How much of the bets file the scan reads at a time (the buffer grows only for a
/// longer row).
pub(super) const SCAN_CHUNK: usize = 1 << 20;

/// What the start of a buffer holds.
enum Line<'a> {
    /// A row in the store's own form, `len` bytes with its line feed.
    Row { play: Play<'a>, len: usize },
    /// An empty line (the `csv` reader skips it too).
    Blank,
    /// No line feed yet: more bytes are needed.
    Incomplete,
    /// Anything else: for the `csv` reader.
    Unusual,
}

/// Calls `f` with every row of `file` (the bets file at `path`) from offset 0 up to
/// `end`; returns how many rows. The file is read with positioned reads, so the
/// handle's offset is left alone.
pub(super) fn for_each_play(
    path: &Path,
    file: &File,
    end: u64,
    f: &mut dyn FnMut(Play<'_>),
) -> Result<u64, StorageError> {
    let span = Span {
        start: 0,
        stop: end,
        end,
    };
    scan(path, file, span, f).map(|(count, _)| count)
}

/// At most how many threads [`for_each_play_where`] scans with.
const MAX_THREADS: usize = 4;

/// Below this many bytes a second thread costs more than it saves.
const MIN_SPLIT: u64 = 4 * SCAN_CHUNK as u64;

/// How far past a split point [`for_each_play_where`] looks for a line feed.
const SPLIT_WINDOW: usize = 64 * 1024;

/// A row that [`for_each_play_where`] keeps, owned so that it can leave its thread.
type Kept = (AgencyId, String, u16);

/// Calls `f`, in file order, with every row of `file` (the bets file at `path`) up to
/// `end` that `keep` accepts; returns how many rows there are, kept or not — exactly
/// what [`for_each_play`] does with `f` called only on the rows `keep` accepts.
///
/// The bytes are split into up to [`MAX_THREADS`] ranges (as many as
/// `available_parallelism`), each starting just after a line feed, and scanned on as
/// many threads; only the kept rows are collected (the draw keeps about one in
/// 10 000), and `f` sees them once every range is read. A range boundary is trusted
/// only if the scan of the range before it stops exactly there, so that a row
/// spanning lines (a quoted line break, which only a file adopted from an older run
/// may hold: the store writes every row on one line, `docs/STORAGE.md` §1) cannot be
/// cut. If one is not, or if any range fails, the whole file is scanned again on
/// this thread, so every result and every error is that of the single scan.
pub(super) fn for_each_play_where(
    path: &Path,
    file: &File,
    end: u64,
    keep: &(dyn Fn(Play<'_>) -> bool + Sync),
    f: &mut dyn FnMut(Play<'_>),
) -> Result<u64, StorageError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let starts = split_points(file, end, threads.min(MAX_THREADS));
    scan_split(path, file, end, &starts, keep, f)
}

/// [`for_each_play_where`] with the ranges starting at `starts` (the first at 0, in
/// increasing order, each below `end`); any offsets give the single scan's result.
fn scan_split(
    path: &Path,
    file: &File,
    end: u64,
    starts: &[u64],
    keep: &(dyn Fn(Play<'_>) -> bool + Sync),
    f: &mut dyn FnMut(Play<'_>),
) -> Result<u64, StorageError> {
    if starts.len() > 1
        && let Some(ranges) = scan_ranges(path, file, end, starts, keep)
    {
        let mut count = 0u64;
        for (n, kept) in ranges {
            count += n;
            for (agency, document, number) in &kept {
                f(Play {
                    agency: *agency,
                    document,
                    number: *number,
                });
            }
        }
        return Ok(count);
    }
    for_each_play(path, file, end, &mut |play| {
        if keep(play) {
            f(play)
        }
    })
}

/// Where the ranges of a scan of `file` up to `end` on `threads` threads start: 0,
/// then, for each further thread, the offset just after the first line feed at or
/// after an equal share of the bytes (fewer ranges when the file is small, or when no
/// line feed is found near a share's end).
fn split_points(file: &File, end: u64, threads: usize) -> Vec<u64> {
    let mut starts = vec![0u64];
    if end < MIN_SPLIT {
        return starts;
    }
    let mut window = vec![0u8; SPLIT_WINDOW];
    for i in 1..threads as u64 {
        let share = end / threads as u64 * i;
        let Some(prev) = starts.last().copied() else {
            break;
        };
        if share <= prev {
            continue;
        }
        // The search starts at the share's last byte, so a range may start at the
        // share's end itself.
        let from = share - 1;
        let len = usize::try_from(end - from).map_or(SPLIT_WINDOW, |n| n.min(SPLIT_WINDOW));
        let Ok(n) = file.read_at(&mut window[..len], from) else {
            break;
        };
        match memchr::memchr(b'\n', &window[..n]) {
            Some(k) if from + (k as u64) + 1 < end => starts.push(from + k as u64 + 1),
            _ => break,
        }
    }
    starts
}

/// Scans the ranges that start at `starts` (the first at 0) on one thread each (the
/// first on this one), keeping the rows `keep` accepts; gives each range's row count
/// and kept rows, in file order — or `None` if a range fails, a thread cannot be
/// started, or a range's scan does not stop exactly where the next range starts.
fn scan_ranges(
    path: &Path,
    file: &File,
    end: u64,
    starts: &[u64],
    keep: &(dyn Fn(Play<'_>) -> bool + Sync),
) -> Option<Vec<(u64, Vec<Kept>)>> {
    let ordered = starts.windows(2).all(|w| w[0] < w[1]);
    if starts.first() != Some(&0) || !ordered || starts.last().is_some_and(|&s| s >= end) {
        return None;
    }
    let spans: Vec<Span> = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| Span {
            start,
            stop: starts.get(i + 1).copied().unwrap_or(end),
            end,
        })
        .collect();
    let one = |span: Span| -> Option<(u64, Vec<Kept>)> {
        let mut kept = Vec::new();
        let (count, stopped) = scan(path, file, span, &mut |play| {
            if keep(play) {
                kept.push((play.agency, play.document.to_string(), play.number));
            }
        })
        .ok()?;
        (stopped == span.stop).then_some((count, kept))
    };
    let (&first, rest) = spans.split_first()?;
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(rest.len());
        for &span in rest {
            let handle = std::thread::Builder::new()
                .name("draw-scan".into())
                .spawn_scoped(s, move || one(span));
            handles.push(handle);
        }
        let mut out = Vec::with_capacity(spans.len());
        out.push(one(first));
        for handle in handles {
            match handle {
                Ok(h) => match h.join() {
                    Ok(range) => out.push(range),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                // A thread that could not be started: the single scan instead.
                Err(_) => out.push(None),
            }
        }
        out.into_iter().collect()
    })
}

/// Where one scan reads: from `start` (the start of a row), handing over every row
/// that starts before `stop`, in a file that ends at `end` (`stop <= end`).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    stop: u64,
    end: u64,
}

/// Calls `f` with every row of `span`; returns how many rows, and the offset the scan
/// stopped at: that of the first row (or blank line) that starts at or after
/// `span.stop`, or `span.end`. A row that starts before `stop` is read whole, even
/// past it. Line numbers in errors count from `span.start` as line 1.
fn scan(
    path: &Path,
    file: &File,
    span: Span,
    f: &mut dyn FnMut(Play<'_>),
) -> Result<(u64, u64), StorageError> {
    let Span { start, stop, end } = span;
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut filled = 0usize;
    let mut pos = start;
    let mut count = 0u64;
    // The 1-based line the buffer's first byte is on.
    let mut line = 1u64;
    let mut record = csv::StringRecord::new();
    loop {
        if filled == buf.len() {
            // One row longer than the buffer.
            buf.resize(buf.len() * 2, 0);
        }
        let want = (buf.len() - filled).min(usize::try_from(end - pos).unwrap_or(usize::MAX));
        let n = if want == 0 {
            0
        } else {
            file.read_at(&mut buf[filled..filled + want], pos)
                .map_err(|source| StorageError::Io {
                    path: path.to_path_buf(),
                    action: "read",
                    source,
                })?
        };
        pos += n as u64;
        filled += n;
        let eof = n == 0;
        // The file offset of the buffer's first byte.
        let base = pos - filled as u64;
        let mut at = 0usize;
        while at < filled {
            if base + at as u64 >= stop {
                return Ok((count, base + at as u64));
            }
            let rest = &buf[at..filled];
            match split_row(rest) {
                Line::Row { play, len } => {
                    f(play);
                    count += 1;
                    line += 1;
                    at += len;
                }
                Line::Blank => {
                    line += 1;
                    at += 1;
                }
                Line::Incomplete if !eof => break,
                Line::Incomplete | Line::Unusual => {
                    match read_one(path, rest, line, &mut record, eof)? {
                        None => break,
                        Some((used, row)) => {
                            if let Some((agency, bet)) = row {
                                f(Play {
                                    agency,
                                    document: &bet.document,
                                    number: bet.number,
                                });
                                count += 1;
                            }
                            line += rest[..used].iter().filter(|&&b| b == b'\n').count() as u64;
                            at += used;
                        }
                    }
                }
            }
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        if eof && filled == 0 {
            return Ok((count, end));
        }
        if eof {
            // Unreachable: at the end the `csv` reader takes whatever is left.
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                at: line.to_string(),
                reason: "the last row cannot be read".into(),
            });
        }
    }
}

/// A row as the `csv` reader's parse gives it.
type StoredRow = (AgencyId, crate::bet::Bet);

/// Reads one record at the start of `rest` with the `csv` crate's reader, as
/// `read_rows` would: `None` if `rest` may end inside it (more bytes are needed),
/// else how many bytes it took and the row, if any (`None` for blank lines only).
fn read_one(
    path: &Path,
    rest: &[u8],
    line: u64,
    record: &mut csv::StringRecord,
    eof: bool,
) -> Result<Option<(usize, Option<StoredRow>)>, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        at: line.to_string(),
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(rest);
    let more = reader.read_record(record);
    let used = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX);
    if !eof && used >= rest.len() {
        // The record may go on after the bytes read so far.
        return Ok(None);
    }
    match more {
        Err(e) => Err(corrupt(e.to_string())),
        Ok(false) => Ok(Some((rest.len(), None))),
        Ok(true) => {
            let row = parse_row(record).map_err(corrupt)?;
            Ok(Some((used.min(rest.len()), Some(row))))
        }
    }
}

/// Splits the row at the start of `bytes` if it is in the store's own form.
fn split_row(bytes: &[u8]) -> Line<'_> {
    if bytes.first() == Some(&b'\n') {
        return Line::Blank;
    }
    // Most rows hold no quote (and never a CR): their fields are what lies between
    // their five commas.
    let Some(e) = memchr::memchr3(b'\n', b'"', b'\r', bytes) else {
        return Line::Incomplete;
    };
    if bytes[e] != b'\n' {
        return split_quoted(bytes);
    }
    let line = &bytes[..e];
    let comma = |&b: &u8| b == b',';
    // From the end: `,number`, `,YYYY-MM-DD`, `,document`; from the start: `agency,`.
    let (Some(c5), Some(c1)) = (line.iter().rposition(comma), line.iter().position(comma)) else {
        return Line::Unusual;
    };
    let Some(c4) = c5.checked_sub(11).filter(|&c| line[c] == b',') else {
        return Line::Unusual;
    };
    let Some(c3) = line[..c4].iter().rposition(comma) else {
        return Line::Unusual;
    };
    // Exactly one comma between the names.
    // (The names are a few bytes: a plain count is faster than a library call.)
    if c3 <= c1 || line[c1 + 1..c3].iter().filter(|&&b| b == b',').count() != 1 {
        return Line::Unusual;
    }
    row(line, [c1, c3, c4, c5], e + 1)
}

/// The row `line` (without its line feed, `len` bytes with it) whose agency ends at
/// `commas[0]`, whose document lies between `commas[1]` and `commas[2]`, and whose
/// birthdate and number follow `commas[2]` and `commas[3]`; the fields are unquoted.
fn row(line: &[u8], commas: [usize; 4], len: usize) -> Line<'_> {
    let [c1, c3, c4, c5] = commas;
    let (Some(agency), Some(number), true) = (
        digits(&line[..c1], 10).and_then(|v| AgencyId::try_from(v).ok()),
        digits(&line[c5 + 1..], 5).and_then(|v| u16::try_from(v).ok()),
        is_date(&line[c4 + 1..c5]),
    ) else {
        return Line::Unusual;
    };
    let Ok(document) = std::str::from_utf8(&line[c3 + 1..c4]) else {
        return Line::Unusual;
    };
    Line::Row {
        play: Play {
            agency,
            document,
            number,
        },
        len,
    }
}

/// [`split_row`] for a row with a quote or a CR before its first line feed.
fn split_quoted(bytes: &[u8]) -> Line<'_> {
    // Field boundaries: field i is bytes[starts[i]..ends[i]].
    let mut starts = [0usize; 6];
    let mut ends = [0usize; 6];
    let mut i = 0usize;
    let mut p = 0usize;
    for field in 0..6 {
        let quoted = bytes.get(p) == Some(&b'"');
        if quoted {
            // Only the names may be quoted; a quoted field runs to a `"` that is not
            // doubled, and must hold no line break (a row is one line).
            if !(field == 1 || field == 2) {
                return Line::Unusual;
            }
            let mut q = p + 1;
            loop {
                let Some(k) = find_from(bytes, q, |rest| memchr::memchr2(b'"', b'\n', rest)) else {
                    return Line::Incomplete;
                };
                if bytes[k] == b'\n' {
                    return Line::Unusual;
                }
                match bytes.get(k + 1) {
                    Some(b'"') => q = k + 2,
                    Some(_) => {
                        p = k + 1;
                        break;
                    }
                    None => return Line::Incomplete,
                }
            }
            starts[field] = i;
            ends[field] = p;
        } else {
            starts[field] = p;
        }
        let Some(k) = find_from(bytes, p, find_special) else {
            return Line::Incomplete;
        };
        let sep = bytes[k];
        if quoted && k != p {
            // Text after the closing quote.
            return Line::Unusual;
        }
        if !quoted {
            ends[field] = k;
        }
        let last = field == 5;
        match (sep, last) {
            (b',', false) | (b'\n', true) => {}
            _ => return Line::Unusual,
        }
        p = k + 1;
        i = p;
    }
    // Fields 0, 3, 4 and 5 are unquoted; `p` is just past the line feed.
    row(&bytes[..p - 1], [ends[0], ends[2], ends[3], ends[4]], p)
}

/// `find` (a search returning an index into the slice it is given) over `bytes` from
/// `from` on, as an index into `bytes`; `None` also when `from` is past the end.
fn find_from(bytes: &[u8], from: usize, find: impl Fn(&[u8]) -> Option<usize>) -> Option<usize> {
    find(bytes.get(from..)?).map(|k| from + k)
}

/// The index of the first of the four bytes the CSV format treats specially (`,`,
/// `"`, `\r`, `\n`) in `bytes`. `memchr` searches for at most three bytes at once, so
/// the CR, the rarest, is looked for only before the first of the others (within one
/// field, a few bytes), or in all of `bytes` when none of them is there.
fn find_special(bytes: &[u8]) -> Option<usize> {
    match memchr::memchr3(b',', b'"', b'\n', bytes) {
        Some(k) => Some(bytes[..k].iter().position(|&b| b == b'\r').unwrap_or(k)),
        None => memchr::memchr(b'\r', bytes),
    }
}

/// The value of 1 to `max` ASCII digits.
fn digits(text: &[u8], max: usize) -> Option<u64> {
    if text.is_empty() || text.len() > max {
        return None;
    }
    text.iter().try_fold(0u64, |v, &b| {
        b.is_ascii_digit().then(|| v * 10 + u64::from(b - b'0'))
    })
}

/// Whether `text` is `YYYY-MM-DD` naming a real day (what the `%Y-%m-%d` parse of
/// `read_rows` accepts in that form).
fn is_date(text: &[u8]) -> bool {
    let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = *text else {
        return false;
    };
    let (Some(y), Some(m), Some(d)) = (
        digits(&[y1, y2, y3, y4], 4),
        digits(&[m1, m2], 2),
        digits(&[d1, d2], 2),
    ) else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::for_each_stored;
    use chrono::NaiveDate;
    use std::fs;
    use std::path::PathBuf;

    fn temp_file(name: &str, content: &[u8]) -> PathBuf {
        let dir = crate::storage::csv_journal::tests::temp_dir(&format!("scan-{name}"));
        let path = dir.join("bets.csv");
        fs::write(&path, content).expect("write");
        path
    }

    type Row = (AgencyId, String, u16);

    fn scanned(path: &Path) -> Result<Vec<Row>, String> {
        let file = File::open(path).expect("open");
        let len = file.metadata().expect("meta").len();
        let mut rows = Vec::new();
        let n = for_each_play(path, &file, len, &mut |p| {
            rows.push((p.agency, p.document.to_string(), p.number));
        })
        .map_err(|e| e.to_string())?;
        assert_eq!(n as usize, rows.len());
        Ok(rows)
    }

    fn parsed(path: &Path) -> Result<Vec<Row>, String> {
        let mut rows = Vec::new();
        for_each_stored(path, |agency, bet| {
            rows.push((agency, bet.document, bet.number))
        })
        .map_err(|e| e.to_string())?;
        Ok(rows)
    }

    /// The scan and the `csv` reader's parse agree on `content`: the same rows, or
    /// both refuse it.
    fn agree(name: &str, content: &[u8]) -> Option<usize> {
        let path = temp_file(name, content);
        let (ours, theirs) = (scanned(&path), parsed(&path));
        let _ = fs::remove_dir_all(path.parent().expect("dir"));
        match (ours, theirs) {
            (Ok(a), Ok(b)) => {
                assert!(a == b, "{name}: {} vs {} rows", a.len(), b.len());
                Some(a.len())
            }
            (Err(_), Err(_)) => None,
            (a, b) => panic!("{name}: scan {a:?} but parse {b:?}"),
        }
    }

    /// Rows the store writes, and rows it never writes but a `csv` reader accepts.
    const ROWS: [&str; 24] = [
        "1,Ana,Paz,00000001,1990-01-02,7574\n",
        "12,\"Paz, María\",\"O\"\"Neil\",123,2000-02-29,0\n",
        "3,\"\",\"\"\"\",9,1950-12-31,9999\n",
        "4,,,1,1990-01-02,65535\n",
        "5,Zoë Núñez,日本語,4,1990-01-02,42\n",
        "6,\"multi\nline\",Paz,5,1990-01-02,1\n",
        "7,Ana,Paz,6,1990-01-02,2\r\n",
        "8,Ana,Paz,7,1990-01-02,3\r",
        "\n",
        "\r\n",
        "\"9\",Ana,Paz,8,1990-01-02,4\n",
        "10,Ana,Paz,\"9\",1990-01-02,5\n",
        "+11,Ana,Paz,10,1990-01-02,6\n",
        "13,Ana,Paz,11,1990-1-2,7\n",
        "14,Ana,Paz,12,1990-01-02,007\n",
        "15,a\"b,Paz,13,1990-01-02,8\n",
        "16,\"a\"b,Paz,14,1990-01-02,9\n",
        "17,Ana,Paz, 15 ,1990-01-02,10\n",
        "18,Ana,Paz,16,1990-01-02,11,extra\n",
        "19,\"x,\"\"\n\"\"y\",Paz,17,1990-01-02,12\n",
        "20,Ana,Paz,,1990-01-02,13\n",
        "21,Ana,Paz,18,1990-01-02, 14\n",
        "22,Ana,Paz,19,0000-01-01,15\n",
        "23,Ana,Paz,20,1990-01-02,16",
    ];

    /// Rows that neither accepts.
    const BAD: [&str; 6] = [
        "1,Ana,Paz,1,1990-02-30,5\n",
        "1,Ana,Paz,1,1990-01-02,70000\n",
        "99999999999,Ana,Paz,1,1990-01-02,5\n",
        "1,Ana,Paz,1,1990-01-02\n",
        "x,Ana,Paz,1,1990-01-02,5\n",
        "1,Ana,Paz,1,1990-01-02,-5\n",
    ];

    #[test]
    fn each_row_form_is_read_as_the_csv_reader_reads_it() {
        for (i, row) in ROWS.iter().enumerate() {
            agree(&format!("row{i}"), row.as_bytes());
            // And in the middle of usual rows.
            let text = format!("{}{row}\n{}", ROWS[0], ROWS[1]);
            agree(&format!("mid{i}"), text.as_bytes());
        }
        for (i, row) in BAD.iter().enumerate() {
            let text = format!("{}{row}{}", ROWS[0], ROWS[1]);
            assert_eq!(agree(&format!("bad{i}"), text.as_bytes()), None, "{row:?}");
        }
        assert_eq!(agree("empty", b""), Some(0));
    }

    #[test]
    fn rows_across_chunk_boundaries_and_longer_than_a_chunk_are_read_whole() {
        // Over three chunks of mixed rows, so every kind straddles a boundary
        // somewhere, and one row (a quoted name) longer than a chunk.
        let good = good_rows();
        let mut text = String::new();
        let mut i = 0usize;
        while text.len() < 2 * SCAN_CHUNK {
            let row = good[i % good.len()];
            text.push_str(row);
            if row.ends_with('\r') {
                text.push('\n');
            }
            i += 1;
            if i == 20_000 {
                let long = "x,\"\"y".repeat(SCAN_CHUNK / 5);
                text.push_str(&format!("30,\"{long}\",Paz,31,1990-01-02,32\n"));
            }
        }
        let n = agree("chunks", text.as_bytes()).expect("accepted");
        assert!(n > 20_000, "{n}");
        // A file cut anywhere in its last rows.
        let tail = &text.as_bytes()[text.len() - 2000..];
        for end in (0..tail.len()).step_by(13) {
            agree("cut", &tail[..end]);
        }
    }

    /// The rows of [`ROWS`] but the last (which has no line feed) that the `csv`
    /// reader accepts.
    fn good_rows() -> Vec<&'static str> {
        let good: Vec<&str> = ROWS[..ROWS.len() - 1]
            .iter()
            .filter(|row| agree("good", row.as_bytes()).is_some())
            .copied()
            .collect();
        assert!(good.len() >= 12, "{good:?}");
        good
    }

    /// The count and the kept rows of a scan of `path` that keeps the rows `keep`
    /// accepts: by the single scan (`starts` `None`) or split at `starts`.
    fn kept(
        path: &Path,
        starts: Option<&[u64]>,
        keep: &(dyn Fn(Play<'_>) -> bool + Sync),
    ) -> Result<(u64, Vec<Row>), String> {
        let file = File::open(path).expect("open");
        let len = file.metadata().expect("meta").len();
        let mut rows = Vec::new();
        let mut push = |p: Play<'_>| rows.push((p.agency, p.document.to_string(), p.number));
        let n = match starts {
            None => for_each_play(path, &file, len, &mut |p| {
                if keep(p) {
                    push(p)
                }
            }),
            Some(starts) => scan_split(path, &file, len, starts, keep, &mut push),
        }
        .map_err(|e| e.to_string())?;
        Ok((n, rows))
    }

    const EVEN: &(dyn Fn(Play<'_>) -> bool + Sync) = &|p| p.number % 2 == 0;
    const ALL: &(dyn Fn(Play<'_>) -> bool + Sync) = &|_| true;

    #[test]
    fn a_split_scan_gives_what_the_single_scan_gives_wherever_it_is_split() {
        // Every row form in one file — quoted line breaks, a CR alone, CRLF, blank
        // lines, a last row without its line feed — then the same with a bad row in
        // the middle, and cut inside its last rows; split at every byte, and at pairs of
        // bytes some way apart.
        let rows = good_rows();
        let good = format!("{}{}", rows.concat(), ROWS[ROWS.len() - 1]);
        assert!(agree("split-good", good.as_bytes()).is_some());
        let bad = format!("{}{}{}", rows[..8].concat(), BAD[0], rows[8..].concat());
        let cut = &good[..good.len() - 40];
        for (name, text) in [("good", good.as_str()), ("bad", &bad), ("cut", cut)] {
            let path = temp_file(&format!("split-{name}"), text.as_bytes());
            // (Every byte with one filter, every 7th with the other, pairs 89 apart:
            // each scan starts threads and builds buffers, slow in a debug build.)
            for (keep, step) in [(EVEN, 1), (ALL, 7)] {
                let single = kept(&path, None, keep);
                match name {
                    "good" => assert!(single.is_ok(), "{single:?}"),
                    "bad" => assert!(single.is_err(), "{single:?}"),
                    _ => {}
                }
                let len = text.len() as u64;
                for s in (1..len).step_by(step) {
                    assert_eq!(kept(&path, Some(&[0, s]), keep), single, "{name} at {s}");
                    if step > 1 || name == "cut" {
                        continue;
                    }
                    for t in (s + 1..len).step_by(89) {
                        let starts = [0, s, t];
                        assert_eq!(
                            kept(&path, Some(&starts), keep),
                            single,
                            "{name} at {s} {t}"
                        );
                    }
                }
            }
            let _ = fs::remove_dir_all(path.parent().expect("dir"));
        }
    }

    #[test]
    fn a_boundary_is_trusted_only_where_the_scan_before_it_stops() {
        let text = format!("{}{}{}", ROWS[0], ROWS[5], ROWS[1]);
        let path = temp_file("trust", text.as_bytes());
        let file = File::open(&path).expect("open");
        let end = text.len() as u64;
        let row_start = (ROWS[0].len() + ROWS[5].len()) as u64;
        // Just after the line feed inside the quoted name of ROWS[5]: not a row start.
        let inside = (ROWS[0].len() + ROWS[5].find('\n').expect("line break") + 1) as u64;
        let ranges = |s: u64| scan_ranges(&path, &file, end, &[0, s], ALL);
        let split = ranges(row_start).expect("a row start is trusted");
        assert_eq!(split.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 1]);
        assert!(ranges(inside).is_none());
        // Offsets out of order, or not from 0, or past the end, are never used.
        for starts in [&[0, 5, 5][..], &[0, 9, 5], &[3, 9], &[0, end]] {
            assert!(
                scan_ranges(&path, &file, end, starts, ALL).is_none(),
                "{starts:?}"
            );
        }
        let _ = fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_large_file_is_split_after_line_feeds_and_read_as_the_single_scan_reads_it() {
        let good = good_rows();
        let mut text = String::new();
        let mut i = 0usize;
        // Mostly usual rows (the others go through the `csv` reader, slow in a debug
        // build), every form now and then.
        while text.len() <= MIN_SPLIT as usize {
            text.push_str(if i.is_multiple_of(8) {
                good[i / 8 % good.len()]
            } else {
                ROWS[0]
            });
            i += 1;
        }
        let path = temp_file("large", text.as_bytes());
        let file = File::open(&path).expect("open");
        let end = text.len() as u64;
        for threads in 1..=MAX_THREADS {
            let starts = split_points(&file, end, threads);
            assert_eq!(starts.len(), threads, "{starts:?}");
            assert_eq!(starts[0], 0);
            for w in starts.windows(2) {
                assert!(w[0] < w[1] && text.as_bytes()[w[1] as usize - 1] == b'\n');
            }
        }
        // Too small to split.
        assert_eq!(split_points(&file, MIN_SPLIT - 1, 4), [0]);
        for keep in [EVEN, ALL] {
            let single = kept(&path, None, keep).expect("single");
            let mut rows = Vec::new();
            let n = for_each_play_where(&path, &file, end, keep, &mut |p| {
                rows.push((p.agency, p.document.to_string(), p.number))
            })
            .expect("where");
            assert_eq!((n, rows), single);
        }
        let _ = fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_store_reads_back_its_own_rows_by_either_way() {
        use crate::storage::{Batch, CsvJournalStore, Store, digest};
        let path = temp_file("store", b"");
        fs::remove_file(&path).expect("fresh");
        let mut store = CsvJournalStore::open(&path).expect("open");
        let names = [
            "Ana",
            "Paz, María",
            "\"Tito\"",
            " spaced ",
            "日本",
            "a\"b,c",
            "",
        ];
        let bets: Vec<crate::bet::Bet> = (0..500u32)
            .map(|i| crate::bet::Bet {
                first_name: names[i as usize % names.len()].into(),
                last_name: names[(i as usize / 7) % names.len()].repeat(1 + i as usize % 3),
                document: format!("{:08}", i * 7919),
                birthdate: NaiveDate::from_ymd_opt(1900 + (i % 120) as i32, 1 + i % 12, 1 + i % 28)
                    .expect("date"),
                number: (i * 37 % 10_000) as u16,
            })
            .collect();
        for (seq, chunk) in bets.chunks(50).enumerate() {
            let agency = 1 + seq as AgencyId % 3;
            store
                .commit(&[Batch {
                    agency,
                    upload: u64::from(agency),
                    seq: seq as u64 + 1,
                    line: 0,
                    digest: digest(agency, chunk),
                    bets: chunk,
                    rows: None,
                }])
                .expect("commit");
        }
        let mut plays = Vec::new();
        let n = store
            .for_each_play(&mut |p| plays.push((p.agency, p.document.to_string(), p.number)))
            .expect("plays");
        let mut full = Vec::new();
        store
            .for_each_bet(&mut |a, b| full.push((a, b.document, b.number)))
            .expect("bets");
        assert_eq!(n, 500);
        assert_eq!(plays, full);
        let (draw, count) = crate::storage::run_draw(&mut store, bets[3].number).expect("draw");
        assert_eq!(count, 500);
        let want: Vec<&Row> = full.iter().filter(|r| r.2 == bets[3].number).collect();
        assert_eq!(draw.total(), want.len());
        for (agency, doc, _) in want {
            assert!(draw.winners_of(*agency).contains(doc));
        }
        drop(store);
        let _ = fs::remove_dir_all(path.parent().expect("dir"));
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn dates_are_checked_as_chrono_parses_them() {
        for year in [0, 1, 4, 100, 1600, 1899, 1900, 1999, 2000, 2024, 2100, 9999] {
            for month in 0..=13u32 {
                for day in 0..=32u32 {
                    let text = format!("{year:04}-{month:02}-{day:02}");
                    assert_eq!(
                        is_date(text.as_bytes()),
                        NaiveDate::parse_from_str(&text, "%Y-%m-%d").is_ok(),
                        "{text}"
                    );
                }
            }
        }
        for bad in [
            "1990-1-02",
            "1990-01-2",
            "19900-01-02",
            "1990/01/02",
            "199a-01-02",
            "",
        ] {
            assert!(!is_date(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn searches_find_exactly_the_first_special_byte() {
        // Every special byte, bytes with the high bit set, a NUL, and long enough
        // (over 64 bytes) that the library's vector loops run as well as its tails.
        let mut text = b"a,\"b\r\nc,,\x80\xff,\x00,".to_vec();
        text.extend_from_slice(&[b'x'; 70]);
        text.extend_from_slice(b"\r\"y\n,\r");
        text.extend_from_slice(&[b'z'; 40]);
        for from in 0..=text.len() + 1 {
            let rest = text.get(from..).unwrap_or_default();
            let first = |set: &[u8]| rest.iter().position(|b| set.contains(b)).map(|i| i + from);
            assert_eq!(
                find_from(&text, from, find_special),
                first(b",\"\r\n"),
                "from {from}"
            );
            assert_eq!(
                find_from(&text, from, |r| memchr::memchr2(b'"', b'\n', r)),
                first(b"\"\n"),
                "from {from}"
            );
            // Without `,` `"` `\n`, only a CR can be found (the search's other branch).
            let mut cr = rest.to_vec();
            cr.retain(|b| !b",\"\n".contains(b));
            assert_eq!(find_special(&cr), cr.iter().position(|&b| b == b'\r'));
        }
        assert_eq!(find_special(b""), None);
        assert_eq!(find_from(b"abc", 3, find_special), None);
        assert_eq!(find_from(b"abc", 4, find_special), None);
        assert_eq!(find_special(b"ab\rc,d"), Some(2));
        assert_eq!(find_special(b"ab\rcd"), Some(2));
        assert_eq!(find_special(b"abcd,\r"), Some(4));
    }

    #[test]
    fn rows_split_as_their_fields_say() {
        let play = |text: &'static str| match split_row(text.as_bytes()) {
            Line::Row { play, len } => Some((play.agency, play.document, play.number, len)),
            _ => None,
        };
        assert_eq!(
            play("12,Ana,Paz,00000001,1990-01-02,7574\nnext"),
            Some((12, "00000001", 7574, 36))
        );
        assert_eq!(
            play("1,\"Paz, Ana\",\"O\"\"Neil, Jr\",7,2000-02-29,0\n"),
            Some((1, "7", 0, 42))
        );
        assert!(matches!(
            split_row(b"1,Ana,Paz,1,1990-01-02,5"),
            Line::Incomplete
        ));
        assert!(matches!(
            split_row(b"1,\"Ana,Paz,1,1990-01-02,5"),
            Line::Incomplete
        ));
        assert!(matches!(split_row(b"\n1"), Line::Blank));
        for unusual in [
            "1,Ana,Paz,1,1990-01-02,5\r\n",
            "1,A,na,Paz,1,1990-01-02,5\n",
            "1,Ana,Paz,1,1990-01-02\n",
            "1,\"An\na\",Paz,1,1990-01-02,5\n",
            "1,\"Ana\"x,Paz,1,1990-01-02,5\n",
            "1,Ana,Paz,\"1\",1990-01-02,5\n",
            "1,Ana,Paz,1,1990-01-32,5\n",
            "1,Ana,Paz,1,1990-01-02,65536\n",
        ] {
            assert!(
                matches!(split_row(unusual.as_bytes()), Line::Unusual),
                "{unusual:?}"
            );
        }
    }
}
