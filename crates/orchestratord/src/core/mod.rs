//! The scheduler core: one synchronous state machine that owns nodes, pools, queues and tasks.
//! It never awaits; it touches the world only through [`Effects`] (dispatch a task, cancel on a
//! worker, set a timer), so it is unit-tested against a recording fake. The async owner loop that
//! feeds it messages lives in [`runner`].
//!
//! Invariants: a pool never has more tasks holding a slot than `slots_total`; a task's frames are
//! appended only here, so cancel and token delivery are serialized per task; events from a stale
//! dispatch attempt are ignored.

pub mod admit;
pub mod lifecycle;
pub mod models;
pub mod nodes;
pub mod ops;
pub mod placement;
pub mod provision;
pub mod queue;
pub mod runner;
pub mod sessions;
pub mod tasklog;
pub mod tasks;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::node::{NodeStatus, PoolState, PoolStatus};
use api::task::Priority;
use api::worker::DispatchRequest;
use api::{CommandId, CorrelationId, ModelId, NodeId, PoolId, TaskId};
use daemon::secret::Secret;

use crate::admission::ValidatedTask;
use crate::config::Config;
use crate::metrics::Metrics;
pub use tasklog::TaskLog;

/// Work the core asks the outside world to do.
pub trait Effects {
    /// Open a dispatch stream to a worker; its lines come back as [`Core::on_worker`] calls.
    fn dispatch(&mut self, job: DispatchJob);
    /// Drop a dispatch connection (cancel, deadline, node lost).
    fn abort_dispatch(&mut self, task: TaskId);
    /// Call the worker cancel route; a 204 comes back as [`Core::on_cancel_confirmed`].
    fn cancel_on_worker(&mut self, job: CancelJob);
    /// Call back with `timer` after `after`.
    fn timer(&mut self, after: Duration, timer: Timer);
}

#[derive(Debug, Clone)]
pub struct DispatchJob {
    pub task: TaskId,
    pub attempt: u32,
    pub address: String,
    pub token: Secret,
    pub body: DispatchRequest,
}

#[derive(Debug, Clone)]
pub struct CancelJob {
    pub task: TaskId,
    pub pool_id: PoolId,
    pub address: String,
    pub token: Secret,
    pub correlation_id: CorrelationId,
}

/// Why a dispatch stream ended without a terminal worker line (or never opened).
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEnd {
    /// The request could not be sent (connect error, reset before the answer).
    Unreachable(String),
    /// The worker refused the dispatch with this HTTP status and envelope.
    Refused {
        status: u16,
        envelope: api::ErrorEnvelope,
    },
    /// No line within the idle timeout.
    Idle(Duration),
    /// The stream ended cleanly before a terminal line.
    Closed,
    /// The stream broke mid-way.
    Broken(String),
    /// A line that is not a worker line.
    Unreadable,
    /// A line longer than the relay buffers.
    OverLong,
}

impl std::fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayEnd::Unreachable(e) => write!(f, "worker unreachable: {e}"),
            RelayEnd::Refused { status, .. } => write!(f, "worker answered {status}"),
            RelayEnd::Idle(d) => write!(f, "the worker sent nothing for {} ms", d.as_millis()),
            RelayEnd::Closed => f.write_str("the worker closed the stream without a terminal line"),
            RelayEnd::Broken(e) => write!(f, "the worker stream broke: {e}"),
            RelayEnd::Unreadable => f.write_str("the worker sent an unreadable line"),
            RelayEnd::OverLong => f.write_str("the worker sent an over-long line"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Timer {
    Deadline(TaskId),
    DisconnectCheck(TaskId),
}

pub struct Node {
    pub machine_id: String,
    pub address: String,
    pub version: String,
    pub dispatch_token: Secret,
    /// The credential issued at registration (None when the node uses a static token or open mode).
    pub credential: Option<Secret>,
    pub status: NodeStatus,
    pub last_seen: Instant,
    pub registered_at_ms: u64,
    pub last_heartbeat_ms: u64,
    pub seq: u64,
    pub capabilities: api::node::Capabilities,
    pub pools: Vec<PoolId>,
    /// GPU state from the latest heartbeat.
    pub gpus: Vec<api::node::GpuStatus>,
    /// Commands sent in every heartbeat answer until the node reports them (at-least-once).
    pub commands: Vec<api::node::Command>,
}

pub struct PoolEntry {
    pub node_id: NodeId,
    pub status: PoolStatus,
    /// Tasks holding a slot: dispatched and not yet released.
    pub holding: BTreeSet<TaskId>,
    /// Tasks canceled while running whose slot is not yet confirmed free.
    pub releasing: BTreeSet<TaskId>,
    /// The worker answered REPLICA_EXHAUSTED: no free slot until its next heartbeat.
    pub exhausted: bool,
    /// Facts of the pool's node, refreshed by [`Core::sync_node_facts`] whenever they change, so
    /// placement never looks nodes up per pool.
    pub node_online: bool,
    pub free_vram: u64,
    /// Draining on an operator's request: out of placement until a reload.
    pub draining: bool,
    /// The pool operation in progress (drain, reload or load-model), by command id.
    pub op: Option<(CommandId, api::node::CommandKind)>,
    /// The catalog model this pool serves (§9.2: digest or ref matches), re-derived from every report.
    pub serves: Option<ModelId>,
    /// The (model id, digest) of the last report, so catalog writes happen only on change.
    pub reported: Option<(ModelId, Option<String>)>,
    /// The model a `load-model` in progress is loading into this pool.
    pub loading: Option<ModelId>,
}

impl PoolEntry {
    pub fn free_slots(&self) -> u32 {
        if self.exhausted {
            return 0;
        }
        self.status
            .slots_total
            .saturating_sub(self.holding.len() as u32)
    }

    /// The catalog model the pool serves (None when its report does not match the catalog).
    pub fn model_id(&self) -> Option<&ModelId> {
        self.serves.as_ref()
    }
}

/// Free VRAM on the GPUs of a device mask (`cpu` has none).
fn free_vram(node: &Node, mask: &str) -> u64 {
    if mask == "cpu" {
        return 0;
    }
    mask.split(',')
        .filter_map(|d| node.gpus.iter().find(|g| g.device_id == d.trim()))
        .map(|g| g.vram_free_bytes)
        .sum()
}

/// Per-pool measurements for predictions (EWMA, α = 0.2).
#[derive(Default, Clone, Copy)]
pub struct PoolStats {
    pub tokens_out: Option<f64>,
    pub decode_tps: Option<f64>,
    pub ttft_ms: Option<f64>,
}

pub struct TaskEntry {
    pub v: ValidatedTask,
    pub correlation_id: CorrelationId,
    pub model: ModelId,
    pub queue_key: queue::QueueKey,
    /// Queued, running or finished, with the moments each reached.
    pub life: lifecycle::Lifecycle,
    pub log: Arc<TaskLog>,
    pub admitted: lifecycle::Stamp,
    pub pool: Option<PoolId>,
    pub node: Option<NodeId>,
    pub engine_version: Option<String>,
    pub attempts: u32,
    pub tried: Vec<PoolId>,
    pub tokens_in: u64,
    /// The worker's count from `end` (0 before it); see [`TaskEntry::tokens_out`].
    pub reported_tokens_out: u64,
    pub token_frames: u64,
    pub seed: Option<u64>,
    pub stop_reason: Option<api::events::StopReason>,
    pub error: Option<api::ErrorEnvelope>,
    pub admission_position: u64,
    pub admission_predicted_ms: u64,
    /// The queue position last told to the client (202 or a `metrics` frame).
    pub announced_position: Option<u64>,
    pub max_tokens: u64,
    pub deadline: Option<Instant>,
    /// The `started` frame was sent (at dispatch, or when provisioning bound the task to a pool).
    pub started_sent: bool,
    /// The `load-model` command this task waits on, until its steps are reported completed.
    pub load: Option<CommandId>,
}

impl TaskEntry {
    pub fn state(&self) -> api::task::TaskState {
        self.life.state()
    }

    /// Output tokens: the worker's count, but never fewer than the token frames sent.
    pub fn tokens_out(&self) -> u64 {
        self.reported_tokens_out.max(self.token_frames)
    }

    /// The task's pool as a metric label or log field (empty before placement).
    pub fn pool_label(&self) -> String {
        self.pool
            .as_ref()
            .map(PoolId::to_string)
            .unwrap_or_default()
    }

    /// The task's node as a metric label or log field (empty before placement).
    pub fn node_label(&self) -> String {
        self.node
            .as_ref()
            .map(NodeId::to_string)
            .unwrap_or_default()
    }
}

pub struct Core<E: Effects> {
    pub cfg: Arc<Config>,
    pub effects: E,
    pub metrics: Arc<Metrics>,
    pub nodes: BTreeMap<NodeId, Node>,
    pub pools: BTreeMap<PoolId, PoolEntry>,
    pub stats: HashMap<PoolId, PoolStats>,
    pub tasks: HashMap<TaskId, TaskEntry>,
    pub queues: BTreeMap<queue::QueueKey, queue::Queue>,
    /// Terminal tasks in finishing order, for retention.
    pub finished: VecDeque<TaskId>,
    pub sessions: HashMap<api::SessionId, sessions::Session>,
    /// The model catalog (SQLite, written through).
    pub catalog: catalog::Catalog,
    /// `load-model` commands in flight, by command id.
    pub loads: BTreeMap<CommandId, provision::Load>,
    /// Node-level catalog commands (`evict-model`, `verify-model`) in flight, by command id.
    pub node_commands: HashMap<CommandId, models::NodeCommand>,
}

impl<E: Effects> Core<E> {
    pub fn new(
        cfg: Arc<Config>,
        effects: E,
        metrics: Arc<Metrics>,
        catalog: catalog::Catalog,
    ) -> Self {
        Self {
            cfg,
            effects,
            metrics,
            nodes: BTreeMap::new(),
            pools: BTreeMap::new(),
            stats: HashMap::new(),
            tasks: HashMap::new(),
            queues: BTreeMap::new(),
            finished: VecDeque::new(),
            sessions: HashMap::new(),
            catalog,
            loads: BTreeMap::new(),
            node_commands: HashMap::new(),
        }
    }

    /// Fills free slots: for each model queue, dispatch tasks in order while a candidate pool has
    /// a free slot. Skipped tasks keep their positions.
    pub fn pump(&mut self, now: Instant) {
        let keys: Vec<queue::QueueKey> = self.queues.keys().cloned().collect();
        for key in keys {
            let order = self
                .queues
                .get(&key)
                .map(|q| q.dispatch_order(self.cfg.interactive_burst))
                .unwrap_or_default();
            for id in order {
                let Some((pool, fallback)) = self.place(id) else {
                    continue;
                };
                let prio = self
                    .tasks
                    .get(&id)
                    .map(|t| t.v.priority)
                    .unwrap_or(Priority::Interactive);
                if let Some(q) = self.queues.get_mut(&key) {
                    q.take(id, prio);
                }
                self.start_attempt(id, &pool, fallback, now);
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        self.announce_positions();
        self.publish_gauges();
    }

    /// The pool a queued task should go to now, if any, and whether `allow_fallback` decided it.
    fn place(&self, id: TaskId) -> Option<(PoolId, bool)> {
        let t = self.tasks.get(&id)?;
        let views = self.pool_views();
        let affinity = if self.cfg.session_affinity {
            self.affinity(t.v.session_id)
        } else {
            None
        };
        let choice = placement::choose(
            &views,
            &t.model,
            t.v.ctx,
            &t.v.placement,
            affinity.as_ref(),
            &t.tried,
        );
        let pool = choice.pool?;
        self.metrics.set(
            crate::metrics::PLACEMENT_CANDIDATES,
            vec![],
            choice.considered as f64,
        );
        Some((pool.clone(), choice.fallback))
    }

    pub fn pool_views(&self) -> Vec<placement::PoolView<'_>> {
        // Pinned tasks wait in per-pool queues; they count towards that pool's load.
        let pinned: HashMap<&PoolId, usize> = self
            .queues
            .iter()
            .filter_map(|(k, q)| match k {
                queue::QueueKey::Pool(p) => Some((p, q.len())),
                queue::QueueKey::Model(_) => None,
            })
            .collect();
        self.pools
            .iter()
            .map(|(id, p)| placement::PoolView {
                pool_id: id,
                node_id: &p.node_id,
                node_status: if p.node_online {
                    NodeStatus::Online
                } else {
                    NodeStatus::Offline
                },
                state: if p.draining && p.status.state == PoolState::Ready {
                    PoolState::Draining
                } else {
                    p.status.state
                },
                model_id: p.model_id(),
                ctx_per_slot: p.status.ctx_per_slot,
                device_mask: &p.status.device_mask,
                free_slots: p.free_slots(),
                load: p.holding.len() + pinned.get(id).copied().unwrap_or(0),
                free_vram: p.free_vram,
            })
            .collect()
    }

    /// Copies a node's status and free VRAM into its pools (see [`PoolEntry::node_online`]).
    pub(crate) fn sync_node_facts(&mut self, node_id: &NodeId) {
        let Some(node) = self.nodes.get(node_id) else {
            return;
        };
        for pid in &node.pools {
            if let Some(p) = self.pools.get_mut(pid) {
                p.node_online = node.status == NodeStatus::Online;
                p.free_vram = free_vram(node, &p.status.device_mask);
            }
        }
    }

    /// Gauges computed when `/metrics` is scraped: Online nodes, Ready pools, heartbeat ages.
    pub fn scrape_gauges(
        &self,
        now: Instant,
    ) -> Vec<(&'static str, Vec<(&'static str, String)>, f64)> {
        use crate::metrics as m;
        let online = self
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Online)
            .count();
        let ready = self
            .pools
            .values()
            .filter(|p| {
                p.status.state == PoolState::Ready
                    && self
                        .nodes
                        .get(&p.node_id)
                        .is_some_and(|n| n.status == NodeStatus::Online)
            })
            .count();
        let mut out = vec![
            (m::NODES_ONLINE, vec![], online as f64),
            (m::POOLS_READY, vec![], ready as f64),
        ];
        for (id, age) in self.heartbeat_ages(now) {
            out.push((
                m::NODE_HEARTBEAT_AGE,
                m::labels(&[("node_id", id.as_str())]),
                age as f64,
            ));
        }
        for (id, p) in &self.pools {
            let ev = p.status.engine_version.clone().unwrap_or_default();
            let base = [
                ("engine", api::ENGINE_LLAMACPP),
                ("engine_version", ev.as_str()),
                ("pool_id", id.as_str()),
                ("replica_id", p.node_id.as_str()),
            ];
            if let Some(r) = p.status.kv_cache_usage_ratio {
                out.push((m::KV_CACHE_USAGE, m::labels(&base), r));
            }
            for (device, used) in p.status.vram_used_bytes.iter().flatten() {
                let mut l = m::labels(&base);
                l.push(("device", device.clone()));
                out.push((m::VRAM_USED, l, *used as f64));
            }
            let Some(node) = self.nodes.get(&p.node_id) else {
                continue;
            };
            for g in node
                .gpus
                .iter()
                .filter(|g| p.status.device_mask.split(',').any(|d| d == g.device_id))
            {
                let mut l = m::labels(&base);
                l.push(("device", g.device_id.clone()));
                out.push((m::GPU_UTILIZATION, l, g.utilization_pct));
            }
        }
        out.extend(self.model_state_gauges());
        out
    }

    /// Queue depth gauges, updated whenever queues change.
    pub fn publish_gauges(&self) {
        self.metrics
            .remove_gauges(crate::metrics::QUEUE_DEPTH, |_| false);
        for p in [Priority::Interactive, Priority::Batch] {
            let n: usize = self
                .queues
                .iter()
                .filter(|(k, _)| matches!(k, queue::QueueKey::Model(_)))
                .map(|(_, q)| q.len_of(p))
                .sum();
            self.metrics.set(
                crate::metrics::QUEUE_DEPTH,
                crate::metrics::labels(&[
                    ("engine", api::ENGINE_LLAMACPP),
                    ("engine_version", ""),
                    ("pool_id", ""),
                    ("priority", p.as_str()),
                ]),
                n as f64,
            );
            for (pool, q) in self.queues.iter().filter_map(|(k, q)| match k {
                queue::QueueKey::Pool(p) => Some((p.as_str(), q)),
                queue::QueueKey::Model(_) => None,
            }) {
                let ev = self
                    .pools
                    .get(pool)
                    .and_then(|e| e.status.engine_version.clone())
                    .unwrap_or_default();
                self.metrics.set(
                    crate::metrics::QUEUE_DEPTH,
                    crate::metrics::labels(&[
                        ("engine", api::ENGINE_LLAMACPP),
                        ("engine_version", &ev),
                        ("pool_id", pool),
                        ("priority", p.as_str()),
                    ]),
                    q.len_of(p) as f64,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
