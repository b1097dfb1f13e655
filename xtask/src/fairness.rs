//! Fairness benchmark: two tenants on fake-engine pools at 3× capacity. Tenant A offers 90% of the
//! load, tenant B 10%; both send interactive tasks, so they share one priority class and only the
//! queue's order within the class decides who waits. The same load runs against a stack with fair
//! queuing (`queue.fair = true`, equal weights) and one with FIFO (`queue.fair = false`); the table
//! shows each tenant's goodput share and B's queue wait with both, in the same run. Capacity is
//! measured first (slots ÷ uncontended service time).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api::task::{Priority, TaskRequest};
use llorch::stack::{EngineChoice, NodeSpec, PoolSpec, Stack};

use crate::overload::pct;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of offered load per mode.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Slots of the fake pool.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Offered load as a multiple of capacity.
    #[arg(long, default_value_t = 3.0)]
    load: f64,
}

const MODEL: &str = "fake-model";
const TOKEN_A: &str = "tenant-a-token-0123456789";
const TOKEN_B: &str = "tenant-b-token-0123456789";

/// One tenant's tasks in one mode.
#[derive(Default)]
struct Tenant {
    offered: usize,
    /// `end` inside the offer window: the goodput numerator.
    in_window: usize,
    /// `end` after the window (the queue draining).
    after: usize,
    refused: usize,
    waits_ms: Vec<f64>,
}

struct Mode {
    a: Tenant,
    b: Tenant,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let root = std::env::current_dir()?;
    crate::build_release(&["orchestratord", "pool-managerd", "fake-engine"])?;
    let bin = root.join("target/release");
    let mut capacity = None;
    let mut modes = vec![];
    for fair in [true, false] {
        let dir = root.join(format!(
            "target/bench-fairness-{}",
            if fair { "fq" } else { "fifo" }
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut stack = start(&bin, &dir, fair, a.slots).await?;
        let a_client = client::Client::new(&stack.orchd_url, Some(TOKEN_A.into()))?;
        let b_client = client::Client::new(&stack.orchd_url, Some(TOKEN_B.into()))?;
        let cap = match capacity {
            Some(c) => c,
            None => {
                let mut service = vec![];
                for _ in 0..5 {
                    let t0 = Instant::now();
                    one(&a_client).await?;
                    service.push(t0.elapsed().as_secs_f64());
                }
                service.sort_by(f64::total_cmp);
                let c = a.slots as f64 / service[2];
                eprintln!(
                    "[bench] service time {:.0} ms, capacity {c:.1} tasks/s ({} slots)",
                    service[2] * 1000.0,
                    a.slots
                );
                capacity = Some(c);
                c
            }
        };
        let rate = cap * a.load;
        let mode = offer(&a_client, &b_client, rate, Duration::from_secs(a.seconds)).await;
        eprintln!(
            "[bench] {} done",
            if fair { "fair queuing" } else { "FIFO" }
        );
        stack.shutdown().await?;
        modes.push((fair, mode));
    }
    let capacity = capacity.context("capacity measured")?;
    let secs = a.seconds as f64;
    println!("\nbench fairness: 1 fake pool × {} slots, 20 tokens × 10 ms per task, {:.0}× capacity for {} s per mode; tenant A 90% and tenant B 10% of the tasks, all interactive, equal weights", a.slots, a.load, a.seconds);
    println!("capacity (measured): {capacity:.1} tasks/s\n");
    println!("| queue | A offered/s | B offered/s | A goodput/s | B goodput/s | A share of goodput | B share of goodput | B goodput ÷ B offered (in window) | B completed in all | B queue wait p50 (ms) | B p99 (ms) | A queue wait p50 (ms) | refused |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut b_p99 = vec![];
    for (fair, m) in &modes {
        let total = (m.a.in_window + m.b.in_window).max(1) as f64;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.0}% | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {} |",
            if *fair { "fair (SFQ)" } else { "FIFO" },
            m.a.offered as f64 / secs,
            m.b.offered as f64 / secs,
            m.a.in_window as f64 / secs,
            m.b.in_window as f64 / secs,
            m.a.in_window as f64 * 100.0 / total,
            m.b.in_window as f64 * 100.0 / total,
            m.b.in_window as f64 / m.b.offered.max(1) as f64,
            (m.b.in_window + m.b.after) as f64 / m.b.offered.max(1) as f64,
            pct(&m.b.waits_ms, 0.5),
            pct(&m.b.waits_ms, 0.99),
            pct(&m.a.waits_ms, 0.5),
            m.a.refused + m.b.refused,
        );
        b_p99.push(pct(&m.b.waits_ms, 0.99));
    }
    if let [fq, fifo] = b_p99[..] {
        println!(
            "\nB's p99 queue wait: FIFO ÷ fair = {:.1}× (target ≥ 10×)",
            fifo / fq.max(1.0)
        );
    }
    println!("goodput counts tasks whose `end` arrived inside the offer window; \"B completed in all\" counts every B task that completed, in or after the window (the queue draining), over those offered.");
    Ok(())
}

async fn start(
    bin: &std::path::Path,
    dir: &std::path::Path,
    fair: bool,
    slots: u32,
) -> anyhow::Result<Stack> {
    let model = dir.join("fake-model.gguf");
    let mut spec = llorch::stack::StackSpec::new(
        bin.to_path_buf(),
        dir.to_path_buf(),
        model.clone(),
        EngineChoice::Binary {
            path: bin.join("fake-engine"),
        },
        llorch::cache_dir().join("engines"),
    );
    spec.pool_id = String::new();
    spec.heartbeat_interval_ms = 2000;
    spec.heartbeat_timeout_ms = 20000;
    spec.orchd_extra = format!(
        "[queue]\ncapacity = 100000\nfair = {fair}\n\n\
         [[auth.tokens]]\nname = \"a\"\nrole = \"client\"\ntoken = {TOKEN_A:?}\n\n\
         [[auth.tokens]]\nname = \"b\"\nrole = \"client\"\ntoken = {TOKEN_B:?}\n"
    );
    let mut stack = Stack::start(spec).await?;
    std::fs::write(&model, fake_engine::placeholder_gguf())?;
    stack.add_node(NodeSpec {
        node_id: "n1".into(),
        engine: EngineChoice::Binary {
            path: bin.join("fake-engine"),
        },
        pools: vec![PoolSpec {
            id: "n1-pool".into(),
            model_path: model.clone(),
            model_id: MODEL.into(),
            ctx: 512,
            slots,
        }],
        env: vec![
            ("FAKE_TOKENS".into(), "20".into()),
            ("FAKE_TOKEN_DELAY_MS".into(), "10".into()),
        ],
        engine_keys: String::new(),
        extra_toml: String::new(),
    })?;
    let c = client::Client::new(&stack.orchd_url, Some(TOKEN_A.into()))?;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(p) = c.pools().await {
            if p.pools
                .iter()
                .any(|x| x.pool_id == "n1-pool" && x.state == api::node::PoolState::Ready)
            {
                return Ok(stack);
            }
        }
        if Instant::now() > until {
            bail!("the fake pool was not Ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn task() -> TaskRequest {
    let mut r = TaskRequest::new(MODEL);
    r.prompt = Some("load".into());
    r.max_tokens = Some(64);
    r.priority = Priority::Interactive;
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

/// How one offered task went: admitted, submit → `started` in ms, when `end` arrived.
struct Outcome {
    admitted: bool,
    wait_ms: Option<f64>,
    ended_at: Option<Instant>,
}

/// Offers `rate` tasks per second for `dur`: every tenth task is B's, the rest A's. Each task
/// streams to its end, which is awaited (the queue drains) before this returns.
async fn offer(a: &client::Client, b: &client::Client, rate: f64, dur: Duration) -> Mode {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let window_end = start + dur;
    let mut handles = vec![];
    let mut k = 0u32;
    while start.elapsed() < dur {
        let is_b = k % 10 == 9;
        let c = if is_b { b.clone() } else { a.clone() };
        handles.push((is_b, tokio::spawn(async move { offer_one(&c).await })));
        k += 1;
        tokio::time::sleep_until((start + interval * k).into()).await;
    }
    let mut mode = Mode {
        a: Tenant::default(),
        b: Tenant::default(),
    };
    for (is_b, h) in handles {
        let t = if is_b { &mut mode.b } else { &mut mode.a };
        t.offered += 1;
        let Ok(o) = h.await else { continue };
        if !o.admitted {
            t.refused += 1;
        }
        if let Some(w) = o.wait_ms {
            t.waits_ms.push(w);
        }
        match o.ended_at {
            Some(at) if at <= window_end => t.in_window += 1,
            Some(_) => t.after += 1,
            None => {}
        }
    }
    mode
}

async fn offer_one(c: &client::Client) -> Outcome {
    let t0 = Instant::now();
    let mut out = Outcome {
        admitted: false,
        wait_ms: None,
        ended_at: None,
    };
    let Ok(adm) = c.submit(&task()).await else {
        return out;
    };
    out.admitted = true;
    (out.wait_ms, out.ended_at) = crate::overload::follow(c, &adm.body.streams.sse, t0).await;
    out
}
