//! The queues part of the core: one bounded queue of task ids per [`QueueKey`] (API.md §6.1), each
//! in two classes: interactive first, with batch aging: after `burst` consecutive interactive
//! dispatches while batch waited, the next dispatch goes to the first batch task.
//!
//! Within a class, tasks are ordered weighted-fair across tenants (start-time fair queuing): a
//! tenant's task gets the start tag `max(V, F)`, where `V` is the class's virtual time (the tag of
//! the task dispatched last) and `F` the finish tag of the tenant's previous task, and its own
//! finish tag is `start + SCALE / weight`. Tasks go in tag order, FIFO among equal tags. A tenant
//! with 1,000 queued tasks has tags far ahead of `V`, so another tenant's new task goes before
//! nearly all of them. With fair queuing off (`queue.fair = false`) every tag is 0: plain FIFO.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use api::task::Priority;
use api::{ModelId, PoolId, TaskId, TenantId};

/// Virtual-time units per task at weight 1 (divisible by every weight up to 16, so common
/// weights give exact tags).
const SCALE: u64 = 720_720;

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

/// A task's place in its class: (start tag, arrival sequence).
type Place = (u64, u64);

/// One priority class of a queue, in weighted-fair order.
#[derive(Debug, Default)]
struct Class {
    order: BTreeMap<Place, TaskId>,
    entries: HashMap<TaskId, (TenantId, Place)>,
    /// Finish tag of each tenant's last queued task.
    last_finish: HashMap<TenantId, u64>,
    per_tenant: HashMap<TenantId, usize>,
    /// The start tag of the task dispatched last.
    vtime: u64,
}

impl Class {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The start and finish tags a new task of `tenant` would get.
    fn tags(&self, tenant: &TenantId, weight: u32, fair: bool) -> (u64, u64) {
        if !fair {
            return (0, 0);
        }
        let start = self
            .last_finish
            .get(tenant)
            .copied()
            .unwrap_or(0)
            .max(self.vtime);
        (start, start + SCALE / u64::from(weight.max(1)))
    }

    fn insert(&mut self, id: TaskId, tenant: &TenantId, place: Place) {
        self.order.insert(place, id);
        self.entries.insert(id, (tenant.clone(), place));
        *self.per_tenant.entry(tenant.clone()).or_default() += 1;
    }

    fn push(&mut self, id: TaskId, tenant: &TenantId, weight: u32, fair: bool, seq: u64) {
        let (start, finish) = self.tags(tenant, weight, fair);
        if fair {
            self.last_finish.insert(tenant.clone(), finish);
        }
        self.insert(id, tenant, (start, seq));
    }

    /// Puts a task ahead of every other (a dispatch that must be retried).
    fn push_front(&mut self, id: TaskId, tenant: &TenantId, seq: u64) {
        let first = self.order.keys().next().map_or(self.vtime, |k| k.0);
        self.insert(id, tenant, (first.min(self.vtime), seq));
    }

    /// Removes a task; returns its start tag.
    fn remove(&mut self, id: TaskId) -> Option<u64> {
        let (tenant, place) = self.entries.remove(&id)?;
        self.order.remove(&place);
        if let Some(n) = self.per_tenant.get_mut(&tenant) {
            *n -= 1;
            if *n == 0 {
                self.per_tenant.remove(&tenant);
                // An idle tenant's next task starts at the virtual time anyway.
                if self
                    .last_finish
                    .get(&tenant)
                    .is_some_and(|f| *f <= self.vtime)
                {
                    self.last_finish.remove(&tenant);
                }
            }
        }
        Some(place.0)
    }

    fn iter(&self) -> impl Iterator<Item = &TaskId> {
        self.order.values()
    }

    /// The earliest arrival (the drop-lru victim's class order).
    fn oldest(&self) -> Option<TaskId> {
        self.entries
            .iter()
            .min_by_key(|(_, (_, place))| place.1)
            .map(|(id, _)| *id)
    }

    fn newest(&self) -> Option<TaskId> {
        self.entries
            .iter()
            .max_by_key(|(_, (_, place))| place.1)
            .map(|(id, _)| *id)
    }
}

#[derive(Debug)]
pub struct Queue {
    interactive: Class,
    batch: Class,
    /// Interactive dispatches in a row while a batch task waited.
    streak: u32,
    fair: bool,
    /// Arrival sequence of the next push; pushes to the front count down from below it.
    next_seq: u64,
    front_seq: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Self::new(true)
    }
}

/// The queues part of the core: one [`Queue`] per [`QueueKey`], an empty queue being absent.
#[derive(Debug)]
pub struct Queues {
    by_key: BTreeMap<QueueKey, Queue>,
    fair: bool,
}

impl Queues {
    /// `fair`: weighted-fair across tenants within a class; otherwise FIFO.
    pub fn new(fair: bool) -> Self {
        Self {
            by_key: BTreeMap::new(),
            fair,
        }
    }

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

    /// Tasks of `tenant` waiting in any queue.
    pub fn queued_of(&self, tenant: &TenantId) -> usize {
        self.by_key.values().map(|q| q.len_of_tenant(tenant)).sum()
    }

    /// Every queue in key order (model queues first).
    pub fn iter(&self) -> impl Iterator<Item = (&QueueKey, &Queue)> {
        self.by_key.iter()
    }

    pub fn keys(&self) -> Vec<QueueKey> {
        self.by_key.keys().cloned().collect()
    }

    /// Appends a task of `tenant` (of `weight`) to its queue.
    pub fn push(&mut self, key: QueueKey, id: TaskId, p: Priority, tenant: &TenantId, weight: u32) {
        let fair = self.fair;
        self.by_key
            .entry(key)
            .or_insert_with(|| Queue::new(fair))
            .push(id, p, tenant, weight);
    }

    /// Puts a task back at the head of its queue (a failed attempt that may retry).
    pub fn push_front(&mut self, key: QueueKey, id: TaskId, p: Priority, tenant: &TenantId) {
        let fair = self.fair;
        self.by_key
            .entry(key)
            .or_insert_with(|| Queue::new(fair))
            .push_front(id, p, tenant);
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
    pub fn new(fair: bool) -> Self {
        Self {
            interactive: Class::default(),
            batch: Class::default(),
            streak: 0,
            fair,
            next_seq: 1 << 62,
            front_seq: (1 << 62) - 1,
        }
    }

    fn class(&self, p: Priority) -> &Class {
        match p {
            Priority::Interactive => &self.interactive,
            Priority::Batch => &self.batch,
        }
    }

    fn class_mut(&mut self, p: Priority) -> &mut Class {
        match p {
            Priority::Interactive => &mut self.interactive,
            Priority::Batch => &mut self.batch,
        }
    }

    pub fn len(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len_of(&self, p: Priority) -> usize {
        self.class(p).len()
    }

    pub fn len_of_tenant(&self, tenant: &TenantId) -> usize {
        [&self.interactive, &self.batch]
            .iter()
            .map(|c| c.per_tenant.get(tenant).copied().unwrap_or(0))
            .sum()
    }

    pub fn push(&mut self, id: TaskId, p: Priority, tenant: &TenantId, weight: u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let fair = self.fair;
        self.class_mut(p).push(id, tenant, weight, fair, seq);
    }

    /// Puts a task back at the head of its class (a dispatch that must be retried).
    pub fn push_front(&mut self, id: TaskId, p: Priority, tenant: &TenantId) {
        let seq = self.front_seq;
        self.front_seq -= 1;
        self.class_mut(p).push_front(id, tenant, seq);
    }

    pub fn remove(&mut self, id: TaskId) -> bool {
        self.interactive.remove(id).is_some() || self.batch.remove(id).is_some()
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

    /// The 0-based dispatch position a new task of class `p` and `tenant` would get if pushed
    /// now, after `evicted` (a queued task) left the queue.
    pub fn position_of_new(
        &self,
        p: Priority,
        tenant: &TenantId,
        weight: u32,
        evicted: Option<TaskId>,
        burst: u32,
    ) -> usize {
        let class = self.class(p);
        let (start, _) = class.tags(tenant, weight, self.fair);
        let ahead_in_class = class
            .order
            .range(..(start, self.next_seq))
            .filter(|(_, id)| Some(**id) != evicted)
            .count();
        let less = |c: Priority| {
            usize::from(evicted.is_some_and(|e| self.class(c).entries.contains_key(&e)))
        };
        let mut ni = self.interactive.len() - less(Priority::Interactive);
        let mut nb = self.batch.len() - less(Priority::Batch);
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
        let class = self.class_mut(p);
        if let Some(start) = class.remove(id) {
            class.vtime = class.vtime.max(start);
        }
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
            .oldest()
            .map(|t| (t, Priority::Batch))
            .or_else(|| {
                self.interactive
                    .oldest()
                    .map(|t| (t, Priority::Interactive))
            })
    }

    /// The most recently queued batch task (the shed-low-priority victim).
    pub fn newest_batch(&self) -> Option<TaskId> {
        self.batch.newest()
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

    fn t(name: &str) -> TenantId {
        name.parse().expect("tenant")
    }

    #[test]
    fn interactive_first_fifo_and_aging() {
        let mut q = Queue::default();
        let ids: Vec<TaskId> = (0..6).map(|_| TaskId::new()).collect();
        q.push(ids[0], Priority::Batch, &t("a"), 1);
        for id in &ids[1..6] {
            q.push(*id, Priority::Interactive, &t("a"), 1);
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
        q.push(a, Priority::Interactive, &t("a"), 1);
        q.push(b, Priority::Batch, &t("a"), 1);
        q.push(c, Priority::Batch, &t("a"), 1);
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
            q.push(*id, Priority::Batch, &t("a"), 1);
        }
        for id in &i {
            q.push(*id, Priority::Interactive, &t("a"), 1);
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
        let check = |q: &Queue, p: Priority, evicted: Option<TaskId>, expected: usize| {
            assert_eq!(q.position_of_new(p, &t("a"), 1, evicted, 2), expected);
        };
        let mut q = Queue::default();
        check(&q, Priority::Batch, None, 0);
        let batch: Vec<TaskId> = (0..3).map(|_| TaskId::new()).collect();
        for id in &batch {
            q.push(*id, Priority::Batch, &t("a"), 1);
        }
        // Batch tasks wait behind a new interactive task, up to the aging rule.
        check(&q, Priority::Interactive, None, 0);
        check(&q, Priority::Batch, None, 3);
        for _ in 0..3 {
            q.push(TaskId::new(), Priority::Interactive, &t("a"), 1);
        }
        // I I B I [new] B B: one aged batch task goes before the fourth interactive dispatch.
        check(&q, Priority::Interactive, None, 4);
        check(&q, Priority::Batch, None, 6);
        // With a batch task evicted for it, the newcomer is still behind the same picks.
        check(&q, Priority::Interactive, Some(batch[0]), 4);
        check(&q, Priority::Batch, Some(batch[0]), 5);
        // The new position agrees with the order once the task is queued.
        let id = TaskId::new();
        let expected = q.position_of_new(Priority::Interactive, &t("a"), 1, None, 2);
        q.push(id, Priority::Interactive, &t("a"), 1);
        assert_eq!(q.position(id, 2), Some(expected));
    }

    /// Takes the head of the dispatch order until the queue is empty.
    fn drain(q: &mut Queue, class_of: impl Fn(TaskId) -> Priority) -> Vec<TaskId> {
        let mut taken = vec![];
        while let Some(next) = q.dispatch_order(4).first().copied() {
            q.take(next, class_of(next));
            taken.push(next);
        }
        taken
    }

    #[test]
    fn a_flooding_tenant_does_not_hold_back_another() {
        let mut q = Queue::new(true);
        let flood: Vec<TaskId> = (0..1000).map(|_| TaskId::new()).collect();
        for id in &flood {
            q.push(*id, Priority::Interactive, &t("a"), 1);
        }
        // Two of a's tasks leave before b arrives.
        for id in &flood[..2] {
            q.take(*id, Priority::Interactive);
        }
        let b = TaskId::new();
        assert_eq!(
            q.position_of_new(Priority::Interactive, &t("b"), 1, None, 4),
            0
        );
        q.push(b, Priority::Interactive, &t("b"), 1);
        assert_eq!(q.position(b, 4), Some(0));
        // FIFO puts it behind all 998.
        let mut fifo = Queue::new(false);
        for id in &flood {
            fifo.push(*id, Priority::Interactive, &t("a"), 1);
        }
        fifo.push(b, Priority::Interactive, &t("b"), 1);
        assert_eq!(fifo.position(b, 4), Some(1000));
    }

    #[test]
    fn weights_share_dispatches() {
        let mut q = Queue::new(true);
        let a: Vec<TaskId> = (0..30).map(|_| TaskId::new()).collect();
        let b: Vec<TaskId> = (0..30).map(|_| TaskId::new()).collect();
        for id in &a {
            q.push(*id, Priority::Batch, &t("a"), 2);
        }
        for id in &b {
            q.push(*id, Priority::Batch, &t("b"), 1);
        }
        let order = drain(&mut q, |_| Priority::Batch);
        // While both wait, a (weight 2) gets two dispatches for each of b's.
        let first = &order[..30];
        let of_a = first.iter().filter(|id| a.contains(id)).count();
        assert_eq!(of_a, 20, "{first:?}");
        // Each tenant's tasks stay in their own FIFO order.
        let a_order: Vec<TaskId> = order.iter().filter(|id| a.contains(id)).copied().collect();
        assert_eq!(a_order, a);
    }

    #[test]
    fn fair_queuing_keeps_aging_between_classes() {
        let mut q = Queue::new(true);
        let batch = TaskId::new();
        q.push(batch, Priority::Batch, &t("a"), 1);
        let inter: Vec<TaskId> = (0..6).map(|_| TaskId::new()).collect();
        for (k, id) in inter.iter().enumerate() {
            let who = if k % 2 == 0 { "a" } else { "b" };
            q.push(*id, Priority::Interactive, &t(who), 1);
        }
        let order = drain(&mut q, |id| {
            if id == batch {
                Priority::Batch
            } else {
                Priority::Interactive
            }
        });
        // burst 4: four interactive dispatches, then the aged batch task.
        assert_eq!(order[4], batch);
        assert_eq!(order.len(), 7);
    }

    #[test]
    fn retried_task_goes_first_and_counts_are_per_tenant() {
        let mut q = Queue::new(true);
        let ids: Vec<TaskId> = (0..3).map(|_| TaskId::new()).collect();
        for id in &ids {
            q.push(*id, Priority::Interactive, &t("a"), 1);
        }
        q.take(ids[0], Priority::Interactive);
        let retried = TaskId::new();
        q.push_front(retried, Priority::Interactive, &t("b"));
        assert_eq!(q.dispatch_order(4)[0], retried);
        assert_eq!(q.len_of_tenant(&t("a")), 2);
        assert_eq!(q.len_of_tenant(&t("b")), 1);
        q.remove(retried);
        assert_eq!(q.len_of_tenant(&t("b")), 0);
    }
}
