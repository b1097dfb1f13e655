//! Client task bodies (API.md §4): the submit request, the 202 admission response and the task record.

use serde::{Deserialize, Serialize};

use crate::error::ErrorEnvelope;
use crate::events::StopReason;
use crate::ids::{CorrelationId, ModelId, NodeId, PoolId, SessionId, StepId, TaskId};
use crate::node::{StepKind, StepStatus};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    #[default]
    Completion,
    Embedding,
    Rerank,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Completion => "completion",
            Workload::Embedding => "embedding",
            Workload::Rerank => "rerank",
        }
    }
}

/// What an embedding task embeds: a string, strings, a token array or token arrays (OpenAI's
/// `input` forms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One item to embed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbedItem {
    Text(String),
    Tokens(Vec<u32>),
}

impl EmbeddingInput {
    /// The items, one vector each, in order.
    pub fn items(&self) -> Vec<EmbedItem> {
        match self {
            EmbeddingInput::Text(t) => vec![EmbedItem::Text(t.clone())],
            EmbeddingInput::Texts(v) => v.iter().cloned().map(EmbedItem::Text).collect(),
            EmbeddingInput::Tokens(t) => vec![EmbedItem::Tokens(t.clone())],
            EmbeddingInput::TokenLists(v) => v.iter().cloned().map(EmbedItem::Tokens).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, answering the assistant's call `tool_call_id`.
    Tool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    /// May be empty on an assistant message that only calls tools.
    #[serde(default)]
    pub content: String,
    /// Assistant messages only: the calls the model made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::tools::ToolCall>,
    /// Tool messages only (required there): the call this result answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A plain text message.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlacementMode {
    #[default]
    Auto,
    Pin,
    Prefer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub mode: PlacementMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_pool_id: Option<PoolId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefer_pools: Vec<PoolId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid_pools: Vec<PoolId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_device_mask: Option<String>,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub allow_fallback: bool,
}

fn yes() -> bool {
    true
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            mode: PlacementMode::Auto,
            pin_pool_id: None,
            prefer_pools: vec![],
            avoid_pools: vec![],
            require_device_mask: None,
            allow_fallback: true,
        }
    }
}

/// Sampling parameters shared by the client request and the worker dispatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Token id (decimal) → bias added to its logit, -100 to 100 (-100 bans the token).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub logit_bias: std::collections::BTreeMap<String, f64>,
    /// Return each token's log probability with this many alternatives (0–20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<serde_json::Value>,
}

/// `POST /v2/tasks` body (§4.1). Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    #[serde(default)]
    pub workload: Workload,
    pub model_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// Embedding tasks only (`workload: "embedding"`): the texts or token arrays to embed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<EmbeddingInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Token id (decimal) → bias added to its logit, -100 to 100 (-100 bans the token).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub logit_bias: std::collections::BTreeMap<String, f64>,
    /// Return each token's log probability with this many alternatives (0–20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<serde_json::Value>,
    /// Chat tasks only: the tools the model may call (§4.1, §5.7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<crate::tools::ToolDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<crate::tools::ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

impl TaskRequest {
    /// A minimal request for `model_ref` with the given input; every other field at its default.
    pub fn new(model_ref: impl Into<String>) -> Self {
        Self {
            task_id: None,
            session_id: None,
            workload: Workload::Completion,
            model_ref: model_ref.into(),
            engine: None,
            prompt: None,
            messages: None,
            input: None,
            max_tokens: None,
            ctx: None,
            deadline_ms: None,
            priority: Priority::Interactive,
            seed: None,
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            repeat_penalty: None,
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: Default::default(),
            logprobs: None,
            stop: vec![],
            grammar: None,
            json_schema: None,
            tools: vec![],
            tool_choice: None,
            parallel_tool_calls: None,
            placement: None,
        }
    }

    pub fn sampling(&self) -> Sampling {
        Sampling {
            seed: self.seed,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.clone(),
            logprobs: self.logprobs,
            stop: self.stop.clone(),
            grammar: self.grammar.clone(),
            json_schema: self.json_schema.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Streams {
    pub sse: String,
    pub sse_verbose: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Preparation {
    pub steps: Vec<PreparationStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PreparationStep {
    pub id: StepId,
    pub kind: StepKind,
    pub node_id: NodeId,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    pub status: StepStatus,
}

/// 202 body of `POST /v2/tasks` (AdmissionResponseV2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdmissionResponse {
    pub task_id: TaskId,
    pub session_id: SessionId,
    pub queue_position: u64,
    pub predicted_start_ms: u64,
    pub backoff_ms: u64,
    pub streams: Streams,
    pub preparation: Preparation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Running,
    Completed,
    Failed,
    Canceled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Canceled
        )
    }
}

/// `GET /v2/tasks/{id}` body (§4.2). Nullable fields are sent as `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskRecord {
    pub task_id: TaskId,
    pub session_id: SessionId,
    pub correlation_id: CorrelationId,
    pub model: ModelId,
    pub priority: Priority,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_start_ms: Option<u64>,
    #[schema(required = true)]
    pub pool_id: Option<PoolId>,
    #[schema(required = true)]
    pub node_id: Option<NodeId>,
    #[schema(required = true)]
    pub engine: Option<String>,
    #[schema(required = true)]
    pub engine_version: Option<String>,
    #[schema(required = true)]
    pub created_at_ms: Option<u64>,
    #[schema(required = true)]
    pub started_at_ms: Option<u64>,
    #[schema(required = true)]
    pub first_token_at_ms: Option<u64>,
    #[schema(required = true)]
    pub finished_at_ms: Option<u64>,
    pub attempts: u32,
    pub tokens_in: u64,
    pub tokens_out: u64,
    #[schema(required = true)]
    pub seed: Option<u64>,
    #[schema(required = true)]
    pub stop_reason: Option<StopReason>,
    #[schema(required = true)]
    pub error: Option<ErrorEnvelope>,
}
