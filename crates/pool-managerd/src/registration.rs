//! Registration and heartbeat with orchestratord (API.md §12): register (retrying with backoff),
//! heartbeat the full pool set every interval, register again on 404 or 401, deregister on shutdown.

use std::sync::Arc;
use std::time::Duration;

use api::node::{
    Capabilities, CommandState, CredentialKind, HeartbeatRequest, HeartbeatResponse,
    RegisterRequest, RegisterResponse,
};
use daemon::secret::Secret;
use tokio_util::sync::CancellationToken;

use crate::config::NodeAuth;
use crate::gpu;
use crate::http::App;

pub struct Session {
    credential: Option<Secret>,
    interval: Duration,
}

enum Beat {
    Ok,
    Reregister,
}

pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    'outer: loop {
        let Some(session) = register_with_retry(&app, &http, &shutdown).await else {
            return;
        };
        let mut session = session;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(session.interval) => {}
                _ = shutdown.cancelled() => {
                    deregister(&app, &http, &session).await;
                    return;
                }
            }
            seq += 1;
            match heartbeat(&app, &http, &mut session, seq).await {
                Beat::Ok => {}
                Beat::Reregister => continue 'outer,
            }
        }
    }
}

fn register_body(app: &App) -> RegisterRequest {
    let gpus = gpu::discover();
    RegisterRequest {
        protocol_version: api::PROTOCOL_VERSION,
        node_id: app.config.node_id.clone(),
        machine_id: app.config.machine_id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        address: app.config.advertise_url.clone(),
        dispatch_token: app.config.dispatch_token.expose().to_string(),
        capabilities: Capabilities {
            cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            ram_total_bytes: ram_total_bytes(),
            gpus: gpu::infos(&gpus),
        },
        pools: app.pools.all().iter().map(|p| p.status()).collect(),
    }
}

async fn register_with_retry(
    app: &App,
    http: &reqwest::Client,
    shutdown: &CancellationToken,
) -> Option<Session> {
    let mut backoff = Duration::from_secs(1);
    let url = format!("{}/v2/nodes/register", app.config.orchestrator_url);
    loop {
        let mut req = http.post(&url).json(&register_body(app));
        let presented = match &app.config.node_auth {
            NodeAuth::Registration(t) | NodeAuth::Static(t) => Some(t.clone()),
            NodeAuth::None => None,
        };
        if let Some(t) = &presented {
            req = req.bearer_auth(t.expose());
        }
        let outcome = match req.send().await {
            Ok(r) if r.status().is_success() => match r.json::<RegisterResponse>().await {
                Ok(body) => Ok(body),
                Err(e) => Err(format!("unreadable registration answer: {e}")),
            },
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
            Err(e) => Err(format!("orchestratord unreachable: {e}")),
        };
        match outcome {
            Ok(body) => {
                let credential = match body.credential {
                    CredentialKind::Issued => body.node_token.map(Secret::new),
                    CredentialKind::Static => presented,
                };
                tracing::info!(event = "node.registered", node_id = %app.config.node_id, orchestrator = %app.config.orchestrator_url,
                    "Registered node {} with orchestratord at {}", app.config.node_id, app.config.orchestrator_url);
                return Some(Session {
                    credential,
                    interval: Duration::from_millis(body.next_heartbeat_ms.max(100)),
                });
            }
            Err(why) => {
                tracing::warn!(event = "node.register_failed", node_id = %app.config.node_id, "Registration failed, retrying in {} s: {why}", backoff.as_secs());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn heartbeat(
    app: &Arc<App>,
    http: &reqwest::Client,
    session: &mut Session,
    seq: u64,
) -> Beat {
    let url = format!(
        "{}/v2/nodes/{}/heartbeat",
        app.config.orchestrator_url, app.config.node_id
    );
    let body = HeartbeatRequest {
        seq,
        sent_at_ms: daemon::now_ms(),
        pools: app.pools.all().iter().map(|p| p.status()).collect(),
        gpus: gpu::statuses(&gpu::discover()),
        commands: app.book.report(),
    };
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
                        .filter_map(|p| p.snapshot.borrow().model.as_ref().map(|m| m.path.clone()))
                        .collect(),
                );
            }
            Beat::Ok
        }
        Ok(r)
            if r.status() == reqwest::StatusCode::NOT_FOUND
                || r.status() == reqwest::StatusCode::UNAUTHORIZED =>
        {
            tracing::warn!(event = "node.reregister", node_id = %app.config.node_id, "orchestratord answered {} to a heartbeat; registering again", r.status());
            Beat::Reregister
        }
        Ok(r) => {
            tracing::warn!(event = "node.heartbeat_failed", node_id = %app.config.node_id, "Heartbeat answered {}", r.status());
            Beat::Ok
        }
        Err(e) => {
            tracing::warn!(event = "node.heartbeat_failed", node_id = %app.config.node_id, "Heartbeat failed: {e}");
            Beat::Ok
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
    tracing::info!(event = "command.received", node_id = %app.config.node_id, correlation_id = %cmd.correlation_id, command_id = %cmd.command_id,
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
    let pool = cmd.pool_id.as_ref().and_then(|p| app.pools.get(p.as_str()));
    let routed = order.and_then(|order| match (cmd.kind, pool.as_deref(), order) {
        (_, None, _) if cmd.pool_id.is_some() => Err(api::ErrorEnvelope::new(
            api::ErrorCode::NotFound,
            "no such pool on this node",
        )),
        (CommandKind::Drain, Some(p), _) => {
            let deadline = std::time::Duration::from_millis(cmd.deadline_ms.unwrap_or(60_000));
            p.commands
                .send(PoolCommand::Drain {
                    id: cmd.command_id.clone(),
                    deadline,
                })
                .map_err(|_| invalid("the pool is shutting down".into()))
        }
        (CommandKind::Reload | CommandKind::LoadModel, Some(p), model) => p
            .commands
            .send(PoolCommand::Load {
                id: cmd.command_id.clone(),
                model,
            })
            .map_err(|_| invalid("the pool is shutting down".into())),
        (CommandKind::EvictModel | CommandKind::VerifyModel, None, Some(order)) => {
            app.tracker.spawn(catalog_command(
                app.clone(),
                cmd.command_id.clone(),
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
        p.snapshot
            .borrow()
            .model
            .as_ref()
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
            tracing::info!(event = "command.finished", node_id = %app.config.node_id, command_id = %id, model = %order.id, "{kind:?} of {} completed", order.id);
            app.book.complete(&id, result);
        }
        Err(e) => {
            tracing::warn!(event = "command.finished", node_id = %app.config.node_id, command_id = %id, model = %order.id, code = %e.code, "{kind:?} of {} failed: {}", order.id, e.message);
            app.book.set(&id, CommandState::Failed, Some(e));
        }
    }
}

async fn deregister(app: &App, http: &reqwest::Client, session: &Session) {
    let url = format!(
        "{}/v2/nodes/{}",
        app.config.orchestrator_url, app.config.node_id
    );
    let mut req = http.delete(&url).timeout(Duration::from_secs(3));
    if let Some(c) = &session.credential {
        req = req.bearer_auth(c.expose());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => {
            tracing::info!(event = "node.deregistered", node_id = %app.config.node_id, "Deregistered node {}", app.config.node_id)
        }
        Ok(r) => {
            tracing::warn!(event = "node.deregister_failed", node_id = %app.config.node_id, "Deregistration answered {}", r.status())
        }
        Err(e) => {
            tracing::warn!(event = "node.deregister_failed", node_id = %app.config.node_id, "Deregistration failed: {e}")
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
