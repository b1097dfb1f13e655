//! A task's frame log: append-only, written only by the core, read by any number of SSE
//! subscribers (API.md §5.4). Subscribers wait on a watch of the frame count, so a slow reader never
//! blocks the writer and every reader sees every frame in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use api::events::Event;
use tokio::sync::watch;

pub struct TaskLog {
    frames: Mutex<Vec<Event>>,
    count: watch::Sender<usize>,
    subscribers: AtomicUsize,
    ever_subscribed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for TaskLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLog")
            .field("frames", &self.len())
            .finish()
    }
}

impl Default for TaskLog {
    fn default() -> Self {
        Self {
            frames: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            subscribers: AtomicUsize::new(0),
            ever_subscribed: Default::default(),
        }
    }
}

impl TaskLog {
    /// Appends a frame; returns its id. Nothing may follow a terminal frame.
    pub fn append(&self, ev: Event) -> Option<u64> {
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if frames.last().is_some_and(Event::is_terminal) {
            return None;
        }
        frames.push(ev);
        let n = frames.len();
        drop(frames);
        self.count.send_replace(n);
        Some(n as u64 - 1)
    }

    /// Frames from index `from` on, and whether the log is closed (ends with a terminal frame).
    pub fn read_from(&self, from: usize) -> (Vec<Event>, bool) {
        let frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        let closed = frames.last().is_some_and(Event::is_terminal);
        (
            frames
                .get(from..)
                .map(<[Event]>::to_vec)
                .unwrap_or_default(),
            closed,
        )
    }

    /// When the log is closed: its length and its terminal frame.
    pub fn terminal(&self) -> Option<(usize, Event)> {
        let frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        frames
            .last()
            .filter(|f| f.is_terminal())
            .map(|f| (frames.len(), f.clone()))
    }

    pub fn len(&self) -> usize {
        self.frames.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    pub fn subscribe(&self) {
        self.ever_subscribed.store(true, Ordering::SeqCst);
        self.subscribers.fetch_add(1, Ordering::SeqCst);
    }

    /// Returns the number of subscribers left.
    pub fn unsubscribe(&self) -> usize {
        self.subscribers
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1)
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::SeqCst)
    }

    pub fn ever_subscribed(&self) -> bool {
        self.ever_subscribed.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::events::Token;

    #[test]
    fn nothing_after_terminal() {
        let log = TaskLog::default();
        assert_eq!(log.append(Event::Token(Token::new("a", 0))), Some(0));
        assert_eq!(
            log.append(Event::Error(api::ErrorEnvelope::new(
                api::ErrorCode::Internal,
                "x"
            ))),
            Some(1)
        );
        assert_eq!(log.append(Event::Token(Token::new("b", 1))), None);
        let (frames, closed) = log.read_from(1);
        assert_eq!(frames.len(), 1);
        assert!(closed);
    }
}
