//! One `llama-server` child process (API.md §14.1–14.2): launch with a fresh API key in its own
//! process group, log capture to a per-pool file, port discovery from the log, readiness from
//! `/health`, and an orderly stop (SIGTERM to the group, then SIGKILL after a grace period).
//!
//! Invariant: the API key travels to the child through `--api-key-file` (a 0600 file removed as
//! soon as the engine is up), never on a command line visible in `ps`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::client::{ApiKey, EngineClient};

#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub binary: PathBuf,
    pub model_path: PathBuf,
    /// `-a`: the catalog model id.
    pub alias: String,
    pub ctx_per_slot: u64,
    pub slots: u32,
    /// `-t`; `None` lets the engine choose.
    pub threads: Option<u32>,
    pub gpu_layers: u32,
    /// `CUDA_VISIBLE_DEVICES`; empty for CPU pools.
    pub cuda_visible_devices: String,
    pub extra_args: Vec<String>,
    pub log_path: PathBuf,
    pub start_timeout: Duration,
    /// The engine gets SIGKILL when the process that launched it dies (pool-managerd's engines,
    /// so that none outlives its supervisor and holds memory nobody can free).
    pub die_with_parent: bool,
    /// Where to record the engine's pid and process start time, written atomically at spawn, so
    /// that a restarted supervisor can find and stop the engines of its previous life.
    pub pid_record: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("engine binary {0} does not exist")]
    MissingBinary(PathBuf),
    #[error("model file {0} does not exist")]
    MissingModel(PathBuf),
    #[error("could not spawn {binary}: {reason}")]
    Spawn { binary: PathBuf, reason: String },
    #[error("engine exited during startup ({status}); last log lines:\n{tail}")]
    EarlyExit { status: String, tail: String },
    #[error("engine did not become healthy within {0:?}")]
    Timeout(Duration),
    #[error("engine started with the wrong shape: {0}")]
    Shape(String),
    #[error("{0}")]
    Client(crate::EngineError),
}

/// A running, healthy engine. Dropping it kills the process (kill_on_drop); call [`stop`] for an
/// orderly shutdown.
pub struct RunningEngine {
    pub child: Child,
    pub pid: u32,
    pub client: EngineClient,
    pub port: u16,
    pub build_info: String,
    pub log_path: PathBuf,
    pub started_at: Instant,
}

impl LaunchSpec {
    /// The argument list of §14.1, without secrets.
    pub fn args(&self, key_file: &Path) -> Vec<String> {
        let mut a = vec![
            "-m".into(),
            self.model_path.display().to_string(),
            "-a".into(),
            self.alias.clone(),
            "-c".into(),
            (self.ctx_per_slot * self.slots as u64).to_string(),
            "--parallel".into(),
            self.slots.to_string(),
            "--metrics".into(),
            "--api-key-file".into(),
            key_file.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--n-gpu-layers".into(),
            self.gpu_layers.to_string(),
            "--no-webui".into(),
        ];
        if let Some(t) = self.threads {
            a.push("-t".into());
            a.push(t.to_string());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// Launches the engine and waits until `/health` answers 200 and its shape is verified.
pub async fn launch(spec: &LaunchSpec) -> Result<RunningEngine, LaunchError> {
    if !spec.binary.is_file() {
        return Err(LaunchError::MissingBinary(spec.binary.clone()));
    }
    if !spec.model_path.is_file() {
        return Err(LaunchError::MissingModel(spec.model_path.clone()));
    }
    let key = ApiKey::random();
    let key_file = write_key_file(&spec.log_path, &key)
        .await
        .map_err(|e| LaunchError::Spawn {
            binary: spec.binary.clone(),
            reason: e.to_string(),
        })?;
    let result = launch_with_key(spec, key, &key_file).await;
    let _ = tokio::fs::remove_file(&key_file).await;
    result
}

async fn write_key_file(log_path: &Path, key: &ApiKey) -> std::io::Result<PathBuf> {
    let dir = log_path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await?;
    let path = dir.join(format!(
        ".key-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true).mode(0o600);
    let mut f = opts.open(&path).await?;
    f.write_all(key.expose().as_bytes()).await?;
    f.flush().await?;
    Ok(path)
}

async fn launch_with_key(
    spec: &LaunchSpec,
    key: ApiKey,
    key_file: &Path,
) -> Result<RunningEngine, LaunchError> {
    let spawn_err = |reason: String| LaunchError::Spawn {
        binary: spec.binary.clone(),
        reason,
    };
    if let Some(dir) = spec.log_path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| spawn_err(e.to_string()))?;
    }
    let log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .await
        .map_err(|e| spawn_err(e.to_string()))?;
    let mut cmd = Command::new(&spec.binary);
    cmd.args(spec.args(key_file))
        .env("CUDA_VISIBLE_DEVICES", &spec.cuda_visible_devices)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if spec.die_with_parent {
        die_with_parent(&mut cmd);
    }
    let mut child = cmd.spawn().map_err(|e| spawn_err(e.to_string()))?;
    let pid = child.id().unwrap_or(0);
    if let Some(path) = &spec.pid_record {
        if let Err(e) = write_pid_record(path, pid) {
            tracing::warn!(
                event = "engine.pid_record",
                pid = pid,
                "Cannot record engine pid {pid} in {}: {e}",
                path.display()
            );
        }
    }
    let (port_tx, port_rx) = oneshot::channel();
    pump_logs(&mut child, log, port_tx);

    let deadline = Instant::now() + spec.start_timeout;
    let port = tokio::select! {
        p = port_rx => p.ok(),
        status = child.wait() => {
            return Err(early_exit(status, &spec.log_path).await);
        }
        _ = tokio::time::sleep_until(deadline.into()) => None,
    };
    let Some(port) = port else {
        return Err(LaunchError::Timeout(spec.start_timeout));
    };
    let client =
        EngineClient::new(format!("http://127.0.0.1:{port}"), key).map_err(LaunchError::Client)?;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(early_exit(Ok(status), &spec.log_path).await);
        }
        if client.health().await.unwrap_or(false) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::Timeout(spec.start_timeout));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let props = client
        .props()
        .await
        .map_err(|e| LaunchError::Shape(e.to_string()))?;
    let slots = client
        .slots()
        .await
        .map_err(|e| LaunchError::Shape(e.to_string()))?;
    if props.total_slots != spec.slots
        || slots.len() != spec.slots as usize
        || slots.iter().any(|s| s.n_ctx != spec.ctx_per_slot)
    {
        return Err(LaunchError::Shape(format!(
            "expected {} slots of {} tokens, engine reports total_slots={} n_ctx={:?}",
            spec.slots,
            spec.ctx_per_slot,
            props.total_slots,
            slots.iter().map(|s| s.n_ctx).collect::<Vec<_>>()
        )));
    }
    Ok(RunningEngine {
        child,
        pid,
        client,
        port,
        build_info: props.build_info,
        log_path: spec.log_path.clone(),
        started_at: Instant::now(),
    })
}

/// Makes the child get SIGKILL when its parent dies. The flag is set between fork and exec; if the
/// parent died before that, the child sees a new parent and exits at once instead of running.
/// Linux ties the signal to the *thread* that forked the child, so the spawn must not run on a
/// thread that exits before the daemon does: [`launch`] is async and runs on a runtime worker
/// thread (those live as long as the runtime), never inside `spawn_blocking`, whose idle threads
/// exit after a few seconds and would take the engine with them.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::Pid::this();
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // syscalls (prctl, getppid); it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the launching process is gone"));
            }
            Ok(())
        });
    }
}

/// An engine's pid and process start time (clock ticks since boot, `/proc/<pid>/stat` field 22):
/// together they name one process, never a later one that reused the pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PidRecord {
    pub pid: u32,
    pub start_time: u64,
}

/// Writes `path` as a whole or not at all (a temporary file renamed into place).
fn write_pid_record(path: &Path, pid: u32) -> std::io::Result<()> {
    let start_time = crate::handoff::process_start_time(pid)
        .ok_or_else(|| std::io::Error::other("the engine exited at once"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(&PidRecord { pid, start_time }).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

/// Stops the engines recorded in `dir` under names starting with `prefix` that are still the
/// same processes (pid and start time), SIGTERM then SIGKILL after `grace`, and removes their
/// records. Returns the pids it stopped.
pub async fn stop_recorded(dir: &Path, prefix: &str, grace: Duration) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut stopped = vec![];
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with(prefix) || !name.ends_with(".json") {
            continue;
        }
        let record = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<PidRecord>(&b).ok());
        if let Some(r) = record {
            if crate::handoff::process_start_time(r.pid) == Some(r.start_time) {
                use nix::sys::signal::Signal;
                let pgid = nix::unistd::Pid::from_raw(r.pid as i32);
                let _ = nix::sys::signal::killpg(pgid, Signal::SIGTERM);
                let until = Instant::now() + grace;
                while crate::handoff::process_start_time(r.pid) == Some(r.start_time)
                    && Instant::now() < until
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if crate::handoff::process_start_time(r.pid) == Some(r.start_time) {
                    let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
                }
                stopped.push(r.pid);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    stopped
}

/// Copies the child's stdout and stderr to the log file and reports the port from the
/// `listening on http://127.0.0.1:<port>` line.
fn pump_logs(child: &mut Child, log: tokio::fs::File, port_tx: oneshot::Sender<u16>) {
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return;
    };
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for reader in [
        Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(err),
    ] {
        let tx = line_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(line_tx);
    tokio::spawn(async move {
        let mut log = log;
        let mut port_tx = Some(port_tx);
        while let Some(line) = line_rx.recv().await {
            if let Some(tx) = port_tx.take() {
                match parse_listening_port(&line) {
                    Some(port) => {
                        let _ = tx.send(port);
                    }
                    None => port_tx = Some(tx),
                }
            }
            let _ = log.write_all(line.as_bytes()).await;
            let _ = log.write_all(b"\n").await;
        }
        let _ = log.flush().await;
    });
}

/// Reads the port from `main: server is listening on http://127.0.0.1:36601 - starting …`.
pub fn parse_listening_port(line: &str) -> Option<u16> {
    let rest = line.split("listening on http://").nth(1)?;
    let hostport = rest.split(|c: char| c.is_whitespace() || c == '/').next()?;
    hostport.rsplit(':').next()?.parse().ok()
}

async fn early_exit(
    status: std::io::Result<std::process::ExitStatus>,
    log_path: &Path,
) -> LaunchError {
    // Give the log pump a moment to write the child's last words.
    tokio::time::sleep(Duration::from_millis(100)).await;
    LaunchError::EarlyExit {
        status: describe_exit(status),
        tail: log_tail(log_path, 12),
    }
}

pub fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

/// The last `n` lines of a log file (empty when unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl RunningEngine {
    /// SIGTERM to the process group, then SIGKILL after `grace`; returns how it exited.
    pub async fn stop(mut self, grace: Duration) -> String {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let pgid = Pid::from_raw(self.pid as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => describe_exit(status),
            Err(_) => {
                let _ = killpg(pgid, Signal::SIGKILL);
                describe_exit(self.child.wait().await)
            }
        }
    }
}

/// Starts `llama-server` detached from this process (its own process group, output to
/// `spec.log_path`), for engines handed off to pool-managerd. The key file must stay in place.
/// Returns the pid and the port once `/health` answers 200.
pub async fn spawn_detached(
    spec: &LaunchSpec,
    key: ApiKey,
    key_file: &Path,
) -> Result<(u32, EngineClient), LaunchError> {
    let spawn_err = |reason: String| LaunchError::Spawn {
        binary: spec.binary.clone(),
        reason,
    };
    if !spec.binary.is_file() {
        return Err(LaunchError::MissingBinary(spec.binary.clone()));
    }
    if !spec.model_path.is_file() {
        return Err(LaunchError::MissingModel(spec.model_path.clone()));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|e| spawn_err(e.to_string()))?;
    let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let err = log.try_clone().map_err(|e| spawn_err(e.to_string()))?;
    let mut cmd = std::process::Command::new(&spec.binary);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.args(spec.args(key_file))
        .env("CUDA_VISIBLE_DEVICES", &spec.cuda_visible_devices)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    let child = cmd.spawn().map_err(|e| spawn_err(e.to_string()))?;
    let pid = child.id();
    // The child is not reaped by us; it belongs to whoever adopts it.
    drop(child);
    let deadline = Instant::now() + spec.start_timeout;
    let port = loop {
        let text = std::fs::read(&spec.log_path)
            .map(|b| String::from_utf8_lossy(&b[(offset as usize).min(b.len())..]).to_string())
            .unwrap_or_default();
        if let Some(p) = text.lines().find_map(parse_listening_port) {
            break p;
        }
        if crate::handoff::process_start_time(pid).is_none() {
            return Err(LaunchError::EarlyExit {
                status: "exited".into(),
                tail: log_tail(&spec.log_path, 12),
            });
        }
        if Instant::now() > deadline {
            return Err(LaunchError::Timeout(spec.start_timeout));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let client =
        EngineClient::new(format!("http://127.0.0.1:{port}"), key).map_err(LaunchError::Client)?;
    while !client.health().await.unwrap_or(false) {
        if crate::handoff::process_start_time(pid).is_none() {
            return Err(LaunchError::EarlyExit {
                status: "exited".into(),
                tail: log_tail(&spec.log_path, 12),
            });
        }
        if Instant::now() > deadline {
            return Err(LaunchError::Timeout(spec.start_timeout));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((pid, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::process::ExitStatusExt;

    /// A restarted supervisor stops the process its record names, and only that process: a
    /// record whose start time does not match (a reused pid) is dropped without a signal.
    #[tokio::test]
    async fn recorded_engines_are_stopped_and_only_they() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spawn = || {
            let mut c = std::process::Command::new("sleep");
            c.arg("60");
            std::os::unix::process::CommandExt::process_group(&mut c, 0);
            c.spawn().expect("sleep")
        };
        let (mut orphan, mut other) = (spawn(), spawn());
        write_pid_record(&dir.path().join("n1.p1.json"), orphan.id()).expect("record");
        let stale = PidRecord {
            pid: other.id(),
            start_time: crate::handoff::process_start_time(other.id()).expect("alive") + 1,
        };
        std::fs::write(
            dir.path().join("n1.p2.json"),
            serde_json::to_vec(&stale).expect("json"),
        )
        .expect("stale record");
        write_pid_record(&dir.path().join("n2.p1.json"), other.id()).expect("other node");
        let stopped = stop_recorded(dir.path(), "n1.", Duration::from_secs(5)).await;
        assert_eq!(stopped, vec![orphan.id()]);
        assert!(
            orphan.wait().expect("wait").signal().is_some(),
            "the orphan was signalled"
        );
        assert!(
            other.try_wait().expect("try_wait").is_none(),
            "the other process runs on"
        );
        assert!(!dir.path().join("n1.p1.json").exists() && !dir.path().join("n1.p2.json").exists());
        assert!(
            dir.path().join("n2.p1.json").exists(),
            "another node's record stays"
        );
        other.kill().expect("kill");
        let _ = other.wait();
    }

    #[test]
    fn port_from_log_line() {
        assert_eq!(
            parse_listening_port(
                "main: server is listening on http://127.0.0.1:36601 - starting the main loop"
            ),
            Some(36601)
        );
        assert_eq!(
            parse_listening_port("llama_server: listening on http://127.0.0.1:8080"),
            Some(8080)
        );
        assert_eq!(parse_listening_port("loading model"), None);
    }

    #[test]
    fn args_never_contain_the_key() {
        let spec = LaunchSpec {
            binary: "/bin/llama-server".into(),
            model_path: "/m.gguf".into(),
            alias: "smol".into(),
            ctx_per_slot: 1024,
            slots: 2,
            threads: Some(2),
            gpu_layers: 0,
            cuda_visible_devices: String::new(),
            extra_args: vec![],
            log_path: "/tmp/x.log".into(),
            start_timeout: Duration::from_secs(1),
            die_with_parent: false,
            pid_record: None,
        };
        let args = spec.args(Path::new("/tmp/keyfile"));
        let joined = args.join(" ");
        assert!(joined.contains("-c 2048 --parallel 2"), "{joined}");
        assert!(joined.contains("--api-key-file /tmp/keyfile"));
        assert!(!joined.contains("--api-key "));
    }
}
