//! Placement (API.md §7.1–7.3): which pools may run a task, and which one wins. Pure functions over
//! a view of the pools; the core owns the state and applies the decision.

use api::node::{NodeStatus, PoolState};
use api::task::{Placement, PlacementMode};
use api::{ModelId, NodeId, PoolId};

/// What placement needs to know about one pool.
#[derive(Debug, Clone)]
pub struct PoolView<'a> {
    pub pool_id: &'a PoolId,
    pub node_id: &'a NodeId,
    pub node_status: NodeStatus,
    pub state: PoolState,
    pub model_id: Option<&'a ModelId>,
    pub ctx_per_slot: u64,
    pub device_mask: &'a str,
    pub free_slots: u32,
    pub load: usize,
    pub free_vram: u64,
}

/// True when `p` may run a task for `model` needing `ctx` under `placement` (ignoring free slots).
pub fn is_candidate(
    p: &PoolView<'_>,
    model: &ModelId,
    ctx: Option<u64>,
    placement: &Placement,
) -> bool {
    p.node_status == NodeStatus::Online
        && p.state == PoolState::Ready
        && p.model_id == Some(model)
        && ctx.is_none_or(|c| p.ctx_per_slot >= c)
        && placement
            .require_device_mask
            .as_deref()
            .is_none_or(|m| m == p.device_mask)
        && match placement.mode {
            PlacementMode::Pin => placement.pin_pool_id.as_ref() == Some(p.pool_id),
            _ => true,
        }
}

/// Picks the pool for a task among `pools`, or `None` when no candidate has a free slot now.
/// `affinity` is the session's last pool. The order is total, so equal inputs give equal decisions.
pub fn choose<'a>(
    pools: &[PoolView<'a>],
    model: &ModelId,
    ctx: Option<u64>,
    placement: &Placement,
    affinity: Option<&PoolId>,
    tried: &[PoolId],
) -> (Option<&'a PoolId>, usize) {
    let mut cands: Vec<&PoolView<'a>> = pools
        .iter()
        .filter(|p| is_candidate(p, model, ctx, placement) && !tried.contains(p.pool_id))
        .collect();
    if placement.mode != PlacementMode::Pin && !placement.avoid_pools.is_empty() {
        let kept: Vec<&PoolView<'a>> = cands
            .iter()
            .copied()
            .filter(|p| !placement.avoid_pools.contains(p.pool_id))
            .collect();
        if !kept.is_empty() || !placement.allow_fallback {
            cands = kept;
        }
    }
    let considered = cands.len();
    let free: Vec<&PoolView<'a>> = cands.into_iter().filter(|p| p.free_slots > 0).collect();
    if let Some(a) = affinity {
        if let Some(p) = free.iter().find(|p| p.pool_id == a) {
            return (Some(p.pool_id), considered);
        }
    }
    let preferred = |p: &PoolView<'_>| {
        placement.mode == PlacementMode::Prefer && placement.prefer_pools.contains(p.pool_id)
    };
    let only_preferred = placement.mode == PlacementMode::Prefer && !placement.allow_fallback;
    // One pass with a total order: O(pools) per decision, no sorting and no allocation.
    let best = free
        .into_iter()
        .filter(|p| !only_preferred || preferred(p))
        .min_by(|a, b| {
            preferred(b)
                .cmp(&preferred(a))
                .then(b.free_slots.cmp(&a.free_slots))
                .then(a.load.cmp(&b.load))
                .then(b.free_vram.cmp(&a.free_vram))
                .then(a.node_id.cmp(b.node_id))
                .then(a.pool_id.cmp(b.pool_id))
        });
    (best.map(|p| p.pool_id), considered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typed id that lives for the whole test (test ids are few and small).
    fn id<T: std::str::FromStr>(s: &str) -> &'static T
    where
        T::Err: std::fmt::Debug,
    {
        Box::leak(Box::new(s.parse().unwrap()))
    }

    fn pool(pool_id: &str, node: &str, free: u32, load: usize) -> PoolView<'static> {
        PoolView {
            pool_id: id(pool_id),
            node_id: id(node),
            node_status: NodeStatus::Online,
            state: PoolState::Ready,
            model_id: Some(id("m")),
            ctx_per_slot: 4096,
            device_mask: "cpu",
            free_slots: free,
            load,
            free_vram: 0,
        }
    }

    fn check(
        pools: &[PoolView<'_>],
        placement: &Placement,
        affinity: Option<&str>,
        expected: Option<&str>,
    ) {
        assert_eq!(
            choose(pools, id("m"), None, placement, affinity.map(id), &[])
                .0
                .map(PoolId::as_str),
            expected
        );
    }

    #[test]
    fn least_loaded_then_tie_break() {
        let auto = Placement::default();
        check(
            &[pool("a", "n1", 1, 1), pool("b", "n1", 2, 0)],
            &auto,
            None,
            Some("b"),
        );
        check(
            &[pool("b", "n2", 1, 0), pool("a", "n2", 1, 0)],
            &auto,
            None,
            Some("a"),
        );
        check(
            &[pool("a", "n2", 1, 0), pool("b", "n1", 1, 0)],
            &auto,
            None,
            Some("b"),
        );
        check(&[pool("a", "n1", 0, 1)], &auto, None, None);
    }

    #[test]
    fn affinity_only_with_a_free_slot() {
        let auto = Placement::default();
        check(
            &[pool("a", "n1", 2, 0), pool("b", "n1", 1, 1)],
            &auto,
            Some("b"),
            Some("b"),
        );
        check(
            &[pool("a", "n1", 2, 0), pool("b", "n1", 0, 1)],
            &auto,
            Some("b"),
            Some("a"),
        );
    }

    #[test]
    fn prefer_avoid_mask_and_fallback() {
        let pools = [pool("a", "n1", 3, 0), pool("b", "n1", 1, 0)];
        let prefer = Placement {
            mode: PlacementMode::Prefer,
            prefer_pools: vec![id::<PoolId>("b").clone()],
            ..Default::default()
        };
        check(&pools, &prefer, None, Some("b"));
        let prefer_only = Placement {
            mode: PlacementMode::Prefer,
            prefer_pools: vec![id::<PoolId>("b").clone()],
            allow_fallback: false,
            ..Default::default()
        };
        check(
            &[pool("a", "n1", 3, 0), pool("b", "n1", 0, 1)],
            &prefer_only,
            None,
            None,
        );
        let avoid = Placement {
            avoid_pools: vec![id::<PoolId>("a").clone()],
            ..Default::default()
        };
        check(&pools, &avoid, None, Some("b"));
        // Avoided pools are used when nothing else is a candidate and fallback is allowed...
        check(&[pool("a", "n1", 1, 0)], &avoid, None, Some("a"));
        // ...and never when it is not.
        check(
            &[pool("a", "n1", 1, 0)],
            &Placement {
                allow_fallback: false,
                ..avoid.clone()
            },
            None,
            None,
        );
        let mut gpu = pool("g", "n1", 1, 0);
        gpu.device_mask = "0,1";
        let masked = Placement {
            require_device_mask: Some("0,1".into()),
            ..Default::default()
        };
        check(
            &[pool("a", "n1", 5, 0), gpu.clone()],
            &masked,
            None,
            Some("g"),
        );
        // More free VRAM wins between otherwise equal pools.
        let mut rich = pool("z", "n9", 1, 0);
        rich.free_vram = 10;
        check(
            &[pool("a", "n1", 1, 0), rich],
            &Placement::default(),
            None,
            Some("z"),
        );
    }

    #[test]
    fn pin_and_model_filter() {
        let pin = Placement {
            mode: PlacementMode::Pin,
            pin_pool_id: Some(id::<PoolId>("b").clone()),
            ..Default::default()
        };
        check(
            &[pool("a", "n1", 1, 0), pool("b", "n1", 1, 0)],
            &pin,
            None,
            Some("b"),
        );
        let mut other = pool("c", "n1", 1, 0);
        other.model_id = Some(id("x"));
        check(&[other], &Placement::default(), None, None);
    }
}
