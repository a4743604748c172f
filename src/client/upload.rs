//! Turning the agency file into batches, deterministically.
//!
//! [`Sendable`] yields the bets the client sends, in file order: invalid lines and
//! bets too big for one frame are skipped (and reported once per run). A resumed
//! upload re-reads the file and, with [`resume`], skips what the server stored: every
//! line up to the `WELCOME`'s `stored_line` — valid or not, because a line's validity
//! depends on the date (a birthdate of today is invalid today and valid tomorrow), so
//! only the line number is a stable resume point. Only bets stored without line
//! numbers (`stored_line` 0) are skipped by count, the first `stored_bets` sendable
//! ones. [`Batcher`] groups the rest into batches of at most `max_amount` bets and one
//! frame, each remembering the file line of its last bet (the `BETS` `line`).
//!
//! A sent batch's bets go back to [`Sendable::reuse`]: later lines are read into them
//! ([`ReadInto`]), so an upload's bets allocate no `String`s once the first batches
//! are sent.

use std::path::Path;

use super::ClientError;
use crate::agency_file::{AgencyFileError, Line, Parsed, ReadInto};
use crate::bet::{AgencyId, Bet};
use crate::protocol;

/// A bet to send, with its line number and its encoded length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// 1-based line number in the agency file.
    pub line: u64,
    /// The bet.
    pub bet: Bet,
    /// Its length in a `BETS` payload ([`protocol::bet_wire_len`]).
    pub len: usize,
}

/// The sendable bets of an agency file's lines.
pub struct Sendable<'a, R> {
    lines: R,
    /// A line read but not yet handed out ([`Sendable::skip_through_line`] stopped
    /// before it).
    pending: Option<Line>,
    /// Bets done with (sent, skipped or unsendable), their `String`s kept: the next
    /// lines are read into them.
    spare: Vec<Bet>,
    agency: AgencyId,
    path: &'a Path,
    /// Lines skipped so far in this pass.
    skipped: u64,
    /// Skipped lines up to this line number were already reported (by an earlier pass
    /// of this run); only later ones are logged.
    reported_through: &'a mut u64,
}

impl<'a, R: ReadInto> Sendable<'a, R> {
    /// Wraps `lines` of the file at `path` of `agency`. `reported_through` is shared by
    /// the passes of one run so that each bad line is logged once.
    pub fn new(
        lines: R,
        agency: AgencyId,
        path: &'a Path,
        reported_through: &'a mut u64,
    ) -> Sendable<'a, R> {
        Sendable {
            lines,
            pending: None,
            spare: Vec::new(),
            agency,
            path,
            skipped: 0,
            reported_through,
        }
    }

    /// Lines skipped (invalid or too big) so far in this pass.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Takes the bets of `bets` (a sent batch's, left empty) to read later lines into.
    pub fn reuse(&mut self, bets: &mut Vec<Bet>) {
        self.spare.append(bets);
    }

    /// The next line, read into a spare bet (a new one when none is left).
    fn read(&mut self) -> Option<Result<Line, AgencyFileError>> {
        if let Some(line) = self.pending.take() {
            return Some(Ok(line));
        }
        let mut bet = self
            .spare
            .pop()
            .unwrap_or_else(crate::agency_file::empty_bet);
        let read = match self.lines.read_into(&mut bet) {
            Some(Ok(Parsed::Bet { line })) => return Some(Ok(Line::Bet { line, bet })),
            Some(Ok(Parsed::Invalid(bad))) => Some(Ok(Line::Invalid(bad))),
            Some(Err(e)) => Some(Err(e)),
            None => None,
        };
        self.spare.push(bet);
        read
    }

    fn skip(&mut self, line: u64, reason: &dyn Fn() -> String) {
        self.skipped += 1;
        if line > *self.reported_through {
            *self.reported_through = line;
            log::warn!(
                "action: leer_apuesta | result: fail | client_id: {} | file: {} | line: {line} | reason: {}",
                self.agency,
                crate::logging::sanitize(&self.path.display().to_string()),
                crate::logging::sanitize(&reason())
            );
        }
    }

    /// The item of `line`, or `None` when it cannot be sent (then counted and reported).
    fn classify(&mut self, line: Line) -> Option<Item> {
        let (line, bet) = match line {
            Line::Invalid(bad) => {
                self.skip(bad.line, &|| bad.reason.clone());
                return None;
            }
            Line::Bet { line, bet } => (line, bet),
        };
        let len = protocol::bet_wire_len(&bet);
        let frame = protocol::bets_frame_len(len);
        if frame > protocol::MAX_FRAME_LEN {
            self.skip(line, &|| {
                format!(
                    "the bet takes {frame} bytes, more than one {}-byte frame holds",
                    protocol::MAX_FRAME_LEN
                )
            });
            self.spare.push(bet);
            return None;
        }
        Some(Item { line, bet, len })
    }

    /// Consumes every line numbered up to `through`, whatever its validity: sendable
    /// bets among them are dropped unsent, invalid lines are still counted in
    /// [`Sendable::skipped`] (so a pass counts the whole file's invalid lines). Returns
    /// the number of the last line read (0 when none): less than `through` when the
    /// file ended first.
    pub fn skip_through_line(&mut self, through: u64) -> Result<u64, AgencyFileError> {
        let mut last = 0;
        while let Some(next) = self.read() {
            let line = next?;
            if line_number(&line) > through {
                self.pending = Some(line);
                break;
            }
            last = line_number(&line);
            if let Some(unsent) = self.classify(line) {
                self.spare.push(unsent.bet);
            }
        }
        Ok(last)
    }
}

/// The 1-based file line `line` was read from.
fn line_number(line: &Line) -> u64 {
    match line {
        Line::Bet { line, .. } => *line,
        Line::Invalid(bad) => bad.line,
    }
}

impl<R: ReadInto> Iterator for Sendable<'_, R> {
    type Item = Result<Item, AgencyFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.read()? {
                Err(e) => return Some(Err(e)),
                Ok(line) => {
                    if let Some(item) = self.classify(line) {
                        return Some(Ok(item));
                    }
                }
            }
        }
    }
}

/// Where a resumed upload goes on in the agency file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Nothing is stored: from the first line.
    Start,
    /// After this line: every line up to it is skipped, valid or not.
    AfterLine(u64),
    /// After this many sendable bets (stored by a client that sent no line numbers,
    /// or adopted from an old bets file).
    AfterBets(u64),
}

impl Resume {
    /// The resume point of a `WELCOME` with `stored_line` and `stored_bets`.
    pub fn new(stored_line: u64, stored_bets: u64) -> Resume {
        if stored_line > 0 {
            Resume::AfterLine(stored_line)
        } else if stored_bets > 0 {
            Resume::AfterBets(stored_bets)
        } else {
            Resume::Start
        }
    }
}

/// Skips what `resume` says the server stored, so that `items` goes on with the first
/// bet to send. Fails when the file is shorter than what was stored (it is not the
/// file the server stored bets of, or the bet rules changed).
pub fn resume<R: ReadInto>(items: &mut Sendable<'_, R>, resume: Resume) -> Result<(), ClientError> {
    match resume {
        Resume::Start => Ok(()),
        Resume::AfterLine(stored_line) => {
            let last_line = items
                .skip_through_line(stored_line)
                .map_err(ClientError::AgencyFile)?;
            if last_line < stored_line {
                return Err(ClientError::ResumeBeyondFile {
                    agency: items.agency,
                    stored_line,
                    last_line,
                });
            }
            Ok(())
        }
        Resume::AfterBets(stored_bets) => {
            let sendable = skip(items, stored_bets).map_err(ClientError::AgencyFile)?;
            if sendable < stored_bets {
                return Err(ClientError::ResumeMismatch {
                    agency: items.agency,
                    stored_bets,
                    sendable,
                });
            }
            Ok(())
        }
    }
}

/// Skips the first `count` items of `items`; returns how many there were (fewer than
/// `count` when `items` ended first).
pub fn skip<T, E>(items: &mut impl Iterator<Item = Result<T, E>>, count: u64) -> Result<u64, E> {
    let mut skipped = 0;
    while skipped < count {
        match items.next() {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(_)) => skipped += 1,
        }
    }
    Ok(skipped)
}

/// A batch to send: its bets and the file line of its last bet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The bets, at least one.
    pub bets: Vec<Bet>,
    /// The 1-based file line of the last bet (the `BETS` `line`).
    pub line: u64,
}

/// Groups bets into batches of at most `max_amount` bets whose `BETS` frame fits
/// [`protocol::MAX_FRAME_LEN`].
#[derive(Debug)]
pub struct Batcher {
    max_amount: usize,
    batch: Vec<Bet>,
    /// An emptied batch handed back with [`Batcher::recycle`]: the next batch's `Vec`.
    spare: Vec<Bet>,
    len: usize,
    /// The line of the last bet pushed.
    line: u64,
}

impl Batcher {
    /// An empty batcher (`max_amount` of 0 counts as 1).
    pub fn new(max_amount: usize) -> Batcher {
        let max_amount = max_amount.max(1);
        Batcher {
            max_amount,
            batch: Vec::with_capacity(Self::capacity(max_amount)),
            spare: Vec::new(),
            len: 0,
            line: 0,
        }
    }

    /// Adds `item` (which fits a frame on its own, as [`Sendable`] ensures). Returns
    /// the batch to send first when `item` does not fit the current one.
    pub fn push(&mut self, item: Item) -> Option<Batch> {
        let full = !self.batch.is_empty()
            && (self.batch.len() == self.max_amount
                || protocol::bets_frame_len(self.len + item.len) > protocol::MAX_FRAME_LEN);
        let ready = if full { self.take() } else { None };
        self.len += item.len;
        self.line = item.line;
        self.batch.push(item.bet);
        ready
    }

    /// The room a batch `Vec` is given at once (it never grows bet by bet).
    fn capacity(max_amount: usize) -> usize {
        max_amount.min(1024)
    }

    /// The last, partial batch, if any.
    pub fn take(&mut self) -> Option<Batch> {
        self.len = 0;
        if self.batch.is_empty() {
            None
        } else {
            // The next batch fills the recycled `Vec` if there is one, else a new one
            // with room for a whole batch.
            let next = if self.spare.capacity() > 0 {
                std::mem::take(&mut self.spare)
            } else {
                Vec::with_capacity(Self::capacity(self.max_amount))
            };
            Some(Batch {
                bets: std::mem::replace(&mut self.batch, next),
                line: self.line,
            })
        }
    }

    /// Hands back a sent batch's `Vec` (emptied here) for a later batch to fill, so an
    /// upload allocates no batch `Vec` after its first two.
    pub fn recycle(&mut self, mut bets: Vec<Bet>) {
        bets.clear();
        if bets.capacity() > self.spare.capacity() {
            self.spare = bets;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agency_file::{AgencyFile, BadLine};
    use chrono::NaiveDate;
    use std::path::PathBuf;

    /// The next batch `batcher` makes of `items`, as the upload loop takes them
    /// (`client::Run`); `None` once both are used up.
    fn next_batch<R: ReadInto>(
        items: &mut Sendable<'_, R>,
        batcher: &mut Batcher,
    ) -> Option<Batch> {
        for item in items.by_ref() {
            if let Some(batch) = batcher.push(item.expect("reads")) {
                return Some(batch);
            }
        }
        batcher.take()
    }

    fn bet(i: u32, name_len: usize) -> Bet {
        Bet {
            first_name: "A".repeat(name_len),
            last_name: "B".into(),
            document: i.to_string(),
            birthdate: NaiveDate::from_ymd_opt(1990, 1, 1).unwrap_or_default(),
            number: 1,
        }
    }

    /// A file of 30 lines: every 4th invalid, every 7th a bet too big for a frame.
    fn lines() -> Vec<Result<Line, AgencyFileError>> {
        (1..=30u64)
            .map(|line| {
                Ok(if line % 4 == 0 {
                    Line::Invalid(BadLine {
                        path: PathBuf::from("f.csv"),
                        line,
                        reason: "bad".into(),
                    })
                } else if line % 7 == 0 {
                    Line::Bet {
                        line,
                        bet: bet(line as u32, protocol::MAX_FRAME_LEN),
                    }
                } else {
                    Line::Bet {
                        line,
                        bet: bet(line as u32, 3),
                    }
                })
            })
            .collect()
    }

    /// Lines read as from an agency file: each bet moved into the reader's slot.
    struct Lines<I>(I);

    impl<I: Iterator<Item = Result<Line, AgencyFileError>>> ReadInto for Lines<I> {
        fn read_into(&mut self, slot: &mut Bet) -> Option<Result<Parsed, AgencyFileError>> {
            Some(self.0.next()?.map(|line| match line {
                Line::Bet { line, bet } => {
                    *slot = bet;
                    Parsed::Bet { line }
                }
                Line::Invalid(bad) => Parsed::Invalid(bad),
            }))
        }
    }

    /// The lines of [`lines`] to read.
    fn file() -> Lines<std::vec::IntoIter<Result<Line, AgencyFileError>>> {
        Lines(lines().into_iter())
    }

    fn sendable_lines(reported: &mut u64) -> Vec<u64> {
        let path = PathBuf::from("f.csv");
        Sendable::new(file(), 1, &path, reported)
            .map(|item| item.map(|i| i.line).expect("no I/O error"))
            .collect()
    }

    #[test]
    fn invalid_and_oversized_lines_are_skipped_and_reported_once() {
        let mut reported = 0;
        let path = PathBuf::from("f.csv");
        let mut items = Sendable::new(file(), 1, &path, &mut reported);
        let sent: Vec<u64> = items.by_ref().map(|i| i.expect("ok").line).collect();
        let expected: Vec<u64> = (1..=30).filter(|l| l % 4 != 0 && l % 7 != 0).collect();
        assert_eq!(sent, expected);
        assert_eq!(items.skipped(), 30 - expected.len() as u64);
        drop(items);
        assert_eq!(reported, 28, "the last skipped line");
        // A second pass skips the same lines (counted again, logged no more).
        assert_eq!(sendable_lines(&mut reported), expected);
        assert_eq!(reported, 28);
    }

    #[test]
    fn resuming_skips_exactly_the_stored_bets_whatever_the_batch_size() {
        let all = sendable_lines(&mut 0);
        for stored in 0..=all.len() as u64 {
            let mut reported = 0;
            let path = PathBuf::from("f.csv");
            let mut items = Sendable::new(file(), 1, &path, &mut reported);
            assert_eq!(skip(&mut items, stored).ok(), Some(stored));
            let rest: Vec<u64> = items.map(|i| i.expect("ok").line).collect();
            assert_eq!(rest, all[stored as usize..]);
        }
        let path = PathBuf::from("f.csv");
        let mut reported = 0;
        let mut items = Sendable::new(file(), 1, &path, &mut reported);
        assert_eq!(skip(&mut items, 1000).ok(), Some(all.len() as u64));
    }

    #[test]
    fn skip_stops_at_an_error() {
        let mut items = vec![Ok(1), Err("boom"), Ok(3)].into_iter();
        assert_eq!(skip(&mut items, 3), Err("boom"));
        let mut items = vec![Ok::<_, ()>(1), Ok(2), Ok(3)].into_iter();
        assert_eq!(skip(&mut items, 2), Ok(2));
        assert_eq!(items.next(), Some(Ok(3)));
    }

    /// The lines `items` goes on with after resuming at `resume`.
    fn rest_after(resume: Resume) -> Result<Vec<u64>, ClientError> {
        let path = PathBuf::from("f.csv");
        let mut reported = 0;
        let mut items = Sendable::new(file(), 1, &path, &mut reported);
        super::resume(&mut items, resume)?;
        Ok(items.map(|i| i.expect("ok").line).collect())
    }

    #[test]
    fn resuming_by_line_skips_every_line_up_to_it_valid_or_not() {
        let all = sendable_lines(&mut 0);
        for stored_line in 1..=30u64 {
            let rest = rest_after(Resume::AfterLine(stored_line)).expect("resumes");
            let expected: Vec<u64> = all.iter().copied().filter(|&l| l > stored_line).collect();
            assert_eq!(rest, expected, "after line {stored_line}");
        }
        // Line 4 is invalid, 7 too big, 8 invalid: resuming after any of them goes on
        // at the next sendable line.
        assert_eq!(rest_after(Resume::AfterLine(4)).expect("ok")[0], 5);
        assert_eq!(rest_after(Resume::AfterLine(7)).expect("ok")[0], 9);
        assert_eq!(rest_after(Resume::AfterLine(8)).expect("ok")[0], 9);
        assert_eq!(rest_after(Resume::Start).expect("ok"), all);
        // The invalid lines skipped on the way still count (the file's total).
        let path = PathBuf::from("f.csv");
        let mut reported = 0;
        let mut items = Sendable::new(file(), 1, &path, &mut reported);
        assert_eq!(items.skip_through_line(10).ok(), Some(10));
        assert_eq!(items.skipped(), 3, "lines 4, 7 and 8");
        assert_eq!(items.next().map(|i| i.expect("ok").line), Some(11));
        drop(items);
        assert_eq!(reported, 8);
    }

    #[test]
    fn a_stored_line_beyond_the_end_of_the_file_is_an_error() {
        assert!(rest_after(Resume::AfterLine(30)).expect("ok").is_empty());
        match rest_after(Resume::AfterLine(31)) {
            Err(ClientError::ResumeBeyondFile {
                agency: 1,
                stored_line: 31,
                last_line: 30,
            }) => {}
            other => panic!("{other:?}"),
        }
        match rest_after(Resume::AfterBets(1000)) {
            Err(ClientError::ResumeMismatch {
                agency: 1,
                stored_bets: 1000,
                sendable,
            }) => assert_eq!(sendable, sendable_lines(&mut 0).len() as u64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_resume_point_is_the_line_when_known_else_the_count() {
        assert_eq!(Resume::new(0, 0), Resume::Start);
        assert_eq!(Resume::new(17, 12), Resume::AfterLine(17));
        assert_eq!(Resume::new(0, 12), Resume::AfterBets(12));
        // Skipping by count (bets stored without line numbers) is what it was.
        let all = sendable_lines(&mut 0);
        assert_eq!(rest_after(Resume::AfterBets(5)).expect("ok"), all[5..]);
    }

    #[test]
    fn a_line_that_became_valid_after_midnight_is_not_sent_twice() {
        // Line 2's birthdate is day 1 itself: invalid on day 1, valid on day 2.
        let day1 = NaiveDate::from_ymd_opt(2024, 6, 1).unwrap_or_default();
        let day2 = day1.succ_opt().unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "loteria-upload-midnight-{}.csv",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "Ana,Paz,1,1990-01-01,1\n\
             Bea,Paz,2,2024-06-01,2\n\
             Cid,Paz,3,1990-01-01,3\n\
             Dan,Paz,4,1990-01-01,4\n\
             Eva,Paz,5,1990-01-01,5\n",
        )
        .expect("write temp file");
        // One pass on `today` from `resume`: the documents of its batches of 2 (only
        // `batches` of them: the connection breaks after that) and the last line sent.
        let pass = |today, resume, batches| -> (Vec<String>, u64) {
            let file = AgencyFile::open(&path, today).expect("opens");
            let mut reported = 0;
            let mut items = Sendable::new(file, 1, &path, &mut reported);
            super::resume(&mut items, resume).expect("resumes");
            let mut batcher = Batcher::new(2);
            let mut all: Vec<Batch> = items
                .filter_map(|item| batcher.push(item.expect("reads")))
                .collect();
            all.extend(batcher.take());
            all.truncate(batches);
            let line = all.last().map_or(0, |b| b.line);
            let sent = all.into_iter().flat_map(|b| b.bets).map(|b| b.document);
            (sent.collect(), line)
        };
        // Day 1, just before midnight: the first batch (lines 1 and 3) is stored.
        let (first, stored_line) = pass(day1, Resume::Start, 1);
        assert_eq!(first, ["1", "3"]);
        assert_eq!(stored_line, 3);
        let stored_bets = first.len() as u64;
        // Day 2: the client resumes from the WELCOME and sends the rest.
        let (rest, _) = pass(day2, Resume::new(stored_line, stored_bets), usize::MAX);
        let mut every: Vec<String> = first.iter().chain(&rest).cloned().collect();
        assert_eq!(rest, ["4", "5"], "line 3 is not sent again");
        every.sort();
        every.dedup();
        assert_eq!(every.len(), first.len() + rest.len(), "no bet sent twice");
        // The old rule (skip the first 2 valid bets) would have landed on line 3 again:
        // on day 2, lines 1 and 2 are the first two valid bets.
        let (by_count, _) = pass(day2, Resume::AfterBets(stored_bets), usize::MAX);
        assert_eq!(by_count, ["3", "4", "5"]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn batches_respect_max_amount_and_the_frame_size() {
        let item = |i: u32, name_len: usize| {
            let bet = bet(i, name_len);
            Item {
                line: u64::from(i),
                len: protocol::bet_wire_len(&bet),
                bet,
            }
        };
        let mut batcher = Batcher::new(3);
        let mut batches = Vec::new();
        for i in 0..10 {
            batches.extend(batcher.push(item(i, 3)));
        }
        batches.extend(batcher.take());
        let sizes: Vec<usize> = batches.iter().map(|b| b.bets.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let lines: Vec<u64> = batches.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 5, 8, 9], "the line of each batch's last bet");
        assert_eq!(batcher.take(), None);

        let mut batcher = Batcher::new(1000);
        let mut batches = Vec::new();
        for i in 0..100 {
            batches.extend(batcher.push(item(i, 500)));
        }
        batches.extend(batcher.take());
        assert_eq!(batches.iter().map(|b| b.bets.len()).sum::<usize>(), 100);
        for batch in &batches {
            let len: usize = batch.bets.iter().map(protocol::bet_wire_len).sum();
            assert!(protocol::bets_frame_len(len) <= protocol::MAX_FRAME_LEN);
        }
        assert!(batches.len() > 1);
    }

    #[test]
    fn recycled_batches_are_refilled_and_batching_is_unchanged() {
        let item = |i: u32| {
            let bet = bet(i, 3);
            Item {
                line: u64::from(i),
                len: protocol::bet_wire_len(&bet),
                bet,
            }
        };
        let mut batcher = Batcher::new(3);
        let mut batches = Vec::new();
        let mut recycled = Vec::new();
        for i in 0..10 {
            if let Some(batch) = batcher.push(item(i)) {
                batches.push((batch.line, batch.bets.clone()));
                recycled.push(batch.bets.as_ptr());
                batcher.recycle(batch.bets);
            }
        }
        let last = batcher.take().expect("a partial batch");
        batches.push((last.line, last.bets.clone()));
        let documents: Vec<Vec<String>> = batches
            .iter()
            .map(|(_, bets)| bets.iter().map(|b| b.document.clone()).collect())
            .collect();
        assert_eq!(
            documents,
            [
                vec!["0", "1", "2"],
                vec!["3", "4", "5"],
                vec!["6", "7", "8"],
                vec!["9"]
            ]
        );
        let lines: Vec<u64> = batches.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [2, 5, 8, 9]);
        // From the third batch on, the batches fill the Vecs handed back.
        assert!(recycled[..2].contains(&last.bets.as_ptr()));
        assert!(recycled[..2].contains(&recycled[2]));
        assert_eq!(batcher.take(), None);
    }

    /// Batches of 3 over `text`, each handed back as `send_rest` does (to the
    /// `Sendable` when `reuse`): the lines and bets sent, and each bet's first-name
    /// capacity.
    fn upload(name: &str, text: &str, reuse: bool) -> Vec<(u64, Vec<(Bet, usize)>)> {
        let path =
            std::env::temp_dir().join(format!("loteria-upload-{name}-{}.csv", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default();
        let file = AgencyFile::open(&path, today).expect("opens");
        let mut reported = 0;
        let mut items = Sendable::new(file, 1, &path, &mut reported);
        let mut batcher = Batcher::new(3);
        let mut sent = Vec::new();
        while let Some(batch) = next_batch(&mut items, &mut batcher) {
            let bets = batch.bets.iter();
            sent.push((
                batch.line,
                bets.map(|b| (b.clone(), b.first_name.capacity())).collect(),
            ));
            let mut bets = batch.bets;
            if reuse {
                items.reuse(&mut bets);
            }
            batcher.recycle(bets);
        }
        let _ = std::fs::remove_file(&path);
        sent
    }

    #[test]
    fn later_lines_are_read_into_the_bets_of_sent_batches() {
        // Six long first names, then short ones, a bad line and a blank line among them.
        let mut text = String::new();
        for i in 1..=6 {
            text.push_str(&format!("{},Paz,{i},1990-01-01,{i}\n", "N".repeat(40)));
        }
        for i in 7..=20 {
            match i {
                9 => text.push_str("Eva,Paz,9,2030-01-01,9\n"),
                12 => text.push('\n'),
                _ => text.push_str(&format!("Eva,Paz,{i},1990-01-01,{i}\n")),
            }
        }
        let fresh = upload("fresh", &text, false);
        let reused = upload("reused", &text, true);
        let contents = |sent: &[(u64, Vec<(Bet, usize)>)]| -> Vec<(u64, Vec<Bet>)> {
            let batches = sent.iter();
            batches
                .map(|(line, bets)| (*line, bets.iter().map(|(b, _)| b.clone()).collect()))
                .collect()
        };
        assert_eq!(contents(&reused), contents(&fresh), "the same batches");
        let lines: Vec<u64> = reused.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [3, 6, 10, 14, 17, 20]);
        // The short names after the first two batches are read into the long names'
        // Strings: no new bet was made (fresh ones hold only what a short name needs).
        for (_, bets) in &reused[2..] {
            assert!(bets.iter().all(|(_, capacity)| *capacity >= 40), "{bets:?}");
        }
        for (_, bets) in &fresh[2..] {
            assert!(bets.iter().all(|(_, capacity)| *capacity < 40), "{bets:?}");
        }
    }

    /// Prints the cost per line of reading an agency file into batches of 100, the
    /// sent bets handed back to be read into or dropped:
    /// `cargo test --release --lib upload::tests::read_and_batch_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: prints numbers"]
    fn read_and_batch_speed() {
        let lines = 1_000_000u32;
        let text = crate::agency_file::speed_sample(lines);
        let path =
            std::env::temp_dir().join(format!("loteria-upload-speed-{}.csv", std::process::id()));
        std::fs::write(&path, &text).expect("write temp file");
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default();
        let run_once = |reuse: bool| {
            let t = std::time::Instant::now();
            let file = AgencyFile::open(&path, today).expect("opens");
            let mut reported = 0;
            let mut items = Sendable::new(file, 1, &path, &mut reported);
            let mut batcher = Batcher::new(100);
            let mut bets = 0;
            while let Some(batch) = next_batch(&mut items, &mut batcher) {
                bets += std::hint::black_box(&batch.bets).len();
                let mut sent = batch.bets;
                if reuse {
                    items.reuse(&mut sent);
                }
                batcher.recycle(sent);
            }
            assert_eq!(bets, lines as usize);
            t.elapsed().as_secs_f64() * 1e9 / f64::from(lines)
        };
        let (mut dropped, mut reused) = (f64::MAX, f64::MAX);
        for _ in 0..4 {
            dropped = dropped.min(run_once(false));
            reused = reused.min(run_once(true));
        }
        let _ = std::fs::remove_file(&path);
        println!(
            "Sendable + Batcher per line: sent bets dropped {dropped:.1} ns, read into again {reused:.1} ns"
        );
    }

    /// Prints the batcher's cost per bet with and without recycling (100-bet batches):
    /// `cargo test --release --lib upload::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: prints numbers"]
    fn speed() {
        let template = bet(1, 16);
        let len = protocol::bet_wire_len(&template);
        let n = 2_000_000u32;
        let run_once = |recycle: bool| {
            // The bets are made before the clock starts: only batching is timed.
            let items: Vec<Item> = (0..n)
                .map(|i| Item {
                    line: u64::from(i),
                    bet: template.clone(),
                    len,
                })
                .collect();
            let t = std::time::Instant::now();
            let mut batcher = Batcher::new(100);
            let mut bets = 0;
            for item in items {
                if let Some(batch) = batcher.push(item) {
                    bets += batch.bets.len();
                    if recycle {
                        batcher.recycle(batch.bets);
                    }
                }
            }
            std::hint::black_box(bets);
            t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
        };
        // Alternated, best of four each: the first runs warm the allocator up.
        let (mut take, mut recycled) = (f64::MAX, f64::MAX);
        for _ in 0..4 {
            take = take.min(run_once(false));
            recycled = recycled.min(run_once(true));
        }
        println!(
            "Batcher per bet (dropping each bet's Strings included): take only {:.1} ns, with recycle {:.1} ns",
            take, recycled
        );
    }
}
