//! The haiku check's verdicts (API.md §19, step 9): every check of the table, computed from the
//! evidence one attempt collected.

use std::path::PathBuf;
use std::time::Duration;

use api::events::Event;
use api::task::{AdmissionResponse, TaskRecord, TaskState};
use api::{SessionId, TaskId};
use client::Frame;
use serde_json::{json, Map, Value};

use super::{prom, validate, HaikuOptions};

/// What one attempt saw.
pub struct Evidence {
    pub correlation_id: String,
    pub task_id: TaskId,
    pub session_id: Option<SessionId>,
    /// The UTC minute just before the POST (step 3).
    pub minute: u32,
    /// The UTC minute when `end` arrived (step 7); None when it never did.
    pub minute_at_end: Option<u32>,
    pub word: String,
    pub minute_changed: bool,
    pub admission_status: u16,
    /// The 202's `Location` header.
    pub admission_location: Option<String>,
    pub admission: Option<AdmissionResponse>,
    /// Frames up to and including the terminal one.
    pub frames: Vec<Frame>,
    /// Whether a terminal frame arrived.
    pub terminal_seen: bool,
    /// Frames that arrived after the terminal one (there must be none).
    pub after_terminal: Vec<Frame>,
    /// Whether the server closed the stream (after the terminal frame, within the bound).
    pub closed: bool,
    /// POST → terminal frame (or → giving up when none came).
    pub text: String,
    pub elapsed: Duration,
    pub metrics_before: String,
    pub metrics_after: String,
    pub metrics_rescrapes: Vec<String>,
    pub record: Option<TaskRecord>,
    pub logs: Vec<Value>,
    /// Correlation ids seen on responses (None = a response without one).
    pub seen_correlation: Vec<Option<String>>,
}

impl Evidence {
    pub fn new(correlation_id: String, task_id: TaskId) -> Self {
        Self {
            correlation_id,
            task_id,
            session_id: None,
            minute: 0,
            minute_at_end: None,
            word: String::new(),
            minute_changed: false,
            admission_status: 0,
            admission_location: None,
            admission: None,
            frames: vec![],
            terminal_seen: false,
            after_terminal: vec![],
            closed: false,
            text: String::new(),
            elapsed: Duration::ZERO,
            metrics_before: String::new(),
            metrics_after: String::new(),
            metrics_rescrapes: vec![],
            record: None,
            logs: vec![],
            seen_correlation: vec![],
        }
    }

    pub fn note_headers(&mut self, h: &reqwest::header::HeaderMap) {
        self.seen_correlation.push(
            h.get(api::CORRELATION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
    }
}

fn check(pass: bool, detail: impl Into<String>) -> Value {
    json!({ "pass": pass, "detail": detail.into() })
}

pub async fn verify(ev: &Evidence, run_id: &str, attempt: u32, _opts: &HaikuOptions) -> Value {
    let mut checks = Map::new();
    checks.insert("admission".into(), admission(ev));
    checks.insert("order".into(), order(ev));
    checks.insert("engine".into(), engine(ev));
    checks.insert("indices".into(), indices(ev));
    let (ok, detail) = validate::check_word(&ev.text, &ev.word);
    checks.insert("word".into(), check(ok, detail));
    let (ok, detail) = validate::check_shape(&ev.text);
    checks.insert("shape".into(), check(ok, detail));
    checks.insert("end".into(), end(ev));
    checks.insert("metrics".into(), metrics(ev));
    let missing = ev
        .seen_correlation
        .iter()
        .filter(|c| c.as_deref() != Some(ev.correlation_id.as_str()))
        .count();
    checks.insert(
        "correlation".into(),
        check(
            missing == 0,
            format!(
                "{} responses, {missing} without X-Correlation-Id {}",
                ev.seen_correlation.len(),
                ev.correlation_id
            ),
        ),
    );
    checks.insert("logs".into(), logs(ev));
    checks.insert("record".into(), record(ev));
    let secs = ev.elapsed.as_secs_f64();
    checks.insert(
        "time".into(),
        check(
            secs <= 30.0 && !ev.minute_changed,
            format!(
                "POST to end in {secs:.2} s; minute changed: {}",
                ev.minute_changed
            ),
        ),
    );
    let all = checks.values().all(|c| c["pass"] == true);
    json!({
        "run_id": run_id,
        "attempt": attempt,
        "minute": ev.minute,
        "word": ev.word,
        "correlation_id": ev.correlation_id,
        "task_id": ev.task_id.to_string(),
        "text": ev.text,
        "checks": checks,
        "result": if all { "pass" } else { "fail" },
    })
}

/// Step 4: the POST answered 202 with the body of §4.1 for this task and session.
fn admission(ev: &Evidence) -> Value {
    let Some(a) = &ev.admission else {
        return check(
            false,
            format!("status {}, no admission body", ev.admission_status),
        );
    };
    let t = ev.task_id;
    let problems: Vec<String> = [
        (ev.admission_status == 202)
            .then_some(())
            .ok_or(format!("status {}", ev.admission_status)),
        (a.task_id == t)
            .then_some(())
            .ok_or(format!("task_id {}", a.task_id)),
        (Some(a.session_id) == ev.session_id)
            .then_some(())
            .ok_or(format!("session_id {}", a.session_id)),
        (a.backoff_ms == 0)
            .then_some(())
            .ok_or(format!("backoff_ms {}", a.backoff_ms)),
        (a.streams.sse == format!("/v2/tasks/{t}/events"))
            .then_some(())
            .ok_or(format!("streams.sse {}", a.streams.sse)),
        (a.streams.sse_verbose == format!("/v2/tasks/{t}/events?verbose=true"))
            .then_some(())
            .ok_or(format!("streams.sse_verbose {}", a.streams.sse_verbose)),
        (ev.admission_location.as_deref() == Some(format!("/v2/tasks/{t}").as_str()))
            .then_some(())
            .ok_or(format!("Location {:?}", ev.admission_location)),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    check(
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "202, task_id and session_id as sent, queue_position {}, predicted_start_ms {}, backoff_ms 0, streams and Location for the task, {} preparation steps",
                a.queue_position,
                a.predicted_start_ms,
                a.preparation.steps.len()
            )
        } else {
            format!("wrong: {}", problems.join("; "))
        },
    )
}

fn order(ev: &Evidence) -> Value {
    let names: Vec<&str> = ev.frames.iter().map(|f| f.name.as_str()).collect();
    let started_first = names.first() == Some(&"started");
    let ends = names.last() == Some(&"end");
    let middle = &names[names.len().min(1)..names.len().saturating_sub(1)];
    let tokens = middle.iter().filter(|n| **n == "token").count();
    let only_tokens_metrics = middle.iter().all(|n| *n == "token" || *n == "metrics");
    let after: Vec<&str> = ev.after_terminal.iter().map(|f| f.name.as_str()).collect();
    let pass = started_first
        && ends
        && tokens >= 1
        && only_tokens_metrics
        && after.is_empty()
        && ev.closed;
    check(
        pass,
        format!(
            "{} frames: started first {started_first}, {tokens} tokens, ends with end {ends}; after it {after:?}, stream closed by the server {}",
            names.len(),
            ev.closed
        ),
    )
}

fn started(ev: &Evidence) -> Option<&api::events::Started> {
    ev.frames.iter().find_map(|f| {
        if let Event::Started(s) = &f.event {
            Some(s)
        } else {
            None
        }
    })
}

fn end_frame(ev: &Evidence) -> Option<&api::events::End> {
    ev.frames.iter().find_map(|f| {
        if let Event::End(e) = &f.event {
            Some(e)
        } else {
            None
        }
    })
}

fn engine(ev: &Evidence) -> Value {
    let Some(s) = started(ev) else {
        return check(false, "no started frame");
    };
    let version = s.engine_version.clone().unwrap_or_default();
    let lower = version.to_lowercase();
    let pass = s.engine == api::ENGINE_LLAMACPP
        && !version.is_empty()
        && !s.pool_id.as_str().is_empty()
        && !s.node_id.as_str().is_empty()
        && !lower.contains("mock")
        && !lower.contains("stub")
        && !lower.contains("fake");
    check(
        pass,
        format!(
            "engine {} {version} on pool {} node {}",
            s.engine, s.pool_id, s.node_id
        ),
    )
}

fn indices(ev: &Evidence) -> Value {
    let is: Vec<u64> = ev
        .frames
        .iter()
        .filter_map(|f| {
            if let Event::Token(t) = &f.event {
                Some(t.i)
            } else {
                None
            }
        })
        .collect();
    let pass = is.iter().enumerate().all(|(k, i)| *i == k as u64);
    check(
        pass,
        format!(
            "{} token frames, indices contiguous from 0: {pass}",
            is.len()
        ),
    )
}

fn end(ev: &Evidence) -> Value {
    let Some(e) = end_frame(ev) else {
        return check(false, "no end frame");
    };
    let tokens = ev
        .frames
        .iter()
        .filter(|f| matches!(f.event, Event::Token(_)))
        .count() as u64;
    let pass = e.stop_reason == api::events::StopReason::Eos
        && !e.canceled
        && e.tokens_in > 0
        && e.tokens_out >= tokens;
    check(
        pass,
        format!(
            "stop_reason {:?}, canceled {}, tokens_in {}, tokens_out {} (token frames {tokens})",
            e.stop_reason, e.canceled, e.tokens_in, e.tokens_out
        ),
    )
}

fn metrics(ev: &Evidence) -> Value {
    let (before, after) = match (
        prom::parse(&ev.metrics_before),
        prom::parse(&ev.metrics_after),
    ) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => return check(false, e),
    };
    let delta = prom::sum(&after, "tokens_out_total") - prom::sum(&before, "tokens_out_total");
    let want = end_frame(ev).map(|e| e.tokens_out as f64).unwrap_or(-1.0);
    let (pool, version) = started(ev)
        .map(|s| {
            (
                s.pool_id.to_string(),
                s.engine_version.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let labelled = after.iter().any(|s| {
        s.name == "tokens_out_total"
            && s.labels.get("pool_id") == Some(&pool)
            && s.labels.get("engine_version") == Some(&version)
    });
    let help =
        prom::has_help_and_type(&ev.metrics_before) && prom::has_help_and_type(&ev.metrics_after);
    // Scraping must not change counters: at least one pair of back-to-back scrapes must agree
    // (a heartbeat landing between two scrapes is a real change, and it cannot repeat in each pair).
    let scrapes: Vec<&String> = std::iter::once(&ev.metrics_after)
        .chain(ev.metrics_rescrapes.iter())
        .collect();
    let stable = scrapes
        .windows(2)
        .any(|w| counter_values(w[0]) == counter_values(w[1]));
    let pass = delta == want && labelled && help && stable;
    check(pass, format!("tokens_out_total delta {delta} vs end.tokens_out {want}; series with pool_id={pool} engine_version={version}: {labelled}; HELP/TYPE: {help}; counters stable across scrapes: {stable}"))
}

fn counter_values(text: &str) -> Vec<(String, String, f64)> {
    let counters = prom::counters(text);
    let mut v: Vec<(String, String, f64)> = prom::parse(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| counters.contains(&s.name))
        .map(|s| (s.name, format!("{:?}", s.labels), s.value))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    v
}

fn logs(ev: &Evidence) -> Value {
    let tid = ev.task_id.to_string();
    let target = |l: &Value| l["target"].as_str().unwrap_or("").to_string();
    let from_orchd = ev
        .logs
        .iter()
        .filter(|l| target(l).starts_with("orchestratord"))
        .count();
    let from_pm = ev
        .logs
        .iter()
        .filter(|l| target(l).starts_with("pool_managerd"))
        .count();
    let has = |e: &str| {
        ev.logs
            .iter()
            .any(|l| l["event"] == e && target(l).starts_with("orchestratord"))
    };
    let engine_req = ev.logs.iter().any(|l| {
        l["event"] == "engine.request"
            && l["task_id"] == tid.as_str()
            && target(l).starts_with("pool_managerd")
    });
    let pass =
        from_orchd > 0 && from_pm > 0 && has("task.admitted") && has("task.finished") && engine_req;
    check(pass, format!("{} lines ({from_orchd} orchestratord, {from_pm} pool-managerd); task.admitted {}, task.finished {}, engine.request {engine_req}", ev.logs.len(), has("task.admitted"), has("task.finished")))
}

fn record(ev: &Evidence) -> Value {
    let Some(r) = &ev.record else {
        return check(false, "no task record");
    };
    let want = end_frame(ev).map(|e| e.tokens_out).unwrap_or(u64::MAX);
    check(
        r.state == TaskState::Completed && r.tokens_out == want,
        format!(
            "state {:?}, tokens_out {} (end says {want})",
            r.state, r.tokens_out
        ),
    )
}

/// Reads the daemons' JSON log files and keeps lines with this correlation id. Waits briefly for
/// the daemons to flush the task's last lines.
pub async fn collect_logs(files: &[PathBuf], cid: &str, task: TaskId) -> Vec<Value> {
    let tid = task.to_string();
    let mut lines = vec![];
    for _ in 0..40 {
        lines = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .collect::<Vec<_>>()
            })
            .filter(|v| v["correlation_id"] == cid)
            .collect();
        let finished = lines.iter().any(|l| l["event"] == "task.finished")
            && lines
                .iter()
                .any(|l| l["event"] == "engine.finished" && l["task_id"] == tid.as_str());
        if finished || files.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::events::{End, Started, StopReason, Token};
    use api::task::{Preparation, Streams};

    fn frame(event: Event) -> Frame {
        Frame {
            id: None,
            name: event.name().to_string(),
            data: String::new(),
            event,
        }
    }

    /// A well-formed stream: started, two tokens, end; closed by the server.
    fn good() -> Evidence {
        let mut ev = Evidence::new("c".into(), TaskId::new());
        ev.frames = vec![
            frame(Event::Started(Started {
                queue_position: 0,
                predicted_start_ms: 0,
                pool_id: "cpu0".parse().unwrap(),
                node_id: "local".parse().unwrap(),
                engine: api::ENGINE_LLAMACPP.into(),
                engine_version: Some("b11434".into()),
                model: "m".parse().unwrap(),
            })),
            frame(Event::Token(Token::new("a", 0))),
            frame(Event::Token(Token::new("b", 1))),
            frame(Event::End(End {
                tokens_in: 3,
                tokens_out: 2,
                ttft_ms: Some(1),
                decode_ms: 1,
                decode_time_ms: 1,
                stop_reason: StopReason::Eos,
                canceled: false,
                tokens_cached: None,
            })),
        ];
        ev.terminal_seen = true;
        ev.closed = true;
        let t = ev.task_id;
        ev.session_id = Some(SessionId::new());
        ev.admission_status = 202;
        ev.admission_location = Some(format!("/v2/tasks/{t}"));
        ev.admission = Some(AdmissionResponse {
            task_id: t,
            session_id: ev.session_id.unwrap_or_default(),
            queue_position: 0,
            predicted_start_ms: 0,
            backoff_ms: 0,
            streams: Streams {
                sse: format!("/v2/tasks/{t}/events"),
                sse_verbose: format!("/v2/tasks/{t}/events?verbose=true"),
            },
            preparation: Preparation::default(),
        });
        ev
    }

    fn check_order(ev: &Evidence, pass: bool) {
        assert_eq!(order(ev)["pass"], pass, "{}", order(ev)["detail"]);
    }

    #[test]
    fn order_fails_on_anything_after_end_or_an_open_stream() {
        check_order(&good(), true);
        let mut after = good();
        after
            .after_terminal
            .push(frame(Event::Token(Token::new("c", 2))));
        check_order(&after, false);
        let mut open = good();
        open.closed = false;
        check_order(&open, false);
    }

    #[test]
    fn admission_needs_202_and_the_task_s_fields() {
        assert_eq!(admission(&good())["pass"], true);
        let mut status = good();
        status.admission_status = 200;
        assert_eq!(admission(&status)["pass"], false);
        let mut session = good();
        session.session_id = Some(SessionId::new());
        assert_eq!(admission(&session)["pass"], false);
        let mut location = good();
        location.admission_location = None;
        assert_eq!(admission(&location)["pass"], false);
        let mut stream = good();
        if let Some(a) = stream.admission.as_mut() {
            a.streams.sse = "/v2/tasks/other/events".into();
        }
        assert_eq!(admission(&stream)["pass"], false);
        let mut missing = good();
        missing.admission = None;
        assert_eq!(admission(&missing)["pass"], false);
    }
}
