//! Plumbing shared by both daemons: config loading with env overrides, JSON logs in the spec's
//! shape, the correlation-id layer, token fingerprints and comparison, and shutdown signals.

pub mod config;
pub mod correlation;
pub mod errors;
pub mod logging;
pub mod main_loop;
pub mod quiet;
pub mod secret;

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can only be killed; wait forever rather than exit.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Milliseconds since the Unix epoch (for `*_at_ms` fields only; durations use `Instant`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
