//! Overload benchmark: offered load at 0.5×, 1×, 2× and 3× capacity against fake-engine pools
//! with many slots; prints goodput, queue wait, rejected share, reply codes and orchestratord's
//! peak memory. Goodput counts only completions inside the offer window; tasks that end while the
//! queue drains after it, and tasks that fail after a 202, are printed in their own columns.
//! Capacity is measured in the same run (slots ÷ uncontended service time).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api::events::Event;
use api::task::TaskRequest;
use llorch::stack::{EngineChoice, NodeSpec, PoolSpec, Stack};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of offered load per level.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Slots per fake pool (two pools on two nodes).
    #[arg(long, default_value_t = 8)]
    slots: u32,
}

const MODEL: &str = "fake-model";

#[derive(Default)]
struct Level {
    offered: usize,
    codes: BTreeMap<u16, usize>,
    /// Tasks whose `end` arrived inside the offer window: the goodput numerator.
    completed_in_window: usize,
    /// Tasks admitted during the window whose `end` arrived after it (the queue draining).
    completed_after: usize,
    /// Tasks admitted with 202 whose stream ended with `error` or broke off.
    failed: usize,
    waits_ms: Vec<f64>,
}

/// How one offered task went.
struct Outcome {
    /// HTTP status of the submit (0: no answer).
    code: u16,
    /// Submit → `started` in ms.
    wait_ms: Option<f64>,
    /// When `end` arrived; None when the task did not complete.
    ended_at: Option<Instant>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let root = std::env::current_dir()?;
    crate::build_release(&["orchestratord", "pool-managerd", "fake-engine"])?;
    let bin = root.join("target/release");
    let dir = root.join("target/bench-overload");
    let _ = std::fs::remove_dir_all(&dir);
    let model = dir.join("fake-model.gguf");
    let mut spec = llorch::stack::StackSpec::new(
        bin.clone(),
        dir.clone(),
        model.clone(),
        EngineChoice::Binary {
            path: bin.join("fake-engine"),
        },
        llorch::cache_dir().join("engines"),
    );
    spec.pool_id = String::new();
    spec.heartbeat_interval_ms = 2000;
    spec.heartbeat_timeout_ms = 20000;
    spec.orchd_extra = "[queue]\ncapacity = 64\n".into();
    let mut stack = Stack::start(spec).await?;
    std::fs::write(&model, fake_engine::placeholder_gguf())?;
    for n in ["n1", "n2"] {
        stack.add_node(NodeSpec {
            node_id: n.into(),
            engine: EngineChoice::Binary {
                path: bin.join("fake-engine"),
            },
            pools: vec![PoolSpec {
                id: format!("{n}-pool"),
                model_path: model.clone(),
                model_id: MODEL.into(),
                ctx: 512,
                slots: a.slots,
            }],
            env: vec![
                ("FAKE_TOKENS".into(), "20".into()),
                ("FAKE_TOKEN_DELAY_MS".into(), "10".into()),
            ],
            engine_keys: String::new(),
            extra_toml: String::new(),
        })?;
    }
    stack
        .wait_pools_ready(&["n1-pool", "n2-pool"], Duration::from_secs(60))
        .await?;
    let pid = stack
        .orchd
        .as_ref()
        .and_then(|c| c.id())
        .context("orchestratord pid")?;
    let client = client::Client::new(&stack.orchd_url, None)?;
    let mut service = vec![];
    for _ in 0..5 {
        let t0 = Instant::now();
        one(&client).await?;
        service.push(t0.elapsed().as_secs_f64());
    }
    service.sort_by(f64::total_cmp);
    let capacity = (2 * a.slots) as f64 / service[2];
    eprintln!(
        "[bench] service time {:.0} ms, capacity {capacity:.1} tasks/s ({} slots)",
        service[2] * 1000.0,
        2 * a.slots
    );
    let mut rows = vec![];
    for factor in [0.5, 1.0, 2.0, 3.0] {
        let level = offer(&client, capacity * factor, Duration::from_secs(a.seconds)).await;
        let rss = crate::procstat::vm_hwm(pid);
        eprintln!("[bench] {factor}× done");
        rows.push((factor, level, rss));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stack.shutdown().await?;
    println!("\nbench overload: 2 fake pools × {} slots, 20 tokens × 10 ms per task, queue capacity 64, policy reject, {} s per level", a.slots, a.seconds);
    println!("capacity (measured): {capacity:.1} tasks/s\n");
    println!("| load | offered/s | goodput/s | goodput ÷ capacity | completed after the window | failed after 202 | queue wait p50 (ms) | p99 (ms) | rejected | replies | orchd peak RSS (MiB) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (f, l, rss) in rows {
        let secs = a.seconds as f64;
        let rejected = l
            .codes
            .iter()
            .filter(|(c, _)| **c != 202)
            .map(|(_, n)| n)
            .sum::<usize>() as f64
            / l.offered.max(1) as f64;
        let codes: Vec<String> = l.codes.iter().map(|(c, n)| format!("{c}×{n}")).collect();
        let goodput = l.completed_in_window as f64 / secs;
        println!(
            "| {f}× | {:.1} | {goodput:.1} | {:.2} | {} | {} | {:.0} | {:.0} | {:.1}% | {} | {:.1} |",
            l.offered as f64 / secs,
            goodput / capacity,
            l.completed_after,
            l.failed,
            pct(&l.waits_ms, 0.5),
            pct(&l.waits_ms, 0.99),
            rejected * 100.0,
            codes.join(" "),
            rss as f64 / 1024.0
        );
    }
    println!("\ngoodput counts only the tasks whose `end` arrived inside the {} s offer window; the tasks still queued or running when it closed are counted under \"completed after the window\".", a.seconds);
    Ok(())
}

fn task() -> TaskRequest {
    let mut r = TaskRequest::new(MODEL);
    r.prompt = Some("load".into());
    r.max_tokens = Some(64);
    r
}

async fn one(client: &client::Client) -> anyhow::Result<()> {
    let adm = client.submit(&task()).await?.body;
    let mut s = client.events(&adm.streams.sse).await?;
    while let Some(f) = s.next().await {
        if f?.event.is_terminal() {
            return Ok(());
        }
    }
    bail!("stream ended early")
}

/// Offers `rate` tasks per second for `dur`; each task streams to its end, which is awaited (the
/// queue drains) before this returns.
async fn offer(client: &client::Client, rate: f64, dur: Duration) -> Level {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let window_end = start + dur;
    let mut handles = vec![];
    let mut k = 0u32;
    while start.elapsed() < dur {
        let c = client.clone();
        handles.push(tokio::spawn(async move { offer_one(&c).await }));
        k += 1;
        tokio::time::sleep_until((start + interval * k).into()).await;
    }
    let mut level = Level {
        offered: handles.len(),
        ..Default::default()
    };
    for h in handles {
        let Ok(o) = h.await else {
            continue;
        };
        *level.codes.entry(o.code).or_default() += 1;
        if let Some(w) = o.wait_ms {
            level.waits_ms.push(w);
        }
        match o.ended_at {
            Some(t) if t <= window_end => level.completed_in_window += 1,
            Some(_) => level.completed_after += 1,
            None if o.code == 202 => level.failed += 1,
            None => {}
        }
    }
    level
}

async fn offer_one(c: &client::Client) -> Outcome {
    let t0 = Instant::now();
    let adm = match c.submit(&task()).await {
        Ok(adm) => adm,
        Err(client::Error::Api { status, .. }) => {
            return Outcome {
                code: status,
                wait_ms: None,
                ended_at: None,
            }
        }
        Err(_) => {
            return Outcome {
                code: 0,
                wait_ms: None,
                ended_at: None,
            }
        }
    };
    let mut out = Outcome {
        code: adm.status,
        wait_ms: None,
        ended_at: None,
    };
    (out.wait_ms, out.ended_at) = follow(c, &adm.body.streams.sse, t0).await;
    out
}

/// Reads a task's stream to its end: the queue wait (submit at `t0` → `started`) in ms, and when
/// the task ended normally (`None` after an error frame or a broken stream).
pub async fn follow(c: &client::Client, sse: &str, t0: Instant) -> (Option<f64>, Option<Instant>) {
    let mut wait_ms = None;
    let Ok(mut s) = c.events(sse).await else {
        return (wait_ms, None);
    };
    while let Some(Ok(f)) = s.next().await {
        match f.event {
            Event::Started(_) => wait_ms = Some(t0.elapsed().as_secs_f64() * 1000.0),
            Event::End(_) => return (wait_ms, Some(Instant::now())),
            Event::Error(_) => return (wait_ms, None),
            _ => {}
        }
    }
    (wait_ms, None)
}

pub(crate) fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(((s.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}
