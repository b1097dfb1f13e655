//! The sessions part of the core (API.md §4.3): metadata only (never prompts or outputs), created
//! by the first task that names them, refreshed by every admitted task, expired after
//! `sessions.ttl_ms`. A session's last pool is a placement hint that never makes a task wait.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use api::{ModelId, NodeId, PoolId, SessionId, TenantId};

use super::tenants::Scope;

pub struct Session {
    /// The tenant whose task created it; other tenants' tasks neither see nor change it.
    owner: TenantId,
    created_at_ms: u64,
    last_used: Instant,
    last_used_ms: u64,
    turns: u64,
    last_pool: Option<PoolId>,
    last_node: Option<NodeId>,
    last_model: Option<ModelId>,
    /// The last task completed on `last_pool`.
    warm: bool,
    tokens_in_total: u64,
    tokens_out_total: u64,
}

impl Session {
    fn new(owner: TenantId, now: Instant) -> Self {
        Self {
            owner,
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
        }
    }
}

pub struct Sessions {
    by_id: HashMap<SessionId, Session>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            by_id: HashMap::new(),
            ttl,
        }
    }

    /// Creates the session or restarts its TTL. Another tenant's live session of the same id is
    /// left alone (the task runs without it).
    pub fn touch(&mut self, id: SessionId, tenant: &TenantId, now: Instant) {
        let s = self
            .by_id
            .entry(id)
            .or_insert_with(|| Session::new(tenant.clone(), now));
        if now.duration_since(s.last_used) > self.ttl {
            // Expired but not yet purged: it starts anew.
            *s = Session::new(tenant.clone(), now);
        }
        if s.owner != *tenant {
            return;
        }
        s.last_used = now;
        s.last_used_ms = daemon::now_ms();
    }

    /// The session's last pool, for affinity.
    pub fn affinity(&self, id: SessionId, tenant: &TenantId) -> Option<PoolId> {
        self.by_id
            .get(&id)
            .filter(|s| s.owner == *tenant)
            .and_then(|s| s.last_pool.clone())
    }

    /// Records a task placed on `pool`: placing elsewhere cools the session.
    pub fn placed(&mut self, id: SessionId, tenant: &TenantId, pool: &PoolId) {
        if let Some(s) = self.by_id.get_mut(&id).filter(|s| s.owner == *tenant) {
            if s.last_pool.as_ref() != Some(pool) {
                s.warm = false;
            }
        }
    }

    /// Records a completed task.
    pub fn completed(
        &mut self,
        id: SessionId,
        tenant: &TenantId,
        pool: &PoolId,
        node: &NodeId,
        model: &ModelId,
        tokens: (u64, u64),
    ) {
        if let Some(s) = self.by_id.get_mut(&id).filter(|s| s.owner == *tenant) {
            s.turns += 1;
            s.last_pool = Some(pool.clone());
            s.last_node = Some(node.clone());
            s.last_model = Some(model.clone());
            s.warm = true;
            s.tokens_in_total += tokens.0;
            s.tokens_out_total += tokens.1;
        }
    }

    /// The session's view; `still_serves(pool, model)` tells whether the last pool is still Ready
    /// with the session's last model (for `kv_warmth`).
    pub fn view(
        &self,
        id: SessionId,
        scope: &Scope,
        now: Instant,
        still_serves: impl Fn(&PoolId, Option<&ModelId>) -> bool,
    ) -> Option<api::meta::SessionView> {
        let s = self.by_id.get(&id).filter(|s| scope.sees(&s.owner))?;
        let age = now.duration_since(s.last_used);
        if age > self.ttl {
            return None;
        }
        let pool_ok = s
            .last_pool
            .as_ref()
            .is_some_and(|p| still_serves(p, s.last_model.as_ref()));
        Some(api::meta::SessionView {
            session_id: id,
            created_at_ms: s.created_at_ms,
            last_used_at_ms: s.last_used_ms,
            ttl_ms_remaining: (self.ttl - age).as_millis() as u64,
            turns: s.turns,
            last_pool_id: s.last_pool.clone(),
            last_node_id: s.last_node.clone(),
            kv_warmth: s.warm && pool_ok,
            tokens_in_total: s.tokens_in_total,
            tokens_out_total: s.tokens_out_total,
        })
    }

    pub fn delete(&mut self, id: SessionId, scope: &Scope) {
        if self.by_id.get(&id).is_some_and(|s| scope.sees(&s.owner)) {
            self.by_id.remove(&id);
        }
    }

    /// Drops sessions past their TTL.
    pub fn purge(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.by_id
            .retain(|_, s| now.duration_since(s.last_used) <= ttl);
    }
}
