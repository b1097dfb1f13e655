//! The worker client (API.md §13): opens a dispatch stream to pool-managerd and relays its NDJSON
//! lines to the core as messages; calls the worker cancel route. orchestratord never speaks an
//! engine dialect: only these typed worker lines cross this boundary.

use std::time::Duration;

use api::worker::WorkerLine;
use api::{ErrorCode, ErrorEnvelope};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::runner::Msg;
use super::{CancelJob, DispatchJob, RelayEnd};

/// Runs one dispatch attempt to its end. Aborting this future drops the connection, which the
/// worker treats as a cancel.
pub async fn relay(
    job: DispatchJob,
    http: reqwest::Client,
    idle: Duration,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let (id, attempt) = (job.task, job.attempt);
    let ended = |end: RelayEnd| Msg::RelayEnded { id, attempt, end };
    let url = format!("{}/v2/pools/{}/dispatch", job.address, job.body.pool_id);
    let resp = http
        .post(&url)
        .bearer_auth(job.token.expose())
        .header(api::CORRELATION_HEADER, job.body.correlation_id.as_str())
        .header("accept", "application/x-ndjson")
        .json(&job.body)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(ended(RelayEnd::Unreachable(e.to_string())));
            return;
        }
    };
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let envelope = serde_json::from_str::<ErrorEnvelope>(&text)
            .ok()
            .unwrap_or_else(|| {
                let code = if status >= 500 {
                    ErrorCode::PoolUnavailable
                } else {
                    ErrorCode::Internal
                };
                ErrorEnvelope::new(code, format!("worker answered {status}"))
                    .with_retriable(status >= 500)
            });
        let _ = tx.send(ended(RelayEnd::Refused { status, envelope }));
        return;
    }
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(idle, body.next()).await {
            Err(_) => {
                let _ = tx.send(ended(RelayEnd::Idle(idle)));
                return;
            }
            Ok(None) => {
                let _ = tx.send(ended(RelayEnd::Closed));
                return;
            }
            Ok(Some(Err(e))) => {
                let _ = tx.send(ended(RelayEnd::Broken(e.to_string())));
                return;
            }
            Ok(Some(Ok(c))) => c,
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(parsed) = serde_json::from_slice::<WorkerLine>(&line[..line.len() - 1]) else {
                let _ = tx.send(ended(RelayEnd::Unreadable));
                return;
            };
            let terminal = parsed.event.is_terminal();
            let _ = tx.send(Msg::Worker {
                id,
                attempt,
                ev: parsed.event,
            });
            if terminal {
                return;
            }
        }
        if buf.len() > 1 << 20 {
            let _ = tx.send(ended(RelayEnd::OverLong));
            return;
        }
    }
}

/// Calls the worker cancel route; true when the worker confirmed the slot free (204).
pub async fn cancel(http: &reqwest::Client, job: &CancelJob) -> bool {
    let url = format!(
        "{}/v2/pools/{}/tasks/{}/cancel",
        job.address, job.pool_id, job.task
    );
    match http
        .post(&url)
        .bearer_auth(job.token.expose())
        .header(api::CORRELATION_HEADER, job.correlation_id.as_str())
        .timeout(Duration::from_secs(30))
        .send()
        .await
    {
        Ok(r) => r.status() == reqwest::StatusCode::NO_CONTENT,
        Err(e) => {
            tracing::warn!(event = "command.failed", correlation_id = %job.correlation_id, task_id = %job.task, tenant = job.tenant.as_ref().map_or("", |t| t.as_str()), pool_id = %job.pool_id, "Cancel call to the worker failed: {e}");
            false
        }
    }
}
