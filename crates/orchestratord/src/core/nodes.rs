//! The node registry in the core (API.md §12): registration, heartbeats, deregistration and
//! staleness, plus the pool and node views served by the HTTP layer.

use std::time::Instant;

use api::node::{
    CredentialKind, HeartbeatRequest, HeartbeatResponse, NodeStatus, NodeView, PoolState, PoolView,
    RegisterRequest, RegisterResponse,
};
use api::task::TaskState;
use api::{CorrelationId, ErrorCode, ErrorEnvelope, NodeId, PoolId, TaskId};
use daemon::secret::Secret;

use super::lifecycle::{Outcome, Stamp};
use super::{Core, Effects, Node, PoolEntry};
use crate::metrics::{self as m, labels};

/// Who presented which token on a node route (decided by the auth layer).
#[derive(Debug, Clone)]
pub enum NodeCaller {
    /// The registration token, or open mode.
    Registration,
    /// A per-node static token for this node id.
    Static(Secret),
    /// A bearer that must match the node's issued credential.
    Bearer(String),
    /// No token (open mode only).
    Open,
}

impl<E: Effects> Core<E> {
    pub fn register(
        &mut self,
        req: RegisterRequest,
        caller: NodeCaller,
        now: Instant,
    ) -> Result<RegisterResponse, ErrorEnvelope> {
        let outcome = self.try_register(req, caller, now);
        let label = if outcome.is_ok() {
            "success"
        } else {
            "rejected"
        };
        self.metrics
            .inc(m::NODE_REGISTRATIONS, labels(&[("outcome", label)]), 1.0);
        outcome
    }

    fn try_register(
        &mut self,
        req: RegisterRequest,
        caller: NodeCaller,
        now: Instant,
    ) -> Result<RegisterResponse, ErrorEnvelope> {
        ErrorEnvelope::check_protocol(req.protocol_version)?;
        let node_id = req.node_id.clone();
        if req.dispatch_token.len() < 32 {
            return Err(ErrorEnvelope::invalid(
                "dispatch_token",
                "must be at least 32 characters",
            ));
        }
        if !(req.address.starts_with("http://") || req.address.starts_with("https://")) {
            return Err(ErrorEnvelope::invalid("address", "must be an http(s) URL"));
        }
        for p in &req.pools {
            if let Some(owner) = self.registry.pool(&p.pool_id).map(|e| e.node_id.clone()) {
                if owner != req.node_id
                    && self
                        .registry
                        .node(&owner)
                        .is_some_and(|n| n.status == NodeStatus::Online)
                {
                    return Err(ErrorEnvelope::new(
                        ErrorCode::Conflict,
                        format!("pool {} belongs to node {owner}", p.pool_id),
                    ));
                }
            }
        }
        if let Some(existing) = self.registry.node(&req.node_id) {
            if existing.machine_id != req.machine_id && existing.status == NodeStatus::Online {
                return Err(ErrorEnvelope::new(
                    ErrorCode::Conflict,
                    format!("node id {node_id} belongs to another machine that is online"),
                ));
            }
        }
        let (credential, kind, token) = match caller {
            NodeCaller::Static(_) => (None, CredentialKind::Static, None),
            _ => {
                let c = Secret::random_hex(32);
                (
                    Some(c.clone()),
                    CredentialKind::Issued,
                    Some(c.expose().to_string()),
                )
            }
        };
        let pool_ids: Vec<PoolId> = req.pools.iter().map(|p| p.pool_id.clone()).collect();
        self.forget_loads_of(&req.node_id, now);
        // Pools this node no longer reports leave the registry.
        self.registry
            .retain_pools(|id, e| e.node_id != req.node_id || pool_ids.contains(id));
        for p in &req.pools {
            self.upsert_pool(&req.node_id, p.clone(), now);
        }
        self.registry.insert_node(
            req.node_id.clone(),
            Node {
                machine_id: req.machine_id,
                address: req.address.trim_end_matches('/').to_string(),
                version: req.version,
                dispatch_token: Secret::new(req.dispatch_token),
                credential,
                status: NodeStatus::Online,
                last_seen: now,
                registered_at_ms: daemon::now_ms(),
                last_heartbeat_ms: daemon::now_ms(),
                seq: 0,
                capabilities: req.capabilities,
                pools: pool_ids,
                gpus: vec![],
                commands: vec![],
            },
        );
        self.registry.sync_node_facts(&node_id);
        tracing::info!(event = "node.registered", node_id = %node_id, "Node {node_id} registered with {} pool(s)", self.registry.node(&node_id).map(|n| n.pools.len()).unwrap_or(0));
        self.pump(now);
        Ok(RegisterResponse {
            node_id,
            credential: kind,
            node_token: token,
            protocol_version: api::PROTOCOL_VERSION,
            next_heartbeat_ms: self.cfg.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: self.cfg.heartbeat_timeout.as_millis() as u64,
        })
    }

    fn upsert_pool(&mut self, node_id: &NodeId, status: api::node::PoolStatus, now: Instant) {
        let id = status.pool_id.clone();
        if status.state == PoolState::Ready {
            let ev = status.engine_version.clone().unwrap_or_default();
            for name in [m::TOKENS_IN, m::TOKENS_OUT] {
                self.metrics.touch(
                    name,
                    labels(&[
                        ("engine", api::ENGINE_LLAMACPP),
                        ("engine_version", &ev),
                        ("pool_id", id.as_str()),
                        ("replica_id", node_id.as_str()),
                    ]),
                );
            }
        }
        // What the engine held is gone once the pool is not Ready, or when it serves another engine
        // or model than before (a restart between heartbeats shows as one of those).
        let engine_reset = match self.registry.pool(&id) {
            Some(e) => {
                status.state != PoolState::Ready
                    || e.status.state != PoolState::Ready
                    || e.status.engine_version != status.engine_version
                    || e.status.models != status.models
            }
            None => true,
        };
        if engine_reset {
            self.prefix.clear_pool(&id);
        }
        let mut restarted = None;
        match self.registry.pool_mut(&id) {
            Some(e) => {
                let (was, is) = (e.status.state, status.state);
                if is == PoolState::Ready {
                    restarted = e.unready_since.take();
                } else if was == PoolState::Ready || e.unready_since.is_some() {
                    // Restarting states come back by themselves; Failed and Unloaded do not.
                    e.unready_since = (!matches!(is, PoolState::Failed | PoolState::Unloaded))
                        .then(|| e.unready_since.unwrap_or(now));
                }
                e.node_id = node_id.clone();
                e.status = status;
                e.exhausted = false;
                e.unready = false;
            }
            None => {
                let mut e = PoolEntry::new(node_id.clone(), status);
                e.speed = self.stats.get(&id).and_then(super::PoolStats::speed);
                self.registry.insert_pool(id.clone(), e);
            }
        }
        if let Some(since) = restarted {
            let took = now.duration_since(since).as_secs_f64() * 1000.0;
            let s = self.stats.entry(id.clone()).or_default();
            s.restart_ms = Some(s.restart_ms.map_or(took, |o| 0.8 * o + 0.2 * took));
        }
        self.evaluate_pool(&id);
    }

    /// Checks a bearer against the node's credential (constant time).
    pub fn node_authorized(&self, node_id: &str, caller: &NodeCaller) -> bool {
        let Some(n) = self.registry.node(node_id) else {
            return false;
        };
        match (caller, &n.credential) {
            (NodeCaller::Open, None) => true,
            (NodeCaller::Static(_), None) => true,
            (NodeCaller::Bearer(t), Some(c)) => c.matches(t),
            (NodeCaller::Open, Some(_)) => false,
            _ => false,
        }
    }

    pub fn heartbeat(
        &mut self,
        node_id: &str,
        hb: HeartbeatRequest,
        caller: NodeCaller,
        now: Instant,
    ) -> Result<HeartbeatResponse, ErrorEnvelope> {
        let outcome = |s: &str| labels(&[("node_id", node_id), ("outcome", s)]);
        if !self.registry.nodes().contains_key(node_id) {
            self.metrics
                .inc(m::NODE_HEARTBEATS, outcome("unknown_node"), 1.0);
            return Err(ErrorEnvelope::new(
                ErrorCode::NotFound,
                format!("node {node_id} is not registered; register again"),
            ));
        }
        if !self.node_authorized(node_id, &caller) {
            self.metrics
                .inc(m::NODE_HEARTBEATS, outcome("unauthorized"), 1.0);
            return Err(ErrorEnvelope::new(
                ErrorCode::BadToken,
                "the credential is not valid for this node",
            ));
        }
        let interval = self.cfg.heartbeat_interval.as_millis() as u64;
        let Some(node_id) = self
            .registry
            .nodes()
            .get_key_value(node_id)
            .map(|(k, _)| k.clone())
        else {
            return Err(ErrorEnvelope::new(
                ErrorCode::NotFound,
                format!("node {node_id} is not registered; register again"),
            ));
        };
        let node_id = &node_id;
        let Some(node) = self.registry.node_mut(node_id) else {
            return Err(ErrorEnvelope::new(ErrorCode::Internal, "node vanished"));
        };
        if hb.seq <= node.seq {
            self.metrics
                .inc(m::NODE_HEARTBEATS, outcome("stale_seq"), 1.0);
            return Ok(HeartbeatResponse {
                next_heartbeat_ms: interval,
                commands: vec![],
            });
        }
        node.seq = hb.seq;
        node.gpus = hb.gpus;
        node.last_seen = now;
        node.last_heartbeat_ms = daemon::now_ms();
        if node.status == NodeStatus::Offline {
            node.status = NodeStatus::Online;
            tracing::info!(event = "node.online", node_id = %node_id, "Node {node_id} is online again");
        }
        self.metrics
            .inc(m::NODE_HEARTBEATS, outcome("success"), 1.0);
        let pools = self.owned_pools(node_id, hb.pools);
        let reported: Vec<PoolId> = pools.iter().map(|p| p.pool_id.clone()).collect();
        for p in pools {
            let running: Vec<TaskId> = p.running.clone();
            self.upsert_pool(node_id, p.clone(), now);
            self.reconcile_running(&p.pool_id, &running, now);
        }
        // The heartbeat carries the node's full pool set: adopted engines come and go.
        self.registry
            .retain_pools(|id, p| p.node_id != *node_id || reported.contains(id));
        if let Some(n) = self.registry.node_mut(node_id) {
            n.pools = reported;
        }
        self.registry.sync_node_facts(node_id);
        self.command_statuses(node_id, hb.commands, now);
        self.pump(now);
        let commands = self
            .registry
            .node(node_id)
            .map(|n| n.commands.clone())
            .unwrap_or_default();
        // While a command is open the node checks in every second.
        let next = if commands.is_empty()
            && !self
                .registry
                .pools()
                .values()
                .any(|p| p.node_id == *node_id && p.op.is_some())
        {
            interval
        } else {
            1000
        };
        Ok(HeartbeatResponse {
            next_heartbeat_ms: next,
            commands,
        })
    }

    /// The pools of a heartbeat that `node_id` may own. A pool id that another Online node owns
    /// stays with that node and is ignored here (with a warning), as registration refuses it with
    /// 409 (API.md §12.1); once the owner is Offline or deregistered, the reporting node takes it.
    fn owned_pools(
        &self,
        node_id: &NodeId,
        pools: Vec<api::node::PoolStatus>,
    ) -> Vec<api::node::PoolStatus> {
        pools
            .into_iter()
            .filter(|p| {
                let Some(owner) = self.registry.pool(&p.pool_id).map(|e| &e.node_id) else {
                    return true;
                };
                let taken = owner != node_id
                    && self.registry.node(owner)
                        .is_some_and(|n| n.status == NodeStatus::Online);
                if taken {
                    tracing::warn!(event = "node.pool_conflict", node_id = %node_id, pool_id = %p.pool_id, owner = %owner,
                        "Node {node_id} reported pool {} that belongs to Online node {owner}; ignored", p.pool_id);
                }
                !taken
            })
            .collect()
    }

    /// A canceled task's slot is free once the worker no longer lists it (API.md §7.4).
    fn reconcile_running(&mut self, pool_id: &PoolId, running: &[TaskId], now: Instant) {
        let Some(p) = self.registry.pool(pool_id) else {
            return;
        };
        let freed: Vec<TaskId> = p
            .releasing
            .iter()
            .filter(|t| !running.contains(t))
            .copied()
            .collect();
        for id in freed {
            self.release_slot(id, now);
        }
        // Work the worker runs that this orchestratord does not know (e.g. after a restart) is canceled.
        let unknown: Vec<TaskId> = running
            .iter()
            .copied()
            .filter(|id| {
                self.tasks.get(id).is_none_or(|t| {
                    t.state().is_terminal()
                        && !self
                            .registry
                            .pool(pool_id)
                            .is_some_and(|p| p.holding.contains(id))
                })
            })
            .collect();
        for id in unknown {
            if let (Some(p), true) = (self.registry.pool(pool_id), self.tasks.get(&id).is_none()) {
                if let Some(n) = self.registry.node(&p.node_id) {
                    self.effects.cancel_on_worker(super::CancelJob {
                        task: id,
                        tenant: None,
                        pool_id: pool_id.clone(),
                        address: n.address.clone(),
                        token: n.dispatch_token.clone(),
                        correlation_id: CorrelationId::new(),
                    });
                }
            }
        }
    }

    pub fn deregister(&mut self, node_id: &str, now: Instant) -> bool {
        let Some((node_id, _)) = self.registry.remove_node(node_id) else {
            self.metrics.inc(
                m::NODE_DEREGISTRATIONS,
                labels(&[("outcome", "rejected")]),
                1.0,
            );
            return false;
        };
        let node_id = &node_id;
        self.metrics.inc(
            m::NODE_DEREGISTRATIONS,
            labels(&[("outcome", "success")]),
            1.0,
        );
        tracing::info!(event = "node.deregistered", node_id = %node_id, "Node {node_id} deregistered");
        self.registry.suspend_node(node_id);
        self.node_lost(node_id, now);
        self.registry.retain_pools(|_, p| p.node_id != *node_id);
        self.publish_gauges();
        true
    }

    /// Marks nodes Offline whose last heartbeat is older than the timeout; purges old tasks.
    pub fn tick(&mut self, now: Instant) {
        let timeout = self.cfg.heartbeat_timeout;
        let stale: Vec<NodeId> = self
            .registry
            .nodes()
            .iter()
            .filter(|(_, n)| {
                n.status == NodeStatus::Online && now.duration_since(n.last_seen) > timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(n) = self.registry.node_mut(&id) {
                n.status = NodeStatus::Offline;
            }
            self.registry.sync_node_facts(&id);
            self.metrics
                .inc(m::NODE_OFFLINE, labels(&[("node_id", id.as_str())]), 1.0);
            tracing::warn!(event = "node.offline", node_id = %id, "Node {id} is offline: no heartbeat for {} ms", timeout.as_millis());
            self.node_lost(&id, now);
            self.fail_pinned_to_node(&id, now);
        }
        self.end_takeover(now);
        self.fail_stranded_queued(now);
        // A task waiting for a busy prefix holder (decision 69) is placed elsewhere once its
        // wait bound passes, even if no slot frees meanwhile.
        if self.cfg.strategy == crate::config::Strategy::CacheAware
            && self.cfg.wait_for_prefix_tokens > 0
        {
            self.pump(now);
        }
        self.purge(now);
        self.sessions.purge(now);
        self.bus.mark_queues();
        self.publish_gauges();
    }

    /// Queued tasks pinned to a pool of an Offline node end with NODE_UNAVAILABLE (API.md §7.5).
    fn fail_pinned_to_node(&mut self, node_id: &NodeId, now: Instant) {
        let pools: Vec<PoolId> = self
            .registry
            .pools()
            .iter()
            .filter(|(_, p)| p.node_id == *node_id)
            .map(|(id, _)| id.clone())
            .collect();
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                t.state() == TaskState::Queued
                    && t.v
                        .placement
                        .pin_pool_id
                        .as_ref()
                        .is_some_and(|p| pools.contains(p))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.dequeue(id);
            self.tenant_stopped(id, true, now);
            if let Some(t) = self.tasks.get_mut(&id) {
                t.life.finish(Outcome::Failed, Stamp::at(now));
                let env = ErrorEnvelope::new(
                    ErrorCode::NodeUnavailable,
                    format!("node {node_id} of the pinned pool went offline"),
                );
                t.error = Some(env.clone());
                t.log.append(api::events::Event::Error(env));
            }
            self.tasks.finished(id);
            self.bus.mark_task(id);
            self.journal.touch(id);
        }
    }

    pub fn node_views(&self) -> Vec<NodeView> {
        self.registry
            .nodes()
            .keys()
            .filter_map(|id| self.node_view(id))
            .collect()
    }

    /// One node as `GET /v2/nodes` shows it.
    pub fn node_view(&self, id: &NodeId) -> Option<NodeView> {
        let n = self.registry.node(id)?;
        Some(NodeView {
            node_id: id.clone(),
            machine_id: n.machine_id.clone(),
            address: n.address.clone(),
            status: n.status,
            version: n.version.clone(),
            registered_at_ms: n.registered_at_ms,
            last_heartbeat_ms: n.last_heartbeat_ms,
            pools: n.pools.clone(),
            capabilities: n.capabilities.clone(),
            gpus: n.gpus.clone(),
        })
    }

    pub fn pool_list(&self) -> Vec<PoolView> {
        self.registry
            .pools()
            .keys()
            .filter_map(|id| self.pool_view(id))
            .collect()
    }

    /// One pool as `GET /v2/pools` shows it.
    pub fn pool_view(&self, id: &PoolId) -> Option<PoolView> {
        let p = self.registry.pool(id)?;
        let queued = self.queued_for_pool(id, p.model_id()) as u64;
        Some(PoolView {
            pool_id: id.clone(),
            node_id: p.node_id.clone(),
            node_status: self
                .registry
                .node(&p.node_id)
                .map(|n| n.status)
                .unwrap_or(NodeStatus::Offline),
            state: if p.draining && p.status.state == PoolState::Ready {
                PoolState::Draining
            } else {
                p.status.state
            },
            engine: p.status.engine.clone(),
            engine_version: p.status.engine_version.clone(),
            model: p.status.models.first().map(|m| api::node::PoolModelRef {
                id: m.id.clone(),
                digest: m.digest.clone(),
            }),
            ctx_per_slot: p.status.ctx_per_slot,
            workload: p.status.workload,
            slots_total: p.status.slots_total,
            slots_free: p.free_slots(),
            queued,
            running: p.holding.len() as u64,
            device_mask: p.status.device_mask.clone(),
            last_error: p.status.last_error.clone(),
            decode_tokens_per_s: p.status.decode_tokens_per_s,
        })
    }

    /// `orchd_node_heartbeat_age_ms` per node, computed at scrape time.
    pub fn heartbeat_ages(&self, now: Instant) -> Vec<(NodeId, u64)> {
        self.registry
            .nodes()
            .iter()
            .map(|(id, n)| {
                (
                    id.clone(),
                    now.duration_since(n.last_seen).as_millis() as u64,
                )
            })
            .collect()
    }
}
