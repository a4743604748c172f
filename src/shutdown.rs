//! Graceful shutdown: a handle that can be triggered once and woken on, and the
//! `signal-hook` thread that triggers it on SIGTERM or SIGINT.
//!
//! Blocking code cannot poll a flag while it sits in `accept`, `read` or a `Condvar`
//! wait, so [`Shutdown`] also runs *hooks* when triggered: the server's hook shuts its
//! sockets down and notifies its condition variables, the client's hook shuts its
//! stream down. Every blocked call then returns and its thread winds down on its own.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

type Hook = Box<dyn Fn() + Send + Sync>;

/// A cloneable shutdown switch. Triggering it is permanent.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    triggered: AtomicBool,
    next_hook: AtomicU64,
    hooks: Mutex<Vec<(u64, Arc<Hook>)>>,
    sleep_lock: Mutex<()>,
    sleepers: Condvar,
}

/// Keeps a hook registered; dropping it unregisters the hook.
#[must_use = "dropping the guard unregisters the hook at once"]
pub struct HookGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

/// Locks a mutex even if a thread panicked while holding it: the data guarded with
/// this helper stays consistent at every step, so a poisoned lock is still usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shutdown {
    /// A switch that has not been triggered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Whether shutdown has been requested.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Requests shutdown: sets the flag, wakes every [`Shutdown::sleep`] and runs every
    /// registered hook once. Later calls do nothing.
    pub fn trigger(&self) {
        if self.inner.triggered.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let _guard = lock(&self.inner.sleep_lock);
            self.inner.sleepers.notify_all();
        }
        // Run the hooks outside the lock: a hook may register or drop other hooks.
        let hooks: Vec<Arc<Hook>> = lock(&self.inner.hooks)
            .iter()
            .map(|(_, hook)| Arc::clone(hook))
            .collect();
        for hook in hooks {
            hook();
        }
    }

    /// Registers `hook` to run when shutdown is triggered. If it already was, the hook
    /// runs right away.
    pub fn on_trigger<F>(&self, hook: F) -> HookGuard
    where
        F: Fn() + Send + Sync + 'static,
    {
        let id = self.inner.next_hook.fetch_add(1, Ordering::SeqCst);
        let hook: Arc<Hook> = Arc::new(Box::new(hook));
        {
            let mut hooks = lock(&self.inner.hooks);
            // Checked under the lock `trigger` takes *after* setting the flag: either
            // the flag is already set (run the hook here, do not list it) or
            // `trigger` will find the hook in the list. Never both, never neither.
            if !self.is_triggered() {
                hooks.push((id, Arc::clone(&hook)));
                return HookGuard {
                    inner: Arc::clone(&self.inner),
                    id,
                };
            }
        }
        hook();
        HookGuard {
            inner: Arc::clone(&self.inner),
            id,
        }
    }

    /// Sleeps for `duration` or until shutdown, whichever comes first. Returns `true`
    /// when woken by shutdown.
    pub fn sleep(&self, duration: Duration) -> bool {
        let guard = lock(&self.inner.sleep_lock);
        let (_guard, _timeout) = self
            .inner
            .sleepers
            .wait_timeout_while(guard, duration, |_| !self.is_triggered())
            .unwrap_or_else(PoisonError::into_inner);
        self.is_triggered()
    }
}

impl Drop for HookGuard {
    fn drop(&mut self) {
        lock(&self.inner.hooks).retain(|(id, _)| *id != self.id);
    }
}

/// The thread that turns SIGTERM and SIGINT into [`Shutdown::trigger`].
///
/// Call [`SignalThread::stop`] when the program is done to end and join it.
pub struct SignalThread {
    handle: Handle,
    thread: JoinHandle<()>,
}

impl SignalThread {
    /// Installs the signal handlers and starts the thread.
    pub fn start(shutdown: Shutdown) -> std::io::Result<SignalThread> {
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let name = if signal == SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    };
                    log::info!("action: signal | result: success | signal: {name}");
                    shutdown.trigger();
                }
            })?;
        Ok(SignalThread { handle, thread })
    }

    /// Stops listening for signals and joins the thread.
    pub fn stop(self) {
        self.handle.close();
        if self.thread.join().is_err() {
            log::error!("action: close_signal_thread | result: fail | error: thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    #[test]
    fn hooks_run_once_on_trigger() {
        let shutdown = Shutdown::new();
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        let _guard = shutdown.on_trigger(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        shutdown.trigger();
        assert!(shutdown.is_triggered());
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn late_hooks_run_at_once_and_dropped_hooks_never() {
        let shutdown = Shutdown::new();
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        drop(shutdown.on_trigger(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        shutdown.trigger();
        assert_eq!(
            count.load(Ordering::SeqCst),
            0,
            "unregistered hook stayed quiet"
        );
        let c = Arc::clone(&count);
        let _guard = shutdown.on_trigger(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "late hook ran on registration"
        );
    }

    #[test]
    fn sleep_is_cut_short_by_trigger() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.sleep(Duration::from_millis(1)));
        let s = shutdown.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s.trigger();
        });
        let start = Instant::now();
        assert!(shutdown.sleep(Duration::from_secs(600)));
        assert!(start.elapsed() < Duration::from_secs(600));
        waker.join().expect("waker thread");
    }
}
