//! The worker API's accept loop. orchestratord multiplexes every dispatch stream to this node over
//! one HTTP/2 connection, so the server must allow as many concurrent streams as the node can run
//! tasks: hyper's default of 200 refused streams (and reset running ones) on a node with more
//! slots. Sockets get no Nagle delay (worker lines are small and latency-critical); shutdown is
//! graceful (connections finish their streams).

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

/// Concurrent HTTP/2 streams per connection: far above any node's slot count.
pub const MAX_CONCURRENT_STREAMS: u32 = 100_000;

/// Serves `router` on `listener` until `stop` fires, then waits for open connections to finish.
pub async fn worker_api(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let graceful = GracefulShutdown::new();
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                // Out of descriptors or a connection reset before accept: keep serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    graceful.shutdown().await;
    Ok(())
}
