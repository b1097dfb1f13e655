//! A whole llama-orch stack on one machine: orchestratord and one pool-managerd as child processes
//! on loopback, with JSON logs in files. `llorch up` and the cluster tests both use it. In HA mode
//! ([`HaSpec`]) several orchestratord share one Postgres database (`[state] backend = "postgres"`),
//! pool-managerd knows them all (`orchestrator.urls`), and [`Stack::leader`] finds the leader.

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
    /// HA mode: several orchestratord on one Postgres database instead of one on SQLite.
    pub ha: Option<HaSpec>,
}

/// An HA group on one machine: `replicas` orchestratord processes with the same `[state]`.
#[derive(Debug, Clone)]
pub struct HaSpec {
    pub replicas: usize,
    /// `[state] url`: the database the group shares.
    pub state_url: String,
    /// `[state] lease_ms`: a paused leader is superseded after this long.
    pub lease_ms: u64,
    /// The replicas' ports (a missing entry or 0 picks a free port).
    pub ports: Vec<u16>,
    /// Set by [`HaSpec::fresh`]: the server's admin URL and the database to drop at shutdown.
    pub drop_on_shutdown: Option<(String, String)>,
}

impl HaSpec {
    /// `replicas` orchestratord on a new, empty database `ha_<random>` on the server of
    /// `admin_url` (a URL with a role that may create databases, such as `LLORCH_TEST_PG_URL`);
    /// the database is dropped when the stack shuts down.
    pub fn fresh(admin_url: &str, replicas: usize) -> anyhow::Result<Self> {
        let name = format!("ha_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        psql(admin_url, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            replicas,
            state_url: with_database(admin_url, &name)?,
            lease_ms: 1500,
            ports: vec![],
            drop_on_shutdown: Some((admin_url.to_string(), name)),
        })
    }
}

/// Creates database `name` on the server of `admin_url` unless it exists; returns its URL.
pub fn ensure_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "database name {name:?}: use lowercase letters, digits and _"
    );
    let exists = psql(
        admin_url,
        &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
    )?;
    if exists.trim() != "1" {
        psql(admin_url, &format!("CREATE DATABASE {name}"))?;
    }
    with_database(admin_url, name)
}

/// `url` with its database (the path) replaced by `db`.
pub fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let scheme_end = url
        .find("://")
        .with_context(|| format!("{url:?} is not a postgres:// URL"))?
        + 3;
    let (head, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let host_end = head[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(head.len());
    Ok(format!("{}/{db}{query}", &head[..host_end]))
}

/// Runs one SQL statement with `psql` (installed with the server) and returns its unaligned
/// output.
fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("psql")
        .arg("-X")
        .arg("-q")
        .arg("-tA")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-d")
        .arg(url)
        .arg("-c")
        .arg(sql)
        .output()
        .context("cannot run psql (install postgresql: scripts/postgres.sh does)")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Ensures the local Postgres server and role of scripts/postgres.sh (the same file, built into
/// this binary) and returns its admin URL (`postgres://llorch:llorch@127.0.0.1:PORT/postgres`).
pub fn ensure_postgres() -> anyhow::Result<String> {
    const SCRIPT: &str = include_str!("../../../scripts/postgres.sh");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(SCRIPT)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run bash")?;
    if !out.status.success() {
        bail!("setting up Postgres failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("LLORCH_TEST_PG_URL="))
        .map(str::to_string)
        .context("scripts/postgres.sh printed no URL")
}

/// One orchestratord of an HA group.
pub struct Replica {
    pub url: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub config: PathBuf,
    /// Stopped with SIGSTOP (and not yet continued).
    pub paused: bool,
}

/// The daemons of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Daemon {
    Orchestratord,
    PoolManagerd,
    /// Orchestratord `i` of an HA group.
    Replica(usize),
}

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Daemon::Orchestratord => f.write_str("orchestratord"),
            Daemon::PoolManagerd => f.write_str("pool-managerd"),
            Daemon::Replica(i) => write!(f, "orchestratord-{i}"),
        }
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
            ha: None,
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
    /// The orchestratord (None in HA mode: see `replicas`).
    pub orchd: Option<Child>,
    /// HA mode: the group's orchestratord, in the order of their ports.
    pub replicas: Vec<Replica>,
    pub pool_managerd: Option<Child>,
    /// Nodes added with [`Stack::add_node`].
    pub nodes: Vec<NodeProc>,
    /// orchestratord's base URL; in HA mode every replica's, comma-separated (what
    /// `client::Client::new` and `LLORCH_URL` take).
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

/// A loopback port that nothing listens on now, for a daemon to bind.
///
/// The port comes from below the kernel's ephemeral range (`ip_local_port_range`), walked from a
/// per-process offset: a port that `bind(0)` handed out and that was released again could be
/// taken as the source port of any outgoing connection before the daemon binds it (seen in CI as
/// "Address already in use"); ports below the range are never handed out that way, and within
/// one process no port is handed out twice.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > LOW + 1_000 {
        let span = ephemeral_low - LOW;
        let offset = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let port = LOW + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return Ok(port as u16);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Stack {
    /// Writes the configs and starts orchestratord (HA: every replica), then pool-managerd.
    pub async fn start(mut spec: StackSpec) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("cannot create {}", spec.dir.display()))?;
        if spec.orchd_port == 0 {
            spec.orchd_port = free_port()?;
        }
        if spec.worker_port == 0 {
            spec.worker_port = free_port()?;
        }
        let worker_url = format!("http://127.0.0.1:{}", spec.worker_port);
        let mut replicas = vec![];
        if let Some(mut ha) = spec.ha.take() {
            anyhow::ensure!(
                ha.replicas >= 1,
                "an HA group needs at least one orchestratord"
            );
            ha.ports.resize(ha.replicas, 0);
            if ha.ports[0] == 0 {
                ha.ports[0] = spec.orchd_port;
            }
            for p in ha.ports.iter_mut().filter(|p| **p == 0) {
                *p = free_port()?;
            }
            for (i, port) in ha.ports.iter().enumerate() {
                let url = format!("http://127.0.0.1:{port}");
                let config = spec.dir.join(format!("orchestratord-{i}.toml"));
                let state = format!(
                    "[state]\nbackend = \"postgres\"\nurl = {url_db:?}\nadvertise_url = {url:?}\nlease_ms = {lease}\n",
                    url_db = ha.state_url,
                    lease = ha.lease_ms
                );
                std::fs::write(
                    &config,
                    orchd_toml(&spec, &spec.dir.join(format!("state-{i}")), *port, &state),
                )?;
                replicas.push(Replica {
                    url,
                    child: None,
                    log: spec.dir.join(format!("orchestratord-{i}.log")),
                    config,
                    paused: false,
                });
            }
            spec.ha = Some(ha);
        }
        let orchd_url = if replicas.is_empty() {
            format!("http://127.0.0.1:{}", spec.orchd_port)
        } else {
            replicas
                .iter()
                .map(|r| r.url.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let orchd_cfg = spec.dir.join("orchestratord.toml");
        let orchd_log = match replicas.first() {
            Some(r) => r.log.clone(),
            None => spec.dir.join("orchestratord.log"),
        };
        let urls: Vec<String> = match replicas.is_empty() {
            true => vec![orchd_url.clone()],
            false => replicas.iter().map(|r| r.url.clone()).collect(),
        };
        let pm_cfg = spec.dir.join("pool-managerd.toml");
        std::fs::write(&pm_cfg, pool_managerd_toml(&spec, &urls))?;
        let pm_log = spec.dir.join("pool-managerd.log");
        let orchd = if replicas.is_empty() {
            std::fs::write(
                &orchd_cfg,
                orchd_toml(&spec, &spec.dir.join("state"), spec.orchd_port, ""),
            )?;
            Some(spawn(
                &spec.bin_dir.join("orchestratord"),
                &orchd_cfg,
                &orchd_log,
            )?)
        } else {
            None
        };
        let mut stack = Stack {
            spec,
            orchd,
            replicas,
            pool_managerd: None,
            nodes: vec![],
            orchd_url,
            worker_url,
            orchd_log,
            pm_log,
            pm_config: pm_cfg,
        };
        if stack.replicas.is_empty() {
            stack
                .wait_http(
                    &format!("{}/health", stack.orchd_url),
                    Duration::from_secs(20),
                )
                .await?;
        } else {
            for i in 0..stack.replicas.len() {
                stack.start_replica(i).await?;
            }
        }
        if !stack.spec.pool_id.is_empty() {
            stack.start_pool_managerd()?;
        }
        Ok(stack)
    }

    /// The `[orchestrator]` lines of a pool-managerd config: `url` for one orchestratord, `urls`
    /// for an HA group.
    fn orchestrator_toml(&self) -> String {
        orchestrator_toml(&self.orchestratord_urls())
    }

    /// Every orchestratord's base URL (one outside HA mode).
    pub fn orchestratord_urls(&self) -> Vec<String> {
        if self.replicas.is_empty() {
            vec![self.orchd_url.clone()]
        } else {
            self.replicas.iter().map(|r| r.url.clone()).collect()
        }
    }

    /// Starts HA replica `i` (again) on its config and waits for its `GET /health`.
    pub async fn start_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let bin = self.spec.bin_dir.join("orchestratord");
        let r = self.replicas.get_mut(i).context("no such replica")?;
        r.child = Some(spawn(&bin, &r.config, &r.log)?);
        r.paused = false;
        let url = format!("{}/health", r.url);
        self.wait_health(&url, Some(i), Duration::from_secs(20))
            .await
    }

    /// The pid of HA replica `i` while it runs.
    pub fn replica_pid(&self, i: usize) -> Option<i32> {
        self.replicas.get(i)?.child.as_ref()?.id().map(|p| p as i32)
    }

    /// Sends `signal` to HA replica `i`.
    pub fn signal_replica(
        &mut self,
        i: usize,
        signal: nix::sys::signal::Signal,
    ) -> anyhow::Result<()> {
        use nix::sys::signal::Signal;
        let pid = self
            .replica_pid(i)
            .with_context(|| format!("orchestratord-{i} is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
        match signal {
            Signal::SIGSTOP => self.replicas[i].paused = true,
            Signal::SIGCONT => self.replicas[i].paused = false,
            _ => {}
        }
        Ok(())
    }

    /// `kill -9` of HA replica `i`; waits until it is gone.
    pub async fn kill_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let r = self.replicas.get_mut(i).context("no such replica")?;
        let mut c = r
            .child
            .take()
            .with_context(|| format!("orchestratord-{i} is not running"))?;
        c.kill().await?;
        r.paused = false;
        Ok(())
    }

    /// SIGTERM to HA replica `i`; returns its exit status.
    pub async fn terminate_replica(
        &mut self,
        i: usize,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let r = self.replicas.get_mut(i).context("no such replica")?;
        let mut c = r
            .child
            .take()
            .with_context(|| format!("orchestratord-{i} is not running"))?;
        if r.paused {
            r.paused = false;
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGCONT,
                );
            }
        }
        terminate(&mut c).await
    }

    /// Waits up to `timeout` for HA replica `i` to exit on its own (e.g. after stepping down) and
    /// returns its status.
    pub async fn wait_replica_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let r = self.replicas.get_mut(i).context("no such replica")?;
        let c = r
            .child
            .as_mut()
            .with_context(|| format!("orchestratord-{i} is not running"))?;
        let status = tokio::time::timeout(timeout, c.wait())
            .await
            .with_context(|| format!("orchestratord-{i} did not exit within {timeout:?}"))??;
        r.child = None;
        r.paused = false;
        Ok(status)
    }

    /// What replica `i` says it is: `Some(true)` leader, `Some(false)` follower, `None` no answer
    /// (down, paused, or not answering within a second). Its `GET /health` body's `role`
    /// decides; without one, a non-503 answer on an authenticated route means leader.
    pub async fn replica_is_leader(&self, i: usize) -> Option<bool> {
        let r = self.replicas.get(i)?;
        if r.child.is_none() || r.paused {
            return None;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .ok()?;
        let health = http.get(format!("{}/health", r.url)).send().await.ok()?;
        if !health.status().is_success() {
            return None;
        }
        let body: serde_json::Value = health.json().await.unwrap_or_default();
        if let Some(role) = body.get("role").and_then(|v| v.as_str()) {
            return Some(role == "leader");
        }
        let pools = http.get(format!("{}/v2/pools", r.url)).send().await.ok()?;
        Some(pools.status().as_u16() != 503)
    }

    /// The index of the leader of the HA group, once exactly one replica says it leads (polls
    /// every 50 ms up to `timeout`).
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        anyhow::ensure!(!self.replicas.is_empty(), "this stack is not an HA group");
        let until = Instant::now() + timeout;
        loop {
            let mut leaders = vec![];
            for i in 0..self.replicas.len() {
                if self.replica_is_leader(i).await == Some(true) {
                    leaders.push(i);
                }
            }
            if leaders.len() == 1 {
                return Ok(leaders[0]);
            }
            if Instant::now() > until {
                bail!("no single leader within {timeout:?} (leaders: {leaders:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
            "[node]\nid = {id:?}\nmachine_id = {id:?}\n[server]\nbind = \"127.0.0.1:{port}\"\n[orchestrator]\n{orch}[heartbeat]\ninterval_ms = {hi}\n\
             [cache]\nengines_dir = {engines:?}\nmodels_dir = {models:?}\nrun_dir = {run:?}\n[handoff]\ndir = {handoff:?}\n[engine]\nstart_timeout_ms = 60000\n{keys}[engines.default]\n{engine}\n",
            models = self.spec.dir.join("models").display().to_string(),
            handoff = self.spec.dir.join(format!("handoff-{}", node.node_id)).display().to_string(),
            run = self.spec.dir.join("run").display().to_string(),
            keys = node.engine_keys,
            id = node.node_id,
            orch = self.orchestrator_toml(),
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
        self.wait_health(url, None, timeout).await
    }

    /// Waits for `url` to answer 2xx while the orchestratord (HA: replica `replica`) runs.
    async fn wait_health(
        &mut self,
        url: &str,
        replica: Option<usize>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
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
            let (child, log) = match replica {
                Some(i) => {
                    let r = &mut self.replicas[i];
                    (r.child.as_mut(), &r.log)
                }
                None => (self.orchd.as_mut(), &self.orchd_log),
            };
            if let Some(c) = child {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("orchestratord exited ({status}):\n{}", tail(log, 15));
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
        for (i, r) in self.replicas.iter_mut().enumerate() {
            if let Some(Ok(Some(status))) = r.child.as_mut().map(|c| c.try_wait()) {
                r.child = None;
                r.paused = false;
                return Some((Daemon::Replica(i), status));
            }
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
            Daemon::Replica(i) => self.start_replica(i).await,
        }
    }

    /// The log file of `daemon`.
    pub fn log_of(&self, daemon: Daemon) -> &Path {
        match daemon {
            Daemon::Orchestratord => &self.orchd_log,
            Daemon::PoolManagerd => &self.pm_log,
            Daemon::Replica(i) => self
                .replicas
                .get(i)
                .map(|r| r.log.as_path())
                .unwrap_or(&self.orchd_log),
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
        for i in 0..self.replicas.len() {
            if self.replicas[i].child.is_some() {
                self.terminate_replica(i).await?;
            }
        }
        if let Some((admin, db)) = self
            .spec
            .ha
            .as_mut()
            .and_then(|h| h.drop_on_shutdown.take())
        {
            psql(
                &admin,
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            )?;
        }
        Ok(())
    }

    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.orchd_log.clone(), self.pm_log.clone()];
        v.extend(self.replicas.iter().skip(1).map(|r| r.log.clone()));
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

/// orchestratord's config: its state folder, bind, heartbeats, `state` (the HA `[state]` table or
/// nothing) and the spec's extra TOML.
fn orchd_toml(spec: &StackSpec, state_dir: &Path, port: u16, state: &str) -> String {
    format!(
        "state_dir = {dir:?}\n[server]\nbind = \"127.0.0.1:{port}\"\n[nodes]\nheartbeat_interval_ms = {hi}\nheartbeat_timeout_ms = {ht}\n{state}{extra}\n",
        dir = state_dir,
        hi = spec.heartbeat_interval_ms,
        ht = spec.heartbeat_timeout_ms,
        extra = spec.orchd_extra
    )
}

/// The keys of pool-managerd's `[orchestrator]` table for these orchestratord URLs.
fn orchestrator_toml(urls: &[String]) -> String {
    match urls {
        [one] => format!("url = {one:?}\n"),
        many => format!(
            "urls = [{}]\n",
            many.iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn pool_managerd_toml(spec: &StackSpec, orchd_urls: &[String]) -> String {
    let engine = engine_toml(&spec.engine);
    let threads = spec
        .threads
        .map(|t| format!("threads = {t}\n"))
        .unwrap_or_default();
    format!(
        "[node]\nid = {node:?}\n[server]\nbind = \"127.0.0.1:{wport}\"\n[orchestrator]\n{orch}{reg}[heartbeat]\ninterval_ms = {hi}\n\
         [cache]\nengines_dir = {engines:?}\nrun_dir = {run:?}\n[engine]\n{threads}[engines.default]\n{engine}\n\
         [handoff]\ndir = {handoff:?}\n\
         [[pools]]\nid = {pool:?}\nmodel_ref = {mref:?}\nmodel_id = {mid:?}\nctx = {ctx}\nslots = {slots}\ndevices = {devices:?}\ngpu_policy = {policy:?}\n{extra}\n",
        handoff = spec.dir.join("handoff").display().to_string(),
        run = spec.dir.join("run").display().to_string(),
        node = spec.node_id,
        orch = orchestrator_toml(orchd_urls),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_gets_its_database_replaced() {
        let u = "postgres://llorch:llorch@127.0.0.1:5432/postgres";
        assert_eq!(
            with_database(u, "ha_1").ok().as_deref(),
            Some("postgres://llorch:llorch@127.0.0.1:5432/ha_1")
        );
        assert_eq!(
            with_database("postgres://h:1?sslmode=disable", "x")
                .ok()
                .as_deref(),
            Some("postgres://h:1/x?sslmode=disable")
        );
        assert!(with_database("not a url", "x").is_err());
        assert!(ensure_database(u, "Robert'); DROP").is_err());
    }

    #[test]
    fn pool_managerd_names_one_orchestratord_or_the_group() {
        assert_eq!(
            orchestrator_toml(&["http://a:1".into()]),
            "url = \"http://a:1\"\n"
        );
        assert_eq!(
            orchestrator_toml(&["http://a:1".into(), "http://b:2".into()]),
            "urls = [\"http://a:1\", \"http://b:2\"]\n"
        );
    }
}
