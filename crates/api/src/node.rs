//! Node protocol (API.md §12): registration, heartbeat and pool status, pool-managerd → orchestratord.
//! These types ignore unknown fields so that mixed versions keep working.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorEnvelope;
use crate::ids::{CommandId, CorrelationId, ModelId, NodeId, PoolId, StepId, TaskId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum PoolState {
    Unloaded,
    Provisioning,
    Starting,
    Ready,
    Draining,
    Failed,
}

impl PoolState {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolState::Unloaded => "Unloaded",
            PoolState::Provisioning => "Provisioning",
            PoolState::Starting => "Starting",
            PoolState::Ready => "Ready",
            PoolState::Draining => "Draining",
            PoolState::Failed => "Failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum NodeStatus {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoadedModel {
    pub id: ModelId,
    #[serde(rename = "ref")]
    pub model_ref: String,
    pub digest: Option<String>,
    /// Size of the model file, when the node knows it (an addition to §12.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// GGUF facts of the model file, when the node read them (an addition to §12.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<crate::catalog::GgufInfo>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolStatus {
    pub pool_id: PoolId,
    pub state: PoolState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub engine: String,
    pub engine_version: Option<String>,
    #[serde(default)]
    pub engine_built: bool,
    /// orchestratord may load models into this pool (§8, §17.3 `pools[].provisioning_target`).
    #[serde(default = "yes")]
    pub provisioning_target: bool,
    pub device_mask: String,
    pub slots_total: u32,
    pub slots_free: u32,
    pub ctx_per_slot: u64,
    /// What the pool's engine serves: `completion` (chat and text) or `embedding` (started with
    /// `--embedding`); placement matches tasks to it.
    #[serde(default)]
    pub workload: crate::task::Workload,
    #[serde(default)]
    pub models: Vec<LoadedModel>,
    #[serde(default)]
    pub running: Vec<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_usage_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_used_bytes: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuInfo {
    pub device_id: crate::DeviceId,
    pub name: String,
    pub vram_total_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Capabilities {
    pub cpu_cores: u32,
    pub ram_total_bytes: u64,
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    pub protocol_version: u32,
    pub node_id: NodeId,
    pub machine_id: crate::MachineId,
    pub version: String,
    pub address: String,
    pub dispatch_token: String,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub pools: Vec<PoolStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    Issued,
    Static,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisterResponse {
    pub node_id: NodeId,
    pub credential: CredentialKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_token: Option<String>,
    pub protocol_version: u32,
    pub next_heartbeat_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuStatus {
    pub device_id: crate::DeviceId,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    pub utilization_pct: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatRequest {
    pub seq: u64,
    pub sent_at_ms: u64,
    #[serde(default)]
    pub pools: Vec<PoolStatus>,
    #[serde(default)]
    pub gpus: Vec<GpuStatus>,
    #[serde(default)]
    pub commands: Vec<CommandStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    pub next_heartbeat_ms: u64,
    #[serde(default)]
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CommandKind {
    LoadModel,
    Drain,
    Reload,
    EvictModel,
    VerifyModel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Command {
    pub command_id: CommandId,
    pub kind: CommandKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<PoolId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<LoadedModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    pub correlation_id: CorrelationId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommandState {
    Accepted,
    Running,
    Completed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandStatus {
    pub command_id: CommandId,
    pub status: CommandState,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<StepProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEnvelope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CommandResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Pending,
    Running,
    Completed,
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
        }
    }
}

/// What a preparation step does (§8): fetch the model, build the engine, warm up the pool.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    ModelFetch,
    EngineProvision,
    PoolWarmup,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::ModelFetch => "model_fetch",
            StepKind::EngineProvision => "engine_provision",
            StepKind::PoolWarmup => "pool_warmup",
        }
    }
}

/// Progress of one preparation step (§8, §12.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepProgress {
    pub step_id: StepId,
    pub kind: StepKind,
    pub status: StepStatus,
    pub pct: f64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// What a finished `load-model` or `verify-model` learned about the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandResult {
    pub digest: String,
    pub size_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<crate::catalog::GgufInfo>,
}

/// `GET /v2/nodes` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub node_id: NodeId,
    pub machine_id: crate::MachineId,
    pub address: String,
    pub status: NodeStatus,
    pub version: String,
    pub registered_at_ms: u64,
    pub last_heartbeat_ms: u64,
    pub pools: Vec<PoolId>,
    pub capabilities: Capabilities,
    /// GPU state from the latest heartbeat (VRAM free and utilization per device).
    #[serde(default)]
    pub gpus: Vec<GpuStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodesResponse {
    pub nodes: Vec<NodeView>,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolModelRef {
    pub id: ModelId,
    #[schema(required = true)]
    pub digest: Option<String>,
}

/// `GET /v2/pools` entry at orchestratord (§10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolView {
    pub pool_id: PoolId,
    pub node_id: NodeId,
    pub node_status: NodeStatus,
    pub state: PoolState,
    pub engine: String,
    #[schema(required = true)]
    pub engine_version: Option<String>,
    #[schema(required = true)]
    pub model: Option<PoolModelRef>,
    pub ctx_per_slot: u64,
    /// `completion` or `embedding`: what the pool serves.
    #[serde(default)]
    pub workload: crate::task::Workload,
    pub slots_total: u32,
    pub slots_free: u32,
    pub queued: u64,
    pub running: u64,
    pub device_mask: String,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// The decode speed the node reported in its latest heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolsResponse {
    pub pools: Vec<PoolView>,
}

/// `POST /v2/pools/{id}/drain` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// `POST /v2/pools/{id}/reload` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// Required: an empty or missing `model_ref` is 400 `INVALID_PARAMS`.
    #[serde(default)]
    #[schema(required = true)]
    pub model_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// 202 body of drain and reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolCommandAccepted {
    pub pool_id: PoolId,
    pub command_id: CommandId,
    pub state: PoolState,
}
