//! The OpenAI-compatible API (API.md §11) driven by the official `openai` Python client.

use anyhow::{ensure, Context};

use crate::fixtures::Assets;

pub async fn official_client(a: Assets) -> anyhow::Result<()> {
    let python = std::env::var("LLORCH_PYTHON").context("LLORCH_PYTHON is unset: scripts/test.sh installs the openai client into a venv and sets it")?;
    let mut spec = a.spec("openai")?;
    spec.orchd_extra = "[queue]\ncapacity = 1\n".into();
    let mut stack = a.stack(spec).await?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/openai_check.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&stack.orchd_url)
        .arg(&stack.spec.model_id)
        .output()
        .await;
    stack.shutdown().await?;
    let out = out.with_context(|| format!("running {python}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines().filter(|l| l.starts_with("openai")) {
        println!("  {line}");
    }
    ensure!(
        out.status.success(),
        "the openai client checks failed:\n{text}"
    );
    Ok(())
}
