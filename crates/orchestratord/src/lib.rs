//! orchestratord: the llama-orch control plane. It admits tasks into bounded queues, keeps the
//! registry of worker nodes, places each task on a Ready pool, relays the worker's stream to
//! clients over SSE, and exposes metrics and JSON logs. `main` parses flags and config; [`run`] is
//! the daemon.

pub mod admission;
pub mod config;
pub mod core;
pub mod ha;
pub mod http;
pub mod metrics;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Re-reads the configuration (for token rotation on SIGHUP).
pub type Reloader = Box<dyn Fn() -> Result<Config, Vec<String>> + Send + Sync>;

/// Serves until `shutdown` fires. With a `reload`er, SIGHUP re-reads the config and rotates the
/// tokens (other settings need a restart); an invalid config is logged and changes nothing. With
/// `state.backend = "postgres"` the process first campaigns for the leadership of its HA group,
/// answering as a follower meanwhile (see [`ha`]).
pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    reload: Option<Reloader>,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    if cfg.ha().is_some() {
        return run_ha(cfg, listener, shutdown, reload).await;
    }
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
    let app = start_core(
        &cfg,
        catalog,
        core::store::Backend::Sqlite(store),
        None,
        &tracker,
        &shutdown,
        reload,
    )?;
    let addr = listener.local_addr()?;
    log_started(&cfg, addr);
    axum::serve(nodelay(listener), http::router(app))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    tracker.close();
    tracker.wait().await;
    tracing::info!(event = "orchd.stopped", "orchestratord stopped");
    Ok(())
}

/// The core, its store task and the HTTP state.
fn start_core(
    cfg: &Arc<Config>,
    catalog: catalog::Catalog,
    backend: core::store::Backend,
    takeover: Option<core::runner::Takeover>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    reload: Option<Reloader>,
) -> anyhow::Result<http::App> {
    let metrics = Arc::new(metrics::Metrics::default());
    let epoch = takeover.as_ref().map(|t| t.fence.epoch);
    let core = core::runner::spawn(
        cfg.clone(),
        metrics.clone(),
        catalog,
        backend,
        takeover,
        tracker,
        shutdown.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot build the HTTP client for workers: {e}"))?;
    let app = Arc::new(http::AppState {
        cfg: cfg.clone(),
        core,
        metrics,
        tokens: std::sync::RwLock::new(Arc::new(cfg.tokens())),
        epoch,
        closing: epoch.map(|_| shutdown.clone()),
    });
    if let Some(reload) = reload {
        tracker.spawn(rotate_on_sighup(app.clone(), reload, shutdown.clone()));
    }
    Ok(app)
}

fn log_started(cfg: &Config, addr: std::net::SocketAddr) {
    tracing::info!(
        event = "orchd.started",
        "orchestratord listening on http://{addr} ({} mode)",
        if cfg.open_mode() {
            "open, loopback-only"
        } else {
            "token"
        }
    );
}

/// Frames are small and latency-critical: no Nagle delay on any accepted connection.
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Addr = std::net::SocketAddr> {
    axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

/// An HA group member: follower until elected, then the leader until shutdown (which releases
/// the lock at once) or until it loses its lease, when it exits with status 3 so that a supervisor
/// restarts it as a follower with nothing stale in memory.
async fn run_ha(
    cfg: Arc<Config>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    reload: Option<Reloader>,
) -> anyhow::Result<()> {
    let ha = cfg.ha().cloned().expect("checked by run");
    let tracker = TaskTracker::new();
    let (leader, won) = ha::election::start(ha.clone(), shutdown.clone());
    let gate = ha::gate::Gate::new(leader, shutdown.clone());
    let addr = listener.local_addr()?;
    tracing::info!(event = "orchd.started", url = %ha.url,
        "orchestratord listening on http://{addr} as a member of an HA group (advertised as {})", ha.advertise_url);
    let serving = axum::serve(nodelay(listener), ha::gate::router(gate.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move { serving.await });
    let lead = tokio::select! {
        w = won => w.ok(),
        _ = shutdown.cancelled() => None,
    };
    let Some(lead) = lead else {
        let _ = server.await;
        tracing::info!(event = "orchd.stopped", "orchestratord stopped");
        return Ok(());
    };
    if lead.lost.is_cancelled() {
        anyhow::bail!("could not take the leadership");
    }
    let url = ha.url.expose().to_string();
    let loaded = tokio::task::spawn_blocking(move || {
        let mut pg = core::pgstate::PgState::open(&url)?;
        let records = pg.load_catalog()?;
        let tasks = pg.load_tasks(daemon::now_ms())?;
        Ok::<_, String>((pg, records, tasks))
    })
    .await?;
    let (pg, records, tasks) =
        loaded.map_err(|e| anyhow::anyhow!("cannot load the state from Postgres: {e}"))?;
    tracing::info!(
        event = "catalog.opened",
        "The model catalog in Postgres holds {} model(s)",
        records.len()
    );
    let catalog = catalog::Catalog::deferred_from(records, std::path::Path::new("postgres"));
    let app = start_core(
        &cfg,
        catalog,
        core::store::Backend::Postgres(pg),
        Some(core::runner::Takeover {
            fence: lead.fence.clone(),
            tasks,
        }),
        &tracker,
        &shutdown,
        reload,
    )?;
    gate.lead(http::router(app));
    tracing::info!(
        event = "ha.serving",
        epoch = lead.fence.epoch,
        "Serving as the leader (epoch {})",
        lead.fence.epoch
    );
    tokio::select! {
        _ = lead.lost.cancelled() => {
            tracing::error!(event = "ha.stepped_down", epoch = lead.fence.epoch,
                "Lost the leadership of epoch {}; exiting so a supervisor restarts this process as a follower", lead.fence.epoch);
            std::process::exit(3);
        }
        _ = shutdown.cancelled() => {}
    }
    let _ = server.await;
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
