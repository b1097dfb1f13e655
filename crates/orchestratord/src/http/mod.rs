//! orchestratord's HTTP surface: the router, authentication (API.md §3.1) and body helpers. Handlers
//! talk to the core through [`CoreHandle`] messages; none of them holds core state.

mod answer;
mod catalog;
mod embeddings;
mod events;
mod messages;
mod meta;
mod nodes;
pub mod openai;
pub mod openapi;
mod responses;
pub mod routes;
mod tasks;
mod ui;

use std::sync::Arc;

use api::tenant::Role;
use api::{ErrorCode, ErrorEnvelope};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use daemon::correlation::Identity;
use daemon::errors::ApiError;

use crate::config::Config;
use crate::core::runner::CoreHandle;
pub use crate::core::tenants::Scope;
use crate::metrics::Metrics;

pub struct AppState {
    pub cfg: Arc<Config>,
    pub core: CoreHandle,
    pub metrics: Arc<Metrics>,
    /// Current secrets; swapped whole on rotation, read without holding the lock.
    pub tokens: std::sync::RwLock<Arc<crate::config::Tokens>>,
    /// HA: this leader's epoch.
    pub epoch: Option<u64>,
    /// HA: cancelled at shutdown, ending task streams so clients resume on the next leader.
    pub closing: Option<tokio_util::sync::CancellationToken>,
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

/// Who is calling: the tenant its token names and its role. The auth layer puts one in the
/// request's extensions for every route it checks; handlers of `Own` routes scope by it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: api::TenantId,
    pub role: Role,
}

impl Caller {
    /// Which tasks and sessions the caller may see: an admin all, anyone else its own.
    pub fn scope(&self) -> Scope {
        if self.role == Role::Admin {
            Scope::All
        } else {
            Scope::Tenant(self.tenant.clone())
        }
    }
}

/// The refusal of a request, in the shape its route family uses.
fn refuse(req: &Request, env: ErrorEnvelope) -> Response {
    // Anthropic clients get Anthropic's error shape, OpenAI clients OpenAI's, everyone else the
    // v2 envelope.
    if req.uri().path() == "/v1/messages" {
        messages::error(env)
    } else if req.uri().path().starts_with("/v1/") {
        openai::error(env)
    } else {
        ApiError(env).into_response()
    }
}

/// Authentication and roles (docs/auth.md): every route's [`routes::Access`] decides whether a
/// token is needed and which role it must carry. Node routes check their tokens in the handler;
/// `DELETE /v2/nodes/{id}` accepts an admin token here or leaves the node check to the handler.
async fn auth(State(app): State<App>, mut req: Request, next: Next) -> Response {
    // Anthropic clients send their key as `x-api-key`; on `/v1/messages` it counts as the bearer.
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            (req.uri().path() == "/v1/messages")
                .then(|| req.headers().get("x-api-key"))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .map(|k| format!("Bearer {k}"))
        });
    if header.as_ref().is_some_and(|h| h.len() > 8192) {
        return ApiError(ErrorEnvelope::new(
            ErrorCode::BadToken,
            "the Authorization header is too long",
        ))
        .into_response();
    }
    let token = daemon::secret::bearer(header.as_deref()).map(str::to_string);
    let tokens = app.tokens();
    let caller = if tokens.open() {
        Some(Caller {
            tenant: crate::config::anonymous(),
            role: Role::Admin,
        })
    } else {
        token
            .as_deref()
            .and_then(|t| tokens.identify(t))
            .map(|c| Caller {
                tenant: c.tenant.clone(),
                role: c.role,
            })
    };
    let identity = match (&caller, &token) {
        (Some(c), Some(t)) => Some(format!(
            "tenant:{} token:{}",
            c.tenant,
            daemon::secret::fingerprint(t)
        )),
        (_, Some(t)) => Some(format!("token:{}", daemon::secret::fingerprint(t))),
        (Some(c), None) => Some(format!("tenant:{}", c.tenant)),
        (None, None) => None,
    };
    let access = match routes::access(req.method(), req.uri().path()) {
        routes::Access::Metrics if !app.cfg.metrics_require_auth => routes::Access::Open,
        a => a,
    };
    if let Some(required) = access.role() {
        let refusal = match &caller {
            Some(c) if c.role.allows(required) => None,
            Some(c) => Some(ErrorEnvelope::new(
                ErrorCode::Forbidden,
                format!(
                    "this route needs the {required} role; tenant {} is a {}",
                    c.tenant, c.role
                ),
            )),
            None if header.is_none() => Some(ErrorEnvelope::new(
                ErrorCode::MissingToken,
                "this route needs a token (Authorization: Bearer …)",
            )),
            None => Some(ErrorEnvelope::new(
                ErrorCode::BadToken,
                "the token is not a valid token",
            )),
        };
        if let Some(env) = refusal {
            let mut resp = refuse(&req, env);
            if let Some(i) = identity {
                resp.extensions_mut().insert(Identity(i));
            }
            return resp;
        }
    }
    if let Some(c) = caller {
        req.extensions_mut().insert(c);
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
                    scope: Scope::All,
                    reply,
                })
                .await;
        }
        return Err(e);
    }
    result
}
