//! pool-managerd: the worker daemon of one GPU machine. It provisions and supervises one
//! `llama-server` per pool, registers and heartbeats with orchestratord, and serves orchestratord's
//! dispatches through its llama.cpp adapter. `main` parses flags and config; [`run`] is the daemon.
//!
//! Module layering (no cycles): `config`, `gpu`, `commands` and `metrics` depend on no other
//! module here; `pools` and `frames` on those; `adapter`, `handoff`, `registration` and `node` on
//! `pools` and `frames`; `http` on `node` and `adapter`; only [`run`] sees them all.

pub mod adapter;
pub mod commands;
pub mod config;
pub mod frames;
pub mod gpu;
pub mod handoff;
pub mod http;
pub mod metrics;
pub mod node;
pub mod pools;
pub mod registration;
pub mod serve;
pub mod tokenize;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Runs the daemon until `shutdown` fires, then drains: refuse new dispatches, wait up to
/// `shutdown_grace` for running ones, deregister, stop the engines.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let engines_stop = CancellationToken::new();
    let pools = Arc::new(pools::PoolSet::default());
    let book = Arc::new(commands::CommandBook::default());
    let cache = models::ModelCache::new(models::CacheConfig {
        models_dir: config.models_dir.clone(),
        quota_bytes: config.models_max_bytes,
        hf_endpoint: config.hf_endpoint.clone(),
        hf_token: config.hf_token.as_ref().map(|t| t.expose().to_string()),
        extra_root_pem: config.fetch_ca_pem.clone(),
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the models cache {}: {e}",
            config.models_dir.display()
        )
    })?;
    let changed = Arc::new(tokio::sync::Notify::new());
    let env = |engine_source: Option<engine::EngineSource>| pools::SupervisorEnv {
        timings: config.engine.clone(),
        engines_dir: config.engines_dir.clone(),
        run_dir: config.run_dir.clone(),
        engine_source,
        node_id: config.node_id.clone(),
        book: book.clone(),
        cache: cache.clone(),
        changed: changed.clone(),
    };
    // Engines of this node's previous life (a crash of pool-managerd) go before new ones start.
    let prefix = format!("{}.", config.node_id);
    for pid in
        engine::process::stop_recorded(&config.run_dir, &prefix, config.engine.stop_grace).await
    {
        tracing::warn!(event = "engine.orphan_stopped", node_id = %config.node_id, pid = pid,
            "Stopped engine pid {pid} left running by a previous pool-managerd of node {}", config.node_id);
    }
    for spec in &config.pools {
        let source = config
            .engines
            .get(&spec.engine_source)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("engine source {} missing", spec.engine_source))?;
        pools.insert(pools::spawn(
            spec.clone(),
            env(Some(source)),
            engines_stop.clone(),
            &tracker,
        ));
    }
    let registrar = registration::Registrar::new(
        &config,
        pools.clone(),
        book.clone(),
        cache.clone(),
        tracker.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot build the HTTP client for orchestratord: {e}"))?
    .with_changes(changed.clone());
    let closing = CancellationToken::new();
    let node = Arc::new(node::Node {
        node_id: config.node_id.clone(),
        dispatch_token: config.dispatch_token.clone(),
        idle_timeout: config.engine.idle_timeout,
        cancel_confirm: config.engine.cancel_confirm,
        pools: pools.clone(),
        book: book.clone(),
        frames: Arc::new(
            frames::Frames::new(config.tasks.clone()).with_lost_leader(changed.clone()),
        ),
        tracker: tracker.clone(),
        closing: closing.clone(),
    });
    let reg_stop = CancellationToken::new();
    let reg = tokio::spawn(registration::run(Arc::new(registrar), reg_stop.clone()));
    let adopter = handoff::Adopter {
        dir: config.handoff_dir.clone(),
        node_id: config.node_id.clone(),
        pools: pools.clone(),
        env: env(None),
        tracker: tracker.clone(),
        shutdown: engines_stop.clone(),
    };
    tracker.spawn(handoff::watch(adopter, engines_stop.clone()));
    let server_stop = CancellationToken::new();
    let server = {
        let stop = server_stop.clone();
        let router = http::router(node.clone());
        tokio::spawn(serve::worker_api(listener, router, stop))
    };
    tracing::info!(event = "node.started", node_id = %config.node_id, "pool-managerd {} serving the worker API at {}", config.node_id, config.advertise_url);

    shutdown.cancelled().await;
    tracing::info!(event = "node.stopping", node_id = %config.node_id, "Shutting down: refusing new dispatches and waiting for running tasks");
    closing.cancel();
    let until = Instant::now() + config.shutdown_grace;
    while pools.running() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reg_stop.cancel();
    let _ = reg.await;
    engines_stop.cancel();
    tracker.close();
    tracker.wait().await;
    server_stop.cancel();
    let _ = server.await;
    tracing::info!(event = "node.stopped", node_id = %config.node_id, "pool-managerd stopped");
    Ok(())
}
