//! Schemathesis (PyPI) against the running orchestratord's OpenAPI document: generated requests
//! to every route find no 5xx and no response that breaks the document.

use anyhow::{ensure, Context};

use crate::fixtures::Assets;

pub async fn schemathesis(a: Assets) -> anyhow::Result<()> {
    let st = std::env::var("LLORCH_SCHEMATHESIS").context(
        "LLORCH_SCHEMATHESIS is unset: scripts/test.sh installs schemathesis and sets it",
    )?;
    // The real engine, with a small per-slot ctx (which caps max_tokens) and a short default
    // max_tokens, so that generated tasks finish in seconds and a generated non-streaming chat
    // request is answered within the request timeout.
    let mut spec = a.spec("schemathesis")?;
    spec.ctx = 256;
    spec.slots = 2;
    spec.orchd_extra = "[admission]\ndefault_max_tokens = 16\n[queue]\ncapacity = 4\n".into();
    let mut stack = a.stack(spec).await?;
    let result = async {
        let out = tokio::process::Command::new(&st)
            .args(["run", &format!("{}/v2/openapi.json", stack.orchd_url)])
            .args([
                "--checks",
                "not_a_server_error,response_schema_conformance,content_type_conformance",
            ])
            .args([
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "25",
                "--max-time",
                "60",
                "--request-timeout",
                "30",
            ])
            // Draining or reloading the only pool, or removing its node, would starve the rest of the run;
            // the cluster event stream never ends, so it would only run into the request timeout.
            .args([
                "--exclude-path-regex",
                "/v2/pools/\\{id\\}/(drain|reload)|/v2/nodes/\\{id\\}$|/heartbeat$|/register$|/v2/events$",
            ])
            .args(["--seed", "1"])
            .env("NO_COLOR", "1")
            // Its cache and reports go to the scenario's folder, not the source tree.
            .current_dir(&stack.spec.dir)
            .output()
            .await
            .with_context(|| format!("running {st}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for line in text
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("  schemathesis: {line}");
        }
        ensure!(out.status.success(), "schemathesis found problems:\n{text}");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
