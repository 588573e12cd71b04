//! One control plane per data dir.
//!
//! `serve` (and the demo) take an exclusive `flock` on `control.lock` in the
//! data dir before they open the store or touch the router, and hold it for
//! their whole life. The kernel drops the lock when the process dies, kill -9
//! included, so a crashed control plane never blocks its successor. The file
//! also names the holder (pid and API address) so a second `serve` can say who
//! is in the way.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data dir.
const LOCK_FILE: &str = "control.lock";

/// Another control plane holds the data dir. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error(
    "another baton control plane already runs on data dir {} ({holder}); \
     stop it first (`baton down`, or SIGTERM to that pid) or use another --data-dir",
    data_dir.display()
)]
pub struct DataDirBusy {
    pub data_dir: PathBuf,
    /// What the holder wrote into the lock file, e.g. `pid 1234, API 127.0.0.1:7077`.
    pub holder: String,
}

/// The held lock; released when dropped or when the process exits.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    pid: u32,
}

impl DataDirLock {
    /// Take the data dir's lock, or fail with [`DataDirBusy`] naming the holder.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<DataDirLock> {
        Self::acquire_named(data_dir, LOCK_FILE)
    }

    /// Take the lock file `name` in `dir` (a node holds `node.lock` in its own).
    pub fn acquire_named(data_dir: &Path, name: &str) -> anyhow::Result<DataDirLock> {
        let path = data_dir.join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(DataDirBusy {
                    data_dir: data_dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "its pid is not recorded yet".into()
                    } else {
                        holder.to_string()
                    },
                }
                .into());
            }
            Err(TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock {}: {e}", path.display())
            }
        }
        let mut lock = DataDirLock {
            file,
            pid: std::process::id(),
        };
        lock.record(None)?;
        Ok(lock)
    }

    /// Write who holds the lock (and, once bound, the API address) into the file.
    pub fn record(&mut self, api: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
        let text = match api {
            Some(a) => format!("pid {}, API {a}\n", self.pid),
            None => format!("pid {}\n", self.pid),
        };
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.flush()?;
        Ok(())
    }
}

impl Drop for DataDirLock {
    /// Unlock explicitly instead of relying on the close: a process forked by
    /// another thread (a hook, a test's helper) shares the open file until it
    /// execs, and the lock would outlive this handle for that moment.
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("baton-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut first = DataDirLock::acquire(&dir).unwrap();
        first
            .record(Some("127.0.0.1:7077".parse().unwrap()))
            .unwrap();
        let err = DataDirLock::acquire(&dir).unwrap_err();
        let busy = err
            .downcast_ref::<DataDirBusy>()
            .expect("a DataDirBusy error");
        assert_eq!(
            busy.holder,
            format!("pid {}, API 127.0.0.1:7077", std::process::id())
        );
        drop(first);
        // Released: the next one gets it.
        let again = DataDirLock::acquire(&dir);
        assert!(again.is_ok(), "{again:?}");
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
