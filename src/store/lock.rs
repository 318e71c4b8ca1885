//! `data.dir` belongs to one process at a time: two gateways on one directory would both resume
//! the same jobs (and poll, settle and bill them twice). [`DataLock`] holds an exclusive lock on
//! `imagegate.lock` for the life of the process; the file names the holder (its pid), and a
//! second process on the same directory refuses to start, naming it. The operating system drops
//! the lock when the process dies, even by SIGKILL, so no stale lock is left behind.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

/// The lock file inside `data.dir`.
pub const LOCK_FILE: &str = "imagegate.lock";

#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

impl DataLock {
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("data.dir: cannot open {}: {e}", path.display()))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            anyhow::bail!(
                "data.dir {} is in use by another imagegate process ({}); two processes on one data directory would resume the same jobs twice",
                dir.display(),
                if holder.is_empty() { "unknown pid" } else { holder }
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "pid {}", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataLock::acquire(dir.path()).unwrap();
        let e = DataLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        DataLock::acquire(dir.path()).unwrap();
    }
}
