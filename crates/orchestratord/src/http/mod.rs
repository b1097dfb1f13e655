//! orchestratord's HTTP surface: the router, authentication (API.md §3.1) and body helpers. Handlers
//! talk to the core through [`CoreHandle`] messages; none of them holds core state.

mod catalog;
mod meta;
mod nodes;
pub mod openai;
pub mod openapi;
mod tasks;

use std::sync::Arc;

use api::{ErrorCode, ErrorEnvelope};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use daemon::correlation::Identity;
use daemon::errors::ApiError;

use crate::config::Config;
use crate::core::runner::CoreHandle;
use crate::metrics::Metrics;

pub struct AppState {
    pub cfg: Arc<Config>,
    pub core: CoreHandle,
    pub metrics: Arc<Metrics>,
    /// Current secrets; swapped whole on rotation, read without holding the lock.
    pub tokens: std::sync::RwLock<Arc<crate::config::Tokens>>,
}

impl AppState {
    pub fn tokens(&self) -> Arc<crate::config::Tokens> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn rotate(&self, tokens: crate::config::Tokens) {
        tracing::info!(
            event = "auth.reloaded",
            "Tokens reloaded: {}",
            tokens.describe()
        );
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
    }
}

pub type App = Arc<AppState>;

pub fn router(app: App) -> Router {
    let routes = Router::new()
        .route("/v2/tasks", post(tasks::submit))
        .route("/v2/tasks/{id}", get(tasks::get_task))
        .route("/v2/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v2/tasks/{id}/events", get(tasks::events))
        .route(
            "/v2/sessions/{id}",
            get(tasks::get_session).delete(tasks::delete_session),
        )
        .route("/v2/nodes/register", post(nodes::register))
        .route("/v2/nodes/{id}/heartbeat", post(nodes::heartbeat))
        .route("/v2/nodes/{id}", delete(nodes::deregister))
        .route("/v2/nodes", get(nodes::list))
        .route("/v2/pools", get(meta::pools))
        .route("/v2/pools/{id}/health", get(meta::pool_health))
        .route("/v2/pools/{id}/drain", post(meta::drain))
        .route("/v2/pools/{id}/reload", post(meta::reload))
        .route(
            "/v2/catalog/models",
            post(catalog::register).get(catalog::list),
        )
        .route(
            "/v2/catalog/models/{id}",
            get(catalog::get).delete(catalog::delete),
        )
        .route("/v2/catalog/models/{id}/verify", post(catalog::verify))
        .route("/v2/catalog/models/{id}/state", post(catalog::set_state))
        .route("/v2/catalog/availability", get(catalog::availability))
        .route("/v2/meta/version", get(meta::version))
        .route("/v2/meta/capabilities", get(meta::capabilities))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/health", get(meta::health))
        .route("/metrics", get(meta::metrics))
        .route("/v2/openapi.json", get(openapi::document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app.clone());
    // Auth wraps the whole router, fallback included, so an unknown path without a token is a 401.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn_with_state(app, auth))
        .layer(axum::middleware::from_fn(daemon::correlation::layer))
}

async fn not_found() -> ApiError {
    ApiError(ErrorEnvelope::new(ErrorCode::NotFound, "no such route"))
}

async fn method_not_allowed(req: Request) -> Response {
    let allow = allowed_methods(req.uri().path());
    let mut resp = ApiError(ErrorEnvelope::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed here; allowed: {allow}", req.method()),
    ))
    .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&allow) {
        resp.headers_mut().insert("allow", v);
    }
    resp
}

fn allowed_methods(path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v2", "tasks"]
        | ["v2", "nodes", "register"]
        | ["v2", "tasks", _, "cancel"]
        | ["v2", "nodes", _, "heartbeat"] => "POST",
        ["v2", "nodes", _] => "DELETE",
        ["v1", "chat", "completions"] | ["v1", "completions"] => "POST",
        ["v2", "pools", _, "drain"] | ["v2", "pools", _, "reload"] => "POST",
        ["v2", "sessions", _] => "GET, DELETE",
        _ => "GET",
    }
    .into()
}

/// What kind of credential a route takes.
enum RouteClass {
    Open,
    Client,
    /// Node routes check their tokens in the handler (they depend on the node id and body).
    Node,
}

fn classify(method: &Method, path: &str, cfg: &Config) -> RouteClass {
    match (method, path) {
        (&Method::GET, "/health") => RouteClass::Open,
        (&Method::GET, "/metrics") if !cfg.metrics_require_auth => RouteClass::Open,
        (&Method::POST, "/v2/nodes/register") => RouteClass::Node,
        (&Method::POST, p) if p.starts_with("/v2/nodes/") && p.ends_with("/heartbeat") => {
            RouteClass::Node
        }
        (&Method::DELETE, p) if p.starts_with("/v2/nodes/") => RouteClass::Node,
        _ => RouteClass::Client,
    }
}

/// Client-token authentication for client routes; node routes pass through to their handlers.
async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if header.as_ref().is_some_and(|h| h.len() > 8192) {
        return ApiError(ErrorEnvelope::new(
            ErrorCode::BadToken,
            "the Authorization header is too long",
        ))
        .into_response();
    }
    let token = daemon::secret::bearer(header.as_deref()).map(str::to_string);
    let identity = token
        .as_deref()
        .map(|t| format!("token:{}", daemon::secret::fingerprint(t)));
    let class = classify(req.method(), req.uri().path(), &app.cfg);
    let tokens = app.tokens();
    if let RouteClass::Client = class {
        if !tokens.open() {
            let refusal = match &token {
                None if header.is_none() => Some(ErrorEnvelope::new(
                    ErrorCode::MissingToken,
                    "this route needs a client token (Authorization: Bearer …)",
                )),
                Some(t) if tokens.is_client(t) => None,
                _ => Some(ErrorEnvelope::new(
                    ErrorCode::BadToken,
                    "the token is not a valid client token",
                )),
            };
            if let Some(env) = refusal {
                // OpenAI clients get OpenAI's error shape, everyone else the v2 envelope.
                return if req.uri().path().starts_with("/v1/") {
                    openai::error(env)
                } else {
                    ApiError(env).into_response()
                };
            }
        }
    }
    let mut resp = next.run(req).await;
    if let Some(i) = identity {
        resp.extensions_mut().insert(Identity(i));
    }
    resp
}

/// Reads a JSON body within `server.max_body_bytes`; every failure is a 400 `INVALID_PARAMS`.
pub async fn json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !mime.ends_with("+json") {
        return Err(ErrorEnvelope::new(
            ErrorCode::InvalidParams,
            "the body must be JSON (Content-Type: application/json)",
        )
        .into());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ErrorEnvelope::new(
            ErrorCode::InvalidParams,
            format!("the body exceeds server.max_body_bytes ({limit} bytes)"),
        )
        .into()
    })
}

/// A task id from a path; malformed ids are 404 (API.md §3.4).
pub fn task_id(raw: &str) -> Result<api::TaskId, ApiError> {
    raw.parse()
        .map_err(|_| ErrorEnvelope::new(ErrorCode::NotFound, format!("no task {raw}")).into())
}

/// The core went away: the daemon is shutting down.
pub fn unavailable() -> ApiError {
    ApiError(ErrorEnvelope::new(
        ErrorCode::Internal,
        "orchestratord is shutting down",
    ))
}
