//! The upload's progress lines: how much of the agency file is done, how fast the
//! bets go and when the upload should end.
//!
//! The percentage is of the file's bytes consumed (so a resumed upload starts where
//! its stored part ends, not at 0). The rate counts the bets acknowledged since this
//! pass over the file started sending, over the time since then; the time left
//! divides the bytes still to read by the bytes read per second since the pass
//! started sending (skipping the stored part of a resumed file is fast and would
//! make the estimate far too hopeful, so it does not count).

use std::fmt;
use std::time::{Duration, Instant};

/// Where one pass over the agency file started sending.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The file's size in bytes.
    total: u64,
    /// Bytes consumed when sending started.
    start_bytes: u64,
    /// Bets acknowledged (in the run) when sending started.
    start_acked: u64,
    started: Instant,
}

/// One progress reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Tenths of a percent of the file consumed, 0..=1000 (1000 only when all of it
    /// is).
    pub permille: u64,
    /// Bets acknowledged per second since sending started.
    pub rate: f64,
    /// The estimated time left (`None`: nothing read since sending started, so no
    /// estimate yet).
    pub eta: Option<Duration>,
}

impl Progress {
    /// A pass over a file of `total` bytes that starts sending at byte `start_bytes`,
    /// with `start_acked` bets acknowledged so far in the run, at `now`.
    pub fn new(total: u64, start_bytes: u64, start_acked: u64, now: Instant) -> Progress {
        Progress {
            total,
            start_bytes,
            start_acked,
            started: now,
        }
    }

    /// The reading at `now`, with `bytes` of the file consumed and `acked` bets
    /// acknowledged in the run.
    pub fn reading(&self, bytes: u64, acked: u64, now: Instant) -> Reading {
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        // A file that grew after it was opened is read past its size: count it as
        // done rather than above 100 %.
        let bytes = bytes.min(self.total);
        let permille = if self.total == 0 {
            1000
        } else {
            // u128: no overflow for any u64 size.
            u64::try_from(u128::from(bytes) * 1000 / u128::from(self.total)).unwrap_or(1000)
        };
        let sent = acked.saturating_sub(self.start_acked);
        let rate = if elapsed > 0.0 {
            sent as f64 / elapsed
        } else {
            0.0
        };
        let read = bytes.saturating_sub(self.start_bytes);
        let left = self.total - bytes;
        let eta = if left == 0 {
            Some(Duration::ZERO)
        } else if read == 0 || elapsed <= 0.0 {
            None
        } else {
            let secs = left as f64 * elapsed / read as f64;
            // Bounded so that a nearly stalled upload cannot overflow a Duration.
            Some(Duration::from_secs_f64(secs.min(1e9)))
        };
        Reading {
            permille,
            rate,
            eta,
        }
    }
}

impl Reading {
    /// The percentage as logged: one decimal, `100.0` only when the whole file is
    /// consumed.
    pub fn percent(&self) -> Percent {
        Percent(self.permille)
    }

    /// The time left as logged: whole seconds rounded up (`0s` only when done),
    /// `unknown` without an estimate.
    pub fn eta_text(&self) -> String {
        match self.eta {
            None => "unknown".to_string(),
            Some(eta) if eta.is_zero() => "0s".to_string(),
            Some(eta) => {
                let secs = eta.as_secs() + u64::from(eta.subsec_nanos() > 0);
                format_secs(secs)
            }
        }
    }
}

/// A percentage in tenths, shown as `40.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(u64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0 / 10, self.0 % 10)
    }
}

/// `secs` as `45s`, `12m05s` or `3h07m`.
fn format_secs(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn percent_rate_and_eta_of_a_fresh_upload() {
        let t0 = Instant::now();
        let progress = Progress::new(10_000, 0, 0, t0);
        // 4 020 bytes in 2 s with 1 200 bets acknowledged: 40.2 %, 600 bets/s, and
        // 5 980 bytes left at 2 010 bytes/s: 2.975 s, shown as 3s.
        let r = progress.reading(4_020, 1_200, t0 + 2 * S);
        assert_eq!(r.percent().to_string(), "40.2");
        assert!((r.rate - 600.0).abs() < 1e-9, "{}", r.rate);
        let eta = r.eta.expect("an estimate");
        assert!(
            (eta.as_secs_f64() - 5_980.0 / 2_010.0).abs() < 1e-6,
            "{eta:?}"
        );
        assert_eq!(r.eta_text(), "3s");
        // Done: exactly 100.0 and 0s.
        let done = progress.reading(10_000, 3_000, t0 + 5 * S);
        assert_eq!(done.percent().to_string(), "100.0");
        assert_eq!(done.eta_text(), "0s");
        // One byte short is not 100 %.
        assert_eq!(
            progress
                .reading(9_999, 3_000, t0 + 5 * S)
                .percent()
                .to_string(),
            "99.9"
        );
    }

    #[test]
    fn a_resumed_upload_starts_at_its_stored_part_and_the_skip_does_not_count() {
        let t0 = Instant::now();
        // Half of the file was stored before: skipping it is no speed.
        let progress = Progress::new(1_000, 500, 7_000, t0);
        let start = progress.reading(500, 7_000, t0);
        assert_eq!(start.percent().to_string(), "50.0");
        assert_eq!(start.eta, None);
        assert_eq!(start.eta_text(), "unknown");
        assert_eq!(start.rate, 0.0);
        // 100 more bytes and 250 more bets in 1 s: 400 bytes left at 100/s.
        let r = progress.reading(600, 7_250, t0 + S);
        assert_eq!(r.percent().to_string(), "60.0");
        assert!((r.rate - 250.0).abs() < 1e-9);
        assert_eq!(r.eta, Some(4 * S));
        assert_eq!(r.eta_text(), "4s");
    }

    #[test]
    fn edge_cases_stay_in_range() {
        let t0 = Instant::now();
        // An empty file is done at once.
        let empty = Progress::new(0, 0, 0, t0).reading(0, 0, t0);
        assert_eq!(empty.percent().to_string(), "100.0");
        assert_eq!(empty.eta_text(), "0s");
        // A file that grew while it was read never shows more than 100 %.
        let grown = Progress::new(100, 0, 0, t0).reading(150, 3, t0 + S);
        assert_eq!(grown.percent().to_string(), "100.0");
        // Huge sizes do not overflow.
        let huge = Progress::new(u64::MAX, 0, 0, t0).reading(u64::MAX / 2, 1, t0 + S);
        assert_eq!(huge.percent().to_string(), "49.9");
        // A nearly stalled upload has a bounded, long estimate.
        let slow = Progress::new(u64::MAX, 0, 0, t0).reading(1, 1, t0 + S);
        assert_eq!(slow.eta, Some(Duration::from_secs_f64(1e9)));
        // No time passed: no rate, no estimate (no division by zero).
        let instant = Progress::new(100, 0, 0, t0).reading(50, 10, t0);
        assert_eq!((instant.rate, instant.eta), (0.0, None));
    }

    #[test]
    fn long_times_left_read_as_minutes_and_hours() {
        let reading = |secs: f64| Reading {
            permille: 0,
            rate: 0.0,
            eta: Some(Duration::from_secs_f64(secs)),
        };
        assert_eq!(reading(0.2).eta_text(), "1s");
        assert_eq!(reading(59.0).eta_text(), "59s");
        assert_eq!(reading(59.5).eta_text(), "1m00s");
        assert_eq!(reading(725.0).eta_text(), "12m05s");
        assert_eq!(reading(11_220.0).eta_text(), "3h07m");
    }
}
