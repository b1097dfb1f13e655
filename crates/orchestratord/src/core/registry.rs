//! The registry part of the core: the nodes that registered and the pools they report. It owns
//! both maps behind a narrow API; its one invariant is that a pool's copy of its node's facts
//! (online, free VRAM) is refreshed whenever the node changes ([`Registry::sync_node_facts`]), so
//! placement reads pools alone. It also interns the model each pool serves
//! ([`Registry::set_serves`]), so finding a model's pools compares integers, not names.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use api::node::{NodeStatus, PoolStatus};
use api::{CommandId, ModelId, NodeId, PoolId, TaskId};
use daemon::secret::Secret;

pub struct Node {
    pub(super) machine_id: api::MachineId,
    pub(super) address: String,
    pub(super) version: String,
    pub(super) dispatch_token: Secret,
    /// The credential issued at registration (None when the node uses a static token or open mode).
    pub(super) credential: Option<Secret>,
    pub(super) status: NodeStatus,
    pub(super) last_seen: Instant,
    pub(super) registered_at_ms: u64,
    pub(super) last_heartbeat_ms: u64,
    pub(super) seq: u64,
    pub(super) capabilities: api::node::Capabilities,
    pub(super) pools: Vec<PoolId>,
    /// GPU state from the latest heartbeat.
    pub(super) gpus: Vec<api::node::GpuStatus>,
    /// Commands sent in every heartbeat answer until the node reports them (at-least-once).
    pub(super) commands: Vec<api::node::Command>,
}

pub struct PoolEntry {
    pub(super) node_id: NodeId,
    pub(super) status: PoolStatus,
    /// Tasks holding a slot: dispatched and not yet released.
    pub(super) holding: BTreeSet<TaskId>,
    /// Tasks canceled while running whose slot is not yet confirmed free.
    pub(super) releasing: BTreeSet<TaskId>,
    /// The worker answered REPLICA_EXHAUSTED: no free slot until its next heartbeat.
    pub(super) exhausted: bool,
    /// The worker refused a dispatch as not Ready, or its engine was lost under a task: out of
    /// placement until the pool's next report (pool-managerd reports state changes at once).
    pub(super) unready: bool,
    /// When the pool left Ready for a restart (None while Ready or for good).
    pub(super) unready_since: Option<Instant>,
    /// Facts of the pool's node, refreshed by [`Registry::sync_node_facts`] whenever they change, so
    /// placement never looks nodes up per pool.
    pub(super) node_online: bool,
    pub(super) free_vram: u64,
    /// Draining on an operator's request: out of placement until a reload.
    pub(super) draining: bool,
    /// The pool operation in progress (drain, reload or load-model), by command id.
    pub(super) op: Option<(CommandId, api::node::CommandKind)>,
    /// The catalog model this pool serves (§9.2: digest or ref matches), re-derived from every
    /// report; set only through [`Registry::set_serves`], which keeps `serves_key` with it.
    serves: Option<(ModelId, ModelKey)>,
    /// The (model id, digest) of the last report, so catalog writes happen only on change.
    pub(super) reported: Option<(ModelId, Option<String>)>,
    /// The model a `load-model` in progress is loading into this pool.
    pub(super) loading: Option<ModelId>,
    /// The pool's measured speeds, copied from the core's statistics whenever they change, so
    /// cache-aware placement never looks them up per pool.
    pub(super) speed: Option<super::placement::Speed>,
}

/// A model's interned number in the registry (never reused, never stale: it is set together with
/// the model id it stands for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelKey(u32);

impl PoolEntry {
    /// A newly reported pool: no slot held, out of placement until its node's facts are synced
    /// and its model is evaluated.
    pub fn new(node_id: NodeId, status: PoolStatus) -> Self {
        PoolEntry {
            node_id,
            status,
            holding: Default::default(),
            releasing: Default::default(),
            exhausted: false,
            unready: false,
            unready_since: None,
            node_online: false,
            free_vram: 0,
            draining: false,
            op: None,
            serves: None,
            reported: None,
            loading: None,
            speed: None,
        }
    }

    pub fn free_slots(&self) -> u32 {
        if self.exhausted {
            return 0;
        }
        self.status
            .slots_total
            .saturating_sub(self.holding.len() as u32)
    }

    /// The catalog model the pool serves (None when its report does not match the catalog).
    pub fn model_id(&self) -> Option<&ModelId> {
        self.serves.as_ref().map(|(m, _)| m)
    }

    /// True when the pool serves the model interned as `key`.
    pub fn serves_key(&self, key: ModelKey) -> bool {
        self.serves.as_ref().is_some_and(|(_, k)| *k == key)
    }
}

/// Free VRAM on the GPUs of a device mask (`cpu` has none).
fn free_vram(node: &Node, mask: &str) -> u64 {
    if mask == "cpu" {
        return 0;
    }
    mask.split(',')
        .filter_map(|d| node.gpus.iter().find(|g| g.device_id.as_str() == d.trim()))
        .map(|g| g.vram_free_bytes)
        .sum()
}

#[derive(Default)]
pub struct Registry {
    nodes: BTreeMap<NodeId, Node>,
    pools: BTreeMap<PoolId, PoolEntry>,
    /// Nodes and pools changed (or removed) since [`Registry::take_changed`], for the event bus.
    changed_nodes: BTreeSet<NodeId>,
    changed_pools: BTreeSet<PoolId>,
    /// Every model a pool has served, interned (a handful: the catalog's models).
    model_keys: HashMap<ModelId, ModelKey>,
}

impl Registry {
    /// Every node, by id (read-only: changes go through the methods below).
    pub fn nodes(&self) -> &BTreeMap<NodeId, Node> {
        &self.nodes
    }

    /// Every pool, by id (read-only: changes go through the methods below).
    pub fn pools(&self) -> &BTreeMap<PoolId, PoolEntry> {
        &self.pools
    }

    pub fn node<Q: Ord + ?Sized>(&self, id: &Q) -> Option<&Node>
    where
        NodeId: Borrow<Q>,
    {
        self.nodes.get(id)
    }

    pub fn node_mut<Q: Ord + ?Sized>(&mut self, id: &Q) -> Option<&mut Node>
    where
        NodeId: Borrow<Q>,
    {
        let key = self.nodes.get_key_value(id)?.0.clone();
        self.changed_nodes.insert(key);
        self.nodes.get_mut(id)
    }

    /// The nodes and pools changed or removed since the last call.
    pub fn take_changed(&mut self) -> (BTreeSet<NodeId>, BTreeSet<PoolId>) {
        (
            std::mem::take(&mut self.changed_nodes),
            std::mem::take(&mut self.changed_pools),
        )
    }

    /// True when the node is registered and Online.
    pub fn node_online<Q: Ord + ?Sized>(&self, id: &Q) -> bool
    where
        NodeId: Borrow<Q>,
    {
        self.nodes
            .get(id)
            .is_some_and(|n| n.status == NodeStatus::Online)
    }

    pub fn insert_node(&mut self, id: NodeId, node: Node) {
        self.changed_nodes.insert(id.clone());
        self.nodes.insert(id, node);
    }

    pub fn remove_node<Q: Ord + ?Sized>(&mut self, id: &Q) -> Option<(NodeId, Node)>
    where
        NodeId: Borrow<Q>,
    {
        let removed = self.nodes.remove_entry(id);
        if let Some((id, _)) = &removed {
            self.changed_nodes.insert(id.clone());
        }
        removed
    }

    pub fn pool<Q: Ord + ?Sized>(&self, id: &Q) -> Option<&PoolEntry>
    where
        PoolId: Borrow<Q>,
    {
        self.pools.get(id)
    }

    pub fn pool_mut<Q: Ord + ?Sized>(&mut self, id: &Q) -> Option<&mut PoolEntry>
    where
        PoolId: Borrow<Q>,
    {
        let key = self.pools.get_key_value(id)?.0.clone();
        self.changed_pools.insert(key);
        self.pools.get_mut(id)
    }

    pub fn insert_pool(&mut self, id: PoolId, pool: PoolEntry) {
        self.changed_pools.insert(id.clone());
        self.pools.insert(id, pool);
    }

    /// Sets the catalog model `pool` serves (None: none), interning it.
    pub fn set_serves(&mut self, pool: &PoolId, model: Option<ModelId>) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        self.changed_pools.insert(pool.clone());
        p.serves = model.map(|m| {
            let next = ModelKey(self.model_keys.len() as u32);
            let key = *self.model_keys.entry(m.clone()).or_insert(next);
            (m, key)
        });
    }

    /// The interned key of `model`; None when no pool ever served it.
    pub fn model_key(&self, model: &ModelId) -> Option<ModelKey> {
        self.model_keys.get(model).copied()
    }

    /// The pools serving `model`, in pool id order (one integer comparison per pool).
    pub fn serving<'a>(
        &'a self,
        model: &ModelId,
    ) -> impl Iterator<Item = (&'a PoolId, &'a PoolEntry)> + Clone + 'a {
        let key = self.model_key(model);
        self.pools
            .iter()
            .filter(move |(_, p)| key.is_some_and(|k| p.serves_key(k)))
    }

    /// Keeps only the pools for which `keep` is true.
    pub fn retain_pools(&mut self, mut keep: impl FnMut(&PoolId, &mut PoolEntry) -> bool) {
        let changed = &mut self.changed_pools;
        self.pools.retain(|id, p| {
            let k = keep(id, p);
            if !k {
                changed.insert(id.clone());
            }
            k
        });
    }

    /// A dispatch takes one of the pool's slots; false for an unknown pool.
    pub fn hold_slot(&mut self, pool: &PoolId, task: TaskId) -> bool {
        let Some(p) = self.pools.get_mut(pool) else {
            return false;
        };
        self.changed_pools.insert(pool.clone());
        p.holding.insert(task);
        true
    }

    /// The task's slot is free again; true when it held one.
    pub fn release_slot(&mut self, pool: &PoolId, task: TaskId) -> bool {
        let Some(p) = self.pools.get_mut(pool) else {
            return false;
        };
        self.changed_pools.insert(pool.clone());
        p.releasing.remove(&task);
        p.holding.remove(&task)
    }

    /// A canceled task keeps its slot until the worker confirms it free; true when it held one.
    pub fn start_releasing(&mut self, pool: &PoolId, task: TaskId) -> bool {
        match self.pools.get_mut(pool) {
            Some(p) if p.holding.contains(&task) => {
                p.releasing.insert(task);
                true
            }
            _ => false,
        }
    }

    /// The worker answered REPLICA_EXHAUSTED: no free slot until its next report.
    pub fn mark_exhausted(&mut self, pool: &PoolId) {
        if let Some(p) = self.pools.get_mut(pool) {
            self.changed_pools.insert(pool.clone());
            p.exhausted = true;
        }
    }

    /// The worker refused a dispatch as not Ready, or lost its engine under a task.
    pub fn mark_unready(&mut self, pool: &PoolId) {
        if let Some(p) = self.pools.get_mut(pool) {
            p.unready = true;
        }
    }

    /// A dispatch connection to the node was refused or reset: its pools leave placement at once,
    /// until its next heartbeat (which refreshes the node's facts) or its timeout.
    pub fn suspend_node(&mut self, node_id: &NodeId) {
        for p in self.pools.values_mut().filter(|p| p.node_id == *node_id) {
            p.node_online = false;
        }
    }

    /// The node was lost: its pools hold no slots any more.
    pub fn clear_slots_on(&mut self, node_id: &NodeId) {
        for (id, p) in self.pools.iter_mut().filter(|(_, p)| p.node_id == *node_id) {
            self.changed_pools.insert(id.clone());
            p.holding.clear();
            p.releasing.clear();
        }
    }

    /// Copies a node's status and free VRAM into its pools (see [`PoolEntry::node_online`]).
    pub fn sync_node_facts(&mut self, node_id: &NodeId) {
        let Some(node) = self.nodes.get(node_id) else {
            return;
        };
        for pid in &node.pools {
            if let Some(p) = self.pools.get_mut(pid) {
                self.changed_pools.insert(pid.clone());
                p.node_online = node.status == NodeStatus::Online;
                p.free_vram = free_vram(node, &p.status.device_mask);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str) -> PoolStatus {
        serde_json::from_value(serde_json::json!({
            "pool_id": id, "state": "Ready", "engine": "llamacpp", "device_mask": "cpu",
            "slots_total": 1, "slots_free": 1, "ctx_per_slot": 1024, "models": [],
        }))
        .expect("pool status")
    }

    fn ids(r: &Registry, model: &str) -> Vec<String> {
        r.serving(&model.parse().unwrap())
            .map(|(id, _)| id.to_string())
            .collect()
    }

    #[test]
    fn a_models_pools_follow_set_serves_replacement_and_removal() {
        let mut r = Registry::default();
        let n: NodeId = "n".parse().unwrap();
        for p in ["a", "b", "c"] {
            r.insert_pool(p.parse().unwrap(), PoolEntry::new(n.clone(), status(p)));
        }
        assert!(ids(&r, "m").is_empty(), "nothing served before evaluation");
        for p in ["c", "a"] {
            r.set_serves(&p.parse().unwrap(), Some("m".parse().unwrap()));
        }
        r.set_serves(&"b".parse().unwrap(), Some("o".parse().unwrap()));
        assert_eq!(ids(&r, "m"), ["a", "c"]);
        assert_eq!(ids(&r, "o"), ["b"]);
        assert_eq!(ids(&r, "x"), Vec::<String>::new());
        // A model change moves the pool; interned keys are kept, never reused.
        let m_key = r.model_key(&"m".parse().unwrap());
        r.set_serves(&"a".parse().unwrap(), Some("o".parse().unwrap()));
        assert_eq!(ids(&r, "m"), ["c"]);
        assert_eq!(ids(&r, "o"), ["a", "b"]);
        assert_eq!(r.model_key(&"m".parse().unwrap()), m_key);
        // A replaced entry (a pool reported anew) serves nothing until evaluated.
        r.insert_pool("c".parse().unwrap(), PoolEntry::new(n.clone(), status("c")));
        assert!(ids(&r, "m").is_empty());
        // A removed pool is gone; `None` serves nothing.
        r.retain_pools(|id, _| id.as_str() != "b");
        r.set_serves(&"a".parse().unwrap(), None);
        assert!(ids(&r, "o").is_empty());
        // Unknown pools are ignored.
        r.set_serves(&"zz".parse().unwrap(), Some("m".parse().unwrap()));
        assert!(ids(&r, "m").is_empty());
    }
}
