//! A bounded queue of task ids in two classes (API.md §6.1): interactive first, FIFO within a
//! class, with batch aging: after `burst` consecutive interactive dispatches while batch waited,
//! the next dispatch goes to the oldest batch task.

use std::collections::VecDeque;

use std::fmt;

use api::task::Priority;
use api::{ModelId, PoolId, TaskId};

/// Which queue a task waits in: its model's (unpinned tasks) or its pool's (pinned tasks and
/// tasks bound to a pool being provisioned). Model queues order before pool queues, each by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueKey {
    Model(ModelId),
    Pool(PoolId),
}

impl fmt::Display for QueueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueKey::Model(m) => write!(f, "model:{m}"),
            QueueKey::Pool(p) => write!(f, "pool:{p}"),
        }
    }
}

#[derive(Debug, Default)]
pub struct Queue {
    interactive: VecDeque<TaskId>,
    batch: VecDeque<TaskId>,
    /// Interactive dispatches in a row while a batch task waited.
    streak: u32,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len_of(&self, p: Priority) -> usize {
        match p {
            Priority::Interactive => self.interactive.len(),
            Priority::Batch => self.batch.len(),
        }
    }

    pub fn push(&mut self, id: TaskId, p: Priority) {
        match p {
            Priority::Interactive => self.interactive.push_back(id),
            Priority::Batch => self.batch.push_back(id),
        }
    }

    /// Puts a task back at the head of its class (a dispatch that must be retried).
    pub fn push_front(&mut self, id: TaskId, p: Priority) {
        match p {
            Priority::Interactive => self.interactive.push_front(id),
            Priority::Batch => self.batch.push_front(id),
        }
    }

    pub fn remove(&mut self, id: TaskId) -> bool {
        let before = self.len();
        self.interactive.retain(|t| *t != id);
        self.batch.retain(|t| *t != id);
        before != self.len()
    }

    /// Task ids in dispatch order, honouring the aging rule for the next pick.
    pub fn dispatch_order(&self, burst: u32) -> Vec<TaskId> {
        let batch_first =
            !self.batch.is_empty() && !self.interactive.is_empty() && self.streak >= burst;
        let (a, b) = if batch_first {
            (&self.batch, &self.interactive)
        } else {
            (&self.interactive, &self.batch)
        };
        a.iter().chain(b.iter()).copied().collect()
    }

    /// Records that `id` (of class `p`) left the queue for dispatch.
    pub fn take(&mut self, id: TaskId, p: Priority) {
        let batch_waited = !self.batch.is_empty();
        self.remove(id);
        match p {
            Priority::Interactive if batch_waited => self.streak += 1,
            _ => self.streak = 0,
        }
    }

    /// 0-based position of `id` in dispatch order.
    pub fn position(&self, id: TaskId, burst: u32) -> Option<usize> {
        self.dispatch_order(burst).iter().position(|t| *t == id)
    }

    /// The oldest task of the lowest class present (the drop-lru victim), and its class.
    pub fn oldest_lowest(&self) -> Option<(TaskId, Priority)> {
        self.batch
            .front()
            .map(|t| (*t, Priority::Batch))
            .or_else(|| {
                self.interactive
                    .front()
                    .map(|t| (*t, Priority::Interactive))
            })
    }

    /// The most recently queued batch task (the shed-low-priority victim).
    pub fn newest_batch(&self) -> Option<TaskId> {
        self.batch.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactive_first_fifo_and_aging() {
        let mut q = Queue::default();
        let ids: Vec<TaskId> = (0..6).map(|_| TaskId::new()).collect();
        q.push(ids[0], Priority::Batch);
        for id in &ids[1..6] {
            q.push(*id, Priority::Interactive);
        }
        let burst = 2;
        let mut order = vec![];
        while !q.is_empty() {
            let next = q.dispatch_order(burst)[0];
            let p = if next == ids[0] {
                Priority::Batch
            } else {
                Priority::Interactive
            };
            q.take(next, p);
            order.push(next);
        }
        // Two interactive, then the aged batch task, then the rest.
        assert_eq!(order, vec![ids[1], ids[2], ids[0], ids[3], ids[4], ids[5]]);
    }

    #[test]
    fn victims() {
        let mut q = Queue::default();
        let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
        q.push(a, Priority::Interactive);
        q.push(b, Priority::Batch);
        q.push(c, Priority::Batch);
        assert_eq!(q.oldest_lowest(), Some((b, Priority::Batch)));
        assert_eq!(q.newest_batch(), Some(c));
        assert_eq!(q.position(a, 4), Some(0));
    }
}
