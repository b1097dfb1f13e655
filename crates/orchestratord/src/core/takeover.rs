//! An HA leader's tasks in Postgres (decision 70): the rows the store task writes after each
//! message, and what a new leader does with them. Queued tasks go back to their queues in
//! admission order. A task whose attempt was running is dispatched again to the same pool with the
//! same attempt once its node registers again; the worker reattaches and sends the attempt's
//! stream from its first line, so the task's frame log is rebuilt exactly and clients resume
//! with `Last-Event-ID`. Until the takeover window ends, no task is failed for lack of a pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::node::{NodeStatus, PoolState};
use api::task::TaskState;
use api::{ErrorCode, ErrorEnvelope};

use super::journal::Change;
use super::lifecycle::{Outcome, Stamp};
use super::pgstate::{frames_json, StoredTask, TaskRow};
use super::{Core, Effects, TaskEntry, TaskLog};

impl<E: Effects> Core<E> {
    /// The rows of the tasks touched since the last call whose state, attempt or pool changed
    /// (always empty unless the state lives in Postgres).
    pub fn take_task_rows(&mut self) -> Vec<TaskRow> {
        if !self.journal.enabled() {
            return Vec::new();
        }
        let now_ms = daemon::now_ms();
        let mut rows = Vec::new();
        for id in self.journal.take_touched() {
            // A restored task's row already says where its attempt runs.
            let Some(t) = self.tasks.get(&id).filter(|t| t.restore_pool.is_none()) else {
                continue;
            };
            let state = t.state();
            let Some(change) = self.journal.change(id, state, t.attempts, t.pool.as_ref()) else {
                continue;
            };
            let new = matches!(change, Change::New);
            let dispatched = state == TaskState::Running
                && (new || matches!(change, Change::Update { dispatched: true }));
            rows.push(TaskRow {
                id,
                tenant: t.tenant.clone(),
                idem_key: t.v.idempotency_key.clone(),
                state,
                spec: new.then(|| serde_json::to_string(&t.v).unwrap_or_default()),
                correlation_id: t.correlation_id.to_string(),
                node: t.node.clone(),
                pool: t.pool.clone(),
                attempt: t.attempts,
                prefix: dispatched.then(|| frames_json(&t.log.read_from(0).0)),
                terminal: t.log.terminal().map(|(_, f)| frames_json(&[f])),
                updated_ms: now_ms,
            });
        }
        rows
    }

    /// A new leader takes over the tasks its predecessor left (see the module doc). A task that
    /// finished within `tasks.retention_ms` is restored too: its finished attempt is asked of
    /// its worker (attach only), which replays the whole stream, and when the worker no longer
    /// has it the stored terminal frame ends it. A task whose model the catalog no longer
    /// resolves is dropped with an error log. `window` is how long nodes get to register again.
    pub fn restore(&mut self, stored: Vec<StoredTask>, window: Duration, now: Instant) {
        self.takeover_until = Some(now + window);
        let now_ms = daemon::now_ms();
        let retention_ms = self.cfg.retention.as_millis() as u64;
        let (mut queued, mut running, mut finished) = (0, 0, 0);
        for s in stored {
            let done = s.state.is_terminal();
            if done && now_ms.saturating_sub(s.updated_ms) > retention_ms {
                continue;
            }
            let id = s.v.task_id;
            let model = match self.admit_model(&s.v.model_ref, s.v.ctx) {
                Ok(rec) => rec.id,
                Err(e) => {
                    tracing::error!(event = "ha.task_dropped", task_id = %id, tenant = %s.v.tenant,
                        "Task {id} cannot be restored: {}", e.message);
                    continue;
                }
            };
            let correlation_id = s
                .correlation_id
                .parse()
                .unwrap_or_else(|_| api::CorrelationId::new());
            let key = super::admit::queue_key(&s.v, &model);
            let max_tokens = s.v.max_tokens.unwrap_or(self.cfg.default_max_tokens);
            let deadline = s.v.deadline_ms.map(|d| now + Duration::from_millis(d));
            let log = Arc::new(TaskLog::default());
            let (tenant, priority, key_, idem) = (
                s.v.tenant.clone(),
                s.v.priority,
                key.clone(),
                s.v.idempotency_key.clone(),
            );
            let weight = self.tenants.weight(&tenant);
            let mut entry = TaskEntry::new(
                s.v,
                correlation_id,
                model,
                key,
                log.clone(),
                now,
                0,
                0,
                max_tokens,
                deadline,
            );
            for f in &s.prefix {
                log.append(f.clone());
            }
            entry.started_sent = s
                .prefix
                .iter()
                .any(|f| matches!(f, api::events::Event::Started(_)));
            let attached = match (s.state, s.pool, s.node) {
                (TaskState::Queued, _, _) => None,
                (_, Some(pool), Some(node)) if s.attempt > 0 => Some((pool, node)),
                _ => None,
            };
            if done && attached.is_none() {
                // It never ran (canceled or failed while queued): its frames are all stored.
                let Some(last) = s.terminal else { continue };
                entry.end_with_stored(last, now);
                self.journal.restored(id, s.state, s.attempt, None);
                self.tasks.insert(id, entry);
                self.tasks.finished(id);
                finished += 1;
            } else if let Some((pool, node)) = attached {
                entry.attempts = s.attempt - 1;
                entry.node = Some(node);
                entry.restore_pool = Some(pool.clone());
                entry.restored_attempt = Some(s.attempt);
                if done {
                    entry.restore_final = s.terminal;
                    finished += 1;
                } else {
                    running += 1;
                }
                self.journal.restored(id, s.state, s.attempt, Some(&pool));
                self.tasks.insert(id, entry);
                self.restoring.insert(id);
            } else {
                self.journal
                    .restored(id, TaskState::Queued, entry.attempts, None);
                if let Some(d) = entry.v.deadline_ms {
                    self.effects
                        .timer(Duration::from_millis(d), super::Timer::Deadline(id));
                }
                self.tasks.insert(id, entry);
                self.queues.push(key_, id, priority, &tenant, weight);
                queued += 1;
            }
            if let Some(k) = idem {
                self.idempotency.insert((tenant.clone(), k), id);
            }
            self.bus.mark_task(id);
        }
        self.bus.mark_queues();
        tracing::info!(event = "ha.restored", queued, running, finished,
            "Took over {queued} queued, {running} running and {finished} recently finished task(s); nodes have {} ms to register again", window.as_millis());
    }

    /// While the takeover window is open, no queued task is failed for lack of a pool.
    pub(super) fn in_takeover(&self, now: Instant) -> bool {
        self.takeover_until.is_some_and(|t| now < t)
    }

    /// Dispatches each restored task whose pool is back (Ready, on an online node) to that pool.
    pub(super) fn pump_restored(&mut self, now: Instant) {
        if self.restoring.is_empty() {
            return;
        }
        let ids: Vec<api::TaskId> = self.restoring.iter().copied().collect();
        for id in ids {
            let Some(pool) = self.tasks.get(&id).and_then(|t| t.restore_pool.clone()) else {
                self.restoring.remove(&id);
                continue;
            };
            let back = self.registry.pool(&pool).is_some_and(|p| {
                p.status.state == PoolState::Ready
                    && self
                        .registry
                        .node(&p.node_id)
                        .is_some_and(|n| n.status == NodeStatus::Online)
            });
            if back {
                self.restoring.remove(&id);
                self.start_attempt(id, &pool, false, now);
            }
        }
    }

    /// At the end of the takeover window, restored tasks whose pool did not come back end: with
    /// their stored terminal frame when the previous leader saw them finish, otherwise with
    /// WORKER_RESET (their stream lived on that worker).
    pub(super) fn end_takeover(&mut self, now: Instant) {
        if self.takeover_until.is_none_or(|t| now < t) {
            return;
        }
        self.takeover_until = None;
        let ids: Vec<api::TaskId> = std::mem::take(&mut self.restoring).into_iter().collect();
        for id in ids {
            let Some(pool) = self.tasks.get_mut(&id).and_then(|t| t.restore_pool.take()) else {
                continue;
            };
            let env = ErrorEnvelope::new(
                ErrorCode::WorkerReset,
                format!("pool {pool}, which ran this task, did not come back after the failover"),
            )
            .with_retriable(true);
            self.end_restored(id, env, now);
        }
    }

    /// The dispatch that was to reattach a restored task's attempt failed. Its client has seen
    /// frames of that attempt, so it is not run again: it ends with its stored terminal frame,
    /// or with the worker's refusal (a grace period that expired), or with WORKER_RESET.
    pub(super) fn reattach_failed(&mut self, id: api::TaskId, end: super::RelayEnd, now: Instant) {
        let env = match end {
            super::RelayEnd::Refused { envelope, .. }
                if envelope.code == ErrorCode::WorkerReset =>
            {
                envelope
            }
            other => ErrorEnvelope::new(
                ErrorCode::WorkerReset,
                format!("the stream of this task could not be attached again after the failover: {other}"),
            )
            .with_retriable(true),
        };
        tracing::warn!(event = "ha.reattach_failed", task_id = %id, "Task {id} could not be reattached: {}", env.message);
        self.end_restored(id, env, now);
    }

    fn end_restored(&mut self, id: api::TaskId, env: ErrorEnvelope, now: Instant) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        t.restored_attempt = None;
        let running = t.state() == TaskState::Running;
        match t.restore_final.take() {
            Some(last) => {
                t.end_with_stored(last, now);
                self.tasks.finished(id);
                self.bus.mark_task(id);
                self.journal.touch(id);
            }
            None => self.finish_with_error(id, env, now),
        }
        if running {
            self.release_slot(id, now);
        }
    }

    /// Restored tasks still waiting for their pool (tests).
    pub fn restoring(&self) -> usize {
        self.restoring.len()
    }
}

impl TaskEntry {
    /// Ends the task with `last`, the terminal frame a previous leader stored.
    fn end_with_stored(&mut self, last: api::events::Event, now: Instant) {
        if self.state() != TaskState::Running {
            self.life.run(Stamp::at(now));
        }
        self.life.finish(outcome_of(&last), Stamp::at(now));
        if let api::events::Event::Error(e) = &last {
            self.error = Some(e.clone());
        }
        self.log.append(last);
    }
}

/// How a task whose terminal frame is `last` ended.
fn outcome_of(last: &api::events::Event) -> Outcome {
    match last {
        api::events::Event::End(e) if e.stop_reason == api::events::StopReason::Canceled => {
            Outcome::Canceled
        }
        api::events::Event::End(_) => Outcome::Completed,
        _ => Outcome::Failed,
    }
}
