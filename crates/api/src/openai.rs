//! The OpenAI-compatible surface's bodies (API.md §11): the requests orchestratord parses, the
//! completions, stream chunks, model list and errors it sends. Request bodies ignore unknown fields
//! (OpenAI clients send many); the fields orchestratord refuses are listed on each request type.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// An OpenAI answer's id: `chatcmpl-<task_id>` for chat, `cmpl-<task_id>` for text completions,
/// so the id a client sees names the task behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String)]
pub struct CompletionId(String);

impl CompletionId {
    pub fn chat(task: crate::TaskId) -> Self {
        Self(format!("chatcmpl-{task}"))
    }

    pub fn text(task: crate::TaskId) -> Self {
        Self(format!("cmpl-{task}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StringOrArray {
    One(String),
    Many(Vec<String>),
}

/// A message's role; `developer` is read as `system`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpenAiRole {
    System,
    Developer,
    User,
    Assistant,
    /// A tool's result (`tool_call_id` names the call).
    Tool,
}

/// A message's content: a string, or an array of text parts that are concatenated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OpenAiContent {
    Text(String),
    Parts(Vec<OpenAiTextPart>),
}

impl OpenAiContent {
    /// The text: the string, or the parts' texts joined.
    pub fn text(&self) -> String {
        match self {
            OpenAiContent::Text(s) => s.clone(),
            OpenAiContent::Parts(parts) => parts.iter().map(|p| p.text.as_str()).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenAiTextPart {
    /// `text`.
    #[serde(rename = "type", default = "text_kind")]
    pub kind: String,
    pub text: String,
}

fn text_kind() -> String {
    "text".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenAiMessage {
    pub role: OpenAiRole,
    /// Null or absent on an assistant message that only calls tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<OpenAiContent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::tools::ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// `logprobs`: a flag on chat (with `top_logprobs` for the alternatives), a count of
/// alternatives on text completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum LogprobsField {
    Flag(bool),
    Count(u32),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    /// Send a usage chunk with empty `choices` before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormatKind {
    Text,
    JsonObject,
    JsonSchema,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: ResponseFormatKind,
    /// For `json_schema`: `{name, schema, strict}`; `schema` (required) is the JSON Schema of the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<serde_json::Value>,
}

/// Sampling and streaming fields shared by both OpenAI request bodies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenAiSampling {
    /// `max_completion_tokens` wins over `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StringOrArray>,
    /// Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    /// Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    /// Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f64>,
    /// Extension: a GBNF grammar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Token id → bias (-100 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<LogprobsField>,
    /// Chat: alternatives per token (0–20), with `logprobs: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Must be 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

/// Request fields that orchestratord refuses with 400 when present and not null: the legacy
/// function-calling fields (use `tools`), and the ones the engine cannot serve.
pub const REFUSED_FIELDS: [(&str, &str); 6] = [
    (
        "functions",
        "the legacy functions field is not supported; use tools",
    ),
    (
        "function_call",
        "the legacy function_call field is not supported; use tool_choice",
    ),
    ("audio", "audio output is not supported"),
    ("modalities", "only text output is supported"),
    ("prediction", "predicted outputs are not supported"),
    ("best_of", "best_of is not supported"),
];

/// `POST /v1/chat/completions` body. Unknown fields are ignored; the fields of
/// [`REFUSED_FIELDS`] are refused with 400.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    /// A catalog model id.
    pub model: String,
    pub messages: Vec<OpenAiMessage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<crate::tools::ToolDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<crate::tools::ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub sampling: OpenAiSampling,
}

/// `POST /v1/completions` body. Unknown fields are ignored; the fields of [`REFUSED_FIELDS`]
/// and `tools` are refused with 400, and so is an array `prompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// A catalog model id.
    pub model: String,
    /// One string.
    pub prompt: StringOrArray,
    #[serde(flatten)]
    pub sampling: OpenAiSampling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// OpenAI's `prompt_tokens_details.cached_tokens`: prompt tokens the engine reused from its
    /// prompt cache (absent when the engine did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
        }
    }

    /// The same with the engine's cached prompt tokens, when it reported them.
    pub fn cached(mut self, cached_tokens: Option<u64>) -> Self {
        self.prompt_tokens_details =
            cached_tokens.map(|cached_tokens| PromptTokensDetails { cached_tokens });
        self
    }
}

/// `stop` (end of sequence, a stop word, a cancel), `length` (max_tokens, deadline) or
/// `tool_calls` (the answer ends with tool calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: String,
    /// Null when the answer is only tool calls.
    #[schema(required = true)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::tools::ToolCall>,
}

/// `logprobs` of a chat choice or chunk: one entry per generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<crate::tools::TokenLogprob>,
}

/// `logprobs` of a text completion choice (the legacy shape).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f64>,
    /// Per token: alternative → log probability.
    pub top_logprobs: Vec<std::collections::BTreeMap<String, f64>>,
    /// Per token: its byte offset in the choice's text.
    pub text_offset: Vec<u64>,
}

impl TextLogprobs {
    /// Appends the tokens of one frame whose text starts at byte `offset` of the choice.
    pub fn push(&mut self, lps: &[crate::tools::TokenLogprob], mut offset: u64) {
        for lp in lps {
            self.tokens.push(lp.token.clone());
            self.token_logprobs.push(lp.logprob);
            self.top_logprobs.push(
                lp.top_logprobs
                    .iter()
                    .map(|t| (t.token.clone(), t.logprob))
                    .collect(),
            );
            self.text_offset.push(offset);
            offset += lp.token.len() as u64;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: FinishReason,
    /// Only when the request asked for `logprobs`.
    #[schema(required = true)]
    pub logprobs: Option<ChatLogprobs>,
}

/// Non-streamed `POST /v1/chat/completions` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-<task_id>`.
    pub id: CompletionId,
    /// `chat.completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    /// The engine version of the pool that ran the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatDelta {
    /// `assistant`, on the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCallDelta>,
}

/// A piece of a streamed tool call, as OpenAI sends it: the first piece of call `index` has its
/// `id`, `type` and `function.name`; the `function.arguments` of all pieces concatenate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::tools::FunctionKind>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: String,
}

impl From<&crate::tools::ToolCallDelta> for ChatToolCallDelta {
    fn from(d: &crate::tools::ToolCallDelta) -> Self {
        ChatToolCallDelta {
            index: d.index,
            id: d.id.clone(),
            kind: d.id.as_ref().map(|_| crate::tools::FunctionKind::Function),
            function: FunctionDelta {
                name: d.name.clone(),
                arguments: d.arguments.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    /// Null until the last content chunk.
    #[schema(required = true)]
    pub finish_reason: Option<FinishReason>,
    /// Only when the request asked for `logprobs`: the chunk's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChatLogprobs>,
}

/// One `data:` line of a streamed `POST /v1/chat/completions` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionChunk {
    /// `chatcmpl-<task_id>`.
    pub id: CompletionId,
    /// `chat.completion.chunk`.
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Empty on the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Only on the usage chunk (`stream_options.include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    /// Null on stream chunks until the last.
    #[schema(required = true)]
    pub finish_reason: Option<FinishReason>,
    /// Null unless the request asked for `logprobs`.
    #[schema(required = true)]
    pub logprobs: Option<TextLogprobs>,
}

/// Non-streamed `POST /v1/completions` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TextCompletion {
    /// `cmpl-<task_id>`.
    pub id: CompletionId,
    /// `text_completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<TextChoice>,
    pub usage: Usage,
}

/// One `data:` line of a streamed `POST /v1/completions` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TextCompletionChunk {
    /// `cmpl-<task_id>`.
    pub id: CompletionId,
    /// `text_completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Empty on the usage chunk.
    pub choices: Vec<TextChoice>,
    /// Only on the usage chunk (`stream_options.include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelEntry {
    pub id: crate::ids::ModelId,
    /// `model`.
    pub object: String,
    /// Unix seconds of the catalog entry.
    pub created: u64,
    /// `llama-orch`.
    pub owned_by: String,
}

/// `GET /v1/models` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    pub data: Vec<ModelEntry>,
}

/// OpenAI's error shape, used by every `/v1` error and by the one error line of a failed stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenAiError {
    pub error: OpenAiErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    pub message: String,
    /// `invalid_request_error` (400, 404, 409), `authentication_error` (401), `rate_limit_error` (429), `server_error` (5xx).
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending field (`field` of the envelope).
    #[schema(required = true)]
    pub param: Option<String>,
    pub code: ErrorCode,
}

impl OpenAiError {
    /// The OpenAI form of an envelope; `kind` follows the HTTP status.
    pub fn from_envelope(env: &crate::ErrorEnvelope) -> Self {
        let kind = match env.http_status() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        OpenAiError {
            error: OpenAiErrorBody {
                message: env.message.clone(),
                kind: kind.into(),
                param: env.field.clone(),
                code: env.code,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_names_cached_tokens_only_when_known() {
        let plain = serde_json::to_value(Usage::new(5, 2).cached(None)).unwrap();
        assert!(plain.get("prompt_tokens_details").is_none());
        let cached = serde_json::to_value(Usage::new(5, 2).cached(Some(4))).unwrap();
        assert_eq!(cached["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(cached["total_tokens"], 7);
    }

    #[test]
    fn chat_request_reads_what_openai_clients_send() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "stream":true,"stream_options":{"include_usage":true},"max_tokens":null,"temperature":0.2,"stop":"x","user":"ignored"}"#,
        )
        .expect("parses");
        assert_eq!(r.messages[0].role, OpenAiRole::Developer);
        assert_eq!(
            r.messages[1].content.as_ref().map(|c| c.text()).as_deref(),
            Some("ab")
        );
        assert_eq!(r.sampling.stream, Some(true));
        assert!(r.sampling.stream_options.expect("options").include_usage);
        assert_eq!(r.sampling.max_tokens, None);
        assert_eq!(r.sampling.stop, Some(StringOrArray::One("x".into())));
    }

    #[test]
    fn bad_role_is_an_error() {
        assert!(serde_json::from_str::<ChatCompletionRequest>(
            r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#
        )
        .is_err());
    }

    #[test]
    fn tool_loops_parse() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"w?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"18"}],
                "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"auto","parallel_tool_calls":false,
                "logprobs":true,"top_logprobs":2,"logit_bias":{"15":-100}}"#,
        )
        .expect("parses");
        assert_eq!(r.messages[1].tool_calls[0].function.name, "f");
        assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.sampling.logprobs, Some(LogprobsField::Flag(true)));
        assert_eq!(r.sampling.logit_bias.expect("bias")["15"], -100.0);
    }

    #[test]
    fn chunks_send_null_finish_reason_and_omit_absent_usage() {
        let c = ChatCompletionChunk {
            id: CompletionId::chat(crate::TaskId::new()),
            object: "chat.completion.chunk".into(),
            created: 1,
            model: "m".into(),
            system_fingerprint: None,
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: ChatDelta {
                    role: None,
                    content: Some("hi".into()),
                    tool_calls: vec![],
                },
                finish_reason: None,
                logprobs: None,
            }],
            usage: None,
        };
        let v = serde_json::to_value(&c).expect("json");
        assert!(
            v["choices"][0]["finish_reason"].is_null()
                && v["choices"][0].get("finish_reason").is_some()
        );
        assert!(v.get("usage").is_none() && v.get("system_fingerprint").is_none());
        assert!(v["choices"][0]["delta"].get("role").is_none());
        assert_eq!(
            serde_json::to_value(FinishReason::Length).expect("json"),
            "length"
        );
    }

    #[test]
    fn errors_map_status_to_openai_type() {
        let e = OpenAiError::from_envelope(&crate::ErrorEnvelope::invalid(
            "n",
            "only n = 1 is supported",
        ));
        assert_eq!(e.error.kind, "invalid_request_error");
        assert_eq!(e.error.param.as_deref(), Some("n"));
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["error"]["code"], "INVALID_PARAMS");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}

/// `POST /v1/embeddings` body. Unknown fields are ignored; `encoding_format` is `float` (the
/// default) or `base64`, and `dimensions` is refused (the model's dimension is the only one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    /// A catalog model id, served by an embedding pool.
    pub model: String,
    pub input: crate::task::EmbeddingInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingData {
    /// `embedding`.
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

/// Floats, or with `encoding_format: "base64"` the little-endian `f32` bytes in base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

/// `POST /v1/embeddings` answer: one vector per input item, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsResponse {
    /// `list`.
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingsUsage,
}
