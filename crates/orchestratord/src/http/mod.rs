//! orchestratord's HTTP surface: the router, authentication (API.md §3.1) and body helpers. Handlers
//! talk to the core through [`CoreHandle`] messages; none of them holds core state.

mod catalog;
mod events;
mod meta;
mod nodes;
pub mod openai;
pub mod openapi;
mod routes;
mod tasks;
mod ui;

use std::sync::Arc;

use api::{ErrorCode, ErrorEnvelope};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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
    let routes = routes::router()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app.clone());
    let ui = ui::router(app.clone());
    // Auth wraps the whole API router, fallback included, so an unknown path without a token is a
    // 401. The dashboard's pages are outside it: they hold no data, and the page asks for a token.
    let api = Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn_with_state(app, auth));
    ui.fallback_service(api)
        .layer(axum::middleware::from_fn(daemon::correlation::layer))
}

async fn not_found() -> ApiError {
    ApiError(ErrorEnvelope::new(ErrorCode::NotFound, "no such route"))
}

async fn method_not_allowed(req: Request) -> Response {
    let allow = routes::allowed_methods(req.uri().path());
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

/// What kind of credential a request needs, from the route table.
enum RouteClass {
    Open,
    Client,
    /// Node routes check their tokens in the handler (they depend on the node id and body).
    Node,
}

fn classify(method: &Method, path: &str, cfg: &Config) -> RouteClass {
    match routes::access(method, path) {
        routes::Access::Open => RouteClass::Open,
        routes::Access::Metrics if !cfg.metrics_require_auth => RouteClass::Open,
        routes::Access::Node => RouteClass::Node,
        routes::Access::Client | routes::Access::Metrics => RouteClass::Client,
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

/// An admission's answer once any catalog change it made (an auto-registered model) is durable.
/// If the commit failed, the admitted task is canceled and the client gets INTERNAL, as if the
/// write had failed before admission.
pub async fn durable_admission(
    app: &App,
    (result, durable): (crate::core::runner::Admission, crate::core::store::Durable),
) -> crate::core::runner::Admission {
    if let Err(e) = durable.wait().await {
        if let Ok((resp, _)) = &result {
            let id = resp.task_id;
            let _ = app
                .core
                .ask(|reply| crate::core::runner::Msg::Cancel {
                    id,
                    reason: crate::core::tasks::CancelReason::Client,
                    reply,
                })
                .await;
        }
        return Err(e);
    }
    result
}
