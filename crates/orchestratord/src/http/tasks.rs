//! Task routes (API.md §4, §5): submit, record, cancel and the SSE event stream.

use std::convert::Infallible;
use std::sync::Arc;

use api::events::Event;
use api::{ErrorCode, ErrorEnvelope};
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use daemon::correlation::CorrelationId;
use daemon::errors::ApiError;

use super::{json_body, task_id, unavailable, App, Caller};
use crate::core::runner::{CoreHandle, Msg};
use crate::core::tasks::CancelReason;
use crate::core::TaskLog;

pub async fn submit(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let bytes = json_body(&headers, body, app.cfg.max_body_bytes).await?;
    let req = crate::admission::parse(&bytes)?;
    let mut v = crate::admission::validate(req, &app.cfg)?;
    v.tenant = caller.tenant;
    v.idempotency_key = idempotency_key;
    let result = app
        .core
        .ask(|reply| Msg::Submit {
            v: Box::new(v),
            correlation_id: cid.0.clone(),
            reply,
        })
        .await
        .ok_or_else(unavailable)?;
    let (resp, _log) = super::durable_admission(&app, result).await?;
    let location = format!("/v2/tasks/{}", resp.task_id);
    let mut r = (StatusCode::ACCEPTED, Json(resp)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert("location", v);
    }
    Ok(r)
}

/// The `Idempotency-Key` header: 1–255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ErrorEnvelope> {
    let Some(v) = headers.get(api::IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.to_string()))
        }
        _ => Err(ErrorEnvelope::invalid(
            "Idempotency-Key",
            "must be 1-255 visible ASCII characters",
        )),
    }
}

pub async fn get_task(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = task_id(&id)?;
    let scope = caller.scope();
    let rec = app
        .core
        .ask(|reply| Msg::Record { id, scope, reply })
        .await
        .ok_or_else(unavailable)?;
    match rec {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ErrorEnvelope::new(ErrorCode::NotFound, format!("no task {id}")).into()),
    }
}

pub async fn cancel(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = task_id(&id)?;
    let scope = caller.scope();
    let known = app
        .core
        .ask(|reply| Msg::Cancel {
            id,
            reason: CancelReason::Client,
            scope,
            reply,
        })
        .await
        .ok_or_else(unavailable)?;
    if known {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ErrorEnvelope::new(ErrorCode::NotFound, format!("no task {id}")).into())
    }
}

pub async fn get_session(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError(ErrorEnvelope::new(
            ErrorCode::NotFound,
            format!("no session {id}"),
        ))
    };
    let sid: api::SessionId = id.parse().map_err(|_| not_found())?;
    let view = app
        .core
        .ask(|reply| Msg::Session {
            id: sid,
            scope: caller.scope(),
            reply,
        })
        .await
        .ok_or_else(unavailable)?;
    view.map(|v| Json(v).into_response()).ok_or_else(not_found)
}

/// Deletes the caller's own session (an admin's: any); another tenant's is left alone, with the
/// same 204, so ids leak nothing.
pub async fn delete_session(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> StatusCode {
    if let Ok(sid) = id.parse::<api::SessionId>() {
        app.core.send(Msg::DeleteSession {
            id: sid,
            scope: caller.scope(),
        });
    }
    StatusCode::NO_CONTENT
}

/// A boolean query parameter (`verbose`, `observe`): `true` or `false`, at most once; other
/// parameters are ignored.
fn flag(query: Option<&str>, name: &'static str) -> Result<bool, ApiError> {
    let values: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            kv.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('=').or(rest.is_empty().then_some("")))
        })
        .collect();
    match values.as_slice() {
        [] | ["false"] => Ok(false),
        ["true"] => Ok(true),
        [one] => Err(ErrorEnvelope::invalid(name, format!("{one:?} is not true or false")).into()),
        _ => Err(ErrorEnvelope::invalid(name, "given more than once").into()),
    }
}

pub async fn events(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = task_id(&id)?;
    let verbose = flag(query.as_deref(), "verbose")?;
    // An observer (the dashboard's task view) does not count as a subscriber, so closing it never
    // cancels the task (§5.4's disconnect rule is for the client that waits on the task).
    let observe = flag(query.as_deref(), "observe")?;
    let from = match headers
        .get("last-event-id")
        .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
    {
        None => 0,
        Some(Some(n)) => n as usize + 1,
        Some(None) => {
            return Err(ErrorEnvelope::invalid("Last-Event-ID", "must be a frame id").into())
        }
    };
    let log = app
        .core
        .ask(|reply| Msg::Log {
            id,
            scope: caller.scope(),
            reply,
        })
        .await
        .ok_or_else(unavailable)?;
    let log = log.ok_or_else(|| {
        ApiError(ErrorEnvelope::new(
            ErrorCode::NotFound,
            format!("no task {id}"),
        ))
    })?;
    // A resume past the end of a finished log still gets the terminal frame, under the next id
    // the client expects: after an HA takeover that could not reattach a task, the new leader's
    // log is shorter than what the client read from its predecessor.
    if let Some((_, last)) = log.terminal().filter(|(len, _)| from >= *len) {
        return Ok(sse_response(Body::from(frame(from, &last))));
    }
    let sub = Subscription::new(log, app.core.clone(), id, !observe);
    let state = (
        sub,
        from,
        false,
        daemon::quiet::Quiet::new(app.cfg.keepalive),
    );
    let stream = futures::stream::unfold(state, move |(sub, mut next, done, mut quiet)| {
        let closing = app.closing.clone();
        async move {
            if done {
                return None;
            }
            let mut watch = sub.log.watch();
            loop {
                let (frames, closed) = sub.log.read_from(next);
                if !frames.is_empty() {
                    let mut chunk = String::new();
                    for (k, ev) in frames.iter().enumerate() {
                        if let Some(ev) = ev.for_subscriber(verbose) {
                            chunk.push_str(&frame(next + k, &ev));
                        }
                    }
                    let n = next + frames.len();
                    let finished = closed && n >= sub.log.len();
                    if chunk.is_empty() && !finished {
                        next = n;
                        continue;
                    }
                    quiet.touch();
                    return Some((
                        Ok::<_, Infallible>(Bytes::from(chunk)),
                        (sub, n, finished, quiet),
                    ));
                }
                if closed {
                    return None;
                }
                // An HA leader that shuts down ends its streams so clients resume on the next
                // leader with `Last-Event-ID`.
                let closed_down = async {
                    match &closing {
                        Some(c) => c.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = watch.changed() => match r {
                        Ok(()) => continue,
                        Err(_) => return None,
                    },
                    _ = closed_down => return None,
                    _ = quiet.elapsed() => {
                        return Some((
                            Ok(Bytes::from_static(b": keepalive\n\n")),
                            (sub, next, false, quiet),
                        ));
                    }
                }
            }
        }
    });
    Ok(sse_response(Body::from_stream(stream)))
}

fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn frame(id: usize, ev: &Event) -> String {
    format!(
        "id: {id}\nevent: {}\ndata: {}\n\n",
        ev.name(),
        ev.data_json()
    )
}

/// Counts a subscriber while the response body lives; tells the core when the last one leaves.
struct Subscription {
    log: Arc<TaskLog>,
    core: CoreHandle,
    id: api::TaskId,
    /// False for an observer, which is not counted.
    counted: bool,
}

impl Subscription {
    fn new(log: Arc<TaskLog>, core: CoreHandle, id: api::TaskId, counted: bool) -> Self {
        if counted {
            log.subscribe();
        }
        Self {
            log,
            core,
            id,
            counted,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.counted && self.log.unsubscribe() == 0 {
            self.core.send(Msg::SubscriberGone { id: self.id });
        }
    }
}

/// `GET /v2/tasks`: retained tasks, newest first; `limit` 1–5000 (default 500).
pub async fn list(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<api::cluster::TasksResponse>, ApiError> {
    let limit = list_limit(query.as_deref())?;
    let scope = caller.scope();
    let tasks = app
        .core
        .ask(|reply| Msg::Tasks {
            limit,
            scope,
            reply,
        })
        .await
        .ok_or_else(unavailable)?;
    Ok(Json(api::cluster::TasksResponse { tasks }))
}

/// The `limit` query parameter of `GET /v2/tasks`; other parameters are ignored.
fn list_limit(query: Option<&str>) -> Result<usize, ApiError> {
    let values: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("limit="))
        .collect();
    match values.as_slice() {
        [] => Ok(500),
        [one] => match one.parse::<usize>() {
            Ok(n) if (1..=5000).contains(&n) => Ok(n),
            _ => Err(ErrorEnvelope::invalid(
                "limit",
                format!("{one:?} is not a number from 1 to 5000"),
            )
            .into()),
        },
        _ => Err(ErrorEnvelope::invalid("limit", "given more than once").into()),
    }
}
