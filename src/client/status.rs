//! Status mode: asks the server how far the lottery is (`STATUS_QUERY`, no `HELLO`)
//! and prints the answer as a table on standard output, followed by one log line
//! `action: status | result: success | finished: k | agencies: N | drawn: …`.
//!
//! It queries `loop.amount` times, one every `loop.period` (`0` counts as 1: print
//! once). Each query is a connection of its own, made with the usual connect timeout,
//! backoff and `server.retry_deadline`.
//!
//! The table ([`render`]) has one row per run of consecutive agencies in the same
//! state (connected, finished, bets stored, winners), so 1 000 agencies that have not
//! started are one row `1-1000`. When that still leaves more than [`MAX_ROWS`] rows,
//! only the agencies that have not finished are listed (the first [`MAX_ROWS`] rows
//! of them), the finished ones are summed up in one line, and after the draw the
//! winners per agency follow as a compact list (`agency:winners`, agencies without
//! winners left out).

use std::fmt::Write as _;
use std::io::Write as _;

use super::session::Session;
use super::{ClientError, Outcome, Run, Work};
use crate::bet::AgencyId;
use crate::config::ClientConfig;
use crate::protocol::{AgencyStatus, StatusSnapshot};
use crate::shutdown::Shutdown;
use crate::tls::ClientTls;

/// The most table rows printed; beyond it only unfinished agencies are listed.
pub const MAX_ROWS: usize = 40;

/// The most ranges the `missing:` line and the log line name.
const MAX_RANGES: usize = 20;

/// How wide the compact winners list may get.
const LINE_WIDTH: usize = 80;

/// Prints the lottery's status once, or every `loop.period` for `loop.amount` times.
pub(super) fn run(
    config: &ClientConfig,
    shutdown: &Shutdown,
    tls: Option<&ClientTls>,
) -> Result<Outcome, ClientError> {
    let rounds = config.loop_amount.max(1);
    let mut run = Run::new(config, shutdown, Work::Status, 0, tls);
    for round in 1..=rounds {
        let snapshot = run.with_retries(|run, timeout| {
            let mut session = Session::connect(
                &config.server_address,
                config.id,
                timeout,
                config.io_timeout,
                run.shutdown,
                run.tls,
            )?;
            let snapshot = session.status();
            drop(session);
            log::info!(
                "action: close_connection | result: success | client_id: {}",
                config.id
            );
            snapshot
        })?;
        let Some(snapshot) = snapshot else {
            return Ok(Outcome::Interrupted);
        };
        print_table(&snapshot)?;
        log::info!(
            "action: status | result: success | client_id: {} | finished: {} | agencies: {} | drawn: {} | bets: {} | missing: {}{}",
            config.id,
            snapshot.finished,
            snapshot.agencies,
            snapshot.drawn,
            total_bets(&snapshot.entries),
            ranges_text(&snapshot.missing()),
            match total_winners(&snapshot) {
                Some(winners) => format!(" | winners: {winners}"),
                None => String::new(),
            }
        );
        if round < rounds && shutdown.sleep(config.loop_period) {
            return Ok(Outcome::Interrupted);
        }
    }
    Ok(Outcome::Completed { skipped: 0 })
}

/// Writes the table of `snapshot` to standard output in one piece.
fn print_table(snapshot: &StatusSnapshot) -> Result<(), ClientError> {
    let text = render(snapshot);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}

/// One row of the table: consecutive agencies `first..=last` in the same state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    first: AgencyId,
    last: AgencyId,
    connected: bool,
    finished: bool,
    bets: u64,
    winners: Option<u32>,
}

impl Row {
    fn of(e: &AgencyStatus) -> Row {
        Row {
            first: e.agency,
            last: e.agency,
            connected: e.connected,
            finished: e.finished,
            bets: e.bets,
            winners: e.winners,
        }
    }

    fn agencies(&self) -> String {
        range_text(self.first, self.last)
    }

    /// Agencies in the row.
    fn count(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }
}

/// The rows of `entries`: runs of consecutive ids with the same state share one.
fn rows(entries: &[AgencyStatus]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for e in entries {
        let row = Row::of(e);
        match rows.last_mut() {
            Some(prev)
                if prev.last.checked_add(1) == Some(e.agency)
                    && (prev.connected, prev.finished, prev.bets, prev.winners)
                        == (row.connected, row.finished, row.bets, row.winners) =>
            {
                prev.last = e.agency;
            }
            _ => rows.push(row),
        }
    }
    rows
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn winners_text(w: Option<u32>) -> String {
    w.map_or_else(|| "-".to_string(), |w| w.to_string())
}

fn total_bets(entries: &[AgencyStatus]) -> u64 {
    entries.iter().map(|e| e.bets).fold(0, u64::saturating_add)
}

/// The winners of every agency together, once the draw has run.
fn total_winners(snapshot: &StatusSnapshot) -> Option<u64> {
    snapshot.drawn.then(|| {
        snapshot
            .entries
            .iter()
            .filter_map(|e| e.winners)
            .map(u64::from)
            .fold(0, u64::saturating_add)
    })
}

fn range_text(first: AgencyId, last: AgencyId) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// `ids` (increasing) as ranges, `4-7,9,12`; at most [`MAX_RANGES`] of them, then
/// `… (+K more)` with the number of ids left out; `none` when empty.
fn ranges_text(ids: &[AgencyId]) -> String {
    let mut ranges: Vec<(AgencyId, AgencyId)> = Vec::new();
    for &id in ids {
        match ranges.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(id) => *last = id,
            _ => ranges.push((id, id)),
        }
    }
    if ranges.is_empty() {
        return "none".to_string();
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(MAX_RANGES)
        .map(|&(a, b)| range_text(a, b))
        .collect();
    let mut text = shown.join(",");
    let hidden: u64 = ranges
        .iter()
        .skip(MAX_RANGES)
        .map(|&(a, b)| u64::from(b - a) + 1)
        .sum();
    if hidden > 0 {
        let _ = write!(text, ",… (+{hidden} more)");
    }
    text
}

/// The table of `snapshot`, as printed (see the module docs for the layout).
pub fn render(snapshot: &StatusSnapshot) -> String {
    // `write!` to a String cannot fail: its results are ignored below.
    let mut out = String::new();
    let draw = match total_winners(snapshot) {
        Some(winners) => format!("draw: done, {winners} winners"),
        None => "draw: not yet".to_string(),
    };
    let _ = writeln!(
        out,
        "lottery status: finished: {} of {} agencies | {draw}",
        snapshot.finished, snapshot.agencies
    );
    let missing = snapshot.missing();
    let _ = writeln!(out, "missing: {}", ranges_text(&missing));
    let all = rows(&snapshot.entries);
    let compact = all.len() > MAX_ROWS;
    let listed: Vec<Row> = if compact {
        all.iter().filter(|r| !r.finished).copied().collect()
    } else {
        all.clone()
    };
    let shown = &listed[..listed.len().min(MAX_ROWS)];
    let width = shown
        .iter()
        .map(|r| r.agencies().len())
        .chain([6, snapshot.agencies.to_string().len()])
        .max()
        .unwrap_or(6);
    let bets_width = shown
        .iter()
        .map(|r| r.bets.to_string().len())
        .chain([4, total_bets(&snapshot.entries).to_string().len()])
        .max()
        .unwrap_or(4);
    let _ = writeln!(
        out,
        "{:<width$}  connected  finished  {:>bets_width$}  winners",
        "agency", "bets"
    );
    for r in shown {
        let _ = writeln!(
            out,
            "{:<width$}  {:<9}  {:<8}  {:>bets_width$}  {}",
            r.agencies(),
            yes_no(r.connected),
            yes_no(r.finished),
            r.bets,
            winners_text(r.winners)
        );
    }
    let unlisted_rows = listed.len() - shown.len();
    if unlisted_rows > 0 {
        let agencies: u64 = listed[shown.len()..].iter().map(Row::count).sum();
        let _ = writeln!(
            out,
            "… {agencies} more unfinished agencies ({unlisted_rows} rows) not listed"
        );
    }
    if compact {
        let finished: Vec<&AgencyStatus> = snapshot.entries.iter().filter(|e| e.finished).collect();
        let bets = finished.iter().map(|e| e.bets).fold(0, u64::saturating_add);
        let _ = write!(
            out,
            "finished agencies, not listed: {} | bets: {bets}",
            finished.len()
        );
        if snapshot.drawn {
            let winners: u64 = finished
                .iter()
                .filter_map(|e| e.winners)
                .map(u64::from)
                .sum();
            let _ = write!(out, " | winners: {winners}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{:<width$}  {:<9}  {:<8}  {:>bets_width$}  {}",
        "total",
        "",
        "",
        total_bets(&snapshot.entries),
        total_winners(snapshot).map_or_else(|| "-".to_string(), |w| w.to_string())
    );
    if compact && snapshot.drawn {
        winners_list(&mut out, &snapshot.entries);
    }
    out
}

/// The compact winners list of a long table: `agency:winners` for every agency with
/// winners, wrapped at [`LINE_WIDTH`].
fn winners_list(out: &mut String, entries: &[AgencyStatus]) {
    let with_winners: Vec<String> = entries
        .iter()
        .filter_map(|e| {
            e.winners
                .filter(|&w| w > 0)
                .map(|w| format!("{}:{w}", e.agency))
        })
        .collect();
    let without = entries.len() - with_winners.len();
    let _ = writeln!(
        out,
        "winners per agency (agency:winners; {without} agencies without winners left out):"
    );
    let mut line = String::new();
    for item in with_winners {
        if !line.is_empty() && line.len() + 1 + item.len() > LINE_WIDTH {
            let _ = writeln!(out, "{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&item);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(agency: AgencyId, finished: bool, bets: u64, winners: Option<u32>) -> AgencyStatus {
        AgencyStatus {
            agency,
            connected: false,
            finished,
            bets,
            winners,
        }
    }

    fn snapshot(entries: Vec<AgencyStatus>, drawn: bool) -> StatusSnapshot {
        StatusSnapshot {
            agencies: u32::try_from(entries.len()).expect("few"),
            finished: u32::try_from(entries.iter().filter(|e| e.finished).count()).expect("few"),
            drawn,
            entries,
        }
    }

    #[test]
    fn a_small_table_lists_every_agency_before_the_draw() {
        let mut entries = vec![
            entry(1, true, 3000, None),
            entry(2, false, 1250, None),
            entry(3, false, 0, None),
            entry(4, false, 0, None),
            entry(5, true, 12, None),
        ];
        entries[1].connected = true;
        let text = render(&snapshot(entries, false));
        assert_eq!(
            text,
            "lottery status: finished: 2 of 5 agencies | draw: not yet\n\
             missing: 2-4\n\
             agency  connected  finished  bets  winners\n\
             1       no         yes       3000  -\n\
             2       yes        no        1250  -\n\
             3-4     no         no           0  -\n\
             5       no         yes         12  -\n\
             total                        4262  -\n"
        );
    }

    #[test]
    fn after_the_draw_every_row_has_its_winners() {
        let entries = vec![
            entry(1, true, 3000, Some(2)),
            entry(2, true, 3000, Some(3)),
            entry(3, true, 3000, Some(0)),
        ];
        let text = render(&snapshot(entries, true));
        assert_eq!(
            text,
            "lottery status: finished: 3 of 3 agencies | draw: done, 5 winners\n\
             missing: none\n\
             agency  connected  finished  bets  winners\n\
             1       no         yes       3000  2\n\
             2       no         yes       3000  3\n\
             3       no         yes       3000  0\n\
             total                        9000  5\n"
        );
    }

    #[test]
    fn a_thousand_agencies_that_have_not_started_are_one_row() {
        let entries = (1..=1000).map(|a| entry(a, false, 0, None)).collect();
        let text = render(&snapshot(entries, false));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "missing: 1-1000");
        assert_eq!(lines[3], "1-1000  no         no           0  -");
        assert_eq!(lines.len(), 5, "{text}");
    }

    #[test]
    fn a_long_table_lists_only_unfinished_agencies_and_sums_up_the_rest() {
        // 1000 agencies with different bet counts: 990 finished, 10 not (every 100th).
        let entries: Vec<AgencyStatus> = (1..=1000)
            .map(|a| entry(a, !a.is_multiple_of(100), u64::from(a), None))
            .collect();
        let total: u64 = (1..=1000u64).sum();
        let finished_bets: u64 = total - (1..=10u64).map(|k| k * 100).sum::<u64>();
        let text = render(&snapshot(entries, false));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() <= MAX_ROWS + 6, "{text}");
        assert_eq!(
            lines[1],
            "missing: 100,200,300,400,500,600,700,800,900,1000"
        );
        assert_eq!(lines[3], "100     no         no           100  -");
        assert_eq!(lines[12], "1000    no         no          1000  -");
        assert_eq!(
            lines[13],
            format!("finished agencies, not listed: 990 | bets: {finished_bets}")
        );
        assert_eq!(
            lines[14],
            format!("total                        {total}  -")
        );
        // More unfinished rows than fit: the first MAX_ROWS, then a count.
        let entries: Vec<AgencyStatus> = (1..=1000)
            .map(|a| entry(a, a.is_multiple_of(2), u64::from(a), None))
            .collect();
        let text = render(&snapshot(entries, false));
        assert!(
            text.contains(&format!(
                "… {} more unfinished agencies ({} rows) not listed",
                500 - MAX_ROWS,
                500 - MAX_ROWS
            )),
            "{text}"
        );
        assert!(text.lines().count() <= MAX_ROWS + 6, "{text}");
        assert!(text.contains(",… (+480 more)"), "{text}");
    }

    #[test]
    fn a_long_table_after_the_draw_lists_the_winners_compactly() {
        let entries: Vec<AgencyStatus> = (1..=1000)
            .map(|a| {
                entry(
                    a,
                    true,
                    100 + u64::from(a),
                    Some(u32::from(a.is_multiple_of(250)) * 3),
                )
            })
            .collect();
        let text = render(&snapshot(entries, true));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "lottery status: finished: 1000 of 1000 agencies | draw: done, 12 winners"
        );
        assert_eq!(lines[1], "missing: none");
        assert!(
            lines[3]
                .starts_with("finished agencies, not listed: 1000 | bets: 600500 | winners: 12"),
            "{text}"
        );
        assert_eq!(
            lines[5],
            "winners per agency (agency:winners; 996 agencies without winners left out):"
        );
        assert_eq!(lines[6], "250:3 500:3 750:3 1000:3");
        assert_eq!(lines.len(), 7, "{text}");
        // Many agencies with winners wrap at LINE_WIDTH.
        let entries: Vec<AgencyStatus> = (1..=1000)
            .map(|a| entry(a, true, u64::from(a), Some(1)))
            .collect();
        let text = render(&snapshot(entries, true));
        let list: Vec<&str> = text.lines().skip(6).collect();
        assert!(list.iter().all(|l| l.len() <= LINE_WIDTH), "{text}");
        let items: Vec<&str> = list.iter().flat_map(|l| l.split(' ')).collect();
        assert_eq!(items.len(), 1000);
        assert_eq!((items[0], items[999]), ("1:1", "1000:1"));
    }

    #[test]
    fn ranges_are_compact_and_capped() {
        assert_eq!(ranges_text(&[]), "none");
        assert_eq!(ranges_text(&[3]), "3");
        assert_eq!(ranges_text(&[1, 2, 3, 5, 7, 8]), "1-3,5,7-8");
        let odd: Vec<AgencyId> = (1..=100).filter(|a| a % 2 == 1).collect();
        let text = ranges_text(&odd);
        assert!(text.starts_with("1,3,5,"), "{text}");
        assert!(text.ends_with(",39,… (+30 more)"), "{text}");
        assert_eq!(
            ranges_text(&[u32::MAX - 1, u32::MAX]),
            format!("{}-{}", u32::MAX - 1, u32::MAX)
        );
    }

    #[test]
    fn rows_join_only_consecutive_agencies_in_the_same_state() {
        let mut entries = vec![
            entry(1, false, 0, None),
            entry(2, false, 0, None),
            entry(4, false, 0, None),
            entry(5, false, 0, None),
            entry(6, false, 1, None),
        ];
        entries[4].bets = 0;
        entries[4].connected = true;
        let rows = rows(&entries);
        let ranges: Vec<String> = rows.iter().map(Row::agencies).collect();
        assert_eq!(ranges, ["1-2", "4-5", "6"]);
        assert_eq!(rows[1].count(), 2);
    }
}
