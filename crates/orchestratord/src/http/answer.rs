//! What the OpenAI, Responses and Anthropic handlers share: admitting a task mapped from their
//! bodies (the same validation, core message and durable admission as `/v2/tasks`), the guard that
//! cancels it when the client goes away, reading its frames, and merging tool-call pieces.

use std::convert::Infallible;
use std::sync::Arc;

use api::events::Event;
use api::{ErrorCode, ErrorEnvelope};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use daemon::correlation::CorrelationId;

use super::App;
use crate::core::runner::Msg;
use crate::core::tasks::CancelReason;
use crate::core::TaskLog;

/// Validates and submits `req` for `caller`'s tenant; returns the task id, its log and a guard that cancels the task
/// (reason `disconnect`) if dropped before the answer is complete.
pub async fn admit(
    app: &App,
    cid: &CorrelationId,
    caller: super::Caller,
    req: api::task::TaskRequest,
) -> Result<(api::TaskId, Arc<TaskLog>, Guard), ErrorEnvelope> {
    let v = crate::admission::ValidatedTask {
        tenant: caller.tenant,
        ..crate::admission::validate(req, &app.cfg)?
    };
    let result = app
        .core
        .ask(|reply| Msg::Submit {
            v: Box::new(v),
            correlation_id: cid.0.clone(),
            reply,
        })
        .await
        .ok_or_else(|| ErrorEnvelope::new(api::ErrorCode::Internal, "shutting down"))?;
    let (adm, log) = super::durable_admission(app, result).await?;
    let guard = Guard {
        app: app.clone(),
        task: adm.task_id,
        done: false,
    };
    Ok((adm.task_id, log, guard))
}

/// Cancels the task (reason `disconnect`) when the client goes away before its end.
pub struct Guard {
    app: App,
    task: api::TaskId,
    pub done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            self.app.core.send(Msg::Cancel {
                id: self.task,
                reason: CancelReason::Disconnect,
                scope: crate::core::tenants::Scope::All,
                reply: tx,
            });
        }
    }
}

/// Waits for the next frames of a log from `next`.
pub async fn next_frames(log: &TaskLog, next: usize) -> (Vec<Event>, bool) {
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

/// One API's answer to a task (Responses, Anthropic Messages): it turns the task's frames into that
/// API's streamed events and, fed the same frames, into the whole answer, so both forms agree.
pub trait Answer: Send + 'static {
    /// The events that open a stream.
    fn start(&mut self) -> String;
    /// Folds one frame into the answer; returns the streamed events it makes.
    fn feed(&mut self, ev: &Event) -> String;
    /// The error the task ended with, once.
    fn take_failure(&mut self) -> Option<ErrorEnvelope>;
    /// The whole answer, once the task has ended normally.
    fn whole(&self) -> Option<Response>;
}

/// Answers a task admitted by [`admit`]: as a server-sent event stream of `b`'s events when
/// `stream`, otherwise as `b`'s whole answer once the task ends (or `error`'s shape of its
/// failure). Either way the response names the task in `x-llorch-task-id`.
pub async fn respond<A: Answer>(
    task: api::TaskId,
    log: Arc<TaskLog>,
    guard: Guard,
    b: A,
    stream: bool,
    error: fn(ErrorEnvelope) -> Response,
) -> Response {
    let mut resp = if stream {
        events(log, guard, b)
    } else {
        whole(log, guard, b, error).await
    };
    if let Ok(v) = HeaderValue::from_str(&task.to_string()) {
        resp.headers_mut().insert("x-llorch-task-id", v);
    }
    resp
}

/// The streamed form: the opening events, then each batch of frames' events as they come.
fn events<A: Answer>(log: Arc<TaskLog>, guard: Guard, mut b: A) -> Response {
    let prologue = b.start();
    let s = futures::stream::unfold(
        (log, guard, b, 0usize, Some(prologue)),
        |(log, mut guard, mut b, next, prologue)| async move {
            if let Some(p) = prologue {
                return Some((
                    Ok::<_, Infallible>(Bytes::from(p)),
                    (log, guard, b, next, None),
                ));
            }
            if guard.done {
                return None;
            }
            let (frames, closed) = next_frames(&log, next).await;
            let n = next + frames.len();
            let mut out = String::new();
            for f in &frames {
                out.push_str(&b.feed(f));
                if f.is_terminal() {
                    guard.done = true;
                }
            }
            if closed {
                guard.done = true;
            }
            if out.is_empty() && guard.done {
                return None;
            }
            Some((Ok(Bytes::from(out)), (log, guard, b, n, None)))
        },
    );
    let mut resp = Response::new(Body::from_stream(s));
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// The whole form: reads frames until the task ends.
async fn whole<A: Answer>(
    log: Arc<TaskLog>,
    mut guard: Guard,
    mut b: A,
    error: fn(ErrorEnvelope) -> Response,
) -> Response {
    let mut next = 0;
    loop {
        let (frames, closed) = next_frames(&log, next).await;
        next += frames.len();
        for f in &frames {
            b.feed(f);
        }
        if let Some(e) = b.take_failure() {
            guard.done = true;
            return error(e);
        }
        if let Some(resp) = b.whole() {
            guard.done = true;
            return resp;
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

/// Merges streamed tool-call pieces into whole calls, by index.
#[derive(Default)]
pub struct CallMerger {
    pub calls: Vec<api::tools::ToolCall>,
}

impl CallMerger {
    pub fn push(&mut self, d: &api::tools::ToolCallDelta) {
        let i = d.index as usize;
        while self.calls.len() <= i {
            self.calls.push(api::tools::ToolCall {
                id: String::new(),
                kind: api::tools::FunctionKind::Function,
                function: api::tools::FunctionCall {
                    name: String::new(),
                    arguments: String::new(),
                },
            });
        }
        let c = &mut self.calls[i];
        if let Some(id) = &d.id {
            c.id.clone_from(id);
        }
        if let Some(n) = &d.name {
            c.function.name.push_str(n);
        }
        c.function.arguments.push_str(&d.arguments);
    }
}
