//! The model cache of a worker node (API.md §9): fetches `hf:`, `https://` and `file:` ModelRefs,
//! verifies their SHA-256 digests, keeps one download per artifact across tasks and processes,
//! evicts least-recently-used copies over a quota, and reads GGUF header facts. Used by
//! pool-managerd and the llorch CLI.
//!
//! Module map: `config` ([`CacheConfig`]), `layout` (cache paths, source URLs, token
//! fingerprints), `cache` ([`ModelCache`]: the rules), `fetch` (one resumable HTTP download),
//! `lock` (per-artifact in-process + file locks), `sidecar` (the per-copy record and the LRU
//! clock), `gguf` (header parsing), `error` ([`FetchError`] and its envelope).

mod cache;
mod config;
mod error;
mod fetch;
pub mod gguf;
pub mod layout;
mod lock;
mod sidecar;

pub use cache::{Fetched, ModelCache};
pub use config::{CacheConfig, DEFAULT_HF_ENDPOINT};
pub use error::FetchError;
pub use fetch::{Progress, FIRST_BACKOFF, MAX_ATTEMPTS};
