//! Roles and tenants (docs/auth.md): the role matrix over every route of orchestratord's one route
//! table, and per-tenant limits (requests and tokens per minute from the engine's real counts,
//! concurrency, queued tasks, `Retry-After`), with a named token rotated by SIGHUP.

use std::time::Duration;

use anyhow::{ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use orchestratord::http::routes::{rules, Access};
use reqwest::Method;
use serde_json::Value;

use crate::fixtures::{wait_finished, wait_for, Assets};

const ADMIN: &str = "admin-token-0123456789";
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";
const VIEWER: &str = "viewer-token-0123456789";
const REG: &str = "registration-token-0123456789";

fn named(name: &str, role: &str, token: &str, limits: &str) -> String {
    format!("[[auth.tokens]]\nname = {name:?}\nrole = {role:?}\ntoken = {token:?}\n{limits}\n")
}

/// Starts a stack whose orchestratord has `tokens` (TOML) and the registration token, and waits
/// until its pool is Ready (asking with the admin token).
async fn stack_with(
    a: &Assets,
    scenario: &str,
    tokens: String,
    slots: u32,
) -> anyhow::Result<llorch::stack::Stack> {
    let mut spec = a.spec(scenario)?;
    spec.orchd_extra = format!("{tokens}[auth]\nnode_registration_token = {REG:?}\n");
    spec.registration_token = Some(REG.into());
    spec.slots = slots;
    let stack = llorch::stack::Stack::start(spec).await?;
    let admin = client::Client::new(&stack.orchd_url, Some(ADMIN.into()))?;
    let pool = stack.spec.pool_id.clone();
    wait_for("the pool to be Ready", Duration::from_secs(120), || async {
        admin.pools().await.ok().filter(|p| {
            p.pools
                .iter()
                .any(|x| x.pool_id == pool.as_str() && x.state == api::node::PoolState::Ready)
        })
    })
    .await?;
    Ok(stack)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    NoToken,
    WrongToken,
    Viewer,
    OtherClient,
    Owner,
    Admin,
}

impl Who {
    fn token(self) -> Option<&'static str> {
        match self {
            Who::NoToken => None,
            Who::WrongToken => Some("wrong-token-0123456789"),
            Who::Viewer => Some(VIEWER),
            Who::OtherClient => Some(BOB),
            Who::Owner => Some(ALICE),
            Who::Admin => Some(ADMIN),
        }
    }
}

#[derive(Debug)]
enum Expect {
    /// Allowed: neither 401 nor 403, nor a server error.
    Allowed,
    /// Allowed, and the object exists for this caller: 2xx.
    Success,
    Status(u16),
    /// Exactly what the same caller gets for an id nobody has (404, or 204 for an idempotent
    /// delete): another tenant's ids leak nothing.
    AsUnknown,
    /// Refused without success, but not by role (a token that is no node credential).
    NotSuccess,
}

/// What each caller gets on a route of each access. No wildcard arm: a new kind of access must be
/// given its row here.
fn expect(access: Access, who: Who) -> Expect {
    use Expect::*;
    match (access, who) {
        (Access::Open | Access::Metrics, _) => Success,
        (Access::Node, Who::NoToken) => Status(401),
        (Access::Node, _) => NotSuccess,
        (Access::NodeOrAdmin, Who::NoToken) => Status(401),
        (Access::NodeOrAdmin, Who::WrongToken) => NotSuccess,
        (Access::NodeOrAdmin, Who::Viewer | Who::OtherClient | Who::Owner) => Status(403),
        (Access::NodeOrAdmin, Who::Admin) => Allowed,
        (
            Access::Viewer | Access::Client | Access::Own | Access::Admin,
            Who::NoToken | Who::WrongToken,
        ) => Status(401),
        (Access::Viewer, _) => Allowed,
        (Access::Client, Who::Viewer) => Status(403),
        (Access::Client, _) => Allowed,
        (Access::Own, Who::Viewer) => Status(403),
        (Access::Own, Who::OtherClient) => AsUnknown,
        (Access::Own, Who::Owner | Who::Admin) => Success,
        (Access::Admin, Who::Admin) => Allowed,
        (Access::Admin, _) => Status(403),
    }
}

/// Every route × admin, client, viewer, another tenant's client, no token and a wrong token,
/// from the route table itself: a route added to the table is in the matrix.
pub async fn role_matrix(a: Assets) -> anyhow::Result<()> {
    let tokens = [
        named("ops", "admin", ADMIN, ""),
        named("alice", "client", ALICE, ""),
        named("bob", "client", BOB, ""),
        named("watch", "viewer", VIEWER, ""),
    ]
    .concat();
    let mut stack = stack_with(&a, "tenants-matrix", tokens, 1).await?;
    let result = async {
        let base = stack.orchd_url.clone();
        let model = stack.spec.model_id.clone();
        // Alice owns a finished task and its session.
        let alice = client::Client::new(&base, Some(ALICE.into()))?;
        let mut req = api::task::TaskRequest::new(&model);
        req.prompt = Some("Say hi.".into());
        req.max_tokens = Some(4);
        let session = api::SessionId::new();
        req.session_id = Some(session);
        let task = alice.submit(&req).await?.body.task_id;
        let rec = wait_finished(&alice, task).await?;
        ensure!(rec.state == api::task::TaskState::Completed, "alice's task: {rec:?}");
        let http = reqwest::Client::new();
        let mut checked = 0;
        let mut session_deleted = false;
        for (method, pattern, access) in rules() {
            let path = concrete(pattern, task, session);
            for who in [Who::NoToken, Who::WrongToken, Who::Viewer, Who::OtherClient, Who::Owner, Who::Admin] {
                let mut r = http.request(Method::from_bytes(method.as_str().as_bytes())?, format!("{base}{path}"));
                if let Some(t) = who.token() {
                    r = r.bearer_auth(t);
                }
                if method == Method::POST {
                    r = r.header("content-type", "application/json").body("{}");
                }
                let resp = tokio::time::timeout(Duration::from_secs(30), r.send()).await.context("no answer in 30 s")??;
                let status = resp.status().as_u16();
                let code = if resp.headers().get("content-type").is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json")) && status >= 400 {
                    let v: Value = resp.json().await.unwrap_or(Value::Null);
                    // v2 and OpenAI shapes name the code; Anthropic's (/v1/messages) ends its message with "(CODE)".
                    let anthropic = v["error"]["message"].as_str().and_then(|m| m.strip_suffix(')')?.rsplit_once('(')).map(|(_, c)| c);
                    v["code"].as_str().or(v["error"]["code"].as_str()).or(anthropic).unwrap_or("").to_string()
                } else {
                    drop(resp);
                    String::new()
                };
                let want = expect(access, who);
                let unknown = if matches!(want, Expect::AsUnknown) {
                    let other = concrete(pattern, api::TaskId::new(), api::SessionId::new());
                    let mut r = http.request(Method::from_bytes(method.as_str().as_bytes())?, format!("{base}{other}"));
                    if let Some(t) = who.token() {
                        r = r.bearer_auth(t);
                    }
                    if method == Method::POST {
                        r = r.header("content-type", "application/json").body("{}");
                    }
                    r.send().await?.status().as_u16()
                } else {
                    0
                };
                if who == Who::OtherClient {
                    // Whatever the other tenant did, alice's task and session are untouched.
                    ensure!(alice.task(task).await.is_ok_and(|r| r.body.state == api::task::TaskState::Completed), "after {method} {path} as bob");
                    ensure!(session_deleted || alice.session(session).await.is_ok(), "alice's session after {method} {path} as bob");
                }
                let ok = match want {
                    Expect::AsUnknown => status == unknown && (method == Method::DELETE || !(200..300).contains(&unknown)),
                    Expect::Allowed => status != 401 && status != 403 && status < 500,
                    Expect::Success => (200..300).contains(&status),
                    Expect::Status(s) => status == s,
                    Expect::NotSuccess => !(200..300).contains(&status) && status != 403 && status < 500,
                };
                ensure!(ok, "{method} {path} as {who:?} ({access:?}): got {status} {code}, expected {want:?}");
                if status == 403 {
                    ensure!(code == "FORBIDDEN", "{method} {path} as {who:?}: 403 with {code:?}");
                }
                if who == Who::Owner && method == Method::DELETE && pattern.starts_with("/v2/sessions/") {
                    session_deleted = true;
                }
                checked += 1;
            }
        }
        ensure!(checked >= 6 * 30, "only {checked} checks: is the route table empty?");
        // The other tenant's 404s changed nothing: alice still reads her task, and bob's cancel
        // did not touch it.
        let rec2 = alice.task(task).await?.body;
        ensure!(rec2.state == api::task::TaskState::Completed && rec2.tokens_out == rec.tokens_out, "{rec2:?}");
        // Operator routes are refused to a client before anything happens: the pool still serves.
        let pools = alice.pools().await?;
        ensure!(pools.pools.iter().all(|p| p.state == api::node::PoolState::Ready), "{pools:?}");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// A concrete path for a route pattern: alice's task and session, unknown names elsewhere.
fn concrete(pattern: &str, task: api::TaskId, session: api::SessionId) -> String {
    let fill = if pattern.starts_with("/v2/tasks/") {
        task.to_string()
    } else if pattern.starts_with("/v2/sessions/") {
        session.to_string()
    } else {
        "no-such-thing".to_string()
    };
    pattern
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                fill.as_str()
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn submit_raw(
    base: &str,
    token: &str,
    req: &api::task::TaskRequest,
) -> anyhow::Result<(u16, Option<u64>, Value)> {
    let r = reqwest::Client::new()
        .post(format!("{base}/v2/tasks"))
        .bearer_auth(token)
        .json(req)
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok((status, retry, r.json().await?))
}

async fn tenant(admin: &client::Client, name: &str) -> anyhow::Result<api::tenant::TenantUsage> {
    admin
        .tenants()
        .await?
        .tenants
        .into_iter()
        .find(|t| t.tenant == name)
        .with_context(|| format!("tenant {name} is not listed"))
}

/// Checks a 429 from a tenant limit: its code, label, `Retry-After` in whole seconds of the
/// envelope's `retry_after_ms`, and that the wait is within `max_ms`.
fn limited(
    got: &(u16, Option<u64>, Value),
    code: &str,
    label: &str,
    max_ms: u64,
) -> anyhow::Result<u64> {
    let (status, retry, body) = got;
    ensure!(*status == 429, "expected 429 {code}, got {status} {body}");
    ensure!(
        body["code"] == code && body["policy_label"] == label && body["retriable"] == true,
        "{body}"
    );
    let ms = body["retry_after_ms"].as_u64().context("retry_after_ms")?;
    ensure!(
        ms >= 1 && ms <= max_ms,
        "retry_after_ms {ms} not in 1..={max_ms}"
    );
    ensure!(
        *retry == Some(ms.div_ceil(1000).max(1)),
        "Retry-After {retry:?} for {ms} ms"
    );
    Ok(ms)
}

pub async fn limits(a: Assets) -> anyhow::Result<()> {
    const RPM_OLD: &str = "rpm-token-old-0123456789";
    const RPM_NEW: &str = "rpm-token-new-0123456789";
    const TPM: &str = "tpm-token-0123456789";
    const CONC: &str = "conc-token-0123456789";
    let tokens = |rpm_token: &str| {
        [
            named("ops", "admin", ADMIN, ""),
            named(
                "rpm",
                "client",
                rpm_token,
                "[auth.tokens.limits]\nrequests_per_minute = 2\n",
            ),
            named(
                "tpm",
                "client",
                TPM,
                "[auth.tokens.limits]\ntokens_per_minute = 10\n",
            ),
            named(
                "conc",
                "client",
                CONC,
                "[auth.tokens.limits]\nconcurrent_tasks = 1\nqueued_tasks = 1\n",
            ),
        ]
        .concat()
    };
    let mut stack = stack_with(&a, "tenants-limits", tokens(RPM_OLD), 2).await?;
    let result = async {
        let base = stack.orchd_url.clone();
        let model = stack.spec.model_id.clone();
        let admin = client::Client::new(&base, Some(ADMIN.into()))?;
        let short = || {
            let mut r = api::task::TaskRequest::new(&model);
            r.prompt = Some("Count: 1, 2, 3,".into());
            r.max_tokens = Some(8);
            r.temperature = Some(0.0);
            r
        };

        // Requests per minute: two admitted, the third refused with the bucket's wait.
        for _ in 0..2 {
            let (s, _, b) = submit_raw(&base, RPM_OLD, &short()).await?;
            ensure!(s == 202, "rpm: {s} {b}");
        }
        let mut refused = short();
        let refused_id = api::TaskId::new();
        refused.task_id = Some(refused_id);
        let got = submit_raw(&base, RPM_OLD, &refused).await?;
        // One request every 30 s.
        limited(
            &got,
            "TENANT_RATE_LIMITED",
            "tenant:rpm:requests_per_minute",
            30_000,
        )?;
        // The refusal changed no state: no task, nothing taken from the bucket.
        ensure!(
            admin.task(refused_id).await.is_err(),
            "a refused task exists"
        );
        let u = tenant(&admin, "rpm").await?;
        ensure!(
            u.requests_total == 2 && u.rejected_total == 1 && u.requests_available == Some(0),
            "{u:?}"
        );

        // SIGHUP rotates the named token at once: the old one stops, the new one is the same
        // tenant (its bucket is still empty, well within the 30 s a request takes to refill).
        let cfg = stack.spec.dir.join("orchestratord.toml");
        let pid = Pid::from_raw(stack.orchd.as_ref().and_then(|c| c.id()).context("pid")? as i32);
        let text = std::fs::read_to_string(&cfg)?;
        ensure!(text.contains(RPM_OLD), "the config names the old token");
        std::fs::write(&cfg, text.replace(RPM_OLD, RPM_NEW))?;
        kill(pid, Signal::SIGHUP)?;
        wait_for("the new token to work", Duration::from_secs(10), || async {
            (admin_get(&base, RPM_NEW).await.ok()? == 200).then_some(())
        })
        .await?;
        ensure!(
            admin_get(&base, RPM_OLD).await? == 401,
            "the old token still works"
        );
        let got = submit_raw(&base, RPM_NEW, &short()).await?;
        limited(
            &got,
            "TENANT_RATE_LIMITED",
            "tenant:rpm:requests_per_minute",
            30_000,
        )?;
        let u = tenant(&admin, "rpm").await?;
        ensure!(
            u.requests_total == 2 && u.rejected_total == 2,
            "the rotated token is not the same tenant: {u:?}"
        );

        // Tokens per minute, from the engine's counts: one task uses more than 10 tokens.
        let tpm = client::Client::new(&base, Some(TPM.into()))?;
        let id = tpm.submit(&short()).await?.body.task_id;
        let rec = wait_finished(&tpm, id).await?;
        ensure!(
            rec.state == api::task::TaskState::Completed && rec.tokens_in > 0 && rec.tokens_out > 0,
            "{rec:?}"
        );
        let used = rec.tokens_in + rec.tokens_out;
        let u = tenant(&admin, "tpm").await?;
        ensure!(
            u.tokens_total == used,
            "tokens_total {} vs the engine's {used}",
            u.tokens_total
        );
        ensure!(used > 10, "the task used only {used} tokens");
        let got = submit_raw(&base, TPM, &short()).await?;
        // 10 per minute is one token per 6 s: the debt of (used - 10) plus one token.
        let ms = limited(
            &got,
            "TENANT_RATE_LIMITED",
            "tenant:tpm:tokens_per_minute",
            (used - 9) * 6000,
        )?;
        ensure!(u.tokens_available.is_some_and(|t| t <= 0), "{u:?}");
        let _ = ms;

        // Concurrency: one running, one queued (though the pool has a free slot), the third refused.
        let conc = client::Client::new(&base, Some(CONC.into()))?;
        let long = crate::fixtures::long_request(&model);
        let first = conc.submit(&long).await?.body.task_id;
        wait_for("the first task to run", Duration::from_secs(30), || async {
            conc.task(first)
                .await
                .ok()
                .filter(|r| r.body.state == api::task::TaskState::Running)
        })
        .await?;
        let second = conc.submit(&long).await?.body.task_id;
        let got = submit_raw(&base, CONC, &short()).await?;
        limited(
            &got,
            "TENANT_CONCURRENCY",
            "tenant:conc:queued_tasks",
            3_600_000,
        )?;
        let u = tenant(&admin, "conc").await?;
        ensure!(
            u.running == 1 && u.queued == 1 && u.rejected_total == 1,
            "{u:?}"
        );
        let r2 = conc.task(second).await?.body;
        let pools = admin.pools().await?;
        ensure!(
            r2.state == api::task::TaskState::Queued
                && pools.pools.iter().any(|p| p.slots_free >= 1),
            "the second task should wait for its tenant, not a slot: {r2:?} {pools:?}"
        );
        conc.cancel(first).await?;
        wait_for(
            "the second task to run once the first ended",
            Duration::from_secs(30),
            || async {
                conc.task(second)
                    .await
                    .ok()
                    .filter(|r| r.body.state == api::task::TaskState::Running)
            },
        )
        .await?;
        conc.cancel(second).await?;

        // Visibility: the tenant on task log lines and metrics; `llorch tenants` prints the table.
        let lines = crate::fixtures::log_lines(&stack.orchd_log);
        ensure!(
            lines
                .iter()
                .any(|l| l["event"] == "task.finished" && l["tenant"] == "tpm"),
            "no tenant on task.finished"
        );
        ensure!(
            lines
                .iter()
                .filter(|l| l["event"] == "task.admitted")
                .all(|l| l["tenant"].is_string()),
            "a task.admitted line without its tenant"
        );
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await?
            .text()
            .await?;
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("tasks_rejected_total{")
                    && l.contains("tenant=\"rpm\"")
                    && l.contains("TENANT_RATE_LIMITED")),
            "no tenant on tasks_rejected_total"
        );
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("tokens_in_total{") && l.contains("tenant=\"tpm\"")),
            "no tenant on tokens_in_total"
        );
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("queue_wait_ms_count{") && l.contains("tenant=\"conc\"")),
            "no queue_wait_ms for tenant conc"
        );
        let mut cmd = crate::fixtures::llorch()?;
        let out = cmd
            .args(["tenants", "--url", &base, "--token", ADMIN])
            .output()
            .await?;
        let table = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success()
                && table.contains("TENANT")
                && table
                    .lines()
                    .any(|l| l.starts_with("rpm ") && l.contains("client") && l.contains("/2")),
            "llorch tenants:\n{table}"
        );
        let out = crate::fixtures::llorch()?
            .args(["tenants", "--url", &base, "--token", TPM])
            .output()
            .await?;
        ensure!(!out.status.success(), "a client token read the tenants");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

async fn admin_get(base: &str, token: &str) -> anyhow::Result<u16> {
    Ok(reqwest::Client::new()
        .get(format!("{base}/v2/pools"))
        .bearer_auth(token)
        .send()
        .await?
        .status()
        .as_u16())
}
