//! The OpenAI-compatible API (API.md §11) driven by the official `openai` Python client.

use anyhow::{ensure, Context};

use crate::fixtures::Assets;

pub async fn official_client(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("openai")?;
    spec.orchd_extra = "[queue]\ncapacity = 1\n".into();
    run_script(&a, spec, "openai_check.py", "openai", &[]).await
}

/// Tool calls (a full loop, streamed and not), structured output, logprobs and sampling fields,
/// on a pool started with the Llama 3.1 template (`chat_template_file`).
pub async fn tools_and_structured_output(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("openai-tools")?;
    let template = crate::fixtures::tool_template(&a, &spec.dir)?;
    spec.pm_extra = format!(
        "chat_template_file = {:?}\n",
        template.display().to_string()
    );
    run_script(&a, spec, "openai_tools_check.py", "openai", &[]).await
}

/// The Responses API with the official `openai` client: text (streamed and not), a function call
/// round trip (streamed and not), and cancel on disconnect.
pub async fn responses_api(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("openai-responses")?;
    let template = crate::fixtures::tool_template(&a, &spec.dir)?;
    spec.pm_extra = format!(
        "chat_template_file = {:?}\n",
        template.display().to_string()
    );
    run_script(&a, spec, "responses_check.py", "responses", &[]).await
}

/// Anthropic Messages with the official `anthropic` client: text (streamed and not), a tool use
/// round trip (streamed and not), a typed 404, and cancel on disconnect.
pub async fn anthropic_messages(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("anthropic")?;
    let template = crate::fixtures::tool_template(&a, &spec.dir)?;
    spec.pm_extra = format!(
        "chat_template_file = {:?}\n",
        template.display().to_string()
    );
    run_script(&a, spec, "anthropic_check.py", "anthropic", &[]).await
}

/// `/v1/embeddings` with the official `openai` client on a stack whose only pool is an embedding
/// pool: the model's dimension (576 for SmolLM2-135M), the same text giving the same vector, a
/// batch matching single requests, token arrays, a chat task refused for want of a completion
/// pool, and the tasks metered.
pub async fn embeddings(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("openai-embeddings")?;
    spec.pm_extra = "embedding = true\npooling = \"mean\"\n".into();
    run_script(&a, spec, "embeddings_check.py", "embeddings", &["576"]).await
}

/// Starts a stack and runs one Python check script with the venv's interpreter; its lines that
/// start with `prefix` are echoed.
async fn run_script(
    a: &Assets,
    spec: llorch::stack::StackSpec,
    script: &str,
    prefix: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    let python = std::env::var("LLORCH_PYTHON").context("LLORCH_PYTHON is unset: scripts/test.sh installs the openai and anthropic clients into a venv and sets it")?;
    let mut stack = a.stack(spec).await?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&stack.orchd_url)
        .arg(&stack.spec.model_id)
        .args(extra)
        .output()
        .await;
    stack.shutdown().await?;
    let out = out.with_context(|| format!("running {python}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines().filter(|l| l.starts_with(prefix)) {
        println!("  {line}");
    }
    ensure!(
        out.status.success(),
        "the {prefix} client checks failed:\n{text}"
    );
    Ok(())
}
