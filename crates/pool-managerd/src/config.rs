//! pool-managerd configuration (API.md §17.3): the raw TOML shape, and validation into [`Config`]
//! that reports every problem at once. Nothing below `main` reads the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::model_ref::ModelRef;
use api::{ModelId, NodeId, PoolId};
use daemon::secret::Secret;
use engine::{EngineSource, GpuPolicy};
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawConfig {
    pub node: RawNode,
    pub server: RawServer,
    pub orchestrator: RawOrchestrator,
    pub dispatch: RawDispatch,
    pub worker: RawWorker,
    pub heartbeat: RawHeartbeat,
    pub shutdown_grace_ms: Option<u64>,
    pub cache: RawCache,
    pub engine: RawEngine,
    pub engines: BTreeMap<String, RawEngineSource>,
    pub pools: Vec<RawPool>,
    pub handoff: RawHandoff,
    pub fetch: RawFetch,
    pub logging: RawLogging,
}

/// Model downloads: the Hugging Face endpoint and token (default: `HF_ENDPOINT`, `HF_TOKEN`),
/// and an extra trusted CA for `https://` refs served by a private mirror.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawFetch {
    pub hf_endpoint: Option<String>,
    pub hf_token: Option<String>,
    pub hf_token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawHandoff {
    /// Directory watched for handoff files of engines started outside pool-managerd.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawNode {
    pub id: Option<String>,
    pub machine_id: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawServer {
    pub bind: Option<String>,
    pub advertise_url: Option<String>,
    pub worker_threads: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawOrchestrator {
    pub url: Option<String>,
    /// Several orchestratord of one HA group (a TOML array, or one comma-separated string).
    pub urls: Option<UrlList>,
    pub registration_token: Option<String>,
    pub registration_token_file: Option<PathBuf>,
    pub node_token: Option<String>,
    pub node_token_file: Option<PathBuf>,
}

/// A list of URLs: a TOML array, or one comma-separated string (handy in an env override).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UrlList {
    List(Vec<String>),
    Text(String),
}

impl UrlList {
    fn urls(&self) -> Vec<String> {
        match self {
            UrlList::List(v) => v.clone(),
            UrlList::Text(t) => t.split(',').map(str::to_string).collect(),
        }
    }
}

/// What happens to a dispatch's task when its stream breaks, and how long finished tasks' lines
/// are kept (HA; applies only to dispatches that carry an epoch).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawWorker {
    pub dispatch_grace_ms: Option<u64>,
    pub retention_ms: Option<u64>,
    pub max_retained: Option<usize>,
    pub buffer_max_bytes: Option<usize>,
    pub retained_max_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawDispatch {
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawHeartbeat {
    pub interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawCache {
    pub models_dir: Option<PathBuf>,
    pub engines_dir: Option<PathBuf>,
    /// Where the engines' pid records live (default `~/.cache/llama-orch/run`).
    pub run_dir: Option<PathBuf>,
    /// Size quota of the models cache; least recently used models no pool uses are evicted.
    pub models_max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawEngine {
    pub start_timeout_ms: Option<u64>,
    pub stop_grace_ms: Option<u64>,
    pub cancel_confirm_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_restarts: Option<u32>,
    /// `-t` for every engine; unset lets llama-server choose.
    pub threads: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawEngineSource {
    pub kind: Option<String>,
    pub path: Option<PathBuf>,
    pub sha256: Option<String>,
    pub source_url: Option<String>,
    pub source_sha256: Option<String>,
    pub source_subdir: Option<String>,
    pub build_number: Option<u64>,
    pub cmake_flags: Vec<String>,
    pub git_url: Option<String>,
    pub git_ref: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawPool {
    pub id: Option<String>,
    pub model_ref: Option<String>,
    pub model_id: Option<String>,
    pub model_digest: Option<String>,
    pub ctx: Option<u64>,
    pub slots: Option<u32>,
    pub devices: Option<String>,
    pub gpu_policy: Option<String>,
    pub engine_source: Option<String>,
    pub extra_args: Vec<String>,
    pub chat_template_file: Option<String>,
    /// An embedding pool: the engine runs with `--embedding --pooling <pooling>`.
    pub embedding: Option<bool>,
    pub pooling: Option<String>,
    pub provisioning_target: Option<bool>,
    /// The engine's host-RAM prompt cache in MiB (`--cache-ram`; 0 turns it off); the engine's
    /// own default when absent.
    pub cache_ram_mib: Option<i64>,
    /// The engine's `--slot-prompt-similarity` (0.0–1.0). llama.cpp consults its host-RAM prompt
    /// cache only when a request would keep less than half of what its slot holds, or when no
    /// slot's prompt matches the request above this similarity; `0` turns the match off, so a
    /// one-slot engine saves its slot and restores the request's best match from that cache on
    /// every request (decision 75). The engine's own default (0.1) when absent.
    pub slot_prompt_similarity: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawLogging {
    pub level: Option<String>,
    pub json: Option<bool>,
}

/// How pool-managerd proves itself to orchestratord at registration.
#[derive(Debug, Clone)]
pub enum NodeAuth {
    Registration(Secret),
    Static(Secret),
    /// Open mode: orchestratord has no tokens configured (loopback only).
    None,
}

/// The worker side of HA: how long a task whose dispatch stream broke keeps running, and what is
/// kept so a dispatch can attach to it again.
#[derive(Debug, Clone)]
pub struct TaskRetention {
    /// A task whose dispatch (with an epoch) lost its stream is canceled after this long.
    pub grace: Duration,
    /// Finished tasks' lines are kept this long…
    pub retention: Duration,
    /// …for at most this many tasks…
    pub max_retained: usize,
    /// …and this many bytes in all.
    pub retained_max_bytes: usize,
    /// A task's lines beyond this many bytes cannot be replayed.
    pub buffer_max_bytes: usize,
}

impl Default for TaskRetention {
    fn default() -> Self {
        Self {
            grace: Duration::from_millis(30_000),
            retention: Duration::from_millis(600_000),
            max_retained: 4096,
            retained_max_bytes: 1 << 30,
            buffer_max_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineTimings {
    pub start_timeout: Duration,
    pub stop_grace: Duration,
    pub cancel_confirm: Duration,
    pub idle_timeout: Duration,
    pub max_restarts: u32,
    pub threads: Option<u32>,
}

/// The model a pool is configured with (fetched at start unless it is a `file:` ref).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub id: ModelId,
    pub model_ref: ModelRef,
    pub digest: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub id: PoolId,
    /// None: the pool starts Unloaded and waits for a `load-model` or `reload` command.
    pub model: Option<ModelSpec>,
    /// orchestratord may load models into this pool (§8).
    pub provisioning_target: bool,
    pub ctx_per_slot: u64,
    pub slots: u32,
    /// Canonical device mask: `cpu` or ascending comma-separated GPU indices.
    pub device_mask: String,
    pub gpu_policy: GpuPolicy,
    pub engine_source: String,
    /// The engine's extra flags: `cache_ram_mib` first as `--cache-ram N`, then
    /// `slot_prompt_similarity` as `--slot-prompt-similarity F`, then `extra_args`; a
    /// `chat_template_file` is passed here as `--chat-template-file`, an embedding pool's
    /// `--embedding --pooling …` too.
    pub extra_args: Vec<String>,
    /// `embedding` for an embedding pool, else `completion`.
    pub workload: api::task::Workload,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: NodeId,
    pub machine_id: api::MachineId,
    pub bind: SocketAddr,
    pub advertise_url: String,
    /// The runtime's worker threads (`server.worker_threads`; `None`: one per core).
    pub worker_threads: Option<usize>,
    /// orchestratord's URLs (`orchestrator.urls`, else `orchestrator.url`): registration follows
    /// the leader among them.
    pub orchestrator_urls: Vec<String>,
    pub node_auth: NodeAuth,
    pub dispatch_token: Secret,
    pub heartbeat_interval: Duration,
    pub shutdown_grace: Duration,
    pub models_dir: PathBuf,
    pub models_max_bytes: Option<u64>,
    pub engines_dir: PathBuf,
    /// The engines' pid records (`<node>.<pool>.json`), read at start to stop orphans.
    pub run_dir: PathBuf,
    pub hf_endpoint: String,
    pub hf_token: Option<Secret>,
    /// PEM of an extra trusted CA for model downloads.
    pub fetch_ca_pem: Option<Vec<u8>>,
    pub engine: EngineTimings,
    pub tasks: TaskRetention,
    pub engines: BTreeMap<String, EngineSource>,
    pub pools: Vec<PoolSpec>,
    pub handoff_dir: PathBuf,
    pub log_level: String,
    pub log_json: Option<bool>,
}

/// Facts about the host that validation needs (injected so tests can fake them).
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub hostname: String,
    pub machine_id: Option<String>,
    pub home: PathBuf,
    /// GPU indices visible on this node.
    pub gpus: Vec<u32>,
    /// `HF_ENDPOINT` and `HF_TOKEN` from the environment.
    pub hf_endpoint: Option<String>,
    pub hf_token: Option<String>,
}

impl Host {
    pub fn detect() -> Self {
        let hostname = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(|_| "localhost".into());
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            hostname,
            machine_id,
            home,
            gpus: crate::gpu::visible_indices(),
            hf_endpoint: env("HF_ENDPOINT"),
            hf_token: env("HF_TOKEN"),
        }
    }
}

/// Flags in §14.1 that `extra_args` must not repeat.
const RESERVED_FLAGS: &[&str] = &[
    "-m",
    "--model",
    "-a",
    "--alias",
    "-c",
    "--ctx-size",
    "-np",
    "--parallel",
    "--metrics",
    "--api-key",
    "--api-key-file",
    "--host",
    "--port",
    "-ngl",
    "--n-gpu-layers",
    "--gpu-layers",
];

pub const DEFAULT_BIND: &str = "127.0.0.1:9200";
pub const DEFAULT_ORCHESTRATOR_URL: &str = "http://127.0.0.1:8080";

impl RawConfig {
    pub fn validate(self, host: &Host) -> Result<Config, Vec<String>> {
        let mut p = Vec::new();
        let node_raw = self
            .node
            .id
            .clone()
            .unwrap_or_else(|| host.hostname.clone());
        let node_id = node_raw
            .parse::<NodeId>()
            .map_err(|e| p.push(format!("node.id: {e}")))
            .ok();
        let machine_id = self
            .node
            .machine_id
            .clone()
            .or_else(|| host.machine_id.clone())
            .unwrap_or_else(|| node_raw.clone())
            .parse::<api::MachineId>()
            .map_err(|e| p.push(format!("node.machine_id: {e}")))
            .ok();
        let bind_raw = self
            .server
            .bind
            .clone()
            .unwrap_or_else(|| DEFAULT_BIND.into());
        let bind = bind_raw
            .parse::<SocketAddr>()
            .map_err(|e| p.push(format!("server.bind: {bind_raw:?} is not host:port ({e})")))
            .ok();
        let advertise_url = match (&self.server.advertise_url, bind) {
            (Some(u), _) => Some(u.trim_end_matches('/').to_string()),
            (None, Some(b)) if b.ip().is_unspecified() => {
                p.push(
                    "server.advertise_url: required when server.bind is a wildcard address".into(),
                );
                None
            }
            (None, b) => b.map(|b| format!("http://{b}")),
        };
        // `url` (when set) comes first, then `urls` in order, each once.
        let mut orchestrator_urls: Vec<String> = Vec::new();
        let listed = self.orchestrator.urls.as_ref().map(UrlList::urls);
        let named = self
            .orchestrator
            .url
            .iter()
            .map(|u| ("orchestrator.url", u.clone()));
        let default = (self.orchestrator.url.is_none() && listed.is_none())
            .then(|| ("orchestrator.url", DEFAULT_ORCHESTRATOR_URL.to_string()));
        let listed = listed
            .into_iter()
            .flatten()
            .map(|u| ("orchestrator.urls", u));
        for (key, u) in named.chain(default).chain(listed) {
            let u = u.trim().trim_end_matches('/').to_string();
            if !u.starts_with("http://") && !u.starts_with("https://") {
                p.push(format!("{key}: {u:?} must start with http:// or https://"));
            } else if !orchestrator_urls.contains(&u) {
                orchestrator_urls.push(u);
            }
        }
        if orchestrator_urls.is_empty() && !p.iter().any(|m| m.starts_with("orchestrator.url")) {
            p.push("orchestrator.urls: must name at least one URL".into());
        }
        let reg = daemon::config::secret_or_file(
            "orchestrator.registration_token",
            &self.orchestrator.registration_token,
            &self.orchestrator.registration_token_file,
            &mut p,
        );
        let stat = daemon::config::secret_or_file(
            "orchestrator.node_token",
            &self.orchestrator.node_token,
            &self.orchestrator.node_token_file,
            &mut p,
        );
        let node_auth = match (reg, stat) {
            (_, Some(s)) => NodeAuth::Static(check_token("orchestrator.node_token", s, &mut p)),
            (Some(r), None) => {
                NodeAuth::Registration(check_token("orchestrator.registration_token", r, &mut p))
            }
            (None, None) => NodeAuth::None,
        };
        let dispatch_token = match daemon::config::secret_or_file(
            "dispatch.token",
            &self.dispatch.token,
            &self.dispatch.token_file,
            &mut p,
        ) {
            Some(t) if t.len() < 32 => {
                p.push("dispatch.token: must be at least 32 characters".into());
                Secret::new(t)
            }
            Some(t) => Secret::new(t),
            None => Secret::random_hex(32),
        };
        let ms = |v: Option<u64>, d: u64| Duration::from_millis(v.unwrap_or(d));
        let worker_threads = daemon::main_loop::worker_threads(self.server.worker_threads, &mut p);
        let heartbeat_interval = ms(self.heartbeat.interval_ms, 10_000);
        if heartbeat_interval < Duration::from_millis(100) {
            p.push("heartbeat.interval_ms: must be at least 100".into());
        }
        let cache_root = host.home.join(".cache").join("llama-orch");
        let models_dir = self
            .cache
            .models_dir
            .clone()
            .unwrap_or_else(|| cache_root.join("models"));
        let engines_dir = self
            .cache
            .engines_dir
            .clone()
            .unwrap_or_else(|| cache_root.join("engines"));
        let e = &self.engine;
        let engine = EngineTimings {
            start_timeout: ms(e.start_timeout_ms, 120_000),
            stop_grace: ms(e.stop_grace_ms, 5_000),
            cancel_confirm: ms(e.cancel_confirm_ms, 10_000),
            idle_timeout: ms(e.idle_timeout_ms, 60_000),
            max_restarts: e.max_restarts.unwrap_or(5),
            threads: e.threads,
        };
        let w = &self.worker;
        let defaults = TaskRetention::default();
        let tasks = TaskRetention {
            grace: w
                .dispatch_grace_ms
                .map_or(defaults.grace, Duration::from_millis),
            retention: w
                .retention_ms
                .map_or(defaults.retention, Duration::from_millis),
            max_retained: w.max_retained.unwrap_or(defaults.max_retained),
            retained_max_bytes: w.retained_max_bytes.unwrap_or(defaults.retained_max_bytes),
            buffer_max_bytes: w.buffer_max_bytes.unwrap_or(defaults.buffer_max_bytes),
        };
        if tasks.buffer_max_bytes == 0 {
            p.push("worker.buffer_max_bytes: must be positive".into());
        }
        let hf_endpoint = self
            .fetch
            .hf_endpoint
            .clone()
            .or_else(|| host.hf_endpoint.clone())
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim_end_matches('/')
            .to_string();
        if !hf_endpoint.starts_with("https://") && !hf_endpoint.starts_with("http://") {
            p.push(format!(
                "fetch.hf_endpoint: {hf_endpoint:?} must be an http(s) URL"
            ));
        }
        let hf_token = daemon::config::secret_or_file(
            "fetch.hf_token",
            &self.fetch.hf_token,
            &self.fetch.hf_token_file,
            &mut p,
        )
        .or_else(|| host.hf_token.clone())
        .map(Secret::new);
        let fetch_ca_pem = match &self.fetch.ca_file {
            Some(f) => match std::fs::read(f) {
                Ok(pem) if pem.starts_with(b"-----BEGIN") => Some(pem),
                Ok(_) => {
                    p.push(format!(
                        "fetch.ca_file: {} is not a PEM certificate",
                        f.display()
                    ));
                    None
                }
                Err(e) => {
                    p.push(format!("fetch.ca_file: cannot read {}: {e}", f.display()));
                    None
                }
            },
            None => None,
        };
        if self.cache.models_max_bytes == Some(0) {
            p.push("cache.models_max_bytes: must be positive (leave it unset for no quota)".into());
        }
        let engines = validate_engines(&self.engines, &mut p);
        let pools = validate_pools(&self.pools, &engines, host, &mut p);
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Config {
            node_id: node_id.expect("checked"),
            machine_id: machine_id.expect("checked"),
            bind: bind.expect("checked"),
            advertise_url: advertise_url.expect("checked"),
            worker_threads,
            orchestrator_urls,
            node_auth,
            dispatch_token,
            heartbeat_interval,
            shutdown_grace: ms(self.shutdown_grace_ms, 30_000),
            models_dir,
            models_max_bytes: self.cache.models_max_bytes,
            engines_dir,
            run_dir: self
                .cache
                .run_dir
                .clone()
                .unwrap_or_else(|| cache_root.join("run")),
            hf_endpoint,
            hf_token,
            fetch_ca_pem,
            engine,
            tasks,
            engines,
            pools,
            handoff_dir: self
                .handoff
                .dir
                .clone()
                .unwrap_or_else(|| cache_root.join("handoff")),
            log_level: self.logging.level.clone().unwrap_or_else(|| "info".into()),
            log_json: self.logging.json,
        })
    }
}

fn check_token(key: &str, t: String, p: &mut Vec<String>) -> Secret {
    if t.len() < 16 {
        p.push(format!("{key}: tokens must be at least 16 characters"));
    }
    Secret::new(t)
}

fn validate_engines(
    raw: &BTreeMap<String, RawEngineSource>,
    p: &mut Vec<String>,
) -> BTreeMap<String, EngineSource> {
    let mut out = BTreeMap::new();
    for (name, e) in raw {
        let key = format!("engines.{name}");
        let source = match e.kind.as_deref().unwrap_or("binary") {
            "binary" => match &e.path {
                Some(path) if !path.is_absolute() => {
                    p.push(format!("{key}.path: must be an absolute path"));
                    continue;
                }
                Some(path) if !path.is_file() => {
                    p.push(format!(
                        "{key}.path: engine binary {} does not exist",
                        path.display()
                    ));
                    continue;
                }
                Some(path) => EngineSource::Binary {
                    path: path.clone(),
                    sha256: e.sha256.clone(),
                },
                None => {
                    p.push(format!("{key}.path: required for kind = \"binary\""));
                    continue;
                }
            },
            "source" => {
                match &e.source_url {
                    Some(url) => {
                        let local = !url.starts_with("https://");
                        let path = Path::new(url.strip_prefix("file:").unwrap_or(url));
                        if local && !path.is_file() {
                            p.push(format!("{key}.source_url: source archive {} does not exist (run scripts/dev-assets.sh)", path.display()));
                            continue;
                        }
                        if e.source_sha256.is_none() {
                            p.push(format!("{key}.source_sha256: required for kind = \"source\" (pin the archive)"));
                            continue;
                        }
                        EngineSource::Archive {
                            location: url.clone(),
                            subdir: e
                                .source_subdir
                                .clone()
                                .unwrap_or_else(|| "llama.cpp".into()),
                            sha256: e.source_sha256.clone(),
                        }
                    }
                    None => {
                        p.push(format!("{key}.source_url: required for kind = \"source\""));
                        continue;
                    }
                }
            }
            "git" => match (&e.git_url, &e.git_ref) {
                (Some(url), Some(r)) => EngineSource::Git {
                    url: url.clone(),
                    reference: r.clone(),
                },
                _ => {
                    p.push(format!("{key}: kind = \"git\" needs git_url and git_ref"));
                    continue;
                }
            },
            other => {
                p.push(format!(
                    "{key}.kind: {other:?} is not one of binary, source, git"
                ));
                continue;
            }
        };
        out.insert(name.clone(), source);
    }
    out
}

fn validate_pools(
    raw: &[RawPool],
    engines: &BTreeMap<String, EngineSource>,
    host: &Host,
    p: &mut Vec<String>,
) -> Vec<PoolSpec> {
    let mut out: Vec<PoolSpec> = Vec::new();
    for (i, rp) in raw.iter().enumerate() {
        let key = format!("pools[{i}]");
        let before = p.len();
        let id = match rp.id.as_deref().map(str::parse::<PoolId>) {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                p.push(format!("{key}.id: {e}"));
                None
            }
            None => {
                p.push(format!("{key}.id: required"));
                None
            }
        };
        if let Some(id) = &id {
            if out.iter().any(|o| &o.id == id) {
                p.push(format!("{key}.id: duplicate pool id {id}"));
            }
        }
        let model_ref = match rp.model_ref.as_deref().map(ModelRef::parse) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                p.push(format!("{key}.model_ref: {e}"));
                None
            }
            None => None,
        };
        if let Some(ModelRef::File { path }) = &model_ref {
            if !Path::new(path).is_file() {
                p.push(format!("{key}.model_ref: model file {path} does not exist"));
            }
        }
        if model_ref.is_none() && (rp.model_id.is_some() || rp.model_digest.is_some()) {
            p.push(format!(
                "{key}.model_id: model_id and model_digest need a model_ref"
            ));
        }
        let model_id = match (&rp.model_id, &model_ref) {
            (Some(m), _) => m
                .parse::<ModelId>()
                .map_err(|e| p.push(format!("{key}.model_id: {e}")))
                .ok(),
            (None, Some(r)) => r
                .default_id()
                .parse::<ModelId>()
                .map_err(|e| p.push(format!("{key}.model_ref: cannot derive a model id: {e}")))
                .ok(),
            (None, None) => None,
        };
        let slots = rp.slots.unwrap_or(1);
        if slots == 0 {
            p.push(format!("{key}.slots: must be at least 1"));
        }
        let ctx = rp.ctx.unwrap_or(4096);
        if ctx < 16 {
            p.push(format!("{key}.ctx: must be at least 16"));
        }
        let policy = match rp.gpu_policy.as_deref().unwrap_or("gpu") {
            "gpu" => GpuPolicy::Gpu,
            "cpu" => GpuPolicy::Cpu,
            "auto" => GpuPolicy::Auto,
            other => {
                p.push(format!(
                    "{key}.gpu_policy: {other:?} is not one of gpu, cpu, auto"
                ));
                GpuPolicy::Cpu
            }
        };
        let device_mask =
            validate_devices(&key, rp.devices.as_deref().unwrap_or("0"), policy, host, p);
        let engine_source = rp.engine_source.clone().unwrap_or_else(|| "default".into());
        // A typed key and the same flag in `extra_args` would both reach the engine.
        let repeated = |long: &str, short: &str, typed: &str, p: &mut Vec<String>| {
            let named = rp.extra_args.iter().any(|a| {
                a == long || a == short || a.strip_prefix(long).is_some_and(|r| r.starts_with('='))
            });
            if named {
                p.push(format!("{key}.extra_args: {long} repeats {key}.{typed}"));
            }
            named
        };
        let cache_ram = match rp.cache_ram_mib {
            Some(n) if n < 0 => {
                p.push(format!("{key}.cache_ram_mib: must be 0 or more, got {n}"));
                None
            }
            Some(_) if repeated("--cache-ram", "-cram", "cache_ram_mib", p) => None,
            other => other,
        };
        if !engines.contains_key(&engine_source) {
            p.push(format!(
                "{key}.engine_source: no engine source named {engine_source:?} under [engines]"
            ));
        }
        let similarity = match rp.slot_prompt_similarity {
            Some(f) if !(0.0..=1.0).contains(&f) => {
                p.push(format!(
                    "{key}.slot_prompt_similarity: must be between 0.0 and 1.0, got {f}"
                ));
                None
            }
            Some(_)
                if repeated(
                    "--slot-prompt-similarity",
                    "-sps",
                    "slot_prompt_similarity",
                    p,
                ) =>
            {
                None
            }
            other => other,
        };
        for a in &rp.extra_args {
            let flag = a.split('=').next().unwrap_or(a);
            if RESERVED_FLAGS.contains(&flag) {
                p.push(format!(
                    "{key}.extra_args: {flag} is set by pool-managerd and must not be repeated"
                ));
            }
        }
        let mut extra_args: Vec<String> = cache_ram
            .map(|n| vec!["--cache-ram".to_string(), n.to_string()])
            .unwrap_or_default();
        if let Some(f) = similarity {
            extra_args.extend(["--slot-prompt-similarity".to_string(), f.to_string()]);
        }
        extra_args.extend(rp.extra_args.iter().cloned());
        if let Some(t) = &rp.chat_template_file {
            if !Path::new(t).is_file() {
                p.push(format!(
                    "{key}.chat_template_file: template file {t} does not exist"
                ));
            }
            if extra_args.iter().any(|a| {
                a.starts_with("--chat-template")
                    || a.starts_with("--jinja")
                    || a.starts_with("--no-jinja")
            }) {
                p.push(format!(
                    "{key}.extra_args: chat template flags exclude chat_template_file"
                ));
            }
            extra_args.extend(["--chat-template-file".to_string(), t.clone()]);
        }
        let embedding = rp.embedding.unwrap_or(false);
        if embedding && rp.chat_template_file.is_some() {
            p.push(format!(
                "{key}.chat_template_file: an embedding pool has no chat template"
            ));
        }
        if extra_args
            .iter()
            .any(|a| a.starts_with("--embedding") || a.starts_with("--pooling"))
        {
            p.push(format!(
                "{key}.extra_args: use embedding = true and pooling instead of --embedding/--pooling"
            ));
        }
        match (embedding, rp.pooling.as_deref()) {
            (false, Some(_)) => p.push(format!("{key}.pooling: needs embedding = true")),
            (true, pooling) => {
                let pooling = pooling.unwrap_or("mean");
                if !["mean", "cls", "last", "none"].contains(&pooling) {
                    p.push(format!(
                        "{key}.pooling: {pooling:?} is not one of mean, cls, last, none"
                    ));
                }
                extra_args.extend([
                    "--embedding".to_string(),
                    "--pooling".to_string(),
                    pooling.to_string(),
                ]);
            }
            (false, None) => {}
        }
        let digest = match rp.model_digest.as_deref().map(api::catalog::parse_digest) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                p.push(format!("{key}.model_digest: {e}"));
                None
            }
            None => None,
        };
        if p.len() == before {
            if let Some(id) = id {
                out.push(PoolSpec {
                    id,
                    model: model_ref.zip(model_id).map(|(model_ref, id)| ModelSpec {
                        id,
                        model_ref,
                        digest,
                    }),
                    provisioning_target: rp.provisioning_target.unwrap_or(true),
                    ctx_per_slot: ctx,
                    slots,
                    device_mask,
                    gpu_policy: policy,
                    engine_source,
                    extra_args,
                    workload: if embedding {
                        api::task::Workload::Embedding
                    } else {
                        api::task::Workload::Completion
                    },
                });
            }
        }
    }
    out
}

/// Canonicalizes a device mask and checks it against the node's GPUs and the policy.
fn validate_devices(
    key: &str,
    raw: &str,
    policy: GpuPolicy,
    host: &Host,
    p: &mut Vec<String>,
) -> String {
    let idx = match crate::gpu::parse_mask(raw) {
        Ok(Some(idx)) => idx,
        Ok(None) => {
            if policy == GpuPolicy::Gpu {
                p.push(format!(
                    "{key}.devices: \"cpu\" contradicts gpu_policy = \"gpu\""
                ));
            }
            return "cpu".into();
        }
        Err(why) => {
            p.push(format!("{key}.devices: {why}"));
            return "cpu".into();
        }
    };
    let missing: Vec<u32> = idx
        .iter()
        .copied()
        .filter(|i| !host.gpus.contains(i))
        .collect();
    match policy {
        GpuPolicy::Gpu if host.gpus.is_empty() => p.push(format!("{key}.gpu_policy: \"gpu\" but this node has no CUDA device; use gpu_policy = \"cpu\" with devices = \"cpu\"")),
        GpuPolicy::Auto if host.gpus.is_empty() => return "cpu".into(),
        GpuPolicy::Cpu if host.gpus.is_empty() => p.push(format!("{key}.devices: {raw:?} names GPUs but this node has none; use devices = \"cpu\"")),
        _ if !missing.is_empty() => p.push(format!("{key}.devices: GPU indices {missing:?} are not present on this node (present: {:?})", host.gpus)),
        _ => {}
    }
    idx.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The catalog id rule of API.md §9.1: last path segment without `.gguf`, lowercased, other
/// characters replaced by `-`, at most 64 characters.
pub fn derive_model_id(path: &Path) -> String {
    api::ids::model_id_from_path(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            hostname: "alpha".into(),
            machine_id: Some("m1".into()),
            home: "/home/x".into(),
            gpus: vec![],
            hf_endpoint: None,
            hf_token: None,
        }
    }

    #[test]
    fn model_id_rule() {
        assert_eq!(
            derive_model_id(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")),
            "smollm2-135m-instruct.q4_1"
        );
    }

    #[test]
    fn model_refs_of_every_scheme() {
        let raw: RawConfig = toml::from_str(
            r#"
            [[pools]]
            id = "a"
            devices = "cpu"
            gpu_policy = "cpu"
            model_ref = "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
            model_digest = "SHA256:B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53"
            [[pools]]
            id = "b"
            devices = "cpu"
            gpu_policy = "cpu"
            provisioning_target = false
            cache_ram_mib = 512
            slot_prompt_similarity = 0.0
            extra_args = ["--temp", "0"]
            [engines.default]
            kind = "git"
            git_url = "https://example.invalid/llama.cpp"
            git_ref = "b1"
            "#,
        )
        .unwrap();
        let cfg = raw.validate(&host()).unwrap();
        let a = cfg.pools[0].model.as_ref().unwrap();
        assert_eq!(a.id.as_str(), "smollm2-135m-instruct.q4_1");
        assert_eq!(
            a.digest.as_deref(),
            Some("sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
        );
        assert!(cfg.pools[0].provisioning_target);
        assert!(
            cfg.pools[1].model.is_none(),
            "no model_ref: the pool starts Unloaded"
        );
        assert!(!cfg.pools[1].provisioning_target);
        assert_eq!(
            cfg.pools[1].extra_args,
            [
                "--cache-ram",
                "512",
                "--slot-prompt-similarity",
                "0",
                "--temp",
                "0"
            ],
            "cache_ram_mib and slot_prompt_similarity become the engine's flags"
        );
        assert!(cfg.pools[0].extra_args.is_empty());
        let bad: RawConfig = toml::from_str(
            "[[pools]]\nid = \"c\"\nmodel_ref = \"file:rel.gguf\"\nmodel_digest = \"md5:00\"\n",
        )
        .unwrap();
        let errs = bad.validate(&host()).unwrap_err();
        assert!(
            errs.iter().any(|e| e.contains("pools[0].model_ref")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("pools[0].model_digest")),
            "{errs:?}"
        );
    }

    #[test]
    fn orchestrator_urls_and_worker_keys() {
        let cfg = RawConfig::default().validate(&host()).unwrap();
        assert_eq!(cfg.orchestrator_urls, [DEFAULT_ORCHESTRATOR_URL]);
        assert_eq!(cfg.tasks.grace, Duration::from_secs(30));
        assert_eq!(cfg.tasks.retention, Duration::from_secs(600));
        let raw: RawConfig = toml::from_str(
            r#"
            [orchestrator]
            urls = ["http://a:1/", "http://b:2"]
            [worker]
            dispatch_grace_ms = 500
            max_retained = 3
            "#,
        )
        .unwrap();
        let cfg = raw.validate(&host()).unwrap();
        assert_eq!(cfg.orchestrator_urls, ["http://a:1", "http://b:2"]);
        assert_eq!(
            (cfg.tasks.grace, cfg.tasks.max_retained),
            (Duration::from_millis(500), 3)
        );
        // An env override gives one comma-separated string; `url` still works and comes first.
        let raw: RawConfig = toml::from_str(
            "[orchestrator]\nurl = \"http://a:1\"\nurls = \"http://b:2, http://a:1\"\n",
        )
        .unwrap();
        let cfg = raw.validate(&host()).unwrap();
        assert_eq!(cfg.orchestrator_urls, ["http://a:1", "http://b:2"]);
        let raw: RawConfig = toml::from_str("[orchestrator]\nurls = [\"ftp://x\"]\n").unwrap();
        let errs = raw.validate(&host()).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.starts_with("orchestrator.urls: \"ftp://x\"")),
            "{errs:?}"
        );
    }

    #[test]
    fn runtime_worker_threads_one_per_core_unless_configured() {
        let cfg = RawConfig::default().validate(&host()).unwrap();
        assert_eq!(cfg.worker_threads, None);
        let raw: RawConfig = toml::from_str("[server]\nworker_threads = 4\n").unwrap();
        assert_eq!(raw.validate(&host()).unwrap().worker_threads, Some(4));
        for bad in [0, 5000] {
            let raw: RawConfig =
                toml::from_str(&format!("[server]\nworker_threads = {bad}\n")).unwrap();
            let errs = raw.validate(&host()).unwrap_err();
            assert!(
                errs.iter().any(|e| e.contains("server.worker_threads")),
                "{errs:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let raw: RawConfig = toml::from_str(
            r#"
            [server]
            bind = "nonsense"
            [[pools]]
            id = "Bad Id"
            model_ref = "file:/nonexistent/model.gguf"
            slots = 0
            gpu_policy = "gpu"
            engine_source = "nope"
            extra_args = ["--port", "1", "--cache-ram", "8"]
            chat_template_file = "/nonexistent/t.jinja"
            cache_ram_mib = -1
            slot_prompt_similarity = 1.5
            [[pools]]
            id = "c"
            cache_ram_mib = 8
            slot_prompt_similarity = 0.5
            extra_args = ["--cache-ram=8", "-sps", "0.2"]
            "#,
        )
        .unwrap();
        let errs = raw.validate(&host()).unwrap_err();
        for want in [
            "server.bind",
            "pools[0].id",
            "model file /nonexistent/model.gguf does not exist",
            "pools[0].slots",
            "no CUDA device",
            "engine_source",
            "--port",
            "pools[0].cache_ram_mib",
            "pools[1].extra_args: --cache-ram repeats",
            "pools[0].slot_prompt_similarity: must be between 0.0 and 1.0, got 1.5",
            "pools[1].extra_args: --slot-prompt-similarity repeats",
            "pools[0].chat_template_file: template file /nonexistent/t.jinja does not exist",
        ] {
            assert!(
                errs.iter().any(|e| e.contains(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn a_chat_template_file_reaches_the_engine_flags() {
        let dir = std::env::temp_dir().join(format!("pm-tmpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = dir.join("t.jinja");
        std::fs::write(&t, "{{ messages }}").unwrap();
        let raw: RawConfig = toml::from_str(&format!(
            "[[pools]]\nid = \"a\"\ndevices = \"cpu\"\ngpu_policy = \"cpu\"\nchat_template_file = {:?}\n[engines.default]\nkind = \"git\"\ngit_url = \"https://example.invalid/l\"\ngit_ref = \"b1\"\n",
            t.display().to_string()
        ))
        .unwrap();
        let cfg = raw.validate(&host()).expect("valid");
        assert_eq!(
            cfg.pools[0].extra_args,
            ["--chat-template-file".to_string(), t.display().to_string()]
        );
        let clash: RawConfig = toml::from_str(&format!(
            "[[pools]]\nid = \"a\"\ndevices = \"cpu\"\ngpu_policy = \"cpu\"\nextra_args = [\"--chat-template\", \"chatml\"]\nchat_template_file = {:?}\n",
            t.display().to_string()
        ))
        .unwrap();
        let errs = clash.validate(&host()).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.contains("exclude chat_template_file")),
            "{errs:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn devices_canonical() {
        let mut p = vec![];
        let h = Host {
            gpus: vec![0, 1, 2],
            ..host()
        };
        assert_eq!(
            validate_devices("k", "2,0", GpuPolicy::Gpu, &h, &mut p),
            "0,2"
        );
        assert!(p.is_empty());
        validate_devices("k", "5", GpuPolicy::Gpu, &h, &mut p);
        assert_eq!(p.len(), 1);
        assert_eq!(
            validate_devices("k", "0", GpuPolicy::Auto, &host(), &mut vec![]),
            "cpu"
        );
        let mut p = vec![];
        assert_eq!(
            validate_devices("k", "0,x", GpuPolicy::Auto, &h, &mut p),
            "cpu"
        );
        assert!(
            p.len() == 1
                && p[0].starts_with("k.devices: ")
                && p[0].contains("comma-separated GPU indices"),
            "{p:?}"
        );
        let mut p = vec![];
        validate_devices("k", "cpu", GpuPolicy::Gpu, &h, &mut p);
        assert!(p.len() == 1 && p[0].contains("contradicts"), "{p:?}");
    }
}
