//! The queues part of the core: one bounded queue of task ids per [`QueueKey`] (API.md §6.1), each
//! in two classes: interactive first, FIFO within a class, with batch aging: after `burst`
//! consecutive interactive dispatches while batch waited, the next dispatch goes to the oldest batch
//! task.

use std::collections::VecDeque;

use std::collections::BTreeMap;
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

/// The queues part of the core: one [`Queue`] per [`QueueKey`], an empty queue being absent.
#[derive(Debug, Default)]
pub struct Queues {
    by_key: BTreeMap<QueueKey, Queue>,
}

impl Queues {
    pub fn get(&self, key: &QueueKey) -> Option<&Queue> {
        self.by_key.get(key)
    }

    pub fn get_mut(&mut self, key: &QueueKey) -> Option<&mut Queue> {
        self.by_key.get_mut(key)
    }

    /// Tasks waiting under `key`.
    pub fn len(&self, key: &QueueKey) -> usize {
        self.by_key.get(key).map_or(0, Queue::len)
    }

    /// Every queue in key order (model queues first).
    pub fn iter(&self) -> impl Iterator<Item = (&QueueKey, &Queue)> {
        self.by_key.iter()
    }

    pub fn keys(&self) -> Vec<QueueKey> {
        self.by_key.keys().cloned().collect()
    }

    /// Appends a task to its queue.
    pub fn push(&mut self, key: QueueKey, id: TaskId, p: Priority) {
        self.by_key.entry(key).or_default().push(id, p);
    }

    /// Puts a task back at the head of its queue (a failed attempt that may retry).
    pub fn push_front(&mut self, key: QueueKey, id: TaskId, p: Priority) {
        self.by_key.entry(key).or_default().push_front(id, p);
    }

    /// Removes a task from its queue.
    pub fn remove(&mut self, key: &QueueKey, id: TaskId) {
        if let Some(q) = self.by_key.get_mut(key) {
            q.remove(id);
        }
    }

    /// Forgets queues that emptied.
    pub fn drop_empty(&mut self) {
        self.by_key.retain(|_, q| !q.is_empty());
    }
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

    /// Task ids in dispatch order: the order in which the queue hands them out when every pick
    /// is taken, with the aging rule applied at every step (API.md §4.1 `queue_position`).
    pub fn dispatch_order(&self, burst: u32) -> Vec<TaskId> {
        let (mut i, mut b) = (self.interactive.iter(), self.batch.iter());
        classes(self.interactive.len(), self.batch.len(), self.streak, burst)
            .filter_map(|c| match c {
                Priority::Interactive => i.next(),
                Priority::Batch => b.next(),
            })
            .copied()
            .collect()
    }

    /// The 0-based dispatch position a new task of class `p` would get if pushed now, after
    /// `evicted` (a queued task's class) left the queue.
    pub fn position_of_new(&self, p: Priority, evicted: Option<Priority>, burst: u32) -> usize {
        let less = |c: Priority| usize::from(evicted == Some(c));
        let mut ni = self.interactive.len() - less(Priority::Interactive);
        let mut nb = self.batch.len() - less(Priority::Batch);
        let ahead_in_class = match p {
            Priority::Interactive => ni,
            Priority::Batch => nb,
        };
        match p {
            Priority::Interactive => ni += 1,
            Priority::Batch => nb += 1,
        }
        classes(ni, nb, self.streak, burst)
            .enumerate()
            .filter(|(_, c)| *c == p)
            .nth(ahead_in_class)
            .map(|(pos, _)| pos)
            .unwrap_or(ahead_in_class)
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

/// The classes of successive dispatches from a queue holding `ni` interactive and `nb` batch
/// tasks, starting from `streak`; mirrors [`Queue::take`].
fn classes(ni: usize, nb: usize, streak: u32, burst: u32) -> impl Iterator<Item = Priority> {
    let (mut ni, mut nb, mut streak) = (ni, nb, streak);
    std::iter::from_fn(move || {
        let batch = match (ni, nb) {
            (0, 0) => return None,
            (0, _) => true,
            (_, 0) => false,
            _ => streak >= burst,
        };
        if batch {
            nb -= 1;
            streak = 0;
            Some(Priority::Batch)
        } else {
            streak = if nb > 0 { streak + 1 } else { 0 };
            ni -= 1;
            Some(Priority::Interactive)
        }
    })
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

    #[test]
    fn dispatch_order_applies_aging_at_every_step() {
        let mut q = Queue::default();
        let b: Vec<TaskId> = (0..2).map(|_| TaskId::new()).collect();
        let i: Vec<TaskId> = (0..5).map(|_| TaskId::new()).collect();
        for id in &b {
            q.push(*id, Priority::Batch);
        }
        for id in &i {
            q.push(*id, Priority::Interactive);
        }
        assert_eq!(
            q.dispatch_order(2),
            vec![i[0], i[1], b[0], i[2], i[3], b[1], i[4]]
        );
        // The order is what taking the head repeatedly produces.
        let mut taken = vec![];
        while let Some(next) = q.dispatch_order(2).first().copied() {
            let p = if b.contains(&next) {
                Priority::Batch
            } else {
                Priority::Interactive
            };
            q.take(next, p);
            taken.push(next);
        }
        assert_eq!(taken, vec![i[0], i[1], b[0], i[2], i[3], b[1], i[4]]);
    }

    #[test]
    fn position_of_a_newcomer() {
        let check = |q: &Queue, p: Priority, evicted: Option<Priority>, expected: usize| {
            assert_eq!(q.position_of_new(p, evicted, 2), expected);
        };
        let mut q = Queue::default();
        check(&q, Priority::Batch, None, 0);
        for _ in 0..3 {
            q.push(TaskId::new(), Priority::Batch);
        }
        // Batch tasks wait behind a new interactive task, up to the aging rule.
        check(&q, Priority::Interactive, None, 0);
        check(&q, Priority::Batch, None, 3);
        for _ in 0..3 {
            q.push(TaskId::new(), Priority::Interactive);
        }
        // I I B I [new] B B: one aged batch task goes before the fourth interactive dispatch.
        check(&q, Priority::Interactive, None, 4);
        check(&q, Priority::Batch, None, 6);
        // With a batch task evicted for it, the newcomer is still behind the same picks.
        check(&q, Priority::Interactive, Some(Priority::Batch), 4);
        check(&q, Priority::Batch, Some(Priority::Batch), 5);
        // The new position agrees with the order once the task is queued.
        let id = TaskId::new();
        let expected = q.position_of_new(Priority::Interactive, None, 2);
        q.push(id, Priority::Interactive);
        assert_eq!(q.position(id, 2), Some(expected));
    }
}
