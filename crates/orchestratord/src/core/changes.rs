//! What the core publishes on its event bus (`GET /v2/events`), decided after each message: the
//! views of the nodes, pools and tasks that message changed, the queue depths when queues moved,
//! and once a tick the token counts of running tasks. Views are built only for what changed, and
//! the bus drops those equal to what it last published.

use api::cluster::{ClusterEvent, CommandUpdate, QueueDepth};
use api::node::{Command, CommandStatus};
use api::task::{Priority, TaskState};
use api::NodeId;

use super::bus::{Feed, TaskMark};
use super::queue::QueueKey;
use super::{Core, Effects};

/// A node view is published again at least this often while it heartbeats, so readers see its
/// heartbeat time move.
const NODE_REFRESH_MS: u64 = 5_000;

impl<E: Effects> Core<E> {
    /// A new `/v2/events` reader (see [`super::bus::Bus::subscribe`]).
    pub fn subscribe_events(&mut self, last_seen: Option<u64>) -> Feed {
        self.bus.subscribe(last_seen)
    }

    /// Publishes what changed since the last call; `tick` adds running tasks' token counts.
    pub fn publish_changes(&mut self, tick: bool) {
        let (nodes, pools) = self.registry.take_changed();
        let now_ms = daemon::now_ms();
        // A changed id the registry no longer holds was removed.
        for id in nodes {
            match self.node_view(&id) {
                Some(view) => self.bus.node(view, now_ms, NODE_REFRESH_MS),
                None => self.bus.node_gone(id),
            }
        }
        for id in pools {
            match self.pool_view(&id) {
                Some(view) => self.bus.pool(view),
                None => self.bus.pool_gone(id),
            }
        }
        if self.bus.take_queues() {
            let depths = self.queue_depths();
            self.bus.queues(depths);
        }
        let mut tasks = self.bus.take_tasks();
        if tick {
            let marked: std::collections::HashSet<api::TaskId> = tasks.iter().copied().collect();
            let progressed: Vec<api::TaskId> = self
                .bus
                .live_tasks()
                .filter(|(id, mark)| {
                    self.tasks.get(id).is_none_or(|t| {
                        t.state() == TaskState::Running && t.tokens_out() != mark.tokens_out
                    })
                })
                .map(|(id, _)| *id)
                .filter(|id| !marked.contains(id))
                .collect();
            tasks.extend(progressed);
        }
        for id in tasks {
            let Some(record) = self.record(id, &super::tenants::Scope::All) else {
                self.bus.forget_task(&id);
                continue;
            };
            let mark = TaskMark {
                state: record.state,
                position: record.queue_position,
                tokens_out: record.tokens_out,
            };
            // A token count alone waits for the tick; anything else goes out at once.
            let only_tokens = self
                .bus
                .task_mark(&id)
                .is_some_and(|last| last.state == mark.state && last.position == mark.position);
            if only_tokens && !tick {
                continue;
            }
            if self.bus.task_mark(&id) != Some(mark) {
                let tenant = self.tasks[&id].tenant.clone();
                self.bus.task(record, tenant);
            }
        }
    }

    /// Every non-empty queue's depth by priority.
    pub fn queue_depths(&self) -> Vec<QueueDepth> {
        self.queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| {
                let (model_id, pool_id) = match k {
                    QueueKey::Model(m) => (Some(m.clone()), None),
                    QueueKey::Pool(p) => (None, Some(p.clone())),
                };
                QueueDepth {
                    model_id,
                    pool_id,
                    interactive: q.len_of(Priority::Interactive) as u64,
                    batch: q.len_of(Priority::Batch) as u64,
                }
            })
            .collect()
    }

    /// A command was sent to a node.
    pub(super) fn publish_command_sent(&mut self, node_id: &NodeId, cmd: &Command) {
        self.bus.command(CommandUpdate {
            command_id: cmd.command_id,
            kind: Some(cmd.kind),
            node_id: node_id.clone(),
            pool_id: cmd.pool_id.clone(),
            status: api::node::CommandState::Accepted,
            progress: vec![],
            error: None,
        });
    }

    /// A node reported a command's status.
    pub(super) fn publish_command_status(&mut self, node_id: &NodeId, st: &CommandStatus) {
        self.bus.command(CommandUpdate {
            command_id: st.command_id,
            kind: None,
            node_id: node_id.clone(),
            pool_id: None,
            status: st.status,
            progress: st.progress.clone(),
            error: st.error.clone(),
        });
    }

    /// Catalog changes, published as they are handed to the store.
    pub(super) fn publish_catalog_writes(&mut self, writes: &[catalog::Write]) {
        for w in writes {
            let ev = match w {
                catalog::Write::Put(model) => ClusterEvent::Catalog {
                    model: Box::new(model.clone()),
                },
                catalog::Write::Delete(id) => match id.parse() {
                    Ok(model_id) => ClusterEvent::CatalogRemoved { model_id },
                    Err(_) => continue,
                },
            };
            self.bus.catalog(ev);
        }
    }

    /// The bus, for tests and the runner's reader count.
    pub fn bus(&self) -> &super::bus::Bus {
        &self.bus
    }
}
