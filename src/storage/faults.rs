//! Fault injection for the crash and I/O-error tests: a hook that the store consults
//! before each step of a write. Production code passes [`Faults::none`].

use std::fmt;
use std::io;
use std::sync::Arc;

/// A step of a durable write, in the order the store performs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Writing a commit's rows to the bets file.
    WriteRows,
    /// Syncing the bets file.
    SyncRows,
    /// Writing a journal record.
    WriteRecord,
    /// Syncing the journal.
    SyncRecord,
}

/// What the hook wants to happen at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Do the step.
    Proceed,
    /// The step fails with this I/O error kind (as a full disk or a bad sector would);
    /// the store handles it as it handles a real error.
    Fail(io::ErrorKind),
    /// The process "dies" just before the step: the store performs no more I/O at
    /// all (no rollback) and fails this and every later call.
    Crash,
    /// A write step writes only this many bytes of what it should, then the process
    /// "dies" as with [`FaultAction::Crash`]. At a sync step it is a plain crash.
    TornWrite(usize),
}

/// The fault hook.
#[derive(Clone, Default)]
pub struct Faults {
    hook: Option<Arc<dyn Fn(Step) -> FaultAction + Send + Sync>>,
}

impl Faults {
    /// No faults: every step proceeds.
    pub fn none() -> Faults {
        Faults { hook: None }
    }

    /// Calls `hook` before every step.
    pub fn with(hook: impl Fn(Step) -> FaultAction + Send + Sync + 'static) -> Faults {
        Faults {
            hook: Some(Arc::new(hook)),
        }
    }

    /// What to do at `step`.
    pub fn at(&self, step: Step) -> FaultAction {
        self.hook.as_ref().map_or(FaultAction::Proceed, |h| h(step))
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.hook.is_some() {
            "Faults(hooked)"
        } else {
            "Faults(none)"
        })
    }
}
