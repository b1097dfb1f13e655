//! The correlation-id layer (API.md §3.2): every response carries `X-Correlation-Id`, the received
//! value when valid, else a new UUIDv4. Handlers read it from the request extensions.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The request's correlation id, inserted into request extensions by [`layer`].
#[derive(Debug, Clone)]
pub struct CorrelationId(pub api::CorrelationId);

impl CorrelationId {
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Self {
        let given = headers
            .get(api::CORRELATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Self(given.unwrap_or_default())
    }
}

/// Middleware: resolves the id, stores it for handlers, logs the request and stamps the response.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let cid = CorrelationId::from_headers(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    req.extensions_mut().insert(cid.clone());
    let started = std::time::Instant::now();
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(cid.0.as_str()) {
        resp.headers_mut().insert(api::CORRELATION_HEADER, v);
    }
    let identity = resp
        .extensions()
        .get::<Identity>()
        .map(|i| i.0.clone())
        .unwrap_or_else(|| "anonymous".into());
    tracing::info!(
        event = "http.request",
        correlation_id = %cid.0,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        identity = %identity,
    );
    resp
}

/// The caller's identity for the request log (`token:<fp6>` or `anonymous`), set by auth.
#[derive(Debug, Clone)]
pub struct Identity(pub String);
