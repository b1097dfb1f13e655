//! The cluster event bus part of the core (`GET /v2/events`): it numbers events, keeps the latest
//! ones in a bounded ring for readers that reconnect with `Last-Event-ID`, and hands each event to
//! every reader through that reader's bounded buffer. It also remembers what it last published per
//! node, pool, task and command, so the core publishes only real changes.
//!
//! Invariants: ids only grow (1, 2, 3, … within one run); a reader sees events in id order with no
//! gap, or a `reset` event; publishing never waits: a reader whose buffer is full gets a last
//! `reset` (`overflow`) frame in the slot kept for it and is dropped, so a slow reader never slows
//! the core. Task events carry their tenant: the HTTP edge shows them only to that tenant and to
//! admins (decision 53), so a non-admin reader's ids skip other tenants' task events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use api::cluster::{ClusterEvent, CommandUpdate, QueueDepth, ResetReason};
use api::node::{NodeView, PoolView};
use api::task::TaskState;
use api::{CommandId, NodeId, PoolId, TaskId, TenantId};

use super::tenants::Scope;
use tokio::sync::mpsc;

/// Events kept for readers that reconnect.
pub const RING_EVENTS: usize = 1024;
/// Frames a reader may fall behind before it is dropped.
pub const READER_BUFFER: usize = 256;

/// One rendered SSE frame (`id:`, `event:`, `data:` lines and the blank line).
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: u64,
    pub text: Arc<str>,
    /// The tenant a task event belongs to; `None` for fleet events, which every reader sees.
    pub tenant: Option<TenantId>,
}

impl Frame {
    /// Whether a reader of `scope` may see this frame: task events go to their tenant and admins.
    pub fn visible_to(&self, scope: &Scope) -> bool {
        self.tenant.as_ref().is_none_or(|t| scope.sees(t))
    }
}

/// What a new reader gets: the frames it missed, then its live buffer.
pub struct Feed {
    pub replay: Vec<Frame>,
    pub live: mpsc::Receiver<Frame>,
}

/// The fields of a task record whose change is published at once; a change in the token count
/// alone waits for the next tick.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct TaskMark {
    pub state: TaskState,
    pub position: Option<u64>,
    pub tokens_out: u64,
}

pub struct Bus {
    next_id: u64,
    ring: VecDeque<Frame>,
    ring_cap: usize,
    readers: Vec<mpsc::Sender<Frame>>,
    reader_cap: usize,
    /// Changed since the last publication (marked by the core, read by `Core::publish_changes`),
    /// in the order they changed.
    tasks: Vec<TaskId>,
    task_marked: HashSet<TaskId>,
    queues: bool,
    /// What was last published.
    last_nodes: HashMap<NodeId, (NodeView, u64)>,
    last_pools: HashMap<PoolId, PoolView>,
    last_queues: Vec<QueueDepth>,
    last_tasks: HashMap<TaskId, TaskMark>,
    last_commands: HashMap<CommandId, CommandUpdate>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::with_capacity(RING_EVENTS, READER_BUFFER)
    }
}

impl Bus {
    pub fn with_capacity(ring_cap: usize, reader_cap: usize) -> Self {
        Self {
            next_id: 1,
            ring: VecDeque::with_capacity(ring_cap.min(4096)),
            ring_cap: ring_cap.max(1),
            readers: Vec::new(),
            reader_cap: reader_cap.max(1),
            tasks: Vec::new(),
            task_marked: HashSet::new(),
            queues: false,
            last_nodes: HashMap::new(),
            last_pools: HashMap::new(),
            last_queues: Vec::new(),
            last_tasks: HashMap::new(),
            last_commands: HashMap::new(),
        }
    }

    /// The id of the latest event (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Numbers, keeps and sends one event; returns its id.
    pub fn publish(&mut self, ev: &ClusterEvent) -> u64 {
        self.publish_for(ev, None)
    }

    /// [`Bus::publish`] for an event only `tenant` (and admins) may see.
    fn publish_for(&mut self, ev: &ClusterEvent, tenant: Option<TenantId>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let frame = Frame {
            id,
            text: render(Some(id), ev).into(),
            tenant,
        };
        if self.ring.len() == self.ring_cap {
            self.ring.pop_front();
        }
        self.ring.push_back(frame.clone());
        self.readers.retain(|tx| {
            // One slot stays free for the overflow notice.
            if tx.capacity() <= 1 {
                let _ = tx.try_send(overflow_frame(id - 1));
                return false;
            }
            tx.try_send(frame.clone()).is_ok()
        });
        id
    }

    /// A new reader. With `last_seen` (its `Last-Event-ID`), it first gets the events after it,
    /// or one `reset` (`gap`) when some of them are no longer kept.
    pub fn subscribe(&mut self, last_seen: Option<u64>) -> Feed {
        let (tx, live) = mpsc::channel(self.reader_cap + 1);
        self.readers.push(tx);
        let replay = match last_seen {
            None => vec![],
            Some(seen) => {
                let oldest = self.ring.front().map_or(self.next_id, |f| f.id);
                if seen > self.last_id() || seen + 1 < oldest {
                    let ev = ClusterEvent::Reset {
                        reason: ResetReason::Gap,
                    };
                    vec![Frame {
                        id: self.last_id(),
                        text: render(Some(self.last_id()), &ev).into(),
                        tenant: None,
                    }]
                } else {
                    self.ring.iter().filter(|f| f.id > seen).cloned().collect()
                }
            }
        };
        Feed { replay, live }
    }

    /// Readers currently attached (dropped readers are noticed at the next event).
    pub fn readers(&self) -> usize {
        self.readers.iter().filter(|tx| !tx.is_closed()).count()
    }

    pub(super) fn mark_task(&mut self, id: TaskId) {
        if self.task_marked.insert(id) {
            self.tasks.push(id);
        }
    }

    /// The tasks marked since the last call, in the order they were first marked.
    pub(super) fn take_tasks(&mut self) -> Vec<TaskId> {
        self.task_marked.clear();
        std::mem::take(&mut self.tasks)
    }

    pub(super) fn mark_queues(&mut self) {
        self.queues = true;
    }

    pub(super) fn take_queues(&mut self) -> bool {
        std::mem::take(&mut self.queues)
    }

    /// Publishes a node view if it differs from the last one (its heartbeat time aside), or if
    /// the last one is `refresh_ms` old, so readers still see heartbeats move.
    pub(super) fn node(&mut self, view: NodeView, now_ms: u64, refresh_ms: u64) {
        if let Some((last, at)) = self.last_nodes.get(&view.node_id) {
            let same = NodeView {
                last_heartbeat_ms: last.last_heartbeat_ms,
                ..view.clone()
            } == *last;
            if same && now_ms.saturating_sub(*at) < refresh_ms {
                return;
            }
        }
        self.last_nodes
            .insert(view.node_id.clone(), (view.clone(), now_ms));
        self.publish(&ClusterEvent::Node {
            node: Box::new(view),
        });
    }

    /// A node is gone: published once, if it was ever published.
    pub(super) fn node_gone(&mut self, node_id: NodeId) {
        if self.last_nodes.remove(&node_id).is_some() {
            self.publish(&ClusterEvent::NodeRemoved { node_id });
        }
    }

    pub(super) fn pool(&mut self, view: PoolView) {
        if self.last_pools.get(&view.pool_id) == Some(&view) {
            return;
        }
        self.last_pools.insert(view.pool_id.clone(), view.clone());
        self.publish(&ClusterEvent::Pool {
            pool: Box::new(view),
        });
    }

    /// A pool is gone: published once, if it was ever published.
    pub(super) fn pool_gone(&mut self, pool_id: PoolId) {
        if self.last_pools.remove(&pool_id).is_some() {
            self.publish(&ClusterEvent::PoolRemoved { pool_id });
        }
    }

    pub(super) fn queues(&mut self, queues: Vec<QueueDepth>) {
        if queues != self.last_queues {
            self.last_queues = queues.clone();
            self.publish(&ClusterEvent::Queue { queues });
        }
    }

    /// What was last published for a task (None when nothing was, or it finished).
    pub(super) fn task_mark(&self, id: &TaskId) -> Option<TaskMark> {
        self.last_tasks.get(id).copied()
    }

    pub(super) fn task(&mut self, record: api::task::TaskRecord, tenant: TenantId) {
        let mark = TaskMark {
            state: record.state,
            position: record.queue_position,
            tokens_out: record.tokens_out,
        };
        if record.state.is_terminal() {
            self.last_tasks.remove(&record.task_id);
        } else {
            self.last_tasks.insert(record.task_id, mark);
        }
        self.publish_for(
            &ClusterEvent::Task {
                task: Box::new(record),
            },
            Some(tenant),
        );
    }

    /// The live tasks' last published marks, for the per-tick progress check.
    pub(super) fn live_tasks(&self) -> impl Iterator<Item = (&TaskId, &TaskMark)> {
        self.last_tasks.iter()
    }

    /// Forgets a task that is gone without a terminal record (purged).
    pub(super) fn forget_task(&mut self, id: &TaskId) {
        self.last_tasks.remove(id);
    }

    /// Publishes a command's status if it changed; fills in what the update leaves out (kind,
    /// pool) from the command's earlier updates.
    pub(super) fn command(&mut self, mut update: CommandUpdate) {
        if let Some(last) = self.last_commands.get(&update.command_id) {
            update.kind = update.kind.or(last.kind);
            update.pool_id = update.pool_id.or_else(|| last.pool_id.clone());
            if *last == update {
                return;
            }
        }
        use api::node::CommandState::{Completed, Failed};
        if matches!(update.status, Completed | Failed) {
            self.last_commands.remove(&update.command_id);
        } else {
            self.last_commands.insert(update.command_id, update.clone());
        }
        self.publish(&ClusterEvent::Command {
            command: Box::new(update),
        });
    }

    pub(super) fn catalog(&mut self, ev: ClusterEvent) {
        self.publish(&ev);
    }
}

/// One SSE frame; without `id` the reader's last event id stays as it was.
fn render(id: Option<u64>, ev: &ClusterEvent) -> String {
    let data = serde_json::to_string(ev).unwrap_or_else(|_| "{}".into());
    match id {
        Some(id) => format!("id: {id}\nevent: {}\ndata: {data}\n\n", ev.name()),
        None => format!("event: {}\ndata: {data}\n\n", ev.name()),
    }
}

/// The last frame a dropped reader gets: no `id`, so it reconnects from the last event it read.
fn overflow_frame(before: u64) -> Frame {
    let ev = ClusterEvent::Reset {
        reason: ResetReason::Overflow,
    };
    Frame {
        id: before,
        text: render(None, &ev).into(),
        tenant: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(n: u64) -> ClusterEvent {
        ClusterEvent::Queue {
            queues: vec![QueueDepth {
                model_id: Some("m".parse().unwrap()),
                pool_id: None,
                interactive: n,
                batch: 0,
            }],
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Frame>) -> Vec<Frame> {
        let mut out = vec![];
        while let Ok(f) = rx.try_recv() {
            out.push(f);
        }
        out
    }

    fn data(f: &Frame) -> ClusterEvent {
        let line = f
            .text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn events_arrive_in_order_with_growing_ids() {
        let mut bus = Bus::default();
        let mut a = bus.subscribe(None);
        let mut b = bus.subscribe(None);
        for n in 0..10 {
            assert_eq!(bus.publish(&queue(n)), n + 1);
        }
        for feed in [&mut a, &mut b] {
            assert!(feed.replay.is_empty());
            let got = drain(&mut feed.live);
            assert_eq!(
                got.iter().map(|f| f.id).collect::<Vec<_>>(),
                (1..=10).collect::<Vec<_>>()
            );
            for (n, f) in got.iter().enumerate() {
                assert_eq!(data(f), queue(n as u64));
                assert!(f
                    .text
                    .starts_with(&format!("id: {}\nevent: queue\ndata: ", n + 1)));
            }
        }
    }

    #[test]
    fn reconnect_with_last_event_id_replays_what_was_missed() {
        let mut bus = Bus::with_capacity(8, 64);
        for n in 0..5 {
            bus.publish(&queue(n));
        }
        // Saw up to 3: gets 4 and 5, then live events.
        let mut feed = bus.subscribe(Some(3));
        assert_eq!(
            feed.replay.iter().map(|f| f.id).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(data(&feed.replay[0]), queue(3));
        bus.publish(&queue(5));
        assert_eq!(
            drain(&mut feed.live)
                .iter()
                .map(|f| f.id)
                .collect::<Vec<_>>(),
            vec![6]
        );
        // Up to date: nothing to replay.
        assert!(bus.subscribe(Some(6)).replay.is_empty());
        // The ring keeps 8: ids 1..=12 published, 5..=12 kept; having seen 4 is still whole.
        for n in 6..12 {
            bus.publish(&queue(n));
        }
        let whole = bus.subscribe(Some(4));
        assert_eq!(
            whole.replay.iter().map(|f| f.id).collect::<Vec<_>>(),
            (5..=12).collect::<Vec<_>>()
        );
        // Having seen 3, event 4 is lost: one reset (gap) carrying the latest id.
        for seen in [3, 0, 99] {
            let gap = bus.subscribe(Some(seen));
            assert_eq!(gap.replay.len(), 1, "seen {seen}");
            assert_eq!(
                data(&gap.replay[0]),
                ClusterEvent::Reset {
                    reason: ResetReason::Gap
                }
            );
            assert!(gap.replay[0].text.starts_with("id: 12\nevent: reset\n"));
        }
    }

    #[test]
    fn a_slow_reader_is_told_and_dropped_without_slowing_the_others() {
        let mut bus = Bus::with_capacity(1024, 4);
        let mut slow = bus.subscribe(None);
        let mut fast = bus.subscribe(None);
        let mut fast_seen = vec![];
        for n in 0..20 {
            bus.publish(&queue(n));
            fast_seen.extend(drain(&mut fast.live).into_iter().map(|f| f.id));
        }
        assert_eq!(fast_seen, (1..=20).collect::<Vec<_>>());
        assert_eq!(bus.readers(), 1, "the slow reader was dropped");
        // The slow reader got the four events that fit, then the overflow notice without an id,
        // then its stream ended.
        let got = drain(&mut slow.live);
        assert_eq!(
            got.iter().map(|f| f.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 4]
        );
        assert_eq!(
            data(&got[4]),
            ClusterEvent::Reset {
                reason: ResetReason::Overflow
            }
        );
        assert!(got[4].text.starts_with("event: reset\n"));
        assert!(matches!(
            slow.live.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        // It reconnects from the last event it read and gets everything after it.
        let back = bus.subscribe(Some(4));
        assert_eq!(
            back.replay.iter().map(|f| f.id).collect::<Vec<_>>(),
            (5..=20).collect::<Vec<_>>()
        );
    }

    #[test]
    fn unchanged_views_are_not_published_again() {
        let mut bus = Bus::default();
        let mut feed = bus.subscribe(None);
        bus.queues(vec![]);
        bus.mark_queues();
        assert!(bus.take_queues());
        assert!(!bus.take_queues());
        let q = |n| QueueDepth {
            model_id: Some("m".parse().unwrap()),
            pool_id: None,
            interactive: n,
            batch: 0,
        };
        bus.queues(vec![q(1)]);
        bus.queues(vec![q(1)]);
        bus.queues(vec![q(2)]);
        bus.queues(vec![]);
        let names: Vec<ClusterEvent> = drain(&mut feed.live).iter().map(data).collect();
        assert_eq!(
            names,
            vec![
                ClusterEvent::Queue { queues: vec![q(1)] },
                ClusterEvent::Queue { queues: vec![q(2)] },
                ClusterEvent::Queue { queues: vec![] },
            ]
        );
    }
}
