//! Admission in the core (API.md §4.1, §6): the checks in the spec's order, the full-queue policies
//! (reject, drop-lru, shed-low-priority), queue membership (one queue per model for unpinned tasks,
//! one per pool for pinned ones) and the queued tasks' moving position.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::events::{Event, Metrics as MetricsFrame};
use api::task::{AdmissionResponse, PlacementMode, Preparation, Priority};
use api::{CorrelationId, ErrorCode, ErrorEnvelope, ModelId, PoolId, TaskId};

use super::lifecycle::{Lifecycle, Stamp};
use super::queue::QueueKey;
use super::{Core, Effects, TaskEntry, TaskLog, Timer};
use crate::admission::ValidatedTask;
use crate::config::FullPolicy;
use crate::metrics::{self as m, labels};

/// What a full queue does with a newcomer.
enum Room {
    Free,
    Evict(TaskId, ErrorEnvelope),
    Refuse(ErrorEnvelope),
}

impl<E: Effects> Core<E> {
    /// Admits a task: checks in the spec's order, then queues it and fills slots.
    pub fn submit(
        &mut self,
        mut v: ValidatedTask,
        correlation_id: CorrelationId,
        now: Instant,
    ) -> Result<(AdmissionResponse, Arc<TaskLog>), ErrorEnvelope> {
        // A retried submit with the same key gets the task the first one created.
        if let Some(key) = &v.idempotency_key {
            if let Some(id) = self.idempotency.get(&(v.tenant.clone(), key.clone())) {
                if let Some(again) = self.readmission(*id) {
                    tracing::info!(event = "task.idempotent_replay", correlation_id = %correlation_id, task_id = %id, tenant = %v.tenant,
                        "A submit with a known Idempotency-Key answered with task {id}");
                    return Ok(again);
                }
            }
        }
        if let Some(t) = self.tasks.get(&v.task_id) {
            if !t.state().is_terminal() {
                return Err(ErrorEnvelope::new(
                    ErrorCode::Conflict,
                    format!("task {} is still active", v.task_id),
                ));
            }
            // A retained task of another tenant is never replaced (nor revealed).
            if t.tenant != v.tenant {
                return Err(ErrorEnvelope::new(
                    ErrorCode::Conflict,
                    format!("task id {} is in use", v.task_id),
                ));
            }
        }
        // Tenant limits come first: a refused request changes nothing (no model is registered).
        let queued = self.queues.queued_of(&v.tenant);
        // The advised wait is worked out only for a refusal (it reads every pool's measurements).
        let oldest = self
            .tenants
            .running(&v.tenant)
            .next()
            .and_then(|id| self.tasks.get(id))
            .map(|t| (t.model.clone(), t.max_tokens));
        let (registry, stats) = (&self.registry, &self.stats);
        let retry = || {
            oldest.map_or(1000, |(model, max_tokens)| {
                super::tasks::retry_after_ms(registry, stats, &model, max_tokens)
            })
        };
        if let Err(e) = self.tenants.check(&v.tenant, queued, retry, now) {
            self.count_backpressure_for(&v.tenant, &e);
            return Err(self.reject(&v.tenant, e));
        }
        let rec = self
            .admit_model(&v.model_ref, v.ctx)
            .map_err(|e| self.reject(&v.tenant, e))?;
        let model = rec.id.clone();
        let pinned = v.placement.mode == PlacementMode::Pin;
        // Right after an HA takeover, nodes are still registering again: the task waits for them.
        let target = if self.in_takeover(now) && !self.model_has_pool(&rec.id) {
            None
        } else {
            self.serving_or_target(&rec, pinned)
                .map_err(|e| self.reject(&v.tenant, e))?
        };
        if target.is_none() && !self.workload_served(&model, v.workload) && !self.in_takeover(now) {
            return Err(self.reject(
                &v.tenant,
                ErrorEnvelope::new(
                    ErrorCode::ModelNotAvailable,
                    format!("no pool serves {model} for {} tasks", v.workload.as_str()),
                ),
            ));
        }
        self.check_placement(&v, &model)
            .map_err(|e| self.reject(&v.tenant, e))?;
        // A task bound to a provisioning target stays in its model's queue (it is the oldest there,
        // so it goes first) but may only run on the target.
        let key = queue_key(&v, &model);
        if let Some(pool) = &target {
            Self::bind_to_target(&mut v, pool);
        }
        let max_tokens = v.max_tokens.unwrap_or(self.cfg.default_max_tokens);
        let room = self.room(&key, v.priority, &model, max_tokens);
        if let Room::Refuse(e) = room {
            self.count_backpressure();
            return Err(self.reject(&v.tenant, e));
        }
        let victim = match &room {
            Room::Evict(victim, _) => Some(*victim),
            _ => None,
        };
        let weight = self.tenants.weight(&v.tenant);
        let ahead = self
            .queues
            .get(&key)
            .map(|q| {
                q.position_of_new(
                    v.priority,
                    &v.tenant,
                    weight,
                    victim,
                    self.cfg.interactive_burst,
                )
            })
            .unwrap_or(0) as u64;
        let (position, predicted) = if target.is_some() {
            (0, 0)
        } else {
            self.predict(&model, ahead, max_tokens)
        };
        // The deadline is checked before anyone is evicted: a newcomer that is refused must not
        // cost a queued task its place (API.md §6.2, §6.4).
        if let Some(d) = v.deadline_ms {
            if predicted > d && self.has_measurements(&model) {
                return Err(self.reject(
                    &v.tenant,
                    ErrorEnvelope::new(
                        ErrorCode::DeadlineUnmet,
                        format!(
                            "the predicted start in {predicted} ms is past the deadline of {d} ms"
                        ),
                    ),
                ));
            }
        }
        if let Room::Evict(victim, env) = room {
            self.count_backpressure();
            self.dequeue(victim);
            if let Some(t) = self.tasks.get(&victim) {
                tracing::info!(event = "task.evicted", correlation_id = %t.correlation_id, task_id = %victim, tenant = %t.tenant, code = %env.code, "Task {victim} was evicted from its full queue ({})", env.policy_label.as_deref().unwrap_or(""));
            }
            self.finish_with_error(victim, env, now);
        }
        let id = v.task_id;
        let log = Arc::new(TaskLog::default());
        let resp = AdmissionResponse {
            task_id: id,
            session_id: v.session_id,
            queue_position: position,
            predicted_start_ms: predicted,
            backoff_ms: 0,
            streams: streams_of(id),
            preparation: Preparation::default(),
        };
        if let Some(d) = v.deadline_ms {
            self.effects
                .timer(Duration::from_millis(d), Timer::Deadline(id));
        }
        tracing::info!(event = "task.admitted", correlation_id = %correlation_id, task_id = %id, tenant = %v.tenant, session_id = %v.session_id, model = %model,
            queue_position = position, predicted_start_ms = predicted, "Admitted task {id} for {model} at queue position {position}");
        self.sessions.touch(v.session_id, &v.tenant, now);
        self.tenants.admitted(&v.tenant, now);
        let tenant = v.tenant.clone();
        let weight = self.tenants.weight(&tenant);
        let priority = v.priority;
        let deadline = v.deadline_ms.map(|d| now + Duration::from_millis(d));
        self.tasks.insert(
            id,
            TaskEntry::new(
                v,
                correlation_id.clone(),
                model,
                key.clone(),
                log.clone(),
                now,
                position,
                predicted,
                max_tokens,
                deadline,
            ),
        );
        self.ask_prompt_ids(id);
        self.metrics.inc(
            m::TASKS_ENQUEUED,
            labels(&[
                ("engine", api::ENGINE_LLAMACPP),
                ("engine_version", ""),
                ("pool_id", ""),
                ("replica_id", ""),
                ("priority", priority.as_str()),
                ("tenant", tenant.as_str()),
            ]),
            1.0,
        );
        let mut resp = resp;
        if let Some(pool) = target {
            let (steps, estimate) = self.start_load(&rec, &pool, id, &correlation_id);
            resp.predicted_start_ms += estimate;
            resp.preparation.steps = steps;
            self.announce_binding(id, &pool, resp.predicted_start_ms);
        }
        if let Some(k) = self
            .tasks
            .get(&id)
            .and_then(|t| t.v.idempotency_key.clone())
        {
            self.idempotency.insert((tenant.clone(), k), id);
        }
        self.queues.push(key, id, priority, &tenant, weight);
        self.bus.mark_task(id);
        self.journal.touch(id);
        self.pump(now);
        Ok((resp, log))
    }

    /// The 202 of an admitted task again (an `Idempotency-Key` replay), with its position now.
    pub(super) fn readmission(&self, id: TaskId) -> Option<(AdmissionResponse, Arc<TaskLog>)> {
        let t = self.tasks.get(&id)?;
        let resp = AdmissionResponse {
            task_id: id,
            session_id: t.v.session_id,
            queue_position: t.announced_position.unwrap_or(0),
            predicted_start_ms: t.admission_predicted_ms,
            backoff_ms: 0,
            streams: streams_of(id),
            preparation: Preparation::default(),
        };
        Some((resp, t.log.clone()))
    }

    /// A tenant limit's 429: `admission_backpressure_events_total{policy="tenant"}` and the
    /// tenant's rejection count.
    fn count_backpressure_for(&self, tenant: &api::TenantId, e: &ErrorEnvelope) {
        self.metrics.inc(
            m::BACKPRESSURE,
            labels(&[("engine", api::ENGINE_LLAMACPP), ("policy", "tenant")]),
            1.0,
        );
        tracing::info!(event = "tenant.limited", tenant = %tenant, code = %e.code, policy_label = e.policy_label.as_deref().unwrap_or(""),
            retry_after_ms = e.retry_after_ms.unwrap_or(0), "Refused a task of tenant {tenant}: {}", e.message);
    }

    /// `admission_backpressure_events_total{policy}`: every 429 and every eviction (API.md §6.2).
    fn count_backpressure(&self) {
        self.metrics.inc(
            m::BACKPRESSURE,
            labels(&[
                ("engine", api::ENGINE_LLAMACPP),
                ("policy", self.cfg.full_policy.label()),
            ]),
            1.0,
        );
    }

    /// Decides whether a queue has room for a task of class `p` (API.md §6.2).
    fn room(&self, key: &QueueKey, p: Priority, model: &ModelId, max_tokens: u64) -> Room {
        let Some(q) = self.queues.get(key) else {
            return Room::Free;
        };
        if q.len() < self.cfg.queue_capacity {
            return Room::Free;
        }
        let policy = self.cfg.full_policy;
        let retry = self.retry_after_ms(model, max_tokens);
        let refuse = |code: ErrorCode, msg: String| {
            let mut e = ErrorEnvelope::new(code, msg).with_retry_after(retry);
            e.policy_label = Some(policy.label().into());
            Room::Refuse(e)
        };
        let full = format!(
            "the queue {key} is full ({} tasks)",
            self.cfg.queue_capacity
        );
        match policy {
            FullPolicy::Reject => refuse(ErrorCode::AdmissionReject, full),
            FullPolicy::DropLru => match q.oldest_lowest() {
                Some((victim, class))
                    if !(class == Priority::Interactive && p == Priority::Batch) =>
                {
                    let mut e = ErrorEnvelope::new(
                        ErrorCode::QueueFullDropLru,
                        "evicted from a full queue by a newer task (drop-lru)",
                    )
                    .with_retry_after(retry);
                    e.policy_label = Some(policy.label().into());
                    Room::Evict(victim, e)
                }
                _ => refuse(
                    ErrorCode::QueueFullDropLru,
                    format!("{full} and nothing is evictable"),
                ),
            },
            FullPolicy::ShedLowPriority => match (p, q.newest_batch()) {
                (Priority::Interactive, Some(victim)) => {
                    let mut e = ErrorEnvelope::new(
                        ErrorCode::AdmissionReject,
                        "shed from a full queue for an interactive task",
                    )
                    .with_retry_after(retry);
                    e.policy_label = Some(policy.label().into());
                    Room::Evict(victim, e)
                }
                _ => refuse(ErrorCode::AdmissionReject, full),
            },
        }
    }

    /// Removes a queued task from its queue.
    pub(super) fn dequeue(&mut self, id: TaskId) {
        let Some(key) = self.tasks.get(&id).map(|t| t.queue_key.clone()) else {
            return;
        };
        if let Some(q) = self.queues.get_mut(&key) {
            q.remove(id);
        }
    }

    /// Tasks queued for a pool: its own queue plus its model's queue.
    pub(super) fn queued_for_pool(&self, pool_id: &PoolId, model: Option<&ModelId>) -> usize {
        let own = self
            .queues
            .get(&QueueKey::Pool(pool_id.clone()))
            .map(|q| q.len())
            .unwrap_or(0);
        own + model
            .and_then(|m| self.queues.get(&QueueKey::Model(m.clone())))
            .map(|q| q.len())
            .unwrap_or(0)
    }

    /// Sends a `metrics` frame to each queued task whose position moved (API.md §6.3).
    pub(super) fn announce_positions(&mut self) {
        let burst = self.cfg.interactive_burst;
        let mut moved: Vec<(TaskId, u64)> = vec![];
        for (_, q) in self.queues.iter() {
            for (pos, id) in q.dispatch_order(burst).into_iter().enumerate() {
                if self
                    .tasks
                    .get(&id)
                    .is_some_and(|t| t.announced_position != Some(pos as u64))
                {
                    moved.push((id, pos as u64));
                }
            }
        }
        for (id, pos) in moved {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            let (model, max_tokens) = (t.model.clone(), t.max_tokens);
            let (_, predicted) = self.predict(&model, pos, max_tokens);
            self.bus.mark_task(id);
            self.journal.touch(id);
            if let Some(t) = self.tasks.get_mut(&id) {
                t.announced_position = Some(pos);
                t.log.append(Event::Metrics(MetricsFrame {
                    queue_position: Some(pos),
                    predicted_start_ms: Some(predicted),
                    ..Default::default()
                }));
            }
        }
    }
}

/// A task's stream URLs in its 202.
fn streams_of(id: TaskId) -> api::task::Streams {
    api::task::Streams {
        sse: format!("/v2/tasks/{id}/events"),
        sse_verbose: format!("/v2/tasks/{id}/events?verbose=true"),
    }
}

pub(super) fn queue_key(v: &ValidatedTask, model: &ModelId) -> QueueKey {
    match (&v.placement.mode, &v.placement.pin_pool_id) {
        (PlacementMode::Pin, Some(p)) => QueueKey::Pool(p.clone()),
        _ => QueueKey::Model(model.clone()),
    }
}

pub(super) fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl TaskEntry {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        v: ValidatedTask,
        correlation_id: CorrelationId,
        model: ModelId,
        queue_key: QueueKey,
        log: Arc<TaskLog>,
        now: Instant,
        position: u64,
        predicted: u64,
        max_tokens: u64,
        deadline: Option<Instant>,
    ) -> Self {
        let admitted = Stamp::at(now);
        Self {
            tenant: v.tenant.clone(),
            v,
            correlation_id,
            model,
            queue_key,
            life: Lifecycle::queued(admitted),
            log,
            admitted,
            pool: None,
            node: None,
            engine_version: None,
            attempts: 0,
            tried: vec![],
            tokens_in: 0,
            reported_tokens_out: 0,
            token_frames: 0,
            tool_frames: 0,
            seed: None,
            stop_reason: None,
            error: None,
            admission_position: position,
            admission_predicted_ms: predicted,
            announced_position: Some(position),
            max_tokens,
            deadline,
            started_sent: false,
            load: None,
            failures: 0,
            gen_ids: Vec::new(),
            ids_sent: 0,
            resumable: true,
            migrations: 0,
            resume_from: None,
            migrated_from: None,
            carried_first_token: None,
            prompt_ids: super::tokenize::PromptIds::None,
            prefix_key: Vec::new(),
            predicted_cached: 0,
            predicted_slot: None,
            tokens_cached: None,
            restore_pool: None,
            restored_attempt: None,
            restore_final: None,
        }
    }
}
