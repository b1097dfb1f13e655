//! The llama.cpp engine layer: provisioning `llama-server` (build from source or adopt a binary),
//! running it as a child process, and talking to it over HTTP. Only pool-managerd and the
//! `llorch engine` commands use this crate; orchestratord never speaks the engine dialect.

pub mod client;
pub mod cuda;
pub mod handoff;
pub mod process;
pub mod provision;
pub mod sse;
pub mod stream;
pub mod version;

pub use client::{ApiKey, ChatMessage, CompletionRequest, EngineClient, EngineError, Prompt};
pub use process::{launch, LaunchError, LaunchSpec, RunningEngine};
pub use provision::{
    provision, EngineBuild, EngineSource, GpuPolicy, Progress, ProvisionError, ProvisionRequest,
};
pub use version::EngineVersion;
