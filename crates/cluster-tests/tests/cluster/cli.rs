//! The `llorch` CLI against a live stack: streaming, Ctrl-C cancel, `--json`, exit codes.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context};
use tokio::io::AsyncReadExt;

use crate::fixtures::{llorch, run_llorch as run, wait_for, Assets};

pub async fn cli(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("cli")?).await?;
    let url = stack.orchd_url.clone();
    let model = stack.spec.model_id.clone();
    let result = async {
        let (code, out, err) = run(
            &[
                "run",
                &model,
                "--prompt",
                "Name a fruit.",
                "--max-tokens",
                "8",
                "--temperature",
                "0",
            ],
            &url,
        )
        .await?;
        ensure!(
            code == 0 && !out.trim().is_empty(),
            "run: exit {code}, stdout {out:?}, stderr {err}"
        );
        // The SDK's typed meta calls against the same live stack.
        let client = client::Client::new(&url, None)?;
        client.health().await?;
        let version = client.version().await?;
        ensure!(
            version.api_version == api::API_VERSION
                && version.protocol_version == api::PROTOCOL_VERSION,
            "{version:?}"
        );
        let caps = client.capabilities().await?;
        ensure!(
            caps.engines.len() == 1
                && caps.engines[0].models.iter().any(|m| m == model.as_str())
                && caps.engines[0].ctx_max > 0,
            "{caps:?}"
        );
        let health = client.pool_health("cpu0").await?;
        ensure!(
            health.ready
                && health.live
                && health.metrics.slots_total >= 1
                && health.last_heartbeat_ms.is_some(),
            "{health:?}"
        );
        ensure!(
            matches!(
                client.pool_health("no-such-pool").await,
                Err(client::Error::Api { status: 404, .. })
            ),
            "unknown pool health should be 404"
        );
        let doc = client.openapi().await?;
        ensure!(
            doc["paths"]["/v2/pools/{id}/health"]["get"].is_object(),
            "the served OpenAPI document lacks pool health"
        );
        let (code, out, _) = run(&["pools", "--json"], &url).await?;
        let v: serde_json::Value =
            serde_json::from_str(&out).context("pools --json is not JSON")?;
        ensure!(
            code == 0 && v["pools"][0]["pool_id"] == "cpu0",
            "pools --json: {v}"
        );
        let (code, out, _) = run(&["nodes"], &url).await?;
        ensure!(
            code == 0 && out.contains("local") && out.contains("Online"),
            "nodes table: {out}"
        );
        let (code, _, _) = run(&["tasks", "get", "not-a-uuid"], &url).await?;
        ensure!(code == 2, "a malformed id should exit 2, got {code}");
        let (code, _, err) = run(&["run", "no-such-model", "--prompt", "x"], &url).await?;
        ensure!(
            code == 1 && err.contains("MODEL_NOT_AVAILABLE"),
            "unknown model: exit {code}, {err}"
        );
        let (code, _, _) =
            run(&["run", &model, "--prompt", "x", "--max-tokens", "0"], &url).await?;
        ensure!(code == 2, "INVALID_PARAMS should exit 2, got {code}");
        // Ctrl-C while streaming cancels the task.
        let mut child = llorch()?
            .args([
                "run",
                &model,
                "--raw",
                "--prompt",
                "1, 2, 3, 4, 5, 6, 7, 8,",
                "--max-tokens",
                "1500",
            ])
            .env("LLORCH_URL", &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdout = child.stdout.take().context("stdout")?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(20), stdout.read(&mut buf)).await??;
        ensure!(n > 0, "no tokens before Ctrl-C");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().context("pid")? as i32),
            nix::sys::signal::Signal::SIGINT,
        )?;
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
        ensure!(
            status.code() == Some(1),
            "Ctrl-C should exit 1, got {status}"
        );
        wait_for(
            "the canceled task to be counted",
            Duration::from_secs(10),
            || async {
                let m = client.metrics_text().await.ok()?.body;
                m.lines()
                    .any(|l| {
                        l.starts_with("tasks_canceled_total{")
                            && l.contains("reason=\"client\"")
                            && l.ends_with(" 1")
                    })
                    .then_some(())
            },
        )
        .await?;
        // Pool operations from the CLI.
        let (code, _, err) =
            run(&["pools", "drain", "cpu0", "--deadline-ms", "5000"], &url).await?;
        ensure!(
            code == 0 && err.contains("Draining"),
            "pools drain: exit {code}, {err}"
        );
        wait_for(
            "the pool to be Unloaded",
            Duration::from_secs(30),
            || async {
                let (_, out, _) = run(&["pools", "--json"], &url).await.ok()?;
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                (v["pools"][0]["state"] == "Unloaded").then_some(())
            },
        )
        .await?;
        let (code, _, err) = run(&["pools", "reload", "cpu0", &model], &url).await?;
        ensure!(code == 0, "pools reload: exit {code}, {err}");
        stack
            .wait_ready(Duration::from_secs(30), &mut |_| {})
            .await?;
        let (code, _, _) = run(&["pools", "drain", "no-such-pool"], &url).await?;
        ensure!(
            code == 1,
            "draining an unknown pool should exit 1, got {code}"
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
