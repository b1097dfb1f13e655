//! Cache-aware placement (issue 17) on two real pools: a conversation's turns follow the engine
//! that holds its history, the engine's `cache_n` confirms the reuse and equals the predicted
//! tokens exactly, the metrics move by the engine-reported amounts, and a pool restart empties
//! that pool's index entries. The worker's tokenize route gives the ids the engine runs.

use std::time::Duration;

use anyhow::{ensure, Context};
use api::events::{End, Event, Started};
use api::task::{Message, Placement, PlacementMode, Role, TaskRequest};
use llorch::stack::{NodeSpec, PoolSpec, Stack};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fixtures::{self, Assets};

/// A second real node `id` with one pool `pool` serving the dev model under the stack's flags.
fn real_node(stack: &Stack, id: &str, pool: &str) -> NodeSpec {
    real_node_slots(stack, id, pool, 1)
}

fn real_node_slots(stack: &Stack, id: &str, pool: &str, slots: u32) -> NodeSpec {
    NodeSpec {
        node_id: id.into(),
        engine: stack.spec.engine.clone(),
        pools: vec![PoolSpec {
            id: pool.into(),
            model_path: stack.spec.model_path.clone(),
            model_id: stack.spec.model_id.clone(),
            ctx: stack.spec.ctx,
            slots,
        }],
        env: vec![],
        engine_keys: "threads = 2\n".into(),
        extra_toml: String::new(),
    }
}

fn engine_pid(log: &std::path::Path, pool: &str) -> Option<i32> {
    fixtures::log_lines(log)
        .iter()
        .filter(|l| l["event"] == "engine.ready" && l["pool_id"] == pool)
        .filter_map(|l| l["pid"].as_i64())
        .map(|p| p as i32)
        .next_back()
}

/// One pool's counter from `/metrics` (0 when absent).
async fn counter(url: &str, name: &str, pool: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let series = llorch::haiku::prom::parse(&text).map_err(anyhow::Error::msg)?;
    Ok(series
        .iter()
        .filter(|s| s.name == name && s.labels.get("pool_id").map(String::as_str) == Some(pool))
        .map(|s| s.value)
        .sum())
}

struct Turn {
    started: Started,
    end: End,
    text: String,
}

/// Runs `req` to its end and returns its `started`, `end` and text.
async fn run(client: &client::Client, req: &TaskRequest) -> anyhow::Result<Turn> {
    let adm = client.submit(req).await?.body;
    let mut s = client.events(&adm.streams.sse).await?;
    let (mut started, mut end, mut text) = (None, None, String::new());
    while let Some(f) = tokio::time::timeout(Duration::from_secs(120), s.next())
        .await
        .context("no frame within 120 s")?
    {
        match f?.event {
            Event::Started(st) => started = Some(st),
            Event::Token(t) => text.push_str(&t.t),
            Event::End(e) => end = Some(e),
            Event::Error(e) => anyhow::bail!("task failed: {e:?}"),
            _ => {}
        }
    }
    Ok(Turn {
        started: started.context("no started frame")?,
        end: end.context("no end frame")?,
        text,
    })
}

fn chat(model: &str, messages: &[Message]) -> TaskRequest {
    let mut req = TaskRequest::new(model);
    req.messages = Some(messages.to_vec());
    req.max_tokens = Some(12);
    req.temperature = Some(0.0);
    req.top_k = Some(1);
    req.seed = Some(7);
    req
}

fn msg(role: Role, content: &str) -> Message {
    Message::text(role, content)
}

/// Two one-slot pools under `placement.strategy = "cache-aware"`. A short unrelated task shows
/// which pool least-loaded would pick when both are idle (W); the conversation's first turn is
/// pinned to the other one (O). Turns 2–4 carry no pin and no session: each lands on O, and the
/// engine reused at least the previous turn's prompt. The per-pool prompt metrics move by exactly
/// the engine-reported amounts. Then O's engine is killed: once it is back, the next turn has no
/// index entry anywhere, is placed by load (W), and the engine reports a cold cache.
pub async fn conversation_follows_its_history(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("prefix-conversation")?;
    spec.orchd_extra = "[placement]\nstrategy = \"cache-aware\"\n".into();
    let mut stack = a.stack(spec).await?;
    let result = async {
        let first_pool = stack.spec.pool_id.clone();
        stack.add_node(real_node(&stack, "n2", "cpu1"))?;
        stack
            .wait_pools_ready(&[first_pool.as_str(), "cpu1"], Duration::from_secs(120))
            .await?;
        let url = stack.orchd_url.clone();
        let client = client::Client::new(&url, None)?;
        let model = stack.spec.model_id.clone();
        let control = run(&client, &chat(&model, &[msg(Role::User, "Hi")])).await?;
        let w = control.started.pool_id.to_string();
        let o = if w == "cpu1" { first_pool.clone() } else { "cpu1".to_string() };
        let system: String = (0..40)
            .map(|i| format!("Rule {i}: answer politely, briefly and truthfully. "))
            .collect();
        let mut messages = vec![msg(Role::System, &system), msg(Role::User, "Name a color.")];
        let mut first = chat(&model, &messages);
        first.placement = Some(Placement {
            mode: PlacementMode::Pin,
            pin_pool_id: Some(o.parse()?),
            ..Default::default()
        });
        let t1 = run(&client, &first).await?;
        ensure!(t1.started.pool_id.as_str() == o, "turn 1 pinned to {o}: {:?}", t1.started);
        ensure!(t1.end.tokens_cached.is_some(), "the engine reports cache_n: {:?}", t1.end);
        let mut prev = t1;
        for (k, q) in ["Name another one.", "And a fruit?", "Thanks, one more color."]
            .into_iter()
            .enumerate()
        {
            messages.push(msg(Role::Assistant, &prev.text));
            messages.push(msg(Role::User, q));
            let before = (
                counter(&url, "prompt_tokens_total", &o).await?,
                counter(&url, "prompt_tokens_cached_total", &o).await?,
                counter(&url, "placement_prefix_predicted_tokens_total", &o).await?,
            );
            let t = run(&client, &chat(&model, &messages)).await?;
            let turn = k + 2;
            ensure!(
                t.started.pool_id.as_str() == o,
                "turn {turn} went to {} instead of {o}, which holds the history",
                t.started.pool_id
            );
            let cached = t.end.tokens_cached.context("no tokens_cached")?;
            ensure!(
                cached >= prev.end.tokens_in,
                "turn {turn}: the engine reused {cached} tokens, less than the previous prompt's {}",
                prev.end.tokens_in
            );
            let after = (
                counter(&url, "prompt_tokens_total", &o).await?,
                counter(&url, "prompt_tokens_cached_total", &o).await?,
                counter(&url, "placement_prefix_predicted_tokens_total", &o).await?,
            );
            ensure!(
                after.0 - before.0 == t.end.tokens_in as f64,
                "prompt_tokens_total moved by {} for tokens_in {}",
                after.0 - before.0,
                t.end.tokens_in
            );
            ensure!(
                after.1 - before.1 == cached as f64,
                "prompt_tokens_cached_total moved by {} for cache_n {cached}",
                after.1 - before.1
            );
            ensure!(after.2 > before.2, "a prediction was counted on turn {turn}");
            // The index keys the engine's token ids: the prediction is the engine's reuse, exactly
            // (the previous prompt, then what the engine generated but its last token).
            ensure!(
                after.2 - before.2 == cached as f64,
                "turn {turn}: predicted {} tokens, the engine reused {cached}",
                after.2 - before.2
            );
            prev = t;
        }
        // O restarts: its index entries go; the next turn is placed by load and runs cold.
        let log = if o == first_pool {
            stack.pm_log.clone()
        } else {
            stack.nodes[0].log.clone()
        };
        let pid = engine_pid(&log, &o).context("no engine pid")?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        fixtures::wait_for("the killed engine's replacement", Duration::from_secs(120), || {
            let log = log.clone();
            let o = o.clone();
            async move { engine_pid(&log, &o).filter(|p| *p != pid) }
        })
        .await?;
        stack
            .wait_pools_ready(&[first_pool.as_str(), "cpu1"], Duration::from_secs(120))
            .await?;
        messages.push(msg(Role::Assistant, &prev.text));
        messages.push(msg(Role::User, "Goodbye."));
        let t5 = run(&client, &chat(&model, &messages)).await?;
        ensure!(
            t5.started.pool_id.as_str() == w,
            "after {o}'s restart the turn is placed by load on {w}, not {}",
            t5.started.pool_id
        );
        let cold = t5.end.tokens_cached.context("no tokens_cached")?;
        ensure!(
            cold < t5.end.tokens_in / 4,
            "a cold cache: {cold} of {} tokens reused",
            t5.end.tokens_in
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// The imbalance guard on two 4-slot pools, with a load cost of 1 token per task so that only the
/// guard can keep a request off the pool holding its prefix: while that pool (O) runs 3 long tasks
/// and the other (W) none (3 − 0 > `balance_abs` 2, 3 > 0 × 1.5), the conversation's next turn goes
/// to W; once the long tasks are canceled, the same turn again goes to W, which now holds the
/// longest prefix (turn 2 ran there), and the engine reuses it.
pub async fn imbalance_guard_lets_load_win(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("prefix-guard")?;
    spec.slots = 4;
    spec.orchd_extra = "[placement]\nstrategy = \"cache-aware\"\nload_cost_tokens = 1\n".into();
    let mut stack = a.stack(spec).await?;
    let result = async {
        let first_pool = stack.spec.pool_id.clone();
        stack.add_node(real_node_slots(&stack, "n2", "cpu1", 4))?;
        stack
            .wait_pools_ready(&[first_pool.as_str(), "cpu1"], Duration::from_secs(120))
            .await?;
        let url = stack.orchd_url.clone();
        let client = client::Client::new(&url, None)?;
        let model = stack.spec.model_id.clone();
        let control = run(&client, &chat(&model, &[msg(Role::User, "Hi")])).await?;
        let w = control.started.pool_id.to_string();
        let o = if w == "cpu1" {
            first_pool.clone()
        } else {
            "cpu1".to_string()
        };
        let pin = |req: &mut TaskRequest| -> anyhow::Result<()> {
            req.placement = Some(Placement {
                mode: PlacementMode::Pin,
                pin_pool_id: Some(o.parse()?),
                ..Default::default()
            });
            Ok(())
        };
        let system: String = (0..40)
            .map(|i| format!("Rule {i}: answer politely, briefly and truthfully. "))
            .collect();
        let mut messages = vec![msg(Role::System, &system), msg(Role::User, "Name a color.")];
        let mut first = chat(&model, &messages);
        pin(&mut first)?;
        let t1 = run(&client, &first).await?;
        messages.push(msg(Role::Assistant, &t1.text));
        messages.push(msg(Role::User, "Another one?"));
        // Three long tasks on O, each seen running (first token) before the turn is submitted.
        let (mut long, mut streams) = (vec![], vec![]);
        for k in 0..3 {
            // A greedy count keeps going (no end of sequence within the budget).
            let mut req = TaskRequest::new(&model);
            req.prompt = Some(format!("{k}, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"));
            req.max_tokens = Some(1500);
            req.temperature = Some(0.0);
            req.top_k = Some(1);
            pin(&mut req)?;
            let adm = client.submit(&req).await?.body;
            let mut s = client.events(&adm.streams.sse).await?;
            loop {
                let f = tokio::time::timeout(Duration::from_secs(120), s.next())
                    .await
                    .context("no frame within 120 s")?
                    .context("stream closed before a token")??;
                if matches!(f.event, Event::Token(_)) {
                    break;
                }
            }
            long.push(adm.task_id);
            streams.push(s);
        }
        let t2 = run(&client, &chat(&model, &messages)).await;
        let mut still_running = 0;
        for id in long.clone() {
            let r = client.task(id).await?.body;
            if !r.state.is_terminal() {
                still_running += 1;
            }
            client.cancel(id).await?;
        }
        let t2 = t2?;
        ensure!(
            still_running == 3,
            "the long tasks ran out before the check ({still_running} of 3 still running)"
        );
        ensure!(
            t2.started.pool_id.as_str() == w,
            "with {o} running 3 tasks and {w} none, load wins: the turn went to {}",
            t2.started.pool_id
        );
        drop(streams);
        for id in long {
            fixtures::wait_finished(&client, id).await?;
        }
        let t3 = run(&client, &chat(&model, &messages)).await?;
        ensure!(
            t3.started.pool_id.as_str() == w,
            "balanced again: the same turn goes to {w}, which now holds the longest prefix (turn 2 ran there), not {}",
            t3.started.pool_id
        );
        ensure!(
            t3.end.tokens_cached.unwrap_or(0) >= t1.end.tokens_in,
            "the engine reused {:?} tokens, less than turn 1's prompt {}",
            t3.end.tokens_cached,
            t1.end.tokens_in
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// The worker's tokenize route against the real engine: a prompt's ids and a chat's ids (rendered
/// with the engine's template) are exactly as many as the engine then evaluates for the same
/// input (`tokens_in`, from `tokens_evaluated`), the chat's ChatML markers are single special
/// ids, a prompt's ids are a prefix of a longer prompt's; chats with tools, another model, an
/// unknown pool and a wrong token are refused with typed errors.
pub async fn worker_tokenize_matches_the_engine(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("tokenize")?;
    spec.pm_extra = format!(
        "[dispatch]\ntoken = \"{}\"\n",
        fixtures::TEST_DISPATCH_TOKEN
    );
    let mut stack = a.stack(spec).await?;
    let result = async {
        let pools = fixtures::worker_pools(&stack).await?;
        let pool = pools.first().context("no pool")?;
        let served = pool.models.first().context("the pool serves no model")?;
        let model = api::worker::DispatchModel {
            id: served.id.clone(),
            digest: served.digest.clone(),
        };
        let http = reqwest::Client::new();
        let url = format!("{}/v2/pools/{}/tokenize", stack.worker_url, pool.pool_id);
        let tokenize = |input: api::worker::DispatchInput, model: api::worker::DispatchModel| {
            let body = api::worker::TokenizeRequest {
                protocol_version: api::PROTOCOL_VERSION,
                model,
                input,
            };
            let req = http
                .post(&url)
                .bearer_auth(fixtures::TEST_DISPATCH_TOKEN)
                .json(&body);
            async move {
                let r = req.send().await?;
                let status = r.status().as_u16();
                let text = r.text().await?;
                anyhow::Ok((status, text))
            }
        };
        let ids_of = |(status, text): (u16, String)| -> anyhow::Result<Vec<u32>> {
            ensure!(status == 200, "tokenize answered {status}: {text}");
            Ok(serde_json::from_str::<api::worker::TokenizeResponse>(&text)?.tokens)
        };
        let client = client::Client::new(&stack.orchd_url, None)?;
        let model_id = stack.spec.model_id.clone();
        // A prompt.
        let prompt = "The capital of France is Paris. The capital of Italy is";
        let p_ids = ids_of(
            tokenize(
                api::worker::DispatchInput::Prompt {
                    prompt: prompt.into(),
                },
                model.clone(),
            )
            .await?,
        )?;
        let mut req = TaskRequest::new(&model_id);
        req.prompt = Some(prompt.into());
        req.max_tokens = Some(3);
        req.temperature = Some(0.0);
        let t = run(&client, &req).await?;
        ensure!(
            t.end.tokens_in == p_ids.len() as u64,
            "the engine evaluated {} prompt tokens, tokenize gave {}",
            t.end.tokens_in,
            p_ids.len()
        );
        let longer = ids_of(
            tokenize(
                api::worker::DispatchInput::Prompt {
                    prompt: format!("{prompt} Rome."),
                },
                model.clone(),
            )
            .await?,
        )?;
        ensure!(
            longer.starts_with(&p_ids) && longer.len() > p_ids.len(),
            "{p_ids:?} is not a prefix of {longer:?}"
        );
        // A chat, rendered by the engine's template.
        let messages = vec![
            msg(Role::System, "Answer in one word."),
            msg(Role::User, "Name a color."),
        ];
        let m_ids = ids_of(
            tokenize(
                api::worker::DispatchInput::Messages {
                    messages: messages.clone(),
                    tools: None,
                },
                model.clone(),
            )
            .await?,
        )?;
        // SmolLM2's ChatML: `<|im_start|>` is id 1 and `<|im_end|>` id 2 (ENGINE.md).
        ensure!(
            m_ids.first() == Some(&1) && m_ids.iter().filter(|i| **i == 2).count() == 2,
            "the chat's special tokens are single ids: {m_ids:?}"
        );
        let t = run(&client, &chat(&model_id, &messages)).await?;
        ensure!(
            t.end.tokens_in == m_ids.len() as u64,
            "the engine evaluated {} chat tokens, tokenize gave {}",
            t.end.tokens_in,
            m_ids.len()
        );
        // Refusals.
        let tool_chat = api::worker::DispatchInput::Messages {
            messages: vec![msg(Role::User, "weather?")],
            tools: Some(serde_json::from_value(serde_json::json!({
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
            }))?),
        };
        let (status, text) = tokenize(tool_chat, model.clone()).await?;
        ensure!(
            status == 400 && text.contains("INVALID_PARAMS"),
            "a chat with tools: {status} {text}"
        );
        let other = api::worker::DispatchModel {
            id: "some-other-model".parse()?,
            digest: None,
        };
        let (status, text) = tokenize(
            api::worker::DispatchInput::Prompt { prompt: "x".into() },
            other,
        )
        .await?;
        ensure!(
            status == 404 && text.contains("MODEL_NOT_AVAILABLE"),
            "another model: {status} {text}"
        );
        let r = http
            .post(format!("{}/v2/pools/no-such-pool/tokenize", stack.worker_url))
            .bearer_auth(fixtures::TEST_DISPATCH_TOKEN)
            .json(&serde_json::json!({"protocol_version": 1, "model": model, "input": {"prompt": "x"}}))
            .send()
            .await?;
        ensure!(r.status() == 404, "unknown pool: {}", r.status());
        let r = http
            .post(&url)
            .bearer_auth("not-the-token-0000000000000000000000000000")
            .json(&serde_json::json!({"protocol_version": 1, "model": model, "input": {"prompt": "x"}}))
            .send()
            .await?;
        ensure!(r.status() == 401, "wrong token: {}", r.status());
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
