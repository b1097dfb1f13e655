//! The supervisor core of one pool: a synchronous state machine that owns the pool's phase, its
//! engines by generation, its slots and in-flight tasks, its restart backoff and circuit breaker,
//! and the pool command in progress. It never awaits and reads no clock; it touches the world only
//! through [`Effects`] (provision, fetch, start or stop an engine, abort tasks, set a timer,
//! update a command, report a snapshot), so it is unit-tested against a recording fake. The async
//! shell that feeds it messages lives in [`super::runner`].
//!
//! Invariants: at most `slots` tasks are admitted at once; a task is admitted only while an engine
//! serves and the pool is Ready (or reloading beside a serving engine); events about an engine
//! generation that is neither serving, starting nor stopping are ignored; at most one command runs
//! at a time, the others wait in order.

mod breaker;
mod interface;
mod steps;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::node::{CommandResult, PoolState};
use api::worker::DispatchModel;
use api::{CommandId, ErrorCode, ErrorEnvelope, TaskId};

pub(crate) use breaker::Breaker;
pub use interface::*;

use crate::commands::PoolCommand;
use crate::pools::ModelInfo;

/// Engine failures (crashes and failed starts) counted within this window trip the breaker.
pub const BREAKER_WINDOW: Duration = Duration::from_secs(300);
/// How long a reload waits for the old engine's tasks before stopping it anyway.
pub const RETIRE_WAIT: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The pool's phase. `Backoff` and `Reloading` are internal: the wire shows them as `Starting`,
/// or `Ready` while an engine serves (docs/decisions.md 22).
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Building the engine or fetching a model, with nothing serving.
    Provisioning,
    /// An engine is launching (or waiting for its predecessor to exit), nothing serves.
    Starting,
    Ready,
    /// No new tasks; running ones get until `until`, then the engine stops.
    Draining {
        until: Instant,
    },
    /// Switching to another model; see [`Reload`].
    Reloading(Reload),
    /// Waiting out the restart backoff after a crash or a failed start.
    Backoff {
        until: Instant,
    },
    /// The breaker tripped, or provisioning or the model failed; waits for a reload.
    Failed {
        reason: String,
        attempts: u32,
    },
    Unloaded,
}

/// The steps of a reload to another model.
#[derive(Debug, Clone, PartialEq)]
pub enum Reload {
    /// The new model is being fetched; the old engine (if alive) keeps serving.
    Fetching,
    /// The new engine starts beside the old one, which keeps serving.
    SideBySide { model: ModelInfo },
    /// The new engine serves; the old one finishes its tasks (until `until`), then stops.
    Retiring {
        old: u64,
        result: Option<CommandResult>,
        until: Instant,
    },
    /// Not enough memory for two: the old engine finishes its tasks (until `until`) first.
    Quiescing { model: ModelInfo, until: Instant },
    /// The old engine is stopped (or stopping); the new one starts after it.
    Swapping { old_model: ModelInfo },
    /// The new engine failed; the old model starts again.
    Restoring { why: String },
}

struct Engine {
    generation: u64,
    model: ModelInfo,
    since: Instant,
}

struct Launch {
    generation: u64,
    model: ModelInfo,
    since: Instant,
    /// The launch waits for this generation to exit first.
    after: Option<u64>,
}

struct Task {
    generation: u64,
    meter: Arc<TaskMeter>,
}

pub struct Core<E: Effects> {
    fx: E,
    settings: Settings,
    phase: Phase,
    /// The model the pool serves or will serve.
    model: Option<ModelInfo>,
    serving: Option<Engine>,
    launching: Option<Launch>,
    /// Generations asked to stop whose exit is not yet reported.
    stopping: BTreeSet<u64>,
    generation: u64,
    tasks: BTreeMap<TaskId, Task>,
    /// The command in progress and the ones waiting for it.
    active: Option<CommandId>,
    queue: VecDeque<PoolCommand>,
    /// Where a failed fetch from Unloaded or Failed returns to.
    fetch_fallback: Option<Phase>,
    breaker: Breaker,
    backoff: Duration,
    built: bool,
    /// The engine is owned elsewhere (a handoff): never started or stopped here.
    external: bool,
    shutting_down: bool,
    engine_version: Option<String>,
    last_error: Option<String>,
    crashes: u64,
    ended: u64,
    failed: u64,
    decode_tps: Option<f64>,
}

impl<E: Effects> Core<E> {
    /// A pool that provisions its engine first (call [`Core::start`]).
    pub fn new(settings: Settings, fx: E) -> Self {
        let breaker = Breaker::new(settings.max_restarts.max(1) as usize, BREAKER_WINDOW);
        Self {
            fx,
            settings,
            phase: Phase::Provisioning,
            model: None,
            serving: None,
            launching: None,
            stopping: BTreeSet::new(),
            generation: 0,
            tasks: BTreeMap::new(),
            active: None,
            queue: VecDeque::new(),
            fetch_fallback: None,
            breaker,
            backoff: FIRST_BACKOFF,
            built: false,
            external: false,
            shutting_down: false,
            engine_version: None,
            last_error: None,
            crashes: 0,
            ended: 0,
            failed: 0,
            decode_tps: None,
        }
    }

    /// A pool around an engine started elsewhere (a handoff): Ready at once as generation 1.
    pub fn adopted(
        settings: Settings,
        model: ModelInfo,
        engine_version: String,
        now: Instant,
        fx: E,
    ) -> Self {
        let mut core = Self::new(settings, fx);
        core.external = true;
        core.built = true;
        core.generation = 1;
        core.engine_version = Some(engine_version);
        core.model = Some(model.clone());
        core.serving = Some(Engine {
            generation: 1,
            model,
            since: now,
        });
        core.phase = Phase::Ready;
        core.report();
        core
    }

    pub fn effects(&mut self) -> &mut E {
        &mut self.fx
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// True once a shutdown has stopped every engine: the runner may exit.
    pub fn finished(&self) -> bool {
        self.shutting_down && self.no_engines()
    }

    /// Starts provisioning the engine.
    pub fn start(&mut self) {
        self.phase = Phase::Provisioning;
        self.fx.provision();
        self.report();
    }

    /// The engine binary is built (`Ok(version)`) or cannot be (`Err(reason)`).
    pub fn on_provisioned(&mut self, result: Result<String, String>, now: Instant) {
        if self.shutting_down {
            return;
        }
        match result {
            Ok(version) => {
                self.built = true;
                self.engine_version = Some(version);
                match self.settings.model.clone() {
                    Some(order) => self.fx.fetch(order, None),
                    None => {
                        self.phase = Phase::Unloaded;
                        self.run_queue(now);
                    }
                }
            }
            Err(reason) => {
                self.last_error = Some(reason.clone());
                self.phase = Phase::Failed {
                    reason,
                    attempts: 0,
                };
                self.run_queue(now);
            }
        }
        self.report();
    }

    /// A command from orchestratord or the local API; it waits while another one runs.
    pub fn on_command(&mut self, cmd: PoolCommand, now: Instant) {
        self.queue.push_back(cmd);
        self.run_queue(now);
        self.report();
    }

    /// A model fetch ended. `side_by_side`: memory allows a second engine beside the current one.
    pub fn on_fetched(
        &mut self,
        command: Option<CommandId>,
        result: Result<(ModelInfo, bool), FetchFailed>,
        now: Instant,
    ) {
        if self.shutting_down {
            return;
        }
        match (command, result) {
            (None, Ok((model, _))) => {
                self.model = Some(model);
                if self.phase == Phase::Provisioning {
                    self.launch(now, None);
                }
            }
            (None, Err(e)) => {
                let reason = e.reason;
                self.last_error = Some(reason.clone());
                self.phase = Phase::Failed {
                    reason,
                    attempts: 0,
                };
                self.run_queue(now);
            }
            (Some(id), result) if self.active == Some(id) => {
                self.fetched_for_command(&id, result, now)
            }
            // A fetch for a command no longer in progress: nothing waits for it.
            (Some(_), _) => {}
        }
        self.report();
    }

    fn fetched_for_command(
        &mut self,
        id: &CommandId,
        result: Result<(ModelInfo, bool), FetchFailed>,
        now: Instant,
    ) {
        let reloading = matches!(self.phase, Phase::Reloading(Reload::Fetching));
        match result {
            Err(e) => {
                self.last_error = Some(e.reason);
                self.finish_command(CommandUpdate::Failed(e.envelope));
                if reloading {
                    if self.serving.is_some() {
                        self.phase = Phase::Ready;
                        self.run_queue(now);
                    } else {
                        // The old engine crashed while the new model was fetched: restart it.
                        self.restart_later(now);
                    }
                } else {
                    self.phase = self.fetch_fallback.take().unwrap_or(Phase::Unloaded);
                    self.run_queue(now);
                }
            }
            Ok((model, side_by_side)) if reloading => {
                self.fx.command(id, CommandUpdate::Running);
                match &self.serving {
                    None => {
                        let old_model = self.model.clone().unwrap_or_else(|| model.clone());
                        self.phase = Phase::Reloading(Reload::Swapping { old_model });
                        self.launch_model(model, now, None);
                    }
                    Some(_) if side_by_side => {
                        self.phase = Phase::Reloading(Reload::SideBySide {
                            model: model.clone(),
                        });
                        self.launch_model(model, now, None);
                    }
                    Some(_) => {
                        let until = now + RETIRE_WAIT;
                        self.phase = Phase::Reloading(Reload::Quiescing { model, until });
                        self.fx.timer(until, Timer::Retire);
                        self.check_retire(now);
                    }
                }
            }
            Ok((model, _)) => {
                // Leaving Failed for a new model starts with a fresh breaker.
                if matches!(self.fetch_fallback.take(), Some(Phase::Failed { .. })) {
                    self.reset_breaker();
                }
                self.model = Some(model);
                self.fx.command(id, CommandUpdate::Running);
                self.launch(now, None);
            }
        }
    }

    /// Engine `generation` answers `/health` and serves.
    pub fn on_engine_ready(&mut self, generation: u64, version: String, now: Instant) {
        let Some(launch) = self
            .launching
            .take_if(|l| l.generation == generation && l.after.is_none())
        else {
            // Not the launch we wait for (a stale one, or one we gave up): stop it.
            if !self.stopping.contains(&generation) && !self.is_serving(generation) {
                self.stop(generation);
            }
            self.report();
            return;
        };
        self.engine_version = Some(version);
        self.last_error = None;
        let new = Engine {
            generation,
            model: launch.model.clone(),
            since: launch.since,
        };
        let result = launch.model.result();
        self.model = Some(launch.model);
        let old = self.serving.replace(new);
        match std::mem::replace(&mut self.phase, Phase::Ready) {
            Phase::Reloading(Reload::SideBySide { .. }) if old.is_some() => {
                let old = old.map(|o| o.generation).unwrap_or(0);
                let until = now + RETIRE_WAIT;
                self.phase = Phase::Reloading(Reload::Retiring { old, result, until });
                self.fx.timer(until, Timer::Retire);
                self.check_retire(now);
            }
            Phase::Reloading(Reload::Restoring { why }) => {
                self.last_error = Some(format!("reload failed: {why}"));
                self.run_queue(now);
            }
            _ => {
                self.finish_command(CommandUpdate::Completed(result));
                self.run_queue(now);
            }
        }
        self.report();
    }

    /// Engine `generation` did not come up (or its launch was given up).
    pub fn on_engine_failed(&mut self, generation: u64, why: String, now: Instant) {
        if self.stopping.remove(&generation) {
            self.after_stop(generation, now);
            self.report();
            return;
        }
        if self
            .launching
            .take_if(|l| l.generation == generation)
            .is_none()
        {
            self.report();
            return;
        }
        let unavailable = |why: String| ErrorEnvelope::new(ErrorCode::PoolUnavailable, why);
        match std::mem::replace(&mut self.phase, Phase::Starting) {
            Phase::Reloading(Reload::SideBySide { .. }) if self.serving.is_some() => {
                let why = format!("reload failed, the old engine keeps serving: {why}");
                self.last_error = Some(why.clone());
                self.finish_command(CommandUpdate::Failed(unavailable(why)));
                self.phase = Phase::Ready;
                self.run_queue(now);
            }
            Phase::Reloading(Reload::SideBySide { .. } | Reload::Swapping { .. }) => {
                self.finish_command(CommandUpdate::Failed(unavailable(format!(
                    "the new engine failed to start: {why}"
                ))));
                self.phase = Phase::Reloading(Reload::Restoring { why });
                // The model the pool served before the reload starts again.
                self.launch(now, None);
            }
            Phase::Reloading(Reload::Restoring { why: first }) => {
                let reason =
                    format!("reload failed ({first}) and the old engine did not come back: {why}");
                self.fail(reason, 0, now);
            }
            _ => {
                self.last_error = Some(why.clone());
                self.engine_failure(why, now);
            }
        }
        self.report();
    }

    /// Engine `generation` exited: asked to (a stop) or not (a crash, failed health checks).
    pub fn on_engine_exited(&mut self, generation: u64, why: String, now: Instant) {
        if self.stopping.remove(&generation) {
            self.after_stop(generation, now);
        } else if self.is_serving(generation) {
            self.serving = None;
            self.crashes += 1;
            self.abort_generation(generation);
            self.crashed(generation, why, now);
        } else if let Phase::Reloading(Reload::Retiring { old, result, .. }) = &self.phase {
            if *old == generation {
                let result = result.clone();
                self.abort_generation(generation);
                self.finish_command(CommandUpdate::Completed(result));
                self.phase = Phase::Ready;
                self.run_queue(now);
            }
        }
        self.report();
    }

    /// The handoff watcher lost the adopted engine.
    pub fn on_abandoned(&mut self, why: String) {
        self.abort_all();
        self.serving = None;
        self.last_error = Some(why);
        self.phase = Phase::Unloaded;
        self.shutting_down = true;
        self.report();
    }

    pub fn on_timer(&mut self, timer: Timer, now: Instant) {
        match (timer, &self.phase) {
            (Timer::Restart, Phase::Backoff { until }) if now >= *until => {
                self.launch(now, None);
            }
            (Timer::Drain, Phase::Draining { until }) if now >= *until => {
                self.abort_all();
                self.stop_serving();
                self.check_drained(now);
            }
            (
                Timer::Retire,
                Phase::Reloading(Reload::Retiring { until, .. } | Reload::Quiescing { until, .. }),
            ) if now >= *until => self.retire(now),
            _ => {}
        }
        self.report();
    }

    /// Stops everything: running tasks are lost, every engine stops; [`Core::finished`] tells when.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        // Close our own streams first: an open stream keeps llama-server up for ~30 s.
        self.abort_all();
        self.stop_serving();
        if let Some(l) = self.launching.take() {
            if l.after.is_none() {
                self.stop(l.generation);
            }
        }
        if let Phase::Reloading(Reload::Retiring { old, .. }) = self.phase {
            if !self.stopping.contains(&old) {
                self.stop(old);
            }
        }
        if let Some(id) = self.active.take() {
            let e =
                ErrorEnvelope::new(ErrorCode::PoolUnavailable, "pool-managerd is shutting down")
                    .with_retriable(true);
            self.fx.command(&id, CommandUpdate::Failed(e));
        }
        self.phase = Phase::Unloaded;
        self.report();
    }

    /// Admits a dispatch for `task` naming `model`, or says why not.
    pub fn admit(&mut self, task: &TaskId, model: &DispatchModel) -> Result<Admitted, Refusal> {
        let Some(engine) = &self.serving else {
            return Err(match &self.model {
                Some(m) if model_matches(m, model) => Refusal::Unready(self.wire_state()),
                _ => Refusal::ModelNotServed,
            });
        };
        if !model_matches(&engine.model, model) {
            return Err(Refusal::ModelNotServed);
        }
        if self.shutting_down || !matches!(self.phase, Phase::Ready | Phase::Reloading(_)) {
            return Err(Refusal::Unready(self.wire_state()));
        }
        if self.tasks.contains_key(task) {
            return Err(Refusal::Duplicate);
        }
        if self.tasks.len() >= self.settings.slots as usize {
            return Err(Refusal::Exhausted);
        }
        let meter = Arc::new(TaskMeter::default());
        let admitted = Admitted {
            generation: engine.generation,
            model: engine.model.clone(),
            engine_version: self.engine_version.clone(),
            meter: meter.clone(),
        };
        self.tasks.insert(
            *task,
            Task {
                generation: engine.generation,
                meter,
            },
        );
        self.report();
        Ok(admitted)
    }

    /// `task`'s slot is free again (the engine confirmed it, or the engine is gone).
    pub fn release(&mut self, task: &TaskId, end: TaskEnd, now: Instant) {
        if self.tasks.remove(task).is_none() {
            return;
        }
        if end.ok {
            self.ended += 1;
        } else {
            self.failed += 1;
        }
        if let Some(tps) = end.decode_tps.filter(|v| v.is_finite() && *v > 0.0) {
            self.decode_tps = Some(match self.decode_tps {
                Some(prev) => 0.8 * prev + 0.2 * tps,
                None => tps,
            });
        }
        if matches!(self.phase, Phase::Draining { .. }) && self.tasks.is_empty() {
            self.stop_serving();
            self.check_drained(now);
        }
        self.check_retire(now);
        self.report();
    }

    // ---- reports ----

    /// The state orchestratord sees (docs/decisions.md 22).
    pub fn wire_state(&self) -> PoolState {
        match &self.phase {
            _ if self.shutting_down && !self.no_engines() => PoolState::Draining,
            Phase::Provisioning => PoolState::Provisioning,
            Phase::Starting | Phase::Backoff { .. } => PoolState::Starting,
            Phase::Ready => PoolState::Ready,
            Phase::Draining { .. } => PoolState::Draining,
            Phase::Reloading(_) if self.serving.is_some() => PoolState::Ready,
            Phase::Reloading(_) => PoolState::Starting,
            Phase::Failed { .. } => PoolState::Failed,
            Phase::Unloaded => PoolState::Unloaded,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.wire_state(),
            model: self.model.clone(),
            serving: self.serving.as_ref().map(|e| e.generation),
            engine_version: self.engine_version.clone(),
            engine_built: self.built,
            last_error: self.last_error.clone(),
            slots_free: self.settings.slots.saturating_sub(self.tasks.len() as u32),
            running: self
                .tasks
                .iter()
                .map(|(id, t)| (*id, t.meter.clone()))
                .collect(),
            crashes: self.crashes,
            ended: self.ended,
            failed: self.failed,
            decode_tps: self.decode_tps,
        }
    }

    fn report(&mut self) {
        let snap = self.snapshot();
        self.fx.report(snap);
    }
}

/// A dispatch's model matches the served one (§13.2): the ids are equal, and when the dispatch
/// names a digest the served model has that digest (docs/decisions.md 39).
pub fn model_matches(served: &ModelInfo, want: &DispatchModel) -> bool {
    served.id == want.id
        && match (&want.digest, &served.digest) {
            (None, _) => true,
            (Some(w), Some(s)) => w == s,
            (Some(_), None) => false,
        }
}
