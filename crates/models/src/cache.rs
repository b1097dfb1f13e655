//! [`ModelCache`]: the node's model cache (API.md §9.2). It owns the rules: `file:` models are used
//! in place and never copied or deleted; `hf:` and `https://` models are downloaded under the
//! artifact's lock into `<dest>.part`, checked against the expected digest and renamed into place
//! only on a match, with a sidecar; cache hits trust the sidecar (size and digest) and touch it for
//! the LRU; eviction deletes only what the cache placed under `models_dir`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use api::catalog::{parse_digest, GgufInfo};
use api::model_ref::ModelRef;

use crate::config::CacheConfig;
use crate::error::FetchError;
use crate::fetch::{self, Progress};
use crate::layout::{self, part_path, sidecar_path};
use crate::lock::{self, LockMap};
use crate::sidecar::{self, Sidecar};

/// A model ready to load.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub path: PathBuf,
    /// `sha256:<64 lowercase hex>`.
    pub digest: String,
    pub size_bytes: u64,
    pub metadata: GgufInfo,
    /// Body bytes downloaded by this call; 0 when served from the cache or a `file:` ref.
    pub downloaded_bytes: u64,
}

/// The node's model cache; cheap to clone (one shared state inside).
#[derive(Clone)]
pub struct ModelCache {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: CacheConfig,
    client: reqwest::Client,
    locks: Arc<LockMap>,
    in_use: Mutex<Vec<PathBuf>>,
    /// Digests of `file:` models by path, valid while size and mtime are unchanged.
    file_digests: Mutex<HashMap<PathBuf, FileDigest>>,
}

/// A `file:` model's digest with the size and mtime it was computed for.
struct FileDigest {
    size: u64,
    mtime: Option<SystemTime>,
    digest: String,
}

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

fn parse_expected(expected: Option<&str>) -> Result<Option<String>, FetchError> {
    expected
        .map(|d| parse_digest(d).map_err(FetchError::Invalid))
        .transpose()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FetchError::Io(format!("blocking task failed: {e}")))
}

async fn hash(path: &Path) -> Result<(String, u64), FetchError> {
    let p = path.to_path_buf();
    blocking(move || sidecar::sha256_file(&p))
        .await?
        .map_err(|e| FetchError::io(path.display(), e))
}

async fn gguf_info(path: &Path, shown: &str) -> Result<GgufInfo, FetchError> {
    let p = path.to_path_buf();
    blocking(move || crate::gguf::read_info(&p))
        .await?
        .map_err(|e| FetchError::Invalid(format!("{shown} is not a usable GGUF file: {e}")))
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

impl ModelCache {
    /// Creates `models_dir` if needed and builds the HTTP client.
    pub fn new(mut cfg: CacheConfig) -> Result<Self, FetchError> {
        cfg.hf_endpoint = cfg.hf_endpoint.trim().trim_end_matches('/').to_string();
        let endpoint = &cfg.hf_endpoint;
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(FetchError::Invalid(format!(
                "hf_endpoint {endpoint:?} is not an http(s) URL"
            )));
        }
        std::fs::create_dir_all(&cfg.models_dir)
            .map_err(|e| FetchError::io(cfg.models_dir.display(), e))?;
        let client = fetch::client(cfg.extra_root_pem.as_deref())?;
        Ok(ModelCache {
            inner: Arc::new(Inner {
                cfg,
                client,
                locks: Arc::default(),
                in_use: Mutex::default(),
                file_digests: Mutex::default(),
            }),
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.cfg
    }

    /// Where `r` lives: the §9.2 cache layout, or the `file:` path itself.
    pub fn path_for(&self, r: &ModelRef) -> PathBuf {
        layout::path_for(&self.inner.cfg.models_dir, r)
    }

    /// Paths that quota enforcement after a download (and [`ModelCache::enforce_quota`]) never
    /// evicts: the models loaded in engines. Replaces the previous set.
    pub fn set_in_use(&self, paths: Vec<PathBuf>) {
        *self.inner.in_use.lock().unwrap_or_else(|p| p.into_inner()) = paths;
    }

    /// Makes `r` available locally and returns its path, digest, size and GGUF facts. `file:` refs
    /// are hashed in place; others come from the cache or are downloaded (one download per
    /// artifact across tasks and processes). A given `expected_digest` is checked on every call.
    pub async fn fetch(
        &self,
        r: &ModelRef,
        expected_digest: Option<&str>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Fetched, FetchError> {
        let expected = parse_expected(expected_digest)?;
        let dest = self.path_for(r);
        if let ModelRef::File { .. } = r {
            return self.local_file(&dest, expected.as_deref(), false).await;
        }
        let url = layout::source_url(&self.inner.cfg.hf_endpoint, r)
            .ok_or_else(|| FetchError::Invalid(format!("{r} has no source URL")))?;
        let _guard = lock::lock(&self.inner.locks, &dest).await?;
        if let Some(hit) = self.cached(&dest, r, expected.as_deref()).await? {
            tracing::debug!(model_ref = %r, path = %dest.display(), "model served from the cache");
            return Ok(hit);
        }
        let part = PartFile(part_path(&dest));
        let fetched = self
            .download(r, &url, &dest, &part.0, expected.as_deref(), progress)
            .await?;
        drop(part);
        let evicted = self.enforce_quota(std::slice::from_ref(&dest));
        if !evicted.is_empty() {
            tracing::info!(
                count = evicted.len(),
                "evicted cached models over the quota"
            );
        }
        Ok(fetched)
    }

    /// Re-hashes the local copy of `r` against `expected_digest`. A mismatching cached copy is
    /// deleted (a `file:` model never is); a missing one is `NotFound`.
    pub async fn verify(&self, r: &ModelRef, expected_digest: &str) -> Result<Fetched, FetchError> {
        let expected = parse_digest(expected_digest).map_err(FetchError::Invalid)?;
        let dest = self.path_for(r);
        if let ModelRef::File { .. } = r {
            return self.local_file(&dest, Some(&expected), true).await;
        }
        let _guard = lock::lock(&self.inner.locks, &dest).await?;
        if !dest.is_file() {
            return Err(FetchError::NotFound(format!(
                "no cached copy of {r} at {}",
                dest.display()
            )));
        }
        let (digest, size) = hash(&dest).await?;
        if digest != expected {
            tracing::warn!(model_ref = %r, %expected, actual = %digest, "cached model failed verification; deleting it");
            remove_entry_files(&dest);
            return Err(FetchError::DigestMismatch {
                expected,
                actual: digest,
            });
        }
        let metadata = gguf_info(&dest, &r.to_string()).await?;
        let mut side = sidecar::read(&dest).unwrap_or_else(|| Sidecar {
            digest: digest.clone(),
            size_bytes: size,
            fetched_at_ms: sidecar::now_ms(),
            source: r.to_string(),
            verified_at_ms: None,
        });
        side.digest = digest.clone();
        side.size_bytes = size;
        side.verified_at_ms = Some(sidecar::now_ms());
        sidecar::write(&dest, &side)?;
        sidecar::touch(&dest);
        Ok(Fetched {
            path: dest,
            digest,
            size_bytes: size,
            metadata,
            downloaded_bytes: 0,
        })
    }

    /// Deletes the cached copy of `r` and its sidecar (never a `file:` model). `Ok(true)` when
    /// something was removed; `Busy` while a fetch or verification of it runs.
    pub fn evict(&self, r: &ModelRef) -> Result<bool, FetchError> {
        if let ModelRef::File { .. } = r {
            return Ok(false);
        }
        self.evict_path(&self.path_for(r))
    }

    /// While the cached total exceeds `quota_bytes`, evicts the least recently used entries that
    /// are neither in `in_use` nor in the [`ModelCache::set_in_use`] set (entries being fetched or
    /// verified are skipped). Returns the evicted paths.
    pub fn enforce_quota(&self, in_use: &[PathBuf]) -> Vec<PathBuf> {
        let Some(quota) = self.inner.cfg.quota_bytes else {
            return Vec::new();
        };
        let mut entries = self.cached_entries();
        let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
        if total <= quota {
            return Vec::new();
        }
        let mut keep: Vec<PathBuf> = in_use.to_vec();
        keep.extend(
            self.inner
                .in_use
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        entries.sort_by_key(|(_, _, used)| *used);
        let mut evicted = Vec::new();
        for (path, size, _) in entries {
            if total <= quota {
                break;
            }
            if keep.iter().any(|k| same_path(k, &path)) {
                continue;
            }
            match self.evict_path(&path) {
                Ok(true) => {
                    tracing::info!(path = %path.display(), size, "evicted a cached model (quota)");
                    total = total.saturating_sub(size);
                    evicted.push(path);
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "could not evict"),
            }
        }
        evicted
    }

    /// Every complete cached copy (model file with its sidecar) under `models_dir/hf` and
    /// `models_dir/https`: path, size, last use.
    pub fn cached_entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let mut out = Vec::new();
        for top in ["hf", "https"] {
            walk(&self.inner.cfg.models_dir.join(top), &mut out);
        }
        out
    }

    async fn local_file(
        &self,
        path: &Path,
        expected: Option<&str>,
        force_hash: bool,
    ) -> Result<Fetched, FetchError> {
        let shown = format!("file:{}", path.display());
        let meta = match tokio::fs::metadata(path).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                return Err(FetchError::NotFound(format!(
                    "{shown} is not a regular file on this node"
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FetchError::NotFound(format!(
                    "{shown} does not exist on this node"
                )))
            }
            Err(e) => return Err(FetchError::io(&shown, e)),
        };
        let stamp = (meta.len(), meta.modified().ok());
        let known = {
            let digests = self
                .inner
                .file_digests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            digests
                .get(path)
                .filter(|d| (d.size, d.mtime) == stamp)
                .map(|d| d.digest.clone())
        };
        let digest = match known {
            Some(d) if !force_hash => d,
            _ => {
                let (d, _) = hash(path).await?;
                self.inner
                    .file_digests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        path.to_path_buf(),
                        FileDigest {
                            size: stamp.0,
                            mtime: stamp.1,
                            digest: d.clone(),
                        },
                    );
                d
            }
        };
        if let Some(exp) = expected {
            if digest != exp {
                return Err(FetchError::DigestMismatch {
                    expected: exp.to_string(),
                    actual: digest,
                });
            }
        }
        let metadata = gguf_info(path, &shown).await?;
        Ok(Fetched {
            path: path.to_path_buf(),
            digest,
            size_bytes: meta.len(),
            metadata,
            downloaded_bytes: 0,
        })
    }

    /// The cached copy at `dest`, if complete. Called under the artifact's lock.
    async fn cached(
        &self,
        dest: &Path,
        r: &ModelRef,
        expected: Option<&str>,
    ) -> Result<Option<Fetched>, FetchError> {
        let size = match std::fs::metadata(dest) {
            Ok(m) if m.is_file() => m.len(),
            _ => {
                let _ = std::fs::remove_file(sidecar_path(dest));
                return Ok(None);
            }
        };
        let digest = match sidecar::read(dest) {
            Some(s) if s.size_bytes == size => s.digest,
            _ => {
                tracing::info!(path = %dest.display(), "cached model without a valid sidecar; hashing it");
                let (digest, size) = hash(dest).await?;
                let side = Sidecar {
                    digest: digest.clone(),
                    size_bytes: size,
                    fetched_at_ms: sidecar::now_ms(),
                    source: r.to_string(),
                    verified_at_ms: None,
                };
                sidecar::write(dest, &side)?;
                digest
            }
        };
        if let Some(exp) = expected {
            if digest != exp {
                return Err(FetchError::DigestMismatch {
                    expected: exp.to_string(),
                    actual: digest,
                });
            }
        }
        let metadata = gguf_info(dest, &r.to_string()).await?;
        sidecar::touch(dest);
        Ok(Some(Fetched {
            path: dest.to_path_buf(),
            digest,
            size_bytes: size,
            metadata,
            downloaded_bytes: 0,
        }))
    }

    /// Downloads into `part`, checks, writes the sidecar and renames into place.
    async fn download(
        &self,
        r: &ModelRef,
        url: &str,
        dest: &Path,
        part: &Path,
        expected: Option<&str>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Fetched, FetchError> {
        let shown = r.to_string();
        let bearer = match r {
            ModelRef::Hf { .. } => self.inner.cfg.hf_token.as_deref(),
            _ => None,
        };
        tracing::info!(model_ref = %shown, url = fetch::redact(url), token = bearer.map(layout::token_fingerprint).as_deref().unwrap_or("none"), "downloading model");
        let started = Instant::now();
        let req = fetch::Request {
            client: &self.inner.client,
            url,
            bearer,
            progress,
        };
        let got = fetch::download(&req, part).await?;
        if let Some(exp) = expected {
            if got.digest != exp {
                tracing::warn!(model_ref = %shown, expected = exp, actual = %got.digest, "downloaded model does not match its digest");
                return Err(FetchError::DigestMismatch {
                    expected: exp.to_string(),
                    actual: got.digest,
                });
            }
        }
        let metadata = gguf_info(part, &shown).await?;
        let side = Sidecar {
            digest: got.digest.clone(),
            size_bytes: got.size,
            fetched_at_ms: sidecar::now_ms(),
            source: shown.clone(),
            verified_at_ms: None,
        };
        sidecar::write(dest, &side)?;
        if let Err(e) = std::fs::rename(part, dest) {
            let _ = std::fs::remove_file(sidecar_path(dest));
            return Err(FetchError::io(dest.display(), e));
        }
        if let Some(parent) = dest.parent() {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        tracing::info!(model_ref = %shown, digest = %got.digest, bytes = got.size, transferred = got.transferred, secs = started.elapsed().as_secs_f64(), "model downloaded");
        Ok(Fetched {
            path: dest.to_path_buf(),
            digest: got.digest,
            size_bytes: got.size,
            metadata,
            downloaded_bytes: got.transferred,
        })
    }

    /// Removes a cached copy under `models_dir` (and empty parent folders), if its lock is free.
    fn evict_path(&self, dest: &Path) -> Result<bool, FetchError> {
        let root = &self.inner.cfg.models_dir;
        if !dest.starts_with(root) {
            return Ok(false);
        }
        let Some(guard) = lock::try_lock(&self.inner.locks, dest)? else {
            return Err(FetchError::Busy(format!(
                "{} is being fetched or verified",
                dest.display()
            )));
        };
        let removed = remove_entry_files(dest);
        drop(guard);
        let mut dir = dest.parent();
        while let Some(d) = dir {
            if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(removed)
    }
}

/// The partial download, removed when dropped: after an error, and also when the fetch future is
/// dropped mid-download (after a successful rename there is nothing left to remove).
struct PartFile(PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes the model file, its sidecar and any partial download; true if any existed.
fn remove_entry_files(dest: &Path) -> bool {
    let mut removed = false;
    for p in [dest.to_path_buf(), sidecar_path(dest), part_path(dest)] {
        removed |= std::fs::remove_file(&p).is_ok();
    }
    removed
}

/// Collects complete entries below `dir`, without following symbolic links.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut seen = HashSet::new();
    for item in read.flatten() {
        let path = item.path();
        let Ok(ft) = item.file_type() else { continue };
        if ft.is_dir() {
            walk(&path, out);
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(model_name) = name.strip_suffix(layout::SIDECAR_SUFFIX) else {
            continue;
        };
        let model = path.with_file_name(model_name);
        if !seen.insert(model.clone()) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&model) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let used = sidecar::last_used(&model).unwrap_or(SystemTime::UNIX_EPOCH);
        out.push((model, meta.len(), used));
    }
}
