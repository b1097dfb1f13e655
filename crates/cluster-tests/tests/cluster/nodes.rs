//! Node liveness (API.md §12.3): heartbeats keep a node Online, silence makes it Offline after the
//! timeout, and a SIGTERM'd pool-managerd deregisters and leaves no engine behind.

use std::time::Duration;

use anyhow::{ensure, Context};
use api::node::NodeStatus;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fixtures::{self, wait_for, Assets};

async fn node_status(client: &client::Client) -> Option<(NodeStatus, u64)> {
    let n = client.nodes().await.ok()?;
    n.nodes.first().map(|n| (n.status, n.last_heartbeat_ms))
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie is reaped by its parent, so "exists" means running.
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

pub async fn heartbeat_and_offline(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("offline")?;
    spec.heartbeat_interval_ms = 500;
    spec.heartbeat_timeout_ms = 2000;
    let mut stack = a.stack(spec).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let (_, first_hb) = node_status(&client).await.context("no node registered")?;
        // Several timeouts' worth of heartbeats: still Online, and the heartbeat time moves.
        tokio::time::sleep(Duration::from_millis(4500)).await;
        let (status, later_hb) = node_status(&client).await.context("node vanished")?;
        ensure!(
            status == NodeStatus::Online && later_hb > first_hb,
            "status {status:?}, heartbeat {first_hb} -> {later_hb}"
        );
        // Freeze pool-managerd: no heartbeats, no deregistration.
        let pid = stack
            .pool_managerd
            .as_ref()
            .and_then(|c| c.id())
            .context("no pool-managerd pid")? as i32;
        kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
        let offline = wait_for(
            "the node to go Offline",
            Duration::from_secs(10),
            || async {
                node_status(&client)
                    .await
                    .filter(|(s, _)| *s == NodeStatus::Offline)
            },
        )
        .await;
        kill(Pid::from_raw(pid), Signal::SIGCONT)?;
        offline?;
        let m = client.metrics_text().await?.body;
        ensure!(
            m.contains("orchd_node_offline_total{node_id=\"local\"} 1"),
            "offline transition not counted"
        );
        // Once it heartbeats again, it is Online again.
        wait_for(
            "the node to come back Online",
            Duration::from_secs(10),
            || async {
                node_status(&client)
                    .await
                    .filter(|(s, _)| *s == NodeStatus::Online)
            },
        )
        .await?;
        // And it serves again: a task runs on its engine to `end` with real tokens.
        let mut req = api::task::TaskRequest::new(&stack.spec.model_id);
        req.prompt = Some("The sky is".into());
        req.max_tokens = Some(4);
        req.temperature = Some(0.0);
        let started = fixtures::run_to_end(&client, &req)
            .await
            .context("a task after the node came back")?;
        ensure!(started.node_id == "local", "ran on {:?}", started.node_id);
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

pub async fn sigterm_deregisters(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("sigterm")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let pid = *fixtures::engine_pids(&stack.pm_log)
            .last()
            .context("no engine.ready line with a pid")?;
        ensure!(alive(pid), "the engine is not running before the test");
        let status = stack.stop_pool_managerd().await?;
        ensure!(status.success(), "pool-managerd exited with {status}");
        let nodes = client.nodes().await?;
        ensure!(
            nodes.count == 0,
            "the node is still registered: {:?}",
            nodes.nodes
        );
        ensure!(
            fixtures::log_lines(&stack.pm_log)
                .iter()
                .any(|l| l["event"] == "node.deregistered"),
            "no node.deregistered line"
        );
        wait_for(
            "the engine process to be gone",
            Duration::from_secs(10),
            || async { (!alive(pid)).then_some(()) },
        )
        .await?;
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
