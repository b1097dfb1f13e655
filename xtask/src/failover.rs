//! `cargo xtask bench failover`: an HA group (two release orchestratord on a fresh Postgres
//! database, one pool-managerd with a real `llama-server` pool) put through the two crash drills of
//! issue #21, `--rounds` times each: (1) `kill -9` of the leader with streams running, every client
//! resuming with `Last-Event-ID`; (2) `kill -9` of the leader with a queue of short tasks. After
//! each drill the killed orchestratord is started again (as a follower). Prints, per drill, the
//! failover time (kill → the first API answer from the new leader, and for drill 1 → the first
//! frame a client reads from it) p50/p99, streams completed, tasks lost and tasks run twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::events::Event;
use api::task::{TaskRequest, TaskState};
use llorch::stack::{HaSpec, Stack};

#[derive(clap::Args)]
pub struct Args {
    /// How many times each drill runs.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Drill 1: streams running when the leader is killed.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Drill 2: tasks queued when the leader is killed (half have finished by then).
    #[arg(long, default_value_t = 24)]
    tasks: usize,
    /// The pool's slots.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// The Postgres server (a role that may create databases); default: the local one that
    /// scripts/postgres.sh sets up (and starts when needed).
    #[arg(long, env = "LLORCH_TEST_PG_URL")]
    pg_url: Option<String>,
    /// Use the orchestratord and pool-managerd binaries in this folder instead of building them.
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

/// How long one drill's step may take before the drill counts its tasks as lost.
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Drill {
    /// Kill → first 2xx API answer from the new leader.
    failover: Vec<Duration>,
    /// Kill → first frame a client read after it (drill 1).
    first_frame: Vec<Duration>,
    streams: usize,
    completed: usize,
    lost: usize,
    twice: usize,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let pg = match a.pg_url.clone() {
        Some(u) => u,
        None => tokio::task::spawn_blocking(llorch::stack::ensure_postgres).await??,
    };
    let mut spec = crate::real_engine_spec(a.bin_dir.as_deref(), "bench-failover")?;
    spec.threads = Some(2);
    spec.slots = a.slots;
    spec.ctx = 512;
    spec.heartbeat_interval_ms = 500;
    spec.orchd_extra = "[queue]\ncapacity = 512\n[tasks]\nretention_ms = 60000\n".into();
    spec.ha = Some(HaSpec::fresh(&pg, 2)?);
    let mut stack = Stack::start(spec).await?;
    let result = drills(&mut stack, &a).await;
    stack.shutdown().await?;
    let (d1, d2) = result?;
    println!();
    println!("| drill | rounds | failover p50 | failover p99 | first frame p50 | first frame p99 | streams completed | tasks lost | run twice |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, d) in [
        ("1: leader killed mid-stream", &d1),
        ("2: leader killed with a queue", &d2),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            d.failover.len(),
            ms(pct(&d.failover, 0.50)),
            ms(pct(&d.failover, 0.99)),
            ms(pct(&d.first_frame, 0.50)),
            ms(pct(&d.first_frame, 0.99)),
            if d.streams > 0 {
                format!("{}/{}", d.completed, d.streams)
            } else {
                "–".into()
            },
            d.lost,
            d.twice
        );
    }
    println!(
        "\nfailover: kill -9 of the leader → the first 2xx from the new leader (lease {} ms); first frame: → the first SSE frame a resuming client read",
        1500
    );
    Ok(())
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{} ms", d.as_millis()))
        .unwrap_or_else(|| "–".into())
}

fn pct(v: &[Duration], p: f64) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    let k = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len().max(1)) - 1;
    v.get(k).copied()
}

async fn drills(stack: &mut Stack, a: &Args) -> anyhow::Result<(Drill, Drill)> {
    let pool = stack.spec.pool_id.clone();
    stack
        .wait_pools_ready(&[pool.as_str()], Duration::from_secs(180))
        .await?;
    let client = client::Client::new(&stack.orchd_url, None)?.with_failover_timeout(DEADLINE);
    let (mut d1, mut d2) = (Drill::default(), Drill::default());
    for round in 0..a.rounds {
        streams_drill(stack, &client, a, round, &mut d1).await?;
        queue_drill(stack, &client, a, round, &mut d2).await?;
        eprintln!(
            "[bench] round {}/{}: failover {} / {}",
            round + 1,
            a.rounds,
            ms(d1.failover.last().copied()),
            ms(d2.failover.last().copied())
        );
    }
    Ok((d1, d2))
}

fn counting(model: &str, start: u64, max_tokens: u64) -> TaskRequest {
    let mut req = TaskRequest::new(model);
    req.prompt = Some(format!(
        "{}, {}, {}, {},",
        start,
        start + 1,
        start + 2,
        start + 3
    ));
    req.max_tokens = Some(max_tokens);
    req.temperature = Some(0.0);
    req.seed = Some(1);
    req
}

/// Kills the leader, measures the time to the new leader's first 2xx, starts the killed one
/// again as a follower; returns the kill instant.
async fn kill_leader(
    stack: &mut Stack,
    client: &client::Client,
    d: &mut Drill,
) -> anyhow::Result<(Instant, usize)> {
    let leader = stack.leader(DEADLINE).await?;
    let killed = Instant::now();
    stack.kill_replica(leader).await?;
    let probe = client.clone();
    let until = killed + DEADLINE;
    loop {
        if probe.pools().await.is_ok() {
            d.failover.push(killed.elapsed());
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "no leader answered within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((killed, leader))
}

/// Drill 1: `streams` greedy streams; kill -9 of the leader once one has 3 tokens.
async fn streams_drill(
    stack: &mut Stack,
    client: &client::Client,
    a: &Args,
    round: usize,
    d: &mut Drill,
) -> anyhow::Result<()> {
    let model = stack.spec.model_id.clone();
    let started = Arc::new(tokio::sync::Notify::new());
    let after_kill = Arc::new(Mutex::new(None::<Instant>));
    let first = Arc::new(Mutex::new(None::<Instant>));
    let mut readers = vec![];
    for s in 0..a.streams {
        let req = counting(&model, (round * 1000 + s * 10 + 1) as u64, 32);
        let adm = client.submit(&req).await?.body;
        let (client, started, after_kill, first) = (
            client.clone(),
            started.clone(),
            after_kill.clone(),
            first.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut f = client.follow(&adm.streams.sse_verbose);
            let (mut ids, mut tokens, mut end) = (vec![], 0, false);
            while let Ok(Some(Ok(frame))) = tokio::time::timeout(DEADLINE, f.next()).await {
                let now = Instant::now();
                if let Some(k) = *after_kill.lock().unwrap_or_else(|e| e.into_inner()) {
                    let mut g = first.lock().unwrap_or_else(|e| e.into_inner());
                    if now > k && g.is_none() {
                        *g = Some(now);
                    }
                }
                ids.push(frame.id);
                match frame.event {
                    Event::Token(_) => {
                        tokens += 1;
                        if tokens == 3 {
                            started.notify_one();
                        }
                    }
                    Event::End(e) => end = !e.canceled,
                    _ => {}
                }
            }
            let gap_free = ids.iter().enumerate().all(|(k, id)| *id == Some(k as u64));
            (adm.task_id, end && gap_free)
        }));
    }
    tokio::time::timeout(DEADLINE, started.notified()).await?;
    let (killed, old) = {
        let r = kill_leader(stack, client, d).await?;
        *after_kill.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.0);
        r
    };
    let mut ids = vec![];
    for r in readers {
        let (id, ok) = r.await?;
        d.streams += 1;
        if ok {
            d.completed += 1;
        } else {
            d.lost += 1;
        }
        ids.push(id);
    }
    if let Some(t) = *first.lock().unwrap_or_else(|e| e.into_inner()) {
        d.first_frame.push(t - killed);
    }
    d.twice += ran_twice(stack, &ids);
    stack.start_replica(old).await?;
    Ok(())
}

/// Drill 2: `tasks` short tasks queued; kill -9 of the leader when half have finished.
async fn queue_drill(
    stack: &mut Stack,
    client: &client::Client,
    a: &Args,
    round: usize,
    d: &mut Drill,
) -> anyhow::Result<()> {
    let model = stack.spec.model_id.clone();
    let mut ids = vec![];
    for k in 0..a.tasks {
        let req = counting(&model, (round * 1000 + k + 500) as u64, 4);
        ids.push(client.submit(&req).await?.body.task_id);
    }
    let half = ids[a.tasks / 2];
    let until = Instant::now() + DEADLINE;
    while !client
        .task(half)
        .await
        .is_ok_and(|r| r.body.state.is_terminal())
    {
        anyhow::ensure!(Instant::now() < until, "the queue did not move");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, old) = kill_leader(stack, client, d).await?;
    for id in &ids {
        let until = Instant::now() + DEADLINE;
        let done = loop {
            match client.task(*id).await {
                Ok(r) if r.body.state.is_terminal() => break r.body.state == TaskState::Completed,
                // A record the new leader does not know is a lost task.
                Err(client::Error::Api { status: 404, .. }) => break false,
                _ if Instant::now() > until => break false,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        if !done {
            d.lost += 1;
        }
    }
    d.twice += ran_twice(stack, &ids);
    stack.start_replica(old).await?;
    Ok(())
}

/// How many of `ids` pool-managerd sent to the engine more than once (`engine.request` lines).
fn ran_twice(stack: &Stack, ids: &[api::TaskId]) -> usize {
    let text = std::fs::read_to_string(&stack.pm_log).unwrap_or_default();
    let mut runs: HashMap<String, usize> = HashMap::new();
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["event"] == "engine.request" {
            if let Some(t) = v["task_id"].as_str() {
                *runs.entry(t.to_string()).or_default() += 1;
            }
        }
    }
    ids.iter()
        .filter(|id| runs.get(&id.to_string()).is_some_and(|n| *n > 1))
        .count()
}
