//! `llorch engine …`: provision a llama-server binary into the engines cache.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use engine::{EngineSource, GpuPolicy, Progress, ProvisionRequest};

#[derive(Subcommand)]
pub enum EngineCmd {
    /// Build llama-server from a source archive or git ref (or check a prebuilt binary) and cache it.
    Build(BuildArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// Source tarball: a local path or an https URL.
    #[arg(long, env = "LLORCH_LLAMA_SOURCE", conflicts_with_all = ["git", "binary"])]
    archive: Option<String>,
    /// Subdirectory of the unpacked archive that holds the llama.cpp tree.
    #[arg(long, default_value = "llama.cpp")]
    subdir: String,
    /// Expected sha256 of the archive.
    #[arg(long, env = "LLORCH_LLAMA_SOURCE_SHA256")]
    sha256: Option<String>,
    /// Git URL (with --git-ref).
    #[arg(long, requires = "git_ref")]
    git: Option<String>,
    #[arg(long)]
    git_ref: Option<String>,
    /// A prebuilt llama-server binary to verify and use.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// gpu | cpu | auto
    #[arg(long, default_value = "auto", value_parser = parse_policy)]
    gpu_policy: GpuPolicy,
    /// LLAMA_BUILD_NUMBER (derived from PyPI archive names when omitted).
    #[arg(long)]
    build_number: Option<u64>,
    /// Extra cmake flags (repeatable).
    #[arg(long = "cmake-flag")]
    cmake_flags: Vec<String>,
    /// Engines cache directory.
    #[arg(long)]
    engines_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_policy(s: &str) -> Result<GpuPolicy, String> {
    match s {
        "gpu" => Ok(GpuPolicy::Gpu),
        "cpu" => Ok(GpuPolicy::Cpu),
        "auto" => Ok(GpuPolicy::Auto),
        _ => Err(format!("expected gpu, cpu or auto, got {s:?}")),
    }
}

pub fn run(cmd: EngineCmd) -> anyhow::Result<()> {
    match cmd {
        EngineCmd::Build(a) => build(a),
    }
}

fn build(a: BuildArgs) -> anyhow::Result<()> {
    let source = match (a.archive, a.git, a.binary) {
        (Some(location), None, None) => EngineSource::Archive { location, subdir: a.subdir, sha256: a.sha256 },
        (None, Some(url), None) => EngineSource::Git { url, reference: a.git_ref.unwrap_or_default() },
        (None, None, Some(path)) => EngineSource::Binary { path, sha256: a.sha256 },
        _ => anyhow::bail!("give exactly one of --archive, --git (with --git-ref) or --binary"),
    };
    let req = ProvisionRequest {
        source,
        gpu: a.gpu_policy,
        build_number: a.build_number,
        build_commit: None,
        extra_cmake_flags: a.cmake_flags,
        engines_dir: a.engines_dir.unwrap_or_else(|| llorch::cache_dir().join("engines")),
        jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
    };
    let bar = crate::progress::BuildProgress::new();
    let progress = |p: Progress| bar.report(p);
    let build = engine::provision(&req, &progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&build)?);
    } else {
        println!("{}", build.binary.display());
        eprintln!("[engine] version {}  sha256 {}  build {:.0}s", build.version, &build.binary_sha256[..16], build.build_seconds);
    }
    Ok(())
}
