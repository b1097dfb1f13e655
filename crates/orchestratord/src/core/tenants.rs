//! The tenants part of the core: each caller token names a tenant; this part holds each tenant's
//! policy (role, weight, limits) and usage (running tasks, request and token buckets, totals), and
//! answers whether a new task is within the tenant's limits. Queued counts come from the queues.
//!
//! Buckets: a limit of N per minute is a bucket of N that refills continuously at N/60 per second.
//! A request takes one from the request bucket at admission. Tokens are charged when a task ends,
//! from the engine's counts (prompt + output), so the token bucket may go below zero; a tenant
//! whose token bucket is at or below zero is refused until it refills.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use api::tenant::TenantUsage;
use api::{ErrorCode, ErrorEnvelope, TaskId, TenantId};

use crate::config::TenantPolicy;

/// Which tasks and sessions a caller may see: an admin's are all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Tenant(TenantId),
}

impl Scope {
    pub fn sees(&self, owner: &TenantId) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == owner,
        }
    }
}

/// A per-minute token bucket.
#[derive(Debug, Clone)]
struct Bucket {
    per_minute: u64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: u64, now: Instant) -> Self {
        Self {
            per_minute,
            level: per_minute as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.level =
            (self.level + secs * self.per_minute as f64 / 60.0).min(self.per_minute as f64);
        self.at = now;
    }

    /// Milliseconds until the bucket holds at least one unit (0 when it does now).
    fn wait_ms(&self) -> u64 {
        if self.level >= 1.0 {
            return 0;
        }
        let per_ms = self.per_minute as f64 / 60_000.0;
        ((1.0 - self.level) / per_ms).ceil() as u64
    }
}

#[derive(Debug)]
struct Usage {
    running: HashSet<TaskId>,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    requests_total: u64,
    rejected_total: u64,
    tokens_total: u64,
}

impl Usage {
    fn new(policy: &TenantPolicy, now: Instant) -> Self {
        Self {
            running: HashSet::new(),
            requests: policy
                .limits
                .requests_per_minute
                .map(|n| Bucket::new(n, now)),
            tokens: policy.limits.tokens_per_minute.map(|n| Bucket::new(n, now)),
            requests_total: 0,
            rejected_total: 0,
            tokens_total: 0,
        }
    }

    /// Keeps the buckets' levels across a policy change, clamped to the new sizes.
    fn adopt(&mut self, policy: &TenantPolicy, now: Instant) {
        let adopt = |old: &mut Option<Bucket>, limit: Option<u64>| {
            *old = match (old.take(), limit) {
                (_, None) => None,
                (None, Some(n)) => Some(Bucket::new(n, now)),
                (Some(mut b), Some(n)) => {
                    b.refill(now);
                    b.per_minute = n;
                    b.level = b.level.min(n as f64);
                    Some(b)
                }
            }
        };
        adopt(&mut self.requests, policy.limits.requests_per_minute);
        adopt(&mut self.tokens, policy.limits.tokens_per_minute);
    }
}

/// Policies and usage of every tenant seen.
#[derive(Debug)]
pub struct Tenants {
    policies: BTreeMap<TenantId, TenantPolicy>,
    usage: BTreeMap<TenantId, Usage>,
}

impl Tenants {
    pub fn new(policies: BTreeMap<TenantId, TenantPolicy>) -> Self {
        Self {
            policies,
            usage: BTreeMap::new(),
        }
    }

    /// Replaces every policy at once (SIGHUP); usage carries over.
    pub fn set_policies(&mut self, policies: BTreeMap<TenantId, TenantPolicy>, now: Instant) {
        self.policies = policies;
        let default = TenantPolicy::default();
        for (t, u) in self.usage.iter_mut() {
            u.adopt(self.policies.get(t).unwrap_or(&default), now);
        }
    }

    pub fn policy(&self, tenant: &TenantId) -> TenantPolicy {
        self.policies.get(tenant).cloned().unwrap_or_default()
    }

    pub fn weight(&self, tenant: &TenantId) -> u32 {
        self.policies.get(tenant).map_or(1, |p| p.weight)
    }

    fn usage_mut(&mut self, tenant: &TenantId, now: Instant) -> &mut Usage {
        if !self.usage.contains_key(tenant) {
            let u = Usage::new(&self.policy(tenant), now);
            self.usage.insert(tenant.clone(), u);
        }
        let u = self.usage.get_mut(tenant).expect("inserted");
        if let Some(b) = u.requests.as_mut() {
            b.refill(now);
        }
        if let Some(b) = u.tokens.as_mut() {
            b.refill(now);
        }
        u
    }

    /// Whether a new task of `tenant` is within its limits, given its `queued` tasks now. A refusal
    /// changes nothing but the refusal count; `concurrency_retry_ms` is the wait advised when the
    /// queued limit is reached.
    pub fn check(
        &mut self,
        tenant: &TenantId,
        queued: usize,
        concurrency_retry_ms: impl FnOnce() -> u64,
        now: Instant,
    ) -> Result<(), ErrorEnvelope> {
        let limits = self.policy(tenant).limits;
        let u = self.usage_mut(tenant, now);
        let label = |limit: &str| Some(format!("tenant:{tenant}:{limit}"));
        let refusal = if let Some(b) = u.requests.as_ref().filter(|b| b.level < 1.0) {
            let mut e = ErrorEnvelope::new(
                ErrorCode::TenantRateLimited,
                format!(
                    "tenant {tenant} is over its limit of {} requests per minute",
                    b.per_minute
                ),
            )
            .with_retry_after(b.wait_ms());
            e.policy_label = label("requests_per_minute");
            Some(e)
        } else if let Some(b) = u.tokens.as_ref().filter(|b| b.level < 1.0) {
            let mut e = ErrorEnvelope::new(
                ErrorCode::TenantRateLimited,
                format!(
                    "tenant {tenant} is over its limit of {} tokens per minute",
                    b.per_minute
                ),
            )
            .with_retry_after(b.wait_ms());
            e.policy_label = label("tokens_per_minute");
            Some(e)
        } else if limits.queued_tasks.is_some_and(|n| queued as u64 >= n) {
            let mut e = ErrorEnvelope::new(
                ErrorCode::TenantConcurrency,
                format!("tenant {tenant} already has {queued} queued tasks, its limit",),
            )
            .with_retry_after(concurrency_retry_ms());
            e.policy_label = label("queued_tasks");
            Some(e)
        } else {
            None
        };
        match refusal {
            Some(e) => {
                u.rejected_total += 1;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// A task of `tenant` was admitted: it takes one request from the bucket.
    pub fn admitted(&mut self, tenant: &TenantId, now: Instant) {
        let u = self.usage_mut(tenant, now);
        u.requests_total += 1;
        if let Some(b) = u.requests.as_mut() {
            b.level -= 1.0;
        }
    }

    /// True when `tenant` may start another task now (its concurrency limit).
    pub fn may_start(&self, tenant: &TenantId) -> bool {
        let Some(limit) = self
            .policies
            .get(tenant)
            .and_then(|p| p.limits.concurrent_tasks)
        else {
            return true;
        };
        self.usage
            .get(tenant)
            .is_none_or(|u| (u.running.len() as u64) < limit)
    }

    pub fn started(&mut self, tenant: &TenantId, id: TaskId, now: Instant) {
        self.usage_mut(tenant, now).running.insert(id);
    }

    /// The task left Running (back to the queue, or ended).
    pub fn stopped(&mut self, tenant: &TenantId, id: TaskId) {
        if let Some(u) = self.usage.get_mut(tenant) {
            u.running.remove(&id);
        }
    }

    /// A task ended having used `tokens` (prompt + output, the engine's counts).
    pub fn used(&mut self, tenant: &TenantId, tokens: u64, now: Instant) {
        let u = self.usage_mut(tenant, now);
        u.tokens_total += tokens;
        if let Some(b) = u.tokens.as_mut() {
            b.level -= tokens as f64;
        }
    }

    /// Running tasks of `tenant`.
    pub fn running(&self, tenant: &TenantId) -> impl Iterator<Item = &TaskId> {
        self.usage
            .get(tenant)
            .into_iter()
            .flat_map(|u| u.running.iter())
    }

    /// Every configured tenant and every tenant seen, for `GET /v2/tenants`.
    pub fn report(
        &mut self,
        queued: impl Fn(&TenantId) -> usize,
        now: Instant,
    ) -> Vec<TenantUsage> {
        let names: Vec<TenantId> = self
            .policies
            .keys()
            .chain(self.usage.keys())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        names
            .into_iter()
            .map(|t| {
                let policy = self.policy(&t);
                let u = self.usage_mut(&t, now);
                TenantUsage {
                    role: policy.role,
                    weight: policy.weight,
                    limits: policy.limits.clone(),
                    running: u.running.len() as u64,
                    queued: queued(&t) as u64,
                    requests_available: u.requests.as_ref().map(|b| b.level.max(0.0) as u64),
                    tokens_available: u.tokens.as_ref().map(|b| b.level.floor() as i64),
                    requests_total: u.requests_total,
                    rejected_total: u.rejected_total,
                    tokens_total: u.tokens_total,
                    tenant: t,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use api::tenant::{Role, TenantLimits};

    use super::*;

    fn tenant(s: &str) -> TenantId {
        s.parse().expect("tenant")
    }

    fn with(limits: TenantLimits) -> Tenants {
        Tenants::new(BTreeMap::from([(
            tenant("a"),
            TenantPolicy {
                role: Role::Client,
                weight: 1,
                limits,
            },
        )]))
    }

    #[test]
    fn requests_per_minute_refill_and_retry_after() {
        let mut t = with(TenantLimits {
            requests_per_minute: Some(2),
            ..Default::default()
        });
        let now = Instant::now();
        let a = tenant("a");
        for _ in 0..2 {
            t.check(&a, 0, || 0, now).expect("within");
            t.admitted(&a, now);
        }
        let e = t.check(&a, 0, || 0, now).unwrap_err();
        assert_eq!(e.code, ErrorCode::TenantRateLimited);
        // 2 per minute: one every 30 s.
        assert_eq!(e.retry_after_ms, Some(30_000));
        assert_eq!(
            e.policy_label.as_deref(),
            Some("tenant:a:requests_per_minute")
        );
        let later = now + Duration::from_secs(15);
        assert_eq!(
            t.check(&a, 0, || 0, later).unwrap_err().retry_after_ms,
            Some(15_000)
        );
        t.check(&a, 0, || 0, now + Duration::from_secs(30))
            .expect("refilled");
        // Refusals are counted, never charged.
        assert_eq!(t.report(|_| 0, now)[0].rejected_total, 2);
        assert_eq!(t.report(|_| 0, now)[0].requests_total, 2);
    }

    #[test]
    fn tokens_are_charged_after_the_fact() {
        let mut t = with(TenantLimits {
            tokens_per_minute: Some(600),
            ..Default::default()
        });
        let now = Instant::now();
        let a = tenant("a");
        t.check(&a, 0, || 0, now).expect("within");
        t.used(&a, 900, now);
        let e = t.check(&a, 0, || 0, now).unwrap_err();
        assert_eq!(e.code, ErrorCode::TenantRateLimited);
        // 300 tokens of debt plus one, at 10 per second.
        assert_eq!(e.retry_after_ms, Some(30_100));
        assert_eq!(t.report(|_| 0, now)[0].tokens_available, Some(-300));
        t.check(&a, 0, || 0, now + Duration::from_millis(30_100))
            .expect("refilled");
    }

    #[test]
    fn queued_and_running_limits() {
        let mut t = with(TenantLimits {
            concurrent_tasks: Some(1),
            queued_tasks: Some(2),
            ..Default::default()
        });
        let now = Instant::now();
        let a = tenant("a");
        t.check(&a, 1, || 7000, now).expect("room");
        let e = t.check(&a, 2, || 7000, now).unwrap_err();
        assert_eq!(e.code, ErrorCode::TenantConcurrency);
        assert_eq!(e.retry_after_ms, Some(7000));
        assert!(t.may_start(&a));
        let id = TaskId::new();
        t.started(&a, id, now);
        assert!(!t.may_start(&a));
        t.stopped(&a, id);
        assert!(t.may_start(&a));
        // Other tenants are unlimited.
        assert!(t.may_start(&tenant("b")));
        t.check(&tenant("b"), 100, || 0, now).expect("no limits");
    }

    #[test]
    fn new_policies_keep_usage() {
        let mut t = with(TenantLimits {
            requests_per_minute: Some(10),
            ..Default::default()
        });
        let now = Instant::now();
        let a = tenant("a");
        for _ in 0..8 {
            t.admitted(&a, now);
        }
        t.set_policies(
            BTreeMap::from([(
                a.clone(),
                TenantPolicy {
                    role: Role::Client,
                    weight: 3,
                    limits: TenantLimits {
                        requests_per_minute: Some(1),
                        ..Default::default()
                    },
                },
            )]),
            now,
        );
        assert_eq!(t.weight(&a), 3);
        let r = &t.report(|_| 0, now)[0];
        assert_eq!(r.requests_available, Some(1));
        assert_eq!(r.requests_total, 8);
    }
}
