//! The OpenAI-compatible surface (API.md §11): `/v1/chat/completions`, `/v1/completions` and
//! `/v1/models`, mapped onto the same admission, queues, placement, cancellation and metrics as
//! `/v2/tasks`. Unknown request fields are ignored (OpenAI clients send many); errors use OpenAI's
//! shape with the status and backoff headers of the v2 envelope.

use std::convert::Infallible;
use std::sync::Arc;

use api::events::{Event, StopReason};
use api::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, ChatDelta, CompletionId, CompletionRequest, FinishReason, ModelEntry,
    ModelList, OpenAiError, OpenAiRole, ResponseFormatKind, StringOrArray, TextChoice,
    TextCompletion, TextCompletionChunk, Usage, REFUSED_FIELDS,
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

use super::{json_body, App};
use crate::core::runner::Msg;
use crate::core::tasks::CancelReason;
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
    headers: HeaderMap,
    body: Body,
) -> Response {
    complete(app, cid, headers, body, Kind::Chat).await
}

pub async fn completions(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    complete(app, cid, headers, body, Kind::Text).await
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
    headers: HeaderMap,
    body: Body,
    kind: Kind,
) -> Response {
    let bytes = match json_body(&headers, body, app.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e.0),
    };
    let (req, stream, include_usage) = match parse(&bytes, kind) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let model = req.model_ref.clone();
    let v = match crate::admission::validate(req, &app.cfg) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let Some(result) = app
        .core
        .ask(|reply| Msg::Submit {
            v: Box::new(v),
            correlation_id: cid.0.clone(),
            reply,
        })
        .await
    else {
        return error(ErrorEnvelope::new(ErrorCode::Internal, "shutting down"));
    };
    let (adm, log) = match super::durable_admission(&app, result).await {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let id = if kind == Kind::Chat {
        CompletionId::chat(adm.task_id)
    } else {
        CompletionId::text(adm.task_id)
    };
    let guard = Guard {
        app: app.clone(),
        task: adm.task_id,
        done: false,
    };
    let mut resp = if stream {
        streamed(log, guard, id, model, kind, include_usage)
    } else {
        whole(log, guard, id, model, kind).await
    };
    if let Ok(v) = HeaderValue::from_str(&adm.task_id.to_string()) {
        resp.headers_mut().insert("x-llorch-task-id", v);
    }
    resp
}

/// Parses an OpenAI body and maps it onto a task request; returns it with `stream` and
/// `include_usage`. Refused fields are checked on the raw object, then the typed body is read with
/// the path of the first bad field.
fn parse(bytes: &[u8], kind: Kind) -> Result<(TaskRequest, bool, bool), ErrorEnvelope> {
    let bad = |f: &str, msg: &str| ErrorEnvelope::invalid(f, msg);
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(bytes) else {
        return Err(ErrorEnvelope::new(
            ErrorCode::InvalidParams,
            "the body must be a JSON object",
        ));
    };
    for f in REFUSED_FIELDS {
        match (f, m.get(f)) {
            (_, None | Some(Value::Null)) => {}
            ("logprobs", Some(v)) if *v == Value::Bool(false) || v.as_u64() == Some(0) => {}
            ("logprobs", Some(_)) => return Err(bad(f, "logprobs are not supported")),
            (_, Some(_)) => return Err(bad(f, "tools and function calling are not supported")),
        }
    }
    // The sampling fields first, on their own: inside the flattened request serde loses their path.
    let v = Value::Object(m);
    serde_path_to_error::deserialize::<_, api::openai::OpenAiSampling>(&v)
        .map_err(crate::admission::invalid_body)?;
    let typed = match kind {
        Kind::Chat => serde_path_to_error::deserialize::<_, ChatCompletionRequest>(&v)
            .map(|r| (r.model, Input::Chat(r.messages), r.sampling)),
        Kind::Text => serde_path_to_error::deserialize::<_, CompletionRequest>(&v)
            .map(|r| (r.model, Input::Text(r.prompt), r.sampling)),
    };
    let (model, body, s) = typed.map_err(crate::admission::invalid_body)?;
    if model.is_empty() || model.contains(':') {
        return Err(bad("model", "must be a catalog model id"));
    }
    if s.n.is_some_and(|n| n != 1) {
        return Err(bad("n", "only n = 1 is supported"));
    }
    let mut req = TaskRequest::new(&model);
    match body {
        Input::Chat(msgs) => {
            let role = |r: OpenAiRole| match r {
                OpenAiRole::System | OpenAiRole::Developer => Role::System,
                OpenAiRole::User => Role::User,
                OpenAiRole::Assistant => Role::Assistant,
            };
            req.messages = Some(
                msgs.into_iter()
                    .map(|msg| Message {
                        role: role(msg.role),
                        content: msg.content.text(),
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
    let include_usage = s.stream_options.is_some_and(|o| o.include_usage);
    Ok((req, s.stream.unwrap_or(false), include_usage))
}

/// What the request asks to complete.
enum Input {
    Chat(Vec<api::openai::OpenAiMessage>),
    Text(StringOrArray),
}

fn finish_reason(r: StopReason) -> FinishReason {
    match r {
        StopReason::Eos | StopReason::StopWord | StopReason::Canceled => FinishReason::Stop,
        StopReason::Limit | StopReason::Deadline => FinishReason::Length,
    }
}

/// Cancels the task (reason `disconnect`) when the client goes away before its end.
struct Guard {
    app: App,
    task: api::TaskId,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            self.app.core.send(Msg::Cancel {
                id: self.task,
                reason: CancelReason::Disconnect,
                reply: tx,
            });
        }
    }
}

/// Waits for the next frames of a log from `next`.
async fn next_frames(log: &TaskLog, next: usize) -> (Vec<Event>, bool) {
    let mut watch = log.watch();
    loop {
        let (frames, closed) = log.read_from(next);
        if !frames.is_empty() || closed {
            return (frames, closed);
        }
        if watch.changed().await.is_err() {
            return (vec![], true);
        }
    }
}

async fn whole(
    log: Arc<TaskLog>,
    mut guard: Guard,
    id: CompletionId,
    model: String,
    kind: Kind,
) -> Response {
    let mut text = String::new();
    let mut fingerprint = None;
    let mut next = 0;
    loop {
        let (frames, closed) = next_frames(&log, next).await;
        next += frames.len();
        for f in frames {
            match f {
                Event::Started(s) => fingerprint = s.engine_version,
                Event::Token(t) => text.push_str(&t.t),
                Event::End(e) => {
                    guard.done = true;
                    let usage = Usage::new(e.tokens_in, e.tokens_out).cached(e.tokens_cached);
                    let finish_reason = finish_reason(e.stop_reason);
                    let (created, system_fingerprint) = (daemon::now_ms() / 1000, fingerprint);
                    return match kind {
                        Kind::Chat => {
                            let message = AssistantMessage {
                                role: "assistant".into(),
                                content: text,
                            };
                            let choices = vec![ChatChoice {
                                index: 0,
                                message,
                                finish_reason,
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
                                logprobs: None,
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
    Text(&'a str),
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
            Piece::Role | Piece::Text(_) => (None, None),
        };
        let json = match self {
            Chunks::Chat(c) => {
                let delta = match piece {
                    Piece::Role => ChatDelta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                    },
                    Piece::Text(t) => ChatDelta {
                        role: None,
                        content: Some(t.to_string()),
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
                    }]
                };
                c.usage = usage;
                serde_json::to_string(c)
            }
            Chunks::Text(c) => {
                let text = if let Piece::Text(t) = piece {
                    t.to_string()
                } else {
                    String::new()
                };
                c.choices = if usage.is_some() {
                    vec![]
                } else {
                    vec![TextChoice {
                        index: 0,
                        text,
                        finish_reason,
                        logprobs: None,
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
) -> Response {
    let state = (
        log,
        guard,
        0usize,
        kind == Kind::Chat,
        Chunks::new(kind, id, model),
        false,
    );
    let stream = futures::stream::unfold(
        state,
        move |(log, mut guard, next, first, mut chunks, done)| async move {
            if done {
                return None;
            }
            if first {
                let line = chunks.line(Piece::Role);
                return Some((
                    Ok::<_, Infallible>(Bytes::from(line)),
                    (log, guard, next, false, chunks, false),
                ));
            }
            let (frames, closed) = next_frames(&log, next).await;
            let n = next + frames.len();
            let mut out = String::new();
            let mut finished = closed;
            for f in frames {
                match f {
                    Event::Started(s) => chunks.set_fingerprint(s.engine_version),
                    Event::Token(t) => out.push_str(&chunks.line(Piece::Text(&t.t))),
                    Event::End(e) => {
                        guard.done = true;
                        out.push_str(&chunks.line(Piece::Finish(finish_reason(e.stop_reason))));
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
                (log, guard, n, false, chunks, finished),
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
        parse(body.as_bytes(), Kind::Chat)
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
        let tok = data(&c.line(Piece::Text("hi")));
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
        let after = data(&c.line(Piece::Text("x")));
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
        let tok = data(&c.line(Piece::Text("hi")));
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
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                Kind::Chat
            )
            .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            field(r#"{"model":"m","messages":[],"tools":[{}]}"#, Kind::Chat).as_deref(),
            Some("tools")
        );
        assert_eq!(
            field(r#"{"model":"m","messages":[],"logprobs":true}"#, Kind::Chat).as_deref(),
            Some("logprobs")
        );
        assert_eq!(
            field(r#"{"model":"m","prompt":"p","logprobs":2}"#, Kind::Text).as_deref(),
            Some("logprobs")
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
