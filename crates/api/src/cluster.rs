//! Cluster change events (`GET /v2/events`): what changed in the cluster, one typed event per SSE
//! frame. Each event carries the whole current view of what changed (a node, a pool, a task
//! record, a catalog record), so a reader applies it by replacing its copy; the SSE `event:` name is
//! the event's `type`, and the SSE `id:` a number that only grows within one orchestratord run.

use serde::{Deserialize, Serialize};

use crate::catalog::ModelRecord;
use crate::error::ErrorEnvelope;
use crate::ids::{CommandId, ModelId, NodeId, PoolId};
use crate::node::{CommandKind, CommandState, NodeView, PoolView, StepProgress};
use crate::task::TaskRecord;

/// One change (the views are boxed: they differ much in size). `reset` is the only event that is not a change: it tells the reader that events
/// were lost (it fell behind, or its `Last-Event-ID` is older than what the server keeps) and that
/// it must re-read the lists (`/v2/nodes`, `/v2/pools`, `/v2/tasks`, `/v2/catalog/models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A node registered, changed status, or reported new GPU facts.
    Node { node: Box<NodeView> },
    /// A node deregistered.
    NodeRemoved { node_id: NodeId },
    /// A pool appeared or changed (state, slots, model, engine, last error).
    Pool { pool: Box<PoolView> },
    /// A pool is no longer reported.
    PoolRemoved { pool_id: PoolId },
    /// The queues' depths changed; the list holds every non-empty queue.
    Queue { queues: Vec<QueueDepth> },
    /// A task was admitted, started, moved in its queue, made progress (at most once a second) or
    /// finished.
    Task { task: Box<TaskRecord> },
    /// A catalog record was added or changed.
    Catalog { model: Box<ModelRecord> },
    /// A catalog record was removed.
    CatalogRemoved { model_id: ModelId },
    /// A pool or node command (drain, reload, load-model, verify, evict) was issued or reported
    /// progress.
    Command { command: Box<CommandUpdate> },
    /// Events were lost; re-read the lists.
    Reset { reason: ResetReason },
}

impl ClusterEvent {
    /// The SSE `event:` name: the `type` tag.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterEvent::Node { .. } => "node",
            ClusterEvent::NodeRemoved { .. } => "node_removed",
            ClusterEvent::Pool { .. } => "pool",
            ClusterEvent::PoolRemoved { .. } => "pool_removed",
            ClusterEvent::Queue { .. } => "queue",
            ClusterEvent::Task { .. } => "task",
            ClusterEvent::Catalog { .. } => "catalog",
            ClusterEvent::CatalogRemoved { .. } => "catalog_removed",
            ClusterEvent::Command { .. } => "command",
            ClusterEvent::Reset { .. } => "reset",
        }
    }
}

/// Why a reader must re-read the lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    /// `Last-Event-ID` names an event older than the server keeps (or from an earlier run).
    Gap,
    /// The reader did not keep up: its buffer filled and the server closed the stream after this
    /// event. Reconnect with `Last-Event-ID` to resume.
    Overflow,
}

/// The depth of one queue: a model's shared queue, or a pool's queue of pinned tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueDepth {
    #[schema(required = true)]
    pub model_id: Option<ModelId>,
    #[schema(required = true)]
    pub pool_id: Option<PoolId>,
    pub interactive: u64,
    pub batch: u64,
}

/// A command's latest known status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandUpdate {
    pub command_id: CommandId,
    #[schema(required = true)]
    pub kind: Option<CommandKind>,
    pub node_id: NodeId,
    #[schema(required = true)]
    pub pool_id: Option<PoolId>,
    pub status: CommandState,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<StepProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEnvelope>,
}

/// `GET /v2/tasks` body: retained tasks, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TasksResponse {
    pub tasks: Vec<TaskRecord>,
}
