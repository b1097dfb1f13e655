//! API.md §14.2: for `messages`, the prompt the stack sends (llama-server's `/apply-template`, then
//! `/completion`, as pool-managerd's adapter does) is the prompt the engine's own chat endpoint
//! uses, for the dev model on the pinned build.
//!
//! A twin llama-server (same binary, model and §14.1 flags) runs with `LLAMA_SERVER_SLOTS_DEBUG=1`,
//! which makes `GET /slots` show the last task's prompt as the engine tokenized it (detokenized
//! with special tokens). Both paths run on its single slot and the two prompts must be equal. Then
//! the same messages go through a whole stack: the task's `tokens_in` must equal the prompt tokens
//! the chat endpoint counted.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use engine::{ApiKey, ChatMessage, CompletionRequest, EngineClient, LaunchSpec};
use serde_json::{json, Value};

use crate::fixtures::{wait_finished, wait_for, Assets};

/// Conversations covering each role and a multi-turn history.
fn conversations() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![("user", "Write a haiku about the time of day. It must contain the word \"seven\" exactly once. Reply with only the three lines of the haiku.")],
        vec![
            ("system", "You are a terse assistant."),
            ("user", "Name a colour."),
        ],
        vec![
            ("user", "What is 2 + 2?"),
            ("assistant", "4"),
            ("user", "And 3 + 3?"),
        ],
    ]
}

fn chat_messages(conv: &[(&str, &str)]) -> Vec<ChatMessage> {
    conv.iter()
        .map(|(role, content)| ChatMessage {
            role: (*role).into(),
            content: (*content).into(),
        })
        .collect()
}

/// The twin engine: the pinned binary under §14.1's flags, plus the slots debug switch.
struct Twin {
    _child: tokio::process::Child,
    url: String,
    key: ApiKey,
    client: EngineClient,
    http: reqwest::Client,
}

impl Twin {
    async fn start(binary: PathBuf, model: PathBuf, dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = ApiKey::random();
        let key_file = dir.join("engine.key");
        std::fs::write(&key_file, key.expose())?;
        let spec = LaunchSpec {
            binary,
            model_path: model,
            alias: llorch::dev::MODEL_ID.into(),
            ctx_per_slot: 2048,
            slots: 1,
            threads: Some(2),
            gpu_layers: 0,
            cuda_visible_devices: String::new(),
            extra_args: vec![],
            log_path: dir.join("engine.log"),
            start_timeout: Duration::from_secs(60),
            die_with_parent: false,
            pid_record: None,
        };
        let port = llorch::stack::free_port()?;
        let mut args = spec.args(&key_file);
        let p = args
            .iter()
            .position(|a| a == "--port")
            .context("no --port in the launch arguments")?;
        args[p + 1] = port.to_string();
        let log = std::fs::File::create(&spec.log_path)?;
        let child = tokio::process::Command::new(&spec.binary)
            .args(&args)
            .env("LLAMA_SERVER_SLOTS_DEBUG", "1")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", spec.binary.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let client = EngineClient::new(url.clone(), key.clone())?;
        wait_for(
            "the twin engine to be healthy",
            Duration::from_secs(90),
            || async { client.health().await.ok().filter(|ok| *ok) },
        )
        .await?;
        Ok(Self {
            _child: child,
            url,
            key,
            client,
            http: reqwest::Client::new(),
        })
    }

    /// The engine's only slot: the id of its last task and that task's prompt.
    async fn last_prompt(&self) -> anyhow::Result<(i64, String)> {
        let slots: Value = self
            .http
            .get(format!("{}/slots", self.url))
            .bearer_auth(self.key.expose())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let slot = &slots[0];
        let prompt = slot["prompt"].as_str().with_context(|| {
            format!("/slots shows no prompt (LLAMA_SERVER_SLOTS_DEBUG): {slot}")
        })?;
        Ok((slot["id_task"].as_i64().unwrap_or(-1), prompt.to_string()))
    }

    /// The stack's path: `/apply-template`, then a streamed `/completion` of the rendered prompt.
    async fn via_apply_template(&self, msgs: &[ChatMessage]) -> anyhow::Result<String> {
        let rendered = self.client.apply_template(msgs).await?;
        let req = CompletionRequest {
            prompt: rendered.clone().into(),
            n_predict: 1,
            stream: true,
            cache_prompt: true,
            temperature: Some(0.0),
            ..Default::default()
        };
        let before = self.client.chunks_received();
        let mut frames = Box::pin(self.client.complete(&req).await?);
        while let Some(f) = futures::StreamExt::next(&mut frames).await {
            f?;
        }
        // pool-managerd's supervisor reads this count as the engine's sign of life (decision 73).
        anyhow::ensure!(
            self.client.clone().chunks_received() > before,
            "the engine client counted no completion chunks of a streamed completion"
        );
        Ok(rendered)
    }

    /// The engine's own chat endpoint; returns its `usage.prompt_tokens`.
    async fn via_chat(&self, msgs: &[ChatMessage]) -> anyhow::Result<u64> {
        let body: Value = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(self.key.expose())
            .json(
                &json!({ "messages": msgs, "max_tokens": 1, "temperature": 0.0, "stream": false }),
            )
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        body["usage"]["prompt_tokens"]
            .as_u64()
            .with_context(|| format!("no usage.prompt_tokens: {body}"))
    }
}

pub async fn apply_template_matches_chat(a: Assets) -> anyhow::Result<()> {
    let (_, model) = a.real.clone().map_err(anyhow::Error::msg)?;
    let binary = std::env::var_os("LLORCH_LLAMA_SERVER")
        .map(PathBuf::from)
        .context("LLORCH_LLAMA_SERVER is unset")?;
    let spec = a.spec("apply-template")?;
    let twin = Twin::start(binary, model, &spec.dir.join("twin")).await?;
    let mut chat_counts = vec![];
    for conv in conversations() {
        let msgs = chat_messages(&conv);
        let rendered = twin.via_apply_template(&msgs).await?;
        let (task_a, stack_prompt) = twin.last_prompt().await?;
        let chat_tokens = twin.via_chat(&msgs).await?;
        let (task_b, chat_prompt) = twin.last_prompt().await?;
        ensure!(
            task_a != task_b,
            "/slots did not move on to the chat request"
        );
        ensure!(
            conv.iter().all(|(_, c)| stack_prompt.contains(c)) && rendered.contains(conv[0].1),
            "the prompt lacks the messages: {stack_prompt:?}"
        );
        ensure!(
            stack_prompt == chat_prompt,
            "/apply-template + /completion evaluated\n{stack_prompt:?}\nbut /v1/chat/completions evaluated\n{chat_prompt:?}"
        );
        chat_counts.push(chat_tokens);
    }
    drop(twin);
    // Through the stack: pool-managerd's adapter maps the task's messages, renders and completes;
    // the engine's `tokens_evaluated` (the task's `tokens_in`) must match the chat endpoint's count.
    let mut stack = a.stack(spec).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        for (conv, want) in conversations().iter().zip(&chat_counts) {
            let mut req = api::task::TaskRequest::new(&stack.spec.model_id);
            req.messages = Some(
                conv.iter()
                    .map(|(role, content)| {
                        let role = match *role {
                            "system" => api::task::Role::System,
                            "assistant" => api::task::Role::Assistant,
                            _ => api::task::Role::User,
                        };
                        api::task::Message::text(role, *content)
                    })
                    .collect(),
            );
            req.max_tokens = Some(1);
            req.temperature = Some(0.0);
            let adm = client.submit(&req).await?.body;
            let rec = wait_finished(&client, adm.task_id).await?;
            ensure!(
                rec.state == api::task::TaskState::Completed && rec.tokens_in == *want,
                "through the stack: {:?}, tokens_in {} where the chat endpoint counted {want}",
                rec.state,
                rec.tokens_in
            );
        }
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
