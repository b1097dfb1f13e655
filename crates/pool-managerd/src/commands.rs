//! Heartbeat commands on the node (API.md §12.2): deduplicated by `command_id`, routed to the pool
//! supervisor that carries them out, and reported in every heartbeat until a terminal status has
//! been sent once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::model_ref::ModelRef;
use api::node::{CommandResult, CommandState, CommandStatus, StepKind, StepProgress, StepStatus};
use api::{CommandId, ErrorEnvelope, ModelId, PoolId, StepId};

/// Work for a pool supervisor.
#[derive(Debug, Clone)]
pub enum PoolCommand {
    /// No new dispatches; running ones get until `deadline`, then the engine stops (Unloaded).
    Drain { id: CommandId, deadline: Duration },
    /// Start (or restart) the pool's engine with `model`, fetched first when needed (`load-model`
    /// and `reload`); `None` restarts the current model.
    Load {
        id: CommandId,
        model: Option<ModelOrder>,
    },
}

/// The model a command names, parsed.
#[derive(Debug, Clone)]
pub struct ModelOrder {
    pub id: ModelId,
    pub model_ref: ModelRef,
    pub digest: Option<String>,
}

struct Entry {
    status: CommandStatus,
    terminal_sent: bool,
}

#[derive(Default)]
pub struct CommandBook {
    entries: Mutex<BTreeMap<CommandId, Entry>>,
}

impl CommandBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<CommandId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a newly received command; false when it was seen before (at-least-once delivery).
    pub fn receive(&self, id: &CommandId) -> bool {
        let mut e = self.lock();
        if e.contains_key(id) {
            return false;
        }
        e.insert(
            *id,
            Entry {
                status: CommandStatus {
                    command_id: *id,
                    status: CommandState::Accepted,
                    progress: vec![],
                    error: None,
                    result: None,
                },
                terminal_sent: false,
            },
        );
        true
    }

    pub fn set(&self, id: &CommandId, state: CommandState, error: Option<ErrorEnvelope>) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.status.status = state;
            entry.status.error = error;
        }
    }

    /// Replaces a running command's step progress (§12.2).
    pub fn progress(&self, id: &CommandId, steps: Vec<StepProgress>) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.status.status = CommandState::Running;
            entry.status.progress = steps;
        }
    }

    /// Completes a command with what it learned about the model file.
    pub fn complete(&self, id: &CommandId, result: Option<CommandResult>) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.status.status = CommandState::Completed;
            for s in &mut entry.status.progress {
                s.status = StepStatus::Completed;
                s.pct = 100.0;
                s.bytes_done = s.bytes_done.max(s.bytes_total);
            }
            entry.status.result = result;
            entry.status.error = None;
        }
    }

    /// Statuses for the next heartbeat: everything not yet reported terminal.
    pub fn report(&self) -> Vec<CommandStatus> {
        let mut out = vec![];
        for entry in self.lock().values_mut().filter(|e| !e.terminal_sent) {
            if matches!(
                entry.status.status,
                CommandState::Completed | CommandState::Failed
            ) {
                entry.terminal_sent = true;
            }
            out.push(entry.status.clone());
        }
        out
    }
}

/// The preparation steps of one `load-model` or `reload` (§8), reported through the book: the
/// model fetch (unless the model is a local file), the engine (built before any command runs) and
/// the pool warmup.
pub struct Prep {
    book: Arc<CommandBook>,
    id: CommandId,
    steps: Mutex<Vec<StepProgress>>,
}

impl Prep {
    pub fn new(
        book: Arc<CommandBook>,
        id: CommandId,
        model_ref: &ModelRef,
        pool_id: &PoolId,
    ) -> Self {
        let mut steps = vec![];
        if !matches!(model_ref, ModelRef::File { .. }) {
            steps.push(StepProgress {
                step_id: StepId::model(&model_ref.to_string()),
                kind: StepKind::ModelFetch,
                status: StepStatus::Running,
                pct: 0.0,
                bytes_done: 0,
                bytes_total: 0,
            });
        }
        steps.push(StepProgress {
            step_id: StepId::engine(),
            kind: StepKind::EngineProvision,
            status: StepStatus::Completed,
            pct: 100.0,
            bytes_done: 0,
            bytes_total: 0,
        });
        steps.push(StepProgress {
            step_id: StepId::pool(pool_id),
            kind: StepKind::PoolWarmup,
            status: StepStatus::Pending,
            pct: 0.0,
            bytes_done: 0,
            bytes_total: 0,
        });
        let prep = Self {
            book,
            id,
            steps: Mutex::new(steps),
        };
        prep.publish();
        prep
    }

    fn publish(&self) {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.book.progress(&self.id, steps);
    }

    fn update(&self, kind: StepKind, f: impl FnOnce(&mut StepProgress)) {
        if let Some(s) = self
            .steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .find(|s| s.kind == kind)
        {
            f(s);
        }
        self.publish();
    }

    /// Download progress of the model fetch.
    pub fn fetched(&self, done: u64, total: Option<u64>) {
        self.update(StepKind::ModelFetch, |s| {
            s.bytes_done = done;
            s.bytes_total = total.unwrap_or(0);
            s.pct = total
                .filter(|t| *t > 0)
                .map(|t| (100.0 * done as f64 / t as f64).min(100.0))
                .unwrap_or(0.0);
        });
    }

    /// The fetch is over; the engine is starting.
    pub fn warming(&self) {
        self.update(StepKind::ModelFetch, |s| {
            s.status = StepStatus::Completed;
            s.pct = 100.0;
            s.bytes_done = s.bytes_done.max(s.bytes_total);
        });
        self.update(StepKind::PoolWarmup, |s| s.status = StepStatus::Running);
    }

    /// Marks the running step failed and the command failed with `e`.
    pub fn failed(&self, e: ErrorEnvelope) {
        for s in self
            .steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .filter(|s| s.status == StepStatus::Running)
        {
            s.status = StepStatus::Failed;
        }
        self.publish();
        self.book.set(&self.id, CommandState::Failed, Some(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_and_report_until_terminal_sent_once() {
        let b = CommandBook::default();
        let c1 = &CommandId::new();
        assert!(b.receive(c1));
        assert!(!b.receive(c1));
        assert_eq!(b.report()[0].status, CommandState::Accepted);
        b.set(c1, CommandState::Completed, None);
        assert_eq!(b.report()[0].status, CommandState::Completed);
        assert!(b.report().is_empty(), "a terminal status is reported once");
        assert!(!b.receive(c1), "still deduplicated after completion");
    }

    #[test]
    fn prep_reports_steps_until_completed() {
        let b = Arc::new(CommandBook::default());
        let (c2, c3) = (&CommandId::new(), &CommandId::new());
        let p1: PoolId = "p1".parse().unwrap();
        assert!(b.receive(c2));
        let r = ModelRef::parse("hf:org/repo/m.gguf").unwrap();
        let prep = Prep::new(b.clone(), *c2, &r, &p1);
        prep.fetched(50, Some(200));
        let st = b.report().remove(0);
        assert_eq!(st.status, CommandState::Running);
        let kinds: Vec<&str> = st.progress.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["model_fetch", "engine_provision", "pool_warmup"]);
        assert_eq!(st.progress[0].step_id.as_str(), "model:hf:org/repo/m.gguf");
        assert_eq!(st.progress[0].pct, 25.0);
        prep.warming();
        assert_eq!(b.report()[0].progress[2].status, StepStatus::Running);
        b.complete(
            c2,
            Some(CommandResult {
                digest: "sha256:00".into(),
                size_bytes: 200,
                metadata: None,
            }),
        );
        let done = b.report().remove(0);
        assert_eq!(done.status, CommandState::Completed);
        assert!(done
            .progress
            .iter()
            .all(|s| s.status == StepStatus::Completed && s.pct == 100.0));
        assert_eq!(done.result.unwrap().size_bytes, 200);
        let file = ModelRef::parse("file:/m.gguf").unwrap();
        assert!(b.receive(c3));
        Prep::new(b.clone(), *c3, &file, &p1).failed(ErrorEnvelope::new(
            api::ErrorCode::ModelNotAvailable,
            "missing",
        ));
        let failed = b.report().remove(0);
        assert_eq!(failed.status, CommandState::Failed);
        assert_eq!(failed.progress.len(), 2, "a local file has no fetch step");
    }
}
