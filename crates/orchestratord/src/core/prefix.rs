//! The prefix index (cache-aware placement): which prompt prefixes each pool's engine holds.
//!
//! A sequence is what one finished task left in its pool's engine: the request's canonical text
//! (the prompt, or the messages with their roles) followed by the generated text. It is stored as a
//! chain of block hashes: block `i` hashes the first `(i + 1) * BLOCK` bytes, so two sequences share
//! block `i` only when their first `(i + 1) * BLOCK` bytes are equal. Per block hash the index
//! keeps the pools holding it (with a count), so a lookup walks the request's blocks from the
//! deepest present one down and costs about one pool list per depth where the set of pools grows.
//!
//! Memory is bounded twice, mirroring the engine: per pool by tokens (slots × context plus the
//! engine's `--cache-ram` prompt cache, least recently used first) and globally by a sequence
//! count. A pool's entries are dropped when its engine restarts or it leaves Ready. Engine
//! feedback (`cache_n`) corrects a prediction the engine did not honour.

use std::collections::{BTreeMap, HashMap};

use api::PoolId;

/// Bytes per block; a block is about 64 tokens of English text.
pub const BLOCK: usize = 256;

/// The chained block hashes of `text` (full blocks only).
pub fn key(text: &[u8]) -> Vec<u64> {
    let mut out = Vec::with_capacity(text.len() / BLOCK);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in text.chunks_exact(BLOCK) {
        for b in chunk {
            h ^= u64::from(*b);
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

/// The canonical text of a request as placement sees it: the prompt, or each message as
/// `\x1e role \x1f content`, then (for messages) the opening of the assistant turn the engine
/// generates, so a conversation's next request extends the previous one's sequence.
pub fn request_text(input: &api::worker::DispatchInput) -> Vec<u8> {
    match input {
        api::worker::DispatchInput::Prompt { prompt } => prompt.as_bytes().to_vec(),
        // Embeddings leave nothing in a prompt cache placement could reuse.
        api::worker::DispatchInput::Embed { .. } => Vec::new(),
        api::worker::DispatchInput::Messages { messages, .. } => {
            let mut out = Vec::new();
            for m in messages {
                push_message(&mut out, role(m.role), &m.content);
            }
            out
        }
    }
}

/// The canonical text a finished task leaves: its request's text followed by what it generated
/// (for messages, as an assistant message).
pub fn sequence_text(input: &api::worker::DispatchInput, generated: &str) -> Vec<u8> {
    let mut out = request_text(input);
    match input {
        api::worker::DispatchInput::Embed { .. } => {}
        api::worker::DispatchInput::Prompt { .. } => out.extend_from_slice(generated.as_bytes()),
        api::worker::DispatchInput::Messages { .. } => {
            push_message(&mut out, "assistant", generated)
        }
    }
    out
}

fn push_message(out: &mut Vec<u8>, role: &str, content: &str) {
    out.push(0x1e);
    out.extend_from_slice(role.as_bytes());
    out.push(0x1f);
    out.extend_from_slice(content.as_bytes());
}

fn role(r: api::task::Role) -> &'static str {
    match r {
        api::task::Role::System => "system",
        api::task::Role::User => "user",
        api::task::Role::Assistant => "assistant",
        api::task::Role::Tool => "tool",
    }
}

/// Bounds of the index.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sequences kept in all (least recently used dropped first).
    pub max_sequences: usize,
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
    tokens: u64,
    tick: u64,
}

#[derive(Default)]
struct PoolSeqs {
    seqs: Vec<SeqId>,
    tokens: u64,
    capacity: u64,
    /// Prompt bytes per token as the engine reported it (EWMA), to turn matched bytes into tokens.
    bytes_per_token: Option<f64>,
}

/// One pool's best match for a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    /// Matched bytes of the request's text.
    pub bytes: usize,
    /// The same in engine tokens (estimated from the pool's bytes per token).
    pub tokens: u64,
    /// The slot that holds it, when known.
    pub slot: Option<u32>,
}

/// The prefix index.
pub struct PrefixIndex {
    limits: Limits,
    pool_ix: HashMap<PoolId, u32>,
    pool_ids: Vec<PoolId>,
    pools: Vec<PoolSeqs>,
    seqs: HashMap<SeqId, Seq>,
    /// Block hash → (pool index, number of that pool's sequences holding it).
    blocks: HashMap<u64, Vec<(u32, u32)>>,
    /// Least recently used first.
    lru: BTreeMap<u64, SeqId>,
    next_seq: SeqId,
    tick: u64,
    /// Scratch for lookups: the depth found per pool index (0: none).
    scratch: std::cell::RefCell<Vec<u32>>,
}

/// Default bytes per token before the engine reported any (English text).
const DEFAULT_BYTES_PER_TOKEN: f64 = 4.0;

impl PrefixIndex {
    pub fn new(limits: Limits) -> Self {
        PrefixIndex {
            limits,
            pool_ix: HashMap::new(),
            pool_ids: Vec::new(),
            pools: Vec::new(),
            seqs: HashMap::new(),
            blocks: HashMap::new(),
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

    /// Records what a finished task left in `pool` (and `slot`): `text` is its sequence text,
    /// `tokens` its length in engine tokens (prompt plus generated), `prompt_bytes`/`prompt_tokens`
    /// calibrate the pool's bytes per token. Sequences of the pool that the new one extends are
    /// dropped (the slot now holds the longer one).
    pub fn insert(
        &mut self,
        pool: &PoolId,
        slot: Option<u32>,
        text: &[u8],
        tokens: u64,
        prompt_bytes: usize,
        prompt_tokens: u64,
    ) {
        let p = self.pool_index(pool);
        if prompt_tokens > 0 && prompt_bytes > 0 {
            let bpt = prompt_bytes as f64 / prompt_tokens as f64;
            let ps = &mut self.pools[p as usize];
            ps.bytes_per_token = Some(match ps.bytes_per_token {
                Some(old) => old * 0.8 + bpt * 0.2,
                None => bpt,
            });
        }
        let hashes = key(text);
        if hashes.is_empty() {
            return;
        }
        // Drop the pool's sequences that are prefixes of this one, or that lived in the same slot.
        let subsumed: Vec<SeqId> = self.pools[p as usize]
            .seqs
            .iter()
            .copied()
            .filter(|id| {
                let s = &self.seqs[id];
                (slot.is_some() && s.slot == slot)
                    || (s.hashes.len() <= hashes.len()
                        && s.hashes.last() == hashes.get(s.hashes.len() - 1))
            })
            .collect();
        for id in subsumed {
            self.remove(id);
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
        self.seqs.insert(
            id,
            Seq {
                pool: p,
                slot,
                hashes,
                tokens,
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

    fn remove(&mut self, id: SeqId) {
        let Some(s) = self.seqs.remove(&id) else {
            return;
        };
        self.lru.remove(&s.tick);
        for h in &s.hashes {
            if let Some(v) = self.blocks.get_mut(h) {
                if let Some(i) = v.iter().position(|(q, _)| *q == s.pool) {
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
        let ps = &mut self.pools[s.pool as usize];
        ps.seqs.retain(|x| *x != id);
        ps.tokens = ps.tokens.saturating_sub(s.tokens);
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

    /// Every pool holding a prefix of `key`, with its match, deepest first. Cost: the pool lists
    /// of the depths where the set of matching pools grows.
    pub fn lookup(&self, key: &[u64]) -> Vec<(PoolId, Match)> {
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
        let mut out = Vec::with_capacity(found.len());
        for p in found {
            let depth = scratch[p as usize] as usize;
            scratch[p as usize] = 0;
            let bytes = depth * BLOCK;
            let ps = &self.pools[p as usize];
            let bpt = ps.bytes_per_token.unwrap_or(DEFAULT_BYTES_PER_TOKEN);
            let slot = ps
                .seqs
                .iter()
                .map(|id| &self.seqs[id])
                .find(|s| s.hashes.len() >= depth && s.hashes[depth - 1] == key[depth - 1])
                .and_then(|s| s.slot);
            out.push((
                self.pool_ids[p as usize].clone(),
                Match {
                    bytes,
                    tokens: (bytes as f64 / bpt) as u64,
                    slot,
                },
            ));
        }
        out
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

    /// Engine feedback: the engine reused `cached_tokens` of a request placed on `pool` for
    /// `predicted` tokens under `key`. When it reused less, the pool's sequences are cut to what
    /// the engine honoured (dropped when nothing was).
    pub fn correct(&mut self, pool: &PoolId, key: &[u64], predicted: u64, cached_tokens: u64) {
        if cached_tokens >= predicted {
            return;
        }
        let Some(p) = self.pool_ix.get(pool).copied() else {
            return;
        };
        let bpt = self.pools[p as usize]
            .bytes_per_token
            .unwrap_or(DEFAULT_BYTES_PER_TOKEN);
        let keep = ((cached_tokens as f64 * bpt) as usize) / BLOCK;
        for id in self.pools[p as usize].seqs.clone() {
            let s = &self.seqs[&id];
            let common = s.hashes.iter().zip(key).take_while(|(a, b)| a == b).count();
            if common > keep {
                // The engine does not hold this sequence beyond `keep` blocks.
                let mut s = self.seqs.remove(&id).expect("listed");
                self.lru.remove(&s.tick);
                self.pools[p as usize].seqs.retain(|x| *x != id);
                let tokens = s.tokens;
                self.pools[p as usize].tokens =
                    self.pools[p as usize].tokens.saturating_sub(tokens);
                for h in &s.hashes[keep..] {
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
                if keep > 0 {
                    s.hashes.truncate(keep);
                    s.tokens = cached_tokens.min(tokens);
                    self.pools[p as usize].tokens += s.tokens;
                    self.pools[p as usize].seqs.push(id);
                    self.lru.insert(s.tick, id);
                    self.seqs.insert(id, s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PoolId {
        s.parse().unwrap()
    }

    fn text(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| b'a' + ((i * 7 + seed as usize) % 26) as u8)
            .collect()
    }

    fn index() -> PrefixIndex {
        PrefixIndex::new(Limits { max_sequences: 100 })
    }

    #[test]
    fn chained_keys_share_exactly_the_common_prefix() {
        let a = text(1, 4 * BLOCK);
        let mut b = a.clone();
        b[2 * BLOCK + 5] = b'!';
        let (ka, kb) = (key(&a), key(&b));
        assert_eq!(ka.len(), 4);
        assert_eq!(ka[..2], kb[..2]);
        assert_ne!(ka[2], kb[2]);
        assert_ne!(ka[3], kb[3]);
        // A partial block counts for nothing.
        assert_eq!(key(&a[..BLOCK - 1]).len(), 0);
    }

    #[test]
    fn lookup_finds_the_deepest_match_per_pool() {
        let mut ix = index();
        let sys = text(3, 2 * BLOCK);
        let mut long = sys.clone();
        long.extend(text(9, 2 * BLOCK));
        ix.insert(&pid("a"), None, &sys, 128, sys.len(), 128);
        ix.insert(&pid("b"), Some(1), &long, 256, long.len(), 256);
        let mut req = long.clone();
        req.extend(text(4, 3 * BLOCK));
        let m = ix.lookup(&key(&req));
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0, pid("b"));
        assert_eq!(m[0].1.bytes, 4 * BLOCK);
        assert_eq!(m[0].1.tokens, 256);
        assert_eq!(m[0].1.slot, Some(1));
        assert_eq!(m[1].0, pid("a"));
        assert_eq!(m[1].1.bytes, 2 * BLOCK);
        // A request sharing nothing matches nothing.
        assert!(ix.lookup(&key(&text(20, 3 * BLOCK))).is_empty());
    }

    #[test]
    fn a_longer_sequence_replaces_its_prefix_and_the_same_slot() {
        let mut ix = index();
        let t1 = text(1, 2 * BLOCK);
        let mut t2 = t1.clone();
        t2.extend(text(2, BLOCK));
        ix.insert(&pid("a"), None, &t1, 10, 0, 0);
        ix.insert(&pid("a"), None, &t2, 15, 0, 0);
        assert_eq!(ix.pool_len(&pid("a")), 1);
        ix.insert(&pid("a"), Some(0), &text(5, BLOCK), 5, 0, 0);
        ix.insert(&pid("a"), Some(0), &text(6, BLOCK), 5, 0, 0);
        assert_eq!(ix.pool_len(&pid("a")), 2);
        assert!(ix.lookup(&key(&text(5, BLOCK))).is_empty());
    }

    #[test]
    fn memory_is_bounded_per_pool_and_globally() {
        let mut ix = PrefixIndex::new(Limits { max_sequences: 3 });
        ix.set_capacity(&pid("a"), PoolCapacity { tokens: 100 });
        for i in 0..3 {
            ix.insert(&pid("a"), None, &text(i, BLOCK), 40, 0, 0);
        }
        // 120 tokens > 100: the least recently used went.
        assert_eq!(ix.pool_len(&pid("a")), 2);
        assert!(ix.lookup(&key(&text(0, BLOCK))).is_empty());
        for i in 10..13 {
            ix.insert(&pid("b"), None, &text(i, BLOCK), 1, 0, 0);
        }
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.pool_len(&pid("a")), 0);
        // Touching keeps a sequence; the next insert evicts another.
        ix.touch(&pid("b"), &key(&text(10, BLOCK)));
        ix.insert(&pid("b"), None, &text(14, BLOCK), 1, 0, 0);
        assert_eq!(ix.lookup(&key(&text(10, BLOCK))).len(), 1);
        assert!(ix.lookup(&key(&text(11, BLOCK))).is_empty());
    }

    #[test]
    fn clear_pool_forgets_only_that_pool() {
        let mut ix = index();
        let t = text(1, 2 * BLOCK);
        ix.insert(&pid("a"), None, &t, 10, 0, 0);
        ix.insert(&pid("b"), None, &t, 10, 0, 0);
        ix.clear_pool(&pid("a"));
        let m = ix.lookup(&key(&t));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, pid("b"));
        assert!(ix.blocks.values().all(|v| v.iter().all(|(p, _)| *p == 1)));
    }

    #[test]
    fn feedback_cuts_what_the_engine_did_not_reuse() {
        let mut ix = index();
        let t = text(1, 4 * BLOCK);
        // 4 bytes per token: 4 blocks = 256 tokens.
        ix.insert(&pid("a"), None, &t, 256, t.len(), 256);
        let k = key(&t);
        assert_eq!(ix.lookup(&k)[0].1.tokens, 256);
        // The engine reused 130 tokens: two whole blocks stay.
        ix.correct(&pid("a"), &k, 256, 130);
        assert_eq!(ix.lookup(&k)[0].1.bytes, 2 * BLOCK);
        // It reused nothing: the entry is gone.
        ix.correct(&pid("a"), &k, 128, 0);
        assert!(ix.lookup(&k).is_empty());
        assert!(ix.blocks.is_empty());
        assert_eq!(ix.pool_len(&pid("a")), 0);
    }

    #[test]
    fn messages_extend_into_the_next_turn() {
        use api::task::{Message, Role};
        let msg = |role, c: &str| Message::text(role, c);
        let turn1 = api::worker::DispatchInput::Messages {
            messages: vec![msg(Role::System, "be brief"), msg(Role::User, "hi")],
            tools: None,
        };
        let turn2 = api::worker::DispatchInput::Messages {
            messages: vec![
                msg(Role::System, "be brief"),
                msg(Role::User, "hi"),
                msg(Role::Assistant, "hello"),
                msg(Role::User, "more"),
            ],
            tools: None,
        };
        let held = sequence_text(&turn1, "hello");
        assert!(request_text(&turn2).starts_with(&held));
    }
}
