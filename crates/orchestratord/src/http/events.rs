//! `GET /v2/events`: the cluster change stream. The core's bus hands each reader the frames it
//! missed (after `Last-Event-ID`) and a bounded live buffer; this handler only writes them out,
//! with a keepalive comment when nothing happened for `streams.keepalive_ms`.

use std::convert::Infallible;

use api::ErrorEnvelope;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Extension;
use daemon::errors::ApiError;

use super::{unavailable, App, Caller};
use crate::core::bus::Feed;
use crate::core::runner::Msg;

pub async fn stream(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Task events go to their tenant and to admins only (decision 53).
    let scope = caller.scope();
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
    let first: String = replay
        .iter()
        .filter(|f| f.visible_to(&scope))
        .map(|f| &*f.text)
        .collect();
    // `retry` tells EventSource how soon to reconnect after the server ends the stream (overflow).
    let first = Bytes::from(format!("retry: 1000\n\n{first}"));
    let stream = futures::stream::unfold(
        (Some(first), live, scope),
        move |(first, mut live, scope)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, Infallible>(first), (None, live, scope)));
            }
            loop {
                match tokio::time::timeout(keepalive, live.recv()).await {
                    Ok(Some(frame)) => {
                        // Whatever else is already buffered goes out in the same write; frames
                        // this reader may not see are skipped.
                        let chunk: String = std::iter::once(frame)
                            .chain(std::iter::from_fn(|| live.try_recv().ok()))
                            .filter(|f| f.visible_to(&scope))
                            .map(|f| f.text)
                            .collect::<Vec<_>>()
                            .concat();
                        if !chunk.is_empty() {
                            return Some((Ok(Bytes::from(chunk)), (None, live, scope)));
                        }
                    }
                    Ok(None) => return None,
                    Err(_) => {
                        return Some((
                            Ok(Bytes::from_static(b": keepalive\n\n")),
                            (None, live, scope),
                        ))
                    }
                }
            }
        },
    );
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
