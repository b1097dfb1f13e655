//! Sessions (API.md §4.3): metadata only (never prompts or outputs), created by the first task that
//! names them, refreshed by every admitted task, expired after `sessions.ttl_ms`. A session's last
//! pool is a placement hint that never makes a task wait.

use std::time::Instant;

use api::node::PoolState;
use api::{ModelId, NodeId, PoolId, SessionId};

use super::{Core, Effects};

pub struct Session {
    pub created_at_ms: u64,
    pub last_used: Instant,
    pub last_used_ms: u64,
    pub turns: u64,
    pub last_pool: Option<PoolId>,
    pub last_node: Option<NodeId>,
    pub last_model: Option<ModelId>,
    /// The last task completed on `last_pool`.
    pub warm: bool,
    pub tokens_in_total: u64,
    pub tokens_out_total: u64,
}

impl<E: Effects> Core<E> {
    /// Creates the session or restarts its TTL.
    pub(super) fn touch_session(&mut self, id: SessionId, now: Instant) {
        let ttl = self.cfg.session_ttl;
        let s = self.sessions.entry(id).or_insert_with(|| Session {
            created_at_ms: daemon::now_ms(),
            last_used: now,
            last_used_ms: daemon::now_ms(),
            turns: 0,
            last_pool: None,
            last_node: None,
            last_model: None,
            warm: false,
            tokens_in_total: 0,
            tokens_out_total: 0,
        });
        if now.duration_since(s.last_used) > ttl {
            // Expired but not yet purged: it starts anew.
            *s = Session {
                created_at_ms: daemon::now_ms(),
                turns: 0,
                last_pool: None,
                last_node: None,
                last_model: None,
                warm: false,
                tokens_in_total: 0,
                tokens_out_total: 0,
                ..*s
            };
        }
        s.last_used = now;
        s.last_used_ms = daemon::now_ms();
    }

    /// The session's last pool, for affinity.
    pub(super) fn affinity(&self, id: SessionId) -> Option<PoolId> {
        self.sessions.get(&id).and_then(|s| s.last_pool.clone())
    }

    /// Records a task placed on `pool`: placing elsewhere cools the session.
    pub(super) fn session_placed(&mut self, id: SessionId, pool: &PoolId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if s.last_pool.as_ref() != Some(pool) {
                s.warm = false;
            }
        }
    }

    /// Records a completed task.
    pub(super) fn session_completed(
        &mut self,
        id: SessionId,
        pool: &PoolId,
        node: &NodeId,
        model: &ModelId,
        tokens_in: u64,
        tokens_out: u64,
    ) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.turns += 1;
            s.last_pool = Some(pool.clone());
            s.last_node = Some(node.clone());
            s.last_model = Some(model.clone());
            s.warm = true;
            s.tokens_in_total += tokens_in;
            s.tokens_out_total += tokens_out;
        }
    }

    pub fn session_view(&self, id: SessionId, now: Instant) -> Option<api::meta::SessionView> {
        let s = self.sessions.get(&id)?;
        let age = now.duration_since(s.last_used);
        if age > self.cfg.session_ttl {
            return None;
        }
        let pool_ok = s
            .last_pool
            .as_ref()
            .and_then(|p| self.pools.get(p))
            .is_some_and(|p| {
                p.status.state == PoolState::Ready && p.model_id() == s.last_model.as_ref()
            });
        Some(api::meta::SessionView {
            session_id: id,
            created_at_ms: s.created_at_ms,
            last_used_at_ms: s.last_used_ms,
            ttl_ms_remaining: (self.cfg.session_ttl - age).as_millis() as u64,
            turns: s.turns,
            last_pool_id: s.last_pool.clone(),
            last_node_id: s.last_node.clone(),
            kv_warmth: s.warm && pool_ok,
            tokens_in_total: s.tokens_in_total,
            tokens_out_total: s.tokens_out_total,
        })
    }

    pub fn delete_session(&mut self, id: SessionId) {
        self.sessions.remove(&id);
    }

    /// Drops sessions past their TTL.
    pub(super) fn purge_sessions(&mut self, now: Instant) {
        let ttl = self.cfg.session_ttl;
        self.sessions
            .retain(|_, s| now.duration_since(s.last_used) <= ttl);
    }
}
