//! orchestratord configuration (API.md §17.2): the raw TOML shape and its validation into
//! [`Config`], reporting every problem at once. Nothing below `main` reads the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use api::tenant::{Role, TenantLimits};
use api::TenantId;
use daemon::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawConfig {
    pub server: RawServer,
    pub auth: RawAuth,
    pub queue: RawQueue,
    pub admission: RawAdmission,
    pub tasks: RawTasks,
    pub streams: RawStreams,
    pub sessions: RawSessions,
    pub placement: RawPlacement,
    pub nodes: RawNodes,
    pub worker: RawWorker,
    pub provisioning: RawProvisioning,
    pub catalog: RawCatalog,
    pub state_dir: Option<PathBuf>,
    pub state: RawState,
    pub logging: RawLogging,
}

/// `[state]`: where orchestratord keeps what must survive it (decision 70).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawState {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub advertise_url: Option<String>,
    pub lease_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawServer {
    pub bind: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub worker_threads: Option<u64>,
    pub metrics_require_auth: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawAuth {
    pub client_tokens: Vec<String>,
    pub client_tokens_file: Option<PathBuf>,
    pub node_registration_token: Option<String>,
    pub node_registration_token_file: Option<PathBuf>,
    pub node_tokens: BTreeMap<String, String>,
    /// A TOML file of `node_id = "token"` lines, the same shape as `[auth.node_tokens]`.
    pub node_tokens_file: Option<PathBuf>,
    /// Named tokens (`[[auth.tokens]]`): each is a tenant with a role, limits and a weight.
    pub tokens: Vec<RawNamedToken>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawNamedToken {
    pub name: Option<String>,
    pub role: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub weight: Option<i64>,
    pub limits: RawLimits,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawLimits {
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub concurrent_tasks: Option<i64>,
    pub queued_tasks: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawQueue {
    pub capacity: Option<i64>,
    pub full_policy: Option<String>,
    pub interactive_burst: Option<i64>,
    /// Weighted-fair dispatch across tenants within a priority class (default true).
    pub fair: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawAdmission {
    pub default_max_tokens: Option<i64>,
    pub max_grammar_bytes: Option<i64>,
    pub max_prompt_bytes: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawTasks {
    pub retention_ms: Option<u64>,
    pub max_retained: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawStreams {
    pub keepalive_ms: Option<u64>,
    pub disconnect_grace_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawSessions {
    pub ttl_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawPlacement {
    pub session_affinity: Option<bool>,
    pub allow_pin: Option<bool>,
    pub dispatch_retries: Option<u32>,
    pub migration_limit: Option<u32>,
    pub strategy: Option<String>,
    pub balance_abs: Option<i64>,
    pub balance_rel: Option<f64>,
    pub load_cost_tokens: Option<i64>,
    pub wait_for_prefix_tokens: Option<u64>,
    pub wait_for_prefix_max_ms: Option<u64>,
    pub prefix_max_sequences: Option<i64>,
    pub tokenize_timeout_ms: Option<u64>,
    pub engine_prompt_cache: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawNodes {
    pub heartbeat_interval_ms: Option<u64>,
    pub heartbeat_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawWorker {
    pub connect_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawProvisioning {
    pub mode: Option<String>,
    pub allow_repurpose_idle: Option<bool>,
    pub vram_headroom: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawCatalog {
    pub db_path: Option<PathBuf>,
    pub auto_register: Option<bool>,
    pub allowed_schemes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawLogging {
    pub level: Option<String>,
    pub json: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Free slots, then queued plus running tasks, then free VRAM.
    LeastLoaded,
    /// Prompt tokens the pool's engine already holds, weighed against its load.
    CacheAware,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LeastLoaded => "least-loaded",
            Strategy::CacheAware => "cache-aware",
        }
    }
}

/// Where orchestratord's durable state lives.
#[derive(Debug, Clone)]
pub enum StateBackend {
    /// One orchestratord; the catalog in SQLite (`catalog.db_path`), tasks in memory.
    Sqlite,
    /// An HA group: every orchestratord with this URL shares one Postgres; one is the leader.
    Postgres(HaConfig),
}

#[derive(Debug, Clone)]
pub struct HaConfig {
    /// The connection string (it may hold a password: logged only as a fingerprint).
    pub url: Secret,
    /// The base URL followers name as the leader's when this process leads.
    pub advertise_url: String,
    /// A leader whose lease is this old is superseded; it renews every quarter of it.
    pub lease: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    Reject,
    DropLru,
    ShedLowPriority,
}

impl FullPolicy {
    pub fn label(self) -> &'static str {
        match self {
            FullPolicy::Reject => "reject",
            FullPolicy::DropLru => "drop-lru",
            FullPolicy::ShedLowPriority => "shed-low-priority",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    /// The runtime's worker threads (`server.worker_threads`; `None`: one per core).
    pub worker_threads: Option<usize>,
    pub max_body_bytes: usize,
    pub metrics_require_auth: bool,
    pub client_tokens: Vec<Secret>,
    pub registration_token: Option<Secret>,
    pub node_tokens: BTreeMap<String, Secret>,
    pub queue_capacity: usize,
    pub full_policy: FullPolicy,
    pub interactive_burst: u32,
    /// `queue.fair`: weighted-fair across tenants within a class; false is FIFO.
    pub fair_queuing: bool,
    /// Named tokens and the tenants they are, in config order.
    pub named_tokens: Vec<NamedToken>,
    pub default_max_tokens: u64,
    pub max_grammar_bytes: usize,
    /// Bytes of `prompt`, or of all message contents together.
    pub max_prompt_bytes: usize,
    pub retention: Duration,
    pub max_retained: usize,
    pub keepalive: Duration,
    pub disconnect_grace: Duration,
    pub session_ttl: Duration,
    pub session_affinity: bool,
    pub allow_pin: bool,
    pub dispatch_retries: u32,
    /// Mid-stream migrations of one task to another engine (0: a lost engine ends the task).
    pub migration_limit: u32,
    /// `placement.strategy`: how a pool is chosen among free candidates.
    pub strategy: Strategy,
    /// Cache-aware guard: load wins when the busiest candidate runs more than `balance_abs` tasks
    /// beyond the idlest and more than `balance_rel` times its load.
    pub balance_abs: usize,
    pub balance_rel: f64,
    /// Prompt tokens a queued or running task on a pool is worth when weighed against reuse,
    /// until the pools' speeds are measured (then placement weighs in time, decision 76).
    pub load_cost_tokens: u64,
    /// Cache-aware: a task waits for a busy pool holding at least this many of its prompt tokens
    /// when that pool's cost (its score, or once measured its predicted time to first token) beats
    /// every free pool's (decisions 69 and 76); 0 never waits.
    pub wait_for_prefix_tokens: u64,
    /// ...for at most this long after admission (and half its remaining deadline), then any pool.
    pub wait_for_prefix_max: Duration,
    /// Sequences the prefix index keeps in all.
    pub prefix_max_sequences: usize,
    /// Cache-aware: how long after admission a task waits for its prompt token ids before it is
    /// placed by load (decision 69).
    pub tokenize_timeout: Duration,
    /// Cache-aware: the engines keep evaluated prompts in host RAM beyond their slots
    /// (llama.cpp's `--cache-ram`, on by default), so a sequence its slot gives up stays
    /// reusable on that pool (decision 69).
    pub engine_prompt_cache: bool,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub worker_connect_timeout: Duration,
    pub worker_idle_timeout: Duration,
    pub state_dir: PathBuf,
    /// `provisioning.mode = "on-demand"`.
    pub provisioning_on_demand: bool,
    pub allow_repurpose_idle: bool,
    pub vram_headroom: f64,
    pub catalog_db: PathBuf,
    pub auto_register: bool,
    pub allowed_schemes: Vec<String>,
    pub log_level: String,
    pub log_json: Option<bool>,
    pub state: StateBackend,
}

impl Config {
    /// The HA settings, when the state lives in Postgres.
    pub fn ha(&self) -> Option<&HaConfig> {
        match &self.state {
            StateBackend::Postgres(h) => Some(h),
            StateBackend::Sqlite => None,
        }
    }

    /// Open mode: no client or named tokens, so every route needs none (loopback only).
    pub fn open_mode(&self) -> bool {
        self.client_tokens.is_empty() && self.named_tokens.is_empty()
    }

    pub fn tokens(&self) -> Tokens {
        let mut callers: Vec<Credential> = self
            .named_tokens
            .iter()
            .map(|n| Credential {
                tenant: n.tenant.clone(),
                role: n.role,
                secret: n.secret.clone(),
            })
            .collect();
        callers.extend(self.client_tokens.iter().map(|s| Credential {
            tenant: unnamed_tenant(s),
            role: Role::Client,
            secret: s.clone(),
        }));
        Tokens {
            callers,
            registration: self.registration_token.clone(),
            node: self.node_tokens.clone(),
        }
    }

    /// Every configured tenant's role, weight and limits (unnamed client tokens included).
    pub fn tenant_policies(&self) -> BTreeMap<TenantId, TenantPolicy> {
        let mut out: BTreeMap<TenantId, TenantPolicy> = self
            .client_tokens
            .iter()
            .map(|s| (unnamed_tenant(s), TenantPolicy::default()))
            .collect();
        for n in &self.named_tokens {
            out.insert(
                n.tenant.clone(),
                TenantPolicy {
                    role: n.role,
                    weight: n.weight,
                    limits: n.limits.clone(),
                },
            );
        }
        if self.open_mode() {
            out.insert(
                anonymous(),
                TenantPolicy {
                    role: Role::Admin,
                    ..TenantPolicy::default()
                },
            );
        }
        out
    }
}

/// The tenant of open mode: one anonymous admin.
pub fn anonymous() -> TenantId {
    "anonymous".parse().expect("a valid tenant name")
}

/// The tenant of an unnamed `auth.client_tokens` entry: `token-<fp6>`, its own tenant.
pub fn unnamed_tenant(s: &Secret) -> TenantId {
    format!("token-{}", s.fingerprint())
        .parse()
        .expect("a valid tenant name")
}

/// One `[[auth.tokens]]` entry, validated.
#[derive(Debug, Clone)]
pub struct NamedToken {
    pub tenant: TenantId,
    pub role: Role,
    pub secret: Secret,
    pub weight: u32,
    pub limits: TenantLimits,
}

/// What the core needs to know about a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    pub role: Role,
    pub weight: u32,
    pub limits: TenantLimits,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            role: Role::Client,
            weight: 1,
            limits: TenantLimits::default(),
        }
    }
}

/// A token that identifies a caller: its tenant and role.
#[derive(Debug, Clone)]
pub struct Credential {
    pub tenant: TenantId,
    pub role: Role,
    pub secret: Secret,
}

/// The secrets auth checks against; replaced as a whole when tokens are rotated (SIGHUP).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Named tokens, then unnamed client tokens.
    pub callers: Vec<Credential>,
    pub registration: Option<Secret>,
    pub node: BTreeMap<String, Secret>,
}

impl Tokens {
    /// Open mode: no caller tokens (loopback only, checked at startup).
    pub fn open(&self) -> bool {
        self.callers.is_empty()
    }

    /// No node auth configured at all.
    pub fn nodes_open(&self) -> bool {
        self.registration.is_none() && self.node.is_empty()
    }

    /// The caller a presented token identifies. Every credential is compared (in constant time
    /// each), so the answer's timing does not depend on which one matched.
    pub fn identify(&self, presented: &str) -> Option<&Credential> {
        let mut found = None;
        for c in &self.callers {
            if c.secret.matches(presented) && found.is_none() {
                found = Some(c);
            }
        }
        found
    }

    /// Fingerprints for the rotation log line (never the tokens).
    pub fn describe(&self) -> String {
        let fps: Vec<String> = self
            .callers
            .iter()
            .map(|c| format!("{}={}({})", c.tenant, c.secret, c.role))
            .collect();
        format!(
            "tokens [{}], registration token {}, {} per-node token(s)",
            fps.join(", "),
            self.registration
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            self.node.len()
        )
    }
}

pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

impl RawConfig {
    pub fn validate(self, home: &std::path::Path) -> Result<Config, Vec<String>> {
        let mut p = Vec::new();
        let bind_raw = self
            .server
            .bind
            .clone()
            .unwrap_or_else(|| DEFAULT_BIND.into());
        let bind = resolve_bind(&bind_raw)
            .map_err(|e| p.push(format!("server.bind: {e}")))
            .ok();
        let mut client_tokens: Vec<String> = self.auth.client_tokens.clone();
        if let Some(f) = &self.auth.client_tokens_file {
            if !client_tokens.is_empty() {
                p.push("auth.client_tokens: set either auth.client_tokens or auth.client_tokens_file, not both".into());
            }
            match std::fs::read_to_string(f) {
                Ok(s) => {
                    client_tokens = s
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect()
                }
                Err(e) => p.push(format!(
                    "auth.client_tokens_file: cannot read {}: {e}",
                    f.display()
                )),
            }
        }
        for (i, t) in client_tokens.iter().enumerate() {
            check_token(&format!("auth.client_tokens[{i}]"), t, &mut p);
        }
        let named = named_tokens(&self.auth.tokens, &mut p);
        {
            let mut all: Vec<(&str, String)> = client_tokens
                .iter()
                .map(|t| (t.as_str(), "auth.client_tokens".to_string()))
                .collect();
            all.extend(named.iter().map(|n| {
                (
                    n.token.secret.expose(),
                    format!("auth.tokens[{}] ({})", n.index, n.token.tenant),
                )
            }));
            for (i, (t, key)) in all.iter().enumerate() {
                if all[..i].iter().any(|(u, _)| u == t) {
                    p.push(format!("{key}: the same token is configured twice"));
                }
            }
        }
        let named: Vec<NamedToken> = named.into_iter().map(|n| n.token).collect();
        let registration = daemon::config::secret_or_file(
            "auth.node_registration_token",
            &self.auth.node_registration_token,
            &self.auth.node_registration_token_file,
            &mut p,
        );
        if let Some(r) = &registration {
            check_token("auth.node_registration_token", r, &mut p);
            if client_tokens.iter().any(|c| c == r) || named.iter().any(|n| n.secret.matches(r)) {
                p.push("auth.node_registration_token: must differ from every client token".into());
            }
        }
        let mut node_tokens = BTreeMap::new();
        for (node, t) in &node_tokens_of(&self.auth, &mut p) {
            if !api::ids::valid_name(node) {
                p.push(format!("auth.node_tokens.{node}: not a valid node id"));
            }
            check_token(&format!("auth.node_tokens.{node}"), t, &mut p);
            node_tokens.insert(node.clone(), Secret::new(t.clone()));
        }
        if let Some(b) = bind {
            if !b.ip().is_loopback()
                && ((client_tokens.is_empty() && named.is_empty())
                    || (registration.is_none() && node_tokens.is_empty()))
            {
                p.push(format!("server.bind: {b} is not a loopback address; set auth.client_tokens and auth.node_registration_token (or auth.node_tokens) first"));
            }
        }
        let capacity = positive("queue.capacity", self.queue.capacity, 64, &mut p);
        let full_policy = match self.queue.full_policy.as_deref().unwrap_or("reject") {
            "reject" => FullPolicy::Reject,
            "drop-lru" => FullPolicy::DropLru,
            "shed-low-priority" => FullPolicy::ShedLowPriority,
            other => {
                p.push(format!("queue.full_policy: {other:?} is not one of reject, drop-lru, shed-low-priority"));
                FullPolicy::Reject
            }
        };
        let strategy = match self.placement.strategy.as_deref().unwrap_or("least-loaded") {
            "least-loaded" => Strategy::LeastLoaded,
            "cache-aware" => Strategy::CacheAware,
            other => {
                p.push(format!(
                    "placement.strategy: {other:?} is not one of least-loaded, cache-aware"
                ));
                Strategy::LeastLoaded
            }
        };
        let balance_abs = positive(
            "placement.balance_abs",
            self.placement.balance_abs,
            2,
            &mut p,
        );
        let balance_rel = self.placement.balance_rel.unwrap_or(1.5);
        if !(balance_rel.is_finite() && balance_rel >= 1.0) {
            p.push("placement.balance_rel: must be a number of at least 1.0".into());
        }
        let load_cost = positive(
            "placement.load_cost_tokens",
            self.placement.load_cost_tokens,
            256,
            &mut p,
        );
        let prefix_max = positive(
            "placement.prefix_max_sequences",
            self.placement.prefix_max_sequences,
            100_000,
            &mut p,
        );
        let burst = positive(
            "queue.interactive_burst",
            self.queue.interactive_burst,
            4,
            &mut p,
        );
        let default_max_tokens = positive(
            "admission.default_max_tokens",
            self.admission.default_max_tokens,
            256,
            &mut p,
        );
        let max_grammar = positive(
            "admission.max_grammar_bytes",
            self.admission.max_grammar_bytes,
            262_144,
            &mut p,
        );
        let max_prompt = positive(
            "admission.max_prompt_bytes",
            self.admission.max_prompt_bytes,
            1_048_576,
            &mut p,
        );
        let ms = |v: Option<u64>, d: u64| Duration::from_millis(v.unwrap_or(d));
        let heartbeat_interval = ms(self.nodes.heartbeat_interval_ms, 10_000);
        let heartbeat_timeout = ms(self.nodes.heartbeat_timeout_ms, 30_000);
        if heartbeat_interval < Duration::from_millis(500) {
            p.push("nodes.heartbeat_interval_ms: must be at least 500".into());
        }
        if heartbeat_timeout <= heartbeat_interval {
            p.push(format!(
                "nodes.heartbeat_timeout_ms: must exceed nodes.heartbeat_interval_ms ({} ms)",
                heartbeat_interval.as_millis()
            ));
        }
        let keepalive = ms(self.streams.keepalive_ms, 15_000);
        if keepalive < Duration::from_millis(100) {
            p.push("streams.keepalive_ms: must be at least 100".into());
        }
        match self.provisioning.mode.as_deref().unwrap_or("off") {
            "off" => {}
            "on-demand" => {}
            other => p.push(format!(
                "provisioning.mode: {other:?} is not one of off, on-demand"
            )),
        }
        if let Some(h) = self.provisioning.vram_headroom {
            if h.is_nan() || h < 1.0 {
                p.push("provisioning.vram_headroom: must be at least 1.0".into());
            }
        }
        if let Some(schemes) = &self.catalog.allowed_schemes {
            for s in schemes {
                if !matches!(s.as_str(), "hf" | "https" | "file") {
                    p.push(format!(
                        "catalog.allowed_schemes: {s:?} is not one of hf, https, file"
                    ));
                }
            }
        }
        let worker_threads = daemon::main_loop::worker_threads(self.server.worker_threads, &mut p);
        let max_body = self.server.max_body_bytes.unwrap_or(4 * 1024 * 1024);
        if max_body < 1024 {
            p.push("server.max_body_bytes: must be at least 1024".into());
        }
        let level = self.logging.level.clone().unwrap_or_else(|| "info".into());
        if !matches!(
            level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            p.push(format!(
                "logging.level: {level:?} is not one of error, warn, info, debug, trace"
            ));
        }
        let state = state_backend(&self.state, bind, &mut p);
        if !p.is_empty() {
            return Err(p);
        }
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| home.join(".local/state/llama-orch"));
        Ok(Config {
            bind: bind.expect("checked"),
            max_body_bytes: max_body as usize,
            worker_threads,
            metrics_require_auth: self.server.metrics_require_auth.unwrap_or(false),
            client_tokens: client_tokens.into_iter().map(Secret::new).collect(),
            registration_token: registration.map(Secret::new),
            node_tokens,
            queue_capacity: capacity as usize,
            full_policy,
            interactive_burst: burst as u32,
            fair_queuing: self.queue.fair.unwrap_or(true),
            named_tokens: named,
            default_max_tokens,
            max_grammar_bytes: max_grammar as usize,
            max_prompt_bytes: max_prompt as usize,
            retention: ms(self.tasks.retention_ms, 300_000),
            max_retained: self.tasks.max_retained.unwrap_or(10_000) as usize,
            keepalive,
            disconnect_grace: ms(self.streams.disconnect_grace_ms, 1_000),
            session_ttl: ms(self.sessions.ttl_ms, 600_000),
            session_affinity: self.placement.session_affinity.unwrap_or(true),
            allow_pin: self.placement.allow_pin.unwrap_or(true),
            dispatch_retries: self.placement.dispatch_retries.unwrap_or(2),
            migration_limit: self.placement.migration_limit.unwrap_or(2),
            strategy,
            balance_abs: balance_abs as usize,
            balance_rel,
            load_cost_tokens: load_cost,
            wait_for_prefix_tokens: self.placement.wait_for_prefix_tokens.unwrap_or(256),
            wait_for_prefix_max: ms(self.placement.wait_for_prefix_max_ms, 30_000),
            prefix_max_sequences: prefix_max as usize,
            tokenize_timeout: ms(self.placement.tokenize_timeout_ms, 1_000),
            engine_prompt_cache: self.placement.engine_prompt_cache.unwrap_or(true),
            heartbeat_interval,
            heartbeat_timeout,
            worker_connect_timeout: ms(self.worker.connect_timeout_ms, 2_000),
            worker_idle_timeout: ms(self.worker.idle_timeout_ms, 15_000),
            state_dir: state_dir.clone(),
            provisioning_on_demand: self.provisioning.mode.as_deref() == Some("on-demand"),
            allow_repurpose_idle: self.provisioning.allow_repurpose_idle.unwrap_or(false),
            vram_headroom: self.provisioning.vram_headroom.unwrap_or(1.2),
            catalog_db: self
                .catalog
                .db_path
                .clone()
                .unwrap_or_else(|| state_dir.join("catalog.sqlite")),
            auto_register: self.catalog.auto_register.unwrap_or(false),
            allowed_schemes: self
                .catalog
                .allowed_schemes
                .clone()
                .unwrap_or_else(|| vec!["hf".into(), "https".into(), "file".into()]),
            log_level: level,
            log_json: self.logging.json,
            state,
        })
    }
}

/// `[state]`: `backend` sqlite (default) or postgres; postgres needs `url` (or `url_file`).
fn state_backend(raw: &RawState, bind: Option<SocketAddr>, p: &mut Vec<String>) -> StateBackend {
    let url = daemon::config::secret_or_file("state.url", &raw.url, &raw.url_file, p);
    match raw.backend.as_deref().unwrap_or("sqlite") {
        "sqlite" => {
            if url.is_some() || raw.advertise_url.is_some() {
                p.push("state.url: only used with state.backend = \"postgres\"".into());
            }
            StateBackend::Sqlite
        }
        "postgres" => {
            let Some(url) = url else {
                p.push("state.url: required with state.backend = \"postgres\"".into());
                return StateBackend::Sqlite;
            };
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                p.push("state.url: must start with postgres:// or postgresql://".into());
            }
            let advertise_url = match (&raw.advertise_url, bind) {
                (Some(u), _) => u.trim_end_matches('/').to_string(),
                (None, Some(b)) => format!("http://{b}"),
                (None, None) => String::new(),
            };
            if !(advertise_url.starts_with("http://") || advertise_url.starts_with("https://")) {
                p.push(format!(
                    "state.advertise_url: {advertise_url:?} must start with http:// or https://"
                ));
            }
            let lease_ms = raw.lease_ms.unwrap_or(1_500);
            if !(200..=60_000).contains(&lease_ms) {
                p.push("state.lease_ms: must be 200–60000".into());
            }
            StateBackend::Postgres(HaConfig {
                url: Secret::new(url),
                advertise_url,
                lease: Duration::from_millis(lease_ms),
            })
        }
        other => {
            p.push(format!(
                "state.backend: {other:?} is not one of sqlite, postgres"
            ));
            StateBackend::Sqlite
        }
    }
}

/// A validated named token and its place in `auth.tokens` (for messages).
struct Indexed {
    index: usize,
    token: NamedToken,
}

/// `[[auth.tokens]]`: names unique and valid, a known role, exactly one of `token`/`token_file`,
/// a weight of 1–1000 and limits of at least 1.
fn named_tokens(raw: &[RawNamedToken], p: &mut Vec<String>) -> Vec<Indexed> {
    let mut out: Vec<Indexed> = vec![];
    for (i, r) in raw.iter().enumerate() {
        let key = format!("auth.tokens[{i}]");
        let tenant = match r.name.as_deref().map(str::parse::<TenantId>) {
            None => {
                p.push(format!("{key}.name: required"));
                None
            }
            Some(Err(e)) => {
                p.push(format!("{key}.name: {e}"));
                None
            }
            Some(Ok(t)) if t == "anonymous" || t.as_str().starts_with("token-") => {
                p.push(format!(
                    "{key}.name: {t} is reserved (anonymous and token-* name unnamed callers)"
                ));
                None
            }
            Some(Ok(t)) => {
                if out.iter().any(|o| o.token.tenant == t) {
                    p.push(format!("{key}.name: {t} is configured twice"));
                }
                Some(t)
            }
        };
        let role = match r.role.as_deref().map(str::parse::<Role>) {
            None => {
                p.push(format!("{key}.role: required (admin, client or viewer)"));
                None
            }
            Some(Err(e)) => {
                p.push(format!("{key}.role: {e}"));
                None
            }
            Some(Ok(role)) => Some(role),
        };
        let secret =
            daemon::config::secret_or_file(&format!("{key}.token"), &r.token, &r.token_file, p);
        match &secret {
            Some(s) => check_token(&format!("{key}.token"), s, p),
            None if r.token.is_none() && r.token_file.is_none() => {
                p.push(format!("{key}.token: set token or token_file"))
            }
            None => {}
        }
        let weight = positive(&format!("{key}.weight"), r.weight, 1, p);
        if weight > 1000 {
            p.push(format!("{key}.weight: must be at most 1000, got {weight}"));
        }
        let limit = |name: &str, v: Option<i64>, p: &mut Vec<String>| match v {
            None => None,
            Some(n) if n >= 1 => Some(n as u64),
            Some(n) => {
                p.push(format!("{key}.limits.{name}: must be at least 1, got {n}"));
                None
            }
        };
        let limits = TenantLimits {
            requests_per_minute: limit("requests_per_minute", r.limits.requests_per_minute, p),
            tokens_per_minute: limit("tokens_per_minute", r.limits.tokens_per_minute, p),
            concurrent_tasks: limit("concurrent_tasks", r.limits.concurrent_tasks, p),
            queued_tasks: limit("queued_tasks", r.limits.queued_tasks, p),
        };
        if let (Some(tenant), Some(role), Some(secret)) = (tenant, role, secret) {
            out.push(Indexed {
                index: i,
                token: NamedToken {
                    tenant,
                    role,
                    secret: Secret::new(secret),
                    weight: weight.min(1000) as u32,
                    limits,
                },
            });
        }
    }
    out
}

/// `auth.node_tokens`, or the table in `auth.node_tokens_file`; both set is an error.
fn node_tokens_of(auth: &RawAuth, p: &mut Vec<String>) -> BTreeMap<String, String> {
    let Some(f) = &auth.node_tokens_file else {
        return auth.node_tokens.clone();
    };
    if !auth.node_tokens.is_empty() {
        p.push(
            "auth.node_tokens: set either auth.node_tokens or auth.node_tokens_file, not both"
                .into(),
        );
        return BTreeMap::new();
    }
    let text = match std::fs::read_to_string(f) {
        Ok(t) => t,
        Err(e) => {
            p.push(format!(
                "auth.node_tokens_file: cannot read {}: {e}",
                f.display()
            ));
            return BTreeMap::new();
        }
    };
    // Never echo the file's content: a parse error message could quote a token.
    match toml::from_str::<BTreeMap<String, String>>(&text) {
        Ok(tokens) => tokens,
        Err(_) => {
            p.push(format!(
                "auth.node_tokens_file: {} is not a TOML table of node_id = \"token\" lines",
                f.display()
            ));
            BTreeMap::new()
        }
    }
}

fn positive(key: &str, v: Option<i64>, default: u64, p: &mut Vec<String>) -> u64 {
    match v {
        None => default,
        Some(n) if n >= 1 => n as u64,
        Some(n) => {
            p.push(format!("{key}: must be at least 1, got {n}"));
            default
        }
    }
}

fn check_token(key: &str, t: &str, p: &mut Vec<String>) {
    if t.len() < 16 {
        p.push(format!("{key}: tokens must be at least 16 characters"));
    }
    if t.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        p.push(format!(
            "{key}: tokens must not contain spaces or control characters"
        ));
    }
}

/// Parses `host:port`, resolving `localhost` to the loopback address.
fn resolve_bind(raw: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = raw.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = raw.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|e| format!("{raw:?}: bad port ({e})"));
    }
    Err(format!("{raw:?} is not host:port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str, expected: &[&str]) {
        let raw: RawConfig = toml::from_str(toml_text).expect("toml");
        let result = raw.validate(std::path::Path::new("/home/x"));
        match (result, expected.is_empty()) {
            (Ok(_), true) => {}
            (Ok(_), false) => panic!("expected problems {expected:?}"),
            (Err(p), true) => panic!("unexpected problems {p:?}"),
            (Err(p), false) => {
                assert_eq!(p.len(), expected.len(), "{p:#?}");
                for want in expected {
                    assert!(
                        p.iter().any(|l| l.contains(want)),
                        "missing {want:?} in {p:#?}"
                    );
                }
            }
        }
    }

    #[test]
    fn defaults_are_valid() {
        check("", &[]);
    }

    #[test]
    fn every_problem_listed() {
        check(
            r#"
            [server]
            bind = "0.0.0.0:8080"
            worker_threads = 0
            [queue]
            capacity = 0
            full_policy = "yolo"
            [auth]
            client_tokens = ["short"]
            [nodes]
            heartbeat_interval_ms = 1000
            heartbeat_timeout_ms = 500
            "#,
            &[
                "server.bind",
                "server.worker_threads",
                "queue.capacity",
                "queue.full_policy",
                "auth.client_tokens[0]",
                "nodes.heartbeat_timeout_ms",
            ],
        );
    }

    #[test]
    fn non_loopback_with_tokens_is_fine() {
        check(
            r#"
            [server]
            bind = "0.0.0.0:8080"
            [auth]
            client_tokens = ["client-token-0123456789"]
            node_registration_token = "register-token-0123456789"
            "#,
            &[],
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("orchd-cfg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Loads a file as `main` does and validates it: every problem, from both stages.
    fn problems_of(toml_text: &str) -> Vec<String> {
        let f = temp_dir("load").join("orchd.toml");
        std::fs::write(&f, toml_text).expect("write");
        let (raw, mut problems) =
            daemon::config::load::<RawConfig>(Some(&f), "ORCHD", &[]).expect("loads");
        if let Err(p) = raw.validate(std::path::Path::new("/home/x")) {
            problems.extend(p);
        }
        problems
    }

    #[test]
    fn type_errors_and_semantic_problems_are_reported_together() {
        let p = problems_of(
            r#"
            [queue]
            capacity = "many"
            full_policy = "yolo"
            interactive_burst = 0
            [placement]
            session_affinity = "yes"
            [nodes]
            heartbeat_interval_ms = 100
            heartbeat_timeout_ms = -5
            [typo]
            x = 1
            "#,
        );
        for want in [
            "typo: unknown key",
            "queue.capacity: invalid type",
            "placement.session_affinity: invalid type",
            "nodes.heartbeat_timeout_ms: invalid value",
            "queue.full_policy:",
            "queue.interactive_burst: must be at least 1",
            "nodes.heartbeat_interval_ms: must be at least 500",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(want)),
                "missing {want:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), 7, "{p:#?}");
    }

    #[test]
    fn node_tokens_file_twin() {
        let dir = temp_dir("tokens");
        let f = dir.join("node-tokens.toml");
        std::fs::write(
            &f,
            "# static node tokens\nalpha = \"alpha-token-0123456789\"\n",
        )
        .expect("write");
        let raw: RawConfig = toml::from_str(&format!(
            "[auth]\nnode_tokens_file = {:?}\n",
            f.display().to_string()
        ))
        .expect("toml");
        let cfg = raw
            .validate(std::path::Path::new("/home/x"))
            .expect("valid");
        assert!(cfg.node_tokens["alpha"].matches("alpha-token-0123456789"));
        let both = format!(
            "[auth]\nnode_tokens_file = {:?}\n[auth.node_tokens]\nbeta = \"beta-token-0123456789\"\n",
            f.display().to_string()
        );
        check(&both, &["auth.node_tokens: set either"]);
        std::fs::write(&f, "alpha = 5\n").expect("write");
        check(
            &format!("[auth]\nnode_tokens_file = {:?}\n", f.display().to_string()),
            &["auth.node_tokens_file: "],
        );
        check(
            "[auth]\nnode_tokens_file = \"/nonexistent/tokens.toml\"\n",
            &["auth.node_tokens_file: cannot read"],
        );
    }

    #[test]
    fn named_tokens_roles_limits_and_tenants() {
        let raw: RawConfig = toml::from_str(
            r#"
            [auth]
            client_tokens = ["unnamed-token-0123456789"]
            [[auth.tokens]]
            name = "ops"
            role = "admin"
            token = "ops-token-0123456789"
            [[auth.tokens]]
            name = "lab"
            role = "client"
            token = "lab-token-0123456789"
            weight = 3
            [auth.tokens.limits]
            requests_per_minute = 60
            queued_tasks = 4
            "#,
        )
        .expect("toml");
        let cfg = raw
            .validate(std::path::Path::new("/home/x"))
            .expect("valid");
        assert!(!cfg.open_mode());
        let tokens = cfg.tokens();
        let who = |t: &str| tokens.identify(t).map(|c| (c.tenant.to_string(), c.role));
        assert_eq!(
            who("ops-token-0123456789"),
            Some(("ops".into(), Role::Admin))
        );
        assert_eq!(
            who("lab-token-0123456789"),
            Some(("lab".into(), Role::Client))
        );
        let unnamed = format!(
            "token-{}",
            daemon::secret::fingerprint("unnamed-token-0123456789")
        );
        assert_eq!(
            who("unnamed-token-0123456789"),
            Some((unnamed.clone(), Role::Client))
        );
        assert_eq!(who("nobody-token-0123456789"), None);
        let policies = cfg.tenant_policies();
        let lab = &policies[&"lab".parse::<TenantId>().unwrap()];
        assert_eq!(lab.weight, 3);
        assert_eq!(lab.limits.requests_per_minute, Some(60));
        assert_eq!(lab.limits.queued_tasks, Some(4));
        assert!(policies.contains_key(&unnamed.parse::<TenantId>().unwrap()));
        assert!(
            !tokens.describe().contains("0123456789"),
            "{}",
            tokens.describe()
        );
        // Open mode: one anonymous admin.
        let open = RawConfig::default()
            .validate(std::path::Path::new("/home/x"))
            .expect("valid");
        assert!(open.open_mode());
        assert_eq!(open.tenant_policies()[&anonymous()].role, Role::Admin);
    }

    #[test]
    fn named_token_problems() {
        check(
            r#"
            [auth]
            client_tokens = ["same-token-0123456789"]
            node_registration_token = "ops-token-0123456789"
            [[auth.tokens]]
            name = "Bad Name"
            role = "root"
            token = "short"
            weight = 0
            [auth.tokens.limits]
            tokens_per_minute = 0
            [[auth.tokens]]
            name = "ops"
            role = "admin"
            token = "ops-token-0123456789"
            [[auth.tokens]]
            name = "ops"
            role = "viewer"
            token = "same-token-0123456789"
            [[auth.tokens]]
            name = "anonymous"
            role = "viewer"
            "#,
            &[
                "auth.tokens[0].name",
                "auth.tokens[0].role",
                "auth.tokens[0].token: tokens must be at least 16",
                "auth.tokens[0].weight",
                "auth.tokens[0].limits.tokens_per_minute",
                "auth.tokens[2].name: ops is configured twice",
                "auth.tokens[2] (ops): the same token is configured twice",
                "auth.tokens[3].name: anonymous is reserved",
                "auth.tokens[3].token: set token or token_file",
                "auth.node_registration_token: must differ",
            ],
        );
        // A non-loopback bind is fine with only named tokens.
        check(
            r#"
            [server]
            bind = "0.0.0.0:8080"
            [auth]
            node_registration_token = "register-token-0123456789"
            [[auth.tokens]]
            name = "ops"
            role = "admin"
            token = "ops-token-0123456789"
            "#,
            &[],
        );
    }
}
