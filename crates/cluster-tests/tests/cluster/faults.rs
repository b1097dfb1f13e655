//! Faults hidden from clients (issue 14): a task waits out its pool's restart, a stream whose
//! engine or worker dies continues on another engine from the same token ids (checked against a
//! twin `llama-server`), and a pool-managerd killed mid-stream leaves no engine behind.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use api::events::Event;
use api::task::{Placement, PlacementMode, TaskRequest};
use engine::{EngineClient, LaunchSpec};
use llorch::stack::{NodeSpec, PoolSpec, Stack};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::fixtures::{self, wait_for, Assets};

/// A second real node `id` with one pool `pool` serving the dev model under the same flags as
/// the stack's own pool (2 threads, one slot of 2048 tokens).
fn real_node(stack: &Stack, id: &str, pool: &str) -> NodeSpec {
    NodeSpec {
        node_id: id.into(),
        engine: stack.spec.engine.clone(),
        pools: vec![PoolSpec {
            id: pool.into(),
            model_path: stack.spec.model_path.clone(),
            model_id: stack.spec.model_id.clone(),
            ctx: stack.spec.ctx,
            slots: 1,
        }],
        env: vec![],
        engine_keys: "threads = 2\n".into(),
        extra_toml: String::new(),
    }
}

/// Every frame of a stream until it closes (bounded per frame).
async fn drain(s: &mut client::EventStream, into: &mut Vec<Event>) -> anyhow::Result<()> {
    while let Some(f) = tokio::time::timeout(Duration::from_secs(90), s.next())
        .await
        .context("no frame within 90 s")?
    {
        into.push(f?.event);
    }
    Ok(())
}

/// Reads frames into `into` until `n` token frames arrived.
async fn read_until_tokens(
    s: &mut client::EventStream,
    into: &mut Vec<Event>,
    n: usize,
) -> anyhow::Result<()> {
    while into.iter().filter(|e| matches!(e, Event::Token(_))).count() < n {
        let f = tokio::time::timeout(Duration::from_secs(60), s.next())
            .await?
            .context("stream closed early")??;
        into.push(f.event);
    }
    Ok(())
}

/// The frames of one client stream as one answer: its text, and the checks every resumed stream
/// must pass (one `started`, contiguous indices, `end` counting every token).
struct Answer {
    tokens: Vec<String>,
    migrated_after: Vec<(String, u64)>,
    end: api::events::End,
}

fn answer(frames: &[Event]) -> anyhow::Result<Answer> {
    let started = frames
        .iter()
        .filter(|e| matches!(e, Event::Started(_)))
        .count();
    ensure!(started == 1, "{started} started frames");
    let mut tokens = vec![];
    let mut migrated_after = vec![];
    for e in frames {
        match e {
            Event::Token(t) => {
                ensure!(
                    t.i == tokens.len() as u64,
                    "token index {} after {} tokens",
                    t.i,
                    tokens.len()
                );
                tokens.push(t.t.clone());
            }
            Event::Metrics(m) => {
                if let Some(p) = m.placement.as_ref() {
                    if let Some(n) = p.migrated_after_tokens {
                        ensure!(
                            n == tokens.len() as u64,
                            "migrated after {n} tokens, client had {}",
                            tokens.len()
                        );
                        migrated_after.push((p.pool_id.to_string(), n));
                    }
                }
            }
            _ => {}
        }
    }
    let Some(Event::End(end)) = frames.last().cloned() else {
        bail!("the stream did not end with `end`: {:?}", frames.last());
    };
    ensure!(
        end.tokens_out >= tokens.len() as u64,
        "end.tokens_out {} < {} tokens",
        end.tokens_out,
        tokens.len()
    );
    Ok(Answer {
        tokens,
        migrated_after,
        end,
    })
}

/// The newest engine pid pool-managerd logged for `pool`.
fn engine_pid(log: &std::path::Path, pool: &str) -> Option<i32> {
    fixtures::log_lines(log)
        .iter()
        .filter(|l| l["event"] == "engine.ready" && l["pool_id"] == pool)
        .filter_map(|l| l["pid"].as_i64())
        .map(|p| p as i32)
        .next_back()
}

/// True while `pid` is a live process (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    engine::handoff::process_start_time(pid as u32).is_some()
}

fn greedy(model: &str, prompt: &str, max_tokens: u64) -> TaskRequest {
    let mut req = TaskRequest::new(model);
    req.prompt = Some(prompt.into());
    req.max_tokens = Some(max_tokens);
    req.temperature = Some(0.0);
    req.top_k = Some(1);
    req.seed = Some(7);
    req
}

async fn counter(url: &str, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let series = llorch::haiku::prom::parse(&text).map_err(anyhow::Error::msg)?;
    Ok(series
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum())
}

/// One pool, its engine killed mid-stream: the running task continues on the same pool once it
/// is back, and every task submitted during the restart completes; no POOL_UNAVAILABLE.
pub async fn restart_is_waited_out(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("faults-restart")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let model = stack.spec.model_id.clone();
        let adm = client
            .submit(&greedy(
                &model,
                "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
                120,
            ))
            .await?
            .body;
        let mut s = client.events(&adm.streams.sse).await?;
        let mut first = vec![];
        read_until_tokens(&mut s, &mut first, 3).await?;
        let pid = engine_pid(&stack.pm_log, "cpu0").context("no engine pid")?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        let mut during = vec![];
        for k in 0..6 {
            let mut req = greedy(&model, "The sky is", 8);
            req.seed = Some(k);
            let adm = client
                .submit(&req)
                .await
                .context("submit during the restart")?
                .body;
            during.push(client.events(&adm.streams.sse).await?);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        drain(&mut s, &mut first).await?;
        let long = answer(&first).context("the task whose engine was killed")?;
        ensure!(
            long.migrated_after.len() == 1 && long.migrated_after[0].0 == "cpu0",
            "continued on the restarted pool: {:?}",
            long.migrated_after
        );
        for (k, s) in during.iter_mut().enumerate() {
            let mut frames = vec![];
            drain(s, &mut frames).await?;
            ensure!(
                !frames.iter().any(|e| matches!(e, Event::Error(_))),
                "task {k} submitted during the restart: {:?}",
                frames.last()
            );
            answer(&frames).with_context(|| format!("task {k} submitted during the restart"))?;
        }
        let log = std::fs::read_to_string(&stack.orchd_log)?;
        ensure!(
            !log.contains("POOL_UNAVAILABLE"),
            "POOL_UNAVAILABLE in the orchestratord log"
        );
        ensure!(log.contains("\"task.migrated\""), "no migration narration");
        ensure!(
            counter(&stack.orchd_url, "tasks_migrated_total").await? >= 1.0,
            "tasks_migrated_total"
        );
        // A non-streaming /v1 request whose engine is killed mid-answer gets its whole answer.
        stack.wait_ready(Duration::from_secs(60), &mut |_| {}).await?;
        let seen = first_tokens(&stack.pm_log);
        let url = format!("{}/v1/completions", stack.orchd_url);
        let body = json!({ "model": model, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", "max_tokens": 120, "temperature": 0.0 });
        let call = tokio::spawn(async move { reqwest::Client::new().post(url).json(&body).send().await?.json::<serde_json::Value>().await });
        wait_for("the /v1 request's first token", Duration::from_secs(60), || async { (first_tokens(&stack.pm_log) > seen).then_some(()) }).await?;
        let pid = engine_pid(&stack.pm_log, "cpu0").context("no engine pid")?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        let v = call.await??;
        let text = v["choices"][0]["text"].as_str().unwrap_or("");
        ensure!(v["choices"][0]["finish_reason"] == "length" && !text.is_empty() && v["usage"]["completion_tokens"] == 120, "non-streaming answer after the kill: {v}");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// How many first tokens pool-managerd's engines produced so far.
fn first_tokens(log: &std::path::Path) -> usize {
    fixtures::log_lines(log)
        .iter()
        .filter(|l| l["event"] == "engine.first_token")
        .count()
}

/// Two pools, greedy: the engine under a stream is killed; the client's text is exactly the
/// tokens it had, followed by what a twin llama-server returns for the prompt's token ids plus
/// those tokens' ids (the reference of ENGINE.md §8.15, never the uninterrupted run).
pub async fn migration_matches_twin(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("faults-migrate")?).await?;
    let dir = stack.spec.dir.clone();
    let twin = start_twin(&stack, &dir.join("twin")).await?;
    let result = async {
        stack.add_node(real_node(&stack, "n2", "cpu1"))?;
        stack.wait_pools_ready(&["cpu0", "cpu1"], Duration::from_secs(120)).await?;
        let client = client::Client::new(&stack.orchd_url, None)?;
        let prompt = "Once upon a time, in a small village by the sea, there lived";
        let max_tokens = 96;
        let adm = client.submit(&greedy(&stack.spec.model_id, prompt, max_tokens)).await?.body;
        let mut s = client.events(&adm.streams.sse).await?;
        let mut frames = vec![];
        read_until_tokens(&mut s, &mut frames, 20).await?;
        let first_pool = frames.iter().find_map(|e| match e { Event::Started(st) => Some(st.pool_id.to_string()), _ => None }).context("no started")?;
        let log = if first_pool == "cpu0" { stack.pm_log.clone() } else { stack.nodes[0].log.clone() };
        let pid = engine_pid(&log, &first_pool).context("no engine pid")?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        drain(&mut s, &mut frames).await?;
        let got = answer(&frames)?;
        ensure!(got.migrated_after.len() == 1, "one migration: {:?}", got.migrated_after);
        let (to, m) = got.migrated_after[0].clone();
        ensure!(m >= 20, "migrated after {m} tokens");
        ensure!(to != first_pool, "continued on the other pool, not {to}");
        // The reference: the first m tokens' ids from the twin (their text must be the client's),
        // then a direct greedy continuation from prompt ids + those ids.
        let prefix: String = got.tokens[..m as usize].concat();
        let rest: String = got.tokens[m as usize..].concat();
        let head = twin.complete(json!({ "prompt": prompt, "n_predict": m, "temperature": 0.0, "top_k": 1, "seed": 7, "return_tokens": true, "cache_prompt": false })).await?;
        ensure!(head["content"].as_str() == Some(prefix.as_str()), "twin's first {m} tokens {:?} differ from the client's {prefix:?}", head["content"]);
        let mut ids = twin.client.tokenize(prompt).await?;
        let generated: Vec<u32> = serde_json::from_value(head["tokens"].clone())?;
        ensure!(generated.len() as u64 == m, "twin returned {} ids", generated.len());
        ids.extend(generated);
        let tail = twin.complete(json!({ "prompt": ids, "n_predict": max_tokens - m, "temperature": 0.0, "top_k": 1, "seed": 7, "cache_prompt": false })).await?;
        let reference = tail["content"].as_str().context("no content")?;
        ensure!(rest == reference, "after the migration the client got {rest:?}, the twin {reference:?}");
        ensure!(got.end.tokens_out == m + tail["tokens_predicted"].as_u64().unwrap_or(0), "tokens_out {} vs {m} + {}", got.end.tokens_out, tail["tokens_predicted"]);
        Ok(())
    }
    .await;
    drop(twin);
    stack.shutdown().await?;
    result
}

/// pool-managerd SIGKILLed mid-stream with a second node up: the stream completes there, no
/// engine of the killed node survives, and the node's restarted pool-managerd starts cleanly.
pub async fn worker_killed_mid_stream(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("faults-worker")?).await?;
    let result = async {
        stack.add_node(real_node(&stack, "n2", "cpu1"))?;
        stack
            .wait_pools_ready(&["cpu0", "cpu1"], Duration::from_secs(120))
            .await?;
        let client = client::Client::new(&stack.orchd_url, None)?;
        let mut req = greedy(
            &stack.spec.model_id,
            "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
            150,
        );
        req.placement = Some(Placement {
            mode: PlacementMode::Prefer,
            prefer_pools: vec!["cpu0".parse()?],
            ..Default::default()
        });
        let adm = client.submit(&req).await?.body;
        let mut s = client.events(&adm.streams.sse).await?;
        let mut frames = vec![];
        read_until_tokens(&mut s, &mut frames, 5).await?;
        let engine = engine_pid(&stack.pm_log, "cpu0").context("no engine pid")?;
        let mut pm = stack.pool_managerd.take().context("no pool-managerd")?;
        pm.start_kill()?;
        pm.wait().await?;
        drain(&mut s, &mut frames).await?;
        let got = answer(&frames)?;
        ensure!(
            got.migrated_after
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                == ["cpu1"],
            "{:?}",
            got.migrated_after
        );
        wait_for(
            "the killed node's engine to die",
            Duration::from_secs(10),
            || async { (!alive(engine)).then_some(()) },
        )
        .await?;
        // A new task while the node is gone goes to the other node (no 202 into a dead worker).
        let rec = fixtures::wait_finished(
            &client,
            client
                .submit(&greedy(&stack.spec.model_id, "The sky is", 4))
                .await?
                .body
                .task_id,
        )
        .await?;
        ensure!(
            rec.state == api::task::TaskState::Completed
                && rec.pool_id.as_ref().map(|p| p.as_str()) == Some("cpu1"),
            "{rec:?}"
        );
        stack.start_pool_managerd()?;
        let pids = wait_for(
            "the restarted pool-managerd's engine",
            Duration::from_secs(120),
            || async { Some(fixtures::engine_pids(&stack.pm_log)).filter(|p| p.len() >= 2) },
        )
        .await?;
        ensure!(pids.len() == 2 && pids[1] != engine, "engine pids {pids:?}");
        wait_for(
            "node local to be Online with cpu0 Ready",
            Duration::from_secs(30),
            || async {
                let nodes = client.nodes().await.ok()?;
                let pools = client.pools().await.ok()?;
                (nodes
                    .nodes
                    .iter()
                    .any(|n| n.node_id == "local" && n.status == api::node::NodeStatus::Online)
                    && pools
                        .pools
                        .iter()
                        .any(|p| p.pool_id == "cpu0" && p.state == api::node::PoolState::Ready))
                .then_some(())
            },
        )
        .await?;
        let rec = fixtures::wait_finished(
            &client,
            client
                .submit(&{
                    let mut r = greedy(&stack.spec.model_id, "The sky is", 4);
                    r.placement = Some(Placement {
                        mode: PlacementMode::Pin,
                        pin_pool_id: Some("cpu0".parse()?),
                        ..Default::default()
                    });
                    r
                })
                .await?
                .body
                .task_id,
        )
        .await?;
        ensure!(
            rec.state == api::task::TaskState::Completed,
            "a task on the restarted node: {rec:?}"
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// The twin engine: the pinned binary under pool-managerd's flags (one slot, 2 threads).
struct Twin {
    _engine: engine::RunningEngine,
    client: EngineClient,
    http: reqwest::Client,
}

async fn start_twin(stack: &Stack, dir: &std::path::Path) -> anyhow::Result<Twin> {
    let binary = std::env::var_os("LLORCH_LLAMA_SERVER").context("LLORCH_LLAMA_SERVER is unset")?;
    std::fs::create_dir_all(dir)?;
    let spec = LaunchSpec {
        binary: binary.into(),
        model_path: stack.spec.model_path.clone(),
        alias: stack.spec.model_id.clone(),
        ctx_per_slot: stack.spec.ctx,
        slots: 1,
        threads: Some(2),
        gpu_layers: 0,
        cuda_visible_devices: String::new(),
        extra_args: vec![],
        log_path: dir.join("engine.log"),
        start_timeout: Duration::from_secs(60),
        die_with_parent: true,
        pid_record: None,
    };
    let running = engine::launch(&spec).await?;
    Ok(Twin {
        client: running.client.clone(),
        _engine: running,
        http: reqwest::Client::new(),
    })
}

impl Twin {
    /// A non-streaming `/completion` on the twin (a test may; the product never does).
    async fn complete(&self, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let r = self
            .http
            .post(format!("{}/completion", self.client.base_url()))
            .bearer_auth(self.client.api_key().expose())
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: serde_json::Value = r.json().await?;
        ensure!(status.is_success(), "twin answered {status}: {v}");
        Ok(v)
    }
}

/// Children of `parent` named `name` (from `/proc`).
fn children_named(parent: u32, name: &str) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == name && ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// `llorch up` notices that orchestratord exited, says which daemon and how, and restarts it.
pub async fn up_restarts_orchestratord(a: Assets) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let (_, model) = a.real.clone().map_err(anyhow::Error::msg)?;
    let home = a.out.join(format!(
        "up-home-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&home)?;
    let (port, worker_port) = (llorch::stack::free_port()?, llorch::stack::free_port()?);
    let mut up = fixtures::llorch()?
        .args([
            "up",
            "--no-haiku",
            "--threads",
            "2",
            "--port",
            &port.to_string(),
            "--worker-port",
            &worker_port.to_string(),
        ])
        .arg("--model")
        .arg(&model)
        .env("HOME", &home)
        .env("LLORCH_CACHE_DIR", llorch::cache_dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    for mut pipe in [
        Box::new(up.stdout.take().context("stdout")?)
            as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(up.stderr.take().context("stderr")?),
    ] {
        let out = out.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let text = || out.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let up_pid = up.id().context("no pid")?;
    let result = async {
        wait_for("llorch up to serve", Duration::from_secs(300), || async {
            text().contains("llama-orch is serving").then_some(())
        })
        .await
        .with_context(text)?;
        let orchd = children_named(up_pid, "orchestratord");
        ensure!(orchd.len() == 1, "orchestratord children {orchd:?}");
        kill(Pid::from_raw(orchd[0]), Signal::SIGTERM)?;
        wait_for(
            "llorch up to restart orchestratord",
            Duration::from_secs(60),
            || async {
                text()
                    .contains("[up] orchestratord restarted")
                    .then_some(())
            },
        )
        .await
        .with_context(text)?;
        let t = text();
        ensure!(
            t.contains("[up] orchestratord exited (exit status: 0)") && t.contains("last lines of"),
            "{t}"
        );
        let again = children_named(up_pid, "orchestratord");
        ensure!(
            again.len() == 1 && again != orchd,
            "orchestratord children after the restart {again:?}"
        );
        let health = reqwest::get(format!("http://127.0.0.1:{port}/health")).await?;
        ensure!(
            health.status().is_success(),
            "the restarted orchestratord answers {}",
            health.status()
        );
        Ok(())
    }
    .await;
    let _ = kill(Pid::from_raw(up_pid as i32), Signal::SIGINT);
    let status = tokio::time::timeout(Duration::from_secs(90), up.wait()).await;
    result?;
    let status = status.context("llorch up did not stop on SIGINT")??;
    ensure!(
        status.success(),
        "llorch up exited with {status}: {}",
        text()
    );
    Ok(())
}
