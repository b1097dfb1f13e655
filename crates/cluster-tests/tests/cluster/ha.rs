//! High availability (issue #21): two orchestratord on one Postgres database (a fresh one per
//! scenario), one pool-managerd following the leader, a real llama-server. Clients are the SDK with
//! both URLs: calls follow the leader and task streams resume with `Last-Event-ID`. Streams are
//! read verbose (every frame id is present), so "gap-free" means ids 0, 1, 2, … to the terminal
//! frame. "The engine's text" is the text the same greedy request returns on a run without a
//! failover. Failover times are printed, never asserted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use api::events::Event;
use api::task::{TaskRequest, TaskState};
use api::{ErrorCode, TaskId};
use llorch::stack::{HaSpec, Stack};
use nix::sys::signal::Signal;

use crate::fixtures::{log_lines, wait_for, Assets};

/// How long any one scenario step may take before the scenario fails (a deadline, not a timing
/// assertion: the machines are shared).
const DEADLINE: Duration = Duration::from_secs(240);

/// `LLORCH_TEST_PG_URL` (scripts/test.sh exports it through `ensure_postgres`).
fn pg_url() -> anyhow::Result<String> {
    std::env::var("LLORCH_TEST_PG_URL").map_err(|_| {
        anyhow::anyhow!(
            "LLORCH_TEST_PG_URL is unset: the HA scenarios need Postgres \
             (scripts/test.sh sets it up; by hand: source scripts/lib.sh && ensure_postgres)"
        )
    })
}

/// Two orchestratord on a fresh database and one pool of `slots` slots, Ready.
async fn ha_stack(
    a: &Assets,
    scenario: &str,
    slots: u32,
    orchd_extra: &str,
    pm_extra: &str,
) -> anyhow::Result<Stack> {
    let mut spec = a.spec(scenario)?;
    spec.slots = slots;
    spec.ctx = 512;
    if scenario == "ha-outage" {
        // The long task must still be generating when the grace ends: a long context, one thread.
        spec.ctx = 2048;
        spec.threads = Some(1);
    }
    spec.heartbeat_interval_ms = 500;
    spec.heartbeat_timeout_ms = 5000;
    spec.orchd_extra = orchd_extra.into();
    spec.pm_extra = pm_extra.into();
    spec.ha = Some(HaSpec::fresh(&pg_url()?, 2)?);
    a.stack(spec).await
}

/// A client of the whole group (both URLs) that waits out a failover for up to `DEADLINE`.
fn group_client(stack: &Stack) -> anyhow::Result<client::Client> {
    Ok(client::Client::new(&stack.orchd_url, None)?.with_failover_timeout(DEADLINE))
}

/// A greedy completion that counts on from `start`: its continuation does not depend on how the
/// engine batches it with other requests, so a rerun gives the same text.
fn counting(model: &str, start: u64, max_tokens: u64) -> TaskRequest {
    let mut req = TaskRequest::new(model);
    req.prompt = Some(
        (start..start + 4)
            .map(|k| format!("{k}, "))
            .collect::<String>()
            .trim_end()
            .to_string(),
    );
    req.max_tokens = Some(max_tokens);
    req.temperature = Some(0.0);
    req.seed = Some(1);
    req
}

/// What a client read from one task's stream across failovers.
struct Read {
    task_id: TaskId,
    frames: Vec<(Option<u64>, Event, Instant)>,
    reconnects: u32,
    /// An error the SDK gave instead of a frame (the stream is over after it).
    error: Option<String>,
}

impl Read {
    /// The frame ids are 0, 1, 2, … with no gap and no repeat, and the last frame is terminal.
    fn gap_free(&self) -> anyhow::Result<()> {
        let ids: Vec<Option<u64>> = self.frames.iter().map(|f| f.0).collect();
        ensure!(
            ids.iter().enumerate().all(|(k, id)| *id == Some(k as u64)),
            "task {}: frame ids {ids:?} are not 0..{} (after {} reconnects)",
            self.task_id,
            ids.len(),
            self.reconnects
        );
        ensure!(
            self.frames.last().is_some_and(|f| f.1.is_terminal()),
            "task {}: no terminal frame (error {:?}, last {:?})",
            self.task_id,
            self.error,
            self.frames.last().map(|f| &f.1)
        );
        Ok(())
    }

    /// The text of an `end` (not canceled) stream whose token indices are 0, 1, 2, ….
    fn text(&self) -> anyhow::Result<String> {
        self.gap_free()?;
        let Some((_, Event::End(end), _)) = self.frames.last() else {
            bail!(
                "task {}: ended with {:?}",
                self.task_id,
                self.frames.last().map(|f| &f.1)
            );
        };
        ensure!(!end.canceled, "task {} was canceled: {end:?}", self.task_id);
        let tokens: Vec<&api::events::Token> = self
            .frames
            .iter()
            .filter_map(|f| match &f.1 {
                Event::Token(t) => Some(t),
                _ => None,
            })
            .collect();
        ensure!(
            !tokens.is_empty() && tokens.iter().enumerate().all(|(k, t)| t.i == k as u64),
            "task {}: token indices {:?}",
            self.task_id,
            tokens.iter().map(|t| t.i).collect::<Vec<_>>()
        );
        Ok(tokens.iter().map(|t| t.t.as_str()).collect())
    }

    /// When the first frame after `t` arrived.
    fn first_after(&self, t: Instant) -> Option<Instant> {
        self.frames.iter().map(|f| f.2).find(|at| *at > t)
    }
}

/// Reads task `task_id`'s verbose stream `path` to its end, across failovers; `progress` gets the
/// number of token frames read so far after each one.
async fn read_all(
    client: &client::Client,
    task_id: TaskId,
    path: &str,
    progress: impl Fn(usize),
) -> Read {
    let mut s = client.follow(path);
    let mut r = Read {
        task_id,
        frames: vec![],
        reconnects: 0,
        error: None,
    };
    let mut tokens = 0;
    loop {
        match tokio::time::timeout(DEADLINE, s.next()).await {
            Err(_) => {
                r.error = Some(format!("no frame within {DEADLINE:?}"));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                r.error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(f))) => {
                if matches!(f.event, Event::Token(_)) {
                    tokens += 1;
                    progress(tokens);
                }
                r.frames.push((f.id, f.event, Instant::now()));
            }
        }
    }
    r.reconnects = s.reconnects();
    r
}

/// Submits each request and reads its stream to the end in a task of its own; returns once one
/// stream has `tokens` token frames (the moment to break something), with the readers.
async fn start_readers(
    client: &client::Client,
    reqs: &[TaskRequest],
    tokens: usize,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<Read>>> {
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut readers = vec![];
    for req in reqs {
        let adm = client.submit(req).await?.body;
        let (client, started) = (client.clone(), started.clone());
        readers.push(tokio::spawn(async move {
            read_all(&client, adm.task_id, &adm.streams.sse_verbose, |n| {
                if n == tokens {
                    started.notify_one();
                }
            })
            .await
        }));
    }
    tokio::time::timeout(DEADLINE, started.notified())
        .await
        .with_context(|| format!("no stream reached {tokens} tokens"))?;
    Ok(readers)
}

/// Submits `req` and reads its verbose stream to the end (no failover expected): the reference.
async fn reference(client: &client::Client, req: &TaskRequest) -> anyhow::Result<String> {
    let adm = client.submit(req).await?.body;
    read_all(client, adm.task_id, &adm.streams.sse_verbose, |_| {})
        .await
        .text()
}

/// How many times each task was sent to the engine (pool-managerd's `engine.request` lines).
fn engine_runs(stack: &Stack) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for l in log_lines(&stack.pm_log) {
        if l["event"] == "engine.request" {
            if let Some(t) = l["task_id"].as_str() {
                *runs.entry(t.to_string()).or_insert(0) += 1;
            }
        }
    }
    runs
}

/// The leader, and how long after `since` it was found.
async fn new_leader(stack: &Stack, since: Instant) -> anyhow::Result<(usize, Duration)> {
    let i = stack.leader(DEADLINE).await?;
    Ok((i, since.elapsed()))
}

fn median_ms(mut v: Vec<Duration>) -> u128 {
    v.sort();
    v.get(v.len() / 2).map(|d| d.as_millis()).unwrap_or(0)
}

/// 1. Leader killed mid-stream: 20 streams on 4 slots; `kill -9` of the leader once the first has
///    tokens. Every client reaches its terminal frame with gap-free, duplicate-free ids, and each
///    text is what the same request returns without a failover.
pub async fn leader_killed_mid_stream(a: Assets) -> anyhow::Result<()> {
    let mut stack = ha_stack(&a, "ha-kill", 4, "", "").await?;
    let result = async {
        let client = group_client(&stack)?;
        let model = stack.spec.model_id.clone();
        let leader = stack.leader(DEADLINE).await?;
        let reqs: Vec<TaskRequest> = (0..20).map(|s| counting(&model, 10 * s + 1, 24)).collect();
        let readers = start_readers(&client, &reqs, 3).await?;
        let killed = Instant::now();
        stack.kill_replica(leader).await?;
        let (now, took) = new_leader(&stack, killed).await?;
        ensure!(now != leader, "the killed replica still leads");
        let mut reads = vec![];
        for r in readers {
            reads.push(r.await?);
        }
        let mut firsts = vec![];
        for (r, req) in reads.iter().zip(&reqs) {
            let text = r.text()?;
            let want = reference(&client, req).await?;
            ensure!(
                text == want,
                "task {}: across the failover the client got {text:?}, without one {want:?}",
                r.task_id
            );
            if let Some(t) = r.first_after(killed) {
                firsts.push(t - killed);
            }
        }
        ensure!(
            reads.iter().any(|r| r.reconnects > 0),
            "no stream was broken by the kill"
        );
        println!(
            "  [ha] kill -9 → new leader found after {} ms; first frame from it after {} ms (median over {} streams)",
            took.as_millis(),
            median_ms(firsts.clone()),
            firsts.len()
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// 2. The queue survives: 100 short tasks on 2 slots, `kill -9` of the leader midway. All 100
///    complete, and each task id was sent to the engine exactly once.
pub async fn queue_survives(a: Assets) -> anyhow::Result<()> {
    let mut stack = ha_stack(&a, "ha-queue", 2, "[queue]\ncapacity = 200\n", "").await?;
    let result = async {
        let client = group_client(&stack)?;
        let model = stack.spec.model_id.clone();
        let leader = stack.leader(DEADLINE).await?;
        let mut ids = vec![];
        for k in 0..100u64 {
            ids.push(
                client
                    .submit(&counting(&model, k + 1, 3))
                    .await?
                    .body
                    .task_id,
            );
        }
        // Midway: the 30th task has finished (the queue is served in order).
        let c30 = client.clone();
        let id30 = ids[29];
        wait_for("the 30th task to finish", DEADLINE, || {
            let c = c30.clone();
            async move {
                c.task(id30)
                    .await
                    .ok()
                    .filter(|r| r.body.state.is_terminal())
                    .map(|_| ())
            }
        })
        .await?;
        let killed = Instant::now();
        stack.kill_replica(leader).await?;
        let (_, took) = new_leader(&stack, killed).await?;
        let mut states = HashMap::new();
        for id in &ids {
            let rec = wait_finished_long(&client, *id).await?;
            *states.entry(format!("{:?}", rec.state)).or_insert(0) += 1;
            ensure!(rec.state == TaskState::Completed, "task {id}: {rec:?}");
        }
        let pm = log_lines(&stack.pm_log);
        for id in &ids {
            let ended = pm
                .iter()
                .filter(|l| {
                    l["event"] == "engine.finished" && l["task_id"] == id.to_string().as_str()
                })
                .count();
            ensure!(ended == 1, "task {id} ended {ended} times on the engine");
        }
        let runs = engine_runs(&stack);
        let twice: Vec<(&String, &usize)> = runs.iter().filter(|(_, n)| **n != 1).collect();
        ensure!(
            twice.is_empty(),
            "tasks sent to the engine more than once: {twice:?}"
        );
        for id in &ids {
            ensure!(
                runs.get(&id.to_string()) == Some(&1),
                "task {id} never reached the engine"
            );
        }
        println!(
            "  [ha] kill -9 with a queue of 100: new leader after {} ms; {states:?}",
            took.as_millis()
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// Waits (up to `DEADLINE`: a queue of 100 on a shared CPU takes a while) until task `id` is
/// terminal; a failure names the last answer (a 404 means the record is gone).
async fn wait_finished_long(
    client: &client::Client,
    id: TaskId,
) -> anyhow::Result<api::task::TaskRecord> {
    let last = std::sync::Mutex::new(String::new());
    let r = wait_for(&format!("task {id} to finish"), DEADLINE, || async {
        match client.task(id).await {
            Ok(r) if r.body.state.is_terminal() => Some(r.body),
            Ok(r) => {
                *last.lock().unwrap_or_else(|e| e.into_inner()) = format!("{:?}", r.body.state);
                None
            }
            Err(e) => {
                *last.lock().unwrap_or_else(|e| e.into_inner()) = e.to_string();
                None
            }
        }
    })
    .await;
    r.with_context(|| {
        format!(
            "last answer: {}",
            last.lock().unwrap_or_else(|e| e.into_inner())
        )
    })
}

/// 3. Idempotent submit: the same `Idempotency-Key` sent again after a failover answers with the
///    task the first submit created, and that task runs once.
pub async fn idempotent_submit_across_failover(a: Assets) -> anyhow::Result<()> {
    let mut stack = ha_stack(&a, "ha-idem", 1, "", "").await?;
    let result = async {
        let client = group_client(&stack)?;
        let req = counting(&stack.spec.model_id, 7, 8);
        let key = format!("retry-{}", uuid::Uuid::new_v4());
        let leader = stack.leader(DEADLINE).await?;
        let first = client.submit_idempotent(&req, &key).await?;
        ensure!(first.status == 202, "first submit: {}", first.status);
        stack.kill_replica(leader).await?;
        let again = client.submit_idempotent(&req, &key).await?;
        ensure!(again.status == 202, "retried submit: {}", again.status);
        ensure!(
            again.body.task_id == first.body.task_id,
            "the retry created task {} besides {}",
            again.body.task_id,
            first.body.task_id
        );
        let rec = wait_finished_long(&client, first.body.task_id).await?;
        ensure!(rec.state == TaskState::Completed, "{rec:?}");
        // A different key is a different task.
        let other = client
            .submit_idempotent(&req, &format!("other-{}", uuid::Uuid::new_v4()))
            .await?;
        ensure!(
            other.body.task_id != first.body.task_id,
            "a new key reused the task"
        );
        wait_finished_long(&client, other.body.task_id).await?;
        let runs = engine_runs(&stack);
        ensure!(
            runs.get(&first.body.task_id.to_string()) == Some(&1) && runs.len() == 2,
            "engine runs per task: {runs:?}"
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// 4. Fencing: the leader is paused (SIGSTOP) with a task running and two queued until the
///    standby takes over, then continued. The old leader steps down (exit status 3, `ha.stepped_down`),
///    every task completes through the new leader, and none ran twice on the engine.
pub async fn paused_leader_is_fenced(a: Assets) -> anyhow::Result<()> {
    let mut stack = ha_stack(&a, "ha-fence", 1, "", "").await?;
    let result = async {
        let client = group_client(&stack)?;
        let model = stack.spec.model_id.clone();
        let old = stack.leader(DEADLINE).await?;
        let reqs: Vec<TaskRequest> = (0..3).map(|s| counting(&model, 100 * s + 1, 16)).collect();
        let readers = start_readers(&client, &reqs, 2).await?;
        let paused = Instant::now();
        stack.signal_replica(old, Signal::SIGSTOP)?;
        let (now, took) = new_leader(&stack, paused).await?;
        ensure!(now != old, "the paused replica still leads");
        stack.signal_replica(old, Signal::SIGCONT)?;
        let status = stack.wait_replica_exit(old, DEADLINE).await?;
        ensure!(
            status.code() == Some(3),
            "the old leader exited with {status}, not 3 (stepped down)"
        );
        ensure!(
            log_lines(&stack.replicas[old].log)
                .iter()
                .any(|l| l["event"] == "ha.stepped_down"),
            "no ha.stepped_down in the old leader's log"
        );
        let mut reads = vec![];
        for r in readers {
            reads.push(r.await?);
        }
        for (r, req) in reads.iter().zip(&reqs) {
            let text = r.text()?;
            let want = reference(&client, req).await?;
            ensure!(text == want, "task {}: {text:?} versus {want:?}", r.task_id);
        }
        let runs = engine_runs(&stack);
        let twice: Vec<(&String, &usize)> = runs.iter().filter(|(_, n)| **n != 1).collect();
        ensure!(twice.is_empty(), "tasks sent to the engine more than once: {twice:?}");
        let stale = log_lines(&stack.pm_log)
            .iter()
            .filter(|l| l.to_string().contains("STALE_EPOCH"))
            .count();
        println!(
            "  [ha] SIGSTOP → standby leads after {} ms; the old leader stepped down; {stale} stale-epoch refusals logged by the worker",
            took.as_millis()
        );
        // The stepped-down replica comes back as a follower (as llorch up restarts it).
        stack.start_replica(old).await?;
        ensure!(stack.replica_is_leader(old).await == Some(false), "the restarted replica leads");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// 5. Full outage: both orchestratord killed for 10 s, then started. A task that finished on the
///    worker meanwhile reads to its `end` (gap-free, the engine's text); a task still generating
///    past the worker's grace (5 s here) was canceled there and its client gets a typed
///    `WORKER_RESET` error.
pub async fn full_outage(a: Assets) -> anyhow::Result<()> {
    let mut stack = ha_stack(
        &a,
        "ha-outage",
        2,
        "",
        "[worker]\ndispatch_grace_ms = 5000\n",
    )
    .await?;
    let result = async {
        let client = group_client(&stack)?;
        let model = stack.spec.model_id.clone();
        let short = counting(&model, 5, 40);
        let long = counting(&model, 1, 1900);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut readers = vec![];
        for req in [&short, &long] {
            let adm = client.submit(req).await?.body;
            let (client, tx) = (client.clone(), tx.clone());
            readers.push(tokio::spawn(async move {
                read_all(&client, adm.task_id, &adm.streams.sse_verbose, |n| {
                    if n == 1 {
                        let _ = tx.send(());
                    }
                })
                .await
            }));
        }
        // Both are generating: the short one finishes within the grace, the long one does not.
        for _ in 0..2 {
            tokio::time::timeout(DEADLINE, rx.recv())
                .await
                .context("a stream did not reach its first token")?;
        }
        for i in 0..stack.replicas.len() {
            stack.kill_replica(i).await?;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let back = Instant::now();
        for i in 0..stack.replicas.len() {
            stack.start_replica(i).await?;
        }
        let (_, took) = new_leader(&stack, back).await?;
        let mut reads = vec![];
        for r in readers {
            reads.push(r.await?);
        }
        let text = reads[0].text()?;
        let want = reference(&client, &short).await?;
        ensure!(
            text == want,
            "the short task read {text:?}, without an outage {want:?}"
        );
        let rec = client.task(reads[0].task_id).await?.body;
        ensure!(rec.state == TaskState::Completed, "short task: {rec:?}");
        let long_read = &reads[1];
        long_read.gap_free()?;
        let Some((_, Event::Error(e), _)) = long_read.frames.last() else {
            bail!(
                "the long task past the grace ended with {:?} (error {:?})",
                long_read.frames.last().map(|f| &f.1),
                long_read.error
            );
        };
        ensure!(e.code == ErrorCode::WorkerReset && !e.retriable, "{e:?}");
        let rec = client.task(long_read.task_id).await?.body;
        ensure!(
            rec.state.is_terminal()
                && rec
                    .error
                    .as_ref()
                    .is_some_and(|e| e.code == ErrorCode::WorkerReset),
            "long task: {rec:?}"
        );
        // The worker canceled it: its slot is free again, a new task runs.
        let again = reference(&client, &short).await?;
        ensure!(again == want, "after the outage: {again:?}");
        println!(
            "  [ha] both down 10 s: a leader {} ms after the restart",
            took.as_millis()
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// 6. Planned failover: SIGTERM on the leader with 4 streams running releases the lock at once;
///    the clients read every stream to `end` without an error, and the old leader exits 0.
pub async fn planned_failover(a: Assets) -> anyhow::Result<()> {
    let mut stack = ha_stack(&a, "ha-planned", 2, "", "").await?;
    let result = async {
        let client = group_client(&stack)?;
        let model = stack.spec.model_id.clone();
        let old = stack.leader(DEADLINE).await?;
        let reqs: Vec<TaskRequest> = (0..4).map(|s| counting(&model, 50 * s + 3, 20)).collect();
        let readers = start_readers(&client, &reqs, 2).await?;
        let term = Instant::now();
        let status = stack.terminate_replica(old).await?;
        ensure!(status.success(), "the old leader exited with {status}");
        let (_, took) = new_leader(&stack, term).await?;
        for (r, req) in readers.into_iter().zip(&reqs) {
            let r = r.await?;
            ensure!(
                r.error.is_none(),
                "task {}: the client saw {:?}",
                r.task_id,
                r.error
            );
            ensure!(
                !r.frames.iter().any(|f| matches!(f.1, Event::Error(_))),
                "task {}: an error frame",
                r.task_id
            );
            let text = r.text()?;
            let want = reference(&client, req).await?;
            ensure!(text == want, "task {}: {text:?} versus {want:?}", r.task_id);
        }
        println!("  [ha] SIGTERM → new leader after {} ms", took.as_millis());
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// 7. Catalog: entries registered and retired before a failover are there after it, unchanged,
///    and still act (a retired model refuses tasks; the served one serves).
pub async fn catalog_survives(a: Assets) -> anyhow::Result<()> {
    let mut stack = ha_stack(&a, "ha-catalog", 1, "", "").await?;
    let result = async {
        let client = group_client(&stack)?;
        let leader = stack.leader(DEADLINE).await?;
        let (kept, _) = client
            .register_model(&api::catalog::RegisterModel {
                id: Some("kept-model".parse().context("model id")?),
                model_ref: "file:/nonexistent/kept.gguf".into(),
                digest: Some(format!("sha256:{}", "ab".repeat(32))),
            })
            .await?;
        let (retired, _) = client
            .register_model(&api::catalog::RegisterModel {
                id: Some("retired-model".parse().context("model id")?),
                model_ref: "file:/nonexistent/retired.gguf".into(),
                digest: None,
            })
            .await?;
        client
            .set_model_state(retired.id.as_str(), api::catalog::ModelState::Retired)
            .await?;
        let key = |m: &api::catalog::ModelRecord| {
            (
                m.id.to_string(),
                m.model_ref.clone(),
                m.digest.clone(),
                m.state,
            )
        };
        let mut before: Vec<_> = client.models().await?.models.iter().map(key).collect();
        before.sort_by(|a, b| a.0.cmp(&b.0));
        stack.kill_replica(leader).await?;
        stack.leader(DEADLINE).await?;
        let mut after: Vec<_> = client.models().await?.models.iter().map(key).collect();
        after.sort_by(|a, b| a.0.cmp(&b.0));
        ensure!(
            before == after,
            "catalog before {before:?}, after {after:?}"
        );
        ensure!(after.iter().any(|m| m.0 == kept.id.as_str()), "{after:?}");
        let e = client
            .submit(&counting("retired-model", 1, 4))
            .await
            .err()
            .context("a retired model took a task after the failover")?;
        ensure!(
            e.envelope()
                .is_some_and(|e| e.code == ErrorCode::ModelDeprecated),
            "{e}"
        );
        reference(&client, &counting(&stack.spec.model_id, 3, 6)).await?;
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
