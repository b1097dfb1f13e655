//! The error envelope and its codes (API.md §3.3). Daemons build envelopes here; the HTTP status
//! for a code is decided in exactly one place, [`ErrorCode::http_status`].

use serde::{Deserialize, Serialize};

/// The machine-readable error code (API.md §3.3); each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidParams,
    DeadlineUnmet,
    UntrustedArtifact,
    MissingToken,
    BadToken,
    /// A valid token whose role does not allow the route.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    ModelDeprecated,
    AdmissionReject,
    QueueFullDropLru,
    Internal,
    DecodeTimeout,
    WorkerReset,
    ModelNotAvailable,
    PoolUnready,
    PoolUnavailable,
    ReplicaExhausted,
    NodeUnavailable,
    /// The tenant's requests-per-minute or tokens-per-minute bucket is empty.
    TenantRateLimited,
    /// The tenant has as many queued tasks as its limit allows.
    TenantConcurrency,
    /// This orchestratord is a follower (HA): the leader's address is in the `x-llorch-leader`
    /// header and the message.
    NotLeader,
    /// A worker refused a dispatch or cancel carrying an epoch older than one it has seen: the
    /// sender is no longer the leader.
    StaleEpoch,
}

impl ErrorCode {
    /// The HTTP status used when this code is answered before a stream starts. `MODEL_NOT_AVAILABLE`
    /// is 404 when the model is unknown and 503 when retriable; see [`ErrorEnvelope::http_status`].
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidParams | DeadlineUnmet | UntrustedArtifact => 400,
            MissingToken | BadToken => 401,
            Forbidden => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            Conflict | ModelDeprecated | StaleEpoch => 409,
            AdmissionReject | QueueFullDropLru | TenantRateLimited | TenantConcurrency => 429,
            Internal | DecodeTimeout | WorkerReset => 500,
            ModelNotAvailable => 404,
            PoolUnready | PoolUnavailable | ReplicaExhausted | NodeUnavailable | NotLeader => 503,
        }
    }

    /// The default `retriable` of the code (§3.3 table).
    pub fn retriable(self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            AdmissionReject
                | QueueFullDropLru
                | DecodeTimeout
                | WorkerReset
                | PoolUnready
                | PoolUnavailable
                | ReplicaExhausted
                | NodeUnavailable
                | TenantRateLimited
                | TenantConcurrency
                | NotLeader
        )
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidParams => "INVALID_PARAMS",
            DeadlineUnmet => "DEADLINE_UNMET",
            UntrustedArtifact => "UNTRUSTED_ARTIFACT",
            MissingToken => "MISSING_TOKEN",
            BadToken => "BAD_TOKEN",
            Forbidden => "FORBIDDEN",
            NotFound => "NOT_FOUND",
            MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Conflict => "CONFLICT",
            ModelDeprecated => "MODEL_DEPRECATED",
            AdmissionReject => "ADMISSION_REJECT",
            QueueFullDropLru => "QUEUE_FULL_DROP_LRU",
            Internal => "INTERNAL",
            DecodeTimeout => "DECODE_TIMEOUT",
            WorkerReset => "WORKER_RESET",
            ModelNotAvailable => "MODEL_NOT_AVAILABLE",
            PoolUnready => "POOL_UNREADY",
            PoolUnavailable => "POOL_UNAVAILABLE",
            ReplicaExhausted => "REPLICA_EXHAUSTED",
            NodeUnavailable => "NODE_UNAVAILABLE",
            TenantRateLimited => "TENANT_RATE_LIMITED",
            TenantConcurrency => "TENANT_CONCURRENCY",
            NotLeader => "NOT_LEADER",
            StaleEpoch => "STALE_EPOCH",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error envelope: the body of every error response, and the `data` of `error` frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema)]
#[error("{code}: {message}")]
pub struct ErrorEnvelope {
    pub code: ErrorCode,
    pub message: String,
    pub retriable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<crate::ids::PoolId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error and its sources, joined with `: ` (an HTTP client's own message, such as reqwest's
/// "error decoding response body", hides the cause: a reset connection, an engine that exited).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl ErrorEnvelope {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retriable: code.retriable(),
            retry_after_ms: None,
            policy_label: None,
            engine: None,
            pool_id: None,
            field: None,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(ErrorCode::InvalidParams, message)
        }
    }

    /// INVALID_PARAMS on `protocol_version` unless `v` is [`crate::PROTOCOL_VERSION`] (node and
    /// worker bodies, §12, §13).
    pub fn check_protocol(v: u32) -> Result<(), Self> {
        if v == crate::PROTOCOL_VERSION {
            return Ok(());
        }
        Err(Self::invalid(
            "protocol_version",
            format!(
                "unsupported protocol_version {v}; supported: [{}]",
                crate::PROTOCOL_VERSION
            ),
        ))
    }

    pub fn with_retriable(mut self, retriable: bool) -> Self {
        self.retriable = retriable;
        self
    }

    pub fn with_retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    pub fn with_pool(mut self, pool_id: &crate::ids::PoolId) -> Self {
        self.pool_id = Some(pool_id.clone());
        self
    }

    pub fn with_engine(mut self, engine: impl Into<String>) -> Self {
        self.engine = Some(engine.into());
        self
    }

    /// The HTTP status of this envelope (`MODEL_NOT_AVAILABLE` is 503 when retriable, else 404).
    pub fn http_status(&self) -> u16 {
        match self.code {
            ErrorCode::ModelNotAvailable if self.retriable => 503,
            c => c.http_status(),
        }
    }

    /// `Retry-After` seconds for a response that needs it (§3.3), else `None`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        let status = self.http_status();
        let ms = self.retry_after_ms?;
        (status == 429 || (status == 503 && self.retriable)).then(|| ms.div_ceil(1000).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_every_cause() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "error decoding response body",
            Some(Box::new(E("unexpected EOF during chunk size line", None))),
        );
        assert_eq!(
            chain(&e),
            "error decoding response body: unexpected EOF during chunk size line"
        );
        assert_eq!(chain(&E("alone", None)), "alone");
    }

    #[test]
    fn codes_serialize_as_in_the_spec() {
        let e = ErrorEnvelope::new(ErrorCode::QueueFullDropLru, "x");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["code"], "QUEUE_FULL_DROP_LRU");
        assert_eq!(v["retriable"], true);
        assert!(v.get("field").is_none());
        assert_eq!(ErrorCode::QueueFullDropLru.as_str(), "QUEUE_FULL_DROP_LRU");
    }

    #[test]
    fn statuses_and_retry_after() {
        assert_eq!(
            ErrorEnvelope::new(ErrorCode::ModelNotAvailable, "x")
                .with_retriable(false)
                .http_status(),
            404
        );
        assert_eq!(
            ErrorEnvelope::new(ErrorCode::ModelNotAvailable, "x")
                .with_retriable(true)
                .http_status(),
            503
        );
        let e = ErrorEnvelope::new(ErrorCode::AdmissionReject, "x").with_retry_after(1001);
        assert_eq!(e.retry_after_secs(), Some(2));
        let e = ErrorEnvelope::new(ErrorCode::AdmissionReject, "x").with_retry_after(10);
        assert_eq!(e.retry_after_secs(), Some(1));
        assert_eq!(
            ErrorEnvelope::new(ErrorCode::InvalidParams, "x")
                .with_retry_after(10)
                .retry_after_secs(),
            None
        );
    }
}
