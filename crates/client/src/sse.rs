//! SSE decoding for task streams: `id:`/`event:`/`data:` fields into typed [`api::events::Event`]s,
//! skipping `:` comments (keepalives).

use api::events::Event;
use futures::StreamExt;

use crate::Error;

/// One received frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: Option<u64>,
    pub event: Event,
    /// The raw `event:` name and `data:` JSON, for transcripts.
    pub name: String,
    pub data: String,
}

pub struct EventStream {
    headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
    id: Option<u64>,
    name: Option<String>,
    data: Vec<String>,
}

impl EventStream {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Self {
            headers: resp.headers().clone(),
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            id: None,
            name: None,
            data: Vec::new(),
        }
    }

    pub fn headers(&self) -> &reqwest::header::HeaderMap {
        &self.headers
    }

    /// The next frame, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Result<Frame, Error>> {
        loop {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&raw[..raw.len() - 1])
                    .trim_end_matches('\r')
                    .to_string();
                if let Some(frame) = self.field(&line) {
                    return Some(frame);
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(Error::Transport(e.to_string()))),
                None => return None,
            }
        }
    }

    fn field(&mut self, line: &str) -> Option<Result<Frame, Error>> {
        if line.is_empty() {
            let name = self.name.take()?;
            let data = std::mem::take(&mut self.data).join("\n");
            let id = self.id.take();
            return Some(
                Event::parse(&name, &data)
                    .map(|event| Frame {
                        id,
                        event,
                        name,
                        data,
                    })
                    .map_err(Error::Protocol),
            );
        }
        if line.starts_with(':') {
            return None;
        }
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        let v = v.strip_prefix(' ').unwrap_or(v);
        match k {
            "id" => self.id = v.parse().ok(),
            "event" => self.name = Some(v.to_string()),
            "data" => self.data.push(v.to_string()),
            _ => {}
        }
        None
    }
}
