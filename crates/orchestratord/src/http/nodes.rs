//! Node protocol routes (API.md §12) and the node list. Tokens are checked here because they depend
//! on the node id: the registration token, a per-node static token, or the issued credential.

use api::node::{HeartbeatRequest, NodesResponse, RegisterRequest};
use api::{ErrorCode, ErrorEnvelope};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use daemon::errors::ApiError;

use super::{json_body, unavailable, App};
use crate::core::nodes::NodeCaller;
use crate::core::runner::Msg;

fn bearer(headers: &HeaderMap) -> Option<String> {
    daemon::secret::bearer(headers.get("authorization").and_then(|v| v.to_str().ok()))
        .map(str::to_string)
}

fn missing() -> ApiError {
    ApiError(ErrorEnvelope::new(
        ErrorCode::MissingToken,
        "this route needs a node token (Authorization: Bearer …)",
    ))
}

fn bad() -> ApiError {
    ApiError(ErrorEnvelope::new(
        ErrorCode::BadToken,
        "the token is not valid for this node",
    ))
}

/// True when no node auth is configured at all (open mode, loopback only).
fn nodes_open(app: &App) -> bool {
    app.tokens().nodes_open()
}

pub async fn register(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<api::node::RegisterResponse>, ApiError> {
    let token = bearer(&headers);
    if token.is_none() && !nodes_open(&app) {
        return Err(missing());
    }
    let bytes = json_body(&headers, body, app.cfg.max_body_bytes).await?;
    let req: RegisterRequest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes))
            .map_err(crate::admission::invalid_body)?;
    let caller = match &token {
        None => NodeCaller::Open,
        Some(t) => match (
            app.tokens().node.get(req.node_id.as_str()).cloned(),
            app.tokens().registration.clone(),
        ) {
            (Some(s), _) if s.matches(t) => NodeCaller::Static(s),
            (_, Some(r)) if r.matches(t) => NodeCaller::Registration,
            _ if nodes_open(&app) => NodeCaller::Open,
            _ => return Err(bad()),
        },
    };
    let r = app
        .core
        .ask(|reply| Msg::Register { req, caller, reply })
        .await
        .ok_or_else(unavailable)?;
    Ok(Json(r?))
}

fn node_caller(app: &App, node_id: &str, headers: &HeaderMap) -> Result<NodeCaller, ApiError> {
    match bearer(headers) {
        None if nodes_open(app) => Ok(NodeCaller::Open),
        None => Err(missing()),
        Some(t) => match app.tokens().node.get(node_id) {
            Some(s) if s.matches(&t) => Ok(NodeCaller::Static(s.clone())),
            _ => Ok(NodeCaller::Bearer(t)),
        },
    }
}

pub async fn heartbeat(
    State(app): State<App>,
    Path(node_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<api::node::HeartbeatResponse>, ApiError> {
    let caller = node_caller(&app, &node_id, &headers)?;
    let bytes = json_body(&headers, body, app.cfg.max_body_bytes).await?;
    let hb: HeartbeatRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ErrorEnvelope::invalid("", format!("invalid heartbeat body: {e}")))?;
    let r = app
        .core
        .ask(|reply| Msg::Heartbeat {
            node_id,
            hb,
            caller,
            reply,
        })
        .await
        .ok_or_else(unavailable)?;
    Ok(Json(r?))
}

pub async fn deregister(
    State(app): State<App>,
    Path(node_id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    // An admin token may also remove a node (in open mode everyone is an admin).
    let tokens = app.tokens();
    let admin = tokens.open()
        || bearer(&headers)
            .as_deref()
            .and_then(|t| tokens.identify(t))
            .is_some_and(|c| c.role == api::tenant::Role::Admin);
    // A client's or viewer's valid token is not a node credential: 403, not 401.
    if !admin {
        if let Some(c) = bearer(&headers).as_deref().and_then(|t| tokens.identify(t)) {
            return Err(ApiError(ErrorEnvelope::new(
                ErrorCode::Forbidden,
                format!(
                    "removing a node needs the admin role or the node's credential; tenant {} is a {}",
                    c.tenant, c.role
                ),
            )));
        }
    }
    let caller = if admin {
        None
    } else {
        Some(node_caller(&app, &node_id, &headers)?)
    };
    let r = app
        .core
        .ask(|reply| Msg::Deregister {
            node_id,
            caller,
            reply,
        })
        .await
        .ok_or_else(unavailable)?;
    r?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(State(app): State<App>) -> Result<Json<NodesResponse>, ApiError> {
    let nodes = app
        .core
        .ask(|reply| Msg::Nodes { reply })
        .await
        .ok_or_else(unavailable)?;
    Ok(Json(NodesResponse {
        count: nodes.len(),
        nodes,
    }))
}
