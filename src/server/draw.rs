//! The draw barrier: agencies waiting for their winners, the draw's result once
//! known, and the answering of every waiter.
//!
//! [`DrawBarrier`] owns its lock and condition variable. The thread that runs the
//! draw publishes the result and takes the waiting list in one critical section
//! ([`DrawBarrier::publish`]), so a query that arrives later sees the result and is
//! answered by its own thread, and one that arrived earlier is in the list. It then
//! writes to each waiter with the lock released, under one deadline per waiter's whole
//! answer, so one agency that reads slowly or not at all cannot hold up the others;
//! and marks each answered or failed ([`DrawBarrier::delivered`]).
//!
//! While it waits, a waiting thread writes its own `DRAW_PENDING` frames (every
//! `PENDING_INTERVAL`). Two threads never write one socket at once, and no lock is
//! held while either writes: the barrier's state says who may write. A waiter starts a
//! `DRAW_PENDING` only while the result is unknown and marks itself `pending_write`
//! (in the same critical section as the check); `publish` sets the result, so no new
//! one starts after it; and the drawing thread waits until a waiter's mark is gone
//! ([`DrawBarrier::until_quiet`]) before it writes that waiter's winners. Every such
//! write has a deadline, so that wait is bounded.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::bet::{AgencyId, DrawResult};
use crate::protocol::{ErrorCode, Message};
use crate::shutdown::lock;

/// The draw's result, or why it failed (sent to every agency as `INTERNAL`).
pub type DrawOutcome = Result<Arc<DrawResult>, String>;

/// How often an agency waiting for the draw is checked for having left, so that its
/// thread and connection slot are freed instead of being held until the draw.
pub const PROBE_WAITER_EVERY: Duration = Duration::from_millis(250);

/// An agency waiting for the draw.
pub struct Waiter {
    /// The waiting connection.
    pub conn_id: u64,
    /// Its agency.
    pub agency: AgencyId,
    /// Its socket, for the drawing thread to write the answer to.
    pub stream: Arc<TcpStream>,
}

/// How a wait for the draw ended.
pub enum WaitEnd {
    /// The result was known already: the caller answers itself.
    Known(DrawOutcome),
    /// The drawing thread answered this connection (`true`) or failed to (`false`:
    /// the stream is unusable).
    Delivered(bool),
    /// `stop` asked to end the wait (shutdown, superseded); the caller answers.
    Stopped(&'static str),
    /// The agency closed its connection before the draw.
    Left,
}

/// The barrier's state.
#[derive(Default)]
struct State {
    result: Option<DrawOutcome>,
    waiting: Vec<Waiter>,
    /// Connections the drawing thread is writing winners to right now.
    sending: HashSet<u64>,
    /// Connections answered (`true`) or whose answer failed (`false`), not yet noticed.
    answered: HashMap<u64, bool>,
    /// Waiting connections writing a `DRAW_PENDING` right now (their own thread).
    pending_write: HashSet<u64>,
    /// Handed-over connections whose `DRAW_PENDING` write failed (maybe after part of
    /// the frame went out): their stream is broken, the drawing thread must not write.
    broken: HashSet<u64>,
}

/// Where agencies wait for the draw.
#[derive(Default)]
pub struct DrawBarrier {
    state: Mutex<State>,
    changed: Condvar,
    /// Signalled when a `DRAW_PENDING` write ends (only the drawing thread waits on
    /// it, so a thousand waiters' keep-alives do not wake each other).
    quiet: Condvar,
}

impl DrawBarrier {
    /// The result, once the draw has run.
    pub fn result(&self) -> Option<DrawOutcome> {
        lock(&self.state).result.clone()
    }

    /// Publishes the draw's result and hands over every agency waiting for it (each
    /// marked as being answered by the caller, who must call [`Self::delivered`]).
    pub fn publish(&self, outcome: DrawOutcome) -> Vec<Waiter> {
        let mut state = lock(&self.state);
        state.result = Some(outcome);
        let waiters = std::mem::take(&mut state.waiting);
        state.sending.extend(waiters.iter().map(|w| w.conn_id));
        waiters
    }

    /// Records which handed-over waiters were answered, and wakes them.
    pub fn delivered(&self, results: &[(u64, bool)]) {
        let mut state = lock(&self.state);
        for &(conn_id, ok) in results {
            state.sending.remove(&conn_id);
            state.answered.insert(conn_id, ok);
        }
        self.changed.notify_all();
    }

    /// Wakes every waiting thread, to look at its stop condition (shutdown, superseded).
    pub fn wake_all(&self) {
        let _state = lock(&self.state);
        self.changed.notify_all();
    }

    /// The connections waiting now.
    pub fn waiting_ids(&self) -> HashSet<u64> {
        lock(&self.state)
            .waiting
            .iter()
            .map(|w| w.conn_id)
            .collect()
    }

    /// Blocks until connection `conn_id` is not writing a `DRAW_PENDING` (bounded by
    /// that write's deadline), then says whether its stream may still be written:
    /// `false` if that write failed, when the caller must not write the winners (the
    /// peer may hold part of a frame) and delivers `false`. Called by the drawing
    /// thread after [`Self::publish`], before it writes the connection's winners.
    pub fn until_quiet(&self, conn_id: u64) -> bool {
        let mut state = lock(&self.state);
        while state.pending_write.contains(&conn_id) {
            let (guard, _) = self
                .quiet
                .wait_timeout(state, PROBE_WAITER_EVERY)
                .unwrap_or_else(PoisonError::into_inner);
            state = guard;
        }
        !state.broken.remove(&conn_id)
    }

    /// Waits until `waiter` is answered, `stop` returns a reason, or `peer_left`
    /// (probed every [`PROBE_WAITER_EVERY`], with the lock released) says the agency
    /// has gone. If the result is already known, returns it at once. Every
    /// `pending_every` while the result is unknown it calls `pending` (with the lock
    /// released) to write a `DRAW_PENDING`; `false` from it (the write failed) ends
    /// the wait as [`WaitEnd::Left`].
    pub fn wait(
        &self,
        waiter: Waiter,
        stop: &dyn Fn() -> Option<&'static str>,
        peer_left: &mut dyn FnMut() -> bool,
        pending_every: Duration,
        pending: &mut dyn FnMut() -> bool,
    ) -> WaitEnd {
        let id = waiter.conn_id;
        let mut state = lock(&self.state);
        if let Some(outcome) = state.result.clone() {
            return WaitEnd::Known(outcome);
        }
        state.waiting.push(waiter);
        let mut next_pending = Instant::now() + pending_every;
        loop {
            if let Some(delivered) = state.answered.remove(&id) {
                return WaitEnd::Delivered(delivered);
            }
            // While the drawing thread writes to this socket, only it may touch it.
            let mine = !state.sending.contains(&id);
            if mine && let Some(reason) = stop() {
                state.waiting.retain(|w| w.conn_id != id);
                return WaitEnd::Stopped(reason);
            }
            let (guard, wait) = self
                .changed
                .wait_timeout(state, PROBE_WAITER_EVERY)
                .unwrap_or_else(PoisonError::into_inner);
            state = guard;
            if state.sending.contains(&id) || state.answered.contains_key(&id) {
                continue;
            }
            if state.result.is_none() && Instant::now() >= next_pending {
                // Checked and marked under the lock `publish` takes: the drawing thread
                // waits for this write to end before it writes the winners.
                state.pending_write.insert(id);
                drop(state);
                let written = pending();
                state = lock(&self.state);
                state.pending_write.remove(&id);
                self.quiet.notify_all();
                next_pending = Instant::now() + pending_every;
                if !written {
                    if state.sending.contains(&id) {
                        // Handed over during the write: the drawing thread waits in
                        // `until_quiet` and learns from this mark not to write.
                        state.broken.insert(id);
                    } else if !state.answered.contains_key(&id) {
                        state.waiting.retain(|w| w.conn_id != id);
                        return WaitEnd::Left;
                    }
                }
                continue;
            }
            if !wait.timed_out() {
                continue;
            }
            drop(state);
            let left = peer_left();
            state = lock(&self.state);
            let answered_meanwhile =
                state.answered.contains_key(&id) || state.sending.contains(&id);
            if left && !answered_meanwhile {
                state.waiting.retain(|w| w.conn_id != id);
                return WaitEnd::Left;
            }
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

/// Writes `agency`'s answer to `stream` within `limit` (however the peer paces its
/// reads), restores the stream's write timeout to `io_timeout` and logs the outcome.
pub fn send_winners(
    stream: &TcpStream,
    outcome: &DrawOutcome,
    agency: AgencyId,
    limit: Duration,
    io_timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let sent = winners_reply(outcome, agency).iter().try_for_each(|m| {
        let bytes = m
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        write_all_before(stream, &bytes, deadline)
    });
    let restored = stream.set_write_timeout(Some(io_timeout));
    let sent = sent.and(restored);
    let count = outcome.as_ref().map_or(0, |d| d.winners_of(agency).len());
    match &sent {
        Ok(()) => log::info!(
            "action: winners_sent | result: success | agency: {agency} | cant_ganadores: {count}"
        ),
        Err(e) => {
            log::warn!("action: winners_sent | result: fail | agency: {agency} | error: {e}")
        }
    }
    sent
}

/// Writes one `DRAW_PENDING` (`finished` of `agencies`) to `stream` within `limit`,
/// then restores the stream's write timeout to `io_timeout`.
pub fn send_pending(
    stream: &TcpStream,
    finished: u32,
    agencies: u32,
    limit: Duration,
    io_timeout: Duration,
) -> io::Result<()> {
    let bytes = Message::DrawPending { finished, agencies }
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let sent = write_all_before(stream, &bytes, Instant::now() + limit);
    let restored = stream.set_write_timeout(Some(io_timeout));
    sent.and(restored)
}

/// `write_all` that fails with `TimedOut` once `deadline` has passed, however the
/// peer paces its reads.
pub(crate) fn write_all_before(
    stream: &TcpStream,
    mut buf: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    while !buf.is_empty() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "answer deadline passed"))?;
        stream.set_write_timeout(Some(left))?;
        match (&*stream).write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    /// A `DRAW_PENDING` interval no test reaches.
    const LONG: Duration = Duration::from_secs(3600);

    fn stream() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (Arc::new(server), client)
    }

    fn waiter(conn_id: u64) -> (Waiter, TcpStream) {
        let (stream, peer) = stream();
        (
            Waiter {
                conn_id,
                agency: 1,
                stream,
            },
            peer,
        )
    }

    #[test]
    fn a_known_result_is_returned_at_once() {
        let barrier = DrawBarrier::default();
        assert!(barrier.publish(Err("x".into())).is_empty());
        let (w, _peer) = waiter(1);
        let end = barrier.wait(w, &|| None, &mut || false, LONG, &mut || true);
        assert!(matches!(end, WaitEnd::Known(Err(reason)) if reason == "x"));
    }

    #[test]
    fn a_waiter_is_handed_over_to_the_drawing_thread_and_woken() {
        let barrier = Arc::new(DrawBarrier::default());
        let (w, _peer) = waiter(7);
        let waiting = {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                matches!(
                    barrier.wait(w, &|| None, &mut || false, LONG, &mut || true),
                    WaitEnd::Delivered(true)
                )
            })
        };
        // Wait until the waiter is registered, then publish and deliver.
        let mut handed = Vec::new();
        for _ in 0..200 {
            if barrier.waiting_ids().contains(&7) {
                handed = barrier.publish(Err("done".into()));
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(handed.len(), 1);
        barrier.delivered(&[(7, true)]);
        assert!(waiting.join().expect("waiter thread"));
    }

    #[test]
    fn a_stop_condition_ends_the_wait_and_frees_the_place() {
        let barrier = Arc::new(DrawBarrier::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (w, _peer) = waiter(3);
        let waiting = {
            let (barrier, stop) = (Arc::clone(&barrier), Arc::clone(&stop));
            thread::spawn(move || {
                let stop_fn = move || stop.load(Ordering::SeqCst).then_some("superseded");
                matches!(
                    barrier.wait(w, &stop_fn, &mut || false, LONG, &mut || true),
                    WaitEnd::Stopped("superseded")
                )
            })
        };
        while !barrier.waiting_ids().contains(&3) {
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        barrier.wake_all();
        assert!(waiting.join().expect("waiter thread"));
        assert!(barrier.waiting_ids().is_empty());
    }

    #[test]
    fn a_waiter_that_left_gives_up_its_place() {
        let barrier = DrawBarrier::default();
        let (w, _peer) = waiter(4);
        let end = barrier.wait(w, &|| None, &mut || true, LONG, &mut || true);
        assert!(matches!(end, WaitEnd::Left));
        assert!(barrier.waiting_ids().is_empty());
    }

    #[test]
    fn pending_frames_are_written_by_the_waiter_until_the_draw_and_never_during_it() {
        let barrier = Arc::new(DrawBarrier::default());
        let (w, _peer) = waiter(9);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waiting = {
            let (barrier, writes) = (Arc::clone(&barrier), Arc::clone(&writes));
            thread::spawn(move || {
                let mut pending = || {
                    writes.fetch_add(1, Ordering::SeqCst);
                    // A slow write: the drawing thread must wait for it to end.
                    thread::sleep(Duration::from_millis(30));
                    true
                };
                matches!(
                    barrier.wait(
                        w,
                        &|| None,
                        &mut || false,
                        Duration::from_millis(10),
                        &mut pending
                    ),
                    WaitEnd::Delivered(true)
                )
            })
        };
        while writes.load(Ordering::SeqCst) < 3 {
            thread::sleep(Duration::from_millis(5));
        }
        let handed = barrier.publish(Err("done".into()));
        assert_eq!(handed.len(), 1);
        assert!(
            barrier.until_quiet(9),
            "a waiter whose writes succeed stays writable"
        );
        let after_quiet = writes.load(Ordering::SeqCst);
        assert!(lock(&barrier.state).pending_write.is_empty());
        thread::sleep(Duration::from_millis(60));
        assert_eq!(
            writes.load(Ordering::SeqCst),
            after_quiet,
            "no DRAW_PENDING starts once the result is published"
        );
        barrier.delivered(&[(9, true)]);
        assert!(waiting.join().expect("waiter thread"));
    }

    #[test]
    fn a_failed_pending_write_ends_the_wait() {
        let barrier = DrawBarrier::default();
        let (w, _peer) = waiter(5);
        let end = barrier.wait(w, &|| None, &mut || false, Duration::ZERO, &mut || false);
        assert!(matches!(end, WaitEnd::Left));
        assert!(barrier.waiting_ids().is_empty());
    }

    #[test]
    fn send_pending_writes_one_whole_frame() {
        let (server, mut client) = stream();
        send_pending(
            &server,
            2,
            5,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("written");
        let frame = crate::protocol::read_frame(&mut client)
            .expect("reads")
            .expect("frame");
        assert_eq!(
            frame.decode(),
            Ok(Message::DrawPending {
                finished: 2,
                agencies: 5
            })
        );
    }

    #[test]
    fn a_pending_write_that_fails_after_the_hand_over_breaks_the_stream() {
        // The waiter's DRAW_PENDING write fails (e.g. timed out after part of the frame
        // went out) while the draw is being published: the drawing thread must learn
        // of it and not write WINNERS after the broken frame.
        let barrier = Arc::new(DrawBarrier::default());
        let (w, _peer) = waiter(11);
        let started = Arc::new(AtomicBool::new(false));
        let waiting = {
            let (barrier, started) = (Arc::clone(&barrier), Arc::clone(&started));
            thread::spawn(move || {
                let mut pending = || {
                    started.store(true, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(200));
                    false // the write failed
                };
                let end = barrier.wait(
                    w,
                    &|| None,
                    &mut || false,
                    Duration::from_millis(10),
                    &mut pending,
                );
                match end {
                    WaitEnd::Delivered(ok) => format!("Delivered({ok})"),
                    WaitEnd::Left => "Left".into(),
                    WaitEnd::Known(_) => "Known".into(),
                    WaitEnd::Stopped(r) => format!("Stopped({r})"),
                }
            })
        };
        while !started.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        let handed = barrier.publish(Err("done".into()));
        assert_eq!(
            handed.len(),
            1,
            "the waiter whose write is failing is handed over"
        );
        let writable = barrier.until_quiet(11);
        assert!(!writable, "the drawing thread is told the stream is broken");
        barrier.delivered(&[(11, writable)]);
        let end = waiting.join().expect("waiter thread");
        assert_eq!(
            end, "Delivered(false)",
            "a broken stream is closed, not answered"
        );
        assert!(
            lock(&barrier.state).broken.is_empty(),
            "the mark is consumed"
        );
        // A waiter whose writes succeed stays writable.
        assert!(barrier.until_quiet(12));
    }
}
