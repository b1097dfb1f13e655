//! What an HA process's listener serves: until it leads, `GET /health` (role `follower`) and a
//! 503 `NOT_LEADER` for everything else, naming the leader in `x-llorch-leader`; once it leads,
//! the whole API.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tokio::sync::watch;
use tower::ServiceExt;

pub struct Gate {
    app: OnceLock<Router>,
    leader: watch::Receiver<Option<String>>,
}

impl Gate {
    pub fn new(leader: watch::Receiver<Option<String>>) -> Arc<Self> {
        Arc::new(Self {
            app: OnceLock::new(),
            leader,
        })
    }

    /// This process leads: from now on requests reach `app`.
    pub fn lead(&self, app: Router) {
        let _ = self.app.set(app);
    }

    async fn handle(self: Arc<Self>, req: Request<Body>) -> Response {
        if let Some(app) = self.app.get() {
            return match app.clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
        }
        let leader = self.leader.borrow().clone();
        if req.uri().path() == "/health" {
            return Json(api::meta::Health {
                status: "ok".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                role: Some("follower".into()),
                epoch: None,
                leader: leader.clone(),
            })
            .into_response();
        }
        let message = match &leader {
            Some(l) => format!("this orchestratord is a follower; the leader is {l}"),
            None => "this orchestratord is a follower and no leader is known yet".into(),
        };
        let mut env = api::ErrorEnvelope::new(api::ErrorCode::NotLeader, message);
        env.retry_after_ms = Some(250);
        let mut resp = (StatusCode::SERVICE_UNAVAILABLE, Json(env)).into_response();
        let h = resp.headers_mut();
        h.insert("retry-after", HeaderValue::from_static("1"));
        if let Some(v) = leader.and_then(|l| HeaderValue::from_str(&l).ok()) {
            h.insert(api::LEADER_HEADER, v);
        }
        resp
    }
}

/// The listener's router: everything goes through the gate.
pub fn router(gate: Arc<Gate>) -> Router {
    Router::new().fallback(move |req: Request<Body>| gate.clone().handle(req))
}
