//! What an HA process's listener serves: until it leads, `GET /health` (role `follower`) and a
//! 503 `NOT_LEADER` for everything else, naming the leader in `x-llorch-leader`; once it leads,
//! the whole API; once it steps down (shutdown began), a 503 `NOT_LEADER` again, so a client
//! whose stream the step-down ended resumes on the next leader instead of reaching a core that is
//! already gone.

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
    stepping_down: tokio_util::sync::CancellationToken,
}

impl Gate {
    /// `stepping_down` is the process's shutdown: from then on it no longer serves the API.
    pub fn new(
        leader: watch::Receiver<Option<String>>,
        stepping_down: tokio_util::sync::CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            app: OnceLock::new(),
            leader,
            stepping_down,
        })
    }

    /// This process leads: from now on requests reach `app`.
    pub fn lead(&self, app: Router) {
        let _ = self.app.set(app);
    }

    async fn handle(self: Arc<Self>, req: Request<Body>) -> Response {
        let stepping_down = self.stepping_down.is_cancelled();
        if let Some(app) = self.app.get().filter(|_| !stepping_down) {
            return match app.clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
        }
        // A leader stepping down no longer knows who leads next.
        let leader = (!stepping_down)
            .then(|| self.leader.borrow().clone())
            .flatten();
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
            None if stepping_down => {
                "this orchestratord is stepping down; the next leader takes over shortly".into()
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn status_of(gate: &Arc<Gate>, path: &str) -> (StatusCode, String) {
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let resp = router(gate.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_leader_stepping_down_answers_not_leader() {
        let (_tx, rx) = watch::channel(Some("http://10.0.0.9:8080".to_string()));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let gate = Gate::new(rx, shutdown.clone());
        let (s, body) = status_of(&gate, "/v2/tasks/x").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("NOT_LEADER") && body.contains("10.0.0.9"),
            "{body}"
        );
        gate.lead(Router::new().fallback(|| async { "served" }));
        let (s, body) = status_of(&gate, "/v2/tasks/x").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "served"));
        shutdown.cancel();
        let (s, body) = status_of(&gate, "/v2/tasks/x").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("NOT_LEADER") && body.contains("stepping down"),
            "{body}"
        );
        assert!(!body.contains("10.0.0.9"), "{body}");
    }
}
