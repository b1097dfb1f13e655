//! Heartbeat commands on the node (API.md §12.2): deduplicated by `command_id`, routed to the pool
//! supervisor that carries them out, and reported in every heartbeat until a terminal status has
//! been sent once.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use api::node::{CommandState, CommandStatus};
use api::ErrorEnvelope;

/// Work for a pool supervisor.
#[derive(Debug, Clone)]
pub enum PoolCommand {
    /// No new dispatches; running ones get until `deadline`, then the engine stops (Unloaded).
    Drain { id: String, deadline: Duration },
    /// Start (or restart) the pool's engine, with `model` when given (else the current one).
    Reload { id: String, model: Option<crate::pools::ModelInfo> },
}

struct Entry {
    status: CommandStatus,
    terminal_sent: bool,
}

#[derive(Default)]
pub struct CommandBook {
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl CommandBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a newly received command; false when it was seen before (at-least-once delivery).
    pub fn receive(&self, id: &str) -> bool {
        let mut e = self.lock();
        if e.contains_key(id) {
            return false;
        }
        e.insert(id.to_string(), Entry { status: CommandStatus { command_id: id.to_string(), status: CommandState::Accepted, progress: vec![], error: None, result: None }, terminal_sent: false });
        true
    }

    pub fn set(&self, id: &str, state: CommandState, error: Option<ErrorEnvelope>) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.status.status = state;
            entry.status.error = error;
        }
    }

    /// Statuses for the next heartbeat: everything not yet reported terminal.
    pub fn report(&self) -> Vec<CommandStatus> {
        let mut out = vec![];
        for entry in self.lock().values_mut().filter(|e| !e.terminal_sent) {
            if matches!(entry.status.status, CommandState::Completed | CommandState::Failed) {
                entry.terminal_sent = true;
            }
            out.push(entry.status.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_and_report_until_terminal_sent_once() {
        let b = CommandBook::default();
        assert!(b.receive("c1"));
        assert!(!b.receive("c1"));
        assert_eq!(b.report()[0].status, CommandState::Accepted);
        b.set("c1", CommandState::Completed, None);
        assert_eq!(b.report()[0].status, CommandState::Completed);
        assert!(b.report().is_empty(), "a terminal status is reported once");
        assert!(!b.receive("c1"), "still deduplicated after completion");
    }
}
