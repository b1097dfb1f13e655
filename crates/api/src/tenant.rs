//! Roles and tenants (API.md §3.1 as amended by docs/auth.md): what a token may do, a tenant's
//! limits, and the `GET /v2/tenants` body.

use serde::{Deserialize, Serialize};

use crate::ids::TenantId;

/// What a token may do. Each role includes the ones below it: `admin` ⊇ `client` ⊇ `viewer`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: pools, nodes, catalog, meta, models, metrics.
    Viewer,
    /// Tasks, `/v1`, its own tasks and sessions, and everything a viewer reads.
    Client,
    /// Everything: drain, reload, catalog writes, node deregistration, every tenant's tasks.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    /// True when this role may use a route that needs `required`.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "client" => Ok(Role::Client),
            "admin" => Ok(Role::Admin),
            other => Err(format!("{other:?} is not one of admin, client, viewer")),
        }
    }
}

/// A tenant's limits; an absent limit is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantLimits {
    /// Admitted requests per minute (a token bucket of this size, refilled continuously).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Prompt plus output tokens per minute, as the engine counted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Tasks running at once; more wait in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_tasks: Option<u64>,
    /// Tasks waiting in queues at once; more are refused with `TENANT_CONCURRENCY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_tasks: Option<u64>,
}

/// One tenant's usage against its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantUsage {
    pub tenant: TenantId,
    pub role: Role,
    /// Its share of dispatches within a priority class, relative to other tenants' weights.
    pub weight: u32,
    pub limits: TenantLimits,
    /// Tasks running now.
    pub running: u64,
    /// Tasks waiting in queues now.
    pub queued: u64,
    /// Requests the bucket allows right now (absent when unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_available: Option<u64>,
    /// Tokens the bucket allows right now; negative after tasks used more than was left
    /// (absent when unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_available: Option<i64>,
    /// Tasks admitted since orchestratord started.
    pub requests_total: u64,
    /// Tasks refused by a tenant limit since orchestratord started.
    pub rejected_total: u64,
    /// Prompt plus output tokens used since orchestratord started.
    pub tokens_total: u64,
}

/// `GET /v2/tenants` body: every configured tenant, and any unnamed one seen since start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantsResponse {
    pub tenants: Vec<TenantUsage>,
}
