//! Relay benchmark: what relaying a token costs. 100, 1,000 and 10,000 concurrent streams through
//! one release orchestratord and one release pool-managerd, fed by a fake-engine pool that emits
//! tokens as fast as they are taken (`FAKE_TOKEN_DELAY_MS=0`). Per level: tokens/s reaching the
//! clients, CPU µs per relayed token of each daemon (utime + stime deltas from `/proc/<pid>/stat`
//! over the measured window, divided by the tokens the clients received in it), and each daemon's
//! RSS. A saturated pipeline fills every socket buffer on the way, so the latency the relay adds to
//! each token is measured in a second, paced run of the same level (the engine emits a fixed total
//! rate, `--paced-rate`, well below capacity, and stamps each token's text with its wall-clock
//! time; the client subtracts it on receipt), which also gives the CPU per token of a lightly
//! loaded relay. Then the fixed cost: CPU per request with one-token requests. Every run starts a
//! fresh stack.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use api::events::Event;
use api::task::TaskRequest;
use llorch::stack::{EngineChoice, NodeSpec, PoolSpec, Stack, StackSpec};
use tokio::sync::watch;

use crate::procstat::{children, raise_nofile, rss_kib, CpuClock};

#[derive(clap::Args)]
pub struct Args {
    /// Concurrent streams per level (0 skips the levels).
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1_000, 10_000])]
    levels: Vec<usize>,
    /// Seconds measured per level, once every stream has its first token.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Tokens per second, all streams together, of the paced run that measures added latency.
    #[arg(long, default_value_t = 2000)]
    paced_rate: u64,
    /// Concurrent clients of one-token requests for the fixed-cost figures (each level is one
    /// figure; 0 skips them).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
    fixed_concurrency: Vec<usize>,
    /// The one-stream figure: one stream whose engine emits a token every this many ms (a real
    /// engine's pace), through the stack and through two minimal relays (the floor); 0 skips it.
    #[arg(long, default_value_t = 10)]
    one_stream_delay_ms: u64,
    /// Seconds measured for the one-stream figure (longer than `seconds`: one stream makes few
    /// clock ticks of CPU).
    #[arg(long, default_value_t = 30)]
    one_stream_seconds: u64,
    /// Use the orchestratord, pool-managerd and fake-engine binaries in this folder instead of
    /// building them.
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

const MODEL: &str = "relay-model";
const POOL: &str = "relay-pool";
/// Tokens a level's task may produce: more than any stream gets through in a window.
const LONG_TASK: u64 = 60_000;

/// The two daemons' pids.
#[derive(Clone, Copy)]
struct Daemons {
    orchd: u32,
    pm: u32,
}

/// One window's readings.
struct Window {
    secs: f64,
    /// CPU seconds used in the window: orchestratord, pool-managerd.
    cpu: (f64, f64),
    /// Tokens (or, for the fixed cost, requests) the clients received in the window.
    count: u64,
}

/// One run of a level: every stream open, then a measured window.
struct Run {
    started: usize,
    failed: usize,
    w: Window,
    /// Added latency per token, µs, sorted (paced runs only).
    lat_us: Vec<f64>,
    rss_kib: (u64, u64),
}

struct Level {
    streams: usize,
    /// Tokens as fast as they are taken.
    fast: Run,
    /// Tokens at `paced_rate` in all.
    paced: Run,
    /// The engine's wait before each token in the paced run.
    delay_ms: u64,
}

#[derive(Default)]
struct Shared {
    started: AtomicUsize,
    failed: AtomicUsize,
    /// Tokens received (levels) or requests completed (fixed cost).
    count: AtomicU64,
    measuring: AtomicBool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let nofile = raise_nofile();
    let root = std::env::current_dir()?;
    let bin = match &a.bin_dir {
        // pool-managerd wants an absolute engine path.
        Some(d) => std::fs::canonicalize(d).with_context(|| format!("{}", d.display()))?,
        None => {
            crate::build_release(&["orchestratord", "pool-managerd", "fake-engine", "llorch"])?;
            root.join("target/release")
        }
    };
    // Each process holds one socket per stream (pool-managerd also one per engine request).
    let need = a.levels.iter().max().copied().unwrap_or(0) + 64;
    if (nofile as usize) < need {
        eprintln!("[bench] warning: the open-files limit is {nofile}; {need} may be needed");
    }
    let clock = CpuClock::new()?;
    let mut one = None;
    if a.one_stream_delay_ms > 0 {
        one = Some(one_stream_figure(&a, &bin, &root, &clock).await?);
    }
    let mut fixed = vec![];
    for &c in a.fixed_concurrency.iter().filter(|c| **c > 0) {
        fixed.push((c, fixed_cost(&a, &bin, &root, &clock, c).await?));
    }
    let mut levels = vec![];
    for &n in a.levels.iter().filter(|n| **n > 0) {
        levels.push(level(&a, &bin, &root, &clock, n).await?);
    }
    print_report(&a, nofile, one.as_ref(), &fixed, &levels, clock.hz());
    Ok(())
}

/// A fresh stack: orchestratord and one pool-managerd with one fake-engine pool of `slots` slots,
/// whose engine waits `delay_ms` before each token (0: as fast as they are taken).
async fn stack(
    bin: &std::path::Path,
    dir: std::path::PathBuf,
    slots: usize,
    delay_ms: u64,
) -> anyhow::Result<(Stack, Daemons)> {
    let _ = std::fs::remove_dir_all(&dir);
    let model = dir.join("relay-model.gguf");
    let fake = bin.join("fake-engine");
    let mut spec = StackSpec::new(
        bin.to_path_buf(),
        dir.clone(),
        model.clone(),
        EngineChoice::Binary { path: fake.clone() },
        llorch::cache_dir().join("engines"),
    );
    spec.pool_id = String::new();
    spec.heartbeat_interval_ms = 2000;
    spec.heartbeat_timeout_ms = 30_000;
    spec.orchd_extra = format!("[queue]\ncapacity = {}\n", slots * 2 + 64);
    let mut stack = Stack::start(spec).await?;
    std::fs::write(&model, fake_engine::placeholder_gguf())?;
    stack.add_node(NodeSpec {
        node_id: "n1".into(),
        engine: EngineChoice::Binary { path: fake },
        pools: vec![PoolSpec {
            id: POOL.into(),
            model_path: model,
            model_id: MODEL.into(),
            ctx: LONG_TASK + 1024,
            slots: slots as u32,
        }],
        env: vec![
            ("FAKE_TOKENS".into(), "1000000".into()),
            ("FAKE_TOKEN_DELAY_MS".into(), delay_ms.to_string()),
            ("FAKE_TOKEN_STAMP".into(), "1".into()),
            // Every stream sends its first token, then waits for the bench's SIGUSR1: opening
            // thousands of streams does not compete with the ones already streaming.
            ("FAKE_HOLD_UNTIL_SIGUSR1".into(), "1".into()),
        ],
        engine_keys: String::new(),
        extra_toml: String::new(),
    })?;
    stack
        .wait_pools_ready(&[POOL], Duration::from_secs(120))
        .await?;
    let orchd = stack
        .orchd
        .as_ref()
        .and_then(|c| c.id())
        .context("orchestratord pid")?;
    let pm = stack.nodes[0]
        .child
        .as_ref()
        .and_then(|c| c.id())
        .context("pool-managerd pid")?;
    Ok((stack, Daemons { orchd, pm }))
}

/// Releases the fake-engine (pool-managerd's child) from `FAKE_HOLD_UNTIL_SIGUSR1`.
fn release_engine(pm: u32) {
    for pid in children(pm) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGUSR1,
        );
    }
}

/// Stops every process of the stack at once (SIGKILL, engines included): a graceful drain of
/// thousands of streams would only measure the drain.
async fn kill_stack(mut stack: Stack) {
    let mut procs: Vec<tokio::process::Child> = vec![];
    procs.extend(stack.pool_managerd.take());
    procs.extend(stack.nodes.iter_mut().filter_map(|n| n.child.take()));
    procs.extend(stack.orchd.take());
    let mut engines = vec![];
    for c in &mut procs {
        if let Some(pid) = c.id() {
            engines.extend(children(pid));
        }
        let _ = c.start_kill();
    }
    for pid in engines {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for c in &mut procs {
        let _ = c.wait().await;
    }
}

/// Measures both daemons' CPU and the shared count over `secs` seconds.
async fn window(clock: &CpuClock, d: Daemons, sh: &Shared, secs: u64) -> anyhow::Result<Window> {
    let (o0, p0, n0, t0) = (
        clock.seconds(d.orchd)?,
        clock.seconds(d.pm)?,
        sh.count.load(Ordering::Relaxed),
        Instant::now(),
    );
    sh.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    sh.measuring.store(false, Ordering::Relaxed);
    let (o1, p1, n1) = (
        clock.seconds(d.orchd)?,
        clock.seconds(d.pm)?,
        sh.count.load(Ordering::Relaxed),
    );
    Ok(Window {
        secs: t0.elapsed().as_secs_f64(),
        cpu: (o1 - o0, p1 - p0),
        count: n1 - n0,
    })
}

async fn level(
    a: &Args,
    bin: &std::path::Path,
    root: &std::path::Path,
    clock: &CpuClock,
    n: usize,
) -> anyhow::Result<Level> {
    let fast = run_level(a.seconds, bin, root, clock, n, 0).await?;
    let delay_ms = (n as u64 * 1000 / a.paced_rate.max(1)).max(1);
    let paced = run_level(a.seconds, bin, root, clock, n, delay_ms).await?;
    Ok(Level {
        streams: n,
        fast,
        paced,
        delay_ms,
    })
}

/// One run of `n` streams on a fresh stack whose engine waits `delay_ms` before each token;
/// paced runs (`delay_ms` > 0) time every token.
async fn run_level(
    seconds: u64,
    bin: &std::path::Path,
    root: &std::path::Path,
    clock: &CpuClock,
    n: usize,
    delay_ms: u64,
) -> anyhow::Result<Run> {
    let what = if delay_ms == 0 {
        "as fast as taken".to_string()
    } else {
        format!("one token every {delay_ms} ms per stream")
    };
    eprintln!("[bench] {n} streams, {what}: starting a stack");
    let dir = root.join(format!("target/bench-relay/{n}-{delay_ms}"));
    let (stack, d) = stack(bin, dir, n, delay_ms).await?;
    let client = client::Client::new(&stack.orchd_url, None)?;
    let sh = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = opening.clone().acquire_owned().await?;
        handles.push(tokio::spawn(one_stream(
            client.clone(),
            sh.clone(),
            stop_rx.clone(),
            permit,
            delay_ms > 0,
        )));
    }
    let t_open = Instant::now();
    while sh.started.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed) < n
        && t_open.elapsed() < Duration::from_secs(180)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "[bench] {} streams running after {:.1} s; measuring {} s",
        sh.started.load(Ordering::Relaxed),
        t_open.elapsed().as_secs_f64(),
        seconds
    );
    release_engine(d.pm);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = window(clock, d, &sh, seconds).await?;
    let rss_kib = (rss_kib(d.orchd), rss_kib(d.pm));
    let _ = stop_tx.send(true);
    let mut lat_us = vec![];
    for h in handles {
        if let Ok(v) = h.await {
            lat_us.extend(v);
        }
    }
    lat_us.sort_by(f64::total_cmp);
    kill_stack(stack).await;
    Ok(Run {
        started: sh.started.load(Ordering::Relaxed),
        failed: sh.failed.load(Ordering::Relaxed),
        w,
        lat_us,
        rss_kib,
    })
}

/// One long task: counts its tokens, and when `timed`, times each token received in the
/// measured window against the engine's stamp. Returns the samples (µs).
async fn one_stream(
    c: client::Client,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
    timed: bool,
) -> Vec<f64> {
    let mut permit = Some(permit);
    let mut first_seen = false;
    let mut samples = vec![];
    let mut req = TaskRequest::new(MODEL);
    req.prompt = Some("relay".into());
    req.max_tokens = Some(LONG_TASK);
    let events = match c.submit(&req).await {
        Ok(adm) => c.events(&adm.body.streams.sse).await,
        Err(e) => Err(e),
    };
    let Ok(mut s) = events else {
        sh.failed.fetch_add(1, Ordering::Relaxed);
        return samples;
    };
    loop {
        let f = tokio::select! {
            f = s.next() => f,
            _ = stop.changed() => return samples,
        };
        let Some(Ok(f)) = f else {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return samples;
        };
        match f.event {
            // The worker runs it: the next stream may open (a paced engine's first token may be
            // seconds away).
            Event::Started(_) => drop(permit.take()),
            Event::Token(t) => {
                if !first_seen {
                    first_seen = true;
                    drop(permit.take());
                    sh.started.fetch_add(1, Ordering::Relaxed);
                }
                sh.count.fetch_add(1, Ordering::Relaxed);
                if timed && sh.measuring.load(Ordering::Relaxed) {
                    if let Some(us) = added_us(&t.t) {
                        samples.push(us);
                    }
                }
            }
            Event::Error(_) => {
                sh.failed.fetch_add(1, Ordering::Relaxed);
                return samples;
            }
            Event::End(_) => return samples,
            _ => {}
        }
    }
}

/// Receipt time minus the engine's stamp in a token text (`tok3@<µs since the epoch> `).
fn added_us(text: &str) -> Option<f64> {
    let stamp: u128 = text.split_once('@')?.1.trim().parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_micros();
    Some(now.saturating_sub(stamp) as f64)
}

/// One stream at a real engine's pace: through the stack, and through two minimal relays in
/// front of the same fake-engine (the floor a hop cannot go below; `floor.rs`).
struct OneStream {
    delay_ms: u64,
    stack: Run,
    floor: Run,
}

async fn one_stream_figure(
    a: &Args,
    bin: &std::path::Path,
    root: &std::path::Path,
    clock: &CpuClock,
) -> anyhow::Result<OneStream> {
    let d = a.one_stream_delay_ms;
    eprintln!("[bench] one stream, a token every {d} ms: two minimal relays (the floor)");
    let floor = {
        let engine =
            crate::floor::FakeEngine::start(bin, &root.join("target/bench-relay/floor"), d).await?;
        let hop_engine = crate::floor::FloorRelay::start(&engine.url)?;
        let hop_client = crate::floor::FloorRelay::start(&hop_engine.url)?;
        let daemons = Daemons {
            orchd: hop_client.pid(),
            pm: hop_engine.pid(),
        };
        let sh = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let reader = tokio::spawn(floor_stream(hop_client.url.clone(), sh.clone(), stop_rx));
        let t0 = Instant::now();
        while sh.started.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::ensure!(
            sh.started.load(Ordering::Relaxed) == 1,
            "no token through the floor relays"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let w = window(clock, daemons, &sh, a.one_stream_seconds).await?;
        let rss = (rss_kib(daemons.orchd), rss_kib(daemons.pm));
        let _ = stop_tx.send(true);
        let mut lat_us = reader.await.unwrap_or_default();
        lat_us.sort_by(f64::total_cmp);
        Run {
            started: 1,
            failed: sh.failed.load(Ordering::Relaxed),
            w,
            lat_us,
            rss_kib: rss,
        }
    };
    eprintln!("[bench] one stream, a token every {d} ms: the stack");
    let stack = run_level(a.one_stream_seconds, bin, root, clock, 1, d).await?;
    Ok(OneStream {
        delay_ms: d,
        stack,
        floor,
    })
}

/// One long completion streamed straight from the floor relays (engine SSE, no task API):
/// counts its tokens and times each one in the measured window against the engine's stamp.
async fn floor_stream(url: String, sh: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Vec<f64> {
    use futures::StreamExt;
    let mut samples = vec![];
    let body = serde_json::json!({"prompt": "relay", "n_predict": LONG_TASK, "stream": true});
    let resp = reqwest::Client::new()
        .post(format!("{url}/completion"))
        .json(&body)
        .send()
        .await;
    let Ok(resp) = resp else {
        sh.failed.fetch_add(1, Ordering::Relaxed);
        return samples;
    };
    let mut chunks = resp.bytes_stream();
    let mut buf: Vec<u8> = vec![];
    loop {
        let c = tokio::select! {
            c = chunks.next() => c,
            _ = stop.changed() => return samples,
        };
        let Some(Ok(c)) = c else {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return samples;
        };
        buf.extend_from_slice(&c);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let Some(data) = std::str::from_utf8(&event)
                .ok()
                .and_then(|e| e.trim().strip_prefix("data: "))
            else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            let Some(text) = v["content"].as_str().filter(|t| !t.is_empty()) else {
                continue;
            };
            sh.started.store(1, Ordering::Relaxed);
            sh.count.fetch_add(1, Ordering::Relaxed);
            if sh.measuring.load(Ordering::Relaxed) {
                if let Some(us) = added_us(text) {
                    samples.push(us);
                }
            }
        }
    }
}

/// CPU per request with one token per request: `c` clients submitting one-token
/// tasks back to back.
async fn fixed_cost(
    a: &Args,
    bin: &std::path::Path,
    root: &std::path::Path,
    clock: &CpuClock,
    c: usize,
) -> anyhow::Result<Window> {
    eprintln!("[bench] fixed cost: {c} clients of one-token requests");
    let (stack, d) = stack(
        bin,
        root.join(format!("target/bench-relay/fixed-{c}")),
        c,
        0,
    )
    .await?;
    let client = client::Client::new(&stack.orchd_url, None)?;
    let sh = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = vec![];
    for _ in 0..c {
        let (client, sh, stop) = (client.clone(), sh.clone(), stop_rx.clone());
        handles.push(tokio::spawn(async move {
            while !*stop.borrow() {
                if one_token(&client).await.is_ok() {
                    sh.count.fetch_add(1, Ordering::Relaxed);
                } else {
                    sh.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    release_engine(d.pm);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = window(clock, d, &sh, a.seconds).await?;
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    anyhow::ensure!(
        sh.failed.load(Ordering::Relaxed) == 0,
        "{} one-token requests failed",
        sh.failed.load(Ordering::Relaxed)
    );
    kill_stack(stack).await;
    Ok(w)
}

async fn one_token(c: &client::Client) -> anyhow::Result<()> {
    let mut req = TaskRequest::new(MODEL);
    req.prompt = Some("relay".into());
    req.max_tokens = Some(1);
    let adm = c.submit(&req).await?.body;
    let mut s = c.events(&adm.streams.sse).await?;
    let mut tokens = 0;
    while let Some(f) = s.next().await {
        match f?.event {
            Event::Token(_) => tokens += 1,
            Event::End(_) => {
                anyhow::ensure!(tokens == 1, "{tokens} tokens for max_tokens 1");
                return Ok(());
            }
            Event::Error(e) => anyhow::bail!("task failed: {e:?}"),
            _ => {}
        }
    }
    anyhow::bail!("the stream ended without an end frame")
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn print_report(
    a: &Args,
    nofile: u64,
    one: Option<&OneStream>,
    fixed: &[(usize, Window)],
    levels: &[Level],
    hz: f64,
) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let streams = |n: usize, r: &Run| {
        let mut s = r.started.to_string();
        if r.started < n {
            s.push_str(&format!(" of {n}"));
        }
        if r.failed > 0 {
            s.push_str(&format!(" ({} failed)", r.failed));
        }
        s
    };
    let per = |r: &Run, cpu: f64| cpu * 1e6 / r.w.count.max(1) as f64;
    println!("\nbench relay: release orchestratord + pool-managerd, one fake-engine pool; {} s windows; {cores} cores shared by the daemons, the engine and the clients; open-files limit {nofile}\n", a.seconds);
    println!("Tokens as fast as they are taken:\n");
    println!("| streams | tokens/s | orchestratord CPU per token | pool-managerd CPU per token | RSS orchestratord / pool-managerd |");
    println!("|---|---|---|---|---|");
    for l in levels {
        let r = &l.fast;
        println!(
            "| {} | {:.0} | {:.1} µs | {:.1} µs | {:.0} / {:.0} MiB |",
            streams(l.streams, r),
            r.w.count as f64 / r.w.secs,
            per(r, r.w.cpu.0),
            per(r, r.w.cpu.1),
            r.rss_kib.0 as f64 / 1024.0,
            r.rss_kib.1 as f64 / 1024.0,
        );
    }
    println!("\nPaced, {} tokens/s in all (added latency = client receipt − engine stamp, every token):\n", a.paced_rate);
    println!("| streams | one token per stream every | tokens/s | added latency per token p50 / p99 | orchestratord CPU per token | pool-managerd CPU per token |");
    println!("|---|---|---|---|---|---|");
    for l in levels {
        let r = &l.paced;
        println!(
            "| {} | {} ms | {:.0} | {:.2} / {:.2} ms | {:.1} µs | {:.1} µs |",
            streams(l.streams, r),
            l.delay_ms,
            r.w.count as f64 / r.w.secs,
            pct(&r.lat_us, 0.5) / 1000.0,
            pct(&r.lat_us, 0.99) / 1000.0,
            per(r, r.w.cpu.0),
            per(r, r.w.cpu.1),
        );
    }
    if let Some(o) = one {
        let (s, f) = (&o.stack, &o.floor);
        println!("\nOne stream, one token every {} ms (a real engine's pace), {} s window; the floor is two minimal relays (axum + reqwest, copying each chunk through, nothing else) in front of the same fake-engine:\n", o.delay_ms, a.one_stream_seconds);
        println!("| path | tokens/s | client-side hop CPU per token | engine-side hop CPU per token | added latency per token p50 / p99 |");
        println!("|---|---|---|---|---|");
        for (name, r) in [
            ("llama-orch (orchestratord / pool-managerd)", s),
            ("floor (two minimal relays)", f),
        ] {
            println!(
                "| {name} | {:.0} | {:.1} µs | {:.1} µs | {:.2} / {:.2} ms |",
                r.w.count as f64 / r.w.secs,
                per(r, r.w.cpu.0),
                per(r, r.w.cpu.1),
                pct(&r.lat_us, 0.5) / 1000.0,
                pct(&r.lat_us, 0.99) / 1000.0,
            );
        }
        println!(
            "| ratio llama-orch / floor | | {:.2} | {:.2} | |",
            per(s, s.w.cpu.0) / per(f, f.w.cpu.0).max(f64::MIN_POSITIVE),
            per(s, s.w.cpu.1) / per(f, f.w.cpu.1).max(f64::MIN_POSITIVE),
        );
    }
    if !fixed.is_empty() {
        println!("\n| fixed cost (one-token requests, clients back to back) | requests/s | orchestratord CPU per request | pool-managerd CPU per request |");
        println!("|---|---|---|---|");
        for (c, f) in fixed {
            let per = |cpu: f64| cpu * 1e3 / f.count.max(1) as f64;
            println!(
                "| {c} client(s): {} requests in {:.1} s | {:.0} | {:.3} ms | {:.3} ms |",
                f.count,
                f.secs,
                f.count as f64 / f.secs,
                per(f.cpu.0),
                per(f.cpu.1)
            );
        }
    }
    println!("\nCPU: utime + stime deltas of each daemon from /proc/<pid>/stat over the window ({hz} ticks/s), divided by the tokens (requests) the clients received in it. Latency: client receipt time minus the wall-clock stamp fake-engine puts in each token's text (FAKE_TOKEN_STAMP=1). RSS: VmRSS at the end of the window. Targets: ≤ 10 µs CPU per token and ≤ 1 ms CPU per request per daemon.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_latency_reads_the_engine_stamp() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let us = added_us(&format!("tok3@{} ", now - 1500)).unwrap();
        assert!(us >= 1500.0);
        assert_eq!(added_us("tok3 "), None);
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), 51.0);
        assert_eq!(pct(&v, 0.99), 99.0);
        assert!(pct(&[], 0.5).is_nan());
    }
}
