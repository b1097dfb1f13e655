//! `llorch up`: the whole stack on this machine with the default small model, a first haiku
//! streamed to the terminal, then serving until Ctrl-C. `--ha` runs an HA group instead of one
//! orchestratord: Postgres (set up as scripts/postgres.sh does, or `--state-url`) and `--replicas`
//! orchestratord on consecutive ports, every one supervised.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use llorch::haiku::{self, HaikuOptions};
use llorch::stack::{Daemon, EngineChoice, HaSpec, Stack, StackSpec};

#[derive(Args)]
pub struct UpArgs {
    /// GGUF model to serve (default: the dev model fetched by scripts/dev-assets.sh).
    #[arg(long, env = "LLORCH_MODEL")]
    model: Option<PathBuf>,
    /// Catalog id of the model.
    #[arg(long, default_value = llorch::dev::MODEL_ID)]
    model_id: String,
    /// llama.cpp source archive to build llama-server from.
    #[arg(long, env = "LLORCH_LLAMA_SOURCE")]
    llama_source: Option<PathBuf>,
    #[arg(long, env = "LLORCH_LLAMA_SOURCE_SHA256", default_value = llorch::dev::LLAMA_SOURCE_SHA256)]
    llama_source_sha256: String,
    /// orchestratord port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// pool-managerd worker API port.
    #[arg(long, default_value_t = 9200)]
    worker_port: u16,
    /// Engine threads (-t); default: llama-server's choice.
    #[arg(long)]
    threads: Option<u32>,
    /// Skip the first haiku.
    #[arg(long)]
    no_haiku: bool,
    /// High availability: several orchestratord (ports --port, --port+1, ...) sharing one Postgres
    /// database, pool-managerd following the leader; kill one and the others take over.
    #[arg(long)]
    ha: bool,
    /// With --ha: how many orchestratord.
    #[arg(long, default_value_t = 2, requires = "ha")]
    replicas: usize,
    /// With --ha: the Postgres database to share (default: a local server set up like
    /// scripts/postgres.sh, database `llorch_up`).
    #[arg(
        long,
        env = "LLORCH_STATE_URL",
        hide_env_values = true,
        requires = "ha"
    )]
    state_url: Option<String>,
}

pub async fn run(a: UpArgs) -> anyhow::Result<()> {
    let model = a.model.unwrap_or_else(llorch::dev::model);
    let source = a.llama_source.unwrap_or_else(llorch::dev::llama_source);
    for (what, p) in [("model", &model), ("llama.cpp source archive", &source)] {
        if !p.is_file() {
            anyhow::bail!("the {what} {} does not exist; run scripts/dev-assets.sh first (or scripts/up.sh, which does)", p.display());
        }
    }
    let engines_dir = llorch::cache_dir().join("engines");
    // Build (or find) the engine here, so its progress shows on this terminal.
    let req = engine::ProvisionRequest {
        source: engine::EngineSource::Archive {
            location: source.display().to_string(),
            subdir: "llama.cpp".into(),
            sha256: Some(a.llama_source_sha256.clone()),
        },
        gpu: engine::GpuPolicy::Cpu,
        build_number: None,
        build_commit: None,
        extra_cmake_flags: vec![],
        engines_dir: engines_dir.clone(),
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    };
    let built = tokio::task::spawn_blocking(move || {
        let bar = crate::progress::BuildProgress::new();
        engine::provision(&req, &|p| bar.report(p))
    })
    .await??;
    eprintln!(
        "[up] engine {} at {}",
        built.version,
        built.binary.display()
    );

    let dir = llorch::state_dir().join("up");
    let mut spec = StackSpec::new(
        llorch::stack::bin_dir()?,
        dir.clone(),
        model,
        EngineChoice::Source {
            archive: source,
            sha256: a.llama_source_sha256,
        },
        engines_dir,
    );
    spec.orchd_port = a.port;
    spec.worker_port = a.worker_port;
    spec.model_id = a.model_id.clone();
    spec.threads = a.threads;
    spec.heartbeat_interval_ms = 2000;
    spec.heartbeat_timeout_ms = 10_000;
    if a.ha {
        anyhow::ensure!(a.replicas >= 1, "--replicas must be at least 1");
        let state_url = match a.state_url.clone() {
            Some(u) => u,
            None => {
                eprintln!("[up] setting up Postgres (as scripts/postgres.sh does)");
                let admin = tokio::task::spawn_blocking(llorch::stack::ensure_postgres).await??;
                llorch::stack::ensure_database(&admin, "llorch_up")?
            }
        };
        spec.ha = Some(HaSpec {
            replicas: a.replicas,
            state_url,
            lease_ms: 1500,
            ports: (0..a.replicas as u16).map(|k| a.port + k).collect(),
            drop_on_shutdown: None,
        });
    }
    let mut stack = Stack::start(spec).await.context("starting the stack")?;
    if stack.replicas.is_empty() {
        eprintln!(
            "[up] orchestratord at {} (log {}), pool-managerd at {} (log {})",
            stack.orchd_url,
            stack.orchd_log.display(),
            stack.worker_url,
            stack.pm_log.display()
        );
    } else {
        for (i, r) in stack.replicas.iter().enumerate() {
            eprintln!(
                "[up] orchestratord-{i} at {} (log {})",
                r.url,
                r.log.display()
            );
        }
        if let Ok(i) = stack.leader(Duration::from_secs(20)).await {
            eprintln!("[up] orchestratord-{i} leads");
        }
        eprintln!(
            "[up] pool-managerd at {} (log {})",
            stack.worker_url,
            stack.pm_log.display()
        );
    }
    let ready = stack
        .wait_ready(Duration::from_secs(900), &mut |s| eprintln!("[up] {s}"))
        .await;
    if let Err(e) = ready {
        let _ = stack.shutdown().await;
        return Err(e);
    }
    if !a.no_haiku {
        first_haiku(&stack, &a.model_id, &dir).await;
    }
    // The first URL of an HA group for the examples; any of them answers or names the leader.
    let url = stack.orchestratord_urls()[0].clone();
    println!();
    println!("llama-orch is serving at {}", stack.orchd_url);
    if !stack.replicas.is_empty() {
        println!(
            "HA group: a follower answers 503 NOT_LEADER naming the leader; llorch follows it with\n  export LLORCH_URL={}",
            stack.orchd_url
        );
    }
    println!("Dashboard: {url}/ui/");
    println!("Try it:");
    println!(
        "  curl -s -X POST {url}/v2/tasks -H 'content-type: application/json' \\\n    -d '{{\"model_ref\":\"{m}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Write a haiku about the sea.\"}}],\"max_tokens\":64}}'",
        m = a.model_id
    );
    println!("  curl -sN {url}/v2/tasks/<task_id>/events");
    println!("Press Ctrl-C to stop.");
    supervise(&mut stack).await;
    eprintln!("\n[up] stopping pool-managerd and orchestratord");
    stack.shutdown().await?;
    eprintln!("[up] stopped");
    Ok(())
}

async fn first_haiku(stack: &Stack, model: &str, dir: &std::path::Path) {
    println!("\nA first haiku, streamed through orchestratord and pool-managerd:\n");
    let opts = HaikuOptions {
        base_url: stack.orchd_url.clone(),
        token: None,
        model: model.into(),
        out_dir: dir.to_path_buf(),
        log_files: stack.log_files(),
        seed: 42,
    };
    let mut print = |t: &str| {
        print!("{t}");
        let _ = std::io::stdout().flush();
    };
    match haiku::run(&opts, &mut print).await {
        Ok(r) => println!(
            "\n\n[up] haiku check {} (run folder {})",
            if r.passed { "passed" } else { "FAILED" },
            r.run_dir.display()
        ),
        Err(e) => println!("\n\n[up] the first haiku failed: {e:#}"),
    }
}

/// orchestratord's exit status after it stepped down (HA: it found its lease taken after a pause).
const STEPPED_DOWN: i32 = 3;

/// Serves until Ctrl-C or SIGTERM. A daemon that exits is reported (which one, its exit status,
/// the last lines of its log) and started again after a backoff that doubles for each exit
/// within a minute of the last restart (1 s up to 30 s). An HA orchestratord that stepped down
/// (exit status 3) is started again at once, as a follower.
async fn supervise(stack: &mut Stack) {
    let mut signal = std::pin::pin!(wait_for_signal());
    let mut backoff = std::collections::HashMap::<Daemon, Duration>::new();
    let mut last_restart = std::collections::HashMap::<Daemon, std::time::Instant>::new();
    loop {
        tokio::select! {
            _ = &mut signal => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let Some((daemon, status)) = stack.exited() else {
            continue;
        };
        let stepped_down =
            matches!(daemon, Daemon::Replica(_)) && status.code() == Some(STEPPED_DOWN);
        if stepped_down {
            eprintln!("[up] {daemon} stepped down (another orchestratord leads); restarting it as a follower");
        } else {
            eprintln!(
                "[up] {daemon} exited ({status}); last lines of {}:\n{}",
                stack.log_of(daemon).display(),
                llorch::stack::tail(stack.log_of(daemon), 10)
            );
        }
        let recent = last_restart
            .get(&daemon)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        let b = backoff.entry(daemon).or_insert(Duration::from_secs(1));
        *b = if stepped_down {
            Duration::ZERO
        } else if recent {
            (*b * 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
        } else {
            Duration::from_secs(1)
        };
        loop {
            let wait = backoff[&daemon];
            if !wait.is_zero() {
                eprintln!("[up] restarting {daemon} in {} s", wait.as_secs());
            }
            tokio::select! {
                _ = &mut signal => return,
                _ = tokio::time::sleep(wait) => {}
            }
            last_restart.insert(daemon, std::time::Instant::now());
            match stack.respawn(daemon).await {
                Ok(()) => {
                    eprintln!("[up] {daemon} restarted; serving at {}", stack.orchd_url);
                    break;
                }
                Err(e) => {
                    eprintln!("[up] {daemon} did not come back: {e:#}");
                    let b = backoff.entry(daemon).or_default();
                    *b = (*b * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                }
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut t), Ok(mut i)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = t.recv() => {}
        _ = i.recv() => {}
    }
}
