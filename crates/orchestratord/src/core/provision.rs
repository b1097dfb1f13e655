//! On-demand provisioning (API.md §8): when no pool serves an Active model, pick a target pool,
//! send its node a `load-model` command, bind the triggering task to that pool, relay the
//! preparation progress from heartbeats to the task's verbose stream, and end the task with a typed
//! error when the load fails. One load per pool, and per (node, model), at a time.

use std::collections::BTreeMap;
use std::time::Instant;

use api::catalog::ModelRecord;
use api::events::{Event, Metrics as MetricsFrame, PrepProgress};
use api::ids::StepId;
use api::node::{
    Command, CommandKind, CommandState, CommandStatus, LoadedModel, PoolState, StepKind, StepStatus,
};
use api::task::{PlacementMode, PreparationStep, TaskState};
use api::{CommandId, CorrelationId, ErrorCode, ErrorEnvelope, ModelId, NodeId, PoolId, TaskId};
use catalog::Copy;

use super::models::failure_reason;
use super::{Core, Effects};
use crate::metrics::{self as m, labels};

/// Rough step durations for `estimated_ms` (§8) when nothing better is known.
const FETCH_BYTES_PER_MS: u64 = 50_000; // 50 MB/s
const ENGINE_BUILD_MS: u64 = 660_000; // ~11 min on 2 cores (ENGINE.md)
const WARMUP_MS: u64 = 5_000;

/// A `load-model` command in flight.
pub struct Load {
    pub(super) node_id: NodeId,
    pub(super) pool_id: PoolId,
    pub(super) model_id: ModelId,
    pub(super) steps: Vec<PreparationStep>,
    pub(super) progress: BTreeMap<StepId, PrepProgress>,
    /// Tasks bound to this load (the one that triggered it).
    pub(super) tasks: Vec<TaskId>,
}

/// The loads part of the core: `load-model` commands in flight and node-level catalog commands
/// (`evict-model`, `verify-model`), each by command id until the node reports it finished.
#[derive(Default)]
pub struct Loads {
    loads: BTreeMap<CommandId, Load>,
    node_commands: std::collections::HashMap<CommandId, super::models::NodeCommand>,
}

impl Loads {
    pub fn get(&self, id: &CommandId) -> Option<&Load> {
        self.loads.get(id)
    }

    pub fn get_mut(&mut self, id: &CommandId) -> Option<&mut Load> {
        self.loads.get_mut(id)
    }

    pub fn contains_key(&self, id: &CommandId) -> bool {
        self.loads.contains_key(id)
    }

    pub fn insert(&mut self, id: CommandId, load: Load) {
        self.loads.insert(id, load);
    }

    pub fn remove(&mut self, id: &CommandId) -> Option<Load> {
        self.loads.remove(id)
    }

    /// The loads running on `node_id`.
    pub fn on_node(&self, node_id: &NodeId) -> Vec<CommandId> {
        self.loads
            .iter()
            .filter(|(_, l)| l.node_id == *node_id)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn insert_node_command(&mut self, id: CommandId, cmd: super::models::NodeCommand) {
        self.node_commands.insert(id, cmd);
    }

    pub fn has_node_command(&self, id: &CommandId) -> bool {
        self.node_commands.contains_key(id)
    }

    pub fn remove_node_command(&mut self, id: &CommandId) -> Option<super::models::NodeCommand> {
        self.node_commands.remove(id)
    }
}

impl Load {
    /// The kind of the first step not yet completed (the task's `phase`).
    fn phase(&self) -> StepKind {
        self.steps
            .iter()
            .find(|s| {
                self.progress
                    .get(&s.id)
                    .is_none_or(|p| p.status != StepStatus::Completed)
            })
            .map(|s| s.kind)
            .unwrap_or(StepKind::PoolWarmup)
    }

    fn human(&self) -> String {
        let Some(s) = self.steps.iter().find(|s| {
            self.progress
                .get(&s.id)
                .is_none_or(|p| p.status != StepStatus::Completed)
        }) else {
            return format!(
                "Pool {} on node {} is ready with {}",
                self.pool_id, self.node_id, self.model_id
            );
        };
        let p = self.progress.get(&s.id);
        match s.kind {
            StepKind::ModelFetch => {
                let (done, total) = p.map(|p| (p.bytes_done, p.bytes_total)).unwrap_or((0, 0));
                if total > 0 {
                    format!(
                        "Fetching {} to node {}: {:.0}% ({:.1} of {:.1} MB)",
                        self.model_id,
                        self.node_id,
                        100.0 * done as f64 / total as f64,
                        done as f64 / 1e6,
                        total as f64 / 1e6
                    )
                } else {
                    format!(
                        "Fetching {} to node {}: {:.1} MB so far",
                        self.model_id,
                        self.node_id,
                        done as f64 / 1e6
                    )
                }
            }
            StepKind::EngineProvision => format!("Building llama-server on node {}", self.node_id),
            StepKind::PoolWarmup => format!(
                "Starting the engine for pool {} on node {} with {}",
                self.pool_id, self.node_id, self.model_id
            ),
        }
    }

    fn frame(&self) -> Event {
        Event::Metrics(MetricsFrame {
            phase: Some(self.phase()),
            prep: Some(self.progress.clone()),
            human: Some(self.human()),
            ..Default::default()
        })
    }
}

impl<E: Effects> Core<E> {
    /// The pool a model should be loaded into (§8): an Online node's `provisioning_target` pool
    /// that is Unloaded (or Ready and idle, with `allow_repurpose_idle`) and has room for the model
    /// (free VRAM on its devices, or the node's memory for a CPU pool, ≥ size × headroom). The most
    /// free VRAM wins; ties go to (`node_id`, `pool_id`).
    pub(super) fn provision_target(&self, rec: &ModelRecord) -> Option<PoolId> {
        let need = rec
            .size_bytes
            .map(|s| (s as f64 * self.cfg.vram_headroom) as u64);
        self.registry
            .pools()
            .iter()
            .filter(|(_, p)| {
                p.node_online && p.status.provisioning_target && p.op.is_none() && !p.draining
            })
            .filter(|(id, p)| match p.status.state {
                PoolState::Unloaded => true,
                PoolState::Ready => {
                    self.cfg.allow_repurpose_idle
                        && p.holding.is_empty()
                        && self.queued_for_pool(id, p.model_id()) == 0
                }
                _ => false,
            })
            .filter(|(_, p)| {
                let room = if p.status.device_mask == "cpu" {
                    self.registry
                        .node(&p.node_id)
                        .map(|n| n.capabilities.ram_total_bytes)
                        .unwrap_or(0)
                } else {
                    p.free_vram
                };
                need.is_none_or(|n| room >= n)
            })
            .max_by(|(a_id, a), (b_id, b)| {
                a.free_vram
                    .cmp(&b.free_vram)
                    .then_with(|| (&b.node_id, b_id).cmp(&(&a.node_id, a_id)))
            })
            .map(|(id, _)| id.clone())
    }

    /// Sends `load-model` for `rec` to `pool_id`'s node and binds task `id` to it. Returns the
    /// steps for the 202 and their summed estimate.
    pub(super) fn start_load(
        &mut self,
        rec: &ModelRecord,
        pool_id: &PoolId,
        id: TaskId,
        correlation_id: &CorrelationId,
    ) -> (Vec<PreparationStep>, u64) {
        let Some(pool) = self.registry.pool(pool_id) else {
            return (vec![], 0);
        };
        let node_id = pool.node_id.clone();
        let mut steps = vec![];
        if !rec.model_ref.starts_with("file:") && !rec.locations.contains(&node_id) {
            steps.push(PreparationStep {
                id: StepId::model(&rec.model_ref),
                kind: StepKind::ModelFetch,
                node_id: node_id.clone(),
                description: format!("Fetch {} to node {node_id}", rec.model_ref),
                estimated_ms: rec.size_bytes.map(|s| s / FETCH_BYTES_PER_MS),
                bytes_total: rec.size_bytes,
                status: StepStatus::Pending,
            });
        }
        if !pool.status.engine_built {
            steps.push(PreparationStep {
                id: StepId::engine(),
                kind: StepKind::EngineProvision,
                node_id: node_id.clone(),
                description: format!("Build llama-server on node {node_id}"),
                estimated_ms: Some(ENGINE_BUILD_MS),
                bytes_total: None,
                status: StepStatus::Pending,
            });
        }
        steps.push(PreparationStep {
            id: StepId::pool(pool_id),
            kind: StepKind::PoolWarmup,
            node_id: node_id.clone(),
            description: format!("Start the engine for pool {pool_id} with {}", rec.id),
            estimated_ms: Some(WARMUP_MS),
            bytes_total: None,
            status: StepStatus::Pending,
        });
        let estimate = steps.iter().filter_map(|s| s.estimated_ms).sum();
        let progress = steps
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    PrepProgress {
                        status: StepStatus::Pending,
                        pct: 0.0,
                        bytes_done: 0,
                        bytes_total: s.bytes_total.unwrap_or(0),
                    },
                )
            })
            .collect();
        let command_id = CommandId::new();
        if let Some(p) = self.registry.pool_mut(pool_id) {
            p.op = Some((command_id, CommandKind::LoadModel));
            p.loading = Some(rec.id.clone());
        }
        let model = LoadedModel {
            id: rec.id.clone(),
            model_ref: rec.model_ref.clone(),
            digest: rec.digest.clone(),
            size_bytes: rec.size_bytes,
            metadata: None,
        };
        let tenant = self
            .tasks
            .get(&id)
            .map(|t| t.tenant.to_string())
            .unwrap_or_default();
        tracing::info!(event = "task.provisioning", correlation_id = %correlation_id, task_id = %id, tenant = %tenant, pool_id = %pool_id, node_id = %node_id, model = %rec.id,
            "No pool serves {}; loading it into pool {pool_id} on node {node_id} ({} step(s))", rec.id, steps.len());
        self.send(
            &node_id,
            Command {
                command_id,
                kind: CommandKind::LoadModel,
                pool_id: Some(pool_id.clone()),
                model: Some(model),
                deadline_ms: None,
                correlation_id: correlation_id.clone(),
            },
        );
        self.loads.insert(
            command_id,
            Load {
                node_id,
                pool_id: pool_id.clone(),
                model_id: rec.id.clone(),
                steps: steps.clone(),
                progress,
                tasks: vec![id],
            },
        );
        if let Some(t) = self.tasks.get_mut(&id) {
            t.load = Some(command_id);
        }
        (steps, estimate)
    }

    /// The admission decision of §6.5 and §8 for an Active model: `None` when a pool serves it (or
    /// is loading it), the provisioning target when one must be loaded, else 503. `pinned` labels
    /// the `no_capacity` decision (§16: a pinned task's decision counts as pinned).
    pub(super) fn serving_or_target(
        &self,
        rec: &ModelRecord,
        pinned: bool,
    ) -> Result<Option<PoolId>, ErrorEnvelope> {
        if self.model_has_pool(&rec.id) {
            return Ok(None);
        }
        if self.cfg.provisioning_on_demand {
            if let Some(pool) = self.provision_target(rec) {
                return Ok(Some(pool));
            }
        }
        self.metrics.inc(
            m::PLACEMENT_DECISIONS,
            labels(&[
                ("outcome", "no_capacity"),
                ("pinned", if pinned { "true" } else { "false" }),
                ("fallback", "false"),
            ]),
            1.0,
        );
        let why = if self.cfg.provisioning_on_demand {
            "and no pool can load it now"
        } else {
            "and provisioning is off"
        };
        Err(ErrorEnvelope::new(
            ErrorCode::ModelNotAvailable,
            format!("no pool serves {} {why}", rec.id),
        )
        .with_retriable(true)
        .with_retry_after(5000))
    }

    /// The `started` frame of a task bound to a pool that is being provisioned (§5.2).
    pub(super) fn announce_binding(&mut self, id: TaskId, pool_id: &PoolId, predicted: u64) {
        let Some(pool) = self.registry.pool(pool_id) else {
            return;
        };
        let (node_id, engine_version) = (pool.node_id.clone(), pool.status.engine_version.clone());
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        t.admission_predicted_ms = predicted;
        t.started_sent = true;
        t.pool = Some(pool_id.clone());
        t.node = Some(node_id.clone());
        t.log.append(Event::Started(api::events::Started {
            queue_position: t.admission_position,
            predicted_start_ms: predicted,
            pool_id: pool_id.clone(),
            node_id,
            engine: api::ENGINE_LLAMACPP.into(),
            engine_version,
            model: t.model.clone(),
        }));
        let frame = t.load.and_then(|c| self.loads.get(&c)).map(Load::frame);
        if let Some(f) = frame {
            t.log.append(f);
        }
    }

    /// Binds a newly admitted task to its provisioning target: it waits in that pool's queue and
    /// its `started` frame names the pool now (§5.2).
    pub(super) fn bind_to_target(v: &mut crate::admission::ValidatedTask, pool_id: &PoolId) {
        v.placement.mode = PlacementMode::Pin;
        v.placement.pin_pool_id = Some(pool_id.clone());
    }

    /// A `load-model` status from a heartbeat.
    pub(super) fn load_status(&mut self, st: CommandStatus, now: Instant) {
        let Some(load) = self.loads.get_mut(&st.command_id) else {
            return;
        };
        let before = load.progress.clone();
        for p in &st.progress {
            load.progress.insert(
                p.step_id.clone(),
                PrepProgress {
                    status: p.status,
                    pct: p.pct,
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                },
            );
        }
        match st.status {
            CommandState::Accepted | CommandState::Running => {
                if load.progress != before {
                    let frame = load.frame();
                    for id in load.tasks.clone() {
                        if let Some(t) = self
                            .tasks
                            .get(&id)
                            .filter(|t| t.load == Some(st.command_id))
                        {
                            t.log.append(frame.clone());
                        }
                    }
                }
            }
            CommandState::Completed => {
                for id in load.tasks.clone() {
                    self.prep_completed(id);
                }
                let Some(load) = self.loads.remove(&st.command_id) else {
                    return;
                };
                if let Some(r) = st.result {
                    let copy = Copy {
                        node_id: load.node_id.clone(),
                        digest: Some(r.digest),
                        size_bytes: Some(r.size_bytes),
                        metadata: r.metadata,
                        verified: true,
                    };
                    match self.catalog.record_copy(load.model_id.as_str(), copy) {
                        Ok(catalog::CopyOutcome::Recorded) => {
                            self.count_verification(true, "ok");
                        }
                        Ok(catalog::CopyOutcome::Mismatch { expected, actual }) => {
                            self.count_verification(false, "digest_mismatch");
                            tracing::error!(event = "catalog.mismatch", model = %load.model_id, node_id = %load.node_id, "Node {} loaded {} with digest {actual}; the catalog has {expected}", load.node_id, load.model_id);
                        }
                        Err(e) => tracing::error!(
                            event = "catalog.write_failed",
                            "Catalog write failed: {e}"
                        ),
                    }
                }
                tracing::info!(event = "command.finished", command_id = %st.command_id, node_id = %load.node_id, pool_id = %load.pool_id, model = %load.model_id,
                    "Pool {} on node {} loaded {}", load.pool_id, load.node_id, load.model_id);
                self.end_load(&load.pool_id);
                self.evaluate_pool(&load.pool_id.clone());
            }
            CommandState::Failed => {
                let Some(load) = self.loads.remove(&st.command_id) else {
                    return;
                };
                let env = st.error.unwrap_or_else(|| {
                    ErrorEnvelope::new(ErrorCode::PoolUnavailable, "the model could not be loaded")
                });
                if matches!(
                    env.code,
                    ErrorCode::UntrustedArtifact | ErrorCode::ModelNotAvailable
                ) {
                    self.count_verification(false, failure_reason(&env));
                }
                tracing::warn!(event = "command.finished", command_id = %st.command_id, node_id = %load.node_id, pool_id = %load.pool_id, code = %env.code,
                    "Loading {} into pool {} failed: {}", load.model_id, load.pool_id, env.message);
                self.end_load(&load.pool_id);
                self.fail_waiting(&load, env, now);
            }
        }
    }

    fn end_load(&mut self, pool_id: &PoolId) {
        if let Some(p) = self.registry.pool_mut(pool_id) {
            p.op = None;
            p.loading = None;
        }
    }

    /// Ends the load's bound tasks, and the tasks queued for its model when nothing else can serve
    /// it now, with the load's error (they waited on this one preparation).
    fn fail_waiting(&mut self, load: &Load, env: ErrorEnvelope, now: Instant) {
        let mut ids: Vec<TaskId> = load.tasks.clone();
        if !self.model_has_pool(&load.model_id) {
            let key = super::queue::QueueKey::Model(load.model_id.clone());
            ids.extend(
                self.tasks
                    .iter()
                    .filter(|(_, t)| t.state() == TaskState::Queued && t.queue_key == key)
                    .map(|(id, _)| *id),
            );
        }
        for id in ids {
            if self
                .tasks
                .get(&id)
                .is_some_and(|t| t.state() == TaskState::Queued)
            {
                self.dequeue(id);
                let mut e = env.clone();
                e.pool_id.get_or_insert_with(|| load.pool_id.clone());
                self.finish_with_error(id, e, now);
            }
        }
    }

    /// Before a bound task's first dispatch (or when its load completes): every step is reported
    /// `completed` in one last verbose frame, so no token precedes a pending step (§8).
    pub(super) fn prep_completed(&mut self, id: TaskId) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let Some(cmd) = t.load.take() else { return };
        let progress: BTreeMap<StepId, PrepProgress> = match self.loads.get(&cmd) {
            Some(l) => l.progress.clone(),
            None => BTreeMap::new(),
        };
        let done: BTreeMap<StepId, PrepProgress> = progress
            .into_iter()
            .map(|(k, p)| {
                (
                    k,
                    PrepProgress {
                        status: StepStatus::Completed,
                        pct: 100.0,
                        bytes_done: p.bytes_total.max(p.bytes_done),
                        bytes_total: p.bytes_total.max(p.bytes_done),
                    },
                )
            })
            .collect();
        let human = match (&t.pool, &t.node) {
            (Some(p), Some(n)) => format!("Pool {p} on node {n} is ready with {}", t.model),
            _ => format!("{} is ready", t.model),
        };
        t.log.append(Event::Metrics(MetricsFrame {
            phase: Some(StepKind::PoolWarmup),
            prep: (!done.is_empty()).then_some(done),
            human: Some(human),
            ..Default::default()
        }));
    }

    /// Loads on a node that registered again were lost with its previous process.
    pub(super) fn forget_loads_of(&mut self, node_id: &NodeId, now: Instant) {
        let lost = self.loads.on_node(node_id);
        for id in lost {
            let env = ErrorEnvelope::new(
                ErrorCode::PoolUnavailable,
                format!("node {node_id} restarted while loading the model"),
            )
            .with_retry_after(1000);
            self.load_status(
                CommandStatus {
                    command_id: id,
                    status: CommandState::Failed,
                    progress: vec![],
                    error: Some(env),
                    result: None,
                },
                now,
            );
        }
    }
}
