//! The SDK against a tiny HA group on loopback: a follower that answers `NOT_LEADER` (with and
//! without naming the leader), a leader, and a dead address; a task stream that breaks mid-way
//! and is resumed with `Last-Event-ID`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use api::events::{End, Event, StopReason, Token};
use api::{ErrorCode, ErrorEnvelope};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;

async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("test step");
    let url = format!("http://{}", l.local_addr().expect("test step"));
    tokio::spawn(async move { axum::serve(l, app).await.expect("test step") });
    url
}

/// A base URL nothing listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("test step");
    format!("http://{}", l.local_addr().expect("test step"))
}

fn not_leader(leader: Option<&str>) -> Response {
    let env = ErrorEnvelope::new(ErrorCode::NotLeader, "this orchestratord is a follower")
        .with_retriable(true)
        .with_retry_after(100);
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(env)).into_response();
    if let Some(l) = leader {
        r.headers_mut().insert(
            api::LEADER_HEADER,
            HeaderValue::from_str(l).expect("test step"),
        );
    }
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    r
}

/// A follower: every route but /health answers NOT_LEADER naming `leader` (when given).
fn follower(leader: Option<String>, hits: Arc<AtomicU32>) -> Router {
    Router::new().fallback(move || {
        let leader = leader.clone();
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            not_leader(leader.as_deref())
        }
    })
}

fn frame(id: u64, e: &Event) -> String {
    format!("id: {id}\nevent: {}\ndata: {}\n\n", e.name(), e.data_json())
}

fn token(i: u64) -> Event {
    Event::Token(Token::new(format!("t{i}"), i))
}

fn end(n: u64) -> Event {
    Event::End(End {
        tokens_in: 3,
        tokens_out: n,
        ttft_ms: Some(1),
        decode_ms: 1,
        decode_time_ms: 1,
        stop_reason: StopReason::Limit,
        canceled: false,
        tokens_cached: None,
    })
}

/// A leader: cancel answers 204 and counts; the task stream has 6 tokens and `end` (ids 0..=6);
/// without `Last-Event-ID` it sends ids 0..=2 and then breaks the connection (as a killed leader
/// does); with it, every frame after that id.
fn leader(cancels: Arc<AtomicU32>, last_ids: Arc<std::sync::Mutex<Vec<Option<u64>>>>) -> Router {
    Router::new()
        .route(
            "/v2/tasks/{id}/cancel",
            post(move || {
                let cancels = cancels.clone();
                async move {
                    cancels.fetch_add(1, Ordering::SeqCst);
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .route(
            "/v2/tasks/{id}/events",
            get(move |headers: HeaderMap| {
                let last_ids = last_ids.clone();
                async move {
                    let after = headers
                        .get("last-event-id")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    last_ids.lock().expect("test step").push(after);
                    let frames: Vec<String> = (0..6u64)
                        .map(|i| frame(i, &token(i)))
                        .chain([frame(6, &end(6))])
                        .collect();
                    let (from, to, broken) = match after {
                        None => (0, 3, true),
                        Some(n) => (n as usize + 1, frames.len(), false),
                    };
                    let chunks: Vec<Result<String, std::io::Error>> =
                        frames[from..to].iter().cloned().map(Ok).collect();
                    // The break comes after the frames were delivered.
                    let tail = futures::stream::once(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        Err(std::io::Error::other("the leader died"))
                    });
                    let body = if broken {
                        axum::body::Body::from_stream(futures::stream::iter(chunks).chain(tail))
                    } else {
                        axum::body::Body::from_stream(futures::stream::iter(chunks))
                    };
                    ([("content-type", "text/event-stream")], body).into_response()
                }
            }),
        )
}

#[tokio::test]
async fn a_named_leader_is_followed_and_remembered() {
    let cancels = Arc::new(AtomicU32::new(0));
    let lead = serve(leader(cancels.clone(), Default::default())).await;
    let follower_hits = Arc::new(AtomicU32::new(0));
    let f = serve(follower(Some(lead.clone()), follower_hits.clone())).await;
    // Only the follower is given: its header leads to the leader.
    let c = client::Client::new(&f, None).expect("test step");
    let id = api::TaskId::new();
    assert_eq!(c.cancel(id).await.expect("test step"), 204);
    assert_eq!(cancels.load(Ordering::SeqCst), 1);
    assert_eq!(follower_hits.load(Ordering::SeqCst), 1);
    assert_eq!(c.base_url(), lead);
    // The next call goes straight to the leader.
    assert_eq!(c.cancel(id).await.expect("test step"), 204);
    assert_eq!(follower_hits.load(Ordering::SeqCst), 1);
    assert_eq!(cancels.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_connection_and_a_follower_without_a_leader_move_to_the_next_url() {
    let cancels = Arc::new(AtomicU32::new(0));
    let lead = serve(leader(cancels.clone(), Default::default())).await;
    let hits = Arc::new(AtomicU32::new(0));
    let lost = serve(follower(None, hits.clone())).await;
    let list = format!("{},{lost},{lead}", dead_url());
    let c = client::Client::new(&list, None).expect("test step");
    assert_eq!(c.cancel(api::TaskId::new()).await.expect("test step"), 204);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(cancels.load(Ordering::SeqCst), 1);
    assert_eq!(c.base_url(), lead);
}

#[tokio::test]
async fn a_group_without_a_leader_gives_not_leader_after_the_failover_timeout() {
    let hits = Arc::new(AtomicU32::new(0));
    let a = serve(follower(None, hits.clone())).await;
    let b = serve(follower(None, hits.clone())).await;
    let c = client::Client::new(format!("{a},{b}"), None)
        .expect("test step")
        .with_failover_timeout(std::time::Duration::from_millis(300));
    let e = c.cancel(api::TaskId::new()).await.expect_err("must fail");
    assert_eq!(e.envelope().map(|e| e.code), Some(ErrorCode::NotLeader));
    // Both were asked, more than once, with pauses between rounds.
    assert!(hits.load(Ordering::SeqCst) >= 3, "{hits:?}");
}

#[tokio::test]
async fn one_dead_url_is_the_callers_error_at_once() {
    let c = client::Client::new(dead_url(), None).expect("test step");
    let e = c.cancel(api::TaskId::new()).await.expect_err("must fail");
    assert!(matches!(e, client::Error::Transport(_)), "{e}");
}

#[tokio::test]
async fn a_broken_stream_resumes_after_the_last_id_on_the_leader() {
    let last_ids = Arc::new(std::sync::Mutex::new(vec![]));
    let lead = serve(leader(Default::default(), last_ids.clone())).await;
    let f = serve(follower(Some(lead.clone()), Default::default())).await;
    let c = client::Client::new(format!("{f},{lead}"), None).expect("test step");
    let id = api::TaskId::new();
    let mut s = c.follow(&format!("/v2/tasks/{id}/events"));
    let mut ids = vec![];
    let mut text = String::new();
    while let Some(fr) = s.next().await {
        let fr = fr.expect("test step");
        ids.push(fr.id.expect("test step"));
        if let Event::Token(t) = fr.event {
            text.push_str(&t.t);
        }
    }
    assert_eq!(ids, (0..=6).collect::<Vec<u64>>());
    assert_eq!(text, "t0t1t2t3t4t5");
    assert_eq!(s.reconnects(), 1);
    assert_eq!(*last_ids.lock().expect("test step"), vec![None, Some(2)]);
}

/// A resumed stream that the server keeps closing without a frame ends with an error after the
/// failover timeout instead of reconnecting in a tight loop.
#[tokio::test]
async fn a_stream_that_keeps_closing_empty_gives_up_after_the_failover_timeout() {
    let opens = Arc::new(AtomicU32::new(0));
    let o = opens.clone();
    let app = Router::new().route(
        "/v2/tasks/{id}/events",
        get(move |headers: HeaderMap| {
            let o = o.clone();
            async move {
                o.fetch_add(1, Ordering::SeqCst);
                let body = if headers.contains_key("last-event-id") {
                    String::new()
                } else {
                    frame(0, &token(0))
                };
                ([("content-type", "text/event-stream")], body).into_response()
            }
        }),
    );
    let url = serve(app).await;
    let c = client::Client::new(url, None)
        .expect("client")
        .with_failover_timeout(std::time::Duration::from_millis(500));
    let mut s = c.follow(&format!("/v2/tasks/{}/events", api::TaskId::new()));
    assert_eq!(s.next().await.expect("frame").expect("frame").id, Some(0));
    let e = s.next().await.expect("an error").expect_err("must fail");
    assert!(e.to_string().contains("terminal frame"), "{e}");
    assert!(s.next().await.is_none());
    // Paused between tries: a handful of opens in half a second, not thousands.
    let n = opens.load(Ordering::SeqCst);
    assert!((2..=10).contains(&n), "{n} opens");
}
