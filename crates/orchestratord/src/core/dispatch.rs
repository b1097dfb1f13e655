//! The worker client (API.md §13): opens a dispatch stream to pool-managerd and relays its NDJSON
//! lines to the core as messages; calls the worker cancel and tokenize routes. orchestratord never speaks an
//! engine dialect: only these typed worker lines cross this boundary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api::worker::WorkerLine;
use api::{ErrorCode, ErrorEnvelope};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::runner::Msg;
use super::store::Durable;
use super::{CancelJob, DispatchJob, RelayEnd, TokenizeJob};

/// An HA leader's fencing token: its epoch, sent on every worker call, and how long its lease is
/// known to hold by its own clock. A leader whose lease lapsed (it was paused, say) sends nothing:
/// a successor may already have taken over, and workers refuse its older epoch anyway.
#[derive(Debug)]
pub struct Fence {
    pub epoch: u64,
    base: Instant,
    /// Milliseconds after `base` until which the lease holds.
    valid_until_ms: AtomicU64,
}

impl Fence {
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            base: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
        }
    }

    /// The lease was renewed at `at` (before the renewal was sent) for `lease`.
    pub fn renewed(&self, at: Instant, lease: Duration) {
        let until = at.saturating_duration_since(self.base) + lease;
        self.valid_until_ms
            .fetch_max(until.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn valid(&self) -> bool {
        (self.base.elapsed().as_millis() as u64) < self.valid_until_ms.load(Ordering::SeqCst)
    }
}

/// Whether the relay may act: with a fence, only after the task's row is committed and while the
/// lease holds.
async fn may_act(fence: Option<&Fence>, durable: Option<Durable>) -> Result<(), String> {
    if let Some(d) = durable {
        d.wait()
            .await
            .map_err(|e| format!("the task's state was not committed: {}", e.message))?;
    }
    match fence {
        Some(f) if !f.valid() => Err(format!(
            "this orchestratord's lease as leader (epoch {}) lapsed",
            f.epoch
        )),
        _ => Ok(()),
    }
}

/// Runs one dispatch attempt to its end. Aborting this future drops the connection, which the
/// worker treats as a cancel.
pub async fn relay(
    job: DispatchJob,
    http: reqwest::Client,
    idle: Duration,
    tx: mpsc::UnboundedSender<Msg>,
    fence: Option<std::sync::Arc<Fence>>,
    durable: Option<Durable>,
) {
    let (id, attempt) = (job.task, job.attempt);
    let ended = |end: RelayEnd| Msg::RelayEnded { id, attempt, end };
    if let Err(why) = may_act(fence.as_deref(), durable).await {
        tracing::error!(event = "ha.dispatch_withheld", task_id = %id, "Not dispatching task {id}: {why}");
        let _ = tx.send(ended(RelayEnd::Unreachable(why)));
        return;
    }
    let url = format!("{}/v2/pools/{}/dispatch", job.address, job.body.pool_id);
    let mut req = http.post(&url);
    if let Some(f) = &fence {
        req = req.header(api::EPOCH_HEADER, f.epoch);
    }
    if job.reattach_only {
        req = req.header(api::REATTACH_HEADER, "1");
    }
    let resp = req
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
    let mut quiet = daemon::quiet::Quiet::new(idle);
    loop {
        let next = tokio::select! {
            biased;
            c = body.next() => Ok(c),
            _ = quiet.elapsed() => Err(()),
        };
        quiet.touch();
        let chunk = match next {
            Err(()) => {
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
        // Lines are parsed in place; the consumed bytes leave the buffer once per chunk.
        let mut start = 0;
        while let Some(off) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + off];
            start += off + 1;
            let Ok(parsed) = serde_json::from_slice::<WorkerLine>(line) else {
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
        buf.drain(..start);
        if buf.len() > 1 << 20 {
            let _ = tx.send(ended(RelayEnd::OverLong));
            return;
        }
    }
}

/// Calls the worker cancel route; true when the worker confirmed the slot free (204).
pub async fn cancel(http: &reqwest::Client, job: &CancelJob, fence: Option<&Fence>) -> bool {
    if let Err(why) = may_act(fence, None).await {
        tracing::error!(event = "ha.dispatch_withheld", task_id = %job.task, "Not canceling task {} on its worker: {why}", job.task);
        return false;
    }
    let url = format!(
        "{}/v2/pools/{}/tasks/{}/cancel",
        job.address, job.pool_id, job.task
    );
    let mut req = http.post(&url);
    if let Some(f) = fence {
        req = req.header(api::EPOCH_HEADER, f.epoch);
    }
    match req
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

/// Calls the worker tokenize route: the task's prompt token ids, or why there are none. Not
/// fenced: it changes nothing on the worker.
pub async fn tokenize(http: &reqwest::Client, job: &TokenizeJob) -> Result<Vec<u32>, String> {
    let url = format!("{}/v2/pools/{}/tokenize", job.address, job.pool_id);
    let resp = http
        .post(&url)
        .bearer_auth(job.token.expose())
        .header(api::CORRELATION_HEADER, job.correlation_id.as_str())
        .timeout(Duration::from_secs(10))
        .json(&job.body)
        .send()
        .await
        .map_err(|e| format!("worker unreachable: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(match serde_json::from_str::<ErrorEnvelope>(&text) {
            Ok(env) => format!("worker answered {status}: {}", env.message),
            Err(_) => format!("worker answered {status}"),
        });
    }
    resp.json::<api::worker::TokenizeResponse>()
        .await
        .map(|r| r.tokens)
        .map_err(|e| format!("unreadable tokenize answer: {e}"))
}
