//! The scheduler core against a recording fake of its effects: every admission, queueing,
//! placement, failover, deadline and cancel rule, without a network or a clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::events::{Event, StopReason};
use api::node::{LoadedModel, PoolState, PoolStatus, RegisterRequest};
use api::task::{Placement, PlacementMode, Priority, TaskRequest, TaskState};
use api::worker::WorkerEvent;
use api::{ErrorCode, TaskId};

use super::nodes::NodeCaller;
use super::*;
use crate::config::{FullPolicy, RawConfig};

#[derive(Default)]
struct Recorded {
    dispatched: Vec<DispatchJob>,
    aborted: Vec<TaskId>,
    cancels: Vec<CancelJob>,
    timers: Vec<(Duration, Timer)>,
    tokenized: Vec<TokenizeJob>,
}

impl Effects for Recorded {
    fn dispatch(&mut self, job: DispatchJob) {
        self.dispatched.push(job);
    }
    fn abort_dispatch(&mut self, task: TaskId) {
        self.aborted.push(task);
    }
    fn cancel_on_worker(&mut self, job: CancelJob) {
        self.cancels.push(job);
    }
    fn timer(&mut self, after: Duration, timer: Timer) {
        self.timers.push((after, timer));
    }
    fn tokenize(&mut self, job: TokenizeJob) {
        self.tokenized.push(job);
    }
}

fn cid(s: &str) -> CorrelationId {
    s.parse().expect("test correlation id")
}

fn pid(s: &str) -> PoolId {
    s.parse().expect("test pool id")
}

fn nid(s: &str) -> NodeId {
    s.parse().expect("test node id")
}

fn mid(s: &str) -> ModelId {
    s.parse().expect("test model id")
}

fn core_with(edit: impl FnOnce(&mut Config)) -> Core<Recorded> {
    let mut cfg = RawConfig::default()
        .validate(std::path::Path::new("/tmp"))
        .expect("defaults");
    edit(&mut cfg);
    Core::new(
        Arc::new(cfg),
        Recorded::default(),
        Arc::new(crate::metrics::Metrics::default()),
        catalog::Catalog::open_in_memory().expect("in-memory catalog"),
    )
}

fn pool(id: &str, slots: u32) -> PoolStatus {
    PoolStatus {
        pool_id: pid(id),
        state: PoolState::Ready,
        last_error: None,
        engine: "llamacpp".into(),
        engine_version: Some("b1-test".into()),
        engine_built: true,
        provisioning_target: false,
        device_mask: "cpu".into(),
        slots_total: slots,
        slots_free: slots,
        ctx_per_slot: 1024,
        workload: api::task::Workload::Completion,
        models: vec![loaded("m")],
        running: vec![],
        kv_cache_usage_ratio: None,
        decode_tokens_per_s: None,
        vram_used_bytes: None,
    }
}

fn register(core: &mut Core<Recorded>, node: &str, pools: Vec<PoolStatus>, now: Instant) {
    let req = RegisterRequest {
        protocol_version: 1,
        node_id: nid(node),
        machine_id: node.parse().unwrap(),
        version: "t".into(),
        address: format!("http://{node}"),
        dispatch_token: "x".repeat(32),
        capabilities: Default::default(),
        pools,
    };
    core.register(req, NodeCaller::Open, now).expect("register");
}

fn task(edit: impl FnOnce(&mut TaskRequest)) -> crate::admission::ValidatedTask {
    let mut r = TaskRequest::new("m");
    r.prompt = Some("hi".into());
    r.max_tokens = Some(16);
    edit(&mut r);
    crate::admission::validate(r, &core_with(|_| {}).cfg).expect("valid")
}

fn submit(
    core: &mut Core<Recorded>,
    p: Priority,
    now: Instant,
) -> Result<TaskId, api::ErrorEnvelope> {
    core.submit(task(|r| r.priority = p), cid("cid"), now)
        .map(|(a, _)| a.task_id)
}

fn dispatched(core: &Core<Recorded>) -> Vec<(TaskId, PoolId)> {
    core.effects
        .dispatched
        .iter()
        .map(|j| (j.task, j.body.pool_id.clone()))
        .collect()
}

fn finish(core: &mut Core<Recorded>, id: TaskId, now: Instant) {
    let attempt = core.tasks[&id].attempts;
    core.on_worker(
        id,
        attempt,
        WorkerEvent::Token {
            i: 0,
            t: "x".into(),
            logprobs: vec![],
            ids: vec![],
        },
        now,
    );
    core.on_worker(
        id,
        attempt,
        WorkerEvent::End {
            tokens_in: 3,
            tokens_out: 1,
            stop_reason: StopReason::Eos,
            seed: Some(1),
            engine_ttft_ms: Some(1),
            engine_decode_ms: 1,
            tokens_cached: None,
            slot: None,
        },
        now,
    );
}

fn frames(core: &Core<Recorded>, id: TaskId) -> Vec<Event> {
    core.tasks[&id].log.read_from(0).0
}

#[test]
fn dispatch_never_exceeds_slots() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 2)], now);
    let ids: Vec<TaskId> = (0..3)
        .map(|_| submit(&mut core, Priority::Interactive, now).expect("admitted"))
        .collect();
    assert_eq!(dispatched(&core).len(), 2);
    assert_eq!(core.tasks[&ids[2]].state(), TaskState::Queued);
    finish(&mut core, ids[0], now);
    assert_eq!(
        dispatched(&core).len(),
        3,
        "the freed slot goes to the queued task at once"
    );
    assert_eq!(core.registry.pools()["p1"].holding.len(), 2);
}

#[test]
fn interactive_first_and_batch_ages() {
    let now = Instant::now();
    let mut core = core_with(|c| c.interactive_burst = 2);
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let busy = submit(&mut core, Priority::Interactive, now).expect("first");
    let b = submit(&mut core, Priority::Batch, now).expect("batch");
    let is: Vec<TaskId> = (0..3)
        .map(|_| submit(&mut core, Priority::Interactive, now).expect("interactive"))
        .collect();
    let mut order = vec![];
    let mut running = busy;
    for _ in 0..4 {
        finish(&mut core, running, now);
        running = core.effects.dispatched.last().expect("dispatch").task;
        order.push(running);
    }
    assert_eq!(order, vec![is[0], is[1], b, is[2]]);
}

#[test]
fn reject_policy_answers_429_with_backoff() {
    let now = Instant::now();
    let mut core = core_with(|c| c.queue_capacity = 1);
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    submit(&mut core, Priority::Interactive, now).expect("runs");
    submit(&mut core, Priority::Interactive, now).expect("queued");
    let e = submit(&mut core, Priority::Interactive, now).expect_err("full");
    assert_eq!(
        (e.code, e.http_status(), e.retriable),
        (ErrorCode::AdmissionReject, 429, true)
    );
    assert_eq!(e.policy_label.as_deref(), Some("reject"));
    assert!(e.retry_after_ms.is_some_and(|ms| ms >= 1000));
}

#[test]
fn drop_lru_evicts_the_oldest_lowest_class() {
    let now = Instant::now();
    let mut core = core_with(|c| {
        c.queue_capacity = 2;
        c.full_policy = FullPolicy::DropLru;
    });
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    submit(&mut core, Priority::Interactive, now).expect("runs");
    let b1 = submit(&mut core, Priority::Batch, now).expect("queued");
    let b2 = submit(&mut core, Priority::Batch, now).expect("queued");
    let i = submit(&mut core, Priority::Interactive, now).expect("evicts b1");
    assert!(
        matches!(frames(&core, b1).last(), Some(Event::Error(e)) if e.code == ErrorCode::QueueFullDropLru && e.retriable)
    );
    assert_eq!(core.tasks[&b2].state(), TaskState::Queued);
    assert_eq!(core.tasks[&i].state(), TaskState::Queued);
    // Now only interactive + one batch: a batch newcomer evicts the batch one; then a batch
    // newcomer facing only interactive tasks is refused.
    submit(&mut core, Priority::Batch, now).expect("evicts b2");
    submit(&mut core, Priority::Interactive, now).expect("evicts the newest batch");
    let e = submit(&mut core, Priority::Batch, now).expect_err("nothing evictable");
    assert_eq!(e.code, ErrorCode::QueueFullDropLru);
}

#[test]
fn shed_low_priority_sheds_newest_batch() {
    let now = Instant::now();
    let mut core = core_with(|c| {
        c.queue_capacity = 2;
        c.full_policy = FullPolicy::ShedLowPriority;
    });
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    submit(&mut core, Priority::Interactive, now).expect("runs");
    let b1 = submit(&mut core, Priority::Batch, now).expect("queued");
    let b2 = submit(&mut core, Priority::Batch, now).expect("queued");
    let e = submit(&mut core, Priority::Batch, now).expect_err("batch newcomer");
    assert_eq!(
        (e.code, e.policy_label.as_deref()),
        (ErrorCode::AdmissionReject, Some("shed-low-priority"))
    );
    submit(&mut core, Priority::Interactive, now).expect("sheds b2");
    assert!(
        matches!(frames(&core, b2).last(), Some(Event::Error(e)) if e.code == ErrorCode::AdmissionReject)
    );
    assert_eq!(core.tasks[&b1].state(), TaskState::Queued);
}

#[test]
fn pin_semantics() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    let mut starting = pool("p2", 1);
    starting.state = PoolState::Starting;
    register(&mut core, "n1", vec![pool("p1", 1), starting], now);
    let pin = |id: &str| Placement {
        mode: PlacementMode::Pin,
        pin_pool_id: Some(pid(id)),
        ..Default::default()
    };
    let e = core
        .submit(task(|r| r.placement = Some(pin("nope"))), cid("c"), now)
        .map(|_| ())
        .expect_err("unknown");
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidParams, Some("placement.pin_pool_id"))
    );
    let e = core
        .submit(task(|r| r.placement = Some(pin("p2"))), cid("c"), now)
        .map(|_| ())
        .expect_err("not ready");
    assert_eq!((e.code, e.http_status()), (ErrorCode::PoolUnready, 503));
    // A Ready pin with no free slot queues in the pool's own queue and waits for that pool.
    let a = core
        .submit(task(|r| r.placement = Some(pin("p1"))), cid("c"), now)
        .expect("pinned")
        .0
        .task_id;
    let b = core
        .submit(task(|r| r.placement = Some(pin("p1"))), cid("c"), now)
        .expect("pinned")
        .0
        .task_id;
    assert_eq!(core.tasks[&b].queue_key, queue::QueueKey::Pool(pid("p1")));
    register(&mut core, "n2", vec![pool("p3", 4)], now);
    assert!(
        dispatched(&core).iter().all(|(_, p)| p == "p1"),
        "pinned tasks never go elsewhere"
    );
    finish(&mut core, a, now);
    assert_eq!(dispatched(&core).last(), Some(&(b, pid("p1"))));
}

#[test]
fn failover_before_first_token_and_reset_after() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("a", 1)], now);
    register(&mut core, "n2", vec![pool("b", 1)], now);
    let t = submit(&mut core, Priority::Interactive, now).expect("admitted");
    let first_pool = dispatched(&core)[0].1.clone();
    core.on_relay_ended(
        t,
        1,
        RelayEnd::Unreachable("connection refused".into()),
        now,
    );
    let second = dispatched(&core)[1].clone();
    assert_eq!(second.0, t);
    assert_ne!(second.1, first_pool, "retried on the other pool");
    let fr = frames(&core, t);
    assert_eq!(
        fr.iter().filter(|f| matches!(f, Event::Started(_))).count(),
        1,
        "started is not repeated"
    );
    assert!(fr.iter().any(
        |f| matches!(f, Event::Metrics(m) if m.placement.as_ref().is_some_and(|p| p.attempt == 2))
    ));
    core.on_worker(
        t,
        2,
        WorkerEvent::Token {
            i: 0,
            t: "x".into(),
            logprobs: vec![],
            ids: vec![],
        },
        now,
    );
    core.on_relay_ended(t, 2, RelayEnd::Broken("reset".into()), now);
    assert!(
        matches!(frames(&core, t).last(), Some(Event::Error(e)) if e.code == ErrorCode::WorkerReset)
    );
    assert_eq!(
        dispatched(&core).len(),
        2,
        "never retried after the first token"
    );
}

#[test]
fn exhausted_retries_end_with_pool_unavailable() {
    let now = Instant::now();
    let mut core = core_with(|c| c.dispatch_retries = 1);
    register(
        &mut core,
        "n1",
        vec![pool("a", 1), pool("b", 1), pool("c", 1)],
        now,
    );
    let t = submit(&mut core, Priority::Interactive, now).expect("admitted");
    core.on_relay_ended(t, 1, RelayEnd::Closed, now);
    core.on_relay_ended(t, 2, RelayEnd::Closed, now);
    assert_eq!(dispatched(&core).len(), 2);
    assert!(
        matches!(frames(&core, t).last(), Some(Event::Error(e)) if e.code == ErrorCode::PoolUnavailable)
    );
}

#[test]
fn deadlines_while_queued_and_running() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let running = core
        .submit(task(|r| r.deadline_ms = Some(5000)), cid("c"), now)
        .expect("runs")
        .0
        .task_id;
    let queued = core
        .submit(task(|r| r.deadline_ms = Some(5000)), cid("c"), now)
        .expect("queued")
        .0
        .task_id;
    assert!(core
        .effects
        .timers
        .contains(&(Duration::from_millis(5000), Timer::Deadline(queued))));
    assert!(core.effects.dispatched[0]
        .body
        .deadline_remaining_ms
        .is_some_and(|ms| ms <= 5000));
    core.on_timer(Timer::Deadline(queued), now);
    assert!(
        matches!(frames(&core, queued).last(), Some(Event::Error(e)) if e.code == ErrorCode::DeadlineUnmet && !e.retriable)
    );
    core.on_worker(
        running,
        1,
        WorkerEvent::Token {
            i: 0,
            t: "x".into(),
            logprobs: vec![],
            ids: vec![],
        },
        now,
    );
    core.on_timer(Timer::Deadline(running), now);
    assert!(
        matches!(frames(&core, running).last(), Some(Event::End(e)) if e.stop_reason == StopReason::Deadline && !e.canceled)
    );
    assert_eq!(core.effects.aborted, vec![running]);
    assert_eq!(
        core.effects.cancels.len(),
        1,
        "the engine request is canceled on the worker"
    );
}

#[test]
fn cancel_is_immediate_and_the_slot_waits_for_confirmation() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let t = submit(&mut core, Priority::Interactive, now).expect("runs");
    let next = submit(&mut core, Priority::Interactive, now).expect("queued");
    core.on_worker(
        t,
        1,
        WorkerEvent::Token {
            i: 0,
            t: "a".into(),
            logprobs: vec![],
            ids: vec![],
        },
        now,
    );
    assert!(core.cancel(t, tasks::CancelReason::Client, now));
    core.on_worker(
        t,
        1,
        WorkerEvent::Token {
            i: 1,
            t: "late".into(),
            logprobs: vec![],
            ids: vec![],
        },
        now,
    );
    let fr = frames(&core, t);
    assert!(
        matches!(fr.last(), Some(Event::End(e)) if e.canceled && e.stop_reason == StopReason::Canceled)
    );
    assert_eq!(
        fr.iter().filter(|f| matches!(f, Event::Token(_))).count(),
        1,
        "no token after the cancel"
    );
    assert_eq!(
        core.tasks[&next].state(),
        TaskState::Queued,
        "the slot is still held until the worker confirms"
    );
    core.on_cancel_confirmed(t, now);
    assert_eq!(core.tasks[&next].state(), TaskState::Running);
    // A queued task's cancel ends it alone.
    let q = submit(&mut core, Priority::Interactive, now).expect("queued");
    core.cancel(q, tasks::CancelReason::Client, now);
    assert!(matches!(frames(&core, q).as_slice(), [Event::End(e)] if e.canceled));
}

#[test]
fn session_affinity_prefers_the_last_pool_without_waiting() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("a", 1), pool("b", 1)], now);
    let sid = api::SessionId::new();
    // Occupy a, so the first session task lands on b.
    let blocker = submit(&mut core, Priority::Interactive, now).expect("a");
    let t1 = core
        .submit(task(|r| r.session_id = Some(sid)), cid("c"), now)
        .expect("b")
        .0
        .task_id;
    assert_eq!(core.tasks[&t1].pool.as_ref().map(PoolId::as_str), Some("b"));
    finish(&mut core, t1, now);
    finish(&mut core, blocker, now);
    let t2 = core
        .submit(task(|r| r.session_id = Some(sid)), cid("c"), now)
        .expect("b again")
        .0
        .task_id;
    assert_eq!(
        core.tasks[&t2].pool.as_ref().map(PoolId::as_str),
        Some("b"),
        "affinity beats the a-before-b tie-break"
    );
    let view = core
        .session_view(sid, &super::tenants::Scope::All, now)
        .expect("session");
    assert_eq!(
        (
            view.turns,
            view.last_pool_id.as_ref().map(PoolId::as_str),
            view.kv_warmth
        ),
        (1, Some("b"), true)
    );
}

#[test]
fn queued_tasks_see_their_position_move() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let t0 = submit(&mut core, Priority::Interactive, now).expect("runs");
    let _t1 = submit(&mut core, Priority::Interactive, now).expect("queued 0");
    let t2 = submit(&mut core, Priority::Interactive, now).expect("queued 1");
    finish(&mut core, t0, now);
    assert!(frames(&core, t2)
        .iter()
        .any(|f| matches!(f, Event::Metrics(m) if m.queue_position == Some(0))));
}

#[test]
fn offline_node_fails_over_or_resets() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("a", 2)], now);
    let quiet = submit(&mut core, Priority::Interactive, now).expect("a");
    let talking = submit(&mut core, Priority::Interactive, now).expect("a");
    core.on_worker(
        talking,
        1,
        WorkerEvent::Token {
            i: 0,
            t: "x".into(),
            logprobs: vec![],
            ids: vec![],
        },
        now,
    );
    register(
        &mut core,
        "n2",
        vec![pool("b", 2)],
        now + Duration::from_secs(25),
    );
    core.tick(now + Duration::from_secs(31));
    assert_eq!(
        core.tasks[&quiet].pool.as_ref().map(PoolId::as_str),
        Some("b"),
        "no token yet: failed over"
    );
    assert!(
        matches!(frames(&core, talking).last(), Some(Event::Error(e)) if e.code == ErrorCode::WorkerReset)
    );
}

#[test]
fn predicted_start_uses_measurements() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    // Without measurements: D = 1000 + 50 × max_tokens = 1800 ms for 16 tokens.
    let t0 = submit(&mut core, Priority::Interactive, now).expect("runs");
    let (adm, _) = core.submit(task(|_| {}), cid("c"), now).expect("queued");
    assert_eq!((adm.queue_position, adm.predicted_start_ms), (0, 1800));
    // One finished task: 1 token decoded in 1 ms engine time (1000 tok/s), 1 ms TTFT.
    finish(&mut core, t0, now);
    let stats = core.stats["p1"];
    assert_eq!((stats.tokens_out, stats.ttft_ms), (Some(1.0), Some(1.0)));
    let (adm, _) = core.submit(task(|_| {}), cid("c"), now).expect("queued");
    // ceil((0 + 1) / 1 slot) × (1 token / 1000 tok/s × 1000 + 1 ms) = 2 ms.
    assert_eq!((adm.queue_position, adm.predicted_start_ms), (0, 2));
}

#[test]
fn sessions_expire_and_delete() {
    let now = Instant::now();
    let mut core = core_with(|c| c.session_ttl = Duration::from_secs(10));
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let sid = api::SessionId::new();
    core.submit(task(|r| r.session_id = Some(sid)), cid("c"), now)
        .expect("admitted");
    assert!(core
        .session_view(
            sid,
            &super::tenants::Scope::All,
            now + Duration::from_secs(9)
        )
        .is_some_and(|v| v.ttl_ms_remaining == 1000));
    assert!(
        core.session_view(
            sid,
            &super::tenants::Scope::All,
            now + Duration::from_secs(11)
        )
        .is_none(),
        "expired"
    );
    core.delete_session(sid, &super::tenants::Scope::All);
    assert!(core
        .session_view(sid, &super::tenants::Scope::All, now)
        .is_none());
}

fn heartbeat(
    core: &mut Core<Recorded>,
    node: &str,
    seq: u64,
    pools: Vec<PoolStatus>,
    commands: Vec<api::node::CommandStatus>,
    now: Instant,
) -> api::node::HeartbeatResponse {
    let hb = api::node::HeartbeatRequest {
        seq,
        sent_at_ms: 0,
        pools,
        gpus: vec![],
        commands,
    };
    let token = core.registry.nodes()[node]
        .credential
        .as_ref()
        .map(|c| c.expose().to_string())
        .unwrap_or_default();
    core.heartbeat(node, hb, NodeCaller::Bearer(token), now)
        .expect("heartbeat")
}

fn unloaded(id: &str) -> PoolStatus {
    PoolStatus {
        state: PoolState::Unloaded,
        models: vec![],
        provisioning_target: true,
        ..pool(id, 1)
    }
}

const HF_REF: &str = "hf:org/repo/Tiny-Model.gguf";
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn register_hf(core: &mut Core<Recorded>) -> ModelId {
    let req = api::catalog::RegisterModel {
        id: None,
        model_ref: HF_REF.into(),
        digest: None,
    };
    let (rec, created) = core.catalog_register(req).expect("registered");
    assert!(created);
    rec.id
}

#[test]
fn reported_models_join_the_catalog_and_admission_checks_it() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let rec = core
        .catalog_get("m")
        .expect("a pool's model is registered as Active on first report");
    assert_eq!(rec.model_ref, "file:/m.gguf");
    assert_eq!(core.registry.pools()["p1"].model_id(), Some(&mid("m")));
    // Unknown id: 404, nothing admitted.
    let err = core
        .submit(task(|r| r.model_ref = "nope".into()), cid("c"), now)
        .unwrap_err();
    assert_eq!(
        (err.code, err.retriable),
        (ErrorCode::ModelNotAvailable, false)
    );
    // A known model nobody serves, provisioning off: 503, retriable.
    register_hf(&mut core);
    let err = core
        .submit(task(|r| r.model_ref = "tiny-model".into()), cid("c"), now)
        .unwrap_err();
    assert_eq!(
        (err.code, err.retriable),
        (ErrorCode::ModelNotAvailable, true)
    );
    // Retired: 409, and the state shows in the gauge.
    core.catalog_set_state("m", api::catalog::ModelState::Retired)
        .expect("retire");
    let err = core.submit(task(|_| {}), cid("c"), now).unwrap_err();
    assert_eq!(err.code, ErrorCode::ModelDeprecated);
    assert!(core.model_state_gauges().iter().any(|(_, l, v)| l
        .iter()
        .any(|(_, s)| s == "Retired")
        && l.iter().any(|(_, s)| s == "m")
        && *v == 1.0));
    core.catalog_set_state("m", api::catalog::ModelState::Active)
        .expect("activate");
    assert!(submit(&mut core, Priority::Interactive, now).is_ok());
    // A pool serving the model blocks its deletion.
    assert_eq!(
        core.catalog_delete("m", cid("c")).unwrap_err().code,
        ErrorCode::Conflict
    );
}

#[test]
fn a_pool_whose_digest_differs_from_the_catalog_does_not_serve() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    let req = api::catalog::RegisterModel {
        id: Some(mid("m")),
        model_ref: "file:/m.gguf".into(),
        digest: Some(DIGEST.into()),
    };
    core.catalog_register(req).expect("registered");
    let mut p = pool("p1", 1);
    p.models[0].digest = Some(format!("sha256:{}", "2".repeat(64)));
    register(&mut core, "n1", vec![p], now);
    assert_eq!(core.registry.pools()["p1"].model_id(), None);
    assert!(core.registry.pools()["p1"]
        .status
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("digest"));
    assert_eq!(
        core.submit(task(|_| {}), cid("c"), now).unwrap_err().code,
        ErrorCode::ModelNotAvailable
    );
    let mut good = pool("p1", 1);
    good.models[0].digest = Some(DIGEST.into());
    heartbeat(&mut core, "n1", 1, vec![good], vec![], now);
    assert_eq!(
        core.registry.pools()["p1"].model_id(),
        Some(&mid("m")),
        "the matching digest serves"
    );
}

#[test]
fn provisioning_loads_the_model_and_binds_the_task() {
    use api::node::{
        CommandKind, CommandResult, CommandState, CommandStatus, StepKind, StepProgress, StepStatus,
    };
    let now = Instant::now();
    let mut core = core_with(|c| c.provisioning_on_demand = true);
    register(
        &mut core,
        "n1",
        vec![
            unloaded("p1"),
            PoolStatus {
                provisioning_target: false,
                ..unloaded("p2")
            },
        ],
        now,
    );
    let model = register_hf(&mut core);
    let v = task(|r| r.model_ref = model.to_string());
    let (resp, log) = core
        .submit(v, cid("cid"), now)
        .expect("admitted with provisioning");
    let kinds: Vec<&str> = resp
        .preparation
        .steps
        .iter()
        .map(|s| s.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["model_fetch", "pool_warmup"],
        "the engine is built, the model is not on the node"
    );
    assert_eq!(resp.preparation.steps[0].id, api::StepId::model(HF_REF));
    assert!(resp.predicted_start_ms > 0);
    let (frames0, _) = log.read_from(0);
    assert!(
        matches!(&frames0[0], Event::Started(s) if s.pool_id == "p1" && s.engine_version.is_some()),
        "started names the target at once: {frames0:?}"
    );
    // A second task for the same model waits on the same load.
    let second = core
        .submit(task(|r| r.model_ref = model.to_string()), cid("c2"), now)
        .expect("second")
        .0
        .task_id;
    let cmds = &core.registry.nodes()["n1"].commands;
    assert_eq!(
        cmds.iter()
            .filter(|c| c.kind == CommandKind::LoadModel)
            .count(),
        1,
        "one load, not one per task"
    );
    let cmd = cmds[0].clone();
    assert_eq!(cmd.pool_id.as_ref().map(PoolId::as_str), Some("p1"));
    assert_eq!(
        core.registry.pools()["p1"].op.as_ref().map(|o| o.1),
        Some(CommandKind::LoadModel)
    );
    // Progress from the node reaches the bound task as a verbose frame.
    let step = |kind: StepKind, id: api::StepId, status, done| StepProgress {
        step_id: id,
        kind,
        status,
        pct: done as f64,
        bytes_done: done,
        bytes_total: 100,
    };
    let running = CommandStatus {
        command_id: cmd.command_id,
        status: CommandState::Running,
        progress: vec![
            step(
                StepKind::ModelFetch,
                api::StepId::model(HF_REF),
                StepStatus::Running,
                40,
            ),
            step(
                StepKind::PoolWarmup,
                api::StepId::pool("p1"),
                StepStatus::Pending,
                0,
            ),
        ],
        error: None,
        result: None,
    };
    let mut loading = unloaded("p1");
    loading.state = PoolState::Provisioning;
    heartbeat(
        &mut core,
        "n1",
        1,
        vec![loading, unloaded("p2")],
        vec![running],
        now,
    );
    let prep = log
        .read_from(0)
        .0
        .iter()
        .rev()
        .find_map(|e| {
            if let Event::Metrics(m) = e {
                m.prep.clone().map(|p| (p, m.phase, m.human.clone()))
            } else {
                None
            }
        })
        .expect("a prep frame");
    assert_eq!(prep.0[&api::StepId::model(HF_REF)].bytes_done, 40);
    assert_eq!(prep.1, Some(StepKind::ModelFetch));
    assert!(prep.2.unwrap_or_default().contains("40%"));
    assert!(dispatched(&core).is_empty());
    // Completed: the catalog learns digest and location; the pool serves; both tasks run.
    let mut ready = pool("p1", 1);
    ready.models = vec![LoadedModel {
        id: model.clone(),
        model_ref: HF_REF.into(),
        digest: Some(DIGEST.into()),
        size_bytes: Some(100),
        metadata: None,
    }];
    let done = CommandStatus {
        command_id: cmd.command_id,
        status: CommandState::Completed,
        progress: vec![],
        error: None,
        result: Some(CommandResult {
            digest: DIGEST.into(),
            size_bytes: 100,
            metadata: None,
        }),
    };
    heartbeat(
        &mut core,
        "n1",
        2,
        vec![ready, unloaded("p2")],
        vec![done],
        now,
    );
    let rec = core.catalog_get(model.as_str()).expect("record");
    assert_eq!(
        (rec.digest.as_deref(), rec.size_bytes, rec.locations.clone()),
        (Some(DIGEST), Some(100), vec![nid("n1")])
    );
    assert_eq!(dispatched(&core)[0].1, "p1");
    let frames = log.read_from(0).0;
    let last_prep = frames
        .iter()
        .rposition(|e| matches!(e, Event::Metrics(m) if m.prep.is_some()))
        .expect("prep");
    if let Event::Metrics(m) = &frames[last_prep] {
        assert!(
            m.prep
                .as_ref()
                .unwrap()
                .values()
                .all(|p| p.status == StepStatus::Completed),
            "every step completed before dispatch"
        );
    }
    assert_eq!(
        frames
            .iter()
            .filter(|e| matches!(e, Event::Started(_)))
            .count(),
        1,
        "started is not repeated at dispatch"
    );
    assert!(core.registry.pools()["p1"].op.is_none());
    assert_eq!(
        core.tasks[&second].state(),
        TaskState::Queued,
        "one slot: the second task waits its turn"
    );
}

#[test]
fn a_failed_load_ends_the_waiting_tasks_with_its_error() {
    use api::node::{CommandState, CommandStatus};
    let now = Instant::now();
    let mut core = core_with(|c| c.provisioning_on_demand = true);
    register(&mut core, "n1", vec![unloaded("p1")], now);
    let model = register_hf(&mut core);
    let first = core
        .submit(task(|r| r.model_ref = model.to_string()), cid("c1"), now)
        .expect("first")
        .0
        .task_id;
    let second = core
        .submit(task(|r| r.model_ref = model.to_string()), cid("c2"), now)
        .expect("second")
        .0
        .task_id;
    let cmd = core.registry.nodes()["n1"].commands[0].command_id;
    let env = api::ErrorEnvelope::new(ErrorCode::UntrustedArtifact, "digest mismatch");
    heartbeat(
        &mut core,
        "n1",
        1,
        vec![unloaded("p1")],
        vec![CommandStatus {
            command_id: cmd,
            status: CommandState::Failed,
            progress: vec![],
            error: Some(env),
            result: None,
        }],
        now,
    );
    for id in [first, second] {
        assert!(
            matches!(frames(&core, id).last(), Some(Event::Error(e)) if e.code == ErrorCode::UntrustedArtifact),
            "{:?}",
            frames(&core, id)
        );
    }
    assert!(
        core.registry.pools()["p1"].op.is_none(),
        "the pool is free for another load"
    );
    assert!(core
        .catalog_get(model.as_str())
        .expect("record")
        .locations
        .is_empty());
}

#[test]
fn no_target_means_503_and_full_pools_are_not_targets() {
    let now = Instant::now();
    let mut core = core_with(|c| c.provisioning_on_demand = true);
    register(
        &mut core,
        "n1",
        vec![PoolStatus {
            provisioning_target: true,
            ..pool("p1", 1)
        }],
        now,
    );
    let model = register_hf(&mut core);
    let err = core
        .submit(task(|r| r.model_ref = model.to_string()), cid("c"), now)
        .unwrap_err();
    assert_eq!(
        (err.code, err.retriable),
        (ErrorCode::ModelNotAvailable, true),
        "a Ready pool is repurposed only with allow_repurpose_idle"
    );
    let mut core = core_with(|c| {
        c.provisioning_on_demand = true;
        c.allow_repurpose_idle = true;
    });
    register(
        &mut core,
        "n1",
        vec![PoolStatus {
            provisioning_target: true,
            ..pool("p1", 1)
        }],
        now,
    );
    let model = register_hf(&mut core);
    assert!(
        core.submit(task(|r| r.model_ref = model.to_string()), cid("c"), now)
            .is_ok(),
        "an idle Ready pool may be repurposed"
    );
}

#[test]
fn dispatch_sends_the_tasks_ctx_or_the_pools_per_slot_ctx() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 2)], now);
    core.submit(task(|_| {}), cid("cid"), now)
        .expect("admitted");
    core.submit(task(|r| r.ctx = Some(512)), cid("cid"), now)
        .expect("admitted");
    let ctx: Vec<u64> = core
        .effects
        .dispatched
        .iter()
        .map(|j| j.body.params.ctx)
        .collect();
    assert_eq!(ctx, [1024, 512], "none given: the pool's 1024 per slot");
}

fn metrics_text(core: &Core<Recorded>) -> String {
    core.metrics.render(&[])
}

#[test]
fn placement_decisions_report_the_avoid_fallback() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("a", 4)], now);
    let avoid_a = Placement {
        avoid_pools: vec![pid("a")],
        ..Default::default()
    };
    core.submit(task(|r| r.placement = Some(avoid_a)), cid("c"), now)
        .expect("placed on the avoided pool, as no other exists");
    submit(&mut core, Priority::Interactive, now).expect("placed normally");
    let text = metrics_text(&core);
    let line = |fallback: &str| {
        format!(
            "placement_decisions_total{{outcome=\"assigned\",pinned=\"false\",fallback=\"{fallback}\"}} 1"
        )
    };
    assert!(text.contains(&line("true")), "{text}");
    assert!(text.contains(&line("false")), "{text}");
}

#[test]
fn no_capacity_decisions_say_whether_the_task_was_pinned() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let model = register_hf(&mut core);
    let pinned = Placement {
        mode: PlacementMode::Pin,
        pin_pool_id: Some(pid("p1")),
        ..Default::default()
    };
    for placement in [Some(pinned), None] {
        let e = core
            .submit(
                task(|r| {
                    r.model_ref = model.to_string();
                    r.placement = placement;
                }),
                cid("c"),
                now,
            )
            .map(|_| ())
            .expect_err("no pool serves the model");
        assert_eq!(e.code, ErrorCode::ModelNotAvailable);
    }
    let text = metrics_text(&core);
    for pinned in ["true", "false"] {
        let line = format!(
            "placement_decisions_total{{outcome=\"no_capacity\",pinned=\"{pinned}\",fallback=\"false\"}} 1"
        );
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }
}

#[test]
fn heartbeat_cannot_take_a_pool_of_another_online_node() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    register(&mut core, "n2", vec![pool("p2", 1)], now);
    heartbeat(
        &mut core,
        "n2",
        1,
        vec![pool("p2", 1), pool("p1", 1)],
        vec![],
        now,
    );
    assert_eq!(
        core.registry.pools()["p1"].node_id,
        "n1",
        "the owner keeps its pool"
    );
    assert_eq!(core.registry.nodes()["n2"].pools, vec![pid("p2")]);
    // Once the owner is Offline, the pool may move to the node that reports it.
    let later = now + Duration::from_secs(25);
    heartbeat(&mut core, "n2", 2, vec![pool("p2", 1)], vec![], later);
    core.tick(now + Duration::from_secs(31));
    assert_eq!(core.registry.nodes()["n1"].status, NodeStatus::Offline);
    heartbeat(
        &mut core,
        "n2",
        3,
        vec![pool("p2", 1), pool("p1", 1)],
        vec![],
        now + Duration::from_secs(32),
    );
    assert_eq!(core.registry.pools()["p1"].node_id, "n2");
    // A deregistered owner leaves its pools behind for anyone.
    register(&mut core, "n3", vec![pool("p3", 1)], now);
    assert!(core.deregister("n3", now));
    heartbeat(
        &mut core,
        "n2",
        4,
        vec![pool("p3", 1)],
        vec![],
        now + Duration::from_secs(33),
    );
    assert_eq!(core.registry.pools()["p3"].node_id, "n2");
}

/// A core whose pool `p1` (1 slot) is busy and has measurements (D = 2 ms), with two batch tasks
/// queued in a full queue of capacity 2.
fn full_queue(policy: FullPolicy, now: Instant) -> (Core<Recorded>, TaskId, TaskId) {
    let mut core = core_with(|c| {
        c.queue_capacity = 2;
        c.full_policy = policy;
    });
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let t0 = submit(&mut core, Priority::Interactive, now).expect("runs");
    finish(&mut core, t0, now);
    submit(&mut core, Priority::Interactive, now).expect("runs");
    let b1 = submit(&mut core, Priority::Batch, now).expect("queued");
    let b2 = submit(&mut core, Priority::Batch, now).expect("queued");
    (core, b1, b2)
}

#[test]
fn a_newcomer_refused_for_its_deadline_evicts_nobody() {
    let now = Instant::now();
    for policy in [FullPolicy::DropLru, FullPolicy::ShedLowPriority] {
        let (mut core, b1, b2) = full_queue(policy, now);
        let late = task(|r| r.deadline_ms = Some(1));
        let e = core
            .submit(late, cid("c"), now)
            .expect_err("the predicted start (2 ms) is past the deadline");
        assert_eq!(e.code, ErrorCode::DeadlineUnmet, "{policy:?}");
        for b in [b1, b2] {
            assert_eq!(core.tasks[&b].state(), TaskState::Queued, "{policy:?}");
            assert!(frames(&core, b)
                .iter()
                .all(|f| !matches!(f, Event::Error(_))));
        }
        assert!(
            !metrics_text(&core).contains("admission_backpressure_events_total{"),
            "{policy:?}: no eviction, no 429"
        );
        // A newcomer that meets its deadline does evict.
        let ok = task(|r| r.deadline_ms = Some(1000));
        core.submit(ok, cid("c"), now).expect("admitted");
        let evicted = [b1, b2]
            .iter()
            .filter(|b| core.tasks[b].state() == TaskState::Failed)
            .count();
        assert_eq!(evicted, 1, "{policy:?}");
    }
}

#[test]
fn queue_position_is_the_dispatch_order() {
    let now = Instant::now();
    let mut core = core_with(|c| c.interactive_burst = 1);
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    submit(&mut core, Priority::Interactive, now).expect("runs");
    let admit = |core: &mut Core<Recorded>, p: Priority| {
        let (a, _) = core
            .submit(task(|r| r.priority = p), cid("c"), now)
            .expect("queued");
        (a.task_id, a.queue_position)
    };
    let (b1, pos) = admit(&mut core, Priority::Batch);
    assert_eq!(pos, 0);
    let (b2, pos) = admit(&mut core, Priority::Batch);
    assert_eq!(pos, 1);
    // Interactive goes before batch, not behind the queue's length...
    let (i1, pos) = admit(&mut core, Priority::Interactive);
    assert_eq!(pos, 0);
    // ...but with interactive_burst = 1 the aged batch task goes between two interactive ones.
    let (i2, pos) = admit(&mut core, Priority::Interactive);
    assert_eq!(pos, 2);
    let record_pos = |core: &Core<Recorded>, id: TaskId| {
        core.record(id, &super::tenants::Scope::All)
            .and_then(|r| r.queue_position)
    };
    assert_eq!(
        [b1, b2, i1, i2].map(|id| record_pos(&core, id)),
        [Some(1), Some(3), Some(0), Some(2)]
    );
}

#[test]
fn session_affinity_does_not_override_prefer() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("a", 1), pool("b", 1)], now);
    let sid = api::SessionId::new();
    let t1 = core
        .submit(task(|r| r.session_id = Some(sid)), cid("c"), now)
        .expect("a")
        .0
        .task_id;
    assert_eq!(core.tasks[&t1].pool.as_ref().map(PoolId::as_str), Some("a"));
    finish(&mut core, t1, now);
    let prefer_b = Placement {
        mode: PlacementMode::Prefer,
        prefer_pools: vec![pid("b")],
        ..Default::default()
    };
    let t2 = core
        .submit(
            task(|r| {
                r.session_id = Some(sid);
                r.placement = Some(prefer_b);
            }),
            cid("c"),
            now,
        )
        .expect("b")
        .0
        .task_id;
    assert_eq!(core.tasks[&t2].pool.as_ref().map(PoolId::as_str), Some("b"));
}

fn tenant(name: &str) -> api::TenantId {
    name.parse().expect("tenant")
}

fn submit_as(core: &mut Core<Recorded>, who: &str, now: Instant) -> TaskId {
    let v = crate::admission::ValidatedTask {
        tenant: tenant(who),
        ..task(|_| {})
    };
    core.submit(v, cid("c"), now).expect("admitted").0.task_id
}

/// Tenants: the concurrency cap holds a tenant's tasks in the queue while another tenant's go
/// ahead, another tenant's ids are unknown, tokens are charged from the engine's counts, and
/// queued tasks of two tenants alternate.
#[test]
fn tenants_are_capped_scoped_and_served_fairly() {
    use super::tenants::Scope;
    use crate::config::NamedToken;
    let now = Instant::now();
    let mut core = core_with(|c| {
        let named = |name: &str, concurrent: Option<u64>| NamedToken {
            tenant: tenant(name),
            role: api::tenant::Role::Client,
            secret: daemon::secret::Secret::new(format!("{name}-token-0123456789")),
            weight: 1,
            limits: api::tenant::TenantLimits {
                concurrent_tasks: concurrent,
                ..Default::default()
            },
        };
        c.named_tokens = vec![named("a", Some(1)), named("b", None)];
    });
    register(&mut core, "n1", vec![pool("p1", 2)], now);
    let a: Vec<TaskId> = (0..4).map(|_| submit_as(&mut core, "a", now)).collect();
    // Two free slots, but a may run one task at a time.
    assert_eq!(dispatched(&core).len(), 1);
    let b = submit_as(&mut core, "b", now);
    assert_eq!(dispatched(&core).len(), 2);
    assert_eq!(dispatched(&core)[1].0, b);
    // b sees none of a's tasks; a cancel of a's task by b is an unknown id and changes nothing.
    let scope_b = Scope::Tenant(tenant("b"));
    assert!(core.record(a[1], &scope_b).is_none());
    assert!(core.log_of(a[1], &scope_b).is_none());
    assert!(!core.cancel_as(a[1], tasks::CancelReason::Client, &scope_b, now));
    assert_eq!(
        core.record(a[1], &Scope::Tenant(tenant("a")))
            .expect("own")
            .state,
        TaskState::Queued
    );
    assert!(core.record(a[1], &Scope::All).is_some());
    // Tokens are the engine's counts (3 in, 1 out per task here).
    finish(&mut core, a[0], now);
    assert_eq!(dispatched(&core)[2].0, a[1]);
    let report = core.tenant_report(now);
    let ra = report.iter().find(|t| t.tenant == "a").expect("a");
    assert_eq!((ra.running, ra.queued, ra.tokens_total), (1, 2, 4));
    // b's next task takes the free slot; with both slots busy, b's task after it waits behind
    // two of a's five queued tasks (a has had less service in virtual time), not all of them.
    finish(&mut core, b, now);
    let more_a: Vec<TaskId> = (0..3).map(|_| submit_as(&mut core, "a", now)).collect();
    let b2 = submit_as(&mut core, "b", now);
    assert_eq!(dispatched(&core).last().expect("dispatched").0, b2);
    let b3 = submit_as(&mut core, "b", now);
    let q = core
        .queues
        .get(&queue::QueueKey::Model(mid("m")))
        .expect("queue");
    let order = q.dispatch_order(4);
    assert_eq!(order, vec![a[2], a[3], b3, more_a[0], more_a[1], more_a[2]]);
}

/// The events a core publishes for a node registering, two tasks (one queued behind the other),
/// token progress (held until the tick), a finish and a deregistration, in order.
#[test]
fn cluster_events_follow_the_core() {
    use api::cluster::ClusterEvent as E;
    let now = Instant::now();
    let mut core = core_with(|_| {});
    let mut feed = core.subscribe_events(None);
    let mut seen = |core: &mut Core<Recorded>, tick: bool| {
        core.publish_changes(tick);
        let mut out = vec![];
        while let Ok(f) = feed.live.try_recv() {
            let data = f
                .text
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            out.push(serde_json::from_str::<E>(data).unwrap());
        }
        out
    };
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let evs = seen(&mut core, false);
    assert!(
        matches!(&evs[..], [E::Node { node }, E::Pool { pool }] if node.node_id == nid("n1") && pool.slots_free == 1),
        "{evs:?}"
    );
    // Nothing changed: nothing published.
    assert!(seen(&mut core, false).is_empty());
    let a = submit(&mut core, Priority::Interactive, now).unwrap();
    let b = submit(&mut core, Priority::Interactive, now).unwrap();
    let evs = seen(&mut core, false);
    let tasks: Vec<(TaskId, TaskState, Option<u64>)> = evs
        .iter()
        .filter_map(|e| match e {
            E::Task { task } => Some((task.task_id, task.state, task.queue_position)),
            _ => None,
        })
        .collect();
    assert_eq!(
        tasks,
        vec![
            (a, TaskState::Running, None),
            (b, TaskState::Queued, Some(0))
        ]
    );
    assert!(evs
        .iter()
        .any(|e| matches!(e, E::Pool { pool } if pool.slots_free == 0)));
    assert!(evs.iter().any(
        |e| matches!(e, E::Queue { queues } if queues.len() == 1 && queues[0].interactive == 1)
    ));
    // A token alone waits for the tick.
    let attempt = core.tasks[&a].attempts;
    for i in 0..3 {
        core.on_worker(
            a,
            attempt,
            WorkerEvent::Token {
                i,
                t: "x".into(),
                ids: vec![],
                logprobs: vec![],
            },
            now,
        );
    }
    assert!(seen(&mut core, false).is_empty());
    let evs = seen(&mut core, true);
    assert!(
        matches!(&evs[..], [E::Task { task }] if task.task_id == a && task.tokens_out == 3),
        "{evs:?}"
    );
    assert!(seen(&mut core, true).is_empty(), "no change, no event");
    // Finishing a starts b: a's final record, then b running, the queue empty.
    finish(&mut core, a, now);
    let evs = seen(&mut core, false);
    let tasks: Vec<(TaskId, TaskState)> = evs
        .iter()
        .filter_map(|e| match e {
            E::Task { task } => Some((task.task_id, task.state)),
            _ => None,
        })
        .collect();
    assert_eq!(
        tasks,
        vec![(a, TaskState::Completed), (b, TaskState::Running)]
    );
    assert!(evs
        .iter()
        .any(|e| matches!(e, E::Queue { queues } if queues.is_empty())));
    core.deregister("n1", now);
    let evs = seen(&mut core, false);
    assert!(
        evs.iter()
            .any(|e| matches!(e, E::NodeRemoved { node_id } if *node_id == nid("n1"))),
        "{evs:?}"
    );
}

fn token(core: &mut Core<Recorded>, id: TaskId, attempt: u32, t: &str, ids: &[u32], now: Instant) {
    let ev = WorkerEvent::Token {
        i: 0,
        t: t.into(),
        ids: ids.to_vec(),
        logprobs: vec![],
    };
    core.on_worker(id, attempt, ev, now);
}

fn with_state(p: PoolStatus, state: PoolState) -> PoolStatus {
    PoolStatus { state, ..p }
}

#[test]
fn a_pool_that_is_not_ready_is_waited_out() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let t = submit(&mut core, Priority::Interactive, now).expect("admitted");
    let refusal = api::ErrorEnvelope::new(ErrorCode::PoolUnready, "pool p1 is Starting");
    core.on_relay_ended(
        t,
        1,
        RelayEnd::Refused {
            status: 503,
            envelope: refusal,
        },
        now,
    );
    assert_eq!(
        core.tasks[&t].state(),
        TaskState::Queued,
        "back in the queue"
    );
    assert_eq!(
        dispatched(&core).len(),
        1,
        "not sent again to a pool that refused"
    );
    assert!(!frames(&core, t)
        .iter()
        .any(|f| matches!(f, Event::Error(_))));
    // The node reports the restart at once; a task admitted meanwhile expects to wait for it.
    heartbeat(
        &mut core,
        "n1",
        1,
        vec![with_state(pool("p1", 1), PoolState::Starting)],
        vec![],
        now,
    );
    let (adm, _) = core.submit(task(|_| {}), cid("c"), now).expect("queued");
    assert!(adm.predicted_start_ms >= 5000, "{}", adm.predicted_start_ms);
    core.tick(now + Duration::from_secs(1));
    assert_eq!(core.tasks[&t].state(), TaskState::Queued, "still waiting");
    heartbeat(
        &mut core,
        "n1",
        2,
        vec![pool("p1", 1)],
        vec![],
        now + Duration::from_secs(3),
    );
    assert_eq!(
        dispatched(&core).len(),
        2,
        "dispatched once the pool is Ready"
    );
    assert_eq!(dispatched(&core)[1], (t, pid("p1")));
    // The restart took 3 s: the next estimate uses it.
    assert_eq!(core.stats["p1"].restart_ms, Some(3000.0));
}

#[test]
fn a_task_whose_pools_cannot_come_back_fails_at_once() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let t = submit(&mut core, Priority::Interactive, now).expect("admitted");
    token(&mut core, t, 1, "a", &[1], now);
    heartbeat(
        &mut core,
        "n1",
        1,
        vec![with_state(pool("p1", 1), PoolState::Failed)],
        vec![],
        now,
    );
    core.on_worker(
        t,
        1,
        WorkerEvent::Error {
            code: ErrorCode::WorkerReset,
            message: "the engine stopped".into(),
            retriable: true,
            retry_after_ms: None,
        },
        now,
    );
    let last = frames(&core, t).last().cloned();
    assert!(
        matches!(&last, Some(Event::Error(e)) if e.code == ErrorCode::WorkerReset && e.message.contains("pool p1 is Failed")),
        "{last:?}"
    );
}

#[test]
fn a_lost_engine_mid_stream_migrates_with_the_token_ids() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("a", 1)], now);
    register(&mut core, "n2", vec![pool("b", 1)], now);
    let t = submit(&mut core, Priority::Interactive, now).expect("admitted");
    let first = dispatched(&core)[0].1.clone();
    token(&mut core, t, 1, "x", &[5], now);
    token(&mut core, t, 1, "y", &[6], now);
    // Text the engine held back: its id came, its text did not; the continuation redoes it.
    token(&mut core, t, 1, "", &[7], now);
    core.on_worker(
        t,
        1,
        WorkerEvent::Error {
            code: ErrorCode::WorkerReset,
            message: "the engine stopped while the task was running".into(),
            retriable: true,
            retry_after_ms: None,
        },
        now,
    );
    let job = core.effects.dispatched.last().expect("continued").clone();
    assert_eq!(job.task, t);
    assert_ne!(job.body.pool_id, first, "continued on the other pool");
    assert_eq!(job.body.resume, Some(vec![5, 6]));
    assert_eq!(job.body.params.max_tokens, 14);
    token(&mut core, t, 2, "z", &[9], now);
    core.on_worker(
        t,
        2,
        WorkerEvent::End {
            tokens_in: 4,
            tokens_out: 3,
            stop_reason: StopReason::Eos,
            seed: Some(1),
            engine_ttft_ms: Some(1),
            engine_decode_ms: 1,
            tokens_cached: None,
            slot: None,
        },
        now,
    );
    let fr = frames(&core, t);
    let idx: Vec<u64> = fr
        .iter()
        .filter_map(|f| match f {
            Event::Token(k) => Some(k.i),
            _ => None,
        })
        .collect();
    assert_eq!(idx, vec![0, 1, 2], "contiguous indices");
    assert_eq!(
        fr.iter().filter(|f| matches!(f, Event::Started(_))).count(),
        1
    );
    assert!(fr.iter().any(|f| matches!(f, Event::Metrics(m)
        if m.placement.as_ref().is_some_and(|p| p.migrated_after_tokens == Some(2) && p.attempt == 2))));
    assert!(
        matches!(fr.last(), Some(Event::End(e)) if e.tokens_out == 5 && e.tokens_in == 2),
        "{:?}",
        fr.last()
    );
}

#[test]
fn migration_limit_zero_ends_with_worker_reset() {
    let now = Instant::now();
    let mut core = core_with(|c| c.migration_limit = 0);
    register(&mut core, "n1", vec![pool("a", 1)], now);
    register(&mut core, "n2", vec![pool("b", 1)], now);
    let t = submit(&mut core, Priority::Interactive, now).expect("admitted");
    token(&mut core, t, 1, "x", &[5], now);
    core.on_relay_ended(t, 1, RelayEnd::Broken("reset".into()), now);
    assert!(
        matches!(frames(&core, t).last(), Some(Event::Error(e)) if e.code == ErrorCode::WorkerReset)
    );
    assert_eq!(dispatched(&core).len(), 1);
}

#[test]
fn a_reset_connection_takes_the_node_out_of_placement() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("a", 2)], now);
    register(&mut core, "n2", vec![pool("b", 2)], now);
    let t = submit(&mut core, Priority::Interactive, now).expect("admitted");
    let (first, other) = if dispatched(&core)[0].1 == pid("a") {
        ("n1", "b")
    } else {
        ("n2", "a")
    };
    core.on_relay_ended(
        t,
        1,
        RelayEnd::Unreachable("connection refused".into()),
        now,
    );
    assert_eq!(dispatched(&core)[1].1, pid(other));
    // New work avoids the node until it heartbeats again.
    for _ in 0..2 {
        submit(&mut core, Priority::Interactive, now).expect("admitted");
    }
    assert!(dispatched(&core)[2..].iter().all(|(_, p)| *p == pid(other)));
    let _ = first;
}

#[test]
fn a_refused_continuation_waits_without_spending_a_migration() {
    let now = Instant::now();
    let mut core = core_with(|c| c.migration_limit = 1);
    register(&mut core, "n1", vec![pool("a", 1)], now);
    let t = submit(&mut core, Priority::Interactive, now).expect("admitted");
    token(&mut core, t, 1, "x", &[5], now);
    core.on_relay_ended(t, 1, RelayEnd::Broken("reset".into()), now);
    assert_eq!(
        core.tasks[&t].state(),
        TaskState::Queued,
        "waits for the pool to come back"
    );
    heartbeat(&mut core, "n1", 1, vec![pool("a", 1)], vec![], now);
    assert_eq!(
        core.effects
            .dispatched
            .last()
            .and_then(|j| j.body.resume.clone()),
        Some(vec![5])
    );
    let refusal = api::ErrorEnvelope::new(ErrorCode::PoolUnready, "pool a is Starting");
    core.on_relay_ended(
        t,
        2,
        RelayEnd::Refused {
            status: 503,
            envelope: refusal,
        },
        now,
    );
    assert_eq!(
        core.tasks[&t].state(),
        TaskState::Queued,
        "a refusal is no second migration"
    );
    heartbeat(&mut core, "n1", 2, vec![pool("a", 1)], vec![], now);
    let job = core.effects.dispatched.last().expect("dispatched").clone();
    assert_eq!((job.attempt, job.body.resume), (3, Some(vec![5])));
    token(&mut core, t, 3, "y", &[6], now);
    core.on_worker(
        t,
        3,
        WorkerEvent::End {
            tokens_in: 3,
            tokens_out: 1,
            stop_reason: StopReason::Eos,
            seed: Some(1),
            engine_ttft_ms: Some(1),
            engine_decode_ms: 1,
            tokens_cached: None,
            slot: None,
        },
        now,
    );
    assert!(matches!(frames(&core, t).last(), Some(Event::End(e)) if e.tokens_out == 2));
}

/// One engine token id per word (the tests' stand-in for the engine's tokenizer).
fn word_ids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|w| {
            let h = w.bytes().fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            100 + h % 40_000
        })
        .collect()
}

/// Answers the core's tokenize call for `id` as a worker would: one id per word of its prompt.
fn answer_tokenize(core: &mut Core<Recorded>, id: TaskId, now: Instant) -> Vec<u32> {
    let job = core
        .effects
        .tokenized
        .iter()
        .rev()
        .find(|j| j.task == id)
        .expect("a tokenize call for the task")
        .clone();
    let api::worker::DispatchInput::Prompt { prompt } = &job.body.input else {
        panic!("a prompt");
    };
    let ids = word_ids(prompt);
    core.on_tokenized(id, Ok(ids.clone()), now);
    ids
}

/// Submits `prompt` and answers its tokenize call at once.
fn submit_tokenized(core: &mut Core<Recorded>, prompt: &str, now: Instant) -> TaskId {
    let id = core
        .submit(task(|r| r.prompt = Some(prompt.into())), cid("cid"), now)
        .map(|(a, _)| a.task_id)
        .expect("admitted");
    answer_tokenize(core, id, now);
    id
}

/// Finishes `id` as the engine would: `text` generated (one id per word, then the end of
/// sequence), `tokens_in` prompt tokens of which the engine reused `cached`, in `slot`.
fn finish_cached(
    core: &mut Core<Recorded>,
    id: TaskId,
    text: &str,
    (tokens_in, cached, slot): (u64, u64, u32),
    now: Instant,
) {
    let attempt = core.tasks[&id].attempts;
    token(core, id, attempt, text, &word_ids(text), now);
    token(core, id, attempt, "", &[2], now);
    core.on_worker(
        id,
        attempt,
        WorkerEvent::End {
            tokens_in,
            tokens_out: 2,
            stop_reason: StopReason::Eos,
            seed: Some(1),
            // A CPU engine's prefill: 7 ms a prompt token it evaluates.
            engine_ttft_ms: Some(7 * (tokens_in - cached) + 1),
            engine_decode_ms: 1,
            tokens_cached: Some(cached),
            slot: Some(slot),
        },
        now,
    );
}

#[test]
fn cache_aware_placement_follows_the_prefix_and_learns_from_the_engine() {
    let now = Instant::now();
    let mut core = core_with(|c| {
        c.strategy = crate::config::Strategy::CacheAware;
        c.load_cost_tokens = 100;
    });
    register(&mut core, "n1", vec![pool("a", 2), pool("b", 2)], now);
    let history: String = (0..500).map(|i| format!("w{i} ")).collect();
    let t1 = submit_tokenized(&mut core, &history, now);
    assert_eq!(dispatched(&core)[0].1, pid("a"), "tie-break: a");
    finish_cached(&mut core, t1, " ok", (500, 0, 1), now);
    // An unrelated task makes a the busier pool: least-loaded would now pick b.
    let _busy = submit_tokenized(&mut core, "hi", now);
    assert_eq!(dispatched(&core)[1].1, pid("a"));
    let t2 = submit_tokenized(&mut core, &format!("{history} ok and more"), now);
    let job = core.effects.dispatched.last().expect("dispatched").clone();
    assert_eq!(job.body.pool_id, pid("a"), "the pool holding the prefix");
    assert_eq!(job.body.id_slot, Some(1), "the slot holding it");
    // Exactly the 500 prompt ids and the generated "ok" (the end of sequence is not in the slot).
    let predicted = core.tasks[&t2].predicted_cached;
    assert_eq!(predicted, 501);
    finish_cached(&mut core, t2, " yes", (503, 501, 1), now);
    let ends: Vec<_> = frames(&core, t2)
        .into_iter()
        .filter_map(|e| match e {
            Event::End(e) => Some(e.tokens_cached),
            _ => None,
        })
        .collect();
    assert_eq!(ends, vec![Some(501)]);
    let text = core.metrics.render(&[]);
    for line in [
        "prompt_tokens_total{pool_id=\"a\"} 1003".to_string(),
        "prompt_tokens_cached_total{pool_id=\"a\"} 501".to_string(),
        "placement_prefix_predicted_tokens_total{pool_id=\"a\"} 501".to_string(),
    ] {
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    // The same prompt again: the engine evaluates its last token itself.
    let t3 = submit_tokenized(&mut core, &format!("{history} ok and more"), now);
    assert_eq!(core.tasks[&t3].predicted_cached, 502);
    // The pool restarts: its entries go, and the next request is placed by load (b).
    assert!(core.prefix.pool_len(&pid("a")) > 0);
    let mut starting = pool("a", 2);
    starting.state = PoolState::Starting;
    heartbeat(
        &mut core,
        "n1",
        1,
        vec![starting, pool("b", 2)],
        vec![],
        now,
    );
    assert_eq!(core.prefix.pool_len(&pid("a")), 0);
    heartbeat(
        &mut core,
        "n1",
        2,
        vec![pool("a", 2), pool("b", 2)],
        vec![],
        now,
    );
    let _t4 = submit_tokenized(&mut core, &format!("{history} ok and more yes"), now);
    assert_eq!(
        core.effects.dispatched.last().unwrap().body.pool_id,
        pid("b")
    );
}

/// A prediction the engine did not honour is cut to exactly the tokens it reused.
#[test]
fn cache_aware_feedback_cuts_the_index_to_the_reused_tokens() {
    let now = Instant::now();
    let mut core = core_with(|c| c.strategy = crate::config::Strategy::CacheAware);
    register(&mut core, "n1", vec![pool("a", 1), pool("b", 1)], now);
    let history: String = (0..200).map(|i| format!("w{i} ")).collect();
    let t1 = submit_tokenized(&mut core, &history, now);
    finish_cached(&mut core, t1, "ok", (200, 0, 0), now);
    let t2 = submit_tokenized(&mut core, &format!("{history} ok more"), now);
    assert_eq!(dispatched(&core)[1], (t2, pid("a")));
    assert_eq!(core.tasks[&t2].predicted_cached, 201);
    // The engine reused only 150 of the 201 tokens predicted (another request took the slot).
    let attempt = core.tasks[&t2].attempts;
    core.on_worker(
        t2,
        attempt,
        WorkerEvent::End {
            tokens_in: 202,
            tokens_out: 0,
            stop_reason: StopReason::Eos,
            seed: None,
            engine_ttft_ms: Some(1),
            engine_decode_ms: 1,
            tokens_cached: Some(150),
            slot: Some(0),
        },
        now,
    );
    // t2 left its own prompt in slot 0, replacing the longer, unreused entry; a request sharing
    // only the first 180 words now predicts exactly what the index holds for it.
    let words: String = (0..180).map(|i| format!("w{i} ")).collect();
    let t3 = submit_tokenized(&mut core, &format!("{words} other"), now);
    assert_eq!(core.tasks[&t3].predicted_cached, 180);
    // A cut with less than a block left drops the entry.
    let seq = word_ids(&format!("{history} ok more"));
    let key = super::prefix::key(&seq);
    core.prefix.correct(&pid("a"), &key, &seq, 180, 3);
    assert_eq!(core.prefix.pool_len(&pid("a")), 0);
}

/// A task waits for its prompt ids only within `placement.tokenize_timeout_ms`, without holding
/// up later tasks; a failed tokenize, or the bound, places it by load; a pin never waits.
#[test]
fn cache_aware_pending_prompt_ids_wait_only_within_the_bound() {
    let now = Instant::now();
    let mut core = core_with(|c| {
        c.strategy = crate::config::Strategy::CacheAware;
        c.tokenize_timeout = Duration::from_millis(800);
    });
    register(&mut core, "n1", vec![pool("a", 1), pool("b", 1)], now);
    let slow = core
        .submit(task(|r| r.prompt = Some("w1 w2".into())), cid("c"), now)
        .unwrap()
        .0
        .task_id;
    let job = core.effects.tokenized.last().expect("asked").clone();
    assert_eq!((job.task, job.pool_id.clone()), (slow, pid("a")));
    assert!(core
        .effects
        .timers
        .contains(&(Duration::from_millis(800), Timer::TokenizeBound(slow))));
    assert!(dispatched(&core).is_empty(), "the task waits for its ids");
    // A later task whose ids came is placed meanwhile.
    let quick = submit_tokenized(&mut core, "w3 w4", now);
    assert_eq!(dispatched(&core), vec![(quick, pid("a"))]);
    // The bound passes: placed by load.
    core.on_timer(Timer::TokenizeBound(slow), now + Duration::from_millis(800));
    assert_eq!(dispatched(&core)[1], (slow, pid("b")));
    // Ids that come late are kept for the index.
    core.on_tokenized(slow, Ok(vec![7; 20]), now + Duration::from_secs(2));
    assert!(matches!(
        core.tasks[&slow].prompt_ids,
        super::tokenize::PromptIds::Known(_)
    ));
    finish(&mut core, quick, now);
    finish(&mut core, slow, now);
    // A failed tokenize places the task at once.
    let failed = core
        .submit(task(|r| r.prompt = Some("w5".into())), cid("c"), now)
        .unwrap()
        .0
        .task_id;
    assert_eq!(dispatched(&core).len(), 2);
    core.on_tokenized(failed, Err("worker unreachable".into()), now);
    assert_eq!(dispatched(&core)[2].0, failed);
    finish(&mut core, failed, now);
    // A pinned task is placed without waiting (its ids still come, for the index).
    let pinned = core
        .submit(
            task(|r| {
                r.placement = Some(Placement {
                    mode: PlacementMode::Pin,
                    pin_pool_id: Some(pid("b")),
                    ..Default::default()
                })
            }),
            cid("c"),
            now,
        )
        .unwrap()
        .0
        .task_id;
    assert_eq!(dispatched(&core)[3], (pinned, pid("b")));
    assert_eq!(core.effects.tokenized.last().unwrap().task, pinned);
}

#[test]
fn least_loaded_ignores_prefixes_and_never_tokenizes() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("a", 2), pool("b", 2)], now);
    let history: String = (0..500).map(|i| format!("w{i} ")).collect();
    let t1 = core
        .submit(task(|r| r.prompt = Some(history.clone())), cid("c"), now)
        .unwrap()
        .0
        .task_id;
    finish_cached(&mut core, t1, " ok", (700, 0, 1), now);
    let _busy = submit(&mut core, Priority::Interactive, now).unwrap();
    core.submit(
        task(|r| r.prompt = Some(format!("{history} ok"))),
        cid("c"),
        now,
    )
    .unwrap();
    let job = core.effects.dispatched.last().unwrap();
    assert_eq!(job.body.pool_id, pid("b"));
    assert_eq!(job.body.id_slot, None);
    assert!(core.prefix.is_empty());
    assert!(core.effects.tokenized.is_empty(), "nothing is tokenized");
}

/// Task events and task lists are scoped like task reads: a tenant sees its own tasks, an admin
/// every tenant's, and fleet events go to every reader.
#[test]
fn task_events_reach_their_tenant_and_admins_only() {
    use super::tenants::Scope;
    let now = Instant::now();
    let mut core = core_with(|_| {});
    let mut feed = core.subscribe_events(None);
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let a = submit_as(&mut core, "a", now);
    core.publish_changes(false);
    let mut frames = vec![];
    while let Ok(f) = feed.live.try_recv() {
        frames.push(f);
    }
    let (tasks, fleet): (Vec<_>, Vec<_>) = frames
        .iter()
        .partition(|f| f.text.contains("event: task\n"));
    assert_eq!(tasks.len(), 1, "{frames:?}");
    assert!(tasks[0].text.contains(&a.to_string()));
    assert!(tasks[0].visible_to(&Scope::All));
    assert!(tasks[0].visible_to(&Scope::Tenant(tenant("a"))));
    assert!(!tasks[0].visible_to(&Scope::Tenant(tenant("b"))));
    assert!(!fleet.is_empty());
    assert!(fleet
        .iter()
        .all(|f| f.visible_to(&Scope::Tenant(tenant("b")))));
    assert!(core
        .task_records(10, &Scope::Tenant(tenant("b")))
        .is_empty());
    assert_eq!(core.task_records(10, &Scope::Tenant(tenant("a"))).len(), 1);
    assert_eq!(core.task_records(10, &Scope::All).len(), 1);
}

/// Cache-aware placement (a task costs 100 tokens, waits for holders of at least 256) on two
/// one-slot pools `a` and `b`, with a 500-word history to build prompts on.
fn waiting_core(
    now: Instant,
    cfg: impl FnOnce(&mut crate::config::Config),
) -> (Core<Recorded>, String) {
    let mut core = core_with(|c| {
        c.strategy = crate::config::Strategy::CacheAware;
        c.load_cost_tokens = 100;
        c.wait_for_prefix_tokens = 256;
        cfg(c);
    });
    register(&mut core, "n1", vec![pool("a", 1), pool("b", 1)], now);
    (core, (0..500).map(|i| format!("w{i} ")).collect())
}

/// Decision 70: a task whose prefix a busy pool holds waits for it instead of prefilling from
/// scratch on the idle pool, is dispatched there when it frees, and never waits past the bound.
#[test]
fn cache_aware_waits_for_the_busy_prefix_holder_and_only_so_long() {
    let now = Instant::now();
    let (mut core, history) = waiting_core(now, |c| c.wait_for_prefix_max = Duration::from_secs(5));
    let submit_prompt =
        |core: &mut Core<Recorded>, prompt: String| submit_tokenized(core, &prompt, now);
    let t1 = submit_prompt(&mut core, history.clone());
    assert_eq!(dispatched(&core)[0].1, pid("a"));
    finish_cached(&mut core, t1, " ok", (500, 0, 0), now);
    // a runs the conversation's next turn; the turn after it waits for a although b is idle.
    let t2 = submit_prompt(&mut core, format!("{history} ok and more"));
    assert_eq!(dispatched(&core)[1], (t2, pid("a")));
    let t3 = submit_prompt(&mut core, format!("{history} ok and other"));
    assert_eq!(dispatched(&core).len(), 2, "t3 waits for a");
    assert_eq!(core.tasks[&t3].state(), TaskState::Queued);
    // An unrelated prompt still takes the idle pool meanwhile.
    let other = submit_prompt(&mut core, "hello there".into());
    assert_eq!(dispatched(&core)[2], (other, pid("b")));
    // a frees its slot: the waiting task goes there, with the prefix predicted.
    finish_cached(&mut core, t2, " yes", (503, 501, 0), now);
    assert_eq!(dispatched(&core)[3], (t3, pid("a")));
    assert!(core.tasks[&t3].predicted_cached > 256);
    // b is idle again, a busy with t3: the next turn waits for a once more...
    finish(&mut core, other, now);
    let t4 = submit_prompt(&mut core, format!("{history} ok and a third"));
    assert_eq!(dispatched(&core).len(), 4, "t4 waits for a");
    // ...but the wait is bounded: past `wait_for_prefix_max` the tick places it on the idle pool.
    core.tick(now + Duration::from_secs(1));
    assert_eq!(dispatched(&core).len(), 4, "still within the bound");
    core.tick(now + Duration::from_secs(6));
    assert_eq!(dispatched(&core)[4], (t4, pid("b")));
}

/// Decision 76: once a pool's speeds are measured, waiting for a busy prefix holder is decided by
/// predicted time to first token. A fast engine prefills the history sooner than the holder frees.
#[test]
fn measured_speeds_decide_the_wait_for_a_prefix_holder() {
    let now = Instant::now();
    let (mut core, history) = waiting_core(now, |_| {});
    let t1 = submit_tokenized(&mut core, &history, now);
    let attempt = core.tasks[&t1].attempts;
    token(&mut core, t1, attempt, " ok", &word_ids(" ok"), now);
    // A GPU: 500 prompt tokens in 26 ms to the first token, 200 tokens decoded in 2 s.
    let end = WorkerEvent::End {
        tokens_in: 500,
        tokens_out: 200,
        stop_reason: StopReason::Eos,
        seed: Some(1),
        engine_ttft_ms: Some(26),
        engine_decode_ms: 2000,
        tokens_cached: Some(0),
        slot: Some(0),
    };
    core.on_worker(t1, attempt, end, now);
    let s = core.stats["a"];
    // (26 ms − one 10 ms decode step) over 500 evaluated tokens; a task holds a slot 2,026 ms.
    assert_eq!(s.prefill_ms_per_token, Some(0.032));
    assert_eq!(s.service_ms(), Some(2026.0));
    let t2 = submit_tokenized(&mut core, &format!("{history} ok and more"), now);
    assert_eq!(dispatched(&core)[1], (t2, pid("a")));
    // a holds the history but is busy: half a run (1 s) against 16 ms of prefill on b.
    let t3 = submit_tokenized(&mut core, &format!("{history} ok and other"), now);
    assert_eq!(dispatched(&core)[2], (t3, pid("b")));
    // A short prompt says little about prefill speed: it leaves the measurement alone.
    finish_cached(&mut core, t2, " yes", (503, 501, 0), now);
    assert_eq!(core.stats["a"].prefill_ms_per_token, Some(0.032));
}

/// Decision 76: a task that waits for a busy holder is ahead of later tasks there. With one task
/// already waiting, the next one's wait is a run and a half, longer than prefilling elsewhere.
#[test]
fn a_task_waiting_for_a_holder_counts_against_the_next() {
    let now = Instant::now();
    let (mut core, history) = waiting_core(now, |_| {});
    let t1 = submit_tokenized(&mut core, &history, now);
    // 7 ms a prompt token (3.5 s for these 500), so a run on a takes about 3.5 s.
    finish_cached(&mut core, t1, " ok", (500, 0, 0), now);
    let t2 = submit_tokenized(&mut core, &format!("{history} ok and more"), now);
    assert_eq!(dispatched(&core)[1], (t2, pid("a")));
    // b would evaluate about 504 tokens (3.5 s); half a run on a is 1.75 s: t3 waits for a.
    let t3 = submit_tokenized(&mut core, &format!("{history} ok and other"), now);
    assert_eq!(dispatched(&core).len(), 2, "t3 waits for a");
    // Behind t3, a run and a half (5.3 s) is longer than prefilling on b: t4 takes b.
    let t4 = submit_tokenized(&mut core, &format!("{history} ok and a third"), now);
    assert_eq!(dispatched(&core)[2], (t4, pid("b")));
    assert_eq!(core.tasks[&t3].state(), TaskState::Queued);
}

fn ha_core() -> Core<Recorded> {
    let mut core = core_with(|c| {
        c.state = crate::config::StateBackend::Postgres(crate::config::HaConfig {
            url: daemon::secret::Secret::new("postgres://x@127.0.0.1/x"),
            advertise_url: "http://127.0.0.1:1".into(),
            lease: Duration::from_millis(1500),
        })
    });
    // The catalog a leader loads from Postgres: model `m`, adopted from a pool before.
    let mut seed = core_with(|_| {});
    register(&mut seed, "n0", vec![pool("p0", 1)], Instant::now());
    let records = seed.catalog.list().into_iter().cloned().collect();
    core.catalog = catalog::Catalog::deferred_from(records, std::path::Path::new("pg"));
    core
}

#[test]
fn an_idempotency_key_makes_a_retried_submit_return_the_first_task() {
    let mut core = core_with(|_| {});
    let now = Instant::now();
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let keyed = |k: &str| {
        let mut v = task(|_| {});
        v.idempotency_key = Some(k.into());
        v
    };
    let (first, _) = core.submit(keyed("k1"), cid("a"), now).unwrap();
    let (again, _) = core.submit(keyed("k1"), cid("b"), now).unwrap();
    assert_eq!(first.task_id, again.task_id);
    let (other, _) = core.submit(keyed("k2"), cid("c"), now).unwrap();
    assert_ne!(first.task_id, other.task_id);
    // Another tenant's identical key is its own.
    let mut v = keyed("k1");
    v.tenant = "t2".parse().unwrap();
    let (theirs, _) = core.submit(v, cid("d"), now).unwrap();
    assert_ne!(first.task_id, theirs.task_id);
    assert_eq!(core.tasks.iter().count(), 3);
}

#[test]
fn an_ha_leader_writes_a_row_when_a_task_is_admitted_dispatched_and_finished() {
    let mut core = ha_core();
    let now = Instant::now();
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let a = submit(&mut core, Priority::Interactive, now).unwrap();
    let b = submit(&mut core, Priority::Interactive, now).unwrap();
    let rows = core.take_task_rows();
    assert_eq!(rows.len(), 2);
    // `a` was dispatched at once: its first row holds the request and the frames before its
    // stream; `b` waits in the queue.
    assert_eq!(
        (rows[0].id, rows[0].state, rows[0].attempt),
        (a, TaskState::Running, 1)
    );
    assert!(rows[0]
        .spec
        .as_deref()
        .is_some_and(|s| s.contains("\"hi\"")));
    let prefix = rows[0].prefix.as_deref().expect("frames before the stream");
    assert!(prefix.contains("\"started\""), "{prefix}");
    assert_eq!((rows[1].id, rows[1].state), (b, TaskState::Queued));
    assert!(rows[1].spec.is_some() && rows[1].prefix.is_none());
    assert!(core.take_task_rows().is_empty(), "nothing changed");
    finish(&mut core, a, now);
    let rows = core.take_task_rows();
    let states: Vec<_> = rows.iter().map(|r| (r.id, r.state, r.attempt)).collect();
    assert_eq!(
        states,
        vec![(a, TaskState::Completed, 1), (b, TaskState::Running, 1)]
    );
    assert!(
        rows.iter().all(|r| r.spec.is_none()),
        "the request is written once"
    );
    assert!(rows[1].prefix.is_some());
    // Embedded mode writes nothing.
    let mut plain = core_with(|_| {});
    register(&mut plain, "n1", vec![pool("p1", 1)], now);
    submit(&mut plain, Priority::Interactive, now).unwrap();
    assert!(plain.take_task_rows().is_empty());
}

/// A stored task as a predecessor left it.
fn stored(
    v: crate::admission::ValidatedTask,
    state: TaskState,
    attempt: u32,
    prefix: Vec<Event>,
) -> super::pgstate::StoredTask {
    super::pgstate::StoredTask {
        v,
        correlation_id: "c".into(),
        state,
        node: (attempt > 0).then(|| nid("n1")),
        pool: (attempt > 0).then(|| pid("p1")),
        attempt,
        prefix,
        terminal: None,
        updated_ms: daemon::now_ms(),
    }
}

#[test]
fn a_new_leader_redispatches_a_running_task_to_its_pool_with_the_same_attempt() {
    let mut old = ha_core();
    let now = Instant::now();
    register(&mut old, "n1", vec![pool("p1", 1)], now);
    let running = submit(&mut old, Priority::Interactive, now).unwrap();
    let queued = submit(&mut old, Priority::Interactive, now).unwrap();
    let prefix = old.tasks[&running].log.read_from(0).0;
    let mut core = ha_core();
    let rows = vec![
        stored(
            old.tasks[&running].v.clone(),
            TaskState::Running,
            2,
            prefix.clone(),
        ),
        stored(old.tasks[&queued].v.clone(), TaskState::Queued, 0, vec![]),
    ];
    core.restore(rows, Duration::from_secs(30), now);
    assert_eq!(core.restoring(), 1);
    assert_eq!(core.tasks[&running].log.len(), prefix.len());
    assert!(
        core.take_task_rows().is_empty(),
        "restored rows are already right"
    );
    // A node with room for both registers: the restored task goes to its pool first, as attempt
    // 2, with no frame added; the queued one follows.
    let mut p = pool("p1", 2);
    p.slots_free = 2;
    register(&mut core, "n1", vec![p], now);
    let jobs = &core.effects.dispatched;
    assert_eq!(jobs.len(), 2);
    assert_eq!((jobs[0].task, jobs[0].attempt), (running, 2));
    assert_eq!(jobs[0].body.pool_id, pid("p1"));
    assert_eq!(jobs[1].task, queued);
    assert_eq!(core.tasks[&running].log.len(), prefix.len());
    assert!(core.take_task_rows().iter().all(|r| r.id != running));
    // Its stream, replayed from the first line, rebuilds the frames.
    let token = WorkerEvent::Token {
        i: 0,
        t: "a".into(),
        logprobs: vec![],
        ids: vec![],
    };
    core.on_worker(running, 2, token, now);
    assert_eq!(core.tasks[&running].log.len(), prefix.len() + 1);
}

#[test]
fn a_restored_task_whose_pool_does_not_come_back_ends_with_worker_reset() {
    let mut old = ha_core();
    let now = Instant::now();
    register(&mut old, "n1", vec![pool("p1", 1)], now);
    let running = submit(&mut old, Priority::Interactive, now).unwrap();
    let mut core = ha_core();
    let row = stored(old.tasks[&running].v.clone(), TaskState::Running, 1, vec![]);
    core.restore(vec![row], Duration::from_secs(5), now);
    core.tick(now + Duration::from_secs(1));
    assert_eq!(core.tasks[&running].state(), TaskState::Queued);
    core.tick(now + Duration::from_secs(6));
    assert_eq!(core.tasks[&running].state(), TaskState::Failed);
    let (frames, closed) = core.tasks[&running].log.read_from(0);
    assert!(closed);
    match frames.last() {
        Some(Event::Error(e)) => assert_eq!(e.code, ErrorCode::WorkerReset),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_task_seen_finished_is_reattached_or_ends_with_its_stored_frame() {
    let mut old = ha_core();
    let now = Instant::now();
    register(&mut old, "n1", vec![pool("p1", 2)], now);
    let a = submit(&mut old, Priority::Interactive, now).unwrap();
    let b = submit(&mut old, Priority::Interactive, now).unwrap();
    finish(&mut old, a, now);
    finish(&mut old, b, now);
    let frames = |id: TaskId| old.tasks[&id].log.read_from(0).0;
    let (fa, fb) = (frames(a), frames(b));
    let row = |id: TaskId, f: &Vec<Event>| {
        let mut s = stored(
            old.tasks[&id].v.clone(),
            TaskState::Completed,
            1,
            f[..1].to_vec(),
        );
        s.terminal = f.last().cloned();
        s
    };
    let mut core = ha_core();
    core.restore(vec![row(a, &fa), row(b, &fb)], Duration::from_secs(30), now);
    register(&mut core, "n1", vec![pool("p1", 2)], now);
    // Both are asked of the worker, attach only.
    let mut jobs: Vec<_> = core
        .effects
        .dispatched
        .iter()
        .map(|j| (j.task, j.attempt, j.reattach_only))
        .collect();
    jobs.sort();
    let mut want = vec![(a, 1, true), (b, 1, true)];
    want.sort();
    assert_eq!(jobs, want);
    // `a`'s worker still has it: the replay rebuilds every frame, with the same ids.
    finish(&mut core, a, now);
    assert_eq!(core.tasks[&a].log.read_from(0).0, fa);
    assert_eq!(core.tasks[&a].state(), TaskState::Completed);
    // `b`'s does not: its stored `end` follows its stored frames.
    let refused = RelayEnd::Refused {
        status: 404,
        envelope: api::ErrorEnvelope::new(ErrorCode::NotFound, "not known"),
    };
    core.on_relay_ended(b, 1, refused, now);
    let (got, closed) = core.tasks[&b].log.read_from(0);
    assert!(closed);
    assert_eq!(got, vec![fb[0].clone(), fb.last().unwrap().clone()]);
    assert_eq!(core.tasks[&b].state(), TaskState::Completed);
}

#[test]
fn a_reattach_refused_after_the_grace_period_ends_the_task_instead_of_rerunning_it() {
    let mut old = ha_core();
    let now = Instant::now();
    register(&mut old, "n1", vec![pool("p1", 1)], now);
    let a = submit(&mut old, Priority::Interactive, now).unwrap();
    let prefix = old.tasks[&a].log.read_from(0).0;
    let mut core = ha_core();
    let row = stored(old.tasks[&a].v.clone(), TaskState::Running, 1, prefix);
    core.restore(vec![row], Duration::from_secs(30), now);
    register(&mut core, "n1", vec![pool("p1", 1)], now);
    let expired =
        api::ErrorEnvelope::new(ErrorCode::WorkerReset, "grace expired").with_retriable(false);
    core.on_relay_ended(
        a,
        1,
        RelayEnd::Refused {
            status: 410,
            envelope: expired,
        },
        now,
    );
    assert_eq!(core.tasks[&a].state(), TaskState::Failed);
    assert_eq!(core.effects.dispatched.len(), 1, "never dispatched again");
    match core.tasks[&a].log.read_from(0).0.last() {
        Some(Event::Error(e)) => assert_eq!((e.code, e.retriable), (ErrorCode::WorkerReset, false)),
        other => panic!("{other:?}"),
    }
}

/// `model` loaded from its own file, `file:/<model>.gguf`.
fn loaded(model: &str) -> LoadedModel {
    LoadedModel {
        id: mid(model),
        model_ref: format!("file:/{model}.gguf"),
        digest: None,
        size_bytes: None,
        metadata: None,
    }
}

/// A pool serving `model` instead of `m`.
fn serving(p: PoolStatus, model: &str) -> PoolStatus {
    PoolStatus {
        models: vec![loaded(model)],
        ..p
    }
}

/// Placement reads only the pools serving the task's model (the registry's interned model keys):
/// a pool that changes models, restarts, or leaves with its node is placed by what it is now.
#[test]
fn placement_follows_a_pools_model_restart_and_removal() {
    let now = Instant::now();
    let mut core = core_with(|_| {});
    register(&mut core, "n1", vec![pool("p1", 4)], now);
    register(&mut core, "n2", vec![pool("p2", 4)], now);
    let on = |core: &mut Core<Recorded>, model: &str| {
        let id = core
            .submit(task(|r| r.model_ref = model.into()), cid("c"), now)
            .expect("admitted")
            .0
            .task_id;
        let pool = core.tasks[&id].pool.clone();
        if let Some(p) = &pool {
            let p = p.clone();
            finish(core, id, now);
            assert!(core.registry.pool(&p).is_some_and(|e| e.holding.is_empty()));
        }
        pool.map(|p| p.to_string())
    };
    assert_eq!(on(&mut core, "m").as_deref(), Some("p1"));
    // p1 now serves `o`: `m` goes to p2 only, `o` to p1 only.
    heartbeat(
        &mut core,
        "n1",
        1,
        vec![serving(pool("p1", 4), "o")],
        vec![],
        now,
    );
    assert_eq!(core.registry.serving(&mid("m")).count(), 1);
    assert_eq!(on(&mut core, "m").as_deref(), Some("p2"));
    assert_eq!(on(&mut core, "o").as_deref(), Some("p1"));
    // Back to `m`: both pools again (ties go to the first node).
    heartbeat(&mut core, "n1", 2, vec![pool("p1", 4)], vec![], now);
    assert!(core.registry.serving(&mid("o")).next().is_none());
    assert_eq!(on(&mut core, "m").as_deref(), Some("p1"));
    // A restarting p1 is not placed; Ready again, it is.
    heartbeat(
        &mut core,
        "n1",
        3,
        vec![with_state(pool("p1", 4), PoolState::Starting)],
        vec![],
        now,
    );
    assert_eq!(on(&mut core, "m").as_deref(), Some("p2"));
    heartbeat(&mut core, "n1", 4, vec![pool("p1", 4)], vec![], now);
    assert_eq!(on(&mut core, "m").as_deref(), Some("p1"));
    // n1 leaves: its pool is gone from the model's pools and from placement.
    assert!(core.deregister("n1", now));
    assert_eq!(
        core.registry
            .serving(&mid("m"))
            .map(|(id, _)| id.to_string())
            .collect::<Vec<_>>(),
        vec!["p2".to_string()]
    );
    assert_eq!(on(&mut core, "m").as_deref(), Some("p2"));
    // The same pool id on another node serves again, by its new report.
    register(&mut core, "n3", vec![serving(pool("p1", 4), "o")], now);
    assert_eq!(on(&mut core, "o").as_deref(), Some("p1"));
    assert_eq!(on(&mut core, "m").as_deref(), Some("p2"));
}

/// Tasks queued for a pinned pool count towards its load: between two pools with as many free
/// slots and running tasks, the one with a pinned task waiting loses the tie.
#[test]
fn pinned_queued_tasks_count_towards_their_pools_load() {
    use crate::config::NamedToken;
    let now = Instant::now();
    let mut core = core_with(|c| {
        c.named_tokens = vec![NamedToken {
            tenant: tenant("capped"),
            role: api::tenant::Role::Client,
            secret: daemon::secret::Secret::new("capped-token-0123456789".to_string()),
            weight: 1,
            limits: api::tenant::TenantLimits {
                concurrent_tasks: Some(1),
                ..Default::default()
            },
        }];
    });
    register(&mut core, "n1", vec![pool("a", 3), pool("b", 3)], now);
    let pinned_to = |who: &str, pool: &str| crate::admission::ValidatedTask {
        tenant: tenant(who),
        ..task(|r| {
            r.placement = Some(Placement {
                mode: PlacementMode::Pin,
                pin_pool_id: Some(pid(pool)),
                ..Default::default()
            })
        })
    };
    // One task runs on each pool; the capped tenant's second task waits in a's pinned queue.
    for (who, p) in [("capped", "a"), ("capped", "a"), ("other", "b")] {
        core.submit(pinned_to(who, p), cid("c"), now)
            .expect("admitted");
    }
    assert_eq!(dispatched(&core).len(), 2);
    assert_eq!(core.queued_for_pool(&pid("a"), None), 1);
    // a: 2 free, load 1 + 1 queued; b: 2 free, load 1. Without the queued task a would win the
    // tie by its id.
    let t = submit_as(&mut core, "other", now);
    assert_eq!(dispatched(&core).last().expect("placed"), &(t, pid("b")));
}
