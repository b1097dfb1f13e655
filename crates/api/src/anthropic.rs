//! Anthropic's Messages API (`POST /v1/messages`, API.md §11.5): the request orchestratord reads
//! and the message it answers. Unknown request fields are ignored, as on the OpenAI surface; the
//! streamed events are described in the handler (`http::messages`) and API.md.

use serde::{Deserialize, Serialize};

/// `POST /v1/messages` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessagesRequest {
    /// A catalog model id.
    pub model: String,
    pub max_tokens: u64,
    pub messages: Vec<AnthropicMessage>,
    /// A system prompt: a string or text blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<AnthropicContent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<AnthropicTool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<AnthropicToolChoice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnthropicRole {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnthropicMessage {
    pub role: AnthropicRole,
    pub content: AnthropicContent,
}

/// A string, or content blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AnthropicContent {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

/// A content block: text, a tool call of the assistant, or a tool's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[schema(value_type = Object)]
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: String,
        /// A string or text blocks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<ToolResultContent>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
    },
}

/// A tool result: a string or text blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ToolResultContent {
    Text(String),
    Blocks(Vec<TextBlock>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TextBlock {
    /// `text`.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

impl ToolResultContent {
    pub fn text(&self) -> String {
        match self {
            ToolResultContent::Text(s) => s.clone(),
            ToolResultContent::Blocks(b) => b.iter().map(|b| b.text.as_str()).collect(),
        }
    }
}

impl AnthropicContent {
    /// The text of the string or of the text blocks, joined.
    pub fn text(&self) -> String {
        match self {
            AnthropicContent::Text(s) => s.clone(),
            AnthropicContent::Blocks(b) => b
                .iter()
                .filter_map(|b| match b {
                    ContentBlock::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnthropicTool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of the tool's input.
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
}

/// `auto`, `any` (some tool), `tool` (the one named), `none`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnthropicToolChoice {
    #[serde(rename = "type")]
    pub kind: AnthropicToolChoiceKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnthropicToolChoiceKind {
    Auto,
    Any,
    Tool,
    None,
}

/// `end_turn`, `max_tokens`, `stop_sequence` or `tool_use`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnthropicStopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnthropicUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The non-streamed answer (and, with empty `content`, the `message` of `message_start`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnthropicResponse {
    /// `msg_<task_id>`.
    pub id: String,
    /// `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `assistant`.
    pub role: String,
    pub model: String,
    pub content: Vec<ContentBlock>,
    #[schema(required = true)]
    pub stop_reason: Option<AnthropicStopReason>,
    #[schema(required = true)]
    pub stop_sequence: Option<String>,
    pub usage: AnthropicUsage,
}

/// Anthropic's error shape, for every `/v1/messages` error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnthropicError {
    /// `error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub error: AnthropicErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnthropicErrorBody {
    /// `invalid_request_error`, `authentication_error`, `not_found_error`, `rate_limit_error`,
    /// `api_error`, `overloaded_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

impl AnthropicError {
    pub fn from_envelope(env: &crate::ErrorEnvelope) -> Self {
        let kind = match env.http_status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            s if s >= 500 => "api_error",
            _ => "invalid_request_error",
        };
        let message = match &env.field {
            Some(f) => format!("{}: {} ({})", f, env.message, env.code),
            None => format!("{} ({})", env.message, env.code),
        };
        AnthropicError {
            kind: "error".into(),
            error: AnthropicErrorBody {
                kind: kind.into(),
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_tool_use_round_trip() {
        let r: MessagesRequest = serde_json::from_str(
            r#"{"model":"m","max_tokens":9,"system":"be brief","messages":[
                {"role":"user","content":"w?"},
                {"role":"assistant","content":[{"type":"text","text":"ok"},{"type":"tool_use","id":"t1","name":"f","input":{"city":"Paris"}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"18"}]}],
                "tools":[{"name":"f","input_schema":{"type":"object"}}],"tool_choice":{"type":"any"},"metadata":{"user_id":"x"}}"#,
        )
        .expect("parses");
        assert_eq!(
            r.system.as_ref().map(|s| s.text()).as_deref(),
            Some("be brief")
        );
        assert!(
            matches!(&r.messages[1].content, AnthropicContent::Blocks(b) if matches!(&b[1], ContentBlock::ToolUse { name, .. } if name == "f"))
        );
        assert_eq!(
            r.tool_choice.expect("choice").kind,
            AnthropicToolChoiceKind::Any
        );
    }
}
