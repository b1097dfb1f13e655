//! Worker protocol (API.md §13): orchestratord → pool-managerd dispatch and its NDJSON stream.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::events::StopReason;
use crate::ids::{CorrelationId, ModelId, NodeId, PoolId, SessionId, TaskId};
use crate::node::PoolStatus;
use crate::task::{Message, Priority};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchModel {
    pub id: ModelId,
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DispatchInput {
    Prompt {
        prompt: String,
    },
    Messages {
        messages: Vec<Message>,
        /// The tools offered to the model; a chat with tools runs on the engine's own chat
        /// endpoint, which renders them into the template and parses the calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tools: Option<crate::tools::Tools>,
    },
    /// An embedding task: one vector per item, from the pool's embedding engine.
    Embed {
        input: Vec<crate::task::EmbedItem>,
    },
}

/// True for a chat that runs on the engine's own chat endpoint: tools are offered, or an
/// assistant's calls or a tool's results are in the history. Only that endpoint renders tools
/// into the template and parses the model's calls; every other chat renders with
/// `/apply-template` and runs on `/completion`, whose frames carry the slot id and exact stop type.
pub fn chat_endpoint_needed(messages: &[Message], tools: Option<&crate::tools::Tools>) -> bool {
    tools.is_some_and(|t| !t.tools.is_empty())
        || messages
            .iter()
            .any(|m| m.role == crate::task::Role::Tool || !m.tool_calls.is_empty())
}

impl DispatchInput {
    /// See [`chat_endpoint_needed`].
    pub fn uses_chat_endpoint(&self) -> bool {
        match self {
            DispatchInput::Messages { messages, tools } => {
                chat_endpoint_needed(messages, tools.as_ref())
            }
            _ => false,
        }
    }

    /// True when the worker can tell the token ids the engine's `/completion` runs for this input
    /// (a prompt, or a chat rendered with `/apply-template`): not embeddings, not chats on the
    /// engine's chat endpoint.
    pub fn tokenizable(&self) -> bool {
        !matches!(self, DispatchInput::Embed { .. }) && !self.uses_chat_endpoint()
    }
}

/// `POST /v2/pools/{pool_id}/tokenize` (cache-aware placement): the token ids the pool's engine
/// runs for `input`, rendered and tokenized exactly as a dispatch of it would be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeRequest {
    pub protocol_version: u32,
    pub model: DispatchModel,
    pub input: DispatchInput,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    /// The prompt's token ids, in order (special tokens included, as `/completion` runs them).
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchParams {
    pub max_tokens: u64,
    pub ctx: u64,
    #[serde(flatten)]
    pub sampling: crate::task::Sampling,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchRequest {
    pub protocol_version: u32,
    pub attempt: u32,
    pub task_id: TaskId,
    pub session_id: SessionId,
    pub correlation_id: CorrelationId,
    pub node_id: NodeId,
    pub pool_id: PoolId,
    pub model: DispatchModel,
    pub engine: String,
    pub input: DispatchInput,
    pub params: DispatchParams,
    pub deadline_remaining_ms: Option<u64>,
    pub priority: Priority,
    /// A migrated task's continuation: the token ids it already generated, in order. The worker
    /// runs the original prompt's token ids followed by these, with `params.max_tokens` the rest
    /// of the budget (API.md §13.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Vec<u32>>,
    /// The engine slot that holds the task's prompt prefix (cache-aware placement); the worker
    /// asks the engine for it (`id_slot`) when the pool has several slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_slot: Option<u32>,
}

/// One NDJSON line of the dispatch stream; `seq` counts lines from 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerLine {
    pub seq: u64,
    #[serde(flatten)]
    pub event: WorkerEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    Started {
        engine: String,
        engine_version: String,
        model: DispatchModel,
    },
    Token {
        i: u64,
        t: String,
        /// The engine token ids this line covers (empty: not known, so the task cannot be resumed
        /// from here). A line may carry ids with empty text (text the engine holds back).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<u32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        logprobs: Vec<crate::tools::TokenLogprob>,
    },
    /// The vector of input item `index` of an embedding task.
    Embedding {
        index: u32,
        embedding: Vec<f32>,
    },
    /// A piece of a tool call the engine parsed out of the model's output.
    ToolCall {
        #[serde(flatten)]
        delta: crate::tools::ToolCallDelta,
    },
    Metrics {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens_evaluated: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens_out: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kv_cache_usage_ratio: Option<f64>,
    },
    Keepalive,
    End {
        tokens_in: u64,
        tokens_out: u64,
        stop_reason: StopReason,
        seed: Option<u64>,
        engine_ttft_ms: Option<u64>,
        engine_decode_ms: u64,
        /// Prompt tokens the engine took from its cache (`timings.cache_n`); absent when it did
        /// not say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens_cached: Option<u64>,
        /// The engine slot that ran the task, when the engine named it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<u32>,
    },
    Error {
        code: ErrorCode,
        message: String,
        retriable: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl WorkerEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(self, WorkerEvent::End { .. } | WorkerEvent::Error { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerPoolsResponse {
    pub pools: Vec<PoolStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_are_flat_and_tagged() {
        let l = WorkerLine {
            seq: 3,
            event: WorkerEvent::Token {
                i: 2,
                t: "x".into(),
                logprobs: vec![],
                ids: vec![],
            },
        };
        let s = serde_json::to_string(&l).unwrap();
        assert_eq!(s, r#"{"seq":3,"type":"token","i":2,"t":"x"}"#);
        let back: WorkerLine = serde_json::from_str(&s).unwrap();
        assert_eq!(back, l);
        let k: WorkerLine =
            serde_json::from_str(r#"{"seq":0,"type":"keepalive","extra":1}"#).unwrap();
        assert_eq!(k.event, WorkerEvent::Keepalive);
    }

    #[test]
    fn input_is_prompt_or_messages() {
        let p: DispatchInput = serde_json::from_str(r#"{"prompt":"hi"}"#).unwrap();
        assert_eq!(
            p,
            DispatchInput::Prompt {
                prompt: "hi".into()
            }
        );
        let m: DispatchInput =
            serde_json::from_str(r#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert!(matches!(m, DispatchInput::Messages { .. }));
    }
}
