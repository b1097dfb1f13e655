//! The one place an [`ErrorEnvelope`] becomes an HTTP response (API.md §3.3): status from the code,
//! `Retry-After` and `X-Backoff-Ms` when a wait is advised, `WWW-Authenticate` on 401.

use api::ErrorEnvelope;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error answered before any stream starts.
#[derive(Debug)]
pub struct ApiError(pub ErrorEnvelope);

impl From<ErrorEnvelope> for ApiError {
    fn from(e: ErrorEnvelope) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let env = self.0;
        let status =
            StatusCode::from_u16(env.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = env.retry_after_secs();
        let backoff = env.retry_after_ms;
        let mut resp = (status, axum::Json(&env)).into_response();
        let h = resp.headers_mut();
        if let Some(secs) = retry {
            h.insert("retry-after", HeaderValue::from(secs));
            if let Some(ms) = backoff {
                h.insert("x-backoff-ms", HeaderValue::from(ms));
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
