//! Reconnecting: which failures are worth another session, the backoff between
//! attempts, and the deadline after which the client gives up.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::ClientError;
use crate::connection::ConnectionError;
use crate::protocol::{ErrorCode, FrameError};

/// The first backoff step.
pub const BASE: Duration = Duration::from_millis(100);
/// The longest backoff step.
pub const CAP: Duration = Duration::from_secs(5);

/// Whether the server's error `code` is worth a new session: the server is stopping,
/// full, failed for a moment, or timed this connection out. Everything else (a refused
/// bet, a conflict, a takeover by another process, a protocol mismatch) would fail
/// the same way again.
pub fn code_is_retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ShuttingDown
            | ErrorCode::ServerBusy
            | ErrorCode::Internal
            | ErrorCode::IdleTimeout
    )
}

/// Whether `error` is worth a new session: the connection could not be made or broke
/// (end of stream, reset, broken pipe, timeout, a server silent while it should send
/// `DRAW_PENDING`, a status answer that took too long), or the server refused with a retryable code.
pub fn is_retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Connect { .. }
        | ClientError::Closed { .. }
        | ClientError::Silent { .. }
        | ClientError::SlowAnswer { .. } => true,
        // A TLS failure (a certificate refused or not trusted) would happen again.
        ClientError::Connection { source, .. } if source.tls_failure().is_some() => false,
        ClientError::Connection { source, .. } => match source {
            ConnectionError::Frame(FrameError::Io(_) | FrameError::Truncated { .. }) => true,
            ConnectionError::Handshake(_) => true,
            ConnectionError::Write(_) => true,
            // A server speaking another version or sending nonsense would do it again.
            ConnectionError::Frame(FrameError::UnsupportedVersion(_) | FrameError::TooLarge(_))
            | ConnectionError::Decode(_)
            | ConnectionError::Encode(_) => false,
        },
        ClientError::Refused { code, .. } => code_is_retryable(*code),
        _ => false,
    }
}

/// Capped exponential backoff with full jitter: attempt `k` (from 1) waits a uniformly
/// random time in `[0, min(cap, base · 2^(k-1))]`.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    jitter: Jitter,
}

impl Backoff {
    /// A backoff from `base` doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            jitter: Jitter::new(),
        }
    }

    /// Failed attempts since the last [`Backoff::reset`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of attempt `attempt`'s delay (`attempt` from 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// Counts one more failed attempt and returns how long to wait before the next.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.ceiling(self.attempt);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.jitter.below_or_eq(ceiling_ms))
    }

    /// Starts over from `base` (after a session that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Pseudo-random numbers from std's randomly keyed SipHash (`RandomState`), fed with
/// the clock and a counter: no extra crate, and plenty for spreading reconnects.
#[derive(Debug)]
struct Jitter {
    state: RandomState,
    counter: u64,
    seed: u128,
}

impl Jitter {
    fn new() -> Jitter {
        Jitter {
            state: RandomState::new(),
            counter: 0,
            seed: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                ^ u128::from(std::process::id()),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        let mut hasher = self.state.build_hasher();
        hasher.write_u128(self.seed);
        hasher.write_u64(self.counter);
        hasher.finish()
    }

    /// A number in `0..=max` (the modulo bias is irrelevant here).
    fn below_or_eq(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(bound) => self.next_u64() % bound,
            None => self.next_u64(),
        }
    }
}

/// The retry policy of a run: the backoff between sessions and the deadline after
/// which the client gives up, both restarted only by a session that made progress.
#[derive(Debug)]
pub struct Retrier {
    clock: RetryClock,
    backoff: Backoff,
}

impl Retrier {
    /// A policy that gives up after `deadline` without progress.
    pub fn new(deadline: Duration) -> Retrier {
        Retrier {
            clock: RetryClock::new(deadline),
            backoff: Backoff::new(BASE, CAP),
        }
    }

    /// The time left before giving up at `now`.
    pub fn left(&self, now: Instant) -> Duration {
        self.clock.left(now)
    }

    /// Failed sessions since the last progress.
    pub fn attempt(&self) -> u32 {
        self.backoff.attempt()
    }

    /// The last session waited `held` for the server to answer a held request (the
    /// `WINNERS_QUERY`, which the server holds until the draw). While it waited the
    /// server was doing what the protocol says, so that time is no failing time: a
    /// client whose wait for the draw breaks twice is not given up on for the length
    /// of the wait. It is no progress either: a server that answers at once with an
    /// error adds next to nothing.
    pub fn held(&mut self, held: Duration) {
        self.clock.held(held);
    }

    /// A session failed (in a retryable way) at `now`. `progressed` says whether it
    /// made progress first — a batch acknowledged, the `FIN_ACK` of an agency not yet
    /// finished, the winners — and only then do the deadline clock and the backoff
    /// start over: a `WELCOME` alone is no progress (a server that welcomes and then
    /// fails every request is not working), nor is a `FIN` the server already had.
    /// Returns how long to wait before the next session, or `None` when the deadline
    /// has passed.
    pub fn failed(&mut self, progressed: bool, now: Instant) -> Option<Duration> {
        if progressed {
            self.clock.progressed();
            self.backoff.reset();
        }
        let left = self.clock.failed(now)?;
        Some(self.backoff.next_delay().min(left))
    }
}

/// How long the client has gone without a session that made progress.
#[derive(Debug)]
pub struct RetryClock {
    deadline: Duration,
    failing_since: Option<Instant>,
}

impl RetryClock {
    /// A clock that gives up after `deadline` without progress.
    pub fn new(deadline: Duration) -> RetryClock {
        RetryClock {
            deadline,
            failing_since: None,
        }
    }

    /// A session made progress: the next failure starts the clock anew.
    pub fn progressed(&mut self) {
        self.failing_since = None;
    }

    /// `held` of the time since the first failure was a healthy wait: it does not count.
    pub fn held(&mut self, held: Duration) {
        if let Some(since) = self.failing_since {
            self.failing_since = Some(since.checked_add(held).unwrap_or(since));
        }
    }

    /// Records a failure at `now`; returns the time left before giving up, or `None`
    /// when the deadline has passed.
    pub fn failed(&mut self, now: Instant) -> Option<Duration> {
        let since = *self.failing_since.get_or_insert(now);
        self.deadline
            .checked_sub(now.saturating_duration_since(since))
            .filter(|left| !left.is_zero())
    }

    /// The time left before giving up at `now` (the whole deadline while no failure
    /// is pending).
    pub fn left(&self, now: Instant) -> Duration {
        match self.failing_since {
            None => self.deadline,
            Some(since) => self
                .deadline
                .saturating_sub(now.saturating_duration_since(since)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_inside_the_bounds() {
        let mut backoff = Backoff::new(BASE, CAP);
        assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(2), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(6), Duration::from_millis(3200));
        assert_eq!(backoff.ceiling(7), CAP);
        assert_eq!(backoff.ceiling(1000), CAP);
        let mut seen = std::collections::HashSet::new();
        for k in 1..=200u32 {
            let delay = backoff.next_delay();
            assert_eq!(backoff.attempt(), k);
            assert!(delay <= backoff.ceiling(k), "attempt {k}: {delay:?}");
            assert!(delay <= CAP);
            seen.insert(delay);
        }
        assert!(seen.len() > 50, "the jitter varies: {} values", seen.len());
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        for _ in 0..100 {
            let mut fresh = Backoff::new(BASE, CAP);
            assert!(fresh.next_delay() <= BASE);
        }
    }

    #[test]
    fn the_clock_starts_at_the_first_failure_and_resets_on_success() {
        let deadline = Duration::from_secs(10);
        let mut clock = RetryClock::new(deadline);
        let t0 = Instant::now();
        assert_eq!(clock.left(t0), deadline);
        assert_eq!(clock.failed(t0), Some(deadline));
        assert_eq!(
            clock.failed(t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            clock.left(t0 + Duration::from_secs(7)),
            Duration::from_secs(3)
        );
        assert_eq!(clock.failed(t0 + deadline), None);
        clock.progressed();
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(clock.failed(t1), Some(deadline));
        assert_eq!(RetryClock::new(Duration::ZERO).failed(t1), None);
    }

    /// Drives `retrier` with sessions that each fail `every` after the previous one,
    /// `progressed` saying whether each made progress; returns how many failed before
    /// it gave up (`None`: it had not given up after `limit` sessions).
    fn sessions_until_giving_up(
        retrier: &mut Retrier,
        t0: Instant,
        every: Duration,
        progressed: impl Fn(u32) -> bool,
        limit: u32,
    ) -> Option<u32> {
        (1..=limit).find(|&k| retrier.failed(progressed(k), t0 + every * k).is_none())
    }

    #[test]
    fn a_welcome_without_progress_does_not_restart_the_clock() {
        // The reviewer's server: every session is welcomed, then every BETS gets
        // INTERNAL. With a 1 s deadline and a failure every 100 ms the client gives up
        // after about 1 s instead of retrying forever.
        let deadline = Duration::from_secs(1);
        let every = Duration::from_millis(100);
        let t0 = Instant::now();
        let mut retrier = Retrier::new(deadline);
        let gave_up = sessions_until_giving_up(&mut retrier, t0, every, |_| false, 1000);
        // The clock starts at the first failure (t0 + 100 ms) and runs out 1 s later.
        assert_eq!(gave_up, Some(11));
        // Each delay is bounded by the time left, so the last wait never oversleeps.
        let mut retrier = Retrier::new(deadline);
        for k in 1..=10u32 {
            let left = retrier.failed(false, t0 + every * k).expect("not yet");
            assert!(left <= deadline - every * (k - 1), "session {k}: {left:?}");
            assert_eq!(retrier.attempt(), k);
        }
    }

    #[test]
    fn progress_restarts_the_clock_and_the_backoff() {
        let deadline = Duration::from_secs(1);
        let every = Duration::from_millis(300);
        let t0 = Instant::now();
        // Every session acknowledges a batch before it breaks: never gives up.
        let mut retrier = Retrier::new(deadline);
        assert_eq!(
            sessions_until_giving_up(&mut retrier, t0, every, |_| true, 1000),
            None
        );
        assert_eq!(retrier.attempt(), 1, "the backoff starts over each time");
        // Progress every third session: each stretch without progress is 600 ms.
        let mut retrier = Retrier::new(deadline);
        assert_eq!(
            sessions_until_giving_up(&mut retrier, t0, every, |k| k % 3 == 0, 1000),
            None
        );
        // Progress stops after session 5: the clock runs from its failure (1.5 s) and
        // session 9 (2.7 s) is the first to fail more than 1 s later.
        let mut retrier = Retrier::new(deadline);
        let gave_up = sessions_until_giving_up(&mut retrier, t0, every, |k| k <= 5, 1000);
        assert_eq!(gave_up, Some(9));
        assert_eq!(Retrier::new(Duration::ZERO).failed(true, t0), None);
    }

    #[test]
    fn time_spent_in_a_held_query_is_no_failing_time_and_no_progress() {
        let deadline = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut retrier = Retrier::new(deadline);
        assert!(retrier.failed(false, t0).is_some());
        // The next session waited 10 s for the draw, then broke: 0.5 s of failing time.
        retrier.held(Duration::from_secs(10));
        let left = retrier
            .failed(false, t0 + Duration::from_millis(10_500))
            .expect("the wait does not count");
        assert!(left <= Duration::from_millis(500), "{left:?}");
        assert_eq!(retrier.attempt(), 2, "no progress: the backoff goes on");
        // Sessions answered at once (held for next to nothing) run out the deadline.
        retrier.held(Duration::from_millis(1));
        assert_eq!(
            retrier.failed(false, t0 + Duration::from_millis(11_100)),
            None
        );
        // Before any failure there is nothing to shift.
        let mut clock = RetryClock::new(deadline);
        clock.held(Duration::from_secs(10));
        assert_eq!(clock.failed(t0), Some(deadline));
    }

    #[test]
    fn every_error_code_is_classified() {
        let retryable = [
            ErrorCode::ShuttingDown,
            ErrorCode::ServerBusy,
            ErrorCode::Internal,
            ErrorCode::IdleTimeout,
        ];
        for number in 0..=30u16 {
            let code = ErrorCode::from_u16(number);
            assert_eq!(
                code_is_retryable(code),
                retryable.contains(&code),
                "{}",
                code.name()
            );
        }
        for code in [
            ErrorCode::Superseded,
            ErrorCode::UploadConflict,
            ErrorCode::BadSeq,
            ErrorCode::InvalidBet,
            ErrorCode::UnknownAgency,
            ErrorCode::UnsupportedVersion,
            ErrorCode::Malformed,
            ErrorCode::Other(99),
        ] {
            assert!(!code_is_retryable(code), "{}", code.name());
        }
    }

    #[test]
    fn broken_connections_are_retryable_and_bad_replies_are_not() {
        let refused = |code| ClientError::Refused {
            stage: "x".into(),
            code,
            reason: String::new(),
        };
        let io_error = |kind| ClientError::Connection {
            stage: "x",
            source: ConnectionError::Frame(FrameError::Io(io::Error::from(kind))),
        };
        for yes in [
            ClientError::Connect {
                address: "a:1".into(),
                source: io::Error::from(io::ErrorKind::ConnectionRefused),
            },
            ClientError::Closed { stage: "x" },
            io_error(io::ErrorKind::ConnectionReset),
            io_error(io::ErrorKind::TimedOut),
            io_error(io::ErrorKind::WouldBlock),
            ClientError::Connection {
                stage: "x",
                source: ConnectionError::Write(io::Error::from(io::ErrorKind::BrokenPipe)),
            },
            ClientError::Connection {
                stage: "x",
                source: ConnectionError::Frame(FrameError::Truncated {
                    expected: 4,
                    got: 1,
                }),
            },
            refused(ErrorCode::ShuttingDown),
            refused(ErrorCode::Internal),
        ] {
            assert!(is_retryable(&yes), "{yes}");
        }
        for no in [
            ClientError::Connection {
                stage: "x",
                source: ConnectionError::Frame(FrameError::UnsupportedVersion(1)),
            },
            refused(ErrorCode::Superseded),
            refused(ErrorCode::BadSeq),
            ClientError::Superseded { agency: 1 },
            ClientError::Unexpected {
                stage: "x",
                got: "Fin".into(),
            },
            ClientError::FileChanged {
                path: "f.csv".into(),
                was: 1,
                now: 2,
            },
            ClientError::FinishedNotStored {
                agency: 1,
                unsent: 3,
                from_line: 7,
            },
        ] {
            assert!(!is_retryable(&no), "{no}");
        }
    }
}
