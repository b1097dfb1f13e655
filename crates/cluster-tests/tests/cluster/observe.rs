//! Observability: both daemons' `/metrics` parse with a standard Prometheus parser, counter
//! deltas after real tasks equal the real counts, scraping changes nothing, every log line about a
//! task carries its correlation id in both daemons, and CORS stays off.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context};
use api::events::Event;

use crate::fixtures::{self, Assets};

/// Parses with the `prometheus-parse` crate and sums each metric name (histograms by sample name).
async fn scrape(url: &str) -> anyhow::Result<(BTreeMap<String, f64>, String)> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines)
        .with_context(|| format!("{url}/metrics is not valid Prometheus text"))?;
    let mut sums = BTreeMap::new();
    for s in parsed.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        *sums.entry(s.metric).or_insert(0.0) += v;
    }
    ensure!(
        text.contains("# HELP ") && text.contains("# TYPE "),
        "{url}/metrics lacks HELP/TYPE lines"
    );
    Ok((sums, text))
}

pub async fn metrics_logs_cors(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("observe")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let (before, _) = scrape(&stack.orchd_url).await?;
        scrape(&stack.worker_url).await?;
        let (mut tin, mut tout, mut ids) = (0.0, 0.0, vec![]);
        for prompt in ["The capital of France is", "Water boils at", "The sun is a"] {
            let mut req = api::task::TaskRequest::new(&stack.spec.model_id);
            req.prompt = Some(prompt.into());
            req.max_tokens = Some(8);
            let adm = client.submit(&req).await?.body;
            ids.push(adm.task_id);
            let mut s = client.events(&adm.streams.sse).await?;
            while let Some(f) = tokio::time::timeout(Duration::from_secs(30), s.next())
                .await?
                .transpose()?
            {
                if let Event::End(e) = f.event {
                    tin += e.tokens_in as f64;
                    tout += e.tokens_out as f64;
                }
            }
        }
        let mut bad = api::task::TaskRequest::new("no-such-model");
        bad.prompt = Some("x".into());
        ensure!(
            client.submit(&bad).await.is_err(),
            "an unknown model was admitted"
        );
        let (after, _) = scrape(&stack.orchd_url).await?;
        let delta = |name: &str| {
            after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
        };
        ensure!(
            delta("tasks_enqueued_total") == 3.0 && delta("tasks_started_total") == 3.0,
            "enqueued {} started {}",
            delta("tasks_enqueued_total"),
            delta("tasks_started_total")
        );
        ensure!(
            delta("tokens_in_total") == tin && delta("tokens_out_total") == tout,
            "tokens in {} (ends say {tin}), out {} (ends say {tout})",
            delta("tokens_in_total"),
            delta("tokens_out_total")
        );
        ensure!(
            delta("tasks_rejected_total") == 1.0,
            "rejected delta {}",
            delta("tasks_rejected_total")
        );
        ensure!(
            delta("latency_first_token_ms_count") == 3.0
                && delta("orchestrator_overhead_ms_count") == 3.0,
            "histogram counts"
        );
        // Scraping changes nothing: of two back-to-back pairs at least one agrees (a heartbeat can
        // land between two scrapes; it cannot land between both pairs' scrapes every time).
        let counters = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#') && (l.contains("_total") || l.contains("_count")))
                .map(str::to_string)
                .collect()
        };
        let s1 = scrape(&stack.orchd_url).await?.1;
        let s2 = scrape(&stack.orchd_url).await?.1;
        let s3 = scrape(&stack.orchd_url).await?.1;
        ensure!(
            counters(&s1) == counters(&s2) || counters(&s2) == counters(&s3),
            "scrapes changed counters"
        );
        // Every log line about these tasks carries the task's correlation id, in both daemons.
        for id in &ids {
            let cid = client.task(*id).await?.body.correlation_id;
            let tid = id.to_string();
            let lines: Vec<serde_json::Value> = [&stack.orchd_log, &stack.pm_log]
                .iter()
                .flat_map(|f| fixtures::log_lines(f))
                .filter(|l| l["task_id"] == tid.as_str())
                .collect();
            ensure!(
                lines.len() >= 6,
                "only {} log lines for task {tid}",
                lines.len()
            );
            let targets: std::collections::BTreeSet<String> = lines
                .iter()
                .map(|l| {
                    l["target"]
                        .as_str()
                        .unwrap_or("")
                        .split("::")
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .collect();
            ensure!(
                targets.contains("orchestratord") && targets.contains("pool_managerd"),
                "lines from {targets:?}"
            );
            ensure!(
                lines
                    .iter()
                    .all(|l| l["correlation_id"] == cid.as_str() && l["human"].is_string()),
                "a line about {tid} lacks its correlation id or narration"
            );
        }
        // CORS is off: no Access-Control-Allow-Origin on a preflight or a request with an Origin.
        let http = reqwest::Client::new();
        let pre = http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v2/tasks", stack.orchd_url),
            )
            .header("origin", "http://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await?;
        let get = http
            .get(format!("{}/v2/pools", stack.orchd_url))
            .header("origin", "http://evil.example")
            .send()
            .await?;
        ensure!(
            pre.headers().get("access-control-allow-origin").is_none()
                && get.headers().get("access-control-allow-origin").is_none(),
            "CORS headers present"
        );
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
