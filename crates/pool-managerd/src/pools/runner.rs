//! The async shell around one pool's [`Core`]: it owns the core, turns engine events, model
//! fetches, timers, commands and dispatch admits/releases/cancels into core calls, and carries out
//! the core's effects. Slow work runs as tracked jobs that report back as [`Msg`]s; each engine
//! process is owned by one job (launch, health checks, stop) that reports its generation.
//!
//! Invariants: only this task touches the core; a job never holds the core; every engine job
//! ends by reporting its generation (ready/failed, then exited).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::worker::DispatchModel;
use api::{CommandId, ErrorCode, ErrorEnvelope, NodeId, PoolId, TaskId};
use engine::{EngineClient, LaunchSpec, RunningEngine};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::core::{
    CommandUpdate, Core, Effects, FetchFailed, Refusal, Settings, Snapshot, TaskEnd, Timer,
};
use super::{Admission, ModelInfo, PoolView};
use crate::commands::{CommandBook, ModelOrder, PoolCommand, Prep};
use crate::config::{EngineTimings, PoolSpec};

/// Everything a supervisor needs besides its pool.
#[derive(Clone)]
pub struct SupervisorEnv {
    pub timings: EngineTimings,
    pub engines_dir: PathBuf,
    /// Where each engine's pid record goes (see [`engine::process::stop_recorded`]).
    pub run_dir: PathBuf,
    /// None for adopted pools, whose engine is built elsewhere.
    pub engine_source: Option<engine::EngineSource>,
    pub node_id: NodeId,
    pub book: Arc<CommandBook>,
    pub cache: models::ModelCache,
    /// Notified whenever a pool's state changes, so the node reports it at once.
    pub changed: Arc<tokio::sync::Notify>,
}

/// Everything that reaches the runner.
pub enum Msg {
    Command(PoolCommand),
    Admit {
        task: TaskId,
        model: DispatchModel,
        reply: oneshot::Sender<Result<Admission, Refusal>>,
    },
    Release {
        task: TaskId,
        end: TaskEnd,
    },
    Cancel {
        task: TaskId,
        reply: oneshot::Sender<Option<watch::Receiver<bool>>>,
    },
    Abandon {
        why: String,
    },
    Provisioned(Result<(PathBuf, String), String>),
    Fetched {
        command: Option<CommandId>,
        result: Result<(ModelInfo, bool), FetchFailed>,
    },
    EngineReady {
        generation: u64,
        client: EngineClient,
        version: String,
    },
    EngineFailed {
        generation: u64,
        why: String,
    },
    EngineExited {
        generation: u64,
        why: String,
    },
}

/// A running task's controls, kept by the shell.
struct TaskHandles {
    cancel: CancellationToken,
    lost: CancellationToken,
    released: watch::Sender<bool>,
}

/// The live [`Effects`]: jobs on the tracker, timers, the command book and the published view.
pub struct Shell {
    spec: PoolSpec,
    env: SupervisorEnv,
    msgs: mpsc::UnboundedSender<Msg>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    binary: Option<PathBuf>,
    /// Per engine generation: its stop trigger and, once Ready, its client.
    engines: HashMap<u64, (CancellationToken, Option<EngineClient>)>,
    timers: BTreeMap<Timer, tokio::time::Instant>,
    tasks: HashMap<TaskId, TaskHandles>,
    view: watch::Sender<PoolView>,
}

pub struct Runner {
    core: Core<Shell>,
    rx: mpsc::UnboundedReceiver<Msg>,
    shutdown: CancellationToken,
}

type Parts = (
    mpsc::UnboundedSender<Msg>,
    watch::Receiver<PoolView>,
    Runner,
);

impl Runner {
    /// A supervisor that provisions the engine and serves `model` (when configured).
    pub fn new(
        spec: PoolSpec,
        env: SupervisorEnv,
        model: Option<ModelOrder>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Parts {
        let settings = settings(&spec, &env, model);
        let (tx, rx) = mpsc::unbounded_channel();
        let (shell, view) = Shell::new(spec, env, tx.clone(), shutdown.clone(), tracker);
        let mut core = Core::new(settings, shell);
        core.start();
        (tx, view, Runner { core, rx, shutdown })
    }

    /// A supervisor around an engine started elsewhere.
    pub fn adopted(
        spec: PoolSpec,
        env: SupervisorEnv,
        model: ModelInfo,
        client: EngineClient,
        engine_version: String,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Parts {
        let settings = settings(&spec, &env, None);
        let (tx, rx) = mpsc::unbounded_channel();
        let (mut shell, view) = Shell::new(spec, env, tx.clone(), shutdown.clone(), tracker);
        // Generation 1 is the adopted engine; it has no stop trigger of ours.
        shell
            .engines
            .insert(1, (CancellationToken::new(), Some(client)));
        let core = Core::adopted(settings, model, engine_version, Instant::now(), shell);
        (tx, view, Runner { core, rx, shutdown })
    }

    pub async fn run(mut self) {
        let mut shutdown_seen = false;
        while !self.core.finished() {
            let next_timer = self.core.effects().next_timer();
            let sleep = async {
                match next_timer {
                    Some((_, at)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                _ = sleep => {
                    if let Some((timer, _)) = next_timer {
                        self.core.effects().timers.remove(&timer);
                        self.core.on_timer(timer, Instant::now());
                    }
                }
                _ = self.shutdown.cancelled(), if !shutdown_seen => {
                    shutdown_seen = true;
                    self.core.shutdown();
                }
            }
        }
        // Anyone still waiting for a slot learns that it is free: the engines are gone.
        for (_, t) in self.core.effects().tasks.drain() {
            t.lost.cancel();
            let _ = t.released.send(true);
        }
    }

    fn handle(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Command(cmd) => self.core.on_command(cmd, now),
            Msg::Admit { task, model, reply } => {
                let answer = self.admit(&task, &model);
                let _ = reply.send(answer);
            }
            Msg::Release { task, end } => {
                self.core.release(&task, end, now);
                if let Some(t) = self.core.effects().tasks.remove(&task) {
                    let _ = t.released.send(true);
                }
            }
            Msg::Cancel { task, reply } => {
                let answer = self.core.effects().tasks.get(&task).map(|t| {
                    t.cancel.cancel();
                    t.released.subscribe()
                });
                let _ = reply.send(answer);
            }
            Msg::Abandon { why } => self.core.on_abandoned(why),
            Msg::Provisioned(result) => {
                let result = result.map(|(binary, version)| {
                    self.core.effects().binary = Some(binary);
                    version
                });
                self.core.on_provisioned(result, now);
            }
            Msg::Fetched { command, result } => self.core.on_fetched(command, result, now),
            Msg::EngineReady {
                generation,
                client,
                version,
            } => {
                if let Some(e) = self.core.effects().engines.get_mut(&generation) {
                    e.1 = Some(client);
                }
                self.core.on_engine_ready(generation, version, now);
            }
            Msg::EngineFailed { generation, why } => {
                self.core.effects().engines.remove(&generation);
                self.core.on_engine_failed(generation, why, now);
            }
            Msg::EngineExited { generation, why } => {
                self.core.effects().engines.remove(&generation);
                self.core.on_engine_exited(generation, why, now);
            }
        }
    }

    fn admit(&mut self, task: &TaskId, model: &DispatchModel) -> Result<Admission, Refusal> {
        let admitted = self.core.admit(task, model)?;
        let shell = self.core.effects();
        let Some(client) = shell
            .engines
            .get(&admitted.generation)
            .and_then(|e| e.1.clone())
        else {
            // The core serves a generation the shell has no client for: cannot happen, but a
            // refusal beats a panic. Undo the admission.
            self.core.release(
                task,
                TaskEnd {
                    ok: false,
                    decode_tps: None,
                },
                Instant::now(),
            );
            return Err(Refusal::Unready(api::node::PoolState::Starting));
        };
        let (released, _) = watch::channel(false);
        let handles = TaskHandles {
            cancel: CancellationToken::new(),
            lost: CancellationToken::new(),
            released,
        };
        let admission = Admission {
            client,
            engine_version: admitted.engine_version.unwrap_or_default(),
            model: admitted.model,
            generation: admitted.generation,
            cancel: handles.cancel.clone(),
            lost: handles.lost.clone(),
            meter: admitted.meter,
        };
        shell.tasks.insert(*task, handles);
        Ok(admission)
    }
}

fn settings(spec: &PoolSpec, env: &SupervisorEnv, model: Option<ModelOrder>) -> Settings {
    Settings {
        pool_id: spec.id.clone(),
        slots: spec.slots,
        max_restarts: env.timings.max_restarts,
        model,
    }
}

impl Shell {
    fn new(
        spec: PoolSpec,
        env: SupervisorEnv,
        msgs: mpsc::UnboundedSender<Msg>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> (Self, watch::Receiver<PoolView>) {
        let (view, rx) = watch::channel(PoolView {
            snapshot: Snapshot::empty(spec.slots),
            client: None,
        });
        let shell = Shell {
            spec,
            env,
            msgs,
            tracker: tracker.clone(),
            shutdown,
            binary: None,
            engines: HashMap::new(),
            timers: BTreeMap::new(),
            tasks: HashMap::new(),
            view,
        };
        (shell, rx)
    }

    fn next_timer(&self) -> Option<(Timer, tokio::time::Instant)> {
        self.timers
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(t, at)| (*t, *at))
    }

    fn pool_id(&self) -> PoolId {
        self.spec.id.clone()
    }

    fn launch_spec(&self, binary: &std::path::Path, model: &ModelInfo) -> LaunchSpec {
        let spec = &self.spec;
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
            die_with_parent: true,
            pid_record: Some(
                self.env
                    .run_dir
                    .join(format!("{}.{}.json", self.env.node_id, spec.id)),
            ),
        }
    }
}

impl Effects for Shell {
    fn provision(&mut self) {
        let Some(source) = self.env.engine_source.clone() else {
            let why = "the pool has no engine source".to_string();
            let _ = self.msgs.send(Msg::Provisioned(Err(why)));
            return;
        };
        let req = engine::ProvisionRequest {
            source,
            gpu: self.spec.gpu_policy,
            build_number: None,
            build_commit: None,
            extra_cmake_flags: vec![],
            engines_dir: self.env.engines_dir.clone(),
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        };
        let pool_id = self.pool_id();
        let msgs = self.msgs.clone();
        self.tracker.spawn(async move {
            let log_id = pool_id.clone();
            let result = tokio::task::spawn_blocking(move || {
                engine::provision(&req, &|p| {
                    if let engine::Progress::Step(s) = p {
                        tracing::info!(event = "engine.provision", pool_id = %log_id, "{s}");
                    }
                })
            })
            .await;
            let result = match result {
                Ok(Ok(build)) => Ok((build.binary, build.version.to_string())),
                Ok(Err(e)) => {
                    tracing::error!(event = "engine.provision_failed", pool_id = %pool_id, "Engine provisioning for pool {pool_id} failed: {e}");
                    Err(e.to_string())
                }
                Err(join) => Err(format!("provisioning task failed: {join}")),
            };
            let _ = msgs.send(Msg::Provisioned(result));
        });
    }

    fn fetch(&mut self, order: ModelOrder, command: Option<CommandId>) {
        let job = FetchJob {
            pool_id: self.pool_id(),
            node_id: self.env.node_id.clone(),
            book: self.env.book.clone(),
            cache: self.env.cache.clone(),
            shutdown: self.shutdown.clone(),
        };
        let msgs = self.msgs.clone();
        self.tracker.spawn(async move {
            let result = job.run(&order, command).await;
            let _ = msgs.send(Msg::Fetched { command, result });
        });
    }

    fn start_engine(&mut self, generation: u64, model: &ModelInfo) {
        let msgs = self.msgs.clone();
        let Some(binary) = self.binary.clone() else {
            let why = "the engine binary is not built".to_string();
            let _ = msgs.send(Msg::EngineFailed { generation, why });
            return;
        };
        let stop = CancellationToken::new();
        self.engines.insert(generation, (stop.clone(), None));
        let job = EngineJob {
            generation,
            spec: self.launch_spec(&binary, model),
            pool_id: self.pool_id(),
            node_id: self.env.node_id.clone(),
            stop_grace: self.env.timings.stop_grace,
            stop,
            msgs,
        };
        self.tracker.spawn(job.run());
    }

    fn stop_engine(&mut self, generation: u64) {
        match self.engines.get(&generation) {
            Some((stop, _)) => stop.cancel(),
            // No job owns this generation: its exit is immediate.
            None => {
                let _ = self.msgs.send(Msg::EngineExited {
                    generation,
                    why: "not running".into(),
                });
            }
        }
    }

    fn abort_tasks(&mut self, tasks: Vec<TaskId>) {
        for id in tasks {
            if let Some(t) = self.tasks.get(&id) {
                t.lost.cancel();
            }
        }
    }

    fn timer(&mut self, at: Instant, timer: Timer) {
        let mut at = tokio::time::Instant::from_std(at);
        if timer == Timer::Restart {
            // Pools that crash together do not restart in lockstep.
            at += Duration::from_millis(rand::random::<u64>() % 250);
        }
        self.timers.insert(timer, at);
    }

    fn command(&mut self, id: &CommandId, update: CommandUpdate) {
        use api::node::CommandState;
        match update {
            CommandUpdate::Running => self.env.book.set(id, CommandState::Running, None),
            CommandUpdate::Completed(result) => self.env.book.complete(id, result),
            CommandUpdate::Failed(e) => self.env.book.set(id, CommandState::Failed, Some(e)),
        }
    }

    fn report(&mut self, snapshot: Snapshot) {
        let client = snapshot
            .serving
            .and_then(|g| self.engines.get(&g))
            .and_then(|e| e.1.clone());
        let state = snapshot.state;
        let old = self.view.send_replace(PoolView { snapshot, client });
        if old.snapshot.state != state {
            self.env.changed.notify_one();
        }
    }
}

/// One engine generation: launch, serve until it dies, fails health checks or is stopped.
struct EngineJob {
    generation: u64,
    spec: LaunchSpec,
    pool_id: PoolId,
    node_id: NodeId,
    stop_grace: Duration,
    stop: CancellationToken,
    msgs: mpsc::UnboundedSender<Msg>,
}

impl EngineJob {
    async fn run(self) {
        let generation = self.generation;
        // A stop while the engine is still loading must not wait for the start timeout: dropping
        // the launch kills the half-started child (kill_on_drop).
        let launched = tokio::select! {
            r = engine::launch(&self.spec) => r,
            _ = self.stop.cancelled() => {
                let why = "stopped while starting".to_string();
                let _ = self.msgs.send(Msg::EngineFailed { generation, why });
                return;
            }
        };
        let running = match launched {
            Ok(r) => r,
            Err(e) => {
                let why = e.to_string();
                tracing::error!(event = "engine.exited", pool_id = %self.pool_id, node_id = %self.node_id, "Engine for pool {} failed to start: {why}", self.pool_id);
                let _ = self.msgs.send(Msg::EngineFailed { generation, why });
                return;
            }
        };
        tracing::info!(event = "engine.ready", pool_id = %self.pool_id, node_id = %self.node_id, engine_version = %running.build_info, pid = running.pid,
            "Engine for pool {} is ready on port {} (pid {})", self.pool_id, running.port, running.pid);
        let _ = self.msgs.send(Msg::EngineReady {
            generation,
            client: running.client.clone(),
            version: running.build_info.clone(),
        });
        let why = self.watch(running).await;
        let _ = self.msgs.send(Msg::EngineExited { generation, why });
    }

    /// Watches a Ready engine until it dies, fails three health checks in a row while streaming
    /// nothing, or is stopped.
    async fn watch(&self, mut running: RunningEngine) -> String {
        let mut failed_checks = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        let mut chunks = running.client.chunks_received();
        loop {
            tokio::select! {
                status = running.child.wait() => {
                    let why = format!("{}; last log lines:\n{}", engine::process::describe_exit(status), engine::process::log_tail(&running.log_path, 8));
                    tracing::warn!(event = "engine.exited", pool_id = %self.pool_id, node_id = %self.node_id, reason = %why, "Engine for pool {} stopped unexpectedly: {why}", self.pool_id);
                    return why;
                }
                _ = tick.tick() => {
                    let healthy = running.client.health().await.unwrap_or(false);
                    let now = running.client.chunks_received();
                    let streamed = now != chunks;
                    chunks = now;
                    failed_checks = next_failed_checks(failed_checks, healthy, streamed);
                    if !healthy && streamed {
                        tracing::warn!(event = "engine.health_slow", pool_id = %self.pool_id, node_id = %self.node_id,
                            "Engine for pool {} failed a health check but is streaming tokens: not counted as a failure", self.pool_id);
                    }
                    if failed_checks >= 3 {
                        let how = running.stop(self.stop_grace).await;
                        return format!("3 consecutive failed health checks; stopped ({how})");
                    }
                }
                _ = self.stop.cancelled() => {
                    let how = running.stop(self.stop_grace).await;
                    tracing::info!(event = "engine.exited", pool_id = %self.pool_id, node_id = %self.node_id, "Engine for pool {} stopped ({how})", self.pool_id);
                    return format!("stopped ({how})");
                }
            }
        }
    }
}

/// Failed health checks in a row after one more check. An engine that streamed completion
/// chunks since the previous check is alive whatever its `/health` said (a loaded engine may
/// answer it late): restarting it would break every stream it is serving.
fn next_failed_checks(failed: u32, healthy: bool, streamed: bool) -> u32 {
    if healthy || streamed {
        0
    } else {
        failed + 1
    }
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

/// One model fetch: makes the model available on this node (fetch and verify, or hash a local
/// file) and reads its GGUF facts. With a command id, progress goes to the command's steps.
struct FetchJob {
    pool_id: PoolId,
    node_id: NodeId,
    book: Arc<CommandBook>,
    cache: models::ModelCache,
    shutdown: CancellationToken,
}

impl FetchJob {
    async fn run(
        &self,
        order: &ModelOrder,
        command: Option<CommandId>,
    ) -> Result<(ModelInfo, bool), FetchFailed> {
        let pool_id = &self.pool_id;
        let prep = command.map(|id| Prep::new(self.book.clone(), id, &order.model_ref, pool_id));
        tracing::info!(event = "model.fetch", pool_id = %pool_id, node_id = %self.node_id, model = %order.id, "Preparing model {} ({}) for pool {pool_id}", order.id, order.model_ref);
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
            r = self.cache.fetch(&order.model_ref, order.digest.as_deref(), &progress) => r,
            _ = self.shutdown.cancelled() => {
                tracing::info!(event = "model.fetch_stopped", pool_id = %pool_id, model = %order.id, "Stopped preparing model {} for pool {pool_id}: pool-managerd is shutting down", order.id);
                let env = ErrorEnvelope::new(ErrorCode::PoolUnavailable, "pool-managerd is shutting down").with_retriable(true);
                if let Some(prep) = &prep {
                    prep.failed(env.clone());
                }
                let reason = env.message.clone();
                return Err(FetchFailed { envelope: env, reason });
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
                let side_by_side = memory_allows(&f.path);
                Ok((ModelInfo::from_fetched(order, f), side_by_side))
            }
            Err(e) => {
                let env = e.envelope();
                tracing::error!(event = "model.fetch_failed", pool_id = %pool_id, model = %order.id, code = %env.code, "Preparing model {} failed: {e}", order.id);
                if let Some(prep) = &prep {
                    prep.failed(env.clone());
                }
                let reason = format!("model {} ({}): {e}", order.id, order.model_ref);
                Err(FetchFailed {
                    envelope: env,
                    reason,
                })
            }
        }
    }
}

#[cfg(test)]
mod watch_tests {
    use super::next_failed_checks;

    #[test]
    fn a_streaming_engine_is_alive_whatever_its_health_check_said() {
        // Unhealthy and silent: counts, up to the restart at 3.
        assert_eq!(next_failed_checks(0, false, false), 1);
        assert_eq!(next_failed_checks(2, false, false), 3);
        // Unhealthy but streaming since the last check: alive, the count starts again.
        assert_eq!(next_failed_checks(2, false, true), 0);
        // Healthy: resets.
        assert_eq!(next_failed_checks(2, true, false), 0);
    }
}
