//! CUDA for the engine: finding a CUDA toolchain and device on this host, the cmake flags of a
//! CUDA build, and asking a `llama-server` binary which GPUs it can use (`--list-devices`).
//!
//! Invariant: `gpu_policy = "gpu"` never yields an engine that runs on the CPU. A source build
//! needs nvcc and a device; an adopted binary must itself list a CUDA device, because a CPU-only
//! `llama-server` accepts `--n-gpu-layers` and silently ignores it.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::provision::{GpuPolicy, ProvisionError};

/// Finds a CUDA compiler and a CUDA device and returns the device's architecture (e.g. `90`).
pub fn detect_cuda() -> Result<String, String> {
    if nvcc().is_none() {
        return Err("no CUDA toolchain (nvcc) was found".into());
    }
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let first = text.lines().next().map(str::trim).unwrap_or("");
            if first.is_empty() {
                return Err("nvidia-smi lists no CUDA device".into());
            }
            Ok(first.replace('.', ""))
        }
        _ => Err("no CUDA device was found (nvidia-smi is missing or failed)".into()),
    }
}

/// `nvcc` on the PATH, else the toolkit's default location; `None` when neither runs.
fn nvcc() -> Option<String> {
    ["nvcc", "/usr/local/cuda/bin/nvcc"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_string)
}

/// The CUDA compiler's identity for the cache key (its `--version` build line), or `none`.
pub fn nvcc_id() -> String {
    nvcc()
        .and_then(|c| Command::new(c).arg("--version").output().ok())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "none".into())
}

/// Returns `Some(cuda_arch)` for a GPU build, `None` for CPU, or the reason a GPU build is
/// impossible.
pub fn resolve_gpu(policy: GpuPolicy) -> Result<Option<String>, ProvisionError> {
    if policy == GpuPolicy::Cpu {
        return Ok(None);
    }
    match detect_cuda() {
        Ok(arch) => Ok(Some(arch)),
        Err(reason) if policy == GpuPolicy::Gpu => Err(ProvisionError::GpuUnavailable(reason)),
        Err(reason) => {
            tracing::warn!(event = "engine.gpu_fallback", human = %format!("gpu_policy auto: building for CPU because {reason}"));
            Ok(None)
        }
    }
}

/// The flags that turn a build into a CUDA build for one architecture (`90` for Hopper). Only the
/// device's own architecture is compiled, which keeps the build short.
pub fn cuda_flags(arch: &str) -> Vec<String> {
    vec![
        "-DGGML_CUDA=ON".into(),
        format!("-DCMAKE_CUDA_ARCHITECTURES={arch}"),
    ]
}

/// The CUDA devices `binary --list-devices` reports (lines like `CUDA0: NVIDIA H200 (…)`). A
/// CPU-only build reports none; so does a CUDA build on a host without a usable driver.
pub fn list_devices(binary: &Path) -> Result<Vec<String>, String> {
    let out = Command::new(binary)
        .arg("--list-devices")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{} --list-devices`: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} --list-devices` exited with {}: {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_devices(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses llama.cpp's `--list-devices` output: the indented `NAME: description` lines after
/// `Available devices:`, keeping the CUDA ones.
pub fn parse_devices(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Available devices"))
        .skip(1)
        .map(str::trim)
        .filter(|l| l.starts_with("CUDA") && l.contains(':'))
        .map(str::to_string)
        .collect()
}

/// Whether an adopted binary runs on the GPU under `policy`; `gpu` with a binary that lists no
/// CUDA device is refused at once, before any engine starts.
pub fn binary_uses_gpu(binary: &Path, policy: GpuPolicy) -> Result<bool, ProvisionError> {
    if policy == GpuPolicy::Cpu {
        return Ok(false);
    }
    let devices = list_devices(binary).map_err(|reason| ProvisionError::BadBinary {
        path: binary.to_path_buf(),
        reason,
    })?;
    match (devices.is_empty(), policy) {
        (false, _) => Ok(true),
        (true, GpuPolicy::Gpu) => Err(ProvisionError::CpuOnlyBinary(binary.to_path_buf())),
        (true, _) => {
            tracing::warn!(event = "engine.gpu_fallback", human = %format!("gpu_policy auto: {} lists no CUDA device; the engine runs on the CPU", binary.display()));
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn check(stdout: &str, expected: &[&str]) {
        assert_eq!(parse_devices(stdout), expected, "input: {stdout:?}");
    }

    #[test]
    fn device_lists_parse() {
        check("Available devices:\n", &[]);
        // What build 11434's CPU-only llama-server prints.
        check("Available devices:\n  (none)\n", &[]);
        check("", &[]);
        check(
            "Available devices:\n  CUDA0: NVIDIA H200 (143771 MiB, 142000 MiB free)\n",
            &["CUDA0: NVIDIA H200 (143771 MiB, 142000 MiB free)"],
        );
        check(
            "load_backend: x\nAvailable devices:\n  CUDA0: A (1 MiB, 1 MiB free)\n  CUDA1: B (2 MiB, 2 MiB free)\n",
            &["CUDA0: A (1 MiB, 1 MiB free)", "CUDA1: B (2 MiB, 2 MiB free)"],
        );
        // Other backends are not CUDA devices, and text before the header is ignored.
        check(
            "  CUDA9: before (1 MiB)\nAvailable devices:\n  Vulkan0: X (1 MiB, 1 MiB free)\n",
            &[],
        );
    }

    #[test]
    fn cuda_flags_name_one_architecture() {
        assert_eq!(
            cuda_flags("90"),
            vec!["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90"]
        );
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A stand-in binary that answers `--version` and `--list-devices` like llama-server.
    fn fake_server(dir: &Path, devices: &str) -> std::io::Result<std::path::PathBuf> {
        let path = dir.join("llama-server");
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n--version) echo 'version: 1 (build 11434, commit test)' >&2;;\n--list-devices) printf 'Available devices:\\n{devices}';;\n*) exit 2;;\nesac\n"
        );
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    #[test]
    fn gpu_policy_refuses_a_binary_without_cuda_devices() -> TestResult {
        let dir = tempfile::tempdir()?;
        let cpu = fake_server(dir.path(), "")?;
        let Err(err) = binary_uses_gpu(&cpu, GpuPolicy::Gpu) else {
            panic!("a CPU-only binary passed gpu_policy = \"gpu\"");
        };
        assert!(matches!(err, ProvisionError::CpuOnlyBinary(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("gpu_policy is \"gpu\"") && text.contains("--list-devices"),
            "{text}"
        );
        assert!(!binary_uses_gpu(&cpu, GpuPolicy::Auto)?);
        assert!(!binary_uses_gpu(&cpu, GpuPolicy::Cpu)?);
        Ok(())
    }

    /// The same refusal through `provision`, as pool-managerd calls it for a `kind = "binary"`
    /// engine: it comes before any engine starts, on any host.
    #[test]
    fn provisioning_a_cpu_binary_for_a_gpu_pool_fails_fast() -> TestResult {
        let dir = tempfile::tempdir()?;
        let cpu = fake_server(dir.path(), "")?;
        let req = crate::provision::ProvisionRequest {
            source: crate::provision::EngineSource::Binary {
                path: cpu.clone(),
                sha256: None,
            },
            gpu: GpuPolicy::Gpu,
            build_number: None,
            build_commit: None,
            extra_cmake_flags: vec![],
            engines_dir: dir.path().join("engines"),
            jobs: 1,
        };
        let result = crate::provision::provision(&req, &|_| {});
        assert!(
            matches!(&result, Err(ProvisionError::CpuOnlyBinary(p)) if *p == cpu),
            "{result:?}"
        );
        let cpu_req = crate::provision::ProvisionRequest {
            gpu: GpuPolicy::Cpu,
            ..req
        };
        let build = crate::provision::provision(&cpu_req, &|_| {})?;
        assert!(!build.gpu && build.binary == cpu);
        Ok(())
    }

    #[test]
    fn gpu_policy_accepts_a_binary_with_a_cuda_device() -> TestResult {
        let dir = tempfile::tempdir()?;
        let gpu = fake_server(
            dir.path(),
            "  CUDA0: NVIDIA H200 (143771 MiB, 142000 MiB free)\\n",
        )?;
        assert!(binary_uses_gpu(&gpu, GpuPolicy::Gpu)?);
        assert!(binary_uses_gpu(&gpu, GpuPolicy::Auto)?);
        assert!(
            !binary_uses_gpu(&gpu, GpuPolicy::Cpu)?,
            "cpu policy never asks the binary"
        );
        Ok(())
    }

    #[test]
    fn gpu_policy_gpu_fails_fast_without_cuda() -> TestResult {
        if detect_cuda().is_ok() {
            return Ok(()); // A CUDA machine legitimately passes; the assertions are about CPU-only machines.
        }
        assert!(matches!(
            resolve_gpu(GpuPolicy::Gpu),
            Err(ProvisionError::GpuUnavailable(_))
        ));
        assert_eq!(resolve_gpu(GpuPolicy::Cpu)?, None);
        assert_eq!(resolve_gpu(GpuPolicy::Auto)?, None);
        Ok(())
    }
}
