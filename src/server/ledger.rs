//! The ledger: the rules that decide whether a batch or a `FIN` may be recorded, over
//! the durable [`Store`], behind one lock.
//!
//! The ledger owns its `Mutex` (as mini-redis's `Db` does): callers see methods, never
//! the lock. It holds the store plus the in-memory view rebuilt from it at start-up
//! (each agency's upload and last batch, the finished agencies, whether the draw ran),
//! and which connection currently owns each agency (the last one that said `HELLO`).
//! Every decision and the durable write it leads to happen under the lock, so:
//!
//! * a batch is stored only if it is the next of its upload (`seq = last + 1`); a
//!   replay of the last stored batch (same `seq`, same content) is acknowledged again
//!   without storing; anything else is refused — an ACK always means "stored";
//! * once the N-th `FIN` marks the draw, no batch can slip in behind it;
//! * a connection that was superseded by a newer `HELLO` of its agency cannot store or
//!   finish any more, so two processes of one agency never interleave batches.
//!
//! The lock is held for memory work only, never for socket I/O. Batches are made
//! durable by **group commit** (leader/follower, as PostgreSQL's): an accepted batch
//! joins the group being filled; the first connection to wait for a group that is
//! not yet syncing leads it — it takes the group, leaves the lock, commits every batch
//! of the group with one write and one sync per file, and wakes the others. Batches
//! that arrive meanwhile fill the next group, so one sync covers every batch, of every
//! agency, that came in while the previous one ran. A batch is answered (stored) only
//! once its group is durable; a group that fails fails every batch not yet durable
//! and the ledger's view goes back to what is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::bet::{AgencyId, Bet, DrawResult};
use crate::protocol::{AgencyStatus, StatusSnapshot};
use crate::shutdown::lock;
use crate::storage::{
    self, ADOPTED_UPLOAD, AgencyProgress, Batch, DrawRecord, Rows, StorageError, Store, UploadId,
};

/// What a `HELLO` learns: how far the agency's upload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The upload the agency's stored bets belong to (the asked one if none).
    pub upload: UploadId,
    /// The last stored `seq` of that upload (0: none).
    pub stored_seq: u64,
    /// Bets stored for the agency.
    pub stored_bets: u64,
    /// The `line` of the agency's last stored batch (0: none or no file).
    pub stored_line: u64,
    /// Whether the agency's `FIN` is recorded.
    pub finished: bool,
    /// Whether the draw ran (or is running).
    pub drawn: bool,
    /// The connection that owned the agency before this `HELLO`, to be told.
    pub superseded: Option<u64>,
}

/// A batch the ledger accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now.
    New,
    /// The last stored batch, sent again: acknowledged, not stored twice.
    Replay,
}

/// A batch accepted by [`Ledger::accept`], to be settled by
/// [`Ledger::settle_ticket`] before it is answered.
#[derive(Clone)]
pub struct Ticket {
    stored: Stored,
    /// The group commit that makes it durable (`None`: durable already).
    group: Option<Arc<Group>>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("stored", &self.stored)
            .field(
                "settled",
                &self.group.as_ref().map(|g| g.outcome.get().is_some()),
            )
            .finish()
    }
}

/// Why the ledger refused a request.
#[derive(Debug)]
pub enum Refusal {
    /// The draw has run: no more bets.
    DrawDone,
    /// The agency sent `FIN`: no more bets from it.
    AgencyFinished,
    /// Another connection of the agency said `HELLO` after this one.
    Superseded,
    /// The agency stored bets of another upload.
    UploadConflict {
        /// The upload whose bets are stored.
        stored: UploadId,
        /// How many.
        bets: u64,
    },
    /// Neither the next batch nor a replay of the last stored one.
    BadSeq {
        /// The `seq` that would have been stored.
        expected: u64,
    },
    /// Storage failed; nothing of the request was recorded. Shared: every batch of a
    /// failed group commit carries the same error.
    Storage(Arc<StorageError>),
}

/// What recording a `FIN` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// Agencies finished so far (of `1..=N`).
    pub finished: u32,
    /// Whether this `FIN` completed the set: the caller runs the draw.
    pub draw_now: bool,
    /// Why the draw could not be journaled, if so: then no winners may be answered
    /// (a restart runs the draw again, perhaps with another configured number).
    pub draw_unrecorded: Option<String>,
}

/// The shared ledger.
pub struct Ledger {
    agencies: u32,
    state: Mutex<State>,
    /// Signalled (with `state`'s lock) each time a group commit is settled.
    settled: Condvar,
    /// The durable store. Lock order: `state` before `store`; a group's leader takes
    /// `store` without `state`, so syncing never blocks the accepting of batches.
    store: Mutex<Box<dyn Store>>,
    /// How many agencies have an owning connection (`State::owners.len()`, stored
    /// under the lock at each change), readable without the lock: the accept loop
    /// must not wait for a commit's `fsync`s.
    owned: AtomicUsize,
    /// The bets of committed batches, to decode later batches into
    /// ([`Ledger::spare_batch`]). Its own lock, taken alone or after `state`.
    spares: Mutex<Vec<Vec<Bet>>>,
}

/// The most committed batches' bets kept for reuse: more than the batches a few
/// pipelining connections have in flight at once.
const MAX_SPARES: usize = 256;

/// The most text (the capacity of its bets' `String`s, in bytes) a kept batch may
/// hold: several times an ordinary batch's, so that at most `MAX_SPARES` × this
/// (4 MiB) is kept whatever names peers send.
const MAX_SPARE_TEXT: usize = 16 * 1024;

/// The capacity of the `String`s of `bets`, in bytes.
fn text_capacity(bets: &[Bet]) -> usize {
    bets.iter()
        .map(|b| b.first_name.capacity() + b.last_name.capacity() + b.document.capacity())
        .sum()
}

struct State {
    /// Each agency's progress as accepted: durable, plus its batches in a group
    /// commit not yet settled. The rules (next seq, replay) are checked against it.
    progress: BTreeMap<AgencyId, AgencyProgress>,
    /// Each agency's durable progress: what `HELLO` and the status report.
    durable: BTreeMap<AgencyId, AgencyProgress>,
    finished: BTreeSet<AgencyId>,
    /// Set (under the lock) by the `FIN` that completes the set, or found recorded.
    drawn: Option<DrawRecord>,
    /// Durable bets.
    bets: u64,
    /// The accepted batches of the group being filled, in acceptance order.
    pending: Vec<Pending>,
    /// The group being filled.
    filling: Arc<Group>,
    /// Whether a leader is committing a group now.
    syncing: bool,
    /// The group of each agency's last accepted batch.
    last_group: HashMap<AgencyId, Arc<Group>>,
    /// The connection that owns each agency: the last to say `HELLO` for it.
    owners: HashMap<AgencyId, u64>,
}

/// One group commit. Its outcome is set once, under the ledger's lock, by its leader
/// (or by the failure of the group before it).
#[derive(Default)]
struct Group {
    outcome: OnceLock<Result<(), Arc<StorageError>>>,
}

/// An accepted batch waiting in the group being filled.
struct Pending {
    agency: AgencyId,
    upload: UploadId,
    seq: u64,
    line: u64,
    bets: Vec<Bet>,
    /// The bets as the bets file's rows, with their digest (formatted once, here).
    rows: Rows,
}

impl Ledger {
    /// A ledger over `store`, its view rebuilt from what the store recovered, for a
    /// lottery of `agencies` agencies.
    pub fn new(store: Box<dyn Store>, agencies: u32) -> Ledger {
        let recovered = store.recovered().clone();
        Ledger {
            agencies,
            state: Mutex::new(State {
                durable: recovered.agencies.clone(),
                progress: recovered.agencies,
                finished: recovered.finished,
                drawn: recovered.draw,
                bets: recovered.bets,
                pending: Vec::new(),
                filling: Arc::new(Group::default()),
                syncing: false,
                last_group: HashMap::new(),
                owners: HashMap::new(),
            }),
            settled: Condvar::new(),
            store: Mutex::new(store),
            owned: AtomicUsize::new(0),
            spares: Mutex::new(Vec::new()),
        }
    }

    /// Waits, with the state's lock, until `group` is settled, leading its commit if
    /// no one else is committing and it is the group being filled.
    fn settle<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        group: &Arc<Group>,
    ) -> (MutexGuard<'a, State>, Result<(), Arc<StorageError>>) {
        loop {
            if let Some(outcome) = group.outcome.get() {
                return (state, outcome.clone());
            }
            // A group is being filled, being committed (`syncing`, not filling) or
            // settled: here it is one of the first two.
            if !state.syncing && Arc::ptr_eq(group, &state.filling) {
                state = self.lead(state);
            } else {
                state = self
                    .settled
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// Commits the group being filled: takes it, commits it without the state's lock
    /// (others go on filling the next group), then settles it and wakes every waiter.
    fn lead<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.syncing = true;
        let batches = std::mem::take(&mut state.pending);
        let group = std::mem::replace(&mut state.filling, Arc::new(Group::default()));
        drop(state);
        let views: Vec<Batch<'_>> = batches
            .iter()
            .map(|b| Batch {
                agency: b.agency,
                upload: b.upload,
                seq: b.seq,
                line: b.line,
                digest: b.rows.digest(),
                bets: &b.bets,
                rows: Some(&b.rows),
            })
            .collect();
        let result = lock(&self.store).commit(&views);
        let mut state = lock(&self.state);
        state.syncing = false;
        match result {
            Ok(()) => {
                for b in &batches {
                    let count = u32::try_from(b.bets.len()).unwrap_or(u32::MAX);
                    state.durable.entry(b.agency).or_default().advance(
                        b.upload,
                        b.seq,
                        b.line,
                        count,
                        b.rows.digest(),
                    );
                    state.bets += u64::from(count);
                }
                let _ = group.outcome.set(Ok(()));
            }
            Err(e) => {
                let e = Arc::new(e);
                let _ = group.outcome.set(Err(Arc::clone(&e)));
                // Batches accepted meanwhile may follow one of the failed group's: none
                // of them can be stored now. The view goes back to what is durable.
                let next = std::mem::replace(&mut state.filling, Arc::new(Group::default()));
                let dropped = std::mem::take(&mut state.pending);
                self.recycle(dropped);
                let _ = next.outcome.set(Err(e));
                state.progress = state.durable.clone();
                // Nothing of the failed groups is pending any more: an agency's FIN
                // or a replay of its last durable batch must not wait for (and take
                // the failure of) a group that will never hold anything of it.
                state
                    .last_group
                    .retain(|_, g| !Arc::ptr_eq(g, &group) && !Arc::ptr_eq(g, &next));
            }
        }
        self.settled.notify_all();
        self.recycle(batches);
        state
    }

    /// Keeps the bets of settled batches for [`Ledger::spare_batch`] (their `String`s
    /// are refilled by the next batches decoded), up to [`MAX_SPARES`].
    fn recycle(&self, batches: Vec<Pending>) {
        let mut spares = lock(&self.spares);
        for batch in batches {
            if spares.len() >= MAX_SPARES {
                break;
            }
            // A batch of long names would keep its large Strings for the server's
            // lifetime: only ordinary batches are kept.
            if text_capacity(&batch.bets) <= MAX_SPARE_TEXT {
                spares.push(batch.bets);
            }
        }
    }

    /// A `Vec` to decode a batch into: the bets of a batch already committed when
    /// there is one (decoding into it reuses its bets' `String`s, so a steady upload
    /// allocates nothing per bet), else an empty one.
    pub fn spare_batch(&self) -> Vec<Bet> {
        lock(&self.spares).pop().unwrap_or_default()
    }

    /// Waits until every accepted batch of `agency` is settled (durable, or failed and
    /// forgotten).
    fn settle_agency<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        agency: AgencyId,
    ) -> (MutexGuard<'a, State>, Result<(), Arc<StorageError>>) {
        match state.last_group.get(&agency).cloned() {
            Some(group) => self.settle(state, &group),
            None => (state, Ok(())),
        }
    }

    /// The number of agencies of the lottery.
    pub fn agencies(&self) -> u32 {
        self.agencies
    }

    /// Connection `conn` takes `agency` over (for upload `upload`); returns how far the
    /// agency is stored, and which connection owned it before. Connection ids grow in
    /// accept order, so only a newer connection takes over: a `HELLO` of an older one
    /// that is handled late (it waited for the lock while its client gave up and
    /// reconnected) gets `None` — it is the stale one, not the new.
    pub fn hello(&self, agency: AgencyId, upload: UploadId, conn: u64) -> Option<Welcome> {
        let mut state = lock(&self.state);
        let previous = match state.owners.get(&agency) {
            Some(&owner) if owner > conn => return None,
            Some(&owner) if owner < conn => Some(owner),
            _ => None,
        };
        state.owners.insert(agency, conn);
        self.owned.store(state.owners.len(), Ordering::SeqCst);
        // The older connection can store nothing more: once its batches are settled
        // the durable progress is the whole story (a failure is forgotten and resent).
        let (state, _) = self.settle_agency(state, agency);
        let (stored_upload, stored_seq, stored_bets, stored_line) = match state.durable.get(&agency)
        {
            // Bets adopted from an older, journal-less run belong to no known
            // upload: they are taken as the first bets of whatever upload goes on.
            Some(p) if is_adopted(p) => (upload, 0, p.bets, 0),
            Some(p) if p.bets > 0 => (p.upload, p.last_seq, p.bets, p.last_line),
            _ => (upload, 0, 0, 0),
        };
        Some(Welcome {
            upload: stored_upload,
            stored_seq,
            stored_bets,
            stored_line,
            finished: state.finished.contains(&agency),
            drawn: state.drawn.is_some(),
            superseded: previous,
        })
    }

    /// Connection `conn` is gone: it owns nothing any more.
    pub fn release(&self, agency: AgencyId, conn: u64) {
        let mut state = lock(&self.state);
        if state.owners.get(&agency) == Some(&conn) {
            state.owners.remove(&agency);
            self.owned.store(state.owners.len(), Ordering::SeqCst);
        }
    }

    /// The connections that own an agency now.
    pub fn owner_connections(&self) -> std::collections::HashSet<u64> {
        lock(&self.state).owners.values().copied().collect()
    }

    /// How many connections own an agency now (at most one per agency): the
    /// connections whose `HELLO` took their agency over and that are still open.
    pub fn owners(&self) -> usize {
        self.owned.load(Ordering::SeqCst)
    }

    /// Stores batch `seq` of `agency`'s upload `upload`, sent on connection `conn`, if
    /// the rules allow it (see the module docs): [`Ledger::accept`], then
    /// [`Ledger::settle_ticket`] (the two steps at once, for tests).
    #[cfg(test)]
    pub fn store(
        &self,
        agency: AgencyId,
        conn: u64,
        upload: UploadId,
        seq: u64,
        line: u64,
        bets: impl Into<Vec<Bet>>,
    ) -> Result<Stored, Refusal> {
        let ticket = self.accept(agency, conn, upload, seq, line, bets)?;
        self.settle_ticket(&ticket)
    }

    /// Accepts batch `seq` of `agency`'s upload `upload`, sent on connection `conn`,
    /// if the rules allow it (see the module docs), into the group commit being
    /// filled; does not wait for it to be durable. The batch may be answered once
    /// [`Ledger::settle_ticket`] says so. A connection may accept several batches
    /// before settling them (pipelining): each is checked against what was accepted
    /// before it.
    pub fn accept(
        &self,
        agency: AgencyId,
        conn: u64,
        upload: UploadId,
        seq: u64,
        line: u64,
        bets: impl Into<Vec<Bet>>,
    ) -> Result<Ticket, Refusal> {
        let bets: Vec<Bet> = bets.into();
        // Formatted outside the lock, on the connection's thread; the commit writes
        // these bytes as they are.
        let rows = Rows::of(agency, &bets);
        let digest = rows.digest();
        let mut state = lock(&self.state);
        if state.owners.get(&agency) != Some(&conn) {
            return Err(Refusal::Superseded);
        }
        if state.drawn.is_some() {
            return Err(Refusal::DrawDone);
        }
        if state.finished.contains(&agency) {
            return Err(Refusal::AgencyFinished);
        }
        let count = u32::try_from(bets.len()).unwrap_or(u32::MAX);
        let last = state.progress.get(&agency).cloned().unwrap_or_default();
        if last.bets > 0 && last.upload != upload && !is_adopted(&last) {
            return Err(Refusal::UploadConflict {
                stored: last.upload,
                bets: last.bets,
            });
        }
        let replay = last.last_seq > 0
            && seq == last.last_seq
            && count == last.last_count
            && digest == last.last_digest;
        if replay {
            // Acknowledged again once the batch is durable (it may be in a group that
            // is still syncing).
            return Ok(Ticket {
                stored: Stored::Replay,
                group: state.last_group.get(&agency).cloned(),
            });
        }
        let expected = last.last_seq.saturating_add(1);
        if seq != expected {
            return Err(Refusal::BadSeq { expected });
        }
        state
            .progress
            .entry(agency)
            .or_default()
            .advance(upload, seq, line, count, digest);
        state.pending.push(Pending {
            agency,
            upload,
            seq,
            line,
            bets,
            rows,
        });
        let group = Arc::clone(&state.filling);
        state.last_group.insert(agency, Arc::clone(&group));
        Ok(Ticket {
            stored: Stored::New,
            group: Some(group),
        })
    }

    /// Waits until the batch of `ticket` is durable (leading a group commit if no
    /// one else is committing): `Ok` once it is, the storage failure if its group
    /// failed (then nothing of it is stored).
    pub fn settle_ticket(&self, ticket: &Ticket) -> Result<Stored, Refusal> {
        if let Some(group) = &ticket.group {
            if let Some(outcome) = group.outcome.get() {
                // Settled already: no need for the lock.
                return outcome
                    .clone()
                    .map(|()| ticket.stored)
                    .map_err(Refusal::Storage);
            }
            let state = lock(&self.state);
            self.settle(state, group).1.map_err(Refusal::Storage)?;
        }
        Ok(ticket.stored)
    }

    /// Records `agency`'s `FIN` (durably, once), sent on connection `conn`. The `FIN`
    /// that completes the set of `1..=N` marks the draw (durably too) and tells its
    /// caller to run it.
    pub fn finish(
        &self,
        agency: AgencyId,
        conn: u64,
        winning_number: u16,
    ) -> Result<Finish, Refusal> {
        // Every batch of the agency is settled before its FIN: the N-th FIN is
        // ordered after every acknowledged batch. Ownership is checked after the
        // wait, which releases the lock (a takeover may happen meanwhile).
        let (mut state, settled) = self.settle_agency(lock(&self.state), agency);
        settled.map_err(Refusal::Storage)?;
        if state.owners.get(&agency) != Some(&conn) {
            return Err(Refusal::Superseded);
        }
        if !state.finished.contains(&agency) {
            lock(&self.store)
                .record_fin(agency)
                .map_err(|e| Refusal::Storage(Arc::new(e)))?;
            state.finished.insert(agency);
        }
        let finished = self.count_finished(&state);
        let draw_now = finished == self.agencies && state.drawn.is_none();
        let draw_unrecorded = if draw_now {
            self.mark_drawn(&mut state, winning_number)
        } else {
            None
        };
        Ok(Finish {
            finished,
            draw_now,
            draw_unrecorded,
        })
    }

    /// At start-up: if every agency's `FIN` is recorded but the draw is not (a crash
    /// between the two), marks it now. `None` if there is nothing to do, else
    /// `Some(Ok(()))` when the caller must run the draw, `Some(Err(why))` when the draw
    /// could not be journaled.
    pub fn draw_pending(&self, winning_number: u16) -> Option<Result<(), String>> {
        let mut state = lock(&self.state);
        let pending = state.drawn.is_none() && self.count_finished(&state) == self.agencies;
        if !pending {
            return None;
        }
        Some(match self.mark_drawn(&mut state, winning_number) {
            None => Ok(()),
            Some(why) => Err(why),
        })
    }

    /// Marks the draw in memory and journals it; returns why the journal write
    /// failed, if it did.
    fn mark_drawn(&self, state: &mut State, winning_number: u16) -> Option<String> {
        let record = DrawRecord {
            winning_number,
            bets: state.bets,
        };
        // Set in memory first: from here on no batch is accepted, whatever the disk
        // says. If the record cannot be written, no winners are answered in this run
        // (the caller is told); the next start-up finds every FIN and no draw, and
        // runs the draw over the same bets.
        state.drawn = Some(record);
        match lock(&self.store).record_draw(record) {
            Ok(()) => None,
            Err(e) => {
                log::error!("action: record_draw | result: fail | error: {e}");
                Some(e.to_string())
            }
        }
    }

    fn count_finished(&self, state: &State) -> u32 {
        let n = state
            .finished
            .iter()
            .filter(|a| (1..=self.agencies).contains(*a))
            .count();
        // At most `agencies` (a u32) ids are counted.
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether `agency`'s `FIN` is recorded.
    pub fn has_finished(&self, agency: AgencyId) -> bool {
        lock(&self.state).finished.contains(&agency)
    }

    /// The draw as recorded (or marked), if it ran.
    pub fn draw(&self) -> Option<DrawRecord> {
        lock(&self.state).drawn
    }

    /// Runs the draw over every stored bet, read through the store. Only once the
    /// draw is marked, so the bets can no longer change.
    pub fn compute_draw(&self) -> Result<(DrawResult, u64), StorageError> {
        let winning_number = lock(&self.state).drawn.map_or(0, |d| d.winning_number);
        storage::run_draw(lock(&self.store).as_mut(), winning_number)
    }

    /// Bets stored in total.
    pub fn bets(&self) -> u64 {
        lock(&self.state).bets
    }

    /// Who the draw still waits for, in one look: how many agencies finished (ids in
    /// `1..=N`), the first `limit` ids that have not, and how many have not.
    pub fn waiting_for(&self, limit: usize) -> (u32, Vec<AgencyId>, u32) {
        let state = lock(&self.state);
        let finished = self.count_finished(&state);
        let first = (1..=self.agencies)
            .filter(|a| !state.finished.contains(a))
            .take(limit)
            .collect();
        (finished, first, self.agencies - finished)
    }

    /// Every agency's state in one look (one critical section): connected now (a
    /// connection said `HELLO` for it and is open), bets stored, `FIN` recorded; and,
    /// when `draw` is given (the published result of the draw), each one's winner count.
    pub fn status(&self, draw: Option<&DrawResult>) -> StatusSnapshot {
        let state = lock(&self.state);
        let entries = (1..=self.agencies)
            .map(|agency| AgencyStatus {
                agency,
                connected: state.owners.contains_key(&agency),
                finished: state.finished.contains(&agency),
                bets: state.durable.get(&agency).map_or(0, |p| p.bets),
                winners: draw
                    .map(|d| u32::try_from(d.winners_of(agency).len()).unwrap_or(u32::MAX)),
            })
            .collect();
        StatusSnapshot {
            agencies: self.agencies,
            finished: self.count_finished(&state),
            drawn: draw.is_some(),
            entries,
        }
    }

    /// The store's description for logs (its path).
    pub fn describe(&self) -> String {
        lock(&self.store).describe()
    }
}

/// Whether an agency's stored bets are only bets adopted from a journal-less bets
/// file (an older run): they belong to no known upload yet.
fn is_adopted(progress: &AgencyProgress) -> bool {
    progress.upload == ADOPTED_UPLOAD && progress.last_seq == 0 && progress.bets > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemoryStore, Recovered};
    use chrono::NaiveDate;

    fn bet(doc: &str, number: u16) -> Bet {
        Bet {
            first_name: "Ana".into(),
            last_name: "Paz".into(),
            document: doc.into(),
            birthdate: NaiveDate::from_ymd_opt(1990, 1, 2).expect("valid date"),
            number,
        }
    }

    fn ledger(agencies: u32) -> Ledger {
        Ledger::new(Box::<MemoryStore>::default(), agencies)
    }

    #[test]
    fn batches_are_stored_in_order_and_only_in_order() {
        let l = ledger(2);
        l.hello(1, 77, 10).expect("newer connection");
        assert!(matches!(
            l.store(1, 10, 77, 1, 0, &[bet("1", 1)]),
            Ok(Stored::New)
        ));
        assert!(matches!(
            l.store(1, 10, 77, 3, 0, &[bet("3", 3)]),
            Err(Refusal::BadSeq { expected: 2 })
        ));
        // The adversarial batch of the issue: seq = 2^64-1 is refused, not "a replay".
        assert!(matches!(
            l.store(1, 10, 77, u64::MAX, 0, &[bet("x", 3)]),
            Err(Refusal::BadSeq { expected: 2 })
        ));
        assert!(matches!(
            l.store(1, 10, 77, 2, 0, &[bet("2", 2)]),
            Ok(Stored::New)
        ));
        assert_eq!(l.bets(), 2);
    }

    #[test]
    fn only_a_true_replay_of_the_last_batch_is_acknowledged_again() {
        let l = ledger(1);
        l.hello(1, 5, 1).expect("newer connection");
        let batch = [bet("1", 1), bet("2", 2)];
        assert!(matches!(l.store(1, 1, 5, 1, 0, &batch), Ok(Stored::New)));
        assert!(matches!(l.store(1, 1, 5, 1, 0, &batch), Ok(Stored::Replay)));
        // Same seq, other content: refused.
        assert!(matches!(
            l.store(1, 1, 5, 1, 0, &[bet("9", 9)]),
            Err(Refusal::BadSeq { expected: 2 })
        ));
        assert_eq!(l.bets(), 2);
        let welcome = l.hello(1, 5, 2).expect("newer connection");
        assert_eq!((welcome.stored_seq, welcome.stored_bets), (1, 2));
        assert_eq!(welcome.superseded, Some(1));
    }

    #[test]
    fn a_superseded_connection_can_neither_store_nor_finish() {
        let l = ledger(1);
        l.hello(1, 5, 1).expect("newer connection");
        l.hello(1, 5, 2).expect("newer connection");
        assert!(matches!(
            l.store(1, 1, 5, 1, 0, &[bet("1", 1)]),
            Err(Refusal::Superseded)
        ));
        assert!(matches!(l.finish(1, 1, 7574), Err(Refusal::Superseded)));
        assert!(matches!(
            l.store(1, 2, 5, 1, 0, &[bet("1", 1)]),
            Ok(Stored::New)
        ));
        // Releasing the old connection does not release the new owner.
        l.release(1, 1);
        assert!(matches!(
            l.store(1, 2, 5, 2, 0, &[bet("2", 1)]),
            Ok(Stored::New)
        ));
    }

    #[test]
    fn a_late_hello_of_an_older_connection_does_not_take_over() {
        let l = ledger(1);
        assert!(l.hello(1, 5, 2).is_some());
        // Connection 1 was accepted first but its HELLO is handled last: it is stale.
        assert!(l.hello(1, 5, 1).is_none());
        assert!(matches!(
            l.store(1, 1, 5, 1, 0, &[bet("1", 1)]),
            Err(Refusal::Superseded)
        ));
        assert!(matches!(
            l.store(1, 2, 5, 1, 0, &[bet("1", 1)]),
            Ok(Stored::New)
        ));
        // A repeated HELLO on the owning connection changes nothing.
        assert_eq!(l.hello(1, 5, 2).map(|w| w.superseded), Some(None));
    }

    #[test]
    fn owners_counts_one_connection_per_agency() {
        let l = ledger(3);
        assert_eq!(l.owners(), 0);
        l.hello(1, 5, 1).expect("first connection");
        l.hello(2, 5, 2).expect("first connection");
        assert_eq!(l.owners(), 2);
        // Takeovers, a stale HELLO and a repeated one: still one owner per agency.
        l.hello(1, 5, 3).expect("newer connection");
        assert!(l.hello(1, 5, 2).is_none());
        l.hello(1, 5, 3).expect("same connection");
        assert_eq!(l.owners(), 2);
        // The superseded connection's end releases nothing; the owner's does.
        l.release(1, 1);
        assert_eq!(l.owners(), 2);
        l.release(1, 3);
        assert_eq!(l.owners(), 1);
    }

    #[test]
    fn the_line_of_the_last_batch_is_reported() {
        let l = ledger(1);
        l.hello(1, 5, 1).expect("first connection");
        assert!(matches!(
            l.store(1, 1, 5, 1, 3, &[bet("1", 1)]),
            Ok(Stored::New)
        ));
        assert!(matches!(
            l.store(1, 1, 5, 2, 9, &[bet("2", 1)]),
            Ok(Stored::New)
        ));
        let w = l.hello(1, 5, 2).expect("newer connection");
        assert_eq!((w.stored_seq, w.stored_bets, w.stored_line), (2, 2, 9));
    }

    #[test]
    fn another_upload_of_an_agency_with_bets_is_a_conflict() {
        let l = ledger(1);
        l.hello(1, 5, 1).expect("newer connection");
        assert!(matches!(
            l.store(1, 1, 5, 1, 0, &[bet("1", 1)]),
            Ok(Stored::New)
        ));
        let welcome = l.hello(1, 6, 2).expect("newer connection");
        assert_eq!(welcome.upload, 5);
        assert!(matches!(
            l.store(1, 2, 6, 1, 0, &[bet("1", 1)]),
            Err(Refusal::UploadConflict { stored: 5, bets: 1 })
        ));
        // An agency with nothing stored may start any upload.
        let l = ledger(1);
        assert_eq!(l.hello(1, 6, 1).map(|w| w.upload), Some(6));
    }

    #[test]
    fn adopted_bets_are_the_start_of_whatever_upload_goes_on() {
        let mut recovered = Recovered::default();
        recovered.agencies.insert(
            1,
            AgencyProgress {
                upload: ADOPTED_UPLOAD,
                bets: 5,
                ..AgencyProgress::default()
            },
        );
        recovered.bets = 5;
        let store = MemoryStore::with_recovered(recovered);
        let l = Ledger::new(Box::new(store), 1);
        let w = l.hello(1, 0xF11E, 1).expect("first connection");
        assert_eq!(
            (w.upload, w.stored_seq, w.stored_bets, w.stored_line),
            (0xF11E, 0, 5, 0)
        );
        assert!(matches!(
            l.store(1, 1, 0xF11E, 1, 9, &[bet("6", 1)]),
            Ok(Stored::New)
        ));
        // From then on the agency's bets belong to that upload.
        let w = l.hello(1, 0xBEEF, 2).expect("newer connection");
        assert_eq!((w.upload, w.stored_bets, w.stored_line), (0xF11E, 6, 9));
        assert!(matches!(
            l.store(1, 2, 0xBEEF, 2, 10, &[bet("7", 1)]),
            Err(Refusal::UploadConflict {
                stored: 0xF11E,
                bets: 6
            })
        ));
    }

    #[test]
    fn the_nth_fin_marks_the_draw_once_and_closes_the_ledger() {
        let l = ledger(2);
        l.hello(1, 5, 1).expect("newer connection");
        l.hello(2, 6, 2).expect("newer connection");
        assert!(matches!(
            l.store(1, 1, 5, 1, 0, &[bet("1", 7574)]),
            Ok(Stored::New)
        ));
        let f = l.finish(1, 1, 7574).expect("fin");
        assert_eq!((f.finished, f.draw_now), (1, false));
        let f = l.finish(1, 1, 7574).expect("repeated fin");
        assert_eq!((f.finished, f.draw_now), (1, false));
        assert!(matches!(
            l.store(1, 1, 5, 2, 0, &[bet("2", 1)]),
            Err(Refusal::AgencyFinished)
        ));
        let f = l.finish(2, 2, 7574).expect("fin");
        assert_eq!((f.finished, f.draw_now), (2, true));
        assert!(!l.finish(2, 2, 7574).expect("fin").draw_now);
        assert!(matches!(
            l.store(2, 2, 6, 1, 0, &[bet("2", 1)]),
            Err(Refusal::DrawDone)
        ));
        let (draw, count) = l.compute_draw().expect("draw");
        assert_eq!((count, draw.winners_of(1).len()), (1, 1));
    }

    /// A store that blocks its first commit until told, and counts the batches of
    /// each commit.
    struct Gated {
        inner: MemoryStore,
        commits: Arc<Mutex<Vec<usize>>>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
        entered: std::sync::mpsc::Sender<()>,
    }

    impl Store for Gated {
        fn recovered(&self) -> &crate::storage::Recovered {
            self.inner.recovered()
        }
        fn commit(&mut self, batches: &[Batch<'_>]) -> Result<(), StorageError> {
            let _ = self.entered.send(());
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            lock(&self.commits).push(batches.len());
            self.inner.commit(batches)
        }
        fn record_fin(&mut self, agency: AgencyId) -> Result<(), StorageError> {
            self.inner.record_fin(agency)
        }
        fn record_draw(&mut self, draw: DrawRecord) -> Result<(), StorageError> {
            self.inner.record_draw(draw)
        }
        fn for_each_bet(&mut self, f: &mut dyn FnMut(AgencyId, Bet)) -> Result<u64, StorageError> {
            self.inner.for_each_bet(f)
        }
        fn describe(&self) -> String {
            "gated".into()
        }
    }

    #[test]
    fn batches_that_arrive_while_a_commit_syncs_share_the_next_commit() {
        let (open, gate) = std::sync::mpsc::channel();
        let (entered, entering) = std::sync::mpsc::channel();
        let commits = Arc::new(Mutex::new(Vec::new()));
        let store = Gated {
            inner: MemoryStore::default(),
            commits: Arc::clone(&commits),
            gate: Some(gate),
            entered,
        };
        let l = Arc::new(Ledger::new(Box::new(store), 3));
        for a in 1..=3 {
            l.hello(a, 5, u64::from(a)).expect("newer connection");
        }
        let store_one = |agency: AgencyId| {
            let l = Arc::clone(&l);
            std::thread::spawn(move || l.store(agency, u64::from(agency), 5, 1, 0, &[bet("1", 1)]))
        };
        // Agency 1 leads the first commit, which blocks in the store.
        let first = store_one(1);
        entering.recv().expect("the first commit starts");
        // Agencies 2 and 3 arrive while it syncs: they fill the next group.
        let others = [store_one(2), store_one(3)];
        while lock(&l.state).pending.len() < 2 {
            std::thread::yield_now();
        }
        open.send(()).expect("open the gate");
        assert!(matches!(first.join().expect("agency 1"), Ok(Stored::New)));
        for other in others {
            assert!(matches!(other.join().expect("agency"), Ok(Stored::New)));
        }
        assert_eq!(
            *lock(&commits),
            vec![1, 2],
            "one commit for both late batches"
        );
        assert_eq!(l.bets(), 3);
    }

    #[test]
    fn committed_batches_are_kept_for_reuse_unless_their_text_is_large() {
        let l = ledger(1);
        l.hello(1, 77, 10).expect("newer connection");
        assert_eq!(l.spare_batch().capacity(), 0, "nothing committed yet");
        let ordinary: Vec<Bet> = (0..100).map(|i| bet(&i.to_string(), 1)).collect();
        assert!(matches!(
            l.store(1, 10, 77, 1, 0, ordinary),
            Ok(Stored::New)
        ));
        let spare = l.spare_batch();
        assert_eq!(
            spare.len(),
            100,
            "the committed batch's bets, to be refilled"
        );
        assert_eq!(l.spare_batch().capacity(), 0, "handed out once");
        let mut long = bet("2", 2);
        long.first_name = "A".repeat(MAX_SPARE_TEXT);
        assert!(matches!(
            l.store(1, 10, 77, 2, 0, vec![long]),
            Ok(Stored::New)
        ));
        assert_eq!(
            l.spare_batch().capacity(),
            0,
            "a batch of long names is not kept"
        );
    }

    #[test]
    fn a_failed_group_fails_the_batches_behind_it_and_the_view_goes_back_to_durable() {
        let l = Ledger::new(Box::new(MemoryStore::new().fail_next_write()), 2);
        l.hello(1, 5, 1).expect("newer connection");
        l.hello(2, 6, 2).expect("newer connection");
        assert!(matches!(
            l.store(1, 1, 5, 1, 0, &[bet("1", 1)]),
            Err(Refusal::Storage(_))
        ));
        // Nothing of the failed batch is in the view: seq 1 is expected again.
        assert!(matches!(
            l.store(1, 1, 5, 2, 0, &[bet("2", 2)]),
            Err(Refusal::BadSeq { expected: 1 })
        ));
        assert!(matches!(
            l.store(2, 2, 6, 1, 0, &[bet("3", 3)]),
            Ok(Stored::New)
        ));
        let w = l.hello(1, 5, 3).expect("newer connection");
        assert_eq!((w.stored_seq, w.stored_bets), (0, 0));
        assert_eq!(l.bets(), 1);
    }

    #[test]
    fn a_failed_write_records_nothing() {
        let store = MemoryStore::new().fail_next_write();
        let l = Ledger::new(Box::new(store), 1);
        l.hello(1, 5, 1).expect("newer connection");
        assert!(matches!(
            l.store(1, 1, 5, 1, 0, &[bet("1", 1)]),
            Err(Refusal::Storage(_))
        ));
        assert_eq!(l.bets(), 0);
        assert!(matches!(
            l.store(1, 1, 5, 1, 0, &[bet("1", 1)]),
            Ok(Stored::New)
        ));
    }

    #[test]
    fn state_is_rebuilt_from_what_the_store_recovered() {
        let mut recovered = Recovered::default();
        recovered.agencies.insert(
            1,
            AgencyProgress {
                upload: 5,
                last_seq: 3,
                last_count: 2,
                last_digest: 9,
                last_line: 7,
                bets: 6,
            },
        );
        recovered.finished.insert(1);
        recovered.finished.insert(2);
        recovered.bets = 6;
        let store = MemoryStore::with_recovered(recovered);
        let l = Ledger::new(Box::new(store), 2);
        let w = l.hello(1, 5, 1).expect("newer connection");
        assert_eq!(
            (w.upload, w.stored_seq, w.stored_bets, w.finished),
            (5, 3, 6, true)
        );
        // Every FIN recorded, no draw: the start-up runs it, once.
        assert_eq!(l.draw_pending(7574), Some(Ok(())));
        assert_eq!(l.draw_pending(7574), None);
        assert_eq!(l.draw().map(|d| d.bets), Some(6));
    }

    #[test]
    fn waiting_for_names_the_first_missing_agencies() {
        let l = ledger(4);
        l.hello(2, 5, 1).expect("first connection");
        l.finish(2, 1, 7574).expect("fin");
        assert_eq!(l.waiting_for(2), (1, vec![1, 3], 3));
        assert_eq!(l.waiting_for(10), (1, vec![1, 3, 4], 3));
    }

    #[test]
    fn status_reports_every_agency_in_one_snapshot() {
        let l = ledger(3);
        l.hello(1, 5, 1).expect("first connection");
        l.hello(3, 6, 2).expect("first connection");
        assert!(matches!(
            l.store(1, 1, 5, 1, 0, &[bet("1", 7574), bet("2", 1)]),
            Ok(Stored::New)
        ));
        l.finish(1, 1, 7574).expect("fin");
        l.release(3, 2);
        let snap = l.status(None);
        assert_eq!((snap.agencies, snap.finished, snap.drawn), (3, 1, false));
        let rows: Vec<_> = snap
            .entries
            .iter()
            .map(|e| (e.agency, e.connected, e.finished, e.bets, e.winners))
            .collect();
        assert_eq!(
            rows,
            vec![
                (1, true, true, 2, None),
                (2, false, false, 0, None),
                (3, false, false, 0, None)
            ]
        );
        assert_eq!(snap.missing(), vec![2, 3]);
        l.hello(2, 7, 3).expect("first connection");
        l.finish(2, 3, 7574).expect("fin");
        l.hello(3, 6, 4).expect("newer connection");
        assert!(l.finish(3, 4, 7574).expect("fin").draw_now);
        let (draw, _) = l.compute_draw().expect("draw");
        let snap = l.status(Some(&draw));
        assert!(snap.drawn);
        let winners: Vec<_> = snap.entries.iter().map(|e| e.winners).collect();
        assert_eq!(winners, vec![Some(1), Some(0), Some(0)]);
    }
}
