//! The core's owner task: receives messages from HTTP handlers, dispatch relays and timers, and
//! applies them to the synchronous [`Core`] one at a time. [`LiveEffects`] performs the core's
//! effects with real HTTP calls and timers, each reporting back as a message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::catalog::{AvailabilityResponse, ModelRecord, ModelState, RegisterModel};
use api::node::{
    HeartbeatRequest, HeartbeatResponse, NodeView, PoolView, RegisterRequest, RegisterResponse,
};
use api::task::{AdmissionResponse, TaskRecord};
use api::worker::WorkerEvent;
use api::{ErrorEnvelope, TaskId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::nodes::NodeCaller;
use super::store::{Durable, StoreLink};
use super::tasks::CancelReason;
use super::tenants::Scope;
use super::{CancelJob, Core, DispatchJob, Effects, TaskLog, Timer};
use crate::config::Config;
use crate::metrics::Metrics;

type Reply<T> = oneshot::Sender<T>;

/// A catalog registration's answer: the record and whether it was created.
pub type Registration = Result<(ModelRecord, bool), ErrorEnvelope>;

/// An admission's answer: the 202 body and the task's log, or the refusal.
pub type Admission = Result<(AdmissionResponse, Arc<TaskLog>), ErrorEnvelope>;

pub enum Msg {
    Submit {
        v: Box<crate::admission::ValidatedTask>,
        correlation_id: api::CorrelationId,
        reply: Reply<(Admission, Durable)>,
    },
    Record {
        id: TaskId,
        scope: Scope,
        reply: Reply<Option<TaskRecord>>,
    },
    Cancel {
        id: TaskId,
        reason: CancelReason,
        scope: Scope,
        reply: Reply<bool>,
    },
    Log {
        id: TaskId,
        scope: Scope,
        reply: Reply<Option<Arc<TaskLog>>>,
    },
    SubscriberGone {
        id: TaskId,
    },
    Register {
        req: RegisterRequest,
        caller: NodeCaller,
        reply: Reply<Result<RegisterResponse, ErrorEnvelope>>,
    },
    Heartbeat {
        node_id: String,
        hb: HeartbeatRequest,
        caller: NodeCaller,
        reply: Reply<Result<HeartbeatResponse, ErrorEnvelope>>,
    },
    Deregister {
        node_id: String,
        caller: Option<NodeCaller>,
        reply: Reply<Result<(), ErrorEnvelope>>,
    },
    Nodes {
        reply: Reply<Vec<NodeView>>,
    },
    Session {
        id: api::SessionId,
        scope: Scope,
        reply: Reply<Option<api::meta::SessionView>>,
    },
    /// `GET /v2/tenants`.
    Tenants {
        reply: Reply<Vec<api::tenant::TenantUsage>>,
    },
    /// New tenant policies (SIGHUP), all at once.
    SetTenants {
        policies: std::collections::BTreeMap<api::TenantId, crate::config::TenantPolicy>,
    },
    Drain {
        pool_id: String,
        deadline_ms: u64,
        correlation_id: api::CorrelationId,
        reply: Reply<Result<api::node::PoolCommandAccepted, ErrorEnvelope>>,
    },
    Reload {
        pool_id: String,
        model_ref: String,
        correlation_id: api::CorrelationId,
        reply: Reply<(
            Result<api::node::PoolCommandAccepted, ErrorEnvelope>,
            Durable,
        )>,
    },
    DeleteSession {
        id: api::SessionId,
        scope: Scope,
    },
    Pools {
        reply: Reply<Vec<PoolView>>,
    },
    ScrapeGauges {
        reply: Reply<super::GaugeRows>,
    },
    Worker {
        id: TaskId,
        attempt: u32,
        ev: WorkerEvent,
    },
    RelayEnded {
        id: TaskId,
        attempt: u32,
        end: super::RelayEnd,
    },
    CancelConfirmed {
        id: TaskId,
    },
    /// A worker's answer to a tokenize call (cache-aware placement).
    Tokenized {
        id: TaskId,
        answer: Result<Vec<u32>, String>,
    },
    Timer(Timer),
    Tick,
    CatalogRegister {
        req: RegisterModel,
        reply: Reply<(Registration, Durable)>,
    },
    CatalogList {
        reply: Reply<Vec<ModelRecord>>,
    },
    CatalogGet {
        id: String,
        reply: Reply<Option<ModelRecord>>,
    },
    CatalogDelete {
        id: String,
        correlation_id: api::CorrelationId,
        reply: Reply<(Result<(), ErrorEnvelope>, Durable)>,
    },
    CatalogVerify {
        id: String,
        correlation_id: api::CorrelationId,
        reply: Reply<Result<ModelRecord, ErrorEnvelope>>,
    },
    CatalogSetState {
        id: String,
        state: ModelState,
        reply: Reply<(Result<ModelRecord, ErrorEnvelope>, Durable)>,
    },
    Availability {
        reply: Reply<AvailabilityResponse>,
    },
    /// The store task could not commit a catalog change.
    CatalogWriteFailed,
    /// What the store holds, for resynchronizing the mirror.
    CatalogReloaded {
        records: Vec<ModelRecord>,
    },
    /// The models `/v1/models` lists, with their creation times (Unix seconds).
    ListedModels {
        reply: Reply<Vec<(api::ModelId, u64)>>,
    },
    /// A new `/v2/events` reader, resuming after `last_seen` when given.
    Events {
        last_seen: Option<u64>,
        reply: Reply<super::bus::Feed>,
    },
    /// Retained tasks, newest first.
    Tasks {
        limit: usize,
        scope: super::tenants::Scope,
        reply: Reply<Vec<TaskRecord>>,
    },
}

/// A cheap handle for sending messages to the core.
#[derive(Clone)]
pub struct CoreHandle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl CoreHandle {
    pub fn send(&self, msg: Msg) {
        let _ = self.tx.send(msg);
    }

    /// Sends a request and waits for its reply; `None` if the core is gone (shutting down).
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).ok()?;
        rx.await.ok()
    }
}

pub struct LiveEffects {
    tx: mpsc::UnboundedSender<Msg>,
    /// HA: the leader's epoch and lease; dispatches then wait for their task's row.
    fence: Option<Arc<super::dispatch::Fence>>,
    /// HA: dispatches asked for while handling the current message, sent after its flush.
    pending: Vec<DispatchJob>,
    http: reqwest::Client,
    relays: HashMap<TaskId, tokio::task::AbortHandle>,
    /// The size at which `relays` is next swept of finished relays: twice its live size after the
    /// last sweep, so a sweep costs O(1) per relay started (sweeping at every start made opening
    /// n streams O(n²): 10,000 streams on one pool took minutes in `bench relay`).
    relays_sweep_at: usize,
    tracker: TaskTracker,
    idle_timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Effects for LiveEffects {
    fn dispatch(&mut self, job: DispatchJob) {
        if self.fence.is_some() {
            self.pending.push(job);
        } else {
            self.start_relay(job, None);
        }
    }

    fn abort_dispatch(&mut self, task: TaskId) {
        self.pending.retain(|j| j.task != task);
        if let Some(h) = self.relays.remove(&task) {
            h.abort();
        }
    }

    fn cancel_on_worker(&mut self, job: CancelJob) {
        let tx = self.tx.clone();
        let http = self.http.clone();
        let fence = self.fence.clone();
        self.tracker.spawn(async move {
            if super::dispatch::cancel(&http, &job, fence.as_deref()).await {
                let _ = tx.send(Msg::CancelConfirmed { id: job.task });
            }
        });
    }

    fn tokenize(&mut self, job: super::TokenizeJob) {
        let tx = self.tx.clone();
        let http = self.http.clone();
        self.tracker.spawn(async move {
            let answer = super::dispatch::tokenize(&http, &job).await;
            let _ = tx.send(Msg::Tokenized {
                id: job.task,
                answer,
            });
        });
    }

    fn timer(&mut self, after: Duration, timer: Timer) {
        let tx = self.tx.clone();
        let stop = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => { let _ = tx.send(Msg::Timer(timer)); }
                _ = stop.cancelled() => {}
            }
        });
    }
}

impl LiveEffects {
    fn start_relay(&mut self, job: DispatchJob, durable: Option<Durable>) {
        let task = job.task;
        let tx = self.tx.clone();
        let http = self.http.clone();
        let idle = self.idle_timeout;
        let fence = self.fence.clone();
        let handle = self
            .tracker
            .spawn(super::dispatch::relay(job, http, idle, tx, fence, durable));
        if self.relays.len() >= self.relays_sweep_at {
            self.relays.retain(|_, h| !h.is_finished());
            self.relays_sweep_at = (self.relays.len() * 2).max(64);
        }
        self.relays.insert(task, handle.abort_handle());
    }

    /// HA: sends the dispatches held back while their rows were flushed.
    fn release_pending(&mut self, durable: &Durable) {
        for job in std::mem::take(&mut self.pending) {
            self.start_relay(job, Some(durable.clone()));
        }
    }
}

/// What an HA leader starts its core with.
pub struct Takeover {
    pub fence: Arc<super::dispatch::Fence>,
    pub tasks: Vec<super::pgstate::StoredTask>,
}

/// Spawns the core's owner task and its 1 s tick; returns the handle. Fails when the HTTP/2
/// client for workers cannot be built (a default client would silently speak HTTP/1).
pub fn spawn(
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    catalog: catalog::Catalog,
    store: super::store::Backend,
    takeover: Option<Takeover>,
    tracker: &TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<CoreHandle, reqwest::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // HTTP/2 to workers: every dispatch stream to a node shares one connection, so thousands of
    // concurrent streams need a handful of sockets, and dropping a stream resets only that stream.
    let http = reqwest::Client::builder()
        .connect_timeout(cfg.worker_connect_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .http2_prior_knowledge()
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_while_idle(true)
        .build()?;
    let (fence, restored) = match takeover {
        Some(t) => (Some(t.fence), Some(t.tasks)),
        None => (None, None),
    };
    let effects = LiveEffects {
        tx: tx.clone(),
        fence,
        pending: Vec::new(),
        http,
        relays: HashMap::new(),
        relays_sweep_at: 64,
        tracker: tracker.clone(),
        idle_timeout: cfg.worker_idle_timeout,
        shutdown: shutdown.clone(),
    };
    let window = cfg.heartbeat_timeout.max(Duration::from_secs(5));
    let mut core = Core::new(cfg, effects, metrics, catalog);
    if let Some(tasks) = restored {
        core.restore(tasks, window, Instant::now());
    }
    let mut link = StoreLink::spawn(store, tracker, tx.clone());
    let tick_tx = tx.clone();
    let tick_stop = shutdown.clone();
    tracker.spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = every.tick() => { if tick_tx.send(Msg::Tick).is_err() { break; } }
                _ = tick_stop.cancelled() => break,
            }
        }
    });
    tracker.spawn(async move {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => break },
                _ = shutdown.cancelled() => break,
            };
            let tick = matches!(msg, Msg::Tick);
            handle(&mut core, &mut link, msg, Instant::now());
            // Changes made by anything else (heartbeats, loads) are committed without a waiter.
            let _ = link.flush(&mut core);
            if !core.effects.pending.is_empty() {
                let durable = link.last();
                core.effects.release_pending(&durable);
            }
            core.publish_changes(tick);
        }
        for h in core.effects.relays.values() {
            h.abort();
        }
    });
    Ok(CoreHandle { tx })
}

fn handle(core: &mut Core<LiveEffects>, link: &mut StoreLink, msg: Msg, now: Instant) {
    match msg {
        Msg::Submit {
            v,
            correlation_id,
            reply,
        } => {
            let r = core.submit(*v, correlation_id, now);
            let _ = reply.send((r, link.flush(core)));
        }
        Msg::Record { id, scope, reply } => {
            let _ = reply.send(core.record(id, &scope));
        }
        Msg::Cancel {
            id,
            reason,
            scope,
            reply,
        } => {
            let _ = reply.send(core.cancel_as(id, reason, &scope, now));
        }
        Msg::Log { id, scope, reply } => {
            let _ = reply.send(core.log_of(id, &scope));
        }
        Msg::SubscriberGone { id } => core.on_subscriber_gone(id),
        Msg::Register { req, caller, reply } => {
            let _ = reply.send(core.register(req, caller, now));
        }
        Msg::Heartbeat {
            node_id,
            hb,
            caller,
            reply,
        } => {
            let _ = reply.send(core.heartbeat(&node_id, hb, caller, now));
        }
        Msg::Deregister {
            node_id,
            caller,
            reply,
        } => {
            let authorized = caller
                .as_ref()
                .is_none_or(|c| core.node_authorized(&node_id, c));
            let result = if !core.registry.nodes().contains_key(node_id.as_str()) {
                Err(ErrorEnvelope::new(
                    api::ErrorCode::NotFound,
                    format!("node {node_id} is not registered"),
                ))
            } else if !authorized {
                Err(ErrorEnvelope::new(
                    api::ErrorCode::BadToken,
                    "the credential is not valid for this node",
                ))
            } else {
                core.deregister(&node_id, now);
                Ok(())
            };
            let _ = reply.send(result);
        }
        Msg::Nodes { reply } => {
            let _ = reply.send(core.node_views());
        }
        Msg::Session { id, scope, reply } => {
            let _ = reply.send(core.session_view(id, &scope, now));
        }
        Msg::DeleteSession { id, scope } => core.delete_session(id, &scope),
        Msg::Tenants { reply } => {
            let _ = reply.send(core.tenant_report(now));
        }
        Msg::SetTenants { policies } => core.set_tenant_policies(policies, now),
        Msg::Drain {
            pool_id,
            deadline_ms,
            correlation_id,
            reply,
        } => {
            let _ = reply.send(core.drain(&pool_id, deadline_ms, correlation_id, now));
        }
        Msg::Reload {
            pool_id,
            model_ref,
            correlation_id,
            reply,
        } => {
            let r = core.reload(&pool_id, &model_ref, correlation_id);
            let _ = reply.send((r, link.flush(core)));
        }
        Msg::Pools { reply } => {
            let _ = reply.send(core.pool_list());
        }
        Msg::ScrapeGauges { reply } => {
            let _ = reply.send(core.scrape_gauges(now));
        }
        Msg::Worker { id, attempt, ev } => core.on_worker(id, attempt, ev, now),
        Msg::RelayEnded { id, attempt, end } => core.on_relay_ended(id, attempt, end, now),
        Msg::CancelConfirmed { id } => core.on_cancel_confirmed(id, now),
        Msg::Tokenized { id, answer } => core.on_tokenized(id, answer, now),
        Msg::Timer(t) => core.on_timer(t, now),
        Msg::Tick => core.tick(now),
        Msg::CatalogRegister { req, reply } => {
            let r = core.catalog_register(req);
            let _ = reply.send((r, link.flush(core)));
        }
        Msg::CatalogList { reply } => {
            let _ = reply.send(core.catalog_list());
        }
        Msg::CatalogGet { id, reply } => {
            let _ = reply.send(core.catalog_get(&id));
        }
        Msg::CatalogDelete {
            id,
            correlation_id,
            reply,
        } => {
            let r = core.catalog_delete(&id, correlation_id);
            let _ = reply.send((r, link.flush(core)));
        }
        Msg::CatalogVerify {
            id,
            correlation_id,
            reply,
        } => {
            let _ = reply.send(core.catalog_verify(&id, correlation_id));
        }
        Msg::CatalogSetState { id, state, reply } => {
            let r = core.catalog_set_state(&id, state);
            let _ = reply.send((r, link.flush(core)));
        }
        Msg::CatalogWriteFailed => link.write_failed(),
        Msg::CatalogReloaded { records } => link.reloaded(core, records),
        Msg::Availability { reply } => {
            let _ = reply.send(core.availability());
        }
        Msg::ListedModels { reply } => {
            let _ = reply.send(core.listed_models());
        }
        Msg::Events { last_seen, reply } => {
            let _ = reply.send(core.subscribe_events(last_seen));
        }
        Msg::Tasks {
            limit,
            scope,
            reply,
        } => {
            let _ = reply.send(core.task_records(limit, &scope));
        }
    }
}
