//! The prefix index (cache-aware placement): which prompt prefixes each pool's engine holds.
//!
//! A sequence is what one finished task left in its pool's engine slot: the engine token ids of
//! its prompt (as the worker's tokenize route reported them) followed by the ids it generated,
//! less the last one (the engine samples it but never decodes it into the slot). It is stored with
//! its chain of block hashes: block `i` hashes the first `(i + 1) * BLOCK` ids, so two sequences
//! share block `i` only when their first `(i + 1) * BLOCK` ids are equal. Per block hash the index
//! keeps the pools holding it (with a count), so a lookup walks the request's blocks from the
//! deepest present one down and costs about one pool list per depth where the set of pools grows;
//! the ids after the deepest shared block are then compared one by one, so a match is an exact
//! token count.
//!
//! Memory is bounded twice, mirroring the engine: per pool by tokens (slots × context plus the
//! engine's `--cache-ram` prompt cache, least recently used first) and globally by a sequence
//! count. A pool's entries are dropped when its engine restarts or it leaves Ready. Engine
//! feedback (`cache_n`) cuts a prediction the engine did not honour to what it reused.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use api::PoolId;

/// Block hashes and sequence ids are already well-spread (or small and distinct): hashing them
/// again would only cost time on every lookup.
#[derive(Default)]
struct Mix(u64);

impl std::hash::Hasher for Mix {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Spread small sequence ids over the high bits the table's control bytes use.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Mix>>;

/// Token ids per block.
pub const BLOCK: usize = 16;

/// The chained block hashes of `ids` (full blocks only).
pub fn key(ids: &[u32]) -> Vec<u64> {
    let mut out = Vec::with_capacity(ids.len() / BLOCK);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in ids.chunks_exact(BLOCK) {
        for id in chunk {
            h ^= u64::from(*id);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Finalize so that consecutive blocks' hashes are well spread.
        let mut z = h ^ (out.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.push(z ^ (z >> 31));
    }
    out
}

/// What a finished task leaves in its engine slot: the prompt ids, then the generated ids but
/// the last (measured on b11434: after a stop by limit or end of sequence the slot holds
/// prompt + generated − 1 tokens, and the end-of-sequence token is among the generated ids).
pub fn sequence(prompt: &[u32], generated: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(prompt.len() + generated.len());
    out.extend_from_slice(prompt);
    out.extend_from_slice(&generated[..generated.len().saturating_sub(1)]);
    out
}

/// Bounds of the index.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sequences kept in all (least recently used dropped first).
    pub max_sequences: usize,
    /// The engines keep a sequence their slot gives up in a host-RAM prompt cache (llama.cpp's
    /// `--cache-ram`): it stays in the index, no longer tied to the slot, until the pool's token
    /// bound evicts it. False: a slot's new sequence replaces its previous one.
    pub keep_replaced: bool,
}

/// How many tokens one pool's engine can hold: its slots' contexts plus its host-RAM prompt cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCapacity {
    pub tokens: u64,
}

type SeqId = u64;

struct Seq {
    pool: u32,
    slot: Option<u32>,
    hashes: Vec<u64>,
    ids: Vec<u32>,
    tick: u64,
}

impl Seq {
    /// Ids this sequence shares with a request whose first `depth` blocks it shares.
    fn common(&self, depth: usize, ids: &[u32]) -> usize {
        let from = depth * BLOCK;
        from + self.ids[from.min(self.ids.len())..]
            .iter()
            .zip(ids.get(from..).unwrap_or(&[]))
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Full blocks this sequence shares with `key`.
    fn depth(&self, key: &[u64]) -> usize {
        self.hashes
            .iter()
            .zip(key)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

#[derive(Default)]
struct PoolSeqs {
    seqs: Vec<SeqId>,
    tokens: u64,
    capacity: u64,
}

/// One pool's best match for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Match {
    /// Prompt tokens the engine would take from its cache: the ids shared with the request,
    /// never all of them (the engine evaluates at least the prompt's last token).
    pub tokens: u64,
    /// The slot that holds it, when known.
    pub slot: Option<u32>,
}

/// The prefix index.
pub struct PrefixIndex {
    limits: Limits,
    pool_ix: HashMap<PoolId, u32, super::placement::IdHash>,
    pool_ids: Vec<PoolId>,
    pools: Vec<PoolSeqs>,
    seqs: FastMap<SeqId, Seq>,
    /// Block hash → (pool index, number of that pool's sequences holding it).
    blocks: FastMap<u64, Vec<(u32, u32)>>,
    /// Least recently used first.
    lru: BTreeMap<u64, SeqId>,
    next_seq: SeqId,
    tick: u64,
    /// Scratch for lookups: the depth found per pool index (0: none).
    scratch: std::cell::RefCell<Vec<u32>>,
}

impl PrefixIndex {
    pub fn new(limits: Limits) -> Self {
        PrefixIndex {
            limits,
            pool_ix: HashMap::default(),
            pool_ids: Vec::new(),
            pools: Vec::new(),
            seqs: FastMap::default(),
            blocks: FastMap::default(),
            lru: BTreeMap::new(),
            next_seq: 0,
            tick: 0,
            scratch: std::cell::RefCell::new(Vec::new()),
        }
    }

    fn pool_index(&mut self, pool: &PoolId) -> u32 {
        if let Some(i) = self.pool_ix.get(pool) {
            return *i;
        }
        let i = self.pool_ids.len() as u32;
        self.pool_ix.insert(pool.clone(), i);
        self.pool_ids.push(pool.clone());
        self.pools.push(PoolSeqs::default());
        self.scratch.get_mut().push(0);
        i
    }

    /// Sets how many tokens `pool`'s engine holds (evicting beyond it).
    pub fn set_capacity(&mut self, pool: &PoolId, cap: PoolCapacity) {
        let p = self.pool_index(pool);
        self.pools[p as usize].capacity = cap.tokens;
        self.evict_pool(p);
    }

    /// Number of sequences held.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Sequences held for `pool`.
    pub fn pool_len(&self, pool: &PoolId) -> usize {
        self.pool_ix
            .get(pool)
            .map_or(0, |p| self.pools[*p as usize].seqs.len())
    }

    /// Records what a finished task left in `pool` (and `slot`): `ids`, its [`sequence`].
    /// Sequences of the pool that the new one extends are dropped (the slot now holds the longer
    /// one), and so is the previous one of the same slot, unless the engine keeps it in its
    /// host-RAM cache ([`Limits::keep_replaced`]: then it only leaves the slot). A sequence
    /// shorter than a block is not kept (no lookup could find it).
    pub fn insert(&mut self, pool: &PoolId, slot: Option<u32>, ids: Vec<u32>) {
        let p = self.pool_index(pool);
        let hashes = key(&ids);
        if hashes.is_empty() {
            return;
        }
        // Drop the pool's sequences that are prefixes of this one, or that lived in the same slot
        // (unless the engine keeps those in its host-RAM cache: then they only leave the slot).
        let keep_replaced = self.limits.keep_replaced;
        let mut subsumed: Vec<SeqId> = Vec::new();
        let mut unslotted: Vec<SeqId> = Vec::new();
        for id in self.pools[p as usize].seqs.iter().copied() {
            let s = &self.seqs[&id];
            let extended = s.ids.len() <= ids.len()
                && s.hashes.last() == hashes.get(s.hashes.len() - 1)
                && s.ids[..] == ids[..s.ids.len()];
            let same_slot = slot.is_some() && s.slot == slot;
            if extended || (same_slot && !keep_replaced) {
                subsumed.push(id);
            } else if same_slot {
                unslotted.push(id);
            }
        }
        for id in subsumed {
            self.remove(id);
        }
        for id in unslotted {
            if let Some(s) = self.seqs.get_mut(&id) {
                s.slot = None;
            }
        }
        self.tick += 1;
        let id = self.next_seq;
        self.next_seq += 1;
        for h in &hashes {
            let v = self.blocks.entry(*h).or_default();
            match v.iter_mut().find(|(q, _)| *q == p) {
                Some((_, n)) => *n += 1,
                None => v.push((p, 1)),
            }
        }
        let tokens = ids.len() as u64;
        self.seqs.insert(
            id,
            Seq {
                pool: p,
                slot,
                hashes,
                ids,
                tick: self.tick,
            },
        );
        self.lru.insert(self.tick, id);
        let ps = &mut self.pools[p as usize];
        ps.seqs.push(id);
        ps.tokens += tokens;
        self.evict_pool(p);
        while self.seqs.len() > self.limits.max_sequences {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            self.remove(oldest);
        }
    }

    fn evict_pool(&mut self, p: u32) {
        loop {
            let ps = &self.pools[p as usize];
            if ps.capacity == 0 || ps.tokens <= ps.capacity || ps.seqs.len() <= 1 {
                return;
            }
            let oldest = ps
                .seqs
                .iter()
                .copied()
                .min_by_key(|id| self.seqs[id].tick)
                .expect("non-empty");
            self.remove(oldest);
        }
    }

    /// Forgets the block references of `hashes` held by pool `p`.
    fn unref(&mut self, p: u32, hashes: &[u64]) {
        for h in hashes {
            if let Some(v) = self.blocks.get_mut(h) {
                if let Some(i) = v.iter().position(|(q, _)| *q == p) {
                    v[i].1 -= 1;
                    if v[i].1 == 0 {
                        v.swap_remove(i);
                    }
                }
                if v.is_empty() {
                    self.blocks.remove(h);
                }
            }
        }
    }

    fn remove(&mut self, id: SeqId) {
        let Some(s) = self.seqs.remove(&id) else {
            return;
        };
        self.lru.remove(&s.tick);
        self.unref(s.pool, &s.hashes);
        let ps = &mut self.pools[s.pool as usize];
        ps.seqs.retain(|x| *x != id);
        ps.tokens = ps.tokens.saturating_sub(s.ids.len() as u64);
    }

    /// Drops everything `pool` holds (its engine restarted or it left Ready).
    pub fn clear_pool(&mut self, pool: &PoolId) {
        let Some(p) = self.pool_ix.get(pool).copied() else {
            return;
        };
        for id in self.pools[p as usize].seqs.clone() {
            self.remove(id);
        }
    }

    /// Every pool holding a prefix of a request of `prompt_len` ids whose [`key`] is `key`, with
    /// the tokens it shares in whole blocks (capped at `prompt_len − 1`: the engine evaluates the
    /// prompt's last token itself), longest first. Cost: the pool lists of the depths where the
    /// set of matching pools grows; no sequence is read, so ranking many holders stays cheap.
    /// [`PrefixIndex::best`] then gives the chosen pool's exact match.
    pub fn lookup(&self, key: &[u64], prompt_len: usize) -> Vec<(&PoolId, u64)> {
        // The deepest block any pool holds (pool sets only grow toward shallow depths).
        let (mut lo, mut hi) = (0usize, key.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.blocks.contains_key(&key[mid - 1]) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let mut scratch = self.scratch.borrow_mut();
        let mut found: Vec<u32> = Vec::new();
        let mut seen = 0usize;
        for depth in (1..=lo).rev() {
            let Some(v) = self.blocks.get(&key[depth - 1]) else {
                continue;
            };
            if v.len() <= seen {
                continue;
            }
            for (p, _) in v {
                if scratch[*p as usize] == 0 {
                    scratch[*p as usize] = depth as u32;
                    found.push(*p);
                }
            }
            seen = v.len();
        }
        let cap = prompt_len.saturating_sub(1);
        let out = found
            .into_iter()
            .map(|p| {
                let depth = std::mem::take(&mut scratch[p as usize]) as usize;
                (&self.pool_ids[p as usize], (depth * BLOCK).min(cap) as u64)
            })
            .collect();
        // Deepest first already: `found` is filled from the deepest depth up.
        out
    }

    /// `pool`'s exact match for the request `ids` (whose [`key`] is `key`): the ids its best
    /// sequence shares with the request, compared one by one past the last shared block, capped
    /// at `ids.len() − 1`; and that sequence's slot.
    pub fn best(&self, pool: &PoolId, key: &[u64], ids: &[u32]) -> Match {
        let Some(p) = self.pool_ix.get(pool) else {
            return Match::default();
        };
        let best = self.pools[*p as usize]
            .seqs
            .iter()
            .map(|id| &self.seqs[id])
            .map(|s| (s.common(s.depth(key), ids), s.slot))
            .filter(|(n, _)| *n >= BLOCK)
            .max_by_key(|(n, _)| *n);
        best.map_or(Match::default(), |(n, slot)| Match {
            tokens: n.min(ids.len().saturating_sub(1)) as u64,
            slot,
        })
    }

    /// Marks the sequences of `pool` matching `key` as just used.
    pub fn touch(&mut self, pool: &PoolId, key: &[u64]) {
        let Some(p) = self.pool_ix.get(pool).copied() else {
            return;
        };
        for id in self.pools[p as usize].seqs.clone() {
            let matches = {
                let s = &self.seqs[&id];
                !key.is_empty() && s.hashes.first() == key.first()
            };
            if matches {
                self.tick += 1;
                let s = self.seqs.get_mut(&id).expect("listed");
                self.lru.remove(&s.tick);
                s.tick = self.tick;
                self.lru.insert(self.tick, id);
            }
        }
    }

    /// Engine feedback: the engine reused `cached_tokens` of a request (`ids`, its [`key`] `key`)
    /// placed on `pool` for `predicted` tokens. When it reused less, the pool's sequences that
    /// share more than that with the request are cut to exactly the reused tokens (dropped when
    /// less than a block is left).
    pub fn correct(
        &mut self,
        pool: &PoolId,
        key: &[u64],
        ids: &[u32],
        predicted: u64,
        cached_tokens: u64,
    ) {
        if cached_tokens >= predicted {
            return;
        }
        let Some(p) = self.pool_ix.get(pool).copied() else {
            return;
        };
        let keep = cached_tokens as usize;
        for id in self.pools[p as usize].seqs.clone() {
            let s = &self.seqs[&id];
            if s.common(s.depth(key), ids) <= keep {
                continue;
            }
            // The engine does not hold this sequence beyond `keep` ids.
            let mut s = self.seqs.remove(&id).expect("listed");
            self.lru.remove(&s.tick);
            self.pools[p as usize].seqs.retain(|x| *x != id);
            self.pools[p as usize].tokens = self.pools[p as usize]
                .tokens
                .saturating_sub(s.ids.len() as u64);
            let blocks = keep / BLOCK;
            let cut = s.hashes.split_off(blocks.min(s.hashes.len()));
            self.unref(p, &cut);
            if blocks == 0 {
                continue;
            }
            s.ids.truncate(keep);
            self.pools[p as usize].tokens += s.ids.len() as u64;
            self.pools[p as usize].seqs.push(id);
            self.lru.insert(s.tick, id);
            self.seqs.insert(id, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PoolId {
        s.parse().unwrap()
    }

    /// `len` synthetic token ids, different per seed.
    fn ids(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32)
            .map(|i| seed * 100_000 + i * 7 + 1)
            .collect()
    }

    fn cat(a: &[u32], b: &[u32]) -> Vec<u32> {
        [a, b].concat()
    }

    fn index() -> PrefixIndex {
        PrefixIndex::new(Limits {
            max_sequences: 100,
            keep_replaced: false,
        })
    }

    /// Each matching pool's exact match, in the order of `lookup`.
    fn look(ix: &PrefixIndex, req: &[u32]) -> Vec<(PoolId, Match)> {
        let k = key(req);
        ix.lookup(&k, req.len())
            .into_iter()
            .map(|(p, _)| (p.clone(), ix.best(p, &k, req)))
            .collect()
    }

    #[test]
    fn chained_keys_share_exactly_the_common_prefix() {
        let a = ids(1, 4 * BLOCK);
        let mut b = a.clone();
        b[2 * BLOCK + 5] = 9;
        let (ka, kb) = (key(&a), key(&b));
        assert_eq!(ka.len(), 4);
        assert_eq!(ka[..2], kb[..2]);
        assert_ne!(ka[2], kb[2]);
        assert_ne!(ka[3], kb[3]);
        // A partial block counts for nothing.
        assert_eq!(key(&a[..BLOCK - 1]).len(), 0);
    }

    #[test]
    fn the_sequence_is_the_prompt_and_the_generated_ids_but_the_last() {
        assert_eq!(sequence(&[1, 2], &[3, 4, 5]), vec![1, 2, 3, 4]);
        assert_eq!(sequence(&[1, 2], &[3]), vec![1, 2]);
        assert_eq!(sequence(&[1, 2], &[]), vec![1, 2]);
    }

    #[test]
    fn matches_are_exact_token_counts() {
        let mut ix = index();
        let sys = ids(3, 2 * BLOCK + 5);
        let long = cat(&sys, &ids(9, 2 * BLOCK + 3));
        ix.insert(&pid("a"), None, sys.clone());
        ix.insert(&pid("b"), Some(1), long.clone());
        // A request extending `long`: all of `long` on b, all of `sys` on a (mid-block ends).
        let req = cat(&long, &ids(4, 3 * BLOCK));
        let m = look(&ix, &req);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0, pid("b"));
        assert_eq!(m[0].1.tokens, long.len() as u64);
        assert_eq!(m[0].1.slot, Some(1));
        assert_eq!(m[1].0, pid("a"));
        assert_eq!(m[1].1.tokens, sys.len() as u64);
        // Lookup ranks by whole blocks; `best` is exact.
        assert_eq!(
            ix.lookup(&key(&req), req.len()),
            vec![(&pid("b"), 4 * BLOCK as u64), (&pid("a"), 2 * BLOCK as u64)]
        );
        // Diverging in the middle of a block: exactly the shared ids.
        let mut fork = long.clone();
        fork[2 * BLOCK + 9] += 1;
        let m = look(&ix, &fork);
        let b = m.iter().find(|(p, _)| *p == pid("b")).unwrap();
        assert_eq!(b.1.tokens, (2 * BLOCK + 9) as u64);
        // The same prompt again: the engine evaluates its last token itself.
        assert_eq!(look(&ix, &long)[0].1.tokens, long.len() as u64 - 1);
        // A request sharing nothing matches nothing.
        assert!(look(&ix, &ids(20, 3 * BLOCK)).is_empty());
    }

    #[test]
    fn a_longer_sequence_replaces_its_prefix_and_the_same_slot() {
        let mut ix = index();
        let t1 = ids(1, 2 * BLOCK + 3);
        let t2 = cat(&t1, &ids(2, BLOCK));
        ix.insert(&pid("a"), None, t1.clone());
        ix.insert(&pid("a"), None, t2);
        assert_eq!(ix.pool_len(&pid("a")), 1);
        // Sharing the blocks but not the tail: both stay.
        let mut other = t1.clone();
        other.truncate(2 * BLOCK + 1);
        other.push(0);
        ix.insert(&pid("a"), None, other);
        assert_eq!(ix.pool_len(&pid("a")), 2);
        ix.insert(&pid("a"), Some(0), ids(5, BLOCK));
        ix.insert(&pid("a"), Some(0), ids(6, BLOCK));
        assert_eq!(ix.pool_len(&pid("a")), 3);
        assert!(look(&ix, &ids(5, BLOCK)).is_empty());
        // Shorter than a block: not kept.
        ix.insert(&pid("a"), None, ids(7, BLOCK - 1));
        assert_eq!(ix.pool_len(&pid("a")), 3);
    }

    #[test]
    fn with_a_host_prompt_cache_a_replaced_slot_sequence_stays_findable() {
        let mut ix = PrefixIndex::new(Limits {
            max_sequences: 100,
            keep_replaced: true,
        });
        ix.insert(&pid("a"), Some(0), ids(5, BLOCK));
        ix.insert(&pid("a"), Some(0), ids(6, BLOCK));
        // Both stay: the first left the slot for the engine's RAM cache.
        assert_eq!(ix.pool_len(&pid("a")), 2);
        let found = look(&ix, &ids(5, BLOCK));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.slot, None, "no longer in its slot");
        assert_eq!(look(&ix, &ids(6, BLOCK))[0].1.slot, Some(0));
        // A sequence it extends is still replaced.
        ix.insert(&pid("a"), Some(0), cat(&ids(6, BLOCK), &ids(7, BLOCK)));
        assert_eq!(ix.pool_len(&pid("a")), 2);
    }

    #[test]
    fn memory_is_bounded_per_pool_and_globally() {
        let mut ix = PrefixIndex::new(Limits {
            max_sequences: 3,
            keep_replaced: false,
        });
        ix.set_capacity(&pid("a"), PoolCapacity { tokens: 100 });
        for i in 0..3 {
            ix.insert(&pid("a"), None, ids(i, 40));
        }
        // 120 tokens > 100: the least recently used went.
        assert_eq!(ix.pool_len(&pid("a")), 2);
        assert!(look(&ix, &ids(0, 40)).is_empty());
        for i in 10..13 {
            ix.insert(&pid("b"), None, ids(i, BLOCK));
        }
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.pool_len(&pid("a")), 0);
        // Touching keeps a sequence; the next insert evicts another.
        ix.touch(&pid("b"), &key(&ids(10, BLOCK)));
        ix.insert(&pid("b"), None, ids(14, BLOCK));
        assert_eq!(look(&ix, &ids(10, BLOCK + 1)).len(), 1);
        assert!(look(&ix, &ids(11, BLOCK + 1)).is_empty());
    }

    #[test]
    fn clear_pool_forgets_only_that_pool() {
        let mut ix = index();
        let t = ids(1, 2 * BLOCK);
        ix.insert(&pid("a"), None, t.clone());
        ix.insert(&pid("b"), None, t.clone());
        ix.clear_pool(&pid("a"));
        let m = look(&ix, &t);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, pid("b"));
        assert!(ix.blocks.values().all(|v| v.iter().all(|(p, _)| *p == 1)));
    }

    #[test]
    fn feedback_cuts_to_exactly_what_the_engine_reused() {
        let mut ix = index();
        let t = ids(1, 4 * BLOCK + 2);
        ix.insert(&pid("a"), None, t.clone());
        let req = cat(&t, &ids(2, 5));
        let k = key(&req);
        assert_eq!(look(&ix, &req)[0].1.tokens, t.len() as u64);
        // The engine reused 37 tokens: the sequence is cut to exactly those.
        ix.correct(&pid("a"), &k, &req, t.len() as u64, 37);
        assert_eq!(look(&ix, &req)[0].1.tokens, 37);
        assert_eq!(ix.pools[0].tokens, 37);
        // It reused what was predicted: nothing changes.
        ix.correct(&pid("a"), &k, &req, 37, 37);
        assert_eq!(look(&ix, &req)[0].1.tokens, 37);
        // Less than a block left: the entry is gone.
        ix.correct(&pid("a"), &k, &req, 37, 10);
        assert!(look(&ix, &req).is_empty());
        assert!(ix.blocks.is_empty());
        assert_eq!(ix.pool_len(&pid("a")), 0);
        assert_eq!(ix.pools[0].tokens, 0);
    }
}
