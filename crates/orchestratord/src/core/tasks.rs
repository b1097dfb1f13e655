//! Task lifecycle in the core: admission, dispatch attempts, worker events, cancel, deadlines,
//! disconnects and retention (API.md §4–§7).

use std::sync::Arc;
use std::time::Instant;

use api::events::{End, Event, Metrics as MetricsFrame, Started, StopReason, Token};
use api::node::{NodeStatus, PoolState};
use api::task::{PlacementMode, TaskRecord, TaskState};
use api::worker::{DispatchModel, DispatchParams, DispatchRequest, WorkerEvent};
use api::{ErrorCode, ErrorEnvelope, ModelId, NodeId, PoolId, TaskId, TenantId};

use super::admit::bool_str;
use super::lifecycle::{Outcome, Stamp};
use super::{CancelJob, Core, DispatchJob, Effects, TaskLog, Timer};

/// The prefix index holds up to this many times a pool's slots × context in tokens per pool: the
/// engine's host-RAM prompt cache (`--cache-ram`) keeps earlier prompts beyond its slots.
const PREFIX_POOL_FACTOR: u64 = 8;
use crate::admission::ValidatedTask;
use crate::metrics::{self as m, labels};

/// The expected restart time of a pool never seen restarting, ms.
const DEFAULT_RESTART_MS: u64 = 5000;

/// What broke under a running task (the `reason` of `tasks_migrated_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The worker reported the attempt failed (its engine died, or a dispatch was refused).
    Engine,
    /// The dispatch connection was refused, reset or went silent.
    Connection,
    /// The node stopped heartbeating or deregistered.
    Node,
}

impl Lost {
    fn label(self) -> &'static str {
        match self {
            Lost::Engine => "engine",
            Lost::Connection => "connection",
            Lost::Node => "node",
        }
    }
}

/// Why a running task stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    Client,
    Disconnect,
}

impl CancelReason {
    fn label(self) -> &'static str {
        match self {
            CancelReason::Client => "client",
            CancelReason::Disconnect => "disconnect",
        }
    }
}

impl<E: Effects> Core<E> {
    pub(super) fn reject(&self, tenant: &TenantId, e: ErrorEnvelope) -> ErrorEnvelope {
        self.metrics.inc(
            m::TASKS_REJECTED,
            labels(&[
                ("engine", api::ENGINE_LLAMACPP),
                ("reason", e.code.as_str()),
                ("tenant", tenant.as_str()),
            ]),
            1.0,
        );
        tracing::info!(event = "task.rejected", tenant = %tenant, code = %e.code, "Refused a task: {}", e.message);
        e
    }

    /// A task left Running or ended: its tenant's running count, and at the end the tokens it
    /// used (the engine's counts) and its queue wait.
    pub(super) fn tenant_stopped(&mut self, id: TaskId, ended: bool, now: Instant) {
        let Some(t) = self.tasks.get(&id) else { return };
        let tenant = t.tenant.clone();
        let tokens = t.tokens_in + t.tokens_out();
        self.tenants.stopped(&tenant, id);
        if ended {
            self.tenants.used(&tenant, tokens, now);
        }
    }

    /// Placement checks that refuse at admission (API.md §7.2).
    pub(super) fn check_placement(
        &self,
        v: &ValidatedTask,
        model: &ModelId,
    ) -> Result<(), ErrorEnvelope> {
        let p = &v.placement;
        for (i, id) in p.prefer_pools.iter().enumerate() {
            if !self.registry.pools().contains_key(id) {
                return Err(ErrorEnvelope::invalid(
                    format!("placement.prefer_pools[{i}]"),
                    format!("unknown pool {id}"),
                ));
            }
        }
        for (i, id) in p.avoid_pools.iter().enumerate() {
            if !self.registry.pools().contains_key(id) {
                return Err(ErrorEnvelope::invalid(
                    format!("placement.avoid_pools[{i}]"),
                    format!("unknown pool {id}"),
                ));
            }
        }
        let serving = self.registry.serving(model);
        if p.mode == PlacementMode::Pin {
            let id = p.pin_pool_id.as_ref().map_or("", PoolId::as_str);
            let Some((id, pool)) = self.registry.pools().get_key_value(id) else {
                return Err(ErrorEnvelope::invalid(
                    "placement.pin_pool_id",
                    format!("unknown pool {id}"),
                ));
            };
            if pool.model_id() != Some(model) {
                return Err(ErrorEnvelope::invalid(
                    "placement.pin_pool_id",
                    format!("pool {id} does not serve {model}"),
                ));
            }
            if v.ctx.is_some_and(|c| c > pool.status.ctx_per_slot) {
                return Err(ErrorEnvelope::invalid(
                    "ctx",
                    format!("pool {id} has {} tokens per slot", pool.status.ctx_per_slot),
                ));
            }
            if self
                .registry
                .node(&pool.node_id)
                .is_none_or(|n| n.status != NodeStatus::Online)
            {
                return Err(ErrorEnvelope::new(
                    ErrorCode::NodeUnavailable,
                    format!("the node of pool {id} is offline"),
                )
                .with_pool(id)
                .with_retry_after(5000));
            }
            if pool.status.state != PoolState::Ready {
                return Err(ErrorEnvelope::new(
                    ErrorCode::PoolUnready,
                    format!("pool {id} is {}", pool.status.state.as_str()),
                )
                .with_pool(id)
                .with_retry_after(5000));
            }
        }
        if p.mode == PlacementMode::Prefer && !p.allow_fallback {
            let ready = p
                .prefer_pools
                .iter()
                .filter_map(|id| self.registry.pool(id).map(|e| (id, e)))
                .any(|(_, e)| {
                    e.model_id() == Some(model)
                        && e.status.state == PoolState::Ready
                        && self
                            .registry
                            .node(&e.node_id)
                            .is_some_and(|n| n.status == NodeStatus::Online)
                });
            if !ready {
                return Err(ErrorEnvelope::new(
                    ErrorCode::PoolUnready,
                    "none of the preferred pools can serve the task and allow_fallback is false",
                )
                .with_retry_after(5000));
            }
        }
        if let Some(c) = v.ctx {
            if serving.clone().next().is_some()
                && serving.clone().all(|(_, e)| e.status.ctx_per_slot < c)
            {
                return Err(ErrorEnvelope::invalid(
                    "ctx",
                    format!("no pool serving {model} has {c} tokens per slot"),
                ));
            }
        }
        let max_tokens = v.max_tokens.unwrap_or(self.cfg.default_max_tokens);
        let ctx_limit = v
            .ctx
            .or_else(|| serving.map(|(_, e)| e.status.ctx_per_slot).max());
        if let Some(c) = ctx_limit {
            if max_tokens > c {
                return Err(ErrorEnvelope::invalid(
                    "max_tokens",
                    format!("must not exceed the task's ctx ({c})"),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn has_measurements(&self, model: &ModelId) -> bool {
        self.registry
            .serving(model)
            .any(|(id, _)| self.stats.get(id).is_some_and(|s| s.decode_tps.is_some()))
    }

    /// `(queue_position, predicted_start_ms)` for a task entering `model`'s queue (API.md §6.3).
    pub(super) fn predict(&self, model: &ModelId, ahead: u64, max_tokens: u64) -> (u64, u64) {
        let cands = self
            .registry
            .serving(model)
            .filter(|(_, p)| p.status.state == PoolState::Ready);
        if ahead == 0 && cands.clone().any(|(_, p)| p.free_slots() > 0) {
            return (0, 0);
        }
        let d = self.mean_duration_ms(model, max_tokens);
        if cands.clone().next().is_none() {
            // No Ready pool: pools on their way back count, after their expected restart time.
            let back: Vec<(&PoolId, &super::PoolEntry)> = self
                .registry
                .serving(model)
                .filter(|(_, p)| p.unready_since.is_some())
                .collect();
            if !back.is_empty() {
                let restart = back
                    .iter()
                    .map(|(id, _)| self.restart_ms(id))
                    .min()
                    .unwrap_or(DEFAULT_RESTART_MS);
                let slots: u64 = back
                    .iter()
                    .map(|(_, p)| p.status.slots_total as u64)
                    .sum::<u64>()
                    .max(1);
                return (ahead, restart + ahead.div_ceil(slots) * d);
            }
        }
        let slots: u64 = cands
            .map(|(_, p)| p.status.slots_total as u64)
            .sum::<u64>()
            .max(1);
        (ahead, (ahead + 1).div_ceil(slots) * d)
    }

    /// How long `pool` is expected to take to come back to Ready (measured, else a default).
    fn restart_ms(&self, pool: &PoolId) -> u64 {
        self.stats
            .get(pool)
            .and_then(|s| s.restart_ms)
            .map_or(DEFAULT_RESTART_MS, |ms| ms as u64)
    }

    fn mean_duration_ms(&self, model: &ModelId, max_tokens: u64) -> u64 {
        mean_duration_ms(&self.registry, &self.stats, model, max_tokens)
    }

    pub(super) fn retry_after_ms(&self, model: &ModelId, max_tokens: u64) -> u64 {
        retry_after_ms(&self.registry, &self.stats, model, max_tokens)
    }

    /// Binds a task to `pool_id` and opens a dispatch attempt. `fallback` is true when
    /// `allow_fallback` decided the placement (a label of `placement_decisions_total`).
    pub(super) fn start_attempt(
        &mut self,
        id: TaskId,
        pool_id: &PoolId,
        fallback: bool,
        now: Instant,
    ) {
        self.prep_completed(id);
        if !self.registry.hold_slot(pool_id, id) {
            return;
        }
        let Some(pool) = self.registry.pool(pool_id) else {
            return;
        };
        let node_id = pool.node_id.clone();
        let engine_version = pool.status.engine_version.clone();
        let digest = pool.status.models.first().and_then(|m| m.digest.clone());
        // A task that names no ctx gets the pool's whole slot (§13.2 `params.ctx`).
        let ctx_per_slot = pool.status.ctx_per_slot;
        let slots_total = pool.status.slots_total;
        let Some(node) = self.registry.node(&node_id) else {
            return;
        };
        let (address, token) = (node.address.clone(), node.dispatch_token.clone());
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let first = t.attempts == 0;
        // A restored task's attempt is dispatched again as it was: its frames are in the log.
        let restored = t.restore_pool.take().is_some();
        t.attempts += 1;
        t.tried.push(pool_id.clone());
        t.life.run(Stamp::at(now));
        let waited_ms = now.duration_since(t.admitted.at).as_secs_f64() * 1000.0;
        let tenant = t.tenant.clone();
        self.bus.mark_task(id);
        self.journal.touch(id);
        if let Some(at) = t.carried_first_token.take() {
            t.life.first_token(at);
        }
        if let Some((from, why)) = t.migrated_from.take() {
            let after = t.resume_from.unwrap_or(0);
            tracing::info!(event = "task.migrated", correlation_id = %t.correlation_id, task_id = %id, tenant = %t.tenant, from_pool = %from, pool_id = %pool_id, node_id = %node_id,
                tokens = after as u64, reason = why, "Task {id} moved from pool {from} to pool {pool_id} on node {node_id} after {after} tokens ({why} lost)");
        }
        t.pool = Some(pool_id.clone());
        t.node = Some(node_id.clone());
        t.engine_version = engine_version.clone();
        if !t.started_sent {
            t.started_sent = true;
            t.log.append(Event::Started(Started {
                queue_position: t.admission_position,
                predicted_start_ms: t.admission_predicted_ms,
                pool_id: pool_id.clone(),
                node_id: node_id.clone(),
                engine: api::ENGINE_LLAMACPP.into(),
                engine_version: engine_version.clone(),
                model: t.model.clone(),
            }));
        }
        self.metrics.inc(
            m::PLACEMENT_DECISIONS,
            labels(&[
                ("outcome", "assigned"),
                ("pinned", bool_str(t.v.placement.mode == PlacementMode::Pin)),
                ("fallback", bool_str(fallback)),
            ]),
            1.0,
        );
        tracing::info!(event = "task.placed", correlation_id = %t.correlation_id, task_id = %id, tenant = %t.tenant, pool_id = %pool_id, node_id = %node_id, attempt = t.attempts,
            "Dispatched task {id} to pool {pool_id} on node {node_id} (attempt {})", t.attempts);
        let body = DispatchRequest {
            protocol_version: api::PROTOCOL_VERSION,
            attempt: t.attempts,
            task_id: id,
            session_id: t.v.session_id,
            correlation_id: t.correlation_id.clone(),
            node_id: node_id.clone(),
            pool_id: pool_id.clone(),
            model: DispatchModel {
                id: t.model.clone(),
                digest,
            },
            engine: api::ENGINE_LLAMACPP.into(),
            input: t.v.input.clone(),
            params: DispatchParams {
                max_tokens: t.max_tokens - t.resume_from.unwrap_or(0) as u64,
                ctx: t.v.ctx.unwrap_or(ctx_per_slot),
                sampling: t.v.sampling.clone(),
            },
            deadline_remaining_ms: t
                .deadline
                .map(|d| d.saturating_duration_since(now).as_millis() as u64),
            priority: t.v.priority,
            resume: t.resume_from.map(|n| t.gen_ids[..n].to_vec()),
            id_slot: t
                .predicted_slot
                .filter(|_| slots_total > 1 && t.resume_from.is_none()),
        };
        if t.predicted_cached > 0 {
            self.metrics.inc(
                m::PLACEMENT_PREFIX_PREDICTED_TOKENS,
                labels(&[("pool_id", pool_id.as_str())]),
                t.predicted_cached as f64,
            );
        }
        let attempt = t.attempts;
        let session = t.v.session_id;
        if !first && !restored {
            let info = api::events::PlacementInfo {
                pool_id: pool_id.clone(),
                node_id: node_id.clone(),
                engine_version,
                attempt,
                migrated_after_tokens: t.resume_from.map(|n| n as u64),
            };
            t.log.append(Event::Metrics(MetricsFrame {
                placement: Some(info),
                ..Default::default()
            }));
        }
        self.sessions.placed(session, &tenant, pool_id);
        if first {
            self.metrics.observe(
                m::TENANT_QUEUE_WAIT,
                labels(&[("tenant", tenant.as_str())]),
                waited_ms,
            );
        }
        self.tenants.started(&tenant, id, now);
        let reattach_only = restored
            && self
                .tasks
                .get(&id)
                .is_some_and(|t| t.restore_final.is_some());
        self.effects.dispatch(DispatchJob {
            task: id,
            attempt,
            reattach_only,
            address,
            token,
            body,
        });
    }

    /// A line from a worker dispatch stream. Lines of stale attempts or finished tasks are dropped.
    pub fn on_worker(&mut self, id: TaskId, attempt: u32, ev: WorkerEvent, now: Instant) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if t.attempts != attempt || t.state() != TaskState::Running {
            return;
        }
        // A reattached attempt streams again: from here a broken stream is an ordinary fault.
        t.restored_attempt = None;
        match ev {
            WorkerEvent::Started { engine_version, .. } => {
                t.engine_version = Some(engine_version.clone());
                let pool = t.pool_label();
                let node = t.node_label();
                self.metrics.inc(
                    m::TASKS_STARTED,
                    labels(&[
                        ("engine", api::ENGINE_LLAMACPP),
                        ("engine_version", &engine_version),
                        ("pool_id", &pool),
                        ("replica_id", &node),
                        ("priority", t.v.priority.as_str()),
                        ("tenant", t.tenant.as_str()),
                    ]),
                    1.0,
                );
            }
            WorkerEvent::Token {
                t: text,
                ids,
                logprobs,
                ..
            } => {
                if t.resumable {
                    if ids.is_empty() && !text.is_empty() {
                        t.resumable = false;
                        t.gen_ids = Vec::new();
                    } else {
                        t.gen_ids.extend_from_slice(&ids);
                    }
                }
                if text.is_empty() {
                    return;
                }
                t.ids_sent = t.gen_ids.len();
                if t.life.first_token(Stamp::at(now)) {
                    self.bus.mark_task(id);
                    self.journal.touch(id);
                    tracing::info!(event = "task.first_token", correlation_id = %t.correlation_id, task_id = %id, tenant = %t.tenant, pool_id = %t.pool_label(),
                        duration_ms = now.duration_since(t.admitted.at).as_millis() as u64, "First token of task {id}");
                }
                let i = t.token_frames;
                t.token_frames += 1;
                t.log.append(Event::Token(Token {
                    t: text,
                    i,
                    logprobs,
                }));
            }
            WorkerEvent::Embedding { index, embedding } => {
                // Only /completion streams can be resumed elsewhere.
                t.resumable = false;
                t.gen_ids = Vec::new();
                t.life.first_token(Stamp::at(now));
                t.tool_frames += 1;
                t.log.append(Event::Embedding(api::events::EmbeddingFrame {
                    index,
                    embedding,
                }));
            }
            WorkerEvent::ToolCall { delta } => {
                t.resumable = false;
                t.gen_ids = Vec::new();
                if t.life.first_token(Stamp::at(now)) {
                    tracing::info!(event = "task.first_token", correlation_id = %t.correlation_id, task_id = %id, pool_id = %t.pool_label(),
                        duration_ms = now.duration_since(t.admitted.at).as_millis() as u64, "First output of task {id} (a tool call)");
                }
                t.tool_frames += 1;
                t.log.append(Event::ToolCall(delta));
            }
            WorkerEvent::Metrics {
                tokens_out,
                kv_cache_usage_ratio,
                ..
            } => {
                if tokens_out.is_some() || kv_cache_usage_ratio.is_some() {
                    t.log.append(Event::Metrics(MetricsFrame {
                        tokens_out,
                        kv_cache_usage_ratio,
                        ..Default::default()
                    }));
                }
            }
            WorkerEvent::Keepalive => {}
            WorkerEvent::End {
                tokens_in,
                tokens_out,
                stop_reason,
                seed,
                engine_ttft_ms,
                engine_decode_ms,
                tokens_cached,
                slot,
            } => {
                self.cache_feedback(id, tokens_in, tokens_cached, slot);
                let Some(t) = self.tasks.get_mut(&id) else {
                    return;
                };
                t.tokens_cached = tokens_cached;
                // A continuation's prompt holds the tokens generated before it.
                let before = t.resume_from.unwrap_or(0) as u64;
                t.tokens_in = tokens_in.saturating_sub(before);
                t.reported_tokens_out = before + tokens_out;
                t.seed = seed;
                let outcome = if stop_reason == StopReason::Canceled {
                    Outcome::Canceled
                } else {
                    Outcome::Completed
                };
                let tenant = t.tenant.clone();
                let done = (
                    t.v.session_id,
                    t.pool.clone(),
                    t.node.clone(),
                    t.model.clone(),
                    t.tokens_in,
                    t.tokens_out(),
                );
                self.observe_finish(id, engine_ttft_ms, engine_decode_ms);
                if let (Outcome::Completed, (sid, Some(pool), Some(node), model, tin, tout)) =
                    (outcome, done)
                {
                    self.sessions
                        .completed(sid, &tenant, &pool, &node, &model, (tin, tout));
                }
                self.finish_with_end(id, stop_reason, outcome, now);
                self.release_slot(id, now);
            }
            WorkerEvent::Error {
                code,
                message,
                retriable,
                retry_after_ms,
            } => {
                let mut env = ErrorEnvelope::new(code, message).with_retriable(retriable);
                env.retry_after_ms = retry_after_ms;
                if let Some(p) = &t.pool {
                    env.pool_id = Some(p.clone());
                }
                env.engine = Some(api::ENGINE_LLAMACPP.into());
                self.attempt_failed(id, env, Lost::Engine, now);
            }
        }
    }

    /// Engine feedback on a finished attempt: prompt token metrics, then the prefix index learns
    /// what the engine now holds and forgets what it predicted but the engine did not reuse.
    fn cache_feedback(
        &mut self,
        id: TaskId,
        tokens_in: u64,
        tokens_cached: Option<u64>,
        slot: Option<u32>,
    ) {
        let Some(t) = self.tasks.get(&id) else { return };
        let Some(pool) = t.pool.clone() else { return };
        let pl = labels(&[("pool_id", pool.as_str())]);
        self.metrics
            .inc(m::PROMPT_TOKENS, pl.clone(), tokens_in as f64);
        if let Some(c) = tokens_cached {
            self.metrics.inc(m::PROMPT_TOKENS_CACHED, pl, c as f64);
        }
        // A continuation's engine ran more than its prompt; it is not indexed.
        let super::tokenize::PromptIds::Known(prompt) = &t.prompt_ids else {
            return;
        };
        if t.resume_from.is_some() {
            return;
        }
        let prompt = prompt.clone();
        if let Some(c) = tokens_cached {
            self.prefix
                .correct(&pool, &t.prefix_key, &prompt, t.predicted_cached, c);
        }
        // The engine's slot holds the prompt and the generated ids (less the last); when some
        // generated ids are unknown, the prompt alone is what is known to be there.
        let generated: &[u32] = if t.resumable { &t.gen_ids } else { &[] };
        let seq = super::prefix::sequence(&prompt, generated);
        if let Some(p) = self.registry.pool(&pool) {
            let cap = u64::from(p.status.slots_total.max(1)) * p.status.ctx_per_slot.max(1);
            self.prefix.set_capacity(
                &pool,
                super::prefix::PoolCapacity {
                    tokens: cap * PREFIX_POOL_FACTOR,
                },
            );
        }
        self.prefix.insert(&pool, slot, seq);
    }

    /// The dispatch stream ended without a terminal line, or could not be opened.
    pub fn on_relay_ended(&mut self, id: TaskId, attempt: u32, end: super::RelayEnd, now: Instant) {
        let Some(t) = self.tasks.get(&id) else { return };
        if t.attempts != attempt || t.state() != TaskState::Running {
            return;
        }
        let node = t.node.clone();
        let cause = match &end {
            super::RelayEnd::Refused { .. } => Lost::Engine,
            _ => Lost::Connection,
        };
        if let (super::RelayEnd::Unreachable(_) | super::RelayEnd::Broken(_), Some(node)) =
            (&end, &node)
        {
            // A refused or reset connection: the worker is likely gone; keep new work off it.
            tracing::warn!(event = "node.unreachable", node_id = %node, task_id = %id, "Node {node} is out of placement until its next heartbeat: {end}");
            self.registry.suspend_node(node);
        }
        if self.tasks.get(&id).and_then(|t| t.restored_attempt) == Some(attempt) {
            self.reattach_failed(id, end, now);
            return;
        }
        let Some(t) = self.tasks.get(&id) else { return };
        let env = match end {
            super::RelayEnd::Refused { envelope, .. } => envelope,
            other => {
                let code = if t.token_frames + t.tool_frames > 0 {
                    ErrorCode::WorkerReset
                } else {
                    ErrorCode::PoolUnavailable
                };
                ErrorEnvelope::new(code, other.to_string()).with_retriable(true)
            }
        };
        self.attempt_failed(id, env, cause, now);
    }

    /// An attempt ended without `end`. A refusal by a pool that is not Ready (or has no free slot)
    /// is no failure: the task waits for a Ready pool. Before any token the task is retried
    /// (bounded by `placement.dispatch_retries`); after tokens it migrates (bounded by
    /// `placement.migration_limit`). Either way it waits at the head of its queue while a pool
    /// serving its model can come back, and fails at once, saying why, when none can.
    fn attempt_failed(&mut self, id: TaskId, env: ErrorEnvelope, cause: Lost, now: Instant) {
        let Some(t) = self.tasks.get(&id) else { return };
        let failed_pool = t.pool.clone();
        let no_tokens = t.token_frames + t.tool_frames == 0;
        let pinned = t.v.placement.mode == PlacementMode::Pin;
        let refused = matches!(
            env.code,
            ErrorCode::PoolUnready | ErrorCode::ReplicaExhausted
        );
        // A refusal comes before the attempt produced anything, also for a continuation.
        let can_retry = env.retriable
            && (refused || (no_tokens && !pinned && t.failures < self.cfg.dispatch_retries));
        let can_migrate = !no_tokens && env.retriable && self.may_migrate(t);
        tracing::warn!(event = "task.attempt_failed", correlation_id = %t.correlation_id, task_id = %id, tenant = %t.tenant, pool_id = %failed_pool.as_ref().map_or("", api::PoolId::as_str),
            code = %env.code, attempt = t.attempts, "Attempt {} of task {id} failed: {}", t.attempts, env.message);
        if let Some(p) = &failed_pool {
            match env.code {
                ErrorCode::ReplicaExhausted => self.registry.mark_exhausted(p),
                // A pool that refused as not Ready, or whose engine went away under the task,
                // stays out of placement until its next report says otherwise.
                _ if env.retriable && cause == Lost::Engine => self.registry.mark_unready(p),
                _ => {}
            }
        }
        self.release_slot(id, now);
        if can_retry {
            if let Some(t) = self.tasks.get_mut(&id) {
                // Nothing reached the client: the next attempt starts over.
                if t.resume_from.is_none() {
                    t.gen_ids.clear();
                }
                if refused {
                    t.tried.retain(|p| Some(p) != failed_pool.as_ref());
                } else {
                    t.failures += 1;
                }
            }
            self.wait_for_pool(id, now);
            return;
        }
        if can_migrate {
            self.migrate(id, cause, now);
            return;
        }
        let final_env = if no_tokens && env.retriable && env.code != ErrorCode::DecodeTimeout {
            ErrorEnvelope {
                code: ErrorCode::PoolUnavailable,
                message: format!("no pool could run the task: {}", env.message),
                ..env
            }
        } else if !no_tokens && env.code == ErrorCode::PoolUnavailable {
            ErrorEnvelope {
                code: ErrorCode::WorkerReset,
                ..env
            }
        } else {
            env
        };
        self.finish_with_error(id, final_env, now);
    }

    /// True when a task that lost its engine mid-stream may continue elsewhere: within the
    /// migration limit, every generated token id known, and no grammar (its state cannot be
    /// carried over).
    fn may_migrate(&self, t: &super::TaskEntry) -> bool {
        t.resumable
            && t.migrations < self.cfg.migration_limit
            && t.v.sampling.grammar.is_none()
            && t.v.sampling.json_schema.is_none()
    }

    /// Continues a task that lost its engine after tokens: its next dispatch carries the ids of
    /// the tokens the client has, and asks for the rest of its `max_tokens`.
    fn migrate(&mut self, id: TaskId, cause: Lost, now: Instant) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let after = t.ids_sent;
        t.gen_ids.truncate(after);
        t.resume_from = Some(after);
        t.migrations += 1;
        t.carried_first_token = t.life.first_token_at();
        t.migrated_from = t.pool.clone().map(|p| (p, cause.label()));
        t.tried.clear();
        if after as u64 >= t.max_tokens {
            self.finish_with_end(id, StopReason::Limit, Outcome::Completed, now);
            return;
        }
        self.metrics
            .inc(m::TASKS_MIGRATED, labels(&[("reason", cause.label())]), 1.0);
        self.wait_for_pool(id, now);
    }

    /// Places the task on another Ready pool now, or puts it back at the head of its queue while
    /// a pool serving its model can come back; otherwise ends it with the reason none can.
    fn wait_for_pool(&mut self, id: TaskId, now: Instant) {
        if let Some(why) = self.no_way_back(id) {
            self.fail_stranded(id, why, now);
            return;
        }
        // Alone, not in a pass over the queue: no other task is counted as waiting ahead of it.
        if let Some((pool, fallback, predicted)) = self.place(id, now, &mut Default::default()) {
            self.set_prediction(id, predicted);
            self.start_attempt(id, &pool, fallback, now);
            return;
        }
        self.tenant_stopped(id, false, now);
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        t.life.requeue(Stamp::at(now));
        // The pool it failed on may be the one that comes back.
        t.tried.clear();
        let (key, prio) = (t.queue_key.clone(), t.v.priority);
        self.queues.push_front(key, id, prio, &t.tenant);
        self.bus.mark_task(id);
        self.journal.touch(id);
        self.bus.mark_queues();
        self.publish_gauges();
    }

    /// Ends a task no pool can take any more (a typed error naming why).
    fn fail_stranded(&mut self, id: TaskId, why: String, now: Instant) {
        let Some(t) = self.tasks.get(&id) else { return };
        let code = if t.token_frames + t.tool_frames > 0 {
            ErrorCode::WorkerReset
        } else {
            ErrorCode::PoolUnavailable
        };
        let env = ErrorEnvelope::new(
            code,
            format!("no pool serving {} can come back: {why}", t.model),
        )
        .with_retriable(true);
        if t.state() == TaskState::Queued {
            self.dequeue(id);
        }
        self.finish_with_error(id, env, now);
    }

    /// Why no pool that could run the task can come back (None while one can): every pool
    /// serving its model is Failed (or drained or unloaded by an operator), or on a node that is
    /// gone past the heartbeat timeout.
    pub(super) fn no_way_back(&self, id: TaskId) -> Option<String> {
        let t = self.tasks.get(&id)?;
        let pin = (t.v.placement.mode == PlacementMode::Pin)
            .then(|| t.v.placement.pin_pool_id.clone())
            .flatten();
        let mut why = Vec::new();
        for (pid, p) in self.registry.pools() {
            if p.model_id() != Some(&t.model)
                || p.status.workload != t.v.workload
                || pin.as_ref().is_some_and(|x| x != pid)
            {
                continue;
            }
            let offline = self
                .registry
                .node(&p.node_id)
                .is_none_or(|n| n.status == NodeStatus::Offline);
            if offline {
                why.push(format!("node {} of pool {pid} is offline", p.node_id));
            } else if matches!(
                p.status.state,
                PoolState::Failed | PoolState::Unloaded | PoolState::Draining
            ) || p.draining
            {
                // Failed pools stay down; drained and unloaded ones wait for an operator.
                let state = if p.draining {
                    PoolState::Draining
                } else {
                    p.status.state
                };
                why.push(format!("pool {pid} is {}", state.as_str()));
            } else {
                return None;
            }
        }
        if why.is_empty() {
            why.push(format!("no pool serves {}", t.model));
        }
        Some(why.join("; "))
    }

    /// Queued tasks that were dispatched before and now have no pool that can come back end at
    /// once (called on every tick).
    pub(super) fn fail_stranded_queued(&mut self, now: Instant) {
        if self.in_takeover(now) {
            return;
        }
        let waiting: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state() == TaskState::Queued && t.attempts > 0)
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            if let Some(why) = self.no_way_back(id) {
                self.fail_stranded(id, why, now);
            }
        }
    }

    fn observe_finish(&mut self, id: TaskId, engine_ttft_ms: Option<u64>, engine_decode_ms: u64) {
        let Some(t) = self.tasks.get(&id) else { return };
        let pool = t.pool_label();
        let ev = t.engine_version.clone().unwrap_or_default();
        let prio = t.v.priority.as_str();
        let base = labels(&[
            ("engine", api::ENGINE_LLAMACPP),
            ("engine_version", &ev),
            ("pool_id", &pool),
            ("priority", prio),
        ]);
        if let (Some(first), Some(left), Some(ettft)) =
            (t.life.first_token_at(), t.life.started_at(), engine_ttft_ms)
        {
            let overhead = first.at.duration_since(left.at).as_secs_f64() * 1000.0 - ettft as f64;
            self.metrics
                .observe(m::OVERHEAD, base.clone(), overhead.max(0.0));
        }
        let evaluated = t.tokens_in.saturating_sub(t.tokens_cached.unwrap_or(0));
        let Some(pool) = t.pool.clone() else { return };
        let s = self.stats.entry(pool.clone()).or_default();
        let ewma = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| 0.8 * o + 0.2 * new));
        let tokens_out = t.tokens_out();
        s.tokens_out = ewma(s.tokens_out, tokens_out as f64);
        if engine_decode_ms > 0 && tokens_out > 0 {
            s.decode_tps = ewma(
                s.decode_tps,
                tokens_out as f64 * 1000.0 / engine_decode_ms as f64,
            );
        }
        if let Some(e) = engine_ttft_ms {
            s.ttft_ms = ewma(s.ttft_ms, e as f64);
            // Prefill speed: the engine's time to first token less one decode step, over the
            // prompt tokens it evaluated (not those it reused). Short prompts say more about
            // the fixed cost than about the speed, so they are not sampled.
            if evaluated >= PREFILL_SAMPLE_MIN {
                let step = s.decode_tps.map_or(0.0, |tps| 1000.0 / tps.max(0.001));
                s.prefill_ms_per_token = ewma(
                    s.prefill_ms_per_token,
                    (e as f64 - step).max(0.0) / evaluated as f64,
                );
            }
        }
        let speed = s.speed();
        if let Some(p) = self.registry.pool_mut(&pool) {
            p.speed = speed;
        }
    }

    /// Appends `end` with the task's counts and marks it terminal.
    pub(super) fn finish_with_end(
        &mut self,
        id: TaskId,
        reason: StopReason,
        outcome: Outcome,
        now: Instant,
    ) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let first = t.life.first_token_at();
        let ttft = first.map(|f| f.at.duration_since(t.admitted.at).as_millis() as u64);
        let decode = first
            .map(|f| now.duration_since(f.at).as_millis() as u64)
            .unwrap_or(0);
        t.life.finish(outcome, Stamp::at(now));
        t.stop_reason = Some(reason);
        t.log.append(Event::End(End {
            tokens_in: t.tokens_in,
            tokens_out: t.tokens_out(),
            ttft_ms: ttft,
            decode_ms: decode,
            decode_time_ms: decode,
            stop_reason: reason,
            canceled: reason == StopReason::Canceled,
            tokens_cached: t.tokens_cached,
        }));
        let pool = t.pool_label();
        let node = t.node_label();
        let ev = t.engine_version.clone().unwrap_or_default();
        let prio = t.v.priority.as_str();
        let series = labels(&[
            ("engine", api::ENGINE_LLAMACPP),
            ("engine_version", &ev),
            ("pool_id", &pool),
            ("replica_id", &node),
            ("tenant", t.tenant.as_str()),
        ]);
        self.metrics
            .inc(m::TOKENS_IN, series.clone(), t.tokens_in as f64);
        self.metrics
            .inc(m::TOKENS_OUT, series, t.tokens_out() as f64);
        let hist = labels(&[
            ("engine", api::ENGINE_LLAMACPP),
            ("engine_version", &ev),
            ("pool_id", &pool),
            ("priority", prio),
        ]);
        if let Some(ttft) = ttft {
            self.metrics
                .observe(m::LATENCY_FIRST_TOKEN, hist.clone(), ttft as f64);
            self.metrics.observe(m::LATENCY_DECODE, hist, decode as f64);
        }
        tracing::info!(event = "task.finished", correlation_id = %t.correlation_id, task_id = %id, tenant = %t.tenant, pool_id = %pool, node_id = %node, tokens_in = t.tokens_in,
            tokens_out = t.tokens_out(), duration_ms = now.duration_since(t.admitted.at).as_millis() as u64,
            "Task {id} ended ({reason:?}) with {} tokens", t.tokens_out());
        self.tenant_stopped(id, true, now);
        self.tasks.finished(id);
        self.bus.mark_task(id);
        self.journal.touch(id);
    }

    pub(super) fn finish_with_error(&mut self, id: TaskId, env: ErrorEnvelope, now: Instant) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        t.life.finish(Outcome::Failed, Stamp::at(now));
        t.error = Some(env.clone());
        t.log.append(Event::Error(env.clone()));
        let pool = t.pool_label();
        let node = t.node_label();
        let ev = t.engine_version.clone().unwrap_or_default();
        let series = labels(&[
            ("engine", api::ENGINE_LLAMACPP),
            ("engine_version", &ev),
            ("pool_id", &pool),
            ("replica_id", &node),
            ("tenant", t.tenant.as_str()),
        ]);
        self.metrics
            .inc(m::TOKENS_IN, series.clone(), t.tokens_in as f64);
        self.metrics
            .inc(m::TOKENS_OUT, series, t.tokens_out() as f64);
        tracing::warn!(event = "task.finished", correlation_id = %t.correlation_id, task_id = %id, tenant = %t.tenant, pool_id = %pool, code = %env.code,
            "Task {id} failed: {}", env.message);
        self.tenant_stopped(id, true, now);
        self.tasks.finished(id);
        self.bus.mark_task(id);
        self.journal.touch(id);
    }

    /// Frees the task's slot on its pool (the worker stream ended, or a cancel was confirmed).
    pub(super) fn release_slot(&mut self, id: TaskId, now: Instant) {
        let Some(pool) = self.tasks.get(&id).and_then(|t| t.pool.clone()) else {
            return;
        };
        if self.registry.release_slot(&pool, id) {
            self.pump(now);
        }
    }

    /// `POST /v2/tasks/{id}/cancel` and disconnects (API.md §5.6). Returns false for unknown tasks.
    pub fn cancel(&mut self, id: TaskId, reason: CancelReason, now: Instant) -> bool {
        self.cancel_as(id, reason, &super::tenants::Scope::All, now)
    }

    /// Cancels a task the caller may see; another tenant's task is unknown (false).
    pub fn cancel_as(
        &mut self,
        id: TaskId,
        reason: CancelReason,
        scope: &super::tenants::Scope,
        now: Instant,
    ) -> bool {
        let Some(t) = self.tasks.get(&id).filter(|t| scope.sees(&t.tenant)) else {
            return false;
        };
        match t.state() {
            TaskState::Queued => {
                self.dequeue(id);
                self.count_cancel(id, reason);
                self.finish_with_end(id, StopReason::Canceled, Outcome::Canceled, now);
                self.publish_gauges();
            }
            TaskState::Running => {
                self.count_cancel(id, reason);
                tracing::info!(event = "task.canceled", correlation_id = %t.correlation_id, task_id = %id, tenant = %t.tenant, pool_id = %t.pool_label(),
                    reason = reason.label(), "Task {id} canceled ({})", reason.label());
                self.stop_running(id, StopReason::Canceled, Outcome::Canceled, now);
            }
            _ => {}
        }
        true
    }

    fn count_cancel(&self, id: TaskId, reason: CancelReason) {
        let Some(t) = self.tasks.get(&id) else { return };
        let pool = t.pool_label();
        let node = t.node_label();
        let ev = t.engine_version.clone().unwrap_or_default();
        self.metrics.inc(
            m::TASKS_CANCELED,
            labels(&[
                ("engine", api::ENGINE_LLAMACPP),
                ("engine_version", &ev),
                ("pool_id", &pool),
                ("replica_id", &node),
                ("reason", reason.label()),
                ("tenant", t.tenant.as_str()),
            ]),
            1.0,
        );
    }

    /// Ends a running task at once and stops its engine work; the slot stays held until the worker
    /// confirms it free.
    fn stop_running(&mut self, id: TaskId, reason: StopReason, outcome: Outcome, now: Instant) {
        self.finish_with_end(id, reason, outcome, now);
        self.effects.abort_dispatch(id);
        let Some(t) = self.tasks.get(&id) else { return };
        let Some(pool_id) = t.pool.clone() else {
            return;
        };
        let cid = t.correlation_id.clone();
        let tenant = Some(t.tenant.clone());
        if !self.registry.start_releasing(&pool_id, id) {
            return;
        }
        let Some(node) = self
            .registry
            .pool(&pool_id)
            .and_then(|p| self.registry.node(&p.node_id))
        else {
            return;
        };
        self.effects.cancel_on_worker(CancelJob {
            task: id,
            tenant,
            pool_id,
            address: node.address.clone(),
            token: node.dispatch_token.clone(),
            correlation_id: cid,
        });
    }

    /// The worker answered 204 to a cancel: the slot is free.
    pub fn on_cancel_confirmed(&mut self, id: TaskId, now: Instant) {
        self.release_slot(id, now);
    }

    pub fn on_timer(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Deadline(id) => self.on_deadline(id, now),
            Timer::TokenizeBound(id) => self.on_tokenize_bound(id, now),
            Timer::DisconnectCheck(id) => {
                let Some(t) = self.tasks.get(&id) else { return };
                if t.state() == TaskState::Running
                    && t.log.subscribers() == 0
                    && t.log.ever_subscribed()
                {
                    self.cancel(id, CancelReason::Disconnect, now);
                }
            }
        }
    }

    fn on_deadline(&mut self, id: TaskId, now: Instant) {
        let Some(t) = self.tasks.get(&id) else { return };
        match t.state() {
            TaskState::Queued => {
                self.dequeue(id);
                self.finish_with_error(
                    id,
                    ErrorEnvelope::new(
                        ErrorCode::DeadlineUnmet,
                        "the deadline passed while the task was queued",
                    )
                    .with_retriable(false),
                    now,
                );
                self.publish_gauges();
            }
            TaskState::Running => {
                self.stop_running(id, StopReason::Deadline, Outcome::Completed, now)
            }
            _ => {}
        }
    }

    /// A subscriber left a task's stream; check for a disconnect after the grace period.
    pub fn on_subscriber_gone(&mut self, id: TaskId) {
        let grace = self.cfg.disconnect_grace;
        self.effects.timer(grace, Timer::DisconnectCheck(id));
    }

    /// Drops finished tasks past retention or beyond `max_retained` (oldest first).
    pub fn purge(&mut self, now: Instant) {
        self.tasks
            .purge(now, self.cfg.retention, self.cfg.max_retained);
        let tasks = &self.tasks;
        self.idempotency.retain(|_, id| tasks.get(id).is_some());
        if self.journal.enabled() {
            self.journal.retain(|id| tasks.get(id).is_some());
        }
    }

    pub fn log_of(&self, id: TaskId, scope: &super::tenants::Scope) -> Option<Arc<TaskLog>> {
        self.tasks
            .get(&id)
            .filter(|t| scope.sees(&t.tenant))
            .map(|t| t.log.clone())
    }

    pub fn record(&self, id: TaskId, scope: &super::tenants::Scope) -> Option<TaskRecord> {
        let t = self.tasks.get(&id).filter(|t| scope.sees(&t.tenant))?;
        let queued = t.state() == TaskState::Queued;
        let position = if queued {
            self.queues
                .get(&t.queue_key)
                .and_then(|q| q.position(id, self.cfg.interactive_burst))
                .map(|p| p as u64)
        } else {
            None
        };
        Some(TaskRecord {
            task_id: id,
            session_id: t.v.session_id,
            correlation_id: t.correlation_id.clone(),
            model: t.model.clone(),
            priority: t.v.priority,
            state: t.state(),
            queue_position: position,
            predicted_start_ms: if queued {
                Some(t.admission_predicted_ms)
            } else {
                None
            },
            pool_id: t.pool.clone(),
            node_id: t.node.clone(),
            engine: t.pool.as_ref().map(|_| api::ENGINE_LLAMACPP.to_string()),
            engine_version: t.engine_version.clone(),
            created_at_ms: Some(t.admitted.ms),
            started_at_ms: t.life.started_at().map(|s| s.ms),
            first_token_at_ms: t.life.first_token_at().map(|s| s.ms),
            finished_at_ms: t.life.finished_at().map(|s| s.ms),
            attempts: t.attempts,
            tokens_in: t.tokens_in,
            tokens_out: t.tokens_out(),
            seed: t.seed,
            stop_reason: t.stop_reason,
            error: t.error.clone(),
        })
    }

    /// Retained tasks that `scope` sees, newest first, at most `limit` (`GET /v2/tasks`).
    pub fn task_records(&self, limit: usize, scope: &super::tenants::Scope) -> Vec<TaskRecord> {
        let mut ids: Vec<(std::time::Instant, TaskId)> = self
            .tasks
            .iter()
            .filter(|(_, t)| scope.sees(&t.tenant))
            .map(|(id, t)| (t.admitted.at, *id))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.into_iter()
            .take(limit)
            .filter_map(|(_, id)| self.record(id, scope))
            .collect()
    }

    /// Tasks running on `node_id` when it is lost: before the first token they fail over, after it
    /// they migrate (or end with WORKER_RESET past the migration limit; API.md §7.5).
    pub(super) fn node_lost(&mut self, node_id: &NodeId, now: Instant) {
        let pools: Vec<PoolId> = self
            .registry
            .pools()
            .iter()
            .filter(|(_, p)| p.node_id == *node_id)
            .map(|(id, _)| id.clone())
            .collect();
        for p in &pools {
            self.prefix.clear_pool(p);
        }
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state() == TaskState::Running && t.node.as_ref() == Some(node_id))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.effects.abort_dispatch(id);
            let tokens = self
                .tasks
                .get(&id)
                .map(|t| t.token_frames + t.tool_frames)
                .unwrap_or(0);
            let code = if tokens > 0 {
                ErrorCode::WorkerReset
            } else {
                ErrorCode::PoolUnavailable
            };
            self.attempt_failed(
                id,
                ErrorEnvelope::new(code, format!("node {node_id} was lost")).with_retriable(true),
                Lost::Node,
                now,
            );
        }
        self.registry.clear_slots_on(node_id);
        self.pump(now);
    }
}

type Stats = std::collections::HashMap<PoolId, super::PoolStats, super::placement::IdHash>;

/// The fewest evaluated prompt tokens a finished task needs to count towards its pool's prefill
/// speed.
const PREFILL_SAMPLE_MIN: u64 = 16;

/// The mean run time of a task of `max_tokens` on `model`'s pools, from their measurements.
fn mean_duration_ms(
    registry: &super::registry::Registry,
    stats: &Stats,
    model: &ModelId,
    max_tokens: u64,
) -> u64 {
    let ds: Vec<f64> = registry
        .serving(model)
        .filter_map(|(id, _)| stats.get(id)?.service_ms())
        .collect();
    if ds.is_empty() {
        1000 + 50 * max_tokens
    } else {
        (ds.iter().sum::<f64>() / ds.len() as f64) as u64
    }
}

/// The wait advised before trying `model` again: one task's run time over its slots (at least 1 s).
pub(super) fn retry_after_ms(
    registry: &super::registry::Registry,
    stats: &Stats,
    model: &ModelId,
    max_tokens: u64,
) -> u64 {
    let slots: u64 = registry
        .serving(model)
        .map(|(_, p)| p.status.slots_total as u64)
        .sum::<u64>()
        .max(1);
    (mean_duration_ms(registry, stats, model, max_tokens) / slots).max(1000)
}
