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
/// HA: the leader's epoch on every orchestratord → worker request (dispatch, cancel); a worker
/// refuses an epoch lower than the highest it has seen (`STALE_EPOCH`).
pub const EPOCH_HEADER: &str = "x-llorch-epoch";
/// HA: on a dispatch, "attach to this task's run or answer 404; never start it" (a new leader
/// asking for the stream of a task its predecessor saw finish).
pub const REATTACH_HEADER: &str = "x-llorch-reattach";
/// HA: on a follower's `NOT_LEADER` answer, the leader's base URL (absent while none is known).
pub const LEADER_HEADER: &str = "x-llorch-leader";
/// `POST /v2/tasks` (and the `/v1` submit routes): a client key that makes a retried submit return
/// the task the first one created, for 24 hours.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The only engine kind of v2.
pub const ENGINE_LLAMACPP: &str = "llamacpp";

/// Returns true when `v` is a valid correlation id: 1–128 visible ASCII characters.
pub fn valid_correlation_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}
