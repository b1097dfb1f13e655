//! The llama-orch Rust SDK: typed calls over orchestratord's v2 API, the error envelope mapped to
//! [`Error`], and an async stream of typed SSE events. Every call sends the client's correlation id.

pub mod sse;

use std::time::Duration;

use api::node::{NodesResponse, PoolsResponse};
use api::task::{AdmissionResponse, TaskRecord, TaskRequest};
use api::{ErrorEnvelope, TaskId};
use reqwest::header::HeaderMap;

pub use sse::{EventStream, Frame};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// orchestratord refused the request with a typed envelope.
    #[error("{status} {envelope}")]
    Api { status: u16, envelope: ErrorEnvelope, headers: Box<HeaderMap> },
    #[error("cannot reach orchestratord: {0}")]
    Transport(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
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
    base: String,
    token: Option<String>,
    correlation_id: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8080`) with an optional client token.
    pub fn new(base_url: impl Into<String>, token: Option<String>) -> Self {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Self { base: base_url.into().trim_end_matches('/').to_string(), token, correlation_id: uuid::Uuid::new_v4().to_string(), http }
    }

    /// Uses `id` as the `X-Correlation-Id` of every following call.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = id.into();
        self
    }

    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path)).header(api::CORRELATION_HEADER, &self.correlation_id);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let resp = rb.send().await.map_err(|e| Error::Transport(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let headers = Box::new(resp.headers().clone());
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorEnvelope>(&text) {
            Ok(envelope) => Err(Error::Api { status, envelope, headers }),
            Err(_) => Err(Error::Protocol(format!("HTTP {status} without an error envelope: {}", text.chars().take(200).collect::<String>()))),
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<Exchange<T>, Error> {
        let resp = self.send(rb).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json::<T>().await.map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(Exchange { status, headers, body })
    }

    /// `POST /v2/tasks`.
    pub async fn submit(&self, req: &TaskRequest) -> Result<Exchange<AdmissionResponse>, Error> {
        self.json(self.req(reqwest::Method::POST, "/v2/tasks").json(req)).await
    }

    /// `GET /v2/tasks/{id}`.
    pub async fn task(&self, id: TaskId) -> Result<Exchange<TaskRecord>, Error> {
        self.json(self.req(reqwest::Method::GET, &format!("/v2/tasks/{id}"))).await
    }

    /// `POST /v2/tasks/{id}/cancel`.
    pub async fn cancel(&self, id: TaskId) -> Result<u16, Error> {
        Ok(self.send(self.req(reqwest::Method::POST, &format!("/v2/tasks/{id}/cancel"))).await?.status().as_u16())
    }

    /// Opens a task's event stream (`path` is `streams.sse` or `streams.sse_verbose` of the 202).
    pub async fn events(&self, path: &str) -> Result<EventStream, Error> {
        let resp = self.send(self.req(reqwest::Method::GET, path).header("accept", "text/event-stream")).await?;
        Ok(EventStream::new(resp))
    }

    /// `GET /metrics` as raw Prometheus text, with the response headers.
    pub async fn metrics_text(&self) -> Result<Exchange<String>, Error> {
        let resp = self.send(self.req(reqwest::Method::GET, "/metrics")).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Exchange { status, headers, body })
    }

    pub async fn pools(&self) -> Result<PoolsResponse, Error> {
        Ok(self.json(self.req(reqwest::Method::GET, "/v2/pools")).await?.body)
    }

    pub async fn nodes(&self) -> Result<NodesResponse, Error> {
        Ok(self.json(self.req(reqwest::Method::GET, "/v2/nodes")).await?.body)
    }

    /// `GET /health` (no auth needed).
    pub async fn health(&self) -> Result<(), Error> {
        self.send(self.req(reqwest::Method::GET, "/health")).await.map(|_| ())
    }
}
