//! orchestratord: the llama-orch control plane. It admits tasks into bounded queues, keeps the
//! registry of worker nodes, places each task on a Ready pool, relays the worker's stream to
//! clients over SSE, and exposes metrics and JSON logs. `main` parses flags and config; [`run`] is
//! the daemon.

pub mod admission;
pub mod config;
pub mod core;
pub mod dispatch;
pub mod http;
pub mod metrics;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Serves until `shutdown` fires.
pub async fn run(cfg: Config, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(metrics::Metrics::default());
    let tracker = TaskTracker::new();
    let core = core::runner::spawn(cfg.clone(), metrics.clone(), &tracker, shutdown.clone());
    let app = Arc::new(http::AppState { cfg: cfg.clone(), core, metrics });
    let addr = listener.local_addr()?;
    tracing::info!(event = "orchd.started", "orchestratord listening on http://{addr} ({} mode)", if cfg.open_mode() { "open, loopback-only" } else { "token" });
    // Frames are small and latency-critical: no Nagle delay on any accepted connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, http::router(app)).with_graceful_shutdown(shutdown.clone().cancelled_owned()).await?;
    tracker.close();
    tracker.wait().await;
    tracing::info!(event = "orchd.stopped", "orchestratord stopped");
    Ok(())
}
