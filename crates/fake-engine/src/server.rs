//! Test-only: the HTTP routes of fake-engine in llama-server's dialect (health, props, slots,
//! apply-template, metrics, the `/completion` stream in `completion.rs`), plus `/fake/stats`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::args::Args;
use crate::knobs::Knobs;
use crate::slots::Slots;

pub const BUILD_INFO: &str = "b0-fake-engine";

pub struct AppState {
    pub model_path: String,
    pub model_alias: String,
    pub ctx_per_slot: u64,
    pub metrics: bool,
    /// Accepted API keys; empty = no authentication.
    pub keys: Vec<String>,
    pub knobs: Knobs,
    pub slots: Arc<Slots>,
    pub started: Instant,
    pub tokens_predicted: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Set once a crash is under way, so no other stream emits anything more.
    pub crashing: AtomicBool,
    /// False while `FAKE_HOLD_UNTIL_SIGUSR1` holds every request after its first token.
    pub released: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    pub fn new(
        args: &Args,
        keys: Vec<String>,
        knobs: Knobs,
        released: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            released,
            model_path: args.model.clone(),
            model_alias: args.model_alias(),
            ctx_per_slot: args.ctx_per_slot(),
            metrics: args.metrics,
            keys,
            knobs,
            slots: Slots::with_stats_file(
                args.slots(),
                std::env::var_os("FAKE_STATS_FILE").map(std::path::PathBuf::from),
            ),
            started: Instant::now(),
            tokens_predicted: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            crashing: AtomicBool::new(false),
        })
    }

    pub fn n_slots(&self) -> usize {
        self.slots.busy().len()
    }

    fn loading(&self) -> bool {
        self.started.elapsed() < self.knobs.load
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        [bearer, x_api_key]
            .into_iter()
            .flatten()
            .any(|k| self.keys.iter().any(|key| key == k.trim()))
    }
}

/// A llama-server style error: `{"error":{"code":…,"message":…,"type":…}}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        501 => "not_supported_error",
        503 => "unavailable_error",
        _ => "server_error",
    };
    error_with_type(status, message, kind)
}

pub fn error_with_type(status: StatusCode, message: &str, kind: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": message, "type": kind}})),
    )
        .into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/props", get(props))
        .route("/slots", get(slots))
        .route("/apply-template", post(apply_template))
        .route("/completion", post(crate::completion::completion))
        .route("/completions", post(crate::completion::completion))
        .route("/metrics", get(metrics))
        .route("/fake/stats", get(fake_stats))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), gate))
        .with_state(state)
}

/// Like llama-server: everything answers 503 while the model loads; then every endpoint but
/// `/health` needs the API key. `/fake/stats` is exempt from the loading gate (it is ours).
async fn gate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let is_health = path == "/health" || path == "/v1/health";
    if st.loading() && !path.starts_with("/fake/") {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "Loading model");
    }
    if !is_health && !st.authorized(req.headers()) {
        return error_response(StatusCode::UNAUTHORIZED, "Invalid API Key");
    }
    next.run(req).await
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn props(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({
        "total_slots": st.n_slots(),
        "build_info": BUILD_INFO,
        "model_alias": st.model_alias,
        "model_path": st.model_path,
        "default_generation_settings": {"n_ctx": st.ctx_per_slot},
    }))
    .into_response()
}

async fn slots(State(st): State<Arc<AppState>>) -> Response {
    let list: Vec<Value> =
        st.slots.busy().into_iter().enumerate().map(|(id, busy)| json!({"id": id, "n_ctx": st.ctx_per_slot, "speculative": false, "is_processing": busy})).collect();
    Json(Value::Array(list)).into_response()
}

async fn fake_stats(State(st): State<Arc<AppState>>) -> Response {
    Json(st.slots.stats()).into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "File Not Found")
}

/// `POST /apply-template`: ChatML rendering of `messages`, ending with an open assistant turn.
async fn apply_template(body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error_response(StatusCode::BAD_REQUEST, "invalid JSON body");
    };
    let Some(messages) = v["messages"].as_array() else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "'messages' is required and must be an array",
        );
    };
    match render_chatml(messages) {
        Ok(prompt) => Json(json!({"prompt": prompt})).into_response(),
        Err(e) => error_response(StatusCode::BAD_REQUEST, &e),
    }
}

pub fn render_chatml(messages: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for m in messages {
        let role = m["role"]
            .as_str()
            .ok_or("each message needs a string 'role'")?;
        let content = match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            // OpenAI-style content parts: keep the text parts.
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(""),
            _ => return Err("'content' must be a string or an array of parts".into()),
        };
        out.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    out.push_str("<|im_start|>assistant\n");
    Ok(out)
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    if !st.metrics {
        return error_response(
            StatusCode::NOT_IMPLEMENTED,
            "This server does not support metrics endpoint. Start it with `--metrics`",
        );
    }
    let s = st.slots.stats();
    let body = format!(
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n\
         # TYPE llamacpp:prompt_tokens_total counter\n\
         llamacpp:prompt_tokens_total {}\n\
         # HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n\
         # TYPE llamacpp:tokens_predicted_total counter\n\
         llamacpp:tokens_predicted_total {}\n\
         # HELP llamacpp:requests_processing Number of requests processing.\n\
         # TYPE llamacpp:requests_processing gauge\n\
         llamacpp:requests_processing {}\n\
         # HELP llamacpp:requests_deferred Number of requests deferred.\n\
         # TYPE llamacpp:requests_deferred gauge\n\
         llamacpp:requests_deferred {}\n",
        st.prompt_tokens.load(Ordering::Relaxed),
        st.tokens_predicted.load(Ordering::Relaxed),
        s.processing,
        s.waiting,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_rendering() {
        let msgs = vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": [{"type": "text", "text": "hi"}]}),
        ];
        assert_eq!(render_chatml(&msgs).unwrap(), "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        assert!(render_chatml(&[json!({"content": "x"})]).is_err());
    }

    #[test]
    fn auth_accepts_bearer_and_x_api_key() {
        let args = crate::args::parse(["--parallel", "2"]).unwrap();
        let st = AppState::new(
            &args,
            vec!["k".into()],
            Knobs::default(),
            tokio::sync::watch::channel(true).1,
        );
        let mut h = HeaderMap::new();
        assert!(!st.authorized(&h));
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(!st.authorized(&h));
        h.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        assert!(st.authorized(&h));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k".parse().unwrap());
        assert!(st.authorized(&h));
        let open = AppState::new(
            &args,
            vec![],
            Knobs::default(),
            tokio::sync::watch::channel(true).1,
        );
        assert!(open.authorized(&HeaderMap::new()));
        assert_eq!(open.n_slots(), 2);
    }
}
