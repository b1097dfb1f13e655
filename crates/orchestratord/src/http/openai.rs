//! The OpenAI-compatible surface (API.md §11): `/v1/chat/completions`, `/v1/completions` and
//! `/v1/models`, mapped onto the same admission, queues, placement, cancellation and metrics as
//! `/v2/tasks`. Unknown request fields are ignored (OpenAI clients send many); errors use OpenAI's
//! shape with the status and backoff headers of the v2 envelope.

use std::convert::Infallible;
use std::sync::Arc;

use api::events::{Event, StopReason};
use api::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, ChatDelta, ChatLogprobs, ChatToolCallDelta, CompletionId,
    CompletionRequest, FinishReason, LogprobsField, ModelEntry, ModelList, OpenAiError, OpenAiRole,
    ResponseFormatKind, StringOrArray, TextChoice, TextCompletion, TextCompletionChunk,
    TextLogprobs, Usage, REFUSED_FIELDS,
};
use api::task::{Message, Priority, Role, TaskRequest};
use api::{ErrorCode, ErrorEnvelope};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use daemon::correlation::CorrelationId;
use serde_json::Value;

use super::answer::{next_frames, CallMerger, Guard};
use super::{json_body, App, Caller};
use crate::core::runner::Msg;
use crate::core::TaskLog;

/// An error in OpenAI's shape, with the HTTP status and headers of the v2 envelope.
pub fn error(env: ErrorEnvelope) -> Response {
    let body = serde_json::to_string(&OpenAiError::from_envelope(&env)).unwrap_or_default();
    let mut resp = daemon::errors::ApiError(env).into_response();
    *resp.body_mut() = Body::from(body);
    resp
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

pub async fn chat(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    complete(app, cid, caller, headers, body, Kind::Chat).await
}

pub async fn completions(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    complete(app, cid, caller, headers, body, Kind::Text).await
}

pub async fn models(State(app): State<App>) -> Response {
    let Some(models) = app.core.ask(|reply| Msg::ListedModels { reply }).await else {
        return error(ErrorEnvelope::new(ErrorCode::Internal, "shutting down"));
    };
    let data = models
        .into_iter()
        .map(|(id, created)| ModelEntry {
            id,
            object: "model".into(),
            created,
            owned_by: "llama-orch".into(),
        })
        .collect();
    Json(ModelList {
        object: "list".into(),
        data,
    })
    .into_response()
}

async fn complete(
    app: App,
    cid: CorrelationId,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
    kind: Kind,
) -> Response {
    let bytes = match json_body(&headers, body, app.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e.0),
    };
    let (
        req,
        Flags {
            stream,
            include_usage,
            logprobs,
        },
    ) = match parse(&bytes, kind) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let model = req.model_ref.clone();
    let (task, log, guard) = match super::answer::admit(&app, &cid, caller, req).await {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let id = if kind == Kind::Chat {
        CompletionId::chat(task)
    } else {
        CompletionId::text(task)
    };
    let mut resp = if stream {
        streamed(log, guard, id, model, kind, include_usage, logprobs)
    } else {
        whole(log, guard, id, model, kind, logprobs).await
    };
    if let Ok(v) = HeaderValue::from_str(&task.to_string()) {
        resp.headers_mut().insert("x-llorch-task-id", v);
    }
    resp
}

/// What a request asks of the answer beyond the task: streaming, a usage chunk, log probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Flags {
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

/// Parses an OpenAI body and maps it onto a task request; returns it with the answer's [`Flags`].
/// Refused fields are checked on the raw object, then the typed body is read with the path of the
/// first bad field.
fn parse(bytes: &[u8], kind: Kind) -> Result<(TaskRequest, Flags), ErrorEnvelope> {
    let bad = |f: &str, msg: &str| ErrorEnvelope::invalid(f, msg);
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(bytes) else {
        return Err(ErrorEnvelope::new(
            ErrorCode::InvalidParams,
            "the body must be a JSON object",
        ));
    };
    for (f, why) in REFUSED_FIELDS {
        if m.get(f).is_some_and(|v| !v.is_null()) {
            return Err(bad(f, why));
        }
    }
    if kind == Kind::Text {
        for f in ["tools", "tool_choice", "parallel_tool_calls"] {
            if m.get(f).is_some_and(|v| !v.is_null()) {
                return Err(bad(f, "tools need /v1/chat/completions"));
            }
        }
    }
    // The sampling fields first, on their own: inside the flattened request serde loses their path.
    let v = Value::Object(m);
    serde_path_to_error::deserialize::<_, api::openai::OpenAiSampling>(&v)
        .map_err(crate::admission::invalid_body)?;
    let mut req = TaskRequest::new("");
    let (model, body, s) = match kind {
        Kind::Chat => {
            let r = serde_path_to_error::deserialize::<_, ChatCompletionRequest>(&v)
                .map_err(crate::admission::invalid_body)?;
            req.tools = r.tools;
            req.tool_choice = r.tool_choice;
            req.parallel_tool_calls = r.parallel_tool_calls;
            (r.model, Input::Chat(r.messages), r.sampling)
        }
        Kind::Text => {
            let r = serde_path_to_error::deserialize::<_, CompletionRequest>(&v)
                .map_err(crate::admission::invalid_body)?;
            (r.model, Input::Text(r.prompt), r.sampling)
        }
    };
    if model.is_empty() || model.contains(':') {
        return Err(bad("model", "must be a catalog model id"));
    }
    if s.n.is_some_and(|n| n != 1) {
        return Err(bad(
            "n",
            "only n = 1 is supported: send n requests, each is queued and placed on its own",
        ));
    }
    req.model_ref = model;
    match body {
        Input::Chat(msgs) => {
            let role = |r: OpenAiRole| match r {
                OpenAiRole::System | OpenAiRole::Developer => Role::System,
                OpenAiRole::User => Role::User,
                OpenAiRole::Assistant => Role::Assistant,
                OpenAiRole::Tool => Role::Tool,
            };
            req.messages = Some(
                msgs.into_iter()
                    .map(|msg| Message {
                        role: role(msg.role),
                        content: msg.content.map(|c| c.text()).unwrap_or_default(),
                        tool_calls: msg.tool_calls,
                        tool_call_id: msg.tool_call_id,
                    })
                    .collect(),
            );
        }
        Input::Text(StringOrArray::One(p)) => req.prompt = Some(p),
        Input::Text(StringOrArray::Many(_)) => {
            return Err(bad(
                "prompt",
                "arrays of prompts are not supported; send one string",
            ))
        }
    }
    req.max_tokens = s.max_completion_tokens.or(s.max_tokens);
    req.temperature = s.temperature;
    req.top_p = s.top_p;
    req.seed = s.seed;
    req.top_k = s.top_k;
    req.min_p = s.min_p;
    req.repeat_penalty = s.repeat_penalty;
    req.presence_penalty = s.presence_penalty;
    req.frequency_penalty = s.frequency_penalty;
    req.logit_bias = s.logit_bias.unwrap_or_default();
    req.logprobs = match (kind, s.logprobs, s.top_logprobs) {
        (Kind::Chat, Some(LogprobsField::Flag(true)), n) => Some(n.unwrap_or(0)),
        (Kind::Chat, Some(LogprobsField::Count(_)), _) => {
            return Err(bad("logprobs", "must be a boolean on chat completions"))
        }
        (Kind::Chat, _, Some(_)) => return Err(bad("top_logprobs", "needs logprobs: true")),
        (Kind::Text, Some(LogprobsField::Count(n)), _) if n > 0 => Some(n),
        (Kind::Text, Some(LogprobsField::Flag(true)), _) => Some(0),
        _ => None,
    };
    req.stop = match s.stop {
        None => vec![],
        Some(StringOrArray::One(x)) => vec![x],
        Some(StringOrArray::Many(v)) => v,
    };
    req.grammar = s.grammar;
    if let Some(rf) = s.response_format {
        match rf.kind {
            ResponseFormatKind::JsonSchema => {
                req.json_schema = Some(
                    rf.json_schema
                        .and_then(|j| j.get("schema").cloned())
                        .ok_or_else(|| bad("response_format.json_schema.schema", "required"))?,
                )
            }
            ResponseFormatKind::JsonObject => {
                req.json_schema = Some(serde_json::json!({ "type": "object" }))
            }
            ResponseFormatKind::Text => {}
        }
    }
    req.priority = Priority::Interactive;
    let flags = Flags {
        stream: s.stream.unwrap_or(false),
        include_usage: s.stream_options.is_some_and(|o| o.include_usage),
        logprobs: req.logprobs.is_some(),
    };
    Ok((req, flags))
}

/// What the request asks to complete.
enum Input {
    Chat(Vec<api::openai::OpenAiMessage>),
    Text(StringOrArray),
}

/// The finish reason of an answer that ended with `r`; an answer that called tools and ended on
/// its own says `tool_calls`.
fn finish_reason(r: StopReason, called_tools: bool) -> FinishReason {
    match r {
        StopReason::Eos if called_tools => FinishReason::ToolCalls,
        StopReason::Eos | StopReason::StopWord | StopReason::Canceled => FinishReason::Stop,
        StopReason::Limit | StopReason::Deadline => FinishReason::Length,
    }
}

async fn whole(
    log: Arc<TaskLog>,
    mut guard: Guard,
    id: CompletionId,
    model: String,
    kind: Kind,
    want_logprobs: bool,
) -> Response {
    let mut text = String::new();
    let mut calls = CallMerger::default();
    let mut lps: Vec<api::tools::TokenLogprob> = vec![];
    let mut text_lps = TextLogprobs::default();
    let mut fingerprint = None;
    let mut next = 0;
    loop {
        let (frames, closed) = next_frames(&log, next).await;
        next += frames.len();
        for f in frames {
            match f {
                Event::Started(s) => fingerprint = s.engine_version,
                Event::Token(t) => {
                    text_lps.push(&t.logprobs, text.len() as u64);
                    lps.extend(t.logprobs);
                    text.push_str(&t.t);
                }
                Event::ToolCall(d) => calls.push(&d),
                Event::End(e) => {
                    guard.done = true;
                    let usage = Usage::new(e.tokens_in, e.tokens_out).cached(e.tokens_cached);
                    let finish_reason = finish_reason(e.stop_reason, !calls.calls.is_empty());
                    let (created, system_fingerprint) = (daemon::now_ms() / 1000, fingerprint);
                    return match kind {
                        Kind::Chat => {
                            let tool_calls = std::mem::take(&mut calls.calls);
                            let message = AssistantMessage {
                                role: "assistant".into(),
                                content: (!text.is_empty() || tool_calls.is_empty())
                                    .then_some(text),
                                tool_calls,
                            };
                            let choices = vec![ChatChoice {
                                index: 0,
                                message,
                                finish_reason,
                                logprobs: want_logprobs.then(|| ChatLogprobs {
                                    content: std::mem::take(&mut lps),
                                }),
                            }];
                            Json(ChatCompletion {
                                id,
                                object: "chat.completion".into(),
                                created,
                                model,
                                system_fingerprint,
                                choices,
                                usage,
                            })
                            .into_response()
                        }
                        Kind::Text => {
                            let choices = vec![TextChoice {
                                index: 0,
                                text,
                                finish_reason: Some(finish_reason),
                                logprobs: want_logprobs.then(|| std::mem::take(&mut text_lps)),
                            }];
                            Json(TextCompletion {
                                id,
                                object: "text_completion".into(),
                                created,
                                model,
                                system_fingerprint,
                                choices,
                                usage,
                            })
                            .into_response()
                        }
                    };
                }
                Event::Error(e) => {
                    guard.done = true;
                    return error(e);
                }
                _ => {}
            }
        }
        if closed {
            guard.done = true;
            return error(ErrorEnvelope::new(
                ErrorCode::Internal,
                "the task ended without a result",
            ));
        }
    }
}

/// What one `data:` line of a streamed answer carries.
#[derive(Clone, Copy)]
enum Piece<'a> {
    /// The first chat chunk: `delta.role = "assistant"`.
    Role,
    /// Text and, when asked for, its tokens' log probabilities.
    Text(&'a str, Option<&'a [api::tools::TokenLogprob]>),
    /// A piece of a tool call (chat only).
    Tool(&'a api::tools::ToolCallDelta),
    /// The last content chunk.
    Finish(FinishReason),
    /// The usage chunk: no choices.
    Usage(Usage),
}

/// The chunk of one streamed answer, kept whole and rewritten in place for each line, so the id,
/// model and fingerprint are not copied per token.
enum Chunks {
    Chat(ChatCompletionChunk),
    Text(TextCompletionChunk),
}

impl Chunks {
    fn new(kind: Kind, id: CompletionId, model: String) -> Self {
        let created = daemon::now_ms() / 1000;
        match kind {
            Kind::Chat => Chunks::Chat(ChatCompletionChunk {
                id,
                object: "chat.completion.chunk".into(),
                created,
                model,
                system_fingerprint: None,
                choices: vec![],
                usage: None,
            }),
            Kind::Text => Chunks::Text(TextCompletionChunk {
                id,
                object: "text_completion".into(),
                created,
                model,
                system_fingerprint: None,
                choices: vec![],
                usage: None,
            }),
        }
    }

    fn set_fingerprint(&mut self, fingerprint: Option<String>) {
        match self {
            Chunks::Chat(c) => c.system_fingerprint = fingerprint,
            Chunks::Text(c) => c.system_fingerprint = fingerprint,
        }
    }

    fn line(&mut self, piece: Piece) -> String {
        let (finish_reason, usage) = match piece {
            Piece::Finish(f) => (Some(f), None),
            Piece::Usage(u) => (None, Some(u)),
            Piece::Role | Piece::Text(..) | Piece::Tool(_) => (None, None),
        };
        let lps = match piece {
            Piece::Text(_, lps) => lps,
            _ => None,
        };
        let json = match self {
            Chunks::Chat(c) => {
                let delta = match piece {
                    Piece::Role => ChatDelta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        tool_calls: vec![],
                    },
                    Piece::Text(t, _) => ChatDelta {
                        content: Some(t.to_string()),
                        ..Default::default()
                    },
                    Piece::Tool(d) => ChatDelta {
                        tool_calls: vec![ChatToolCallDelta::from(d)],
                        ..Default::default()
                    },
                    Piece::Finish(_) | Piece::Usage(_) => ChatDelta::default(),
                };
                c.choices = if usage.is_some() {
                    vec![]
                } else {
                    vec![ChatChunkChoice {
                        index: 0,
                        delta,
                        finish_reason,
                        logprobs: lps.map(|l| ChatLogprobs {
                            content: l.to_vec(),
                        }),
                    }]
                };
                c.usage = usage;
                serde_json::to_string(c)
            }
            Chunks::Text(c) => {
                let text = if let Piece::Text(t, _) = piece {
                    t.to_string()
                } else {
                    String::new()
                };
                let logprobs = lps.map(|l| {
                    let mut t = TextLogprobs::default();
                    t.push(l, 0);
                    t
                });
                c.choices = if usage.is_some() {
                    vec![]
                } else {
                    vec![TextChoice {
                        index: 0,
                        text,
                        finish_reason,
                        logprobs,
                    }]
                };
                c.usage = usage;
                serde_json::to_string(c)
            }
        };
        format!("data: {}\n\n", json.unwrap_or_default())
    }
}

fn streamed(
    log: Arc<TaskLog>,
    guard: Guard,
    id: CompletionId,
    model: String,
    kind: Kind,
    include_usage: bool,
    want_logprobs: bool,
) -> Response {
    let state = (
        log,
        guard,
        0usize,
        kind == Kind::Chat,
        (Chunks::new(kind, id, model), false),
        false,
    );
    let stream = futures::stream::unfold(
        state,
        move |(log, mut guard, next, first, (mut chunks, mut called), done)| async move {
            if done {
                return None;
            }
            if first {
                let line = chunks.line(Piece::Role);
                return Some((
                    Ok::<_, Infallible>(Bytes::from(line)),
                    (log, guard, next, false, (chunks, called), false),
                ));
            }
            let (frames, closed) = next_frames(&log, next).await;
            let n = next + frames.len();
            let mut out = String::new();
            let mut finished = closed;
            for f in frames {
                match f {
                    Event::Started(s) => chunks.set_fingerprint(s.engine_version),
                    Event::Token(t) => out.push_str(&chunks.line(Piece::Text(
                        &t.t,
                        want_logprobs.then_some(t.logprobs.as_slice()),
                    ))),
                    Event::ToolCall(d) => {
                        called = true;
                        out.push_str(&chunks.line(Piece::Tool(&d)));
                    }
                    Event::End(e) => {
                        guard.done = true;
                        out.push_str(
                            &chunks.line(Piece::Finish(finish_reason(e.stop_reason, called))),
                        );
                        if include_usage {
                            out.push_str(&chunks.line(Piece::Usage(
                                Usage::new(e.tokens_in, e.tokens_out).cached(e.tokens_cached),
                            )));
                        }
                        out.push_str("data: [DONE]\n\n");
                        finished = true;
                    }
                    Event::Error(e) => {
                        guard.done = true;
                        let mut body = OpenAiError::from_envelope(&e);
                        body.error.kind = "server_error".into();
                        out.push_str(&format!(
                            "data: {}\n\n",
                            serde_json::to_string(&body).unwrap_or_default()
                        ));
                        finished = true;
                    }
                    _ => {}
                }
            }
            if out.is_empty() && finished {
                return None;
            }
            Some((
                Ok(Bytes::from(out)),
                (log, guard, n, false, (chunks, called), finished),
            ))
        },
    );
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    *resp.status_mut() = StatusCode::OK;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<(TaskRequest, bool, bool), ErrorEnvelope> {
        parse(body.as_bytes(), Kind::Chat).map(|(r, f)| (r, f.stream, f.include_usage))
    }

    #[test]
    fn maps_a_chat_body_onto_a_task() {
        let (req, stream, usage) = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":"hi"}],"max_tokens":5,"max_completion_tokens":7,
                "stop":["a","b"],"stream":true,"stream_options":{"include_usage":true},"logprobs":false,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}}}"#,
        )
        .expect("valid");
        let msgs = req.messages.expect("messages");
        assert_eq!(
            (msgs[0].role, msgs[1].content.as_str()),
            (Role::System, "hi")
        );
        assert_eq!(req.max_tokens, Some(7), "max_completion_tokens wins");
        assert_eq!(req.stop, ["a", "b"]);
        assert_eq!(
            req.json_schema,
            Some(serde_json::json!({ "type": "object" }))
        );
        assert_eq!(req.priority, Priority::Interactive);
        assert!(stream && usage);
    }

    fn data(line: &str) -> Value {
        serde_json::from_str(
            line.strip_prefix("data: ")
                .and_then(|l| l.strip_suffix("\n\n"))
                .expect("one data line"),
        )
        .expect("JSON")
    }

    #[test]
    fn tools_logprobs_and_penalties_reach_the_task() {
        let (req, flags) = parse(
            br#"{"model":"m","messages":[{"role":"user","content":"w?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"18"}],
                "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
                "tool_choice":{"type":"function","function":{"name":"f"}},"parallel_tool_calls":false,
                "logprobs":true,"top_logprobs":2,"presence_penalty":0.5,"frequency_penalty":-0.5,"logit_bias":{"15":-100}}"#,
            Kind::Chat,
        )
        .expect("valid");
        let msgs = req.messages.as_ref().expect("messages");
        assert_eq!(
            (msgs[1].content.as_str(), msgs[1].tool_calls.len()),
            ("", 1)
        );
        assert_eq!(
            (msgs[2].role, msgs[2].tool_call_id.as_deref()),
            (Role::Tool, Some("c1"))
        );
        assert_eq!((req.tools.len(), req.parallel_tool_calls), (1, Some(false)));
        assert_eq!(req.logprobs, Some(2));
        assert_eq!(
            (req.presence_penalty, req.frequency_penalty),
            (Some(0.5), Some(-0.5))
        );
        assert_eq!(req.logit_bias["15"], -100.0);
        assert!(flags.logprobs && !flags.stream);
        let (text, flags) =
            parse(br#"{"model":"m","prompt":"p","logprobs":3}"#, Kind::Text).expect("valid");
        assert_eq!((text.logprobs, flags.logprobs), (Some(3), true));
    }

    #[test]
    fn tool_calls_merge_and_finish_with_tool_calls() {
        let mut m = CallMerger::default();
        let d =
            |index, id: Option<&str>, name: Option<&str>, args: &str| api::tools::ToolCallDelta {
                index,
                id: id.map(Into::into),
                name: name.map(Into::into),
                arguments: args.into(),
            };
        m.push(&d(0, Some("c1"), Some("f"), "{\"a\""));
        m.push(&d(0, None, None, ": 1}"));
        m.push(&d(1, Some("c2"), Some("g"), "{}"));
        assert_eq!(m.calls.len(), 2);
        assert_eq!(
            (
                m.calls[0].id.as_str(),
                m.calls[0].function.arguments.as_str()
            ),
            ("c1", "{\"a\": 1}")
        );
        assert_eq!(
            finish_reason(StopReason::Eos, true),
            FinishReason::ToolCalls
        );
        assert_eq!(finish_reason(StopReason::Limit, true), FinishReason::Length);
        assert_eq!(finish_reason(StopReason::Eos, false), FinishReason::Stop);
        let mut c = Chunks::new(
            Kind::Chat,
            CompletionId::chat(api::TaskId::new()),
            "m".into(),
        );
        let first = d(0, Some("c1"), Some("f"), "{");
        let line = data(&c.line(Piece::Tool(&first)));
        assert_eq!(
            line["choices"][0]["delta"]["tool_calls"][0],
            serde_json::json!({"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}})
        );
        let lp = api::tools::TokenLogprob {
            token: "a".into(),
            logprob: -0.5,
            bytes: vec![97],
            top_logprobs: vec![],
        };
        let line = data(&c.line(Piece::Text("a", Some(std::slice::from_ref(&lp)))));
        assert_eq!(
            line["choices"][0]["logprobs"]["content"][0]["logprob"],
            -0.5
        );
    }

    #[test]
    fn chat_chunks_follow_openai_shapes() {
        let mut c = Chunks::new(
            Kind::Chat,
            CompletionId::chat(api::TaskId::new()),
            "m".into(),
        );
        let role = data(&c.line(Piece::Role));
        assert_eq!(
            role["choices"][0]["delta"],
            serde_json::json!({ "role": "assistant", "content": "" })
        );
        c.set_fingerprint(Some("b1".into()));
        let tok = data(&c.line(Piece::Text("hi", None)));
        assert_eq!(
            (tok["object"].as_str(), tok["system_fingerprint"].as_str()),
            (Some("chat.completion.chunk"), Some("b1"))
        );
        assert!(
            tok["choices"][0]["delta"].get("role").is_none()
                && tok["choices"][0]["finish_reason"].is_null()
                && tok.get("usage").is_none()
        );
        let last = data(&c.line(Piece::Finish(FinishReason::Length)));
        assert_eq!(
            (
                last["choices"][0]["finish_reason"].as_str(),
                last["choices"][0]["delta"].clone()
            ),
            (Some("length"), serde_json::json!({}))
        );
        let usage = data(&c.line(Piece::Usage(Usage::new(3, 4))));
        assert_eq!(
            (
                usage["choices"].clone(),
                usage["usage"]["total_tokens"].as_u64()
            ),
            (serde_json::json!([]), Some(7))
        );
        let after = data(&c.line(Piece::Text("x", None)));
        assert!(
            after.get("usage").is_none(),
            "usage is sent on the usage chunk only"
        );
    }

    #[test]
    fn text_chunks_carry_text_and_null_logprobs() {
        let mut c = Chunks::new(
            Kind::Text,
            CompletionId::text(api::TaskId::new()),
            "m".into(),
        );
        let tok = data(&c.line(Piece::Text("hi", None)));
        assert_eq!(
            (tok["object"].as_str(), tok["choices"][0]["text"].as_str()),
            (Some("text_completion"), Some("hi"))
        );
        assert!(
            tok["choices"][0]["logprobs"].is_null() && tok["choices"][0].get("logprobs").is_some()
        );
        let last = data(&c.line(Piece::Finish(FinishReason::Stop)));
        assert_eq!(
            (
                last["choices"][0]["text"].as_str(),
                last["choices"][0]["finish_reason"].as_str()
            ),
            (Some(""), Some("stop"))
        );
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let field =
            |body: &str, kind: Kind| parse(body.as_bytes(), kind).expect_err("refused").field;
        assert_eq!(
            field(r#"{"messages":[]}"#, Kind::Chat).as_deref(),
            Some("model")
        );
        assert_eq!(
            field(
                r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                Kind::Chat
            )
            .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            field(r#"{"model":"m","messages":[],"tools":[{}]}"#, Kind::Chat).as_deref(),
            Some("tools[0].type")
        );
        assert_eq!(
            field(r#"{"model":"m","prompt":"p","tools":[]}"#, Kind::Text).as_deref(),
            Some("tools")
        );
        assert_eq!(
            field(r#"{"model":"m","messages":[],"functions":[]}"#, Kind::Chat).as_deref(),
            Some("functions")
        );
        assert_eq!(
            field(r#"{"model":"m","messages":[],"logprobs":3}"#, Kind::Chat).as_deref(),
            Some("logprobs")
        );
        assert_eq!(
            field(
                r#"{"model":"m","messages":[],"top_logprobs":3}"#,
                Kind::Chat
            )
            .as_deref(),
            Some("top_logprobs")
        );
        assert!(
            parse(br#"{"model":"m","prompt":"p","logprobs":0}"#, Kind::Text).is_ok(),
            "logprobs 0 asks for none"
        );
        assert_eq!(
            field(r#"{"model":"m","messages":[],"n":2}"#, Kind::Chat).as_deref(),
            Some("n")
        );
        assert_eq!(
            field(r#"{"model":"hf:a/b/c.gguf","messages":[]}"#, Kind::Chat).as_deref(),
            Some("model")
        );
        assert_eq!(
            field(r#"{"model":"m","prompt":["a","b"]}"#, Kind::Text).as_deref(),
            Some("prompt")
        );
        assert_eq!(
            field(
                r#"{"model":"m","prompt":"p","temperature":"hot"}"#,
                Kind::Text
            )
            .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            field(
                r#"{"model":"m","prompt":"p","response_format":{"type":"json_schema"}}"#,
                Kind::Text
            )
            .as_deref(),
            Some("response_format.json_schema.schema")
        );
        assert!(parse(b"[1]", Kind::Text).is_err_and(|e| e.code == ErrorCode::InvalidParams));
    }
}
