//! What the OpenAI, Responses and Anthropic handlers share: admitting a task mapped from their
//! bodies (the same validation, core message and durable admission as `/v2/tasks`), the guard that
//! cancels it when the client goes away, reading its frames, and merging tool-call pieces.

use std::sync::Arc;

use api::events::Event;
use api::ErrorEnvelope;
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
