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

/// A task's stream read across failovers (see [`crate::Client::follow`]): frames are returned as
/// the server sends them (no id is dropped or invented, so a gap or a duplicate stays visible);
/// after a break it reconnects with `Last-Event-ID` = the last id returned.
pub struct Follow {
    client: crate::Client,
    path: String,
    stream: Option<EventStream>,
    last_id: Option<u64>,
    done: bool,
    reconnects: u32,
    /// When the current outage began (a break with no frame since).
    outage: Option<std::time::Instant>,
}

impl Follow {
    pub(crate) fn new(client: crate::Client, path: &str) -> Self {
        Self {
            client,
            path: path.to_string(),
            stream: None,
            last_id: None,
            done: false,
            reconnects: 0,
            outage: None,
        }
    }

    /// How many times the stream was opened again after a break.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The id of the last frame returned.
    pub fn last_id(&self) -> Option<u64> {
        self.last_id
    }

    /// The base URL the stream is read from now.
    pub fn base_url(&self) -> String {
        self.client.base_url()
    }

    /// The next frame; `None` after the terminal frame (`end` or `error`). A break that lasts
    /// longer than the client's failover timeout, or a refusal other than `NOT_LEADER`, is
    /// returned as an error, after which the stream is over.
    pub async fn next(&mut self) -> Option<Result<Frame, Error>> {
        loop {
            if self.done {
                return None;
            }
            if self.stream.is_none() {
                match self.client.events_after(&self.path, self.last_id).await {
                    Ok(s) => self.stream = Some(s),
                    Err(e) if self.retry_open(&e) => {
                        tokio::time::sleep(crate::leader::ROUND_PAUSE).await;
                        continue;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let stream = self.stream.as_mut()?;
            match stream.next().await {
                Some(Ok(f)) => {
                    self.outage = None;
                    if f.id.is_some() {
                        self.last_id = f.id;
                    }
                    if f.event.is_terminal() {
                        self.done = true;
                    }
                    return Some(Ok(f));
                }
                Some(Err(Error::Protocol(m))) => {
                    self.done = true;
                    return Some(Err(Error::Protocol(m)));
                }
                // A broken connection, or a close before the terminal frame: the orchestratord
                // serving it went away. Open the stream again where it stopped, pausing between
                // tries, until the outage is older than the failover timeout.
                Some(Err(e)) => {
                    if let Some(err) = self.broken(Some(e)).await {
                        return Some(Err(err));
                    }
                }
                None => {
                    if let Some(err) = self.broken(None).await {
                        return Some(Err(err));
                    }
                }
            }
        }
    }

    /// After a break: the error that ends the stream when the outage has lasted the failover
    /// timeout, else None after a pause (a stream that keeps closing without a frame must not
    /// spin).
    async fn broken(&mut self, e: Option<Error>) -> Option<Error> {
        self.stream = None;
        let fresh = self.outage.is_none();
        let since = *self.outage.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= self.client.failover_timeout() {
            self.done = true;
            return Some(e.unwrap_or_else(|| {
                Error::Protocol(format!(
                    "the stream keeps closing before its terminal frame (resuming after id {:?})",
                    self.last_id
                ))
            }));
        }
        if !fresh {
            tokio::time::sleep(crate::leader::ROUND_PAUSE).await;
        }
        self.reconnects += 1;
        None
    }

    /// Whether a failed reopen is worth another try: transport errors and `NOT_LEADER` (the
    /// client already followed the group for its failover timeout) while the outage is younger
    /// than that timeout. The first open is not retried here (the call itself follows the leader).
    fn retry_open(&mut self, e: &Error) -> bool {
        if self.reconnects == 0 {
            return false;
        }
        let since = *self.outage.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= self.client.failover_timeout() {
            return false;
        }
        match e {
            Error::Transport(_) => true,
            Error::Api { envelope, .. } => envelope.code == api::ErrorCode::NotLeader,
            _ => false,
        }
    }
}
