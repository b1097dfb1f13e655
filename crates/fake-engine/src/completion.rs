//! Test-only: `POST /completion` of fake-engine. Streams visibly synthetic tokens (`"tok0 "`,
//! `"tok1 "`, …) as llama-server SSE frames, holding a slot for the life of the stream, with the
//! fault knobs (token delay, hold file, crash mid-stream, injected failure status) applied.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::server::{error_response, error_with_type, AppState};

/// Exit code of a simulated crash (`FAKE_CRASH_AFTER_TOKENS`).
pub const CRASH_EXIT_CODE: i32 = 3;
/// Seed reported when the request names none (llama.cpp's `LLAMA_DEFAULT_SEED`).
pub const DEFAULT_SEED: u64 = 4_294_967_295;

/// What one request will produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Tokens to generate.
    pub n: u64,
    /// Prompt "tokens" (whitespace-separated words, or the length of a token array).
    pub prompt_n: u64,
    /// `"limit"` when `n_predict` cut generation short, else `"eos"`.
    pub stop_type: &'static str,
    pub seed: u64,
}

/// Validates a request body and decides what to generate. `Err` is an HTTP error reply.
pub fn plan(
    body: &[u8],
    tokens: u64,
    ctx_per_slot: u64,
) -> Result<Plan, (StatusCode, String, Option<&'static str>)> {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_string(), None);
    let req: Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("invalid JSON body: {e}")))?;
    if !req.is_object() {
        return Err(bad("the request body must be a JSON object"));
    }
    if req["stream"].as_bool() != Some(true) {
        return Err(bad("fake-engine only streams"));
    }
    let prompt_n = match &req["prompt"] {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(a) => a.len() as u64,
        Value::Null => return Err(bad("\"prompt\" must be provided")),
        _ => return Err(bad("\"prompt\" must be a string or an array of tokens")),
    };
    if prompt_n >= ctx_per_slot {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("request ({prompt_n} tokens) exceeds the available context size ({ctx_per_slot} tokens), try increasing it"),
            Some("exceed_context_size_error"),
        ));
    }
    let (n, stop_type) = match req["n_predict"].as_i64() {
        Some(limit) if limit >= 0 && (limit as u64) < tokens => (limit as u64, "limit"),
        _ => (tokens, "eos"),
    };
    let seed = req["seed"].as_u64().unwrap_or(DEFAULT_SEED);
    Ok(Plan {
        n,
        prompt_n,
        stop_type,
        seed,
    })
}

fn sse(frame: &Value) -> Bytes {
    Bytes::from(format!("data: {frame}\n\n"))
}

pub async fn completion(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    if let Some(status) = st.knobs.fail_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error_response(status, "fake-engine: injected failure (FAKE_FAIL_STATUS)");
    }
    let plan = match plan(&body, st.knobs.tokens, st.ctx_per_slot) {
        Ok(p) => p,
        Err((status, msg, Some(kind))) => return error_with_type(status, &msg, kind),
        Err((status, msg, None)) => return error_response(status, &msg),
    };
    // Capacity 1: a frame is produced only when the previous one was taken by the body, and a
    // dropped body (client gone) makes the next send fail at once.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(generate(st, plan, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

/// Waits for a slot, then emits the frames. Returns (freeing the slot) as soon as the client is
/// gone, whether it left while waiting, between tokens, or mid-send.
async fn generate(st: Arc<AppState>, plan: Plan, tx: mpsc::Sender<Bytes>) {
    let guard = tokio::select! {
        g = st.slots.acquire() => g,
        _ = tx.closed() => return,
    };
    st.prompt_tokens.fetch_add(plan.prompt_n, Ordering::Relaxed);
    let start = Instant::now();
    for k in 0..plan.n {
        // A held request has produced its first token (so it is running in every sense) and
        // produces no more until the hold file is gone.
        if let Some(hold) = st.knobs.hold_file.as_ref().filter(|_| k > 0) {
            while hold.exists() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = tx.closed() => return,
                }
            }
        }
        if k > 0 && !*st.released.borrow() {
            let mut released = st.released.clone();
            tokio::select! {
                _ = released.wait_for(|r| *r) => {}
                _ = tx.closed() => return,
            }
        }
        if !st.knobs.token_delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(st.knobs.token_delay) => {}
                _ = tx.closed() => return,
            }
        }
        if st.crashing.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let frame = json!({
            "index": 0,
            "content": if st.knobs.token_stamp {
                format!("tok{k}@{} ", unix_micros())
            } else {
                format!("tok{k} ")
            },
            "tokens": [k],
            "stop": false,
            "id_slot": -1,
            "tokens_predicted": k + 1,
            "tokens_evaluated": plan.prompt_n,
        });
        if tx.send(sse(&frame)).await.is_err() {
            return;
        }
        st.tokens_predicted.fetch_add(1, Ordering::Relaxed);
        if st.knobs.crash_after_tokens == Some(k + 1) {
            crash(&st, &tx).await;
        }
    }
    let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    let per_second = if plan.n > 0 && elapsed_ms > 0.0 {
        plan.n as f64 * 1000.0 / elapsed_ms
    } else {
        0.0
    };
    let slot = guard.id();
    let frame = json!({
        "index": 0,
        "content": "",
        "tokens": [],
        "stop": true,
        "id_slot": slot,
        "tokens_predicted": plan.n,
        "tokens_evaluated": plan.prompt_n,
        "stop_type": plan.stop_type,
        "stopping_word": "",
        "generation_settings": {"seed": plan.seed},
        "timings": {
            "prompt_n": plan.prompt_n,
            "prompt_ms": 1.0,
            "predicted_n": plan.n,
            "predicted_ms": elapsed_ms,
            "predicted_per_second": per_second,
        },
    });
    // Free the slot before the client can see the final frame, so "stop seen" implies "slot free".
    drop(guard);
    let _ = tx.send(sse(&frame)).await;
}

/// Simulated engine crash: stop every stream, give the frame just queued a moment to reach the
/// socket (so the client sees exactly the tokens before the crash), then exit with code 3.
async fn crash(st: &AppState, tx: &mpsc::Sender<Bytes>) -> ! {
    st.crashing.store(true, Ordering::SeqCst);
    eprintln!(
        "fake-engine: FAKE_CRASH_AFTER_TOKENS reached, simulating a crash (exit {CRASH_EXIT_CODE})"
    );
    let deadline = Instant::now() + Duration::from_millis(200);
    while tx.capacity() < tx.max_capacity() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::process::exit(CRASH_EXIT_CODE);
}

/// Wall-clock µs since the Unix epoch (`FAKE_TOKEN_STAMP`): comparable across processes.
fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(body: Value, tokens: u64) -> Result<Plan, (StatusCode, String, Option<&'static str>)> {
        plan(body.to_string().as_bytes(), tokens, 100)
    }

    #[test]
    fn plans() {
        assert_eq!(
            p(json!({"prompt": "a b  c", "stream": true}), 16).unwrap(),
            Plan {
                n: 16,
                prompt_n: 3,
                stop_type: "eos",
                seed: DEFAULT_SEED
            }
        );
        assert_eq!(
            p(
                json!({"prompt": "a", "stream": true, "n_predict": 4, "seed": 7}),
                16
            )
            .unwrap(),
            Plan {
                n: 4,
                prompt_n: 1,
                stop_type: "limit",
                seed: 7
            }
        );
        assert_eq!(
            p(
                json!({"prompt": [1, 2], "stream": true, "n_predict": 40}),
                16
            )
            .unwrap()
            .stop_type,
            "eos"
        );
        assert_eq!(
            p(
                json!({"prompt": "", "stream": true, "n_predict": -1, "seed": -1}),
                16
            )
            .unwrap(),
            Plan {
                n: 16,
                prompt_n: 0,
                stop_type: "eos",
                seed: DEFAULT_SEED
            }
        );
    }

    #[test]
    fn rejections() {
        assert_eq!(
            p(json!({"prompt": "a"}), 16).unwrap_err().1,
            "fake-engine only streams"
        );
        assert_eq!(
            p(json!({"prompt": "a", "stream": false}), 16)
                .unwrap_err()
                .0,
            StatusCode::BAD_REQUEST
        );
        assert!(p(json!({"stream": true}), 16).is_err());
        assert!(plan(b"not json", 16, 100).is_err());
        let long = vec!["w"; 100].join(" ");
        assert_eq!(
            p(json!({"prompt": long, "stream": true}), 16)
                .unwrap_err()
                .2,
            Some("exceed_context_size_error")
        );
    }
}
