//! One request: route lookup, bearer check, the Hugging Face redirect, `HEAD`, `Range` and the
//! body stream with its fault knobs (interrupt, corrupt, failing GETs) and counters.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{Entry, Route, Shared};

const CHUNK: usize = 64 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

fn status(code: StatusCode, msg: &'static str) -> Response {
    (code, msg).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let route: Option<Route> = {
        let routes = shared.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(uri.path()).cloned()
    };
    let Some(Route { entry, is_cdn }) = route else {
        return status(StatusCode::NOT_FOUND, "not found\n");
    };
    if method != Method::GET && method != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
    }
    if let (Some(token), false) = (&shared.opts.token, is_cdn) {
        let expected = format!("Bearer {token}");
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            let mut resp = status(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required\n",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    if let (Some(cdn), true, false) = (&entry.cdn_path, shared.opts.hf_redirect, is_cdn) {
        let mut resp = status(StatusCode::FOUND, "");
        if let Ok(v) = HeaderValue::from_str(cdn) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return resp;
    }
    let meta = match tokio::fs::metadata(&entry.local).await {
        Ok(m) if m.is_file() => m,
        _ => return status(StatusCode::NOT_FOUND, "registered file is missing\n"),
    };
    let len = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let etag = format!(
        "\"{len:x}-{mtime:x}{}\"",
        if shared.opts.corrupt { "-c" } else { "" }
    );

    if method == Method::GET && entry.failed.load(Ordering::SeqCst) < shared.opts.fail_first {
        entry.failed.fetch_add(1, Ordering::SeqCst);
        return status(StatusCode::SERVICE_UNAVAILABLE, "failing on purpose\n");
    }

    let start = match parse_range(&headers) {
        Ok(None) => None,
        Ok(Some(start)) if start < len => Some(start),
        Ok(Some(_)) => {
            let mut resp = status(StatusCode::RANGE_NOT_SATISFIABLE, "");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
        Err(()) => {
            return status(
                StatusCode::BAD_REQUEST,
                "only Range: bytes=N- is supported\n",
            )
        }
    };
    let from = start.unwrap_or(0);

    let mut builder = Response::builder()
        .header(header::CONTENT_LENGTH, len - from)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    builder = match start {
        Some(s) => builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {s}-{}/{len}", len - 1),
        ),
        None => builder.status(StatusCode::OK),
    };
    if method == Method::HEAD {
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, ""));
    }

    let file = match tokio::fs::File::open(&entry.local).await {
        Ok(f) => f,
        Err(_) => return status(StatusCode::NOT_FOUND, "registered file is missing\n"),
    };
    entry.gets.fetch_add(1, Ordering::SeqCst);
    let limit = match shared.opts.interrupt_after {
        Some(n) if !entry.interrupted.swap(true, Ordering::SeqCst) => Some(n),
        _ => None,
    };
    let body = BodyState {
        file,
        entry: entry.clone(),
        pos: from,
        end: len,
        started: false,
        sent: 0,
        limit,
        corrupt_at: shared.opts.corrupt.then_some(len / 2),
    };
    let stream = futures::stream::unfold(body, |mut st| async move {
        match st.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), st)),
            Ok(None) => None,
            Err(e) => {
                st.pos = st.end; // end the stream after the error
                Some((Err(e), st))
            }
        }
    });
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, ""))
}

/// `Range: bytes=N-` (also `bytes=N-M`, served as `N-`): `Ok(None)` without the header, `Err` for
/// anything else.
fn parse_range(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?;
    let spec = v.strip_prefix("bytes=").ok_or(())?;
    let (start, _end) = spec.split_once('-').ok_or(())?;
    start.trim().parse::<u64>().map(Some).map_err(|_| ())
}

struct BodyState {
    file: tokio::fs::File,
    entry: Arc<Entry>,
    pos: u64,
    end: u64,
    started: bool,
    sent: u64,
    limit: Option<u64>,
    corrupt_at: Option<u64>,
}

impl BodyState {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        if !self.started {
            self.file.seek(io::SeekFrom::Start(self.pos)).await?;
            self.started = true;
        }
        let mut want = (self.end - self.pos).min(CHUNK as u64);
        if let Some(limit) = self.limit {
            if self.sent >= limit {
                // Let the connection flush what was sent (it keeps writing while the body is
                // pending), then fail the body, which makes the server drop the connection.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "fileserver: interrupted on purpose",
                ));
            }
            want = want.min(limit - self.sent);
        }
        let mut buf = vec![0u8; usize::try_from(want).unwrap_or(CHUNK)];
        let n = self.file.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "fileserver: file shrank",
            ));
        }
        buf.truncate(n);
        if let Some(at) = self.corrupt_at {
            if (self.pos..self.pos + n as u64).contains(&at) {
                let i = usize::try_from(at - self.pos).unwrap_or(0);
                buf[i] ^= 0xFF;
            }
        }
        self.pos += n as u64;
        self.sent += n as u64;
        self.entry.bytes_sent.fetch_add(n as u64, Ordering::SeqCst);
        Ok(Some(Bytes::from(buf)))
    }
}
