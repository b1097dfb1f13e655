//! `cargo xtask bench chaos`: two pool-managerd nodes with real `llama-server` pools under a
//! steady load of streaming tasks, while faults land one every 15–40 s: an engine `kill -9`, a
//! pool-managerd SIGKILL and restart, a pool-managerd SIGSTOP past the heartbeat timeout and
//! SIGCONT (each kind on each node once per six faults, in a random order). Prints how every accepted task ended (normal, migrated, typed error by code, hung,
//! lost), the recovery time of each fault, both daemons' RSS at start and end, and the engines
//! left without their pool-managerd.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::events::Event;
use api::node::{NodeStatus, PoolState};
use llorch::stack::{NodeSpec, PoolSpec, Stack};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::seq::SliceRandom;
use rand::Rng;

#[derive(clap::Args)]
pub struct Args {
    /// How long the load and the faults run.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Streams kept open at once.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// Use the orchestratord and pool-managerd binaries in this folder instead of building them.
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

/// How one accepted task ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    Normal,
    Error(String),
    /// No terminal frame by its deadline.
    Hung,
    /// 202, then no stream (or 404).
    Lost,
}

#[derive(Default)]
struct Tally {
    accepted: usize,
    refused: BTreeMap<String, usize>,
    endings: BTreeMap<Ending, usize>,
    migrated: usize,
}

const DEADLINE_MS: u64 = 120_000;
const HEARTBEAT_TIMEOUT_MS: u64 = 3000;

pub async fn run(a: Args) -> anyhow::Result<()> {
    let mut spec = crate::real_engine_spec(a.bin_dir.as_deref(), "bench-chaos")?;
    spec.threads = Some(1);
    spec.heartbeat_interval_ms = 1000;
    spec.heartbeat_timeout_ms = HEARTBEAT_TIMEOUT_MS;
    // Finished tasks' frame logs are kept for 30 s (not 5 min), so the RSS at the end shows
    // what a steady state holds rather than five minutes of replayable streams.
    spec.orchd_extra = "[tasks]\nretention_ms = 30000\n".into();
    let mut stack = Stack::start(spec).await?;
    stack.add_node(NodeSpec {
        node_id: "n2".into(),
        engine: stack.spec.engine.clone(),
        pools: vec![PoolSpec {
            id: "cpu1".into(),
            model_path: stack.spec.model_path.clone(),
            model_id: stack.spec.model_id.clone(),
            ctx: stack.spec.ctx,
            slots: 1,
        }],
        env: vec![],
        engine_keys: "threads = 1\n".into(),
        extra_toml: String::new(),
    })?;
    let result = chaos(&mut stack, &a).await;
    stack.shutdown().await?;
    result
}

async fn chaos(stack: &mut Stack, a: &Args) -> anyhow::Result<()> {
    stack
        .wait_pools_ready(&["cpu0", "cpu1"], Duration::from_secs(180))
        .await?;
    let client = client::Client::new(&stack.orchd_url, None)?;
    let rss_start = rss_all(stack);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = vec![];
    for w in 0..a.concurrency {
        let (client, tally, stop) = (client.clone(), tally.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.is_cancelled() {
                k += 1;
                one_task(&client, &tally, w as u64 * 1_000_000 + k).await;
            }
        }));
    }
    let until = Instant::now() + Duration::from_secs_f64(a.minutes * 60.0);
    let mut faults: Vec<(String, Recovery)> = vec![];
    let mut engine_pids: Vec<i32> = vec![];
    let mut plan: Vec<(u32, usize)> = vec![];
    loop {
        let wait = Duration::from_secs(rand::thread_rng().gen_range(15..=40));
        if Instant::now() + wait > until {
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
            break;
        }
        tokio::time::sleep(wait).await;
        // Every (fault, node) pair once per round of six, in a random order.
        if plan.is_empty() {
            plan = (0..6u32).map(|c| (c / 2, (c % 2) as usize)).collect();
            plan.shuffle(&mut rand::thread_rng());
        }
        let Some((kind, node)) = plan.pop() else {
            continue;
        };
        let log = if node == 0 {
            stack.pm_log.clone()
        } else {
            stack.nodes[0].log.clone()
        };
        let pm_pid = pm_pid(stack, node);
        let t0 = Instant::now();
        let watch = tokio::spawn(recovered(client.clone(), t0, Duration::from_secs(120)));
        let what = match kind {
            0 => {
                let Some(pid) = last_engine(&log) else {
                    continue;
                };
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                format!("kill -9 engine of node {}", node_name(node))
            }
            1 => {
                engine_pids.extend(all_engines(&log));
                if let Some(pid) = pm_pid {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                reap(stack, node).await;
                if node == 0 {
                    stack.start_pool_managerd()?;
                } else {
                    stack.respawn_node(0)?;
                }
                format!("SIGKILL + restart pool-managerd {}", node_name(node))
            }
            _ => {
                if let Some(pid) = pm_pid {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                    tokio::time::sleep(Duration::from_millis(HEARTBEAT_TIMEOUT_MS + 2000)).await;
                    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                }
                format!(
                    "SIGSTOP {} s + SIGCONT pool-managerd {}",
                    (HEARTBEAT_TIMEOUT_MS + 2000) / 1000,
                    node_name(node)
                )
            }
        };
        let recovered = watch.await.unwrap_or(Recovery::NotBack);
        eprintln!("[chaos] {what}: recovered in {recovered:?}");
        faults.push((what, recovered));
    }
    stop.cancel();
    for h in load {
        let _ = h.await;
    }
    let rss_end = rss_all(stack);
    engine_pids.extend(all_engines(&stack.pm_log));
    engine_pids.extend(all_engines(&stack.nodes[0].log));
    let supervisors: Vec<i32> = (0..2).filter_map(|n| pm_pid(stack, n)).collect();
    let orphans = engine_pids
        .iter()
        .filter(|p| parent_of(**p).is_some_and(|pp| !supervisors.contains(&pp)))
        .count();
    report(
        a,
        &tally.lock().unwrap_or_else(|e| e.into_inner()),
        &faults,
        &rss_start,
        &rss_end,
        orphans,
    );
    Ok(())
}

fn node_name(node: usize) -> &'static str {
    if node == 0 {
        "local"
    } else {
        "n2"
    }
}

fn pm_pid(stack: &Stack, node: usize) -> Option<i32> {
    let c = if node == 0 {
        stack.pool_managerd.as_ref()
    } else {
        stack.nodes[0].child.as_ref()
    };
    c.and_then(|c| c.id()).map(|p| p as i32)
}

async fn reap(stack: &mut Stack, node: usize) {
    let c = if node == 0 {
        stack.pool_managerd.as_mut()
    } else {
        stack.nodes[0].child.as_mut()
    };
    if let Some(c) = c {
        let _ = c.wait().await;
    }
}

/// Submits one streaming task (every other one greedy) and records how it ended.
async fn one_task(client: &client::Client, tally: &Mutex<Tally>, k: u64) {
    let mut req = api::task::TaskRequest::new(llorch::dev::MODEL_ID);
    req.prompt = Some(
        [
            "Once upon a time,",
            "The three primary colors are",
            "1, 2, 3, 4, 5,",
            "def fibonacci(n):",
        ][(k % 4) as usize]
            .into(),
    );
    req.max_tokens = Some(48);
    req.deadline_ms = Some(DEADLINE_MS);
    req.seed = Some(k);
    if k.is_multiple_of(2) {
        req.temperature = Some(0.0);
        req.top_k = Some(1);
    }
    let adm = match client.submit(&req).await {
        Ok(r) => r.body,
        Err(e) => {
            let code = match &e {
                client::Error::Api { envelope, .. } => envelope.code.as_str().to_string(),
                other => format!("{other}").chars().take(40).collect(),
            };
            *tally
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .refused
                .entry(code)
                .or_default() += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
    };
    tally.lock().unwrap_or_else(|e| e.into_inner()).accepted += 1;
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS + 10_000);
    let (ending, migrated) = match client.events(&adm.streams.sse).await {
        Err(_) => (Ending::Lost, false),
        Ok(mut s) => {
            let mut migrated = false;
            let mut ending = Ending::Hung;
            loop {
                match tokio::time::timeout_at(deadline.into(), s.next()).await {
                    Err(_) => break,
                    Ok(None) => break,
                    Ok(Some(Err(_))) => break,
                    Ok(Some(Ok(f))) => match f.event {
                        Event::Metrics(m)
                            if m.placement
                                .as_ref()
                                .is_some_and(|p| p.migrated_after_tokens.is_some()) =>
                        {
                            migrated = true
                        }
                        Event::End(_) => {
                            ending = Ending::Normal;
                            break;
                        }
                        Event::Error(e) => {
                            ending = Ending::Error(e.code.as_str().to_string());
                            break;
                        }
                        _ => {}
                    },
                }
            }
            (ending, migrated)
        }
    };
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    *t.endings.entry(ending).or_default() += 1;
    t.migrated += usize::from(migrated);
}

/// True when orchestratord sees both nodes Online and both pools Ready.
async fn healthy(client: &client::Client) -> bool {
    let (Ok(n), Ok(p)) = (client.nodes().await, client.pools().await) else {
        return false;
    };
    let nodes = n
        .nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Online)
        .count();
    let pools = p
        .pools
        .iter()
        .filter(|p| p.state == PoolState::Ready)
        .count();
    nodes == 2 && pools == 2
}

/// How the stack came back from one fault, as orchestratord saw it.
#[derive(Debug, Clone, Copy)]
enum Recovery {
    /// Both nodes Online and both pools Ready again, this long after the fault.
    Back(Duration),
    /// orchestratord never saw an outage (within the heartbeat timeout and 5 s more).
    Unseen,
    NotBack,
}

/// Watches from the fault at `t0`: first for the outage, then until both nodes are Online and
/// both pools Ready again (at most `limit`). Started before the fault is applied.
async fn recovered(client: client::Client, t0: Instant, limit: Duration) -> Recovery {
    let notice = Duration::from_millis(HEARTBEAT_TIMEOUT_MS + 5000);
    loop {
        if t0.elapsed() > notice {
            return Recovery::Unseen;
        }
        if !healthy(&client).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while t0.elapsed() < limit {
        if healthy(&client).await {
            return Recovery::Back(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Recovery::NotBack
}

fn all_engines(log: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["event"] == "engine.ready")
        .filter_map(|l| l["pid"].as_i64())
        .map(|p| p as i32)
        .collect()
}

fn last_engine(log: &std::path::Path) -> Option<i32> {
    all_engines(log).last().copied()
}

/// The parent of a live (not zombie) process.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace();
    if f.next()? == "Z" {
        return None;
    }
    f.next()?.parse().ok()
}

fn rss_kib(pid: Option<i32>) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// RSS in KiB of orchestratord, pool-managerd `local` and pool-managerd `n2`.
fn rss_all(stack: &Stack) -> [Option<u64>; 3] {
    [
        rss_kib(stack.orchd.as_ref().and_then(|c| c.id()).map(|p| p as i32)),
        rss_kib(pm_pid(stack, 0)),
        rss_kib(pm_pid(stack, 1)),
    ]
}

fn report(
    a: &Args,
    t: &Tally,
    faults: &[(String, Recovery)],
    start: &[Option<u64>; 3],
    end: &[Option<u64>; 3],
    orphans: usize,
) {
    let normal = t.endings.get(&Ending::Normal).copied().unwrap_or(0);
    let hung = t.endings.get(&Ending::Hung).copied().unwrap_or(0);
    let lost = t.endings.get(&Ending::Lost).copied().unwrap_or(0);
    let errors: Vec<String> = t
        .endings
        .iter()
        .filter_map(|(e, n)| match e {
            Ending::Error(c) => Some(format!("{c} {n}")),
            _ => None,
        })
        .collect();
    let mib = |v: Option<u64>| v.map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
    println!("\n`cargo xtask bench chaos --minutes {}` ({} streams, 2 nodes × 1 real llama-server pool, {} faults)\n", a.minutes, a.concurrency, faults.len());
    println!("| tasks accepted | ended normally | of those migrated | typed errors | hung | lost | engines without their pool-managerd |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {normal} ({:.1}%) | {} | {} | {hung} | {lost} | {orphans} |",
        t.accepted,
        normal as f64 * 100.0 / t.accepted.max(1) as f64,
        t.migrated,
        if errors.is_empty() {
            "0".into()
        } else {
            errors.join(", ")
        },
    );
    if !t.refused.is_empty() {
        println!("\nrefused at admission (not accepted): {:?}", t.refused);
    }
    println!("\n| fault | recovery (both nodes Online, both pools Ready) |");
    println!("|---|---|");
    for (what, r) in faults {
        let r = match r {
            Recovery::Back(d) => format!("{:.1} s", d.as_secs_f64()),
            Recovery::Unseen => "no outage seen".into(),
            Recovery::NotBack => "not back within 120 s".into(),
        };
        println!("| {what} | {r} |");
    }
    println!("\n| RSS, MiB | start | end |");
    println!("|---|---|---|");
    for (k, name) in ["orchestratord", "pool-managerd local", "pool-managerd n2"]
        .iter()
        .enumerate()
    {
        println!("| {name} | {} | {} |", mib(start[k]), mib(end[k]));
    }
}
