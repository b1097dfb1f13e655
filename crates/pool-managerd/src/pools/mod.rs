//! Pools: one supervisor per pool. Its synchronous [`core::Core`] owns the pool's phase, engines,
//! slots and in-flight tasks; its [`runner`] is the async shell that owns the engine processes and
//! feeds the core messages. The rest of the daemon holds a [`Pool`] handle: it reads the published
//! [`PoolView`] and sends intents (commands, admits, releases, cancels) to the runner.
//!
//! Invariants: at most `slots` dispatches are admitted at once; a slot is released only after the
//! engine confirmed it free (or the engine died); the engine's API key never leaves this node.

pub mod core;
pub mod runner;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use api::node::{LoadedModel, PoolStatus};
use api::worker::DispatchModel;
use api::{PoolId, TaskId};
use engine::EngineClient;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use self::core::{Refusal, Snapshot, TaskEnd, TaskMeter};
use crate::commands::{ModelOrder, PoolCommand};
use crate::config::PoolSpec;
use crate::metrics::PoolSample;
pub use runner::SupervisorEnv;

/// The model an engine serves: its file on this node and what hashing and reading it taught us.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub id: api::ModelId,
    /// The normalized ModelRef.
    pub model_ref: String,
    pub path: std::path::PathBuf,
    pub digest: Option<String>,
    pub size_bytes: Option<u64>,
    pub metadata: Option<api::catalog::GgufInfo>,
}

impl ModelInfo {
    pub fn loaded(&self) -> LoadedModel {
        LoadedModel {
            id: self.id.clone(),
            model_ref: self.model_ref.clone(),
            digest: self.digest.clone(),
            size_bytes: self.size_bytes,
            metadata: self.metadata.clone(),
        }
    }

    pub(crate) fn from_fetched(order: &ModelOrder, f: models::Fetched) -> Self {
        Self {
            id: order.id.clone(),
            model_ref: order.model_ref.to_string(),
            path: f.path,
            digest: Some(f.digest),
            size_bytes: Some(f.size_bytes),
            metadata: Some(f.metadata),
        }
    }

    pub(crate) fn result(&self) -> Option<api::node::CommandResult> {
        Some(api::node::CommandResult {
            digest: self.digest.clone()?,
            size_bytes: self.size_bytes.unwrap_or(0),
            metadata: self.metadata.clone(),
        })
    }
}

/// What a pool publishes: the core's snapshot and the client of the engine that serves.
#[derive(Clone)]
pub struct PoolView {
    pub snapshot: Snapshot,
    pub client: Option<EngineClient>,
}

/// An admitted dispatch: the engine to run it on and its controls.
pub struct Admission {
    pub client: EngineClient,
    pub engine_version: String,
    pub model: ModelInfo,
    pub generation: u64,
    /// Triggered by a cancel request.
    pub cancel: CancellationToken,
    /// Triggered when the engine died or is being stopped: the request is lost, not canceled.
    pub lost: CancellationToken,
    pub meter: Arc<TaskMeter>,
}

/// The runner is gone (the pool was dropped or the daemon is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the pool is shutting down")]
pub struct Closed;

/// A handle on one pool's supervisor.
pub struct Pool {
    pub spec: PoolSpec,
    view: watch::Receiver<PoolView>,
    tx: mpsc::UnboundedSender<runner::Msg>,
}

impl Pool {
    pub fn view(&self) -> PoolView {
        self.view.borrow().clone()
    }

    pub fn model(&self) -> Option<ModelInfo> {
        self.view.borrow().snapshot.model.clone()
    }

    pub fn status(&self) -> PoolStatus {
        status(&self.spec, &self.view.borrow().snapshot)
    }

    /// The pool's counters and status for the metrics page.
    pub fn sample(&self) -> PoolSample {
        let view = self.view.borrow();
        PoolSample {
            status: status(&self.spec, &view.snapshot),
            crashes: view.snapshot.crashes,
            ended: view.snapshot.ended,
            failed: view.snapshot.failed,
        }
    }

    /// Tasks running here now.
    pub fn running(&self) -> usize {
        self.view.borrow().snapshot.running.len()
    }

    pub fn command(&self, cmd: PoolCommand) -> Result<(), Closed> {
        self.tx.send(runner::Msg::Command(cmd)).map_err(|_| Closed)
    }

    /// Asks the supervisor for a slot for `task`.
    pub async fn admit(&self, task: &TaskId, model: &DispatchModel) -> Result<Admission, Refusal> {
        let (reply, answer) = oneshot::channel();
        let msg = runner::Msg::Admit {
            task: *task,
            model: model.clone(),
            reply,
        };
        let closed = || Refusal::Unready(api::node::PoolState::Unloaded);
        self.tx.send(msg).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// `task` is over and its engine slot free (or its engine gone).
    pub fn release(&self, task: &TaskId, end: TaskEnd) {
        let _ = self.tx.send(runner::Msg::Release { task: *task, end });
    }

    /// Cancels `task`; returns a receiver that turns true once its slot is released, or None
    /// when the task is not running here.
    pub async fn cancel(&self, task: &TaskId) -> Option<watch::Receiver<bool>> {
        let (reply, answer) = oneshot::channel();
        let msg = runner::Msg::Cancel { task: *task, reply };
        self.tx.send(msg).ok()?;
        answer.await.ok()?
    }

    /// The adopted engine is gone: running tasks are lost and the supervisor ends.
    pub fn abandon(&self, why: String) {
        let _ = self.tx.send(runner::Msg::Abandon { why });
    }
}

fn status(spec: &PoolSpec, snap: &Snapshot) -> PoolStatus {
    let used: u64 = snap.running.iter().map(|(_, m)| m.used()).sum();
    let capacity = (spec.slots as u64 * spec.ctx_per_slot).max(1);
    PoolStatus {
        pool_id: spec.id.clone(),
        state: snap.state,
        last_error: snap.last_error.clone(),
        engine: api::ENGINE_LLAMACPP.into(),
        engine_version: snap.engine_version.clone(),
        engine_built: snap.engine_built,
        provisioning_target: spec.provisioning_target,
        device_mask: spec.device_mask.clone(),
        slots_total: spec.slots,
        slots_free: snap.slots_free,
        ctx_per_slot: spec.ctx_per_slot,
        workload: spec.workload,
        models: snap.model.iter().map(ModelInfo::loaded).collect(),
        running: snap.running.iter().map(|(id, _)| *id).collect(),
        kv_cache_usage_ratio: Some((used as f64 / capacity as f64).min(1.0)),
        decode_tokens_per_s: snap.decode_tps,
        vram_used_bytes: None,
    }
}

/// The node's pools: configured ones for the daemon's lifetime, adopted ones while their engine
/// lives. Readers take a snapshot of the `Arc`s; the lock is never held across an await.
#[derive(Default)]
pub struct PoolSet(std::sync::RwLock<std::collections::BTreeMap<PoolId, Arc<Pool>>>);

impl PoolSet {
    /// The pool a request path names; NOT_FOUND when none here has that id (text that is not a
    /// valid pool id names none).
    pub fn named(&self, pool_id: &str) -> Result<Arc<Pool>, api::ErrorEnvelope> {
        pool_id
            .parse::<PoolId>()
            .ok()
            .and_then(|id| self.get(&id))
            .ok_or_else(|| {
                api::ErrorEnvelope::new(
                    api::ErrorCode::NotFound,
                    format!("no pool {pool_id} on this node"),
                )
            })
    }

    pub fn get(&self, id: &PoolId) -> Option<Arc<Pool>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn insert(&self, pool: Arc<Pool>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pool.spec.id.clone(), pool);
    }

    pub fn remove(&self, id: &PoolId) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Tasks running on any pool.
    pub fn running(&self) -> usize {
        self.all().iter().map(|p| p.running()).sum()
    }
}

/// Creates the pool and spawns its supervisor on `tracker`; it provisions the engine, fetches the
/// configured model and starts serving.
pub fn spawn(
    spec: PoolSpec,
    env: SupervisorEnv,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Arc<Pool> {
    let model = spec.model.clone().map(|ms| ModelOrder {
        id: ms.id.clone(),
        model_ref: ms.model_ref,
        digest: ms.digest,
    });
    let (tx, view, runner) = runner::Runner::new(spec.clone(), env, model, shutdown, tracker);
    tracker.spawn(runner.run());
    Arc::new(Pool { spec, view, tx })
}

/// A pool around an engine started elsewhere (a handoff): Ready at once; its runner ends when
/// [`Pool::abandon`] is called or at shutdown.
pub fn adopt(
    spec: PoolSpec,
    env: SupervisorEnv,
    model: ModelInfo,
    client: EngineClient,
    engine_version: String,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Arc<Pool> {
    let (tx, view, runner) = runner::Runner::adopted(
        spec.clone(),
        env,
        model,
        client,
        engine_version,
        shutdown,
        tracker,
    );
    tracker.spawn(runner.run());
    Arc::new(Pool { spec, view, tx })
}

/// A pool handle with no supervisor, for tests of the daemon's other parts: the test plays the
/// runner (reads its messages) and publishes views itself.
#[cfg(test)]
pub(crate) fn detached(
    spec: PoolSpec,
) -> (
    Arc<Pool>,
    mpsc::UnboundedReceiver<runner::Msg>,
    watch::Sender<PoolView>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (view_tx, view) = watch::channel(PoolView {
        snapshot: Snapshot::empty(spec.slots),
        client: None,
    });
    (Arc::new(Pool { spec, view, tx }), rx, view_tx)
}

/// A pool spec for tests: `slots` slots of 1024 tokens, model `m1` from a local file.
#[cfg(test)]
pub(crate) fn test_spec(id: &str, slots: u32) -> PoolSpec {
    PoolSpec {
        id: id.parse().unwrap(),
        model: None,
        provisioning_target: true,
        ctx_per_slot: 1024,
        slots,
        device_mask: "cpu".into(),
        gpu_policy: engine::GpuPolicy::Cpu,
        engine_source: "default".into(),
        extra_args: vec![],
        workload: api::task::Workload::Completion,
    }
}

/// True when a dispatch may name `want` on a pool serving `served` (see [`core::model_matches`]).
pub fn serves(served: &ModelInfo, want: &DispatchModel) -> bool {
    self::core::model_matches(served, want)
}
