//! The e2e haiku check (API.md §19): a real task through a live cluster, checked for streaming,
//! correlation, metrics, logs and run-time generation, with a run folder as evidence.

pub mod checks;
pub mod grammar;
pub mod prom;
pub mod validate;
pub mod words;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use api::task::{Priority, TaskRequest};
use api::{SessionId, TaskId};
use client::Client;
use serde_json::{json, Value};

pub use checks::Evidence;

#[derive(Debug, Clone)]
pub struct HaikuOptions {
    pub base_url: String,
    pub token: Option<String>,
    /// The pool's model id.
    pub model: String,
    /// The run folder goes to `<out_dir>/e2e-haiku/<run_id>/`.
    pub out_dir: PathBuf,
    /// JSON log files of both daemons (filtered by correlation id into `logs.jsonl`).
    pub log_files: Vec<PathBuf>,
    pub seed: u64,
}

#[derive(Debug)]
pub struct HaikuReport {
    pub run_dir: PathBuf,
    pub passed: bool,
    pub text: String,
    pub verification: Value,
}

/// The files one attempt writes into the run folder (a discarded attempt's go to `attempt-1/`).
pub const ATTEMPT_FILES: [&str; 6] = [
    "request.json",
    "admission.json",
    "sse_transcript.jsonl",
    "metrics_before.txt",
    "metrics_after.txt",
    "logs.jsonl",
];

/// How long the stream may stay open after its terminal frame before the check stops reading
/// (the server closes it at once; §5.3).
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Runs the check, retrying once when the minute changes during the run (step 7).
pub async fn run(
    opts: &HaikuOptions,
    on_token: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<HaikuReport> {
    let run_id = format!(
        "{}-{}",
        utc_compact(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let run_dir = opts.out_dir.join("e2e-haiku").join(&run_id);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    for attempt in 1..=2u32 {
        let mut ev = attempt_once(opts, &run_dir, on_token).await?;
        // Step 7: the minute when `end` arrived (None: it never did, which the checks report).
        let changed = ev.minute_at_end.is_some_and(|m| m != ev.minute);
        if changed && attempt == 1 {
            // Keep the discarded attempt's files under attempt-1/ and run again with fresh ids.
            let keep = run_dir.join("attempt-1");
            std::fs::create_dir_all(&keep)?;
            for f in ATTEMPT_FILES {
                std::fs::rename(run_dir.join(f), keep.join(f))
                    .with_context(|| format!("keeping the discarded attempt's {f}"))?;
            }
            continue;
        }
        ev.minute_changed = changed;
        let verification = checks::verify(&ev, &run_id, attempt, opts).await;
        write_json(&run_dir.join("verification.json"), &verification)?;
        let passed = verification["result"] == "pass";
        return Ok(HaikuReport {
            run_dir,
            passed,
            text: ev.text.clone(),
            verification,
        });
    }
    unreachable!("the loop returns on the second attempt")
}

async fn attempt_once(
    opts: &HaikuOptions,
    dir: &Path,
    on_token: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<Evidence> {
    let cid = uuid::Uuid::new_v4().to_string();
    let task_id = TaskId::new();
    let session_id = SessionId::new();
    let client = Client::new(&opts.base_url, opts.token.clone())?.with_correlation_id(&cid);
    let mut ev = Evidence::new(cid.clone(), task_id);
    let before = client
        .metrics_text()
        .await
        .context("scraping /metrics before the task")?;
    ev.note_headers(&before.headers);
    std::fs::write(dir.join("metrics_before.txt"), &before.body)?;
    ev.metrics_before = before.body;

    ev.minute = utc_minute();
    ev.word = words::minute_word(ev.minute).context("minute out of range")?;
    let mut req = TaskRequest::new(&opts.model);
    req.task_id = Some(task_id);
    req.session_id = Some(session_id);
    req.messages = Some(vec![api::task::Message::text(
        api::task::Role::User,
        words::prompt_for(&ev.word),
    )]);
    req.grammar = Some(grammar::haiku_grammar(&ev.word));
    req.temperature = Some(0.0);
    req.seed = Some(opts.seed);
    req.max_tokens = Some(160);
    req.deadline_ms = Some(30_000);
    req.priority = Priority::Interactive;
    write_json(&dir.join("request.json"), &serde_json::to_value(&req)?)?;

    let posted = Instant::now();
    let adm = client.submit(&req).await.context("POST /v2/tasks")?;
    ev.note_headers(&adm.headers);
    let headers: serde_json::Map<String, Value> = adm
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    write_json(
        &dir.join("admission.json"),
        &json!({ "status": adm.status, "headers": headers, "body": adm.body }),
    )?;
    ev.admission_status = adm.status;
    ev.admission_location = adm
        .headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    ev.session_id = Some(session_id);
    ev.admission = Some(adm.body.clone());
    let path = if adm.body.preparation.steps.is_empty() {
        adm.body.streams.sse.clone()
    } else {
        adm.body.streams.sse_verbose.clone()
    };

    let mut stream = client
        .events(&path)
        .await
        .context("opening the event stream")?;
    ev.note_headers(stream.headers());
    let mut transcript = String::new();
    let deadline = posted + Duration::from_secs(60);
    let mut close_by = deadline;
    loop {
        let next = tokio::time::timeout_at(close_by.into(), stream.next()).await;
        let frame = match next {
            Ok(Some(frame)) => frame?,
            Ok(None) => {
                ev.closed = true;
                break;
            }
            // The deadline passed: before `end` the checks report no `end`; after it, an open stream.
            Err(_) => break,
        };
        let line = json!({ "ts": now_rfc3339(), "id": frame.id.map(|i| i.to_string()).unwrap_or_default(), "event": frame.name, "data": serde_json::from_str::<Value>(&frame.data).unwrap_or(Value::Null) });
        transcript.push_str(&line.to_string());
        transcript.push('\n');
        if ev.terminal_seen {
            // Nothing may follow the terminal frame (§5.3); keep reading to see whether anything does.
            ev.after_terminal.push(frame);
            continue;
        }
        if let api::events::Event::Token(t) = &frame.event {
            on_token(&t.t);
        }
        if frame.event.is_terminal() {
            ev.terminal_seen = true;
            ev.elapsed = posted.elapsed();
            if matches!(frame.event, api::events::Event::End(_)) {
                ev.minute_at_end = Some(utc_minute());
            }
            close_by = Instant::now() + CLOSE_WAIT;
        }
        ev.frames.push(frame);
    }
    if !ev.terminal_seen {
        ev.elapsed = posted.elapsed();
    }
    std::fs::write(dir.join("sse_transcript.jsonl"), transcript)?;

    let after = client
        .metrics_text()
        .await
        .context("scraping /metrics after the task")?;
    ev.note_headers(&after.headers);
    std::fs::write(dir.join("metrics_after.txt"), &after.body)?;
    ev.metrics_after = after.body;
    for _ in 0..2 {
        let again = client
            .metrics_text()
            .await
            .context("re-scraping /metrics")?;
        ev.note_headers(&again.headers);
        ev.metrics_rescrapes.push(again.body);
    }
    let record = client.task(task_id).await.context("GET /v2/tasks/{id}")?;
    ev.note_headers(&record.headers);
    ev.record = Some(record.body);
    ev.text = ev
        .frames
        .iter()
        .filter_map(|f| {
            if let api::events::Event::Token(t) = &f.event {
                Some(t.t.as_str())
            } else {
                None
            }
        })
        .collect();
    ev.logs = checks::collect_logs(&opts.log_files, &cid, task_id).await;
    let mut lines = String::new();
    for l in &ev.logs {
        lines.push_str(&l.to_string());
        lines.push('\n');
    }
    std::fs::write(dir.join("logs.jsonl"), lines)?;
    Ok(ev)
}

fn write_json(path: &Path, v: &Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn utc_minute() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((secs / 60) % 60) as u32
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// `YYYYMMDDTHHMMSSZ`.
fn utc_compact() -> String {
    let s = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    s.replace(['-', ':'], "")
}
