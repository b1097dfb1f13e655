//! `POST /v2/pools/{pool_id}/tokenize` (cache-aware placement, decision 69): the token ids the
//! pool's engine runs for a dispatch input, so orchestratord's prefix index keys exactly what the
//! engine holds. A prompt is tokenized as `/completion` tokenizes a text prompt (special tokens
//! added and parsed); a chat is first rendered with the engine's `/apply-template`, as the adapter
//! renders it. Chats that run on the engine's chat endpoint (tools) and embeddings have no such
//! ids and are refused with INVALID_PARAMS. Both engine routes are served on llama-server's HTTP
//! thread, not behind generation, and no slot is taken.

use std::sync::Arc;

use api::worker::{DispatchInput, TokenizeRequest, TokenizeResponse};
use api::{ErrorCode, ErrorEnvelope};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use daemon::errors::ApiError;
use engine::{ChatMessage, EngineClient, EngineError};

use crate::node::Node;

pub async fn tokenize(
    State(app): State<Arc<Node>>,
    Path(pool_id): Path<String>,
    body: Bytes,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let req: TokenizeRequest = serde_json::from_slice(&body)
        .map_err(|e| ErrorEnvelope::invalid("", format!("invalid tokenize body: {e}")))?;
    ErrorEnvelope::check_protocol(req.protocol_version)?;
    if !req.input.tokenizable() {
        return Err(ErrorEnvelope::invalid(
            "input",
            "only a prompt or a chat without tools has prompt token ids (embeddings and chats with tools run on other engine routes)",
        )
        .into());
    }
    let pool = app.pools.named(&pool_id)?;
    let view = pool.view();
    let state = view.snapshot.state;
    let (Some(client), Some(model), api::node::PoolState::Ready) =
        (view.client, view.snapshot.model, state)
    else {
        return Err(ErrorEnvelope::new(
            ErrorCode::PoolUnready,
            format!("pool {pool_id} is {}", state.as_str()),
        )
        .with_pool(&pool.spec.id)
        .into());
    };
    if !crate::pools::serves(&model, &req.model) {
        return Err(ErrorEnvelope::new(
            ErrorCode::ModelNotAvailable,
            format!("pool {pool_id} does not serve {}", req.model.id),
        )
        .into());
    }
    let tokens = prompt_ids(&client, &req.input)
        .await
        .map_err(|e| engine_error(e, &pool.spec.id))?;
    Ok(Json(TokenizeResponse { tokens }))
}

/// The ids `/completion` runs for `input` (a prompt, or a chat without tools).
pub async fn prompt_ids(
    client: &EngineClient,
    input: &DispatchInput,
) -> Result<Vec<u32>, EngineError> {
    let text = match input {
        DispatchInput::Prompt { prompt } => prompt.clone(),
        DispatchInput::Messages { messages, .. } => {
            let msgs: Vec<ChatMessage> = messages
                .iter()
                .map(|m| ChatMessage {
                    role: crate::adapter::role_str(m.role).into(),
                    content: m.content.clone(),
                })
                .collect();
            client.apply_template(&msgs).await?
        }
        DispatchInput::Embed { .. } => {
            return Err(EngineError::Protocol(
                "embeddings have no prompt ids".into(),
            ))
        }
    };
    client.tokenize(&text).await
}

fn engine_error(e: EngineError, pool: &api::PoolId) -> ErrorEnvelope {
    match e {
        EngineError::Status {
            status: 400,
            message,
        } => ErrorEnvelope::invalid("input", format!("the engine refused the input: {message}")),
        other => ErrorEnvelope::new(
            ErrorCode::PoolUnavailable,
            format!("the engine of pool {pool} could not tokenize: {other}"),
        )
        .with_pool(pool)
        .with_retriable(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pools::{ModelInfo, PoolView};
    use api::task::{Message, Role};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    const TOKEN: &str = "dispatch-token-dispatch-token-0123";

    fn node(pools: &[Arc<crate::pools::Pool>]) -> Arc<Node> {
        let set = crate::pools::PoolSet::default();
        for p in pools {
            set.insert(p.clone());
        }
        Arc::new(Node {
            node_id: "n1".parse().unwrap(),
            dispatch_token: daemon::secret::Secret::new(TOKEN),
            idle_timeout: std::time::Duration::from_secs(5),
            cancel_confirm: std::time::Duration::from_millis(200),
            pools: Arc::new(set),
            book: Default::default(),
            frames: Arc::new(crate::frames::Frames::new(Default::default())),
            tracker: Default::default(),
            closing: Default::default(),
        })
    }

    fn body(model: &str, input: DispatchInput, edit: impl FnOnce(&mut TokenizeRequest)) -> Vec<u8> {
        let mut req = TokenizeRequest {
            protocol_version: api::PROTOCOL_VERSION,
            model: api::worker::DispatchModel {
                id: model.parse().unwrap(),
                digest: None,
            },
            input,
        };
        edit(&mut req);
        serde_json::to_vec(&req).unwrap()
    }

    fn prompt() -> DispatchInput {
        DispatchInput::Prompt {
            prompt: "hi".into(),
        }
    }

    async fn send(app: &Arc<Node>, pool: &str, body: Vec<u8>) -> (u16, ErrorEnvelope) {
        let req = Request::builder()
            .method("POST")
            .uri(format!("/v2/pools/{pool}/tokenize"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::from(body))
            .unwrap();
        // The route alone (its auth layer is `http`'s and tested there).
        let router = axum::Router::new()
            .route(
                "/v2/pools/{pool_id}/tokenize",
                axum::routing::post(tokenize),
            )
            .with_state(app.clone());
        let resp = router.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_ne!(status, StatusCode::OK);
        (status.as_u16(), serde_json::from_slice(&bytes).unwrap())
    }

    /// Every refusal is typed; none reaches an engine (the route's token check is `http`'s, the
    /// same layer as dispatch's). (The answer of a real engine is checked in
    /// the cluster scenario `cache_aware_worker_tokenize_matches_the_engine`.)
    #[tokio::test]
    async fn tokenize_refusals_are_typed() {
        let (pool, _rx, view) = crate::pools::detached(crate::pools::test_spec("p1", 1));
        let app = node(&[pool]);
        let tools: api::tools::Tools = serde_json::from_value(serde_json::json!({
            "tools": [{"type": "function", "function": {"name": "f"}}]
        }))
        .unwrap();
        let cases = [
            (
                body("m1", prompt(), |r| r.protocol_version = 9),
                "p1",
                400,
                ErrorCode::InvalidParams,
                Some("protocol_version"),
            ),
            (
                body(
                    "m1",
                    DispatchInput::Messages {
                        messages: vec![Message::text(Role::User, "x")],
                        tools: Some(tools),
                    },
                    |_| {},
                ),
                "p1",
                400,
                ErrorCode::InvalidParams,
                Some("input"),
            ),
            (
                body("m1", DispatchInput::Embed { input: vec![] }, |_| {}),
                "p1",
                400,
                ErrorCode::InvalidParams,
                Some("input"),
            ),
            (b"{".to_vec(), "p1", 400, ErrorCode::InvalidParams, Some("")),
            (
                body("m1", prompt(), |_| {}),
                "nope",
                404,
                ErrorCode::NotFound,
                None,
            ),
            (
                body("m1", prompt(), |_| {}),
                "p1",
                503,
                ErrorCode::PoolUnready,
                None,
            ),
        ];
        for (b, pool, status, code, field) in cases {
            let (s, env) = send(&app, pool, b).await;
            assert_eq!(
                (s, env.code, env.field.as_deref()),
                (status, code, field),
                "{}",
                env.message
            );
        }
        // Ready, serving m1, with an engine that is not there.
        let mut snapshot = crate::pools::Snapshot::empty(1);
        snapshot.state = api::node::PoolState::Ready;
        snapshot.model = Some(ModelInfo {
            id: "m1".parse().unwrap(),
            model_ref: "file:/m1.gguf".into(),
            path: "/m1.gguf".into(),
            digest: None,
            size_bytes: None,
            metadata: None,
        });
        let client = EngineClient::new("http://127.0.0.1:9", engine::ApiKey::random()).unwrap();
        view.send_replace(PoolView {
            snapshot,
            client: Some(client),
        });
        let (s, env) = send(&app, "p1", body("m2", prompt(), |_| {})).await;
        assert_eq!((s, env.code), (404, ErrorCode::ModelNotAvailable));
        let (s, env) = send(&app, "p1", body("m1", prompt(), |_| {})).await;
        assert_eq!(
            (s, env.code, env.retriable),
            (503, ErrorCode::PoolUnavailable, true)
        );
    }
}
