//! Defensive parsing of llama-server's `/completion` SSE stream (API.md §14.3): bytes in, typed
//! frames out. Garbage lines, over-long lines and unknown keys never panic; they become errors or
//! are skipped.

use serde::Deserialize;

/// Lines longer than this are an engine fault (a real frame is a few hundred bytes).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Splits a byte stream into SSE `data:` payloads.
#[derive(Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
}

#[derive(Debug, PartialEq)]
pub enum SseItem {
    Data(String),
    /// A line that is too long or not UTF-8.
    Garbage(String),
}

impl SseDecoder {
    /// Feeds a chunk and returns every complete `data:` payload it finished. The lines are cut
    /// out of the buffer in place, and the consumed part is dropped once per chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(off) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + off];
            start += off + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > MAX_LINE_BYTES {
                out.push(SseItem::Garbage(format!("line of {} bytes", line.len())));
                continue;
            }
            match std::str::from_utf8(line) {
                Ok(s) => {
                    if let Some(data) = s.strip_prefix("data:") {
                        out.push(SseItem::Data(data.trim_start().to_string()));
                    }
                }
                Err(_) => out.push(SseItem::Garbage("line is not UTF-8".into())),
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE_BYTES {
            self.buf.clear();
            out.push(SseItem::Garbage(format!(
                "unterminated line over {MAX_LINE_BYTES} bytes"
            )));
        }
        out
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Timings {
    #[serde(default)]
    pub prompt_n: Option<f64>,
    #[serde(default)]
    pub prompt_ms: Option<f64>,
    #[serde(default)]
    pub predicted_n: Option<f64>,
    #[serde(default)]
    pub predicted_ms: Option<f64>,
    #[serde(default)]
    pub predicted_per_second: Option<f64>,
    /// Prompt tokens taken from the prompt cache.
    #[serde(default)]
    pub cache_n: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GenerationSettings {
    #[serde(default)]
    pub seed: Option<u64>,
}

/// One `/completion` frame; only the keys we use, all tolerant of absence.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CompletionFrame {
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub stop_type: Option<String>,
    /// The frame's token ids (with `return_tokens`; one per frame, none in the final one).
    #[serde(default)]
    pub tokens: Vec<u32>,
    #[serde(default)]
    pub tokens_predicted: Option<u64>,
    #[serde(default)]
    pub tokens_evaluated: Option<u64>,
    #[serde(default)]
    pub id_slot: Option<i64>,
    #[serde(default)]
    pub timings: Option<Timings>,
    #[serde(default)]
    pub generation_settings: Option<GenerationSettings>,
    /// Present when the engine reports an error inside the stream.
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    /// With `n_probs`: each token of `content` with its log probability and alternatives.
    #[serde(default)]
    pub completion_probabilities: Vec<api::tools::TokenLogprob>,
    /// Chat streams only: the tool-call pieces of this chunk.
    #[serde(skip)]
    pub tool_calls: Vec<api::tools::ToolCallDelta>,
}

impl CompletionFrame {
    pub fn parse(data: &str) -> Result<Self, String> {
        serde_json::from_str(data).map_err(|e| format!("unparseable engine frame: {e}"))
    }
}

/// One chunk of the engine's streamed `/v1/chat/completions` (OpenAI's shape plus `timings`);
/// only the keys we use.
#[derive(Debug, Clone, Default, Deserialize)]
struct ChatChunk {
    #[serde(default)]
    choices: Vec<ChatChunkChoice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(default)]
    timings: Option<Timings>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ChatChunkChoice {
    #[serde(default)]
    delta: ChatDelta,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<ChatLogprobs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ChatDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ChatToolCall>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ChatToolCall {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: ChatFunction,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ChatFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ChatLogprobs {
    #[serde(default)]
    content: Vec<api::tools::TokenLogprob>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Turns the engine's chat stream into `/completion`-style frames, so one loop relays both: text
/// and tool-call pieces become frames, the finish reason is remembered, and the usage chunk
/// (always requested) becomes the final `stop: true` frame with counts and timings.
#[derive(Default)]
pub struct ChatFrames {
    finish: Option<String>,
}

impl ChatFrames {
    /// The frame for one `data:` payload; `None` for `[DONE]` and chunks that carry nothing.
    pub fn frame(&mut self, data: &str) -> Result<Option<CompletionFrame>, String> {
        if data.trim() == "[DONE]" {
            return Ok(None);
        }
        let c: ChatChunk =
            serde_json::from_str(data).map_err(|e| format!("unparseable engine chunk: {e}"))?;
        if let Some(err) = c.error {
            return Ok(Some(CompletionFrame {
                error: Some(err),
                ..Default::default()
            }));
        }
        if let Some(u) = c.usage {
            let stop_type = match self.finish.as_deref() {
                Some("length") => "limit",
                _ => "eos",
            };
            return Ok(Some(CompletionFrame {
                stop: true,
                stop_type: Some(stop_type.into()),
                tokens_evaluated: Some(u.prompt_tokens),
                tokens_predicted: Some(u.completion_tokens),
                timings: c.timings,
                ..Default::default()
            }));
        }
        let Some(choice) = c.choices.into_iter().next() else {
            return Ok(None);
        };
        if let Some(f) = choice.finish_reason {
            self.finish = Some(f);
        }
        let tool_calls: Vec<api::tools::ToolCallDelta> = choice
            .delta
            .tool_calls
            .into_iter()
            .map(|t| api::tools::ToolCallDelta {
                index: t.index,
                id: t.id,
                name: t.function.name,
                arguments: t.function.arguments.unwrap_or_default(),
            })
            .collect();
        let content = choice.delta.content.unwrap_or_default();
        let probs = choice.logprobs.map(|l| l.content).unwrap_or_default();
        if content.is_empty() && tool_calls.is_empty() && probs.is_empty() {
            return Ok(None);
        }
        Ok(Some(CompletionFrame {
            content,
            completion_probabilities: probs,
            tool_calls,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: {\"content\":\"Pa").is_empty());
        let items = d.push(b"ris\"}\n\ndata: {\"stop\":true}\n\n");
        assert_eq!(
            items,
            vec![
                SseItem::Data("{\"content\":\"Paris\"}".into()),
                SseItem::Data("{\"stop\":true}".into())
            ]
        );
        let f = CompletionFrame::parse("{\"content\":\"Paris\",\"unknown\":[1]}").unwrap();
        assert_eq!(f.content, "Paris");
    }

    #[test]
    fn chat_chunks_become_frames() {
        let mut c = ChatFrames::default();
        let role = r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}]}"#;
        assert_eq!(c.frame(role).unwrap(), None);
        let text = c
            .frame(r#"{"choices":[{"index":0,"delta":{"content":"The"}}]}"#)
            .unwrap()
            .expect("frame");
        assert_eq!((text.content.as_str(), text.stop), ("The", false));
        let call = c
            .frame(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{"}}]}}]}"#)
            .unwrap()
            .expect("frame");
        assert_eq!(
            call.tool_calls,
            vec![api::tools::ToolCallDelta {
                index: 0,
                id: Some("c1".into()),
                name: Some("get_weather".into()),
                arguments: "{".into()
            }]
        );
        assert_eq!(
            c.frame(r#"{"choices":[{"finish_reason":"tool_calls","index":0,"delta":{}}]}"#)
                .unwrap(),
            None
        );
        let last = c
            .frame(r#"{"choices":[],"usage":{"completion_tokens":46,"prompt_tokens":260,"total_tokens":306},"timings":{"predicted_ms":900.5}}"#)
            .unwrap()
            .expect("frame");
        assert!(last.stop);
        assert_eq!(
            (
                last.stop_type.as_deref(),
                last.tokens_evaluated,
                last.tokens_predicted
            ),
            (Some("eos"), Some(260), Some(46))
        );
        assert_eq!(c.frame("[DONE]").unwrap(), None);
        let mut l = ChatFrames::default();
        l.frame(r#"{"choices":[{"finish_reason":"length","index":0,"delta":{}}]}"#)
            .unwrap();
        let f = l
            .frame(r#"{"choices":[],"usage":{}}"#)
            .unwrap()
            .expect("frame");
        assert_eq!(f.stop_type.as_deref(), Some("limit"));
        assert!(c.frame("{").is_err());
    }

    #[test]
    fn completion_probabilities_are_read() {
        let f = CompletionFrame::parse(
            r#"{"content":"-","completion_probabilities":[{"id":29,"token":"-","bytes":[45],"logprob":-0.78,"top_logprobs":[{"id":29,"token":"-","bytes":[45],"logprob":-0.78}]}]}"#,
        )
        .unwrap();
        assert_eq!(f.completion_probabilities[0].top_logprobs[0].token, "-");
    }

    #[test]
    fn garbage_never_panics() {
        let mut d = SseDecoder::default();
        assert_eq!(
            d.push(b"\xff\xfe\n"),
            vec![SseItem::Garbage("line is not UTF-8".into())]
        );
        assert!(d.push(b": comment\r\n").is_empty());
        let big = vec![b'a'; MAX_LINE_BYTES + 10];
        let items = d.push(&big);
        assert!(matches!(items[0], SseItem::Garbage(_)));
        assert!(CompletionFrame::parse("not json").is_err());
        assert!(CompletionFrame::parse("{\"content\": 5}").is_err());
    }
}
