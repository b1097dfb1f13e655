//! pool-managerd's worker API (API.md §13): dispatch, cancel, pool list and health. Every route but
//! `/health` and `/metrics` needs orchestratord's dispatch token. Handlers check a dispatch
//! against the pool's spec and ask the pool's supervisor for a slot; they never touch an engine
//! process.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use api::worker::{DispatchRequest, WorkerPoolsResponse};
use api::{ErrorCode, ErrorEnvelope};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use daemon::correlation::{CorrelationId, Identity};
use daemon::errors::ApiError;

use crate::adapter::TaskRun;
use crate::frames::{Attachment, Lookup};
use crate::node::Node;
use crate::pools::{Pool, Refusal};

type App = Node;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v2/pools/{pool_id}/dispatch", post(dispatch))
        .route("/v2/pools/{pool_id}/tasks/{task_id}/cancel", post(cancel))
        .route(
            "/v2/pools/{pool_id}/tokenize",
            post(crate::tokenize::tokenize),
        )
        .route("/v2/pools", get(pools))
        .route("/v2/pools/{pool_id}", get(pool_status))
        .route("/v2/pools/{pool_id}/drain", post(local_drain))
        .route("/v2/pools/{pool_id}/reload", post(local_reload))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(app)
        .layer(axum::middleware::from_fn(daemon::correlation::layer))
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(token) = daemon::secret::bearer(header.as_deref()).map(str::to_string) else {
        return ApiError(ErrorEnvelope::new(
            ErrorCode::MissingToken,
            "this route needs the dispatch token as a Bearer token",
        ))
        .into_response();
    };
    if !app.dispatch_token.matches(&token) {
        return ApiError(ErrorEnvelope::new(
            ErrorCode::BadToken,
            "the token is not this node's dispatch token",
        ))
        .into_response();
    }
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(Identity(format!(
        "token:{}",
        daemon::secret::fingerprint(&token)
    )));
    resp
}

async fn not_found() -> ApiError {
    ApiError(ErrorEnvelope::new(ErrorCode::NotFound, "no such route"))
}

async fn health(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "node_id": app.node_id.to_string() }),
    )
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let samples: Vec<_> = app.pools.all().iter().map(|p| p.sample()).collect();
    let gpus = crate::gpu::discover_off_runtime().await;
    let c = app.frames.counters();
    let tasks = crate::metrics::TaskSample {
        detached: c.detached.load(Ordering::Relaxed).max(0) as u64,
        reattached: c.reattached.load(Ordering::Relaxed),
        grace_expired: c.grace_expired.load(Ordering::Relaxed),
    };
    let mut resp =
        crate::metrics::render(app.node_id.as_str(), &samples, &tasks, &gpus).into_response();
    resp.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

async fn pools(State(app): State<Arc<App>>) -> Json<WorkerPoolsResponse> {
    Json(WorkerPoolsResponse {
        pools: app.pools.all().iter().map(|p| p.status()).collect(),
    })
}

async fn pool_status(
    State(app): State<Arc<App>>,
    Path(pool_id): Path<String>,
) -> Result<Json<api::node::PoolStatus>, ApiError> {
    let pool = app.pools.named(&pool_id)?;
    Ok(Json(pool.status()))
}

/// Local drain (the same work as orchestratord's drain command), for operators on the node.
async fn local_drain(
    State(app): State<Arc<App>>,
    Path(pool_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<api::node::PoolCommandAccepted>), ApiError> {
    let req: api::node::DrainRequest = if body.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ErrorEnvelope::invalid("", format!("invalid drain body: {e}")))?
    };
    let deadline = Duration::from_millis(req.deadline_ms.unwrap_or(60_000));
    local_command(&app, &pool_id, |id| crate::commands::PoolCommand::Drain {
        id,
        deadline,
    })
}

/// Local reload of the pool's own model (returns a drained pool to service).
async fn local_reload(
    State(app): State<Arc<App>>,
    Path(pool_id): Path<String>,
) -> Result<(StatusCode, Json<api::node::PoolCommandAccepted>), ApiError> {
    local_command(&app, &pool_id, |id| crate::commands::PoolCommand::Load {
        id,
        model: None,
    })
}

fn local_command(
    app: &App,
    pool_id: &str,
    make: impl FnOnce(api::CommandId) -> crate::commands::PoolCommand,
) -> Result<(StatusCode, Json<api::node::PoolCommandAccepted>), ApiError> {
    let pool = app.pools.named(pool_id)?;
    let id = api::CommandId::new();
    app.book.receive(&id);
    pool.command(make(id))
        .map_err(|e| ErrorEnvelope::new(ErrorCode::PoolUnready, e.to_string()))?;
    let state = pool.status().state;
    Ok((
        StatusCode::ACCEPTED,
        Json(api::node::PoolCommandAccepted {
            pool_id: pool.spec.id.clone(),
            command_id: id,
            state,
        }),
    ))
}

async fn dispatch(
    State(app): State<Arc<App>>,
    Path(pool_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let cid = CorrelationId::from_headers(&headers);
    let req: DispatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ErrorEnvelope::invalid("", format!("invalid dispatch body: {e}")))?;
    let pool = app.pools.named(&pool_id)?;
    check_dispatch(&req, &app.node_id, &pool)?;
    let epoch = fence(&app, &headers)?;
    if app.closing.is_cancelled() {
        return Err(
            ErrorEnvelope::new(ErrorCode::PoolUnready, "this node is shutting down")
                .with_pool(&req.pool_id)
                .into(),
        );
    }
    // With an epoch, a dispatch of a task this node runs (or ran) attaches to it.
    if let Some(epoch) = epoch {
        match app
            .frames
            .lookup(&req.task_id, req.attempt, &pool.spec.id, epoch)
        {
            Lookup::Fresh if headers.contains_key(api::REATTACH_HEADER) => {
                return Err(ErrorEnvelope::new(
                    ErrorCode::NotFound,
                    format!(
                        "task {} attempt {} is not known on this node",
                        req.task_id, req.attempt
                    ),
                )
                .into())
            }
            Lookup::Fresh => {}
            Lookup::Attach(a) => return Ok(ndjson(a)),
            Lookup::Refused(status, env) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT);
                return Ok((status, Json(env)).into_response());
            }
        }
    }
    let admission = pool
        .admit(&req.task_id, &req.model)
        .await
        .map_err(|r| refusal(r, &pool.spec.id, &req))?;
    tracing::info!(event = "dispatch.accepted", correlation_id = %cid.0, task_id = %req.task_id, pool_id = %pool_id, node_id = %app.node_id,
        attempt = req.attempt, "Accepted task {} for pool {pool_id} (attempt {})", req.task_id, req.attempt);
    let task_id = req.task_id;
    let (out, attached) = app.frames.start(
        task_id,
        req.attempt,
        pool.spec.id.clone(),
        epoch,
        admission.cancel.clone(),
    );
    let run = TaskRun {
        pool: pool.clone(),
        client: admission.client,
        engine_version: admission.engine_version,
        model: admission.model,
        meter: admission.meter,
        req,
        out: out.clone(),
        cancel: admission.cancel,
        lost: admission.lost,
        idle_timeout: app.idle_timeout,
        cancel_confirm: app.cancel_confirm,
    };
    let frames = app.frames.clone();
    app.tracker.spawn(async move {
        let end = run.run().await;
        pool.release(&task_id, end);
        frames.finish(&out);
    });
    Ok(ndjson(attached))
}

/// The epoch of a request from orchestratord (`x-llorch-epoch`), checked against the highest seen:
/// a lower one is refused with STALE_EPOCH. No header (embedded mode): not fenced.
fn fence(app: &App, headers: &HeaderMap) -> Result<Option<u64>, ErrorEnvelope> {
    let Some(raw) = headers.get(api::EPOCH_HEADER) else {
        return Ok(None);
    };
    let epoch = raw
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ErrorEnvelope::invalid(
                api::EPOCH_HEADER,
                format!("{} must be an unsigned integer", api::EPOCH_HEADER),
            )
        })?;
    app.frames
        .fence(Some(epoch))
        .map_err(|highest| crate::frames::stale(epoch, highest))?;
    Ok(Some(epoch))
}

/// The checks of §13.2 that need no supervisor: protocol, placement facts, engine, and a `ctx`
/// that fits the pool's slots (0 means the task named none).
fn check_dispatch(
    req: &DispatchRequest,
    node_id: &api::NodeId,
    pool: &Pool,
) -> Result<(), ErrorEnvelope> {
    let pool_id = &pool.spec.id;
    ErrorEnvelope::check_protocol(req.protocol_version)?;
    if req.node_id != *node_id || req.pool_id != *pool_id {
        return Err(ErrorEnvelope::invalid(
            "pool_id",
            "node_id/pool_id do not match this node and path",
        ));
    }
    if req.engine != api::ENGINE_LLAMACPP {
        return Err(ErrorEnvelope::invalid(
            "engine",
            format!("this pool runs llamacpp, not {}", req.engine),
        ));
    }
    let embed = matches!(req.input, api::worker::DispatchInput::Embed { .. });
    if embed != (pool.spec.workload == api::task::Workload::Embedding) {
        return Err(ErrorEnvelope::invalid(
            "input",
            format!(
                "pool {pool_id} serves {} tasks",
                pool.spec.workload.as_str()
            ),
        ));
    }
    if req.params.ctx > pool.spec.ctx_per_slot {
        return Err(ErrorEnvelope::invalid(
            "ctx",
            format!(
                "ctx {} exceeds the {} tokens per slot of pool {pool_id}",
                req.params.ctx, pool.spec.ctx_per_slot
            ),
        ));
    }
    Ok(())
}

/// The §13.2 answer for a dispatch the supervisor did not admit.
fn refusal(r: Refusal, pool_id: &api::PoolId, req: &DispatchRequest) -> ErrorEnvelope {
    match r {
        Refusal::ModelNotServed => ErrorEnvelope::new(
            ErrorCode::ModelNotAvailable,
            format!(
                "pool {pool_id} does not serve {}{}",
                req.model.id,
                req.model
                    .digest
                    .as_deref()
                    .map(|d| format!(" with digest {d}"))
                    .unwrap_or_default()
            ),
        )
        .with_retriable(true),
        Refusal::Unready(state) => ErrorEnvelope::new(
            ErrorCode::PoolUnready,
            format!("pool {pool_id} is {}", state.as_str()),
        )
        .with_pool(&req.pool_id),
        Refusal::Duplicate => ErrorEnvelope::new(
            ErrorCode::Conflict,
            format!("task {} is already running on this node", req.task_id),
        ),
        Refusal::Exhausted => ErrorEnvelope::new(
            ErrorCode::ReplicaExhausted,
            format!("pool {pool_id} has no free slot"),
        )
        .with_pool(&req.pool_id)
        .with_retry_after(1000),
    }
}

/// The dispatch response: the task's NDJSON lines from seq 0, then live (see [`crate::frames`]).
fn ndjson(attached: Attachment) -> Response {
    let mut resp = Response::new(Body::from_stream(attached.into_stream()));
    resp.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

async fn cancel(
    State(app): State<Arc<App>>,
    Path((pool_id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let cid = CorrelationId::from_headers(&headers);
    let pool = app.pools.named(&pool_id)?;
    fence(&app, &headers)?;
    // A task id that is not a UUID names no task here: nothing to cancel, as for an unknown one.
    let Ok(task) = task_id.parse::<api::TaskId>() else {
        return Ok(StatusCode::NO_CONTENT);
    };
    let Some(released) = pool.cancel(&task).await else {
        return Ok(StatusCode::NO_CONTENT);
    };
    tracing::info!(event = "command.received", correlation_id = %cid.0, task_id = %task_id, pool_id = %pool_id, "Cancel requested for task {task_id}");
    let mut released = released;
    let confirmed = tokio::time::timeout(app.cancel_confirm, released.wait_for(|r| *r)).await;
    Ok(if matches!(confirmed, Ok(Ok(_))) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::ACCEPTED
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pools::runner::Msg;
    use api::worker::{DispatchInput, DispatchParams, WorkerEvent, WorkerLine};
    use axum::http::Request as HttpRequest;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    const TOKEN: &str = "dispatch-token-dispatch-token-0123";

    fn node(pools: &[Arc<Pool>]) -> Arc<Node> {
        node_with(pools, Default::default())
    }

    fn node_with(pools: &[Arc<Pool>], tasks: crate::config::TaskRetention) -> Arc<Node> {
        let set = crate::pools::PoolSet::default();
        for p in pools {
            set.insert(p.clone());
        }
        Arc::new(Node {
            node_id: "n1".parse().unwrap(),
            dispatch_token: daemon::secret::Secret::new(TOKEN),
            idle_timeout: Duration::from_secs(5),
            cancel_confirm: Duration::from_millis(200),
            pools: Arc::new(set),
            book: Default::default(),
            frames: Arc::new(crate::frames::Frames::new(tasks)),
            tracker: Default::default(),
            closing: Default::default(),
        })
    }

    /// The task id of the dispatches in these tests.
    const T1: &str = "00000000-0000-4000-8000-000000000001";

    fn dispatch_body(ctx: u64, edit: impl FnOnce(&mut DispatchRequest)) -> Vec<u8> {
        let mut req = DispatchRequest {
            protocol_version: api::PROTOCOL_VERSION,
            attempt: 1,
            task_id: T1.parse().unwrap(),
            session_id: T1.parse().unwrap(),
            correlation_id: "c1".parse().unwrap(),
            node_id: "n1".parse().unwrap(),
            pool_id: "p1".parse().unwrap(),
            model: api::worker::DispatchModel {
                id: "m1".parse().unwrap(),
                digest: None,
            },
            engine: api::ENGINE_LLAMACPP.into(),
            input: DispatchInput::Prompt {
                prompt: "hi".into(),
            },
            params: DispatchParams {
                max_tokens: 4,
                ctx,
                sampling: Default::default(),
            },
            deadline_remaining_ms: None,
            priority: api::task::Priority::Interactive,
            resume: None,
            id_slot: None,
        };
        edit(&mut req);
        serde_json::to_vec(&req).unwrap()
    }

    async fn send(
        app: &Arc<Node>,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Bytes) {
        let mut req = HttpRequest::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = router(app.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, bytes)
    }

    /// Checks an error answer: status and code (and `field` when given).
    fn check(answer: (StatusCode, Bytes), status: u16, code: ErrorCode, field: Option<&str>) {
        let env: ErrorEnvelope = serde_json::from_slice(&answer.1)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&answer.1)));
        assert_eq!(
            (answer.0.as_u16(), env.code, env.field.as_deref()),
            (status, code, field),
            "{}",
            env.message
        );
    }

    /// Plays the runner: answers the first admit with `refusal`.
    fn refuse_next(mut rx: mpsc::UnboundedReceiver<Msg>, refusal: Refusal) {
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Msg::Admit { reply, .. } = msg {
                    let _ = reply.send(Err(refusal));
                    return;
                }
            }
        });
    }

    #[tokio::test]
    async fn routes_need_the_dispatch_token_but_health_does_not() {
        let app = node(&[]);
        let path = "/v2/pools";
        check(
            send(&app, "GET", path, None, vec![]).await,
            401,
            ErrorCode::MissingToken,
            None,
        );
        check(
            send(&app, "GET", path, Some("wrong"), vec![]).await,
            401,
            ErrorCode::BadToken,
            None,
        );
        assert_eq!(send(&app, "GET", path, Some(TOKEN), vec![]).await.0, 200);
        assert_eq!(send(&app, "GET", "/health", None, vec![]).await.0, 200);
        check(
            send(
                &app,
                "POST",
                "/v2/pools/nope/dispatch",
                Some(TOKEN),
                dispatch_body(0, |_| {}),
            )
            .await,
            404,
            ErrorCode::NotFound,
            None,
        );
    }

    #[tokio::test]
    async fn dispatch_refusals_before_the_supervisor() {
        let (pool, _rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = node(&[pool]);
        let path = "/v2/pools/p1/dispatch";
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                dispatch_body(0, |r| r.protocol_version = 9),
                "protocol_version",
            ),
            (
                dispatch_body(0, |r| r.node_id = "n2".parse().unwrap()),
                "pool_id",
            ),
            (dispatch_body(0, |r| r.engine = "vllm".into()), "engine"),
            // §13.2: a ctx beyond the pool's 1024 tokens per slot.
            (dispatch_body(1025, |_| {}), "ctx"),
            (b"{".to_vec(), ""),
        ];
        for (body, field) in cases {
            let answer = send(&app, "POST", path, Some(TOKEN), body).await;
            check(answer, 400, ErrorCode::InvalidParams, Some(field));
        }
        app.closing.cancel();
        check(
            send(&app, "POST", path, Some(TOKEN), dispatch_body(1024, |_| {})).await,
            503,
            ErrorCode::PoolUnready,
            None,
        );
    }

    #[tokio::test]
    async fn supervisor_refusals_map_to_their_codes() {
        let cases = [
            (Refusal::ModelNotServed, 503, ErrorCode::ModelNotAvailable),
            (
                Refusal::Unready(api::node::PoolState::Draining),
                503,
                ErrorCode::PoolUnready,
            ),
            (Refusal::Duplicate, 409, ErrorCode::Conflict),
            (Refusal::Exhausted, 503, ErrorCode::ReplicaExhausted),
        ];
        for (refusal, status, code) in cases {
            let (pool, rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
            let app = node(&[pool]);
            refuse_next(rx, refusal);
            let body = dispatch_body(512, |_| {});
            let answer = send(&app, "POST", "/v2/pools/p1/dispatch", Some(TOKEN), body).await;
            check(answer, status, code, None);
        }
    }

    #[tokio::test]
    async fn an_admitted_dispatch_streams_to_a_terminal_line_and_releases_its_slot() {
        let (pool, mut rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = node(&[pool]);
        let runner = tokio::spawn(async move {
            let mut released = None;
            while let Some(msg) = rx.recv().await {
                match msg {
                    Msg::Admit { reply, .. } => {
                        // Nothing listens on port 1: the engine is unreachable.
                        let client = engine::EngineClient::new(
                            "http://127.0.0.1:1",
                            engine::ApiKey::from_secret("k".into()),
                        )
                        .unwrap();
                        let _ = reply.send(Ok(admission(client, Default::default())));
                    }
                    Msg::Release { task, end } => {
                        released = Some((task, end.ok));
                        break;
                    }
                    _ => {}
                }
            }
            released
        });
        let body = dispatch_body(512, |_| {});
        let (status, lines) = send(&app, "POST", "/v2/pools/p1/dispatch", Some(TOKEN), body).await;
        assert_eq!(status, 200);
        let lines: Vec<WorkerLine> = lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            matches!(
                &lines[0].event,
                WorkerEvent::Error {
                    code: ErrorCode::PoolUnavailable,
                    retriable: true,
                    ..
                }
            ),
            "{lines:?}"
        );
        assert_eq!(runner.await.unwrap(), Some((T1.parse().unwrap(), false)));
    }

    #[tokio::test]
    async fn local_drain_sends_the_command_to_the_pool() {
        let (pool, mut rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = node(&[pool]);
        let body = br#"{"deadline_ms": 1500}"#.to_vec();
        let (status, answer) = send(&app, "POST", "/v2/pools/p1/drain", Some(TOKEN), body).await;
        assert_eq!(status, 202);
        let accepted: api::node::PoolCommandAccepted = serde_json::from_slice(&answer).unwrap();
        match rx.recv().await {
            Some(Msg::Command(crate::commands::PoolCommand::Drain { id, deadline })) => {
                assert_eq!(id, accepted.command_id);
                assert_eq!(deadline, Duration::from_millis(1500));
            }
            _ => panic!("no drain reached the pool"),
        }
    }

    #[tokio::test]
    async fn cancel_of_an_unknown_task_is_204() {
        let (pool, mut rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = node(&[pool]);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Msg::Cancel { reply, .. } = msg {
                    let _ = reply.send(None);
                }
            }
        });
        let (status, _) = send(
            &app,
            "POST",
            "/v2/pools/p1/tasks/t9/cancel",
            Some(TOKEN),
            vec![],
        )
        .await;
        assert_eq!(status, 204);
    }

    fn admission(
        client: engine::EngineClient,
        cancel: tokio_util::sync::CancellationToken,
    ) -> crate::pools::Admission {
        crate::pools::Admission {
            client,
            engine_version: "b1".into(),
            model: crate::pools::ModelInfo {
                id: "m1".parse().unwrap(),
                model_ref: "file:/m1.gguf".into(),
                path: "/m1.gguf".into(),
                digest: None,
                size_bytes: None,
                metadata: None,
            },
            generation: 1,
            cancel,
            lost: Default::default(),
            meter: Default::default(),
        }
    }

    /// A stand-in engine: `/completion` streams the `data:` payloads the test sends (one request
    /// per engine), `/slots` shows one busy slot while that stream is open.
    struct TestEngine {
        url: String,
        frames: mpsc::UnboundedSender<String>,
    }

    impl TestEngine {
        async fn start() -> Self {
            use std::sync::atomic::AtomicUsize;
            struct Busy(Arc<AtomicUsize>);
            impl Drop for Busy {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let (tx, rx) = mpsc::unbounded_channel::<String>();
            let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
            let busy = Arc::new(AtomicUsize::new(0));
            let slots_busy = busy.clone();
            let router = Router::new()
                .route(
                    "/completion",
                    post(move || {
                        let rx = rx.lock().unwrap().take().expect("one request per engine");
                        busy.fetch_add(1, Ordering::SeqCst);
                        let guard = Busy(busy.clone());
                        let stream = futures::stream::unfold((rx, guard), |(mut rx, g)| async {
                            let data = rx.recv().await?;
                            let chunk = Bytes::from(format!("data: {data}\n\n"));
                            Some((Ok::<_, std::convert::Infallible>(chunk), (rx, g)))
                        });
                        async move { Body::from_stream(stream) }
                    }),
                )
                .route(
                    "/slots",
                    get(move || {
                        let busy = slots_busy.load(Ordering::SeqCst) > 0;
                        async move { Json(serde_json::json!([{"id": 0, "is_processing": busy}])) }
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, router).await });
            Self { url, frames: tx }
        }

        fn token(&self, t: &str) {
            let frame = serde_json::json!({"content": t, "tokens": [1], "stop": false});
            self.frames.send(frame.to_string()).unwrap();
        }

        fn stop(&self, tokens: u64) {
            let frame = serde_json::json!({"content": "", "stop": true, "stop_type": "limit",
                "tokens_evaluated": 2, "tokens_predicted": tokens});
            self.frames.send(frame.to_string()).unwrap();
        }
    }

    type Releases = mpsc::UnboundedReceiver<(api::TaskId, bool)>;
    type Cancels = Arc<std::sync::Mutex<Vec<tokio_util::sync::CancellationToken>>>;

    /// Plays the runner: admits every dispatch onto the engine at `url`, cancels on request, and
    /// reports each release (task, ok). Also returns the admitted tasks' cancel tokens.
    fn admit_all(mut rx: mpsc::UnboundedReceiver<Msg>, url: String) -> (Releases, Cancels) {
        let (released_tx, released) = mpsc::unbounded_channel();
        let cancels: Cancels = Default::default();
        let tokens = cancels.clone();
        tokio::spawn(async move {
            let mut tasks = std::collections::HashMap::new();
            while let Some(msg) = rx.recv().await {
                match msg {
                    Msg::Admit { task, reply, .. } => {
                        let client = engine::EngineClient::new(
                            &url,
                            engine::ApiKey::from_secret("k".into()),
                        )
                        .unwrap();
                        let cancel = tokio_util::sync::CancellationToken::new();
                        tokens.lock().unwrap().push(cancel.clone());
                        let (done, _) = tokio::sync::watch::channel(false);
                        tasks.insert(task, (cancel.clone(), done));
                        let _ = reply.send(Ok(admission(client, cancel)));
                    }
                    Msg::Cancel { task, reply } => {
                        let answer = tasks.get(&task).map(|(c, done)| {
                            c.cancel();
                            done.subscribe()
                        });
                        let _ = reply.send(answer);
                    }
                    Msg::Release { task, end } => {
                        if let Some((_, done)) = tasks.remove(&task) {
                            let _ = done.send(true);
                        }
                        let _ = released_tx.send((task, end.ok));
                    }
                    _ => {}
                }
            }
        });
        (released, cancels)
    }

    /// Opens a dispatch of T1 (`attempt`) with `epoch`; the status and the body.
    async fn open(
        app: &Arc<Node>,
        epoch: Option<u64>,
        attempt: u32,
    ) -> (StatusCode, axum::body::BodyDataStream) {
        let mut req = HttpRequest::builder()
            .method("POST")
            .uri("/v2/pools/p1/dispatch")
            .header("authorization", format!("Bearer {TOKEN}"));
        if let Some(e) = epoch {
            req = req.header(api::EPOCH_HEADER, e.to_string());
        }
        let body = dispatch_body(512, |r| r.attempt = attempt);
        let resp = router(app.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        (resp.status(), resp.into_body().into_data_stream())
    }

    /// Reads `body` until it holds `n` lines (`usize::MAX`: to its end); the lines as text.
    async fn lines(body: &mut axum::body::BodyDataStream, n: usize) -> Vec<String> {
        use futures::StreamExt;
        let mut buf = Vec::new();
        while buf.iter().filter(|b| **b == b'\n').count() < n {
            let next = tokio::time::timeout(Duration::from_secs(30), body.next()).await;
            match next.expect("a line within 30 s") {
                Some(chunk) => buf.extend_from_slice(&chunk.unwrap()),
                None => break,
            }
        }
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn parsed(lines: &[String]) -> Vec<WorkerLine> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn counts(app: &Node) -> (i64, u64, u64) {
        let c = app.frames.counters();
        (
            c.detached.load(Ordering::SeqCst),
            c.reattached.load(Ordering::SeqCst),
            c.grace_expired.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn epochs_fence_dispatch_and_cancel_and_no_header_is_not_fenced() {
        let (pool, rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = node(&[pool]);
        let _runner = admit_all(rx, "http://127.0.0.1:1".into());
        let cancel = |epoch: Option<u64>| {
            let mut req = HttpRequest::builder()
                .method("POST")
                .uri(format!("/v2/pools/p1/tasks/{T1}/cancel"))
                .header("authorization", format!("Bearer {TOKEN}"));
            if let Some(e) = epoch {
                req = req.header(api::EPOCH_HEADER, e.to_string());
            }
            let app = app.clone();
            async move {
                let resp = router(app)
                    .oneshot(req.body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = resp.status();
                (
                    status,
                    axum::body::to_bytes(resp.into_body(), 1 << 20)
                        .await
                        .unwrap(),
                )
            }
        };
        assert_eq!(cancel(Some(5)).await.0, 204);
        check(cancel(Some(4)).await, 409, ErrorCode::StaleEpoch, None);
        assert_eq!(cancel(None).await.0, 204, "no header: not fenced");
        assert_eq!(cancel(Some(5)).await.0, 204, "the same epoch passes");
        let (status, mut body) = open(&app, Some(3), 1).await;
        let answer = (
            status,
            Bytes::from(lines(&mut body, usize::MAX).await.concat()),
        );
        check(answer, 409, ErrorCode::StaleEpoch, None);
        let mut req = HttpRequest::builder()
            .method("POST")
            .uri("/v2/pools/p1/dispatch")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header(api::EPOCH_HEADER, "nine");
        req = req.header("content-type", "application/json");
        let resp = router(app.clone())
            .oneshot(req.body(Body::from(dispatch_body(512, |_| {}))).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        check(
            (status, bytes),
            400,
            ErrorCode::InvalidParams,
            Some(api::EPOCH_HEADER),
        );
    }

    /// A new leader asking for the stream of a task it saw finish attaches or is told the node
    /// does not know it; it never starts the task.
    #[tokio::test]
    async fn an_attach_only_dispatch_of_an_unknown_task_is_not_found_and_starts_nothing() {
        let (pool, rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = node(&[pool]);
        let _runner = admit_all(rx, "http://127.0.0.1:1".into());
        let req = HttpRequest::builder()
            .method("POST")
            .uri("/v2/pools/p1/dispatch")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header(api::EPOCH_HEADER, "7")
            .header(api::REATTACH_HEADER, "1")
            .header("content-type", "application/json");
        let resp = router(app.clone())
            .oneshot(req.body(Body::from(dispatch_body(512, |_| {}))).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        check((status, bytes), 404, ErrorCode::NotFound, None);
        assert_eq!(
            app.frames
                .counters()
                .reattached
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    /// A newer epoch closes the old leader's stream; the run goes on, and a dispatch of the same
    /// (task, attempt) replays its lines from seq 0, byte for byte, then follows live; after the
    /// end the whole stream can still be read.
    #[tokio::test]
    async fn a_dispatch_with_an_epoch_attaches_again_and_replays_from_seq_0() {
        let engine = TestEngine::start().await;
        let (pool, rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = node(&[pool]);
        let (mut released, _) = admit_all(rx, engine.url.clone());
        let (status, mut old) = open(&app, Some(7), 1).await;
        assert_eq!(status, 200);
        engine.token("Hel");
        engine.token("lo");
        let seen = lines(&mut old, 3).await;
        let (status, mut new) = open(&app, Some(8), 1).await;
        assert_eq!(status, 200);
        assert!(
            lines(&mut old, usize::MAX).await.is_empty(),
            "the stream of epoch 7 ends (without a terminal line) once epoch 8 attaches"
        );
        assert_eq!(
            lines(&mut new, 3).await,
            seen,
            "the replay is byte-identical"
        );
        drop(new);
        assert_eq!(
            counts(&app),
            (1, 1, 0),
            "detached once, attached again once"
        );
        let (status, mut again) = open(&app, Some(8), 1).await;
        assert_eq!(status, 200);
        assert_eq!(counts(&app), (0, 2, 0));
        assert_eq!(lines(&mut again, 3).await, seen);
        engine.token(" world");
        engine.stop(3);
        let mut all = seen.clone();
        all.extend(lines(&mut again, usize::MAX).await);
        let parsed = parsed(&all);
        let seqs: Vec<u64> = parsed.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, (0..5).collect::<Vec<_>>(), "{all:?}");
        let text: String = parsed
            .iter()
            .filter_map(|l| match &l.event {
                WorkerEvent::Token { t, .. } => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Hello world");
        assert!(matches!(parsed[0].event, WorkerEvent::Started { .. }));
        assert!(
            matches!(
                parsed[4].event,
                WorkerEvent::End {
                    stop_reason: api::events::StopReason::Limit,
                    ..
                }
            ),
            "{all:?}"
        );
        assert_eq!(released.recv().await, Some((T1.parse().unwrap(), true)));
        // Finished: the same attempt reads the whole stream again; a stale epoch cannot.
        let (status, mut after) = open(&app, Some(8), 1).await;
        assert_eq!(status, 200);
        assert_eq!(lines(&mut after, usize::MAX).await, all);
        let (status, _) = open(&app, Some(6), 1).await;
        assert_eq!(status, 409);
        let (_, page) = send(&app, "GET", "/metrics", None, vec![]).await;
        let page = String::from_utf8_lossy(&page);
        for want in [
            "worker_tasks_detached{node_id=\"n1\"} 0",
            "worker_tasks_reattached_total{node_id=\"n1\"} 3",
            "worker_tasks_grace_expired_total{node_id=\"n1\"} 0",
        ] {
            assert!(page.contains(want), "{want} in {page}");
        }
    }

    /// Past the grace period the task is canceled (its slot released) and tombstoned: the same
    /// (task, attempt) gets 410 WORKER_RESET, not retriable.
    #[tokio::test]
    async fn a_detached_task_is_canceled_after_the_grace_period_and_tombstoned() {
        let engine = TestEngine::start().await;
        let (pool, rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let tasks = crate::config::TaskRetention {
            grace: Duration::from_millis(50),
            ..Default::default()
        };
        let app = node_with(&[pool], tasks);
        let (mut released, cancels) = admit_all(rx, engine.url.clone());
        let (status, mut body) = open(&app, Some(1), 1).await;
        assert_eq!(status, 200);
        engine.token("a");
        assert_eq!(lines(&mut body, 2).await.len(), 2);
        drop(body);
        assert!(
            !cancels.lock().unwrap()[0].is_cancelled(),
            "with an epoch, a dropped stream does not cancel at once"
        );
        assert_eq!(released.recv().await, Some((T1.parse().unwrap(), true)));
        assert!(cancels.lock().unwrap()[0].is_cancelled());
        assert_eq!(counts(&app), (0, 0, 1));
        let (status, mut body) = open(&app, Some(1), 1).await;
        let answer = (
            status,
            Bytes::from(lines(&mut body, usize::MAX).await.concat()),
        );
        let env: ErrorEnvelope = serde_json::from_slice(&answer.1).unwrap();
        assert_eq!(
            (answer.0.as_u16(), env.code, env.retriable),
            (410, ErrorCode::WorkerReset, false)
        );
        assert!(
            env.message.contains("50 ms grace period"),
            "{}",
            env.message
        );
    }

    /// Without an epoch (embedded mode) a dropped dispatch stream cancels the task at once.
    #[tokio::test]
    async fn without_an_epoch_a_dropped_stream_cancels_at_once() {
        let engine = TestEngine::start().await;
        let (pool, rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = node(&[pool]);
        let (mut released, cancels) = admit_all(rx, engine.url.clone());
        let (status, mut body) = open(&app, None, 1).await;
        assert_eq!(status, 200);
        engine.token("a");
        assert_eq!(lines(&mut body, 2).await.len(), 2);
        drop(body);
        assert!(cancels.lock().unwrap()[0].is_cancelled());
        assert_eq!(released.recv().await, Some((T1.parse().unwrap(), true)));
        assert_eq!(counts(&app), (0, 0, 0));
    }
}
