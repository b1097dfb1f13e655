//! Handoff adoption: engines started outside pool-managerd (`llorch engine start`) offer
//! themselves through files in the handoff directory. A file is adopted when its process is alive
//! with the recorded start time and its engine answers with the recorded shape; the pool is
//! dropped when the process dies, its start time changes or the file goes away. Stale files are
//! ignored with one log line each.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use engine::handoff::{scan, HandoffFile};
use engine::{ApiKey, EngineClient, GpuPolicy};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::PoolSpec;
use crate::pools::{PoolSet, SupervisorEnv};

/// What the handoff watcher needs: the directory, the node's pools and what an adopted pool's
/// supervisor needs.
pub struct Adopter {
    pub dir: PathBuf,
    pub node_id: api::NodeId,
    pub pools: Arc<PoolSet>,
    pub env: SupervisorEnv,
    pub tracker: TaskTracker,
    /// Ends the adopted pools' supervisors (the engines themselves are not ours to stop).
    pub shutdown: CancellationToken,
}

type Adopted = BTreeMap<api::PoolId, (PathBuf, HandoffFile)>;

/// Polls the handoff directory every second until `stop`.
pub async fn watch(app: Adopter, stop: CancellationToken) {
    let app = &app;
    let dir = app.dir.clone();
    let mut adopted: Adopted = BTreeMap::new();
    let mut ignored: BTreeSet<PathBuf> = BTreeSet::new();
    let mut health_tick = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => break,
        }
        health_tick += 1;
        drop_dead(app, &mut adopted, health_tick.is_multiple_of(5)).await;
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
            if adopted.contains_key(file.pool_id.as_str()) || ignored.contains(&path) {
                continue;
            }
            match adopt(app, &file).await {
                Ok(pool_id) => {
                    tracing::info!(event = "handoff.adopted", pool_id = %pool_id, node_id = %app.node_id, pid = file.pid,
                        "Adopted the engine of pool {} (pid {}) from {}", pool_id, file.pid, path.display());
                    adopted.insert(pool_id, (path, file));
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
    for id in adopted.keys() {
        if let Some(p) = app.pools.get(id) {
            p.abandon("pool-managerd is stopping".into());
        }
        app.pools.remove(id);
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

/// What a handoff file names, checked without touching the process or the engine.
#[derive(Debug, PartialEq)]
struct Named {
    pool_id: api::PoolId,
    model_id: api::ModelId,
    model_ref: api::model_ref::ModelRef,
}

/// Checks the file's own fields: ids, a loopback engine URL, a local (`file:`) model.
fn check_file(f: &HandoffFile) -> Result<Named, String> {
    let pool_id: api::PoolId = f.pool_id.parse().map_err(|e: api::IdError| e.0)?;
    if !is_loopback_http(&f.url) {
        return Err("engines must listen on loopback".into());
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
    Ok(Named {
        pool_id,
        model_id,
        model_ref,
    })
}

/// True for `http://127.0.0.1:<port>` or `http://localhost:<port>` with nothing that could send
/// the engine key elsewhere (no user info such as `http://127.0.0.1:1@elsewhere`).
fn is_loopback_http(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    u.scheme() == "http"
        && u.username().is_empty()
        && u.password().is_none()
        && matches!(u.host_str(), Some("127.0.0.1" | "localhost"))
        && u.port().is_some()
}

/// True when the engine's slots are the ones the file promises.
fn shape_matches(f: &HandoffFile, total_slots: u32, slot_ctx: &[u64]) -> Result<(), String> {
    if total_slots != f.slots || slot_ctx.iter().any(|c| *c != f.ctx_per_slot) {
        return Err(format!(
            "the engine reports {total_slots} slots of {slot_ctx:?} tokens, the file says {} of {}",
            f.slots, f.ctx_per_slot
        ));
    }
    Ok(())
}

/// Adopts the engine `f` describes as a pool; returns the pool's id.
async fn adopt(app: &Adopter, f: &HandoffFile) -> Result<api::PoolId, String> {
    let Named {
        pool_id,
        model_id,
        model_ref,
    } = check_file(f)?;
    if app.pools.get(&pool_id).is_some() {
        return Err(format!("pool {pool_id} already exists on this node"));
    }
    if !f.process_matches() {
        return Err(format!(
            "process {} is gone or is not the one that wrote the file",
            f.pid
        ));
    }
    let key = std::fs::read_to_string(&f.api_key_file)
        .map_err(|e| format!("cannot read the key file {}: {e}", f.api_key_file.display()))?;
    let client = EngineClient::new(f.url.clone(), ApiKey::from_secret(key.trim().to_string()))
        .map_err(|e| e.to_string())?;
    if !client.health().await.unwrap_or(false) {
        return Err("the engine is not healthy".into());
    }
    let props = client.props().await.map_err(|e| e.to_string())?;
    let slots = client.slots().await.map_err(|e| e.to_string())?;
    let slot_ctx: Vec<u64> = slots.iter().map(|s| s.n_ctx).collect();
    shape_matches(f, props.total_slots, &slot_ctx)?;
    // Hash the engine's model file, so the catalog can tell it is the model it names.
    let fetched = app
        .env
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
        id: pool_id.clone(),
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
        workload: api::task::Workload::Completion,
    };
    let pool = crate::pools::adopt(
        spec,
        app.env.clone(),
        model,
        client,
        props.build_info,
        app.shutdown.clone(),
        &app.tracker,
    );
    app.pools.insert(pool);
    Ok(pool_id)
}

/// Drops adopted pools whose process died, changed, lost its file, or (every 5 s) fails /health.
async fn drop_dead(app: &Adopter, adopted: &mut Adopted, check_health: bool) {
    let mut dead = vec![];
    for (id, (path, file)) in adopted.iter() {
        let why = if !file.process_matches() {
            Some(format!("its process {} is gone", file.pid))
        } else if !path.exists() {
            Some("its handoff file was removed".to_string())
        } else if check_health {
            let client = app.pools.get(id).and_then(|p| p.view().client);
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
        adopted.remove(&id);
        if let Some(p) = app.pools.get(&id) {
            p.abandon(why.clone());
        }
        app.pools.remove(&id);
        tracing::warn!(event = "handoff.dropped", pool_id = %id, node_id = %app.node_id, "Dropped adopted pool {id}: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::handoff::HandoffModel;

    fn file(edit: impl FnOnce(&mut HandoffFile)) -> HandoffFile {
        let mut f = HandoffFile {
            pool_id: "adopted0".into(),
            url: "http://127.0.0.1:8123".into(),
            pid: 1,
            start_time: 1,
            model: HandoffModel {
                id: "m1".into(),
                model_ref: "file:/models/m1.gguf".into(),
            },
            slots: 2,
            ctx_per_slot: 1024,
            engine_version: "b1".into(),
            api_key_file: "/keys/adopted0.key".into(),
        };
        edit(&mut f);
        f
    }

    /// Checks a file: `Ok` or an error containing `why`.
    fn check(f: HandoffFile, why: Option<&str>) {
        match (check_file(&f), why) {
            (Ok(named), None) => {
                assert_eq!(named.pool_id.as_str(), f.pool_id);
                assert_eq!(named.model_id.as_str(), f.model.id);
            }
            (Err(e), Some(why)) => assert!(e.contains(why), "{e}"),
            (got, want) => panic!("{:?}: got {got:?}, want {want:?}", f.pool_id),
        }
    }

    #[test]
    fn handoff_files_are_checked_before_adoption() {
        check(file(|_| {}), None);
        check(file(|f| f.url = "http://localhost:9000".into()), None);
        check(
            file(|f| f.url = "http://10.0.0.5:8123".into()),
            Some("loopback"),
        );
        check(
            file(|f| f.url = "https://127.0.0.1:8123".into()),
            Some("loopback"),
        );
        check(
            file(|f| f.url = "http://127.0.0.1:1@evil.example".into()),
            Some("loopback"),
        );
        check(
            file(|f| f.url = "http://127.0.0.1.evil.example:1".into()),
            Some("loopback"),
        );
        check(
            file(|f| f.model.model_ref = "hf:org/repo/m.gguf".into()),
            Some("local files"),
        );
        check(file(|f| f.model.model_ref = "nonsense".into()), Some(""));
        check(file(|f| f.pool_id = "bad id!".into()), Some(""));
        check(file(|f| f.model.id = "".into()), Some(""));
    }

    #[test]
    fn the_engine_must_have_the_shape_the_file_promises() {
        let f = file(|_| {});
        assert!(shape_matches(&f, 2, &[1024, 1024]).is_ok());
        let e = shape_matches(&f, 1, &[1024]).unwrap_err();
        assert!(
            e.contains("1 slots") && e.contains("the file says 2 of 1024"),
            "{e}"
        );
        assert!(shape_matches(&f, 2, &[1024, 512]).is_err());
    }
}
