//! Health, version, capabilities, pool health and session bodies (API.md §4.3, §10, §16): what
//! orchestratord sends, what the SDK parses, and what the OpenAPI document describes.

use serde::{Deserialize, Serialize};

use crate::ids::{ModelId, NodeId, PoolId, SessionId};
use crate::node::PoolState;

/// `GET /health` body: liveness only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    pub version: String,
    /// HA only: `leader` or `follower`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// HA only: the leader's epoch (on the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// HA only: the leader's base URL, as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// `GET /v2/meta/version` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    /// `2.0.0`.
    pub api_version: String,
    pub protocol_version: u32,
    pub build_version: String,
    pub build_commit: String,
    pub build_time: String,
}

/// `GET /v2/meta/capabilities` body, computed from live Ready pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetaCapabilities {
    pub api_version: String,
    pub protocol_versions: Vec<u32>,
    /// Empty when no pool is Ready.
    pub engines: Vec<EngineCapabilities>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EngineCapabilities {
    /// `llamacpp`.
    pub engine: String,
    pub engine_versions: Vec<String>,
    /// The largest `ctx_per_slot` of the Ready pools.
    pub ctx_max: u64,
    pub slots_total: u64,
    pub models: Vec<ModelId>,
    pub supported_workloads: Vec<String>,
    pub features: EngineFeatures,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EngineFeatures {
    pub messages: bool,
    pub grammar: bool,
    pub json_schema: bool,
    pub seed: bool,
    pub stop: bool,
}

/// `GET /v2/pools/{id}/health` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolHealth {
    pub pool_id: PoolId,
    pub node_id: NodeId,
    /// Node Online and state Starting, Ready or Draining.
    pub live: bool,
    /// Node Online and state Ready.
    pub ready: bool,
    pub draining: bool,
    pub state: PoolState,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// When the node last heartbeated (Unix milliseconds); null when its node is unknown.
    #[schema(required = true)]
    pub last_heartbeat_ms: Option<u64>,
    pub metrics: PoolHealthMetrics,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolHealthMetrics {
    pub queue_depth: u64,
    pub running: u64,
    pub slots_total: u32,
    pub slots_free: u32,
}

/// `GET /v2/sessions/{id}` body (API.md §4.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    pub session_id: SessionId,
    pub created_at_ms: u64,
    pub last_used_at_ms: u64,
    pub ttl_ms_remaining: u64,
    /// Completed tasks.
    pub turns: u64,
    #[schema(required = true)]
    pub last_pool_id: Option<PoolId>,
    #[schema(required = true)]
    pub last_node_id: Option<NodeId>,
    /// True when the last task completed on `last_pool_id` and that pool is still Ready with the same model (a hint).
    pub kv_warmth: bool,
    pub tokens_in_total: u64,
    pub tokens_out_total: u64,
}
