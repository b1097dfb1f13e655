//! `GET /v2/events`: the cluster change stream. The core's bus hands each reader the frames it
//! missed (after `Last-Event-ID`) and a bounded live buffer; this handler only writes them out,
//! with a keepalive comment when nothing happened for `streams.keepalive_ms`.

use std::convert::Infallible;

use api::ErrorEnvelope;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use daemon::errors::ApiError;

use super::{unavailable, App};
use crate::core::bus::Feed;
use crate::core::runner::Msg;

pub async fn stream(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    let last_seen = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ErrorEnvelope::invalid("Last-Event-ID", "must be an event id (a number)")
                })?,
        ),
    };
    let Feed { replay, live } = app
        .core
        .ask(|reply| Msg::Events { last_seen, reply })
        .await
        .ok_or_else(unavailable)?;
    let keepalive = app.cfg.keepalive;
    let first: String = replay.iter().map(|f| &*f.text).collect();
    // `retry` tells EventSource how soon to reconnect after the server ends the stream (overflow).
    let first = Bytes::from(format!("retry: 1000\n\n{first}"));
    let stream =
        futures::stream::unfold((Some(first), live), move |(first, mut live)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, Infallible>(first), (None, live)));
            }
            match tokio::time::timeout(keepalive, live.recv()).await {
                Ok(Some(frame)) => {
                    let mut chunk = String::from(&*frame.text);
                    // Whatever else is already buffered goes out in the same write.
                    while let Ok(f) = live.try_recv() {
                        chunk.push_str(&f.text);
                    }
                    Some((Ok(Bytes::from(chunk)), (None, live)))
                }
                Ok(None) => None,
                Err(_) => Some((Ok(Bytes::from_static(b": keepalive\n\n")), (None, live))),
            }
        });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
