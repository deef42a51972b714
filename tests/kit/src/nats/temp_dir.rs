//! A private directory under the system temp dir, removed when dropped: a local server's
//! configuration files, and the certificates and credentials files a test hands to clients.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A new, empty directory unique to this process and call; dropping it removes it and
/// everything in it.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp>/<prefix>-<pid>-<n>-<nanos>`. Panics if it cannot.
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let root = std::env::temp_dir();
        let path = root.join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        fs::create_dir_all(&root)
            .and_then(|()| fs::create_dir(&path))
            .unwrap_or_else(|e| panic!("cannot create the directory {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to the file `name` in the directory and returns its path. Panics if
    /// `name` is not a plain file name or the write fails.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        assert!(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "{name:?} is not a plain file name"
        );
        let path = self.path.join(name);
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
