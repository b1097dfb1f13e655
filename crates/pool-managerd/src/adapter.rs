//! The llama.cpp adapter: runs one dispatched task against its pool's engine and turns the engine's
//! `/completion` stream into worker protocol events (API.md §13.3, §14.2–14.3).
//!
//! Invariants: the engine request always streams and always caps `n_predict`; after a cancel,
//! disconnect, deadline or idle timeout the engine connection is dropped first and the slot is
//! confirmed free through `/slots` before the caller releases its permit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::events::StopReason;
use api::worker::{DispatchInput, DispatchModel, DispatchRequest, WorkerEvent};
use api::ErrorCode;
use engine::sse::CompletionFrame;
use engine::{ChatMessage, CompletionRequest, EngineClient, EngineError, Prompt};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::frames::TaskFrames;
use crate::pools::{ModelInfo, Pool, TaskEnd, TaskMeter};

pub struct TaskRun {
    /// The pool, for the number of its running tasks when a slot is confirmed free.
    pub pool: Arc<Pool>,
    pub client: EngineClient,
    pub engine_version: String,
    /// The model of the engine this task runs on.
    pub model: ModelInfo,
    /// The task's token counts, read by the pool's status reports.
    pub meter: Arc<TaskMeter>,
    pub req: DispatchRequest,
    /// The task's lines, which every dispatch response attached to it reads.
    pub out: Arc<TaskFrames>,
    /// Triggered by a cancel request, and when the dispatch stream is gone for good (at once
    /// without an epoch, after the grace period with one).
    pub cancel: CancellationToken,
    pub lost: CancellationToken,
    pub idle_timeout: Duration,
    pub cancel_confirm: Duration,
}

/// How the engine request ended, before it is reported.
enum Outcome {
    Finished(Box<CompletionFrame>),
    /// Stopped by us; the engine slot must be confirmed free.
    Stopped(StopReason),
    Failed {
        code: ErrorCode,
        message: String,
        retriable: bool,
    },
}

impl TaskRun {
    /// Runs the task to its terminal event. Returns how it ended once the engine slot is free.
    pub async fn run(self) -> TaskEnd {
        let started = Instant::now();
        let deadline = self
            .req
            .deadline_remaining_ms
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
        let mut tokens_out = 0u64;
        let mut ttft: Option<u64> = None;
        let outcome = self
            .stream(deadline, &mut tokens_out, &mut ttft, started)
            .await;
        let mut decode_tps = None;
        let (event, needs_confirm) = match outcome {
            Outcome::Finished(f) => {
                let (event, tps) = end_event(&f, tokens_out, ttft, self.req.params.sampling.seed);
                decode_tps = tps;
                (event, false)
            }
            Outcome::Stopped(reason) => (
                WorkerEvent::End {
                    tokens_in: self.tokens_evaluated(),
                    tokens_out,
                    stop_reason: reason,
                    seed: self.req.params.sampling.seed,
                    engine_ttft_ms: ttft,
                    engine_decode_ms: 0,
                    tokens_cached: None,
                    slot: None,
                },
                true,
            ),
            Outcome::Failed {
                code,
                message,
                retriable,
            } => {
                // A lost engine frees nothing we could confirm; anything else may still hold the slot.
                let confirm = !self.lost.is_cancelled();
                (
                    WorkerEvent::Error {
                        code,
                        message,
                        retriable,
                        retry_after_ms: None,
                    },
                    confirm,
                )
            }
        };
        if needs_confirm {
            self.confirm_free().await;
        }
        self.log_end(&event, tokens_out);
        let end = TaskEnd {
            ok: matches!(event, WorkerEvent::End { .. }),
            decode_tps,
        };
        // The terminal line never waits for the reader: the slot is released right after it.
        self.out.push(event);
        end
    }

    async fn stream(
        &self,
        deadline: Option<tokio::time::Instant>,
        tokens_out: &mut u64,
        ttft: &mut Option<u64>,
        started: Instant,
    ) -> Outcome {
        let s = &self.req.params.sampling;
        let n_predict = self.req.params.max_tokens.max(1);
        let logit_bias: Vec<(u32, f64)> = s
            .logit_bias
            .iter()
            .filter_map(|(k, v)| k.parse().ok().map(|id| (id, *v)))
            .collect();
        tracing::info!(event = "engine.request", correlation_id = %self.req.correlation_id, task_id = %self.req.task_id, pool_id = %self.req.pool_id,
            node_id = %self.req.node_id, attempt = self.req.attempt, "Sent task {} to the engine of pool {}", self.req.task_id, self.req.pool_id);
        let opened = match &self.req.input {
            DispatchInput::Messages { messages, tools } if needs_chat(messages, tools.as_ref()) => {
                let body = chat_body(messages, tools.as_ref(), s, n_predict, &logit_bias);
                tokio::select! {
                    r = self.client.chat(&body) => r.map(|f| Box::pin(f) as FrameStream),
                    _ = self.cancel.cancelled() => return Outcome::Stopped(StopReason::Canceled),
                    _ = self.lost.cancelled() => return lost(0),
                }
            }
            input => {
                let prompt = match input {
                    DispatchInput::Embed { input } => {
                        return self.embed(input, ttft, started).await
                    }
                    DispatchInput::Prompt { prompt } => prompt.clone(),
                    DispatchInput::Messages { messages, .. } => {
                        let msgs: Vec<ChatMessage> = messages
                            .iter()
                            .map(|m| ChatMessage {
                                role: role_str(m.role).into(),
                                content: m.content.clone(),
                            })
                            .collect();
                        match self.client.apply_template(&msgs).await {
                            Ok(p) => p,
                            Err(e) => return engine_failure(e, false),
                        }
                    }
                };
                // A migrated task continues from its prompt's token ids followed by the ids it
                // generated.
                let prompt = match &self.req.resume {
                    None => Prompt::Text(prompt),
                    Some(generated) => match self.client.tokenize(&prompt).await {
                        Ok(mut ids) => {
                            ids.extend_from_slice(generated);
                            Prompt::Tokens(ids)
                        }
                        Err(e) => return engine_failure(e, false),
                    },
                };
                let creq = CompletionRequest {
                    prompt,
                    return_tokens: true,
                    n_predict,
                    stream: true,
                    cache_prompt: true,
                    id_slot: self.req.id_slot,
                    seed: s.seed,
                    temperature: s.temperature,
                    top_p: s.top_p,
                    top_k: s.top_k,
                    min_p: s.min_p,
                    repeat_penalty: s.repeat_penalty,
                    presence_penalty: s.presence_penalty,
                    frequency_penalty: s.frequency_penalty,
                    logit_bias,
                    // The engine sends no probabilities for 0 alternatives; ask for one and drop it.
                    n_probs: s.logprobs.map(|n| n.max(1)),
                    stop: s.stop.clone(),
                    grammar: s.grammar.clone(),
                    json_schema: s.json_schema.clone(),
                };
                tokio::select! {
                    r = self.client.complete(&creq) => r.map(|f| Box::pin(f) as FrameStream),
                    _ = self.cancel.cancelled() => return Outcome::Stopped(StopReason::Canceled),
                    _ = self.lost.cancelled() => return lost(0),
                }
            }
        };
        let mut frames = match opened {
            Ok(f) => f,
            Err(e) => return engine_failure(e, false),
        };
        let started_ev = WorkerEvent::Started {
            engine: api::ENGINE_LLAMACPP.into(),
            engine_version: self.engine_version.clone(),
            model: DispatchModel {
                id: self.model.id.clone(),
                digest: self.model.digest.clone(),
            },
        };
        self.emit(started_ev).await;
        // Token ids go with the text while every generated token's id was seen; the engine sends
        // none for tokens that end inside a UTF-8 character, and from then on the task cannot be
        // resumed exactly, so later lines carry no ids. The chat endpoint (chats with tools) sends
        // no ids at all: such tasks are not resumable.
        let mut ids_seen = 0u64;
        let mut ids_whole = true;
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let deadline_at = deadline.unwrap_or(far);
        // One deadline timer and one idle timer for the whole stream, not one per frame.
        let deadline_sleep = tokio::time::sleep_until(deadline_at);
        tokio::pin!(deadline_sleep);
        let mut quiet = daemon::quiet::Quiet::new(self.idle_timeout);
        loop {
            // Checked first on every frame, so a fast engine cannot starve a cancel; the select
            // below is biased towards a frame that is already there, which it then takes without
            // arming the other branches.
            if self.cancel.is_cancelled() {
                return Outcome::Stopped(StopReason::Canceled);
            }
            if self.lost.is_cancelled() {
                return lost(*tokens_out);
            }
            if tokio::time::Instant::now() >= deadline_at {
                return Outcome::Stopped(StopReason::Deadline);
            }
            let next = tokio::select! {
                biased;
                n = frames.next() => Ok(n),
                _ = self.cancel.cancelled() => return Outcome::Stopped(StopReason::Canceled),
                _ = self.lost.cancelled() => return lost(*tokens_out),
                _ = &mut deadline_sleep => return Outcome::Stopped(StopReason::Deadline),
                _ = quiet.elapsed() => Err(()),
            };
            quiet.touch();
            let frame = match next {
                Err(()) => {
                    drop(frames);
                    self.confirm_free().await;
                    return Outcome::Failed {
                        code: ErrorCode::DecodeTimeout,
                        message: format!(
                            "the engine produced nothing for {} ms",
                            self.idle_timeout.as_millis()
                        ),
                        retriable: true,
                    };
                }
                Ok(None) => {
                    return broken(
                        *tokens_out,
                        "the engine closed the stream without a final frame".into(),
                    )
                }
                Ok(Some(Err(e))) => return broken(*tokens_out, e.to_string()),
                Ok(Some(Ok(f))) => f,
            };
            let mut frame = frame;
            if let Some(err) = &frame.error {
                return broken(*tokens_out, format!("the engine reported an error: {err}"));
            }
            self.track(&frame);
            if (!frame.content.is_empty() || !frame.tool_calls.is_empty()) && ttft.is_none() {
                *ttft = Some(started.elapsed().as_millis() as u64);
                tracing::info!(event = "engine.first_token", correlation_id = %self.req.correlation_id, task_id = %self.req.task_id, pool_id = %self.req.pool_id,
                    node_id = %self.req.node_id, duration_ms = ttft.unwrap_or(0), "First token of task {} after {} ms", self.req.task_id, ttft.unwrap_or(0));
            }
            if let Some(n) = self.req.params.sampling.logprobs {
                for lp in &mut frame.completion_probabilities {
                    lp.top_logprobs.truncate(n as usize);
                }
            }
            if ids_whole && !frame.stop {
                ids_seen += frame.tokens.len() as u64;
                ids_whole = frame.tokens_predicted.is_none_or(|n| n == ids_seen);
            }
            let ids = if ids_whole && !frame.stop {
                std::mem::take(&mut frame.tokens)
            } else {
                Vec::new()
            };
            if frame.content.is_empty() && !ids.is_empty() {
                // Text the engine holds back (a possible stop word) still carries its token id.
                let ev = WorkerEvent::Token {
                    i: *tokens_out,
                    t: String::new(),
                    ids,
                    logprobs: std::mem::take(&mut frame.completion_probabilities),
                };
                self.emit(ev).await;
            } else if !frame.content.is_empty() {
                let ev = WorkerEvent::Token {
                    i: *tokens_out,
                    t: std::mem::take(&mut frame.content),
                    ids,
                    logprobs: std::mem::take(&mut frame.completion_probabilities),
                };
                *tokens_out += 1;
                self.emit(ev).await;
            }
            for delta in std::mem::take(&mut frame.tool_calls) {
                *tokens_out += 1;
                self.emit(WorkerEvent::ToolCall { delta }).await;
            }
            if frame.stop {
                return Outcome::Finished(Box::new(frame));
            }
        }
    }

    /// An embedding task: one engine call (`/v1/embeddings`, dropped on cancel), then `started`,
    /// one `embedding` event per item in input order, and a final frame built from the engine's
    /// usage.
    async fn embed(
        &self,
        input: &[api::task::EmbedItem],
        ttft: &mut Option<u64>,
        started: Instant,
    ) -> Outcome {
        let body = serde_json::json!({ "input": input, "encoding_format": "float" });
        let answer = tokio::select! {
            r = self.client.embeddings(&body) => r,
            _ = self.cancel.cancelled() => return Outcome::Stopped(StopReason::Canceled),
            _ = self.lost.cancelled() => return lost(0),
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return engine_failure(e, false),
        };
        if answer.data.len() != input.len() {
            return broken(
                0,
                format!(
                    "the engine answered {} embeddings for {} inputs",
                    answer.data.len(),
                    input.len()
                ),
            );
        }
        let started_ev = WorkerEvent::Started {
            engine: api::ENGINE_LLAMACPP.into(),
            engine_version: self.engine_version.clone(),
            model: DispatchModel {
                id: self.model.id.clone(),
                digest: self.model.digest.clone(),
            },
        };
        self.emit(started_ev).await;
        *ttft = Some(started.elapsed().as_millis() as u64);
        let mut data = answer.data;
        data.sort_by_key(|d| d.index);
        for d in data {
            let ev = WorkerEvent::Embedding {
                index: d.index,
                embedding: d.embedding,
            };
            self.emit(ev).await;
        }
        Outcome::Finished(Box::new(CompletionFrame {
            stop: true,
            stop_type: Some("eos".into()),
            tokens_evaluated: Some(answer.usage.prompt_tokens),
            tokens_predicted: Some(0),
            ..Default::default()
        }))
    }

    /// Hands `ev` to the task's lines; while the attached reader is far behind, waits for it (or
    /// for a cancel), so a slow reader slows the engine stream instead of filling memory.
    async fn emit(&self, ev: WorkerEvent) {
        if self.out.push(ev) {
            tokio::select! {
                _ = self.out.caught_up() => {}
                _ = self.cancel.cancelled() => {}
                _ = self.lost.cancelled() => {}
            }
        }
    }

    fn tokens_evaluated(&self) -> u64 {
        self.meter
            .tokens_evaluated
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn track(&self, f: &CompletionFrame) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(n) = f.tokens_evaluated {
            self.meter.tokens_evaluated.store(n, Relaxed);
        }
        if let Some(n) = f.tokens_predicted {
            self.meter.tokens_out.store(n, Relaxed);
        }
    }

    /// Polls `/slots` until the engine runs no more requests than the other dispatches in flight.
    async fn confirm_free(&self) {
        let until = Instant::now() + self.cancel_confirm;
        loop {
            // This task still holds its slot; the others may keep engine slots busy.
            let others = self.pool.running().saturating_sub(1);
            match self.client.busy_slots().await {
                Ok(busy) if busy <= others => {
                    tracing::info!(event = "engine.cancel_confirmed", correlation_id = %self.req.correlation_id, task_id = %self.req.task_id,
                        pool_id = %self.req.pool_id, node_id = %self.req.node_id, "The engine slot of task {} is free again", self.req.task_id);
                    return;
                }
                Err(_) if self.lost.is_cancelled() => return,
                _ => {}
            }
            if Instant::now() >= until {
                tracing::warn!(event = "engine.cancel_unconfirmed", correlation_id = %self.req.correlation_id, task_id = %self.req.task_id, pool_id = %self.req.pool_id,
                    "The engine slot of task {} was not confirmed free within {} ms", self.req.task_id, self.cancel_confirm.as_millis());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_end(&self, ev: &WorkerEvent, tokens_out: u64) {
        match ev {
            WorkerEvent::End {
                tokens_in,
                stop_reason,
                ..
            } => {
                tracing::info!(event = "engine.finished", correlation_id = %self.req.correlation_id, task_id = %self.req.task_id,
                pool_id = %self.req.pool_id, node_id = %self.req.node_id, tokens_in = *tokens_in, tokens_out = tokens_out,
                "Task {} finished on the engine ({:?}, {} tokens)", self.req.task_id, stop_reason, tokens_out)
            }
            WorkerEvent::Error { code, message, .. } => {
                tracing::warn!(event = "engine.finished", correlation_id = %self.req.correlation_id, task_id = %self.req.task_id,
                pool_id = %self.req.pool_id, node_id = %self.req.node_id, code = %code, tokens_out = tokens_out,
                "Task {} failed on the engine: {message}", self.req.task_id)
            }
            _ => {}
        }
    }
}

/// The `end` event of a task whose engine stream ended with `f` (and the engine's decode speed,
/// when it reported a usable one). `seed` is the task's own, used when the engine names none.
fn end_event(
    f: &CompletionFrame,
    tokens_seen: u64,
    ttft: Option<u64>,
    seed: Option<u64>,
) -> (WorkerEvent, Option<f64>) {
    let timings = f.timings.clone().unwrap_or_default();
    let tps = timings
        .predicted_per_second
        .filter(|v| v.is_finite() && *v > 0.0);
    let stop_reason = match f.stop_type.as_deref() {
        Some("eos") => StopReason::Eos,
        Some("limit") => StopReason::Limit,
        Some("word") => StopReason::StopWord,
        _ => StopReason::Canceled,
    };
    let event = WorkerEvent::End {
        tokens_in: f.tokens_evaluated.unwrap_or(0),
        tokens_out: f.tokens_predicted.unwrap_or(0).max(tokens_seen),
        stop_reason,
        seed: f.generation_settings.as_ref().and_then(|g| g.seed).or(seed),
        engine_ttft_ms: ttft,
        engine_decode_ms: timings.predicted_ms.unwrap_or(0.0).max(0.0) as u64,
        tokens_cached: timings.cache_n.filter(|n| *n >= 0.0).map(|n| n as u64),
        slot: f.id_slot.and_then(|s| u32::try_from(s).ok()),
    };
    (event, tps)
}

pub(crate) fn role_str(r: api::task::Role) -> &'static str {
    match r {
        api::task::Role::System => "system",
        api::task::Role::User => "user",
        api::task::Role::Assistant => "assistant",
        api::task::Role::Tool => "tool",
    }
}

type FrameStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<CompletionFrame, EngineError>> + Send + 'static>,
>;

/// A chat runs on the engine's own chat endpoint when tools are involved (see
/// [`api::worker::chat_endpoint_needed`]).
fn needs_chat(messages: &[api::task::Message], tools: Option<&api::tools::Tools>) -> bool {
    api::worker::chat_endpoint_needed(messages, tools)
}

/// The engine's `/v1/chat/completions` body: always streamed, with usage, and capped.
fn chat_body(
    messages: &[api::task::Message],
    tools: Option<&api::tools::Tools>,
    s: &api::task::Sampling,
    max_tokens: u64,
    logit_bias: &[(u32, f64)],
) -> serde_json::Value {
    let msgs: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let mut v = serde_json::json!({ "role": role_str(m.role), "content": m.content });
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = serde_json::json!(m.tool_calls);
            }
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = serde_json::json!(id);
            }
            v
        })
        .collect();
    let mut b = serde_json::json!({
        "messages": msgs,
        "stream": true,
        "stream_options": { "include_usage": true },
        "max_tokens": max_tokens,
        "cache_prompt": true,
    });
    if let Some(t) = tools.filter(|t| !t.tools.is_empty()) {
        let (defs, mode) = t.for_engine();
        b["tools"] = serde_json::json!(defs);
        b["tool_choice"] = serde_json::json!(mode);
        if let Some(p) = t.parallel_tool_calls {
            b["parallel_tool_calls"] = serde_json::json!(p);
        }
    }
    let opt = |b: &mut serde_json::Value, k: &str, v: serde_json::Value| {
        if !v.is_null() {
            b[k] = v;
        }
    };
    opt(&mut b, "seed", serde_json::json!(s.seed));
    opt(&mut b, "temperature", serde_json::json!(s.temperature));
    opt(&mut b, "top_p", serde_json::json!(s.top_p));
    opt(&mut b, "top_k", serde_json::json!(s.top_k));
    opt(&mut b, "min_p", serde_json::json!(s.min_p));
    opt(
        &mut b,
        "repeat_penalty",
        serde_json::json!(s.repeat_penalty),
    );
    opt(
        &mut b,
        "presence_penalty",
        serde_json::json!(s.presence_penalty),
    );
    opt(
        &mut b,
        "frequency_penalty",
        serde_json::json!(s.frequency_penalty),
    );
    opt(&mut b, "grammar", serde_json::json!(s.grammar));
    opt(&mut b, "json_schema", serde_json::json!(s.json_schema));
    if !s.stop.is_empty() {
        b["stop"] = serde_json::json!(s.stop);
    }
    if !logit_bias.is_empty() {
        b["logit_bias"] = serde_json::json!(logit_bias);
    }
    if let Some(n) = s.logprobs {
        b["logprobs"] = serde_json::json!(true);
        b["top_logprobs"] = serde_json::json!(n.max(1));
    }
    b
}

/// Maps an engine error by the first-token rule (§14.3).
fn engine_failure(e: EngineError, after_token: bool) -> Outcome {
    match e {
        EngineError::Status {
            status: 400,
            message,
        } => Outcome::Failed {
            code: ErrorCode::InvalidParams,
            message: format!("the engine refused the request: {message}"),
            retriable: false,
        },
        EngineError::Status {
            status: 503,
            message,
        } => Outcome::Failed {
            code: ErrorCode::PoolUnavailable,
            message: format!("the engine is not ready: {message}"),
            retriable: true,
        },
        other => broken(if after_token { 1 } else { 0 }, other.to_string()),
    }
}

fn broken(tokens_out: u64, message: String) -> Outcome {
    if tokens_out > 0 {
        Outcome::Failed {
            code: ErrorCode::WorkerReset,
            message,
            retriable: true,
        }
    } else {
        Outcome::Failed {
            code: ErrorCode::PoolUnavailable,
            message,
            retriable: true,
        }
    }
}

fn lost(tokens_out: u64) -> Outcome {
    broken(
        tokens_out,
        "the engine stopped while the task was running".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps one final engine SSE `data:` line and checks the `end` event and decode speed.
    fn check(data: &str, tokens_seen: u64, expected: WorkerEvent, tps: Option<f64>) {
        let frame = CompletionFrame::parse(data).unwrap();
        assert_eq!(
            end_event(&frame, tokens_seen, Some(7), Some(42)),
            (expected, tps)
        );
    }

    fn end(
        tokens_in: u64,
        tokens_out: u64,
        stop_reason: StopReason,
        seed: u64,
        decode: u64,
    ) -> WorkerEvent {
        WorkerEvent::End {
            tokens_in,
            tokens_out,
            stop_reason,
            seed: Some(seed),
            engine_ttft_ms: Some(7),
            engine_decode_ms: decode,
            tokens_cached: None,
            slot: None,
        }
    }

    #[test]
    fn final_engine_frames_map_to_end_events() {
        check(
            r#"{"content":"","stop":true,"stop_type":"eos","tokens_evaluated":5,"tokens_predicted":3,
                "timings":{"predicted_ms":12.5,"predicted_per_second":240.0},
                "generation_settings":{"seed":9}}"#,
            3,
            end(5, 3, StopReason::Eos, 9, 12),
            Some(240.0),
        );
        check(
            r#"{"content":"","stop":true,"stop_type":"limit","tokens_evaluated":2,"tokens_predicted":4}"#,
            4,
            end(2, 4, StopReason::Limit, 42, 0),
            None,
        );
        // The engine counted fewer tokens than we relayed: the relayed count wins.
        check(
            r#"{"content":"","stop":true,"stop_type":"word","tokens_predicted":1,
                "timings":{"predicted_per_second":0.0}}"#,
            2,
            end(0, 2, StopReason::StopWord, 42, 0),
            None,
        );
        check(
            r#"{"content":"","stop":true}"#,
            0,
            end(0, 0, StopReason::Canceled, 42, 0),
            None,
        );
    }

    /// The first-token rule of §14.3: a failure before any token may be retried elsewhere
    /// (POOL_UNAVAILABLE), after one it is a WORKER_RESET; engine refusals keep their meaning.
    #[test]
    fn engine_errors_map_by_the_first_token_rule() {
        let failed = |o: Outcome| match o {
            Outcome::Failed {
                code, retriable, ..
            } => (code, retriable),
            _ => panic!("not a failure"),
        };
        let status = |status, message: &str| EngineError::Status {
            status,
            message: message.into(),
        };
        let cases = [
            (
                engine_failure(status(400, "bad grammar"), false),
                (ErrorCode::InvalidParams, false),
            ),
            (
                engine_failure(status(503, "loading"), false),
                (ErrorCode::PoolUnavailable, true),
            ),
            (
                engine_failure(EngineError::Connect("refused".into()), false),
                (ErrorCode::PoolUnavailable, true),
            ),
            (
                engine_failure(EngineError::Protocol("garbled".into()), true),
                (ErrorCode::WorkerReset, true),
            ),
            (
                broken(0, "closed".into()),
                (ErrorCode::PoolUnavailable, true),
            ),
            (broken(3, "closed".into()), (ErrorCode::WorkerReset, true)),
            (lost(0), (ErrorCode::PoolUnavailable, true)),
            (lost(1), (ErrorCode::WorkerReset, true)),
        ];
        for (i, (outcome, expected)) in cases.into_iter().enumerate() {
            assert_eq!(failed(outcome), expected, "case {i}");
        }
    }

    #[test]
    fn chat_roles_use_the_engine_names() {
        use api::task::Role;
        let roles = [Role::System, Role::User, Role::Assistant, Role::Tool].map(role_str);
        assert_eq!(roles, ["system", "user", "assistant", "tool"]);
    }

    #[test]
    fn tools_take_the_chat_endpoint_with_a_capped_stream() {
        use api::task::{Message, Role};
        use api::tools::*;
        let plain = vec![Message::text(Role::User, "hi")];
        assert!(!needs_chat(&plain, None));
        let tools = Tools {
            tools: vec![ToolDef {
                kind: FunctionKind::Function,
                function: FunctionDef {
                    name: "f".into(),
                    description: None,
                    parameters: Some(serde_json::json!({"type": "object"})),
                    strict: None,
                },
            }],
            tool_choice: Some(ToolChoice::Mode(ToolChoiceMode::Required)),
            parallel_tool_calls: Some(false),
        };
        assert!(needs_chat(&plain, Some(&tools)));
        let mut result = Message::text(Role::Tool, "18");
        result.tool_call_id = Some("c1".into());
        assert!(needs_chat(&[result.clone()], None));
        let s = api::task::Sampling {
            seed: Some(3),
            logprobs: Some(2),
            ..Default::default()
        };
        let b = chat_body(&[result], Some(&tools), &s, 7, &[(15, -100.0)]);
        assert_eq!(
            (
                &b["stream"],
                &b["max_tokens"],
                &b["stream_options"]["include_usage"]
            ),
            (
                &serde_json::json!(true),
                &serde_json::json!(7),
                &serde_json::json!(true)
            )
        );
        assert_eq!(
            (&b["tool_choice"], &b["parallel_tool_calls"], &b["seed"]),
            (
                &serde_json::json!("required"),
                &serde_json::json!(false),
                &serde_json::json!(3)
            )
        );
        assert_eq!(b["messages"][0]["tool_call_id"], "c1");
        assert_eq!(b["logit_bias"], serde_json::json!([[15, -100.0]]));
        assert_eq!(
            (&b["logprobs"], &b["top_logprobs"]),
            (&serde_json::json!(true), &serde_json::json!(2))
        );
        assert!(b.get("temperature").is_none());
    }
}
