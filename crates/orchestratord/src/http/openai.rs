//! The OpenAI-compatible surface (API.md §11): `/v1/chat/completions`, `/v1/completions` and
//! `/v1/models`, mapped onto the same admission, queues, placement, cancellation and metrics as
//! `/v2/tasks`. Unknown request fields are ignored (OpenAI clients send many); errors use OpenAI's
//! shape with the status and backoff headers of the v2 envelope.

use std::convert::Infallible;
use std::sync::Arc;

use api::events::{Event, StopReason};
use api::task::{Message, Priority, Role, TaskRequest};
use api::{ErrorCode, ErrorEnvelope};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use daemon::correlation::CorrelationId;
use serde_json::{json, Value};

use super::{json_body, App};
use crate::core::runner::Msg;
use crate::core::tasks::CancelReason;
use crate::core::TaskLog;

/// An error in OpenAI's shape, with the HTTP status and headers of the v2 envelope.
pub fn error(env: ErrorEnvelope) -> Response {
    let kind = match env.http_status() {
        401 => "authentication_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({ "error": { "message": env.message, "type": kind, "param": env.field, "code": env.code.as_str() } });
    let mut resp = daemon::errors::ApiError(env).into_response();
    *resp.body_mut() = Body::from(body.to_string());
    resp
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

pub async fn chat(State(app): State<App>, Extension(cid): Extension<CorrelationId>, headers: HeaderMap, body: Body) -> Response {
    complete(app, cid, headers, body, Kind::Chat).await
}

pub async fn completions(State(app): State<App>, Extension(cid): Extension<CorrelationId>, headers: HeaderMap, body: Body) -> Response {
    complete(app, cid, headers, body, Kind::Text).await
}

pub async fn models(State(app): State<App>) -> Response {
    let Some(models) = app.core.call(|core, _| core.listed_models()).await else { return error(ErrorEnvelope::new(ErrorCode::Internal, "shutting down")) };
    let data: Vec<Value> = models.iter().map(|(id, created)| json!({ "id": id, "object": "model", "created": created, "owned_by": "llama-orch" })).collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

async fn complete(app: App, cid: CorrelationId, headers: HeaderMap, body: Body, kind: Kind) -> Response {
    let bytes = match json_body(&headers, body, app.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e.0),
    };
    let parsed = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => m,
        _ => return error(ErrorEnvelope::new(ErrorCode::InvalidParams, "the body must be a JSON object")),
    };
    let (req, stream, include_usage) = match map_request(&parsed, kind) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let model = req.model_ref.clone();
    let v = match crate::admission::validate(req, &app.cfg) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let Some(result) = app.core.ask(|reply| Msg::Submit { v, correlation_id: cid.0.clone(), reply }).await else {
        return error(ErrorEnvelope::new(ErrorCode::Internal, "shutting down"));
    };
    let (adm, log) = match result {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let id = format!("{}-{}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, adm.task_id);
    let guard = Guard { app: app.clone(), task: adm.task_id, done: false };
    let mut resp = if stream { streamed(log, guard, id, model, kind, include_usage) } else { whole(log, guard, id, model, kind).await };
    if let Ok(v) = HeaderValue::from_str(&adm.task_id.to_string()) {
        resp.headers_mut().insert("x-llorch-task-id", v);
    }
    resp
}

/// Maps an OpenAI body onto a task request; returns it with `stream` and `include_usage`.
fn map_request(m: &serde_json::Map<String, Value>, kind: Kind) -> Result<(TaskRequest, bool, bool), ErrorEnvelope> {
    let bad = |f: &str, msg: &str| ErrorEnvelope::invalid(f, msg);
    let model = m.get("model").and_then(Value::as_str).ok_or_else(|| bad("model", "required, a catalog model id"))?;
    if model.contains(':') {
        return Err(bad("model", "must be a catalog model id"));
    }
    let mut req = TaskRequest::new(model);
    for f in ["tools", "tool_choice", "functions"] {
        if m.get(f).is_some_and(|v| !v.is_null()) {
            return Err(bad(f, "tools and function calling are not supported"));
        }
    }
    if m.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(bad("logprobs", "logprobs are not supported"));
    }
    if m.get("n").is_some_and(|n| n.as_u64() != Some(1)) {
        return Err(bad("n", "only n = 1 is supported"));
    }
    match kind {
        Kind::Chat => {
            let msgs = m.get("messages").and_then(Value::as_array).ok_or_else(|| bad("messages", "required, an array"))?;
            let mut out = vec![];
            for (i, msg) in msgs.iter().enumerate() {
                let role = match msg.get("role").and_then(Value::as_str) {
                    Some("system") | Some("developer") => Role::System,
                    Some("user") => Role::User,
                    Some("assistant") => Role::Assistant,
                    _ => return Err(bad(&format!("messages[{i}].role"), "must be system, user or assistant")),
                };
                out.push(Message { role, content: content_text(msg.get("content")).ok_or_else(|| bad(&format!("messages[{i}].content"), "must be a string or text parts"))? });
            }
            req.messages = Some(out);
        }
        Kind::Text => match m.get("prompt") {
            Some(Value::String(p)) => req.prompt = Some(p.clone()),
            Some(Value::Array(_)) => return Err(bad("prompt", "arrays of prompts are not supported; send one string")),
            _ => return Err(bad("prompt", "required, a string")),
        },
    }
    let num = |f: &str| -> Result<Option<f64>, ErrorEnvelope> {
        match m.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(f, "must be a number")),
        }
    };
    let int = |f: &str| -> Result<Option<u64>, ErrorEnvelope> {
        match m.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| bad(f, "must be a non-negative integer")),
        }
    };
    req.max_tokens = int("max_completion_tokens")?.or(int("max_tokens")?);
    req.temperature = num("temperature")?;
    req.top_p = num("top_p")?;
    req.seed = int("seed")?;
    req.top_k = int("top_k")?;
    req.min_p = num("min_p")?;
    req.repeat_penalty = num("repeat_penalty")?;
    req.stop = match m.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().map(|s| s.as_str().map(str::to_string).ok_or_else(|| bad("stop", "must be strings"))).collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("stop", "must be a string or an array of strings")),
    };
    if let Some(g) = m.get("grammar") {
        req.grammar = Some(g.as_str().ok_or_else(|| bad("grammar", "must be a string"))?.to_string());
    }
    if let Some(rf) = m.get("response_format").filter(|v| !v.is_null()) {
        match rf.get("type").and_then(Value::as_str) {
            Some("json_schema") => req.json_schema = Some(rf.pointer("/json_schema/schema").cloned().ok_or_else(|| bad("response_format.json_schema.schema", "required"))?),
            Some("json_object") => req.json_schema = Some(json!({ "type": "object" })),
            Some("text") => {}
            _ => return Err(bad("response_format.type", "must be text, json_object or json_schema")),
        }
    }
    req.priority = Priority::Interactive;
    let stream = m.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = m.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    Ok((req, stream, include_usage))
}

/// A message's content: a string, or an array of `{type: "text", text}` parts.
fn content_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts.iter().map(|p| p.get("text").and_then(Value::as_str).map(str::to_string)).collect::<Option<Vec<_>>>().map(|v| v.concat()),
        _ => None,
    }
}

fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::Eos | StopReason::StopWord => "stop",
        StopReason::Limit | StopReason::Deadline => "length",
        StopReason::Canceled => "stop",
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
            self.app.core.send(Msg::Cancel { id: self.task, reason: CancelReason::Disconnect, reply: tx });
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

async fn whole(log: Arc<TaskLog>, mut guard: Guard, id: String, model: String, kind: Kind) -> Response {
    let mut text = String::new();
    let mut next = 0;
    loop {
        let (frames, closed) = next_frames(&log, next).await;
        next += frames.len();
        for f in frames {
            match f {
                Event::Token(t) => text.push_str(&t.t),
                Event::End(e) => {
                    guard.done = true;
                    let usage = json!({ "prompt_tokens": e.tokens_in, "completion_tokens": e.tokens_out, "total_tokens": e.tokens_in + e.tokens_out });
                    let fr = finish_reason(e.stop_reason);
                    let created = daemon::now_ms() / 1000;
                    let body = match kind {
                        Kind::Chat => json!({ "id": id, "object": "chat.completion", "created": created, "model": model,
                            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": fr }], "usage": usage }),
                        Kind::Text => json!({ "id": id, "object": "text_completion", "created": created, "model": model,
                            "choices": [{ "index": 0, "text": text, "finish_reason": fr, "logprobs": null }], "usage": usage }),
                    };
                    return Json(body).into_response();
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
            return error(ErrorEnvelope::new(ErrorCode::Internal, "the task ended without a result"));
        }
    }
}

fn streamed(log: Arc<TaskLog>, guard: Guard, id: String, model: String, kind: Kind, include_usage: bool) -> Response {
    let created = daemon::now_ms() / 1000;
    let object = if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |choice: Value, fingerprint: &Option<String>| -> String {
        let mut c = json!({ "id": id, "object": object, "created": created, "model": model, "choices": [choice] });
        if let Some(f) = fingerprint {
            c["system_fingerprint"] = json!(f);
        }
        format!("data: {c}\n\n")
    };
    let first = if kind == Kind::Chat { Some(json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null })) } else { None };
    let state = (log, guard, 0usize, first, None::<String>, false);
    let stream = futures::stream::unfold(state, move |(log, mut guard, next, first, fp, done)| {
        let chunk = chunk.clone();
        async move {
            if done {
                return None;
            }
            if let Some(f) = first {
                return Some((Ok::<_, Infallible>(Bytes::from(chunk(f, &fp))), (log, guard, next, None, fp, false)));
            }
            let (frames, closed) = next_frames(&log, next).await;
            let n = next + frames.len();
            let mut out = String::new();
            let mut fp = fp;
            let mut finished = closed;
            for f in frames {
                match f {
                    Event::Started(s) => fp = s.engine_version,
                    Event::Token(t) => out.push_str(&chunk(token_choice(kind, &t.t), &fp)),
                    Event::End(e) => {
                        guard.done = true;
                        let fr = finish_reason(e.stop_reason);
                        let last = if kind == Kind::Chat { json!({ "index": 0, "delta": {}, "finish_reason": fr }) } else { json!({ "index": 0, "text": "", "finish_reason": fr, "logprobs": null }) };
                        out.push_str(&chunk(last, &fp));
                        if include_usage {
                            let mut u: Value = serde_json::from_str(chunk(json!(null), &fp).trim_start_matches("data: ").trim()).unwrap_or(json!({}));
                            u["choices"] = json!([]);
                            u["usage"] = json!({ "prompt_tokens": e.tokens_in, "completion_tokens": e.tokens_out, "total_tokens": e.tokens_in + e.tokens_out });
                            out.push_str(&format!("data: {u}\n\n"));
                        }
                        out.push_str("data: [DONE]\n\n");
                        finished = true;
                    }
                    Event::Error(e) => {
                        guard.done = true;
                        out.push_str(&format!("data: {}\n\n", json!({ "error": { "message": e.message, "type": "server_error", "param": null, "code": e.code.as_str() } })));
                        finished = true;
                    }
                    _ => {}
                }
            }
            if out.is_empty() && finished {
                return None;
            }
            Some((Ok(Bytes::from(out)), (log, guard, n, None, fp, finished)))
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    *resp.status_mut() = StatusCode::OK;
    resp
}

fn token_choice(kind: Kind, t: &str) -> Value {
    match kind {
        Kind::Chat => json!({ "index": 0, "delta": { "content": t }, "finish_reason": null }),
        Kind::Text => json!({ "index": 0, "text": t, "finish_reason": null, "logprobs": null }),
    }
}
