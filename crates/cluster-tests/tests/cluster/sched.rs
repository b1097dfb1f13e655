//! Admission and scheduling under load (API.md §6, §7) across several pool-managerd processes:
//! the fake engine where many slots, slow tokens or crashes are needed, real engines for pinning.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use api::events::{Event, StopReason};
use api::task::{Placement, PlacementMode, Priority, TaskRequest, TaskState};
use api::{ErrorCode, TaskId};
use llorch::stack::{EngineChoice, NodeSpec, PoolSpec, Stack};

use crate::fixtures::{wait_for, Assets};

const FAKE_MODEL: &str = "fake-model";

fn fake_engine() -> anyhow::Result<PathBuf> {
    let p = llorch::stack::bin_dir()?.join("fake-engine");
    ensure!(
        p.is_file(),
        "{} is missing; cargo build --bins",
        p.display()
    );
    Ok(p)
}

/// A stack with no primary node; fake-engine nodes are added by the scenario.
pub async fn empty_stack(
    a: &Assets,
    name: &str,
    orchd_extra: &str,
) -> anyhow::Result<(Stack, PathBuf)> {
    let mut spec = a.spec(name)?;
    spec.pool_id = String::new();
    spec.orchd_extra = orchd_extra.into();
    let stack = Stack::start(spec).await?;
    let model = stack.spec.dir.join("fake-model.gguf");
    std::fs::write(&model, fake_engine::placeholder_gguf())?;
    Ok((stack, model))
}

pub fn fake_node(
    id: &str,
    model: &std::path::Path,
    pools: &[(&str, u32)],
    env: &[(&str, String)],
) -> anyhow::Result<NodeSpec> {
    Ok(NodeSpec {
        node_id: id.into(),
        engine: EngineChoice::Binary {
            path: fake_engine()?,
        },
        pools: pools
            .iter()
            .map(|(p, slots)| PoolSpec {
                id: (*p).into(),
                model_path: model.to_path_buf(),
                model_id: FAKE_MODEL.into(),
                ctx: 512,
                slots: *slots,
            })
            .collect(),
        env: env.iter().map(|(k, v)| ((*k).into(), v.clone())).collect(),
        engine_keys: String::new(),
        extra_toml: String::new(),
    })
}

fn fake_task(p: Priority) -> TaskRequest {
    let mut r = TaskRequest::new(FAKE_MODEL);
    r.prompt = Some("one two three".into());
    r.max_tokens = Some(64);
    r.priority = p;
    r
}

/// A fake engine's hold file (`FAKE_HOLD_FILE`): while it exists, the engine's requests send no
/// token after their first, so a test holds tasks running for as long as it needs, then releases
/// them, instead of betting on a token delay outlasting its HTTP round trips.
pub struct Hold(PathBuf);

impl Hold {
    pub fn new(dir: &std::path::Path) -> Self {
        Self(dir.join("fake-hold"))
    }

    pub fn env(&self) -> (&'static str, String) {
        ("FAKE_HOLD_FILE", self.0.display().to_string())
    }

    pub fn on(&self) -> anyhow::Result<()> {
        std::fs::write(&self.0, b"").with_context(|| format!("creating {}", self.0.display()))
    }

    pub fn off(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Node `n1` with one fake pool `f1` of one slot (`tokens` tokens, `delay_ms` apart, held by
/// `hold`), Ready; returns a client of the stack.
async fn held_pool(
    stack: &mut Stack,
    model: &std::path::Path,
    hold: &Hold,
    tokens: u32,
    delay_ms: u32,
) -> anyhow::Result<client::Client> {
    let knobs = [
        ("FAKE_TOKENS", tokens.to_string()),
        ("FAKE_TOKEN_DELAY_MS", delay_ms.to_string()),
        hold.env(),
    ];
    stack.add_node(fake_node("n1", model, &[("f1", 1)], &knobs)?)?;
    stack
        .wait_pools_ready(&["f1"], Duration::from_secs(30))
        .await?;
    Ok(client::Client::new(&stack.orchd_url, None)?)
}

/// Waits until the task's record is in `state`.
async fn wait_state(client: &client::Client, id: TaskId, state: TaskState) -> anyhow::Result<()> {
    wait_for(
        &format!("task {id} to be {state:?}"),
        Duration::from_secs(30),
        || async { (client.task(id).await.ok()?.body.state == state).then_some(()) },
    )
    .await
}

/// The task's record state now.
async fn state_of(client: &client::Client, id: TaskId) -> anyhow::Result<TaskState> {
    Ok(client.task(id).await?.body.state)
}

/// Σ of a counter over all its label sets in orchestratord's `/metrics`.
async fn counter(client: &client::Client, name: &str) -> anyhow::Result<f64> {
    let text = client.metrics_text().await?.body;
    let series = llorch::haiku::prom::parse(&text).map_err(anyhow::Error::msg)?;
    Ok(llorch::haiku::prom::sum(&series, name))
}

async fn wait_done(
    client: &client::Client,
    ids: &[TaskId],
) -> anyhow::Result<Vec<api::task::TaskRecord>> {
    wait_for("every task to finish", Duration::from_secs(60), || async {
        let mut out = vec![];
        for id in ids {
            let r = client.task(*id).await.ok()?.body;
            if !r.state.is_terminal() {
                return None;
            }
            out.push(r);
        }
        Some(out)
    })
    .await
}

/// Reads `max_concurrent` from a fake engine's stats file.
fn max_concurrent(path: &std::path::Path) -> anyhow::Result<u64> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    v["max_concurrent"].as_u64().context("no max_concurrent")
}

pub async fn queue_order_and_aging(a: Assets) -> anyhow::Result<()> {
    let (mut stack, model) = empty_stack(&a, "order", "[queue]\ninteractive_burst = 2\n").await?;
    let hold = Hold::new(&stack.spec.dir);
    let result = async {
        // 4 tokens × 40 ms per released task, so that start times differ by more than a ms.
        let client = held_pool(&mut stack, &model, &hold, 4, 40).await?;
        // The blocker holds the only slot until every other task is queued behind it.
        hold.on()?;
        let blocker = client
            .submit(&fake_task(Priority::Interactive))
            .await?
            .body
            .task_id;
        wait_state(&client, blocker, TaskState::Running).await?;
        let b = client
            .submit(&fake_task(Priority::Batch))
            .await?
            .body
            .task_id;
        let mut is = vec![];
        for _ in 0..3 {
            is.push(
                client
                    .submit(&fake_task(Priority::Interactive))
                    .await?
                    .body
                    .task_id,
            );
        }
        let mut all = vec![blocker, b];
        all.extend(&is);
        for id in &all[1..] {
            let st = state_of(&client, *id).await?;
            ensure!(
                st == TaskState::Queued,
                "task {id} is {st:?} behind a held blocker"
            );
        }
        hold.off()?;
        let recs = wait_done(&client, &all).await?;
        let mut by_start: Vec<(u64, TaskId)> = recs
            .iter()
            .map(|r| (r.started_at_ms.unwrap_or(u64::MAX), r.task_id))
            .collect();
        by_start.sort();
        let order: Vec<TaskId> = by_start.into_iter().map(|(_, id)| id).collect();
        ensure!(
            order == vec![blocker, is[0], is[1], b, is[2]],
            "dispatch order {order:?} (batch {b})"
        );
        Ok(())
    }
    .await;
    let _ = hold.off();
    stack.shutdown().await?;
    result
}

pub async fn no_oversubscription(a: Assets) -> anyhow::Result<()> {
    let (mut stack, model) = empty_stack(&a, "oversub", "[queue]\ncapacity = 100\n").await?;
    let hold = Hold::new(&stack.spec.dir);
    let result = async {
        let s1 = stack.spec.dir.join("stats-n1.json");
        let s2 = stack.spec.dir.join("stats-n2.json");
        let knobs = |stats: &std::path::Path| {
            vec![
                ("FAKE_TOKENS", "8".to_string()),
                ("FAKE_TOKEN_DELAY_MS", "5".to_string()),
                ("FAKE_STATS_FILE", stats.display().to_string()),
                hold.env(),
            ]
        };
        stack.add_node(fake_node("n1", &model, &[("f1", 3)], &knobs(&s1))?)?;
        stack.add_node(fake_node("n2", &model, &[("f2", 2)], &knobs(&s2))?)?;
        stack
            .wait_pools_ready(&["f1", "f2"], Duration::from_secs(30))
            .await?;
        let client = client::Client::new(&stack.orchd_url, None)?;
        // Held, the first five tasks fill every slot and the other 25 must wait in orchestratord.
        hold.on()?;
        let submits = (0..30).map(|_| {
            let c = client.clone();
            async move {
                c.submit(&fake_task(Priority::Interactive))
                    .await
                    .map(|x| x.body.task_id)
            }
        });
        let ids: Vec<TaskId> = futures::future::join_all(submits)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        wait_for("every slot to be busy", Duration::from_secs(30), || async {
            (max_concurrent(&s1).ok()? == 3 && max_concurrent(&s2).ok()? == 2).then_some(())
        })
        .await?;
        let mut states: HashMap<String, usize> = HashMap::new();
        for id in &ids {
            *states
                .entry(format!("{:?}", state_of(&client, *id).await?))
                .or_default() += 1;
        }
        ensure!(
            states.get("Running") == Some(&5) && states.get("Queued") == Some(&25),
            "with every slot held: {states:?}"
        );
        hold.off()?;
        let recs = wait_done(&client, &ids).await?;
        ensure!(
            recs.iter().all(|r| r.state == TaskState::Completed),
            "not all completed: {:?}",
            recs.iter().map(|r| r.state).collect::<Vec<_>>()
        );
        let per_pool: HashMap<String, usize> = recs.iter().fold(HashMap::new(), |mut m, r| {
            *m.entry(
                r.pool_id
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            )
            .or_default() += 1;
            m
        });
        ensure!(
            per_pool.len() == 2,
            "both pools should have worked: {per_pool:?}"
        );
        let (m1, m2) = (max_concurrent(&s1)?, max_concurrent(&s2)?);
        ensure!(
            m1 == 3 && m2 == 2,
            "engines saw {m1} and {m2} concurrent requests for 3 and 2 slots"
        );
        Ok(())
    }
    .await;
    let _ = hold.off();
    stack.shutdown().await?;
    result
}

pub async fn full_queue_429_and_drop_lru(a: Assets) -> anyhow::Result<()> {
    let (mut stack, model) = empty_stack(
        &a,
        "backpressure",
        "[queue]\ncapacity = 1\nfull_policy = \"drop-lru\"\n",
    )
    .await?;
    let hold = Hold::new(&stack.spec.dir);
    let result = async {
        let client = held_pool(&mut stack, &model, &hold, 4, 10).await?;
        hold.on()?;
        let running = client.submit(&fake_task(Priority::Interactive)).await?.body;
        wait_state(&client, running.task_id, TaskState::Running).await?;
        let batch = client.submit(&fake_task(Priority::Batch)).await?.body;
        let st = state_of(&client, batch.task_id).await?;
        ensure!(st == TaskState::Queued, "the batch task is {st:?}");
        let mut stream = client.events(&batch.streams.sse).await?;
        // An interactive newcomer evicts the queued batch task, whose stream ends with the error.
        let newcomer = client.submit(&fake_task(Priority::Interactive)).await?.body;
        let mut last = None;
        while let Some(f) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await?.transpose()? {
            last = Some(f.event);
        }
        ensure!(matches!(&last, Some(Event::Error(e)) if e.code == ErrorCode::QueueFullDropLru && e.retriable), "evicted stream ended with {last:?}");
        // A batch newcomer facing only interactive tasks is refused with 429 and backoff headers.
        let err = client.submit(&fake_task(Priority::Batch)).await.err().context("admitted into a full queue")?;
        let client::Error::Api { status, envelope, headers } = err else { anyhow::bail!("not an API error") };
        ensure!(status == 429 && envelope.code == ErrorCode::QueueFullDropLru, "{status} {envelope:?}");
        ensure!(envelope.retriable && envelope.retry_after_ms.is_some() && envelope.policy_label.as_deref() == Some("drop-lru"), "{envelope:?}");
        let ra: u64 = headers.get("retry-after").context("no Retry-After")?.to_str()?.parse()?;
        let backoff: u64 = headers.get("x-backoff-ms").context("no X-Backoff-Ms")?.to_str()?.parse()?;
        ensure!(backoff == envelope.retry_after_ms.unwrap_or(0) && ra == backoff.div_ceil(1000).max(1), "Retry-After {ra}, X-Backoff-Ms {backoff}");
        let m = client.metrics_text().await?.body;
        ensure!(m.contains("admission_backpressure_events_total{engine=\"llamacpp\",policy=\"drop-lru\"} 2"), "backpressure events not counted");
        // Released, the running task and the newcomer both complete.
        hold.off()?;
        let recs = wait_done(&client, &[running.task_id, newcomer.task_id]).await?;
        ensure!(recs.iter().all(|r| r.state == TaskState::Completed), "{:?}", recs.iter().map(|r| r.state).collect::<Vec<_>>());
        Ok(())
    }
    .await;
    let _ = hold.off();
    stack.shutdown().await?;
    result
}
pub async fn retry_before_first_token(a: Assets) -> anyhow::Result<()> {
    let (mut stack, model) = empty_stack(&a, "failover", "").await?;
    let result = async {
        // n1's engine is slow to produce its first token; it is killed while the task waits.
        let n1 = stack.add_node(fake_node("n1", &model, &[("f1", 1)], &[("FAKE_TOKEN_DELAY_MS", "20000".into())])?)?;
        stack.add_node(fake_node("n2", &model, &[("f2", 1)], &[])?)?;
        stack.wait_pools_ready(&["f1", "f2"], Duration::from_secs(30)).await?;
        let client = client::Client::new(&stack.orchd_url, None)?;
        let mut req = fake_task(Priority::Interactive);
        req.placement = Some(Placement { mode: PlacementMode::Prefer, prefer_pools: vec!["f1".parse().expect("pool id")], ..Default::default() });
        let adm = client.submit(&req).await?.body;
        let mut s = client.events(&adm.streams.sse).await?;
        let first = tokio::time::timeout(Duration::from_secs(10), s.next()).await?.context("no frame")??;
        ensure!(matches!(&first.event, Event::Started(st) if st.pool_id == "f1"), "first placement: {:?}", first.event);
        let log = stack.nodes[n1].log.clone();
        let pid = wait_for("n1's engine to take the request", Duration::from_secs(10), || async {
            let lines = crate::fixtures::log_lines(&log);
            let busy = lines.iter().any(|l| l["event"] == "engine.request");
            lines.iter().rev().find(|l| l["event"] == "engine.ready").and_then(|l| l["pid"].as_i64()).filter(|_| busy)
        })
        .await?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)?;
        let mut frames = vec![first.event];
        while let Some(f) = tokio::time::timeout(Duration::from_secs(20), s.next()).await?.transpose()? {
            frames.push(f.event);
        }
        ensure!(frames.iter().any(|f| matches!(f, Event::Metrics(m) if m.placement.as_ref().is_some_and(|p| p.pool_id == "f2" && p.attempt == 2))), "no failover frame in {frames:?}");
        ensure!(frames.iter().filter(|f| matches!(f, Event::Started(_))).count() == 1, "started repeated");
        ensure!(matches!(frames.last(), Some(Event::End(e)) if !e.canceled && e.tokens_out > 0), "ended with {:?}", frames.last());
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

pub async fn deadlines(a: Assets) -> anyhow::Result<()> {
    let (mut stack, model) = empty_stack(&a, "deadlines", "").await?;
    let hold = Hold::new(&stack.spec.dir);
    let result = async {
        let client = held_pool(&mut stack, &model, &hold, 4, 10).await?;
        // Held running past its deadline: end with stop_reason deadline, not canceled.
        hold.on()?;
        let mut r = fake_task(Priority::Interactive);
        r.deadline_ms = Some(3000);
        let running = client.submit(&r).await?.body;
        wait_state(&client, running.task_id, TaskState::Running).await?;
        // Queued behind it past its own deadline: error DEADLINE_UNMET.
        let mut q = fake_task(Priority::Interactive);
        q.deadline_ms = Some(300);
        let queued = client.submit(&q).await?.body;
        let recs = wait_done(&client, &[running.task_id, queued.task_id]).await?;
        ensure!(
            recs[0].stop_reason == Some(StopReason::Deadline)
                && recs[0].state == TaskState::Completed,
            "running: {:?} {:?}",
            recs[0].state,
            recs[0].stop_reason
        );
        ensure!(
            recs[1].state == TaskState::Failed
                && recs[1]
                    .error
                    .as_ref()
                    .is_some_and(|e| e.code == ErrorCode::DeadlineUnmet),
            "queued: {:?}",
            recs[1].error
        );
        // With measurements in hand (one task run to its end), an infeasible deadline is refused at
        // admission while the slot is held and a task waits.
        hold.off()?;
        let done = client
            .submit(&fake_task(Priority::Interactive))
            .await?
            .body
            .task_id;
        let rec = wait_done(&client, &[done]).await?.remove(0);
        ensure!(rec.state == TaskState::Completed, "{:?}", rec.state);
        hold.on()?;
        let busy = client
            .submit(&fake_task(Priority::Interactive))
            .await?
            .body
            .task_id;
        wait_state(&client, busy, TaskState::Running).await?;
        let waiting = client
            .submit(&fake_task(Priority::Interactive))
            .await?
            .body
            .task_id;
        let mut tight = fake_task(Priority::Interactive);
        tight.deadline_ms = Some(1);
        let err = client
            .submit(&tight)
            .await
            .err()
            .context("an infeasible deadline was admitted")?;
        ensure!(
            err.envelope()
                .is_some_and(|e| e.code == ErrorCode::DeadlineUnmet),
            "{err}"
        );
        hold.off()?;
        let recs = wait_done(&client, &[busy, waiting]).await?;
        ensure!(
            recs.iter().all(|r| r.state == TaskState::Completed),
            "{:?}",
            recs.iter().map(|r| r.state).collect::<Vec<_>>()
        );
        Ok(())
    }
    .await;
    let _ = hold.off();
    stack.shutdown().await?;
    result
}
/// Pinning across two real engines on two pool-managerd processes.
pub async fn pin_semantics(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("pin")?;
    spec.pool_id = "real-a".into();
    let (engine, model) = a.real.clone().map_err(anyhow::Error::msg)?;
    let mut stack = Stack::start(spec).await?;
    let result = async {
        stack.add_node(NodeSpec {
            node_id: "second".into(),
            engine,
            pools: vec![PoolSpec {
                id: "real-b".into(),
                model_path: model,
                model_id: stack.spec.model_id.clone(),
                ctx: 1024,
                slots: 1,
            }],
            env: vec![],
            engine_keys: String::new(),
            extra_toml: String::new(),
        })?;
        stack
            .wait_pools_ready(&["real-a", "real-b"], Duration::from_secs(60))
            .await?;
        let client = client::Client::new(&stack.orchd_url, None)?;
        let pin = |id: &str| Placement {
            mode: PlacementMode::Pin,
            pin_pool_id: Some(id.parse().expect("pool id")),
            ..Default::default()
        };
        let mut req = TaskRequest::new(&stack.spec.model_id);
        req.prompt = Some("The sky is".into());
        req.max_tokens = Some(4);
        for target in ["real-b", "real-a", "real-b"] {
            req.placement = Some(pin(target));
            let adm = client.submit(&req).await?.body;
            let rec = wait_done(&client, &[adm.task_id]).await?.remove(0);
            ensure!(
                rec.pool_id.as_ref().map(|p| p.as_str()) == Some(target)
                    && rec.state == TaskState::Completed,
                "pinned to {target}, ran on {:?} ({:?})",
                rec.pool_id,
                rec.state
            );
        }
        req.placement = Some(pin("nope"));
        let e = client
            .submit(&req)
            .await
            .err()
            .context("unknown pin admitted")?;
        ensure!(
            e.envelope()
                .is_some_and(|e| e.code == ErrorCode::InvalidParams
                    && e.field.as_deref() == Some("placement.pin_pool_id")),
            "{e}"
        );
        // A pool that is still Starting: 503 POOL_UNREADY, never a silent fallback.
        // The same model file (same digest), so the pool serves the model and only its state
        // keeps it out of placement; the fake engine never reads it.
        let dummy = stack.spec.dir.join("loading.gguf");
        if std::fs::hard_link(&stack.spec.model_path, &dummy).is_err() {
            std::fs::copy(&stack.spec.model_path, &dummy)?;
        }
        let mut loading = fake_node(
            "loading",
            &dummy,
            &[("slow", 1)],
            &[("FAKE_LOAD_MS", "600000".into())],
        )?;
        loading.pools[0].model_id = stack.spec.model_id.clone();
        stack.add_node(loading)?;
        wait_for(
            "the loading pool to be registered",
            Duration::from_secs(30),
            || async {
                client
                    .pools()
                    .await
                    .ok()?
                    .pools
                    .into_iter()
                    .find(|p| p.pool_id == "slow" && p.state == api::node::PoolState::Starting)
            },
        )
        .await?;
        req.placement = Some(pin("slow"));
        let e = client
            .submit(&req)
            .await
            .err()
            .context("a pin to a Starting pool was admitted")?;
        ensure!(
            e.envelope()
                .is_some_and(|e| e.code == ErrorCode::PoolUnready),
            "{e}"
        );
        if let client::Error::Api { status, .. } = &e {
            ensure!(*status == 503, "status {status}");
        }
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// Sessions over HTTP (API.md §4.3), on the real engine: created by a task, counted on
/// completion, deleted on request.
pub async fn sessions_endpoint(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("sessions")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let pool = stack.spec.pool_id.clone();
        let sid = api::SessionId::new();
        let mut ids = vec![];
        let (mut tokens_in, mut tokens_out) = (0, 0);
        for _ in 0..2 {
            let mut r = TaskRequest::new(&stack.spec.model_id);
            r.prompt = Some("one two three".into());
            r.max_tokens = Some(4);
            r.temperature = Some(0.0);
            r.session_id = Some(sid);
            ids.push(client.submit(&r).await?.body.task_id);
            let recs = wait_done(&client, &ids).await?;
            ensure!(
                recs.iter().all(|r| r.state == TaskState::Completed),
                "{:?}",
                recs.iter().map(|r| (r.state, &r.error)).collect::<Vec<_>>()
            );
            tokens_in = recs.iter().map(|r| r.tokens_in).sum::<u64>();
            tokens_out = recs.iter().map(|r| r.tokens_out).sum::<u64>();
        }
        let v = client.session(sid).await?;
        ensure!(
            v.turns == 2
                && v.last_pool_id.as_ref().map(|p| p.as_str()) == Some(pool.as_str())
                && v.kv_warmth,
            "session: {v:?}"
        );
        ensure!(
            v.tokens_out_total == tokens_out
                && v.tokens_in_total == tokens_in
                && tokens_out > 0
                && v.ttl_ms_remaining > 0,
            "session: {v:?}; the two tasks' records say {tokens_in} in, {tokens_out} out"
        );
        let raw: serde_json::Value = reqwest::get(format!("{}/v2/sessions/{sid}", stack.orchd_url))
            .await?
            .error_for_status()?
            .json()
            .await?;
        ensure!(
            raw.get("prompt").is_none() && !raw.to_string().contains("one two three"),
            "sessions must not store prompts: {raw}"
        );
        client.delete_session(sid).await?;
        ensure!(
            matches!(
                client.session(sid).await,
                Err(client::Error::Api { status: 404, .. })
            ),
            "deleted session still there"
        );
        client
            .delete_session(sid)
            .await
            .context("delete of an unknown session is 204 too")?;
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// The SDK retries a refused admission after the server's Retry-After, and only admission.
pub async fn sdk_retries_admission(a: Assets) -> anyhow::Result<()> {
    let (mut stack, model) = empty_stack(&a, "sdk-retry", "[queue]\ncapacity = 1\n").await?;
    let hold = Hold::new(&stack.spec.dir);
    let result = async {
        let client = held_pool(&mut stack, &model, &hold, 4, 10).await?;
        // One task held running and one queued fill the pool and its queue.
        hold.on()?;
        let running = client.submit(&fake_task(Priority::Interactive)).await?.body.task_id;
        wait_state(&client, running, TaskState::Running).await?;
        client.submit(&fake_task(Priority::Interactive)).await?;
        let refused = client.submit(&fake_task(Priority::Interactive)).await;
        ensure!(
            matches!(&refused, Err(client::Error::Api { status: 429, .. })),
            "the queue should be full"
        );
        let t0 = std::time::Instant::now();
        let retrying = tokio::spawn({
            let c = client.clone();
            async move {
                c.submit_with_retry(&fake_task(Priority::Interactive), 10)
                    .await
            }
        });
        // The SDK's first attempt is refused too (the second 429); only then is the queue freed.
        wait_for(
            "the SDK's first attempt to be refused",
            Duration::from_secs(30),
            || async { (counter(&client, "admission_backpressure_events_total").await.ok()? >= 2.0).then_some(()) },
        )
        .await?;
        hold.off()?;
        let adm = retrying.await??.body;
        ensure!(
            t0.elapsed() >= Duration::from_millis(900),
            "admitted after {:?} although its first attempt was refused: the Retry-After (≥ 1 s) was not honoured",
            t0.elapsed()
        );
        let rec = wait_done(&client, &[adm.task_id]).await?.remove(0);
        ensure!(rec.state == TaskState::Completed, "{:?}", rec.state);
        Ok(())
    }
    .await;
    let _ = hold.off();
    stack.shutdown().await?;
    result
}
async fn post_json(url: &str, body: serde_json::Value) -> anyhow::Result<(u16, serde_json::Value)> {
    let r = reqwest::Client::new().post(url).json(&body).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(serde_json::Value::Null)))
}

async fn pool_state(client: &client::Client, id: &str) -> Option<api::node::PoolState> {
    client
        .pools()
        .await
        .ok()?
        .pools
        .into_iter()
        .find(|p| p.pool_id == id)
        .map(|p| p.state)
}

/// Drain lets running work finish, takes the pool out of service, and reload brings it back; a
/// drain deadline ends what is still running with WORKER_RESET.
pub async fn drain_and_reload(a: Assets) -> anyhow::Result<()> {
    let (mut stack, model) = empty_stack(&a, "drain", "").await?;
    let hold = Hold::new(&stack.spec.dir);
    let result = async {
        let client = held_pool(&mut stack, &model, &hold, 8, 10).await?;
        let base = stack.orchd_url.clone();
        // Held, the running task outlasts every step of the drain until it is released.
        hold.on()?;
        let running = client.submit(&fake_task(Priority::Interactive)).await?.body;
        let mut s = client.events(&running.streams.sse).await?;
        let _started = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await?
            .context("no frame")??;
        let (status, body) = post_json(
            &format!("{base}/v2/pools/f1/drain"),
            serde_json::json!({ "deadline_ms": 20000 }),
        )
        .await?;
        ensure!(
            status == 202 && body["state"] == "Draining" && body["command_id"].is_string(),
            "drain: {status} {body}"
        );
        let (conflict, cbody) = post_json(
            &format!("{base}/v2/pools/f1/reload"),
            serde_json::json!({ "model_ref": FAKE_MODEL }),
        )
        .await?;
        ensure!(
            conflict == 409 && cbody["code"] == "CONFLICT",
            "a reload during a drain: {conflict} {cbody}"
        );
        let (again, body2) =
            post_json(&format!("{base}/v2/pools/f1/drain"), serde_json::json!({})).await?;
        ensure!(
            again == 202 && body2["command_id"] == body["command_id"],
            "a second drain returns the running command: {body2}"
        );
        let refused = client
            .submit(&fake_task(Priority::Interactive))
            .await
            .err()
            .context("a task was admitted for a draining pool's model")?;
        ensure!(
            refused
                .envelope()
                .is_some_and(|e| e.code == ErrorCode::ModelNotAvailable),
            "{refused}"
        );
        let st = state_of(&client, running.task_id).await?;
        ensure!(
            st == TaskState::Running,
            "the running task is {st:?} during the drain"
        );
        hold.off()?;
        let mut last = None;
        while let Some(f) = tokio::time::timeout(Duration::from_secs(20), s.next())
            .await?
            .transpose()?
        {
            last = Some(f.event);
        }
        ensure!(
            matches!(&last, Some(Event::End(e)) if !e.canceled),
            "the running task should finish normally: {last:?}"
        );
        wait_for(
            "the pool to be Unloaded",
            Duration::from_secs(20),
            || async {
                (pool_state(&client, "f1").await == Some(api::node::PoolState::Unloaded))
                    .then_some(())
            },
        )
        .await?;
        let (status, body) = post_json(
            &format!("{base}/v2/pools/f1/reload"),
            serde_json::json!({ "model_ref": "other-model" }),
        )
        .await?;
        ensure!(
            status == 404 && body["code"] == "MODEL_NOT_AVAILABLE",
            "reload to an unknown model: {status} {body}"
        );
        let (status, body) = post_json(
            &format!("{base}/v2/pools/f1/reload"),
            serde_json::json!({ "model_ref": FAKE_MODEL }),
        )
        .await?;
        ensure!(status == 202, "reload: {status} {body}");
        stack
            .wait_pools_ready(&["f1"], Duration::from_secs(30))
            .await?;
        let again = client.submit(&fake_task(Priority::Interactive)).await?.body;
        ensure!(
            wait_done(&client, &[again.task_id]).await?[0].state == TaskState::Completed,
            "task after reload"
        );
        // A drain deadline cuts off what still runs (held after its first token).
        hold.on()?;
        let cut = client.submit(&fake_task(Priority::Interactive)).await?.body;
        let mut s = client.events(&cut.streams.sse).await?;
        crate::fixtures::read_tokens(&mut s, 1).await?;
        wait_for("the reload to finish", Duration::from_secs(10), || async {
            let (status, _) = post_json(
                &format!("{base}/v2/pools/f1/drain"),
                serde_json::json!({ "deadline_ms": 200 }),
            )
            .await
            .ok()?;
            (status == 202).then_some(())
        })
        .await?;
        let mut last = None;
        while let Some(f) = tokio::time::timeout(Duration::from_secs(20), s.next())
            .await?
            .transpose()?
        {
            last = Some(f.event);
        }
        ensure!(
            matches!(&last, Some(Event::Error(e)) if e.code == ErrorCode::WorkerReset),
            "cut-off task ended with {last:?}"
        );
        hold.off()?;
        let (status, _) = post_json(
            &format!("{base}/v2/pools/nope/drain"),
            serde_json::json!({}),
        )
        .await?;
        ensure!(status == 404, "drain of an unknown pool: {status}");
        Ok(())
    }
    .await;
    let _ = hold.off();
    stack.shutdown().await?;
    result
}

/// Repeated engine crashes trip pool-managerd's circuit breaker: the pool reports Failed.
pub async fn breaker_trips(a: Assets) -> anyhow::Result<()> {
    let (mut stack, model) = empty_stack(&a, "breaker", "").await?;
    let result = async {
        let mut node = fake_node(
            "n1",
            &model,
            &[("f1", 1)],
            &[("FAKE_CRASH_AFTER_TOKENS", "1".into())],
        )?;
        node.engine_keys = "max_restarts = 2\n".into();
        stack.add_node(node)?;
        stack
            .wait_pools_ready(&["f1"], Duration::from_secs(30))
            .await?;
        let client = client::Client::new(&stack.orchd_url, None)?;
        let failed = wait_for("the breaker to trip", Duration::from_secs(60), || async {
            let pools = client.pools().await.ok()?;
            let p = pools.pools.into_iter().find(|p| p.pool_id == "f1")?;
            if p.state == api::node::PoolState::Failed {
                return Some(p);
            }
            if p.state == api::node::PoolState::Ready {
                // Each task makes the engine crash after its first token.
                if let Ok(adm) = client.submit(&fake_task(Priority::Interactive)).await {
                    let _ = wait_done(&client, &[adm.body.task_id]).await;
                }
            }
            None
        })
        .await?;
        ensure!(
            failed
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("circuit breaker")),
            "last_error: {:?}",
            failed.last_error
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
