//! The draw barrier: the agencies waiting for their winners — at most one connection
//! per agency — and the draw's result once known.
//!
//! [`DrawBarrier`] owns its lock and condition variable. A waiting connection's own
//! thread waits in [`DrawBarrier::wait`] and, when that returns, writes its own answer
//! through its own connection: the winners (or `INTERNAL`), `SHUTTING_DOWN` or
//! `SUPERSEDED`. **No thread writes another connection's socket**, and no thread holds
//! the lock while it writes its own.
//!
//! The thread that gets the N-th `FIN` runs the draw and answers the waiters by
//! publishing the result and waking them all ([`DrawBarrier::publish`]): it does no
//! socket I/O for them. A waiter takes the result and leaves the list in one critical
//! section, and a query that comes after `publish` finds the result at once. So an
//! agency that never reads its answer holds up only its own thread, for at most its
//! answer's deadline.
//!
//! The list is keyed by agency, so there are never more waiters than agencies. A newer
//! connection of an agency (connection ids grow in accept order, as in the ledger's
//! takeover) takes the place of an older one, which is woken and ends as superseded;
//! an older connection never takes a newer one's place.
//!
//! While it waits, a thread writes its own `DRAW_PENDING` every `pending_every` and,
//! every [`PROBE_WAITER_EVERY`], checks whether its agency has left — both with the
//! lock released ([`WaitingPeer`]). [`DrawBarrier::close`] (shutdown) wakes every
//! waiter to answer `SHUTTING_DOWN` and names the waiting sockets to spare for that:
//! those not in the middle of a `DRAW_PENDING` (shutting such a socket down ends the
//! write at once, and a half-written frame could not be followed by an answer).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::bet::{AgencyId, DrawResult};
use crate::protocol::{ErrorCode, Message};
use crate::shutdown::lock;

/// The draw's result, or why it failed (sent to every agency as `INTERNAL`).
pub type DrawOutcome = Result<Arc<DrawResult>, String>;

/// How often an agency waiting for the draw is checked for having left, so that its
/// thread and connection are freed instead of being held until the draw.
pub const PROBE_WAITER_EVERY: Duration = Duration::from_millis(250);

/// How long a waiter that shutdown spared may take to write its `SHUTTING_DOWN`
/// (stop waits for it).
pub const STOP_ANSWER_LIMIT: Duration = Duration::from_secs(2);

/// A connection that asks to wait for the draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    /// The waiting connection.
    pub conn_id: u64,
    /// Its agency.
    pub agency: AgencyId,
}

/// What the barrier needs from a waiting connection; its own thread calls these.
pub trait WaitingPeer {
    /// Whether a newer connection of the agency took over. Called with the barrier's
    /// lock held: it must not block.
    fn superseded(&self) -> bool;
    /// Whether the agency has closed its connection (called with the lock released).
    fn has_left(&mut self) -> bool;
    /// Writes one `DRAW_PENDING` (lock released); `false` if the write failed.
    fn send_pending(&mut self) -> bool;
}

/// How a wait for the draw ended; the waiting thread answers accordingly.
#[derive(Debug)]
pub enum WaitEnd {
    /// The draw's result, known at once or published during the wait: write the
    /// answer ([`winners_reply`]).
    Result(DrawOutcome),
    /// The server is stopping: answer `SHUTTING_DOWN`.
    ShuttingDown,
    /// A newer connection of the agency took over: answer `SUPERSEDED`.
    Superseded,
    /// The agency left, or a `DRAW_PENDING` could not be written: close.
    Left,
}

/// The place of an agency's waiting connection.
struct Place {
    conn_id: u64,
    /// Writing a `DRAW_PENDING` right now.
    writing: bool,
}

/// The barrier's state.
#[derive(Default)]
struct State {
    result: Option<DrawOutcome>,
    /// The agencies waiting for the draw: one connection each.
    waiting: HashMap<AgencyId, Place>,
    /// Shutdown began: every waiter answers `SHUTTING_DOWN`.
    closing: bool,
}

impl State {
    /// Whether `waiter` still holds its agency's place.
    fn holds(&self, waiter: Waiter) -> bool {
        self.waiting
            .get(&waiter.agency)
            .is_some_and(|p| p.conn_id == waiter.conn_id)
    }

    /// Gives `waiter`'s place up (if it still holds it).
    fn leave(&mut self, waiter: Waiter) {
        if self.holds(waiter) {
            self.waiting.remove(&waiter.agency);
        }
    }

    fn set_writing(&mut self, waiter: Waiter, writing: bool) {
        if let Some(place) = self.waiting.get_mut(&waiter.agency)
            && place.conn_id == waiter.conn_id
        {
            place.writing = writing;
        }
    }
}

/// Where agencies wait for the draw.
#[derive(Default)]
pub struct DrawBarrier {
    state: Mutex<State>,
    changed: Condvar,
}

impl DrawBarrier {
    /// The result, once the draw has run.
    pub fn result(&self) -> Option<DrawOutcome> {
        lock(&self.state).result.clone()
    }

    /// Publishes the draw's result and wakes every waiter to answer itself; returns
    /// how many agencies were waiting.
    pub fn publish(&self, outcome: DrawOutcome) -> usize {
        let mut state = lock(&self.state);
        state.result = Some(outcome);
        self.changed.notify_all();
        state.waiting.len()
    }

    /// Wakes every waiting thread, to look at its stop condition (superseded).
    pub fn wake_all(&self) {
        let _state = lock(&self.state);
        self.changed.notify_all();
    }

    /// Shutdown: every waiter (now or later) ends its wait with
    /// [`WaitEnd::ShuttingDown`]. Returns the connections that wait now and are not
    /// writing: they answer `SHUTTING_DOWN` themselves, so their sockets must stay
    /// open; every other socket may be shut down.
    pub fn close(&self) -> HashSet<u64> {
        let mut state = lock(&self.state);
        state.closing = true;
        self.changed.notify_all();
        state
            .waiting
            .values()
            .filter(|p| !p.writing)
            .map(|p| p.conn_id)
            .collect()
    }

    /// How many agencies wait now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.state).waiting.len()
    }

    /// Waits for the draw's result as `waiter`, in its agency's place (taking it from an
    /// older connection of the agency; a newer one keeps it and this wait ends
    /// superseded at once). Returns the result at once if it is known. While the
    /// result is unknown, writes a `DRAW_PENDING` through `peer` every
    /// `pending_every` and checks every [`PROBE_WAITER_EVERY`] whether the agency has
    /// left (both with the lock released).
    pub fn wait(
        &self,
        waiter: Waiter,
        peer: &mut dyn WaitingPeer,
        pending_every: Duration,
    ) -> WaitEnd {
        let mut state = lock(&self.state);
        if state.closing {
            return WaitEnd::ShuttingDown;
        }
        if peer.superseded() {
            return WaitEnd::Superseded;
        }
        if let Some(outcome) = state.result.clone() {
            return WaitEnd::Result(outcome);
        }
        match state.waiting.get(&waiter.agency) {
            Some(place) if place.conn_id > waiter.conn_id => return WaitEnd::Superseded,
            // An older connection of the agency waits: it loses its place and is woken.
            Some(_) => self.changed.notify_all(),
            None => {}
        }
        state.waiting.insert(
            waiter.agency,
            Place {
                conn_id: waiter.conn_id,
                writing: false,
            },
        );
        let started = Instant::now();
        let mut next_pending = started + pending_every;
        let mut next_probe = started + PROBE_WAITER_EVERY;
        loop {
            if !state.holds(waiter) {
                return WaitEnd::Superseded; // A newer connection of the agency waits.
            }
            let end = if state.closing {
                Some(WaitEnd::ShuttingDown)
            } else if peer.superseded() {
                Some(WaitEnd::Superseded)
            } else {
                state.result.clone().map(WaitEnd::Result)
            };
            if let Some(end) = end {
                state.leave(waiter);
                return end;
            }
            let now = Instant::now();
            if now >= next_pending {
                state.set_writing(waiter, true);
                drop(state);
                let written = peer.send_pending();
                state = lock(&self.state);
                state.set_writing(waiter, false);
                next_pending = Instant::now() + pending_every;
                if !written {
                    state.leave(waiter);
                    return WaitEnd::Left;
                }
                continue;
            }
            if now >= next_probe {
                drop(state);
                let left = peer.has_left();
                state = lock(&self.state);
                next_probe = Instant::now() + PROBE_WAITER_EVERY;
                if left {
                    state.leave(waiter);
                    return WaitEnd::Left;
                }
                continue;
            }
            let until = next_pending.min(next_probe);
            state = self
                .changed
                .wait_timeout(state, until.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The messages that answer `agency`'s winners query once the draw is done.
pub fn winners_reply(outcome: &DrawOutcome, agency: AgencyId) -> Vec<Message> {
    match outcome {
        Ok(draw) => Message::winners_chunks(draw.winners_of(agency)),
        Err(reason) => vec![Message::Error {
            code: ErrorCode::Internal,
            reason: reason.clone(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread;

    /// A `DRAW_PENDING` interval no test reaches.
    const LONG: Duration = Duration::from_secs(3600);

    /// A waiting connection as a test drives it.
    #[derive(Clone, Default)]
    struct Mock {
        superseded: Arc<AtomicBool>,
        left: Arc<AtomicBool>,
        pendings: Arc<AtomicUsize>,
        /// `DRAW_PENDING` writes fail.
        broken: bool,
        /// Each `DRAW_PENDING` write lasts this long.
        slow: Duration,
        /// If set, each `DRAW_PENDING` write lasts until it is `true`.
        hold: Option<Arc<AtomicBool>>,
    }

    impl WaitingPeer for Mock {
        fn superseded(&self) -> bool {
            self.superseded.load(Ordering::SeqCst)
        }
        fn has_left(&mut self) -> bool {
            self.left.load(Ordering::SeqCst)
        }
        fn send_pending(&mut self) -> bool {
            self.pendings.fetch_add(1, Ordering::SeqCst);
            thread::sleep(self.slow);
            if let Some(hold) = &self.hold {
                while !hold.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            !self.broken
        }
    }

    fn waiter(conn_id: u64, agency: AgencyId) -> Waiter {
        Waiter { conn_id, agency }
    }

    /// How a wait ended, as text (for assertions).
    fn label(end: &WaitEnd) -> String {
        match end {
            WaitEnd::Result(Ok(_)) => "Result(Ok)".into(),
            WaitEnd::Result(Err(reason)) => format!("Result(Err({reason}))"),
            WaitEnd::ShuttingDown => "ShuttingDown".into(),
            WaitEnd::Superseded => "Superseded".into(),
            WaitEnd::Left => "Left".into(),
        }
    }

    /// Runs a wait on its own thread; its end arrives on the channel.
    fn spawn_wait(
        barrier: &Arc<DrawBarrier>,
        w: Waiter,
        mut peer: Mock,
        every: Duration,
    ) -> (thread::JoinHandle<()>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let barrier = Arc::clone(barrier);
        let handle = thread::spawn(move || {
            let _ = tx.send(label(&barrier.wait(w, &mut peer, every)));
        });
        (handle, rx)
    }

    fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..2000 {
            if cond() {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("timed out waiting until {what}");
    }

    fn end_of(rx: &mpsc::Receiver<String>) -> String {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the wait ended")
    }

    #[test]
    fn a_known_result_is_returned_at_once() {
        let barrier = DrawBarrier::default();
        assert_eq!(barrier.publish(Err("x".into())), 0);
        let end = barrier.wait(waiter(1, 1), &mut Mock::default(), LONG);
        assert_eq!(label(&end), "Result(Err(x))");
        assert_eq!(barrier.waiting(), 0);
    }

    #[test]
    fn publishing_wakes_each_waiter_to_take_the_result_itself() {
        let barrier = Arc::new(DrawBarrier::default());
        let waits: Vec<_> = (1..=3)
            .map(|agency: u32| {
                spawn_wait(
                    &barrier,
                    waiter(u64::from(agency), agency),
                    Mock::default(),
                    LONG,
                )
            })
            .collect();
        until("three agencies wait", || barrier.waiting() == 3);
        assert_eq!(barrier.publish(Err("done".into())), 3);
        for (handle, rx) in waits {
            assert_eq!(end_of(&rx), "Result(Err(done))");
            handle.join().expect("waiter thread");
        }
        assert_eq!(barrier.waiting(), 0, "each waiter left the list");
    }

    #[test]
    fn a_superseded_waiter_ends_its_wait_and_frees_the_place() {
        let barrier = Arc::new(DrawBarrier::default());
        let peer = Mock::default();
        let (handle, rx) = spawn_wait(&barrier, waiter(3, 1), peer.clone(), LONG);
        until("the agency waits", || barrier.waiting() == 1);
        peer.superseded.store(true, Ordering::SeqCst);
        barrier.wake_all();
        assert_eq!(end_of(&rx), "Superseded");
        handle.join().expect("waiter thread");
        assert_eq!(barrier.waiting(), 0);
    }

    #[test]
    fn an_agency_has_one_waiter_the_newest_connection() {
        let barrier = Arc::new(DrawBarrier::default());
        let (old, old_end) = spawn_wait(&barrier, waiter(5, 7), Mock::default(), LONG);
        until("connection 5 waits", || barrier.waiting() == 1);
        // A newer connection of agency 7 takes the place; the older one is woken.
        let (new, new_end) = spawn_wait(&barrier, waiter(9, 7), Mock::default(), LONG);
        assert_eq!(end_of(&old_end), "Superseded");
        old.join().expect("old waiter");
        assert_eq!(barrier.waiting(), 1);
        // An older connection (a stale HELLO) never takes a newer one's place.
        let stale = barrier.wait(waiter(6, 7), &mut Mock::default(), LONG);
        assert_eq!(label(&stale), "Superseded");
        assert_eq!(barrier.waiting(), 1);
        // Another agency has a place of its own.
        let (other, other_end) = spawn_wait(&barrier, waiter(2, 8), Mock::default(), LONG);
        until("agency 8 waits too", || barrier.waiting() == 2);
        assert_eq!(barrier.publish(Err("done".into())), 2);
        assert_eq!(end_of(&new_end), "Result(Err(done))");
        assert_eq!(end_of(&other_end), "Result(Err(done))");
        new.join().expect("new waiter");
        other.join().expect("other waiter");
    }

    #[test]
    fn a_waiter_that_left_gives_up_its_place() {
        let barrier = DrawBarrier::default();
        let peer = Mock::default();
        peer.left.store(true, Ordering::SeqCst);
        let end = barrier.wait(waiter(4, 1), &mut peer.clone(), LONG);
        assert_eq!(label(&end), "Left");
        assert_eq!(barrier.waiting(), 0);
    }

    #[test]
    fn the_waiter_writes_its_pending_frames_and_a_draw_during_one_does_not_wait_for_it() {
        let barrier = Arc::new(DrawBarrier::default());
        let peer = Mock {
            slow: Duration::from_millis(30),
            ..Mock::default()
        };
        let writes = Arc::clone(&peer.pendings);
        let (handle, rx) = spawn_wait(&barrier, waiter(9, 1), peer, Duration::from_millis(10));
        until("three DRAW_PENDINGs", || writes.load(Ordering::SeqCst) >= 3);
        // Published while the waiter may be writing: publish returns at once, and the
        // waiter takes the result when its write ends.
        assert_eq!(barrier.publish(Err("done".into())), 1);
        assert_eq!(end_of(&rx), "Result(Err(done))");
        handle.join().expect("waiter thread");
        let after = writes.load(Ordering::SeqCst);
        let again = barrier.wait(waiter(10, 1), &mut Mock::default(), Duration::ZERO);
        assert_eq!(label(&again), "Result(Err(done))");
        assert_eq!(writes.load(Ordering::SeqCst), after);
    }

    #[test]
    fn a_failed_pending_write_ends_the_wait() {
        let barrier = DrawBarrier::default();
        let mut peer = Mock {
            broken: true,
            ..Mock::default()
        };
        let end = barrier.wait(waiter(5, 1), &mut peer, Duration::ZERO);
        assert_eq!(label(&end), "Left");
        assert_eq!(barrier.waiting(), 0);
    }

    #[test]
    fn close_wakes_every_waiter_and_spares_only_those_not_writing() {
        let barrier = Arc::new(DrawBarrier::default());
        let (idle, idle_end) = spawn_wait(&barrier, waiter(1, 1), Mock::default(), LONG);
        let release = Arc::new(AtomicBool::new(false));
        let writer = Mock {
            hold: Some(Arc::clone(&release)),
            ..Mock::default()
        };
        let writes = Arc::clone(&writer.pendings);
        let (busy, busy_end) = spawn_wait(&barrier, waiter(2, 2), writer, Duration::ZERO);
        until("both wait, one writing", || {
            barrier.waiting() == 2 && writes.load(Ordering::SeqCst) >= 1
        });
        let spared = barrier.close();
        assert_eq!(spared, HashSet::from([1]), "the writing one is not spared");
        assert_eq!(end_of(&idle_end), "ShuttingDown");
        // A draw that races with shutdown: the waiter still answers SHUTTING_DOWN (a
        // short answer: stop does not wait for a whole list of winners).
        barrier.publish(Err("done".into()));
        release.store(true, Ordering::SeqCst);
        assert_eq!(end_of(&busy_end), "ShuttingDown");
        idle.join().expect("idle waiter");
        busy.join().expect("busy waiter");
        assert_eq!(barrier.waiting(), 0);
        let late = barrier.wait(waiter(3, 3), &mut Mock::default(), LONG);
        assert_eq!(label(&late), "ShuttingDown");
    }
}
