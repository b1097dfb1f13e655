//! Worker resilience (API.md §12, §14.4): an engine killed mid-stream ends the task with
//! WORKER_RESET and its pool comes back by itself; a restarted orchestratord gets its node back.

use std::time::Duration;

use anyhow::{ensure, Context};
use api::events::Event;
use api::ErrorCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fixtures::{self, wait_for, Assets};

fn engine_pids(log: &std::path::Path) -> Vec<i64> {
    fixtures::log_lines(log).iter().filter(|l| l["event"] == "engine.ready").filter_map(|l| l["pid"].as_i64()).collect()
}

pub async fn engine_killed_mid_stream(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("kill9")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None);
        let model = stack.spec.model_id.clone();
        let adm = client.submit(&fixtures::long_request(&model)).await?.body;
        let mut s = client.events(&adm.streams.sse).await?;
        fixtures::read_tokens(&mut s, 3).await?;
        let pid = *engine_pids(&stack.pm_log).last().context("no engine pid")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
        let mut last = None;
        while let Some(f) = tokio::time::timeout(Duration::from_secs(30), s.next()).await?.transpose()? {
            last = Some(f.event);
        }
        ensure!(matches!(&last, Some(Event::Error(e)) if e.code == ErrorCode::WorkerReset && e.retriable), "stream ended with {last:?}");
        // The supervisor restarts the engine and the pool is Ready again, with a new process.
        wait_for("a restarted engine", Duration::from_secs(30), || async { (engine_pids(&stack.pm_log).len() >= 2).then_some(()) }).await?;
        stack.wait_ready(Duration::from_secs(30), &mut |_| {}).await?;
        let mut req = api::task::TaskRequest::new(&model);
        req.prompt = Some("The sky is".into());
        req.max_tokens = Some(4);
        let adm = client.submit(&req).await?.body;
        let rec = wait_for("the follow-up task", Duration::from_secs(30), || async { client.task(adm.task_id).await.ok().map(|r| r.body).filter(|r| r.state.is_terminal()) }).await?;
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
        let client = client::Client::new(&stack.orchd_url, None);
        stack.restart_orchestratord().await?;
        // The node's next heartbeat gets 404 and it registers again on its own.
        let nodes = wait_for("the node to re-register", Duration::from_secs(5), || async { client.nodes().await.ok().filter(|n| n.count == 1) }).await?;
        ensure!(nodes.nodes[0].status == api::node::NodeStatus::Online, "{:?}", nodes.nodes[0].status);
        stack.wait_ready(Duration::from_secs(10), &mut |_| {}).await?;
        let mut req = api::task::TaskRequest::new(&stack.spec.model_id);
        req.prompt = Some("Hello".into());
        req.max_tokens = Some(4);
        ensure!(client.submit(&req).await.is_ok(), "tasks are refused after the restart");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
