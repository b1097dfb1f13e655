//! Tool calls, log probabilities and embeddings through `/v2/tasks` and the Rust SDK: `tool_call`
//! frames (token frames stay model text), `logprobs` on token frames, and `embedding` frames.

use anyhow::{ensure, Context};
use api::events::Event;
use api::task::{EmbeddingInput, Message, Role, TaskRequest, Workload};
use api::tools::{FunctionDef, FunctionKind, ToolChoice, ToolChoiceMode, ToolDef};

use crate::fixtures::Assets;

/// Reads a task's frames to the terminal one.
async fn frames(c: &client::Client, req: &TaskRequest) -> anyhow::Result<Vec<Event>> {
    let adm = c.submit(req).await?.body;
    let mut stream = c.events(&adm.streams.sse).await?;
    let mut out = vec![];
    loop {
        let f = tokio::time::timeout(std::time::Duration::from_secs(120), stream.next())
            .await?
            .context("stream closed before the terminal frame")??;
        let end = f.event.is_terminal();
        out.push(f.event);
        if end {
            return Ok(out);
        }
    }
}

pub async fn tool_call_frames(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("v2-tools")?;
    let template = crate::fixtures::tool_template(&a, &spec.dir)?;
    spec.pm_extra = format!(
        "chat_template_file = {:?}\n",
        template.display().to_string()
    );
    let mut stack = a.stack(spec).await?;
    let result = async {
        let c = client::Client::new(&stack.orchd_url, None)?;
        let mut req = TaskRequest::new(&stack.spec.model_id);
        req.messages = Some(vec![Message::text(
            Role::User,
            "Call get_weather for Paris as JSON.",
        )]);
        req.tools = vec![ToolDef {
            kind: FunctionKind::Function,
            function: FunctionDef {
                name: "get_weather".into(),
                description: Some("Get the weather for a city".into()),
                parameters: Some(serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})),
                strict: None,
            },
        }];
        req.tool_choice = Some(ToolChoice::Mode(ToolChoiceMode::Required));
        req.temperature = Some(0.0);
        req.max_tokens = Some(200);
        let evs = frames(&c, &req).await?;
        let calls: Vec<&api::tools::ToolCallDelta> = evs
            .iter()
            .filter_map(|e| match e {
                Event::ToolCall(d) => Some(d),
                _ => None,
            })
            .collect();
        ensure!(!calls.is_empty(), "no tool_call frames: {evs:?}");
        ensure!(
            calls[0].name.as_deref() == Some("get_weather") && calls[0].id.is_some(),
            "the first piece names the call: {:?}",
            calls[0]
        );
        ensure!(calls.iter().all(|d| d.index == 0), "one call: {calls:?}");
        let args: String = calls.iter().map(|d| d.arguments.as_str()).collect();
        let v: serde_json::Value = serde_json::from_str(&args).context("arguments parse")?;
        ensure!(v["city"].is_string(), "arguments match the schema: {v}");
        let text: String = evs
            .iter()
            .filter_map(|e| match e {
                Event::Token(t) => Some(t.t.as_str()),
                _ => None,
            })
            .collect();
        ensure!(!text.contains("\"city\""), "token frames carry model text only: {text:?}");
        ensure!(
            matches!(evs.last(), Some(Event::End(e)) if e.stop_reason == api::events::StopReason::Eos),
            "ends with end/eos: {:?}",
            evs.last()
        );
        // Log probabilities ride on token frames (not with tools: the engine cannot stream both).
        let mut plain = TaskRequest::new(&stack.spec.model_id);
        plain.prompt = Some("The capital of France is".into());
        plain.max_tokens = Some(4);
        plain.temperature = Some(0.0);
        plain.logprobs = Some(2);
        let evs = frames(&c, &plain).await?;
        let tokens: Vec<&api::events::Token> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Token(t) => Some(t),
                _ => None,
            })
            .collect();
        ensure!(!tokens.is_empty(), "{evs:?}");
        for t in tokens {
            let joined: String = t.logprobs.iter().map(|l| l.token.as_str()).collect();
            ensure!(joined == t.t, "a frame's logprobs spell its text: {t:?}");
            ensure!(
                t.logprobs.iter().all(|l| l.top_logprobs.len() == 2 && l.logprob <= 0.0),
                "two alternatives per token: {t:?}"
            );
        }
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

pub async fn embedding_frames(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("v2-embed")?;
    spec.pm_extra = "embedding = true\n".into();
    let mut stack = a.stack(spec).await?;
    let result = async {
        let c = client::Client::new(&stack.orchd_url, None)?;
        let mut req = TaskRequest::new(&stack.spec.model_id);
        req.workload = Workload::Embedding;
        req.input = Some(EmbeddingInput::Texts(vec!["one".into(), "two".into()]));
        let evs = frames(&c, &req).await?;
        let vecs: Vec<&api::events::EmbeddingFrame> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Embedding(f) => Some(f),
                _ => None,
            })
            .collect();
        ensure!(
            vecs.len() == 2 && vecs[0].index == 0 && vecs[1].index == 1,
            "{vecs:?}"
        );
        ensure!(
            vecs.iter().all(|v| v.embedding.len() == 576),
            "dimension 576"
        );
        ensure!(
            vecs[0].embedding != vecs[1].embedding,
            "different texts, different vectors"
        );
        ensure!(
            matches!(evs.last(), Some(Event::End(e)) if e.tokens_in > 0 && e.tokens_out == 0),
            "{:?}",
            evs.last()
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
