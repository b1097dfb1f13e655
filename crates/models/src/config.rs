//! [`CacheConfig`]: where the cache lives, its quota, and how to reach Hugging Face.

use std::fmt;
use std::path::PathBuf;

/// The default Hugging Face endpoint.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

#[derive(Clone)]
pub struct CacheConfig {
    /// Root of the cache (API.md §9.2 layout below it).
    pub models_dir: PathBuf,
    /// Total bytes of cached copies to keep; `None` = unlimited.
    pub quota_bytes: Option<u64>,
    /// Base URL for `hf:` refs, e.g. `https://huggingface.co`. `http://` is allowed here because
    /// it is operator configuration (a local mirror or a test server).
    pub hf_endpoint: String,
    /// Sent as `Authorization: Bearer` on `hf:` requests; never logged (only a fingerprint).
    pub hf_token: Option<String>,
    /// An extra trusted CA certificate (PEM) for https fetches.
    pub extra_root_pem: Option<Vec<u8>>,
}

impl CacheConfig {
    /// `HF_ENDPOINT` (default [`DEFAULT_HF_ENDPOINT`]) and `HF_TOKEN` from the environment; no
    /// quota, no extra CA.
    pub fn from_env(models_dir: PathBuf) -> Self {
        let non_empty = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        CacheConfig {
            models_dir,
            quota_bytes: None,
            hf_endpoint: non_empty("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_HF_ENDPOINT.to_string()),
            hf_token: non_empty("HF_TOKEN"),
            extra_root_pem: None,
        }
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("models_dir", &self.models_dir)
            .field("quota_bytes", &self.quota_bytes)
            .field("hf_endpoint", &self.hf_endpoint)
            .field(
                "hf_token",
                &self
                    .hf_token
                    .as_deref()
                    .map(crate::layout::token_fingerprint),
            )
            .field(
                "extra_root_pem",
                &self
                    .extra_root_pem
                    .as_ref()
                    .map(|p| format!("{} bytes", p.len())),
            )
            .finish()
    }
}
