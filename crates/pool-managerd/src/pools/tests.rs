//! Scenarios for the supervisor core against a recording fake of its effects. Every test drives
//! the core with explicit instants and checks the effects it asked for and the state on the wire.

use std::time::{Duration, Instant};

use api::node::PoolState;
use api::worker::DispatchModel;
use api::{CommandId, ErrorCode, TaskId};

use super::core::*;
use super::ModelInfo;
use crate::commands::{ModelOrder, PoolCommand};

#[derive(Debug, Clone, PartialEq)]
enum Fx {
    Provision,
    Fetch(String, Option<String>),
    Start(u64, String),
    Stop(u64),
    Abort(Vec<String>),
    Timer(Timer, Duration),
    Running(String),
    Completed(String),
    Failed(String, ErrorCode),
}

/// A task or command id spelled by a short name (at most 16 bytes) in the scenarios.
fn named(name: &str) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    uuid::Uuid::from_bytes(bytes)
}

/// The name a [`named`] id spells.
fn name_of(id: uuid::Uuid) -> String {
    String::from_utf8_lossy(id.as_bytes())
        .trim_end_matches('\0')
        .to_string()
}

fn t(name: &str) -> TaskId {
    TaskId(named(name))
}

fn cid(name: &str) -> CommandId {
    CommandId(named(name))
}

/// Records effects, with ids as their scenario names; timers as offsets from `t0`.
struct Rec {
    t0: Instant,
    log: Vec<Fx>,
    last: Option<Snapshot>,
}

impl Effects for Rec {
    fn provision(&mut self) {
        self.log.push(Fx::Provision);
    }
    fn fetch(&mut self, order: ModelOrder, command: Option<CommandId>) {
        let command = command.map(|c| name_of(c.0));
        self.log.push(Fx::Fetch(order.id.to_string(), command));
    }
    fn start_engine(&mut self, generation: u64, model: &ModelInfo) {
        self.log.push(Fx::Start(generation, model.id.to_string()));
    }
    fn stop_engine(&mut self, generation: u64) {
        self.log.push(Fx::Stop(generation));
    }
    fn abort_tasks(&mut self, tasks: Vec<TaskId>) {
        self.log
            .push(Fx::Abort(tasks.iter().map(|t| name_of(t.0)).collect()));
    }
    fn timer(&mut self, at: Instant, timer: Timer) {
        self.log.push(Fx::Timer(timer, at.duration_since(self.t0)));
    }
    fn command(&mut self, id: &CommandId, update: CommandUpdate) {
        let id = name_of(id.0);
        self.log.push(match update {
            CommandUpdate::Running => Fx::Running(id),
            CommandUpdate::Completed(_) => Fx::Completed(id),
            CommandUpdate::Failed(e) => Fx::Failed(id, e.code),
        });
    }
    fn report(&mut self, snapshot: Snapshot) {
        self.last = Some(snapshot);
    }
}

fn model(id: &str) -> ModelInfo {
    ModelInfo {
        id: id.parse().unwrap(),
        model_ref: format!("file:/models/{id}.gguf"),
        path: format!("/models/{id}.gguf").into(),
        digest: Some(format!("sha256:{id}")),
        size_bytes: Some(100),
        metadata: None,
    }
}

fn order(id: &str) -> ModelOrder {
    ModelOrder {
        id: id.parse().unwrap(),
        model_ref: api::model_ref::ModelRef::parse(&format!("file:/models/{id}.gguf")).unwrap(),
        digest: None,
    }
}

fn want(id: &str) -> DispatchModel {
    DispatchModel {
        id: id.parse().unwrap(),
        digest: Some(format!("sha256:{id}")),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const CMD: &str = "c1";

type C = Core<Rec>;

fn new_core(slots: u32, max_restarts: u32, configured: Option<&str>) -> (C, Instant) {
    let t0 = Instant::now();
    let settings = Settings {
        pool_id: "p1".parse().unwrap(),
        slots,
        max_restarts,
        model: configured.map(order),
    };
    let rec = Rec {
        t0,
        log: vec![],
        last: None,
    };
    (Core::new(settings, rec), t0)
}

/// Takes the recorded effects and checks them and the state on the wire.
fn check(c: &mut C, effects: &[Fx], state: PoolState) {
    let got = std::mem::take(&mut c.effects().log);
    assert_eq!(got, effects, "effects");
    assert_eq!(c.wire_state(), state, "state (phase {:?})", c.phase());
    let published = c.effects().last.as_ref().map(|s| s.state);
    assert_eq!(published, Some(state), "the last published snapshot");
}

/// A pool serving `m1` as generation 1.
fn ready(slots: u32, max_restarts: u32) -> (C, Instant) {
    let (mut c, t0) = new_core(slots, max_restarts, Some("m1"));
    c.start();
    c.on_provisioned(Ok("b1".into()), t0);
    c.on_fetched(None, Ok((model("m1"), true)), t0);
    c.on_engine_ready(1, "b1".into(), t0);
    check(
        &mut c,
        &[
            Fx::Provision,
            Fx::Fetch("m1".into(), None),
            Fx::Start(1, "m1".into()),
        ],
        PoolState::Ready,
    );
    (c, t0)
}

fn end(ok: bool) -> TaskEnd {
    TaskEnd {
        ok,
        decode_tps: None,
    }
}

fn load(m: Option<&str>) -> PoolCommand {
    PoolCommand::Load {
        id: cid(CMD),
        model: m.map(order),
    }
}

#[test]
fn start_provisions_fetches_and_serves() {
    let (mut c, t0) = new_core(2, 3, Some("m1"));
    c.start();
    check(&mut c, &[Fx::Provision], PoolState::Provisioning);
    c.on_provisioned(Ok("b1".into()), t0);
    check(
        &mut c,
        &[Fx::Fetch("m1".into(), None)],
        PoolState::Provisioning,
    );
    c.on_fetched(None, Ok((model("m1"), true)), t0);
    check(&mut c, &[Fx::Start(1, "m1".into())], PoolState::Starting);
    assert_eq!(
        c.admit(&t("t1"), &want("m1")).unwrap_err(),
        Refusal::Unready(PoolState::Starting)
    );
    c.on_engine_ready(1, "b1".into(), t0);
    check(&mut c, &[], PoolState::Ready);
    assert_eq!(c.admit(&t("t1"), &want("m1")).unwrap().generation, 1);
}

#[test]
fn no_configured_model_waits_unloaded_and_load_model_serves() {
    let (mut c, t0) = new_core(1, 3, None);
    c.start();
    c.on_provisioned(Ok("b1".into()), t0);
    check(&mut c, &[Fx::Provision], PoolState::Unloaded);
    c.on_command(load(Some("m2")), t0);
    check(
        &mut c,
        &[Fx::Fetch("m2".into(), Some(CMD.into()))],
        PoolState::Provisioning,
    );
    c.on_fetched(Some(cid(CMD)), Ok((model("m2"), true)), t0);
    check(
        &mut c,
        &[Fx::Running(CMD.into()), Fx::Start(1, "m2".into())],
        PoolState::Starting,
    );
    c.on_engine_ready(1, "b1".into(), t0);
    check(&mut c, &[Fx::Completed(CMD.into())], PoolState::Ready);
    assert_eq!(c.snapshot().model.unwrap().id, "m2");
}

#[test]
fn provisioning_failure_fails_the_pool_and_refuses_loads() {
    let (mut c, t0) = new_core(1, 3, Some("m1"));
    c.start();
    c.on_provisioned(Err("cmake failed".into()), t0);
    check(&mut c, &[Fx::Provision], PoolState::Failed);
    c.on_command(load(Some("m1")), t0);
    check(
        &mut c,
        &[Fx::Failed(CMD.into(), ErrorCode::PoolUnavailable)],
        PoolState::Failed,
    );
    assert_eq!(c.snapshot().last_error.as_deref(), Some("cmake failed"));
}

#[test]
fn failed_configured_model_fails_the_pool_with_the_reason() {
    let (mut c, t0) = new_core(1, 3, Some("m1"));
    c.start();
    c.on_provisioned(Ok("b1".into()), t0);
    let failed = FetchFailed {
        envelope: api::ErrorEnvelope::new(ErrorCode::ModelNotAvailable, "no file"),
        reason: "model m1 (file:/models/m1.gguf): no file".into(),
    };
    c.on_fetched(None, Err(failed), t0);
    check(
        &mut c,
        &[Fx::Provision, Fx::Fetch("m1".into(), None)],
        PoolState::Failed,
    );
    assert!(c.snapshot().last_error.unwrap().contains("m1.gguf"));
}

#[test]
fn crash_restarts_after_a_doubling_backoff() {
    let (mut c, t0) = ready(2, 5);
    c.admit(&t("t1"), &want("m1")).unwrap();
    c.on_engine_exited(1, "signal 9".into(), t0 + secs(10));
    check(
        &mut c,
        &[
            Fx::Abort(vec!["t1".into()]),
            Fx::Timer(Timer::Restart, secs(11)),
        ],
        PoolState::Starting,
    );
    assert_eq!(c.snapshot().last_error.as_deref(), Some("signal 9"));
    assert_eq!(c.snapshot().crashes, 1);
    // Too early: nothing happens.
    c.on_timer(Timer::Restart, t0 + secs(10));
    check(&mut c, &[], PoolState::Starting);
    c.on_timer(Timer::Restart, t0 + secs(11));
    check(&mut c, &[Fx::Start(2, "m1".into())], PoolState::Starting);
    c.on_engine_ready(2, "b1".into(), t0 + secs(12));
    check(&mut c, &[], PoolState::Ready);
    assert_eq!(c.snapshot().last_error, None);
    c.on_engine_exited(2, "signal 11".into(), t0 + secs(20));
    check(
        &mut c,
        &[Fx::Timer(Timer::Restart, secs(22))],
        PoolState::Starting,
    );
}

#[test]
fn breaker_trips_after_max_restarts_and_a_reload_resets_it() {
    let (mut c, t0) = ready(1, 2);
    c.on_engine_exited(1, "boom".into(), t0 + secs(1));
    check(
        &mut c,
        &[Fx::Timer(Timer::Restart, secs(2))],
        PoolState::Starting,
    );
    c.on_timer(Timer::Restart, t0 + secs(2));
    c.on_engine_ready(2, "b1".into(), t0 + secs(3));
    c.on_engine_exited(2, "boom again".into(), t0 + secs(4));
    check(&mut c, &[Fx::Start(2, "m1".into())], PoolState::Failed);
    assert_eq!(
        c.phase(),
        &Phase::Failed {
            reason: "circuit breaker open: 2 engine failures within 300 s; last: boom again".into(),
            attempts: 2
        }
    );
    assert!(c.snapshot().last_error.unwrap().contains("circuit breaker"));
    c.on_command(load(None), t0 + secs(5));
    check(
        &mut c,
        &[Fx::Running(CMD.into()), Fx::Start(3, "m1".into())],
        PoolState::Starting,
    );
    c.on_engine_ready(3, "b1".into(), t0 + secs(6));
    check(&mut c, &[Fx::Completed(CMD.into())], PoolState::Ready);
    // A fresh breaker: one crash restarts again.
    c.on_engine_exited(3, "boom".into(), t0 + secs(7));
    check(
        &mut c,
        &[Fx::Timer(Timer::Restart, secs(8))],
        PoolState::Starting,
    );
}

#[test]
fn failed_starts_count_towards_the_breaker() {
    let (mut c, t0) = new_core(1, 2, Some("m1"));
    c.start();
    c.on_provisioned(Ok("b1".into()), t0);
    c.on_fetched(None, Ok((model("m1"), true)), t0);
    c.on_engine_failed(1, "port in use".into(), t0);
    check(
        &mut c,
        &[
            Fx::Provision,
            Fx::Fetch("m1".into(), None),
            Fx::Start(1, "m1".into()),
            Fx::Timer(Timer::Restart, secs(1)),
        ],
        PoolState::Starting,
    );
    c.on_timer(Timer::Restart, t0 + secs(1));
    c.on_engine_failed(2, "port in use".into(), t0 + secs(1));
    check(&mut c, &[Fx::Start(2, "m1".into())], PoolState::Failed);
}

#[test]
fn stale_generation_events_are_ignored() {
    let (mut c, t0) = ready(1, 5);
    c.on_engine_exited(1, "crash".into(), t0);
    c.on_timer(Timer::Restart, t0 + secs(1));
    c.on_engine_ready(2, "b1".into(), t0 + secs(2));
    check(
        &mut c,
        &[
            Fx::Timer(Timer::Restart, secs(1)),
            Fx::Start(2, "m1".into()),
        ],
        PoolState::Ready,
    );
    // The old engine's events arrive late: nothing changes.
    c.on_engine_exited(1, "crash".into(), t0 + secs(3));
    c.on_engine_failed(1, "late".into(), t0 + secs(3));
    check(&mut c, &[], PoolState::Ready);
    assert_eq!(c.snapshot().crashes, 1);
    // A ready report from a launch nobody waits for stops that engine.
    c.on_engine_ready(7, "b1".into(), t0 + secs(3));
    check(&mut c, &[Fx::Stop(7)], PoolState::Ready);
    assert_eq!(c.admit(&t("t1"), &want("m1")).unwrap().generation, 2);
}

#[test]
fn slots_admit_release_and_exhaustion() {
    let (mut c, t0) = ready(2, 5);
    c.admit(&t("a"), &want("m1")).unwrap();
    c.admit(&t("b"), &want("m1")).unwrap();
    assert_eq!(
        c.admit(&t("c"), &want("m1")).unwrap_err(),
        Refusal::Exhausted
    );
    assert_eq!(
        c.admit(&t("a"), &want("m1")).unwrap_err(),
        Refusal::Duplicate
    );
    assert_eq!(c.snapshot().slots_free, 0);
    c.release(
        &t("a"),
        TaskEnd {
            ok: true,
            decode_tps: Some(10.0),
        },
        t0,
    );
    c.release(
        &t("b"),
        TaskEnd {
            ok: false,
            decode_tps: Some(f64::NAN),
        },
        t0,
    );
    // A second release of the same task changes nothing.
    c.release(&t("b"), end(true), t0);
    let snap = c.snapshot();
    assert_eq!(
        (snap.slots_free, snap.ended, snap.failed, snap.decode_tps),
        (2, 1, 1, Some(10.0))
    );
    c.admit(&t("c"), &want("m1")).unwrap();
    let running: Vec<String> = c
        .snapshot()
        .running
        .iter()
        .map(|(id, _)| name_of(id.0))
        .collect();
    assert_eq!(running, ["c"]);
    check(&mut c, &[], PoolState::Ready);
}

#[test]
fn dispatch_model_must_match_id_and_digest() {
    let (mut c, _) = ready(4, 5);
    let check_admit = |c: &mut C, task: &str, id: &str, digest: Option<&str>, ok: bool| {
        let m = DispatchModel {
            id: id.parse().unwrap(),
            digest: digest.map(str::to_string),
        };
        let got = c.admit(&t(task), &m);
        assert_eq!(got.is_ok(), ok, "{id} {digest:?}: {got:?}");
        if !ok {
            assert_eq!(got.unwrap_err(), Refusal::ModelNotServed);
        }
    };
    check_admit(&mut c, "t1", "m1", Some("sha256:m1"), true);
    check_admit(&mut c, "t2", "m1", None, true);
    check_admit(&mut c, "t3", "m1", Some("sha256:other"), false);
    check_admit(&mut c, "t4", "m2", Some("sha256:m1"), false);
    check_admit(&mut c, "t5", "m2", None, false);
    let mut undigested = model("m1");
    undigested.digest = None;
    assert!(!model_matches(&undigested, &want("m1")));
    assert!(model_matches(
        &undigested,
        &DispatchModel {
            id: "m1".parse().unwrap(),
            digest: None
        }
    ));
}

#[test]
fn drain_waits_for_running_tasks_then_stops_the_engine() {
    let (mut c, t0) = ready(2, 5);
    c.admit(&t("t1"), &want("m1")).unwrap();
    let drain = PoolCommand::Drain {
        id: cid(CMD),
        deadline: secs(30),
    };
    c.on_command(drain, t0);
    check(
        &mut c,
        &[Fx::Running(CMD.into()), Fx::Timer(Timer::Drain, secs(30))],
        PoolState::Draining,
    );
    assert_eq!(
        c.admit(&t("t2"), &want("m1")).unwrap_err(),
        Refusal::Unready(PoolState::Draining)
    );
    c.release(&t("t1"), end(true), t0 + secs(5));
    check(&mut c, &[Fx::Stop(1)], PoolState::Draining);
    c.on_engine_exited(1, "stopped".into(), t0 + secs(6));
    check(&mut c, &[Fx::Completed(CMD.into())], PoolState::Unloaded);
    // The deadline timer fires later and finds nothing to do.
    c.on_timer(Timer::Drain, t0 + secs(30));
    check(&mut c, &[], PoolState::Unloaded);
    assert_eq!(c.snapshot().crashes, 0);
    // A reload brings the drained pool back.
    c.on_command(load(None), t0 + secs(40));
    check(
        &mut c,
        &[Fx::Running(CMD.into()), Fx::Start(2, "m1".into())],
        PoolState::Starting,
    );
}

#[test]
fn drain_deadline_ends_running_tasks_as_lost() {
    let (mut c, t0) = ready(2, 5);
    c.admit(&t("t1"), &want("m1")).unwrap();
    let drain = PoolCommand::Drain {
        id: cid(CMD),
        deadline: secs(2),
    };
    c.on_command(drain, t0);
    c.on_timer(Timer::Drain, t0 + secs(2));
    check(
        &mut c,
        &[
            Fx::Running(CMD.into()),
            Fx::Timer(Timer::Drain, secs(2)),
            Fx::Abort(vec!["t1".into()]),
            Fx::Stop(1),
        ],
        PoolState::Draining,
    );
    c.on_engine_exited(1, "stopped".into(), t0 + secs(3));
    check(&mut c, &[Fx::Completed(CMD.into())], PoolState::Unloaded);
    // A second drain of the Unloaded pool completes at once.
    c.on_command(
        PoolCommand::Drain {
            id: cid("c2"),
            deadline: secs(2),
        },
        t0 + secs(4),
    );
    check(&mut c, &[Fx::Completed("c2".into())], PoolState::Unloaded);
}

#[test]
fn reload_side_by_side_switches_then_retires_the_old_engine() {
    let (mut c, t0) = ready(2, 5);
    c.admit(&t("old-task"), &want("m1")).unwrap();
    c.on_command(load(Some("m2")), t0);
    check(
        &mut c,
        &[Fx::Fetch("m2".into(), Some(CMD.into()))],
        PoolState::Ready,
    );
    c.on_fetched(Some(cid(CMD)), Ok((model("m2"), true)), t0 + secs(1));
    check(
        &mut c,
        &[Fx::Running(CMD.into()), Fx::Start(2, "m2".into())],
        PoolState::Ready,
    );
    // The old engine serves until the new one is Ready.
    assert_eq!(c.admit(&t("t2"), &want("m1")).unwrap().generation, 1);
    c.release(&t("t2"), end(true), t0 + secs(1));
    c.on_engine_ready(2, "b1".into(), t0 + secs(2));
    check(
        &mut c,
        &[Fx::Timer(Timer::Retire, secs(62))],
        PoolState::Ready,
    );
    assert_eq!(c.admit(&t("new-task"), &want("m2")).unwrap().generation, 2);
    assert_eq!(
        c.admit(&t("x"), &want("m1")).unwrap_err(),
        Refusal::ModelNotServed
    );
    c.release(&t("old-task"), end(true), t0 + secs(3));
    check(&mut c, &[Fx::Stop(1)], PoolState::Ready);
    c.on_engine_exited(1, "stopped".into(), t0 + secs(4));
    check(&mut c, &[Fx::Completed(CMD.into())], PoolState::Ready);
    assert_eq!(c.snapshot().crashes, 0);
}

#[test]
fn reload_failure_rolls_back_and_the_old_engine_keeps_serving() {
    let (mut c, t0) = ready(2, 5);
    c.on_command(load(Some("m2")), t0);
    c.on_fetched(Some(cid(CMD)), Ok((model("m2"), true)), t0);
    c.on_engine_failed(2, "out of memory".into(), t0 + secs(1));
    check(
        &mut c,
        &[
            Fx::Fetch("m2".into(), Some(CMD.into())),
            Fx::Running(CMD.into()),
            Fx::Start(2, "m2".into()),
            Fx::Failed(CMD.into(), ErrorCode::PoolUnavailable),
        ],
        PoolState::Ready,
    );
    assert!(c
        .snapshot()
        .last_error
        .unwrap()
        .contains("the old engine keeps serving"));
    assert_eq!(c.snapshot().model.unwrap().id, "m1");
    assert_eq!(c.admit(&t("t1"), &want("m1")).unwrap().generation, 1);
}

#[test]
fn reload_without_room_for_two_swaps_and_restores_the_old_model_on_failure() {
    let (mut c, t0) = ready(2, 5);
    c.admit(&t("t1"), &want("m1")).unwrap();
    c.on_command(load(Some("m2")), t0);
    c.on_fetched(Some(cid(CMD)), Ok((model("m2"), false)), t0);
    check(
        &mut c,
        &[
            Fx::Fetch("m2".into(), Some(CMD.into())),
            Fx::Running(CMD.into()),
            Fx::Timer(Timer::Retire, secs(60)),
        ],
        PoolState::Ready,
    );
    c.release(&t("t1"), end(true), t0 + secs(1));
    check(&mut c, &[Fx::Stop(1)], PoolState::Starting);
    c.on_engine_exited(1, "stopped".into(), t0 + secs(2));
    check(&mut c, &[Fx::Start(2, "m2".into())], PoolState::Starting);
    c.on_engine_failed(2, "bad gguf".into(), t0 + secs(3));
    check(
        &mut c,
        &[
            Fx::Failed(CMD.into(), ErrorCode::PoolUnavailable),
            Fx::Start(3, "m1".into()),
        ],
        PoolState::Starting,
    );
    c.on_engine_ready(3, "b1".into(), t0 + secs(4));
    check(&mut c, &[], PoolState::Ready);
    assert_eq!(c.snapshot().model.unwrap().id, "m1");
    assert!(c
        .snapshot()
        .last_error
        .unwrap()
        .starts_with("reload failed: bad gguf"));
}

#[test]
fn reload_of_the_same_model_restarts_the_engine() {
    let (mut c, t0) = ready(1, 5);
    c.admit(&t("t1"), &want("m1")).unwrap();
    c.on_command(load(Some("m1")), t0);
    check(
        &mut c,
        &[
            Fx::Running(CMD.into()),
            Fx::Abort(vec!["t1".into()]),
            Fx::Stop(1),
        ],
        PoolState::Starting,
    );
    c.on_engine_exited(1, "stopped".into(), t0 + secs(1));
    check(&mut c, &[Fx::Start(2, "m1".into())], PoolState::Starting);
    c.on_engine_ready(2, "b1".into(), t0 + secs(2));
    check(&mut c, &[Fx::Completed(CMD.into())], PoolState::Ready);
}

#[test]
fn a_failed_fetch_leaves_the_pool_as_it_was() {
    let (mut c, t0) = ready(1, 5);
    c.on_command(load(Some("m2")), t0);
    let failed = FetchFailed {
        envelope: api::ErrorEnvelope::new(ErrorCode::ModelNotAvailable, "404"),
        reason: "model m2 (file:/nonexistent/m2.gguf): 404".into(),
    };
    c.on_fetched(Some(cid(CMD)), Err(failed), t0 + secs(1));
    check(
        &mut c,
        &[
            Fx::Fetch("m2".into(), Some(CMD.into())),
            Fx::Failed(CMD.into(), ErrorCode::ModelNotAvailable),
        ],
        PoolState::Ready,
    );
    assert!(c.snapshot().last_error.unwrap().contains("m2.gguf"));
    assert_eq!(c.admit(&t("t1"), &want("m1")).unwrap().generation, 1);
}

#[test]
fn commands_wait_while_another_runs() {
    let (mut c, t0) = new_core(1, 5, Some("m1"));
    c.start();
    c.on_provisioned(Ok("b1".into()), t0);
    c.on_fetched(None, Ok((model("m1"), true)), t0);
    std::mem::take(&mut c.effects().log);
    // A drain while the engine starts waits for it to be Ready.
    c.on_command(
        PoolCommand::Drain {
            id: cid(CMD),
            deadline: secs(5),
        },
        t0,
    );
    check(&mut c, &[], PoolState::Starting);
    c.on_engine_ready(1, "b1".into(), t0 + secs(1));
    check(
        &mut c,
        &[
            Fx::Running(CMD.into()),
            Fx::Timer(Timer::Drain, secs(6)),
            Fx::Stop(1),
        ],
        PoolState::Draining,
    );
}

#[test]
fn adopted_engine_serves_refuses_commands_and_ends_when_abandoned() {
    let t0 = Instant::now();
    let settings = Settings {
        pool_id: "adopted0".parse().unwrap(),
        slots: 1,
        max_restarts: 3,
        model: None,
    };
    let rec = Rec {
        t0,
        log: vec![],
        last: None,
    };
    let mut c = Core::adopted(settings, model("m1"), "b7".into(), t0, rec);
    check(&mut c, &[], PoolState::Ready);
    assert_eq!(c.admit(&t("t1"), &want("m1")).unwrap().generation, 1);
    c.on_command(load(None), t0);
    check(
        &mut c,
        &[Fx::Failed(CMD.into(), ErrorCode::InvalidParams)],
        PoolState::Ready,
    );
    assert!(!c.finished());
    c.on_abandoned("its process 42 is gone".into());
    check(&mut c, &[Fx::Abort(vec!["t1".into()])], PoolState::Unloaded);
    assert!(c.finished(), "the adopted engine is not ours to stop");
}

#[test]
fn shutdown_ends_tasks_stops_engines_and_finishes() {
    let (mut c, t0) = ready(1, 5);
    c.admit(&t("t1"), &want("m1")).unwrap();
    c.shutdown();
    check(
        &mut c,
        &[Fx::Abort(vec!["t1".into()]), Fx::Stop(1)],
        PoolState::Draining,
    );
    assert!(!c.finished());
    assert_eq!(
        c.admit(&t("t2"), &want("m1")).unwrap_err(),
        Refusal::Unready(PoolState::Draining)
    );
    c.on_engine_exited(1, "stopped".into(), t0 + secs(1));
    check(&mut c, &[], PoolState::Unloaded);
    assert!(c.finished());
    assert_eq!(c.snapshot().crashes, 0, "a stop is not a crash");
}

#[test]
fn shutdown_while_starting_gives_up_the_launch_and_fails_the_command() {
    let (mut c, t0) = new_core(1, 5, None);
    c.start();
    c.on_provisioned(Ok("b1".into()), t0);
    c.on_command(load(Some("m1")), t0);
    c.on_fetched(Some(cid(CMD)), Ok((model("m1"), true)), t0);
    std::mem::take(&mut c.effects().log);
    c.shutdown();
    check(
        &mut c,
        &[
            Fx::Stop(1),
            Fx::Failed(CMD.into(), ErrorCode::PoolUnavailable),
        ],
        PoolState::Draining,
    );
    c.on_engine_failed(1, "stopped while starting".into(), t0);
    check(&mut c, &[], PoolState::Unloaded);
    assert!(c.finished());
}

#[test]
fn a_crash_during_a_drain_completes_the_drain() {
    let (mut c, t0) = ready(1, 5);
    c.admit(&t("t1"), &want("m1")).unwrap();
    c.on_command(
        PoolCommand::Drain {
            id: cid(CMD),
            deadline: secs(30),
        },
        t0,
    );
    std::mem::take(&mut c.effects().log);
    c.on_engine_exited(1, "signal 9".into(), t0 + secs(1));
    check(
        &mut c,
        &[Fx::Abort(vec!["t1".into()]), Fx::Completed(CMD.into())],
        PoolState::Unloaded,
    );
}

#[test]
fn breaker_counts_only_failures_within_its_window() {
    let t0 = Instant::now();
    let mut b = Breaker::new(3, Duration::from_secs(300));
    assert!(b.trip(t0, "a").is_none());
    assert!(b.trip(t0 + Duration::from_secs(10), "b").is_none());
    // The first failure has left the window: still only two.
    assert!(b.trip(t0 + Duration::from_secs(305), "c").is_none());
    assert!(b
        .trip(t0 + Duration::from_secs(306), "d")
        .unwrap()
        .contains("3 engine failures"));
}
