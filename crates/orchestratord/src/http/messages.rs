//! Anthropic's Messages API (API.md §11.5): `POST /v1/messages` mapped onto a chat task (system
//! prompt first, `tool_use` blocks as the assistant's tool calls, `tool_result` blocks as tool
//! messages), through the same admission, queues, placement, cancellation and metrics as
//! `/v2/tasks`. One [`Builder`] turns the task's frames into Anthropic's streamed events and, fed
//! the same frames, into the whole message, so both forms say the same thing.

use api::anthropic::{
    AnthropicContent, AnthropicError, AnthropicResponse, AnthropicRole, AnthropicStopReason,
    AnthropicToolChoiceKind, AnthropicUsage, ContentBlock, MessagesRequest,
};
use api::events::{Event, StopReason};
use api::task::{Message, Priority, Role, TaskRequest};
use api::tools::{
    FunctionCall, FunctionDef, FunctionKind, ToolCall, ToolChoice, ToolChoiceMode, ToolDef,
};
use api::{ErrorEnvelope, TaskId};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use daemon::correlation::CorrelationId;
use serde_json::{json, Value};

use super::answer::{self, Answer};
use super::{json_body, App};

/// An error in Anthropic's shape, with the HTTP status and headers of the v2 envelope.
pub fn error(env: ErrorEnvelope) -> Response {
    let body = serde_json::to_string(&AnthropicError::from_envelope(&env)).unwrap_or_default();
    let mut resp = daemon::errors::ApiError(env).into_response();
    *resp.body_mut() = Body::from(body);
    resp
}

pub async fn messages(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<super::Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match json_body(&headers, body, app.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e.0),
    };
    let (req, stream) = match parse(&bytes) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let model = req.model_ref.clone();
    let (task, log, guard) = match answer::admit(&app, &cid, caller, req).await {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let b = Builder::new(task, model);
    answer::respond(task, log, guard, b, stream, error).await
}

/// Maps a Messages body onto a chat task; returns it with `stream`.
fn parse(bytes: &[u8]) -> Result<(TaskRequest, bool), ErrorEnvelope> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let r: MessagesRequest =
        serde_path_to_error::deserialize(de).map_err(crate::admission::invalid_body)?;
    if r.model.is_empty() || r.model.contains(':') {
        return Err(ErrorEnvelope::invalid(
            "model",
            "must be a catalog model id",
        ));
    }
    let mut req = TaskRequest::new(&r.model);
    let mut msgs = vec![];
    if let Some(s) = &r.system {
        msgs.push(Message::text(Role::System, s.text()));
    }
    for (i, m) in r.messages.iter().enumerate() {
        let blocks = match &m.content {
            AnthropicContent::Text(t) => vec![ContentBlock::Text { text: t.clone() }],
            AnthropicContent::Blocks(b) => b.clone(),
        };
        let mut text = String::new();
        let mut calls = vec![];
        for b in blocks {
            match (m.role, b) {
                (_, ContentBlock::Text { text: t }) => text.push_str(&t),
                (AnthropicRole::Assistant, ContentBlock::ToolUse { id, name, input }) => calls
                    .push(ToolCall {
                        id,
                        kind: FunctionKind::Function,
                        function: FunctionCall {
                            name,
                            arguments: input.to_string(),
                        },
                    }),
                (
                    AnthropicRole::User,
                    ContentBlock::ToolResult {
                        tool_use_id,
                        content,
                        ..
                    },
                ) => {
                    let mut t =
                        Message::text(Role::Tool, content.map(|c| c.text()).unwrap_or_default());
                    t.tool_call_id = Some(tool_use_id);
                    msgs.push(t);
                }
                (AnthropicRole::User, ContentBlock::ToolUse { .. }) => {
                    return Err(ErrorEnvelope::invalid(
                        format!("messages[{i}].content"),
                        "tool_use blocks belong to assistant messages",
                    ))
                }
                (AnthropicRole::Assistant, ContentBlock::ToolResult { .. }) => {
                    return Err(ErrorEnvelope::invalid(
                        format!("messages[{i}].content"),
                        "tool_result blocks belong to user messages",
                    ))
                }
            }
        }
        let role = match m.role {
            AnthropicRole::User => Role::User,
            AnthropicRole::Assistant => Role::Assistant,
        };
        if !text.is_empty() || !calls.is_empty() {
            let mut msg = Message::text(role, text);
            msg.tool_calls = calls;
            msgs.push(msg);
        }
    }
    req.messages = Some(msgs);
    req.max_tokens = Some(r.max_tokens);
    req.temperature = r.temperature;
    req.top_p = r.top_p;
    req.top_k = r.top_k;
    req.stop = r.stop_sequences;
    req.tools = r
        .tools
        .into_iter()
        .map(|t| ToolDef {
            kind: FunctionKind::Function,
            function: FunctionDef {
                name: t.name,
                description: t.description,
                parameters: Some(t.input_schema),
                strict: None,
            },
        })
        .collect();
    if let Some(c) = r.tool_choice {
        req.tool_choice = Some(match c.kind {
            AnthropicToolChoiceKind::Auto => ToolChoice::Mode(ToolChoiceMode::Auto),
            AnthropicToolChoiceKind::Any => ToolChoice::Mode(ToolChoiceMode::Required),
            AnthropicToolChoiceKind::None => ToolChoice::Mode(ToolChoiceMode::None),
            AnthropicToolChoiceKind::Tool => {
                let name = c.name.ok_or_else(|| {
                    ErrorEnvelope::invalid("tool_choice.name", "required when type is tool")
                })?;
                ToolChoice::Named(api::tools::NamedToolChoice {
                    kind: FunctionKind::Function,
                    function: api::tools::FunctionName { name },
                })
            }
        });
        req.parallel_tool_calls = c.disable_parallel_tool_use.map(|d| !d);
    }
    req.priority = Priority::Interactive;
    Ok((req, r.stream.unwrap_or(false)))
}

/// The block being streamed.
enum Open {
    None,
    Text,
    /// A tool call, by its index in the task's calls.
    Tool(u32),
}

/// Builds the answer from the task's frames: the streamed events as it goes, the whole message
/// at the end.
struct Builder {
    id: String,
    model: String,
    content: Vec<ContentBlock>,
    /// The arguments of each tool_use block, as streamed (parsed at the end).
    args: Vec<String>,
    open: Open,
    stop_reason: Option<AnthropicStopReason>,
    usage: AnthropicUsage,
    failed: Option<ErrorEnvelope>,
}

fn sse(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl Answer for Builder {
    /// `message_start` (the message with no content yet) and a `ping`.
    fn start(&mut self) -> String {
        let msg = serde_json::to_value(self.message()).unwrap_or_default();
        sse(
            "message_start",
            &json!({ "type": "message_start", "message": msg }),
        ) + &sse("ping", &json!({ "type": "ping" }))
    }

    /// The events one frame adds (and the message it builds).
    fn feed(&mut self, ev: &Event) -> String {
        let mut out = String::new();
        match ev {
            Event::Token(t) => {
                if !matches!(self.open, Open::Text) {
                    out += &self.close();
                    self.content.push(ContentBlock::Text {
                        text: String::new(),
                    });
                    self.open = Open::Text;
                    out += &sse(
                        "content_block_start",
                        &json!({ "type": "content_block_start", "index": self.content.len() - 1,
                                 "content_block": { "type": "text", "text": "" } }),
                    );
                }
                if let Some(ContentBlock::Text { text }) = self.content.last_mut() {
                    text.push_str(&t.t);
                }
                out += &sse(
                    "content_block_delta",
                    &json!({ "type": "content_block_delta", "index": self.content.len() - 1,
                             "delta": { "type": "text_delta", "text": t.t } }),
                );
            }
            Event::ToolCall(d) => {
                let same = matches!(self.open, Open::Tool(i) if i == d.index) && d.id.is_none();
                if !same {
                    out += &self.close();
                    let id = d.id.clone().unwrap_or_else(|| format!("toolu_{}", d.index));
                    let name = d.name.clone().unwrap_or_default();
                    self.content.push(ContentBlock::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                        input: json!({}),
                    });
                    self.args.push(String::new());
                    self.open = Open::Tool(d.index);
                    out += &sse(
                        "content_block_start",
                        &json!({ "type": "content_block_start", "index": self.content.len() - 1,
                                 "content_block": { "type": "tool_use", "id": id, "name": name, "input": {} } }),
                    );
                }
                if !d.arguments.is_empty() {
                    if let Some(a) = self.args.last_mut() {
                        a.push_str(&d.arguments);
                    }
                    out += &sse(
                        "content_block_delta",
                        &json!({ "type": "content_block_delta", "index": self.content.len() - 1,
                                 "delta": { "type": "input_json_delta", "partial_json": d.arguments } }),
                    );
                }
            }
            Event::End(e) => {
                out += &self.close();
                let called = !self.args.is_empty();
                let reason = match e.stop_reason {
                    StopReason::Eos if called => AnthropicStopReason::ToolUse,
                    StopReason::Eos | StopReason::Canceled => AnthropicStopReason::EndTurn,
                    StopReason::StopWord => AnthropicStopReason::StopSequence,
                    StopReason::Limit | StopReason::Deadline => AnthropicStopReason::MaxTokens,
                };
                self.stop_reason = Some(reason);
                self.usage = AnthropicUsage {
                    input_tokens: e.tokens_in,
                    output_tokens: e.tokens_out,
                };
                out += &sse(
                    "message_delta",
                    &json!({ "type": "message_delta",
                             "delta": { "stop_reason": reason, "stop_sequence": null },
                             "usage": { "input_tokens": e.tokens_in, "output_tokens": e.tokens_out } }),
                );
                out += &sse("message_stop", &json!({ "type": "message_stop" }));
            }
            Event::Error(e) => {
                out += &sse(
                    "error",
                    &serde_json::to_value(AnthropicError::from_envelope(e)).unwrap_or_default(),
                );
                self.failed = Some(e.clone());
            }
            Event::Started(_) | Event::Metrics(_) | Event::Embedding(_) => {}
        }
        out
    }

    fn take_failure(&mut self) -> Option<ErrorEnvelope> {
        self.failed.take()
    }

    fn whole(&self) -> Option<Response> {
        self.stop_reason
            .is_some()
            .then(|| Json(self.message()).into_response())
    }
}

impl Builder {
    fn new(task: TaskId, model: String) -> Self {
        Self {
            id: format!("msg_{task}"),
            model,
            content: vec![],
            args: vec![],
            open: Open::None,
            stop_reason: None,
            usage: AnthropicUsage {
                input_tokens: 0,
                output_tokens: 0,
            },
            failed: None,
        }
    }

    /// The whole message, as sent without streaming.
    fn message(&self) -> AnthropicResponse {
        let mut content = self.content.clone();
        let mut args = self.args.iter();
        for b in &mut content {
            if let ContentBlock::ToolUse { input, .. } = b {
                let raw = args.next().map(String::as_str).unwrap_or("");
                *input = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
            }
        }
        AnthropicResponse {
            id: self.id.clone(),
            kind: "message".into(),
            role: "assistant".into(),
            model: self.model.clone(),
            content,
            stop_reason: self.stop_reason,
            stop_sequence: None,
            usage: self.usage,
        }
    }

    fn close(&mut self) -> String {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => String::new(),
            _ => sse(
                "content_block_stop",
                &json!({ "type": "content_block_stop", "index": self.content.len() - 1 }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_tool_use_round_trip_onto_a_chat_task() {
        let (req, stream) = parse(
            br#"{"model":"m","max_tokens":9,"system":[{"type":"text","text":"be brief"}],"stream":true,"messages":[
                {"role":"user","content":"w?"},
                {"role":"assistant","content":[{"type":"text","text":"ok"},{"type":"tool_use","id":"t1","name":"f","input":{"city":"Paris"}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"18"}]}]}],
                "tools":[{"name":"f","input_schema":{"type":"object"}}],"tool_choice":{"type":"tool","name":"f","disable_parallel_tool_use":true},"stop_sequences":["x"]}"#,
        )
        .expect("valid");
        assert!(stream);
        let m = req.messages.expect("messages");
        let roles: Vec<Role> = m.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::Tool]
        );
        assert_eq!(m[2].tool_calls[0].function.arguments, r#"{"city":"Paris"}"#);
        assert_eq!(
            (m[3].tool_call_id.as_deref(), m[3].content.as_str()),
            (Some("t1"), "18")
        );
        assert!(
            matches!(req.tool_choice, Some(ToolChoice::Named(ref n)) if n.function.name == "f")
        );
        assert_eq!(
            (req.parallel_tool_calls, req.max_tokens, req.stop.len()),
            (Some(false), Some(9), 1)
        );
        let bad = parse(br#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]}]}"#);
        assert_eq!(
            bad.expect_err("refused").field.as_deref(),
            Some("messages[0].content")
        );
        let missing = parse(br#"{"model":"m","messages":[]}"#);
        assert_eq!(
            missing.expect_err("refused").field.as_deref(),
            Some("max_tokens")
        );
    }

    #[test]
    fn frames_become_anthropic_events_and_the_same_message() {
        let mut b = Builder::new(TaskId::new(), "m".into());
        let start = b.start();
        assert!(start.starts_with("event: message_start\n") && start.contains("event: ping"));
        let text = b.feed(&Event::Token(api::events::Token::new("Hi", 0)));
        assert!(text.contains("event: content_block_start") && text.contains(r#""text_delta""#));
        let call = b.feed(&Event::ToolCall(api::tools::ToolCallDelta {
            index: 0,
            id: Some("c1".into()),
            name: Some("f".into()),
            arguments: "{\"a\":".into(),
        }));
        assert!(
            call.starts_with("event: content_block_stop") && call.contains(r#""input_json_delta""#)
        );
        b.feed(&Event::ToolCall(api::tools::ToolCallDelta {
            index: 0,
            id: None,
            name: None,
            arguments: "1}".into(),
        }));
        let end = b.feed(&Event::End(api::events::End {
            tokens_in: 3,
            tokens_out: 4,
            ttft_ms: None,
            decode_ms: 0,
            decode_time_ms: 0,
            stop_reason: StopReason::Eos,
            canceled: false,
            tokens_cached: None,
        }));
        assert!(
            end.contains(r#""stop_reason":"tool_use""#)
                && end.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        );
        let m = serde_json::to_value(b.message()).expect("json");
        assert_eq!(
            m["content"][1],
            json!({"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}})
        );
        assert_eq!(
            (
                m["usage"]["input_tokens"].as_u64(),
                m["stop_reason"].as_str()
            ),
            (Some(3), Some("tool_use"))
        );
    }
}
