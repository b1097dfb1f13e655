//! OpenAI's Responses API (`POST /v1/responses`, API.md §11.4): the request orchestratord reads
//! and the response object it answers. Stateless: `previous_response_id` is refused, the client
//! sends the whole conversation as `input`. Unknown request fields are ignored.

use serde::{Deserialize, Serialize};

/// `POST /v1/responses` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponsesRequest {
    /// A catalog model id.
    pub model: String,
    pub input: ResponsesInput,
    /// A system message put first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ResponsesTool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ResponsesToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<ResponsesText>,
}

/// A string (one user message) or input items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ResponsesInput {
    Text(String),
    Items(Vec<InputItem>),
}

/// An input item: a message (`type` may be left out), a function call the model made, or its
/// output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum InputItem {
    FunctionCall(FunctionCallItem),
    FunctionCallOutput(FunctionCallOutputItem),
    Message(InputMessage),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InputMessage {
    /// `message`, or absent.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MessageKind>,
    /// `user`, `system`, `developer` or `assistant`.
    pub role: crate::openai::OpenAiRole,
    pub content: InputContent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Message,
}

/// A string or content parts (`input_text`, `output_text`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum InputContent {
    Text(String),
    Parts(Vec<InputPart>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InputPart {
    /// `input_text` or `output_text`.
    #[serde(rename = "type")]
    pub kind: TextPartKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextPartKind {
    InputText,
    OutputText,
}

impl InputContent {
    pub fn text(&self) -> String {
        match self {
            InputContent::Text(s) => s.clone(),
            InputContent::Parts(p) => p.iter().map(|p| p.text.as_str()).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCallItem {
    /// `function_call`.
    #[serde(rename = "type")]
    pub kind: FunctionCallKind,
    pub call_id: String,
    pub name: String,
    pub arguments: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FunctionCallKind {
    FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCallOutputItem {
    /// `function_call_output`.
    #[serde(rename = "type")]
    pub kind: FunctionCallOutputKind,
    pub call_id: String,
    pub output: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FunctionCallOutputKind {
    FunctionCallOutput,
}

/// A function tool, flat as the Responses API writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponsesTool {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: crate::tools::FunctionKind,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `auto`, `none`, `required`, or `{"type": "function", "name": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ResponsesToolChoice {
    Mode(crate::tools::ToolChoiceMode),
    Named {
        #[serde(rename = "type")]
        kind: crate::tools::FunctionKind,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponsesText {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ResponsesTextFormat>,
}

/// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", name, schema, strict}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponsesTextFormat {
    #[serde(rename = "type")]
    pub kind: crate::openai::ResponseFormatKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// An output item of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message {
        id: String,
        /// `in_progress` or `completed`.
        status: String,
        /// `assistant`.
        role: String,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputText {
    /// `output_text`.
    #[serde(rename = "type")]
    pub kind: TextPartKind,
    pub text: String,
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponsesUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: String,
}

/// The response object: the non-streamed answer, and the `response` of `response.created`,
/// `response.in_progress` and `response.completed` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponseObject {
    /// `resp_<task_id>`.
    pub id: String,
    /// `response`.
    pub object: String,
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: String,
    pub model: String,
    pub output: Vec<OutputItem>,
    #[schema(required = true)]
    pub usage: Option<ResponsesUsage>,
    #[schema(required = true)]
    pub incomplete_details: Option<IncompleteDetails>,
    #[schema(required = true, value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    #[schema(required = true)]
    pub instructions: Option<String>,
    pub parallel_tool_calls: bool,
    #[schema(value_type = Object)]
    pub tool_choice: serde_json::Value,
    pub tools: Vec<ResponsesTool>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_items_of_a_function_call_round_trip() {
        let r: ResponsesRequest = serde_json::from_str(
            r#"{"model":"m","input":[{"role":"user","content":"w?"},
                {"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},
                {"type":"function_call_output","call_id":"c1","output":"18"},
                {"type":"message","role":"user","content":[{"type":"input_text","text":"and?"}]}],
                "tools":[{"type":"function","name":"f","parameters":{"type":"object"}}],"tool_choice":{"type":"function","name":"f"},"store":false}"#,
        )
        .expect("parses");
        let ResponsesInput::Items(items) = &r.input else {
            panic!("items")
        };
        assert!(matches!(&items[0], InputItem::Message(m) if m.content.text() == "w?"));
        assert!(matches!(&items[1], InputItem::FunctionCall(c) if c.call_id == "c1"));
        assert!(matches!(&items[2], InputItem::FunctionCallOutput(o) if o.output == "18"));
        assert!(matches!(&items[3], InputItem::Message(m) if m.content.text() == "and?"));
        assert!(
            matches!(r.tool_choice, Some(ResponsesToolChoice::Named { ref name, .. }) if name == "f")
        );
    }
}
