//! One lock per artifact, held while it is fetched, verified or evicted: an async mutex per path
//! inside the process (waiters sleep instead of polling) and an exclusive `flock` (fs4) on
//! `<dest>.lock` across processes sharing the models dir. The lock file is removed while still
//! locked when the guard drops; a waiter that then locks the removed file notices (the path no
//! longer names the file it holds) and starts over, so two holders can never coexist.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::error::FetchError;
use crate::layout::lock_path;

type Slot = Arc<AsyncMutex<()>>;

/// The in-process half: one async mutex per destination path.
#[derive(Debug, Default)]
pub(crate) struct LockMap {
    slots: Mutex<HashMap<PathBuf, Slot>>,
}

/// Holds both halves; dropping it removes the lock file and releases both.
#[derive(Debug)]
pub(crate) struct ArtifactGuard {
    map: Arc<LockMap>,
    key: PathBuf,
    in_process: Option<OwnedMutexGuard<()>>,
    file: Option<File>,
    lock_file: PathBuf,
}

impl LockMap {
    fn slot(&self, key: &Path) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.to_path_buf()).or_default().clone()
    }
}

/// Waits for the artifact at `dest` (creating its parent directory).
pub(crate) async fn lock(map: &Arc<LockMap>, dest: &Path) -> Result<ArtifactGuard, FetchError> {
    let in_process = map.slot(dest).lock_owned().await;
    let mut guard = ArtifactGuard {
        map: map.clone(),
        key: dest.to_path_buf(),
        in_process: Some(in_process),
        file: None,
        lock_file: lock_path(dest),
    };
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(file) = try_file_lock(&guard.lock_file)? {
            guard.file = Some(file);
            return Ok(guard);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Takes the artifact's lock only if it is free now.
pub(crate) fn try_lock(
    map: &Arc<LockMap>,
    dest: &Path,
) -> Result<Option<ArtifactGuard>, FetchError> {
    let Ok(in_process) = map.slot(dest).try_lock_owned() else {
        // Drop the slot we may have just created if nobody else holds it.
        map.release(dest);
        return Ok(None);
    };
    let mut guard = ArtifactGuard {
        map: map.clone(),
        key: dest.to_path_buf(),
        in_process: Some(in_process),
        file: None,
        lock_file: lock_path(dest),
    };
    match try_file_lock(&guard.lock_file)? {
        Some(file) => {
            guard.file = Some(file);
            Ok(Some(guard))
        }
        None => Ok(None),
    }
}

/// One attempt at the file lock; `None` while another holder has it.
fn try_file_lock(lock_file: &Path) -> Result<Option<File>, FetchError> {
    if let Some(parent) = lock_file.parent() {
        std::fs::create_dir_all(parent).map_err(|e| FetchError::io(parent.display(), e))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_file)
        .map_err(|e| FetchError::io(lock_file.display(), e))?;
    let locked = fs4::fs_std::FileExt::try_lock_exclusive(&file)
        .map_err(|e| FetchError::io(lock_file.display(), e))?;
    if !locked || !same_file(&file, lock_file) {
        return Ok(None);
    }
    Ok(Some(file))
}

/// True when `path` still names the open `file` (the holder before us may have removed it).
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

impl LockMap {
    /// Forgets the slot of `key` when nobody but the map refers to it.
    fn release(&self, key: &Path) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.get(key).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(key);
        }
    }
}

impl Drop for ArtifactGuard {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Remove the lock file while it is still locked, then unlock by closing.
            let _ = std::fs::remove_file(&self.lock_file);
            drop(file);
        }
        drop(self.in_process.take());
        self.map.release(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exclusive_in_and_across_maps_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("a/b/m.gguf");
        let one = Arc::new(LockMap::default());
        let two = Arc::new(LockMap::default());
        let g = lock(&one, &dest).await.expect("lock");
        assert!(lock_path(&dest).exists());
        assert!(try_lock(&one, &dest).expect("try").is_none(), "same map");
        assert!(
            try_lock(&two, &dest).expect("try").is_none(),
            "another map (another process)"
        );
        let waiter = {
            let two = two.clone();
            let dest = dest.clone();
            tokio::spawn(async move { lock(&two, &dest).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(g);
        waiter
            .await
            .expect("join")
            .expect("second lock after release");
        assert!(!lock_path(&dest).exists(), "lock file removed");
        assert!(one.slots.lock().expect("map").is_empty());
        assert!(two.slots.lock().expect("map").is_empty());
        let g = try_lock(&one, &dest).expect("try").expect("free again");
        drop(g);
    }
}
