//! Storage for the heavy tests: a [`TempDir`] in `/dev/shm` when it exists (a
//! memory file system, where the store's `fsync`s are cheap), else the usual one.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::TempDir;

/// A directory in `/dev/shm` (falling back to the system temp dir), removed on drop.
pub fn fast_dir(name: &str) -> TempDir {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return TempDir::new(name);
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = shm.join(format!(
        "loteria-test-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    match fs::create_dir_all(&dir) {
        Ok(()) => TempDir(dir),
        Err(_) => TempDir::new(name),
    }
}
