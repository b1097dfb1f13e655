//! The core's internal steps: running queued commands, starting and stopping engine generations,
//! the reload and drain sequences, crash handling with backoff and breaker, and ending tasks.
//! Only the event methods in the parent module call these.

use std::time::Instant;

use api::{ErrorCode, ErrorEnvelope};

use super::*;
use crate::commands::{ModelOrder, PoolCommand};

impl<E: Effects> Core<E> {
    // ---- commands ----

    pub(super) fn run_queue(&mut self, now: Instant) {
        while self.active.is_none() && self.accepts_commands() {
            let Some(cmd) = self.queue.pop_front() else {
                return;
            };
            self.begin(cmd, now);
        }
    }

    pub(super) fn accepts_commands(&self) -> bool {
        !self.shutting_down
            && matches!(
                self.phase,
                Phase::Ready | Phase::Unloaded | Phase::Failed { .. }
            )
    }

    pub(super) fn begin(&mut self, cmd: PoolCommand, now: Instant) {
        if self.external {
            let id = match &cmd {
                PoolCommand::Drain { id, .. } | PoolCommand::Load { id, .. } => id,
            };
            let e = ErrorEnvelope::new(
                ErrorCode::InvalidParams,
                format!(
                    "pool {} runs an engine adopted from a handoff file; stop or restart it \
                     where it was started",
                    self.settings.pool_id
                ),
            );
            self.fx.command(id, CommandUpdate::Failed(e));
            return;
        }
        match (cmd, self.phase.clone()) {
            (PoolCommand::Drain { id, .. }, Phase::Unloaded | Phase::Failed { .. }) => {
                self.fx.command(&id, CommandUpdate::Completed(None));
            }
            (PoolCommand::Drain { id, deadline }, _) => {
                self.fx.command(&id, CommandUpdate::Running);
                self.active = Some(id);
                let until = now + deadline;
                self.phase = Phase::Draining { until };
                self.fx.timer(until, Timer::Drain);
                if self.tasks.is_empty() {
                    self.stop_serving();
                    self.check_drained(now);
                }
            }
            (PoolCommand::Load { id, .. }, Phase::Failed { .. }) if !self.built => {
                let e = ErrorEnvelope::new(
                    ErrorCode::PoolUnavailable,
                    format!(
                        "the engine of pool {} is not built: {}",
                        self.settings.pool_id,
                        self.last_error.clone().unwrap_or_default()
                    ),
                );
                self.fx.command(&id, CommandUpdate::Failed(e));
            }
            (
                PoolCommand::Load {
                    id,
                    model: Some(order),
                },
                Phase::Ready,
            ) if !self.is_current(&order) => {
                self.active = Some(id);
                self.phase = Phase::Reloading(Reload::Fetching);
                self.fx.fetch(order, Some(id));
            }
            (PoolCommand::Load { id, .. }, Phase::Ready) => {
                // A reload of the model the pool serves restarts its engine.
                self.fx.command(&id, CommandUpdate::Running);
                self.active = Some(id);
                self.abort_all();
                let old = self.stop_serving();
                self.phase = Phase::Starting;
                self.launch(now, old);
            }
            (
                PoolCommand::Load {
                    id,
                    model: Some(order),
                },
                before,
            ) => {
                self.active = Some(id);
                self.fetch_fallback = Some(before);
                self.phase = Phase::Provisioning;
                self.fx.fetch(order, Some(id));
            }
            (PoolCommand::Load { id, model: None }, _) if self.model.is_some() => {
                self.fx.command(&id, CommandUpdate::Running);
                self.active = Some(id);
                if matches!(self.phase, Phase::Failed { .. }) {
                    self.reset_breaker();
                }
                self.launch(now, None);
            }
            (PoolCommand::Load { id, model: None }, _) => {
                let e = ErrorEnvelope::new(
                    ErrorCode::ModelNotAvailable,
                    format!(
                        "pool {} has no model to reload; name one",
                        self.settings.pool_id
                    ),
                );
                self.fx.command(&id, CommandUpdate::Failed(e));
            }
        }
    }

    pub(super) fn finish_command(&mut self, update: CommandUpdate) {
        if let Some(id) = self.active.take() {
            self.fx.command(&id, update);
        }
    }

    pub(super) fn is_current(&self, order: &ModelOrder) -> bool {
        self.model
            .as_ref()
            .is_some_and(|m| m.id == order.id && m.model_ref == order.model_ref.to_string())
    }

    // ---- engines ----

    /// Starts a new generation of the pool's model (after `after` exits, when given).
    pub(super) fn launch(&mut self, now: Instant, after: Option<u64>) {
        match self.model.clone() {
            Some(model) => self.launch_model(model, now, after),
            None => self.phase = Phase::Unloaded,
        }
    }

    pub(super) fn launch_model(&mut self, model: ModelInfo, now: Instant, after: Option<u64>) {
        self.generation += 1;
        if !matches!(self.phase, Phase::Reloading(_)) {
            self.phase = Phase::Starting;
        }
        if after.is_none() {
            self.fx.start_engine(self.generation, &model);
        }
        self.launching = Some(Launch {
            generation: self.generation,
            model,
            since: now,
            after,
        });
    }

    pub(super) fn stop(&mut self, generation: u64) {
        self.stopping.insert(generation);
        self.fx.stop_engine(generation);
    }

    /// Stops the serving engine (if any, and if owned) and returns its generation.
    pub(super) fn stop_serving(&mut self) -> Option<u64> {
        let engine = self.serving.take()?;
        if !self.external {
            self.stop(engine.generation);
        }
        Some(engine.generation)
    }

    pub(super) fn is_serving(&self, generation: u64) -> bool {
        self.serving
            .as_ref()
            .is_some_and(|e| e.generation == generation)
    }

    pub(super) fn no_engines(&self) -> bool {
        self.serving.is_none() && self.launching.is_none() && self.stopping.is_empty()
    }

    /// A stop we asked for is done: start what waited for it, finish a drain or a reload.
    pub(super) fn after_stop(&mut self, generation: u64, now: Instant) {
        if let Some(l) = self.launching.as_mut() {
            if l.after == Some(generation) {
                l.after = None;
                l.since = now;
                let (g, model) = (l.generation, l.model.clone());
                self.fx.start_engine(g, &model);
            }
        }
        if let Phase::Reloading(Reload::Retiring { old, result, .. }) = &self.phase {
            if *old == generation {
                let result = result.clone();
                self.finish_command(CommandUpdate::Completed(result));
                self.phase = Phase::Ready;
                self.run_queue(now);
            }
        }
        self.check_drained(now);
    }

    pub(super) fn check_drained(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Draining { .. }) && self.no_engines() {
            self.phase = Phase::Unloaded;
            self.finish_command(CommandUpdate::Completed(None));
            self.run_queue(now);
        }
    }

    /// A reload waits for the old engine's tasks; once they are done it moves on.
    pub(super) fn check_retire(&mut self, now: Instant) {
        let waiting_for = match &self.phase {
            Phase::Reloading(Reload::Retiring { old, .. }) => *old,
            Phase::Reloading(Reload::Quiescing { .. }) => match &self.serving {
                Some(e) => e.generation,
                None => return self.retire(now),
            },
            _ => return,
        };
        if !self.tasks.values().any(|t| t.generation <= waiting_for) {
            self.retire(now);
        }
    }

    /// The wait for the old engine's tasks is over (they are done, or time is up).
    pub(super) fn retire(&mut self, now: Instant) {
        match self.phase.clone() {
            Phase::Reloading(Reload::Retiring { old, .. }) if !self.stopping.contains(&old) => {
                self.abort_generation(old);
                self.stop(old);
            }
            Phase::Reloading(Reload::Quiescing { model, .. }) => {
                self.abort_all();
                let old = self.stop_serving();
                let old_model = self.model.clone().unwrap_or_else(|| model.clone());
                self.phase = Phase::Reloading(Reload::Swapping { old_model });
                self.launch_model(model, now, old);
            }
            _ => {}
        }
    }

    /// The serving engine `generation` exited without being asked to.
    pub(super) fn crashed(&mut self, generation: u64, why: String, now: Instant) {
        match self.phase.clone() {
            Phase::Draining { .. } => self.check_drained(now),
            // The reload goes on; the new engine (or the restored old one) will serve.
            Phase::Reloading(Reload::Fetching | Reload::SideBySide { .. }) => {
                self.last_error = Some(why);
            }
            Phase::Reloading(Reload::Quiescing { .. }) => self.retire(now),
            Phase::Reloading(Reload::Retiring { old, result, .. }) => {
                // The new engine died; the reload itself is done.
                if !self.stopping.contains(&old) {
                    self.abort_generation(old);
                    self.stop(old);
                }
                self.finish_command(CommandUpdate::Completed(result));
                self.phase = Phase::Ready;
                self.crash_restart(generation, why, now);
            }
            _ => self.crash_restart(generation, why, now),
        }
    }

    pub(super) fn crash_restart(&mut self, _generation: u64, why: String, now: Instant) {
        let ran_long = self
            .serving
            .as_ref()
            .map(|e| now.duration_since(e.since) > BREAKER_WINDOW)
            .unwrap_or(false);
        if ran_long {
            self.backoff = FIRST_BACKOFF;
        }
        self.last_error = Some(why.clone());
        self.engine_failure(why, now);
    }

    /// A crash or failed start: restart after the backoff, or trip the breaker.
    pub(super) fn engine_failure(&mut self, why: String, now: Instant) {
        if let Some(reason) = self.breaker.trip(now, &why) {
            let attempts = self.breaker.count();
            tracing::error!(event = "engine.breaker_open", pool_id = %self.settings.pool_id, reason = %why,
                "Engine for pool {} failed; {reason}", self.settings.pool_id);
            self.finish_command(CommandUpdate::Failed(ErrorEnvelope::new(
                ErrorCode::PoolUnavailable,
                reason.clone(),
            )));
            self.fail(reason, attempts, now);
            return;
        }
        tracing::warn!(event = "engine.restart", pool_id = %self.settings.pool_id, reason = %why,
            "Engine for pool {} failed; restarting in {} ms", self.settings.pool_id, self.backoff.as_millis());
        self.restart_later(now);
    }

    pub(super) fn restart_later(&mut self, now: Instant) {
        let until = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.phase = Phase::Backoff { until };
        self.fx.timer(until, Timer::Restart);
    }

    pub(super) fn fail(&mut self, reason: String, attempts: u32, now: Instant) {
        self.last_error = Some(reason.clone());
        self.phase = Phase::Failed { reason, attempts };
        self.run_queue(now);
    }

    pub(super) fn reset_breaker(&mut self) {
        self.breaker = Breaker::new(self.settings.max_restarts.max(1) as usize, BREAKER_WINDOW);
        self.backoff = FIRST_BACKOFF;
    }

    // ---- tasks ----

    pub(super) fn abort_generation(&mut self, generation: u64) {
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.generation == generation)
            .map(|(id, _)| *id)
            .collect();
        if !ids.is_empty() {
            self.fx.abort_tasks(ids);
        }
    }

    pub(super) fn abort_all(&mut self) {
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        if !ids.is_empty() {
            self.fx.abort_tasks(ids);
        }
    }
}
