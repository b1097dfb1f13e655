//! Health, metrics, version, capabilities and pool views (API.md §10, §16).

use api::meta::{
    EngineCapabilities, EngineFeatures, Health, MetaCapabilities, PoolHealth, PoolHealthMetrics,
    VersionInfo,
};
use api::node::{NodeStatus, PoolState, PoolsResponse};
use api::{ErrorCode, ErrorEnvelope};
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use daemon::errors::ApiError;

use super::{unavailable, App};
use crate::core::runner::Msg;

pub async fn health(State(app): State<App>) -> Json<Health> {
    let ha = app.cfg.ha();
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        role: ha.map(|_| "leader".into()),
        epoch: app.epoch,
        leader: ha.map(|h| h.advertise_url.clone()),
    })
}

pub async fn version() -> Json<VersionInfo> {
    Json(VersionInfo {
        api_version: api::API_VERSION.into(),
        protocol_version: api::PROTOCOL_VERSION,
        build_version: env!("CARGO_PKG_VERSION").into(),
        build_commit: option_env!("LLORCH_BUILD_COMMIT")
            .unwrap_or("unknown")
            .into(),
        build_time: option_env!("LLORCH_BUILD_TIME").unwrap_or("unknown").into(),
    })
}

pub async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    let extra = app
        .core
        .ask(|reply| Msg::ScrapeGauges { reply })
        .await
        .ok_or_else(unavailable)?;
    let mut resp = app.metrics.render(&extra).into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}

/// `GET /v2/tenants` (admin): every tenant's usage against its limits.
pub async fn tenants(
    State(app): State<App>,
) -> Result<Json<api::tenant::TenantsResponse>, ApiError> {
    let tenants = app
        .core
        .ask(|reply| Msg::Tenants { reply })
        .await
        .ok_or_else(unavailable)?;
    Ok(Json(api::tenant::TenantsResponse { tenants }))
}

pub async fn pools(State(app): State<App>) -> Result<Json<PoolsResponse>, ApiError> {
    let pools = app
        .core
        .ask(|reply| Msg::Pools { reply })
        .await
        .ok_or_else(unavailable)?;
    Ok(Json(PoolsResponse { pools }))
}

pub async fn pool_health(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<PoolHealth>, ApiError> {
    let pools = app
        .core
        .ask(|reply| Msg::Pools { reply })
        .await
        .ok_or_else(unavailable)?;
    let ages = app
        .core
        .ask(|reply| Msg::Nodes { reply })
        .await
        .ok_or_else(unavailable)?;
    let p = pools
        .into_iter()
        .find(|p| p.pool_id == id.as_str())
        .ok_or_else(|| {
            ApiError(ErrorEnvelope::new(
                ErrorCode::NotFound,
                format!("no pool {id}"),
            ))
        })?;
    let online = p.node_status == NodeStatus::Online;
    let last_heartbeat_ms = ages
        .iter()
        .find(|n| n.node_id == p.node_id)
        .map(|n| n.last_heartbeat_ms);
    Ok(Json(PoolHealth {
        live: online
            && matches!(
                p.state,
                PoolState::Starting | PoolState::Ready | PoolState::Draining
            ),
        ready: online && p.state == PoolState::Ready,
        draining: p.state == PoolState::Draining,
        state: p.state,
        last_error: p.last_error,
        last_heartbeat_ms,
        metrics: PoolHealthMetrics {
            queue_depth: p.queued,
            running: p.running,
            slots_total: p.slots_total,
            slots_free: p.slots_free,
        },
        pool_id: p.pool_id,
        node_id: p.node_id,
    }))
}

pub async fn capabilities(State(app): State<App>) -> Result<Json<MetaCapabilities>, ApiError> {
    let pools = app
        .core
        .ask(|reply| Msg::Pools { reply })
        .await
        .ok_or_else(unavailable)?;
    let ready: Vec<_> = pools
        .iter()
        .filter(|p| p.state == PoolState::Ready && p.node_status == NodeStatus::Online)
        .collect();
    let engines = if ready.is_empty() {
        vec![]
    } else {
        let mut engine_versions: Vec<String> = ready
            .iter()
            .filter_map(|p| p.engine_version.clone())
            .collect();
        engine_versions.sort();
        engine_versions.dedup();
        let mut models: Vec<api::ModelId> = ready
            .iter()
            .filter_map(|p| p.model.as_ref().map(|m| m.id.clone()))
            .collect();
        models.sort();
        models.dedup();
        vec![EngineCapabilities {
            engine: api::ENGINE_LLAMACPP.into(),
            engine_versions,
            ctx_max: ready.iter().map(|p| p.ctx_per_slot).max().unwrap_or(0),
            slots_total: ready.iter().map(|p| p.slots_total as u64).sum::<u64>(),
            models,
            supported_workloads: vec!["completion".into()],
            features: EngineFeatures {
                messages: true,
                grammar: true,
                json_schema: true,
                seed: true,
                stop: true,
            },
        }]
    };
    Ok(Json(MetaCapabilities {
        api_version: api::API_VERSION.into(),
        protocol_versions: vec![api::PROTOCOL_VERSION],
        engines,
    }))
}

/// Parses an optional strict JSON body (an empty body means the defaults).
pub(super) async fn small_body<T: serde::de::DeserializeOwned + Default>(
    app: &App,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<T, ApiError> {
    Ok(required_body::<Option<T>>(app, headers, body, true)
        .await?
        .unwrap_or_default())
}

/// Parses a strict JSON body; an empty one is 400 unless `allow_empty` (then JSON `null`).
pub(super) async fn required_body<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    allow_empty: bool,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, app.cfg.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError(ErrorEnvelope::new(
                ErrorCode::InvalidParams,
                "the body is too large",
            ))
        })?;
    if bytes.is_empty() {
        if allow_empty {
            return serde_json::from_str("null").map_err(|_| {
                ApiError(ErrorEnvelope::new(
                    ErrorCode::InvalidParams,
                    "a JSON body is required",
                ))
            });
        }
        return Err(ApiError(ErrorEnvelope::new(
            ErrorCode::InvalidParams,
            "a JSON body is required",
        )));
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(ApiError(ErrorEnvelope::new(
            ErrorCode::InvalidParams,
            "the body must be JSON (Content-Type: application/json)",
        )));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| ApiError(crate::admission::invalid_body(e)))
}

pub async fn drain(
    State(app): State<App>,
    Path(id): Path<String>,
    axum::Extension(cid): axum::Extension<daemon::correlation::CorrelationId>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let req: api::node::DrainRequest = small_body(&app, &headers, body).await?;
    let deadline_ms = req.deadline_ms.unwrap_or(60_000);
    let r = app
        .core
        .ask(|reply| Msg::Drain {
            pool_id: id,
            deadline_ms,
            correlation_id: cid.0.clone(),
            reply,
        })
        .await
        .ok_or_else(unavailable)??;
    Ok((axum::http::StatusCode::ACCEPTED, Json(r)).into_response())
}

pub async fn reload(
    State(app): State<App>,
    Path(id): Path<String>,
    axum::Extension(cid): axum::Extension<daemon::correlation::CorrelationId>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let req: api::node::ReloadRequest = small_body(&app, &headers, body).await?;
    if req.model_ref.is_empty() {
        return Err(ApiError(ErrorEnvelope::invalid("model_ref", "required")));
    }
    let model_ref = req.model_ref;
    let r = app
        .core
        .ask(|reply| Msg::Reload {
            pool_id: id,
            model_ref,
            correlation_id: cid.0.clone(),
            reply,
        })
        .await
        .ok_or_else(unavailable)?;
    let (r, durable) = r;
    durable.wait().await?;
    let r = r?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(r)).into_response())
}
