//! Which orchestratord of an HA group to talk to: the base URLs the client was given, the one that
//! answered last (the leader, as far as the client knows), and what to do when a call fails over:
//! a follower's `NOT_LEADER` names the leader in `x-llorch-leader` (go there), a refused connection
//! or a `NOT_LEADER` without a leader means "try the next URL". Only the calls that cannot have
//! done anything yet are tried again (see [`Retry`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The base URLs and the current leader; clones share the leader.
#[derive(Clone, Debug)]
pub struct Leader {
    urls: Arc<Vec<String>>,
    current: Arc<Mutex<String>>,
}

/// What a failed attempt means for the next one.
#[derive(Debug, PartialEq, Eq)]
pub enum Retry {
    /// Send again to this base URL (named by a follower), without waiting.
    Follow(String),
    /// Send again to the next base URL after a short pause.
    Next,
    /// Give the error to the caller.
    No,
}

/// The pause after every URL of the group was tried once in a row without an answer.
pub const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// Splits a comma-separated URL list (`LLORCH_URL`, `--url`), trimming spaces and trailing `/`.
pub fn parse_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

impl Leader {
    /// `list` is one base URL or several, comma-separated; the first is tried first.
    pub fn new(list: &str) -> Self {
        let mut urls = parse_urls(list);
        if urls.is_empty() {
            urls.push(list.trim().trim_end_matches('/').to_string());
        }
        let first = urls[0].clone();
        Self {
            urls: Arc::new(urls),
            current: Arc::new(Mutex::new(first)),
        }
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The base URL calls go to now.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `base` answered as the leader (or named as it by a follower).
    pub fn set(&self, base: &str) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = base.to_string();
    }

    /// The URL after `base` in the list (the first one when `base` is not in it).
    pub fn next_after(&self, base: &str) -> String {
        let i = self.urls.iter().position(|u| u == base);
        let k = i.map(|i| (i + 1) % self.urls.len()).unwrap_or(0);
        self.urls[k].clone()
    }

    /// Whether another URL may answer when `base` does not: several were given, or `base` was
    /// learned from a follower and is not the only one given.
    pub fn has_alternatives(&self, base: &str) -> bool {
        self.urls.len() > 1 || self.urls[0] != base
    }

    /// The decision after a follower's `NOT_LEADER` from `base`, with its `x-llorch-leader`.
    pub fn on_not_leader(&self, base: &str, named: Option<&str>) -> Retry {
        match named.map(|n| n.trim().trim_end_matches('/')) {
            Some(n) if !n.is_empty() && n != base => Retry::Follow(n.to_string()),
            _ => Retry::Next,
        }
    }

    /// The decision after a transport failure at `base`: `unsent` when the request cannot have
    /// reached a server (connection refused), `replayable` when sending it twice does no harm
    /// (GET, or a submit with an idempotency key), so a timeout or a connection that broke before
    /// the answer moves on too.
    pub fn on_transport(&self, base: &str, unsent: bool, replayable: bool) -> Retry {
        if !self.has_alternatives(base) {
            return Retry::No;
        }
        if unsent || replayable {
            Retry::Next
        } else {
            Retry::No
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_and_trimmed() {
        assert_eq!(
            parse_urls(" http://a:1/ ,http://b:2,, "),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        let l = Leader::new("http://a:1,http://b:2");
        assert_eq!(l.current(), "http://a:1");
        assert_eq!(l.next_after("http://a:1"), "http://b:2");
        assert_eq!(l.next_after("http://b:2"), "http://a:1");
        assert_eq!(l.next_after("http://elsewhere"), "http://a:1");
    }

    #[test]
    fn a_named_leader_is_followed_and_a_refusal_moves_on_only_with_alternatives() {
        let one = Leader::new("http://a:1");
        assert_eq!(
            one.on_not_leader("http://a:1", Some("http://b:2/")),
            Retry::Follow("http://b:2".into())
        );
        assert_eq!(
            one.on_not_leader("http://a:1", Some("http://a:1")),
            Retry::Next
        );
        assert_eq!(one.on_not_leader("http://a:1", None), Retry::Next);
        // One URL given: a refused connection is the caller's error, as before HA.
        assert_eq!(one.on_transport("http://a:1", true, true), Retry::No);
        // ... unless a follower named another one.
        assert_eq!(one.on_transport("http://b:2", true, false), Retry::Next);
        let two = Leader::new("http://a:1,http://b:2");
        assert_eq!(two.on_transport("http://a:1", true, false), Retry::Next);
        assert_eq!(two.on_transport("http://a:1", false, true), Retry::Next);
        // A POST that may have reached the server is not sent again.
        assert_eq!(two.on_transport("http://a:1", false, false), Retry::No);
    }
}
