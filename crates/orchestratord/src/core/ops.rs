//! Pool operations (API.md §10): drain and reload, sent to the node as heartbeat commands and
//! tracked until the node reports them finished. One operation per pool at a time.

use std::time::Instant;

use api::node::{
    Command, CommandKind, CommandState, CommandStatus, LoadedModel, NodeStatus,
    PoolCommandAccepted, PoolState,
};
use api::task::TaskState;
use api::{CommandId, CorrelationId, ErrorCode, ErrorEnvelope, NodeId, PoolId, TaskId};

use super::{Core, Effects};

impl<E: Effects> Core<E> {
    /// `POST /v2/pools/{id}/drain`.
    pub fn drain(
        &mut self,
        pool_id: &str,
        deadline_ms: u64,
        correlation_id: CorrelationId,
        now: Instant,
    ) -> Result<PoolCommandAccepted, ErrorEnvelope> {
        let node_id = self.ready_node(pool_id)?;
        let (pool_id, pool) = self
            .registry
            .pools()
            .get_key_value(pool_id)
            .ok_or_else(|| not_found(pool_id))?;
        let pool_id = pool_id.clone();
        match &pool.op {
            Some((id, CommandKind::Drain)) => {
                return Ok(PoolCommandAccepted {
                    pool_id,
                    command_id: *id,
                    state: PoolState::Draining,
                })
            }
            Some(_) => {
                return Err(ErrorEnvelope::new(
                    ErrorCode::Conflict,
                    format!("another operation is running on pool {pool_id}"),
                ))
            }
            None => {}
        }
        let command_id = CommandId::new();
        if pool.status.state == PoolState::Unloaded {
            return Ok(PoolCommandAccepted {
                pool_id,
                command_id,
                state: PoolState::Unloaded,
            });
        }
        if let Some(p) = self.registry.pool_mut(&pool_id) {
            p.draining = true;
            p.op = Some((command_id, CommandKind::Drain));
        }
        self.fail_pinned(&pool_id, now);
        self.send(
            &node_id,
            Command {
                command_id,
                kind: CommandKind::Drain,
                pool_id: Some(pool_id.clone()),
                model: None,
                deadline_ms: Some(deadline_ms),
                correlation_id,
            },
        );
        Ok(PoolCommandAccepted {
            pool_id,
            command_id,
            state: PoolState::Draining,
        })
    }

    /// `POST /v2/pools/{id}/reload`: the pool's own model (returning a drained pool to service, or
    /// restarting its engine) or another catalog model, which the node fetches when needed.
    pub fn reload(
        &mut self,
        pool_id: &str,
        model_ref: &str,
        correlation_id: CorrelationId,
    ) -> Result<PoolCommandAccepted, ErrorEnvelope> {
        let node_id = self.ready_node(pool_id)?;
        let (pool_id, pool) = self
            .registry
            .pools()
            .get_key_value(pool_id)
            .ok_or_else(|| not_found(pool_id))?;
        let pool_id = pool_id.clone();
        if pool.op.is_some() {
            return Err(ErrorEnvelope::new(
                ErrorCode::Conflict,
                format!("another operation is running on pool {pool_id}"),
            ));
        }
        let model = self.reload_target(model_ref)?;
        let command_id = CommandId::new();
        if let Some(p) = self.registry.pool_mut(&pool_id) {
            p.op = Some((command_id, CommandKind::Reload));
        }
        let state = pool_state(self, &pool_id);
        self.send(
            &node_id,
            Command {
                command_id,
                kind: CommandKind::Reload,
                pool_id: Some(pool_id.clone()),
                model: Some(LoadedModel { ..model }),
                deadline_ms: None,
                correlation_id,
            },
        );
        Ok(PoolCommandAccepted {
            pool_id,
            command_id,
            state,
        })
    }

    /// The model a reload names, checked against the catalog as at admission (§10, §6.5).
    fn reload_target(&mut self, model_ref: &str) -> Result<LoadedModel, ErrorEnvelope> {
        let rec = self.admit_model(model_ref, None)?;
        Ok(LoadedModel {
            id: rec.id,
            model_ref: rec.model_ref,
            digest: rec.digest,
            size_bytes: rec.size_bytes,
            metadata: None,
        })
    }

    fn ready_node(&self, pool_id: &str) -> Result<NodeId, ErrorEnvelope> {
        let (pool_id, pool) = self
            .registry
            .pools()
            .get_key_value(pool_id)
            .ok_or_else(|| not_found(pool_id))?;
        match self.registry.node(&pool.node_id) {
            Some(n) if n.status == NodeStatus::Online => Ok(pool.node_id.clone()),
            _ => Err(ErrorEnvelope::new(
                ErrorCode::NodeUnavailable,
                format!("the node of pool {pool_id} is offline"),
            )
            .with_pool(pool_id)
            .with_retry_after(5000)),
        }
    }

    pub(super) fn send(&mut self, node_id: &NodeId, cmd: Command) {
        let pool_id = cmd.pool_id.as_ref().map(PoolId::as_str).unwrap_or("");
        tracing::info!(event = "command.sent", correlation_id = %cmd.correlation_id, command_id = %cmd.command_id, node_id = %node_id,
            pool_id = %pool_id, "Sent {:?} for pool {pool_id} to node {node_id}", cmd.kind);
        self.publish_command_sent(node_id, &cmd);
        if let Some(n) = self.registry.node_mut(node_id) {
            n.commands.push(cmd);
        }
    }

    /// Queued tasks pinned to a draining pool end with POOL_UNREADY.
    fn fail_pinned(&mut self, pool_id: &PoolId, now: Instant) {
        let key = super::queue::QueueKey::Pool(pool_id.clone());
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state() == TaskState::Queued && t.queue_key == key)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.dequeue(id);
            self.finish_with_error(
                id,
                ErrorEnvelope::new(
                    ErrorCode::PoolUnready,
                    format!("pool {pool_id} is draining"),
                )
                .with_pool(pool_id),
                now,
            );
        }
    }

    /// Statuses the node reported: an acknowledged command is no longer resent; a finished one
    /// ends the pool's operation.
    pub(super) fn command_statuses(
        &mut self,
        node_id: &NodeId,
        statuses: Vec<CommandStatus>,
        now: Instant,
    ) {
        for st in statuses {
            self.publish_command_status(node_id, &st);
            if let Some(n) = self.registry.node_mut(node_id) {
                n.commands.retain(|c| c.command_id != st.command_id);
            }
            if self.loads.contains_key(&st.command_id) {
                self.load_status(st, now);
                continue;
            }
            if !matches!(st.status, CommandState::Completed | CommandState::Failed) {
                continue;
            }
            if self.loads.has_node_command(&st.command_id) {
                self.node_command_done(
                    st.command_id,
                    st.status == CommandState::Completed,
                    st.error,
                    st.result,
                );
                continue;
            }
            let Some((pool_id, kind)) = self
                .registry
                .pools()
                .iter()
                .find(|(_, p)| p.op.is_some_and(|(id, _)| id == st.command_id))
                .map(|(id, p)| (id.clone(), p.op.as_ref().map(|o| o.1)))
            else {
                continue;
            };
            let failed = st.status == CommandState::Failed;
            tracing::info!(event = "command.finished", command_id = %st.command_id, node_id = %node_id, pool_id = %pool_id,
                "{kind:?} of pool {pool_id} {}", if failed { "failed" } else { "completed" });
            if kind == Some(CommandKind::Reload) {
                let serving = self
                    .registry
                    .pool(&pool_id)
                    .is_some_and(|p| p.status.state == PoolState::Ready);
                let outcome = match (failed, serving) {
                    (false, _) => "success",
                    (true, true) => "rolled_back",
                    (true, false) => "failed",
                };
                self.metrics.inc(
                    crate::metrics::POOL_RELOADS,
                    crate::metrics::labels(&[("pool_id", pool_id.as_str()), ("outcome", outcome)]),
                    1.0,
                );
            }
            if let Some(p) = self.registry.pool_mut(&pool_id) {
                p.op = None;
                if kind == Some(CommandKind::Reload) && !failed {
                    p.draining = false;
                }
                if let (true, Some(e)) = (failed, st.error) {
                    p.status.last_error = Some(e.message);
                }
            }
        }
        self.pump(now);
    }
}

fn pool_state<E: Effects>(core: &Core<E>, pool_id: &PoolId) -> PoolState {
    core.registry
        .pool(pool_id)
        .map(|p| {
            if p.draining && p.status.state == PoolState::Ready {
                PoolState::Draining
            } else {
                p.status.state
            }
        })
        .unwrap_or(PoolState::Unloaded)
}

fn not_found(pool_id: &str) -> ErrorEnvelope {
    ErrorEnvelope::new(ErrorCode::NotFound, format!("no pool {pool_id}"))
}
