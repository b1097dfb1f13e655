//! Stack overhead benchmark: every client route (`/v1/chat/completions`, `/v2/tasks` with
//! `messages`, `/v2/tasks` with `prompt`) through orchestratord and pool-managerd versus a twin
//! llama-server called directly on the matching engine route (same binary, model, -c, -np, -t),
//! alternating, several rounds. Reports time to first token, total time per stream and decode
//! speed as pairwise deltas, and each daemon's CPU per request read from `/proc/<pid>/stat`. With
//! `--litellm`, LiteLLM's proxy in front of the same twin runs the `/v1` chat requests too, for a
//! CPU-per-request comparison; with `--floor` (implied by `--litellm`), so do two minimal relays
//! chained in front of the twin (`floor.rs`), the least CPU any two-hop relay could use here.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api::events::Event;
use engine::{CompletionRequest, LaunchSpec};
use futures::StreamExt;
use llorch::stack::{EngineChoice, Stack, StackSpec};

use crate::overload::pct;
use crate::procstat::CpuClock;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds over the prompt set (each prompt runs once per route and path per round).
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    #[arg(long, default_value_t = 32)]
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
    /// Also run the `/v1` chat requests through LiteLLM's proxy in front of the twin (installed
    /// into a cached venv, `~/.cache/llama-orch/venv-litellm`, on first use).
    #[arg(long)]
    litellm: bool,
    /// Also run the `/v1` chat requests through two minimal relays chained in front of the twin
    /// (`xtask relay-floor`: axum + reqwest copying chunks, standing for orchestratord and
    /// pool-managerd), the floor of a two-hop relay's CPU per request. Implied by `--litellm`,
    /// whose CPU ratio means most next to it.
    #[arg(long)]
    floor: bool,
}

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
    "In 1969, the first humans",
];

/// The LiteLLM release the comparison pins.
const LITELLM_VERSION: &str = "1.108.7";

/// The master key LiteLLM's proxy is started with (it refuses to start without one).
const LITELLM_KEY: &str = "sk-bench";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    V1Chat,
    V2Messages,
    V2Prompt,
}

impl Route {
    const ALL: [Route; 3] = [Route::V1Chat, Route::V2Messages, Route::V2Prompt];

    fn name(self) -> &'static str {
        match self {
            Route::V1Chat => "/v1/chat/completions",
            Route::V2Messages => "/v2/tasks, messages",
            Route::V2Prompt => "/v2/tasks, prompt",
        }
    }

    /// The twin's route for the same request.
    fn direct_name(self) -> &'static str {
        match self {
            Route::V1Chat | Route::V2Messages => "engine /v1/chat/completions",
            Route::V2Prompt => "engine /completion",
        }
    }
}

/// One stream's timings.
#[derive(Clone, Copy)]
struct Timing {
    ttft_ms: f64,
    total_ms: f64,
    tps: f64,
}

/// A route's samples: adjacent pairs (through the proxy, direct) and the proxy's CPU.
#[derive(Default)]
struct Samples {
    pairs: Vec<(Timing, Timing)>,
    /// CPU seconds summed over the proxied requests: orchestratord, pool-managerd (or the floor's
    /// client-side and engine-side relays; or the LiteLLM proxy in the first place, 0 in the
    /// second).
    cpu: (f64, f64),
}

impl Samples {
    /// CPU milliseconds per proxied request, both processes together.
    fn cpu_ms_per_request(&self) -> f64 {
        (self.cpu.0 + self.cpu.1) * 1000.0 / self.pairs.len().max(1) as f64
    }
}

/// The processes whose CPU a proxied request is charged with.
#[derive(Clone, Copy)]
enum Charged {
    /// Two hops: orchestratord and pool-managerd, or the floor's client-side and engine-side
    /// relays.
    Hops(u32, u32),
    Litellm(u32),
}

impl Charged {
    fn read(self, clock: &CpuClock) -> anyhow::Result<(f64, f64)> {
        Ok(match self {
            Charged::Hops(a, b) => (clock.seconds(a)?, clock.seconds(b)?),
            Charged::Litellm(pid) => (clock.seconds(pid)?, 0.0),
        })
    }
}

/// Two minimal relays chained in front of the twin: client → `client` → `engine` → twin.
struct Floor {
    client: crate::floor::FloorRelay,
    engine: crate::floor::FloorRelay,
}

impl Floor {
    fn start(twin: &engine::EngineClient) -> anyhow::Result<Self> {
        let engine = crate::floor::FloorRelay::start(twin.base_url())?;
        let client = crate::floor::FloorRelay::start(&engine.url)?;
        Ok(Self { client, engine })
    }

    fn charged(&self) -> Charged {
        Charged::Hops(self.client.pid(), self.engine.pid())
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let root = std::env::current_dir()?;
    let bin_dir = match &a.bin_dir {
        // pool-managerd wants an absolute engine path.
        Some(d) => std::fs::canonicalize(d).with_context(|| format!("{}", d.display()))?,
        None => {
            crate::build_release(&["orchestratord", "pool-managerd", "fake-engine", "llorch"])?;
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
    let orchd = stack
        .orchd
        .as_ref()
        .and_then(|c| c.id())
        .context("orchestratord pid")?;
    let pm = stack
        .pool_managerd
        .as_ref()
        .and_then(|c| c.id())
        .context("pool-managerd pid")?;
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
    let mut litellm = if a.litellm {
        Some(Litellm::start(&dir, &direct.client).await?)
    } else {
        None
    };
    // Both relays are killed when `floor` drops, whichever way this returns.
    let floor = if a.floor || a.litellm {
        Some(Floor::start(&direct.client)?)
    } else {
        None
    };
    let clock = CpuClock::new()?;
    let client = client::Client::new(&stack.orchd_url, None)?;
    // A fresh connection per request, as pool-managerd does (ENGINE.md §8.14: the engine may
    // close a reused keep-alive connection before it answers).
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let paths = Paths {
        client: &client,
        http: &http,
        orchd_url: &stack.orchd_url,
        engine: &direct.client,
        max_tokens: a.max_tokens,
    };
    let stack_charged = Charged::Hops(orchd, pm);
    let twin_key = direct.client.api_key().expose();
    let mut samples: Vec<Samples> = Route::ALL.iter().map(|_| Samples::default()).collect();
    let mut via_litellm = Samples::default();
    let mut via_floor = Samples::default();
    // Warm every path once.
    for r in Route::ALL {
        paths.proxied(r, PROMPTS[0]).await?;
        paths.direct(r, PROMPTS[0]).await?;
    }
    if let Some(l) = &litellm {
        paths.relayed(&l.url, LITELLM_KEY, PROMPTS[0]).await?;
    }
    if let Some(f) = &floor {
        paths.relayed(&f.client.url, twin_key, PROMPTS[0]).await?;
    }
    for round in 0..a.rounds {
        for (k, p) in PROMPTS.iter().enumerate() {
            let proxy_first = (round + k) % 2 == 0;
            for (ri, r) in Route::ALL.into_iter().enumerate() {
                let s = &mut samples[ri];
                let pair = paths
                    .pair(
                        proxy_first,
                        &clock,
                        stack_charged,
                        &mut s.cpu,
                        paths.proxied(r, p),
                        || paths.direct(r, p),
                    )
                    .await?;
                s.pairs.push(pair);
            }
            if let Some(l) = &litellm {
                let pair = paths
                    .pair(
                        proxy_first,
                        &clock,
                        Charged::Litellm(l.pid),
                        &mut via_litellm.cpu,
                        paths.relayed(&l.url, LITELLM_KEY, p),
                        || paths.direct(Route::V1Chat, p),
                    )
                    .await?;
                via_litellm.pairs.push(pair);
            }
            if let Some(f) = &floor {
                let pair = paths
                    .pair(
                        proxy_first,
                        &clock,
                        f.charged(),
                        &mut via_floor.cpu,
                        paths.relayed(&f.client.url, twin_key, p),
                        || paths.direct(Route::V1Chat, p),
                    )
                    .await?;
                via_floor.pairs.push(pair);
                // The floor's pair (and LiteLLM's, which never runs without it) left a chat in the
                // twin's prompt cache; give the stack's engine the same last request (not
                // measured), so that the next prompt's pairs start from equal caches (otherwise
                // the stack's engine alone prefills the chat template again: +15 ms TTFT on /v1
                // in one run, an artifact of the order).
                paths.proxied(Route::V1Chat, p).await?;
            }
        }
        eprintln!("[bench] round {}/{} done", round + 1, a.rounds);
    }
    let metrics = client.metrics_text().await?.body;
    if let Some(l) = litellm.as_mut() {
        l.stop().await;
    }
    direct.stop(Duration::from_secs(5)).await;
    stack.shutdown().await?;
    println!(
        "engine: {} ({}), devices {}",
        build.version,
        if build.gpu { "CUDA build" } else { "CPU build" },
        a.devices
    );
    report(
        &a,
        &samples,
        litellm.is_some().then_some(&via_litellm),
        floor.is_some().then_some(&via_floor),
        clock.hz(),
    );
    report_overhead_histogram(&metrics);
    Ok(())
}

/// The ways one request can go.
struct Paths<'a> {
    client: &'a client::Client,
    http: &'a reqwest::Client,
    orchd_url: &'a str,
    engine: &'a engine::EngineClient,
    max_tokens: u64,
}

impl Paths<'_> {
    /// Runs a proxied request and its direct twin in the given order; the proxied one is charged
    /// the CPU `charged` used while it ran.
    async fn pair<F, G>(
        &self,
        proxy_first: bool,
        clock: &CpuClock,
        charged: Charged,
        cpu: &mut (f64, f64),
        proxied: F,
        direct: impl FnOnce() -> G,
    ) -> anyhow::Result<(Timing, Timing)>
    where
        F: std::future::Future<Output = anyhow::Result<Timing>>,
        G: std::future::Future<Output = anyhow::Result<Timing>>,
    {
        let mut direct = Some(direct);
        let mut d = None;
        if !proxy_first {
            d = Some(direct.take().context("direct path")?().await?);
        }
        let before = charged.read(clock)?;
        let p = proxied.await?;
        let after = charged.read(clock)?;
        cpu.0 += after.0 - before.0;
        cpu.1 += after.1 - before.1;
        if let Some(direct) = direct {
            d = Some(direct().await?);
        }
        Ok((p, d.context("direct path")?))
    }

    async fn proxied(&self, r: Route, prompt: &str) -> anyhow::Result<Timing> {
        match r {
            Route::V1Chat => {
                sse_chat(
                    self.http
                        .post(format!("{}/v1/chat/completions", self.orchd_url)),
                    prompt,
                    self.max_tokens,
                )
                .await
            }
            Route::V2Messages | Route::V2Prompt => {
                let mut req = api::task::TaskRequest::new(llorch::dev::MODEL_ID);
                if r == Route::V2Prompt {
                    req.prompt = Some(prompt.into());
                } else {
                    req.messages = Some(vec![api::task::Message::text(
                        api::task::Role::User,
                        prompt,
                    )]);
                }
                req.max_tokens = Some(self.max_tokens);
                req.temperature = Some(0.0);
                req.seed = Some(42);
                req.stop = vec![];
                v2_task(self.client, &req).await
            }
        }
    }

    async fn direct(&self, r: Route, prompt: &str) -> anyhow::Result<Timing> {
        match r {
            Route::V1Chat | Route::V2Messages => {
                sse_chat(
                    self.http
                        .post(format!("{}/v1/chat/completions", self.engine.base_url()))
                        .bearer_auth(self.engine.api_key().expose()),
                    prompt,
                    self.max_tokens,
                )
                .await
            }
            Route::V2Prompt => completion(self.engine, prompt, self.max_tokens).await,
        }
    }

    /// A chat through a relay in front of the twin (LiteLLM, or the floor), presenting `key`.
    async fn relayed(&self, url: &str, key: &str, prompt: &str) -> anyhow::Result<Timing> {
        sse_chat(
            self.http
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key),
            prompt,
            self.max_tokens,
        )
        .await
    }
}

/// Counts tokens and times them: first token, and the decode rate after it.
struct Clock {
    t0: Instant,
    first: Option<Instant>,
    n: u64,
}

impl Clock {
    fn start() -> Self {
        Self {
            t0: Instant::now(),
            first: None,
            n: 0,
        }
    }

    fn token(&mut self) {
        self.first.get_or_insert_with(Instant::now);
        self.n += 1;
    }

    fn finish(self) -> anyhow::Result<Timing> {
        let first = self.first.context("no token")?;
        let decode = first.elapsed().as_secs_f64();
        Ok(Timing {
            ttft_ms: first.duration_since(self.t0).as_secs_f64() * 1000.0,
            total_ms: self.t0.elapsed().as_secs_f64() * 1000.0,
            tps: if self.n > 1 && decode > 0.0 {
                (self.n - 1) as f64 / decode
            } else {
                0.0
            },
        })
    }
}

/// A streamed OpenAI chat completion (orchestratord, the twin engine or LiteLLM): POST to the
/// `[DONE]` line, counting chunks whose delta carries content.
async fn sse_chat(
    rb: reqwest::RequestBuilder,
    prompt: &str,
    max_tokens: u64,
) -> anyhow::Result<Timing> {
    let body = serde_json::json!({
        "model": llorch::dev::MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 42,
        "stream": true,
    });
    let mut clock = Clock::start();
    let resp = rb.json(&body).send().await?;
    if !resp.status().is_success() {
        bail!(
            "chat completion answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = vec![];
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = std::str::from_utf8(&line)?.trim();
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                return clock.finish();
            }
            let v: serde_json::Value = serde_json::from_str(data)?;
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
            {
                clock.token();
            }
        }
    }
    bail!("the chat stream ended without [DONE]")
}

/// One task through `/v2/tasks` and its SSE stream.
async fn v2_task(client: &client::Client, req: &api::task::TaskRequest) -> anyhow::Result<Timing> {
    let mut clock = Clock::start();
    let adm = client.submit(req).await?.body;
    let mut s = client.events(&adm.streams.sse).await?;
    while let Some(f) = s.next().await {
        match f?.event {
            Event::Token(_) => clock.token(),
            Event::End(_) => return clock.finish(),
            Event::Error(e) => bail!("stack task failed: {e:?}"),
            _ => {}
        }
    }
    bail!("the task stream ended without an end frame")
}

/// The same request straight to llama-server's `/completion`.
async fn completion(
    engine: &engine::EngineClient,
    prompt: &str,
    max_tokens: u64,
) -> anyhow::Result<Timing> {
    let req = CompletionRequest {
        prompt: prompt.into(),
        n_predict: max_tokens,
        stream: true,
        cache_prompt: true,
        seed: Some(42),
        temperature: Some(0.0),
        ..Default::default()
    };
    let mut clock = Clock::start();
    let mut frames = Box::pin(engine.complete(&req).await?);
    while let Some(f) = frames.next().await {
        let f = f?;
        if !f.content.is_empty() {
            clock.token();
        }
        if f.stop {
            return clock.finish();
        }
    }
    bail!("the engine stream ended without a final frame")
}

/// LiteLLM's proxy in front of the twin engine, from a cached venv.
struct Litellm {
    child: tokio::process::Child,
    pid: u32,
    url: String,
}

impl Litellm {
    async fn start(dir: &std::path::Path, engine: &engine::EngineClient) -> anyhow::Result<Self> {
        let venv = llorch::cache_dir().join("venv-litellm");
        let python = venv.join("bin/python");
        let probe = format!(
            "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '{LITELLM_VERSION}')"
        );
        let ok = std::process::Command::new(&python)
            .args(["-c", &probe])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "[bench] installing litellm[proxy]=={LITELLM_VERSION} into {}",
                venv.display()
            );
            let st = std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()?;
            anyhow::ensure!(st.success(), "python3 -m venv failed");
            let st = std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("litellm[proxy]=={LITELLM_VERSION}"))
                .status()?;
            anyhow::ensure!(st.success(), "pip install litellm failed");
        }
        let port = llorch::stack::free_port()?;
        let config = dir.join("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n      api_base: {base}/v1\n      api_key: os.environ/LLORCH_TWIN_KEY\n",
                m = llorch::dev::MODEL_ID,
                base = engine.base_url()
            ),
        )?;
        let log = std::fs::File::create(dir.join("litellm.log"))?;
        let child = tokio::process::Command::new(venv.join("bin/litellm"))
            .arg("--config")
            .arg(&config)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--num_workers",
                "1",
            ])
            .env("LLORCH_TWIN_KEY", engine.api_key().expose())
            .env("LITELLM_MASTER_KEY", LITELLM_KEY)
            .env("LITELLM_LOG", "ERROR")
            .env("LITELLM_TELEMETRY", "False")
            .env("NO_DOCS", "True")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting litellm")?;
        let pid = child.id().context("litellm pid")?;
        let url = format!("http://127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(120);
        let http = reqwest::Client::new();
        loop {
            if http
                .get(format!("{url}/health/liveliness"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if Instant::now() > until {
                bail!(
                    "litellm did not come up; see {}",
                    dir.join("litellm.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(Self { child, pid, url })
    }

    async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
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

/// Median of a per-pair quantity.
fn med(pairs: &[(Timing, Timing)], f: impl Fn(&(Timing, Timing)) -> f64) -> f64 {
    pct(&pairs.iter().map(f).collect::<Vec<_>>(), 0.5)
}

fn report(
    a: &Args,
    routes: &[Samples],
    litellm: Option<&Samples>,
    floor: Option<&Samples>,
    hz: f64,
) {
    let n = a.rounds * PROMPTS.len();
    println!("\nbench overhead: {n} requests per route and path, max_tokens {}, greedy, seed 42, alternating order; deltas are medians of adjacent pairs\n", a.max_tokens);
    println!("| route (twin route) | TTFT direct | TTFT added | total per stream added | decode tok/s direct / proxied | orchestratord CPU per request | pool-managerd CPU per request |");
    println!("|---|---|---|---|---|---|---|");
    for (r, s) in Route::ALL.iter().zip(routes) {
        let k = s.pairs.len().max(1) as f64;
        println!(
            "| {} ({}) | {:.1} ms | {:+.2} ms | {:+.2} ms | {:.0} / {:.0} | {:.2} ms | {:.2} ms |",
            r.name(),
            r.direct_name(),
            med(&s.pairs, |(_, d)| d.ttft_ms),
            med(&s.pairs, |(p, d)| p.ttft_ms - d.ttft_ms),
            med(&s.pairs, |(p, d)| p.total_ms - d.total_ms),
            med(&s.pairs, |(_, d)| d.tps),
            med(&s.pairs, |(p, _)| p.tps),
            s.cpu.0 * 1000.0 / k,
            s.cpu.1 * 1000.0 / k,
        );
    }
    if litellm.is_some() || floor.is_some() {
        let ours = &routes[0];
        let ours_cpu = ours.cpu_ms_per_request();
        println!("\n| /v1/chat/completions in front of the twin | TTFT added | total per stream added | proxy CPU per request |");
        println!("|---|---|---|---|");
        let row = |name: &str, s: &Samples| {
            println!(
                "| {name} | {:+.2} ms | {:+.2} ms | {:.2} ms |",
                med(&s.pairs, |(p, d)| p.ttft_ms - d.ttft_ms),
                med(&s.pairs, |(p, d)| p.total_ms - d.total_ms),
                s.cpu_ms_per_request(),
            );
        };
        row("llama-orch (orchestratord + pool-managerd)", ours);
        if let Some(l) = litellm {
            row(&format!("LiteLLM {LITELLM_VERSION} proxy (one worker)"), l);
        }
        if let Some(f) = floor {
            row(
                "two minimal relays (the floor: axum + reqwest copying chunks)",
                f,
            );
        }
        println!();
        if let Some(l) = litellm {
            println!(
                "LiteLLM uses {:.1}× the CPU per request of llama-orch (target: ≥ 20×)",
                l.cpu_ms_per_request() / ours_cpu
            );
        }
        if let Some(f) = floor {
            let floor_cpu = f.cpu_ms_per_request();
            if let Some(l) = litellm {
                println!(
                    "LiteLLM uses {:.1}× the CPU per request of two minimal relays (the most any two-hop relay could reach here)",
                    l.cpu_ms_per_request() / floor_cpu
                );
            }
            println!(
                "llama-orch uses {:.1}× the CPU per request of two minimal relays",
                ours_cpu / floor_cpu
            );
        }
    }
    println!("\nCPU: utime + stime of each proxy process from /proc/<pid>/stat ({hz} ticks/s) read before and after each proxied request, summed and divided by the requests. Targets: TTFT added ≤ 1 ms, total per 32-token stream added ≤ 3 ms, ≤ 1 ms CPU per request per daemon.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_request_sums_both_processes_over_the_pairs() {
        let t = Timing {
            ttft_ms: 0.0,
            total_ms: 0.0,
            tps: 0.0,
        };
        let s = Samples {
            pairs: vec![(t, t); 4],
            cpu: (0.5, 0.25),
        };
        assert_eq!(s.cpu_ms_per_request(), 187.5);
        assert_eq!(Samples::default().cpu_ms_per_request(), 0.0);
    }
}
