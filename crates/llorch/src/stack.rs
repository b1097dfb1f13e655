//! A whole llama-orch stack on one machine: orchestratord and one pool-managerd as child processes
//! on loopback, with JSON logs in files. `llorch up` and the cluster tests both use it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

#[derive(Debug, Clone)]
pub struct StackSpec {
    /// Where orchestratord and pool-managerd binaries are.
    pub bin_dir: PathBuf,
    /// Configs and logs go here.
    pub dir: PathBuf,
    /// 0 picks a free port.
    pub orchd_port: u16,
    pub worker_port: u16,
    pub node_id: String,
    pub pool_id: String,
    pub model_path: PathBuf,
    pub model_id: String,
    /// Engine source: a llama.cpp source archive and its sha256, or a prebuilt binary.
    pub engine: EngineChoice,
    pub engines_dir: PathBuf,
    pub ctx: u64,
    pub slots: u32,
    pub threads: Option<u32>,
    /// The pool's `devices`: `cpu` (the default) or GPU indices such as `0`; a GPU mask also sets
    /// `gpu_policy = "gpu"`, so the engine is a CUDA build with every layer offloaded.
    pub devices: String,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// Extra TOML appended to orchestratord's config.
    pub orchd_extra: String,
    /// Extra TOML appended to pool-managerd's config (after the pools).
    pub pm_extra: String,
    /// The registration token pool-managerd presents (when orchestratord requires one).
    pub registration_token: Option<String>,
}

/// The two daemons of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Orchestratord,
    PoolManagerd,
}

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Daemon::Orchestratord => "orchestratord",
            Daemon::PoolManagerd => "pool-managerd",
        })
    }
}

#[derive(Debug, Clone)]
pub enum EngineChoice {
    Source { archive: PathBuf, sha256: String },
    Binary { path: PathBuf },
}

impl StackSpec {
    /// Defaults for one CPU pool serving `model_path`.
    pub fn new(
        bin_dir: PathBuf,
        dir: PathBuf,
        model_path: PathBuf,
        engine: EngineChoice,
        engines_dir: PathBuf,
    ) -> Self {
        Self {
            bin_dir,
            dir,
            orchd_port: 0,
            worker_port: 0,
            node_id: "local".into(),
            pool_id: "cpu0".into(),
            model_path,
            model_id: "smollm2-135m-instruct".into(),
            engine,
            engines_dir,
            ctx: 2048,
            slots: 1,
            threads: None,
            devices: "cpu".into(),
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
            orchd_extra: String::new(),
            pm_extra: String::new(),
            registration_token: None,
        }
    }
}

/// One more worker node for multi-node stacks (tests and benchmarks).
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub node_id: String,
    pub engine: EngineChoice,
    pub pools: Vec<PoolSpec>,
    /// Environment for pool-managerd (and so for the engines it starts).
    pub env: Vec<(String, String)>,
    /// Extra keys for the `[engine]` section (e.g. `max_restarts = 2`).
    pub engine_keys: String,
    pub extra_toml: String,
}

#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub id: String,
    pub model_path: PathBuf,
    pub model_id: String,
    pub ctx: u64,
    pub slots: u32,
}

pub struct NodeProc {
    pub node_id: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub config: PathBuf,
    pub worker_url: String,
}

pub struct Stack {
    pub spec: StackSpec,
    pub orchd: Option<Child>,
    pub pool_managerd: Option<Child>,
    /// Nodes added with [`Stack::add_node`].
    pub nodes: Vec<NodeProc>,
    pub orchd_url: String,
    pub worker_url: String,
    pub orchd_log: PathBuf,
    pub pm_log: PathBuf,
    pub pm_config: PathBuf,
}

/// Finds a daemon binary next to the running executable (or one level up, for test binaries).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..2 {
        if dir.join("orchestratord").is_file() && dir.join("pool-managerd").is_file() {
            return Ok(dir);
        }
        dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    bail!("orchestratord and pool-managerd were not found next to {}; build them first (cargo build --bins)", exe.display())
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Stack {
    /// Writes both configs and starts orchestratord, then pool-managerd.
    pub async fn start(mut spec: StackSpec) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("cannot create {}", spec.dir.display()))?;
        if spec.orchd_port == 0 {
            spec.orchd_port = free_port()?;
        }
        if spec.worker_port == 0 {
            spec.worker_port = free_port()?;
        }
        let orchd_url = format!("http://127.0.0.1:{}", spec.orchd_port);
        let worker_url = format!("http://127.0.0.1:{}", spec.worker_port);
        let orchd_cfg = spec.dir.join("orchestratord.toml");
        std::fs::write(
            &orchd_cfg,
            format!(
                "state_dir = {dir:?}\n[server]\nbind = \"127.0.0.1:{port}\"\n[nodes]\nheartbeat_interval_ms = {hi}\nheartbeat_timeout_ms = {ht}\n{extra}\n",
                dir = spec.dir.join("state"),
                port = spec.orchd_port,
                hi = spec.heartbeat_interval_ms,
                ht = spec.heartbeat_timeout_ms,
                extra = spec.orchd_extra
            ),
        )?;
        let pm_cfg = spec.dir.join("pool-managerd.toml");
        std::fs::write(&pm_cfg, pool_managerd_toml(&spec, &orchd_url))?;
        let orchd_log = spec.dir.join("orchestratord.log");
        let pm_log = spec.dir.join("pool-managerd.log");
        let orchd = spawn(&spec.bin_dir.join("orchestratord"), &orchd_cfg, &orchd_log)?;
        let mut stack = Stack {
            spec,
            orchd: Some(orchd),
            pool_managerd: None,
            nodes: vec![],
            orchd_url,
            worker_url,
            orchd_log,
            pm_log,
            pm_config: pm_cfg,
        };
        stack
            .wait_http(
                &format!("{}/health", stack.orchd_url),
                Duration::from_secs(20),
            )
            .await?;
        if !stack.spec.pool_id.is_empty() {
            stack.start_pool_managerd()?;
        }
        Ok(stack)
    }

    /// Starts another pool-managerd with its own pools; returns its index in `nodes`.
    pub fn add_node(&mut self, node: NodeSpec) -> anyhow::Result<usize> {
        let port = free_port()?;
        let worker_url = format!("http://127.0.0.1:{port}");
        let config = self
            .spec
            .dir
            .join(format!("pool-managerd-{}.toml", node.node_id));
        let log = self
            .spec
            .dir
            .join(format!("pool-managerd-{}.log", node.node_id));
        let engine = engine_toml(&node.engine);
        let mut text = format!(
            "[node]\nid = {id:?}\nmachine_id = {id:?}\n[server]\nbind = \"127.0.0.1:{port}\"\n[orchestrator]\nurl = {url:?}\n[heartbeat]\ninterval_ms = {hi}\n\
             [cache]\nengines_dir = {engines:?}\nmodels_dir = {models:?}\nrun_dir = {run:?}\n[handoff]\ndir = {handoff:?}\n[engine]\nstart_timeout_ms = 60000\n{keys}[engines.default]\n{engine}\n",
            models = self.spec.dir.join("models").display().to_string(),
            handoff = self.spec.dir.join(format!("handoff-{}", node.node_id)).display().to_string(),
            run = self.spec.dir.join("run").display().to_string(),
            keys = node.engine_keys,
            id = node.node_id,
            url = self.orchd_url,
            hi = self.spec.heartbeat_interval_ms,
            engines = self.spec.engines_dir.display().to_string(),
        );
        for p in &node.pools {
            text.push_str(&format!(
                "[[pools]]\nid = {id:?}\nmodel_ref = {mref:?}\nmodel_id = {mid:?}\nctx = {ctx}\nslots = {slots}\ndevices = \"cpu\"\ngpu_policy = \"cpu\"\n",
                id = p.id,
                mref = format!("file:{}", p.model_path.display()),
                mid = p.model_id,
                ctx = p.ctx,
                slots = p.slots
            ));
        }
        text.push_str(&node.extra_toml);
        std::fs::write(&config, text)?;
        let mut cmd = command(&self.spec.bin_dir.join("pool-managerd"), &config, &log)?;
        cmd.envs(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd.spawn().context("cannot start pool-managerd")?;
        self.nodes.push(NodeProc {
            node_id: node.node_id,
            child: Some(child),
            log,
            config,
            worker_url,
        });
        Ok(self.nodes.len() - 1)
    }

    /// Starts the pool-managerd of added node `i` again on its config (after it exited or was
    /// killed).
    pub fn respawn_node(&mut self, i: usize) -> anyhow::Result<()> {
        let n = self.nodes.get_mut(i).context("no such node")?;
        let cmd = command(&self.spec.bin_dir.join("pool-managerd"), &n.config, &n.log);
        n.child = Some(cmd?.spawn().context("cannot start pool-managerd")?);
        Ok(())
    }

    /// Waits until every pool in `pools` is Ready at orchestratord.
    pub async fn wait_pools_ready(
        &mut self,
        pools: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let client = client::Client::new(&self.orchd_url, None)?;
        let until = Instant::now() + timeout;
        loop {
            if let Ok(p) = client.pools().await {
                if pools.iter().all(|id| {
                    p.pools
                        .iter()
                        .any(|x| x.pool_id == *id && x.state == api::node::PoolState::Ready)
                }) {
                    return Ok(());
                }
            }
            for n in &mut self.nodes {
                if let Some(Ok(Some(status))) = n.child.as_mut().map(|c| c.try_wait()) {
                    bail!(
                        "pool-managerd {} exited ({status}):\n{}",
                        n.node_id,
                        tail(&n.log, 15)
                    );
                }
            }
            if Instant::now() > until {
                bail!("pools {pools:?} were not Ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn start_pool_managerd(&mut self) -> anyhow::Result<()> {
        let child = spawn(
            &self.spec.bin_dir.join("pool-managerd"),
            &self.pm_config,
            &self.pm_log,
        )?;
        self.pool_managerd = Some(child);
        Ok(())
    }

    async fn wait_http(&mut self, url: &str, timeout: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + timeout;
        let http = reqwest::Client::new();
        loop {
            if http
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if let Some(c) = self.orchd.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!(
                        "orchestratord exited ({status}); see {}",
                        self.orchd_log.display()
                    );
                }
            }
            if Instant::now() > until {
                bail!("{url} did not answer within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the pool is Ready at orchestratord, reporting progress lines through `progress`.
    pub async fn wait_ready(
        &mut self,
        timeout: Duration,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> anyhow::Result<()> {
        let client = client::Client::new(&self.orchd_url, None)?;
        let until = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Ok(p) = client.pools().await {
                if let Some(pool) = p
                    .pools
                    .iter()
                    .find(|p| p.pool_id == self.spec.pool_id.as_str())
                {
                    let state = format!("pool {} is {}", pool.pool_id, pool.state.as_str());
                    if state != last {
                        progress(&state);
                        last = state;
                    }
                    match pool.state {
                        api::node::PoolState::Ready => return Ok(()),
                        api::node::PoolState::Failed => bail!(
                            "pool {} failed: {}",
                            pool.pool_id,
                            pool.last_error.clone().unwrap_or_default()
                        ),
                        _ => {}
                    }
                }
            }
            if let Some(c) = self.pool_managerd.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!(
                        "pool-managerd exited ({status}):\n{}",
                        tail(&self.pm_log, 15)
                    );
                }
            }
            if Instant::now() > until {
                bail!(
                    "the pool was not Ready within {timeout:?}; see {}",
                    self.pm_log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops orchestratord (SIGTERM) and starts it again on the same port and config.
    pub async fn restart_orchestratord(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.orchd.take() {
            terminate(&mut c).await?;
        }
        let cfg = self.spec.dir.join("orchestratord.toml");
        self.orchd = Some(spawn(
            &self.spec.bin_dir.join("orchestratord"),
            &cfg,
            &self.orchd_log,
        )?);
        self.wait_http(
            &format!("{}/health", self.orchd_url),
            Duration::from_secs(20),
        )
        .await
    }

    /// Reaps a daemon of this stack that exited on its own: which one and how (None while both
    /// run). The exited child is dropped, so [`Stack::respawn`] can start it again.
    pub fn exited(&mut self) -> Option<(Daemon, std::process::ExitStatus)> {
        if let Some(Ok(Some(status))) = self.orchd.as_mut().map(|c| c.try_wait()) {
            self.orchd = None;
            return Some((Daemon::Orchestratord, status));
        }
        if let Some(Ok(Some(status))) = self.pool_managerd.as_mut().map(|c| c.try_wait()) {
            self.pool_managerd = None;
            return Some((Daemon::PoolManagerd, status));
        }
        None
    }

    /// Starts `daemon` again on its config (orchestratord: and waits for its health check).
    pub async fn respawn(&mut self, daemon: Daemon) -> anyhow::Result<()> {
        match daemon {
            Daemon::Orchestratord => {
                let cfg = self.spec.dir.join("orchestratord.toml");
                self.orchd = Some(spawn(
                    &self.spec.bin_dir.join("orchestratord"),
                    &cfg,
                    &self.orchd_log,
                )?);
                self.wait_http(
                    &format!("{}/health", self.orchd_url),
                    Duration::from_secs(20),
                )
                .await
            }
            Daemon::PoolManagerd => self.start_pool_managerd(),
        }
    }

    /// The log file of `daemon`.
    pub fn log_of(&self, daemon: Daemon) -> &Path {
        match daemon {
            Daemon::Orchestratord => &self.orchd_log,
            Daemon::PoolManagerd => &self.pm_log,
        }
    }

    /// Sends SIGTERM to pool-managerd and waits for it to exit.
    pub async fn stop_pool_managerd(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut c) = self.pool_managerd.take() else {
            bail!("pool-managerd is not running")
        };
        terminate(&mut c).await
    }

    /// Stops both daemons (pool-managerd first, so it can deregister).
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.pool_managerd.take() {
            terminate(&mut c).await?;
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                terminate(&mut c).await?;
            }
        }
        if let Some(mut c) = self.orchd.take() {
            terminate(&mut c).await?;
        }
        Ok(())
    }

    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.orchd_log.clone(), self.pm_log.clone()];
        v.extend(self.nodes.iter().map(|n| n.log.clone()));
        v
    }
}

fn engine_toml(e: &EngineChoice) -> String {
    match e {
        EngineChoice::Source { archive, sha256 } => format!(
            "kind = \"source\"\nsource_url = {:?}\nsource_sha256 = {sha256:?}",
            archive.display().to_string()
        ),
        EngineChoice::Binary { path } => {
            format!("kind = \"binary\"\npath = {:?}", path.display().to_string())
        }
    }
}

fn pool_managerd_toml(spec: &StackSpec, orchd_url: &str) -> String {
    let engine = engine_toml(&spec.engine);
    let threads = spec
        .threads
        .map(|t| format!("threads = {t}\n"))
        .unwrap_or_default();
    format!(
        "[node]\nid = {node:?}\n[server]\nbind = \"127.0.0.1:{wport}\"\n[orchestrator]\nurl = {orchd_url:?}\n{reg}[heartbeat]\ninterval_ms = {hi}\n\
         [cache]\nengines_dir = {engines:?}\nrun_dir = {run:?}\n[engine]\n{threads}[engines.default]\n{engine}\n\
         [handoff]\ndir = {handoff:?}\n\
         [[pools]]\nid = {pool:?}\nmodel_ref = {mref:?}\nmodel_id = {mid:?}\nctx = {ctx}\nslots = {slots}\ndevices = {devices:?}\ngpu_policy = {policy:?}\n{extra}\n",
        handoff = spec.dir.join("handoff").display().to_string(),
        run = spec.dir.join("run").display().to_string(),
        node = spec.node_id,
        reg = spec.registration_token.as_ref().map(|t| format!("registration_token = {t:?}\n")).unwrap_or_default(),
        wport = spec.worker_port,
        hi = spec.heartbeat_interval_ms,
        engines = spec.engines_dir.display().to_string(),
        pool = spec.pool_id,
        mref = format!("file:{}", spec.model_path.display()),
        mid = spec.model_id,
        ctx = spec.ctx,
        slots = spec.slots,
        devices = spec.devices,
        policy = if spec.devices.trim() == "cpu" { "cpu" } else { "gpu" },
        extra = spec.pm_extra,
    )
}

fn command(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Command> {
    if !bin.is_file() {
        bail!(
            "{} does not exist; build it first (cargo build --bins)",
            bin.display()
        );
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(config)
        .arg("--log-json")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    Ok(cmd)
}

fn spawn(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    command(bin, config, log)?
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

async fn terminate(c: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    if let Some(pid) = c.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(Duration::from_secs(40), c.wait()).await {
        Ok(s) => Ok(s?),
        Err(_) => {
            c.kill().await?;
            Ok(c.wait().await?)
        }
    }
}

pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
