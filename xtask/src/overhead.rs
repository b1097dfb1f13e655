//! Stack overhead benchmark: time to first token and decode speed through orchestratord and
//! pool-managerd versus a twin llama-server called directly (same binary, model, -c, -np, -t).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api::events::Event;
use engine::{CompletionRequest, LaunchSpec};
use futures::StreamExt;
use llorch::stack::{EngineChoice, Stack, StackSpec};

#[derive(clap::Args)]
pub struct Args {
    /// Rounds over the prompt set (each prompt runs once per path per round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 64)]
    max_tokens: u64,
    /// Engine threads for both paths.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// `cpu`, or GPU indices (e.g. `0`): both paths then use a CUDA build (gpu_policy = "gpu")
    /// with every layer offloaded to those GPUs.
    #[arg(long, default_value = "cpu")]
    devices: String,
    /// Use the orchestratord and pool-managerd binaries in this folder instead of building them
    /// (for machines without a Rust toolchain, such as the GPU check's).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
    "In 1969, the first humans",
];

#[derive(Default)]
struct Samples {
    ttft_ms: Vec<f64>,
    tps: Vec<f64>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let root = std::env::current_dir()?;
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => {
            crate::build_release(&["orchestratord", "pool-managerd"])?;
            root.join("target/release")
        }
    };
    let on_gpu = a.devices.trim() != "cpu";
    let model = llorch::dev::model();
    let source = llorch::dev::llama_source();
    if !model.is_file() || !source.is_file() {
        bail!("dev assets missing: run scripts/dev-assets.sh");
    }
    let engines = llorch::cache_dir().join("engines");
    let build = engine::provision(
        &engine::ProvisionRequest {
            source: engine::EngineSource::Archive {
                location: source.display().to_string(),
                subdir: "llama.cpp".into(),
                sha256: Some(llorch::dev::LLAMA_SOURCE_SHA256.into()),
            },
            gpu: if on_gpu {
                engine::GpuPolicy::Gpu
            } else {
                engine::GpuPolicy::Cpu
            },
            build_number: None,
            build_commit: None,
            extra_cmake_flags: vec![],
            engines_dir: engines.clone(),
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        },
        &|_| {},
    )?;
    let dir = root.join("target").join("bench-overhead");
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = StackSpec::new(
        bin_dir,
        dir.clone(),
        model.clone(),
        EngineChoice::Source {
            archive: source,
            sha256: llorch::dev::LLAMA_SOURCE_SHA256.into(),
        },
        engines,
    );
    spec.threads = Some(a.threads);
    spec.devices = a.devices.clone();
    spec.heartbeat_interval_ms = 5000;
    spec.heartbeat_timeout_ms = 30000;
    let ctx = spec.ctx;
    let mut stack = Stack::start(spec).await?;
    stack
        .wait_ready(Duration::from_secs(120), &mut |_| {})
        .await?;
    let direct = engine::launch(&LaunchSpec {
        binary: build.binary.clone(),
        model_path: model,
        alias: llorch::dev::MODEL_ID.into(),
        ctx_per_slot: ctx,
        slots: 1,
        threads: Some(a.threads),
        gpu_layers: if on_gpu { 999 } else { 0 },
        cuda_visible_devices: if on_gpu {
            a.devices.clone()
        } else {
            String::new()
        },
        extra_args: vec![],
        log_path: dir.join("direct-engine.log"),
        start_timeout: Duration::from_secs(60),
        die_with_parent: false,
        pid_record: None,
    })
    .await
    .context("starting the direct llama-server")?;
    let client = client::Client::new(&stack.orchd_url, None)?;
    let (mut via_stack, mut via_direct) = (Samples::default(), Samples::default());
    // Warm both paths once.
    one_stack(&client, PROMPTS[0], a.max_tokens).await?;
    one_direct(&direct.client, PROMPTS[0], a.max_tokens).await?;
    for round in 0..a.rounds {
        for (k, p) in PROMPTS.iter().enumerate() {
            let stack_first = (round + k) % 2 == 0;
            for leg in 0..2 {
                if (leg == 0) == stack_first {
                    push(&mut via_stack, one_stack(&client, p, a.max_tokens).await?);
                } else {
                    push(
                        &mut via_direct,
                        one_direct(&direct.client, p, a.max_tokens).await?,
                    );
                }
            }
        }
        eprintln!("[bench] round {}/{} done", round + 1, a.rounds);
    }
    let metrics = client.metrics_text().await?.body;
    direct.stop(Duration::from_secs(5)).await;
    stack.shutdown().await?;
    println!(
        "engine: {} ({}), devices {}",
        build.version,
        if build.gpu { "CUDA build" } else { "CPU build" },
        a.devices
    );
    report(
        &via_stack,
        &via_direct,
        a.rounds * PROMPTS.len(),
        a.max_tokens,
    );
    report_overhead_histogram(&metrics);
    Ok(())
}

fn push(s: &mut Samples, (ttft, tps): (f64, f64)) {
    s.ttft_ms.push(ttft);
    s.tps.push(tps);
}

/// One task through orchestratord: POST to first token frame, and decode tokens/s after it.
async fn one_stack(
    client: &client::Client,
    prompt: &str,
    max_tokens: u64,
) -> anyhow::Result<(f64, f64)> {
    let mut req = api::task::TaskRequest::new(llorch::dev::MODEL_ID);
    req.prompt = Some(prompt.into());
    req.max_tokens = Some(max_tokens);
    req.temperature = Some(0.0);
    req.seed = Some(42);
    req.stop = vec![];
    let t0 = Instant::now();
    let adm = client.submit(&req).await?.body;
    let mut s = client.events(&adm.streams.sse).await?;
    let (mut first, mut n) = (None, 0u64);
    while let Some(f) = s.next().await {
        match f?.event {
            Event::Token(_) => {
                first.get_or_insert_with(Instant::now);
                n += 1;
            }
            Event::End(_) => break,
            Event::Error(e) => bail!("stack task failed: {e:?}"),
            _ => {}
        }
    }
    finish(t0, first, n)
}

/// The same request straight to llama-server's `/completion`.
async fn one_direct(
    engine: &engine::EngineClient,
    prompt: &str,
    max_tokens: u64,
) -> anyhow::Result<(f64, f64)> {
    let req = CompletionRequest {
        prompt: prompt.into(),
        n_predict: max_tokens,
        stream: true,
        cache_prompt: true,
        seed: Some(42),
        temperature: Some(0.0),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut frames = Box::pin(engine.complete(&req).await?);
    let (mut first, mut n) = (None, 0u64);
    while let Some(f) = frames.next().await {
        let f = f?;
        if !f.content.is_empty() {
            first.get_or_insert_with(Instant::now);
            n += 1;
        }
        if f.stop {
            break;
        }
    }
    finish(t0, first, n)
}

fn finish(t0: Instant, first: Option<Instant>, n: u64) -> anyhow::Result<(f64, f64)> {
    let first = first.context("no token")?;
    let ttft = first.duration_since(t0).as_secs_f64() * 1000.0;
    let decode = first.elapsed().as_secs_f64();
    let tps = if n > 1 && decode > 0.0 {
        (n - 1) as f64 / decode
    } else {
        0.0
    };
    Ok((ttft, tps))
}

/// orchestratord's own measurement: first token frame − leaving the queue − engine TTFT.
fn report_overhead_histogram(metrics: &str) {
    let series = llorch::haiku::prom::parse(metrics).unwrap_or_default();
    let count: f64 = series
        .iter()
        .filter(|s| s.name == "orchestrator_overhead_ms_count")
        .map(|s| s.value)
        .sum();
    let sum: f64 = series
        .iter()
        .filter(|s| s.name == "orchestrator_overhead_ms_sum")
        .map(|s| s.value)
        .sum();
    let mut line = String::new();
    for le in ["1", "2", "5", "10"] {
        let n: f64 = series
            .iter()
            .filter(|s| {
                s.name == "orchestrator_overhead_ms_bucket"
                    && s.labels.get("le").map(String::as_str) == Some(le)
            })
            .map(|s| s.value)
            .sum();
        line.push_str(&format!(" ≤{le} ms: {n}/{count};"));
    }
    println!("orchestrator_overhead_ms (orchestratord's own view, all tasks incl. warm-up): mean {:.2} ms;{line}", if count > 0.0 { sum / count } else { f64::NAN });
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let idx = ((s.len() as f64 - 1.0) * p).round() as usize;
    s.get(idx).copied().unwrap_or(f64::NAN)
}

fn report(stack: &Samples, direct: &Samples, n: usize, max_tokens: u64) {
    println!("\nbench overhead: {n} requests per path, max_tokens {max_tokens}, greedy, seed 42, alternating order\n");
    println!("| metric | direct llama-server | through llama-orch | stack − direct | ratio |");
    println!("|---|---|---|---|---|");
    for (name, d, s) in [
        (
            "TTFT median (ms)",
            pct(&direct.ttft_ms, 0.5),
            pct(&stack.ttft_ms, 0.5),
        ),
        (
            "TTFT p90 (ms)",
            pct(&direct.ttft_ms, 0.9),
            pct(&stack.ttft_ms, 0.9),
        ),
        (
            "decode median (tok/s)",
            pct(&direct.tps, 0.5),
            pct(&stack.tps, 0.5),
        ),
        (
            "decode p90 (tok/s)",
            pct(&direct.tps, 0.9),
            pct(&stack.tps, 0.9),
        ),
    ] {
        println!(
            "| {name} | {d:.1} | {s:.1} | {:+.1} | {:.3} |",
            s - d,
            s / d
        );
    }
    let added = pct(&stack.ttft_ms, 0.5) - pct(&direct.ttft_ms, 0.5);
    let loss = 1.0 - pct(&stack.tps, 0.5) / pct(&direct.tps, 0.5);
    println!("\ntargets: added median TTFT {added:.2} ms (target < 2 ms), decode loss {:.1}% (target < 2%)", loss * 100.0);
}
