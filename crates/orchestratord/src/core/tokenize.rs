//! Cache-aware placement's tokenize step (decision 69). On admission, under
//! `placement.strategy = "cache-aware"`, the core asks one Ready pool serving the task's model
//! (round robin, on any node) for the prompt's engine token ids through the worker's
//! tokenize route, in a spawned call whose answer comes back as a message; the 202 never waits
//! for it. While the ids are pending the task stays queued (skipped, not blocking later tasks) for
//! at most `placement.tokenize_timeout_ms` after admission; past that bound, or when the worker
//! fails, it is placed by load alone. Ids that come late still index what the task leaves in its
//! engine. Under `least-loaded` nothing is asked. Embeddings and chats that run on the engine's
//! chat endpoint (tools) have no prompt ids and are neither asked for nor indexed.

use std::sync::Arc;
use std::time::Instant;

use api::node::PoolState;
use api::task::{PlacementMode, TaskState};
use api::worker::{DispatchModel, TokenizeRequest};
use api::TaskId;

use super::{Core, Effects, TaskEntry, Timer, TokenizeJob};

/// What the core knows of a task's prompt token ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum PromptIds {
    /// Not asked for: least-loaded placement, an input without prompt ids, or no Ready pool to ask.
    #[default]
    None,
    /// Asked for; placement waits for them within `placement.tokenize_timeout_ms`.
    Pending,
    Known(Arc<[u32]>),
    /// The worker could not tell them: placed by load and not indexed.
    Failed,
}

impl<E: Effects> Core<E> {
    /// Asks a worker for the prompt ids of the just admitted task `id` (cache-aware only).
    pub(super) fn ask_prompt_ids(&mut self, id: TaskId) {
        if self.cfg.strategy != crate::config::Strategy::CacheAware {
            return;
        }
        let Some(t) = self.tasks.get(&id) else { return };
        if !t.v.input.tokenizable() {
            return;
        }
        // Round robin over the Ready pools serving the model (the call takes no slot, so load
        // does not matter, and a scan that stops at the first fit keeps admission O(1) in pools).
        let fits = |p: &super::PoolEntry| {
            p.status.state == PoolState::Ready
                && !p.unready
                && p.node_online
                && p.status.workload == t.v.workload
                && p.model_id() == Some(&t.model)
        };
        let pools = self.registry.pools();
        let after = match &self.tokenize_cursor {
            Some(c) => pools.range::<api::PoolId, _>((
                std::ops::Bound::Excluded(c),
                std::ops::Bound::Unbounded,
            )),
            None => pools.range::<api::PoolId, _>(..),
        };
        let Some((pool_id, p)) = after.chain(pools.iter()).find(|(_, p)| fits(p)) else {
            return;
        };
        let Some(node) = self.registry.node(&p.node_id) else {
            return;
        };
        let job = TokenizeJob {
            task: id,
            address: node.address.clone(),
            token: node.dispatch_token.clone(),
            pool_id: pool_id.clone(),
            correlation_id: t.correlation_id.clone(),
            body: TokenizeRequest {
                protocol_version: api::PROTOCOL_VERSION,
                model: DispatchModel {
                    id: t.model.clone(),
                    digest: p.status.models.first().and_then(|m| m.digest.clone()),
                },
                input: t.v.input.clone(),
            },
        };
        self.tokenize_cursor = Some(job.pool_id.clone());
        if let Some(t) = self.tasks.get_mut(&id) {
            t.prompt_ids = PromptIds::Pending;
        }
        self.effects.tokenize(job);
        self.effects
            .timer(self.cfg.tokenize_timeout, Timer::TokenizeBound(id));
    }

    /// True while placement waits for the task's prompt ids (a pinned task never waits: it has
    /// one candidate).
    pub(super) fn tokenize_pending(&self, t: &TaskEntry, now: Instant) -> bool {
        t.prompt_ids == PromptIds::Pending
            && t.v.placement.mode != PlacementMode::Pin
            && now.saturating_duration_since(t.admitted.at) < self.cfg.tokenize_timeout
    }

    /// The worker's answer to [`Effects::tokenize`]: the prompt's token ids, or why there are none.
    pub fn on_tokenized(&mut self, id: TaskId, answer: Result<Vec<u32>, String>, now: Instant) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if t.prompt_ids != PromptIds::Pending {
            return;
        }
        match answer {
            Ok(ids) => {
                t.prefix_key = super::prefix::key(&ids);
                t.prompt_ids = PromptIds::Known(ids.into());
            }
            Err(why) => {
                tracing::warn!(event = "placement.tokenize_failed", correlation_id = %t.correlation_id, task_id = %id,
                    "No prompt token ids for task {id}, placed by load: {why}");
                t.prompt_ids = PromptIds::Failed;
            }
        }
        if t.state() == TaskState::Queued {
            self.pump(now);
        }
    }

    /// The tokenize bound of a task passed: if it still waits, it is placed by load now.
    pub(super) fn on_tokenize_bound(&mut self, id: TaskId, now: Instant) {
        let Some(t) = self.tasks.get(&id) else { return };
        if t.prompt_ids == PromptIds::Pending && t.state() == TaskState::Queued {
            tracing::info!(event = "placement.tokenize_late", correlation_id = %t.correlation_id, task_id = %id,
                "The prompt token ids of task {id} did not come within {} ms; placing it by load", self.cfg.tokenize_timeout.as_millis());
            self.pump(now);
        }
    }
}
