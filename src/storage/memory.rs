//! [`MemoryStore`]: a [`Store`] that keeps everything in memory and nothing on disk.
//!
//! For tests and fuzzing only: it is "durable" for as long as the process lives, so it
//! gives a server the storage contract's answers without any file I/O, and lets the
//! caller look at what was committed after the store was moved into the server (a
//! [`MemoryView`]). It never fails unless told to ([`MemoryStore::fail_next_write`]).

use std::sync::{Arc, Mutex};

use super::{Batch, DrawRecord, Recovered, StorageError, Store, UploadId};
use crate::bet::{AgencyId, Bet};
use crate::shutdown::lock;

/// One committed batch, as a [`MemoryStore`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// The agency the bets belong to.
    pub agency: AgencyId,
    /// The upload the batch belongs to.
    pub upload: UploadId,
    /// The batch's sequence number within the upload.
    pub seq: u64,
    /// The agency-file line of the batch's last bet (0: from no file).
    pub line: u64,
    /// The batch's content digest.
    pub digest: u32,
    /// The bets, in order.
    pub bets: Vec<Bet>,
}

/// Everything a [`MemoryStore`] recorded, in call order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryContents {
    /// Every committed batch.
    pub batches: Vec<StoredBatch>,
    /// Every recorded `FIN` (repeats included, as the store was called).
    pub fins: Vec<AgencyId>,
    /// Every recorded draw.
    pub draws: Vec<DrawRecord>,
}

/// A store in memory: keeps nothing on disk; for tests and fuzzing.
#[derive(Debug, Default)]
pub struct MemoryStore {
    recovered: Recovered,
    contents: Arc<Mutex<MemoryContents>>,
    fail_next: bool,
}

/// A handle on what a [`MemoryStore`] holds that stays usable after the store itself
/// was handed to a server (and dropped by it).
#[derive(Debug, Clone)]
pub struct MemoryView(Arc<Mutex<MemoryContents>>);

impl MemoryView {
    /// A copy of everything recorded so far.
    pub fn contents(&self) -> MemoryContents {
        lock(&self.0).clone()
    }
}

impl MemoryStore {
    /// An empty store: nothing recovered, nothing recorded.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store that reports `recovered` as what it held when opened (the recorded
    /// contents still start empty).
    pub fn with_recovered(recovered: Recovered) -> MemoryStore {
        MemoryStore {
            recovered,
            ..MemoryStore::default()
        }
    }

    /// Makes the next write (commit, `FIN` or draw) fail with an I/O error, recording
    /// nothing; the writes after it succeed again.
    pub fn fail_next_write(mut self) -> MemoryStore {
        self.fail_next = true;
        self
    }

    /// A view of the store's contents (see [`MemoryView`]).
    pub fn view(&self) -> MemoryView {
        MemoryView(Arc::clone(&self.contents))
    }

    fn check(&mut self) -> Result<(), StorageError> {
        if std::mem::take(&mut self.fail_next) {
            return Err(StorageError::Io {
                path: "memory".into(),
                action: "write",
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    fn commit(&mut self, batches: &[Batch<'_>]) -> Result<(), StorageError> {
        self.check()?;
        let mut contents = lock(&self.contents);
        contents.batches.extend(batches.iter().map(|b| StoredBatch {
            agency: b.agency,
            upload: b.upload,
            seq: b.seq,
            line: b.line,
            digest: b.digest,
            bets: b.bets.to_vec(),
        }));
        Ok(())
    }

    fn record_fin(&mut self, agency: AgencyId) -> Result<(), StorageError> {
        self.check()?;
        lock(&self.contents).fins.push(agency);
        Ok(())
    }

    fn record_draw(&mut self, draw: DrawRecord) -> Result<(), StorageError> {
        self.check()?;
        lock(&self.contents).draws.push(draw);
        Ok(())
    }

    fn for_each_bet(&mut self, f: &mut dyn FnMut(AgencyId, Bet)) -> Result<u64, StorageError> {
        // Copied out first: `f` runs without the lock held.
        let batches = lock(&self.contents).batches.clone();
        let mut count = 0;
        for batch in batches {
            for bet in batch.bets {
                f(batch.agency, bet);
                count += 1;
            }
        }
        Ok(count)
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn bet(doc: &str) -> Bet {
        Bet {
            first_name: "Ana".into(),
            last_name: "Paz".into(),
            document: doc.into(),
            birthdate: NaiveDate::from_ymd_opt(1990, 1, 2).expect("valid date"),
            number: 7,
        }
    }

    #[test]
    fn records_what_it_is_given_and_the_view_outlives_it() {
        let mut store = MemoryStore::new();
        let view = store.view();
        let bets = [bet("1"), bet("2")];
        let batch = Batch {
            agency: 2,
            upload: 9,
            seq: 1,
            line: 3,
            digest: 5,
            bets: &bets,
            rows: None,
        };
        store.commit(&[batch]).expect("commit");
        store.record_fin(2).expect("fin");
        let mut seen = Vec::new();
        let count = store
            .for_each_bet(&mut |agency, bet| seen.push((agency, bet.document)))
            .expect("read");
        assert_eq!(count, 2);
        assert_eq!(seen, vec![(2, "1".to_string()), (2, "2".to_string())]);
        drop(store);
        let contents = view.contents();
        assert_eq!(contents.fins, vec![2]);
        assert_eq!(
            contents.batches,
            vec![StoredBatch {
                agency: 2,
                upload: 9,
                seq: 1,
                line: 3,
                digest: 5,
                bets: bets.to_vec(),
            }]
        );
    }

    #[test]
    fn an_injected_failure_records_nothing_once() {
        let mut store = MemoryStore::new().fail_next_write();
        let view = store.view();
        assert!(store.record_fin(1).is_err());
        assert!(view.contents().fins.is_empty());
        store.record_fin(1).expect("the next write succeeds");
        assert_eq!(view.contents().fins, vec![1]);
    }
}
