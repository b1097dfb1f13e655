//! The sidecar `<dest>.llorch.json` next to each cached copy: digest, size, when and from where it
//! was fetched, when it was last verified. Its mtime is the entry's last use (the LRU clock), so a
//! cache hit costs a `stat`, a small read and a touch instead of re-hashing the file.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::FetchError;
use crate::layout::{sidecar_path, with_suffix};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    /// `sha256:<hex>` of the cached copy.
    pub digest: String,
    pub size_bytes: u64,
    /// Epoch ms of the download (or of the first hash of a copy found without a sidecar).
    pub fetched_at_ms: u64,
    /// The normalized ModelRef it was fetched from.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at_ms: Option<u64>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sidecar of `dest`; `None` when missing or unreadable (the copy is then re-hashed).
pub(crate) fn read(dest: &Path) -> Option<Sidecar> {
    let bytes = std::fs::read(sidecar_path(dest)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the sidecar of `dest` atomically (temporary file, fsync, rename).
pub(crate) fn write(dest: &Path, sidecar: &Sidecar) -> Result<(), FetchError> {
    let path = sidecar_path(dest);
    let tmp = with_suffix(&path, ".tmp");
    let json = serde_json::to_vec_pretty(sidecar).map_err(|e| FetchError::io(path.display(), e))?;
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(FetchError::io(path.display(), e));
    }
    Ok(())
}

/// Marks `dest` as used now (the sidecar's mtime).
pub(crate) fn touch(dest: &Path) {
    let path = sidecar_path(dest);
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// The entry's last use: the sidecar's mtime.
pub(crate) fn last_used(dest: &Path) -> Option<SystemTime> {
    std::fs::metadata(sidecar_path(dest))
        .and_then(|m| m.modified())
        .ok()
}

/// `sha256:<hex>` and the size of the file at `path` (blocking; call from `spawn_blocking`).
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_touch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("m.gguf");
        assert!(read(&dest).is_none());
        let s = Sidecar {
            digest: "sha256:00".into(),
            size_bytes: 3,
            fetched_at_ms: now_ms(),
            source: "hf:o/r/m.gguf".into(),
            verified_at_ms: None,
        };
        write(&dest, &s).expect("write");
        assert_eq!(read(&dest), Some(s));
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(sidecar_path(&dest))
            .and_then(|f| f.set_modified(old))
            .expect("set mtime");
        assert_eq!(last_used(&dest), Some(old));
        touch(&dest);
        assert!(last_used(&dest).expect("mtime") > old);
        std::fs::write(&dest, b"abc").expect("write");
        let (digest, size) = sha256_file(&dest).expect("hash");
        assert_eq!(size, 3);
        assert_eq!(
            digest,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
