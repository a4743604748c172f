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
/// (end of stream, reset, broken pipe, timeout), or the server refused with a
/// retryable code.
pub fn is_retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Connect { .. } | ClientError::Closed { .. } => true,
        ClientError::Connection { source, .. } => match source {
            ConnectionError::Frame(FrameError::Io(_) | FrameError::Truncated { .. }) => true,
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

/// How long the client has gone without a working session.
#[derive(Debug)]
pub struct RetryClock {
    deadline: Duration,
    failing_since: Option<Instant>,
}

impl RetryClock {
    /// A clock that gives up after `deadline` without a working session.
    pub fn new(deadline: Duration) -> RetryClock {
        RetryClock {
            deadline,
            failing_since: None,
        }
    }

    /// A session worked (its `WELCOME` arrived): the next failure starts the clock anew.
    pub fn succeeded(&mut self) {
        self.failing_since = None;
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
        clock.succeeded();
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(clock.failed(t1), Some(deadline));
        assert_eq!(RetryClock::new(Duration::ZERO).failed(t1), None);
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
        ] {
            assert!(!is_retryable(&no), "{no}");
        }
    }
}
