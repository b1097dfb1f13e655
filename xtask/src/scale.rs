//! Scale benchmark: 1,000 simulated nodes heartbeating and 10,000 concurrent streams through one
//! orchestratord on this machine; prints its CPU share, memory per idle stream, and the scheduling
//! decision latency of the core (measured in-process, with no I/O, for the same cluster shape).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use api::node::{
    HeartbeatRequest, LoadedModel, PoolState, PoolStatus, RegisterRequest, RegisterResponse,
};
use api::worker::{DispatchModel, WorkerEvent, WorkerLine};
use axum::body::{Body, Bytes};
use axum::routing::post;
use llorch::stack::{EngineChoice, Stack, StackSpec};

use crate::procstat::{clock_ticks_per_sec, cpu_ticks, raise_nofile, rss_kib, vm_hwm};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Seconds each stream stays open (one token every 10 s).
    #[arg(long, default_value_t = 40)]
    hold_secs: u64,
    /// Only the in-process decision latency measurement.
    #[arg(long)]
    decisions_only: bool,
}

const MODEL: &str = "scale-model";

pub async fn run(a: Args) -> anyhow::Result<()> {
    let _ = raise_nofile();
    decision_latency(a.nodes, a.streams)?;
    prefix_decision_latency(a.nodes, a.streams)?;
    if a.decisions_only {
        return Ok(());
    }
    crate::build_release(&["orchestratord"])?;
    let root = std::env::current_dir()?;
    let dir = root.join("target/bench-scale");
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = StackSpec::new(
        root.join("target/release"),
        dir.clone(),
        dir.join("none.gguf"),
        EngineChoice::Binary {
            path: "/bin/false".into(),
        },
        dir.join("engines"),
    );
    spec.pool_id = String::new();
    spec.heartbeat_interval_ms = 10_000;
    spec.heartbeat_timeout_ms = 30_000;
    spec.orchd_extra = format!(
        "[queue]\ncapacity = {}\n[logging]\nlevel = \"warn\"\n",
        a.streams * 2
    );
    let mut stack = Stack::start(spec).await?;
    let pid = stack.orchd.as_ref().and_then(|c| c.id()).context("pid")?;
    let slots = a.streams.div_ceil(a.nodes) as u32;
    let port = llorch::stack::free_port()?;
    let hold = Duration::from_secs(a.hold_secs);
    for i in 0..a.nodes {
        let listener = tokio::net::TcpListener::bind((node_ip(i), port))
            .await
            .with_context(|| format!("binding {}", node_ip(i)))?;
        let app = axum::Router::new().route(
            "/v2/pools/{pool}/dispatch",
            post(move |body: Bytes| dispatch(body, hold)),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    eprintln!(
        "[bench] registering {} nodes with {slots} slots each",
        a.nodes
    );
    let mut creds = vec![];
    for i in 0..a.nodes {
        creds.push(register(&http, &stack.orchd_url, i, port, slots).await?);
    }
    let beats = Arc::new(AtomicUsize::new(0));
    for (i, cred) in creds.into_iter().enumerate() {
        let (http, url, beats) = (http.clone(), stack.orchd_url.clone(), beats.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((i as u64 * 10_000) / 1000)).await;
            let mut seq = 0;
            loop {
                seq += 1;
                let hb = HeartbeatRequest {
                    seq,
                    sent_at_ms: 0,
                    pools: vec![pool(i, slots)],
                    gpus: vec![],
                    commands: vec![],
                };
                if http
                    .post(format!("{url}/v2/nodes/{}/heartbeat", node_id(i)))
                    .bearer_auth(&cred)
                    .json(&hb)
                    .send()
                    .await
                    .is_ok()
                {
                    beats.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tick_hz = clock_ticks_per_sec()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let idle = cpu_share(pid, Duration::from_secs(10), tick_hz).await?;
    let rss_before = rss_kib(pid);
    eprintln!(
        "[bench] heartbeats only: {:.1}% of one core; opening {} streams",
        idle * 100.0,
        a.streams
    );
    let opened = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let client = client::Client::new(&stack.orchd_url, None)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let t_open = Instant::now();
    for _ in 0..a.streams {
        let mut permit = Some(sem.clone().acquire_owned().await?);
        let (c, opened, ended, refused) = (
            client.clone(),
            opened.clone(),
            ended.clone(),
            refused.clone(),
        );
        tokio::spawn(async move {
            let mut req = api::task::TaskRequest::new(MODEL);
            req.prompt = Some("scale".into());
            req.max_tokens = Some(8);
            let Ok(adm) = c.submit(&req).await else {
                refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let Ok(mut s) = c.events(&adm.body.streams.sse).await else {
                return;
            };
            let mut counted = false;
            while let Some(Ok(f)) = s.next().await {
                if !counted {
                    opened.fetch_add(1, Ordering::Relaxed);
                    counted = true;
                    // Opening is throttled; holding the stream is not.
                    permit.take();
                }
                if f.event.is_terminal() {
                    ended.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        });
    }
    while opened.load(Ordering::Relaxed) < a.streams && t_open.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open_secs = t_open.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_streams = rss_kib(pid);
    let busy = cpu_share(pid, Duration::from_secs(10), tick_hz).await?;
    let n_open = opened.load(Ordering::Relaxed);
    let per_stream =
        (rss_streams.saturating_sub(rss_before)) as f64 * 1024.0 / n_open.max(1) as f64;
    let peak = vm_hwm(pid);
    stack.shutdown().await?;
    println!("\nbench scale: {} simulated nodes ({slots} slots each) heartbeating every 10 s; {} streams held open ~{} s\n", a.nodes, a.streams, a.hold_secs);
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| heartbeats accepted during the run | {} | |",
        beats.load(Ordering::Relaxed)
    );
    println!(
        "| orchestratord CPU, heartbeats only | {:.1}% of one core ({:.1}% of the machine's {cores} cores) | |",
        idle * 100.0,
        idle * 100.0 / cores
    );
    println!(
        "| streams opened (started frame received) | {n_open} in {open_secs:.1} s ({} submits refused) | {} |",
        refused.load(Ordering::Relaxed),
        a.streams
    );
    println!(
        "| orchestratord CPU, streams open | {:.1}% of one core ({:.1}% of the machine's {cores} cores) | |",
        busy * 100.0,
        busy * 100.0 / cores
    );
    println!(
        "| orchestratord RSS before / with streams / peak | {:.1} / {:.1} / {:.1} MiB | |",
        rss_before as f64 / 1024.0,
        rss_streams as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!(
        "| memory per idle stream | {:.1} KB | < 50 KB |",
        per_stream / 1000.0
    );
    println!("\nCPU: orchestratord's own utime + stime from /proc/{pid}/stat over 10 s of wall time ({tick_hz} ticks/s, getconf CLK_TCK); memory: VmRSS and VmHWM from /proc/{pid}/status.");
    Ok(())
}

fn node_id(i: usize) -> String {
    format!("sim-{i:04}")
}

/// A typed id from a name this benchmark made up (always valid).
fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("a valid simulated id")
}

/// Each simulated node listens on its own loopback address, so each gets its own connection.
fn node_ip(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200 + 1) as u8)
}

fn pool(i: usize, slots: u32) -> PoolStatus {
    PoolStatus {
        pool_id: id(&format!("{}-p", node_id(i))),
        state: PoolState::Ready,
        last_error: None,
        engine: "llamacpp".into(),
        engine_version: Some("b0-simulated".into()),
        engine_built: true,
        provisioning_target: false,
        device_mask: "cpu".into(),
        slots_total: slots,
        slots_free: slots,
        ctx_per_slot: 1024,
        workload: api::task::Workload::Completion,
        models: vec![LoadedModel {
            id: id(MODEL),
            model_ref: "file:/scale.gguf".into(),
            digest: None,
            size_bytes: None,
            metadata: None,
        }],
        running: vec![],
        kv_cache_usage_ratio: None,
        decode_tokens_per_s: None,
        vram_used_bytes: None,
    }
}

async fn register(
    http: &reqwest::Client,
    url: &str,
    i: usize,
    port: u16,
    slots: u32,
) -> anyhow::Result<String> {
    let req = RegisterRequest {
        protocol_version: 1,
        node_id: id(&node_id(i)),
        machine_id: id(&node_id(i)),
        version: "sim".into(),
        address: format!("http://{}:{port}", node_ip(i)),
        dispatch_token: "s".repeat(32),
        capabilities: Default::default(),
        pools: vec![pool(i, slots)],
    };
    let r: RegisterResponse = http
        .post(format!("{url}/v2/nodes/register"))
        .json(&req)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    r.node_token.context("no credential issued")
}

/// A simulated worker's dispatch: started, then a token every 10 s while the stream is held, then end.
async fn dispatch(_body: Bytes, hold: Duration) -> axum::response::Response {
    let tokens = (hold.as_secs() / 10).max(1);
    let stream = futures::stream::unfold(0u64, move |k| async move {
        let ev = match k {
            0 => WorkerEvent::Started {
                engine: "llamacpp".into(),
                engine_version: "b0-simulated".into(),
                model: DispatchModel {
                    id: id(MODEL),
                    digest: None,
                },
            },
            k if k <= tokens => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                WorkerEvent::Token {
                    i: k - 1,
                    t: "x".into(),
                    logprobs: vec![],
                    ids: vec![],
                }
            }
            k if k == tokens + 1 => WorkerEvent::End {
                tokens_in: 1,
                tokens_out: tokens,
                stop_reason: api::events::StopReason::Limit,
                seed: None,
                engine_ttft_ms: Some(1),
                engine_decode_ms: 1,
                tokens_cached: None,
                slot: None,
            },
            _ => return None,
        };
        let mut line = serde_json::to_vec(&WorkerLine { seq: k, event: ev }).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), k + 1))
    });
    axum::response::Response::new(Body::from_stream(stream))
}

/// orchestratord's CPU time (user + system, from `/proc/<pid>/stat`) over `over`, divided by the
/// wall time: 1.0 = one core fully busy.
async fn cpu_share(pid: u32, over: Duration, tick_hz: f64) -> anyhow::Result<f64> {
    let (ticks0, t0) = (cpu_ticks(pid)?, Instant::now());
    tokio::time::sleep(over).await;
    let ticks = cpu_ticks(pid)?.saturating_sub(ticks0) as f64;
    Ok(ticks / tick_hz / t0.elapsed().as_secs_f64())
}

/// The core's decision latency: `submit` (validation done, placement, queueing, dispatch decision)
/// on a core with `nodes` nodes, measured per task while `streams` tasks pile up running. Fails
/// when any submit is refused, since then it would time refusals instead of decisions.
fn decision_latency(nodes: usize, streams: usize) -> anyhow::Result<()> {
    use orchestratord::core::{CancelJob, Core, DispatchJob, Effects, Timer};
    struct Discard;
    impl Effects for Discard {
        fn dispatch(&mut self, _: DispatchJob) {}
        fn abort_dispatch(&mut self, _: api::TaskId) {}
        fn cancel_on_worker(&mut self, _: CancelJob) {}
        fn timer(&mut self, _: Duration, _: Timer) {}
        fn tokenize(&mut self, _: orchestratord::core::TokenizeJob) {}
    }
    let mut cfg = orchestratord::config::RawConfig::default()
        .validate(std::path::Path::new("/tmp"))
        .map_err(|e| anyhow::anyhow!("default config: {e:?}"))?;
    cfg.queue_capacity = streams * 2;
    let cfg = Arc::new(cfg);
    let mut core = Core::new(
        cfg.clone(),
        Discard,
        Arc::new(orchestratord::metrics::Metrics::default()),
        catalog::Catalog::open_in_memory().context("in-memory catalog")?,
    );
    let now = Instant::now();
    let slots = streams.div_ceil(nodes) as u32;
    for i in 0..nodes {
        let req = RegisterRequest {
            protocol_version: 1,
            node_id: id(&node_id(i)),
            machine_id: id(&node_id(i)),
            version: "sim".into(),
            address: format!("http://{}:1", node_ip(i)),
            dispatch_token: "s".repeat(32),
            capabilities: Default::default(),
            pools: vec![pool(i, slots)],
        };
        core.register(req, orchestratord::core::nodes::NodeCaller::Open, now)
            .map_err(|e| anyhow::anyhow!("registering {}: {e:?}", node_id(i)))?;
    }
    let mut lat = Vec::with_capacity(streams);
    let mut refused = vec![];
    for _ in 0..streams {
        let mut r = api::task::TaskRequest::new(MODEL);
        r.prompt = Some("x".into());
        r.max_tokens = Some(8);
        let v = orchestratord::admission::validate(r, &cfg)
            .map_err(|e| anyhow::anyhow!("validation: {e:?}"))?;
        let t0 = Instant::now();
        let outcome = core.submit(v, id("c"), now);
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
        if let Err(e) = outcome {
            refused.push(e);
        }
    }
    // A refusal takes a shorter path than a placement, so timing refusals would flatter the core.
    anyhow::ensure!(
        refused.is_empty(),
        "{} of {streams} submits were refused (first: {:?}); the latencies would not be decisions",
        refused.len(),
        refused.first()
    );
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!("\nscheduling decision latency (core::submit with {nodes} nodes, up to {streams} running): median {:.1} µs, p99 {:.1} µs (target: median < 100 µs); all {streams} submits admitted, none refused", p(0.5), p(0.99));
    Ok(())
}

/// Cache-aware decision latency: the prefix index first learns `streams` finished sequences spread
/// over `nodes` pools (30 shared 1,000-token system prompts, each with its own 160-token question;
/// synthetic token ids), through the core's own feedback path; then `streams` new requests sharing
/// those prompts are timed from `submit` (admission, the tokenize call asked for) to the worker's
/// ids arriving (`on_tokenized`: key hashing, index lookup, scoring, dispatch decision) while they
/// pile up running. The network round trip of the tokenize call itself is not in it.
fn prefix_decision_latency(nodes: usize, streams: usize) -> anyhow::Result<()> {
    use orchestratord::core::{CancelJob, Core, DispatchJob, Effects, Timer, TokenizeJob};
    #[derive(Default)]
    struct Last {
        dispatched: Option<(api::TaskId, u32)>,
        tokenize: Option<api::TaskId>,
    }
    impl Effects for Last {
        fn dispatch(&mut self, j: DispatchJob) {
            self.dispatched = Some((j.task, j.attempt));
        }
        fn abort_dispatch(&mut self, _: api::TaskId) {}
        fn cancel_on_worker(&mut self, _: CancelJob) {}
        fn timer(&mut self, _: Duration, _: Timer) {}
        fn tokenize(&mut self, j: TokenizeJob) {
            self.tokenize = Some(j.task);
        }
    }
    let mut cfg = orchestratord::config::RawConfig::default()
        .validate(std::path::Path::new("/tmp"))
        .map_err(|e| anyhow::anyhow!("default config: {e:?}"))?;
    cfg.queue_capacity = streams * 2;
    cfg.strategy = orchestratord::config::Strategy::CacheAware;
    cfg.prefix_max_sequences = streams;
    let cfg = Arc::new(cfg);
    let mut core = Core::new(
        cfg.clone(),
        Last::default(),
        Arc::new(orchestratord::metrics::Metrics::default()),
        catalog::Catalog::open_in_memory().context("in-memory catalog")?,
    );
    let now = Instant::now();
    let slots = streams.div_ceil(nodes) as u32;
    for i in 0..nodes {
        let req = RegisterRequest {
            protocol_version: 1,
            node_id: id(&node_id(i)),
            machine_id: id(&node_id(i)),
            version: "sim".into(),
            address: format!("http://{}:1", node_ip(i)),
            dispatch_token: "s".repeat(32),
            capabilities: Default::default(),
            pools: vec![pool(i, slots)],
        };
        core.register(req, orchestratord::core::nodes::NodeCaller::Open, now)
            .map_err(|e| anyhow::anyhow!("registering {}: {e:?}", node_id(i)))?;
    }
    // Synthetic token ids: 30 system prompts of 1,000 ids, and 160 ids of question per request.
    let systems: Vec<Vec<u32>> = (0..30u32)
        .map(|g| (0..1000u32).map(|w| 1000 + g * 1000 + w).collect())
        .collect();
    let question = |i: usize| -> Vec<u32> {
        let mut ids = systems[i % systems.len()].clone();
        ids.extend((0..160u32).map(|w| 100_000 + (i as u32) * 160 + w));
        ids
    };
    let validate = |pin: Option<usize>| {
        let mut r = api::task::TaskRequest::new(MODEL);
        r.prompt = Some("x".into());
        r.max_tokens = Some(8);
        if let Some(i) = pin {
            r.placement = Some(api::task::Placement {
                mode: api::task::PlacementMode::Pin,
                pin_pool_id: Some(id(&format!("{}-p", node_id(i)))),
                ..Default::default()
            });
        }
        orchestratord::admission::validate(r, &cfg).map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    // Learn: each sequence finishes on its pinned pool, in its own slot.
    for i in 0..streams {
        let ids = question(i);
        core.submit(validate(Some(i % nodes))?, id("c"), now)
            .map_err(|e| anyhow::anyhow!("learning submit: {e:?}"))?;
        let (task, attempt) = core.effects().dispatched.context("dispatched")?;
        anyhow::ensure!(
            core.effects().tokenize == Some(task),
            "the learning task's prompt ids were not asked for"
        );
        core.on_tokenized(task, Ok(ids.clone()), now);
        core.on_worker(
            task,
            attempt,
            WorkerEvent::Token {
                i: 0,
                t: " answer".into(),
                ids: vec![7, 2],
                logprobs: vec![],
            },
            now,
        );
        core.on_worker(
            task,
            attempt,
            WorkerEvent::End {
                tokens_in: ids.len() as u64,
                tokens_out: 2,
                stop_reason: api::events::StopReason::Eos,
                seed: None,
                engine_ttft_ms: Some(1),
                engine_decode_ms: 1,
                // No cache report: the learning phase must not be corrected away.
                tokens_cached: None,
                slot: Some(((i / nodes) % slots as usize) as u32),
            },
            now,
        );
    }
    let held = core.prefix_sequences();
    let mut lat = Vec::with_capacity(streams);
    let mut hits = 0usize;
    let mut lat_ids = Vec::with_capacity(streams);
    for i in 0..streams {
        let v = validate(None)?;
        let mut ids = question(i);
        ids.extend([7, 31, 32, 33]);
        let t0 = Instant::now();
        let outcome = core.submit(v, id("c"), now);
        let task = match &outcome {
            Ok((a, _)) => a.task_id,
            Err(e) => anyhow::bail!("submit {i} was refused: {e:?}"),
        };
        let t1 = Instant::now();
        core.on_tokenized(task, Ok(ids), now);
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
        lat_ids.push(t1.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(
            core.effects().dispatched.map(|d| d.0) == Some(task),
            "task {i} was not placed once its ids came"
        );
        if core.predicted_cached(task) > 0 {
            hits += 1;
        }
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    lat_ids.sort_by(f64::total_cmp);
    println!("cache-aware decision latency (core::submit + on_tokenized, placement.strategy = \"cache-aware\", {nodes} pools, prefix index holding {held} sequences of token ids, up to {streams} running, {hits} of {streams} placed with a predicted prefix): median {:.1} µs, p99 {:.1} µs (target: median < 100 µs); on_tokenized alone median {:.1} µs", p(0.5), p(0.99), lat_ids[lat_ids.len() / 2]);
    Ok(())
}
