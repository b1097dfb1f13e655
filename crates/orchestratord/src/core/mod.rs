//! The scheduler core: one synchronous state machine that owns nodes, pools, queues and tasks.
//! It never awaits; it touches the world only through [`Effects`] (dispatch a task, cancel on a
//! worker, set a timer), so it is unit-tested against a recording fake. The async owner loop that
//! feeds it messages lives in [`runner`].
//!
//! Invariants: a pool never has more tasks holding a slot than `slots_total`; a task's frames are
//! appended only here, so cancel and token delivery are serialized per task; events from a stale
//! dispatch attempt are ignored.

pub mod admit;
pub mod bus;
pub mod changes;
pub mod dispatch;
pub mod journal;
pub mod lifecycle;
pub mod models;
pub mod nodes;
pub mod ops;
pub mod pgstate;
pub mod placement;
pub mod prefix;
pub mod provision;
pub mod queue;
pub mod registry;
pub mod runner;
pub mod sessions;
pub mod store;
pub mod takeover;
pub mod task_table;
pub mod tasklog;
pub mod tasks;
pub mod tenants;
pub mod tokenize;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::node::{NodeStatus, PoolState};
use api::task::Priority;
use api::worker::DispatchRequest;
use api::{CommandId, CorrelationId, ModelId, NodeId, PoolId, TaskId};
use daemon::secret::Secret;

use crate::admission::ValidatedTask;
use crate::config::Config;
use crate::metrics::Metrics;
pub use registry::{Node, PoolEntry};
pub use tasklog::TaskLog;

/// Gauge series computed at scrape time: (name, labels, value).
pub type GaugeRows = Vec<(&'static str, Vec<(&'static str, String)>, f64)>;

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
    /// Ask a worker for a task's prompt token ids; the answer comes back as
    /// [`Core::on_tokenized`].
    fn tokenize(&mut self, job: TokenizeJob);
}

/// A worker's tokenize route, called for one queued task (cache-aware placement).
#[derive(Debug, Clone)]
pub struct TokenizeJob {
    pub task: TaskId,
    pub address: String,
    pub token: Secret,
    pub pool_id: PoolId,
    pub correlation_id: CorrelationId,
    pub body: api::worker::TokenizeRequest,
}

#[derive(Debug, Clone)]
pub struct DispatchJob {
    pub task: TaskId,
    pub attempt: u32,
    /// HA: attach to the worker's run of this attempt or be refused; never start it.
    pub reattach_only: bool,
    pub address: String,
    pub token: Secret,
    pub body: DispatchRequest,
}

#[derive(Debug, Clone)]
pub struct CancelJob {
    pub task: TaskId,
    /// The task's tenant (None for a task the worker runs that orchestratord no longer knows).
    pub tenant: Option<api::TenantId>,
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
    /// The task's prompt ids did not come within `placement.tokenize_timeout_ms`: place it by load.
    TokenizeBound(TaskId),
}

/// Tasks that chose to wait for a busy prefix holder in one pass over the queues, by pool: they
/// are ahead of later tasks there, so they count towards its load (decision 76).
type Waiters = HashMap<PoolId, usize, placement::IdHash>;

/// Per-pool measurements for predictions (EWMA, α = 0.2).
#[derive(Default, Clone, Copy)]
pub struct PoolStats {
    tokens_out: Option<f64>,
    decode_tps: Option<f64>,
    ttft_ms: Option<f64>,
    /// Engine time per evaluated prompt token (prefill), ms.
    prefill_ms_per_token: Option<f64>,
    /// How long the pool took to come back to Ready after leaving it.
    restart_ms: Option<f64>,
}

impl PoolStats {
    /// How long a task holds a slot here: its time to first token and its decode, ms.
    fn service_ms(&self) -> Option<f64> {
        Some(self.tokens_out? / self.decode_tps?.max(0.001) * 1000.0 + self.ttft_ms.unwrap_or(0.0))
    }

    /// What cache-aware placement predicts with, once both halves are measured (kept on the
    /// registry's pool entry, see [`registry::PoolEntry`]).
    fn speed(&self) -> Option<placement::Speed> {
        Some(placement::Speed {
            prefill_ms_per_token: self.prefill_ms_per_token? as f32,
            service_ms: self.service_ms()? as f32,
        })
    }
}

pub struct TaskEntry {
    v: ValidatedTask,
    /// The tenant whose token submitted it (`v.tenant`, kept here for brevity).
    tenant: api::TenantId,
    correlation_id: CorrelationId,
    model: ModelId,
    queue_key: queue::QueueKey,
    /// Queued, running or finished, with the moments each reached.
    life: lifecycle::Lifecycle,
    log: Arc<TaskLog>,
    admitted: lifecycle::Stamp,
    pool: Option<PoolId>,
    node: Option<NodeId>,
    engine_version: Option<String>,
    attempts: u32,
    tried: Vec<PoolId>,
    tokens_in: u64,
    /// The worker's count from `end` (0 before it); see [`TaskEntry::tokens_out`].
    reported_tokens_out: u64,
    token_frames: u64,
    /// `tool_call` and `embedding` frames appended; like tokens, they rule out a retry elsewhere.
    tool_frames: u64,
    seed: Option<u64>,
    stop_reason: Option<api::events::StopReason>,
    error: Option<api::ErrorEnvelope>,
    admission_position: u64,
    admission_predicted_ms: u64,
    /// The queue position last told to the client (202 or a `metrics` frame).
    announced_position: Option<u64>,
    max_tokens: u64,
    deadline: Option<Instant>,
    /// The `started` frame was sent (at dispatch, or when provisioning bound the task to a pool).
    started_sent: bool,
    /// The `load-model` command this task waits on, until its steps are reported completed.
    load: Option<CommandId>,
    /// Failed attempts (refusals of a pool that is not Ready do not count).
    failures: u32,
    /// Engine token ids generated so far, over all attempts, while every one of them is known.
    gen_ids: Vec<u32>,
    /// How many of `gen_ids` the client has the text of: a continuation starts after these.
    ids_sent: usize,
    /// False once a token's text came without its ids: the task cannot be resumed exactly.
    resumable: bool,
    /// Mid-stream migrations so far (bounded by `placement.migration_limit`).
    migrations: u32,
    /// Set while the next dispatch continues the task after this many generated tokens.
    resume_from: Option<usize>,
    /// The pool and the cause of the last migration, for the narration once the task lands.
    migrated_from: Option<(PoolId, &'static str)>,
    /// The first token's moment, kept across a migration's return to the queue.
    carried_first_token: Option<lifecycle::Stamp>,
    /// The prompt's engine token ids (cache-aware placement).
    prompt_ids: tokenize::PromptIds,
    /// The chained block hashes of the known prompt ids (empty otherwise).
    prefix_key: Vec<u64>,
    /// Prompt tokens placement predicted the current attempt's engine holds, and its slot.
    predicted_cached: u64,
    predicted_slot: Option<u32>,
    /// Prompt tokens the engine reused, from the worker's `end`.
    tokens_cached: Option<u64>,
    /// A task a new HA leader restored while its attempt ran: it is dispatched again, with the
    /// same attempt, to this pool only, and the worker reattaches to its stream.
    restore_pool: Option<PoolId>,
    /// The attempt a new HA leader dispatched again to reattach: if that fails, the task ends
    /// (its client saw that attempt's frames), never retried from scratch.
    restored_attempt: Option<u32>,
    /// The terminal frame of a task the previous leader saw finish; ends the task if the worker
    /// no longer has its run.
    restore_final: Option<api::events::Event>,
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

/// The core composes its parts; each owns its state behind private fields and a narrow API, and
/// the `impl Core` files (admission, placement, tasks, nodes, ops, models, provisioning) are the
/// decisions that span parts.
pub struct Core<E: Effects> {
    cfg: Arc<Config>,
    effects: E,
    metrics: Arc<Metrics>,
    /// Nodes and their pools.
    registry: registry::Registry,
    /// Per-pool measurements for predictions.
    stats: HashMap<PoolId, PoolStats, placement::IdHash>,
    tasks: task_table::TaskTable,
    queues: queue::Queues,
    sessions: sessions::Sessions,
    /// The model catalog (SQLite, written through).
    catalog: catalog::Catalog,
    /// `load-model` and node-level catalog commands in flight.
    loads: provision::Loads,
    /// What each pool's engine holds, for cache-aware placement.
    prefix: prefix::PrefixIndex,
    /// The pool last asked to tokenize (round robin).
    tokenize_cursor: Option<PoolId>,
    /// Tenants' policies and usage.
    tenants: tenants::Tenants,
    /// The cluster event bus (`GET /v2/events`).
    bus: bus::Bus,
    /// The task rows an HA leader writes (off with SQLite).
    journal: journal::Journal,
    /// `Idempotency-Key`s of retained tasks, by tenant.
    idempotency: HashMap<(api::TenantId, String), TaskId>,
    /// Restored tasks waiting for their pool to come back (see [`TaskEntry::restore_pool`]).
    restoring: std::collections::BTreeSet<TaskId>,
    /// After a takeover, until this moment nodes are given time to register again: no task is
    /// failed for lack of a pool, and restored tasks wait for theirs.
    takeover_until: Option<Instant>,
}

impl<E: Effects> Core<E> {
    pub fn new(
        cfg: Arc<Config>,
        effects: E,
        metrics: Arc<Metrics>,
        catalog: catalog::Catalog,
    ) -> Self {
        let sessions = sessions::Sessions::new(cfg.session_ttl);
        Self {
            effects,
            metrics,
            registry: registry::Registry::default(),
            stats: HashMap::default(),
            tasks: task_table::TaskTable::default(),
            queues: queue::Queues::new(cfg.fair_queuing),
            tenants: tenants::Tenants::new(cfg.tenant_policies()),
            sessions,
            catalog,
            loads: provision::Loads::default(),
            bus: bus::Bus::default(),
            prefix: prefix::PrefixIndex::new(prefix::Limits {
                max_sequences: cfg.prefix_max_sequences,
                keep_replaced: cfg.engine_prompt_cache,
            }),
            tokenize_cursor: None,
            journal: journal::Journal::new(cfg.ha().is_some()),
            idempotency: HashMap::new(),
            restoring: Default::default(),
            takeover_until: None,
            cfg,
        }
    }

    /// Sequences the prefix index holds (benchmarks and tests).
    pub fn prefix_sequences(&self) -> usize {
        self.prefix.len()
    }

    /// Prompt tokens placement predicted a task's current attempt finds cached (benchmarks).
    pub fn predicted_cached(&self, id: TaskId) -> u64 {
        self.tasks.get(&id).map_or(0, |t| t.predicted_cached)
    }

    /// The effects recorder or performer (tests read what the core asked for).
    pub fn effects(&self) -> &E {
        &self.effects
    }

    pub fn session_view(
        &self,
        id: api::SessionId,
        scope: &tenants::Scope,
        now: Instant,
    ) -> Option<api::meta::SessionView> {
        self.sessions.view(id, scope, now, |pool, model| {
            self.registry
                .pool(pool)
                .is_some_and(|p| p.status.state == PoolState::Ready && p.model_id() == model)
        })
    }

    pub fn delete_session(&mut self, id: api::SessionId, scope: &tenants::Scope) {
        self.sessions.delete(id, scope);
    }

    /// Replaces every tenant's policy at once (SIGHUP).
    pub fn set_tenant_policies(
        &mut self,
        policies: std::collections::BTreeMap<api::TenantId, crate::config::TenantPolicy>,
        now: Instant,
    ) {
        self.tenants.set_policies(policies, now);
        self.pump(now);
    }

    /// `GET /v2/tenants`: usage against limits.
    pub fn tenant_report(&mut self, now: Instant) -> Vec<api::tenant::TenantUsage> {
        let queues = &self.queues;
        self.tenants.report(|t| queues.queued_of(t), now)
    }

    /// Fills free slots: for each model queue, dispatch tasks in order while a candidate pool has
    /// a free slot. Skipped tasks keep their positions.
    pub fn pump(&mut self, now: Instant) {
        self.pump_restored(now);
        let keys = self.queues.keys();
        let mut waiters = Waiters::default();
        for key in keys {
            let order = self
                .queues
                .get(&key)
                .map(|q| q.dispatch_order(self.cfg.interactive_burst))
                .unwrap_or_default();
            for id in order {
                if self
                    .tasks
                    .get(&id)
                    .is_some_and(|t| !self.tenants.may_start(&t.tenant))
                {
                    continue;
                }
                let Some((pool, fallback, predicted)) = self.place(id, now, &mut waiters) else {
                    continue;
                };
                self.set_prediction(id, predicted);
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
        self.queues.drop_empty();
        self.bus.mark_queues();
        self.announce_positions();
        self.publish_gauges();
    }

    /// The pool a queued task should go to now, if any, and whether `allow_fallback` decided it.
    /// A task that waits for a busy prefix holder is counted in `waiters`.
    fn place(
        &self,
        id: TaskId,
        now: Instant,
        waiters: &mut Waiters,
    ) -> Option<(PoolId, bool, prefix::Match)> {
        let t = self.tasks.get(&id)?;
        // Waiting for a busy prefix holder is bounded (decision 69): by
        // `placement.wait_for_prefix_max_ms` after admission, and by half the deadline's budget.
        let waited = now.saturating_duration_since(t.admitted.at);
        let may_wait = waited < self.cfg.wait_for_prefix_max
            && t.deadline.is_none_or(|d| {
                d.saturating_duration_since(now) > d.saturating_duration_since(t.admitted.at) / 2
            });
        if self.tokenize_pending(t, now) {
            return None;
        }
        let ids = match &t.prompt_ids {
            tokenize::PromptIds::Known(ids) if !t.prefix_key.is_empty() => Some(ids),
            _ => None,
        };
        let saved_tokens: Vec<(&PoolId, u64)> =
            ids.map_or_else(Vec::new, |ids| self.prefix.lookup(&t.prefix_key, ids.len()));
        let hints = placement::CacheHints {
            saved: &saved_tokens,
            prompt_tokens: ids.map_or(0, |ids| ids.len() as u64),
            balance_abs: self.cfg.balance_abs,
            balance_rel: self.cfg.balance_rel,
            load_cost_tokens: self.cfg.load_cost_tokens,
            wait_min_tokens: if may_wait {
                self.cfg.wait_for_prefix_tokens
            } else {
                0
            },
        };
        let cache_aware = self.cfg.strategy == crate::config::Strategy::CacheAware;
        let views = self.candidate_views(&t.model, t.v.workload, waiters);
        let affinity = if self.cfg.session_affinity {
            self.sessions.affinity(t.v.session_id, &t.tenant)
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
            cache_aware.then_some(&hints),
        );
        if let Some(holder) = choice.waiting_for {
            *waiters.entry(holder.clone()).or_default() += 1;
        }
        let pool = choice.pool?;
        // Ranking used whole shared blocks; the chosen pool's prediction is exact.
        let predicted = match ids {
            Some(ids) if saved_tokens.iter().any(|(p, _)| *p == pool) => {
                self.prefix.best(pool, &t.prefix_key, ids)
            }
            _ => prefix::Match::default(),
        };
        self.metrics.set(
            crate::metrics::PLACEMENT_CANDIDATES,
            vec![],
            choice.considered as f64,
        );
        Some((pool.clone(), choice.fallback, predicted))
    }

    /// Keeps what placement predicted for the attempt about to start.
    fn set_prediction(&mut self, id: TaskId, m: prefix::Match) {
        if let Some(t) = self.tasks.get_mut(&id) {
            t.predicted_cached = m.tokens;
            t.predicted_slot = m.slot;
        }
    }

    /// The views of the pools that may run a task for `model` and `workload` (node online, Ready,
    /// neither draining nor marked unready, serving the model): the only pools
    /// [`placement::is_candidate`] can accept, so placing among them decides as placing among all.
    /// Each view names `model` itself, so the candidate check compares it by address.
    fn candidate_views<'a>(
        &'a self,
        model: &'a ModelId,
        workload: api::task::Workload,
        waiters: &Waiters,
    ) -> Vec<placement::PoolView<'a>> {
        // Sized once: growing a vector of a thousand views step by step copies it ten times.
        let mut views = Vec::with_capacity(self.registry.pools().len());
        views.extend(
            self.registry
                .serving(model)
                .filter(|(_, p)| {
                    p.node_online
                        && !p.draining
                        && !p.unready
                        && p.status.state == PoolState::Ready
                        && p.status.workload == workload
                })
                .map(|(id, p)| placement::PoolView {
                    pool_id: id,
                    node_id: &p.node_id,
                    node_status: NodeStatus::Online,
                    state: PoolState::Ready,
                    model_id: Some(model),
                    workload,
                    ctx_per_slot: p.status.ctx_per_slot,
                    device_mask: &p.status.device_mask,
                    free_slots: p.free_slots(),
                    slots: p.status.slots_total,
                    load: p.holding.len(),
                    free_vram: p.free_vram,
                    speed: p.speed,
                }),
        );
        // Pinned tasks wait in per-pool queues; they count towards that pool's load. The views
        // are in pool id order, so each of the (few) pinned queues finds its pool by bisection.
        for (key, q) in self.queues.iter() {
            if let queue::QueueKey::Pool(pool) = key {
                if let Ok(i) = views.binary_search_by(|v| v.pool_id.cmp(pool)) {
                    views[i].load += q.len();
                }
            }
        }
        // So do tasks ahead in the queue that chose to wait for a pool (decision 76).
        for (pool, n) in waiters {
            if let Ok(i) = views.binary_search_by(|v| v.pool_id.cmp(pool)) {
                views[i].load += n;
            }
        }
        views
    }

    /// Gauges computed when `/metrics` is scraped: Online nodes, Ready pools, heartbeat ages.
    pub fn scrape_gauges(&self, now: Instant) -> GaugeRows {
        use crate::metrics as m;
        let online = self
            .registry
            .nodes()
            .values()
            .filter(|n| n.status == NodeStatus::Online)
            .count();
        let ready = self
            .registry
            .pools()
            .values()
            .filter(|p| {
                p.status.state == PoolState::Ready
                    && self
                        .registry
                        .node(&p.node_id)
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
        for (id, p) in self.registry.pools() {
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
            let Some(node) = self.registry.node(&p.node_id) else {
                continue;
            };
            for g in node.gpus.iter().filter(|g| {
                p.status
                    .device_mask
                    .split(',')
                    .any(|d| d == g.device_id.as_str())
            }) {
                let mut l = m::labels(&base);
                l.push(("device", g.device_id.to_string()));
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
                    .registry
                    .pool(pool)
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
