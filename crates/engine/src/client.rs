//! HTTP client for one running `llama-server` (API.md §14.2–14.3). Every call carries the engine's
//! API key; completions always stream and always cap `n_predict`.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::sse::{CompletionFrame, SseDecoder, SseItem};

/// An engine API key; its `Debug` never prints the secret.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// 32 random bytes, hex (API.md §14.1).
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(hex::encode(bytes))
    }

    pub fn from_secret(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine unreachable: {0}")]
    Connect(String),
    /// The engine answered with an HTTP error; `status` decides the mapping (§14.3).
    #[error("engine answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("engine protocol error: {0}")]
    Protocol(String),
    /// The HTTP client could not be built (e.g. no TLS backend).
    #[error("cannot set up the HTTP client for the engine: {0}")]
    Setup(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Slot {
    pub id: i64,
    #[serde(default)]
    pub n_ctx: u64,
    #[serde(default)]
    pub is_processing: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Props {
    #[serde(default)]
    pub total_slots: u32,
    #[serde(default)]
    pub build_info: String,
    #[serde(default)]
    pub model_alias: String,
}

/// A `/completion` prompt: text the engine tokenizes (with its special tokens), or token ids
/// used as they are.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::Text(String::new())
    }
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}

/// Body of `POST /completion` (the fields we send).
#[derive(Debug, Clone, Serialize, Default)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub n_predict: u64,
    pub stream: bool,
    pub cache_prompt: bool,
    /// Each frame then carries the ids of its token (`tokens`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub return_tokens: bool,
    /// The slot to run on (its cached prompt is reused); the engine picks one when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_slot: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// `[[token id, bias], …]`, the engine's own form.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logit_bias: Vec<(u32, f64)>,
    /// Alternatives per token; when set, frames carry `completion_probabilities`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_probs: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// The engine's `/v1/embeddings` answer (the keys we use).
#[derive(Debug, Clone, Deserialize)]
pub struct Embeddings {
    pub data: Vec<EmbeddingItem>,
    #[serde(default)]
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingItem {
    #[serde(default)]
    pub index: u32,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EmbeddingUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
}

/// An item of a completion stream: a parsed frame, or a line the engine garbled.
pub type FrameResult = Result<CompletionFrame, EngineError>;

#[derive(Clone)]
pub struct EngineClient {
    base: String,
    /// `host:port` of `base`: completions stream on a connection of their own ([`crate::stream`]).
    authority: String,
    key: ApiKey,
    /// For short control calls (health, slots, props, templates).
    control: reqwest::Client,
    /// For embeddings: never reuses idle connections (ENGINE.md §8.14: a reused keep-alive
    /// connection can be closed by the engine before it answers).
    streaming: reqwest::Client,
    /// Completion stream chunks received from this engine, over every clone of this client: a
    /// supervisor reads it as evidence that the engine is alive while its `/health` is slow.
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl EngineClient {
    /// A client for the engine at `base_url`, which must be `http://host:port` (engines listen on
    /// loopback). Fails for any other URL, or when an HTTP client cannot be built; a default one
    /// would drop the timeout and the no-reuse rule.
    pub fn new(base_url: impl Into<String>, key: ApiKey) -> Result<Self, EngineError> {
        let base = base_url.into();
        let authority = crate::stream::authority(&base)
            .ok_or_else(|| {
                EngineError::Setup(format!("engine URL {base} is not http://host:port"))
            })?
            .to_string();
        let setup = |e: reqwest::Error| EngineError::Setup(e.to_string());
        let control = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(setup)?;
        let streaming = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(setup)?;
        Ok(Self {
            base,
            authority,
            key,
            control,
            streaming,
            received: Default::default(),
        })
    }

    /// The engine's API key (for a test's direct calls to its own twin engine).
    pub fn api_key(&self) -> &ApiKey {
        &self.key
    }

    /// Completion stream chunks received so far from this engine (all clones of this client).
    pub fn chunks_received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET /health`: `Ok(true)` when 200, `Ok(false)` while loading (503).
    pub async fn health(&self) -> Result<bool, EngineError> {
        let r = self
            .control
            .get(self.url("/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| EngineError::Connect(api::error::chain(&e)))?;
        Ok(r.status().is_success())
    }

    pub async fn props(&self) -> Result<Props, EngineError> {
        self.get_json("/props").await
    }

    pub async fn slots(&self) -> Result<Vec<Slot>, EngineError> {
        self.get_json("/slots").await
    }

    /// Number of slots with `is_processing: true`.
    pub async fn busy_slots(&self) -> Result<usize, EngineError> {
        Ok(self
            .slots()
            .await?
            .iter()
            .filter(|s| s.is_processing)
            .count())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, EngineError> {
        let r = self
            .control
            .get(self.url(path))
            .bearer_auth(self.key.expose())
            .send()
            .await
            .map_err(|e| EngineError::Connect(api::error::chain(&e)))?;
        check_status(r)
            .await?
            .json()
            .await
            .map_err(|e| EngineError::Protocol(format!("{path}: {e}")))
    }

    /// Renders the model's chat template (`POST /apply-template`) into a prompt.
    pub async fn apply_template(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        #[derive(Deserialize)]
        struct Rendered {
            prompt: String,
        }
        let r = self
            .control
            .post(self.url("/apply-template"))
            .bearer_auth(self.key.expose())
            .json(&serde_json::json!({ "messages": messages }))
            .send()
            .await
            .map_err(|e| EngineError::Connect(api::error::chain(&e)))?;
        let body: Rendered = check_status(r)
            .await?
            .json()
            .await
            .map_err(|e| EngineError::Protocol(format!("/apply-template: {e}")))?;
        Ok(body.prompt)
    }

    /// Starts a streaming `/v1/chat/completions` (the engine renders the template, tools
    /// included, and parses tool calls). `body` must stream, ask for usage and cap `max_tokens`.
    /// Its chunks come back as `/completion`-style frames (see [`crate::sse::ChatFrames`]).
    pub async fn chat(
        &self,
        body: &serde_json::Value,
    ) -> Result<impl futures::Stream<Item = FrameResult> + Send + 'static, EngineError> {
        debug_assert!(
            body["stream"] == true && body["max_tokens"].as_u64().is_some_and(|n| n > 0),
            "engine requests must stream and cap max_tokens"
        );
        let bytes = self.stream("/v1/chat/completions", body).await?;
        let mut chunks = crate::sse::ChatFrames::default();
        Ok(sse_frames(bytes, self.received.clone(), move |d| {
            chunks.frame(d).map_err(EngineError::Protocol).transpose()
        }))
    }

    /// `POST /v1/embeddings` (engines started with `--embedding`). Not streamed: the answer is one
    /// body; dropping the future closes the connection, which cancels the engine's work.
    pub async fn embeddings(&self, body: &serde_json::Value) -> Result<Embeddings, EngineError> {
        let resp = self
            .streaming
            .post(self.url("/v1/embeddings"))
            .bearer_auth(self.key.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| EngineError::Connect(api::error::chain(&e)))?;
        check_status(resp)
            .await?
            .json()
            .await
            .map_err(|e| EngineError::Protocol(format!("/v1/embeddings: {e}")))
    }

    /// Token ids of `content` exactly as `/completion` tokenizes a text prompt (`POST /tokenize`
    /// with the model's special tokens added and parsed).
    pub async fn tokenize(&self, content: &str) -> Result<Vec<u32>, EngineError> {
        #[derive(Deserialize)]
        struct Tokens {
            tokens: Vec<u32>,
        }
        let r = self
            .control
            .post(self.url("/tokenize"))
            .bearer_auth(self.key.expose())
            .json(&serde_json::json!({ "content": content, "add_special": true, "parse_special": true }))
            .send()
            .await
            .map_err(|e| EngineError::Connect(api::error::chain(&e)))?;
        let body: Tokens = check_status(r)
            .await?
            .json()
            .await
            .map_err(|e| EngineError::Protocol(format!("/tokenize: {e}")))?;
        Ok(body.tokens)
    }

    /// Starts a streaming `/completion`. Dropping the returned stream closes the connection, which
    /// is how the engine learns of a cancel.
    pub async fn complete(
        &self,
        req: &CompletionRequest,
    ) -> Result<impl futures::Stream<Item = FrameResult> + Send + 'static, EngineError> {
        debug_assert!(
            req.stream && req.n_predict > 0,
            "engine requests must stream and cap n_predict"
        );
        let bytes = self.stream("/completion", req).await?;
        Ok(sse_frames(bytes, self.received.clone(), |d| {
            Some(CompletionFrame::parse(d).map_err(EngineError::Protocol))
        }))
    }

    /// POSTs `body` to `path` and returns the streamed answer's bytes, on a connection of its own
    /// read by the caller's task ([`crate::stream`]).
    async fn stream(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<crate::stream::Streamed, EngineError> {
        let json = serde_json::to_vec(body).map_err(|e| EngineError::Setup(e.to_string()))?;
        match crate::stream::open(&self.authority, path, self.key.expose(), json).await {
            Ok(s) => Ok(s),
            Err(crate::stream::OpenError::Status(status, text)) => Err(status_error(status, &text)),
            Err(crate::stream::OpenError::Connect(m)) => Err(EngineError::Connect(m)),
            Err(crate::stream::OpenError::Url(m)) => Err(EngineError::Setup(m)),
        }
    }
}

/// A streamed engine answer as frames: each SSE data line through `data` (None: nothing to
/// emit), a garbled line or a broken body as an error. Every chunk received counts in
/// `received`, the engine's sign of life for its supervisor.
fn sse_frames<F>(
    bytes: crate::stream::Streamed,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    mut data: F,
) -> impl futures::Stream<Item = FrameResult> + Send + 'static
where
    F: FnMut(&str) -> Option<FrameResult> + Send + 'static,
{
    let mut decoder = SseDecoder::default();
    bytes.flat_map(move |chunk| {
        let items: Vec<FrameResult> = match chunk {
            Err(e) => vec![Err(EngineError::Connect(e))],
            Ok(bytes) => {
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                decoder
                    .push(&bytes)
                    .into_iter()
                    .filter_map(|item| match item {
                        SseItem::Data(d) => data(&d),
                        SseItem::Garbage(g) => Some(Err(EngineError::Protocol(g))),
                    })
                    .collect()
            }
        };
        futures::stream::iter(items)
    })
}

async fn check_status(r: reqwest::Response) -> Result<reqwest::Response, EngineError> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    Err(status_error(status, &text))
}

/// A refusal: the engine's `error.message`, else the start of its body.
fn status_error(status: u16, text: &str) -> EngineError {
    let message = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(200).collect());
    EngineError::Status { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_engines_with_a_port_get_a_client() {
        let new = |u: &str| EngineClient::new(u, ApiKey::random());
        assert!(new("http://127.0.0.1:8081").is_ok());
        for bad in [
            "https://127.0.0.1:8081",
            "http://localhost",
            "127.0.0.1:8081",
        ] {
            match new(bad) {
                Err(EngineError::Setup(m)) => assert!(m.contains(bad), "{m}"),
                Err(e) => panic!("{bad}: {e}"),
                Ok(_) => panic!("{bad} got a client"),
            }
        }
    }
}
