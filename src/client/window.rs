//! [`Window`]: the batches sent on a session and not yet acknowledged, oldest first.
//!
//! The server answers every batch, in the order sent (`docs/PROTOCOL.md`,
//! "Pipelining"), so the answer read next is always the oldest batch's.

use std::collections::VecDeque;
use std::time::Instant;

/// A batch in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// Its `seq`.
    pub seq: u64,
    /// Its bets.
    pub count: usize,
    /// When it was sent.
    pub sent: Instant,
}

/// At most `size` batches in flight.
#[derive(Debug)]
pub struct Window {
    size: usize,
    batches: VecDeque<InFlight>,
}

impl Window {
    /// An empty window of `size` batches (at least 1: stop-and-wait).
    pub fn new(size: u16) -> Window {
        let size = usize::from(size.max(1));
        Window {
            size,
            batches: VecDeque::with_capacity(size),
        }
    }

    /// Whether another batch must wait for an answer before it is sent.
    pub fn is_full(&self) -> bool {
        self.batches.len() >= self.size
    }

    /// Whether every batch sent is answered.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Batch `seq` of `count` bets was sent now.
    pub fn sent(&mut self, seq: u64, count: usize) {
        self.batches.push_back(InFlight {
            seq,
            count,
            sent: Instant::now(),
        });
    }

    /// The batch whose answer comes next.
    pub fn oldest(&self) -> Option<InFlight> {
        self.batches.front().copied()
    }

    /// The oldest batch is acknowledged: it leaves the window.
    pub fn acknowledged(&mut self) {
        self.batches.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_its_size_and_answers_oldest_first() {
        let mut w = Window::new(2);
        assert!(w.is_empty() && !w.is_full() && w.oldest().is_none());
        w.sent(1, 10);
        w.sent(2, 20);
        assert!(w.is_full());
        assert_eq!(w.oldest().map(|b| (b.seq, b.count)), Some((1, 10)));
        w.acknowledged();
        assert!(!w.is_full());
        assert_eq!(w.oldest().map(|b| b.seq), Some(2));
        w.acknowledged();
        assert!(w.is_empty());
    }

    #[test]
    fn a_window_of_zero_is_stop_and_wait() {
        let mut w = Window::new(0);
        w.sent(1, 1);
        assert!(w.is_full());
    }
}
