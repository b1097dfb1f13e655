//! The Postgres side of an HA group (decision 70): the schema, the catalog's records, the task
//! rows, and the leader row. Only the store task and the election thread call it, each on its own
//! blocking connection; the core never waits on it.
//!
//! Tokens never go through the database: a task row holds the request, where its current attempt
//! runs and the frames the core wrote before that attempt's stream (queue positions, `started`,
//! placement); the worker keeps the stream itself, and a new leader reattaches to it.

use api::catalog::ModelRecord;
use api::events::Event;
use api::task::TaskState;
use api::{NodeId, PoolId, TaskId, TenantId};
use postgres::{Client, NoTls};

use crate::admission::ValidatedTask;

/// The advisory lock key of the leader (the ASCII of "llorchHA" as an i64).
pub const LEADER_LOCK: i64 = 0x6c6c_6f72_6368_4841;
/// The advisory lock key that serializes schema creation between processes.
const SCHEMA_LOCK: i64 = LEADER_LOCK + 1;
/// The schema this build writes; a newer one in the database is refused.
pub const SCHEMA_VERSION: i32 = 1;
/// Idempotency keys (and finished task rows) are kept this long.
pub const KEEP_FINISHED_MS: u64 = 24 * 3600 * 1000;

/// Connects with a short timeout (the URL's `connect_timeout` wins when given).
pub fn connect(url: &str) -> Result<Client, postgres::Error> {
    let mut cfg: postgres::Config = url.parse()?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(std::time::Duration::from_secs(3));
    }
    cfg.application_name("orchestratord");
    cfg.connect(NoTls)
}

/// Creates the tables when missing (serialized across processes) and checks the version.
pub fn migrate(c: &mut Client) -> Result<(), String> {
    let mut tx = c.transaction().map_err(|e| e.to_string())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(|e| e.to_string())?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS llorch_schema (version integer NOT NULL);
         CREATE TABLE IF NOT EXISTS llorch_leader (
             id integer PRIMARY KEY CHECK (id = 1),
             epoch bigint NOT NULL,
             address text NOT NULL,
             backend_pid integer NOT NULL,
             renewed_at timestamptz NOT NULL);
         CREATE TABLE IF NOT EXISTS llorch_catalog (id text PRIMARY KEY, record text NOT NULL);
         CREATE TABLE IF NOT EXISTS llorch_tasks (
             seq bigserial,
             task_id text PRIMARY KEY,
             tenant text NOT NULL,
             idem_key text,
             state text NOT NULL,
             spec text NOT NULL,
             correlation_id text NOT NULL,
             node_id text,
             pool_id text,
             attempt integer NOT NULL,
             prefix text,
             updated_ms bigint NOT NULL);
         ALTER TABLE llorch_tasks ADD COLUMN IF NOT EXISTS terminal text;
         CREATE UNIQUE INDEX IF NOT EXISTS llorch_tasks_idem
             ON llorch_tasks (tenant, idem_key) WHERE idem_key IS NOT NULL;",
    )
    .map_err(|e| e.to_string())?;
    let row = tx
        .query_opt("SELECT max(version) FROM llorch_schema", &[])
        .map_err(|e| e.to_string())?;
    let version: Option<i32> = row.and_then(|r| r.get(0));
    match version {
        None => {
            tx.execute(
                "INSERT INTO llorch_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .map_err(|e| e.to_string())?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(format!(
                "the database holds schema version {v}, newer than this build's {SCHEMA_VERSION}"
            ))
        }
        Some(_) => {}
    }
    tx.commit().map_err(|e| e.to_string())
}

/// One task's row: written when it is admitted, dispatched, sent back to its queue and finished.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: TaskId,
    pub tenant: TenantId,
    pub idem_key: Option<String>,
    pub state: TaskState,
    /// The request as admitted (written once: `None` on later writes keeps it).
    pub spec: Option<String>,
    pub correlation_id: String,
    pub node: Option<NodeId>,
    pub pool: Option<PoolId>,
    /// The current (or last) dispatch attempt; 0 before the first.
    pub attempt: u32,
    /// The frames written before the current attempt's stream (`None` keeps the stored ones).
    pub prefix: Option<String>,
    /// A finished task's terminal frame (`end` or `error`).
    pub terminal: Option<String>,
    pub updated_ms: u64,
}

/// A task as a new leader reads it back.
#[derive(Debug, Clone)]
pub struct StoredTask {
    pub v: ValidatedTask,
    pub correlation_id: String,
    pub state: TaskState,
    pub node: Option<NodeId>,
    pub pool: Option<PoolId>,
    pub attempt: u32,
    pub prefix: Vec<Event>,
    /// A finished task's terminal frame.
    pub terminal: Option<Event>,
    /// When the row was last written (Unix ms).
    pub updated_ms: u64,
}

/// The frames of a log as stored: `[{"event": name, "data": payload}, …]`.
pub fn frames_json(frames: &[Event]) -> String {
    let v: Vec<serde_json::Value> = frames
        .iter()
        .map(|f| {
            serde_json::json!({
                "event": f.name(),
                "data": serde_json::from_str::<serde_json::Value>(&f.data_json())
                    .unwrap_or(serde_json::Value::Null),
            })
        })
        .collect();
    serde_json::Value::Array(v).to_string()
}

fn parse_frames(s: &str) -> Result<Vec<Event>, String> {
    let v: Vec<serde_json::Value> = serde_json::from_str(s).map_err(|e| e.to_string())?;
    v.iter()
        .map(|f| {
            let name = f["event"].as_str().unwrap_or_default();
            Event::parse(name, &f["data"].to_string())
        })
        .collect()
}

fn state_str(s: TaskState) -> &'static str {
    match s {
        TaskState::Queued => "queued",
        TaskState::Running => "running",
        TaskState::Completed => "completed",
        TaskState::Failed => "failed",
        TaskState::Canceled => "canceled",
    }
}

fn parse_state(s: &str) -> Option<TaskState> {
    Some(match s {
        "queued" => TaskState::Queued,
        "running" => TaskState::Running,
        "completed" => TaskState::Completed,
        "failed" => TaskState::Failed,
        "canceled" => TaskState::Canceled,
        _ => return None,
    })
}

/// The store task's Postgres connection.
pub struct PgState {
    client: Client,
    url: String,
}

impl PgState {
    pub fn open(url: &str) -> Result<Self, String> {
        let mut client = connect(url).map_err(|e| e.to_string())?;
        migrate(&mut client)?;
        Ok(Self {
            client,
            url: url.to_string(),
        })
    }

    /// Commits catalog changes and task rows in one transaction; a closed connection (the
    /// database restarted) is opened again once and the commit retried.
    pub fn commit(&mut self, catalog: &[catalog::Write], tasks: &[TaskRow]) -> Result<(), String> {
        match self.commit_once(catalog, tasks) {
            Err(e) if self.client.is_closed() => {
                tracing::warn!(
                    event = "ha.db_unreachable",
                    "The state database connection closed ({e}); reconnecting"
                );
                self.client = connect(&self.url).map_err(|e| e.to_string())?;
                self.commit_once(catalog, tasks)
            }
            r => r,
        }
    }

    fn commit_once(&mut self, catalog: &[catalog::Write], tasks: &[TaskRow]) -> Result<(), String> {
        let mut tx = self.client.transaction().map_err(|e| e.to_string())?;
        for w in catalog {
            match w {
                catalog::Write::Put(r) => {
                    let json = serde_json::to_string(r).map_err(|e| e.to_string())?;
                    tx.execute(
                        "INSERT INTO llorch_catalog (id, record) VALUES ($1, $2)
                         ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                        &[&r.id.as_str(), &json],
                    )
                    .map_err(|e| e.to_string())?;
                }
                catalog::Write::Delete(id) => {
                    tx.execute("DELETE FROM llorch_catalog WHERE id = $1", &[&id.as_str()])
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        for t in tasks {
            tx.execute(
                "INSERT INTO llorch_tasks (task_id, tenant, idem_key, state, spec, correlation_id,
                     node_id, pool_id, attempt, prefix, updated_ms, terminal)
                 VALUES ($1, $2, $3, $4, COALESCE($5, ''), $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (task_id) DO UPDATE SET
                     state = EXCLUDED.state,
                     spec = COALESCE($5, llorch_tasks.spec),
                     node_id = EXCLUDED.node_id,
                     pool_id = EXCLUDED.pool_id,
                     attempt = EXCLUDED.attempt,
                     prefix = COALESCE($10, llorch_tasks.prefix),
                     updated_ms = EXCLUDED.updated_ms,
                     terminal = EXCLUDED.terminal",
                &[
                    &t.id.to_string(),
                    &t.tenant.as_str(),
                    &t.idem_key,
                    &state_str(t.state),
                    &t.spec,
                    &t.correlation_id,
                    &t.node.as_ref().map(|n| n.as_str().to_string()),
                    &t.pool.as_ref().map(|p| p.as_str().to_string()),
                    &(t.attempt as i32),
                    &t.prefix,
                    &(t.updated_ms as i64),
                    &t.terminal,
                ],
            )
            .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())
    }

    pub fn load_catalog(&mut self) -> Result<Vec<ModelRecord>, String> {
        let rows = self
            .client
            .query("SELECT record FROM llorch_catalog ORDER BY id", &[])
            .map_err(|e| e.to_string())?;
        rows.iter()
            .map(|r| {
                let s: String = r.get(0);
                serde_json::from_str(&s).map_err(|e| format!("a catalog row does not parse: {e}"))
            })
            .collect()
    }

    /// Forgets finished tasks older than a day, then reads the rest in admission order. A row that
    /// does not parse is reported and skipped (a newer build's row, say), never fatal.
    pub fn load_tasks(&mut self, now_ms: u64) -> Result<Vec<StoredTask>, String> {
        let horizon = now_ms.saturating_sub(KEEP_FINISHED_MS) as i64;
        self.client
            .execute(
                "DELETE FROM llorch_tasks WHERE state NOT IN ('queued', 'running')
                 AND updated_ms < $1",
                &[&horizon],
            )
            .map_err(|e| e.to_string())?;
        let rows = self
            .client
            .query(
                "SELECT task_id, state, spec, correlation_id, node_id, pool_id, attempt, prefix,
                        terminal, updated_ms
                 FROM llorch_tasks ORDER BY seq",
                &[],
            )
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.get(0);
            let parsed = (|| -> Result<StoredTask, String> {
                let state: String = r.get(1);
                let spec: String = r.get(2);
                let node: Option<String> = r.get(4);
                let pool: Option<String> = r.get(5);
                let attempt: i32 = r.get(6);
                let prefix: Option<String> = r.get(7);
                let terminal: Option<String> = r.get(8);
                let updated_ms: i64 = r.get(9);
                let terminal = match terminal.as_deref().map(parse_frames).transpose()? {
                    Some(mut v) => v.pop(),
                    None => None,
                };
                Ok(StoredTask {
                    v: serde_json::from_str(&spec).map_err(|e| e.to_string())?,
                    correlation_id: r.get(3),
                    state: parse_state(&state).ok_or("unknown state")?,
                    node: node
                        .map(|n| n.parse())
                        .transpose()
                        .map_err(|e| format!("{e}"))?,
                    pool: pool
                        .map(|p| p.parse())
                        .transpose()
                        .map_err(|e| format!("{e}"))?,
                    attempt: attempt.max(0) as u32,
                    prefix: prefix
                        .as_deref()
                        .map(parse_frames)
                        .transpose()?
                        .unwrap_or_default(),
                    terminal,
                    updated_ms: updated_ms.max(0) as u64,
                })
            })();
            match parsed {
                Ok(t) => out.push(t),
                Err(e) => tracing::error!(event = "ha.task_unreadable", task_id = %id,
                    "Task row {id} cannot be read back and is skipped: {e}"),
            }
        }
        Ok(out)
    }
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgState")
    }
}
