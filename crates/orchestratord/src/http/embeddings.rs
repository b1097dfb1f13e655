//! `POST /v1/embeddings` (API.md §11.6): an embedding task (`workload: "embedding"`) through the
//! same admission, queues, placement, cancellation and metrics as `/v2/tasks`; placement sends it
//! only to embedding pools. The answer collects the task's `embedding` frames in input order.

use api::events::Event;
use api::openai::{
    EmbeddingData, EmbeddingVector, EmbeddingsRequest, EmbeddingsResponse, EmbeddingsUsage,
};
use api::task::{Priority, TaskRequest, Workload};
use api::{ErrorCode, ErrorEnvelope};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use daemon::correlation::CorrelationId;

use super::answer::{admit, next_frames};
use super::openai::error;
use super::{json_body, App};

pub async fn embeddings(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<super::Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match json_body(&headers, body, app.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e.0),
    };
    let (req, base64) = match parse(&bytes) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let model = req.model_ref.clone();
    let (task, log, mut guard) = match admit(&app, &cid, caller, req).await {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let mut data = vec![];
    let mut next = 0;
    let mut resp = loop {
        let (frames, closed) = next_frames(&log, next).await;
        next += frames.len();
        let mut done = None;
        for f in frames {
            match f {
                Event::Embedding(e) => data.push(EmbeddingData {
                    object: "embedding".into(),
                    index: e.index,
                    embedding: if base64 {
                        EmbeddingVector::Base64(encode_f32s(&e.embedding))
                    } else {
                        EmbeddingVector::Float(e.embedding)
                    },
                }),
                Event::End(e) => {
                    data.sort_by_key(|d| d.index);
                    done = Some(
                        Json(EmbeddingsResponse {
                            object: "list".into(),
                            data: std::mem::take(&mut data),
                            model: model.clone(),
                            usage: EmbeddingsUsage {
                                prompt_tokens: e.tokens_in,
                                total_tokens: e.tokens_in,
                            },
                        })
                        .into_response(),
                    );
                }
                Event::Error(e) => done = Some(error(e)),
                _ => {}
            }
        }
        if let Some(r) = done {
            guard.done = true;
            break r;
        }
        if closed {
            guard.done = true;
            break error(ErrorEnvelope::new(
                ErrorCode::Internal,
                "the task ended without a result",
            ));
        }
    };
    if let Ok(v) = HeaderValue::from_str(&task.to_string()) {
        resp.headers_mut().insert("x-llorch-task-id", v);
    }
    resp
}

/// The little-endian bytes of `v` in standard base64 with padding (OpenAI's `base64` encoding).
fn encode_f32s(v: &[f32]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(ABC[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Maps the body onto an embedding task; returns it with whether the vectors go as base64.
fn parse(bytes: &[u8]) -> Result<(TaskRequest, bool), ErrorEnvelope> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let r: EmbeddingsRequest =
        serde_path_to_error::deserialize(de).map_err(crate::admission::invalid_body)?;
    if r.model.is_empty() || r.model.contains(':') {
        return Err(ErrorEnvelope::invalid(
            "model",
            "must be a catalog model id",
        ));
    }
    let base64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err(ErrorEnvelope::invalid("encoding_format", "float or base64")),
    };
    if r.dimensions.is_some() {
        return Err(ErrorEnvelope::invalid(
            "dimensions",
            "the model's own dimension is the only one",
        ));
    }
    let mut req = TaskRequest::new(&r.model);
    req.workload = Workload::Embedding;
    req.input = Some(r.input);
    req.priority = Priority::Interactive;
    Ok((req, base64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_form_becomes_an_embedding_task() {
        for body in [
            r#"{"model":"m","input":"a"}"#,
            r#"{"model":"m","input":["a","b"]}"#,
            r#"{"model":"m","input":[1,2,3]}"#,
            r#"{"model":"m","input":[[1,2],[3]],"encoding_format":"float","user":"x"}"#,
        ] {
            let (r, _) = parse(body.as_bytes()).expect(body);
            assert_eq!(r.workload, Workload::Embedding);
            assert!(r.input.is_some());
        }
        let field = |b: &str| parse(b.as_bytes()).expect_err(b).field;
        assert_eq!(
            field(r#"{"model":"m","input":"a","encoding_format":"hex"}"#).as_deref(),
            Some("encoding_format")
        );
        assert!(
            parse(br#"{"model":"m","input":"a","encoding_format":"base64"}"#)
                .expect("valid")
                .1
        );
        // 1.0f32 = 00 00 80 3f; two of them.
        assert_eq!(encode_f32s(&[1.0]), "AACAPw==");
        assert_eq!(encode_f32s(&[1.0, 1.0]), "AACAPwAAgD8=");
        assert_eq!(
            field(r#"{"model":"m","input":"a","dimensions":8}"#).as_deref(),
            Some("dimensions")
        );
        assert_eq!(field(r#"{"model":"m"}"#).as_deref(), Some("input"));
    }
}
