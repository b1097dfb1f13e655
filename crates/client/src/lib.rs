//! The llama-orch Rust SDK: typed calls over orchestratord's v2 API, the error envelope mapped to
//! [`Error`], and an async stream of typed SSE events. Every call sends the client's correlation id.
//! Several base URLs (an HA group) are followed to the leader ([`leader`]); [`Client::follow`] reads
//! a task's stream across a failover, resuming with `Last-Event-ID`.

pub mod leader;
pub mod sse;

use std::time::Duration;

use api::catalog::{
    AvailabilityResponse, ModelRecord, ModelState, ModelsResponse, RegisterModel, SetModelState,
};
use api::node::{NodesResponse, PoolsResponse};
use api::task::{AdmissionResponse, TaskRecord, TaskRequest};
use api::{ErrorEnvelope, TaskId};
use reqwest::header::HeaderMap;

pub use leader::Leader;
pub use sse::{EventStream, Follow, Frame};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// orchestratord refused the request with a typed envelope.
    #[error("{status} {envelope}")]
    Api {
        status: u16,
        envelope: ErrorEnvelope,
        headers: Box<HeaderMap>,
    },
    #[error("cannot reach orchestratord: {0}")]
    Transport(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The HTTP client could not be built (e.g. no TLS backend).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl Error {
    pub fn envelope(&self) -> Option<&ErrorEnvelope> {
        match self {
            Error::Api { envelope, .. } => Some(envelope),
            _ => None,
        }
    }
}

/// A response's status, headers and typed body, for callers that record exchanges.
#[derive(Debug, Clone)]
pub struct Exchange<T> {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: T,
}

#[derive(Clone)]
pub struct Client {
    leader: Leader,
    token: Option<String>,
    correlation_id: String,
    http: reqwest::Client,
    failover_timeout: Duration,
}

/// How long a call keeps looking for a leader (refused connections, `NOT_LEADER`) by default:
/// longer than a takeover after a crash (the lease, then a poll).
pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);

/// With several base URLs, how long one attempt of a plain (non-stream) call may take before a
/// replayable call (GET, a submit with an idempotency key) moves on: a paused (SIGSTOPped)
/// orchestratord accepts connections and never answers.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8080`, or several comma-separated base
    /// URLs of an HA group) with an optional client token. Fails only when the HTTP client cannot
    /// be built; a default one would drop its settings.
    pub fn new(base_url: impl Into<String>, token: Option<String>) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Setup(e.to_string()))?;
        Ok(Self {
            leader: Leader::new(&base_url.into()),
            token,
            correlation_id: uuid::Uuid::new_v4().to_string(),
            http,
            failover_timeout: DEFAULT_FAILOVER_TIMEOUT,
        })
    }

    /// How long a call (and a [`Follow`] reconnect) keeps looking for a leader before it gives the
    /// last refusal to the caller.
    pub fn with_failover_timeout(mut self, t: Duration) -> Self {
        self.failover_timeout = t;
        self
    }

    pub fn failover_timeout(&self) -> Duration {
        self.failover_timeout
    }

    /// The base URLs given and the current leader.
    pub fn leader(&self) -> &Leader {
        &self.leader
    }

    /// Uses `id` as the `X-Correlation-Id` of every following call.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = id.into();
        self
    }

    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// The base URL calls go to now (the leader, as far as this client knows).
    pub fn base_url(&self) -> String {
        self.leader.current()
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{}", self.leader.current(), path))
            .header(api::CORRELATION_HEADER, &self.correlation_id);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends a plain call (one JSON answer): with several base URLs, each attempt is bounded.
    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let rb = if self.leader.urls().len() > 1 {
            rb.timeout(ATTEMPT_TIMEOUT)
        } else {
            rb
        };
        self.send_following(rb).await
    }

    /// Sends `rb` to the leader: a follower's `NOT_LEADER` sends it again to the leader it names
    /// (or the next URL), a refused connection to the next URL, until one answers or
    /// `failover_timeout` has passed. Every other answer is the caller's.
    async fn send_following(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let req = rb.build().map_err(|e| Error::Setup(e.to_string()))?;
        let first = self.leader.current();
        let suffix = req
            .url()
            .as_str()
            .strip_prefix(first.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                let u = req.url();
                match u.query() {
                    Some(q) => format!("{}?{q}", u.path()),
                    None => u.path().to_string(),
                }
            });
        let replayable = req.method() == reqwest::Method::GET
            || req.headers().contains_key(api::IDEMPOTENCY_HEADER);
        let until = std::time::Instant::now() + self.failover_timeout;
        let mut base = first;
        let mut hops = 0usize;
        loop {
            let mut attempt = req
                .try_clone()
                .ok_or_else(|| Error::Setup("a streaming request body cannot be re-sent".into()))?;
            *attempt.url_mut() = reqwest::Url::parse(&format!("{base}{suffix}"))
                .map_err(|e| Error::Setup(format!("bad base URL {base:?}: {e}")))?;
            let decision = match self.http.execute(attempt).await {
                Err(e) => {
                    let retry = self.leader.on_transport(&base, e.is_connect(), replayable);
                    if retry == leader::Retry::No || std::time::Instant::now() >= until {
                        return Err(Error::Transport(transport_message(&e)));
                    }
                    retry
                }
                Ok(resp) if resp.status().is_success() => {
                    self.leader.set(&base);
                    return Ok(resp);
                }
                Ok(resp) => {
                    let err = error_of(resp).await;
                    let Error::Api {
                        envelope, headers, ..
                    } = &err
                    else {
                        return Err(err);
                    };
                    if envelope.code != api::ErrorCode::NotLeader
                        || std::time::Instant::now() >= until
                    {
                        if envelope.code != api::ErrorCode::NotLeader {
                            self.leader.set(&base);
                        }
                        return Err(err);
                    }
                    let named = headers
                        .get(api::LEADER_HEADER)
                        .and_then(|v| v.to_str().ok());
                    self.leader.on_not_leader(&base, named)
                }
            };
            hops += 1;
            base = match decision {
                leader::Retry::Follow(url) => url,
                _ => self.leader.next_after(&base),
            };
            // Every URL tried once in a row: the group is between leaders; pause before the next
            // round instead of spinning.
            if hops.is_multiple_of(self.leader.urls().len().max(1)) {
                tokio::time::sleep(leader::ROUND_PAUSE).await;
            }
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<Exchange<T>, Error> {
        let resp = self.send(rb).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .json::<T>()
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(Exchange {
            status,
            headers,
            body,
        })
    }

    /// `POST /v2/tasks` with an `Idempotency-Key`: retried with the same key (by this client
    /// across a failover, or by the caller), it answers with the task the first one created.
    pub async fn submit_idempotent(
        &self,
        req: &TaskRequest,
        key: &str,
    ) -> Result<Exchange<AdmissionResponse>, Error> {
        self.json(
            self.req(reqwest::Method::POST, "/v2/tasks")
                .header(api::IDEMPOTENCY_HEADER, key)
                .json(req),
        )
        .await
    }

    /// `POST /v2/tasks`.
    pub async fn submit(&self, req: &TaskRequest) -> Result<Exchange<AdmissionResponse>, Error> {
        self.json(self.req(reqwest::Method::POST, "/v2/tasks").json(req))
            .await
    }

    /// `POST /v2/tasks`, retrying refusals that say so (429, and 503 with `retriable`) after the
    /// server's `Retry-After` (or `retry_after_ms`), at most `attempts` times in all. Only
    /// admission is retried: nothing has run yet, so a retry cannot duplicate work. The task id is
    /// fixed before the first attempt so every attempt names the same task.
    pub async fn submit_with_retry(
        &self,
        req: &TaskRequest,
        attempts: u32,
    ) -> Result<Exchange<AdmissionResponse>, Error> {
        let mut req = req.clone();
        req.task_id.get_or_insert_with(TaskId::new);
        let mut tried = 0;
        loop {
            tried += 1;
            match self.submit(&req).await {
                Err(Error::Api {
                    status,
                    envelope,
                    headers,
                }) if tried < attempts
                    && envelope.retriable
                    && (status == 429 || status == 503) =>
                {
                    let secs = headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let wait = secs
                        .map(|s| s * 1000)
                        .or(envelope.retry_after_ms)
                        .unwrap_or(1000)
                        .min(60_000);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                other => return other,
            }
        }
    }

    /// `GET /v2/tasks/{id}`.
    pub async fn task(&self, id: TaskId) -> Result<Exchange<TaskRecord>, Error> {
        self.json(self.req(reqwest::Method::GET, &format!("/v2/tasks/{id}")))
            .await
    }

    /// `POST /v2/tasks/{id}/cancel`.
    pub async fn cancel(&self, id: TaskId) -> Result<u16, Error> {
        Ok(self
            .send(self.req(reqwest::Method::POST, &format!("/v2/tasks/{id}/cancel")))
            .await?
            .status()
            .as_u16())
    }

    /// Opens a task's event stream (`path` is `streams.sse` or `streams.sse_verbose` of the 202).
    pub async fn events(&self, path: &str) -> Result<EventStream, Error> {
        self.events_after(path, None).await
    }

    /// Opens a task's event stream with `Last-Event-ID: after` (only frames with a greater id).
    pub async fn events_after(&self, path: &str, after: Option<u64>) -> Result<EventStream, Error> {
        let mut rb = self
            .req(reqwest::Method::GET, path)
            .header("accept", "text/event-stream");
        if let Some(id) = after {
            rb = rb.header("last-event-id", id.to_string());
        }
        let resp = self.send_following(rb).await?;
        Ok(EventStream::new(resp))
    }

    /// A task's stream that survives a failover: when the connection breaks or closes before the
    /// terminal frame, it reconnects (to the leader, as any call) with `Last-Event-ID` set to the
    /// last frame it returned, for up to `failover_timeout` per outage.
    pub fn follow(&self, path: &str) -> Follow {
        Follow::new(self.clone(), path)
    }

    /// `GET /metrics` as raw Prometheus text, with the response headers.
    pub async fn metrics_text(&self) -> Result<Exchange<String>, Error> {
        let resp = self
            .send(self.req(reqwest::Method::GET, "/metrics"))
            .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Exchange {
            status,
            headers,
            body,
        })
    }

    pub async fn pools(&self) -> Result<PoolsResponse, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, "/v2/pools"))
            .await?
            .body)
    }

    /// `GET /v2/tenants` (admin): every tenant's usage against its limits.
    pub async fn tenants(&self) -> Result<api::tenant::TenantsResponse, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, "/v2/tenants"))
            .await?
            .body)
    }

    pub async fn nodes(&self) -> Result<NodesResponse, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, "/v2/nodes"))
            .await?
            .body)
    }

    /// `GET /v2/sessions/{id}`.
    pub async fn session(&self, id: api::SessionId) -> Result<api::meta::SessionView, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, &format!("/v2/sessions/{id}")))
            .await?
            .body)
    }

    /// `DELETE /v2/sessions/{id}`.
    pub async fn delete_session(&self, id: api::SessionId) -> Result<(), Error> {
        self.send(self.req(reqwest::Method::DELETE, &format!("/v2/sessions/{id}")))
            .await
            .map(|_| ())
    }

    /// `GET /v2/meta/capabilities`.
    pub async fn capabilities(&self) -> Result<api::meta::MetaCapabilities, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, "/v2/meta/capabilities"))
            .await?
            .body)
    }

    /// `GET /v2/meta/version`.
    pub async fn version(&self) -> Result<api::meta::VersionInfo, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, "/v2/meta/version"))
            .await?
            .body)
    }

    /// `GET /v2/pools/{id}/health`.
    pub async fn pool_health(&self, id: &str) -> Result<api::meta::PoolHealth, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, &format!("/v2/pools/{id}/health")))
            .await?
            .body)
    }

    /// `POST /v2/pools/{id}/drain`: no new tasks; running ones get until `deadline_ms`.
    pub async fn drain_pool(
        &self,
        id: &str,
        deadline_ms: Option<u64>,
    ) -> Result<api::node::PoolCommandAccepted, Error> {
        let body = api::node::DrainRequest { deadline_ms };
        Ok(self
            .json(
                self.req(reqwest::Method::POST, &format!("/v2/pools/{id}/drain"))
                    .json(&body),
            )
            .await?
            .body)
    }

    /// `POST /v2/pools/{id}/reload`: return a drained pool to service, or switch it to `model_ref`.
    pub async fn reload_pool(
        &self,
        id: &str,
        model_ref: &str,
    ) -> Result<api::node::PoolCommandAccepted, Error> {
        let body = api::node::ReloadRequest {
            model_ref: model_ref.into(),
            deadline_ms: None,
        };
        Ok(self
            .json(
                self.req(reqwest::Method::POST, &format!("/v2/pools/{id}/reload"))
                    .json(&body),
            )
            .await?
            .body)
    }

    // ---- model catalog (API.md §9.3) ----------------------------------------------------------

    /// `POST /v2/catalog/models`: registers a model. The flag is `true` when the entry was created
    /// (201) and `false` when an identical entry already existed (200). A clash with another ref is
    /// 409 `CONFLICT`; a malformed ref, id or digest is 400 `INVALID_PARAMS`; `http://` or a scheme
    /// the catalog does not allow is 400 `UNTRUSTED_ARTIFACT`.
    pub async fn register_model(&self, body: &RegisterModel) -> Result<(ModelRecord, bool), Error> {
        let r = self
            .json::<ModelRecord>(
                self.req(reqwest::Method::POST, "/v2/catalog/models")
                    .json(body),
            )
            .await?;
        Ok((r.body, r.status == 201))
    }

    /// `GET /v2/catalog/models`: every catalog entry.
    pub async fn models(&self) -> Result<ModelsResponse, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, "/v2/catalog/models"))
            .await?
            .body)
    }

    /// `GET /v2/catalog/models/{id}`.
    pub async fn model(&self, id: &str) -> Result<ModelRecord, Error> {
        Ok(self
            .json(self.req(
                reqwest::Method::GET,
                &format!("/v2/catalog/models/{}", segment(id)),
            ))
            .await?
            .body)
    }

    /// `DELETE /v2/catalog/models/{id}` (204): the nodes holding a copy evict it. 409 `CONFLICT`
    /// while a pool serves or loads the model.
    pub async fn delete_model(&self, id: &str) -> Result<(), Error> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/v2/catalog/models/{}", segment(id)),
        ))
        .await
        .map(|_| ())
    }

    /// `POST /v2/catalog/models/{id}/verify` (202): every node in `locations` re-hashes its copy;
    /// copies that fail are removed. The record is the one at the time of the request.
    pub async fn verify_model(&self, id: &str) -> Result<ModelRecord, Error> {
        Ok(self
            .json(self.req(
                reqwest::Method::POST,
                &format!("/v2/catalog/models/{}/verify", segment(id)),
            ))
            .await?
            .body)
    }

    /// `POST /v2/catalog/models/{id}/state`: `Retired` refuses new tasks (409 `MODEL_DEPRECATED`),
    /// `Active` accepts them again.
    pub async fn set_model_state(&self, id: &str, state: ModelState) -> Result<ModelRecord, Error> {
        let body = SetModelState { state };
        Ok(self
            .json(
                self.req(
                    reqwest::Method::POST,
                    &format!("/v2/catalog/models/{}/state", segment(id)),
                )
                .json(&body),
            )
            .await?
            .body)
    }

    /// `GET /v2/catalog/availability`: per model, the nodes caching it and the pools serving it.
    pub async fn availability(&self) -> Result<AvailabilityResponse, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, "/v2/catalog/availability"))
            .await?
            .body)
    }

    /// `GET /v2/openapi.json`.
    pub async fn openapi(&self) -> Result<serde_json::Value, Error> {
        Ok(self
            .json(self.req(reqwest::Method::GET, "/v2/openapi.json"))
            .await?
            .body)
    }

    /// `GET /health` (no auth needed).
    pub async fn health(&self) -> Result<(), Error> {
        self.send(self.req(reqwest::Method::GET, "/health"))
            .await
            .map(|_| ())
    }
}

/// A transport error with its causes ("error sending request" alone says nothing).
fn transport_message(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// The typed error of a non-success answer.
async fn error_of(resp: reqwest::Response) -> Error {
    let status = resp.status().as_u16();
    let headers = Box::new(resp.headers().clone());
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorEnvelope>(&text) {
        Ok(envelope) => Error::Api {
            status,
            envelope,
            headers,
        },
        Err(_) => Error::Protocol(format!(
            "HTTP {status} without an error envelope: {}",
            text.chars().take(200).collect::<String>()
        )),
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters), so that an id
/// typed by a user can never name another route.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("smollm2-135m.q4_1"), "smollm2-135m.q4_1");
        assert_eq!(segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
