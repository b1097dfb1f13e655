//! The model catalog in the core (API.md §9): which catalog model each pool serves, the catalog
//! routes (register, list, delete, verify, state, availability), the admission check of §6.5, and
//! node-level catalog commands (`evict-model`, `verify-model`) and their outcomes.

use api::catalog::{
    AvailabilityResponse, ModelAvailability, ModelRecord, ModelState, RegisterModel, ServingPool,
};
use api::node::{Command, CommandKind, CommandResult, LoadedModel, NodeStatus, PoolState};
use api::{CommandId, CorrelationId, ErrorCode, ErrorEnvelope, ModelId, NodeId};
use catalog::{Copy, CopyOutcome, Registered};

use super::{Core, Effects};
use crate::metrics::{self as m, labels};

/// A node-level catalog command in flight.
pub struct NodeCommand {
    pub(super) node_id: NodeId,
    pub(super) kind: CommandKind,
    pub(super) model_id: ModelId,
}

fn store_error(e: catalog::StoreError) -> ErrorEnvelope {
    tracing::error!(event = "catalog.write_failed", "Catalog write failed: {e}");
    ErrorEnvelope::new(ErrorCode::Internal, "the catalog could not be written")
}

fn not_found(id: &str) -> ErrorEnvelope {
    ErrorEnvelope::new(ErrorCode::NotFound, format!("no catalog model {id}"))
}

/// The `reason` label of `catalog_verifications_total` for a failed fetch or check.
pub(super) fn failure_reason(e: &ErrorEnvelope) -> &'static str {
    match e.code {
        ErrorCode::UntrustedArtifact => "digest_mismatch",
        ErrorCode::NotFound => "missing",
        ErrorCode::ModelNotAvailable if !e.retriable => "missing",
        _ => "io_error",
    }
}

impl<E: Effects> Core<E> {
    /// Counts one digest verification (`catalog_verifications_total{result, reason, engine}`).
    pub(super) fn count_verification(&self, pass: bool, reason: &str) {
        let result = if pass { "pass" } else { "fail" };
        self.metrics.inc(
            m::CATALOG_VERIFICATIONS,
            labels(&[
                ("result", result),
                ("reason", reason),
                ("engine", api::ENGINE_LLAMACPP),
            ]),
            1.0,
        );
    }

    /// Re-derives which catalog model a pool serves from its latest report (API.md §9.2): its
    /// digest equals the catalog digest, or the catalog has none yet and the refs match. A model
    /// the catalog does not know is registered as Active; an id clash marks the pool Failed.
    /// Catalog writes happen only when the pool's reported model changed.
    pub(super) fn evaluate_pool(&mut self, pool_id: &api::PoolId) {
        let Some(p) = self.registry.pool(pool_id) else {
            return;
        };
        let node_id = p.node_id.clone();
        let Some(model) = p.status.models.first().cloned() else {
            self.registry.set_serves(pool_id, None);
            if let Some(p) = self.registry.pool_mut(pool_id) {
                p.reported = None;
            }
            return;
        };
        let changed = p.reported.as_ref() != Some(&(model.id.clone(), model.digest.clone()));
        let mut problem: Option<(String, bool)> = None;
        if self.catalog.get(model.id.as_str()).is_none() {
            match self.catalog.adopt_reported(
                model.id.as_str(),
                &model.model_ref,
                model.digest.as_deref(),
            ) {
                Ok(rec) => {
                    tracing::info!(event = "catalog.registered", model = %rec.id, pool_id = %pool_id, "Registered model {} from pool {pool_id}'s report ({})", rec.id, rec.model_ref)
                }
                Err(e) => problem = Some((e.message, true)),
            }
        }
        if problem.is_none() && changed && model.digest.is_some() {
            let copy = Copy {
                node_id: node_id.clone(),
                digest: model.digest.clone(),
                size_bytes: model.size_bytes,
                metadata: model.metadata.clone(),
                verified: true,
            };
            match self.catalog.record_copy(model.id.as_str(), copy) {
                Ok(CopyOutcome::Recorded) => {}
                Ok(CopyOutcome::Mismatch { expected, actual }) => {
                    self.count_verification(false, "digest_mismatch");
                    problem = Some((
                        format!(
                            "model {} on this pool has digest {actual}, the catalog has {expected}",
                            model.id
                        ),
                        false,
                    ));
                }
                Err(e) => {
                    store_error(e);
                }
            }
        }
        let serves = problem
            .is_none()
            .then(|| self.catalog.get(model.id.as_str()))
            .flatten()
            .is_some_and(|rec| match (&rec.digest, &model.digest) {
                (Some(want), Some(got)) => want == got,
                (Some(_), None) => false,
                (None, _) => rec.model_ref == model.model_ref,
            });
        self.registry
            .set_serves(pool_id, serves.then(|| model.id.clone()));
        if let Some(p) = self.registry.pool_mut(pool_id) {
            p.reported = Some((model.id.clone(), model.digest.clone()));
            if let Some((why, fail)) = problem {
                if fail {
                    p.status.state = PoolState::Failed;
                }
                p.status.last_error = Some(why);
            }
        }
    }

    fn evaluate_all_pools(&mut self) {
        let ids: Vec<api::PoolId> = self.registry.pools().keys().cloned().collect();
        for id in ids {
            if let Some(p) = self.registry.pool_mut(&id) {
                p.reported = None;
            }
            self.evaluate_pool(&id);
        }
    }

    /// True when a pool serves `model` or is being loaded with it, on an Online node (§6.5).
    /// True when a pool serving (or loading) `model` runs tasks of `workload`.
    pub(super) fn workload_served(&self, model: &ModelId, workload: api::task::Workload) -> bool {
        self.registry.pools().values().any(|p| {
            p.node_online
                && !p.draining
                && p.status.workload == workload
                && (p.loading.as_ref() == Some(model) || p.model_id() == Some(model))
        })
    }

    pub(super) fn model_has_pool(&self, model: &ModelId) -> bool {
        self.registry.pools().values().any(|p| {
            p.node_online
                && !p.draining
                && (p.loading.as_ref() == Some(model)
                    || (p.model_id() == Some(model)
                        && matches!(
                            p.status.state,
                            PoolState::Ready | PoolState::Starting | PoolState::Provisioning
                        )))
        })
    }

    /// The catalog check at admission (API.md §6.5): the record a task's `model_ref` names.
    pub(super) fn admit_model(
        &mut self,
        model_ref: &str,
        ctx: Option<u64>,
    ) -> Result<ModelRecord, ErrorEnvelope> {
        let rec = self
            .catalog
            .resolve(model_ref, &self.cfg.allowed_schemes, self.cfg.auto_register)?
            .ok_or_else(|| {
                ErrorEnvelope::new(
                    ErrorCode::ModelNotAvailable,
                    format!("model {model_ref:?} is not in the catalog"),
                )
                .with_retriable(false)
            })?;
        if rec.state == ModelState::Retired {
            return Err(ErrorEnvelope::new(
                ErrorCode::ModelDeprecated,
                format!("model {} is retired", rec.id),
            ));
        }
        if let (Some(c), Some(train)) = (ctx, rec.metadata.as_ref().and_then(|m| m.context_length))
        {
            if c > train {
                return Err(ErrorEnvelope::invalid(
                    "ctx",
                    format!(
                        "model {} was trained with a context of {train} tokens; {c} is larger",
                        rec.id
                    ),
                ));
            }
        }
        Ok(rec)
    }

    /// `POST /v2/catalog/models`: the record and whether it was created.
    pub fn catalog_register(
        &mut self,
        req: RegisterModel,
    ) -> Result<(ModelRecord, bool), ErrorEnvelope> {
        let out = match self.catalog.register(&req, &self.cfg.allowed_schemes)? {
            Registered::Created(r) => {
                tracing::info!(event = "catalog.registered", model = %r.id, "Registered model {} ({})", r.id, r.model_ref);
                (r, true)
            }
            Registered::Existing(r) => (r, false),
        };
        self.evaluate_all_pools();
        Ok(out)
    }

    /// The catalog changes made since the last call, for the store task, in order.
    pub fn take_catalog_writes(&mut self) -> Vec<catalog::Write> {
        let writes = self.catalog.take_writes();
        self.publish_catalog_writes(&writes);
        writes
    }

    /// A catalog write failed: the mirror becomes what the store holds plus the changes queued
    /// since it was read, and every pool's model is derived again.
    pub fn catalog_resync(&mut self, records: Vec<ModelRecord>, since: &[catalog::Write]) {
        tracing::warn!(
            event = "catalog.resync",
            "Catalog mirror resynchronized from the store after a failed write"
        );
        self.catalog.resync(records, since);
        self.evaluate_all_pools();
    }

    pub fn catalog_list(&self) -> Vec<ModelRecord> {
        self.catalog.list().into_iter().cloned().collect()
    }

    pub fn catalog_get(&self, id: &str) -> Option<ModelRecord> {
        self.catalog.get(id).cloned()
    }

    /// `DELETE /v2/catalog/models/{id}`: refused while a pool serves or loads the model; nodes
    /// holding a copy are told to evict it (they delete only files in their models cache).
    pub fn catalog_delete(
        &mut self,
        id: &str,
        correlation_id: CorrelationId,
    ) -> Result<(), ErrorEnvelope> {
        let rec = self.catalog.get(id).cloned().ok_or_else(|| not_found(id))?;
        if let Some((pid, _)) = self
            .registry
            .pools()
            .iter()
            .find(|(_, p)| p.model_id() == Some(&rec.id) || p.loading.as_ref() == Some(&rec.id))
        {
            return Err(ErrorEnvelope::new(
                ErrorCode::Conflict,
                format!("pool {pid} serves or is loading {id}; drain or reload it first"),
            ));
        }
        self.catalog.delete(id).map_err(store_error)?;
        tracing::info!(event = "catalog.deleted", model = %id, "Deleted model {id} from the catalog");
        for node in &rec.locations {
            self.send_node_command(node, CommandKind::EvictModel, &rec, correlation_id.clone());
        }
        self.evaluate_all_pools();
        Ok(())
    }

    /// `POST /v2/catalog/models/{id}/verify`: every node holding a copy re-hashes it.
    pub fn catalog_verify(
        &mut self,
        id: &str,
        correlation_id: CorrelationId,
    ) -> Result<ModelRecord, ErrorEnvelope> {
        let rec = self.catalog.get(id).cloned().ok_or_else(|| not_found(id))?;
        for node in &rec.locations {
            if self
                .registry
                .node(node)
                .is_some_and(|n| n.status == NodeStatus::Online)
            {
                self.send_node_command(
                    node,
                    CommandKind::VerifyModel,
                    &rec,
                    correlation_id.clone(),
                );
            }
        }
        Ok(rec)
    }

    /// `POST /v2/catalog/models/{id}/state`.
    pub fn catalog_set_state(
        &mut self,
        id: &str,
        state: ModelState,
    ) -> Result<ModelRecord, ErrorEnvelope> {
        let rec = self.catalog.set_state(id, state)?;
        tracing::info!(event = "catalog.state", model = %id, "Model {id} is now {}", state.as_str());
        Ok(rec)
    }

    /// `GET /v2/catalog/availability`.
    pub fn availability(&self) -> AvailabilityResponse {
        let models = self
            .catalog
            .list()
            .into_iter()
            .map(|r| ModelAvailability {
                id: r.id.clone(),
                state: r.state,
                cached_on: r.locations.clone(),
                serving: self
                    .registry
                    .pools()
                    .iter()
                    .filter(|(_, p)| p.model_id() == Some(&r.id))
                    .map(|(pid, p)| ServingPool {
                        node_id: p.node_id.clone(),
                        pool_id: pid.clone(),
                        state: p.status.state,
                        slots_free: p.free_slots(),
                    })
                    .collect(),
            })
            .collect();
        AvailabilityResponse { models }
    }

    /// Models a client may name on `/v1/models`: Active, and served by a Ready pool or loadable.
    pub fn listed_models(&self) -> Vec<(ModelId, u64)> {
        self.catalog
            .list()
            .into_iter()
            .filter(|r| r.state == ModelState::Active)
            .filter(|r| {
                self.registry.pools().values().any(|p| {
                    p.node_online
                        && p.model_id() == Some(&r.id)
                        && p.status.state == PoolState::Ready
                }) || (self.cfg.provisioning_on_demand && self.provision_target(r).is_some())
            })
            .map(|r| {
                (
                    r.id.clone(),
                    r.last_verified_ms.unwrap_or_else(daemon::now_ms) / 1000,
                )
            })
            .collect()
    }

    fn send_node_command(
        &mut self,
        node_id: &NodeId,
        kind: CommandKind,
        rec: &ModelRecord,
        correlation_id: CorrelationId,
    ) {
        let command_id = CommandId::new();
        let model = LoadedModel {
            id: rec.id.clone(),
            model_ref: rec.model_ref.clone(),
            digest: rec.digest.clone(),
            size_bytes: rec.size_bytes,
            metadata: None,
        };
        self.loads.insert_node_command(
            command_id,
            NodeCommand {
                node_id: node_id.clone(),
                kind,
                model_id: rec.id.clone(),
            },
        );
        self.send(
            node_id,
            Command {
                command_id,
                kind,
                pool_id: None,
                model: Some(model),
                deadline_ms: None,
                correlation_id,
            },
        );
    }

    /// A node finished an `evict-model` or `verify-model` command.
    pub(super) fn node_command_done(
        &mut self,
        command_id: CommandId,
        ok: bool,
        error: Option<ErrorEnvelope>,
        result: Option<CommandResult>,
    ) {
        let Some(cmd) = self.loads.remove_node_command(&command_id) else {
            return;
        };
        let (node, model) = (cmd.node_id, cmd.model_id);
        match cmd.kind {
            CommandKind::VerifyModel if ok => {
                self.count_verification(true, "ok");
                let copy = Copy {
                    node_id: node.clone(),
                    digest: result.as_ref().map(|r| r.digest.clone()),
                    size_bytes: result.as_ref().map(|r| r.size_bytes),
                    metadata: result.and_then(|r| r.metadata),
                    verified: true,
                };
                if let Err(e) = self.catalog.record_copy(model.as_str(), copy) {
                    store_error(e);
                }
                tracing::info!(event = "catalog.verified", model = %model, node_id = %node, "The copy of {model} on node {node} verified");
            }
            CommandKind::VerifyModel => {
                let e = error.unwrap_or_else(|| {
                    ErrorEnvelope::new(ErrorCode::Internal, "verification failed")
                });
                self.count_verification(false, failure_reason(&e));
                if let Err(e) = self.catalog.remove_location(model.as_str(), node.as_str()) {
                    store_error(e);
                }
                tracing::warn!(event = "catalog.verify_failed", model = %model, node_id = %node, code = %e.code, "The copy of {model} on node {node} failed verification and was removed: {}", e.message);
            }
            _ => {
                tracing::info!(event = "catalog.evicted", model = %model, node_id = %node, "Node {node} {} its copy of {model}", if ok { "evicted" } else { "could not evict" })
            }
        }
    }

    /// `model_state` gauges, from the catalog.
    pub(super) fn model_state_gauges(&self) -> super::GaugeRows {
        let mut out = vec![];
        for r in self.catalog.list() {
            for s in [ModelState::Active, ModelState::Retired] {
                out.push((
                    m::MODEL_STATE,
                    labels(&[("model_id", r.id.as_str()), ("state", s.as_str())]),
                    if r.state == s { 1.0 } else { 0.0 },
                ));
            }
        }
        out
    }
}
