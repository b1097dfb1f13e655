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
    /// Feeds a chunk and returns every complete `data:` payload it finished.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = &line[..line.len() - 1];
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
}

impl CompletionFrame {
    pub fn parse(data: &str) -> Result<Self, String> {
        serde_json::from_str(data).map_err(|e| format!("unparseable engine frame: {e}"))
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
