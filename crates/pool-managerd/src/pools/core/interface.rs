//! The supervisor core's interface: the [`Effects`] it asks for, the timers it sets, the answers
//! it gives (admissions, refusals, command updates) and the [`Snapshot`] it publishes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use api::node::{CommandResult, PoolState};
use api::{CommandId, ErrorEnvelope, PoolId, TaskId};

use crate::commands::ModelOrder;
use crate::pools::ModelInfo;

/// Work the core asks the outside world to do. Each slow job reports back through a `Core::on_*`
/// call carrying the generation or command it was started for.
pub trait Effects {
    /// Build or locate the engine binary; answered by [`Core::on_provisioned`].
    fn provision(&mut self);
    /// Make `order`'s model available on this node; answered by [`Core::on_fetched`].
    fn fetch(&mut self, order: ModelOrder, command: Option<CommandId>);
    /// Launch engine `generation` with `model`; answered by [`Core::on_engine_ready`] or
    /// [`Core::on_engine_failed`], and later by [`Core::on_engine_exited`].
    fn start_engine(&mut self, generation: u64, model: &ModelInfo);
    /// Stop engine `generation` (or give up a launch in progress); answered by
    /// [`Core::on_engine_exited`] (or [`Core::on_engine_failed`] for a launch).
    fn stop_engine(&mut self, generation: u64);
    /// End these tasks as lost: their engine is gone or going (WORKER_RESET / POOL_UNAVAILABLE).
    fn abort_tasks(&mut self, tasks: Vec<TaskId>);
    /// Call [`Core::on_timer`] with `timer` at `at` (replacing an earlier one of the same kind).
    fn timer(&mut self, at: Instant, timer: Timer);
    /// Record a command's progress in the command book (reported in heartbeats).
    fn command(&mut self, id: &CommandId, update: CommandUpdate);
    /// Publish what the rest of the daemon may know about the pool now.
    fn report(&mut self, snapshot: Snapshot);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// The restart backoff is over.
    Restart,
    /// A drain's deadline: running tasks are lost, the engine stops.
    Drain,
    /// A reload stops waiting for the old engine's tasks.
    Retire,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandUpdate {
    Running,
    Completed(Option<CommandResult>),
    Failed(ErrorEnvelope),
}

/// A model fetch failed: the envelope for the command, the reason for `last_error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchFailed {
    pub envelope: ErrorEnvelope,
    pub reason: String,
}

/// Why a dispatch was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The pool does not serve the model (or its digest) the dispatch names.
    ModelNotServed,
    /// No engine serves, or the pool refuses new work; the pool's state on the wire.
    Unready(PoolState),
    /// The task id is already running here.
    Duplicate,
    /// Every slot is held.
    Exhausted,
}

/// An admitted task: which engine generation runs it and its token meter.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub generation: u64,
    pub model: ModelInfo,
    pub engine_version: Option<String>,
    pub meter: Arc<TaskMeter>,
}

/// How a task ended, as the adapter saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskEnd {
    /// True for an `end` line, false for an `error` line.
    pub ok: bool,
    /// The engine's decode speed for this task, tokens/s.
    pub decode_tps: Option<f64>,
}

/// Tokens a running task has used, written by its adapter per frame and read by status reports.
#[derive(Debug, Default)]
pub struct TaskMeter {
    pub tokens_evaluated: AtomicU64,
    pub tokens_out: AtomicU64,
}

impl TaskMeter {
    pub fn used(&self) -> u64 {
        self.tokens_evaluated.load(Ordering::Relaxed) + self.tokens_out.load(Ordering::Relaxed)
    }
}

/// What the rest of the daemon may know about the pool at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: PoolState,
    /// The model the pool serves (or will serve once started); None with nothing loaded yet.
    pub model: Option<ModelInfo>,
    /// The generation of the engine that serves, if one does.
    pub serving: Option<u64>,
    pub engine_version: Option<String>,
    pub engine_built: bool,
    pub last_error: Option<String>,
    pub slots_free: u32,
    pub running: Vec<(TaskId, Arc<TaskMeter>)>,
    /// Engine exits nobody asked for (crashes, failed health checks).
    pub crashes: u64,
    /// Dispatches by outcome: finished with `end`, with `error`.
    pub ended: u64,
    pub failed: u64,
    /// EWMA of the engine's decode speed, tokens/s.
    pub decode_tps: Option<f64>,
}

impl Snapshot {
    /// A pool that has not reported yet: Provisioning, nothing loaded, every slot free.
    pub fn empty(slots: u32) -> Self {
        Self {
            state: PoolState::Provisioning,
            model: None,
            serving: None,
            engine_version: None,
            engine_built: false,
            last_error: None,
            slots_free: slots,
            running: vec![],
            crashes: 0,
            ended: 0,
            failed: 0,
            decode_tps: None,
        }
    }
}

/// What the core needs to know about its pool.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pool_id: PoolId,
    pub slots: u32,
    /// Failures within [`BREAKER_WINDOW`] that trip the breaker.
    pub max_restarts: u32,
    /// The model configured for the pool, fetched after provisioning.
    pub model: Option<ModelOrder>,
}
