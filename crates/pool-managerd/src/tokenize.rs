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
    if req.protocol_version != api::PROTOCOL_VERSION {
        return Err(ErrorEnvelope::invalid(
            "protocol_version",
            format!(
                "unsupported protocol_version {}; supported: [1]",
                req.protocol_version
            ),
        )
        .into());
    }
    if !req.input.tokenizable() {
        return Err(ErrorEnvelope::invalid(
            "input",
            "only a prompt or a chat without tools has prompt token ids (embeddings and chats with tools run on other engine routes)",
        )
        .into());
    }
    let pool = pool_id
        .parse::<api::PoolId>()
        .ok()
        .and_then(|id| app.pools.get(&id))
        .ok_or_else(|| {
            ErrorEnvelope::new(
                ErrorCode::NotFound,
                format!("no pool {pool_id} on this node"),
            )
        })?;
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
            return Err(EngineError::Protocol("embeddings have no prompt ids".into()))
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
