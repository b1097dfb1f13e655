//! orchestratord: the llama-orch control plane. It admits tasks into bounded queues, keeps the
//! registry of worker nodes, places each task on a Ready pool, relays the worker's stream to
//! clients over SSE, and exposes metrics and JSON logs. `main` parses flags and config; [`run`] is
//! the daemon.

pub mod admission;
pub mod config;
pub mod core;
pub mod http;
pub mod metrics;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Re-reads the configuration (for token rotation on SIGHUP).
pub type Reloader = Box<dyn Fn() -> Result<Config, Vec<String>> + Send + Sync>;

/// Serves until `shutdown` fires. With a `reload`er, SIGHUP re-reads the config and rotates the
/// tokens (other settings need a restart); an invalid config is logged and changes nothing.
pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    reload: Option<Reloader>,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(metrics::Metrics::default());
    let tracker = TaskTracker::new();
    let (catalog, store) = catalog::Catalog::open_deferred(&cfg.catalog_db).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the model catalog {}: {e}",
            cfg.catalog_db.display()
        )
    })?;
    tracing::info!(
        event = "catalog.opened",
        "Model catalog {} holds {} model(s)",
        cfg.catalog_db.display(),
        catalog.list().len()
    );
    let core = core::runner::spawn(
        cfg.clone(),
        metrics.clone(),
        catalog,
        store,
        &tracker,
        shutdown.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot build the HTTP client for workers: {e}"))?;
    let app = Arc::new(http::AppState {
        cfg: cfg.clone(),
        core,
        metrics,
        tokens: std::sync::RwLock::new(Arc::new(cfg.tokens())),
    });
    if let Some(reload) = reload {
        tracker.spawn(rotate_on_sighup(app.clone(), reload, shutdown.clone()));
    }
    let addr = listener.local_addr()?;
    tracing::info!(
        event = "orchd.started",
        "orchestratord listening on http://{addr} ({} mode)",
        if cfg.open_mode() {
            "open, loopback-only"
        } else {
            "token"
        }
    );
    // Frames are small and latency-critical: no Nagle delay on any accepted connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    tracker.close();
    tracker.wait().await;
    tracing::info!(event = "orchd.stopped", "orchestratord stopped");
    Ok(())
}

async fn rotate_on_sighup(app: http::App, reload: Reloader, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.cancelled() => return,
        }
        match reload() {
            Ok(cfg) if cfg.bind != app.cfg.bind => tracing::error!(
                event = "auth.reload_failed",
                "Not reloading: server.bind changed; restart to change it"
            ),
            Ok(cfg) => {
                // The whole token set is swapped at once; tenants' limits and weights follow.
                app.core.send(core::runner::Msg::SetTenants {
                    policies: cfg.tenant_policies(),
                });
                app.rotate(cfg.tokens());
            }
            Err(problems) => tracing::error!(
                event = "auth.reload_failed",
                "Not reloading, the configuration has problems: {}",
                problems.join("; ")
            ),
        }
    }
}
