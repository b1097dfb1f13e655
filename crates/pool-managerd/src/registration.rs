//! Registration and heartbeat with orchestratord (API.md §12): register (retrying every 250 ms),
//! heartbeat the full pool set every interval, register again on 404 or 401, deregister on shutdown.
//! With several orchestratord (HA), requests go to the leader: a follower's 503 `NOT_LEADER` names
//! it in `x-llorch-leader`; a connection error or a 503 naming none moves on to the next URL.

use std::sync::Arc;
use std::time::Duration;

use api::node::{
    Capabilities, CommandState, CredentialKind, HeartbeatRequest, HeartbeatResponse,
    RegisterRequest, RegisterResponse,
};
use daemon::secret::Secret;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::commands::CommandBook;
use crate::config::{Config, NodeAuth};
use crate::gpu;
use crate::pools::PoolSet;

/// What registration and heartbeats need: who this node is, where orchestratord is, how to
/// authenticate, and the pools, commands and models cache that heartbeats report and steer.
pub struct Registrar {
    pub node_id: api::NodeId,
    pub machine_id: api::MachineId,
    pub advertise_url: String,
    /// orchestratord's URLs (one, or the HA group's).
    pub orchestrator_urls: Vec<String>,
    pub dispatch_token: Secret,
    pub node_auth: NodeAuth,
    pub http: reqwest::Client,
    pub pools: Arc<PoolSet>,
    pub book: Arc<CommandBook>,
    pub cache: models::ModelCache,
    /// Runs node-level catalog commands.
    pub tracker: TaskTracker,
    /// Notified on every pool state change: the next heartbeat goes at once.
    pub changed: Arc<tokio::sync::Notify>,
}

impl Registrar {
    /// The registrar of the node `config` describes; fails when the HTTP client cannot be built.
    pub fn new(
        config: &Config,
        pools: Arc<PoolSet>,
        book: Arc<CommandBook>,
        cache: models::ModelCache,
        tracker: TaskTracker,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            node_id: config.node_id.clone(),
            machine_id: config.machine_id.clone(),
            advertise_url: config.advertise_url.clone(),
            orchestrator_urls: config.orchestrator_urls.clone(),
            dispatch_token: config.dispatch_token.clone(),
            node_auth: config.node_auth.clone(),
            http,
            pools,
            book,
            cache,
            tracker,
            changed: Default::default(),
        })
    }

    /// Heartbeats also go out whenever `changed` is notified.
    pub fn with_changes(mut self, changed: Arc<tokio::sync::Notify>) -> Self {
        self.changed = changed;
        self
    }
}

type App = Registrar;

/// How soon a failed registration or heartbeat is tried again.
const RETRY: Duration = Duration::from_millis(250);

pub struct Session {
    credential: Option<Secret>,
    interval: Duration,
}

enum Beat {
    Ok,
    Reregister,
    Failed(String),
}

/// Which orchestratord registration and heartbeats go to: the leader a follower named, else the
/// configured URLs in turn.
struct Target {
    urls: Vec<String>,
    next: usize,
    current: String,
}

impl Target {
    fn new(urls: &[String]) -> Self {
        Self {
            urls: urls.to_vec(),
            next: 1,
            current: urls.first().cloned().unwrap_or_default(),
        }
    }

    /// Follows a 503 answer: to the leader it names, else to the next URL. True when it named one.
    fn follow(&mut self, leader: Option<String>) -> bool {
        match leader {
            Some(l) => {
                self.current = l;
                true
            }
            None => {
                self.rotate();
                false
            }
        }
    }

    fn rotate(&mut self) {
        if !self.urls.is_empty() {
            self.current = self.urls[self.next % self.urls.len()].clone();
            self.next = self.next.wrapping_add(1);
        }
    }
}

/// The leader a follower's answer names (`x-llorch-leader`, an http(s) URL).
fn leader_of(r: &reqwest::Response) -> Option<String> {
    let v = r.headers().get(api::LEADER_HEADER)?.to_str().ok()?.trim();
    (v.starts_with("http://") || v.starts_with("https://"))
        .then(|| v.trim_end_matches('/').to_string())
}

pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    let http = app.http.clone();
    let mut target = Target::new(&app.orchestrator_urls);
    'outer: loop {
        let Some(session) = register_with_retry(&app, &http, &mut target, &shutdown).await else {
            return;
        };
        let mut session = session;
        let mut seq = 0u64;
        let mut failing = false;
        loop {
            let wait = if failing { RETRY } else { session.interval };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A pool changed state: orchestratord hears of it at once, not at the next interval.
                _ = app.changed.notified() => {}
                _ = shutdown.cancelled() => {
                    deregister(&app, &http, &target, &session).await;
                    return;
                }
            }
            seq += 1;
            match heartbeat(&app, &http, &mut target, &mut session, seq).await {
                Beat::Ok => {
                    if failing {
                        tracing::info!(event = "node.heartbeat_ok", node_id = %app.node_id, orchestrator = %target.current,
                            "Heartbeats to {} are answered again", target.current);
                    }
                    failing = false;
                }
                Beat::Reregister => continue 'outer,
                Beat::Failed(why) => {
                    if !failing {
                        tracing::warn!(event = "node.heartbeat_failed", node_id = %app.node_id,
                            "Heartbeat failed, retrying every {} ms: {why}", RETRY.as_millis());
                    }
                    failing = true;
                }
            }
        }
    }
}

fn register_body(app: &App, gpus: &[gpu::Gpu]) -> RegisterRequest {
    RegisterRequest {
        protocol_version: api::PROTOCOL_VERSION,
        node_id: app.node_id.clone(),
        machine_id: app.machine_id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        address: app.advertise_url.clone(),
        dispatch_token: app.dispatch_token.expose().to_string(),
        capabilities: Capabilities {
            cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            ram_total_bytes: ram_total_bytes(),
            gpus: gpu::infos(gpus),
        },
        pools: app.pools.all().iter().map(|p| p.status()).collect(),
    }
}

async fn register_with_retry(
    app: &App,
    http: &reqwest::Client,
    target: &mut Target,
    shutdown: &CancellationToken,
) -> Option<Session> {
    let mut failing = false;
    let mut followed_last = false;
    loop {
        let url = format!("{}/v2/nodes/register", target.current);
        let gpus = gpu::discover_off_runtime().await;
        let mut req = http.post(&url).json(&register_body(app, &gpus));
        let presented = match &app.node_auth {
            NodeAuth::Registration(t) | NodeAuth::Static(t) => Some(t.clone()),
            NodeAuth::None => None,
        };
        if let Some(t) = &presented {
            req = req.bearer_auth(t.expose());
        }
        // A follower's answer names the leader: go there at once (once; then at the usual pace).
        let mut followed = false;
        let outcome = match req.send().await {
            Ok(r) if r.status().is_success() => match r.json::<RegisterResponse>().await {
                Ok(body) => Ok(body),
                Err(e) => Err(format!("unreadable registration answer: {e}")),
            },
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                let from = target.current.clone();
                followed = target.follow(leader_of(&r));
                Err(format!(
                    "{from} answered 503 (not the leader); trying {}",
                    target.current
                ))
            }
            Ok(r) => {
                let status = r.status();
                Err(format!(
                    "orchestratord answered {status}: {}",
                    r.text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect::<String>()
                ))
            }
            Err(e) => {
                let from = target.current.clone();
                target.rotate();
                Err(format!(
                    "orchestratord at {from} unreachable ({e}); trying {}",
                    target.current
                ))
            }
        };
        match outcome {
            Ok(body) => {
                let credential = match body.credential {
                    CredentialKind::Issued => body.node_token.map(Secret::new),
                    CredentialKind::Static => presented,
                };
                tracing::info!(event = "node.registered", node_id = %app.node_id, orchestrator = %target.current,
                    "Registered node {} with orchestratord at {}", app.node_id, target.current);
                return Some(Session {
                    credential,
                    interval: Duration::from_millis(body.next_heartbeat_ms.max(100)),
                });
            }
            Err(why) if !failing => {
                failing = true;
                tracing::warn!(event = "node.register_failed", node_id = %app.node_id,
                    "Registration failed, retrying every {} ms until it succeeds: {why}", RETRY.as_millis());
            }
            Err(why) => {
                tracing::debug!(event = "node.register_failed", node_id = %app.node_id, "Registration failed again: {why}");
            }
        }
        // Two follows in a row (followers naming each other) wait like any failure.
        let at_once = followed && !followed_last;
        followed_last = followed;
        if at_once {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// The heartbeat of §12.2: every pool's status, the GPUs, and the commands not yet reported
/// terminal (a terminal status is sent once).
fn heartbeat_body(app: &App, seq: u64, sent_at_ms: u64, gpus: &[gpu::Gpu]) -> HeartbeatRequest {
    HeartbeatRequest {
        seq,
        sent_at_ms,
        pools: app.pools.all().iter().map(|p| p.status()).collect(),
        gpus: gpu::statuses(gpus),
        commands: app.book.report(),
    }
}

async fn heartbeat(
    app: &Arc<App>,
    http: &reqwest::Client,
    target: &mut Target,
    session: &mut Session,
    seq: u64,
) -> Beat {
    let url = format!("{}/v2/nodes/{}/heartbeat", target.current, app.node_id);
    let gpus = gpu::discover_off_runtime().await;
    let body = heartbeat_body(app, seq, daemon::now_ms(), &gpus);
    let mut req = http.post(&url).json(&body);
    if let Some(c) = &session.credential {
        req = req.bearer_auth(c.expose());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => {
            if let Ok(resp) = r.json::<HeartbeatResponse>().await {
                session.interval = Duration::from_millis(resp.next_heartbeat_ms.max(100));
                for cmd in resp.commands {
                    route(app, cmd);
                }
                // Models a pool uses are never evicted by the cache quota.
                app.cache.set_in_use(
                    app.pools
                        .all()
                        .iter()
                        .filter_map(|p| p.model().map(|m| m.path))
                        .collect(),
                );
            }
            Beat::Ok
        }
        Ok(r)
            if r.status() == reqwest::StatusCode::NOT_FOUND
                || r.status() == reqwest::StatusCode::UNAUTHORIZED =>
        {
            tracing::warn!(event = "node.reregister", node_id = %app.node_id, "orchestratord answered {} to a heartbeat; registering again", r.status());
            Beat::Reregister
        }
        Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
            let from = target.current.clone();
            if target.follow(leader_of(&r)) {
                // A new leader learns of this node (and its running tasks) by its registration.
                tracing::info!(event = "node.leader_changed", node_id = %app.node_id, orchestrator = %target.current,
                    "{from} is not the leader; registering with the leader at {}", target.current);
                return Beat::Reregister;
            }
            Beat::Failed(format!(
                "{from} answered 503 and names no leader; trying {}",
                target.current
            ))
        }
        Ok(r) => Beat::Failed(format!("{} answered {}", target.current, r.status())),
        Err(e) => {
            let from = target.current.clone();
            target.rotate();
            Beat::Failed(format!(
                "orchestratord at {from} unreachable ({e}); trying {}",
                target.current
            ))
        }
    }
}

/// Hands a command to its pool's supervisor (once per command id), or runs a node-level catalog
/// command (`evict-model`, `verify-model`) on its own task.
fn route(app: &Arc<App>, cmd: api::node::Command) {
    use crate::commands::{ModelOrder, PoolCommand};
    use api::node::CommandKind;
    if !app.book.receive(&cmd.command_id) {
        return;
    }
    tracing::info!(event = "command.received", node_id = %app.node_id, correlation_id = %cmd.correlation_id, command_id = %cmd.command_id,
        pool_id = %cmd.pool_id.as_ref().map_or("", api::PoolId::as_str), "Received command {:?}", cmd.kind);
    let invalid = |msg: String| api::ErrorEnvelope::new(api::ErrorCode::InvalidParams, msg);
    let order = match cmd.model.as_ref().map(|m| {
        api::model_ref::ModelRef::parse(&m.model_ref).map(|r| ModelOrder {
            id: m.id.clone(),
            model_ref: r,
            digest: m.digest.clone(),
        })
    }) {
        None => Ok(None),
        Some(Ok(o)) => Ok(Some(o)),
        Some(Err(e)) => Err(invalid(format!("command model: {e}"))),
    };
    let pool = cmd.pool_id.as_ref().and_then(|p| app.pools.get(p));
    let routed = order.and_then(|order| match (cmd.kind, pool.as_deref(), order) {
        (_, None, _) if cmd.pool_id.is_some() => Err(api::ErrorEnvelope::new(
            api::ErrorCode::NotFound,
            "no such pool on this node",
        )),
        (CommandKind::Drain, Some(p), _) => {
            let deadline = std::time::Duration::from_millis(cmd.deadline_ms.unwrap_or(60_000));
            p.command(PoolCommand::Drain {
                id: cmd.command_id,
                deadline,
            })
            .map_err(|e| invalid(e.to_string()))
        }
        (CommandKind::Reload | CommandKind::LoadModel, Some(p), model) => p
            .command(PoolCommand::Load {
                id: cmd.command_id,
                model,
            })
            .map_err(|e| invalid(e.to_string())),
        (CommandKind::EvictModel | CommandKind::VerifyModel, None, Some(order)) => {
            app.tracker.spawn(catalog_command(
                app.clone(),
                cmd.command_id,
                cmd.kind,
                order,
            ));
            Ok(())
        }
        (kind, _, _) => Err(invalid(format!("command {kind:?} lacks a pool or a model"))),
    });
    if let Err(e) = routed {
        app.book.set(&cmd.command_id, CommandState::Failed, Some(e));
    }
}

/// `evict-model` deletes this node's cached copy (never a model a pool uses, never a `file:`
/// model); `verify-model` re-hashes the copy against the catalog digest.
async fn catalog_command(
    app: Arc<App>,
    id: api::CommandId,
    kind: api::node::CommandKind,
    order: crate::commands::ModelOrder,
) {
    let in_use = app.pools.all().iter().any(|p| {
        p.model()
            .is_some_and(|m| m.model_ref == order.model_ref.to_string())
    });
    let outcome = match kind {
        api::node::CommandKind::EvictModel if in_use => Err(api::ErrorEnvelope::new(
            api::ErrorCode::Conflict,
            format!("a pool on this node serves {}", order.id),
        )),
        api::node::CommandKind::EvictModel => app
            .cache
            .evict(&order.model_ref)
            .map(|_| None)
            .map_err(|e| e.envelope()),
        _ => match order.digest.as_deref() {
            None => Err(api::ErrorEnvelope::new(
                api::ErrorCode::InvalidParams,
                format!(
                    "the catalog has no digest for {} to verify against",
                    order.id
                ),
            )),
            Some(d) => app
                .cache
                .verify(&order.model_ref, d)
                .await
                .map(|f| {
                    Some(api::node::CommandResult {
                        digest: f.digest,
                        size_bytes: f.size_bytes,
                        metadata: Some(f.metadata),
                    })
                })
                .map_err(|e| e.envelope()),
        },
    };
    match outcome {
        Ok(result) => {
            tracing::info!(event = "command.finished", node_id = %app.node_id, command_id = %id, model = %order.id, "{kind:?} of {} completed", order.id);
            app.book.complete(&id, result);
        }
        Err(e) => {
            tracing::warn!(event = "command.finished", node_id = %app.node_id, command_id = %id, model = %order.id, code = %e.code, "{kind:?} of {} failed: {}", order.id, e.message);
            app.book.set(&id, CommandState::Failed, Some(e));
        }
    }
}

async fn deregister(app: &App, http: &reqwest::Client, target: &Target, session: &Session) {
    let url = format!("{}/v2/nodes/{}", target.current, app.node_id);
    let mut req = http.delete(&url).timeout(Duration::from_secs(3));
    if let Some(c) = &session.credential {
        req = req.bearer_auth(c.expose());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => {
            tracing::info!(event = "node.deregistered", node_id = %app.node_id, "Deregistered node {}", app.node_id)
        }
        Ok(r) => {
            tracing::warn!(event = "node.deregister_failed", node_id = %app.node_id, "Deregistration answered {}", r.status())
        }
        Err(e) => {
            tracing::warn!(event = "node.deregister_failed", node_id = %app.node_id, "Deregistration failed: {e}")
        }
    }
}

fn ram_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::PoolCommand;
    use crate::pools::runner::Msg;
    use api::node::{Command, CommandKind, LoadedModel};
    use api::ErrorCode;

    fn registrar(dir: &std::path::Path, pools: &[Arc<crate::pools::Pool>]) -> Arc<Registrar> {
        let set = PoolSet::default();
        for p in pools {
            set.insert(p.clone());
        }
        let cache = models::ModelCache::new(models::CacheConfig {
            models_dir: dir.to_path_buf(),
            quota_bytes: None,
            hf_endpoint: "http://127.0.0.1:1".into(),
            hf_token: None,
            extra_root_pem: None,
        })
        .unwrap();
        Arc::new(Registrar {
            node_id: "n1".parse().unwrap(),
            machine_id: "m".parse().unwrap(),
            advertise_url: "http://127.0.0.1:2".into(),
            orchestrator_urls: vec!["http://127.0.0.1:3".into()],
            dispatch_token: Secret::new("t"),
            node_auth: NodeAuth::None,
            http: reqwest::Client::new(),
            pools: Arc::new(set),
            book: Default::default(),
            cache,
            tracker: TaskTracker::new(),
            changed: Default::default(),
        })
    }

    fn command(
        id: &str,
        kind: CommandKind,
        pool: Option<&str>,
        model_ref: Option<&str>,
    ) -> Command {
        Command {
            command_id: cid(id).parse().unwrap(),
            kind,
            pool_id: pool.map(|p| p.parse().unwrap()),
            model: model_ref.map(|r| LoadedModel {
                id: "m2".parse().unwrap(),
                model_ref: r.into(),
                digest: None,
                size_bytes: None,
                metadata: None,
            }),
            deadline_ms: Some(2500),
            correlation_id: "c".parse().unwrap(),
        }
    }

    /// A command id (a UUID) for a test's short name `c<n>`.
    fn cid(name: &str) -> String {
        let n: u64 = name.trim_start_matches('c').parse().unwrap();
        format!("00000000-0000-4000-8000-{n:012}")
    }

    fn command_id(name: &str) -> api::CommandId {
        cid(name).parse().unwrap()
    }

    /// The failed statuses of the next heartbeat, by command id.
    fn failures(app: &Registrar) -> Vec<(String, ErrorCode)> {
        heartbeat_body(app, 1, 0, &[])
            .commands
            .into_iter()
            .filter(|c| c.status == CommandState::Failed)
            .map(|c| (c.command_id.to_string(), c.error.map(|e| e.code).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn commands_reach_their_pool_once_and_bad_ones_fail_in_the_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, mut rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = registrar(dir.path(), &[pool]);
        route(&app, command("c1", CommandKind::Drain, Some("p1"), None));
        route(&app, command("c1", CommandKind::Drain, Some("p1"), None));
        route(
            &app,
            command(
                "c2",
                CommandKind::LoadModel,
                Some("p1"),
                Some("file:/m2.gguf"),
            ),
        );
        match rx.try_recv() {
            Ok(Msg::Command(PoolCommand::Drain { id, deadline })) => {
                assert_eq!(
                    (id, deadline),
                    (command_id("c1"), Duration::from_millis(2500))
                );
            }
            _ => panic!("the drain did not reach the pool"),
        }
        match rx.try_recv() {
            Ok(Msg::Command(PoolCommand::Load { id, model: Some(m) })) => {
                assert_eq!((id, m.id.as_str()), (command_id("c2"), "m2"));
                assert_eq!(m.model_ref.to_string(), "file:/m2.gguf");
            }
            _ => panic!("the load did not reach the pool (a duplicate drain came first?)"),
        }
        assert!(
            rx.try_recv().is_err(),
            "a repeated command id is delivered once"
        );
        route(&app, command("c3", CommandKind::Reload, Some("nope"), None));
        route(
            &app,
            command("c4", CommandKind::LoadModel, Some("p1"), Some("bogus:x")),
        );
        route(&app, command("c5", CommandKind::EvictModel, None, None));
        assert_eq!(
            failures(&app),
            [
                (cid("c3"), ErrorCode::NotFound),
                (cid("c4"), ErrorCode::InvalidParams),
                (cid("c5"), ErrorCode::InvalidParams),
            ]
        );
        assert!(
            failures(&app).is_empty(),
            "a terminal status is reported once"
        );
    }

    #[tokio::test]
    async fn heartbeat_and_register_bodies_carry_pools_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 3));
        let app = registrar(dir.path(), &[pool]);
        app.book.receive(&cid("c9").parse().unwrap());
        let gpu = gpu::Gpu {
            index: 0,
            name: "H200".into(),
            vram_total_bytes: 100,
            vram_free_bytes: 40,
            utilization_pct: 5.0,
            compute_capability: Some("9.0".into()),
        };
        let beat = heartbeat_body(&app, 7, 1234, &[gpu]);
        assert_eq!((beat.seq, beat.sent_at_ms), (7, 1234));
        let p = &beat.pools[0];
        assert_eq!(
            (p.pool_id.as_str(), p.slots_total, p.slots_free),
            ("p1", 3, 3)
        );
        assert_eq!(p.ctx_per_slot, 1024);
        assert_eq!(beat.gpus.len(), 1);
        assert_eq!(beat.commands[0].status, CommandState::Accepted);
        let reg = register_body(&app, &[]);
        assert_eq!(
            (reg.node_id.as_str(), reg.dispatch_token.as_str()),
            ("n1", "t")
        );
        assert_eq!(reg.protocol_version, api::PROTOCOL_VERSION);
        assert_eq!(reg.pools.len(), 1);
    }

    /// A pool state change sends a heartbeat at once, not at the (here one-minute) interval.
    #[tokio::test]
    async fn a_state_change_heartbeats_at_once() {
        use axum::routing::post;
        let dir = tempfile::tempdir().unwrap();
        let beats = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = beats.clone();
        let router = axum::Router::new()
            .route(
                "/v2/nodes/register",
                post(|| async {
                    axum::Json(RegisterResponse {
                        node_id: "n1".parse().unwrap(),
                        credential: CredentialKind::Static,
                        node_token: None,
                        protocol_version: api::PROTOCOL_VERSION,
                        next_heartbeat_ms: 60_000,
                        heartbeat_timeout_ms: 180_000,
                    })
                }),
            )
            .route(
                "/v2/nodes/n1/heartbeat",
                post(move || {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async {
                        axum::Json(HeartbeatResponse {
                            next_heartbeat_ms: 60_000,
                            commands: vec![],
                        })
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let (pool, _rx, _view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let mut app = Arc::try_unwrap(registrar(dir.path(), &[pool]))
            .ok()
            .unwrap();
        app.orchestrator_urls = vec![url];
        let app = Arc::new(app);
        let stop = CancellationToken::new();
        let run = tokio::spawn(run(app.clone(), stop.clone()));
        let count = || beats.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count(), 0, "no heartbeat before the interval");
        app.changed.notify_one();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while count() == 0 && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(), 1, "the change was reported at once");
        stop.cancel();
        let _ = run.await;
    }

    /// A stand-in orchestratord of an HA group: while `leader` it takes registrations (counted)
    /// and heartbeats; else it answers 503 `NOT_LEADER` naming `other`.
    struct Orchd {
        url: String,
        leader: Arc<std::sync::atomic::AtomicBool>,
        registered: Arc<std::sync::atomic::AtomicU64>,
        other: Arc<std::sync::Mutex<String>>,
    }

    impl Orchd {
        async fn start(leader: bool) -> Self {
            use std::sync::atomic::Ordering::SeqCst;
            let me = Self {
                url: String::new(),
                leader: Arc::new(leader.into()),
                registered: Default::default(),
                other: Default::default(),
            };
            let (lead, count, other) = (me.leader.clone(), me.registered.clone(), me.other.clone());
            let router = axum::Router::new().fallback(move |req: axum::extract::Request| {
                let (lead, count, other) = (lead.clone(), count.clone(), other.clone());
                async move {
                    use axum::response::IntoResponse;
                    if !lead.load(SeqCst) {
                        let env = api::ErrorEnvelope::new(ErrorCode::NotLeader, "not the leader");
                        let leader = other.lock().unwrap().clone();
                        return (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [(api::LEADER_HEADER, leader)],
                            axum::Json(env),
                        )
                            .into_response();
                    }
                    if req.uri().path() == "/v2/nodes/register" {
                        count.fetch_add(1, SeqCst);
                        return axum::Json(RegisterResponse {
                            node_id: "n1".parse().unwrap(),
                            credential: CredentialKind::Static,
                            node_token: None,
                            protocol_version: api::PROTOCOL_VERSION,
                            next_heartbeat_ms: 100,
                            heartbeat_timeout_ms: 1_000,
                        })
                        .into_response();
                    }
                    axum::Json(HeartbeatResponse {
                        next_heartbeat_ms: 100,
                        commands: vec![],
                    })
                    .into_response()
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, router).await });
            Self { url, ..me }
        }

        fn names(&self, other: &Orchd) {
            *self.other.lock().unwrap() = other.url.clone();
        }

        fn registered(&self) -> u64 {
            self.registered.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// Runs a registrar against `urls` until `done` holds (or 30 s passed).
    async fn register_until(urls: Vec<String>, mut done: impl FnMut() -> bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut app = Arc::try_unwrap(registrar(dir.path(), &[])).ok().unwrap();
        app.orchestrator_urls = urls;
        let stop = CancellationToken::new();
        let run = tokio::spawn(run(Arc::new(app), stop.clone()));
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !done() && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        let _ = run.await;
    }

    /// Registration finds the leader: a dead URL is skipped, and a follower's 503 `NOT_LEADER`
    /// names the leader.
    #[tokio::test]
    async fn registration_follows_the_leader() {
        let (leader, follower) = (Orchd::start(true).await, Orchd::start(false).await);
        follower.names(&leader);
        // Nothing listens on a port just freed.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        register_until(vec![dead_url, follower.url.clone()], || {
            leader.registered() > 0
        })
        .await;
        assert_eq!(leader.registered(), 1, "registered once, with the leader");
    }

    /// When the leader changes, the old one's NOT_LEADER answer to a heartbeat sends the node to
    /// register with the new one.
    #[tokio::test]
    async fn a_heartbeat_to_a_deposed_leader_registers_with_the_new_one() {
        let (a, b) = (Orchd::start(true).await, Orchd::start(false).await);
        b.names(&a);
        a.names(&b);
        let mut flipped = false;
        register_until(vec![a.url.clone(), b.url.clone()], || {
            if a.registered() > 0 && !flipped {
                a.leader.store(false, std::sync::atomic::Ordering::SeqCst);
                b.leader.store(true, std::sync::atomic::Ordering::SeqCst);
                flipped = true;
            }
            b.registered() > 0
        })
        .await;
        assert_eq!((a.registered(), b.registered()), (1, 1));
    }
}
