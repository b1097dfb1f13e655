//! Test-only: slot and concurrency accounting of fake-engine. A request holds a [`SlotGuard`]
//! while it generates; requests beyond the slot count wait (as in llama-server) and are counted as
//! waiting, not processing. `max_concurrent` is the high-water mark of processing requests, which
//! tests use to prove that the orchestrator never oversubscribes an engine.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Slots {
    sem: Arc<Semaphore>,
    busy: Mutex<Vec<bool>>,
    processing: AtomicUsize,
    waiting: AtomicUsize,
    max_concurrent: AtomicUsize,
    total_requests: AtomicU64,
    /// `FAKE_STATS_FILE`: rewritten with [`Stats`] whenever `max_concurrent` rises, so tests can
    /// read the engine-side high-water mark without the engine's API key. The mutex orders the
    /// rewrites: each one reads the counters while holding it, so a slower writer can never put
    /// an older high-water mark over a newer one.
    stats_file: Option<(std::path::PathBuf, Mutex<()>)>,
}

/// The counters of `GET /fake/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub max_concurrent: usize,
    pub processing: usize,
    pub total_requests: u64,
    pub waiting: usize,
}

/// A slot held by one generating request; dropping it frees the slot.
pub struct SlotGuard {
    slots: Arc<Slots>,
    id: usize,
    // Dropped after `Drop::drop` has cleared the slot, so `processing` never exceeds the slots.
    _permit: OwnedSemaphorePermit,
}

/// Counts a request as waiting for as long as it exists (also when its wait is cancelled).
struct Waiting<'a>(&'a Slots);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slots {
    #[cfg(test)]
    pub fn new(n: usize) -> Arc<Self> {
        Self::with_stats_file(n, None)
    }

    pub fn with_stats_file(n: usize, stats_file: Option<std::path::PathBuf>) -> Arc<Self> {
        let n = n.max(1);
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(n)),
            busy: Mutex::new(vec![false; n]),
            processing: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            max_concurrent: AtomicUsize::new(0),
            total_requests: AtomicU64::new(0),
            stats_file: stats_file.map(|p| (p, Mutex::new(()))),
        })
    }

    fn busy_flags(&self) -> MutexGuard<'_, Vec<bool>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new request, waits for a free slot and takes it. Cancel-safe: dropping the
    /// future while waiting leaves no trace but the request count.
    pub async fn acquire(self: &Arc<Self>) -> SlotGuard {
        self.total_requests.fetch_add(1, Ordering::SeqCst);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(self);
        let permit = Arc::clone(&self.sem)
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        drop(waiting);
        let id = {
            let mut busy = self.busy_flags();
            let id = busy
                .iter()
                .position(|b| !b)
                .expect("a permit guarantees a free slot");
            busy[id] = true;
            id
        };
        let now = self.processing.fetch_add(1, Ordering::SeqCst) + 1;
        if self.max_concurrent.fetch_max(now, Ordering::SeqCst) < now {
            if let Some((path, order)) = &self.stats_file {
                let _in_order = order.lock().unwrap_or_else(|e| e.into_inner());
                let _ = std::fs::write(path, serde_json::to_vec(&self.stats()).unwrap_or_default());
            }
        }
        SlotGuard {
            slots: Arc::clone(self),
            id,
            _permit: permit,
        }
    }

    /// `is_processing` of each slot.
    pub fn busy(&self) -> Vec<bool> {
        self.busy_flags().clone()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            max_concurrent: self.max_concurrent.load(Ordering::SeqCst),
            processing: self.processing.load(Ordering::SeqCst),
            total_requests: self.total_requests.load(Ordering::SeqCst),
            waiting: self.waiting.load(Ordering::SeqCst),
        }
    }
}

impl SlotGuard {
    pub fn id(&self) -> usize {
        self.id
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.busy_flags()[self.id] = false;
        self.slots.processing.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn max_concurrent_never_exceeds_slots() {
        let slots = Slots::new(3);
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let s = Arc::clone(&slots);
            tasks.push(tokio::spawn(async move {
                let g = s.acquire().await;
                let st = s.stats();
                assert!(st.processing <= 3, "{st:?}");
                assert!(s.busy()[g.id()]);
                tokio::time::sleep(Duration::from_millis(2)).await;
                drop(g);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let st = slots.stats();
        assert_eq!(
            st,
            Stats {
                max_concurrent: 3,
                processing: 0,
                total_requests: 40,
                waiting: 0
            }
        );
        assert_eq!(slots.busy(), vec![false; 3]);
    }

    /// Racing acquirers must leave the final high-water mark in the stats file, never an older one.
    #[test]
    fn stats_file_ends_with_the_high_water_mark() {
        let dir = std::env::temp_dir().join(format!("fake-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(8)
            .build()
            .unwrap();
        for round in 0..20 {
            let path = dir.join(format!("stats-{round}.json"));
            let slots = Slots::with_stats_file(8, Some(path.clone()));
            let held: Vec<SlotGuard> = rt.block_on(async {
                let tasks: Vec<_> = (0..8)
                    .map(|_| {
                        tokio::spawn({
                            let s = Arc::clone(&slots);
                            async move { s.acquire().await }
                        })
                    })
                    .collect();
                let mut out = vec![];
                for t in tasks {
                    out.push(t.await.unwrap());
                }
                out
            });
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(
                v["max_concurrent"], 8,
                "round {round}: the file kept an older mark: {v}"
            );
            drop(held);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_holders_get_distinct_slots() {
        let slots = Slots::new(4);
        let held: Vec<SlotGuard> = futures::future::join_all((0..4).map(|_| slots.acquire())).await;
        let mut ids: Vec<usize> = held.iter().map(SlotGuard::id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![0, 1, 2, 3]);
        assert_eq!(slots.busy(), vec![true; 4]);
        // A fifth request waits, and is not counted as processing.
        let s = Arc::clone(&slots);
        let fifth = tokio::spawn(async move { s.acquire().await.id() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(slots.stats().waiting, 1);
        assert_eq!(slots.stats().processing, 4);
        drop(held);
        assert_eq!(fifth.await.unwrap(), 0);
        assert_eq!(
            slots.stats(),
            Stats {
                max_concurrent: 4,
                processing: 0,
                total_requests: 5,
                waiting: 0
            }
        );
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_no_waiter() {
        let slots = Slots::new(1);
        let g = slots.acquire().await;
        let r = tokio::time::timeout(Duration::from_millis(10), slots.acquire()).await;
        assert!(r.is_err());
        assert_eq!(slots.stats().waiting, 0);
        drop(g);
        assert_eq!(slots.stats().processing, 0);
    }
}
