//! The web dashboard in a real browser: headless Chromium (Debian's `chromium`) driven by
//! playwright-core (npm), both installed by `scripts/lib.sh`'s `ensure_browser`. `ui.cjs` runs the
//! scenario against a stack with the real engine and auth on, and prints a summary that this test
//! checks against the API and pool-managerd's log. Screenshots go to `target/ui-screenshots`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use serde_json::Value;

use crate::fixtures::{self, wait_for, Assets};

/// The operator's token: the dashboard drains and reloads pools, which needs the admin role.
const ADMIN: &str = "ui-admin-token-0123456789";
const REG: &str = "ui-registration-token-0123456789";

/// Where the screenshots go: `target/ui-screenshots` (or `LLORCH_UI_SCREENSHOTS`).
fn screenshot_dir() -> PathBuf {
    std::env::var_os("LLORCH_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            tmp.parent().unwrap_or(&tmp).join("ui-screenshots")
        })
}

/// The browser and the node_modules holding playwright-core, as `ensure_browser` exports them.
fn browser() -> anyhow::Result<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("LLORCH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let modules = std::env::var_os("LLORCH_NODE_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| llorch::cache_dir().join("playwright/node_modules"));
    ensure!(
        chromium.is_file(),
        "no Chromium at {} (scripts/test.sh installs it: source scripts/lib.sh && ensure_browser)",
        chromium.display()
    );
    ensure!(
        modules.join("playwright-core").is_dir(),
        "no playwright-core under {} (source scripts/lib.sh && ensure_browser)",
        modules.display()
    );
    Ok((chromium, modules))
}

pub async fn dashboard(a: Assets) -> anyhow::Result<()> {
    let (chromium, modules) = browser()?;
    let out = screenshot_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut spec = a.spec("ui")?;
    spec.orchd_extra =
        format!("[auth]\nnode_registration_token = {REG:?}\n\n[[auth.tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken = {ADMIN:?}\n");
    spec.registration_token = Some(REG.into());
    spec.pm_extra = format!(
        "[dispatch]\ntoken = \"{}\"\n",
        fixtures::TEST_DISPATCH_TOKEN
    );
    let model = spec.model_id.clone();
    let pool = spec.pool_id.clone();
    let mut stack = llorch::stack::Stack::start(spec).await?;
    let result = async {
        // pool-managerd starts again once the page is open, so the page sees the pool appear and
        // become Ready.
        stack.stop_pool_managerd().await?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/ui.cjs");
        let mut child = tokio::process::Command::new("node")
            .arg(&script)
            .env("NODE_PATH", &modules)
            .env("UI_BASE", &stack.orchd_url)
            .env("UI_TOKEN", ADMIN)
            .env("UI_MODEL", &model)
            .env("UI_POOL", &pool)
            .env("UI_OUT", &out)
            .env("UI_CHROMIUM", &chromium)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running node (scripts/lib.sh's ensure_browser installs it)")?;
        let stdout = child.stdout.take().context("node's stdout")?;
        let mut stderr = child.stderr.take().context("node's stderr")?;
        let err_text = tokio::spawn(async move {
            let mut s = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
            s
        });
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let mut stdout = String::new();
        let run = async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("[ui]") {
                    println!("  {line}");
                }
                if line == "[ui] page open on the pools view" {
                    stack.start_pool_managerd()?;
                }
                stdout.push_str(&line);
                stdout.push('\n');
            }
            anyhow::Ok(child.wait().await?)
        };
        let status = tokio::time::timeout(Duration::from_secs(600), run)
            .await
            .context("the browser scenario did not finish within 10 minutes")??;
        let stderr = err_text.await.unwrap_or_default();
        let summary: Value = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("SUMMARY "))
            .and_then(|j| serde_json::from_str(j).ok())
            .with_context(|| format!("no summary from the browser:\n{stdout}\n{stderr}"))?;
        for key in [
            "states_before_ready",
            "chat_steps",
            "chat_stats",
            "slots_after_cancel",
            "drain_reload_states",
            "overview_after",
        ] {
            println!("  {key}: {}", summary[key]);
        }
        ensure!(
            status.success(),
            "the browser scenario failed: {stderr}\nsummary: {summary}"
        );
        check(&summary, &stack, &model, &out).await
    }
    .await;
    stack.shutdown().await?;
    result
}

async fn check(
    s: &Value,
    stack: &llorch::stack::Stack,
    model: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    ensure!(
        s["console_errors"].as_array().is_some_and(Vec::is_empty),
        "console errors: {}",
        s["console_errors"]
    );
    // The page and its policy.
    ensure!(
        s["url_after_redirect"]
            .as_str()
            .is_some_and(|u| u.ends_with("/ui/")),
        "/ redirects to /ui/: {}",
        s["url_after_redirect"]
    );
    let csp = s["csp"].as_str().unwrap_or("");
    ensure!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("connect-src 'self'"),
        "CSP: {csp}"
    );
    // Auth: refused without a token, working with one.
    ensure!(
        s["refused_without_token"] == true && s["works_with_token"] == true,
        "auth: {s}"
    );
    // The pool became Ready, seen on the page; the overview counts it.
    let before: Vec<&str> = s["states_before_ready"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure!(
        before.len() > 1 && before.last() == Some(&"Ready"),
        "the pool's states seen before Ready: {before:?}"
    );
    ensure!(
        s["overview_pools"] == "1/1" && s["overview_nodes"] == "1/1",
        "overview: {s}"
    );
    // The chat's text came from the engine in more than one step.
    let steps = s["chat_steps"].as_u64().unwrap_or(0);
    let text = s["chat_text"].as_str().unwrap_or("");
    ensure!(
        steps > 1 && !text.trim().is_empty(),
        "chat arrived in {steps} step(s): {text:?}"
    );
    ensure!(
        s["chat_stats"]
            .as_str()
            .is_some_and(|t| t.contains("TTFT") && t.contains("tok/s")),
        "chat stats: {}",
        s["chat_stats"]
    );
    ensure!(
        s["python_snippet"]
            .as_str()
            .is_some_and(|t| t.contains("from openai import OpenAI") && t.contains(model)),
        "python snippet: {}",
        s["python_snippet"]
    );
    ensure!(
        s["curl_snippet"]
            .as_str()
            .is_some_and(|t| t.contains("/v2/tasks") && t.contains(model)),
        "curl snippet: {}",
        s["curl_snippet"]
    );
    // The canceled task: canceled in its record, and the engine confirmed its slot free.
    let task = s["cancel_task"].as_str().context("no canceled task")?;
    let client = client::Client::new(&stack.orchd_url, Some(ADMIN.into()))?;
    let rec = client.task(task.parse()?).await?.body;
    ensure!(
        rec.state == api::task::TaskState::Canceled,
        "the task canceled from the page is {:?}",
        rec.state
    );
    wait_for(
        "engine.cancel_confirmed in pool-managerd's log",
        Duration::from_secs(15),
        || async {
            fixtures::log_lines(&stack.pm_log)
                .iter()
                .any(|l| l["event"] == "engine.cancel_confirmed" && l["task_id"] == task)
                .then_some(())
        },
    )
    .await?;
    ensure!(
        s["slots_after_cancel"][0] == s["slots_after_cancel"][1],
        "slots after cancel: {s}"
    );
    // Drain and reload, seen live: Ready, something else, Ready again.
    let states: Vec<&str> = s["drain_reload_states"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure!(
        states.first() == Some(&"Ready")
            && states.last() == Some(&"Ready")
            && states.iter().any(|x| *x != "Ready"),
        "pool states seen during drain and reload: {states:?}"
    );
    ensure!(
        s["drain_progress"]
            .as_str()
            .is_some_and(|t| t.contains("drain") && t.contains("completed")),
        "drain progress: {}",
        s["drain_progress"]
    );
    ensure!(
        s["phone_overflow"] == false,
        "the overview is wider than a phone"
    );
    ensure!(
        s["unlabelled"].as_array().is_some_and(Vec::is_empty),
        "controls without an accessible name: {}",
        s["unlabelled"]
    );
    ensure!(
        s["model_retired_and_activated"] == true && s["model_verified"] == true,
        "models view actions: {s}"
    );
    ensure!(
        s["keyboard_nav"] == "#/models",
        "keyboard navigation: {}",
        s["keyboard_nav"]
    );
    for name in [
        "login",
        "overview",
        "nodes",
        "playground",
        "tasks",
        "task",
        "pools",
        "models",
        "overview-phone",
    ] {
        let f = out.join(format!("{name}.png"));
        ensure!(
            std::fs::metadata(&f).is_ok_and(|m| m.len() > 1000),
            "no screenshot {}",
            f.display()
        );
    }
    Ok(())
}
