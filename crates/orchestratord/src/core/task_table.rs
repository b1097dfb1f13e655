//! The tasks part of the core: every admitted task by id, and the finished ones in finishing order
//! for retention. It owns both behind a narrow API; its invariant is that a task leaves the table
//! only once finished and past retention (or beyond `max_retained`, oldest first).

use std::collections::{HashMap, VecDeque};
use std::ops::Index;
use std::time::{Duration, Instant};

use api::TaskId;

use super::TaskEntry;

#[derive(Default)]
pub struct TaskTable {
    by_id: HashMap<TaskId, TaskEntry>,
    /// Terminal tasks in finishing order, for retention.
    finished: VecDeque<TaskId>,
}

impl TaskTable {
    pub fn get(&self, id: &TaskId) -> Option<&TaskEntry> {
        self.by_id.get(id)
    }

    pub fn get_mut(&mut self, id: &TaskId) -> Option<&mut TaskEntry> {
        self.by_id.get_mut(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TaskId, &TaskEntry)> {
        self.by_id.iter()
    }

    pub fn insert(&mut self, id: TaskId, entry: TaskEntry) {
        self.by_id.insert(id, entry);
    }

    /// Ids of the tasks for which `f` is true.
    pub fn ids_where(&self, f: impl Fn(&TaskEntry) -> bool) -> Vec<TaskId> {
        self.by_id
            .iter()
            .filter(|(_, t)| f(t))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Records that the task just finished (it becomes a candidate for retention).
    pub fn finished(&mut self, id: TaskId) {
        self.finished.push_back(id);
    }

    /// Drops finished tasks past `retention` or beyond `max_retained` (oldest first).
    pub fn purge(&mut self, now: Instant, retention: Duration, max_retained: usize) {
        while let Some(id) = self.finished.front().copied() {
            let expired = self
                .by_id
                .get(&id)
                .and_then(|t| t.life.finished_at())
                .is_none_or(|f| now.duration_since(f.at) >= retention);
            if expired || self.finished.len() > max_retained {
                self.finished.pop_front();
                if self.by_id.get(&id).is_some_and(|t| t.state().is_terminal()) {
                    self.by_id.remove(&id);
                }
            } else {
                break;
            }
        }
    }
}

impl Index<&TaskId> for TaskTable {
    type Output = TaskEntry;

    fn index(&self, id: &TaskId) -> &TaskEntry {
        &self.by_id[id]
    }
}
