//! Turning the agency file into batches, deterministically.
//!
//! [`Sendable`] yields the bets the client sends, in file order: invalid lines and
//! bets too big for one frame are skipped (and reported once per run). Because the
//! choice depends only on the file, a resumed upload re-reads the file and skips the
//! first `stored_bets` sendable bets with [`skip`]: exactly those the server stored,
//! whatever batch sizes the earlier runs used. [`Batcher`] groups the rest into
//! batches of at most `max_amount` bets and one frame.

use std::path::Path;

use crate::agency_file::{AgencyFileError, Line};
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
pub struct Sendable<'a, I> {
    lines: I,
    agency: AgencyId,
    path: &'a Path,
    /// Lines skipped so far in this pass.
    skipped: u64,
    /// Skipped lines up to this line number were already reported (by an earlier pass
    /// of this run); only later ones are logged.
    reported_through: &'a mut u64,
}

impl<'a, I> Sendable<'a, I>
where
    I: Iterator<Item = Result<Line, AgencyFileError>>,
{
    /// Wraps `lines` of the file at `path` of `agency`. `reported_through` is shared by
    /// the passes of one run so that each bad line is logged once.
    pub fn new(
        lines: I,
        agency: AgencyId,
        path: &'a Path,
        reported_through: &'a mut u64,
    ) -> Sendable<'a, I> {
        Sendable {
            lines,
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

    fn skip(&mut self, line: u64, reason: &dyn Fn() -> String) {
        self.skipped += 1;
        if line > *self.reported_through {
            *self.reported_through = line;
            log::warn!(
                "action: leer_apuesta | result: fail | client_id: {} | file: {} | line: {line} | reason: {}",
                self.agency,
                self.path.display(),
                crate::logging::sanitize(&reason())
            );
        }
    }
}

impl<I> Iterator for Sendable<'_, I>
where
    I: Iterator<Item = Result<Line, AgencyFileError>>,
{
    type Item = Result<Item, AgencyFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (line, bet) = match self.lines.next()? {
                Err(e) => return Some(Err(e)),
                Ok(Line::Invalid(bad)) => {
                    self.skip(bad.line, &|| bad.reason.clone());
                    continue;
                }
                Ok(Line::Bet { line, bet }) => (line, bet),
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
                continue;
            }
            return Some(Ok(Item { line, bet, len }));
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

/// Groups bets into batches of at most `max_amount` bets whose `BETS` frame fits
/// [`protocol::MAX_FRAME_LEN`].
#[derive(Debug)]
pub struct Batcher {
    max_amount: usize,
    batch: Vec<Bet>,
    len: usize,
}

impl Batcher {
    /// An empty batcher (`max_amount` of 0 counts as 1).
    pub fn new(max_amount: usize) -> Batcher {
        let max_amount = max_amount.max(1);
        Batcher {
            max_amount,
            batch: Vec::with_capacity(max_amount.min(1024)),
            len: 0,
        }
    }

    /// Adds `item` (which fits a frame on its own, as [`Sendable`] ensures). Returns
    /// the batch to send first when `item` does not fit the current one.
    pub fn push(&mut self, item: Item) -> Option<Vec<Bet>> {
        let full = !self.batch.is_empty()
            && (self.batch.len() == self.max_amount
                || protocol::bets_frame_len(self.len + item.len) > protocol::MAX_FRAME_LEN);
        let ready = if full { self.take() } else { None };
        self.len += item.len;
        self.batch.push(item.bet);
        ready
    }

    /// The last, partial batch, if any.
    pub fn take(&mut self) -> Option<Vec<Bet>> {
        self.len = 0;
        if self.batch.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.batch))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agency_file::BadLine;
    use chrono::NaiveDate;
    use std::path::PathBuf;

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

    fn sendable_lines(reported: &mut u64) -> Vec<u64> {
        let path = PathBuf::from("f.csv");
        Sendable::new(lines().into_iter(), 1, &path, reported)
            .map(|item| item.map(|i| i.line).expect("no I/O error"))
            .collect()
    }

    #[test]
    fn invalid_and_oversized_lines_are_skipped_and_reported_once() {
        let mut reported = 0;
        let path = PathBuf::from("f.csv");
        let mut items = Sendable::new(lines().into_iter(), 1, &path, &mut reported);
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
            let mut items = Sendable::new(lines().into_iter(), 1, &path, &mut reported);
            assert_eq!(skip(&mut items, stored).ok(), Some(stored));
            let rest: Vec<u64> = items.map(|i| i.expect("ok").line).collect();
            assert_eq!(rest, all[stored as usize..]);
        }
        let path = PathBuf::from("f.csv");
        let mut reported = 0;
        let mut items = Sendable::new(lines().into_iter(), 1, &path, &mut reported);
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
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        assert_eq!(batcher.take(), None);

        let mut batcher = Batcher::new(1000);
        let mut batches = Vec::new();
        for i in 0..100 {
            batches.extend(batcher.push(item(i, 500)));
        }
        batches.extend(batcher.take());
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 100);
        for batch in &batches {
            let len: usize = batch.iter().map(protocol::bet_wire_len).sum();
            assert!(protocol::bets_frame_len(len) <= protocol::MAX_FRAME_LEN);
        }
        assert!(batches.len() > 1);
    }
}
