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
    /// What the pool serves; the core filters views by a task's workload before placing it.
    pub workload: api::task::Workload,
    pub ctx_per_slot: u64,
    pub device_mask: &'a str,
    pub free_slots: u32,
    pub slots: u32,
    pub load: usize,
    pub free_vram: u64,
    /// The pool's measured speeds; only cache-aware placement reads them.
    pub speed: Option<Speed>,
}

/// A pool's measured speeds (EWMA over its finished tasks), from which cache-aware placement
/// predicts a task's time to first token there (decision 76). Single precision keeps the view
/// small: a decision reads a thousand of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// Engine time per evaluated prompt token, ms.
    pub prefill_ms_per_token: f32,
    /// How long a task holds a slot, ms.
    pub service_ms: f32,
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
        // The core's views name the task's model itself, so the address usually decides.
        && p.model_id.is_some_and(|m| std::ptr::eq(m, model) || m == model)
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

/// The outcome of one placement decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<'a> {
    /// The winning pool, or `None` when no candidate has a free slot now.
    pub pool: Option<&'a PoolId>,
    /// Candidates considered (before the free-slot filter).
    pub considered: usize,
    /// True when `allow_fallback` decided the winner: an avoided pool was used because no other
    /// candidate existed, or a pool outside `prefer_pools` won under `mode = prefer`.
    pub fallback: bool,
    /// The busy pool holding the task's prefix that it waits for (cache-aware placement,
    /// decision 69) although another candidate has a free slot; `pool` is then `None`.
    pub waiting_for: Option<&'a PoolId>,
}

/// Cache-aware placement inputs (`placement.strategy = "cache-aware"`): the prompt tokens each
/// pool's engine already holds for this task, and the hot-spot guard.
#[derive(Debug, Clone, Copy)]
pub struct CacheHints<'h> {
    /// Pools with a prefix match and the prompt tokens it would save.
    pub saved: &'h [(&'h PoolId, u64)],
    /// The task's prompt length in tokens.
    pub prompt_tokens: u64,
    /// Load wins when the busiest candidate has more than `balance_abs` tasks beyond the idlest...
    pub balance_abs: usize,
    /// ...and more than `balance_rel` times the idlest's load.
    pub balance_rel: f64,
    /// What one queued or running task on a pool costs, in prompt tokens.
    pub load_cost_tokens: u64,
    /// Waiting for a busy prefix holder (decision 69): the task stays queued for the busy pool
    /// with the best score when it would save at least this many prompt tokens and its score
    /// (saved − load × `load_cost_tokens`) beats every free candidate's. 0: never wait (the caller
    /// passes 0 once the task has waited `placement.wait_for_prefix_max_ms`).
    pub wait_min_tokens: u64,
}

/// The hasher of maps keyed by pool id that a decision reads once per pool (saved tokens, pool
/// stats): with a thousand pools SipHash alone would cost tens of microseconds per decision, and
/// byte-at-a-time FNV a dozen dependent multiplications per id. It takes eight bytes per
/// multiplication and mixes once at the end (splitmix64's finalizer, so that the table's low and
/// high bits both depend on every byte). Pool ids are operator-chosen names, not attacker input.
#[derive(Default, Clone, Copy)]
pub struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0xcbf2_9ce4_8422_2325)
    }
}

pub struct IdHasher(u64);

impl IdHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl std::hash::Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.mix(w.iter().rev().fold(0, |acc, b| acc << 8 | u64::from(*b)));
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            // The tail's length goes into its top byte, so "a" and "a\0" differ.
            let word = tail.iter().rev().fold(0, |acc, b| acc << 8 | u64::from(*b));
            self.mix(word ^ ((tail.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n) | 1 << 63);
    }
}

/// The mean of the candidates' measured speeds, if any is measured.
fn mean_speed(cands: &[&PoolView<'_>]) -> Option<Speed> {
    let (mut n, mut prefill, mut service) = (0.0f32, 0.0, 0.0);
    for s in cands.iter().filter_map(|p| p.speed) {
        n += 1.0;
        prefill += s.prefill_ms_per_token;
        service += s.service_ms;
    }
    (n > 0.0).then(|| Speed {
        prefill_ms_per_token: prefill / n,
        service_ms: service / n,
    })
}

/// A task's predicted time to first token on `p`, ms: the prompt tokens it would evaluate there,
/// plus, on a busy pool, the wait for a slot (half a task's run for the first, a whole one for
/// each queued before it, spread over the slots). Tasks running beside it on a pool with a free
/// slot only break ties; the imbalance guard keeps them from piling up.
pub fn predicted_ttft_ms(p: &PoolView<'_>, s: Speed, prompt_tokens: u64, saved: u64) -> f64 {
    let evaluate = prompt_tokens.saturating_sub(saved) as f64 * f64::from(s.prefill_ms_per_token);
    if p.free_slots > 0 {
        evaluate
    } else {
        let ahead = p.load.saturating_sub(p.slots as usize) as f64 + 0.5;
        evaluate + ahead * f64::from(s.service_ms) / f64::from(p.slots.max(1))
    }
}

/// True when the candidates' loads are imbalanced beyond the guard's thresholds.
pub fn imbalanced(loads: impl Iterator<Item = usize> + Clone, abs: usize, rel: f64) -> bool {
    let (Some(max), Some(min)) = (loads.clone().max(), loads.min()) else {
        return false;
    };
    max - min > abs && max as f64 > min as f64 * rel
}

/// Picks the pool for a task among `pools`. `affinity` is the session's last pool. The order is
/// total, so equal inputs give equal decisions.
///
/// Affinity only chooses within the best tier the placement fields allow (decision 32): under
/// `mode = prefer` a preferred pool with a free slot beats the session's pool when that pool is not
/// preferred, because the request said so explicitly while affinity is only a cache-warmth hint.
pub fn choose<'a>(
    pools: &[PoolView<'a>],
    model: &ModelId,
    ctx: Option<u64>,
    placement: &Placement,
    affinity: Option<&PoolId>,
    tried: &[PoolId],
    cache: Option<&CacheHints<'_>>,
) -> Choice<'a> {
    // One vector of candidates; every later step filters it in place or reads it (a decision
    // over a thousand pools must not copy their views several times).
    let mut cands: Vec<&PoolView<'a>> = Vec::with_capacity(pools.len());
    cands.extend(
        pools
            .iter()
            .filter(|p| is_candidate(p, model, ctx, placement) && !tried.contains(p.pool_id)),
    );
    let mut avoid_fallback = false;
    if placement.mode != PlacementMode::Pin && !placement.avoid_pools.is_empty() {
        let avoided = |p: &PoolView<'_>| placement.avoid_pools.contains(p.pool_id);
        if cands.iter().any(|p| !avoided(p)) || !placement.allow_fallback {
            cands.retain(|p| !avoided(p));
        } else {
            avoid_fallback = !cands.is_empty();
        }
    }
    let considered = cands.len();
    let preferred = |p: &PoolView<'_>| {
        placement.mode == PlacementMode::Prefer && placement.prefer_pools.contains(p.pool_id)
    };
    // The best tier: preferred pools with a free slot under `prefer`, else every free candidate
    // (none at all under `prefer` without fallback).
    let only_preferred = placement.mode == PlacementMode::Prefer
        && (!placement.allow_fallback || cands.iter().any(|p| p.free_slots > 0 && preferred(p)));
    let tier_of = |p: &PoolView<'_>| !only_preferred || preferred(p);
    let in_tier = |p: &PoolView<'_>| p.free_slots > 0 && tier_of(p);
    let prefer_fallback = placement.mode == PlacementMode::Prefer
        && !only_preferred
        && !placement.prefer_pools.is_empty();
    let choice = |pool: Option<&'a PoolId>| Choice {
        pool,
        considered,
        fallback: pool.is_some() && (avoid_fallback || prefer_fallback),
        waiting_for: None,
    };
    if let Some(p) = affinity.and_then(|a| cands.iter().find(|p| in_tier(p) && p.pool_id == a)) {
        return choice(Some(p.pool_id));
    }
    // Cache-aware: prompt tokens saved minus load, unless the candidates are imbalanced (then
    // load decides, as under least-loaded). Scores are computed once per pool.
    let cache_on = cache.filter(|c| {
        !c.saved.is_empty()
            && !imbalanced(cands.iter().map(|p| p.load), c.balance_abs, c.balance_rel)
    });
    let saved: std::collections::HashMap<&PoolId, u64, IdHash> = cache_on
        .map(|c| c.saved.iter().map(|(p, n)| (*p, *n)).collect())
        .unwrap_or_default();
    // With measured speeds a pool's cost is its predicted time to first token, ms (decision
    // 76); a pool not measured yet is taken to be as fast as the measured ones' mean. Without
    // any measurement it is in prompt tokens: load × `load_cost_tokens` − saved (decision 69).
    // (The mean is taken only when an unmeasured pool is met: once every pool is measured a
    // decision does not read each pool's speed twice.)
    let fleet = std::cell::OnceCell::new();
    let cost = |p: &PoolView<'_>| {
        cache_on.map_or(0.0, |c| {
            let saved = saved.get(p.pool_id).copied().unwrap_or(0);
            match p
                .speed
                .or_else(|| *fleet.get_or_init(|| mean_speed(&cands)))
            {
                Some(s) => predicted_ttft_ms(p, s, c.prompt_tokens, saved),
                None => (p.load as u64 * c.load_cost_tokens) as f64 - saved as f64,
            }
        })
    };
    // One pass with a total order: O(pools) per decision, no sorting, each cost computed once.
    let best = cands
        .iter()
        .copied()
        .filter(|p| in_tier(p))
        .map(|p| (p, cost(p)))
        .min_by(|(a, ca), (b, cb)| {
            ca.total_cmp(cb)
                .then(b.free_slots.cmp(&a.free_slots))
                .then(a.load.cmp(&b.load))
                .then(b.free_vram.cmp(&a.free_vram))
                .then(a.node_id.cmp(b.node_id))
                .then(a.pool_id.cmp(b.pool_id))
        });
    // Waiting for the prefix (decision 69): a busy holder of the same tier that costs less than
    // every free pool (the best free pool costs the least) keeps the task queued; it is placed
    // when the holder frees a slot.
    if let (Some(c), Some((_, best_free))) = (cache_on.filter(|c| c.wait_min_tokens > 0), best) {
        let holder = cands
            .iter()
            .filter(|p| {
                p.free_slots == 0
                    && tier_of(p)
                    && saved.get(p.pool_id).copied().unwrap_or(0) >= c.wait_min_tokens
            })
            .map(|p| (p, cost(p)))
            .filter(|(_, c)| *c < best_free)
            .min_by(|(a, ca), (b, cb)| ca.total_cmp(cb).then(a.pool_id.cmp(b.pool_id)));
        if let Some((p, _)) = holder {
            return Choice {
                pool: None,
                considered,
                fallback: false,
                waiting_for: Some(p.pool_id),
            };
        }
    }
    choice(best.map(|(p, _)| p.pool_id))
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
            workload: api::task::Workload::Completion,
            ctx_per_slot: 4096,
            device_mask: "cpu",
            free_slots: free,
            slots: free + load as u32,
            load,
            free_vram: 0,
            speed: None,
        }
    }

    fn check(
        pools: &[PoolView<'_>],
        placement: &Placement,
        affinity: Option<&str>,
        expected: Option<&str>,
    ) {
        assert_eq!(
            choose(pools, id("m"), None, placement, affinity.map(id), &[], None)
                .pool
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

    #[test]
    fn affinity_stays_within_the_preferred_tier() {
        let pools = [pool("a", "n1", 1, 0), pool("b", "n1", 1, 0)];
        let prefer_b = Placement {
            mode: PlacementMode::Prefer,
            prefer_pools: vec![id::<PoolId>("b").clone()],
            ..Default::default()
        };
        // The request's explicit preference beats the session's last pool...
        check(&pools, &prefer_b, Some("a"), Some("b"));
        // ...and never escapes `allow_fallback = false`, even when no preferred pool is free.
        let strict = Placement {
            allow_fallback: false,
            ..prefer_b.clone()
        };
        check(
            &[pool("a", "n1", 1, 0), pool("b", "n1", 0, 1)],
            &strict,
            Some("a"),
            None,
        );
        // With no preferred pool free, fallback pools are ranked as usual and affinity applies.
        check(
            &[
                pool("a", "n1", 1, 0),
                pool("b", "n1", 0, 1),
                pool("c", "n1", 2, 0),
            ],
            &prefer_b,
            Some("a"),
            Some("a"),
        );
        // Affinity to a preferred pool still wins among the preferred ones.
        let prefer_both = Placement {
            prefer_pools: vec![id::<PoolId>("a").clone(), id::<PoolId>("b").clone()],
            ..prefer_b.clone()
        };
        check(
            &[pool("a", "n1", 1, 0), pool("b", "n1", 3, 0)],
            &prefer_both,
            Some("a"),
            Some("a"),
        );
        // An avoided pool is not a candidate, so affinity cannot pick it while others exist.
        let avoid_a = Placement {
            avoid_pools: vec![id::<PoolId>("a").clone()],
            ..Default::default()
        };
        check(&pools, &avoid_a, Some("a"), Some("b"));
    }

    #[test]
    fn fallback_is_reported_when_allow_fallback_decided() {
        let fallback = |pools: &[PoolView<'_>], placement: &Placement| {
            let c = choose(pools, id("m"), None, placement, None, &[], None);
            (c.pool.cloned(), c.fallback)
        };
        let avoid_a = Placement {
            avoid_pools: vec![id::<PoolId>("a").clone()],
            ..Default::default()
        };
        assert_eq!(
            fallback(&[pool("a", "n1", 1, 0), pool("b", "n1", 1, 0)], &avoid_a),
            (Some(id::<PoolId>("b").clone()), false)
        );
        assert_eq!(
            fallback(&[pool("a", "n1", 1, 0)], &avoid_a),
            (Some(id::<PoolId>("a").clone()), true)
        );
        let prefer_b = Placement {
            mode: PlacementMode::Prefer,
            prefer_pools: vec![id::<PoolId>("b").clone()],
            ..Default::default()
        };
        assert_eq!(
            fallback(&[pool("a", "n1", 1, 0), pool("b", "n1", 1, 0)], &prefer_b),
            (Some(id::<PoolId>("b").clone()), false)
        );
        assert_eq!(
            fallback(&[pool("a", "n1", 1, 0), pool("b", "n1", 0, 1)], &prefer_b),
            (Some(id::<PoolId>("a").clone()), true)
        );
        // No decision, no fallback.
        assert_eq!(fallback(&[pool("a", "n1", 0, 1)], &avoid_a), (None, false));
        assert_eq!(
            fallback(&[pool("a", "n1", 1, 0)], &Placement::default()),
            (Some(id::<PoolId>("a").clone()), false)
        );
    }

    fn hints<'h>(saved: &'h [(&'h PoolId, u64)]) -> CacheHints<'h> {
        CacheHints {
            saved,
            prompt_tokens: 6000,
            balance_abs: 2,
            balance_rel: 1.5,
            load_cost_tokens: 100,
            wait_min_tokens: 0,
        }
    }

    /// Like [`cached`] with waiting on (`wait_min_tokens` 200): the pool, and whether it waits.
    fn waited(pools: &[PoolView<'_>], saved: &[(&str, u64)]) -> (Option<String>, bool) {
        let saved: Vec<(&PoolId, u64)> = saved.iter().map(|(p, n)| (id::<PoolId>(p), *n)).collect();
        let h = CacheHints {
            wait_min_tokens: 200,
            ..hints(&saved)
        };
        let c = choose(
            pools,
            id("m"),
            None,
            &Placement::default(),
            None,
            &[],
            Some(&h),
        );
        (c.pool.map(|p| p.to_string()), c.waiting_for.is_some())
    }

    #[test]
    fn a_busy_holder_of_a_big_prefix_is_waited_for() {
        // b (busy, one task) holds 5,000 tokens: 5000 − 100 beats a's 0, so the task waits.
        let busy_b = [pool("a", "n1", 1, 0), pool("b", "n1", 0, 1)];
        assert_eq!(waited(&busy_b, &[("b", 5000)]), (None, true));
        // A prefix under wait_min_tokens goes to the idle pool.
        assert_eq!(waited(&busy_b, &[("b", 150)]), (Some("a".into()), false));
        // A free pool holding as much wins outright.
        assert_eq!(
            waited(&busy_b, &[("a", 5000), ("b", 5000)]),
            (Some("a".into()), false)
        );
        // Imbalanced: b runs 4 tasks, a none, so load wins despite the match.
        let hot_b = [pool("a", "n1", 1, 0), pool("b", "n1", 0, 4)];
        assert_eq!(waited(&hot_b, &[("b", 100_000)]), (Some("a".into()), false));
        // Once the holder frees a slot the task goes there.
        let freed_b = [pool("a", "n1", 1, 0), pool("b", "n1", 1, 0)];
        assert_eq!(waited(&freed_b, &[("b", 5000)]), (Some("b".into()), false));
        // With no free pool at all there is nothing to wait instead of: plain queueing.
        let all_busy = [pool("a", "n1", 0, 1), pool("b", "n1", 0, 1)];
        assert_eq!(waited(&all_busy, &[("b", 5000)]), (None, false));
    }

    fn timed(pool: PoolView<'static>, prefill_ms_per_token: f32) -> PoolView<'static> {
        PoolView {
            speed: Some(Speed {
                prefill_ms_per_token,
                service_ms: 1500.0,
            }),
            ..pool
        }
    }

    #[test]
    fn measured_speeds_decide_whether_a_busy_holder_is_worth_waiting_for() {
        // The prompt has 6,000 tokens; b runs one task (1.5 s each) and holds 5,000 of them.
        // At 7 ms a token, a would take 42 s to first token, b 7 s plus half a run: wait for b.
        let cpu = [
            timed(pool("a", "n1", 1, 0), 7.0),
            timed(pool("b", "n1", 0, 1), 7.0),
        ];
        assert_eq!(waited(&cpu, &[("b", 5000)]), (None, true));
        // At 0.05 ms a token, a takes 300 ms and b 50 ms plus 750 ms of waiting: a, although
        // the token count alone (5,000 − 100) would have waited.
        let gpu = [
            timed(pool("a", "n1", 1, 0), 0.05),
            timed(pool("b", "n1", 0, 1), 0.05),
        ];
        assert_eq!(waited(&gpu, &[("b", 5000)]), (Some("a".into()), false));
        assert_eq!(
            waited(&gpu.map(|p| PoolView { speed: None, ..p }), &[("b", 5000)]),
            (None, true)
        );
        // A pool not measured yet counts as fast as the measured ones.
        let half = [pool("a", "n1", 1, 0), timed(pool("b", "n1", 0, 1), 0.05)];
        assert_eq!(waited(&half, &[("b", 5000)]), (Some("a".into()), false));
        // Between free pools the faster one wins unless the slower one's match outweighs it:
        // c (7 ms a token) holds 1,000 tokens, d (1 ms) none: 35 s against 6 s.
        let mixed = [
            timed(pool("c", "n1", 1, 0), 7.0),
            timed(pool("d", "n1", 1, 0), 1.0),
        ];
        assert_eq!(cached(&mixed, &[("c", 1000)], None).as_deref(), Some("d"));
        // Holding 5,900 of the 6,000 tokens, c needs 700 ms: c.
        assert_eq!(cached(&mixed, &[("c", 5900)], None).as_deref(), Some("c"));
    }

    #[test]
    fn predicted_ttft_counts_evaluation_and_the_wait_for_a_slot() {
        let s = Speed {
            prefill_ms_per_token: 2.0,
            service_ms: 1000.0,
        };
        // Free: 600 − 100 tokens to evaluate at 2 ms, whatever else runs there.
        let free = pool("a", "n1", 1, 1);
        assert_eq!(predicted_ttft_ms(&free, s, 600, 100), 1000.0);
        // Busy, 2 slots, 2 running and 1 queued: 500 × 2 ms + 1.5 runs over 2 slots.
        let busy = PoolView {
            slots: 2,
            ..pool("b", "n1", 0, 3)
        };
        assert_eq!(predicted_ttft_ms(&busy, s, 600, 100), 1000.0 + 750.0);
    }

    fn cached(
        pools: &[PoolView<'_>],
        saved: &[(&str, u64)],
        affinity: Option<&str>,
    ) -> Option<String> {
        let saved: Vec<(&PoolId, u64)> = saved.iter().map(|(p, n)| (id::<PoolId>(p), *n)).collect();
        choose(
            pools,
            id("m"),
            None,
            &Placement::default(),
            affinity.map(id),
            &[],
            Some(&hints(&saved)),
        )
        .pool
        .map(|p| p.to_string())
    }

    #[test]
    fn cache_aware_weighs_saved_tokens_against_load() {
        let pools = [pool("a", "n1", 2, 0), pool("b", "n1", 1, 1)];
        // b holds 500 tokens of the prompt; one task there costs 100: b wins.
        assert_eq!(cached(&pools, &[("b", 500)], None).as_deref(), Some("b"));
        // 50 tokens are not worth a task's wait.
        assert_eq!(cached(&pools, &[("b", 50)], None).as_deref(), Some("a"));
        // No match anywhere: least-loaded.
        assert_eq!(cached(&pools, &[], None).as_deref(), Some("a"));
        // The deeper match wins between equal loads.
        let idle = [
            pool("a", "n1", 1, 0),
            pool("b", "n1", 1, 0),
            pool("c", "n1", 1, 0),
        ];
        assert_eq!(
            cached(&idle, &[("a", 100), ("c", 300)], None).as_deref(),
            Some("c")
        );
        // A session's pool still comes first.
        assert_eq!(
            cached(&idle, &[("c", 300)], Some("b")).as_deref(),
            Some("b")
        );
        // A pool with no free slot is never chosen.
        let full = [pool("a", "n1", 1, 0), pool("b", "n1", 0, 1)];
        assert_eq!(cached(&full, &[("b", 5000)], None).as_deref(), Some("a"));
    }

    #[test]
    fn id_hashes_differ_in_every_byte_and_length() {
        use std::hash::BuildHasher;
        let h = |s: &str| IdHash.hash_one(s);
        let ids = [
            "a",
            "a\0",
            "b",
            "node-0001-p",
            "node-0002-p",
            "node-0001-q",
            "pool-12345678",
            "pool-12345679",
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(h(a), h(b), "{a:?} and {b:?}");
            }
        }
        // A thousand sequential ids spread over a table's low bits.
        let buckets: std::collections::HashSet<u64> = (0..1000)
            .map(|i| h(&format!("node-{i:04}-p")) & 1023)
            .collect();
        assert!(buckets.len() > 550, "{} distinct buckets", buckets.len());
    }

    #[test]
    fn the_imbalance_guard_lets_load_win() {
        // b runs 5 tasks, a none: 5 - 0 > 2 and 5 > 0 × 1.5, so load decides despite the match.
        let pools = [pool("a", "n1", 4, 0), pool("b", "n1", 3, 5)];
        assert_eq!(
            cached(&pools, &[("b", 100_000)], None).as_deref(),
            Some("a")
        );
        // Within the thresholds the match wins.
        let near = [pool("a", "n1", 4, 1), pool("b", "n1", 3, 2)];
        assert_eq!(cached(&near, &[("b", 1000)], None).as_deref(), Some("b"));
        assert!(imbalanced([0, 5].into_iter(), 2, 1.5));
        assert!(!imbalanced([4, 6].into_iter(), 2, 1.5));
        assert!(!imbalanced([2, 4].into_iter(), 2, 1.5));
        assert!(!imbalanced(std::iter::empty(), 2, 1.5));
    }
}
