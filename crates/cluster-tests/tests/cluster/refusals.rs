//! Refusals: bad configs stop the daemons before they start; bad tasks get typed errors.

use std::process::Command;

use anyhow::{ensure, Context};
use api::ErrorCode;

use crate::fixtures::Assets;

fn run(bin: &str, config: &std::path::Path) -> anyhow::Result<(i32, String)> {
    let exe = llorch::stack::bin_dir()?.join(bin);
    let out = Command::new(&exe)
        .arg("--config")
        .arg(config)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

pub async fn bad_orchestratord_config(a: Assets) -> anyhow::Result<()> {
    let dir = a.out.join("bad-orchd-config");
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("orchestratord.toml");
    std::fs::write(
        &cfg,
        "[server]\nbind = \"0.0.0.0:8080\"\nsurprise = 1\n[queue]\ncapacity = 0\nfull_policy = \"yolo\"\n[auth]\nclient_tokens = [\"short\"]\n[nodes]\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 500\n",
    )?;
    let (code, stderr) = run("orchestratord", &cfg)?;
    ensure!(code == 2, "exit code {code}, stderr:\n{stderr}");
    for key in [
        "server.surprise",
        "queue.capacity",
        "queue.full_policy",
        "auth.client_tokens[0]",
        "nodes.heartbeat_timeout_ms",
        "server.bind",
    ] {
        ensure!(stderr.contains(key), "{key} not reported in:\n{stderr}");
    }
    Ok(())
}

pub async fn missing_model_or_engine(a: Assets) -> anyhow::Result<()> {
    let dir = a.out.join("bad-pm-config");
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("pool-managerd.toml");
    std::fs::write(
        &cfg,
        "[engines.default]\nkind = \"binary\"\npath = \"/nonexistent/llama-server\"\n[[pools]]\nid = \"p0\"\nmodel_ref = \"file:/nonexistent/model.gguf\"\ndevices = \"cpu\"\ngpu_policy = \"cpu\"\n",
    )?;
    let (code, stderr) = run("pool-managerd", &cfg)?;
    ensure!(code == 2, "exit code {code}, stderr:\n{stderr}");
    ensure!(
        stderr.contains("engine binary /nonexistent/llama-server does not exist"),
        "engine not reported:\n{stderr}"
    );
    ensure!(
        stderr.contains("model file /nonexistent/model.gguf does not exist"),
        "model not reported:\n{stderr}"
    );
    Ok(())
}

pub async fn unserved_model(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("unserved")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let mut req = api::task::TaskRequest::new("no-such-model");
        req.prompt = Some("hello".into());
        let err = client
            .submit(&req)
            .await
            .err()
            .context("a task for an unknown model was admitted")?;
        let client::Error::Api {
            status,
            envelope,
            headers,
        } = err
        else {
            anyhow::bail!("not an API error: {err}")
        };
        ensure!(
            status == 404 && envelope.code == ErrorCode::ModelNotAvailable && !envelope.retriable,
            "got {status} {envelope:?}"
        );
        ensure!(
            headers.get("x-correlation-id").is_some(),
            "no correlation id on the error"
        );
        let m = client.metrics_text().await?.body;
        ensure!(
            m.contains(
                "tasks_rejected_total{engine=\"llamacpp\",reason=\"MODEL_NOT_AVAILABLE\",tenant=\"anonymous\"} 1"
            ),
            "rejection not counted"
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// Runs last: every daemon log written by the scenarios above holds no secret. Tokens are 64 hex
/// characters (engine API keys, node credentials, generated dispatch tokens) or the test's
/// configured dispatch token; logs may only show 6-hex fingerprints.
pub async fn logs_hold_no_secrets(a: Assets) -> anyhow::Result<()> {
    let mut files = vec![];
    let mut stack = vec![a.out.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                files.push(p);
            }
        }
    }
    ensure!(
        files.len() >= 10,
        "only {} daemon logs found under {}; run the whole suite",
        files.len(),
        a.out.display()
    );
    let mut lines = 0usize;
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        lines += text.lines().count();
        ensure!(
            !text.contains(crate::fixtures::TEST_DISPATCH_TOKEN),
            "{} contains the dispatch token",
            f.display()
        );
        // Model digests (`sha256:<64 hex>`) are public facts, not secrets; every other 64-hex run is.
        let mut at = 0;
        while let Some(off) = text[at..].find(|c: char| c.is_ascii_hexdigit()) {
            let start = at + off;
            let run_len = text[start..]
                .find(|c: char| !c.is_ascii_hexdigit())
                .unwrap_or(text.len() - start);
            let digest = text[..start].ends_with("sha256:");
            ensure!(
                run_len < 64 || digest,
                "{} contains a 64-hex secret-shaped string {}…",
                f.display(),
                &text[start..start + 8]
            );
            at = start + run_len;
        }
    }
    println!("  scanned {} log files, {lines} lines", files.len());
    Ok(())
}
