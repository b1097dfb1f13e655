//! [`FetchError`], the one error type of the crate, and its mapping onto the API's error envelope
//! (API.md §8 last bullet: fetch errors are `MODEL_NOT_AVAILABLE`, retriable for network errors;
//! a digest mismatch is `UNTRUSTED_ARTIFACT`).

use api::{ErrorCode, ErrorEnvelope};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Connection, TLS, timeout, 5xx or an incomplete body after all attempts.
    #[error("network error: {message}")]
    Network { message: String, retriable: bool },
    /// The source answered 404, or a `file:` model or cached copy does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The bytes do not hash to the expected digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    /// A local file-system error.
    #[error("i/o error: {0}")]
    Io(String),
    /// The source answered 401 or 403.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Bad input (a malformed digest, a non-GGUF file, a bad endpoint).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Another fetch or verification holds the artifact's lock (only from the non-blocking
    /// [`crate::ModelCache::evict`]).
    #[error("busy: {0}")]
    Busy(String),
}

impl FetchError {
    /// The envelope for a command status or a task's `error` frame.
    pub fn envelope(&self) -> ErrorEnvelope {
        let message = self.to_string();
        match self {
            FetchError::DigestMismatch { .. } => {
                ErrorEnvelope::new(ErrorCode::UntrustedArtifact, message).with_retriable(false)
            }
            FetchError::Network { retriable, .. } => {
                ErrorEnvelope::new(ErrorCode::ModelNotAvailable, message).with_retriable(*retriable)
            }
            FetchError::Busy(_) => {
                ErrorEnvelope::new(ErrorCode::ModelNotAvailable, message).with_retriable(true)
            }
            _ => ErrorEnvelope::new(ErrorCode::ModelNotAvailable, message).with_retriable(false),
        }
    }

    /// True for errors worth retrying later (network trouble, a busy lock).
    pub fn retriable(&self) -> bool {
        matches!(
            self,
            FetchError::Network {
                retriable: true,
                ..
            } | FetchError::Busy(_)
        )
    }

    pub(crate) fn io(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        FetchError::Io(format!("{context}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes() {
        let e = FetchError::DigestMismatch {
            expected: "sha256:aa".into(),
            actual: "sha256:bb".into(),
        }
        .envelope();
        assert_eq!((e.code, e.retriable), (ErrorCode::UntrustedArtifact, false));
        let e = FetchError::Network {
            message: "reset".into(),
            retriable: true,
        }
        .envelope();
        assert_eq!(
            (e.code, e.retriable, e.http_status()),
            (ErrorCode::ModelNotAvailable, true, 503)
        );
        let e = FetchError::Network {
            message: "tls".into(),
            retriable: false,
        }
        .envelope();
        assert_eq!((e.code, e.retriable), (ErrorCode::ModelNotAvailable, false));
        for err in [
            FetchError::NotFound("x".into()),
            FetchError::Io("x".into()),
            FetchError::Unauthorized("x".into()),
            FetchError::Invalid("x".into()),
        ] {
            let e = err.envelope();
            assert_eq!(
                (e.code, e.retriable, e.http_status()),
                (ErrorCode::ModelNotAvailable, false, 404),
                "{err}"
            );
        }
    }
}
