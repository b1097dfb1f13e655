//! `cargo xtask bench prefix`: three real `llama-server` pools (one slot each, the dev model)
//! under `placement.strategy = "least-loaded"` and `"cache-aware"`, alternating in one run
//! (orchestratord restarted with the other strategy between rounds; every round uses fresh system
//! prompts and questions, so no round finds another's prefixes in the engines' caches).
//! Workloads: multi-turn conversations in groups sharing a long system prompt, histories growing,
//! interleaved at random with a fixed number in flight; and a control of independent prompts.
//! Reports TTFT p50/p90 (client side: submit to first token frame), prompt tokens the engines
//! evaluated (`tokens_in − tokens_cached` from `end`), the cache hit ratio and total time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api::events::Event;
use api::task::{Message, Role, TaskRequest};
use llorch::stack::{NodeSpec, PoolSpec, Stack};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::overload::pct;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Conversations in the multi-turn workload.
    #[arg(long, default_value_t = 24)]
    conversations: usize,
    /// Turns per conversation.
    #[arg(long, default_value_t = 6)]
    turns: usize,
    /// Groups sharing one system prompt.
    #[arg(long, default_value_t = 3)]
    groups: usize,
    /// Words in each system prompt (about 1.3 tokens each with the dev model).
    #[arg(long, default_value_t = 750)]
    system_words: usize,
    /// Independent prompts in the control workload.
    #[arg(long, default_value_t = 24)]
    control: usize,
    /// Tasks in flight.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// Rounds per strategy (least-loaded and cache-aware alternate).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Tokens generated per turn.
    #[arg(long, default_value_t = 12)]
    max_tokens: u64,
    /// Every pool's `cache_ram_mib` (the engine's host-RAM prompt cache, `--cache-ram`); unset
    /// keeps the engine's default. `0` turns it off, so an engine holds only what its slot holds.
    #[arg(long)]
    cache_ram_mib: Option<u64>,
    /// Every pool's engine gets `--slot-prompt-similarity` this value. llama.cpp consults its
    /// host-RAM prompt cache only when a request would keep less than half of what its slot holds
    /// (or when no slot's prompt matches above this similarity); `0` turns the similarity match
    /// off, so a one-slot engine saves what its slot holds and restores the request's best match
    /// from that cache on every request. Unset keeps the engine's default (0.1).
    #[arg(long)]
    slot_prompt_similarity: Option<f32>,
    /// orchestratord's `placement.wait_for_prefix_tokens` (how many more prompt tokens a busy
    /// holder must save than its load costs for a task to wait for it); unset keeps the default.
    #[arg(long)]
    wait_for_prefix_tokens: Option<u64>,
    /// Use the orchestratord and pool-managerd binaries in this folder instead of building them.
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

const POOLS: [&str; 3] = ["cpu0", "cpu1", "cpu2"];

pub async fn run(a: Args) -> anyhow::Result<()> {
    let mut spec = crate::real_engine_spec(a.bin_dir.as_deref(), "bench-prefix")?;
    spec.threads = Some(1);
    spec.ctx = 4096;
    // Every pool's engine settings, in each pool-managerd's config.
    let mut pool_keys = a
        .cache_ram_mib
        .map(|n| format!("cache_ram_mib = {n}\n"))
        .unwrap_or_default();
    if let Some(f) = a.slot_prompt_similarity {
        pool_keys.push_str(&format!("slot_prompt_similarity = {f:?}\n"));
    }
    spec.pm_extra = pool_keys.clone();
    spec.orchd_extra = "[placement]\nstrategy = \"least-loaded\"\n".into();
    if let Some(n) = a.wait_for_prefix_tokens {
        spec.orchd_extra
            .push_str(&format!("wait_for_prefix_tokens = {n}\n"));
    }
    if a.cache_ram_mib == Some(0) {
        // orchestratord's index must not expect the engines to keep what their slots give up.
        spec.orchd_extra.push_str("engine_prompt_cache = false\n");
    }
    let mut stack = Stack::start(spec).await?;
    for (i, pool) in POOLS.iter().enumerate().skip(1) {
        stack.add_node(NodeSpec {
            node_id: format!("n{}", i + 1),
            engine: stack.spec.engine.clone(),
            pools: vec![PoolSpec {
                id: (*pool).into(),
                model_path: stack.spec.model_path.clone(),
                model_id: stack.spec.model_id.clone(),
                ctx: stack.spec.ctx,
                slots: 1,
            }],
            env: vec![],
            engine_keys: "threads = 1\n".into(),
            extra_toml: pool_keys.clone(),
        })?;
    }
    let result = bench(&mut stack, &a).await;
    stack.shutdown().await?;
    result
}

#[derive(Default, Clone)]
struct Tally {
    ttft_ms: Vec<f64>,
    queued_ms: Vec<f64>,
    tokens_in: u64,
    tokens_cached: u64,
    wall: Duration,
    tasks: usize,
    /// Multi-turn only: the fewest prompt tokens any placement could have had evaluated, per
    /// turn (see [`oracle`]).
    oracle: Vec<u64>,
    /// Per turn: dispatch to first token (the engine's prefill and the relay), ms, and the
    /// prompt tokens the engine evaluated.
    prefill: Vec<(f64, u64)>,
    /// Multi-turn only: turns after a conversation's first, and those that ran on the pool that
    /// ran its previous turn.
    later_turns: usize,
    followed: usize,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.ttft_ms.extend_from_slice(&o.ttft_ms);
        self.queued_ms.extend_from_slice(&o.queued_ms);
        self.tokens_in += o.tokens_in;
        self.tokens_cached += o.tokens_cached;
        self.wall += o.wall;
        self.tasks += o.tasks;
        self.oracle.extend_from_slice(&o.oracle);
        self.prefill.extend_from_slice(&o.prefill);
        self.later_turns += o.later_turns;
        self.followed += o.followed;
    }

    fn record(&mut self, t: &Turn) {
        self.ttft_ms.push(t.ttft_ms);
        self.queued_ms.push(t.queued_ms);
        self.prefill
            .push((t.running_ms, t.tokens_in.saturating_sub(t.tokens_cached)));
        self.tokens_in += t.tokens_in;
        self.tokens_cached += t.tokens_cached;
        self.tasks += 1;
    }

    fn pct(&self, q: f64) -> f64 {
        pct(&self.ttft_ms, q)
    }

    /// Multi-turn only: the fewest prompt tokens any placement could have had evaluated.
    fn least(&self) -> u64 {
        self.oracle.iter().sum()
    }

    fn evaluated(&self) -> u64 {
        self.tokens_in - self.tokens_cached.min(self.tokens_in)
    }
}

async fn bench(stack: &mut Stack, a: &Args) -> anyhow::Result<()> {
    stack
        .wait_pools_ready(&POOLS, Duration::from_secs(300))
        .await?;
    let strategies = ["least-loaded", "cache-aware"];
    let mut multi = [Tally::default(), Tally::default()];
    let mut control = [Tally::default(), Tally::default()];
    for round in 0..a.rounds {
        for (s, strategy) in strategies.iter().enumerate() {
            set_strategy(stack, strategy).await?;
            let seed = (round * 2 + s) as u64;
            let m = multi_turn(stack, a, seed).await?;
            eprintln!(
                "round {round} {strategy}: multi-turn {} tasks in {:.1} s, TTFT p50 {:.0} ms",
                m.tasks,
                m.wall.as_secs_f64(),
                m.pct(0.5)
            );
            multi[s].add(&m);
            let c = control_run(stack, a, seed).await?;
            eprintln!(
                "round {round} {strategy}: control {} tasks in {:.1} s, TTFT p50 {:.0} ms",
                c.tasks,
                c.wall.as_secs_f64(),
                c.pct(0.5)
            );
            control[s].add(&c);
        }
    }
    println!(
        "\n{} conversations × {} turns in {} groups (system prompts of {} words), control {} prompts, {} in flight, 3 one-slot pools, {} round(s) per strategy, engine host-RAM prompt cache {}, slot prompt similarity {}, wait_for_prefix_tokens {}\n",
        a.conversations, a.turns, a.groups, a.system_words, a.control, a.concurrency, a.rounds,
        a.cache_ram_mib.map_or("at the engine's default size".to_string(), |n| if n == 0 { "off (--cache-ram 0)".into() } else { format!("{n} MiB") }),
        a.slot_prompt_similarity.map_or("at the engine's default (0.1)".to_string(), |f| f.to_string()),
        a.wait_for_prefix_tokens.map_or("at the default".to_string(), |n| n.to_string())
    );
    println!("| workload | strategy | TTFT p50 ms | TTFT p90 ms | prompt tokens evaluated | cache hit ratio | total time s |");
    println!("|---|---|---|---|---|---|---|");
    for (name, t) in [("multi-turn", &multi), ("control", &control)] {
        for (s, strategy) in strategies.iter().enumerate() {
            let x = &t[s];
            println!(
                "| {name} | {strategy} | {:.0} | {:.0} | {} | {:.2} | {:.1} |",
                x.pct(0.5),
                x.pct(0.9),
                x.evaluated(),
                x.tokens_cached as f64 / x.tokens_in.max(1) as f64,
                x.wall.as_secs_f64()
            );
        }
    }
    let r = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    for (s, strategy) in strategies.iter().enumerate() {
        let m = &multi[s];
        println!(
            "multi-turn, {strategy}: {} of {} later turns on the pool of the conversation's previous turn; fewest prompt tokens any placement could have had evaluated for the same prompts and answers: {} (this run {:.2}× that)",
            m.followed,
            m.later_turns,
            m.least(),
            r(m.evaluated() as f64, m.least() as f64)
        );
    }
    for (s, strategy) in strategies.iter().enumerate() {
        let m = &multi[s];
        let running: Vec<f64> = m.prefill.iter().map(|(ms, _)| *ms).collect();
        println!(
            "multi-turn, {strategy}: of the time to first token, admission to dispatch (tokenizing, queueing, waiting for a prefix holder) p50 {:.0} ms / p90 {:.0} ms; dispatch to first token (prefill) p50 {:.0} ms / p90 {:.0} ms",
            pct(&m.queued_ms, 0.5),
            pct(&m.queued_ms, 0.9),
            pct(&running, 0.5),
            pct(&running, 0.9)
        );
    }
    println!(
        "multi-turn, least-loaded against that least possible: {:.1}× (the most any strategy could win on prompt tokens here)",
        r(multi[0].evaluated() as f64, multi[0].least() as f64)
    );
    if let Some(rate) = fastest_prefill(multi.iter().flat_map(|m| &m.prefill)) {
        let floor: Vec<f64> = multi[0].oracle.iter().map(|n| *n as f64 * rate).collect();
        let p50 = pct(&floor, 0.5);
        println!(
            "multi-turn, least-loaded's prompts at the engines' fastest prefill here ({rate:.2} ms a token: the least dispatch-to-first-token time per evaluated token of any turn that evaluated {}–{} tokens, as few as the least possible turns do), each turn evaluating only its least possible tokens, with no queueing and no other cost: TTFT p50 {p50:.0} ms. least-loaded's p50 is {:.1}× that (the most any strategy could win on TTFT p50 here)",
            SHORT_PREFILL.start(),
            SHORT_PREFILL.end(),
            r(multi[0].pct(0.5), p50)
        );
    }
    println!(
        "\nmulti-turn, cache-aware vs least-loaded: TTFT p50 {:.1}× better (target ≥ 5×), prompt tokens evaluated {:.1}× fewer (target ≥ 3×)",
        r(multi[0].pct(0.5), multi[1].pct(0.5)),
        r(multi[0].evaluated() as f64, multi[1].evaluated() as f64)
    );
    println!(
        "control, cache-aware vs least-loaded: total time {:+.1} %, TTFT p50 {:+.1} % (target within 5 %)",
        (r(control[1].wall.as_secs_f64(), control[0].wall.as_secs_f64()) - 1.0) * 100.0,
        (r(control[1].pct(0.5), control[0].pct(0.5)) - 1.0) * 100.0
    );
    Ok(())
}

/// A returning turn's new tokens are evaluated in one short batch at the end of a long context,
/// which costs more per token than a long prompt does (15.6 ms against 7–8 ms a token for the dev
/// model on one thread here), so the speed is taken from turns of that size. Fewer than 16 say
/// more about fixed costs than about prefill.
const SHORT_PREFILL: std::ops::RangeInclusive<u64> = 16..=64;

/// The least time from dispatch to first token per evaluated prompt token over `turns` (each a
/// `(ms, evaluated)` pair) that evaluated as few tokens as [`SHORT_PREFILL`]: an optimistic
/// prefill speed, since each such time also holds the relay and the first decode step.
fn fastest_prefill<'a>(turns: impl Iterator<Item = &'a (f64, u64)>) -> Option<f64> {
    turns
        .filter(|(ms, n)| SHORT_PREFILL.contains(n) && ms.is_finite())
        .map(|(ms, n)| ms / *n as f64)
        .min_by(f64::total_cmp)
}

/// Rewrites orchestratord's config with `strategy` and restarts it (its prefix index starts empty).
async fn set_strategy(stack: &mut Stack, strategy: &str) -> anyhow::Result<()> {
    let path = stack.spec.dir.join("orchestratord.toml");
    let text = std::fs::read_to_string(&path)?;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("strategy = ") {
            out.push_str(&format!("strategy = {strategy:?}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&path, out)?;
    stack.restart_orchestratord().await?;
    stack
        .wait_pools_ready(&POOLS, Duration::from_secs(120))
        .await
}

fn words(rng: &mut rand::rngs::StdRng, n: usize) -> String {
    const W: &[&str] = &[
        "river", "stone", "amber", "quiet", "market", "signal", "garden", "copper", "window",
        "harbor", "lantern", "meadow", "engine", "paper", "silver", "orchard", "thunder", "canvas",
        "winter", "bridge", "candle", "valley", "mirror", "forest", "planet", "ladder", "velvet",
    ];
    (0..n)
        .map(|_| *W.choose(rng).expect("words"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn request(model: &str, messages: Vec<Message>, max_tokens: u64) -> TaskRequest {
    let mut r = TaskRequest::new(model);
    r.messages = Some(messages);
    r.max_tokens = Some(max_tokens);
    r.temperature = Some(0.0);
    r.top_k = Some(1);
    r.seed = Some(1);
    r
}

/// One finished task as the bench saw it.
#[derive(Clone)]
struct Turn {
    /// Client side: submit to the first token frame.
    ttft_ms: f64,
    tokens_in: u64,
    tokens_out: u64,
    /// The engine's `cache_n`.
    tokens_cached: u64,
    /// orchestratord's record: admission to dispatch (tokenizing and queueing, waits for a
    /// prefix holder included), and dispatch to the first token (the engine's prefill).
    queued_ms: f64,
    running_ms: f64,
    pool: String,
    text: String,
}

/// Runs one task to its end.
async fn one(client: &client::Client, req: &TaskRequest) -> anyhow::Result<Turn> {
    let t0 = Instant::now();
    let adm = client.submit(req).await?.body;
    let mut s = client.events(&adm.streams.sse).await?;
    let (mut ttft, mut text, mut pool) = (None, String::new(), String::new());
    while let Some(f) = tokio::time::timeout(Duration::from_secs(300), s.next())
        .await
        .context("no frame within 300 s")?
    {
        match f?.event {
            Event::Started(st) => pool = st.pool_id.to_string(),
            Event::Token(t) => {
                ttft.get_or_insert_with(|| t0.elapsed().as_secs_f64() * 1000.0);
                text.push_str(&t.t);
            }
            Event::End(e) => {
                let rec = client.task(adm.task_id).await?.body;
                let gap = |a: Option<u64>, b: Option<u64>| match (a, b) {
                    (Some(a), Some(b)) => b.saturating_sub(a) as f64,
                    _ => f64::NAN,
                };
                return Ok(Turn {
                    ttft_ms: ttft.unwrap_or(f64::NAN),
                    tokens_in: e.tokens_in,
                    tokens_out: e.tokens_out,
                    tokens_cached: e.tokens_cached.unwrap_or(0),
                    queued_ms: gap(rec.created_at_ms, rec.started_at_ms),
                    running_ms: gap(rec.started_at_ms, rec.first_token_at_ms),
                    pool,
                    text,
                });
            }
            Event::Error(e) => bail!("task failed: {e:?}"),
            _ => {}
        }
    }
    bail!("the stream closed without end")
}

struct Conv {
    group: usize,
    messages: Vec<Message>,
    turns_left: usize,
    busy: bool,
    /// Its finished turns in order; the first one's submission order in its group decides who
    /// paid for the system prompt.
    turns: Vec<Turn>,
    first_submitted: usize,
}

/// The fewest prompt tokens any placement could have had the engines evaluate for each turn of a
/// multi-turn run, given the prompts and answers it had: every turn on a pool that holds the
/// conversation's whole history (its previous prompt and every token generated for it), every
/// conversation's first turn on a pool that holds its group's system prompt unless it was the
/// group's first submitted, no eviction and no waiting. Optimistic on purpose (it assumes the re-rendered
/// history tokenizes as generated), so a ratio against it bounds what any strategy can reach.
/// A group's shared prefix is the most the engines reported reusing on one of its first turns.
fn oracle(convs: &[Conv]) -> Vec<u64> {
    let mut shared: std::collections::HashMap<usize, u64> = Default::default();
    for c in convs {
        if let Some(t) = c.turns.first() {
            let e = shared.entry(c.group).or_default();
            *e = (*e).max(t.tokens_cached);
        }
    }
    let mut each = Vec::new();
    for c in convs {
        for (k, t) in c.turns.iter().enumerate() {
            let held = match k {
                0 if c.first_submitted == 0 => 0,
                0 => shared.get(&c.group).copied().unwrap_or(0),
                _ => {
                    let p = &c.turns[k - 1];
                    (p.tokens_in + p.tokens_out).saturating_sub(1)
                }
            };
            each.push(t.tokens_in.saturating_sub(held));
        }
    }
    each
}

async fn multi_turn(stack: &Stack, a: &Args, seed: u64) -> anyhow::Result<Tally> {
    let client = client::Client::new(&stack.orchd_url, None)?;
    let model = stack.spec.model_id.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 7919 + 1);
    let systems: Vec<String> = (0..a.groups)
        .map(|g| {
            format!(
                "You are assistant {g}-{seed}. Background: {}",
                words(&mut rng, a.system_words)
            )
        })
        .collect();
    let convs: Arc<Mutex<Vec<Conv>>> = Arc::new(Mutex::new(
        (0..a.conversations)
            .map(|c| Conv {
                group: c % a.groups,
                messages: vec![Message::text(Role::System, systems[c % a.groups].clone())],
                turns_left: a.turns,
                busy: false,
                turns: Vec::new(),
                first_submitted: usize::MAX,
            })
            .collect(),
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t0 = Instant::now();
    let mut workers = vec![];
    for w in 0..a.concurrency {
        let (client, model, convs, tally) =
            (client.clone(), model.clone(), convs.clone(), tally.clone());
        let max_tokens = a.max_tokens;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 31 + w as u64);
        workers.push(tokio::spawn(async move {
            loop {
                let pick = {
                    let mut cs = convs.lock().expect("convs");
                    let open: Vec<usize> = (0..cs.len())
                        .filter(|i| !cs[*i].busy && cs[*i].turns_left > 0)
                        .collect();
                    if cs.iter().all(|c| c.turns_left == 0) {
                        None
                    } else if open.is_empty() {
                        Some(None)
                    } else {
                        let i = open[rng.gen_range(0..open.len())];
                        cs[i].busy = true;
                        if cs[i].first_submitted == usize::MAX {
                            let g = cs[i].group;
                            cs[i].first_submitted = cs
                                .iter()
                                .filter(|c| c.group == g && c.first_submitted != usize::MAX)
                                .count();
                        }
                        let q = format!("Question {}: {}?", cs[i].turns_left, words(&mut rng, 6));
                        cs[i].messages.push(Message::text(Role::User, q));
                        Some(Some((i, cs[i].messages.clone())))
                    }
                };
                let (i, messages) = match pick {
                    None => return anyhow::Ok(()),
                    Some(None) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Some(Some(x)) => x,
                };
                let turn = one(&client, &request(&model, messages, max_tokens)).await?;
                let mut cs = convs.lock().expect("convs");
                {
                    let mut t = tally.lock().expect("tally");
                    t.record(&turn);
                    if let Some(prev) = cs[i].turns.last() {
                        t.later_turns += 1;
                        t.followed += usize::from(prev.pool == turn.pool);
                    }
                }
                cs[i]
                    .messages
                    .push(Message::text(Role::Assistant, turn.text.clone()));
                cs[i].turns.push(turn);
                cs[i].turns_left -= 1;
                cs[i].busy = false;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let mut t = tally.lock().expect("tally").clone();
    t.wall = t0.elapsed();
    t.oracle = oracle(&convs.lock().expect("convs"));
    Ok(t)
}

async fn control_run(stack: &Stack, a: &Args, seed: u64) -> anyhow::Result<Tally> {
    let client = client::Client::new(&stack.orchd_url, None)?;
    let model = stack.spec.model_id.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 104_729 + 3);
    let prompts: Vec<String> = (0..a.control)
        .map(|i| format!("Note {i}-{seed}: {}", words(&mut rng, a.system_words / 4)))
        .collect();
    let prompts = Arc::new(Mutex::new(prompts));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t0 = Instant::now();
    let mut workers = vec![];
    for _ in 0..a.concurrency {
        let (client, model, prompts, tally) = (
            client.clone(),
            model.clone(),
            prompts.clone(),
            tally.clone(),
        );
        let max_tokens = a.max_tokens;
        workers.push(tokio::spawn(async move {
            loop {
                let Some(p) = prompts.lock().expect("prompts").pop() else {
                    return anyhow::Ok(());
                };
                let msgs = vec![Message::text(Role::User, p)];
                let turn = one(&client, &request(&model, msgs, max_tokens)).await?;
                tally.lock().expect("tally").record(&turn);
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let mut t = tally.lock().expect("tally").clone();
    t.wall = t0.elapsed();
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(tokens_in: u64, tokens_out: u64, tokens_cached: u64) -> Turn {
        Turn {
            ttft_ms: 1.0,
            tokens_in,
            tokens_out,
            tokens_cached,
            queued_ms: 0.0,
            running_ms: 1.0,
            pool: "p".into(),
            text: String::new(),
        }
    }

    fn conv(group: usize, first_submitted: usize, turns: Vec<Turn>) -> Conv {
        Conv {
            group,
            messages: vec![],
            turns_left: 0,
            busy: false,
            turns,
            first_submitted,
        }
    }

    #[test]
    fn the_least_possible_pays_each_system_prompt_once_and_each_turn_its_new_tokens() {
        let convs = [
            // Group 0's first: its whole first prompt (1,000), then 1,030 − (1,000 + 12 − 1).
            conv(0, 0, vec![turn(1000, 12, 0), turn(1030, 12, 1011)]),
            // Group 0's second: the engines reused 990 of its first prompt, the group's most.
            conv(0, 1, vec![turn(1005, 12, 990)]),
            // Group 1 alone: its first prompt whole, whatever the engine reported.
            conv(1, 0, vec![turn(800, 12, 40)]),
        ];
        assert_eq!(oracle(&convs), [1000, 19, 1005 - 990, 800]);
    }

    #[test]
    fn the_fastest_prefill_counts_only_returning_turn_sized_batches() {
        let turns = [
            (100.0, 10),
            (640.0, 64),
            (330.0, 33),
            (f64::NAN, 20),
            (800.0, 100),
        ];
        // 100 / 10 and 800 / 100 are faster still, but 10 tokens are too few to count and 100 a
        // longer batch than a returning turn evaluates.
        assert_eq!(fastest_prefill(turns.iter()), Some(10.0));
        assert_eq!(fastest_prefill([(5.0, 1)].iter()), None);
    }
}
