//! What an HA leader writes about its tasks (decision 70): the tasks the core touched since the
//! last flush, and what was last written for each, so a row goes out only when the task's state,
//! attempt or pool changed. Off (and free) with the embedded SQLite backend.

use std::collections::HashMap;

use api::task::TaskState;
use api::{PoolId, TaskId};

/// What a row last said about a task.
#[derive(Debug, Clone, PartialEq)]
struct Mark {
    state: TaskState,
    attempt: u32,
    pool: Option<PoolId>,
}

#[derive(Debug, Default)]
pub struct Journal {
    enabled: bool,
    touched: Vec<TaskId>,
    written: HashMap<TaskId, Mark>,
}

/// A row to write, or nothing when the task did not change.
pub enum Change {
    /// First row of the task: the request goes with it.
    New,
    /// A state, attempt or pool change: `dispatched` when it is a new attempt on a pool (the
    /// frames written so far go with it).
    Update { dispatched: bool },
}

impl Journal {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Default::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The task changed in a way the bus publishes; its row may need writing.
    pub fn touch(&mut self, id: TaskId) {
        if self.enabled {
            self.touched.push(id);
        }
    }

    /// The tasks touched since the last call (each once, in order).
    pub fn take_touched(&mut self) -> Vec<TaskId> {
        let mut seen = std::collections::HashSet::new();
        let mut out = std::mem::take(&mut self.touched);
        out.retain(|id| seen.insert(*id));
        out
    }

    /// Records what a row will now say; `None` when it says the same as the last one.
    pub fn change(
        &mut self,
        id: TaskId,
        state: TaskState,
        attempt: u32,
        pool: Option<&PoolId>,
    ) -> Option<Change> {
        let mark = Mark {
            state,
            attempt,
            pool: pool.cloned(),
        };
        let change = match self.written.get(&id) {
            None => Change::New,
            Some(m) if *m == mark => return None,
            Some(m) => Change::Update {
                dispatched: state == TaskState::Running && m.attempt != attempt,
            },
        };
        self.written.insert(id, mark);
        Some(change)
    }

    /// Forgets the tasks `keep` refuses (purged from the task table).
    pub fn retain(&mut self, keep: impl Fn(&TaskId) -> bool) {
        self.written.retain(|id, _| keep(id));
    }

    /// A task restored from the database: its row already says this.
    pub fn restored(&mut self, id: TaskId, state: TaskState, attempt: u32, pool: Option<&PoolId>) {
        if self.enabled {
            self.written.insert(
                id,
                Mark {
                    state,
                    attempt,
                    pool: pool.cloned(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_out_only_on_state_attempt_or_pool_changes() {
        let id: TaskId = "00000000-0000-4000-8000-000000000001".parse().unwrap();
        let pool: PoolId = "p1".parse().unwrap();
        let mut j = Journal::new(true);
        j.touch(id);
        j.touch(id);
        assert_eq!(j.take_touched(), vec![id]);
        assert!(matches!(
            j.change(id, TaskState::Queued, 0, None),
            Some(Change::New)
        ));
        assert!(j.change(id, TaskState::Queued, 0, None).is_none());
        assert!(matches!(
            j.change(id, TaskState::Running, 1, Some(&pool)),
            Some(Change::Update { dispatched: true })
        ));
        assert!(j.change(id, TaskState::Running, 1, Some(&pool)).is_none());
        assert!(matches!(
            j.change(id, TaskState::Completed, 1, Some(&pool)),
            Some(Change::Update { dispatched: false })
        ));
        let mut off = Journal::new(false);
        off.touch(id);
        assert!(off.take_touched().is_empty());
    }
}
