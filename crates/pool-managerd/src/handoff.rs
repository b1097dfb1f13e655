//! Handoff adoption: engines started outside pool-managerd (`llorch engine start`) offer
//! themselves through files in the handoff directory. A file is adopted when its process is alive
//! with the recorded start time and its engine answers with the recorded shape; the pool is
//! dropped when the process dies, its start time changes or the file goes away. Stale files are
//! ignored with one log line each.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::node::PoolState;
use engine::handoff::{scan, HandoffFile};
use engine::{ApiKey, EngineClient, GpuPolicy};
use tokio_util::sync::CancellationToken;

use crate::config::PoolSpec;
use crate::http::App;

/// Polls the handoff directory every second until `stop`.
pub async fn watch(app: Arc<App>, stop: CancellationToken) {
    let dir = app.config.handoff_dir.clone();
    let mut adopted: BTreeMap<
        String,
        (
            PathBuf,
            HandoffFile,
            tokio::sync::watch::Sender<crate::pools::PoolSnapshot>,
        ),
    > = BTreeMap::new();
    let mut ignored: BTreeSet<PathBuf> = BTreeSet::new();
    let mut health_tick = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => break,
        }
        health_tick += 1;
        drop_dead(&app, &mut adopted, health_tick.is_multiple_of(5)).await;
        for (path, parsed) in scan(&dir) {
            let file = match parsed {
                Ok(f) => f,
                Err(why) => {
                    if ignored.insert(path.clone()) {
                        tracing::warn!(event = "handoff.ignored", path = %path.display(), "Ignoring handoff file {}: {why}", path.display());
                    }
                    continue;
                }
            };
            if adopted.contains_key(&file.pool_id) || ignored.contains(&path) {
                continue;
            }
            match adopt(&app, &file).await {
                Ok(tx) => {
                    tracing::info!(event = "handoff.adopted", pool_id = %file.pool_id, node_id = %app.config.node_id, pid = file.pid,
                        "Adopted the engine of pool {} (pid {}) from {}", file.pool_id, file.pid, path.display());
                    adopted.insert(file.pool_id.clone(), (path, file, tx));
                }
                Err(why) => {
                    ignored.insert(path.clone());
                    tracing::warn!(event = "handoff.ignored", path = %path.display(), pool_id = %file.pool_id, "Ignoring stale handoff file {}: {why}", path.display());
                }
            }
        }
        // A rewritten file (new engine) gets a fresh look.
        ignored.retain(|p| p.exists() && settled(p));
    }
    for (id, (_, _, tx)) in adopted {
        tx.send_modify(|s| s.state = PoolState::Unloaded);
        app.pools.remove(&id);
    }
}

/// True for a file unchanged for 2 s: only those stay ignored, a rewritten one is looked at again.
fn settled(p: &std::path::Path) -> bool {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .map(|t| {
            t.elapsed()
                .map(|e| e > Duration::from_secs(2))
                .unwrap_or(true)
        })
        .unwrap_or(false)
}

async fn adopt(
    app: &App,
    f: &HandoffFile,
) -> Result<tokio::sync::watch::Sender<crate::pools::PoolSnapshot>, String> {
    let pool_id: api::PoolId = f.pool_id.parse().map_err(|e: api::IdError| e.0)?;
    if app.pools.get(pool_id.as_str()).is_some() {
        return Err(format!("pool {pool_id} already exists on this node"));
    }
    if !f.process_matches() {
        return Err(format!(
            "process {} is gone or is not the one that wrote the file",
            f.pid
        ));
    }
    if !f.url.starts_with("http://127.0.0.1:") && !f.url.starts_with("http://localhost:") {
        return Err("engines must listen on loopback".into());
    }
    let key = std::fs::read_to_string(&f.api_key_file)
        .map_err(|e| format!("cannot read the key file {}: {e}", f.api_key_file.display()))?;
    let client = EngineClient::new(f.url.clone(), ApiKey::from_secret(key.trim().to_string()));
    if !client.health().await.unwrap_or(false) {
        return Err("the engine is not healthy".into());
    }
    let props = client.props().await.map_err(|e| e.to_string())?;
    let slots = client.slots().await.map_err(|e| e.to_string())?;
    if props.total_slots != f.slots || slots.iter().any(|s| s.n_ctx != f.ctx_per_slot) {
        return Err(format!(
            "the engine reports {} slots of {:?} tokens, the file says {} of {}",
            props.total_slots,
            slots.iter().map(|s| s.n_ctx).collect::<Vec<_>>(),
            f.slots,
            f.ctx_per_slot
        ));
    }
    let model_id: api::ModelId = f.model.id.parse().map_err(|e: api::IdError| e.0)?;
    let model_ref =
        api::model_ref::ModelRef::parse(&f.model.model_ref).map_err(|e| e.to_string())?;
    if !matches!(model_ref, api::model_ref::ModelRef::File { .. }) {
        return Err(format!(
            "handoff models are local files (file:/…), not {}",
            f.model.model_ref
        ));
    }
    // Hash the engine's model file, so the catalog can tell it is the model it names.
    let fetched = app
        .cache
        .fetch(&model_ref, None, &|_| {})
        .await
        .map_err(|e| format!("the model file: {e}"))?;
    let model = crate::pools::ModelInfo {
        id: model_id.clone(),
        model_ref: model_ref.to_string(),
        path: fetched.path,
        digest: Some(fetched.digest),
        size_bytes: Some(fetched.size_bytes),
        metadata: Some(fetched.metadata),
    };
    let spec = PoolSpec {
        id: pool_id,
        model: Some(crate::config::ModelSpec {
            id: model_id,
            model_ref,
            digest: None,
        }),
        provisioning_target: false,
        ctx_per_slot: f.ctx_per_slot,
        slots: f.slots,
        device_mask: "cpu".into(),
        gpu_policy: GpuPolicy::Cpu,
        engine_source: "handoff".into(),
        extra_args: vec![],
    };
    let (pool, tx) = crate::pools::adopted(spec, model, client, props.build_info);
    app.pools.insert(pool);
    Ok(tx)
}

/// Drops adopted pools whose process died, changed, lost its file, or (every 5 s) fails /health.
async fn drop_dead(
    app: &App,
    adopted: &mut BTreeMap<
        String,
        (
            PathBuf,
            HandoffFile,
            tokio::sync::watch::Sender<crate::pools::PoolSnapshot>,
        ),
    >,
    check_health: bool,
) {
    let mut dead = vec![];
    for (id, (path, file, _)) in adopted.iter() {
        let why = if !file.process_matches() {
            Some(format!("its process {} is gone", file.pid))
        } else if !path.exists() {
            Some("its handoff file was removed".to_string())
        } else if check_health {
            let client = app
                .pools
                .get(id)
                .and_then(|p| p.snapshot.borrow().client.clone());
            match client {
                Some(c) if c.health().await.unwrap_or(false) => None,
                _ => Some("its engine stopped answering /health".to_string()),
            }
        } else {
            None
        };
        if let Some(why) = why {
            dead.push((id.clone(), why));
        }
    }
    for (id, why) in dead {
        if let Some((_, _, tx)) = adopted.remove(&id) {
            tx.send_modify(|s| {
                s.state = PoolState::Unloaded;
                s.client = None;
                s.last_error = Some(why.clone());
            });
        }
        if let Some(p) = app.pools.get(&id) {
            p.abort_inflight();
        }
        app.pools.remove(&id);
        tracing::warn!(event = "handoff.dropped", pool_id = %id, node_id = %app.config.node_id, "Dropped adopted pool {id}: {why}");
    }
}
