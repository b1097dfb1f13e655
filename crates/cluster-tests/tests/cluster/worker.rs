//! Worker resilience (API.md §12, §14.4): with migration off (`placement.migration_limit = 0`), an
//! engine killed mid-stream ends the task with WORKER_RESET and its pool comes back by itself; a
//! restarted orchestratord gets its node back.

use std::time::Duration;

use anyhow::{ensure, Context};
use api::events::Event;
use api::ErrorCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fixtures::{self, wait_for, Assets};

pub async fn engine_killed_mid_stream(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("kill9")?;
    spec.orchd_extra = "[placement]\nmigration_limit = 0\n".into();
    let mut stack = a.stack(spec).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let model = stack.spec.model_id.clone();
        let adm = client.submit(&fixtures::long_request(&model)).await?.body;
        let mut s = client.events(&adm.streams.sse).await?;
        fixtures::read_tokens(&mut s, 3).await?;
        let pid = *fixtures::engine_pids(&stack.pm_log).last().context("no engine pid")?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        let mut last = None;
        while let Some(f) = tokio::time::timeout(Duration::from_secs(30), s.next()).await?.transpose()? {
            last = Some(f.event);
        }
        ensure!(matches!(&last, Some(Event::Error(e)) if e.code == ErrorCode::WorkerReset && e.retriable), "stream ended with {last:?}");
        let orchd_metrics = reqwest::get(format!("{}/metrics", stack.orchd_url)).await?.text().await?;
        ensure!(!orchd_metrics.lines().any(|l| l.starts_with("tasks_migrated_total{")), "migrated with migration_limit 0");
        // The supervisor restarts the engine and the pool is Ready again, with a new process.
        wait_for("a restarted engine", Duration::from_secs(30), || async { (fixtures::engine_pids(&stack.pm_log).len() >= 2).then_some(()) }).await?;
        stack.wait_ready(Duration::from_secs(30), &mut |_| {}).await?;
        let mut req = api::task::TaskRequest::new(&model);
        req.prompt = Some("The sky is".into());
        req.max_tokens = Some(4);
        let adm = client.submit(&req).await?.body;
        let rec = fixtures::wait_finished(&client, adm.task_id).await?;
        ensure!(rec.state == api::task::TaskState::Completed, "follow-up: {:?}", rec.error);
        // pool-managerd's own metrics saw the crash.
        let text = reqwest::get(format!("{}/metrics", stack.worker_url)).await?.text().await?;
        let series = llorch::haiku::prom::parse(&text).map_err(anyhow::Error::msg)?;
        let value = |name: &str, extra: Option<(&str, &str)>| {
            series.iter().filter(|s| s.name == name && s.labels.get("pool_id").map(String::as_str) == Some("cpu0") && extra.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v))).map(|s| s.value).sum::<f64>()
        };
        ensure!(llorch::haiku::prom::has_help_and_type(&text), "no HELP/TYPE lines");
        ensure!(value("engine_crashes_total", None) == 1.0, "engine_crashes_total: {text}");
        ensure!(value("dispatches_failed_total", None) >= 1.0 && value("dispatches_ended_total", None) >= 1.0, "dispatch counters: {text}");
        ensure!(value("pool_state", Some(("state", "Ready"))) == 1.0, "pool_state: {text}");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

pub async fn orchestratord_restart_reregisters(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("orchd-restart")?;
    spec.heartbeat_interval_ms = 500;
    let mut stack = a.stack(spec).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        stack.restart_orchestratord().await?;
        // The node's next heartbeat gets 404 and it registers again on its own.
        let nodes = wait_for(
            "the node to re-register",
            Duration::from_secs(5),
            || async { client.nodes().await.ok().filter(|n| n.count == 1) },
        )
        .await?;
        ensure!(
            nodes.nodes[0].status == api::node::NodeStatus::Online,
            "{:?}",
            nodes.nodes[0].status
        );
        stack
            .wait_ready(Duration::from_secs(10), &mut |_| {})
            .await?;
        // The re-registered node serves: a task runs on its engine to `end` with real tokens.
        let mut req = api::task::TaskRequest::new(&stack.spec.model_id);
        req.prompt = Some("Hello".into());
        req.max_tokens = Some(4);
        req.temperature = Some(0.0);
        fixtures::run_to_end(&client, &req)
            .await
            .context("a task after the restart")?;
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

async fn post(url: &str, body: serde_json::Value) -> anyhow::Result<u16> {
    Ok(reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await?
        .status()
        .as_u16())
}

/// Reload to another model: the new engine comes up beside the old one, the running task finishes
/// on the old engine, new tasks go to the new model; a reload to a missing file fails and the
/// serving engine stays.
pub async fn reload_to_new_model(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("reload")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let second = stack.spec.dir.join("second-model.gguf");
        if std::fs::hard_link(&stack.spec.model_path, &second).is_err() {
            std::fs::copy(&stack.spec.model_path, &second)?;
        }
        let old_model = stack.spec.model_id.clone();
        let mut long = fixtures::long_request(&old_model);
        long.max_tokens = Some(200);
        let running = client.submit(&long).await?.body;
        let mut s = client.events(&running.streams.sse).await?;
        fixtures::read_tokens(&mut s, 2).await?;
        // Reloads name catalog models (§10: catalog errors as at admission): register both first.
        let second_ref = format!("file:{}", second.display());
        let unregistered = post(
            &format!("{}/v2/pools/cpu0/reload", stack.orchd_url),
            serde_json::json!({ "model_ref": second_ref }),
        )
        .await?;
        ensure!(
            unregistered == 404,
            "a reload to an unregistered ref answered {unregistered}"
        );
        for r in [second_ref.as_str(), "file:/nonexistent/third.gguf"] {
            client
                .register_model(&api::catalog::RegisterModel {
                    id: None,
                    model_ref: r.into(),
                    digest: None,
                })
                .await?;
        }
        let url = format!("{}/v2/pools/cpu0/reload", stack.orchd_url);
        ensure!(
            post(&url, serde_json::json!({ "model_ref": second_ref })).await? == 202,
            "reload refused"
        );
        let mut last = None;
        while let Some(f) = tokio::time::timeout(Duration::from_secs(60), s.next())
            .await?
            .transpose()?
        {
            last = Some(f.event);
        }
        ensure!(
            matches!(&last, Some(Event::End(e)) if !e.canceled),
            "the task on the old engine should finish: {last:?}"
        );
        wait_for(
            "the pool to serve second-model",
            Duration::from_secs(60),
            || async {
                client.pools().await.ok()?.pools.into_iter().find(|p| {
                    p.pool_id == "cpu0"
                        && p.state == api::node::PoolState::Ready
                        && p.model.as_ref().is_some_and(|m| m.id == "second-model")
                })
            },
        )
        .await?;
        let mut req = api::task::TaskRequest::new("second-model");
        req.prompt = Some("The sky is".into());
        req.max_tokens = Some(4);
        let t = client.submit(&req).await?.body;
        let rec = fixtures::wait_finished(&client, t.task_id).await?;
        ensure!(
            rec.state == api::task::TaskState::Completed,
            "{:?}",
            rec.error
        );
        let mut old = api::task::TaskRequest::new(&old_model);
        old.prompt = Some("x".into());
        ensure!(
            client.submit(&old).await.is_err(),
            "the old model is still offered"
        );
        // A reload to a file that does not exist fails on the node; the pool keeps serving.
        wait_for(
            "the pool operation to finish",
            Duration::from_secs(10),
            || async {
                (post(
                    &url,
                    serde_json::json!({ "model_ref": "file:/nonexistent/third.gguf" }),
                )
                .await
                .ok()?
                    == 202)
                    .then_some(())
            },
        )
        .await?;
        let err = wait_for(
            "the failed reload to be reported",
            Duration::from_secs(15),
            || async {
                client
                    .pools()
                    .await
                    .ok()?
                    .pools
                    .into_iter()
                    .find(|p| p.pool_id == "cpu0")
                    .and_then(|p| p.last_error)
            },
        )
        .await?;
        ensure!(err.contains("third.gguf"), "last_error: {err}");
        let m = client.metrics_text().await?.body;
        ensure!(
            m.contains("pool_reloads_total{pool_id=\"cpu0\",outcome=\"success\"} 1"),
            "reload success not counted"
        );
        ensure!(
            m.contains("pool_reloads_total{pool_id=\"cpu0\",outcome=\"rolled_back\"} 1"),
            "rolled-back reload not counted"
        );
        let t = client.submit(&req).await?.body;
        let rec = fixtures::wait_finished(&client, t.task_id).await?;
        ensure!(
            rec.state == api::task::TaskState::Completed,
            "{:?}",
            rec.error
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// An engine started by `llorch engine start` is adopted through its handoff file, serves tasks,
/// and is dropped when its process dies; a stale file is ignored with a log line.
pub async fn handoff_adoption(a: Assets) -> anyhow::Result<()> {
    let binary = std::env::var("LLORCH_LLAMA_SERVER").context("LLORCH_LLAMA_SERVER")?;
    let mut stack = a.stack(a.spec("handoff")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let dir = stack.spec.dir.join("handoff");
        // A stale file: its process has exited.
        let mut gone = std::process::Command::new("true").spawn()?;
        let gone_pid = gone.id();
        gone.wait()?;
        std::fs::create_dir_all(&dir)?;
        let stale = engine::handoff::HandoffFile {
            pool_id: "ghost".into(),
            url: "http://127.0.0.1:9".into(),
            pid: gone_pid,
            start_time: 1,
            model: engine::handoff::HandoffModel {
                id: "ghost-model".into(),
                model_ref: "file:/nowhere.gguf".into(),
            },
            slots: 1,
            ctx_per_slot: 512,
            engine_version: "b0".into(),
            api_key_file: dir.join("ghost.key"),
        };
        stale.write_atomic(&dir)?;
        let llorch = llorch::stack::bin_dir()?.join("llorch");
        let out = tokio::process::Command::new(&llorch)
            .args([
                "engine",
                "start",
                "--pool-id",
                "adopted0",
                "--model-id",
                "adopted-model",
                "--slots",
                "1",
                "--ctx",
                "1024",
                "--threads",
                "1",
            ])
            .arg("--model")
            .arg(&stack.spec.model_path)
            .arg("--handoff-dir")
            .arg(&dir)
            .arg("--binary")
            .arg(&binary)
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "llorch engine start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let started: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("engine start prints the handoff JSON")?;
        let pid = started["pid"].as_u64().context("pid")? as i32;
        ensure!(
            started.get("api_key").is_none()
                && !String::from_utf8_lossy(&out.stdout)
                    .contains(&std::fs::read_to_string(dir.join("adopted0.key"))?),
            "the key leaked into the handoff"
        );
        let result = async {
            wait_for("the adopted pool", Duration::from_secs(20), || async {
                client.pools().await.ok()?.pools.into_iter().find(|p| {
                    p.pool_id == "adopted0"
                        && p.state == api::node::PoolState::Ready
                        && p.model.as_ref().is_some_and(|m| m.id == "adopted-model")
                })
            })
            .await?;
            let mut req = api::task::TaskRequest::new("adopted-model");
            req.prompt = Some("The sky is".into());
            req.max_tokens = Some(4);
            let t = client.submit(&req).await?.body;
            let rec = fixtures::wait_finished(&client, t.task_id).await?;
            ensure!(
                rec.state == api::task::TaskState::Completed
                    && rec.pool_id.as_ref().map(|p| p.as_str()) == Some("adopted0"),
                "{:?} on {:?}",
                rec.state,
                rec.pool_id
            );
            ensure!(
                !client
                    .pools()
                    .await?
                    .pools
                    .iter()
                    .any(|p| p.pool_id == "ghost"),
                "the stale file was adopted"
            );
            ensure!(
                fixtures::log_lines(&stack.pm_log)
                    .iter()
                    .any(|l| l["event"] == "handoff.ignored"
                        && l["human"].as_str().is_some_and(|h| h.contains("ghost"))),
                "no log line for the stale file"
            );
            kill(Pid::from_raw(pid), Signal::SIGKILL)?;
            wait_for(
                "the adopted pool to be dropped",
                Duration::from_secs(15),
                || async {
                    (!client
                        .pools()
                        .await
                        .ok()?
                        .pools
                        .iter()
                        .any(|p| p.pool_id == "adopted0"))
                    .then_some(())
                },
            )
            .await?;
            ensure!(
                fixtures::log_lines(&stack.pm_log)
                    .iter()
                    .any(|l| l["event"] == "handoff.dropped"),
                "no handoff.dropped line"
            );
            Ok(())
        }
        .await;
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        result
    }
    .await;
    stack.shutdown().await?;
    result
}

/// HA on the worker (issue 21), at the dispatch level on a real engine: a dispatch with an epoch
/// whose connection drops keeps running; the same (task, attempt) dispatched again replays every
/// line from seq 0 (byte-identical to what was read before) and follows live to the engine's
/// `end`, gap-free; a lower epoch is refused with STALE_EPOCH and changes nothing.
pub async fn dispatch_reattaches_with_an_epoch(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("reattach")?;
    spec.pm_extra = format!(
        "[dispatch]\ntoken = \"{}\"\n[worker]\ndispatch_grace_ms = 600000\n",
        fixtures::TEST_DISPATCH_TOKEN
    );
    let mut stack = a.stack(spec).await?;
    let result = async {
        let pools = fixtures::worker_pools(&stack).await?;
        let pool = pools.first().context("no pool")?;
        // The leader is gone (as in a failover): nobody cancels a task orchestratord does not
        // know, and the node keeps serving while it retries its registration.
        let config = stack.spec.dir.join("orchestratord.toml");
        let orchd = std::fs::read_dir("/proc")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("orchestratord") && c.contains(config.to_str().unwrap_or("?"))
                })
            })
            .context("orchestratord's pid")?;
        kill(Pid::from_raw(orchd), Signal::SIGKILL)?;
        let model = pool.models.first().context("the pool serves no model")?;
        let task = api::TaskId::new();
        let req = api::worker::DispatchRequest {
            protocol_version: api::PROTOCOL_VERSION,
            attempt: 1,
            task_id: task,
            session_id: api::SessionId::new(),
            correlation_id: "ha-reattach".parse()?,
            node_id: stack.spec.node_id.parse()?,
            pool_id: pool.pool_id.clone(),
            model: api::worker::DispatchModel {
                id: model.id.clone(),
                digest: model.digest.clone(),
            },
            engine: api::ENGINE_LLAMACPP.into(),
            input: api::worker::DispatchInput::Prompt {
                prompt: "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,".into(),
            },
            params: api::worker::DispatchParams {
                max_tokens: 300,
                ctx: 0,
                sampling: api::task::Sampling {
                    temperature: Some(0.0),
                    seed: Some(1),
                    ..Default::default()
                },
            },
            deadline_remaining_ms: None,
            priority: api::task::Priority::Interactive,
            resume: None,
            id_slot: None,
        };
        let url = format!("{}/v2/pools/{}/dispatch", stack.worker_url, pool.pool_id);
        let http = reqwest::Client::new();
        let post = |epoch: u64| {
            http.post(&url)
                .bearer_auth(fixtures::TEST_DISPATCH_TOKEN)
                .header(api::EPOCH_HEADER, epoch.to_string())
                .json(&req)
                .send()
        };
        let mut first = post(5).await?;
        ensure!(first.status() == 200, "first dispatch: {}", first.status());
        let mut seen = Vec::new();
        while seen.iter().filter(|b| **b == b'\n').count() < 8 {
            let chunk = tokio::time::timeout(Duration::from_secs(30), first.chunk())
                .await??
                .with_context(|| {
                    format!(
                        "the stream ended before 8 lines: {}",
                        String::from_utf8_lossy(&seen)
                    )
                })?;
            seen.extend_from_slice(&chunk);
        }
        drop(first);
        let id = task.to_string();
        wait_for(
            "task.detached in pool-managerd's log",
            Duration::from_secs(30),
            || async {
                fixtures::log_lines(&stack.pm_log)
                    .iter()
                    .any(|l| l["event"] == "task.detached" && l["task_id"] == id.as_str())
                    .then_some(())
            },
        )
        .await?;
        let stale = post(4).await?;
        ensure!(stale.status() == 409, "a stale epoch: {}", stale.status());
        let env: api::ErrorEnvelope = stale.json().await?;
        ensure!(env.code == ErrorCode::StaleEpoch, "{env:?}");
        let second = post(5).await?;
        ensure!(
            second.status() == 200,
            "second dispatch: {}",
            second.status()
        );
        let all = tokio::time::timeout(Duration::from_secs(300), second.bytes()).await??;
        ensure!(
            all.starts_with(&seen),
            "the replay differs from the lines read before"
        );
        let lines: Vec<api::worker::WorkerLine> = all
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(serde_json::from_slice)
            .collect::<Result<_, _>>()?;
        let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
        ensure!(
            seqs == (0..lines.len() as u64).collect::<Vec<_>>(),
            "seqs not gap-free: {seqs:?}"
        );
        use api::worker::WorkerEvent;
        ensure!(
            matches!(lines[0].event, WorkerEvent::Started { .. }),
            "{:?}",
            lines[0]
        );
        let tokens = lines
            .iter()
            .filter(|l| matches!(l.event, WorkerEvent::Token { .. }))
            .count();
        match &lines.last().context("no lines")?.event {
            WorkerEvent::End {
                tokens_out,
                stop_reason,
                ..
            } => ensure!(
                *tokens_out as usize == tokens && *stop_reason != api::events::StopReason::Canceled,
                "end: {tokens_out} tokens ({stop_reason:?}), {tokens} token lines"
            ),
            other => anyhow::bail!("the stream ended with {other:?}"),
        }
        let text = reqwest::get(format!("{}/metrics", stack.worker_url))
            .await?
            .text()
            .await?;
        let series = llorch::haiku::prom::parse(&text).map_err(anyhow::Error::msg)?;
        let value = |name: &str| {
            series
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.value)
                .sum::<f64>()
        };
        ensure!(
            (
                value("worker_tasks_reattached_total"),
                value("worker_tasks_detached"),
                value("worker_tasks_grace_expired_total")
            ) == (1.0, 0.0, 0.0),
            "HA task metrics: {text}"
        );
        // The slot is free again.
        wait_for(
            "the pool's slot to be free",
            Duration::from_secs(15),
            || async {
                let pools = fixtures::worker_pools(&stack).await.ok()?;
                pools
                    .first()
                    .filter(|p| p.slots_free == p.slots_total)
                    .map(|_| ())
            },
        )
        .await?;
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
