//! Pools: one supervisor task per pool owns its `llama-server` child (provision → start → Ready,
//! restart with backoff after a crash, stop on shutdown) and publishes a [`PoolSnapshot`] through a
//! watch channel. Dispatch handlers read snapshots and take slot permits; they never touch the child.
//!
//! Invariants: at most `slots` dispatches hold a permit at once; a permit is released only after the
//! engine confirmed the slot free (or the engine died); the engine's API key never leaves this node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::node::{LoadedModel, PoolState, PoolStatus};
use engine::{EngineClient, LaunchSpec, RunningEngine};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::commands::{ModelOrder, PoolCommand, Prep};
use crate::config::{EngineTimings, PoolSpec};
use api::node::CommandState;
use api::{CommandId, ModelId, TaskId};

/// The model an engine serves: its file on this node and what hashing and reading it taught us.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub id: ModelId,
    /// The normalized ModelRef.
    pub model_ref: String,
    pub path: std::path::PathBuf,
    pub digest: Option<String>,
    pub size_bytes: Option<u64>,
    pub metadata: Option<api::catalog::GgufInfo>,
}

impl ModelInfo {
    pub fn loaded(&self) -> LoadedModel {
        LoadedModel {
            id: self.id.clone(),
            model_ref: self.model_ref.clone(),
            digest: self.digest.clone(),
            size_bytes: self.size_bytes,
            metadata: self.metadata.clone(),
        }
    }

    fn from_fetched(order: &ModelOrder, f: models::Fetched) -> Self {
        Self {
            id: order.id.clone(),
            model_ref: order.model_ref.to_string(),
            path: f.path,
            digest: Some(f.digest),
            size_bytes: Some(f.size_bytes),
            metadata: Some(f.metadata),
        }
    }

    fn result(&self) -> Option<api::node::CommandResult> {
        Some(api::node::CommandResult {
            digest: self.digest.clone()?,
            size_bytes: self.size_bytes.unwrap_or(0),
            metadata: self.metadata.clone(),
        })
    }
}

/// What the rest of the daemon may know about a pool at one moment.
#[derive(Clone)]
pub struct PoolSnapshot {
    /// The model the pool serves (changes only through a load or reload); None while Unloaded
    /// with nothing loaded yet.
    pub model: Option<ModelInfo>,
    pub state: PoolState,
    pub client: Option<EngineClient>,
    pub engine_version: Option<String>,
    pub engine_built: bool,
    pub last_error: Option<String>,
    /// Bumped at every engine start, so work bound to an old engine can tell.
    pub generation: u64,
}

/// A dispatch in flight: its cancel trigger and the signal that its slot is free again.
pub struct Inflight {
    /// Triggered by a cancel request or a dropped dispatch connection.
    pub cancel: CancellationToken,
    /// Triggered when the engine died or is being stopped: the request is lost, not canceled.
    pub lost: CancellationToken,
    pub released: watch::Receiver<bool>,
    pub tokens_evaluated: u64,
    pub tokens_out: u64,
    /// The engine generation the task was dispatched to.
    pub generation: u64,
}

pub struct Pool {
    pub spec: PoolSpec,
    pub snapshot: watch::Receiver<PoolSnapshot>,
    pub slots: Arc<Semaphore>,
    pub inflight: Mutex<HashMap<TaskId, Inflight>>,
    /// EWMA of the engine's decode speed, tokens/s.
    pub decode_tps: Mutex<Option<f64>>,
    /// Engine exits that were not asked for (crashes, failed health checks).
    pub crashes: std::sync::atomic::AtomicU64,
    /// Dispatches by outcome: finished with `end`, with `error`.
    pub ended: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Commands for the supervisor (drain, reload).
    pub commands: tokio::sync::mpsc::UnboundedSender<PoolCommand>,
}

impl Pool {
    pub fn status(&self) -> PoolStatus {
        let snap = self.snapshot.borrow().clone();
        let inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let used: u64 = inflight
            .values()
            .map(|i| i.tokens_evaluated + i.tokens_out)
            .sum();
        let capacity = (self.spec.slots as u64 * self.spec.ctx_per_slot).max(1);
        PoolStatus {
            pool_id: self.spec.id.clone(),
            state: snap.state,
            last_error: snap.last_error.clone(),
            engine: api::ENGINE_LLAMACPP.into(),
            engine_version: snap.engine_version.clone(),
            engine_built: snap.engine_built,
            provisioning_target: self.spec.provisioning_target,
            device_mask: self.spec.device_mask.clone(),
            slots_total: self.spec.slots,
            slots_free: self.slots.available_permits() as u32,
            ctx_per_slot: self.spec.ctx_per_slot,
            models: snap.model.iter().map(ModelInfo::loaded).collect(),
            running: inflight.keys().cloned().collect(),
            kv_cache_usage_ratio: Some((used as f64 / capacity as f64).min(1.0)),
            decode_tokens_per_s: *self.decode_tps.lock().unwrap_or_else(|e| e.into_inner()),
            vram_used_bytes: None,
        }
    }

    pub fn record_decode_speed(&self, tps: f64) {
        let mut g = self.decode_tps.lock().unwrap_or_else(|e| e.into_inner());
        *g = Some(match *g {
            Some(prev) => 0.8 * prev + 0.2 * tps,
            None => tps,
        });
    }
}

/// The node's pools: configured ones for the daemon's lifetime, adopted ones while their engine
/// lives. Readers take a snapshot of the `Arc`s; the lock is never held across an await.
#[derive(Default)]
pub struct PoolSet(std::sync::RwLock<std::collections::BTreeMap<String, Arc<Pool>>>);

impl PoolSet {
    pub fn get(&self, id: &str) -> Option<Arc<Pool>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn insert(&self, pool: Arc<Pool>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pool.spec.id.to_string(), pool);
    }

    pub fn remove(&self, id: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// A pool around an engine started elsewhere (a handoff): Ready at once, no supervisor; the
/// handoff watcher owns its liveness. Returns the pool and the sender of its snapshots.
pub fn adopted(
    spec: PoolSpec,
    model: ModelInfo,
    client: EngineClient,
    engine_version: String,
) -> (Arc<Pool>, watch::Sender<PoolSnapshot>) {
    let (tx, rx) = watch::channel(PoolSnapshot {
        model: Some(model),
        state: PoolState::Ready,
        client: Some(client),
        engine_version: Some(engine_version),
        engine_built: true,
        last_error: None,
        generation: 1,
    });
    // Nobody receives pool commands for an adopted engine: a drain or reload fails to send and is
    // reported as such.
    let (cmd_tx, _) = tokio::sync::mpsc::unbounded_channel();
    (Pool::new(spec, rx, cmd_tx), tx)
}

impl Pool {
    fn new(
        spec: PoolSpec,
        snapshot: watch::Receiver<PoolSnapshot>,
        commands: tokio::sync::mpsc::UnboundedSender<PoolCommand>,
    ) -> Arc<Self> {
        Arc::new(Pool {
            commands,
            slots: Arc::new(Semaphore::new(spec.slots as usize)),
            spec,
            snapshot,
            inflight: Mutex::new(HashMap::new()),
            decode_tps: Mutex::new(None),
            crashes: Default::default(),
            ended: Default::default(),
            failed: Default::default(),
        })
    }

    /// Ends in-flight work on an engine that is gone (WORKER_RESET / POOL_UNAVAILABLE at the client).
    pub fn abort_inflight(&self) {
        for i in self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            i.lost.cancel();
        }
    }
}

/// Everything a supervisor needs besides its pool.
#[derive(Clone)]
pub struct SupervisorEnv {
    pub timings: EngineTimings,
    pub engines_dir: std::path::PathBuf,
    pub engine_source: engine::EngineSource,
    pub node_id: String,
    pub book: Arc<crate::commands::CommandBook>,
    pub cache: models::ModelCache,
}

/// Creates the pool and spawns its supervisor on `tracker`.
pub fn spawn(
    spec: PoolSpec,
    env: SupervisorEnv,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Arc<Pool> {
    let (tx, rx) = watch::channel(PoolSnapshot {
        model: None,
        state: PoolState::Provisioning,
        client: None,
        engine_version: None,
        engine_built: false,
        last_error: None,
        generation: 0,
    });
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let pool = Pool::new(spec, rx, cmd_tx);
    let sup = Supervisor {
        pool: pool.clone(),
        env,
        tx,
        shutdown,
        cmds: tokio::sync::Mutex::new(cmd_rx),
    };
    tracker.spawn(sup.run());
    pool
}

fn new_ready(e: &RunningEngine) -> (EngineClient, String) {
    (e.client.clone(), e.build_info.clone())
}

/// True when the node's available memory holds another copy of the model with 20 % headroom
/// (CPU pools; GPU pools would compare free VRAM the same way).
fn memory_allows(model: &std::path::Path) -> bool {
    let size = std::fs::metadata(model)
        .map(|m| m.len())
        .unwrap_or(u64::MAX);
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    (size as f64 * 1.2) < available as f64
}

async fn recv(
    rx: &tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<PoolCommand>>,
) -> Option<PoolCommand> {
    rx.lock().await.recv().await
}

/// Engine failures (crashes and failed starts) counted within this window trip the breaker.
const BREAKER_WINDOW: Duration = Duration::from_secs(300);

/// Stops restarting an engine after `limit` failures within `window`.
struct Breaker {
    limit: usize,
    window: Duration,
    failures: std::collections::VecDeque<Instant>,
}

impl Breaker {
    fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            failures: Default::default(),
        }
    }

    /// Records a failure; returns the reason when the breaker trips.
    fn trip(&mut self, now: Instant, last: &str) -> Option<String> {
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.failures.pop_front();
        }
        (self.failures.len() >= self.limit).then(|| {
            format!(
                "circuit breaker open: {} engine failures within {} s; last: {last}",
                self.failures.len(),
                self.window.as_secs()
            )
        })
    }
}

struct Supervisor {
    pool: Arc<Pool>,
    env: SupervisorEnv,
    tx: watch::Sender<PoolSnapshot>,
    shutdown: CancellationToken,
    /// Only this supervisor receives; the async mutex lets `&self` methods await the channel.
    cmds: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<PoolCommand>>,
}

enum Exit {
    Shutdown,
    Crashed(String),
    /// Drained on command: the engine is stopped and the pool waits, Unloaded, for a reload.
    Drained,
    /// Restart on command (a reload of the same model).
    Restart(CommandId),
}

impl Supervisor {
    fn publish(&self, f: impl FnOnce(&mut PoolSnapshot)) {
        self.tx.send_modify(f);
    }

    async fn run(self) {
        let pool_id = self.pool.spec.id.to_string();
        let Some(binary) = self.provision().await else {
            return;
        };
        let mut breaker = self.breaker();
        let mut backoff = Duration::from_secs(1);
        let mut reload: Option<CommandId> = None;
        if let Some(ms) = self.pool.spec.model.clone() {
            let order = ModelOrder {
                id: ms.id.clone(),
                model_ref: ms.model_ref,
                digest: ms.digest,
            };
            if let Ok(m) = self.resolve(&order, None).await {
                self.publish(|s| s.model = Some(m));
            }
        }
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if self.tx.borrow().model.is_none() {
                // Nothing to serve yet (no model configured, or its fetch failed): wait for a
                // load-model or reload.
                self.publish(|s| {
                    if s.state != PoolState::Failed {
                        s.state = PoolState::Unloaded;
                    }
                    s.client = None;
                });
                match self.wait_for_reload().await {
                    Some(id) => {
                        reload = Some(id);
                        continue;
                    }
                    None => break,
                }
            }
            let generation = self.tx.borrow().generation + 1;
            self.publish(|s| {
                s.state = PoolState::Starting;
                s.client = None;
            });
            let started = Instant::now();
            // A shutdown while the engine is still loading must not wait for the start timeout:
            // dropping the launch kills the half-started child (kill_on_drop).
            let Some(model) = self.tx.borrow().model.clone() else {
                continue;
            };
            let spec = self.launch_spec(&binary, &model);
            let launched = tokio::select! {
                r = engine::launch(&spec) => r,
                _ = self.shutdown.cancelled() => break,
            };
            match launched {
                Ok(running) => {
                    tracing::info!(event = "engine.ready", pool_id = %pool_id, node_id = %self.env.node_id, engine_version = %running.build_info, pid = running.pid,
                        "Engine for pool {pool_id} is ready on port {} (pid {})", running.port, running.pid);
                    self.publish(|s| {
                        s.state = PoolState::Ready;
                        s.client = Some(running.client.clone());
                        s.engine_version = Some(running.build_info.clone());
                        s.generation = generation;
                        s.last_error = None;
                    });
                    if let Some(id) = reload.take() {
                        self.env.book.complete(&id, model.result());
                    }
                    match self.watch(running, &binary).await {
                        Exit::Shutdown => break,
                        Exit::Restart(id) => {
                            reload = Some(id);
                            continue;
                        }
                        Exit::Drained => match self.wait_for_reload().await {
                            Some(id) => {
                                reload = Some(id);
                                continue;
                            }
                            None => break,
                        },
                        Exit::Crashed(why) => {
                            self.pool
                                .crashes
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if started.elapsed() > BREAKER_WINDOW {
                                backoff = Duration::from_secs(1);
                            }
                            if let Some(reason) = breaker.trip(Instant::now(), &why) {
                                tracing::error!(event = "engine.exited", pool_id = %pool_id, node_id = %self.env.node_id, reason = %why, "Engine for pool {pool_id} crashed; {reason}");
                                // A Failed pool still takes a reload (or another model).
                                let Some(id) = self.fail_and_wait(reason).await else {
                                    break;
                                };
                                (reload, breaker, backoff) =
                                    (Some(id), self.breaker(), Duration::from_secs(1));
                                continue;
                            }
                            tracing::warn!(event = "engine.exited", pool_id = %pool_id, node_id = %self.env.node_id, reason = %why, "Engine for pool {pool_id} stopped unexpectedly: {why}; restarting");
                            self.publish(|s| {
                                s.state = PoolState::Starting;
                                s.client = None;
                                s.last_error = Some(why);
                            });
                        }
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    tracing::error!(event = "engine.exited", pool_id = %pool_id, node_id = %self.env.node_id, "Engine for pool {pool_id} failed to start: {why}");
                    if let Some(reason) = breaker.trip(Instant::now(), &why) {
                        if let Some(id) = reload.take() {
                            self.env.book.set(
                                &id,
                                CommandState::Failed,
                                Some(api::ErrorEnvelope::new(
                                    api::ErrorCode::PoolUnavailable,
                                    reason.clone(),
                                )),
                            );
                        }
                        let Some(id) = self.fail_and_wait(reason).await else {
                            break;
                        };
                        (reload, breaker, backoff) =
                            (Some(id), self.breaker(), Duration::from_secs(1));
                        continue;
                    }
                    self.publish(|s| s.last_error = Some(why));
                }
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % 250);
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = self.shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
        self.publish(|s| {
            s.state = PoolState::Unloaded;
            s.client = None;
        });
    }

    /// A fresh circuit breaker: `max_restarts` crashes within [`BREAKER_WINDOW`] trip it.
    fn breaker(&self) -> Breaker {
        Breaker::new(
            self.env.timings.max_restarts.max(1) as usize,
            BREAKER_WINDOW,
        )
    }

    /// Marks the pool Failed, then waits for a reload (its command id) or shutdown (`None`).
    async fn fail_and_wait(&self, reason: String) -> Option<CommandId> {
        self.fail(reason);
        self.wait_for_reload().await
    }

    fn fail(&self, reason: String) {
        self.publish(|s| {
            s.state = PoolState::Failed;
            s.client = None;
            s.last_error = Some(reason);
        });
    }

    /// Builds or locates the engine binary; on failure the pool is `Failed` with the reason.
    async fn provision(&self) -> Option<std::path::PathBuf> {
        let req = engine::ProvisionRequest {
            source: self.env.engine_source.clone(),
            gpu: self.pool.spec.gpu_policy,
            build_number: None,
            build_commit: None,
            extra_cmake_flags: vec![],
            engines_dir: self.env.engines_dir.clone(),
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        };
        let pool_id = self.pool.spec.id.to_string();
        let result = tokio::task::spawn_blocking(move || {
            engine::provision(&req, &|p| {
                if let engine::Progress::Step(s) = p {
                    tracing::info!(event = "engine.provision", pool_id = %pool_id, "{s}");
                }
            })
        })
        .await;
        match result {
            Ok(Ok(build)) => {
                self.publish(|s| {
                    s.engine_built = true;
                    s.engine_version = Some(build.version.to_string());
                });
                Some(build.binary)
            }
            Ok(Err(e)) => {
                tracing::error!(event = "engine.provision_failed", pool_id = %self.pool.spec.id, "Engine provisioning for pool {} failed: {e}", self.pool.spec.id);
                self.publish(|s| {
                    s.state = PoolState::Failed;
                    s.last_error = Some(e.to_string());
                });
                None
            }
            Err(join) => {
                self.publish(|s| {
                    s.state = PoolState::Failed;
                    s.last_error = Some(format!("provisioning task failed: {join}"));
                });
                None
            }
        }
    }

    fn launch_spec(&self, binary: &std::path::Path, model: &ModelInfo) -> LaunchSpec {
        let spec = &self.pool.spec;
        let gpu = spec.device_mask != "cpu";
        LaunchSpec {
            binary: binary.to_path_buf(),
            model_path: model.path.clone(),
            alias: model.id.to_string(),
            ctx_per_slot: spec.ctx_per_slot,
            slots: spec.slots,
            threads: self.env.timings.threads,
            gpu_layers: if gpu { 999 } else { 0 },
            cuda_visible_devices: if gpu {
                spec.device_mask.clone()
            } else {
                String::new()
            },
            extra_args: spec.extra_args.clone(),
            log_path: self
                .env
                .engines_dir
                .join("logs")
                .join(format!("pool-{}.log", spec.id)),
            start_timeout: self.env.timings.start_timeout,
        }
    }

    /// Watches a Ready engine until it dies, fails three health checks, or shutdown.
    async fn watch(&self, mut running: RunningEngine, binary: &std::path::Path) -> Exit {
        let mut failed_checks = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tokio::select! {
                status = running.child.wait() => {
                    let why = format!("{}; last log lines:\n{}", engine::process::describe_exit(status), engine::process::log_tail(&running.log_path, 8));
                    self.abort_inflight();
                    return Exit::Crashed(why);
                }
                _ = tick.tick() => {
                    if running.client.health().await.unwrap_or(false) {
                        failed_checks = 0;
                    } else {
                        failed_checks += 1;
                        if failed_checks >= 3 {
                            self.abort_inflight();
                            let how = running.stop(self.env.timings.stop_grace).await;
                            return Exit::Crashed(format!("3 consecutive failed health checks; stopped ({how})"));
                        }
                    }
                }
                cmd = recv(&self.cmds) => match cmd {
                    Some(PoolCommand::Drain { id, deadline }) => {
                        self.drain(running, &id, deadline).await;
                        return Exit::Drained;
                    }
                    Some(PoolCommand::Load { id, model: Some(order) }) if !self.is_current(&order) => {
                        // The fetch runs while the old engine keeps serving.
                        if let Ok(model) = self.resolve(&order, Some(&id)).await {
                            running = self.switch_model(running, binary, &id, model).await;
                        }
                    }
                    Some(PoolCommand::Load { id, .. }) => {
                        self.env.book.set(&id, CommandState::Running, None);
                        self.abort_inflight();
                        self.publish(|s| { s.state = PoolState::Starting; s.client = None; });
                        running.stop(self.env.timings.stop_grace).await;
                        return Exit::Restart(id);
                    }
                    None => {}
                },
                _ = self.shutdown.cancelled() => {
                    // Close our own streams first: an open stream keeps llama-server up for ~30 s.
                    self.abort_inflight();
                    self.publish(|s| { s.state = PoolState::Draining; s.client = None; });
                    let how = running.stop(self.env.timings.stop_grace).await;
                    tracing::info!(event = "engine.exited", pool_id = %self.pool.spec.id, node_id = %self.env.node_id, "Engine for pool {} stopped ({how})", self.pool.spec.id);
                    return Exit::Shutdown;
                }
            }
        }
    }

    /// Refuses new dispatches, lets running ones finish until `deadline` (then they are lost:
    /// WORKER_RESET at the client), stops the engine and leaves the pool Unloaded.
    async fn drain(&self, running: RunningEngine, id: &CommandId, deadline: Duration) {
        self.env.book.set(id, CommandState::Running, None);
        tracing::info!(event = "command.received", pool_id = %self.pool.spec.id, node_id = %self.env.node_id, command_id = %id,
            "Draining pool {} (deadline {} ms)", self.pool.spec.id, deadline.as_millis());
        self.publish(|s| s.state = PoolState::Draining);
        let until = Instant::now() + deadline;
        while !self
            .pool
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.abort_inflight();
        self.publish(|s| s.client = None);
        let how = running.stop(self.env.timings.stop_grace).await;
        self.publish(|s| s.state = PoolState::Unloaded);
        tracing::info!(event = "command.finished", pool_id = %self.pool.spec.id, node_id = %self.env.node_id, command_id = %id,
            "Pool {} drained; engine stopped ({how})", self.pool.spec.id);
        self.env.book.set(id, CommandState::Completed, None);
    }

    /// Reload to another model: when memory allows, the new engine starts beside the old one,
    /// new dispatches switch to it once it is Ready, and the old one stops after its running
    /// tasks; otherwise the old engine is drained first. On failure the old model keeps (or goes
    /// back to) serving and the command fails with the reason. Returns the engine now serving.
    async fn switch_model(
        &self,
        old: RunningEngine,
        binary: &std::path::Path,
        id: &CommandId,
        model: ModelInfo,
    ) -> RunningEngine {
        self.env.book.set(id, CommandState::Running, None);
        let side_by_side = memory_allows(&model.path);
        tracing::info!(event = "command.received", pool_id = %self.pool.spec.id, command_id = %id, model = %model.id,
            "Reloading pool {} to {} ({})", self.pool.spec.id, model.id, if side_by_side { "side by side" } else { "after draining the old engine" });
        let fail = |why: String| api::ErrorEnvelope::new(api::ErrorCode::PoolUnavailable, why);
        if !side_by_side {
            let Some(old_model) = self.tx.borrow().model.clone() else {
                return old;
            };
            let generation = self.tx.borrow().generation;
            self.wait_generation_idle(generation, Duration::from_secs(60))
                .await;
            self.abort_inflight();
            self.publish(|s| {
                s.state = PoolState::Starting;
                s.client = None;
            });
            old.stop(self.env.timings.stop_grace).await;
            return match engine::launch(&self.launch_spec(binary, &model)).await {
                Ok(new) => {
                    let result = model.result();
                    self.serve(new_ready(&new), model);
                    self.env.book.complete(id, result);
                    new
                }
                Err(e) => {
                    self.env.book.set(
                        id,
                        CommandState::Failed,
                        Some(fail(format!("the new engine failed to start: {e}"))),
                    );
                    match engine::launch(&self.launch_spec(binary, &old_model)).await {
                        Ok(back) => {
                            self.serve(new_ready(&back), old_model);
                            self.publish(|s| s.last_error = Some(format!("reload failed: {e}")));
                            back
                        }
                        Err(e2) => {
                            self.fail(format!(
                                "reload failed ({e}) and the old engine did not come back: {e2}"
                            ));
                            std::future::pending().await
                        }
                    }
                }
            };
        }
        match engine::launch(&self.launch_spec(binary, &model)).await {
            Ok(new) => {
                let old_generation = self.tx.borrow().generation;
                let result = model.result();
                self.serve(new_ready(&new), model);
                self.wait_generation_idle(old_generation, Duration::from_secs(60))
                    .await;
                old.stop(self.env.timings.stop_grace).await;
                self.env.book.complete(id, result);
                new
            }
            Err(e) => {
                let why = format!("reload failed, the old engine keeps serving: {e}");
                self.publish(|s| s.last_error = Some(why.clone()));
                self.env.book.set(id, CommandState::Failed, Some(fail(why)));
                old
            }
        }
    }

    /// Switches new dispatches to a Ready engine (a new generation).
    fn serve(&self, ready: (EngineClient, String), model: ModelInfo) {
        self.publish(|s| {
            s.state = PoolState::Ready;
            s.client = Some(ready.0);
            s.engine_version = Some(ready.1);
            s.model = Some(model);
            s.generation += 1;
            s.last_error = None;
        });
    }

    /// Waits until no task dispatched to `generation` (or earlier) is in flight, or `max`.
    async fn wait_generation_idle(&self, generation: u64, max: Duration) {
        let until = Instant::now() + max;
        while Instant::now() < until
            && self
                .pool
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|i| i.generation <= generation)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// While Unloaded or Failed: a drain is already done; a load or reload fetches its model
    /// (when one is named) and returns the command id, so the loop starts the engine.
    async fn wait_for_reload(&self) -> Option<CommandId> {
        loop {
            tokio::select! {
                cmd = recv(&self.cmds) => match cmd? {
                    PoolCommand::Drain { id, .. } => self.env.book.set(&id, CommandState::Completed, None),
                    PoolCommand::Load { id, model: Some(order) } => {
                        if let Ok(m) = self.resolve(&order, Some(&id)).await {
                            self.publish(|s| s.model = Some(m));
                            return Some(id);
                        }
                    }
                    PoolCommand::Load { id, model: None } => {
                        if self.tx.borrow().model.is_some() {
                            self.env.book.set(&id, CommandState::Running, None);
                            return Some(id);
                        }
                        let e = api::ErrorEnvelope::new(api::ErrorCode::ModelNotAvailable, format!("pool {} has no model to reload; name one", self.pool.spec.id));
                        self.env.book.set(&id, CommandState::Failed, Some(e));
                    }
                },
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    fn is_current(&self, order: &ModelOrder) -> bool {
        self.tx
            .borrow()
            .model
            .as_ref()
            .is_some_and(|m| m.id == order.id && m.model_ref == order.model_ref.to_string())
    }

    /// Makes a model available on this node (fetch and verify, or hash a local file) and reads its
    /// GGUF facts. With a command id, progress goes to the command's preparation steps. A failure
    /// leaves the pool as it was, with `last_error` saying why.
    async fn resolve(
        &self,
        order: &ModelOrder,
        command: Option<&CommandId>,
    ) -> Result<ModelInfo, api::ErrorEnvelope> {
        let pool_id = self.pool.spec.id.clone();
        let prep =
            command.map(|id| Prep::new(self.env.book.clone(), id, &order.model_ref, &pool_id));
        let before = self.tx.borrow().state;
        if before != PoolState::Ready {
            self.publish(|s| s.state = PoolState::Provisioning);
        }
        tracing::info!(event = "model.fetch", pool_id = %pool_id, node_id = %self.env.node_id, model = %order.id, "Preparing model {} ({}) for pool {pool_id}", order.id, order.model_ref);
        let logged = std::sync::atomic::AtomicU64::new(0);
        let progress = |p: models::Progress| {
            if let Some(prep) = &prep {
                prep.fetched(p.bytes_done, p.bytes_total);
            }
            if let Some(total) = p.bytes_total.filter(|t| *t > 0) {
                let decile = p.bytes_done * 10 / total;
                if decile > logged.swap(decile, std::sync::atomic::Ordering::Relaxed) {
                    tracing::info!(event = "model.fetch_progress", pool_id = %pool_id, model = %order.id, "Fetched {}% of {} ({} of {} bytes)", decile * 10, order.id, p.bytes_done, total);
                }
            }
        };
        // A shutdown stops a download at once (dropping the fetch removes its partial file); that
        // is not a failure of the model, so the pool is left as it was.
        let fetched = tokio::select! {
            r = self.env.cache.fetch(&order.model_ref, order.digest.as_deref(), &progress) => r,
            _ = self.shutdown.cancelled() => {
                tracing::info!(event = "model.fetch_stopped", pool_id = %pool_id, model = %order.id, "Stopped preparing model {} for pool {pool_id}: pool-managerd is shutting down", order.id);
                let env = api::ErrorEnvelope::new(api::ErrorCode::PoolUnavailable, "pool-managerd is shutting down").with_retriable(true);
                if let Some(prep) = &prep {
                    prep.failed(env.clone());
                }
                return Err(env);
            }
        };
        match fetched {
            Ok(f) => {
                crate::metrics::MODEL_BYTES
                    .fetch_add(f.downloaded_bytes, std::sync::atomic::Ordering::Relaxed);
                if let Some(prep) = &prep {
                    prep.warming();
                }
                tracing::info!(event = "model.ready", pool_id = %pool_id, model = %order.id, digest = %f.digest,
                    "Model {} is at {} ({} bytes, {} downloaded)", order.id, f.path.display(), f.size_bytes, f.downloaded_bytes);
                Ok(ModelInfo::from_fetched(order, f))
            }
            Err(e) => {
                let env = e.envelope();
                tracing::error!(event = "model.fetch_failed", pool_id = %pool_id, model = %order.id, code = %env.code, "Preparing model {} failed: {e}", order.id);
                if let Some(prep) = &prep {
                    prep.failed(env.clone());
                }
                self.publish(|s| {
                    s.state = if before == PoolState::Provisioning {
                        PoolState::Failed
                    } else {
                        before
                    };
                    s.last_error = Some(format!("model {} ({}): {e}", order.id, order.model_ref));
                });
                Err(env)
            }
        }
    }

    fn abort_inflight(&self) {
        self.pool.abort_inflight();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_trips_on_failures_within_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(300));
        assert!(b.trip(t0, "a").is_none());
        assert!(b.trip(t0 + Duration::from_secs(10), "b").is_none());
        // The first failure has left the window: still only two.
        assert!(b.trip(t0 + Duration::from_secs(305), "c").is_none());
        assert!(b
            .trip(t0 + Duration::from_secs(306), "d")
            .unwrap()
            .contains("3 engine failures"));
    }
}
