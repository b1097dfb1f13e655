//! `llorch engine …`: provision a llama-server binary into the engines cache.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use engine::{EngineSource, GpuPolicy, Progress, ProvisionRequest};

#[derive(Subcommand)]
pub enum EngineCmd {
    /// Build llama-server from a source archive or git ref (or check a prebuilt binary) and cache it.
    Build(BuildArgs),
    /// Start a llama-server outside pool-managerd and write a handoff file for it to adopt.
    Start(StartArgs),
}

#[derive(Args)]
pub struct StartArgs {
    /// Pool id the engine will serve as.
    #[arg(long)]
    pool_id: String,
    /// GGUF model file.
    #[arg(long, env = "LLORCH_MODEL")]
    model: PathBuf,
    /// Catalog id of the model (default: derived from the file name).
    #[arg(long)]
    model_id: Option<String>,
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Context per slot.
    #[arg(long, default_value_t = 2048)]
    ctx: u64,
    #[arg(long)]
    threads: Option<u32>,
    /// pool-managerd's handoff directory.
    #[arg(long)]
    handoff_dir: PathBuf,
    /// A llama-server binary (default: build or reuse the pinned dev engine).
    #[arg(long)]
    binary: Option<PathBuf>,
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
        EngineCmd::Start(a) => tokio::runtime::Runtime::new()?.block_on(start(a)),
    }
}

/// Starts a detached engine and hands it off: key file (0600), log, then the handoff file.
async fn start(a: StartArgs) -> anyhow::Result<()> {
    let pool_id: api::PoolId = a
        .pool_id
        .parse()
        .map_err(|e: api::IdError| anyhow::anyhow!("--pool-id: {}", e.0))?;
    anyhow::ensure!(
        a.model.is_absolute() && a.model.is_file(),
        "--model {} must be an existing absolute path",
        a.model.display()
    );
    let model_id = a
        .model_id
        .clone()
        .unwrap_or_else(|| api::ids::model_id_from_path(&a.model.display().to_string()));
    let binary = match a.binary {
        Some(b) => b,
        None => {
            let source = llorch::dev::llama_source();
            let req = ProvisionRequest {
                source: EngineSource::Archive {
                    location: source.display().to_string(),
                    subdir: "llama.cpp".into(),
                    sha256: Some(llorch::dev::LLAMA_SOURCE_SHA256.into()),
                },
                gpu: GpuPolicy::Cpu,
                build_number: None,
                build_commit: None,
                extra_cmake_flags: vec![],
                engines_dir: llorch::cache_dir().join("engines"),
                jobs: std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
            };
            let bar = crate::progress::BuildProgress::new();
            tokio::task::spawn_blocking(move || engine::provision(&req, &|p| bar.report(p)))
                .await??
                .binary
        }
    };
    std::fs::create_dir_all(&a.handoff_dir)?;
    let key = engine::ApiKey::random();
    let key_file = a.handoff_dir.join(format!("{pool_id}.key"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&key_file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)?;
        f.write_all(key.expose().as_bytes())?;
    }
    let spec = engine::LaunchSpec {
        binary,
        model_path: a.model.clone(),
        alias: model_id.clone(),
        ctx_per_slot: a.ctx,
        slots: a.slots,
        threads: a.threads,
        gpu_layers: 0,
        cuda_visible_devices: String::new(),
        extra_args: vec![],
        log_path: a.handoff_dir.join(format!("{pool_id}.log")),
        start_timeout: std::time::Duration::from_secs(120),
        die_with_parent: false,
        pid_record: None,
    };
    let (pid, client) = engine::process::spawn_detached(&spec, key, &key_file).await?;
    let props = client.props().await?;
    let handoff = engine::handoff::HandoffFile {
        pool_id: pool_id.to_string(),
        url: client.base_url().to_string(),
        pid,
        start_time: engine::handoff::process_start_time(pid)
            .ok_or_else(|| anyhow::anyhow!("the engine exited right after starting"))?,
        model: engine::handoff::HandoffModel {
            id: model_id,
            model_ref: format!("file:{}", a.model.display()),
        },
        slots: a.slots,
        ctx_per_slot: a.ctx,
        engine_version: props.build_info,
        api_key_file: key_file,
    };
    let path = handoff.write_atomic(&a.handoff_dir)?;
    eprintln!(
        "[engine] started llama-server pid {pid} at {} for pool {pool_id}; handoff file {}",
        handoff.url,
        path.display()
    );
    println!("{}", serde_json::to_string(&handoff)?);
    Ok(())
}

fn build(a: BuildArgs) -> anyhow::Result<()> {
    let source = match (a.archive, a.git, a.binary) {
        (Some(location), None, None) => EngineSource::Archive {
            location,
            subdir: a.subdir,
            sha256: a.sha256,
        },
        (None, Some(url), None) => EngineSource::Git {
            url,
            reference: a.git_ref.unwrap_or_default(),
        },
        (None, None, Some(path)) => EngineSource::Binary {
            path,
            sha256: a.sha256,
        },
        _ => anyhow::bail!("give exactly one of --archive, --git (with --git-ref) or --binary"),
    };
    let req = ProvisionRequest {
        source,
        gpu: a.gpu_policy,
        build_number: a.build_number,
        build_commit: None,
        extra_cmake_flags: a.cmake_flags,
        engines_dir: a
            .engines_dir
            .unwrap_or_else(|| llorch::cache_dir().join("engines")),
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    };
    let bar = crate::progress::BuildProgress::new();
    let progress = |p: Progress| bar.report(p);
    let build = engine::provision(&req, &progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&build)?);
    } else {
        println!("{}", build.binary.display());
        eprintln!(
            "[engine] version {}  sha256 {}  build {:.0}s",
            build.version,
            &build.binary_sha256[..16],
            build.build_seconds
        );
    }
    Ok(())
}
