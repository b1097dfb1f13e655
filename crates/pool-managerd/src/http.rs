//! pool-managerd's worker API (API.md §13): dispatch, cancel, pool list and health. Every route but
//! `/health` needs orchestratord's dispatch token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use api::worker::{DispatchRequest, WorkerEvent, WorkerLine, WorkerPoolsResponse};
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
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::adapter::TaskRun;
use crate::config::Config;
use crate::pools::Inflight;

pub struct App {
    pub config: Config,
    pub pools: crate::pools::PoolSet,
    pub tracker: tokio_util::task::TaskTracker,
    /// Cancelled when the daemon stops accepting dispatches.
    pub closing: CancellationToken,
    pub book: Arc<crate::commands::CommandBook>,
    /// The node's models cache (fetches, verification, eviction).
    pub cache: models::ModelCache,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v2/pools/{pool_id}/dispatch", post(dispatch))
        .route("/v2/pools/{pool_id}/tasks/{task_id}/cancel", post(cancel))
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
    if !app.config.dispatch_token.matches(&token) {
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
        serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "node_id": app.config.node_id.to_string() }),
    )
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut resp = crate::metrics::render(&app).into_response();
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
    let pool = app.pools.get(&pool_id).ok_or_else(|| {
        ErrorEnvelope::new(
            ErrorCode::NotFound,
            format!("no pool {pool_id} on this node"),
        )
    })?;
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
    let pool = app.pools.get(pool_id).ok_or_else(|| {
        ErrorEnvelope::new(
            ErrorCode::NotFound,
            format!("no pool {pool_id} on this node"),
        )
    })?;
    let id = api::CommandId::new();
    app.book.receive(&id);
    pool.commands
        .send(make(id))
        .map_err(|_| ErrorEnvelope::new(ErrorCode::PoolUnready, "the pool is shutting down"))?;
    let state = pool.snapshot.borrow().state;
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
    let pool = app.pools.get(&pool_id).ok_or_else(|| {
        ErrorEnvelope::new(
            ErrorCode::NotFound,
            format!("no pool {pool_id} on this node"),
        )
    })?;
    if req.protocol_version != api::PROTOCOL_VERSION {
        return Err(ErrorEnvelope::invalid(
            "protocol_version",
            format!(
                "unsupported protocol_version {}; supported: [1]",
                req.protocol_version
            ),
        )
        .into());
    }
    if req.node_id != app.config.node_id || req.pool_id != pool_id.as_str() {
        return Err(ErrorEnvelope::invalid(
            "pool_id",
            "node_id/pool_id do not match this node and path",
        )
        .into());
    }
    if req.engine != api::ENGINE_LLAMACPP {
        return Err(ErrorEnvelope::invalid(
            "engine",
            format!("this pool runs llamacpp, not {}", req.engine),
        )
        .into());
    }
    let current = pool.snapshot.borrow().model.clone();
    let Some(current) = current.filter(|c| {
        c.id == req.model.id
            && (req.model.digest.is_none() || c.digest.is_none() || req.model.digest == c.digest)
    }) else {
        return Err(ErrorEnvelope::new(
            ErrorCode::ModelNotAvailable,
            format!("pool {pool_id} does not serve {}", req.model.id),
        )
        .with_retriable(true)
        .into());
    };
    if app.closing.is_cancelled() {
        return Err(
            ErrorEnvelope::new(ErrorCode::PoolUnready, "this node is shutting down")
                .with_pool(&req.pool_id)
                .into(),
        );
    }
    let snap = pool.snapshot.borrow().clone();
    let (Some(client), api::node::PoolState::Ready) = (snap.client.clone(), snap.state) else {
        return Err(ErrorEnvelope::new(
            ErrorCode::PoolUnready,
            format!("pool {pool_id} is {}", snap.state.as_str()),
        )
        .with_pool(&req.pool_id)
        .into());
    };
    let cancel = CancellationToken::new();
    let lost = CancellationToken::new();
    let (released_tx, released_rx) = watch::channel(false);
    let permit = {
        let mut inflight = pool.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.contains_key(&req.task_id) {
            return Err(ErrorEnvelope::new(
                ErrorCode::Conflict,
                format!("task {} is already running on this node", req.task_id),
            )
            .into());
        }
        let permit = pool.slots.clone().try_acquire_owned().map_err(|_| {
            ErrorEnvelope::new(
                ErrorCode::ReplicaExhausted,
                format!("pool {pool_id} has no free slot"),
            )
            .with_pool(&req.pool_id)
            .with_retry_after(1000)
        })?;
        inflight.insert(
            req.task_id.clone(),
            Inflight {
                cancel: cancel.clone(),
                lost: lost.clone(),
                released: released_rx,
                tokens_evaluated: 0,
                tokens_out: 0,
                generation: snap.generation,
            },
        );
        permit
    };
    tracing::info!(event = "dispatch.accepted", correlation_id = %cid.0, task_id = %req.task_id, pool_id = %pool_id, node_id = %app.config.node_id,
        attempt = req.attempt, "Accepted task {} for pool {pool_id} (attempt {})", req.task_id, req.attempt);
    let (tx, rx) = mpsc::channel::<WorkerEvent>(64);
    let task_id = req.task_id.clone();
    let run = TaskRun {
        pool: pool.clone(),
        client,
        engine_version: snap.engine_version.clone().unwrap_or_default(),
        model: current,
        req,
        tx,
        cancel,
        lost,
        idle_timeout: app.config.engine.idle_timeout,
        cancel_confirm: app.config.engine.cancel_confirm,
    };
    app.tracker.spawn(async move {
        run.run().await;
        pool.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task_id);
        drop(permit);
        let _ = released_tx.send(true);
    });
    Ok(ndjson(rx))
}

/// The NDJSON body: one line per event with `seq`, and a keepalive after 5 s of silence.
fn ndjson(rx: mpsc::Receiver<WorkerEvent>) -> Response {
    let state = (rx, 0u64, false);
    let stream = futures::stream::unfold(state, |(mut rx, seq, done)| async move {
        if done {
            return None;
        }
        let event = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => return None,
            Err(_) => WorkerEvent::Keepalive,
        };
        let terminal = event.is_terminal();
        let mut line = serde_json::to_vec(&WorkerLine { seq, event }).unwrap_or_default();
        line.push(b'\n');
        Some((
            Ok::<_, Infallible>(Bytes::from(line)),
            (rx, seq + 1, terminal),
        ))
    });
    let mut resp = Response::new(Body::from_stream(stream));
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
    let pool = app.pools.get(&pool_id).ok_or_else(|| {
        ErrorEnvelope::new(
            ErrorCode::NotFound,
            format!("no pool {pool_id} on this node"),
        )
    })?;
    let released = {
        let inflight = pool.inflight.lock().unwrap_or_else(|e| e.into_inner());
        match task_id
            .parse::<api::TaskId>()
            .ok()
            .and_then(|t| inflight.get(&t))
        {
            Some(i) => {
                i.cancel.cancel();
                i.released.clone()
            }
            None => return Ok(StatusCode::NO_CONTENT),
        }
    };
    tracing::info!(event = "command.received", correlation_id = %cid.0, task_id = %task_id, pool_id = %pool_id, "Cancel requested for task {task_id}");
    let mut released = released;
    let confirmed =
        tokio::time::timeout(app.config.engine.cancel_confirm, released.wait_for(|r| *r)).await;
    Ok(if matches!(confirmed, Ok(Ok(_))) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::ACCEPTED
    })
}
