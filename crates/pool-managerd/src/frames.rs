//! Each dispatched task's NDJSON lines, kept while it runs so its dispatch stream can be attached
//! again (HA, issue 21), and the epoch fence of the worker API.
//!
//! A task's run appends every worker event as one serialized line (with its `seq`) to the task's
//! [`TaskFrames`]; a dispatch response is an [`Attachment`] that reads those bytes from seq 0 and
//! then follows live, coalescing the lines already waiting into one chunk. One attachment is
//! current at a time: a newer one, or a higher epoch, closes the older. When the current one goes
//! away before the run ends, a dispatch that carried no epoch (embedded mode) cancels the task at
//! once; one with an epoch leaves it running for the grace period, and cancels it when no dispatch
//! attached again by then (a tombstone remembers that, so a later dispatch gets `WORKER_RESET`).
//! Finished runs with an epoch stay readable for the retention period.
//!
//! Cost per line: one serialization into the task's byte buffer under a short lock (no other
//! allocation) and a `Notify`; the reader copies what is new into one `Bytes` per chunk. No lock
//! is held across an await.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use api::worker::{WorkerEvent, WorkerLine};
use api::{ErrorCode, ErrorEnvelope, PoolId, TaskId};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::TaskRetention;

/// A dispatch stream writes a keepalive line after this long without another line.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// Unread bytes beyond which a run waits for its attached reader (the engine then waits for the
/// run), as the bounded channel between them did before.
const HIGH_WATER: usize = 16 * 1024;

/// Counters for the metrics page.
#[derive(Debug, Default)]
pub struct Counters {
    /// Runs whose dispatch stream is gone, waiting out the grace period.
    pub detached: AtomicI64,
    pub reattached: AtomicU64,
    pub grace_expired: AtomicU64,
}

/// The node's task buffers and the highest epoch seen.
pub struct Frames {
    cfg: TaskRetention,
    counters: Arc<Counters>,
    reg: Mutex<Registry>,
    /// Notified when a stream with an epoch breaks: the leader may be gone, so the node's next
    /// heartbeat goes at once (and finds the new leader sooner).
    lost_leader: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    /// The highest `x-llorch-epoch` seen (0: none).
    epoch: u64,
    /// Runs of dispatches that carried an epoch: running, finished within the retention, or
    /// tombstoned.
    tasks: HashMap<TaskId, Arc<TaskFrames>>,
    /// Finished runs, oldest first, with when they finished and the bytes they keep.
    retained: VecDeque<(Arc<TaskFrames>, Instant, usize)>,
    retained_bytes: usize,
}

/// What a dispatch with an epoch finds for its (task, attempt).
pub enum Lookup {
    /// Nothing to attach to: run it (admission refuses a task that still runs another attempt).
    Fresh,
    /// Attached to the run: its lines from seq 0, then live.
    Attach(Attachment),
    /// The run cannot be attached (grace expired, buffer overflowed, another pool): the answer.
    Refused(StatusCode, ErrorEnvelope),
}

/// The answer to a request whose epoch is below the highest seen.
pub fn stale(epoch: u64, highest: u64) -> ErrorEnvelope {
    ErrorEnvelope::new(
        ErrorCode::StaleEpoch,
        format!("epoch {epoch} is older than epoch {highest} of the current leader"),
    )
}

/// The HTTP status of a refused attach (kept as a number so this module knows no HTTP crate).
pub type StatusCode = u16;

impl Frames {
    pub fn new(cfg: TaskRetention) -> Self {
        Self {
            cfg,
            counters: Default::default(),
            reg: Default::default(),
            lost_leader: Default::default(),
        }
    }

    /// `notify` learns of every stream with an epoch that broke (the registrar's heartbeat
    /// trigger).
    pub fn with_lost_leader(mut self, notify: Arc<Notify>) -> Self {
        self.lost_leader = notify;
        self
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch fence: a request without an epoch passes; one below the highest seen is refused
    /// (the highest is returned); a higher one raises it and closes every stream attached for an
    /// older epoch (their runs enter the grace period).
    pub fn fence(&self, epoch: Option<u64>) -> Result<(), u64> {
        let Some(epoch) = epoch else { return Ok(()) };
        let mut r = self.registry();
        if epoch < r.epoch {
            return Err(r.epoch);
        }
        if epoch > r.epoch {
            if r.epoch > 0 {
                tracing::info!(
                    event = "node.epoch_raised",
                    epoch = epoch,
                    "Leader epoch raised from {} to {epoch}",
                    r.epoch
                );
            }
            r.epoch = epoch;
            for t in r.tasks.values() {
                t.close_older(epoch);
            }
        }
        Ok(())
    }

    /// What a dispatch of (`task`, `attempt`) on `pool` with `epoch` attaches to.
    pub fn lookup(&self, task: &TaskId, attempt: u32, pool: &PoolId, epoch: u64) -> Lookup {
        let mut r = self.registry();
        if epoch < r.epoch {
            // A newer leader's request came in since this one passed the fence.
            return Lookup::Refused(409, stale(epoch, r.epoch));
        }
        self.evict(&mut r, Instant::now());
        let Some(t) = r.tasks.get(task).cloned() else {
            return Lookup::Fresh;
        };
        if t.attempt != attempt {
            if t.lock().ended {
                r.tasks.remove(task);
            }
            return Lookup::Fresh;
        }
        if t.pool != *pool {
            return Lookup::Refused(
                409,
                ErrorEnvelope::new(
                    ErrorCode::Conflict,
                    format!("task {task} attempt {attempt} runs on pool {}", t.pool),
                ),
            );
        }
        match t.attach(Some(epoch)) {
            Ok(a) => {
                self.counters.reattached.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event = "task.reattached", task_id = %task, pool_id = %pool, attempt = attempt, epoch = epoch,
                    "Dispatch stream of task {task} attached again (epoch {epoch}); replaying from seq 0");
                Lookup::Attach(a)
            }
            Err(why) => Lookup::Refused(
                410,
                ErrorEnvelope::new(ErrorCode::WorkerReset, why).with_retriable(false),
            ),
        }
    }

    /// A new run of (`task`, `attempt`) on `pool`, canceled through `cancel`, and its first
    /// attachment. With an epoch the run is registered for later attaches.
    pub fn start(
        &self,
        task: TaskId,
        attempt: u32,
        pool: PoolId,
        epoch: Option<u64>,
        cancel: CancellationToken,
    ) -> (Arc<TaskFrames>, Attachment) {
        let t = Arc::new(TaskFrames {
            task,
            attempt,
            pool,
            replayable: epoch.is_some(),
            grace: self.cfg.grace,
            cap: self.cfg.buffer_max_bytes,
            counters: self.counters.clone(),
            lost_leader: self.lost_leader.clone(),
            cancel,
            state: Mutex::new(State {
                data: Vec::with_capacity(1024),
                base: 0,
                next_seq: 0,
                ended: false,
                overflowed: false,
                expired: false,
                gen: 0,
                read_pos: 0,
                attached: false,
                epoch,
                in_grace: false,
            }),
            wake: Notify::new(),
            drained: Notify::new(),
        });
        let a = t.attach(epoch).expect("a new run can be attached");
        if let Some(epoch) = epoch {
            let mut r = self.registry();
            r.tasks.insert(task, t.clone());
            if epoch < r.epoch {
                // A newer leader's request came in during admission: this stream is closed at
                // once, and the run waits in its grace period for the new leader's dispatch.
                t.close_older(r.epoch);
            }
        }
        (t, a)
    }

    /// `t`'s run is over (its terminal line, if any, is written): readers end after what is
    /// buffered, and a run with an epoch is retained (a tombstone keeps no lines).
    pub fn finish(&self, t: &Arc<TaskFrames>) {
        let bytes = t.end();
        let mut r = self.registry();
        if r.tasks.get(&t.task).is_some_and(|e| Arc::ptr_eq(e, t)) {
            r.retained.push_back((t.clone(), Instant::now(), bytes));
            r.retained_bytes += bytes;
        }
        self.evict(&mut r, Instant::now());
    }

    /// Drops finished runs beyond the retention period, count or bytes, oldest first.
    fn evict(&self, r: &mut Registry, now: Instant) {
        while let Some((t, at, bytes)) = r.retained.front() {
            let old = now.duration_since(*at) > self.cfg.retention;
            if !old
                && r.retained.len() <= self.cfg.max_retained
                && r.retained_bytes <= self.cfg.retained_max_bytes
            {
                break;
            }
            let (t, bytes) = (t.clone(), *bytes);
            r.retained.pop_front();
            r.retained_bytes -= bytes;
            if r.tasks.get(&t.task).is_some_and(|e| Arc::ptr_eq(e, &t)) {
                r.tasks.remove(&t.task);
            }
        }
    }
}

/// One run's lines and attachments.
pub struct TaskFrames {
    task: TaskId,
    attempt: u32,
    pool: PoolId,
    /// Dispatched with an epoch: the lines are kept for a later attach. Without one, a line is
    /// dropped once its one reader has it.
    replayable: bool,
    grace: Duration,
    /// Bytes kept for a replay; beyond them the run can no longer be attached.
    cap: usize,
    counters: Arc<Counters>,
    lost_leader: Arc<Notify>,
    /// The run's cancel (the supervisor's token for this task).
    cancel: CancellationToken,
    state: Mutex<State>,
    /// Woken on every new line, end, and change of attachment.
    wake: Notify,
    /// Woken when the reader took lines, went away, or was replaced.
    drained: Notify,
}

struct State {
    /// Whole NDJSON lines; `data[0]` is byte `base` of the stream.
    data: Vec<u8>,
    /// Bytes dropped from the front (only once the buffer overflowed).
    base: usize,
    next_seq: u64,
    /// The run is over: no line follows.
    ended: bool,
    /// The lines outgrew `cap`: only the current attachment reads on, and nothing can attach.
    overflowed: bool,
    /// Canceled after the grace period.
    expired: bool,
    /// The current attachment's generation; an attachment of another one reads nothing more.
    gen: u64,
    /// Where the current attachment reads next (absolute byte offset).
    read_pos: usize,
    attached: bool,
    /// The current (or last) attachment's epoch; None: embedded mode, no grace.
    epoch: Option<u64>,
    in_grace: bool,
}

impl State {
    /// The attached reader has more than [`HIGH_WATER`] bytes to read.
    fn behind(&self) -> bool {
        self.attached && self.base + self.data.len() - self.read_pos.max(self.base) > HIGH_WATER
    }
}

impl TaskFrames {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `event` as the next line. Nothing follows a terminal line. True when the attached
    /// reader is far behind: the caller should wait for [`TaskFrames::caught_up`].
    pub fn push(&self, event: WorkerEvent) -> bool {
        let terminal = event.is_terminal();
        let behind = {
            let mut s = self.lock();
            if s.ended {
                return false;
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            if terminal {
                s.ended = true;
                self.leave_grace(&mut s);
            }
            if s.overflowed && !s.attached {
                // Nobody reads this run any more, and nobody can attach.
                return false;
            }
            // Serializing typed worker events into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut s.data, &WorkerLine { seq, event });
            s.data.push(b'\n');
            if !s.overflowed && s.data.len() > self.cap {
                s.overflowed = true;
                tracing::warn!(event = "task.buffer_overflow", task_id = %self.task, pool_id = %self.pool, bytes = s.data.len(),
                    "The lines of task {} outgrew the {} byte buffer; its dispatch stream can no longer be attached again", self.task, self.cap);
            }
            s.behind()
        };
        self.wake.notify_waiters();
        behind
    }

    /// Resolves once the attached reader is no longer far behind (or there is none).
    pub async fn caught_up(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !self.lock().behind() {
                return;
            }
            drained.await;
        }
    }

    /// The run is over; returns the bytes it keeps.
    fn end(&self) -> usize {
        let bytes = {
            let mut s = self.lock();
            s.ended = true;
            self.leave_grace(&mut s);
            if s.expired || s.overflowed && !s.attached {
                s.data = Vec::new();
            } else {
                s.data.shrink_to_fit();
            }
            s.data.capacity()
        };
        self.wake.notify_waiters();
        bytes
    }

    /// A new current attachment (the older one, if any, reads nothing more).
    fn attach(self: &Arc<Self>, epoch: Option<u64>) -> Result<Attachment, String> {
        let gen = {
            let mut s = self.lock();
            if s.expired {
                return Err(format!(
                    "task {} was canceled: its dispatch stream stayed detached longer than the {} ms grace period",
                    self.task,
                    self.grace.as_millis()
                ));
            }
            if s.overflowed {
                return Err(format!(
                    "task {}'s lines outgrew the {} byte buffer; its stream cannot be replayed",
                    self.task, self.cap
                ));
            }
            self.leave_grace(&mut s);
            s.gen += 1;
            s.read_pos = 0;
            s.attached = true;
            s.epoch = epoch;
            s.gen
        };
        self.wake.notify_waiters();
        self.drained.notify_waiters();
        Ok(Attachment {
            frames: self.clone(),
            gen,
            pos: 0,
        })
    }

    /// Closes the current attachment when it was made for an epoch below `epoch`.
    fn close_older(self: &Arc<Self>, epoch: u64) {
        {
            let mut s = self.lock();
            if !s.attached || s.epoch.is_none_or(|e| e >= epoch) {
                return;
            }
            tracing::info!(event = "task.stream_fenced", task_id = %self.task, pool_id = %self.pool,
                "Closed the dispatch stream of task {} attached for epoch {}: epoch {epoch} is current", self.task, s.epoch.unwrap_or(0));
            s.gen += 1;
            s.attached = false;
            if !s.ended {
                self.detached(&mut s);
            }
        }
        self.wake.notify_waiters();
        self.drained.notify_waiters();
    }

    /// The attachment `gen` went away (its response was dropped, or it ended).
    fn detach(self: &Arc<Self>, gen: u64) {
        {
            let mut s = self.lock();
            if s.gen != gen || !s.attached {
                return;
            }
            s.attached = false;
            if !s.ended {
                self.detached(&mut s);
            }
        }
        self.drained.notify_waiters();
    }

    /// The run lost its reader before it ended: cancel now (no epoch, or nothing could be
    /// replayed), or wait out the grace period for a dispatch that attaches again.
    fn detached(self: &Arc<Self>, s: &mut State) {
        let runtime = tokio::runtime::Handle::try_current();
        match (s.epoch, &runtime) {
            (Some(epoch), Ok(rt)) if !s.overflowed => {
                s.in_grace = true;
                self.counters.detached.fetch_add(1, Ordering::Relaxed);
                self.lost_leader.notify_one();
                tracing::info!(event = "task.detached", task_id = %self.task, pool_id = %self.pool, epoch = epoch,
                    "Dispatch stream of task {} dropped; it keeps running for {} ms for a dispatch to attach again", self.task, self.grace.as_millis());
                let (me, gen, grace) = (self.clone(), s.gen, self.grace);
                rt.spawn(async move {
                    tokio::time::sleep(grace).await;
                    me.expire(gen);
                });
            }
            _ => {
                if s.epoch.is_some() {
                    tracing::warn!(event = "task.detached", task_id = %self.task, pool_id = %self.pool,
                        "Dispatch stream of task {} dropped and it cannot be attached again; canceling it", self.task);
                }
                self.cancel.cancel();
            }
        }
    }

    /// The grace period that began with attachment `gen` closing is over.
    fn expire(&self, gen: u64) {
        let mut s = self.lock();
        if s.gen != gen || s.attached || s.ended || !s.in_grace {
            return;
        }
        self.leave_grace(&mut s);
        s.expired = true;
        self.counters.grace_expired.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(event = "task.grace_expired", task_id = %self.task, pool_id = %self.pool,
            "No dispatch attached to task {} within the {} ms grace period; canceling it", self.task, self.grace.as_millis());
        self.cancel.cancel();
    }

    fn leave_grace(&self, s: &mut State) {
        if s.in_grace {
            s.in_grace = false;
            self.counters.detached.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The keepalive of attachment `gen` after [`KEEPALIVE`] without a line: written into the
    /// buffer like any line, so every reader sees the same `seq`s.
    fn keepalive(&self, gen: u64) {
        {
            let s = self.lock();
            if s.gen != gen || s.ended {
                return;
            }
        }
        self.push(WorkerEvent::Keepalive);
    }
}

/// A dispatch response reading one run's lines: from its position (seq 0 at first) to the end,
/// then live. Dropping it detaches it.
pub struct Attachment {
    frames: Arc<TaskFrames>,
    gen: u64,
    /// Absolute byte position of the next line to send.
    pos: usize,
}

enum Read {
    Chunk(Bytes),
    Wait,
    End,
}

impl Attachment {
    /// Everything new since the last read, as one chunk.
    fn read(&mut self) -> Read {
        let mut s = self.frames.lock();
        if s.gen != self.gen {
            return Read::End;
        }
        let end = s.base + s.data.len();
        if self.pos < end {
            let from = self.pos.saturating_sub(s.base);
            let chunk = Bytes::copy_from_slice(&s.data[from..]);
            self.pos = end;
            s.read_pos = end;
            if s.overflowed || !self.frames.replayable {
                // Nobody can attach later: only this reader needs the lines, and only once.
                s.base = end;
                s.data.clear();
            }
            drop(s);
            self.frames.drained.notify_waiters();
            Read::Chunk(chunk)
        } else if s.ended {
            Read::End
        } else {
            Read::Wait
        }
    }

    /// The NDJSON body: chunks of whole lines until the run's last line (or until a newer
    /// attachment or epoch closes this one), a keepalive line after [`KEEPALIVE`] of silence.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
        let state = (self, daemon::quiet::Quiet::new(KEEPALIVE));
        futures::stream::unfold(state, |(mut a, mut quiet)| async move {
            loop {
                let frames = a.frames.clone();
                let notified = frames.wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match a.read() {
                    Read::Chunk(b) => {
                        quiet.touch();
                        return Some((Ok(b), (a, quiet)));
                    }
                    Read::End => return None,
                    Read::Wait => {}
                }
                tokio::select! {
                    _ = notified => {}
                    _ = quiet.elapsed() => frames.keepalive(a.gen),
                }
            }
        })
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.frames.detach(self.gen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const B: &str = "00000000-0000-4000-8000-00000000000b";

    fn frames(edit: impl FnOnce(&mut TaskRetention)) -> Frames {
        let mut cfg = TaskRetention::default();
        edit(&mut cfg);
        Frames::new(cfg)
    }

    fn token(i: u64) -> WorkerEvent {
        WorkerEvent::Token {
            i,
            t: "tok".into(),
            ids: vec![],
            logprobs: vec![],
        }
    }

    fn end() -> WorkerEvent {
        WorkerEvent::End {
            tokens_in: 1,
            tokens_out: 1,
            stop_reason: api::events::StopReason::Limit,
            seed: None,
            engine_ttft_ms: None,
            engine_decode_ms: 0,
            tokens_cached: None,
            slot: None,
        }
    }

    fn pool() -> PoolId {
        "p1".parse().unwrap()
    }

    /// Everything an attachment can read now, as text.
    fn drain(a: &mut Attachment) -> String {
        let mut out = String::new();
        while let Read::Chunk(b) = a.read() {
            out.push_str(std::str::from_utf8(&b).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn lines_coalesce_and_a_later_attach_replays_them_whole() {
        let f = frames(|_| {});
        let cancel = CancellationToken::new();
        let (t, mut first) = f.start(A.parse().unwrap(), 1, pool(), Some(1), cancel.clone());
        t.push(token(0));
        t.push(token(1));
        let read = match first.read() {
            Read::Chunk(b) => String::from_utf8(b.to_vec()).unwrap(),
            _ => panic!("two lines waiting"),
        };
        assert_eq!(read.lines().count(), 2, "one chunk for the waiting lines");
        assert!(matches!(first.read(), Read::Wait));
        t.push(end());
        t.push(token(2));
        let Lookup::Attach(mut second) = f.lookup(&A.parse().unwrap(), 1, &pool(), 1) else {
            panic!("same task and attempt attach");
        };
        assert!(
            matches!(first.read(), Read::End),
            "the newer attachment closes the older"
        );
        let all = drain(&mut second);
        assert!(all.starts_with(&read), "{all}");
        assert_eq!(
            all.lines().count(),
            3,
            "nothing follows the terminal line: {all}"
        );
        assert!(matches!(second.read(), Read::End));
        assert!(!cancel.is_cancelled());
    }

    /// A run whose attached reader is far behind waits for it; a reader that goes away does not
    /// hold the run.
    #[tokio::test]
    async fn a_reader_far_behind_holds_the_run_until_it_reads() {
        let f = frames(|_| {});
        let (t, mut a) = f.start(A.parse().unwrap(), 1, pool(), None, Default::default());
        let mut behind = false;
        for i in 0..1000 {
            behind = t.push(token(i));
            if behind {
                break;
            }
        }
        assert!(behind, "16 KiB unread is far behind");
        let waiting = tokio::spawn({
            let t = t.clone();
            async move { t.caught_up().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(matches!(a.read(), Read::Chunk(_)));
        waiting.await.unwrap();
        while !t.push(token(0)) {}
        drop(a);
        t.caught_up().await;
    }

    #[tokio::test]
    async fn an_overflowed_buffer_cannot_be_attached_and_its_drop_cancels() {
        let f = frames(|c| c.buffer_max_bytes = 100);
        let cancel = CancellationToken::new();
        let (t, mut a) = f.start(A.parse().unwrap(), 1, pool(), Some(1), cancel.clone());
        for i in 0..5 {
            t.push(token(i));
        }
        assert_eq!(
            drain(&mut a).lines().count(),
            5,
            "the attached reader reads on"
        );
        t.push(token(5));
        assert_eq!(drain(&mut a).lines().count(), 1);
        match f.lookup(&A.parse().unwrap(), 1, &pool(), 1) {
            Lookup::Refused(410, env) => {
                assert_eq!((env.code, env.retriable), (ErrorCode::WorkerReset, false));
                assert!(env.message.contains("100 byte buffer"), "{}", env.message);
            }
            _ => panic!("an overflowed run cannot be attached"),
        }
        drop(a);
        assert!(
            cancel.is_cancelled(),
            "nothing could attach again: canceled at once"
        );
        assert_eq!(f.counters().detached.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn finished_runs_are_retained_within_bounds_and_another_attempt_runs_fresh() {
        let f = frames(|c| c.max_retained = 1);
        for id in [A, B] {
            let (t, a) = f.start(id.parse().unwrap(), 1, pool(), Some(1), Default::default());
            t.push(end());
            drop(a);
            f.finish(&t);
        }
        assert!(
            matches!(f.lookup(&A.parse().unwrap(), 1, &pool(), 1), Lookup::Fresh),
            "the oldest finished run went first"
        );
        let other: PoolId = "p2".parse().unwrap();
        assert!(matches!(
            f.lookup(&B.parse().unwrap(), 1, &other, 1),
            Lookup::Refused(409, _)
        ));
        assert!(matches!(
            f.lookup(&B.parse().unwrap(), 2, &pool(), 1),
            Lookup::Fresh
        ));
        assert!(
            matches!(f.lookup(&B.parse().unwrap(), 1, &pool(), 1), Lookup::Fresh),
            "a new attempt replaced the finished one"
        );
        assert_eq!(f.fence(Some(3)), Ok(()));
        assert_eq!(f.fence(Some(2)), Err(3));
        assert_eq!(f.fence(None), Ok(()));
        match f.lookup(&B.parse().unwrap(), 1, &pool(), 2) {
            Lookup::Refused(409, env) => assert_eq!(env.code, ErrorCode::StaleEpoch),
            _ => panic!("a lookup below the fence is refused"),
        }
    }
}
