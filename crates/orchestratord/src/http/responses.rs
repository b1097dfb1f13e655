//! OpenAI's Responses API (API.md §11.4): `POST /v1/responses` mapped onto a chat task
//! (`instructions` first, `function_call` items as the assistant's tool calls,
//! `function_call_output` items as tool messages), through the same admission, queues, placement,
//! cancellation and metrics as `/v2/tasks`. Stateless: `previous_response_id` is refused. One
//! [`Builder`] turns the task's frames into the streamed events and, fed the same frames, into the
//! whole response object.

use api::events::{Event, StopReason};
use api::openai::ResponseFormatKind;
use api::responses::{
    IncompleteDetails, InputItem, OutputItem, OutputText, ResponseObject, ResponsesInput,
    ResponsesRequest, ResponsesTool, ResponsesToolChoice, ResponsesUsage, TextPartKind,
};
use api::task::{Message, Priority, Role, TaskRequest};
use api::tools::{FunctionCall, FunctionDef, FunctionKind, ToolCall, ToolChoice, ToolDef};
use api::{ErrorCode, ErrorEnvelope, TaskId};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use daemon::correlation::CorrelationId;
use serde_json::{json, Value};

use super::answer::{self, Answer};
use super::openai::error;
use super::{json_body, App};

pub async fn responses(
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
    let (req, echo, stream) = match parse(&bytes) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let model = req.model_ref.clone();
    let (task, log, guard) = match answer::admit(&app, &cid, caller, req).await {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let b = Builder::new(task, model, echo);
    answer::respond(task, log, guard, b, stream, error).await
}

/// What the response object echoes of the request.
#[derive(Debug)]
struct Echo {
    instructions: Option<String>,
    tools: Vec<ResponsesTool>,
    tool_choice: Value,
    parallel_tool_calls: bool,
}

/// Maps a Responses body onto a chat task; returns it with what the answer echoes and `stream`.
fn parse(bytes: &[u8]) -> Result<(TaskRequest, Echo, bool), ErrorEnvelope> {
    let bad = |f: &str, m: &str| ErrorEnvelope::invalid(f, m);
    let Ok(Value::Object(raw)) = serde_json::from_slice::<Value>(bytes) else {
        return Err(ErrorEnvelope::new(
            ErrorCode::InvalidParams,
            "the body must be a JSON object",
        ));
    };
    for (f, why) in [
        (
            "previous_response_id",
            "responses are not stored; send the whole conversation as input",
        ),
        (
            "conversation",
            "conversations are not stored; send the whole conversation as input",
        ),
        ("background", "background responses are not supported"),
    ] {
        if raw.get(f).is_some_and(|v| !v.is_null()) {
            return Err(bad(f, why));
        }
    }
    let r: ResponsesRequest = serde_path_to_error::deserialize(Value::Object(raw))
        .map_err(crate::admission::invalid_body)?;
    if r.model.is_empty() || r.model.contains(':') {
        return Err(bad("model", "must be a catalog model id"));
    }
    let mut req = TaskRequest::new(&r.model);
    let mut msgs = vec![];
    if let Some(i) = &r.instructions {
        msgs.push(Message::text(Role::System, i.clone()));
    }
    match &r.input {
        ResponsesInput::Text(t) => msgs.push(Message::text(Role::User, t.clone())),
        ResponsesInput::Items(items) => {
            for item in items {
                match item {
                    InputItem::Message(m) => {
                        let role = match m.role {
                            api::openai::OpenAiRole::System
                            | api::openai::OpenAiRole::Developer => Role::System,
                            api::openai::OpenAiRole::User => Role::User,
                            api::openai::OpenAiRole::Assistant => Role::Assistant,
                            api::openai::OpenAiRole::Tool => Role::Tool,
                        };
                        msgs.push(Message::text(role, m.content.text()));
                    }
                    InputItem::FunctionCall(c) => {
                        let call = ToolCall {
                            id: c.call_id.clone(),
                            kind: FunctionKind::Function,
                            function: FunctionCall {
                                name: c.name.clone(),
                                arguments: c.arguments.clone(),
                            },
                        };
                        // Consecutive calls belong to one assistant turn.
                        match msgs.last_mut() {
                            Some(last)
                                if last.role == Role::Assistant && !last.tool_calls.is_empty() =>
                            {
                                last.tool_calls.push(call)
                            }
                            _ => {
                                let mut m = Message::text(Role::Assistant, "");
                                m.tool_calls.push(call);
                                msgs.push(m);
                            }
                        }
                    }
                    InputItem::FunctionCallOutput(o) => {
                        let mut m = Message::text(Role::Tool, o.output.clone());
                        m.tool_call_id = Some(o.call_id.clone());
                        msgs.push(m);
                    }
                }
            }
        }
    }
    req.messages = Some(msgs);
    req.max_tokens = r.max_output_tokens;
    req.temperature = r.temperature;
    req.top_p = r.top_p;
    req.tools = r
        .tools
        .iter()
        .map(|t| ToolDef {
            kind: FunctionKind::Function,
            function: FunctionDef {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
                strict: t.strict,
            },
        })
        .collect();
    req.tool_choice = r.tool_choice.as_ref().map(|c| match c {
        ResponsesToolChoice::Mode(m) => ToolChoice::Mode(*m),
        ResponsesToolChoice::Named { name, .. } => ToolChoice::Named(api::tools::NamedToolChoice {
            kind: FunctionKind::Function,
            function: api::tools::FunctionName { name: name.clone() },
        }),
    });
    req.parallel_tool_calls = r.parallel_tool_calls;
    if let Some(f) = r.text.as_ref().and_then(|t| t.format.as_ref()) {
        match f.kind {
            ResponseFormatKind::JsonSchema => {
                req.json_schema = Some(
                    f.schema
                        .clone()
                        .ok_or_else(|| bad("text.format.schema", "required"))?,
                )
            }
            ResponseFormatKind::JsonObject => req.json_schema = Some(json!({ "type": "object" })),
            ResponseFormatKind::Text => {}
        }
    }
    req.priority = Priority::Interactive;
    let echo = Echo {
        instructions: r.instructions,
        tool_choice: r
            .tool_choice
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .unwrap_or_else(|| json!("auto")),
        parallel_tool_calls: r.parallel_tool_calls.unwrap_or(true),
        tools: r.tools,
    };
    Ok((req, echo, r.stream.unwrap_or(false)))
}

/// The output item being streamed.
enum Open {
    None,
    Text,
    Call(u32),
}

/// Builds the answer from the task's frames: the streamed events as it goes, the whole response
/// object at the end.
struct Builder {
    task: TaskId,
    model: String,
    echo: Echo,
    created_at: u64,
    output: Vec<OutputItem>,
    open: Open,
    seq: u64,
    status: &'static str,
    usage: Option<ResponsesUsage>,
    incomplete: Option<IncompleteDetails>,
    finished: bool,
    failed: Option<ErrorEnvelope>,
}

impl Answer for Builder {
    fn start(&mut self) -> String {
        let obj = serde_json::to_value(self.object()).unwrap_or_default();
        self.event("response.created", json!({ "response": obj.clone() }))
            + &self.event("response.in_progress", json!({ "response": obj }))
    }

    fn feed(&mut self, ev: &Event) -> String {
        let mut out = String::new();
        match ev {
            Event::Token(t) => {
                if !matches!(self.open, Open::Text) {
                    out += &self.close();
                    self.output.push(OutputItem::Message {
                        id: String::new(),
                        status: "in_progress".into(),
                        role: "assistant".into(),
                        content: vec![],
                    });
                    let id = self.item_id();
                    if let Some(OutputItem::Message { id: slot, .. }) = self.output.last_mut() {
                        *slot = id.clone();
                    }
                    self.open = Open::Text;
                    let idx = self.output.len() - 1;
                    let item = serde_json::to_value(self.output.last()).unwrap_or_default();
                    out += &self.event(
                        "response.output_item.added",
                        json!({ "output_index": idx, "item": item }),
                    );
                    out += &self.event(
                        "response.content_part.added",
                        json!({ "item_id": id, "output_index": idx, "content_index": 0,
                                "part": { "type": "output_text", "text": "", "annotations": [] } }),
                    );
                    if let Some(OutputItem::Message { content, .. }) = self.output.last_mut() {
                        content.push(OutputText {
                            kind: TextPartKind::OutputText,
                            text: String::new(),
                            annotations: vec![],
                        });
                    }
                }
                if let Some(OutputItem::Message { content, .. }) = self.output.last_mut() {
                    if let Some(c) = content.first_mut() {
                        c.text.push_str(&t.t);
                    }
                }
                let (id, idx) = (self.item_id(), self.output.len() - 1);
                out += &self.event(
                    "response.output_text.delta",
                    json!({ "item_id": id, "output_index": idx, "content_index": 0, "delta": t.t, "logprobs": [] }),
                );
            }
            Event::ToolCall(d) => {
                let same = matches!(self.open, Open::Call(i) if i == d.index) && d.id.is_none();
                if !same {
                    out += &self.close();
                    self.output.push(OutputItem::FunctionCall {
                        id: String::new(),
                        call_id: d.id.clone().unwrap_or_else(|| format!("call_{}", d.index)),
                        name: d.name.clone().unwrap_or_default(),
                        arguments: String::new(),
                        status: "in_progress".into(),
                    });
                    let id = self.item_id();
                    if let Some(OutputItem::FunctionCall { id: slot, .. }) = self.output.last_mut()
                    {
                        *slot = id;
                    }
                    self.open = Open::Call(d.index);
                    let idx = self.output.len() - 1;
                    let item = serde_json::to_value(self.output.last()).unwrap_or_default();
                    out += &self.event(
                        "response.output_item.added",
                        json!({ "output_index": idx, "item": item }),
                    );
                }
                if !d.arguments.is_empty() {
                    if let Some(OutputItem::FunctionCall { arguments, .. }) = self.output.last_mut()
                    {
                        arguments.push_str(&d.arguments);
                    }
                    let (id, idx) = (self.item_id(), self.output.len() - 1);
                    out += &self.event(
                        "response.function_call_arguments.delta",
                        json!({ "item_id": id, "output_index": idx, "delta": d.arguments }),
                    );
                }
            }
            Event::End(e) => {
                out += &self.close();
                self.usage = Some(ResponsesUsage {
                    input_tokens: e.tokens_in,
                    output_tokens: e.tokens_out,
                    total_tokens: e.tokens_in + e.tokens_out,
                });
                let kind = match e.stop_reason {
                    StopReason::Limit | StopReason::Deadline => {
                        self.status = "incomplete";
                        self.incomplete = Some(IncompleteDetails {
                            reason: "max_output_tokens".into(),
                        });
                        "response.incomplete"
                    }
                    _ => {
                        self.status = "completed";
                        "response.completed"
                    }
                };
                self.finished = true;
                let obj = serde_json::to_value(self.object()).unwrap_or_default();
                out += &self.event(kind, json!({ "response": obj }));
            }
            Event::Error(e) => {
                let body = api::openai::OpenAiError::from_envelope(e).error;
                out += &self.event(
                    "error",
                    json!({ "code": body.code, "message": body.message, "param": body.param }),
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
        self.finished
            .then(|| axum::response::IntoResponse::into_response(Json(self.object())))
    }
}

impl Builder {
    fn new(task: TaskId, model: String, echo: Echo) -> Self {
        Self {
            task,
            model,
            echo,
            created_at: daemon::now_ms() / 1000,
            output: vec![],
            open: Open::None,
            seq: 0,
            status: "in_progress",
            usage: None,
            incomplete: None,
            finished: false,
            failed: None,
        }
    }

    fn object(&self) -> ResponseObject {
        ResponseObject {
            id: format!("resp_{}", self.task),
            object: "response".into(),
            created_at: self.created_at,
            status: self.status.into(),
            model: self.model.clone(),
            output: self.output.clone(),
            usage: self.usage,
            incomplete_details: self.incomplete.clone(),
            error: None,
            instructions: self.echo.instructions.clone(),
            parallel_tool_calls: self.echo.parallel_tool_calls,
            tool_choice: self.echo.tool_choice.clone(),
            tools: self.echo.tools.clone(),
            metadata: json!({}),
        }
    }

    /// One event, `type` set and numbered.
    fn event(&mut self, kind: &str, mut data: Value) -> String {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        format!("event: {kind}\ndata: {data}\n\n")
    }

    fn item_id(&self) -> String {
        let prefix = match self.output.last() {
            Some(OutputItem::FunctionCall { .. }) => "fc",
            _ => "msg",
        };
        format!(
            "{prefix}_{}_{}",
            self.task.to_string().replace('-', ""),
            self.output.len() - 1
        )
    }

    fn close(&mut self) -> String {
        let idx = self.output.len().saturating_sub(1);
        let mut out = String::new();
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return out,
            Open::Text => {
                let id = self.item_id();
                let text = match self.output.last() {
                    Some(OutputItem::Message { content, .. }) => {
                        content.first().map(|c| c.text.clone()).unwrap_or_default()
                    }
                    _ => String::new(),
                };
                out += &self.event(
                    "response.output_text.done",
                    json!({ "item_id": id, "output_index": idx, "content_index": 0, "text": text, "logprobs": [] }),
                );
                out += &self.event(
                    "response.content_part.done",
                    json!({ "item_id": id, "output_index": idx, "content_index": 0,
                            "part": { "type": "output_text", "text": text, "annotations": [] } }),
                );
            }
            Open::Call(_) => {
                let id = self.item_id();
                let (args, name) = match self.output.last() {
                    Some(OutputItem::FunctionCall {
                        arguments, name, ..
                    }) => (arguments.clone(), name.clone()),
                    _ => (String::new(), String::new()),
                };
                out += &self.event(
                    "response.function_call_arguments.done",
                    json!({ "item_id": id, "output_index": idx, "arguments": args, "name": name }),
                );
            }
        }
        if let Some(OutputItem::Message { status, .. } | OutputItem::FunctionCall { status, .. }) =
            self.output.last_mut()
        {
            *status = "completed".into();
        }
        let item = serde_json::to_value(self.output.last()).unwrap_or_default();
        out += &self.event(
            "response.output_item.done",
            json!({ "output_index": idx, "item": item }),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_items_onto_a_chat_task() {
        let (req, echo, stream) = parse(
            br#"{"model":"m","instructions":"be brief","input":[{"role":"user","content":"w?"},
                {"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},
                {"type":"function_call_output","call_id":"c1","output":"18"}],
                "tools":[{"type":"function","name":"f","parameters":{"type":"object"}}],"tool_choice":"required","max_output_tokens":30,"stream":true}"#,
        )
        .expect("valid");
        assert!(stream);
        let m = req.messages.expect("messages");
        let roles: Vec<Role> = m.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::Tool]
        );
        assert_eq!(m[2].tool_calls[0].id, "c1");
        assert_eq!((req.max_tokens, req.tools.len()), (Some(30), 1));
        assert_eq!(echo.tool_choice, json!("required"));
        let prev = parse(br#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#);
        assert_eq!(
            prev.expect_err("refused").field.as_deref(),
            Some("previous_response_id")
        );
        let schema = parse(
            br#"{"model":"m","input":"x","text":{"format":{"type":"json_schema","name":"n"}}}"#,
        );
        assert_eq!(
            schema.expect_err("refused").field.as_deref(),
            Some("text.format.schema")
        );
    }

    #[test]
    fn frames_become_response_events_and_the_same_object() {
        let echo = Echo {
            instructions: None,
            tools: vec![],
            tool_choice: json!("auto"),
            parallel_tool_calls: true,
        };
        let mut b = Builder::new(TaskId::new(), "m".into(), echo);
        let start = b.start();
        assert!(
            start.contains("event: response.created") && start.contains("\"sequence_number\":1")
        );
        let t = b.feed(&Event::Token(api::events::Token::new("Hi", 0)));
        assert!(
            t.contains("response.output_item.added") && t.contains("response.output_text.delta")
        );
        let c = b.feed(&Event::ToolCall(api::tools::ToolCallDelta {
            index: 0,
            id: Some("c1".into()),
            name: Some("f".into()),
            arguments: "{}".into(),
        }));
        assert!(
            c.starts_with("event: response.output_text.done")
                && c.contains("response.function_call_arguments.delta")
        );
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
            end.contains("response.function_call_arguments.done")
                && end.contains("event: response.completed")
        );
        let o = serde_json::to_value(b.object()).expect("json");
        assert_eq!(o["output"][0]["content"][0]["text"], "Hi");
        assert_eq!(
            (
                o["output"][1]["type"].as_str(),
                o["output"][1]["call_id"].as_str(),
                o["output"][1]["status"].as_str()
            ),
            (Some("function_call"), Some("c1"), Some("completed"))
        );
        assert_eq!(
            (o["status"].as_str(), o["usage"]["total_tokens"].as_u64()),
            (Some("completed"), Some(7))
        );
    }
}
