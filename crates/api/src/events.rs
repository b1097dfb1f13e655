//! Client stream events (API.md §5): `started`, `token`, `metrics`, `end`, `error`.

use serde::{Deserialize, Serialize};

use crate::error::ErrorEnvelope;
use crate::ids::{ModelId, NodeId, PoolId, StepId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    Limit,
    StopWord,
    Canceled,
    Deadline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Started {
    pub queue_position: u64,
    pub predicted_start_ms: u64,
    pub pool_id: PoolId,
    pub node_id: NodeId,
    pub engine: String,
    #[schema(required = true)]
    pub engine_version: Option<String>,
    pub model: ModelId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Token {
    pub t: String,
    pub i: u64,
    /// Only when the task asked for `logprobs`: the log probability of each engine token in `t`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<crate::tools::TokenLogprob>,
}

impl Token {
    pub fn new(t: impl Into<String>, i: u64) -> Self {
        Self {
            t: t.into(),
            i,
            logprobs: vec![],
        }
    }
}

/// The `embedding` frame: the vector of input item `index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingFrame {
    pub index: u32,
    pub embedding: Vec<f32>,
}

/// An open object: every field optional, unknown keys ignored by clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_usage_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_start_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::node::StepKind>,
    /// Verbose only: preparation progress by step id (§5.5, §8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prep: Option<std::collections::BTreeMap<StepId, PrepProgress>>,
}

/// One preparation step's progress in a verbose `metrics` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrepProgress {
    pub status: crate::node::StepStatus,
    pub pct: f64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Metrics {
    /// The frame a non-verbose subscriber sees: without `human`, `phase` and `prep`; `None` when
    /// nothing else is left.
    pub fn plain(&self) -> Option<Metrics> {
        let m = Metrics {
            human: None,
            phase: None,
            prep: None,
            ..self.clone()
        };
        (m != Metrics::default()).then_some(m)
    }
}

/// Where a task runs after a failover (§5.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacementInfo {
    pub pool_id: PoolId,
    pub node_id: NodeId,
    #[schema(required = true)]
    pub engine_version: Option<String>,
    pub attempt: u32,
    /// Set when the task moved here mid-stream: the tokens it had generated before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_after_tokens: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct End {
    pub tokens_in: u64,
    pub tokens_out: u64,
    #[schema(required = true)]
    pub ttft_ms: Option<u64>,
    pub decode_ms: u64,
    pub decode_time_ms: u64,
    pub stop_reason: StopReason,
    pub canceled: bool,
    /// Prompt tokens the engine reused from its prompt cache (its `cache_n`); absent when the
    /// engine did not report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_cached: Option<u64>,
}

/// One frame of a task's event stream; `name()` is the SSE `event:` field, the payload its `data:`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started(Started),
    Token(Token),
    /// A piece of a tool call (§5.7); `token` frames carry model text only.
    ToolCall(crate::tools::ToolCallDelta),
    /// One vector of an embedding task.
    Embedding(EmbeddingFrame),
    Metrics(Metrics),
    End(End),
    Error(ErrorEnvelope),
}

impl Event {
    /// The frame as a subscriber sees it: verbose-only keys are stripped without `verbose`, and a
    /// `metrics` frame left empty is skipped (its id is then absent from that stream).
    pub fn for_subscriber(&self, verbose: bool) -> Option<std::borrow::Cow<'_, Event>> {
        match self {
            Event::Metrics(m) if !verbose => {
                if m.human.is_none() && m.phase.is_none() && m.prep.is_none() {
                    return Some(std::borrow::Cow::Borrowed(self));
                }
                m.plain()
                    .map(|p| std::borrow::Cow::Owned(Event::Metrics(p)))
            }
            _ => Some(std::borrow::Cow::Borrowed(self)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Event::Started(_) => "started",
            Event::Token(_) => "token",
            Event::ToolCall(_) => "tool_call",
            Event::Embedding(_) => "embedding",
            Event::Metrics(_) => "metrics",
            Event::End(_) => "end",
            Event::Error(_) => "error",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::End(_) | Event::Error(_))
    }

    /// The one-line JSON `data` of the frame.
    pub fn data_json(&self) -> String {
        let r = match self {
            Event::Started(d) => serde_json::to_string(d),
            Event::Token(d) => serde_json::to_string(d),
            Event::ToolCall(d) => serde_json::to_string(d),
            Event::Embedding(d) => serde_json::to_string(d),
            Event::Metrics(d) => serde_json::to_string(d),
            Event::End(d) => serde_json::to_string(d),
            Event::Error(d) => serde_json::to_string(d),
        };
        r.unwrap_or_else(|_| "{}".into())
    }

    /// Parses a frame from its event name and data, as an SSE client receives it.
    pub fn parse(name: &str, data: &str) -> Result<Self, String> {
        let e = |err: serde_json::Error| format!("bad {name} frame: {err}");
        Ok(match name {
            "started" => Event::Started(serde_json::from_str(data).map_err(e)?),
            "token" => Event::Token(serde_json::from_str(data).map_err(e)?),
            "tool_call" => Event::ToolCall(serde_json::from_str(data).map_err(e)?),
            "embedding" => Event::Embedding(serde_json::from_str(data).map_err(e)?),
            "metrics" => Event::Metrics(serde_json::from_str(data).map_err(e)?),
            "end" => Event::End(serde_json::from_str(data).map_err(e)?),
            "error" => Event::Error(serde_json::from_str(data).map_err(e)?),
            other => return Err(format!("unknown event {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_keys_reach_only_verbose_subscribers() {
        let prep = std::collections::BTreeMap::from([(
            StepId::pool("p"),
            PrepProgress {
                status: crate::node::StepStatus::Running,
                pct: 5.0,
                bytes_done: 0,
                bytes_total: 0,
            },
        )]);
        let only_verbose = Event::Metrics(Metrics {
            human: Some("Fetching".into()),
            phase: Some(crate::node::StepKind::ModelFetch),
            prep: Some(prep),
            ..Default::default()
        });
        assert!(
            only_verbose.for_subscriber(false).is_none(),
            "a progress-only frame is skipped"
        );
        assert_eq!(
            only_verbose.for_subscriber(true).as_deref(),
            Some(&only_verbose)
        );
        let mixed = Event::Metrics(Metrics {
            queue_position: Some(2),
            human: Some("Queued".into()),
            ..Default::default()
        });
        let plain = mixed.for_subscriber(false).expect("kept");
        assert!(
            matches!(plain.as_ref(), Event::Metrics(m) if m.queue_position == Some(2) && m.human.is_none())
        );
        let token = Event::Token(Token::new("a", 0));
        assert_eq!(token.for_subscriber(false).as_deref(), Some(&token));
    }

    #[test]
    fn roundtrip_each_event() {
        let evs = vec![
            Event::Token(Token::new("Hi", 0)),
            Event::ToolCall(crate::tools::ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "{\"a\"".into(),
            }),
            Event::End(End {
                tokens_in: 1,
                tokens_out: 2,
                ttft_ms: None,
                decode_ms: 0,
                decode_time_ms: 0,
                stop_reason: StopReason::StopWord,
                canceled: false,
                tokens_cached: None,
            }),
            Event::Metrics(Metrics::default()),
        ];
        for ev in evs {
            let back = Event::parse(ev.name(), &ev.data_json()).unwrap();
            assert_eq!(back, ev);
        }
        assert!(Event::End(End {
            tokens_in: 0,
            tokens_out: 0,
            ttft_ms: None,
            decode_ms: 0,
            decode_time_ms: 0,
            stop_reason: StopReason::Eos,
            canceled: false,
            tokens_cached: None,
        })
        .data_json()
        .contains("\"ttft_ms\":null"));
        assert!(Event::parse("bogus", "{}").is_err());
    }
}
