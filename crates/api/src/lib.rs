//! The llama-orch wire contract (API.md), shared by orchestratord, pool-managerd, the SDK and the CLI.
//! Serde types only: no I/O and no daemon logic. Client request bodies reject unknown fields; the
//! node and worker protocols ignore them so that mixed versions survive an upgrade.

pub mod anthropic;
pub mod catalog;
pub mod cluster;
pub mod error;
pub mod events;
pub mod gbnf;
pub mod ids;
pub mod meta;
pub mod model_ref;
pub mod node;
pub mod openai;
pub mod responses;
pub mod task;
pub mod tenant;
pub mod tools;
pub mod worker;

pub use error::{ErrorCode, ErrorEnvelope};
pub use ids::{
    CommandId, CorrelationId, DeviceId, IdError, MachineId, ModelId, NodeId, PoolId, SessionId,
    StepId, TaskId, TenantId,
};

/// API version of §§4–11.
pub const API_VERSION: &str = "2.0.0";
/// Node/worker protocol version (§12, §13).
pub const PROTOCOL_VERSION: u32 = 1;
/// The correlation header (§3.2).
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// The only engine kind of v2.
pub const ENGINE_LLAMACPP: &str = "llamacpp";

/// Returns true when `v` is a valid correlation id: 1–128 visible ASCII characters.
pub fn valid_correlation_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}
