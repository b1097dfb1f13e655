//! Operator and user views: `llorch tasks get|cancel`, `llorch nodes`, `llorch pools`,
//! `llorch tenants`. Human tables
//! by default, `--json` for scripts; exit codes as in API.md §18.

use clap::{Args, Subcommand};

/// Where orchestratord is and how output is printed; shared by every client subcommand.
#[derive(Args)]
pub struct Conn {
    /// orchestratord's base URL; several, comma-separated, for an HA group (calls follow the
    /// leader).
    #[arg(
        long,
        env = "LLORCH_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    #[arg(long, env = "LLORCH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the JSON body instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum TasksCmd {
    /// Show a task record.
    Get { task_id: String },
    /// Cancel a task.
    Cancel { task_id: String },
}

pub async fn tasks(cmd: TasksCmd, c: Conn) -> anyhow::Result<u8> {
    let client = client::Client::new(&c.url, c.token.clone())?;
    let (TasksCmd::Get { task_id } | TasksCmd::Cancel { task_id }) = &cmd;
    let Ok(id) = task_id.parse::<api::TaskId>() else {
        eprintln!("llorch: {task_id:?} is not a task id (a UUID)");
        return Ok(2);
    };
    match cmd {
        TasksCmd::Get { .. } => match client.task(id).await {
            Ok(r) => {
                if c.json {
                    println!("{}", serde_json::to_string_pretty(&r.body)?);
                } else {
                    let t = r.body;
                    println!("task      {}\nstate     {:?}\nmodel     {}\npool      {}\nnode      {}\nengine    {}\ntokens    {} in, {} out\nstop      {}",
                        t.task_id, t.state, t.model, t.pool_id.map(|p| p.to_string()).unwrap_or_default(), t.node_id.map(|n| n.to_string()).unwrap_or_default(), t.engine_version.unwrap_or_default(),
                        t.tokens_in, t.tokens_out, t.stop_reason.map(|s| format!("{s:?}")).unwrap_or_default());
                    if let Some(e) = t.error {
                        println!("error     {}: {}", e.code, e.message);
                    }
                }
                Ok(0)
            }
            Err(e) => Ok(crate::run_cmd::refusal(&e)),
        },
        TasksCmd::Cancel { .. } => match client.cancel(id).await {
            Ok(_) => {
                eprintln!("canceled {id}");
                Ok(0)
            }
            Err(e) => Ok(crate::run_cmd::refusal(&e)),
        },
    }
}

pub async fn nodes(c: Conn) -> anyhow::Result<u8> {
    let client = client::Client::new(&c.url, c.token.clone())?;
    let n = match client.nodes().await {
        Ok(n) => n,
        Err(e) => return Ok(crate::run_cmd::refusal(&e)),
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&n)?);
        return Ok(0);
    }
    println!(
        "{:<20} {:<8} {:<28} {:>5} {:>6} {:>10}",
        "NODE", "STATUS", "ADDRESS", "POOLS", "GPUS", "HEARTBEAT"
    );
    let now = now_ms();
    for n in n.nodes {
        let age = now.saturating_sub(n.last_heartbeat_ms) / 1000;
        println!(
            "{:<20} {:<8} {:<28} {:>5} {:>6} {:>9}s",
            n.node_id,
            format!("{:?}", n.status),
            n.address,
            n.pools.len(),
            n.capabilities.gpus.len(),
            age
        );
    }
    Ok(0)
}

#[derive(Subcommand)]
pub enum PoolsCmd {
    /// Table of pools (the default).
    List,
    /// Take a pool out of service; running tasks get until the deadline.
    Drain {
        pool_id: String,
        #[arg(long, default_value_t = 60_000)]
        deadline_ms: u64,
    },
    /// Return a drained pool to service, or switch it to another model (`file:` ref or model id).
    Reload { pool_id: String, model_ref: String },
}

pub async fn pools_cmd(cmd: Option<PoolsCmd>, c: Conn) -> anyhow::Result<u8> {
    let client = client::Client::new(&c.url, c.token.clone())?;
    let accepted = match cmd {
        None | Some(PoolsCmd::List) => return pools(c).await,
        Some(PoolsCmd::Drain {
            pool_id,
            deadline_ms,
        }) => client.drain_pool(&pool_id, Some(deadline_ms)).await,
        Some(PoolsCmd::Reload { pool_id, model_ref }) => {
            client.reload_pool(&pool_id, &model_ref).await
        }
    };
    match accepted {
        Ok(a) if c.json => {
            println!("{}", serde_json::to_string_pretty(&a)?);
            Ok(0)
        }
        Ok(a) => {
            eprintln!(
                "pool {} is {} (command {})",
                a.pool_id,
                a.state.as_str(),
                a.command_id
            );
            Ok(0)
        }
        Err(e) => Ok(crate::run_cmd::refusal(&e)),
    }
}

pub async fn pools(c: Conn) -> anyhow::Result<u8> {
    let client = client::Client::new(&c.url, c.token.clone())?;
    let p = match client.pools().await {
        Ok(p) => p,
        Err(e) => return Ok(crate::run_cmd::refusal(&e)),
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(0);
    }
    println!(
        "{:<16} {:<16} {:<10} {:<28} {:>9} {:>7} {:>7} {:<8}",
        "POOL", "NODE", "STATE", "MODEL", "SLOTS", "QUEUED", "RUNNING", "DEVICES"
    );
    for p in p.pools {
        let model = p.model.map_or_else(|| "-".into(), |m| m.id.to_string());
        println!(
            "{:<16} {:<16} {:<10} {:<28} {:>4}/{:<4} {:>7} {:>7} {:<8}",
            p.pool_id,
            p.node_id,
            p.state.as_str(),
            model,
            p.slots_free,
            p.slots_total,
            p.queued,
            p.running,
            p.device_mask
        );
        if let Some(e) = p.last_error {
            println!("  last error: {}", e.lines().next().unwrap_or(""));
        }
    }
    Ok(0)
}

/// `llorch tenants`: each tenant's role, weight, running and queued tasks, and bucket levels
/// against its limits (admin token).
pub async fn tenants(c: Conn) -> anyhow::Result<u8> {
    let client = client::Client::new(&c.url, c.token.clone())?;
    let t = match client.tenants().await {
        Ok(t) => t,
        Err(e) => return Ok(crate::run_cmd::refusal(&e)),
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(0);
    }
    print!("{}", tenants_table(&t));
    Ok(0)
}

/// The `llorch tenants` table: `used/limit` columns, `-` where unlimited.
pub fn tenants_table(t: &api::tenant::TenantsResponse) -> String {
    let of = |used: String, limit: Option<u64>| match limit {
        Some(l) => format!("{used}/{l}"),
        None => format!("{used}/-"),
    };
    let mut out = format!(
        "{:<20} {:<7} {:>6} {:>9} {:>9} {:>13} {:>15} {:>9} {:>9} {:>11}\n",
        "TENANT",
        "ROLE",
        "WEIGHT",
        "RUNNING",
        "QUEUED",
        "REQ/MIN LEFT",
        "TOK/MIN LEFT",
        "REQUESTS",
        "REFUSED",
        "TOKENS"
    );
    for u in &t.tenants {
        let l = &u.limits;
        out.push_str(&format!(
            "{:<20} {:<7} {:>6} {:>9} {:>9} {:>13} {:>15} {:>9} {:>9} {:>11}\n",
            u.tenant.as_str(),
            u.role.as_str(),
            u.weight,
            of(u.running.to_string(), l.concurrent_tasks),
            of(u.queued.to_string(), l.queued_tasks),
            of(
                u.requests_available.map_or("-".into(), |v| v.to_string()),
                l.requests_per_minute
            ),
            of(
                u.tokens_available.map_or("-".into(), |v| v.to_string()),
                l.tokens_per_minute
            ),
            u.requests_total,
            u.rejected_total,
            u.tokens_total,
        ));
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use api::tenant::{Role, TenantLimits, TenantUsage, TenantsResponse};

    #[test]
    fn tenants_table_shows_usage_against_limits() {
        let t = TenantsResponse {
            tenants: vec![TenantUsage {
                tenant: "lab".parse().expect("name"),
                role: Role::Client,
                weight: 2,
                limits: TenantLimits {
                    requests_per_minute: Some(60),
                    concurrent_tasks: Some(4),
                    ..Default::default()
                },
                running: 3,
                queued: 7,
                requests_available: Some(12),
                tokens_available: None,
                requests_total: 48,
                rejected_total: 2,
                tokens_total: 9000,
            }],
        };
        let table = super::tenants_table(&t);
        let row = table.lines().nth(1).expect("a row");
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            ["lab", "client", "2", "3/4", "7/-", "12/60", "-/-", "48", "2", "9000"]
        );
    }
}
